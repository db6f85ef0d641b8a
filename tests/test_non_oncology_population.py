"""A realistic non-oncology population (PyPI carebundle: diabetes, hypertension, CKD, anaemia,
healthy) through the adapter: it reads the labs it knows, ignores the rest with a count, and
nobody without leukaemia is ever eligible."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import carebundle
import pytest

from adapter.api import evaluate_path, evaluate_resources
from adapter.input.reader import read_resources
from adapter.input.validate import validate_all
from adapter.mapping.record import build_records
from adapter.mapping.tables import load_tables

AS_OF = date(2026, 11, 1)
VARIANTS = ["fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose"]


@pytest.fixture(scope="module")
def cohort() -> list[dict[str, Any]]:
    bundles = carebundle.generate_cohort(count=40, seed=20261121, reference_date=AS_OF)
    return [json.loads(carebundle.to_json(b)) for b in bundles]


def test_population_is_read_and_nobody_is_eligible(cohort: list[dict[str, Any]]) -> None:
    for variant in VARIANTS:
        run = evaluate_resources(cohort, variant, AS_OF)
        assert len(run.results) == 40
        assert run.ignored["Encounter"] == 40
        for result in run.results:
            assert result["eligibility"]["status"] == "ineligible"
            diagnosis = next(c for c in result["eligibility"]["criteria"] if c["id"].endswith("diagnosis"))
            assert diagnosis["status"] == "not-met"


def test_population_validates_and_its_labs_map_with_units(cohort: list[dict[str, Any]]) -> None:
    batch = read_resources(cohort)
    assert validate_all(batch.resources) == {}
    records = build_records(batch.resources, load_tables()).records
    mapped = {c for r in records for c in r.readings}
    expected = {
        "creatinine",
        "alt",
        "ast",
        "alkaline-phosphatase",
        "bilirubin-total",
        "leukocytes",
        "platelets",
        "body-height",
        "body-weight",
    }
    assert expected <= mapped
    assert [u for r in records for us in r.unusable.values() for u in us] == []  # every unit understood
    for r in records:
        for reading in r.readings.get("creatinine", []):
            assert reading.unit == "umol/L" and 10 < (reading.number or 0) < 2000


def test_population_as_bulk_ndjson(tmp_path: Path) -> None:
    bundles = carebundle.generate_cohort(count=15, seed=3, reference_date=AS_OF)
    for rtype, text in carebundle.to_ndjson(bundles).items():
        (tmp_path / f"{rtype}.ndjson").write_text(text, encoding="utf-8")
    run = evaluate_path(tmp_path, "mdacc-low-dose", AS_OF)
    assert len(run.results) == 15
    assert {r["eligibility"]["status"] for r in run.results} == {"ineligible"}
