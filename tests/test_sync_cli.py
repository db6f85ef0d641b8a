"""``ino-adapter sync`` on the command line: exit statuses, the dry run, SIGTERM, messages without PHI,
and the small pieces (cohort codes, dose days, the ledger) on their own."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from adapter.fhir.client import FhirClient
from adapter.mapping.tables import load_tables
from adapter.sync.ledger import Ledger, PatientState
from adapter.sync.options import SyncUsageError, parse_since
from adapter.sync.selection import concept_codes, dose_due
from cli import main
from tests.support.fhir_server import SekmetServer
from tests.support.population import seed, treatment_patient
from tests.support.sync_helpers import our_resources, patient_of, token_file
from tests.test_sync import TODAY, VARIANT

ROOT = Path(__file__).resolve().parent.parent


def _args(server: str, token: Path, state: Path, *more: str) -> list[str]:
    return [
        "sync", "--server", server, "--protocol", VARIANT, "--auth", "bearer", "--token-file", str(token),
        "--as-of", TODAY.isoformat(), "--state", str(state), *more,
    ]  # fmt: skip


@pytest.fixture
def patients(fhir_client: FhirClient) -> dict[str, list[dict[str, Any]]]:
    sfx = uuid.uuid4().hex[:8]
    records = {f"cl{i:02d}-{sfx}": treatment_patient(f"cl{i:02d}-{sfx}", TODAY, i) for i in range(4)}
    seed(fhir_client, [r for rs in records.values() for r in rs])
    return records


def _mine(client: FhirClient, records: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in our_resources(client) if (patient_of(r) or "").removeprefix("Patient/") in records]


def test_dry_run_writes_nothing_and_says_what_it_would_send(
    fhir_server: SekmetServer, fhir_client: FhirClient, patients: dict[str, Any], tmp_path: Path
) -> None:
    token = token_file(tmp_path, fhir_server.token)
    ids = [a for pid in patients for a in ("--patient", pid)]
    out, report = tmp_path / "out", tmp_path / "report.json"
    result = CliRunner().invoke(
        main,
        _args(
            fhir_server.base_url,
            token,
            tmp_path / "s.sqlite",
            *ids,
            "--dry-run",
            "--out",
            str(out),
            "--report",
            str(report),
        ),
    )
    assert result.exit_code == 0, result.output
    assert _mine(fhir_client, patients) == []  # nothing written
    data = json.loads(report.read_text())
    assert data["status"] == "dry-run" and data["patients"]["planned"] == len(patients)
    assert data["resources"]["created"] > 0
    bundles = sorted(out.glob(f"*/{VARIANT}/bundle.json"))
    assert len(bundles) == len(patients)
    assert all(json.loads(b.read_text())["entry"] for b in bundles)
    assert "would send" in result.stderr
    # messages name patients by their tag only: no names, MRNs or ids
    for pid in patients:
        assert pid not in result.stderr and f"MRN-{pid}" not in result.stderr
    assert "Synthetic" not in result.stderr and "patient " in result.stderr


def test_exit_statuses(fhir_server: SekmetServer, patients: dict[str, Any], tmp_path: Path) -> None:
    token = token_file(tmp_path, fhir_server.token)
    state = tmp_path / "s.sqlite"
    runner = CliRunner()
    # 1: a patient that is not on the server (the others are done)
    first = next(iter(patients))
    r = runner.invoke(
        main, _args(fhir_server.base_url, token, state, "--patient", first, "--patient", "nobody")
    )
    assert r.exit_code == 1, r.output
    assert "no such Patient" in r.output
    # 2: bad invocations
    assert (
        runner.invoke(main, _args(fhir_server.base_url, token, state, "--since", "yesterday")).exit_code == 2
    )
    assert (
        runner.invoke(main, _args(fhir_server.base_url, token, state, "--patient", "bad id!")).exit_code == 2
    )
    no_token = [
        "sync",
        "--server",
        fhir_server.base_url,
        "-p",
        VARIANT,
        "--auth",
        "bearer",
        "--state",
        str(state),
    ]
    assert runner.invoke(main, no_token).exit_code == 2
    # 3: a malformed mapping table, before the server is asked anything
    bad = tmp_path / "site.yaml"
    bad.write_text("concepts: [not, a, mapping]\n")
    assert (
        runner.invoke(main, _args(fhir_server.base_url, token, state, "--mappings", str(bad))).exit_code == 3
    )
    # 5: nobody listening, or the token refused
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = runner.invoke(main, _args(f"http://127.0.0.1:{port}/fhir", token, state, "--patient", first))
    assert down.exit_code == 5, down.output
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    wrong.chmod(0o600)
    assert runner.invoke(main, _args(fhir_server.base_url, wrong, state, "--patient", first)).exit_code == 5


def test_a_second_run_on_the_same_state_file_is_refused(fhir_server: SekmetServer, tmp_path: Path) -> None:
    import fcntl

    state = tmp_path / "s.sqlite"
    with (tmp_path / "s.sqlite.lock").open("a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        r = CliRunner().invoke(
            main, _args(fhir_server.base_url, token_file(tmp_path, "t"), state, "--patient", "x")
        )
    assert r.exit_code == 2 and "another sync run" in r.output


def test_sigterm_finishes_the_patients_in_flight_and_the_next_run_resumes(
    fhir_server: SekmetServer, fhir_client: FhirClient, tmp_path: Path
) -> None:
    sfx = uuid.uuid4().hex[:8]
    records = {f"st{i:02d}-{sfx}": treatment_patient(f"st{i:02d}-{sfx}", TODAY, i) for i in range(40)}
    seed(fhir_client, [r for rs in records.values() for r in rs])
    state, report = tmp_path / "s.sqlite", tmp_path / "report.json"
    ids = [a for pid in records for a in ("--patient", pid)]
    token = token_file(tmp_path, fhir_server.token)
    more = [*ids, "--concurrency", "1", "--report", str(report)]
    cmd = [sys.executable, "-m", "cli", *_args(fhir_server.base_url, token, state, *more)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as conn:
                done = conn.execute("SELECT COUNT(*) FROM run_patients WHERE state='written'").fetchone()[0]
        except sqlite3.Error:
            done = 0
        if done >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()[-2000:]
    stopped = json.loads(report.read_text())
    assert stopped["status"] == "stopped" and 3 <= stopped["patients"]["written"] < len(records)
    assert stopped["patients"]["failed"] == 0  # the patients in flight were finished, not dropped
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    resumed = json.loads(report.read_text())
    assert resumed["resumed"] and resumed["patients"]["done_before_resume"] == stopped["patients"]["written"]
    assert resumed["patients"]["written"] + resumed["patients"]["done_before_resume"] == len(records)
    provenances = [r for r in _mine(fhir_client, records) if r["resourceType"] == "Provenance"]
    assert len(provenances) == len(records)


# -- pieces --------------------------------------------------------------------------------------
def test_cohort_codes_search_prefixes_as_exact_codes_plus_the_known_codes_under_them() -> None:
    codes = concept_codes(load_tables(), "b-all")
    assert "http://hl7.org/fhir/sid/icd-10|C91.0" in codes
    assert "http://hl7.org/fhir/sid/icd-10-cm|C91.0" in codes
    assert "http://hl7.org/fhir/sid/icd-10-cm|C91.02" in codes  # b-all-relapse, under the prefix
    assert "http://snomed.info/sct|91857003" in codes
    assert any(
        c.startswith("https://fhir.ino-adapter.org/CodeSystem/") and c.endswith("|b-all") for c in codes
    )
    assert not any(c.endswith("*") for c in codes)
    ino = concept_codes(load_tables(), "inotuzumab-ozogamicin")
    assert "http://www.whocc.no/atc|L01FB01" in ino and "http://www.whocc.no/atc|L01XC26" in ino


def test_a_dose_day_or_a_window_that_closed_since_is_always_evaluated() -> None:
    state = PatientState(
        "p", evaluation={"as_of": "2026-11-18"}, dose_earliest="2026-11-20", dose_latest="2026-11-23"
    )
    assert not dose_due(state, date(2026, 11, 19))
    assert dose_due(state, date(2026, 11, 20)) and dose_due(state, date(2026, 11, 23))
    assert dose_due(state, date(2026, 11, 30))  # the window closed after the last evaluation
    after = PatientState(
        "p", evaluation={"as_of": "2026-11-25"}, dose_earliest="2026-11-20", dose_latest="2026-11-23"
    )
    assert not dose_due(after, date(2026, 11, 30))
    assert not dose_due(PatientState("p"), date(2026, 11, 20))


def test_since_values() -> None:
    assert parse_since(None) is None and parse_since("auto") == "auto"
    assert parse_since("2026-11-20T07:00:00+01:00") == "2026-11-20T06:00:00.000Z"
    with pytest.raises(SyncUsageError):
        parse_since("2026-11-20T07:00:00")  # no time zone
    with pytest.raises(SyncUsageError):
        parse_since("soon")


def test_the_ledger_resumes_only_the_same_run_and_advances_checkpoints_on_completion(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "s.sqlite")
    try:
        assert oct((tmp_path / "s.sqlite").stat().st_mode & 0o777) == "0o600"
        run = ledger.start_run("scope", "2026-11-21", {"group": "g"}, dry_run=False)
        assert not run.resumed and not run.selected
        ledger.set_server_time(run.run_id, "2026-11-21T08:00:00.000Z")
        ledger.add_patients(run.run_id, [("a", "selected", None), ("b", "selected", None)])
        ledger.save_patient(
            "scope", run.run_id, "a", {"as_of": "2026-11-21", "dose": {}}, "d", {"X/1": "1"}, []
        )
        ledger.mark(run.run_id, "a", "written", seen_until="2026-11-21T07:00:00.000Z")
        # killed here: the same options resume the run, other options abandon it
        again = ledger.start_run("scope", "2026-11-21", {"group": "g"}, dry_run=False)
        assert again.resumed and again.selected and again.run_id == run.run_id
        assert [r.state for r in ledger.run_patients(run.run_id)] == ["written", "selected"]
        assert ledger.checkpoint("scope") is None
        ledger.save_patient("scope", run.run_id, "b", {"as_of": "2026-11-21", "dose": {}}, "d", {}, [])
        ledger.mark(run.run_id, "b", "failed", "boom")
        checkpoint = ledger.finish_run(again, "completed")
        assert checkpoint == ledger.checkpoint("scope") == min(again.started_at, "2026-11-21T08:00:00.000Z")
        assert ledger.patient("scope", "a").checkpoint is not None
        assert ledger.patient("scope", "b").checkpoint is None  # failed: evaluated again next time
        other = ledger.start_run("scope", "2026-11-21", {"group": "h"}, dry_run=False)
        assert not other.resumed
    finally:
        ledger.close()
