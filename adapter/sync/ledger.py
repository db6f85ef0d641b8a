"""The sync state file: a SQLite database (stdlib sqlite3, WAL) that makes runs resumable and incremental.

Tables (schema version 1):

``runs``
    one row per run: ``run_id``, ``scope`` (server base URL + variant: what checkpoints are for),
    ``started_at`` (UTC, this machine's clock), ``as_of``, ``options`` (JSON: the selection, so that a
    resumed run selects the same patients), ``status`` (``running``, ``stopped`` after SIGTERM,
    ``completed``, ``abandoned`` when a run with other options replaced it, ``dry-run``), ``finished_at``,
    ``server_time`` (the latest ``meta.lastUpdated`` seen while selecting: the server's clock),
    ``checkpoint`` (set on completion: the lower of ``started_at`` and ``server_time``) and
    ``selected_at`` (when its selection was recorded: a run killed before that selects again).
``run_patients``
    one row per selected patient of a run: ``state`` (``selected`` → ``fetched`` → ``evaluated`` →
    ``written`` | ``unchanged``; or ``skipped``, ``planned`` (dry run), ``conflict``, ``failed``),
    ``reason`` (why failed, conflicting or skipped; never patient data), ``plan_digest``, ``entries``
    (sent), ``attempts``, ``seen_until`` (the latest ``meta.lastUpdated`` of the record as fetched).
``patients``
    per scope and patient, what the next run needs: the last ``evaluation`` (JSON) and the ``previous``
    one that differed (the summary's "what changed"), ``plan_digest``, the next dose window of the last
    plan (``dose_earliest``, ``dose_latest``), ``versions`` (``{reference: versionId}`` of our resources as
    we left them: a different version on the server means a clinician changed it), ``keys`` (our
    resources' ``[type, system, value]``, looked up together with the record), ``valid``
    (``{reference: versionId}`` of the record's resources that passed R4B validation: not validated
    again while unchanged), ``summaries`` (the last rendered summaries and the digest of what they
    were rendered from: not rendered again while it is the same) and ``checkpoint`` (changes to the
    record after this server time are not in the last evaluation; advanced only when the run
    completes).
``checkpoints``
    per scope, the ``--since auto`` checkpoint of the last completed run.

Every state change is committed at once (``synchronous=NORMAL`` in WAL mode survives SIGKILL of the
process), so a killed run knows, per patient, how far it got. The file holds evaluations, which name
the patient: it is created readable by its owner only, like the ``--out`` folders it stands beside.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    started_at TEXT NOT NULL,
    as_of TEXT NOT NULL,
    options TEXT NOT NULL,
    status TEXT NOT NULL,
    finished_at TEXT,
    server_time TEXT,
    checkpoint TEXT,
    selected_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_scope ON runs(scope, started_at);
CREATE TABLE IF NOT EXISTS run_patients (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    patient_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    plan_digest TEXT,
    entries INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    seen_until TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (run_id, patient_id)
);
CREATE TABLE IF NOT EXISTS patients (
    scope TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    evaluation TEXT,
    previous TEXT,
    plan_digest TEXT,
    dose_earliest TEXT,
    dose_latest TEXT,
    versions TEXT NOT NULL DEFAULT '{}',
    keys TEXT NOT NULL DEFAULT '[]',
    valid TEXT NOT NULL DEFAULT '{}',
    summaries TEXT,
    checkpoint TEXT,
    run_id TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (scope, patient_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    scope TEXT PRIMARY KEY,
    since TEXT NOT NULL,
    run_id TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""

#: A patient in one of these states needs no more work in its run.
DONE_STATES = frozenset({"skipped", "written", "unchanged", "planned"})
#: States that count as a successful evaluation (the record as fetched is covered by the plan).
COVERED_STATES = frozenset({"written", "unchanged"})


def _dumps(value: Any) -> str:
    """Canonical JSON text (sorted keys), so that equal values store equal text."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def utc_now() -> str:
    """The current UTC time as a FHIR instant, to the millisecond."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def later(a: str | None, b: str | None) -> str | None:
    """The later of two FHIR instants (either may be None)."""
    if a is None or b is None:
        return a or b
    return a if parse_instant(a) >= parse_instant(b) else b


def earlier(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if parse_instant(a) <= parse_instant(b) else b


def parse_instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    scope: str
    started_at: str
    as_of: str
    options: dict[str, Any]
    status: str
    resumed: bool = False
    selected: bool = False  # its selection is recorded (a run killed while selecting selects again)


@dataclass(slots=True)
class PatientState:
    """What the ledger knows about one patient from earlier runs (all None/empty for a new patient)."""

    patient_id: str
    evaluation: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    plan_digest: str | None = None
    dose_earliest: str | None = None
    dose_latest: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    keys: list[tuple[str, str, str]] = field(default_factory=list)
    checkpoint: str | None = None
    valid: dict[str, str] = field(default_factory=dict)
    summaries: dict[str, str] | None = None  # {"key": digest, "html": ..., "md": ...}


@dataclass(frozen=True, slots=True)
class RunPatient:
    patient_id: str
    seq: int
    state: str
    reason: str | None
    plan_digest: str | None
    entries: int | None
    attempts: int
    seen_until: str | None


class Ledger:
    """The state file. Thread-safe (one connection, a lock); every method commits."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)
        with self._tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif row["value"] != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"state file schema {row['value']}, expected {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    # -- runs ---------------------------------------------------------------------------------
    def start_run(self, scope: str, as_of: str, options: Mapping[str, Any], dry_run: bool) -> Run:
        """Resume the scope's unfinished run when it was started with the same options; else (marking
        an unfinished run with other options ``abandoned``) start a new one."""
        text = json.dumps(dict(options), sort_keys=True)
        with self._tx() as c:
            if not dry_run:
                row = c.execute(
                    "SELECT * FROM runs WHERE scope=? AND status IN ('running', 'stopped') "
                    "ORDER BY started_at DESC LIMIT 1",
                    (scope,),
                ).fetchone()
                if row is not None:
                    if row["options"] == text and row["as_of"] == as_of:
                        c.execute("UPDATE runs SET status='running' WHERE run_id=?", (row["run_id"],))
                        return Run(
                            row["run_id"],
                            scope,
                            row["started_at"],
                            as_of,
                            dict(options),
                            "running",
                            resumed=True,
                            selected=row["selected_at"] is not None,
                        )
                    c.execute(
                        "UPDATE runs SET status='abandoned', finished_at=? WHERE scope=? "
                        "AND status IN ('running', 'stopped')",
                        (utc_now(), scope),
                    )
            run = Run(
                uuid.uuid4().hex, scope, utc_now(), as_of, dict(options), "dry-run" if dry_run else "running"
            )
            c.execute(
                "INSERT INTO runs(run_id, scope, started_at, as_of, options, status) VALUES (?,?,?,?,?,?)",
                (run.run_id, scope, run.started_at, as_of, text, run.status),
            )
            return run

    def set_server_time(self, run_id: str, server_time: str | None) -> None:
        """Remember the latest ``meta.lastUpdated`` seen while selecting (kept across resumes: the lowest)."""
        if server_time is None:
            return
        with self._tx() as c:
            row = c.execute("SELECT server_time FROM runs WHERE run_id=?", (run_id,)).fetchone()
            known = row["server_time"] if row is not None else None
            # a resumed run keeps the first selection's time: its patients were selected then
            c.execute("UPDATE runs SET server_time=? WHERE run_id=?", (known or server_time, run_id))

    def run_server_time(self, run_id: str) -> str | None:
        with self._lock:
            row = self.conn.execute("SELECT server_time FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row["server_time"] if row is not None else None

    def finish_run(self, run: Run, status: str) -> str | None:
        """Close the run. ``completed`` (not for a dry run) advances the checkpoints: the run's (the lower
        of its start and the server time seen while selecting) and each covered patient's. Returns the
        run's checkpoint, or None when nothing advanced."""
        with self._tx() as c:
            row = c.execute("SELECT * FROM runs WHERE run_id=?", (run.run_id,)).fetchone()
            now = utc_now()
            if status != "completed" or row is None or row["status"] == "dry-run":
                c.execute(
                    "UPDATE runs SET status=?, finished_at=? WHERE run_id=?",
                    (
                        "dry-run" if row is not None and row["status"] == "dry-run" else status,
                        now,
                        run.run_id,
                    ),
                )
                return None
            checkpoint = earlier(row["started_at"], row["server_time"])
            assert checkpoint is not None
            c.execute(
                "UPDATE runs SET status='completed', finished_at=?, checkpoint=? WHERE run_id=?",
                (now, checkpoint, run.run_id),
            )
            c.execute(
                "INSERT INTO checkpoints(scope, since, run_id, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT(scope) DO UPDATE SET since=excluded.since, run_id=excluded.run_id, "
                "updated_at=excluded.updated_at",
                (run.scope, checkpoint, run.run_id, now),
            )
            rows = c.execute(
                "SELECT rp.patient_id, rp.state, rp.seen_until, p.checkpoint FROM run_patients rp "
                "JOIN patients p ON p.scope=? AND p.patient_id=rp.patient_id WHERE rp.run_id=?",
                (run.scope, run.run_id),
            ).fetchall()
            for r in rows:
                if r["state"] in COVERED_STATES:
                    # the record as fetched (no later than its own latest change, nor than the run start)
                    new = earlier(row["started_at"], later(row["server_time"], r["seen_until"]))
                elif r["state"] == "skipped" and r["checkpoint"] is not None:
                    new = later(r["checkpoint"], checkpoint)  # verified unchanged up to the selection
                else:
                    continue
                c.execute(
                    "UPDATE patients SET checkpoint=?, updated_at=? WHERE scope=? AND patient_id=?",
                    (new, now, run.scope, r["patient_id"]),
                )
            return checkpoint

    def checkpoint(self, scope: str) -> str | None:
        with self._lock:
            row = self.conn.execute("SELECT since FROM checkpoints WHERE scope=?", (scope,)).fetchone()
        return row["since"] if row is not None else None

    # -- the run's patients -------------------------------------------------------------------
    def add_patients(self, run_id: str, rows: Iterable[tuple[str, str, str | None]]) -> None:
        """Record the run's selection: ``(patient id, state, reason)``, state ``selected`` or ``skipped``
        (one transaction; a resumed run keeps the rows it has)."""
        now = utc_now()
        with self._tx() as c:
            start = c.execute(
                "SELECT COALESCE(MAX(seq), -1) + 1 FROM run_patients WHERE run_id=?", (run_id,)
            ).fetchone()[0]
            c.executemany(
                "INSERT OR IGNORE INTO run_patients(run_id, patient_id, seq, state, reason, updated_at) "
                "VALUES (?,?,?,?,?,?)",
                [(run_id, pid, start + i, state, reason, now) for i, (pid, state, reason) in enumerate(rows)],
            )
            c.execute("UPDATE runs SET selected_at=? WHERE run_id=?", (now, run_id))

    def run_patients(self, run_id: str) -> list[RunPatient]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT * FROM run_patients WHERE run_id=? ORDER BY seq", (run_id,)
            ).fetchall()
        return [
            RunPatient(
                r["patient_id"],
                r["seq"],
                r["state"],
                r["reason"],
                r["plan_digest"],
                r["entries"],
                r["attempts"],
                r["seen_until"],
            )
            for r in rows
        ]

    def mark(
        self,
        run_id: str,
        patient_id: str,
        state: str,
        reason: str | None = None,
        *,
        plan_digest: str | None = None,
        entries: int | None = None,
        seen_until: str | None = None,
        attempt: bool = False,
    ) -> None:
        """Set a patient's state in the run (committed at once)."""
        with self._tx() as c:
            c.execute(
                "UPDATE run_patients SET state=?, reason=?, plan_digest=COALESCE(?, plan_digest), "
                "entries=COALESCE(?, entries), seen_until=COALESCE(?, seen_until), "
                "attempts=attempts + ?, updated_at=? WHERE run_id=? AND patient_id=?",
                (
                    state,
                    reason,
                    plan_digest,
                    entries,
                    seen_until,
                    int(attempt),
                    utc_now(),
                    run_id,
                    patient_id,
                ),
            )

    # -- what is known about patients ---------------------------------------------------------
    def patient(self, scope: str, patient_id: str) -> PatientState:
        with self._lock:
            row = self.conn.execute(
                "SELECT * FROM patients WHERE scope=? AND patient_id=?", (scope, patient_id)
            ).fetchone()
        if row is None:
            return PatientState(patient_id)
        return PatientState(
            patient_id,
            orjson.loads(row["evaluation"]) if row["evaluation"] else None,
            orjson.loads(row["previous"]) if row["previous"] else None,
            row["plan_digest"],
            row["dose_earliest"],
            row["dose_latest"],
            dict(orjson.loads(row["versions"])),
            [(str(k[0]), str(k[1]), str(k[2])) for k in orjson.loads(row["keys"])],
            row["checkpoint"],
            dict(orjson.loads(row["valid"])),
            orjson.loads(row["summaries"]) if row["summaries"] else None,
        )

    def patients(self, scope: str, patient_ids: Iterable[str]) -> dict[str, PatientState]:
        return {pid: self.patient(scope, pid) for pid in patient_ids}

    def save_patient(
        self,
        scope: str,
        run_id: str,
        patient_id: str,
        evaluation: dict[str, Any],
        plan_digest: str,
        versions: Mapping[str, str],
        keys: Iterable[tuple[str, str, str]],
        valid: Mapping[str, str] | None = None,
        summaries: Mapping[str, str] | None = None,
    ) -> None:
        """After a write (or a plan that needed none): the evaluation, and our resources as we left them.
        The evaluation becomes the last one; the last one becomes ``previous`` when it differs."""
        window = (evaluation.get("dose") or {}).get("next_dose_window") or {}
        text = _dumps(evaluation)
        now = utc_now()
        with self._tx() as c:
            row = c.execute(
                "SELECT evaluation, previous FROM patients WHERE scope=? AND patient_id=?",
                (scope, patient_id),
            ).fetchone()
            previous = row["previous"] if row is not None else None
            if row is not None and row["evaluation"] and row["evaluation"] != text:
                previous = row["evaluation"]
            c.execute(
                "INSERT INTO patients(scope, patient_id, evaluation, previous, plan_digest, dose_earliest, "
                "dose_latest, versions, keys, valid, summaries, run_id, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(scope, patient_id) DO UPDATE SET evaluation=excluded.evaluation, "
                "previous=excluded.previous, plan_digest=excluded.plan_digest, "
                "dose_earliest=excluded.dose_earliest, dose_latest=excluded.dose_latest, "
                "versions=excluded.versions, keys=excluded.keys, valid=excluded.valid, "
                "summaries=excluded.summaries, run_id=excluded.run_id, updated_at=excluded.updated_at",
                (
                    scope,
                    patient_id,
                    text,
                    previous,
                    plan_digest,
                    window.get("earliest"),
                    window.get("latest"),
                    _dumps(dict(versions)),
                    _dumps(sorted({tuple(k) for k in keys})),
                    _dumps(dict(valid or {})),
                    _dumps(dict(summaries)) if summaries else None,
                    run_id,
                    now,
                ),
            )

    def runs(self, scope: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT * FROM runs WHERE (? IS NULL OR scope=?) ORDER BY started_at", (scope, scope)
            ).fetchall()
        return [dict(r) for r in rows]
