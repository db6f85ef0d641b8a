"""``ino-adapter screen`` (issue #13), local engine: the same decisions as ``evaluate`` for the same patients,
Bulk Data exports in their forms (gzip, split files, manifest, deletions, errors, files that are not FHIR,
broken lines), resumption after a stop or a SIGKILL with identical outputs, byte-identical reruns, the core
API the engines share, and ``--server --export`` against the FHIR test server."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import pickle
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from click.testing import CliRunner

from adapter.api import evaluate_path
from adapter.evaluate import Setup, plan_write_back
from adapter.fhir.client import FhirClient, FhirNotFound
from adapter.screen import core
from adapter.screen.core import SUMMARY_COLUMNS, ScreenSetup, evaluate_group, writeback_lines
from adapter.screen.export import scan_export
from adapter.screen.local import (
    WORK_DIR,
    RouteTask,
    ScreenOptions,
    ScreenReport,
    ScreenStopped,
    _Router,
    run_screen,
)
from cli import main
from tests.support.bulk_export import lines_by_type, same_run_report, small_population, write_export
from tests.support.fault_proxy import Fault, FaultProxy, on
from tests.support.fhir_server import SekmetServer
from tests.support.population import seed, treatment_patient
from tests.support.sync_helpers import token_file
from tests.support.synth import ICD10, PatientBuilder

TODAY = date(2026, 11, 21)
VARIANTS = ("fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose")
ROOT = Path(__file__).resolve().parent.parent
#: Outputs compared byte for byte between runs (run-stats.json holds timings: not compared).
OUTPUTS = ("evaluations.ndjson", "summary.csv", "summary.parquet", "report.json")


@pytest.fixture(scope="module")
def population() -> dict[str, list[dict[str, Any]]]:
    return small_population(TODAY)


@pytest.fixture(scope="module")
def lines(population: dict[str, list[dict[str, Any]]]) -> dict[str, list[bytes]]:
    return lines_by_type(population)


def screen(export: Path, out: Path, variant: str = "nhs-ta514", **kw: Any) -> ScreenReport:
    setup_kw = {k: kw.pop(k) for k in ("validate", "all_patients") if k in kw}
    setup = ScreenSetup(variant, TODAY, **setup_kw)
    options = ScreenOptions(export, out, setup, workers=kw.pop("workers", 1), progress="none", **kw)
    return run_screen(options)


def evaluations(out: Path) -> dict[str, bytes]:
    rows = (out / "evaluations.ndjson").read_bytes().splitlines()
    return {orjson.loads(row)["patient"]: row for row in rows}


def evaluate_dir(path: Path, variant: str, validate: bool = False) -> dict[str, bytes]:
    run = evaluate_path(path, variant, TODAY, validate=validate)
    return {r["patient"]: orjson.dumps(r) for r in run.results}


def outputs(out: Path) -> dict[str, bytes]:
    files = {name: (out / name).read_bytes() for name in OUTPUTS}
    files["report.json"] = same_run_report(files["report.json"])
    for path in sorted((out / "writeback").glob("*.ndjson")):
        files[f"writeback/{path.name}"] = path.read_bytes()
    return files


# -- the same decisions as evaluate ---------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_screen_equals_evaluate_for_the_candidates(
    variant: str, lines: dict[str, list[bytes]], tmp_path: Path
) -> None:
    export = write_export(tmp_path / "export", lines)
    report = screen(export, tmp_path / "out", variant)
    got = evaluations(tmp_path / "out")
    expected = evaluate_dir(export, variant)
    assert list(got) == sorted(got)  # sorted by patient
    assert {p for p in got if "/tx" in p} == {p for p in expected if "/tx" in p}
    assert not [p for p in got if "/ot" in p]  # no leukaemia, no inotuzumab: not a candidate
    assert len(got) == report.report["candidates"] == report.report["evaluated"] == 12
    for patient, row in got.items():
        assert row == expected[patient], patient
    r = report.report
    assert r["patients"] == len(expected) and r["non_candidates"] == len(expected) - 12
    assert sum(r["eligibility"].values()) == 12
    # the run section: how long each stage took and the peak memory (the only part that varies)
    run = orjson.loads((tmp_path / "out" / "report.json").read_bytes())["run"]
    assert run["engine"] == "local" and run["timings_s"]["total"] >= run["timings_s"]["evaluate"] > 0
    assert run["peak_rss_mb"]["main"] > 0
    assert {s["file"] for s in r["skipped_files"]} == {"generator.json", "manifest.json", "run-log.ndjson"}
    assert r["export"]["error_files"] == 1 and r["export"]["export_errors"] == 1
    # the summary table, as CSV and Parquet
    csv_rows = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert csv_rows[0].split(",") == list(SUMMARY_COLUMNS) and len(csv_rows) == 13
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "summary.parquet")
    assert table.column_names == list(SUMMARY_COLUMNS) and table.num_rows == 12
    assert table.column("patient").to_pylist() == list(got)
    assert table.column("eligibility").to_pylist() == [
        orjson.loads(v)["eligibility"]["status"] for v in got.values()
    ]


def test_write_back_resources_are_the_transactions_of_evaluate(
    lines: dict[str, list[bytes]], tmp_path: Path
) -> None:
    export = write_export(tmp_path / "export", lines)
    screen(export, tmp_path / "out")
    setup = Setup.load("nhs-ta514", TODAY)
    run = evaluate_path(export, "nhs-ta514", TODAY, validate=False)
    expected: dict[str, list[bytes]] = {}
    for ev in run.results:
        if ev["patient"] not in evaluations(tmp_path / "out"):
            continue
        plan = plan_write_back(ev, setup.settings, "2026-11-21T00:00:00Z", None, run.existing()).plan
        for rtype, rows in writeback_lines(plan.bundle).items():
            expected.setdefault(rtype, []).extend(rows)
    expected["Device"] = expected["Device"][:1]  # the software Device once
    for rtype, rows in expected.items():
        got = (tmp_path / "out" / "writeback" / f"{rtype}.ndjson").read_bytes().splitlines()
        assert got == rows, rtype
        for row in got:
            resource = orjson.loads(row)
            assert resource["resourceType"] == rtype and resource["id"]
            assert "urn:uuid:" not in row.decode()  # references between them resolved to Type/id


def test_validate_flag_validates_the_candidates(lines: dict[str, list[bytes]], tmp_path: Path) -> None:
    export = write_export(tmp_path / "export", lines, manifest=False, errors=False, noise=False)
    screen(export, tmp_path / "out", "es-valtermed", validate=True)
    expected = evaluate_dir(export, "es-valtermed", validate=True)
    for patient, row in evaluations(tmp_path / "out").items():
        assert row == expected[patient]


# -- export forms --------------------------------------------------------------------------------------
def test_gzip_split_files_deletions_and_ranges(lines: dict[str, list[bytes]], tmp_path: Path) -> None:
    """gzip and plain, split files, read in byte ranges: the same result; a deleted resource is gone."""
    tx = next(row for row in lines["Observation"] if b'"Patient/tx01-s"' in row)
    gone = "Observation/" + orjson.loads(tx)["id"]
    kept = {t: [r for r in rows if r != tx] for t, rows in lines.items()}
    plain = write_export(tmp_path / "plain", kept, manifest=False)
    expected = evaluate_dir(plain, "fda-label")
    for gz in (True, False):
        export = write_export(tmp_path / f"export-{gz}", lines, split=3, gz=gz, deleted=[gone])
        report = screen(export, tmp_path / f"out-{gz}", "fda-label", unit_bytes=4096 if not gz else None)
        got = evaluations(tmp_path / f"out-{gz}")
        assert got and all(row == expected[p] for p, row in got.items())
        assert gone.encode() not in b"".join(got.values())
        r = report.report
        assert r["export"]["deleted_files"] == 1 and r["export"]["deleted_resources"] == 1
        assert r["lines"]["deleted"] == 1
    assert outputs(tmp_path / "out-True") == outputs(tmp_path / "out-False") | {
        "report.json": same_run_report((tmp_path / "out-True" / "report.json").read_bytes())
    }


def _integrity_unknown(evaluation: bytes) -> bool:
    ev = orjson.loads(evaluation)
    return any(
        c["id"] == "input-integrity" and c["status"] == "unknown" for c in ev["eligibility"]["criteria"]
    )


def test_broken_lines_cost_only_their_patient(lines: dict[str, list[bytes]], tmp_path: Path) -> None:
    lines = {t: list(rows) for t, rows in lines.items()}
    obs = lines["Observation"]
    i_tx = next(i for i, r in enumerate(obs) if b'"Patient/tx00-s"' in r)
    obs[i_tx] = obs_tx = obs[i_tx][:-25]  # truncated: its patient (a candidate) is still named
    i_ot = next(i for i, r in enumerate(obs) if b'"Patient/ot03-s"' in r)
    at = obs[i_ot].index(b'"subject"')
    obs[i_ot] = b"this is not JSON " + obs[i_ot][at:]  # a non-candidate's: costs nothing here
    assert b'"Patient/ot03-s"' in obs[i_ot] and b'"Patient/tx00-s"' in obs_tx
    # a line cut before its subject: whose it is cannot be told (reported, costs nobody: issue #10)
    obs.insert(5, b'{"resourceType":"Observation","id":"who-knows","status":"fin')
    # a broken B-ALL Condition makes its patient a candidate, blocked by input-integrity
    cond = b'{"resourceType":"Condition","id":"c-ot05","code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10",'
    lines["Condition"].append(cond + b'"code":"C91.0"}]},"subject":{"reference":"Patient/ot05-s"},')
    export = write_export(tmp_path / "export", lines, manifest=False)
    report = screen(export, tmp_path / "out", unit_bytes=8192)
    got = evaluations(tmp_path / "out")
    expected = evaluate_dir(export, "nhs-ta514")
    assert "Patient/ot05-s" in got
    for patient, row in got.items():
        assert row == expected[patient], patient
    for patient in ("Patient/tx00-s", "Patient/ot05-s"):
        ev = orjson.loads(got[patient])
        assert ev["eligibility"]["status"] in ("insufficient-data", "ineligible")  # never eligible
        assert not ev["dose"]["doses"]
        integrity = next(c for c in ev["eligibility"]["criteria"] if c["id"] == "input-integrity")
        assert integrity["status"] == "unknown" and "line" in integrity["reason"]
    others = [v for p, v in got.items() if p not in ("Patient/tx00-s", "Patient/ot05-s")]
    assert others and not any(_integrity_unknown(v) for v in others)
    r = report.report
    assert r["broken_lines"] == 3 and r["lines"]["unreadable_unattributed"] == 1
    line_tx = obs.index(obs_tx) + 1
    assert any(f"Observation.ndjson:{line_tx}: not JSON" in p for p in r["problems"])  # file and line number
    assert (
        f"{export / 'Observation.ndjson'}:6: not JSON; ignored: its patient cannot be told" in r["problems"]
    )
    text = json.dumps(r)
    assert (
        "this is not JSON" not in text and "C91.0" not in text and "who-knows" not in text
    )  # never the content


def test_evaluate_dir_still_skips_files_that_are_not_fhir(
    lines: dict[str, list[bytes]], tmp_path: Path
) -> None:
    export = write_export(tmp_path / "export", lines)
    run = evaluate_path(export, "fda-label", TODAY, validate=False)
    skipped = [n for n in run.notes if n.startswith("skipped")]
    assert len(skipped) == 3 and any("manifest.json" in n for n in skipped)
    assert run.ignored["OperationOutcome"] == 1


def test_a_directory_without_data_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "generator.json").write_text("{}")
    result = CliRunner().invoke(
        main, ["screen", str(tmp_path / "export"), "-p", "fda-label", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "holds no NDJSON file of FHIR resources" in result.output


# -- resumable, deterministic ----------------------------------------------------------------------------
def test_a_stopped_run_resumes_with_the_partitions_it_finished_and_identical_outputs(
    lines: dict[str, list[bytes]], tmp_path: Path
) -> None:
    export = write_export(tmp_path / "export", lines, split=2)
    first = screen(export, tmp_path / "a")
    again = screen(export, tmp_path / "b")
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")  # two runs: the same bytes
    assert not (tmp_path / "a" / WORK_DIR).exists()
    with pytest.raises(ScreenStopped):
        screen(export, tmp_path / "c", stop_after=3)
    state = orjson.loads((tmp_path / "c" / WORK_DIR / "state.json").read_bytes())
    assert len(state["reduce"]) == 3 and not (tmp_path / "c" / "evaluations.ndjson").exists()
    resumed = screen(export, tmp_path / "c")
    assert resumed.stats["resumed"]["partitions_reused"] == 3
    assert resumed.stats["resumed"]["pass2_units_reused"] == first.stats["units"]  # pass 2 was done
    assert outputs(tmp_path / "c") == outputs(tmp_path / "a")
    assert again.stats["resumed"]["from_earlier_run"] is False


def test_a_killed_run_resumes_in_new_worker_processes(lines: dict[str, list[bytes]], tmp_path: Path) -> None:
    export = write_export(tmp_path / "export", lines, split=2, gz=True)
    screen(export, tmp_path / "reference")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "screen",
        str(export),
        "-p",
        "nhs-ta514",
        "--as-of",
        TODAY.isoformat(),
        "--out",
        str(out),
        "--workers",
        "2",
        "--progress",
        "none",
    ]
    env = {**os.environ, "INO_SCREEN_KILL_AFTER": "4"}
    killed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr.decode()
    assert len(orjson.loads((out / WORK_DIR / "state.json").read_bytes())["reduce"]) == 4
    # the setup and tasks cross to spawned workers
    env = {**os.environ, "INO_SCREEN_START_METHOD": "spawn"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert "resuming" in done.stderr.decode()
    assert orjson.loads((out / "run-stats.json").read_bytes())["resumed"]["partitions_reused"] == 4
    assert outputs(out) == outputs(tmp_path / "reference")
    assert b"12 candidate(s), 12 evaluated" in done.stdout


def test_all_patients_evaluates_everyone(lines: dict[str, list[bytes]], tmp_path: Path) -> None:
    export = write_export(tmp_path / "export", lines)
    report = screen(export, tmp_path / "out", "mdacc-low-dose", all_patients=True, workers=2)
    got = evaluations(tmp_path / "out")
    assert got == evaluate_dir(export, "mdacc-low-dose")
    assert report.report["evaluated"] == report.report["patients"] == len(got)


# -- the core API ------------------------------------------------------------------------------------------
def test_core_byte_scans() -> None:
    obs = b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p-1"},"status":"final"}'
    spaced = (
        b'{ "resourceType" : "Observation", "subject" : { "display": "x", "reference" : "Patient/p-2" } }'
    )
    absolute = b'{"resourceType":"Immunization","patient":{"reference":"https://h.example/fhir/Patient/p-3"}}'
    patient = b'{"resourceType":"Patient","id":"p-4","name":[{"family":"X"}]}'
    patient_late = b'{"meta":{"versionId":"1"},"resourceType":"Patient","id":"p-5"}'
    contained = b'{"resourceType":"Observation","subject":{"reference":"#c1"}}'
    assert [core.subject_of(x) for x in (obs, spaced, absolute, patient, patient_late, contained)] == [
        "Patient/p-1",
        "Patient/p-2",
        "Patient/p-3",
        "Patient/p-4",
        "Patient/p-5",
        None,
    ]
    two = b'{"subject":{"reference":"Patient/a"},"contained":[{"patient":{"reference":"Patient/b"}}]}'
    assert core.subjects_of(two) == ("Patient/a", "Patient/b")
    assert core.partition_of("Patient/p-1", 16) == core.partition_of("Patient/p-1", 16) < 16
    assert core.partition_of("Patient/p-1", 1000) == 901  # stable across processes and machines (CRC-32)


def test_core_candidates_and_one_group() -> None:
    setup = ScreenSetup("fda-label", TODAY)
    codes = core.candidate_codes(setup)
    ball = b'{"resourceType":"Condition","subject":{"reference":"Patient/a"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"C91.02"}]}}'
    other = b'{"resourceType":"Condition","subject":{"reference":"Patient/b"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10","code":"I10"}]}}'
    ino = b'{"resourceType":"MedicationAdministration","subject":{"reference":"Patient/c"},"medicationReference":{"reference":"Medication/m1"}}'  # noqa: E501
    med = b'{"resourceType":"Medication","id":"m1","code":{"coding":[{"system":"http://www.whocc.no/atc","code":"L01FB01"}]}}'
    obs = b'{"resourceType":"Observation","subject":{"reference":"Patient/d"},"code":{"text":"C91.0"}}'
    assert core.candidate_of(ball, codes) == "Patient/a"
    assert core.candidate_of(other, codes) is None and core.candidate_of(obs, codes) is None
    assert core.candidate_of(ino, codes) is None  # its Medication is not known yet
    assert core.inotuzumab_medication(med, codes) == "Medication/m1"
    assert core.candidate_of(ino, codes.with_medications(["Medication/m1"])) == "Patient/c"
    assert pickle.loads(pickle.dumps(setup)) == setup and pickle.loads(pickle.dumps(codes)) == codes
    b = PatientBuilder("g1", "1980-01-01", "female", TODAY)
    b.condition(ICD10, "C91.0", "ALL", onset_days_ago=100)
    rows = [orjson.dumps(r) for r in b.resources]
    result = evaluate_group(
        "Patient/g1", [("x/Condition.ndjson", i + 1, r) for i, r in enumerate(rows)], setup, setup.now
    )
    assert result.patient == "Patient/g1" and orjson.loads(result.evaluation_json)["patient"] == "Patient/g1"
    assert list(result.summary_row) == list(SUMMARY_COLUMNS)
    assert set(result.writeback) >= {"Provenance", "DocumentReference", "Device"}
    assert evaluate_group("Patient/g1", rows, setup, setup.now).evaluation_json == result.evaluation_json
    broken = evaluate_group("Patient/g1", [*rows, rows[-1][:-9]], setup, setup.now)
    assert (
        broken.broken == 1
        and orjson.loads(broken.evaluation_json)["eligibility"]["status"] == "insufficient-data"
    )
    nobody = evaluate_group("Patient/zz", [rows[1]], setup, setup.now)
    assert nobody.evaluation_json == b"" and "no Patient resource" in nobody.problems[0]


def test_the_fast_routing_path_agrees_with_the_per_line_scan(tmp_path: Path) -> None:
    rows = [
        b'{"resourceType":"Patient","id":"a"}',
        b'{"resourceType":"Observation","id":"1","subject":{"reference":"Patient/a"}}',
        b"",
        b'{"resourceType":"Observation","id":"2","subject":{"reference":"Patient/b"}}',
        b'{"resourceType":"Observation","id":"3"}',
        b'{"resourceType":"Observation","id":"4","subject":{"reference":"https://x.org/fhir/Patient/a"}}',
        b'{"resourceType":"AllergyIntolerance","id":"5","patient":{"reference":"Patient/c"}}',
        b'{"resourceType":"Observation","id":"6","subject":{"reference":"Patient/a"},"contained":[{"resourceType":"Observation","subject":{"reference":"Patient/b"}}]}',
        b'{"resourceType":"Observation","id":"7","subject":{"reference":"Patient/b"}',
        b'{"resourceType":"Patient","id":"b"}',
        b"not json",
        # cut inside a reference: the fast path must not read the next line's bytes as its end
        b'{"resourceType":"Observation","id":"8","subject":{"reference":"Patient/',
        b'{"resourceType":"Observation","id":"9","subject":{"reference":"Patient/a"},"performer":[{"re',
        b'{"resourceType":"AllergyIntolerance","id":"10","patient":{"reference":"Patient/c"},"x":{"patient":{"reference":"Pa',
        b'{"resourceType":"Observation","id":"11","subject":{"reference":"Patient/a',
        # references that are not plain: versioned, empty, to a Group, escaped
        b'{"resourceType":"Observation","id":"12","subject":{"reference":"Patient/a/_history/2"}}',
        b'{"resourceType":"Observation","id":"13","subject":{"reference":""}}',
        b'{"resourceType":"Observation","id":"14","subject":{"reference":"Group/g"}}',
        b'{"resourceType":"Observation","id":"15","subject":{"reference":"Patient\\/c"}}',
        b'{"resourceType":"Observation","id":"16","subject":{"reference":"',  # cut right after the key
    ]
    spaced = [*rows, b'{"resourceType":"Observation", "subject" : {"reference":"Patient/a"}}']
    for name, content in (("compact", rows), ("spaced", spaced), ("unterminated", rows)):
        path = tmp_path / f"{name}.ndjson"
        # "unterminated": the file ends inside a reference, without a line feed
        path.write_bytes(b"\n".join(content * 50) + (b"" if name == "unterminated" else b"\n"))
        export = scan_export(tmp_path)
        file = next(f for f in export.files if f.path == path)
        for candidates in (None, [b"Patient/a", b"Patient/c"]):
            records = []
            for fast in (True, False):
                work = tmp_path / f"work-{name}-{fast}-{candidates is None}"
                (work / "spill").mkdir(parents=True)
                (work / "deleted.txt").write_bytes(b"")
                (work / "candidates.bin").write_bytes(b"\n".join(candidates or []))
                units = export.units([file], 700)  # every range of the file, each routed on its own
                assert len(units) > 10
                stats = []
                for unit in units:
                    router = _Router(RouteTask(file, unit, str(work), 4, candidates is None))
                    if not fast:
                        router.fast = lambda block: False  # type: ignore[method-assign]
                    stats.append({k: v for k, v in router.run().items() if k != "rss"})
                spilled = sorted(
                    b"".join(p.read_bytes() for p in (work / "spill").glob("*.seg")).splitlines()
                )
                records.append((spilled, stats))
            assert records[0] == records[1], (name, candidates)
            assert records[0][0]


# -- --server --export --------------------------------------------------------------------------------------
def test_export_from_the_server_then_screen(
    fhir_server: SekmetServer, fhir_client: FhirClient, tmp_path: Path
) -> None:
    """sekmet-fhir serves $export (system, Patient, Group), status polling with X-Progress/Retry-After, the
    files with the token, and DELETE: kick-off, an interrupted export resumed by its status URL, download,
    screen, job deleted."""
    sfx = uuid.uuid4().hex[:8]
    records = {f"ex{i}-{sfx}": treatment_patient(f"ex{i}-{sfx}", TODAY, i) for i in range(2)}
    other = PatientBuilder(f"hy-{sfx}", "1970-01-01", "male", TODAY)
    other.lab("platelets", 200, days_ago=2)
    records[f"hy-{sfx}"] = other.resources
    group = {
        "resourceType": "Group",
        "id": f"g-{sfx}",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in records],
    }
    seed(fhir_client, [*(r for rs in records.values() for r in rs), group])
    token = token_file(tmp_path, fhir_server.token)
    out = tmp_path / "out"
    args = [
        "screen",
        "--server",
        fhir_server.base_url,
        "--export",
        "--group",
        f"g-{sfx}",
        "-p",
        "fda-label",
        "--as-of",
        TODAY.isoformat(),
        "--out",
        str(out),
        "--auth",
        "bearer",
        "--token-file",
        str(token),
        "--workers",
        "1",
        "--progress",
        "none",
    ]
    runner = CliRunner()
    stopped = runner.invoke(main, args, env={"INO_SCREEN_STOP_AFTER_KICKOFF": "1"})
    assert stopped.exit_code == 143, stopped.output
    job = orjson.loads((out / "export-job.json").read_bytes())
    assert "/bulk-status/" in job["status_url"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "resuming the export" in result.output and "export started" not in result.output
    assert not (out / "export-job.json").exists()
    with pytest.raises(FhirNotFound):  # the job was deleted on the server
        fhir_client.request("GET", job["status_url"])
    manifest = orjson.loads((out / "export" / "manifest.json").read_bytes())
    types = {o["type"] for o in manifest["output"]}
    assert {"Patient", "Observation", "Condition"} <= types and "Group" not in types
    got = evaluations(out)
    assert set(got) == {f"Patient/ex0-{sfx}", f"Patient/ex1-{sfx}"}
    expected = evaluate_dir(out / "export", "fda-label")
    assert all(row == expected[p] for p, row in got.items())
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["export"]["server_export"]["requires_access_token"] is True
    assert report["patients"] == 3 and report["candidates"] == 2


def test_export_with_smart_backend_services(
    fhir_server: SekmetServer, fhir_client: FhirClient, tmp_path: Path
) -> None:
    sfx = uuid.uuid4().hex[:8]
    resources = treatment_patient(f"sm-{sfx}", TODAY, 3)
    group = {
        "resourceType": "Group",
        "id": f"g-{sfx}",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/sm-{sfx}"}}],
    }
    seed(fhir_client, [*resources, group])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "screen",
            "--server",
            fhir_server.base_url,
            "--export",
            "--group",
            f"g-{sfx}",
            "-p",
            "es-valtermed",
            "--as-of",
            TODAY.isoformat(),
            "--out",
            str(out),
            "--auth",
            "smart",
            "--client-id",
            fhir_server.smart.client_id,
            "--key",
            str(fhir_server.smart.rs384_key),
            "--workers",
            "1",
            "--progress",
            "none",
            "--scope",
            "system/*.rs",  # sekmet wants system/* for $export and its files
        ],
    )
    assert result.exit_code == 0, result.output
    assert list(evaluations(out)) == [f"Patient/sm-{sfx}"]


class _Files(http.server.BaseHTTPRequestHandler):
    """A Bulk Data server the test server cannot be: ``requiresAccessToken`` false, the files on another
    host (here another port), a status endpoint that says "in progress" twice."""

    seen: ClassVar[list[tuple[str, str, str | None]]] = []
    polls = 0
    files_base = ""
    files_base = ""

    def log_message(self, *_args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        type(self).seen.append(("GET", self.path, self.headers.get("Authorization")))
        port = self.server.server_address[1]  # type: ignore[index]
        if self.path.startswith("/fhir/$export"):
            self._send(202, headers={"Content-Location": f"http://127.0.0.1:{port}/fhir/status/1"})
        elif self.path == "/fhir/status/1":
            type(self).polls += 1
            if type(self).polls < 3:
                self._send(202, headers={"X-Progress": f"step {type(self).polls}", "Retry-After": "0"})
                return
            manifest = {
                "transactionTime": "2026-11-21T06:00:00Z",
                "request": "x",
                "requiresAccessToken": False,
                "output": [
                    {"type": "Patient", "url": f"{type(self).files_base}/a/Patient.ndjson"},
                    {"type": "Condition", "url": f"{type(self).files_base}/b/Condition.ndjson"},
                ],
                "error": [],
            }
            self._send(200, orjson.dumps(manifest), {"Content-Type": "application/json"})
        elif self.path == "/a/Patient.ndjson":
            self._send(
                200,
                gzip.compress(b'{"resourceType":"Patient","id":"z1","birthDate":"1970-01-01"}\n'),
                {"Content-Encoding": "gzip"},
            )
        elif self.path == "/b/Condition.ndjson":
            row = {
                "resourceType": "Condition",
                "id": "c1",
                "subject": {"reference": "Patient/z1"},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C91.0"}]},
            }
            self._send(200, orjson.dumps(row) + b"\n")
        else:
            self._send(404)

    def do_DELETE(self) -> None:
        type(self).seen.append(("DELETE", self.path, self.headers.get("Authorization")))
        self._send(202)


@pytest.fixture
def bulk_servers() -> Iterator[tuple[str, type[_Files]]]:
    handler: type[_Files] = type("Files", (_Files,), {"seen": [], "polls": 0})
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    handler.files_base = f"http://127.0.0.1:{servers[1].server_address[1]}"
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield f"http://127.0.0.1:{servers[0].server_address[1]}/fhir", handler
    for s in servers:
        s.shutdown()
        s.server_close()


def test_export_files_without_access_token_are_fetched_without_it(
    bulk_servers: tuple[str, type[_Files]], tmp_path: Path
) -> None:
    base, handler = bulk_servers
    (tmp_path / "token").write_text("secret-token")
    (tmp_path / "token").chmod(0o600)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "screen",
            "--server",
            base,
            "--export",
            "-p",
            "nhs-ta514",
            "--as-of",
            TODAY.isoformat(),
            "--out",
            str(out),
            "--auth",
            "bearer",
            "--token-file",
            str(tmp_path / "token"),
            "--workers",
            "1",
            "--progress",
            "none",
            "--since",
            "2026-11-01T00:00:00Z",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "export in progress: step 1" in result.output
    kickoff = next(s for s in handler.seen if s[1].startswith("/fhir/$export"))
    assert "_since=2026-11-01T00%3A00%3A00.000Z" in kickoff[1] and "_type=" in kickoff[1]
    files = [s for s in handler.seen if not s[1].startswith("/fhir/")]
    assert len(files) == 2 and all(auth is None for _, _, auth in files)  # no token to the file host
    assert all(auth == "Bearer secret-token" for _, path, auth in handler.seen if path.startswith("/fhir/"))
    assert ("DELETE", "/fhir/status/1", "Bearer secret-token") in handler.seen
    assert list(evaluations(out)) == ["Patient/z1"]


def test_export_through_faults(
    fhir_server: SekmetServer, fhir_client: FhirClient, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """The real server behind the fault proxy: a 503 with Retry-After on the kick-off, a lost answer while
    polling, a download broken off mid-way and a 429 on another file are all retried; the screen equals
    ``evaluate`` of the downloaded export and no partial file is left."""
    sfx = uuid.uuid4().hex[:8]
    records = {f"fx{i}-{sfx}": treatment_patient(f"fx{i}-{sfx}", TODAY, i) for i in range(2)}
    group = {
        "resourceType": "Group",
        "id": f"gf-{sfx}",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in records],
    }
    seed(fhir_client, [*(r for rs in records.values() for r in rs), group])
    fault_proxy.inject(on("GET", r"/\$export"), Fault.status(503, retry_after="1"), times=1)
    fault_proxy.inject(on("GET", r"/bulk-status/"), Fault.reset(), times=1)
    fault_proxy.inject(on("GET", r"/bulk-files/.*/Observation"), Fault.cut(), times=1)
    fault_proxy.inject(on("GET", r"/bulk-files/.*/Condition"), Fault.status(429, retry_after="0"), times=1)
    out = tmp_path / "out"
    args = [
        "screen", "--server", fault_proxy.base_url, "--export", "--group", f"gf-{sfx}", "-p", "nhs-ta514",
        "--as-of", TODAY.isoformat(), "--out", str(out), "--auth", "bearer",
        "--token-file", str(token_file(tmp_path, fhir_server.token)), "--workers", "1", "--progress", "none",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert fault_proxy.pending() == 0  # every fault was met, and survived
    files = [s for s in fault_proxy.seen if "/bulk-files/" in s.path]
    assert [s.fault for s in files if "Observation" in s.path] == ["cut", None]
    assert [s.fault for s in files if "Condition" in s.path] == ["status", None]
    got = evaluations(out)
    assert set(got) == {f"Patient/{pid}" for pid in records}
    expected = evaluate_dir(out / "export", "nhs-ta514")
    assert all(row == expected[p] for p, row in got.items())
    assert not list((out / "export").rglob("*.part"))


def test_counts_duplicate_patients_and_files_that_are_not_data(
    lines: dict[str, list[bytes]], tmp_path: Path
) -> None:
    """A candidate's Patient exported twice is not a non-candidate; a README or checksum file in the export
    is listed as skipped (never read, never fatal)."""
    lines = {t: list(rows) for t, rows in lines.items()}
    tx = next(r for r in lines["Patient"] if b'"id":"tx00-s"' in r)
    lines["Patient"].append(tx)
    export = write_export(tmp_path / "export", lines, manifest=False)
    (export / "README.txt").write_text("exported by the test\n")
    (export / "Observation.ndjson.sha256").write_text("0" * 64 + "\n")
    r = screen(export, tmp_path / "out").report
    assert r["patients"] == len(lines["Patient"])  # Patient resources, the duplicate included
    assert r["non_candidates"] == len(lines["Patient"]) - 1 - r["evaluated"]
    skipped = {s["file"]: s["why"] for s in r["skipped_files"]}
    assert skipped["README.txt"] == skipped["Observation.ndjson.sha256"] == "not an NDJSON or JSON file"
