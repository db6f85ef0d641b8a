"""The FastAPI application: ``create_app(deps)``.

Routes: the REST and FHIR endpoints (adapter.service.routes), the health checks, and the CDS Hooks services
(adapter.service.cds.routes, included when present). Every error is an OperationOutcome
(adapter.service.errors).

Around every request (:class:`Guard`, a plain ASGI middleware):

- a request id: the caller's ``X-Request-Id`` when it is 1-64 of ``[A-Za-z0-9._-]``, else a new one;
  echoed in the answer's ``X-Request-Id`` and in every log line of the request;
- the size limit: a ``Content-Length`` over ``max_request_bytes`` is answered 413 before anything is read;
  a body without one (chunked) is counted as it arrives and refused with 413 as soon as it passes the
  limit;
- the time limit: a request still running after ``request_timeout_s`` is answered 503 with
  ``Retry-After`` (the work already started finishes in its thread; its answer is kept when it was
  idempotent by key);
- one access-log line: method, path shape (ids replaced), status, duration; never a query string.
"""

from __future__ import annotations

import importlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from adapter import __version__ as _adapter_version
from adapter.service.deps import ServiceDeps
from adapter.service.errors import (
    DEFAULT_RETRY_AFTER,
    FHIR_JSON,
    ServiceError,
    operation_outcome,
    outcome_response,
)
from adapter.service.logs import path_shape, request_id_var

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


class BodyTooLargeError(ServiceError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes", "too-costly")


async def _send_outcome(send: Send, status: int, code: str, text: str, headers: dict[str, str]) -> None:
    body = orjson.dumps(operation_outcome(code, text))
    raw = [(b"content-type", FHIR_JSON.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Request id, size limit, time limit and access log around the app (see the module docstring)."""

    def __init__(self, app: ASGIApp, deps: ServiceDeps) -> None:
        self.app = app
        self.deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 0, "sent": False, "received": 0}
        limit = self.deps.config.max_request_bytes
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["sent"] = True
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        async def receive_limited() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    raise BodyTooLargeError(limit)
            return message

        try:
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                status = 413 if length.isdigit() else 400
                text = str(BodyTooLargeError(limit)) if status == 413 else "invalid Content-Length"
                await _send_outcome(
                    send_wrapper, status, "too-costly" if status == 413 else "invalid", text, {}
                )
                return
            try:
                with anyio.fail_after(self.deps.config.request_timeout_s):
                    await self.app(scope, receive_limited, send_wrapper)
            except TimeoutError:
                self.deps.log.warning("request timed out", timeout_s=self.deps.config.request_timeout_s)
                if not state["sent"]:
                    await _send_outcome(
                        send_wrapper,
                        503,
                        "timeout",
                        f"the request took longer than {self.deps.config.request_timeout_s:g} s; try again",
                        {"Retry-After": str(DEFAULT_RETRY_AFTER)},
                    )
            except BodyTooLargeError as exc:
                if not state["sent"]:
                    await _send_outcome(send_wrapper, 413, "too-costly", exc.text, {})
        finally:
            self.deps.log.info(
                "request",
                method=scope.get("method"),
                path=path_shape(scope.get("path", "")),
                status=state["status"],
                ms=round((time.perf_counter() - started) * 1000, 2),
                bytes_in=state["received"],
            )
            request_id_var.reset(token)


def _include_cds(app: FastAPI, deps: ServiceDeps) -> bool:
    """The CDS Hooks routes, when the package is there (adapter.service.cds.routes.build_router)."""
    try:  # imported by name: the CDS package is written alongside and may not be there yet
        routes = importlib.import_module("adapter.service.cds.routes")
    except ModuleNotFoundError as exc:
        if exc.name not in ("adapter.service.cds", "adapter.service.cds.routes"):
            raise
        return False
    app.include_router(routes.build_router(deps))
    return True


def create_app(deps: ServiceDeps) -> FastAPI:
    from adapter.service.openapi import install_openapi
    from adapter.service.routes import build_router

    app = FastAPI(
        title="ino-adapter service",
        version=_adapter_version,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.deps = deps

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else "request"
        return outcome_response(
            400, "invalid", f"{where}: {errors[0].get('msg', 'invalid')}" if errors else where
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        text = exc.detail if isinstance(exc.detail, str) else "request refused"
        return outcome_response(exc.status_code, None, text, exc.headers)

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> Response:
        deps.log.error("internal error", error=type(exc).__name__)
        return outcome_response(500, "exception", f"internal error ({type(exc).__name__})")

    app.include_router(build_router(deps))
    app.state.cds = _include_cds(app, deps)
    install_openapi(app)
    app.add_middleware(Guard, deps=deps)
    return app
