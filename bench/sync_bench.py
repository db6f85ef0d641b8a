"""Sync benchmark: ``ino-adapter sync`` against a local sekmet-fhir server, next to the server's own time.

    .venv/bin/python bench/sync_bench.py [--patients N] [--concurrency C] [--json]

1. Start two sekmet-fhir servers (tests/support/fhir_server.py's helpers) and seed both with the same
   N patients on treatment (tests/support/population.py).
2. Run sync three times against server A, recording every HTTP request it sends (a ``requests``
   response hook: method, URL, body, and the worker thread that sent it):
   ``first`` (everything written), ``steady`` (every patient evaluated again, nothing to write) and
   ``since`` (``--since auto``: unchanged patients skipped, dose days evaluated).
3. Replay each run's requests against server B, directly (a bare ``requests.Session``, no adapter
   code), with the same parallelism: the requests of each sync worker in order on a thread of their
   own, after the selection's requests. That is the time the server needs for the same reads and
   writes; ``overhead`` = sync time / replay time - 1 is what the adapter adds (evaluation, R4B
   validation, summaries, write-back building, the ledger).

Targets: at most 3 HTTP round trips per patient in a steady state; adapter overhead at most 20 % of
the server's time. This is a report, not a test: it always exits 0 and prints ``TARGET MISSED`` lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests` (the server and the population) is not an installed package
    sys.path.insert(0, str(ROOT))

from adapter.fhir.client import FhirClient  # noqa: E402
from adapter.sync import SyncOptions, SyncReport, run_sync  # noqa: E402
from tests.support.fhir_server import SekmetServer, ensure_installed, start_server  # noqa: E402
from tests.support.population import population, seed  # noqa: E402

AS_OF = date(2026, 11, 21)
MAX_ROUND_TRIPS = 3.0
MAX_OVERHEAD = 0.20


@dataclass
class Recorded:
    thread: str
    method: str
    url: str
    body: bytes | None
    headers: dict[str, str]


@dataclass
class Recorder:
    items: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, response: requests.Response, *_args: Any, **_kwargs: Any) -> requests.Response:
        req = response.request
        body = req.body.encode() if isinstance(req.body, str) else req.body
        kept = ("accept", "content-type", "prefer", "if-match", "if-none-exist")
        headers = {k: v for k, v in req.headers.items() if k.lower() in kept}
        method, url = req.method or "GET", req.url or ""
        item = Recorded(
            threading.current_thread().name, method, url, body if isinstance(body, bytes) else None, headers
        )
        with self.lock:
            self.items.append(item)
        return response


def run_recorded(options: SyncOptions, recorder: Recorder) -> tuple[SyncReport, float]:
    """Run sync with every request recorded (the hook goes on the client's session)."""
    from adapter.sync import runner

    original = runner.connect

    def connect(options: SyncOptions) -> FhirClient:
        client = original(options)
        client.session.hooks.setdefault("response", []).append(recorder.hook)
        return client

    runner.connect = connect
    try:
        t0 = time.perf_counter()
        report = run_sync(options)
        return report, time.perf_counter() - t0
    finally:
        runner.connect = original


def replay(recorded: list[Recorded], source: SekmetServer, target: SekmetServer) -> float:
    """The recorded requests against ``target``, each worker's in order on its own thread; seconds."""
    main = [r for r in recorded if not r.thread.startswith("sync")]
    workers: dict[str, list[Recorded]] = defaultdict(list)
    for r in recorded:
        if r.thread.startswith("sync"):
            workers[r.thread].append(r)
    auth = {"Authorization": f"Bearer {target.token}"}
    old, new = source.base_url.encode(), target.base_url.encode()

    def send(session: requests.Session, r: Recorded) -> None:
        body = r.body.replace(old, new) if r.body else None
        url = r.url.replace(source.base_url, target.base_url)
        session.request(r.method, url, data=body, headers={**r.headers, **auth}, timeout=120).close()

    def play(items: list[Recorded]) -> None:
        with requests.Session() as session:
            for r in items:
                send(session, r)

    t0 = time.perf_counter()
    play(main)
    threads = [threading.Thread(target=play, args=(items,)) for items in workers.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    python = ensure_installed()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ino-sync-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        a, b = start_server(python, tmp / "a"), start_server(python, tmp / "b")
        try:
            records = population("b", AS_OF, treated=args.patients, healthy=0)
            resources = [r for rs in records.values() for r in rs]
            for server in (a, b):
                with server.client() as client:
                    seed(client, resources)
            token = tmp / "token"
            token.write_text(a.token)
            token.chmod(0o600)
            state = tmp / "state.sqlite"
            for name, since in (("first", None), ("steady", None), ("since", "auto")):
                options = SyncOptions(
                    server=a.base_url, protocol="nhs-ta514", state=state, as_of=AS_OF, auth="bearer",
                    token_file=str(token), since=since, concurrency=args.concurrency, progress="none",
                )  # fmt: skip
                recorder = Recorder()
                report, took = run_recorded(options, recorder)
                server_s = replay(recorder.items, a, b)
                data = report.as_json()
                patients = data["patients"]["selected"]
                results.append(
                    {
                        "run": name,
                        "patients": patients,
                        "evaluated": data["patients"]["evaluated"],
                        "written": data["patients"]["written"],
                        "sync_s": round(took, 3),
                        "patients_per_s": round(patients / took, 1),
                        "round_trips": data["http"]["round_trips"],
                        "round_trips_per_patient": data["http"]["per_patient"],
                        "server_s": round(server_s, 3),
                        "overhead": round(took / server_s - 1, 3) if server_s > 0 else None,
                        "exit_code": report.exit_code,
                    }
                )
        finally:
            a.stop()
            b.stop()
    missed = []
    for r in results:
        if r["run"] != "first" and (r["round_trips_per_patient"] or 0) > MAX_ROUND_TRIPS:
            missed.append(
                f"{r['run']}: {r['round_trips_per_patient']} round trips per patient > {MAX_ROUND_TRIPS}"
            )
        if r["overhead"] is not None and r["overhead"] > MAX_OVERHEAD:
            missed.append(
                f"{r['run']}: adapter overhead {r['overhead']:.0%} > {MAX_OVERHEAD:.0%} of the server's time"
            )
    if args.json:
        print(json.dumps({"results": results, "missed": missed}, indent=2))
    else:
        print(f"{'run':<8} {'patients':>8} {'evaluated':>9} {'written':>7} {'sync s':>7} {'pat/s':>6} "
              f"{'trips':>6} {'trips/pat':>9} {'server s':>8} {'overhead':>8}")  # fmt: skip
        for r in results:
            cells = [
                f"{r['run']:<8}",
                f"{r['patients']:>8}",
                f"{r['evaluated']:>9}",
                f"{r['written']:>7}",
                f"{r['sync_s']:>7.2f}",
                f"{r['patients_per_s']:>6.1f}",
                f"{r['round_trips']:>6}",
                f"{r['round_trips_per_patient']:>9}",
                f"{r['server_s']:>8.2f}",
                f"{r['overhead']:>8.0%}",
            ]
            print(" ".join(cells))
    for m in missed:
        print(f"TARGET MISSED: {m}", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
