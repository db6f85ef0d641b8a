"""Running the service: ``ino-adapter serve --config FILE [--workers N]`` (uvicorn).

The configuration is loaded and every table read in the parent first, so a bad configuration stops the
command before anything listens (exit 3, one line). Each worker process then builds its own app through
:func:`app_factory` (the configuration file is passed in ``INO_SERVICE_CONFIG_FILE``; the environment's
``INO_ADAPTER_*`` overrides apply in every worker alike).

Shutdown: SIGTERM or SIGINT stops accepting connections; requests in flight get up to
``request_timeout_s`` to finish; then the process exits 0.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import anyio
from fastapi import FastAPI

from adapter.errors import MappingTableError
from adapter.fhir.auth import AuthConfigError
from adapter.service.config import ServiceConfig, load_config
from adapter.service.deps import ServiceDeps
from adapter.service.logs import ServiceLog, configure_logging

CONFIG_FILE_ENV: Final = "INO_SERVICE_CONFIG_FILE"


def build(config: ServiceConfig) -> ServiceDeps:
    """The dependencies for ``config``; an unusable FHIR credential is a configuration error too."""
    try:
        return ServiceDeps.from_config(config)
    except AuthConfigError as exc:
        raise MappingTableError(f"fhir_server: {exc.message}") from None


def app_factory() -> FastAPI:
    """One worker's app (uvicorn ``--factory``)."""
    from adapter.service.app import create_app

    path = os.environ.get(CONFIG_FILE_ENV)
    config = load_config(path or None)
    configure_logging(config.log_level)
    deps = build(config)
    app = create_app(deps)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        from adapter.service.work import warm_up

        seconds = await anyio.to_thread.run_sync(warm_up, deps)
        deps.log.info("worker started", pid=os.getpid(), cds=bool(app.state.cds), warm_up_s=round(seconds, 2))
        yield
        deps.log.info("worker stopping", pid=os.getpid())
        deps.close()

    app.router.lifespan_context = lifespan
    return app


def serve(config_path: str | Path | None, workers: int | None = None) -> None:
    """Check the configuration, then run uvicorn until SIGTERM (blocking)."""
    import uvicorn

    if workers is not None:
        os.environ["INO_ADAPTER_WORKERS"] = str(workers)
    config = load_config(config_path)
    configure_logging(config.log_level)
    build(config).close()  # every table read once here: a bad one stops the command now
    if config_path is not None:
        os.environ[CONFIG_FILE_ENV] = str(Path(config_path).resolve())
    ServiceLog().info(
        "starting",
        host=config.host,
        port=config.port,
        workers=config.workers,
        protocol=config.protocol,
        fhir_server=config.fhir_server is not None,
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again for the handler in
    # place before it: this one makes a graceful stop exit 0
    stops: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stops.append(signum))
    uvicorn.run(
        "adapter.service.server:app_factory",
        factory=True,
        host=config.host,
        port=config.port,
        workers=config.workers,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(config.request_timeout_s) + 1,
        timeout_keep_alive=5,
    )
    ServiceLog().info("stopped", signal=stops[0] if stops else None)
