"""A population on a FHIR server for the sync tests and the sync benchmark.

- the example patients (examples/*.json) under fresh ids (every id and reference renamed, so tests
  sharing one server never meet);
- patients on inotuzumab (tests/support/treatment.py) at different points of their treatment: first
  dose due, day 8 or 15 due, cycle 2 due, a dose not yet due, a hold (low platelets), high bilirubin;
- people without leukaemia (labs, an unrelated Condition): never selected, never written to.

``seed`` PUTs everything with its own ids, in transactions of a few hundred resources.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from datetime import date
from typing import Any

from adapter.fhir.client import FhirClient
from tests.support.make_examples import EXAMPLES_DIR
from tests.support.synth import ICD10, PatientBuilder
from tests.support.treatment import C1_MG, dosing_patient, give, pre_dose_labs

Resources = list[dict[str, Any]]


def _rename(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "reference" and isinstance(v, str) and v in ids:
                out[k] = ids[v]
            elif k == "id" and isinstance(v, str) and isinstance(value.get("resourceType"), str):
                out[k] = ids[f"{value['resourceType']}/{v}"].split("/", 1)[1]
            else:
                out[k] = _rename(v, ids)
        return out
    if isinstance(value, list):
        return [_rename(v, ids) for v in value]
    return value


def renamed(resources: Iterable[dict[str, Any]], suffix: str) -> Resources:
    """``resources`` with every id (and every reference to one of them) ending in ``-<suffix>``."""
    resources = [copy.deepcopy(r) for r in resources]
    ids = {f"{r['resourceType']}/{r['id']}": f"{r['resourceType']}/{r['id'][: 63 - len(suffix)]}-{suffix}"
           for r in resources}  # fmt: skip
    out: Resources = _rename(resources, ids)
    return out


def examples(suffix: str) -> dict[str, Resources]:
    """Each example patient's resources, renamed (key: the example's file stem)."""
    out = {}
    for path in sorted(EXAMPLES_DIR.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        out[path.stem] = renamed([e["resource"] for e in bundle["entry"]], suffix)
    return out


#: (label, days since cycle 1 day 1, doses given as (offset, mg), pre-dose lab overrides)
SCENARIOS: list[tuple[str, int, list[tuple[int, float]], dict[str, float]]] = [
    ("c1d1-due", 0, [], {}),
    ("c1d8-due", 7, [(0, C1_MG[0])], {}),
    ("c1d15-due", 14, [(0, C1_MG[0]), (7, C1_MG[1])], {}),
    ("c2d1-due", 21, [(0, C1_MG[0]), (7, C1_MG[1]), (14, C1_MG[2])], {}),
    ("c1d8-not-yet", 3, [(0, C1_MG[0])], {}),
    ("c1d8-low-platelets", 7, [(0, C1_MG[0])], {"plt": 20, "anc": 0.4}),
    ("c1d8-high-bilirubin", 7, [(0, C1_MG[0])], {"bili": 60}),
]


def treatment_patient(pid: str, today: date, scenario: int, weight: float = 80) -> Resources:
    """A patient on inotuzumab in one of :data:`SCENARIOS` (by index, modulo their number)."""
    _label, start, doses, labs = SCENARIOS[scenario % len(SCENARIOS)]
    b = dosing_patient(pid, today, start, weight=weight)
    give(b, start, doses)
    if start:
        pre_dose_labs(b, **labs)  # type: ignore[arg-type]
    return b.resources


def healthy_patient(pid: str, today: date, n: int) -> Resources:
    """Someone without leukaemia: a few labs and, every other one, hypertension."""
    b = PatientBuilder(pid, "1961-05-02", "female" if n % 2 else "male", today)
    b.lab("body-weight", 60 + n % 30, days_ago=3)
    b.lab("creatinine", 70 + n % 40, days_ago=3)
    b.lab("platelets", 250, days_ago=3)
    if n % 2:
        b.condition(ICD10, "I10", "Essential (primary) hypertension", onset_days_ago=900)
    return b.resources


def population(suffix: str, today: date, treated: int, healthy: int) -> dict[str, Resources]:
    """Patient id -> resources: the examples, ``treated`` patients on treatment, ``healthy`` others."""
    out: dict[str, Resources] = {}
    for resources in examples(suffix).values():
        pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        out[pid] = resources
    for i in range(treated):
        pid = f"tx{i:04d}-{suffix}"
        out[pid] = treatment_patient(pid, today, i, weight=70 + (i * 7) % 40)
    for i in range(healthy):
        pid = f"hy{i:04d}-{suffix}"
        out[pid] = healthy_patient(pid, today, i)
    return out


def _chunks(resources: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(resources), size):
        yield resources[i : i + size]


def seed(client: FhirClient, resources: Iterable[dict[str, Any]], per_transaction: int = 400) -> None:
    """PUT every resource under its own id (transactions of ``per_transaction`` entries)."""
    for chunk in _chunks(list(resources), per_transaction):
        client.transaction(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                    for r in chunk
                ],
            }
        )
