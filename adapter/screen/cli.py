"""``ino-adapter screen``: checks the options, runs the export (``--server --export``) and the engine,
and prints the run's summary. cli.py's command is a thin wrapper around :func:`run_screen_command`."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from adapter.errors import AdapterError, ExitCode
from adapter.screen.core import ScreenSetup
from adapter.screen.local import ScreenOptions, ScreenReport, default_workers, run_screen

#: Messages listing problems on stderr (the rest are in report.json).
SHOWN_PROBLEMS = 20
#: Test hooks (environment): stop after N evaluated partitions, raising (exit 143) or SIGKILLing the run.
STOP_AFTER_ENV = "INO_SCREEN_STOP_AFTER"
KILL_AFTER_ENV = "INO_SCREEN_KILL_AFTER"
STOP_AFTER_KICKOFF_ENV = "INO_SCREEN_STOP_AFTER_KICKOFF"


class ScreenUsageError(AdapterError):
    exit_code = ExitCode.BAD_INPUT


def run_screen_command(
    *,
    export_dir: str | None,
    protocol: str,
    as_of: date,
    out_dir: str,
    all_patients: bool,
    workers: int | None,
    engine: str,
    master: str | None,
    mappings: tuple[str, ...],
    validate: bool,
    bsa_formula: str,
    site_settings: str | None,
    progress: str,
    server: str | None,
    do_export: bool,
    export_level: str,
    group: str | None,
    since: str | None,
    auth: str,
    client_id: str | None,
    key_file: str | None,
    key_id: str | None,
    token_env: str | None,
    token_file: str | None,
    say: Callable[[str], None],
    scopes: tuple[str, ...] = (),
) -> None:
    if do_export == (export_dir is not None):
        raise ScreenUsageError("give EXPORT_DIR, or --server URL --export (not both)")
    if do_export and not server:
        raise ScreenUsageError("--export needs --server URL")
    if not do_export and (server or since or group or export_level != "system" or scopes):
        raise ScreenUsageError("--server, --since, --group, --export-level and --scope go with --export")
    if scopes and auth != "smart":
        raise ScreenUsageError("--scope goes with --auth smart")
    if master and engine != "spark":
        raise ScreenUsageError("--master goes with --engine spark")
    setup = ScreenSetup(
        protocol=protocol,
        as_of=as_of,
        mappings=tuple(str(Path(m).resolve()) for m in mappings),
        validate=validate,
        all_patients=all_patients,
        bsa_formula=bsa_formula,  # type: ignore[arg-type]
        site_settings=str(Path(site_settings).resolve()) if site_settings else None,
    )
    out = Path(out_dir)
    options = ScreenOptions(
        export_dir=Path(export_dir) if export_dir else out / "export",
        out_dir=out,
        setup=setup,
        workers=workers or default_workers(),
        progress=progress,  # type: ignore[arg-type]
    )
    stop = os.environ.get(STOP_AFTER_ENV) or os.environ.get(KILL_AFTER_ENV)
    if stop:
        options.stop_after = int(stop)
        options.kill_on_stop = bool(os.environ.get(KILL_AFTER_ENV))
    if engine == "spark" and importlib.util.find_spec("pyspark") is None:
        raise ScreenUsageError(
            "--engine spark needs PySpark and a Java runtime: pip install 'ino-adapter[spark]' "
            "(scripts/ensure_java.sh installs Java)"
        )
    setup.load()  # a bad table or settings file: exit 3 before any server is asked
    client = None
    status_url = None
    if do_export:
        from adapter.screen.bulk import ExportRequest, fetch_export

        client = _connect(server or "", auth, client_id, key_file, key_id, token_env, token_file, scopes)
        request = ExportRequest(
            level="group" if group else export_level, group=group, since=_since(since) if since else None
        )
        stop_after_kickoff = bool(os.environ.get(STOP_AFTER_KICKOFF_ENV))
        try:
            options.export_dir, info, status_url = fetch_export(
                client, request, out, say, stop_after_kickoff=stop_after_kickoff
            )
        except BaseException:
            client.close()
            raise
        options.export_info = info
    try:
        report = _run_engine(options, engine, master, say)
        if client is not None and status_url is not None:
            from adapter.screen.bulk import finish_export

            finish_export(client, status_url, out, say)
    finally:
        if client is not None:
            client.close()
    _print(report, out, say)


def _run_engine(
    options: ScreenOptions, engine: str, master: str | None, say: Callable[[str], None]
) -> ScreenReport:
    if engine == "spark":
        from adapter.screen.spark import run_spark  # imports pyspark: only when the engine runs

        return run_spark(options, master=master, say=say)
    return run_screen(options, say=say)


def _since(value: str) -> str:
    from adapter.sync.options import SyncUsageError, parse_since

    if value == "auto":
        raise ScreenUsageError("--since: give a date-time (auto is for sync)")
    try:
        parsed = parse_since(value)
    except SyncUsageError as exc:
        raise ScreenUsageError(exc.message) from None
    return str(parsed)


def _connect(
    server: str,
    auth: str,
    client_id: str | None,
    key_file: str | None,
    key_id: str | None,
    token_env: str | None,
    token_file: str | None,
    scopes: tuple[str, ...] = (),
) -> Any:
    """The FHIR client, its auth built as sync builds it (SMART: read scopes on the types exported and on
    Group, in the server's scope syntax, unless ``--scope`` says which)."""
    from adapter.fhir.auth import READ_TYPES, SmartBackendAuth, make_auth, smart_scopes
    from adapter.fhir.client import FhirClient

    credentials = make_auth(
        auth,
        client_id=client_id,
        key_file=key_file,
        key_id=key_id,
        token_env=token_env,
        token_file=token_file,
        scopes=scopes or None,
    )
    try:
        client = FhirClient(server, auth=credentials, timeout=(5.0, 300.0), pool_size=4)
    except ValueError as exc:
        raise ScreenUsageError(f"--server: {exc}") from None
    if isinstance(credentials, SmartBackendAuth) and credentials.scopes is None:
        version = client.smart_configuration().scope_version
        credentials.scopes = tuple(smart_scopes(read=READ_TYPES, write=(), version=version))
    return client


def _print(report: ScreenReport, out: Path, say: Callable[[str], None]) -> None:
    r = report.report
    for problem in r.get("problems", [])[:SHOWN_PROBLEMS]:
        say(f"warning: {problem}")
    more = int(r.get("problems_total", 0)) - min(SHOWN_PROBLEMS, len(r.get("problems", [])))
    if more > 0:
        say(f"... and {more} more problem(s): see {out / 'report.json'}")
    for skipped in r.get("skipped_files", []):
        say(f"skipped {skipped['file']}: {skipped['why']}")
    statuses = ", ".join(f"{n} {s}" for s, n in r.get("eligibility", {}).items()) or "none"
    actions = ", ".join(f"{n} {a}" for a, n in r.get("actions", {}).items()) or "none"
    lines = [
        f"screened {r.get('lines', {}).get('resources', 0)} resources of {r.get('patients', 0)} patients: "
        f"{r.get('candidates', 0)} candidate(s), {r.get('evaluated', 0)} evaluated",
        f"eligibility: {statuses}",
        f"next dose: {actions}",
        f"broken lines: {r.get('broken_lines', 0)}; skipped files: {len(r.get('skipped_files', []))}",
        f"outputs in {out}/: " + ", ".join(r.get("outputs", [])) + ", report.json",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
