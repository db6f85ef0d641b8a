"""The Spark screening engine (adapter/screen/spark.py) in local mode gives the local engine's outputs,
byte for byte, on a small Bulk Data export: plain and gzip NDJSON, a file split in two, CRLF line ends and
blank lines, a broken line and an unknown resourceType, a non-FHIR file and a JSON-lines log, a ``.json``
Bundle and a file Spark's listing would skip (read by the Python reader), deleted resources, and an
inotuzumab Medication that a patient's administrations only refer to (the Medication join).

Spark and Java are installed by scripts/test.sh (the ``spark`` extra, scripts/ensure_java.sh), so these
tests run in CI. Without them they FAIL, unless INO_ALLOW_NO_SPARK=1, when they are skipped.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import random
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from adapter.screen.core import ScreenSetup
from adapter.screen.export import scan_export
from adapter.screen.local import ScreenOptions, run_screen
from tests.support.bulk_export import same_run_report
from tests.support.population import Resources, examples, healthy_patient, treatment_patient
from tests.support.synth import ATC

AS_OF = date(2026, 11, 21)
PROTOCOL = "nhs-ta514"
ALLOW_ENV = "INO_ALLOW_NO_SPARK"
#: Files whose bytes may differ between engines (timings, engine name).
NOT_COMPARED = frozenset({"run-stats.json"})


def _why_no_spark() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install -e '.[spark]')"
    from adapter.screen.spark import java_available

    if not java_available():
        return "no Java runtime (bash scripts/ensure_java.sh)"
    return None


_MISSING = _why_no_spark()
if _MISSING is not None and os.environ.get(ALLOW_ENV) == "1":
    pytestmark = pytest.mark.skip(reason=f"Spark engine not tested: {_MISSING} ({ALLOW_ENV}=1)")


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if _MISSING is not None:
        pytest.fail(f"{_MISSING}; scripts/test.sh installs it (set {ALLOW_ENV}=1 to skip these tests)")
    from adapter.screen.spark import spark_session

    with spark_session("local[2]", app_name="ino-adapter tests") as session:
        # small splits: files are read in several pieces, so line numbers cross splits
        session.conf.set("spark.sql.files.maxPartitionBytes", str(24 * 1024))
        session.conf.set("spark.sql.files.openCostInBytes", str(4 * 1024))
        yield session


# -- the export --------------------------------------------------------------------------------------
def _line(resource: dict[str, Any]) -> bytes:
    return orjson.dumps(resource)


def _population() -> tuple[dict[str, Resources], str]:
    """The example patients, patients on treatment (one whose administrations only refer to an inotuzumab
    Medication) and people without leukaemia. Returns them and the Medication-only patient's id."""
    pop: dict[str, Resources] = {}
    for resources in examples("sp").values():
        pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        pop[pid] = resources
    for i in range(7):
        pid = f"tx{i:02d}-sp"
        pop[pid] = treatment_patient(pid, AS_OF, i, weight=70 + i * 5)
    for i in range(4):
        pid = f"hy{i:02d}-sp"
        pop[pid] = healthy_patient(pid, AS_OF, i)
    # tx01: no B-ALL Condition, and administrations that name the drug only through Medication/ino-sp
    by_ref = "tx01-sp"
    kept = []
    for r in pop[by_ref]:
        if r["resourceType"] == "Condition" and "C91" in orjson.dumps(r).decode():
            continue
        if r["resourceType"] == "MedicationAdministration":
            r.pop("medicationCodeableConcept")
            r["medicationReference"] = {"reference": "Medication/ino-sp"}
        kept.append(r)
    pop[by_ref] = kept
    return pop, by_ref


def write_export(root: Path) -> dict[str, Any]:
    """A Bulk Data export of :func:`_population` under ``root`` (see the module docstring)."""
    pop, by_ref = _population()
    rng = random.Random(13)
    by_type: dict[str, list[bytes]] = {}
    extra: list[bytes] = []
    bundle: list[dict[str, Any]] = []
    for pid, resources in pop.items():
        for r in resources:
            if pid == "tx02-sp" and r["resourceType"] == "Observation" and len(extra) < 5:
                extra.append(_line(r))  # to the file Spark's listing would skip
            elif pid == "tx03-sp" and r["resourceType"] == "Observation" and len(bundle) < 5:
                bundle.append(r)  # to the .json Bundle
            else:
                by_type.setdefault(r["resourceType"], []).append(_line(r))
    by_type["Medication"] = [
        _line({"resourceType": "Medication", "id": "other-sp", "code": {"text": "paracetamol"}}),
        _line(
            {
                "resourceType": "Medication",
                "id": "ino-sp",
                "code": {"coding": [{"system": ATC, "code": "L01FB01", "display": "inotuzumab ozogamicin"}]},
            }
        ),
    ]
    for lines in by_type.values():
        rng.shuffle(lines)  # as an export ordered by lastUpdated: a patient's lines are spread out
    root.mkdir(parents=True)
    # the broken lines: a truncated Observation of a candidate (its subject still there), an unknown
    # resourceType, an Observation cut before its subject (whose it is cannot be told: reported, costs nobody)
    obs = by_type.pop("Observation")
    victim = next(line for line in obs if b'"Patient/tx04-sp"' in line)
    obs.insert(len(obs) // 3, victim[: victim.index(b'"Patient/tx04-sp"') + 20])
    obs.insert(len(obs) // 2 + 3, b'{"resourceType":"Observation","id":"who-sp","status":"fin')
    # and one cut inside its subject reference (its patient cannot be told either)
    obs.insert(len(obs) // 2 + 9, victim[: victim.index(b'"Patient/tx04-sp"') + len(b'"Patient/')])
    unknown = orjson.loads(victim)
    unknown["resourceType"] = "XObservation"
    unknown["subject"] = {"reference": "Patient/tx05-sp"}
    obs.insert(2 * len(obs) // 3, _line(unknown))
    half = len(obs) // 2
    (root / "Observation.1.ndjson.gz").write_bytes(gzip.compress(b"\n".join(obs[:half]) + b"\n", mtime=0))
    (root / "Observation.2.ndjson").write_bytes(b"\n".join(obs[half:]) + b"\n")
    # a deleted Observation of a candidate (its line is dropped)
    gone = orjson.loads(next(line for line in obs if b'"Patient/tx00-sp"' in line))
    (root / "deleted").mkdir()
    (root / "deleted" / "Observation.ndjson").write_bytes(
        _line({"resourceType": "Observation", "id": gone["id"]}) + b"\n"
    )
    for n, (rtype, lines) in enumerate(sorted(by_type.items())):
        if rtype == "Patient":  # CRLF line ends and blank lines
            (root / "Patient.ndjson").write_bytes(b"\r\n".join([*lines[:3], b"", *lines[3:]]) + b"\r\n\r\n")
        elif n % 2:
            (root / f"{rtype}.ndjson.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n", mtime=0))
        else:
            (root / f"{rtype}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    (root / "_extra.ndjson").write_bytes(b"\n".join(extra) + b"\n")
    entries = [
        {"fullUrl": f"urn:uuid:00000000-0000-0000-0000-{i:012d}", "resource": r} for i, r in enumerate(bundle)
    ]
    (root / "bundle.json").write_bytes(
        _line({"resourceType": "Bundle", "type": "collection", "entry": entries})
    )
    (root / "generator.json").write_bytes(b'{"generator": "tests", "patients": %d}' % len(pop))
    (root / "log.ndjson").write_bytes(b'{"level": "info", "msg": "export started"}\n{"level": "info"}\n')
    return {"patients": len(pop), "by_reference": by_ref}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("spark-export") / "export"
    return root, write_export(root)


def _setup(**kw: Any) -> ScreenSetup:
    return ScreenSetup(PROTOCOL, AS_OF, **kw)


def _outputs(out: Path) -> dict[str, bytes]:
    files = {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in NOT_COMPARED
    }
    files["report.json"] = same_run_report(files["report.json"])  # all but the timings and memory
    return files


def _local(export_dir: Path, out: Path, setup: ScreenSetup) -> dict[str, bytes]:
    run_screen(ScreenOptions(export_dir, out, setup, workers=1, progress="none"))
    return _outputs(out)


def _assert_same(local: dict[str, bytes], spark: dict[str, bytes]) -> None:
    assert sorted(spark) == sorted(local)
    for name, data in local.items():
        assert spark[name] == data, f"{name} differs between the local and the Spark engine"


@pytest.fixture(scope="module")
def local_out(
    export: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    return _local(export[0], tmp_path_factory.mktemp("local") / "out", _setup())


# -- the tests ---------------------------------------------------------------------------------------
def test_spark_gives_the_local_engines_bytes(
    spark: Any, export: tuple[Path, dict[str, Any]], local_out: dict[str, bytes], tmp_path: Path
) -> None:
    from adapter.screen.spark import run_spark

    export_dir, facts = export
    report = run_spark(export_dir, tmp_path / "spark", _setup(), master="local[2]")
    _assert_same(local_out, _outputs(tmp_path / "spark"))
    # and the run is what it should be (so that "identical" is not "identically empty")
    assert report == orjson.loads(local_out["report.json"])
    assert report["patients"] == facts["patients"]
    assert report["evaluated"] >= 10
    assert report["broken_lines"] == 4 and report["lines"]["unreadable_unattributed"] == 2
    assert sum("ignored: its patient cannot be told" in p for p in report["problems"]) == 2
    assert report["lines"]["deleted"] == 1
    assert {s["file"] for s in report["skipped_files"]} >= {"generator.json", "log.ndjson"}
    problems = " ".join(report["problems"])
    assert "Observation.1.ndjson.gz:" in problems or "Observation.2.ndjson:" in problems
    evaluated = [orjson.loads(line) for line in local_out["evaluations.ndjson"].splitlines()]
    assert [e["patient"] for e in evaluated] == sorted(e["patient"] for e in evaluated)
    # the patient whose only inotuzumab records refer to the Medication is a candidate, and its doses count
    by_ref = next(e for e in evaluated if e["patient"] == f"Patient/{facts['by_reference']}")
    assert by_ref["dose"]["treatment_started"] is True
    run_stats = orjson.loads((tmp_path / "spark" / "run-stats.json").read_bytes())
    assert run_stats["engine"] == "spark" and run_stats["master"].startswith("local")
    run = orjson.loads((tmp_path / "spark" / "report.json").read_bytes())["run"]
    assert run["engine"] == "spark" and run["timings_s"]["total"] > 0 and run["peak_rss_mb"]["driver"] > 0
    assert not (tmp_path / "spark" / ".screen-work").exists()


def test_spark_all_patients_and_one_partition(
    spark: Any, export: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """--all-patients (no pass 1b) and a forced partition count give the local engine's bytes too."""
    from adapter.screen.spark import run_spark

    export_dir, facts = export
    setup = _setup(all_patients=True)
    run_screen(ScreenOptions(export_dir, tmp_path / "local", setup, workers=1, progress="none", partitions=3))
    report = run_spark(export_dir, tmp_path / "spark", setup, partitions=3)
    _assert_same(_outputs(tmp_path / "local"), _outputs(tmp_path / "spark"))
    assert report["partitions"] == 3
    assert report["evaluated"] == facts["patients"]


def test_cli_engine_spark(
    spark: Any, export: tuple[Path, dict[str, Any]], local_out: dict[str, bytes], tmp_path: Path
) -> None:
    """``ino-adapter screen --engine spark --master local[2]`` (in this process: the session is reused)."""
    from cli import main

    out = tmp_path / "cli"
    args = ["screen", str(export[0]), "-p", PROTOCOL, "--as-of", AS_OF.isoformat(), "--out", str(out)]
    result = CliRunner().invoke(
        main, [*args, "--engine", "spark", "--master", "local[2]", "--progress", "none"]
    )
    assert result.exit_code == 0, result.output
    assert "evaluated" in result.output
    _assert_same(local_out, _outputs(out))


def test_line_numbers_across_splits(spark: Any, tmp_path: Path) -> None:
    """A line's number from Spark's splits (index in its split + the file's earlier splits' lines) is its
    index in ``bytes.splitlines()`` (as ``evaluate`` numbers lines): LF, CR, CRLF, blank lines, invalid
    UTF-8, gzip, and splits of 64 bytes that cut lines and CRLF pairs anywhere."""
    from adapter.screen.spark import _numbered, _offsets, read_lines

    rng = random.Random(7)
    root = tmp_path / "lines"
    root.mkdir()
    expected: dict[str, list[bytes]] = {}
    for k in range(4):
        parts = []
        for _ in range(rng.randint(20, 60)):
            body = bytes(rng.choice(b'{}":abc \xff\xc3\xa9\t') for _ in range(rng.randint(0, 40)))
            parts.append(body + rng.choice([b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n\r\n"]))
        data = b"".join(parts) + (b"tail" if k % 2 else b"")
        name = f"Observation.{k}.ndjson" + (".gz" if k == 3 else "")
        (root / name).write_bytes(gzip.compress(data, mtime=0) if k == 3 else data)
        expected[str(root / name)] = data.splitlines()
    files = scan_export(root).files
    assert len(files) == 4
    previous = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "64")
    try:
        rows = read_lines(spark, files).mapPartitions(_numbered).collect()
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous)
    offsets = _offsets((f, start, n) for f, start, n, _line, last in rows if last)
    got: dict[str, list[tuple[int, bytes]]] = {}
    for f, start, n, line, _last in rows:
        got.setdefault(files[f].name, []).append((offsets[(f, start)] + n, line))
    assert len({start for _f, start, *_ in rows}) > 4  # the plain files really were split
    for name, lines in expected.items():
        assert sorted(got.get(name, [])) == list(enumerate(lines, start=1)), name


def test_missing_pyspark_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from adapter.screen.spark import SparkUnavailableError, _import_pyspark

    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark -> ImportError
    with pytest.raises(SparkUnavailableError, match=r"pip install 'ino-adapter\[spark\]'"):
        _import_pyspark()
