"""A sync run killed with SIGKILL at several points, then started again: it finishes the work, with no
duplicate on the server and no patient left out (the session's sekmet server; the patients of a Group
of this test's own)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from adapter.fhir.client import FhirClient
from tests.support.fhir_server import SekmetServer
from tests.support.population import seed, treatment_patient
from tests.support.sync_helpers import (
    device_existing,
    differences,
    expected,
    keyed,
    our_resources,
    token_file,
)
from tests.test_sync import NOW, TODAY, VARIANT

ROOT = Path(__file__).resolve().parent.parent
PATIENTS = 48


def _done(state: Path) -> int:
    """Patients finished by the current run (read while the run writes: WAL allows it)."""
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM run_patients rp JOIN runs r ON r.run_id = rp.run_id "
                "WHERE r.status = 'running' AND rp.state IN ('written', 'unchanged', 'evaluated')"
            ).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


def _command(server: SekmetServer, token: Path, state: Path, group: str, report: Path) -> list[str]:
    return [
        sys.executable, "-m", "cli", "sync",
        "--server", server.base_url, "--protocol", VARIANT,
        "--auth", "bearer", "--token-file", str(token),
        "--group", group, "--as-of", TODAY.isoformat(),
        "--state", str(state), "--concurrency", "2", "--report", str(report),
    ]  # fmt: skip


def _kill_after(cmd: list[str], state: Path, done: int, log: Path) -> int:
    """Start a run and SIGKILL it once ``done`` patients are past evaluation; returns how many were."""
    with log.open("ab") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        reached = 0
        while proc.poll() is None and time.monotonic() < deadline:
            reached = _done(state)
            if reached >= done:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
    return reached


def test_runs_killed_at_several_points_finish_with_no_duplicate_and_nobody_left_out(
    fhir_server: SekmetServer, fhir_client: FhirClient, tmp_path: Path
) -> None:
    sfx = uuid.uuid4().hex[:8]
    records: dict[str, list[dict[str, Any]]] = {}
    for i in range(PATIENTS):
        pid = f"rk{i:03d}-{sfx}"
        records[pid] = treatment_patient(pid, TODAY, i)
    seed(fhir_client, [r for rs in records.values() for r in rs])
    group = f"g-{sfx}"
    fhir_client.update(
        {
            "resourceType": "Group",
            "id": group,
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in records],
        }
    )
    state, report, log = tmp_path / "state.sqlite", tmp_path / "report.json", tmp_path / "stderr.log"
    cmd = _command(fhir_server, token_file(tmp_path, fhir_server.token), state, group, report)
    reached = [_kill_after(cmd, state, n, log) for n in (1, 12, 30)]
    assert reached[0] >= 1 and reached[-1] < PATIENTS  # killed mid-way, more than once

    final = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    data = json.loads(report.read_text())
    assert data["resumed"] is True and data["status"] == "completed"
    assert data["patients"]["selected"] == PATIENTS and data["patients"]["failed"] == 0

    ours = [r for r in our_resources(fhir_client) if _about(r, records)]
    server, duplicates = keyed(
        [*ours, *[r for r in our_resources(fhir_client) if r["resourceType"] == "Device"]]
    )
    assert duplicates == []
    device = device_existing(server)
    for pid, resources in records.items():
        assert differences(expected(resources, VARIANT, TODAY, NOW, device).bundle, server) == [], pid
    # one Provenance per patient: each was written once, however often its run was killed
    provenances = [r for r in ours if r["resourceType"] == "Provenance"]
    assert len(provenances) == PATIENTS
    with sqlite3.connect(state) as conn:
        runs = conn.execute("SELECT status FROM runs").fetchall()
    assert runs == [("completed",)]  # one run, resumed three times


def _about(resource: dict[str, Any], records: dict[str, Any]) -> bool:
    from tests.support.sync_helpers import patient_of

    ref = patient_of(resource)
    return ref is not None and ref.removeprefix("Patient/") in records
