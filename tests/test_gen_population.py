"""The benchmark's population generator (bench/gen_population.py) writes valid FHIR R4 as a Bulk Data
export: every resource of every type it produces passes the R4B models, and only the broken lines it
says it wrote are broken. Its output does not depend on the number of processes or on gzip and split."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from bench.gen_population import DEFAULT_AS_OF, SCENARIOS, TYPES, Summary, generate


def _lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return [line for line in data.split(b"\n") if line]


def _export_lines(out: Path) -> dict[str, list[bytes]]:
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    by_type: dict[str, list[bytes]] = {}
    for item in manifest["output"]:
        name = item["url"].rsplit("/", 1)[1]
        lines = _lines(out / name)
        assert len(lines) == item["count"], name
        by_type.setdefault(item["type"], []).extend(lines)
    return by_type


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Summary]:
    out = tmp_path_factory.mktemp("population")
    # half of them B-ALL, so that every scenario's resources are there to validate
    return out, generate(200, out, seed=7, ball_fraction=0.5, workers=1)


def test_every_resource_is_valid_r4(export: tuple[Path, Summary]) -> None:
    out, summary = export
    by_type = _export_lines(out)
    assert set(by_type) == set(TYPES)  # every type it can write, it wrote
    broken = 0
    validated: Counter[str] = Counter()
    for rtype, lines in by_type.items():
        model = get_fhir_model_class(rtype)
        for line in lines:
            try:
                resource: Any = orjson.loads(line)
            except orjson.JSONDecodeError:
                broken += 1
                continue
            if resource.get("resourceType") != rtype:
                broken += 1  # an unknown resourceType, on purpose
                continue
            model.model_validate(resource)
            validated[rtype] += 1
    assert broken == summary.noise["broken lines"] >= 3
    assert (
        sum(validated.values())
        == summary.total_lines
        - broken
        - summary.lines["OperationOutcome"]
        - (summary.lines["Bundle (deleted)"])
    )
    for rtype in ("OperationOutcome", "Bundle"):
        name = "log.ndjson" if rtype == "OperationOutcome" else "deleted/Bundle.ndjson"
        lines = _lines(out / name)
        assert lines
        for line in lines:
            get_fhir_model_class(rtype).model_validate(orjson.loads(line))


def test_manifest_and_truth(export: tuple[Path, Summary]) -> None:
    out, summary = export
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["transactionTime"].startswith("2026-11-21T")
    assert manifest["requiresAccessToken"] is True
    assert "$export" in manifest["request"]
    assert manifest["error"][0]["url"].endswith("/log.ndjson")
    assert manifest["deleted"][0]["url"].endswith("/deleted/Bundle.ndjson")
    truth = orjson.loads((out / "generator.json").read_bytes())
    assert truth["ball"] == summary.ball and 70 <= len(summary.ball) <= 130
    assert set(summary.ball.values()) <= {label for label, _, _ in SCENARIOS}
    patients = {orjson.loads(line)["id"] for line in _export_lines(out)["Patient"] if b'"Patient"' in line}
    assert set(summary.ball) <= patients
    # the deleted resources are not in the export
    deleted = {
        orjson.loads(line)["entry"][0]["request"]["url"] for line in _lines(out / "deleted/Bundle.ndjson")
    }
    observations = set()
    for line in _export_lines(out)["Observation"]:
        try:
            observations.add(f"Observation/{orjson.loads(line)['id']}")
        except orjson.JSONDecodeError:
            continue
    assert not deleted & observations
    # odd units, duplicates and entered-in-error records are there
    for noise in ("odd units", "duplicate lines", "entered-in-error observations"):
        assert summary.noise[noise] > 0, noise


def test_same_bytes_whatever_the_processes_gzip_and_split(tmp_path: Path) -> None:
    one = generate(1100, tmp_path / "one", seed=3, workers=1)
    generate(1100, tmp_path / "two", seed=3, workers=2)
    zipped = generate(1100, tmp_path / "gz", seed=3, workers=2, gzip=True, split=3)
    for f in one.files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    assert zipped.lines == one.lines and len(zipped.files) > len(one.files)
    assert _export_lines(tmp_path / "gz") == _export_lines(tmp_path / "one")
    generate(1100, tmp_path / "other", seed=4, workers=2)
    assert (tmp_path / "other" / "Patient.ndjson").read_bytes() != (
        tmp_path / "one" / "Patient.ndjson"
    ).read_bytes()


@pytest.mark.parametrize("variant", ["nhs-ta514", "es-valtermed", "mdacc-low-dose", "fda-label"])
def test_screen_equals_evaluate_on_the_generated_population(
    export: tuple[Path, Summary], tmp_path: Path, variant: str
) -> None:
    """On a realistic export (noise, duplicates, odd units, broken lines, deletions, a log, a manifest) the
    screen's evaluation of every candidate is ``evaluate DIR``'s, byte for byte, and the non-B-ALL patients
    are not candidates."""
    from adapter.api import evaluate_path
    from adapter.screen.core import ScreenSetup
    from adapter.screen.local import ScreenOptions, run_screen

    out, summary = export
    as_of = DEFAULT_AS_OF
    report = run_screen(
        ScreenOptions(out, tmp_path / "out", ScreenSetup(variant, as_of), workers=2, progress="none")
    )
    got = {
        orjson.loads(row)["patient"]: row
        for row in (tmp_path / "out" / "evaluations.ndjson").read_bytes().splitlines()
    }
    run = evaluate_path(out, variant, as_of, validate=False)
    expected = {r["patient"]: orjson.dumps(r) for r in run.results}
    assert len(got) >= 90 and report.report["candidates"] == len(got)
    assert {f"Patient/{pid}" for pid in summary.ball} <= set(got)  # every B-ALL patient is a candidate
    for patient, row in got.items():
        assert row == expected[patient], patient
    statuses = Counter(orjson.loads(row)["eligibility"]["status"] for row in got.values())
    assert statuses["eligible"] and statuses["ineligible"] + statuses["insufficient-data"]  # not all one way
