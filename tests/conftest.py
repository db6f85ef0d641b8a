from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from adapter.api import evaluate_resources
from tests.support.synth import PatientBuilder, full_workup

pytest_plugins = [
    "tests.support.hl7_examples",
    "tests.support.fhir_server",
    "tests.support.r4_validator",
    "tests.support.service",
]

TODAY = date(2026, 11, 21)


@pytest.fixture
def today() -> date:
    return TODAY


def new_patient(
    pid: str = "p1", birth: str | None = "1980-03-14", gender: str | None = "male"
) -> PatientBuilder:
    return PatientBuilder(pid, birth, gender, TODAY)


def eligible_patient(pid: str = "p1", gender: str = "male", birth: str = "1980-03-14") -> PatientBuilder:
    return full_workup(new_patient(pid, birth, gender))


def evaluate(b: PatientBuilder | list[dict[str, Any]], protocol: str, as_of: date = TODAY) -> dict[str, Any]:
    resources = b.resources if isinstance(b, PatientBuilder) else b
    run = evaluate_resources(resources, protocol, as_of)
    assert len(run.results) == 1
    result: dict[str, Any] = run.results[0]
    return result


def criterion(result: dict[str, Any], cid: str) -> dict[str, Any]:
    for c in result["eligibility"]["criteria"]:
        if c["id"] == cid:
            found: dict[str, Any] = c
            return found
    raise AssertionError(f"no criterion {cid}")


Evaluate = Callable[..., dict[str, Any]]
