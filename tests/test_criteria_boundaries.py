"""Boundary tests per criterion: values exactly at a limit, and the safe readings of the sources."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import criterion, eligible_patient, evaluate
from tests.support.synth import INO, SCT, PatientBuilder


def _drop(b: PatientBuilder, concept_code: str) -> None:
    b.resources[:] = [
        r
        for r in b.resources
        if not (r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == concept_code)
    ]


def _with_lab(concept: str, value: float, code: str, **kw: Any) -> PatientBuilder:
    b = eligible_patient()
    _drop(b, code)
    b.lab(concept, value, **kw)
    return b


# -- bilirubin exactly 1.5 × ULN ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("variant", "value", "status"),
    [
        ("nhs-ta514", 31.5, "met"),  # 31.5 / 21 = 1.5 exactly
        ("nhs-ta514", 31.6, "review"),  # outside the UK limit: prescriber must authorise
        ("es-valtermed", 31.5, "met"),
        ("es-valtermed", 31.6, "not-met"),
        ("mdacc-low-dose", 31.5, "met"),
        ("mdacc-low-dose", 42.0, "review"),  # 2.0 × ULN: allowed if due to tumour, PI confirms
        ("mdacc-low-dose", 42.1, "not-met"),
    ],
)
def test_bilirubin_at_one_and_a_half_times_uln(variant: str, value: float, status: str) -> None:
    b = _with_lab("bilirubin-total", value, "1975-2", high=21)
    assert criterion(evaluate(b, variant), "bilirubin")["status"] == status


def test_uk_limits_table_misprint_is_read_as_at_most() -> None:
    """The UK table prints 'Bilirubin ≥ 1.5 x ULN'; §Hepatic impairment means ≤ (safe reading).

    Read literally, a normal bilirubin would fail and 10 × ULN would pass. We apply ≤."""
    normal = evaluate(_with_lab("bilirubin-total", 8, "1975-2", high=21), "nhs-ta514")
    high = evaluate(_with_lab("bilirubin-total", 210, "1975-2", high=21), "nhs-ta514")
    assert criterion(normal, "bilirubin")["status"] == "met"
    assert criterion(high, "bilirubin")["status"] == "review"
    assert high["eligibility"]["status"] == "needs-review"
    ast_high = evaluate(_with_lab("ast", 40 * 2.6, "1920-8", high=40), "nhs-ta514")
    assert criterion(ast_high, "transaminases")["status"] == "review"
    ast_limit = evaluate(_with_lab("ast", 100, "1920-8", high=40), "nhs-ta514")
    assert criterion(ast_limit, "transaminases")["status"] == "met"


def test_gilbert_syndrome_turns_high_bilirubin_into_review_in_spain() -> None:
    b = _with_lab("bilirubin-total", 50, "1975-2", high=21)
    assert criterion(evaluate(b, "es-valtermed"), "bilirubin")["status"] == "not-met"
    b.condition("http://hl7.org/fhir/sid/icd-10", "E80.4", "Gilbert syndrome", onset_days_ago=5000)
    assert criterion(evaluate(b, "es-valtermed"), "bilirubin")["status"] == "review"


def test_uln_comes_from_the_observation_else_the_documented_default() -> None:
    own = evaluate(_with_lab("bilirubin-total", 30, "1975-2", high=17), "es-valtermed")  # 1.76 × 17
    assert criterion(own, "bilirubin")["status"] == "not-met"
    default = evaluate(_with_lab("bilirubin-total", 30, "1975-2", high=None), "es-valtermed")  # 30/21 = 1.43
    c = criterion(default, "bilirubin")
    assert c["status"] == "met"
    assert "default" in c["reason"]


def test_a_bound_result_decides_only_when_it_is_clear() -> None:
    below = evaluate(_with_lab("bilirubin-total", 5, "1975-2", comparator="<"), "es-valtermed")
    assert criterion(below, "bilirubin")["status"] == "met"
    above = evaluate(_with_lab("bilirubin-total", 5, "1975-2", comparator=">"), "es-valtermed")
    assert criterion(above, "bilirubin")["status"] == "unknown"


# -- age exactly 18 ------------------------------------------------------------------------------
@pytest.mark.parametrize(("birth", "status"), [("2008-11-21", "met"), ("2008-11-22", "not-met")])
def test_age_exactly_eighteen_on_the_as_of_date(birth: str, status: str) -> None:
    b = eligible_patient(birth=birth)
    for variant in ("fda-label", "nhs-ta514", "es-valtermed"):
        assert criterion(evaluate(b, variant), "adult")["status"] == status


def test_mdacc_admits_from_twelve() -> None:
    assert (
        criterion(evaluate(eligible_patient(birth="2014-11-21"), "mdacc-low-dose"), "age-12")["status"]
        == "met"
    )
    assert (
        criterion(evaluate(eligible_patient(birth="2014-11-22"), "mdacc-low-dose"), "age-12")["status"]
        == "not-met"
    )


def test_imprecise_or_future_birth_date_is_unknown() -> None:
    b = eligible_patient(birth="2008")  # 17 or 18 on 2026-11-21
    assert criterion(evaluate(b, "fda-label"), "adult")["status"] == "unknown"
    b = eligible_patient(birth="2027-01-01")
    assert criterion(evaluate(b, "fda-label"), "adult")["status"] == "unknown"


# -- HSCT exactly 4 months ago ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("performed", "status"),
    [
        ("2026-07-21", "not-met"),  # exactly 4 months before 2026-11-21: "≤ 4 months" excludes
        ("2026-07-20", "met"),
        ("2026-07", "unknown"),  # month precision straddles the boundary
    ],
)
def test_allo_hsct_exactly_four_months_ago(performed: str, status: str) -> None:
    b = eligible_patient()
    proc = b.procedure("allo-hsct", "Allogeneic HSCT", 100, system=INO)
    proc["performedDateTime"] = performed
    for variant in ("es-valtermed", "mdacc-low-dose"):
        assert criterion(evaluate(b, variant), "allo-hsct-4-months")["status"] == status


# -- QTcF 470 -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("qtcf", "status"), [(469, "met"), (470, "not-met"), (471, "not-met")])
def test_qtcf_470_spain_safe_reading(qtcf: int, status: str) -> None:
    """§4 asks QTcF<470 and lists >470 as not to start: at exactly 470 we apply the stricter <470."""
    b = _with_lab("qtcf", qtcf, "76634-5", days_ago=3)
    assert criterion(evaluate(b, "es-valtermed"), "qtcf")["status"] == status


# -- counts and renal function ----------------------------------------------------------------------
@pytest.mark.parametrize(("value", "status"), [(1.0, "met"), (0.99, "review")])
def test_uk_neutrophils_limit(value: float, status: str) -> None:
    b = _with_lab("neutrophils", value, "751-8")
    assert criterion(evaluate(b, "nhs-ta514"), "neutrophils")["status"] == status


@pytest.mark.parametrize(("value", "status"), [(50, "met"), (49, "review")])
def test_uk_platelets_limit(value: float, status: str) -> None:
    b = _with_lab("platelets", value, "777-3")
    assert criterion(evaluate(b, "nhs-ta514"), "platelets")["status"] == status


def test_uk_crcl_must_exceed_15_and_mdacc_accepts_creatinine_or_crcl() -> None:
    b = eligible_patient()
    b.fact("creatinine-clearance", None, days_ago=1, system="http://loinc.org", code="2164-2")
    b.resources[-1].pop("valueCodeableConcept")
    b.resources[-1]["valueQuantity"] = {
        "value": 15,
        "unit": "mL/min",
        "system": "http://unitsofmeasure.org",
        "code": "mL/min",
    }
    assert criterion(evaluate(b, "nhs-ta514"), "creatinine-clearance")["status"] == "review"
    # MD Anderson: CrCl 15 is enough (≥ 15), and creatinine ≤ 2 × ULN is too
    assert criterion(evaluate(b, "mdacc-low-dose"), "renal-function")["status"] == "met"


def test_cockcroft_gault_estimate_when_no_clearance_is_recorded() -> None:
    b = _with_lab("creatinine", 1000, "2160-0")  # 46-year-old, 76.5 kg: about 10 mL/min
    c = criterion(evaluate(b, "nhs-ta514"), "creatinine-clearance")
    assert c["status"] == "review"
    assert "Cockcroft" in c["reason"]


# -- Spain CD22 ≥ 20%, peripheral blasts ------------------------------------------------------------
@pytest.mark.parametrize(("pct", "status"), [(20.0, "met"), (19.9, "not-met")])
def test_spain_cd22_twenty_percent(pct: float, status: str) -> None:
    b = eligible_patient()
    _drop(b, "cd22-positive-blasts-percent")
    b.fact("cd22-positive-blasts-percent", pct, days_ago=3)
    assert criterion(evaluate(b, "es-valtermed"), "cd22-positive-20")["status"] == status


def test_cd22_positive_without_percentage_is_enough_for_fda_but_unknown_for_spain() -> None:
    b = eligible_patient()
    _drop(b, "cd22-positive-blasts-percent")
    b.fact("cd22-positive-blasts-percent", "positive", days_ago=3)
    assert criterion(evaluate(b, "fda-label"), "cd22-positive")["status"] == "met"
    assert criterion(evaluate(b, "es-valtermed"), "cd22-positive-20")["status"] == "unknown"


@pytest.mark.parametrize(
    ("blasts", "unit", "status"),
    [
        (10000, "/mm3", "met"),
        (10001, "/mm3", "not-met"),
        (10.0, "10*9/L", "met"),
        (12, "10*3/uL", "not-met"),
    ],
)
def test_spain_peripheral_blasts_ten_thousand_per_mm3(blasts: float, unit: str, status: str) -> None:
    b = eligible_patient()
    _drop(b, "peripheral-blasts")
    b.quantity("peripheral-blasts", blasts, unit, days_ago=1)
    assert criterion(evaluate(b, "es-valtermed"), "peripheral-blasts")["status"] == status


# -- washouts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ended_days_ago", "status"), [(14, "not-met"), (15, "met")])
def test_mdacc_monoclonal_antibody_two_week_washout(ended_days_ago: int, status: str) -> None:
    b = eligible_patient()
    b.medication("MedicationAdministration", "L01FX07", "blinatumomab", ended_days_ago)
    assert criterion(evaluate(b, "mdacc-low-dose"), "monoclonal-antibody-2-weeks")["status"] == status


def test_mdacc_chemotherapy_exceptions() -> None:
    b = eligible_patient()
    b.medication("MedicationAdministration", "L01XX05", "hydroxycarbamide", 3)
    b.medication("MedicationAdministration", "L01BC01", "cytarabine", 4)
    b.medication(
        "MedicationAdministration",
        "L01BA01",
        "methotrexate intrathecal",
        5,
        route=("72607000", "Intrathecal route"),
    )
    assert criterion(evaluate(b, "mdacc-low-dose"), "chemotherapy-2-weeks")["status"] == "met"
    b.medication("MedicationAdministration", "L01CA02", "vincristine", 6)
    assert criterion(evaluate(b, "mdacc-low-dose"), "chemotherapy-2-weeks")["status"] == "not-met"


def test_course_without_end_date_needs_review() -> None:
    b = eligible_patient()
    b.medication("MedicationRequest", "L01CA02", "vincristine", 60, status="completed")
    c = criterion(evaluate(b, "mdacc-low-dose"), "chemotherapy-2-weeks")
    assert c["status"] == "review"
    assert "no recorded end" in c["reason"]


def test_ph_positive_needs_a_tki_on_record() -> None:
    b = eligible_patient()
    _drop(b, "philadelphia-status")
    b.fact("philadelphia-status", "positive", days_ago=20)
    assert criterion(evaluate(b, "nhs-ta514"), "ph-positive-after-tki")["status"] == "not-met"
    b.medication("MedicationStatement", "L01EA01", "imatinib", 300, 100)
    assert criterion(evaluate(b, "nhs-ta514"), "ph-positive-after-tki")["status"] == "met"
    assert criterion(evaluate(b, "mdacc-low-dose"), "ph-negative")["status"] == "not-met"


# -- history ------------------------------------------------------------------------------------------
def test_vod_history_readings_per_variant() -> None:
    b = eligible_patient()
    b.condition(
        "http://hl7.org/fhir/sid/icd-10",
        "K76.5",
        "VOD",
        onset_days_ago=500,
        clinical="resolved",
        abatement_days_ago=450,
        severity="mild",
    )
    r = {
        v: criterion(evaluate(b, v), "vod-history")["status"]
        for v in ("fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose")
    }
    # UK contraindicates prior *severe* or ongoing VOD: a mild resolved one needs review
    assert r == {
        "fda-label": "review",
        "nhs-ta514": "review",
        "es-valtermed": "not-met",
        "mdacc-low-dose": "not-met",
    }


def test_refuted_and_entered_in_error_conditions_are_ignored_unconfirmed_is_review() -> None:
    for verification, status in (("refuted", "met"), ("entered-in-error", "met"), ("provisional", "review")):
        b = eligible_patient()
        b.condition("http://hl7.org/fhir/sid/icd-10", "C83.7", "Burkitt", verification=verification)
        assert criterion(evaluate(b, "es-valtermed"), "burkitt")["status"] == status


def test_hypersensitivity_allergy_blocks_spain() -> None:
    b = eligible_patient()
    b.allergy("http://www.whocc.no/atc", "L01FB01", "inotuzumab ozogamicin")
    assert criterion(evaluate(b, "es-valtermed"), "hypersensitivity")["status"] == "not-met"


def test_pregnancy_is_required_for_female_patients() -> None:
    b = eligible_patient(gender="female")
    assert evaluate(b, "es-valtermed")["eligibility"]["status"] == "eligible"
    _drop(b, "82810-3")
    c = criterion(evaluate(b, "es-valtermed"), "pregnancy")
    assert c["status"] == "unknown"
    b.fact("pregnancy-status", "pregnant", days_ago=1, system="http://loinc.org", code="82810-3")
    assert criterion(evaluate(b, "es-valtermed"), "pregnancy")["status"] == "not-met"
    assert criterion(evaluate(b, "fda-label"), "pregnancy")["status"] == "review"


def test_uk_windows_seven_days_stale_is_unknown() -> None:
    b = _with_lab("neutrophils", 2.0, "751-8", days_ago=7)
    assert criterion(evaluate(b, "nhs-ta514"), "neutrophils")["status"] == "met"
    b = _with_lab("neutrophils", 2.0, "751-8", days_ago=8)
    c = criterion(evaluate(b, "nhs-ta514"), "neutrophils")
    assert c["status"] == "unknown"
    assert "older than 7 days" in c["reason"]
    assert evaluate(b, "nhs-ta514")["eligibility"]["status"] == "insufficient-data"


def test_qt_prolonging_comedication_needs_review() -> None:
    b = eligible_patient()
    b.medication("MedicationRequest", "J01FA09", "clarithromycin", 3)
    assert criterion(evaluate(b, "nhs-ta514"), "qt-prolonging-comedication")["status"] == "review"
    assert SCT  # route codes come from the tables


def test_live_or_unclassified_vaccine_within_two_weeks_needs_review_in_spain() -> None:
    b = eligible_patient()
    vaccine = {
        "resourceType": "Immunization",
        "id": "imm1",
        "status": "completed",
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "03"}]},
        "patient": b.ref,
        "occurrenceDateTime": b.day(-10),
    }
    b.resources.append(vaccine)
    c = criterion(evaluate(b, "es-valtermed"), "live-vaccine")
    assert c["status"] == "review"
    assert c["evidence"] == ["Immunization/imm1"]
    vaccine["occurrenceDateTime"] = b.day(-20)
    assert criterion(evaluate(b, "es-valtermed"), "live-vaccine")["status"] == "met"
    vaccine["occurrenceDateTime"] = b.day(-3)
    vaccine["status"] = "not-done"
    assert criterion(evaluate(b, "es-valtermed"), "live-vaccine")["status"] == "met"
