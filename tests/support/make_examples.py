"""Generate the synthetic example patients in examples/ (deterministic).

    .venv/bin/python -m tests.support.make_examples        # rewrite examples/
A test checks that the committed files equal what this module generates.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from tests.support.synth import ATC, ICD10, INO, LOINC, UCUM, PatientBuilder, full_workup

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
TODAY = date(2026, 11, 21)  # the as-of date the examples are written for


def p01() -> PatientBuilder:
    """Ph-negative relapse after one induction: eligible under every variant."""
    b = PatientBuilder("p01-ph-neg-relapse", "1980-03-14", "male", TODAY, family="Moreno", given="Alex")
    return full_workup(b)


def p02() -> PatientBuilder:
    """Ph-positive after imatinib and dasatinib: eligible except MD Anderson (Ph+ excluded)."""
    b = PatientBuilder("p02-ph-pos-after-tki", "1988-07-02", "female", TODAY, family="Okafor", given="Grace")
    full_workup(b, ph="positive")
    b.medication("MedicationStatement", "L01EA01", "imatinib 600 mg daily", 560, 300)
    b.medication("MedicationStatement", "L01EA02", "dasatinib 140 mg daily", 290, 45)
    return b


def p03() -> PatientBuilder:
    """Bilirubin 1.8 × ULN reported in mg/dL, counts in 10*3/uL: UK review, Spain no, MD Anderson review."""
    b = PatientBuilder("p03-hepatic-review", "1974-11-30", "male", TODAY, family="Lindqvist", given="Erik")
    full_workup(b)
    replaced = ("1975-2", "777-3", "751-8")  # this patient's lab reports in US units
    b.resources[:] = [
        r for r in b.resources if r.get("code", {}).get("coding", [{}])[0].get("code") not in replaced
    ]
    b.lab("bilirubin-total", 2.1, days_ago=1, unit="mg/dL", high=1.2)
    b.lab("platelets", 64, days_ago=1, unit="10*3/uL", high=450)
    b.lab("neutrophils", 1.4, days_ago=1, unit="10*3/uL", high=7.0)
    return b


def p04() -> PatientBuilder:
    """Severe VOD after a first transplant two years ago: contraindicated (FDA: review)."""
    b = PatientBuilder("p04-prior-vod", "1997-01-19", "female", TODAY, family="Haddad", given="Lina")
    full_workup(b)
    b.condition(
        ICD10,
        "K76.5",
        "Hepatic veno-occlusive disease",
        onset_days_ago=700,
        clinical="resolved",
        abatement_days_ago=650,
        severity="severe",
    )
    b.procedure("allo-hsct", "Allogeneic haematopoietic stem cell transplantation", 720, system=INO)
    return b


def p05() -> PatientBuilder:
    """Referred with a diagnosis and a marrow result only: insufficient data."""
    b = PatientBuilder("p05-incomplete", "1966-05-08", "male", TODAY, family="Novak", given="Tomas")
    b.condition(ICD10, "C91.0", "Acute lymphoblastic leukaemia", onset_days_ago=300, clinical="relapse")
    b.fact("cd22-positive-blasts-percent", 72.0, days_ago=9)
    b.lab("body-weight", 88.0, days_ago=40)
    return b


def p06() -> PatientBuilder:
    """Allogeneic transplant 3 months ago: excluded by Spain and MD Anderson (≤ 4 months)."""
    b = PatientBuilder("p06-recent-hsct", "1992-09-23", "male", TODAY, family="Costa", given="Rui")
    full_workup(b)
    b.procedure("allo-hsct", "Allogeneic haematopoietic stem cell transplantation", 91, system=INO)
    return b


def p07() -> PatientBuilder:
    """15-year-old: only the MD Anderson study (age ≥ 12) admits her."""
    b = PatientBuilder("p07-adolescent", "2011-04-02", "female", TODAY, family="Ito", given="Hana")
    return full_workup(b)


def p08() -> PatientBuilder:
    """CD22 on 15% of blasts (Spain needs ≥ 20%); on fluconazole (UK: hepatotoxic azole, review)."""
    b = PatientBuilder("p08-low-cd22", "1979-12-12", "female", TODAY, family="Ruiz", given="Carmen")
    full_workup(b)
    for r in b.resources:
        if (
            r["resourceType"] == "Observation"
            and r["code"]["coding"][0]["code"] == "cd22-positive-blasts-percent"
        ):
            r["valueQuantity"] = {"value": 15.0, "unit": "%", "system": UCUM, "code": "%"}
    b.medication("MedicationRequest", "J02AC01", "fluconazole 200 mg daily (prophylaxis)", 10)
    return b


def p09() -> PatientBuilder:
    """On treatment: cycle 1 given 21 days ago (days 1, 8, 15); complete remission on the day-21
    marrow; cycle 2 day 1 due today with today's results (weight 80 kg, height 180 cm: BSA 2.00 m²)."""
    from datetime import timedelta

    from tests.support.treatment import give, pre_dose_labs

    b = PatientBuilder(
        "p09-cycle-2", "1972-06-30", "male", TODAY - timedelta(days=21), family="Okafor", given="Ben"
    )
    full_workup(b)
    b.today = TODAY
    b.lab("body-weight", 80, days_ago=0)
    b.lab("body-height", 180, days_ago=0)
    give(b, 21, [(0, 1.6), (7, 1.0), (14, 1.0)])
    b.fact("response", "CR", days_ago=1)
    b.fact("mrd", "positive", days_ago=1)
    return pre_dose_labs(b)


BUNDLES: dict[str, Callable[[], PatientBuilder]] = {
    "p01-ph-neg-relapse.json": p01,
    "p02-ph-pos-after-tki.json": p02,
    "p03-hepatic-review.json": p03,
    "p04-prior-vod.json": p04,
    "p05-incomplete.json": p05,
    "p06-recent-hsct.json": p06,
    "p07-adolescent.json": p07,
    "p09-cycle-2.json": p09,
}
NDJSON: dict[str, Callable[[], PatientBuilder]] = {"bulk-export": p08}

assert LOINC and ATC  # codes used through synth helpers


def generate() -> dict[str, bytes]:
    """Relative path -> file content."""
    out: dict[str, bytes] = {}
    for name, make in BUNDLES.items():
        out[name] = orjson.dumps(make().bundle(), option=orjson.OPT_INDENT_2) + b"\n"
    for folder, make in NDJSON.items():
        by_type: dict[str, list[dict[str, Any]]] = {}
        for r in make().resources:
            by_type.setdefault(r["resourceType"], []).append(r)
        for rtype, items in sorted(by_type.items()):
            out[f"{folder}/{rtype}.ndjson"] = b"".join(orjson.dumps(r) + b"\n" for r in items)
    return out


def main() -> int:
    for rel, content in generate().items():
        path = EXAMPLES_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    print(f"wrote {len(generate())} files under {EXAMPLES_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
