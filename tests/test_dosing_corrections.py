"""Issue #9: the corrections to the dose engine, table-driven per variant.

Each test names the pharmacist's finding it guards; each failed on the engine before the fix.
Patients weigh 80 kg and are 180 cm tall (BSA 2.00 m²), so mg = 2 × mg/m²; "offset" is days after
cycle 1 day 1; the evaluation date is 2026-11-21 unless told otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from adapter.api import check_order_path, evaluate_resources
from tests.support.synth import ICD10, INO, NCIT, PatientBuilder, cc
from tests.support.treatment import dosing_patient, give, pre_dose_labs

TODAY = date(2026, 11, 21)
ALL = ["fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose"]
C1 = [(0, 1.6), (7, 1.0), (14, 1.0)]
K71 = "http://hl7.org/fhir/sid/icd-10-cm"


def result(b: PatientBuilder, variant: str, as_of: date = TODAY) -> dict[str, Any]:
    return evaluate_resources(b.resources, variant, as_of).results[0]


def plan(b: PatientBuilder, variant: str, as_of: date = TODAY) -> dict[str, Any]:
    dose: dict[str, Any] = result(b, variant, as_of)["dose"]
    return dose


def mgs(d: dict[str, Any]) -> list[float]:
    return [x["mg"] for x in d["doses"]]


def ids(d: dict[str, Any], effect: str | None = None) -> set[str]:
    return {f["id"] for f in d["findings"] if effect is None or f.get("effect") == effect}


def reason(d: dict[str, Any], fid: str) -> str:
    return str(next(f["reason"] for f in d["findings"] if f["id"] == fid))


def patient(start: int, doses: list[tuple[int, float]] | None = None, **labs: Any) -> PatientBuilder:
    b = dosing_patient("p", TODAY, start)
    give(b, start, C1 if doses is None else doses)
    b.fact("hsct-candidate", "no", days_ago=0)
    return pre_dose_labs(b, **labs)


# -- 1. unreadable dose records block --------------------------------------------------------------
def _no_date(r: dict[str, Any]) -> None:
    del r["effectiveDateTime"]


def _month_only(r: dict[str, Any]) -> None:
    r["effectiveDateTime"] = r["effectiveDateTime"][:7]


def _status_unknown(r: dict[str, Any]) -> None:
    r["status"] = "unknown"


def _on_hold(r: dict[str, Any]) -> None:
    r["status"] = "on-hold"


def _text_only(r: dict[str, Any]) -> None:
    r["medicationCodeableConcept"] = {"text": "inotuzumab ozogamicin"}


def _unit_vials(r: dict[str, Any]) -> None:
    r["dosage"]["dose"] = {"value": 1, "unit": "vial"}


def _implausible(r: dict[str, Any]) -> None:
    r["dosage"]["dose"]["value"] = 1e9


def _zero(r: dict[str, Any]) -> None:
    r["dosage"]["dose"]["value"] = 0


UNREADABLE: dict[str, Callable[[dict[str, Any]], None]] = {
    "no-date": _no_date,
    "month-only": _month_only,
    "status-unknown": _status_unknown,
    "on-hold": _on_hold,
    "text-only-medication": _text_only,
    "dose-unit-not-a-mass": _unit_vials,
    "implausible-dose": _implausible,
    "zero-dose": _zero,
}


@pytest.mark.parametrize("variant", ALL)
@pytest.mark.parametrize("fault", sorted(UNREADABLE))
def test_unreadable_administration_today_blocks_a_second_dose(variant: str, fault: str) -> None:
    # day 8 is due today and an administration dated today cannot be read: it may be today's dose
    b = patient(7, C1[:1])
    UNREADABLE[fault](b.administration(0, 1.0))
    d = plan(b, variant)
    assert d["action"] == "insufficient-data", (fault, d["action"])
    assert d["doses"] == []
    # blocked because the record cannot be read (not merely because the next dose is not due)
    assert {"dose-history", "continuing-criterion"} & ids(d, "insufficient-data")


@pytest.mark.parametrize("variant", ["fda-label", "nhs-ta514", "es-valtermed"])
@pytest.mark.parametrize("fault", ["status-unknown", "implausible-dose", "dose-unit-not-a-mass"])
def test_unreadable_day_15_is_not_taken_for_an_omission(variant: str, fault: str) -> None:
    # day 15 was recorded but cannot be read; on cycle 2 day 1 (CR) the plan must not treat it as
    # omitted (nor propose anything) until the record is corrected
    b = patient(21, C1[:2])
    UNREADABLE[fault](b.administration(21 - 14, 1.0))
    b.fact("response", "CR", days_ago=1)
    d = plan(b, variant)
    assert d["action"] == "insufficient-data" and d["doses"] == []
    assert not any(f["id"] == "dose-omitted" and f.get("effect") for f in d["findings"])


@pytest.mark.parametrize("variant", ALL)
def test_unknown_status_administration_before_any_readable_dose_blocks_the_first_dose(variant: str) -> None:
    b = dosing_patient("p", TODAY, 0)
    b.administration(0, 1.6, status="unknown")
    d = plan(b, variant)
    assert d["action"] == "insufficient-data" and d["doses"] == []
    assert "dose-history" in ids(d, "insufficient-data")


@pytest.mark.parametrize("variant", ALL)
def test_input_integrity_keeps_blocking_after_treatment_starts(variant: str) -> None:
    b = patient(7, C1[:1])
    b.resources.append(
        {
            "resourceType": "MedicationStatement",
            "id": "uncoded",
            "status": "completed",
            "medicationCodeableConcept": {"text": "inotuzumab 1 mg"},
            "subject": b.ref,
            "effectiveDateTime": b.at(0),
        }
    )
    r = result(b, variant)
    assert r["dose"]["action"] == "insufficient-data" and r["dose"]["doses"] == []
    assert "continuing-criterion" in ids(r["dose"], "insufficient-data")
    integrity = next(c for c in r["eligibility"]["criteria"] if c["id"] == "input-integrity")
    assert integrity["status"] == "unknown"


# -- 2. the response on the dose day counts ---------------------------------------------------------
@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("fda-label", [1.0, 1.0, 1.0]),
        ("nhs-ta514", [1.0, 1.0, 1.0]),
        ("es-valtermed", [1.0, 1.0, 1.0]),
        ("mdacc-low-dose", [1.2, 0.6]),  # cycle 2 is level 0 whatever the response
    ],
)
def test_cr_reported_on_cycle_2_day_1_decides_day_1(variant: str, expected: list[float]) -> None:
    b = patient(21)
    b.fact("response", "CR", days_ago=0)
    d = plan(b, variant)
    assert (d["action"], d["cycle"], mgs(d)) == ("administer", 2, expected)


def test_md_anderson_cr_on_cycle_3_day_1_lowers_the_level() -> None:
    b = patient(42, [*C1, (21, 1.2), (28, 0.6)])
    b.fact("response", "CR", days_ago=0)
    d = plan(b, "mdacc-low-dose")
    assert (d["action"], d["cycle"], d["dose_level"], mgs(d)) == ("administer", 3, "-1", [0.8, 0.4])


def test_check_order_accepts_the_correct_order_after_a_cr_on_the_dose_day(tmp_path: Path) -> None:
    b = patient(21)
    b.fact("response", "CR", days_ago=0)
    order = b.inotuzumab_order(0, 1.0)
    b.resources.remove(order)
    ctx, o = tmp_path / "context.json", tmp_path / "order.json"
    ctx.write_text(json.dumps(b.bundle()))
    o.write_text(json.dumps(order))
    r = check_order_path(o, ctx, "nhs-ta514")
    assert r["verdict"] == "info" and r["plan"]["doses"][0]["mg"] == 1.0


# -- 3. remission is the current state --------------------------------------------------------------
@pytest.mark.parametrize(
    ("variant", "later", "action"),
    [
        ("nhs-ta514", "NR", "administer"),
        ("fda-label", "NR", "administer"),
        ("es-valtermed", "NR", "administer"),
        ("nhs-ta514", "PD", "review"),  # the UK gives no rule for progression before cycle 3
    ],
)
def test_a_later_assessment_ends_remission_for_day_1(variant: str, later: str, action: str) -> None:
    b = patient(21)
    b.fact("response", "CR", days_ago=6)
    decisive = b.fact("response", later, days_ago=1)
    d = plan(b, variant)
    assert (d["action"], mgs(d)) == (action, [1.6, 1.0, 1.0])
    decides = next(f for f in d["findings"] if f["id"] == "response-decides")
    assert decides["evidence"] == [f"Observation/{decisive['id']}"] and later in decides["reason"]
    cycle = d["treatment"]["cycles"][0]
    assert cycle["best_response"] == "CR"  # the best of the cycle is still shown


def test_a_relapse_condition_after_cr_ends_remission() -> None:
    b = patient(21)
    b.fact("response", "CR", days_ago=6)
    relapse = b.condition(INO, "b-all-relapse", "Relapse of B-ALL", onset_days_ago=1)
    d = plan(b, "nhs-ta514")
    assert mgs(d) == [1.6, 1.0, 1.0]
    assert (
        f"Condition/{relapse['id']}"
        in next(f for f in d["findings"] if f["id"] == "response-decides")["evidence"]
    )


def test_md_anderson_remission_lost_restores_level_0_but_not_toxicity_reductions() -> None:
    b = patient(42, [*C1, (21, 1.2), (28, 0.6)])
    b.fact("response", "CR", days_ago=25)
    b.fact("response", "NR", days_ago=2)
    d = plan(b, "mdacc-low-dose")
    assert (d["dose_level"], mgs(d)) == ("0", [1.2, 0.6])


# -- 4. a toxicity explains an interruption when it spans it ---------------------------------------
def test_toxicity_active_through_an_interruption_explains_it_whatever_its_onset() -> None:
    # stomatitis grade 3 from cycle 1 day 4 until the day before cycle 2 was given (offset 35)
    b = patient(42, [*C1, (35, 1.2)])
    tox = b.toxicity("Stomatitis", 3, onset_days_ago=42 - 3, clinical="resolved", abatement_days_ago=42 - 34)
    b.fact("response", "NR", days_ago=30)
    d = plan(b, "nhs-ta514")
    gap = next(i for i in d["treatment"]["interruptions"] if i["days"] >= 14)
    assert f"Condition/{tox['id']}" in gap["toxicity_evidence"]
    text = reason(d, "dose-reduced")
    assert f"Condition/{tox['id']}" in text and "no toxicity recorded" not in text


def test_toxicity_that_ended_before_the_interruption_does_not_explain_it() -> None:
    b = patient(42, [*C1, (35, 1.2)])
    b.toxicity("Stomatitis", 3, onset_days_ago=42 - 3, clinical="resolved", abatement_days_ago=42 - 10)
    b.fact("response", "NR", days_ago=30)
    d = plan(b, "nhs-ta514")
    gap = next(i for i in d["treatment"]["interruptions"] if i["days"] >= 14)
    assert gap["toxicity_evidence"] == []
    assert "no toxicity recorded during it" in reason(d, "dose-reduced")


def _three_uk_modifications() -> PatientBuilder:
    """Cycle 2 after a 14-day interruption (−25%), cycle 3 after another (two doses), and now a third
    14-day interruption before cycle 4, each spanned by a toxicity that began early in its cycle."""
    doses = [*C1, (35, 1.2), (42, 0.75), (49, 0.75), (77, 1.2), (84, 0.75)]
    b = patient(119, doses)
    b.fact("response", "CR", days_ago=119 - 20)
    b.fact("response", "CR", days_ago=119 - 70)
    for onset, end in ((3, 34), (45, 76), (80, 118)):
        b.toxicity(
            "Diarrhoea", 2, onset_days_ago=119 - onset, clinical="resolved", abatement_days_ago=119 - end
        )
    return b


def test_uk_third_modification_with_the_toxicity_recorded_discontinues() -> None:
    d = plan(_three_uk_modifications(), "nhs-ta514")
    assert d["action"] == "discontinue" and "reductions-exhausted" in ids(d, "discontinue")


def test_md_anderson_third_reduction_withdraws() -> None:
    # CR before cycle 2; cycle 2 and cycle 3 each after a 14-day interruption; now a third
    doses = [*C1, (41, 0.8), (48, 0.4), (82, 0.6), (89, 0.2)]
    b = patient(123, doses)
    b.fact("response", "CR", days_ago=123 - 20)
    for onset, end in ((3, 40), (44, 81), (85, 122)):
        b.toxicity(
            "Mucositis", 2, onset_days_ago=123 - onset, clinical="resolved", abatement_days_ago=123 - end
        )
    d = plan(b, "mdacc-low-dose")
    assert d["action"] == "discontinue" and "reductions-exhausted" in ids(d, "discontinue")


# -- 5. UK standard limits before every dose ------------------------------------------------------
@pytest.mark.parametrize(("start", "given", "day"), [(7, C1[:1], 8), (14, C1[:2], 15)])
def test_uk_counts_outside_the_limits_on_day_8_or_15_need_authorisation(
    start: int, given: list[tuple[int, float]], day: int
) -> None:
    d = plan(patient(start, given, anc=0.6), "nhs-ta514")
    assert (d["action"], d["day"]) == ("review", day) and d["doses"]
    assert "counts-outside-limits" in ids(d, "review")


@pytest.mark.parametrize(
    ("lab", "value", "finding"),
    [
        ("neutrophils", 0.8, "counts-outside-limits"),
        ("platelets", 40, "counts-outside-limits"),
        ("bilirubin-total", 35, "hepatic-first-dose"),  # 1.67 × ULN
        ("alt", 110, "hepatic-first-dose"),  # 2.68 × ULN
        ("creatinine", 900, "renal-limit"),  # CrCl about 10 mL/min
    ],
)
def test_uk_first_dose_limits_agree_between_eligibility_and_dose(
    lab: str, value: float, finding: str
) -> None:
    b = dosing_patient("p", TODAY, 0)
    b.lab(lab, value, days_ago=0)
    r = result(b, "nhs-ta514")
    assert r["eligibility"]["status"] == "needs-review"
    assert r["dose"]["action"] == "review" and finding in ids(r["dose"], "review")
    assert mgs(r["dose"]) == [1.6, 1.0, 1.0]  # listed for the prescriber to authorise


# -- 6. pre-dose checks on the first dose too --------------------------------------------------------
def test_label_first_dose_with_liver_tests_out_of_limits_needs_review() -> None:
    b = dosing_patient("p", TODAY, 0)
    b.lab("bilirubin-total", 42, days_ago=0)  # 2 × ULN; the label has no bilirubin criterion
    r = result(b, "fda-label")
    assert r["eligibility"]["status"] == "eligible"
    assert r["dose"]["action"] == "review" and "hepatic-first-dose" in ids(r["dose"], "review")
    assert mgs(r["dose"]) == [1.6, 1.0, 1.0]


@pytest.mark.parametrize(
    ("variant", "stale_days"), [("fda-label", 3), ("nhs-ta514", 8), ("es-valtermed", 15)]
)
def test_first_dose_with_stale_liver_tests_is_no_dose(variant: str, stale_days: int) -> None:
    b = dosing_patient("p", TODAY, 0)
    b.resources = [r for r in b.resources if "1975-2" not in str(r.get("code"))]
    b.lab("bilirubin-total", 14, days_ago=stale_days)
    d = plan(b, variant)
    assert d["action"] == "insufficient-data" and d["doses"] == []


def test_spain_first_dose_needs_a_blood_count() -> None:
    b = dosing_patient("p", TODAY, 0)
    b.resources = [r for r in b.resources if "751-8" not in str(r.get("code"))]
    d = plan(b, "es-valtermed")
    assert d["action"] == "insufficient-data" and "counts-unknown" in ids(d)


# -- 7. suspected VOD/SOS holds ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variant", "action"),
    [
        ("fda-label", "delay"),
        ("nhs-ta514", "delay"),
        ("es-valtermed", "delay"),
        ("mdacc-low-dose", "discontinue"),
    ],
)
@pytest.mark.parametrize("verification", ["provisional", "differential", "unconfirmed"])
def test_suspected_vod_holds_every_dose(variant: str, action: str, verification: str) -> None:
    b = patient(14, C1[:2])
    b.condition(ICD10, "K76.5", "Hepatic veno-occlusive disease", onset_days_ago=2, verification=verification)
    d = plan(b, variant)
    assert d["action"] == action and d["doses"] == []


# -- 8. a new toxicity without a grade ------------------------------------------------------------
@pytest.mark.parametrize("variant", ALL)
def test_ungraded_liver_toxicity_on_treatment_needs_review(variant: str) -> None:
    b = patient(7, C1[:1])
    b.condition(K71, "K71.6", "Toxic liver disease with hepatitis", onset_days_ago=3)
    d = plan(b, variant)
    assert d["action"] == "review" and "toxicity-ungraded" in ids(d, "review")


def test_adverse_event_with_an_unreadable_grade_needs_review() -> None:
    b = patient(7, C1[:1])
    cond = b.toxicity("Stomatitis", 2, onset_days_ago=3)
    cond["severity"] = {"text": "grade 2-3"}
    d = plan(b, "nhs-ta514")
    assert d["action"] == "review" and "toxicity-ungraded" in ids(d, "review")


# -- 9. MD Anderson timing and levels -----------------------------------------------------------
@pytest.mark.parametrize(("offset", "level", "expected"), [(40, "0", [1.2, 0.6]), (41, "-1", [0.8, 0.4])])
def test_md_anderson_interruption_clock_starts_on_day_28(
    offset: int, level: str, expected: list[float]
) -> None:
    # cycle 2 planned on cycle 1 day 28 (offset 27): 13 days late is not reduced, 14 days is
    b = patient(offset)
    b.fact("response", "PR", days_ago=offset - 20)
    b.lab("bilirubin-total", 40, days_ago=offset - 30)
    d = plan(b, "mdacc-low-dose")
    assert (d["cycle"], d["dose_level"], mgs(d)) == (2, level, expected)


def test_md_anderson_remission_and_toxicity_reductions_are_cumulative() -> None:
    # cycle 3 after CR, 14 days after its planned day 28 of cycle 2: level −1 (remission) − 1 (toxicity)
    b = patient(21 + 27 + 14, [*C1, (21, 1.2), (28, 0.6)])
    b.fact("response", "CR", days_ago=40)
    b.lab("bilirubin-total", 45, days_ago=12)
    d = plan(b, "mdacc-low-dose")
    assert (d["cycle"], d["dose_level"], mgs(d)) == (3, "-2", [0.6, 0.2])


def test_md_anderson_cri_without_platelet_recovery_needs_review() -> None:
    b = patient(42, [*C1, (21, 1.2), (28, 0.6)], plt=80)
    b.lab("platelets", 150, days_ago=42 - 21)
    b.fact("response", "CRi", days_ago=5)
    d = plan(b, "mdacc-low-dose")
    assert d["action"] == "review" and "cri-platelets" in ids(d, "review")
    assert d["dose_level"] == "-1" and mgs(d) == [0.8, 0.4]


# -- 10. an order already written for today's dose -------------------------------------------------
@pytest.mark.parametrize("variant", ALL)
def test_order_for_todays_dose_is_the_dose_in_hand(variant: str) -> None:
    b = patient(7, C1[:1])
    b.inotuzumab_order(0, 1.0)
    d = plan(b, variant)
    assert d["action"] == "administer" and mgs(d)[0] == 1.0
    assert "dose-history" not in ids(d)


# -- 11. eligibility once treatment has started -----------------------------------------------------
@pytest.mark.parametrize("variant", ALL)
def test_start_only_criteria_do_not_show_ineligible_next_to_a_dose(variant: str) -> None:
    b = patient(7, C1[:1])
    r = result(b, variant)
    assert r["dose"]["action"] == "administer"
    assert r["eligibility"]["status"] != "ineligible"
    washout = [c for c in r["eligibility"]["criteria"] if c["id"] == "monoclonal-antibody-2-weeks"]
    for c in washout:  # MD Anderson's washout would catch inotuzumab itself
        assert c["status"] == "not-applicable" and c["at_start"]["status"] == "met"


def test_ncit_grade_codes_still_read() -> None:
    # guard for the unreadable-grade test above: a coded grade still holds
    b = patient(7, C1[:1])
    cond = b.toxicity("Stomatitis", 2, onset_days_ago=3)
    assert cond["severity"] == cc(NCIT, "C41339", "Grade 2")
    assert plan(b, "nhs-ta514")["action"] == "delay"


@pytest.mark.parametrize("variant", ALL)
def test_the_order_for_the_first_dose_is_not_prior_antibody_therapy(variant: str, tmp_path: Path) -> None:
    # MD Anderson's two-week monoclonal-antibody washout must not catch the inotuzumab order itself,
    # neither in the evaluation nor when check-order checks that order
    b = dosing_patient("p", TODAY, 0)
    order = b.inotuzumab_order(0, 1.6)
    assert result(b, variant)["eligibility"]["status"] == "eligible"
    b.resources.remove(order)
    ctx, o = tmp_path / "context.json", tmp_path / "order.json"
    ctx.write_text(json.dumps(b.bundle()))
    o.write_text(json.dumps(order))
    r = check_order_path(o, ctx, variant)
    assert r["verdict"] == "info" and r["plan"]["action"] == "administer"
