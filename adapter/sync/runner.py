"""``ino-adapter sync``: one run against the hospital's FHIR server (see adapter/sync/__init__.py).

1. Load the variant, tables and settings (a bad file stops here: exit 3), take the state file's lock
   (a second run on the same state file is refused: exit 2), connect (unreachable or refused: exit 5).
2. Resume the unfinished run started with the same options, or start one: select the cohort, scan it
   for changes since each patient's checkpoint (``--since``), record every selected patient in the
   ledger (``selected`` or ``skipped``).
3. Make sure the adapter's Device exists (once, before any worker: conditional create is not atomic).
4. Work through the patients not yet done, in chunks (one batch request fetches a chunk), with up to
   ``--concurrency`` chunks at a time; each patient is in one chunk, so one worker at a time writes it.
   SIGTERM (or Ctrl-C) lets the chunks in flight finish and starts no other; the run stops cleanly and
   the next one resumes it.
5. Close the run: completed (the checkpoints advance), stopped, or aborted (the server became unusable);
   the report.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from types import FrameType
from typing import Any

from adapter.evaluate import Setup
from adapter.fhir.auth import READ_TYPES, WRITE_TYPES, SmartBackendAuth, make_auth, smart_scopes
from adapter.fhir.client import FhirClient, FhirError, FhirUnauthorized
from adapter.safe_text import clean
from adapter.sync.ledger import DONE_STATES, Ledger, PatientState, Run, later, utc_now
from adapter.sync.options import SyncOptions, SyncUsageError
from adapter.sync.patient import Context, PatientResult, process_chunk
from adapter.sync.report import SyncReport
from adapter.sync.selection import PATIENT_TYPES, Changes, dose_due, scan_changes, select_patients
from adapter.writeback.apply import lookup_keys
from adapter.writeback.bundle import Existing, existing_from_resources, lookup_query, software_device
from adapter.writeback.keys import Key, content

log = logging.getLogger("adapter.sync")

#: Chunks whose whole request failed (no answer, 5xx after the client's retries) in a row before the
#: run gives up on the server (exit 5; the next run resumes).
MAX_FAILED_CHUNKS = 2
#: What sync reads (SMART scopes): the adapter's types, and the Group of --group, Immunization, Medication.


class RoundTrips:
    """Counts HTTP exchanges (a ``requests`` response hook: retries and token requests included)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def hook(self, response: Any, *_args: Any, **_kwargs: Any) -> Any:
        with self._lock:
            self.count += 1
        return response


def connect(options: SyncOptions) -> FhirClient:
    """The client for ``options.server`` with the configured auth; secrets come from the environment or a
    file, never from an argument."""
    auth = make_auth(
        options.auth,
        client_id=options.client_id,
        key_file=options.key_file,
        key_id=options.key_id,
        token_env=options.token_env,
        token_file=options.token_file,
        scopes=options.scopes if options.auth == "smart" else None,
    )
    try:
        client = FhirClient(
            options.server,
            timeout=options.timeout,
            auth=auth,
            pool_size=options.concurrency + 2,
            headers=options.extra_headers or None,
            retry=options.retry,
        )
    except ValueError as exc:
        raise SyncUsageError(f"--server: {exc}") from None
    if isinstance(auth, SmartBackendAuth) and auth.scopes is None:
        # sync also reads Group (--group), Immunization and Medication: ask for them too, in the scope
        # syntax the server advertises (before any request, so before the first token)
        version = client.smart_configuration().scope_version
        auth.scopes = tuple(smart_scopes(read=READ_TYPES, write=WRITE_TYPES, version=version))
    return client


@contextlib.contextmanager
def state_lock(state: Path) -> Iterator[None]:
    """An exclusive lock on the state file for the whole run (a second run on it is refused)."""
    state.parent.mkdir(parents=True, exist_ok=True)
    lock_path = state.with_name(state.name + ".lock")
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncUsageError(f"{state}: another sync run is using this state file") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (the chunks in flight finish) while the run lasts (main thread
    only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.warning("%s: finishing the patients in flight, then stopping", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def ensure_device(client: FhirClient, dry_run: bool, use_batch: bool) -> dict[Key, Existing]:
    """The adapter's Device, created once here (not by the patients' transactions, which run at the same
    time) unless it exists; a dry run only looks."""
    key, device = software_device()
    found = lookup_keys(client, [("Device", key)], use_batch=use_batch)
    if not found and not dry_run:
        body = client.create(device, if_none_exist=lookup_query(device)).body
        found = [body] if body else lookup_keys(client, [("Device", key)], use_batch=use_batch)
    existing = existing_from_resources(found)
    mine = existing.get(key)
    if mine is not None and content(mine.resource) != content(device):
        existing[key] = Existing(mine.ref, mine.status, mine.etag, mine.resource, edited_elsewhere=True)
    return existing


class Progress:
    """A progress bar on a terminal, else one plain log line per patient (named by its tag only)."""

    def __init__(self, mode: str, total: int) -> None:
        self._bar: Any = None
        if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="patient", desc="sync", file=sys.stderr, dynamic_ncols=True)
        self.lines = mode != "none"
        self._lock = threading.Lock()

    def __call__(self, result: PatientResult) -> None:
        line = f"{result.tag}: {result.state}"
        if result.action:
            line += f" ({result.action})"
        if result.state == "written":
            line += f"; {result.entries} entries sent ({result.created} created, {result.updated} updated)"
        elif result.state == "planned":
            line += f"; would send {result.entries} entries (dry run)"
        if result.kept:
            line += f"; {result.kept} clinician edits kept"
        if result.conflicts:
            line += f"; {result.conflicts} conflicts met"
        if result.reason:
            line += f": {clean(result.reason)}"
        with self._lock:
            if self._bar is not None:
                self._bar.update(1)
                if result.state in ("failed", "conflict"):
                    self._bar.write(f"ino-adapter sync: {line}", file=sys.stderr)
            elif self.lines:
                log.info("%s", line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def templates_digest(site_dir: str | None) -> str:
    """A digest of the summary templates in force (the packaged ones and a site's), with the adapter's
    version: a cached summary is reused only while these are the same."""
    import hashlib

    from adapter import __version__
    from adapter.summary.render import packaged_template_dir

    digest = hashlib.sha256(__version__.encode())
    for folder in (packaged_template_dir(), Path(site_dir) if site_dir else None):
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix != ".pyc":
                digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _chunks(states: list[PatientState], per_request: int, workers: int) -> list[list[PatientState]]:
    size = max(1, min(per_request, math.ceil(len(states) / max(1, workers)))) if states else 1
    return [states[i : i + size] for i in range(0, len(states), size)]


def _select(
    ctx_client: FhirClient, options: SyncOptions, setup: Setup, ledger: Ledger, run: Run, report: SyncReport
) -> None:
    """Select the cohort and record it in the ledger with who is skipped (a new run only)."""
    features = ctx_client.server_capabilities()
    sel = select_patients(
        ctx_client,
        setup.tables,
        patients=options.patients,
        group=options.group,
        page_size=options.page_size,
        use_batch=features.batch,
    )
    report.not_found = list(sel.missing)
    known = ledger.patients(run.scope, sel.patient_ids)
    since: dict[str, str] = {}
    if options.since is not None and not all(features.searches_last_updated(t) for t, _ in PATIENT_TYPES):
        log.warning("the server does not search by _lastUpdated: --since ignored, every patient evaluated")
    elif options.since == "auto":
        since = {p: s.checkpoint for p, s in known.items() if s.checkpoint and s.evaluation}
    elif options.since is not None:
        since = dict.fromkeys(sel.patient_ids, options.since)
    changes = scan_changes(ctx_client, known, since, use_batch=features.batch) if since else Changes()
    ledger.set_server_time(run.run_id, later(sel.server_time, changes.server_time))
    rows: list[tuple[str, str, str | None]] = []
    for pid in sel.patient_ids:
        if pid in since and pid not in changes.changed:
            if dose_due(known[pid], run_as_of(run)):
                rows.append((pid, "selected", None))
            else:
                rows.append((pid, "skipped", f"unchanged since {since[pid]}"))
        else:
            rows.append((pid, "selected", None))
    ledger.add_patients(run.run_id, rows)


def run_as_of(run: Run) -> Any:
    from datetime import date

    return date.fromisoformat(run.as_of)


def run_sync(
    options: SyncOptions,
    *,
    stop: threading.Event | None = None,
    on_result: Callable[[PatientResult], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncReport:
    """One sync run (module docstring). Raises AdapterError for what stops the run before any patient
    (bad options or tables, the server unusable); per-patient failures are in the report."""
    t0 = time.monotonic()
    stop = stop or threading.Event()
    setup = Setup.load(
        options.protocol, options.as_of, options.mappings, options.site_settings, validate=options.validate
    )
    with state_lock(options.state):
        ledger = Ledger(options.state)
        client = connect(options)
        trips = RoundTrips()
        client.session.hooks.setdefault("response", []).append(trips.hook)
        try:
            with stop_on_signals(stop):
                return _run(options, setup, ledger, client, trips, stop, on_result, sleep, t0)
        finally:
            client.close()
            ledger.close()


def _run(
    options: SyncOptions,
    setup: Setup,
    ledger: Ledger,
    client: FhirClient,
    trips: RoundTrips,
    stop: threading.Event,
    on_result: Callable[[PatientResult], None] | None,
    sleep: Callable[[float], None],
    t0: float,
) -> SyncReport:
    features = client.server_capabilities()
    run = ledger.start_run(options.scope, options.as_of.isoformat(), options.selection(), options.dry_run)
    report = SyncReport(
        run.run_id,
        options.server,
        options.protocol,
        run.as_of,
        resumed=run.resumed,
        since=options.since,
        status="dry-run" if options.dry_run else "running",
    )
    status = "stopped"
    try:
        if not run.selected:
            _select(client, options, setup, ledger, run, report)
        rows = ledger.run_patients(run.run_id)
        report.selected = len(rows)
        report.skipped_unchanged = sum(1 for r in rows if r.state == "skipped")
        report.done_before = sum(1 for r in rows if r.state in DONE_STATES and r.state != "skipped")
        report.durations["select"] = time.monotonic() - t0
        device = ensure_device(client, options.dry_run, features.batch)
        todo = [r.patient_id for r in rows if r.state not in DONE_STATES]
        known = ledger.patients(run.scope, todo)
        progress = Progress(options.progress, len(todo))

        def record(result: PatientResult) -> None:
            progress(result)
            if on_result is not None:
                on_result(result)

        now, templates = utc_now(), templates_digest(setup.settings.template_dir)
        ctx = Context(client, setup, ledger, run, options, features, device, now, templates, record, sleep)
        t1 = time.monotonic()
        try:
            aborted = _work(ctx, [known[p] for p in todo], report, stop)
        finally:
            progress.close()
        report.durations["process"] = time.monotonic() - t1
        if aborted is not None:
            report.status, report.aborted_reason = "aborted", aborted
        elif stop.is_set() and _unfinished(ledger, run):
            report.status = "stopped"
        else:
            status = "completed"
            report.status = "dry-run" if options.dry_run else "completed"
    finally:
        report.checkpoint = ledger.finish_run(run, status)
        report.round_trips = trips.count
        report.durations["total"] = time.monotonic() - t0
        if options.report_path is not None:
            report.write(options.report_path)
    return report


def _unfinished(ledger: Ledger, run: Run) -> bool:
    """Patients of the run that no worker has reached (failed ones were reached: the run is over)."""
    return any(r.state not in DONE_STATES | {"failed", "conflict"} for r in ledger.run_patients(run.run_id))


def _work(ctx: Context, states: list[PatientState], report: SyncReport, stop: threading.Event) -> str | None:
    """Run the chunks with up to ``concurrency`` at a time. Returns why the run was aborted, or None."""
    chunks = iter(_chunks(states, ctx.options.patients_per_request, ctx.options.concurrency))
    failed_in_a_row = 0
    aborted: str | None = None
    lock = threading.Lock()

    def collect(result: PatientResult) -> None:
        with lock:
            report.results.append(result)

    inner = ctx.on_result

    def on_result(result: PatientResult) -> None:
        collect(result)
        inner(result)

    ctx.on_result = on_result
    with ThreadPoolExecutor(max_workers=ctx.options.concurrency, thread_name_prefix="sync") as pool:
        running: dict[Future[list[PatientResult]], list[PatientState]] = {}
        while True:
            while aborted is None and not stop.is_set() and len(running) < ctx.options.concurrency:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                running[pool.submit(process_chunk, ctx, chunk)] = chunk
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                chunk = running.pop(future)
                exc = future.exception()
                if exc is None:
                    failed_in_a_row = 0
                    continue
                if isinstance(exc, FhirUnauthorized):
                    aborted = f"the server refused our credentials: {clean(exc.message)}"
                    continue
                why = (
                    clean(exc.message)
                    if isinstance(exc, FhirError)
                    else f"internal error ({type(exc).__name__})"
                )
                for state in chunk:
                    ctx.ledger.mark(ctx.run.run_id, state.patient_id, "failed", why)
                    on_result(PatientResult(state.patient_id, "failed", why))
                if isinstance(exc, FhirError) and (exc.status is None or exc.retryable):
                    failed_in_a_row += 1
                    if failed_in_a_row >= MAX_FAILED_CHUNKS:
                        aborted = f"the server stopped answering: {why}"
    return aborted
