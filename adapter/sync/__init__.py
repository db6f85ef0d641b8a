"""``ino-adapter sync``: a scheduled job that evaluates the protocol's patients on the hospital's FHIR
server and writes the results back (issue #11 §3-§5).

    from adapter.sync import SyncOptions, run_sync

    report = run_sync(SyncOptions(server="https://fhir.example.org/r4", protocol="nhs-ta514",
                                  state=Path("/var/lib/ino-adapter/sync.sqlite"), as_of=date.today(),
                                  auth="bearer", token_env="INO_FHIR_TOKEN", since="auto"))
    report.exit_code, report.as_json()

Modules: ``options`` (what a run is asked), ``selection`` (the cohort and what changed), ``fetch`` (records
with few round trips), ``patient`` (evaluate through adapter.evaluate, reconcile, write, conflicts),
``ledger`` (the SQLite state file: resumable runs, checkpoints, what we wrote), ``runner`` (the run:
workers, signals, progress) and ``report``. Every decision is made by the per-patient unit
(adapter.evaluate); write-back Bundles are built by adapter.writeback.
"""

from __future__ import annotations

from adapter.sync.options import SyncOptions, SyncUsageError
from adapter.sync.report import SyncReport
from adapter.sync.runner import run_sync

__all__ = ["SyncOptions", "SyncReport", "SyncUsageError", "run_sync"]
