"""Mapping FHIR dicts into the PatientRecord: codes, units, statuses, plausibility, conflicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapter.api import evaluate_resources
from adapter.errors import MappingTableError
from adapter.input.reader import read_resources
from adapter.mapping.record import build_records
from adapter.mapping.tables import load_tables
from adapter.mapping.units import UnitError, conversion_factor
from tests.conftest import TODAY, criterion, eligible_patient, evaluate, new_patient
from tests.support.synth import UCUM


def record_of(resources: list[dict[str, Any]]) -> Any:
    recs = build_records(read_resources(resources).resources, load_tables())
    assert len(recs.records) == 1
    return recs.records[0]


# -- units -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("src", "dst", "mm", "factor"),
    [
        ("mg/dL", "umol/L", 584.66, 17.10396),  # bilirubin: 1 mg/dL = 17.1 umol/L
        ("umol/L", "mg/dL", 584.66, 0.0584660),
        ("mg/dL", "umol/L", 113.12, 88.4017),  # creatinine: 1 mg/dL = 88.4 umol/L
        ("10*3/uL", "10*9/L", None, 1.0),
        ("/uL", "10*9/L", None, 0.001),
        ("/mm3", "10*9/L", None, 0.001),
        ("10*9/L", "/mm3", None, 1000.0),
        ("[lb_av]", "kg", None, 0.45359237),
        ("g", "kg", None, 0.001),
        ("[in_i]", "cm", None, 2.54),
        ("m", "cm", None, 100.0),
    ],
)
def test_unit_conversions(src: str, dst: str, mm: float | None, factor: float) -> None:
    assert conversion_factor(src, dst, mm) == pytest.approx(factor, rel=1e-5)


@pytest.mark.parametrize(("src", "dst"), [("furlong", "kg"), ("kg", "cm"), ("mg/dL", "umol/L")])
def test_unknown_or_inconvertible_units_raise(src: str, dst: str) -> None:
    with pytest.raises(UnitError):
        conversion_factor(src, dst)  # mg/dL -> umol/L needs a molar mass: never guessed


def _weight(value: float, unit: str, system: str | None = UCUM) -> list[dict[str, Any]]:
    b = new_patient()
    obs = b.lab("body-weight", value)
    q: dict[str, Any] = {"value": value, "unit": unit}
    if system:
        q.update(system=system, code=unit)
    obs["valueQuantity"] = q
    return b.resources


@pytest.mark.parametrize(
    ("value", "unit", "system", "kg"),
    [
        (165.0, "[lb_av]", UCUM, 74.84274105),
        (75000, "g", UCUM, 75.0),
        (165.0, "lb", None, 74.84274105),
        (80.0, "kg", None, 80.0),
    ],
)
def test_weight_in_any_known_unit_is_normalised_to_kg(
    value: float, unit: str, system: str | None, kg: float
) -> None:
    rec = record_of(_weight(value, unit, system))
    assert rec.readings["body-weight"][0].number == pytest.approx(kg)


@pytest.mark.parametrize(
    ("value", "unit", "reason"),
    [
        (80, "stone-ish", "unknown unit"),
        (80, "cm", "cannot be converted"),
        (0, "kg", "implausible"),
        (401, "kg", "implausible"),
        (-3, "kg", "implausible"),
        (80, "g", "implausible"),  # 0.08 kg: an entry in the wrong unit (issue #10)
        (399, "kg", "implausible"),
        (19.9, "kg", "implausible"),
        (250.1, "kg", "implausible"),
    ],
)
def test_unusable_weight_is_kept_with_its_reason(value: float, unit: str, reason: str) -> None:
    rec = record_of(_weight(value, unit, None if unit == "stone-ish" else UCUM))
    assert "body-weight" not in rec.readings
    assert reason in rec.unusable["body-weight"][0].reason


def test_height_plausibility_limits() -> None:
    # adults and adolescents from 12 (mappings/units.yaml: body-height 100-230 cm)
    for value, ok in ((99.9, False), (100, True), (230, True), (230.1, False), (40, False)):
        b = new_patient()
        b.lab("body-height", value)
        rec = record_of(b.resources)
        assert ("body-height" in rec.readings) is ok


def test_negative_count_is_rejected() -> None:
    b = new_patient()
    b.lab("neutrophils", -0.5)
    rec = record_of(b.resources)
    assert "implausible" in rec.unusable["neutrophils"][0].reason


def test_unknown_unit_makes_the_criterion_unknown_not_a_guess() -> None:
    b = eligible_patient()
    for r in b.resources:
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "1975-2":
            r["valueQuantity"] = {"value": 12, "unit": "mmol/dL?"}
    c = criterion(evaluate(b, "es-valtermed"), "bilirubin")
    assert c["status"] == "unknown"
    assert "unknown unit" in c["reason"]


def test_reference_range_in_other_unit_is_converted() -> None:
    b = new_patient()
    b.lab("bilirubin-total", 1.0, unit="mg/dL", high=1.2)
    r = record_of(b.resources).readings["bilirubin-total"][0]
    assert r.number == pytest.approx(17.104, rel=1e-4)
    assert r.uln == pytest.approx(1.2 * 17.104, rel=1e-4)
    assert r.uln_source == "referenceRange"


# -- observation selection -------------------------------------------------------------------------
def test_status_filtering_and_latest_value() -> None:
    b = eligible_patient()
    b.lab("neutrophils", 0.2, days_ago=0, status="entered-in-error")
    b.lab("neutrophils", 0.3, days_ago=0, status="cancelled")
    assert criterion(evaluate(b, "nhs-ta514"), "neutrophils")["status"] == "met"
    b.lab("neutrophils", 0.4, days_ago=0, status="amended")
    assert criterion(evaluate(b, "nhs-ta514"), "neutrophils")["status"] == "review"


def test_only_preliminary_result_is_unknown() -> None:
    b = eligible_patient()
    b.resources[:] = [r for r in b.resources if "751-8" not in str(r.get("code"))]
    b.lab("neutrophils", 2.0, days_ago=0, status="preliminary")
    c = criterion(evaluate(b, "nhs-ta514"), "neutrophils")
    assert c["status"] == "unknown"
    assert "preliminary" in c["reason"]


def test_values_after_the_as_of_date_are_not_used() -> None:
    b = eligible_patient()
    b.lab("neutrophils", 0.1, days_ago=-3)  # in the future
    assert criterion(evaluate(b, "nhs-ta514"), "neutrophils")["status"] == "met"


def test_newest_unusable_value_is_not_replaced_by_an_older_one() -> None:
    b = eligible_patient()
    obs = b.lab("neutrophils", 2.0, days_ago=0)
    obs["valueQuantity"] = {"value": 2.0, "unit": "bananas"}
    c = criterion(evaluate(b, "nhs-ta514"), "neutrophils")
    assert c["status"] == "unknown"
    assert "most recent" in c["reason"]


def test_conflicting_values_on_the_same_day_are_unknown() -> None:
    b = eligible_patient()
    b.lab("platelets", 30, days_ago=1)
    c = criterion(evaluate(b, "nhs-ta514"), "platelets")
    assert c["status"] == "unknown"
    assert "conflicting" in c["reason"]


def test_observation_component_is_read() -> None:
    b = eligible_patient()
    b.resources[:] = [r for r in b.resources if "76634-5" not in str(r.get("code"))]
    ecg = b.fact("ecg", "x", days_ago=2, system="http://loinc.org", code="11524-6")
    del ecg["valueCodeableConcept"]
    ecg["component"] = [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "76634-5"}]},
            "valueQuantity": {"value": 480, "unit": "ms", "system": UCUM, "code": "ms"},
        }
    ]
    assert criterion(evaluate(b, "es-valtermed"), "qtcf")["status"] == "not-met"


def test_coded_values_map_through_value_sets_and_ambiguity_is_reported() -> None:
    b = eligible_patient()
    b.resources[:] = [r for r in b.resources if "philadelphia" not in str(r.get("code"))]
    obs = b.fact("philadelphia-status", "negative", days_ago=1)
    obs["valueCodeableConcept"] = {"coding": [{"system": "http://snomed.info/sct", "code": "260385009"}]}
    assert criterion(evaluate(b, "mdacc-low-dose"), "ph-negative")["status"] == "met"
    obs["valueCodeableConcept"]["coding"].append({"system": "http://snomed.info/sct", "code": "10828004"})
    c = criterion(evaluate(b, "mdacc-low-dose"), "ph-negative")
    assert c["status"] == "unknown"
    assert "ambiguous" in c["reason"]


def test_ecog_as_loinc_answer_code() -> None:
    b = eligible_patient()
    b.resources[:] = [r for r in b.resources if "89247-1" not in str(r.get("code"))]
    obs = b.fact("ecog", "x", days_ago=1, system="http://loinc.org", code="89247-1")
    t = load_tables()
    answer = next(
        code for (system, code), v in t.values["ecog"].items() if v == "3" and system == "http://loinc.org"
    )
    obs["valueCodeableConcept"] = {"coding": [{"system": "http://loinc.org", "code": answer}]}
    assert criterion(evaluate(b, "es-valtermed"), "ecog")["status"] == "not-met"
    assert criterion(evaluate(b, "mdacc-low-dose"), "performance-status")["status"] == "met"


# -- site mappings -----------------------------------------------------------------------------------
def test_site_mapping_file_adds_local_codes_for_concepts_and_values(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "systems:\n  local: urn:oid:1.2.3.4.5\n"
        "concepts:\n  neutrophils:\n    codes:\n      - local NEUT-ABS\n"
        "value_sets:\n  positive-negative:\n    positive:\n      - local POS\n",
        encoding="utf-8",
    )
    b = eligible_patient()
    b.resources[:] = [r for r in b.resources if "751-8" not in str(r.get("code"))]
    obs = b.lab("neutrophils", 0.5, days_ago=1)
    obs["code"] = {"coding": [{"system": "urn:oid:1.2.3.4.5", "code": "NEUT-ABS"}]}
    assert criterion(evaluate(b, "nhs-ta514"), "neutrophils")["status"] == "unknown"
    run = evaluate_resources(b.resources, "nhs-ta514", TODAY, mappings=[str(site)])
    assert criterion(run.results[0], "neutrophils")["status"] == "review"
    assert ("urn:oid:1.2.3.4.5", "POS") in load_tables((str(site),)).values["positive-negative"]


@pytest.mark.parametrize(
    "content",
    [
        "concepts: [1, 2]",
        "concepts:\n  x:\n    kind: banana\n",
        "value_sets:\n  response:\n    CR:\n      - nope X\n",
        "unknown_section: 1\n",
        "concepts:\n  neutrophils:\n    codes:\n      - justonetoken\n",
    ],
)
def test_malformed_site_mapping_is_a_clear_error(tmp_path: Path, content: str) -> None:
    site = tmp_path / "bad.yaml"
    site.write_text(content, encoding="utf-8")
    with pytest.raises(MappingTableError):
        load_tables((str(site),))


def test_every_concept_used_by_a_variant_is_in_the_tables() -> None:
    from adapter.protocols import VARIANTS, load_variant

    tables = load_tables()
    for name in VARIANTS:
        for spec in load_variant(name).criteria:
            for key in ("concept", "concepts", "relapse_conditions", "diagnosis", "serology"):
                value = spec.params.get(key)
                for concept in [value] if isinstance(value, str) else value or []:
                    assert concept in tables.concepts, (name, spec.id, concept)
            for concept in load_variant(name).windows:
                assert concept in tables.concepts


def test_required_concept_names_are_in_the_public_contract() -> None:
    names = set(load_tables().concepts)
    contract = {
        "body-weight",
        "body-height",
        "body-surface-area",
        "neutrophils",
        "platelets",
        "leukocytes",
        "peripheral-blasts",
        "marrow-blasts-percent",
        "cd22-positive-blasts-percent",
        "bilirubin-total",
        "ast",
        "alt",
        "creatinine",
        "creatinine-clearance",
        "qtcf",
        "ecog",
        "pregnancy-status",
        "hbv-serology",
        "hcv-serology",
        "hiv-serology",
        "philadelphia-status",
        "prior-induction-lines",
        "hsct-candidate",
        "disease-status",
        "response",
        "mrd",
        "b-all",
        "vod-sos",
        "burkitt",
        "cns-leukaemia",
        "testicular-relapse",
        "gilbert-syndrome",
        "severe-liver-disease",
        "hiv",
        "hepatitis-b",
        "hepatitis-c",
        "other-malignancy",
        "active-infection",
        "allo-hsct",
        "inotuzumab-ozogamicin",
        "tki",
        "anti-cd22",
        "monoclonal-antibody",
        "chemotherapy",
        "qt-prolonging",
        "hepatotoxic-azole",
        "live-vaccine",
        "inotuzumab-hypersensitivity",
    }
    assert contract <= names
    t = load_tables()
    assert set(t.value_names["response"]) >= {"CR", "CRi", "CRp", "PR", "NR", "PD"}


def test_default_codes_from_the_issue_map() -> None:
    t = load_tables()
    loinc = "http://loinc.org"
    for code, concept in [
        ("29463-7", "body-weight"),
        ("8302-2", "body-height"),
        ("8277-6", "body-surface-area"),
        ("751-8", "neutrophils"),
        ("26499-4", "neutrophils"),
        ("777-3", "platelets"),
        ("26515-7", "platelets"),
        ("1975-2", "bilirubin-total"),
        ("14631-6", "bilirubin-total"),
        ("1920-8", "ast"),
        ("1742-6", "alt"),
        ("2160-0", "creatinine"),
        ("14682-9", "creatinine"),
        ("76634-5", "qtcf"),
        ("89247-1", "ecog"),
        ("82810-3", "pregnancy-status"),
    ]:
        assert t.concepts_for([(loinc, code)], "observation") == {concept}, code
    icd = "http://hl7.org/fhir/sid/icd-10"
    for code, concept in [
        ("C91.0", "b-all"),
        ("K76.5", "vod-sos"),
        ("C83.7", "burkitt"),
        ("E80.4", "gilbert-syndrome"),
        ("B20", "hiv"),
        ("B18.1", "hepatitis-b"),
        ("B18.2", "hepatitis-c"),
    ]:
        assert concept in t.concepts_for([(icd, code)], "condition"), code
    atc = "http://www.whocc.no/atc"
    assert "inotuzumab-ozogamicin" in t.concepts_for([(atc, "L01FB01")], "medication")
    for code in ("L01EA01", "L01EA02", "L01EA03", "L01EA04", "L01EA05"):
        assert t.concepts_for([(atc, code)], "medication") >= {"tki"}
    assert "anti-cd22" not in t.concepts_for([(atc, "L01FB01")], "medication")


def test_serology_from_hl7_interpretation_code_when_there_is_no_value() -> None:
    b = eligible_patient()
    b.resources[:] = [r for r in b.resources if "hbv-serology" not in str(r.get("code"))]
    obs = b.fact("hbv-serology", "x", days_ago=5)
    del obs["valueCodeableConcept"]
    interp = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    obs["interpretation"] = [{"coding": [{"system": interp, "code": "POS"}]}]
    assert criterion(evaluate(b, "es-valtermed"), "hepatitis-b")["status"] == "not-met"
    obs["interpretation"] = [{"coding": [{"system": interp, "code": "NEG"}]}]
    assert criterion(evaluate(b, "es-valtermed"), "hepatitis-b")["status"] == "met"
