"""The dose engine, branch by branch and variant by variant, with the arithmetic checked by hand.

Every patient weighs 80 kg and is 180 cm tall unless told otherwise: Mosteller BSA
sqrt(180 × 80 / 3600) = 2.00 m², so cycle 1 is 0.8/0.5/0.5 mg/m² × 2.00 = 1.60/1.00/1.00 mg.
Dates: "start" is how many days ago cycle 1 day 1 was given; the evaluation date is 2026-11-21.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from adapter.api import evaluate_resources
from adapter.dosing.bsa import bsa_m2
from adapter.dosing.findings import Action, decide, finding
from adapter.dosing.preparation import prepare
from adapter.dosing.spec import load_product
from tests.support.synth import ICD10, INO, PatientBuilder
from tests.support.treatment import dosing_patient, give, pre_dose_labs

TODAY = date(2026, 11, 21)
ALL = ["fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose"]
C1 = [(0, 1.6), (7, 1.0), (14, 1.0)]


def plan(b: PatientBuilder, variant: str, as_of: date = TODAY) -> dict[str, Any]:
    run = evaluate_resources(b.resources, variant, as_of)
    dose: dict[str, Any] = run.results[0]["dose"]
    return dose


def mgs(d: dict[str, Any]) -> list[float]:
    return [x["mg"] for x in d["doses"]]


def ids(d: dict[str, Any], effect: str | None = None) -> set[str]:
    return {f["id"] for f in d["findings"] if effect is None or f.get("effect") == effect}


def patient(start: int, doses: list[tuple[int, float]] | None = None, **labs: Any) -> PatientBuilder:
    b = dosing_patient("p", TODAY, start)
    give(b, start, C1 if doses is None else doses)
    b.fact("hsct-candidate", "no", days_ago=0)
    return pre_dose_labs(b, **labs)


# -- arithmetic ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("weight", "height", "formula", "expected"),
    [
        (80, 180, "mosteller", "2.00"),  # sqrt(14400/3600) = 2
        (70, 170, "mosteller", "1.82"),  # sqrt(11900/3600) = 1.8181
        (70, 170, "dubois", "1.81"),  # 0.007184 × 70^0.425 × 170^0.725 = 1.8097
        (50, 150, "mosteller", "1.44"),  # sqrt(7500/3600) = 1.4434
    ],
)
def test_bsa_formulas(weight: float, height: float, formula: Any, expected: str) -> None:
    assert bsa_m2(weight, height, formula) == Decimal(expected)


def test_bsa_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        bsa_m2(0, 170)
    with pytest.raises(ValueError):
        bsa_m2(70, 170, "haycock")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mg_per_m2", "bsa", "mg", "vials", "ml"),
    [
        ("0.8", "2.00", "1.60", 2, "6.40"),  # 1.6 mg > one 0.9 mg vial
        ("0.5", "1.87", "0.94", 2, "3.76"),  # 0.935 rounds half-up to 0.94; 0.94 > 0.9: two vials
        ("0.5", "1.80", "0.90", 1, "3.60"),  # exactly one vial
        ("0.3", "1.50", "0.45", 1, "1.80"),
        ("0.1", "1.23", "0.12", 1, "0.48"),  # 0.123 rounds down
    ],
)
def test_preparation(mg_per_m2: str, bsa: str, mg: str, vials: int, ml: str) -> None:
    p = prepare(Decimal(mg_per_m2), Decimal(bsa), load_product())
    assert (p.mg, p.vials, p.volume_ml) == (Decimal(mg), vials, Decimal(ml))


def test_most_binding_finding_decides() -> None:
    f = [finding("a", "r", "s", effect="review"), finding("b", "r", "s", effect="delay")]
    assert decide(f) is Action.DELAY
    f.append(finding("c", "r", "s", effect="discontinue"))
    assert decide(f) is Action.DISCONTINUE
    assert decide([finding("d", "r", "s")]) is Action.ADMINISTER


# -- before the first dose ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", ALL)
def test_first_dose_of_an_eligible_patient(variant: str) -> None:
    b = dosing_patient("p", TODAY, 0)
    d = plan(b, variant)
    assert d["action"] == "administer"
    assert (d["cycle"], d["day"], d["bsa_m2"], d["bsa_formula"]) == (1, 1, 2.0, "mosteller")
    assert [(x["day"], x["mg_per_m2"], x["mg"]) for x in d["doses"]] == [
        (1, 0.8, 1.6),
        (8, 0.5, 1.0),
        (15, 0.5, 1.0),
    ]
    assert [x["date"] for x in d["doses"]] == ["2026-11-21", "2026-11-28", "2026-12-05"]
    assert [x["vials"] for x in d["doses"]] == [2, 2, 2]
    assert d["bsa_inputs"]["weight_kg"] == 80 and d["bsa_inputs"]["height_cm"] == 180


@pytest.mark.parametrize(
    ("variant", "status", "action"),
    [
        ("nhs-ta514", "ineligible", "not-eligible"),
        ("mdacc-low-dose", "insufficient-data", "insufficient-data"),
    ],
)
def test_first_dose_follows_eligibility(variant: str, status: str, action: str) -> None:
    b = dosing_patient("p", TODAY, 0)
    if status == "ineligible":
        b.condition(ICD10, "K76.5", "Hepatic veno-occlusive disease", onset_days_ago=300)
    else:
        b.resources = [r for r in b.resources if "1975-2" not in str(r.get("code"))]
    d = plan(b, variant)
    assert d["action"] == action and d["doses"] == []
    assert "eligibility" in ids(d, action)


def test_first_dose_without_fresh_weight_gives_no_dose() -> None:
    b = dosing_patient("p", TODAY, 0)
    b.resources = [r for r in b.resources if "29463-7" not in str(r.get("code"))]
    b.lab("body-weight", 80, days_ago=10)
    d = plan(b, "nhs-ta514")  # UK: baseline results valid 7 days
    assert d["action"] == "insufficient-data" and d["doses"] == [] and "bsa-unknown" in ids(d)


def test_dubois_is_selectable() -> None:
    b = dosing_patient("p", TODAY, 0, weight=70, height=170)
    run = evaluate_resources(b.resources, "fda-label", TODAY, bsa_formula="dubois")
    d = run.results[0]["dose"]
    assert (d["bsa_m2"], d["bsa_formula"], mgs(d)) == (1.81, "dubois", [1.45, 0.91, 0.91])


def test_high_peripheral_blasts_advise_cytoreduction() -> None:
    b = dosing_patient("p", TODAY, 0)
    b.quantity("peripheral-blasts", 14.0, "10*9/L", days_ago=0)
    assert "cytoreduction" in ids(plan(b, "fda-label"))


# -- later cycles -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variant", "response", "expected"),
    [
        ("fda-label", "CR", [1.0, 1.0, 1.0]),
        ("fda-label", "CRi", [1.0, 1.0, 1.0]),
        ("fda-label", "PR", [1.6, 1.0, 1.0]),
        ("nhs-ta514", "CR", [1.0, 1.0, 1.0]),
        ("nhs-ta514", "NR", [1.6, 1.0, 1.0]),
        ("es-valtermed", "CRi", [1.0, 1.0, 1.0]),
        ("es-valtermed", "NR", [1.6, 1.0, 1.0]),
        ("mdacc-low-dose", "CR", [1.2, 0.6]),  # level 0: 0.6/0.3
        ("mdacc-low-dose", "NR", [1.2, 0.6]),
    ],
)
def test_cycle_2_by_response(variant: str, response: str, expected: list[float]) -> None:
    b = patient(21)
    b.fact("response", response, days_ago=1)
    d = plan(b, variant)
    assert (d["action"], d["cycle"], d["day"], mgs(d)) == ("administer", 2, 1, expected)


@pytest.mark.parametrize("variant", ["fda-label", "nhs-ta514", "es-valtermed"])
def test_cycle_2_day_1_needs_the_response(variant: str) -> None:
    d = plan(patient(21), variant)
    assert d["action"] == "insufficient-data" and "response-unknown-for-dose" in ids(d)


def test_mdacc_lower_level_from_cycle_3_after_remission() -> None:
    doses = [*C1, (21, 1.2), (28, 0.6)]
    b = patient(42, doses)
    b.fact("response", "CR", days_ago=3)
    d = plan(b, "mdacc-low-dose")
    assert (d["action"], d["cycle"], d["dose_level"], mgs(d)) == ("administer", 3, "-1", [0.8, 0.4])


def test_mdacc_cycle_3_without_remission_stays_at_level_0_if_responding_partially() -> None:
    doses = [*C1, (21, 1.2), (28, 0.6)]
    b = patient(42, doses)
    b.fact("response", "PR", days_ago=3)
    d = plan(b, "mdacc-low-dose")
    assert d["action"] == "review" and d["dose_level"] == "0" and mgs(d) == [1.2, 0.6]


# -- haematological holds -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variant", "action"),
    [
        ("fda-label", "administer"),
        # UK: not held within a cycle, but outside the standard limits the prescriber authorises
        ("nhs-ta514", "review"),
        ("es-valtermed", "administer"),
        ("mdacc-low-dose", "administer"),
    ],
)
def test_no_count_hold_on_day_8(variant: str, action: str) -> None:
    d = plan(patient(7, C1[:1], anc=0.3, plt=12), variant)
    assert (d["action"], d["day"], mgs(d)[0]) == (action, 8, 1.0)
    assert "no-count-hold-within-cycle" in ids(d)


@pytest.mark.parametrize(
    ("variant", "action"),
    [
        ("nhs-ta514", "delay"),
        ("mdacc-low-dose", "delay"),
        ("fda-label", "review"),
        ("es-valtermed", "review"),
    ],
)
def test_day_1_count_hold(variant: str, action: str) -> None:
    b = patient(21, anc=0.7)
    b.fact("response", "CR", days_ago=1)
    d = plan(b, variant)
    assert d["action"] == action and "counts-hold" in ids(d, action)
    if action == "delay":
        assert d["doses"] == []


def _low_pretreatment_counts(anc: float, plt: float) -> PatientBuilder:
    """Pre-treatment (and cycle 1 baseline) neutrophils 0.8 and platelets 30; cycle 1 given, CRi;
    cycle 2 day 1 today with the given counts."""
    b = dosing_patient("p", TODAY, 21)
    b.resources = [r for r in b.resources if not {"751-8", "777-3"} & set(str(r.get("code")).split("'"))]
    b.lab("platelets", 30, days_ago=22)
    b.lab("neutrophils", 0.8, days_ago=22)
    give(b, 21, C1)
    b.fact("response", "CRi", days_ago=1)
    b.fact("hsct-candidate", "no", days_ago=0)
    return pre_dose_labs(b, anc=anc, plt=plt)


def test_low_pretreatment_counts_recovered_to_the_previous_baseline() -> None:
    d = plan(_low_pretreatment_counts(anc=0.9, plt=35), "nhs-ta514")
    assert d["action"] == "administer" and "counts-recovered-to-baseline" in ids(d)


def test_low_pretreatment_counts_not_recovered_need_judgement() -> None:
    d = plan(_low_pretreatment_counts(anc=0.5, plt=20), "nhs-ta514")
    assert d["action"] == "review" and "counts-disease-related" in ids(d, "review")


# -- hepatic, renal ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variant", "labs", "action", "fid"),
    [
        ("nhs-ta514", {"bili": 35}, "delay", "hepatic-hold"),  # 1.67 × ULN 21
        ("nhs-ta514", {"bili": 31.5}, "administer", None),  # exactly 1.5 × ULN
        ("nhs-ta514", {"alt": 105}, "delay", "hepatic-hold"),  # 2.56 × ULN 41
        ("es-valtermed", {"bili": 35}, "review", "hepatic-hold"),
        ("fda-label", {"ast": 120}, "review", "hepatic-hold"),
        ("mdacc-low-dose", {"bili": 40}, "review", "hepatic-exception"),  # ≤ 2 × ULN if due to tumour
        ("mdacc-low-dose", {"bili": 45}, "delay", "hepatic-hold"),  # 2.14 × ULN
        ("mdacc-low-dose", {"ast": 120}, "review", "hepatic-isolated-ast"),
    ],
)
def test_hepatic_limits_at_every_dose(
    variant: str, labs: dict[str, float], action: str, fid: str | None
) -> None:
    d = plan(patient(7, C1[:1], **labs), variant)
    assert d["action"] == action
    if fid:
        assert fid in ids(d)


def test_gilbert_syndrome_makes_a_bilirubin_hold_a_review() -> None:
    b = patient(7, C1[:1], bili=40)
    b.condition(ICD10, "E80.4", "Gilbert syndrome", onset_days_ago=3000)
    d = plan(b, "nhs-ta514")
    assert d["action"] == "review" and "hepatic-exception" in ids(d)


def test_haemolysis_makes_a_bilirubin_hold_a_review() -> None:
    b = patient(7, C1[:1], bili=40)
    b.condition(ICD10, "D59.1", "Autoimmune haemolytic anaemia", onset_days_ago=3)
    assert plan(b, "nhs-ta514")["action"] == "review"


def test_uk_liver_tests_not_recovered_after_28_days_discontinue() -> None:
    b = patient(51, bili=40)  # cycle 2 day 1 due on day 22: 30 days of interruption
    b.fact("response", "CR", days_ago=25)
    d = plan(b, "nhs-ta514")
    assert d["action"] == "discontinue" and "hepatic-no-recovery" in ids(d)


@pytest.mark.parametrize(("variant", "action"), [("nhs-ta514", "review"), ("mdacc-low-dose", "delay")])
def test_renal_limit(variant: str, action: str) -> None:
    b = patient(7, C1[:1])
    b.quantity("creatinine-clearance", 12, "mL/min", days_ago=0, system="http://loinc.org", code="2164-2")
    assert plan(b, variant)["action"] == action


# -- toxicities ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variant", "grade", "action"),
    [
        ("nhs-ta514", 2, "delay"),
        ("nhs-ta514", 1, "administer"),
        ("es-valtermed", 3, "delay"),
        ("mdacc-low-dose", 2, "delay"),
        ("fda-label", 2, "review"),
    ],
)
def test_non_haematological_toxicity(variant: str, grade: int, action: str) -> None:
    b = patient(7, C1[:1])
    b.toxicity("Stomatitis", grade, onset_days_ago=3)
    assert plan(b, variant)["action"] == action


def test_toxicity_before_treatment_is_baseline_not_a_hold() -> None:
    b = patient(7, C1[:1])
    b.toxicity("Peripheral neuropathy", 2, onset_days_ago=60)
    assert plan(b, "nhs-ta514")["action"] == "administer"


def test_resolved_toxicity_no_longer_holds() -> None:
    b = patient(7, C1[:1])
    b.toxicity("Diarrhoea", 3, onset_days_ago=5, clinical="resolved", abatement_days_ago=1)
    assert plan(b, "nhs-ta514")["action"] == "administer"


def test_graded_cytopenia_is_not_a_non_haematological_toxicity() -> None:
    b = patient(7, C1[:1])
    b.toxicity("Febrile neutropenia", 3, onset_days_ago=3, system="http://snomed.info/sct", code="409089005")
    assert plan(b, "nhs-ta514")["action"] == "administer"


def test_grade_4_event_needs_the_investigator_at_md_anderson() -> None:
    b = patient(7, C1[:1])
    b.toxicity("Colitis", 4, onset_days_ago=3)
    d = plan(b, "mdacc-low-dose")
    assert "toxicity-grade-4" in ids(d, "review") and d["action"] == "delay"


@pytest.mark.parametrize("variant", ALL)
def test_severe_infusion_reaction_discontinues(variant: str) -> None:
    b = patient(7, C1[:1])
    b.toxicity("Infusion reaction", 3, onset_days_ago=7, system=INO, code="infusion-reaction")
    d = plan(b, variant)
    assert d["action"] == "discontinue" and d["doses"] == []


@pytest.mark.parametrize("variant", ALL)
def test_vod_on_treatment_discontinues(variant: str) -> None:
    b = patient(14, C1[:2])
    b.condition(ICD10, "K76.5", "Hepatic veno-occlusive disease", onset_days_ago=2)
    assert plan(b, variant)["action"] == "discontinue"


@pytest.mark.parametrize(("variant", "action"), [("mdacc-low-dose", "discontinue"), ("nhs-ta514", "delay")])
def test_severe_liver_toxicity(variant: str, action: str) -> None:
    b = patient(7, C1[:1])
    b.toxicity(
        "Toxic liver disease", 3, onset_days_ago=3, system="http://hl7.org/fhir/sid/icd-10-cm", code="K71.6"
    )
    assert plan(b, variant)["action"] == action


@pytest.mark.parametrize(("variant", "action"), [("mdacc-low-dose", "discontinue"), ("nhs-ta514", "delay")])
def test_suspected_vod(variant: str, action: str) -> None:
    b = patient(14, C1[:2])
    b.condition(
        ICD10, "K76.5", "Hepatic veno-occlusive disease", onset_days_ago=2, verification="provisional"
    )
    assert plan(b, variant)["action"] == action


# -- interruptions within a cycle ----------------------------------------------------------------
def test_day_8_given_late_keeps_6_days_before_day_15() -> None:
    d = plan(patient(12, C1[:1]), "nhs-ta514")  # day 8 five days late
    assert (d["action"], d["day"]) == ("administer", 8)
    assert [x["date"] for x in d["doses"]] == ["2026-11-21", "2026-11-27"]  # day 15 moved to 6 days later
    assert d["interruption_days"] == 5


def test_day_8_held_7_days_is_omitted() -> None:
    d = plan(patient(14, C1[:1]), "nhs-ta514")  # day 15 reached: day 8 was never given
    assert (d["action"], d["day"], mgs(d)) == ("administer", 15, [1.0])
    assert "dose-omitted" in ids(d)


def test_omission_before_the_next_dose_is_due() -> None:
    # UK cycle 2 (28 days): day 15 not given by day 21, so it is omitted; cycle 3 is not due before day 29
    b = patient(21 + 22, [*C1, (21, 1.0), (28, 1.0)])
    b.fact("response", "CR", days_ago=30)
    d = plan(b, "nhs-ta514")
    assert (d["action"], d["cycle"], d["day"]) == ("omit", 3, 1)
    assert "dose-omitted" in ids(d, "omit")


def test_md_anderson_restart_after_day_14_is_day_1_of_the_next_cycle() -> None:
    doses = [*C1, (21, 1.2)]
    b = patient(21 + 15, doses)  # cycle 2 day 8 never given; today is day 16 of cycle 2
    b.fact("response", "CR", days_ago=17)
    d = plan(b, "mdacc-low-dose")
    assert (d["action"], d["cycle"], d["day"]) == ("administer", 3, 1)


def test_dose_not_due_yet_is_not_a_dose() -> None:
    d = plan(patient(3, C1[:1]), "nhs-ta514")
    assert d["action"] == "insufficient-data" and d["doses"] == []
    assert "next-dose-not-due" in ids(d)


# -- interruptions between cycles and reductions -------------------------------------------------
def test_uk_interruption_of_14_days_reduces_by_25_percent() -> None:
    b = patient(35)  # cycle 2 due on day 22, given day 36: 14 days
    b.fact("response", "NR", days_ago=14)
    b.lab("bilirubin-total", 45, days_ago=10)
    d = plan(b, "nhs-ta514")
    assert (d["action"], d["dose_level"], mgs(d)) == ("administer", "-1", [1.2, 0.75, 0.75])
    assert [x["mg_per_m2"] for x in d["doses"]] == [0.6, 0.375, 0.375]


def test_uk_13_day_interruption_is_not_reduced() -> None:
    b = patient(34)
    b.fact("response", "NR", days_ago=14)
    assert mgs(plan(b, "nhs-ta514")) == [1.6, 1.0, 1.0]


def test_reduction_is_never_re_escalated() -> None:
    # cycle 2 started after a 14-day interruption (reduced); cycle 3 on time stays reduced
    doses = [*C1, (35, 1.2), (42, 0.75), (49, 0.75)]
    b = patient(63, doses)
    b.fact("response", "NR", days_ago=30)
    b.lab("bilirubin-total", 45, days_ago=35)
    d = plan(b, "nhs-ta514")
    assert (d["cycle"], d["dose_level"], mgs(d)) == (3, "-1", [1.2, 0.75, 0.75])


def test_second_reduction_gives_two_doses_per_cycle_and_third_discontinues() -> None:
    doses = [*C1, (35, 1.2), (42, 0.75), (49, 0.75)]  # first ≥ 14-day interruption before cycle 2
    b = patient(35 + 28 + 14, doses)  # second: cycle 3 due day 63, today day 78
    b.fact("response", "NR", days_ago=50)
    b.lab("bilirubin-total", 45, days_ago=60)
    b.lab("bilirubin-total", 45, days_ago=10)
    d = plan(b, "nhs-ta514")
    assert (d["dose_level"], [x["day"] for x in d["doses"]], mgs(d)) == ("-2", [1, 8], [1.2, 0.75])
    doses += [(77, 1.2), (84, 0.75)]
    b = patient(77 + 28 + 14, doses)
    b.fact("response", "NR", days_ago=80)
    for ago in (100, 50, 10):
        b.lab("bilirubin-total", 45, days_ago=ago)
    assert plan(b, "nhs-ta514")["action"] == "discontinue"


def test_md_anderson_reduction_is_one_dose_level() -> None:
    doses = [*C1, (21, 1.2), (28, 0.6)]
    b = patient(21 + 21 + 10 + 14, doses)  # cycle 3 due day 43, on time to day 53: 14 days late
    b.fact("response", "PR", days_ago=20)
    b.lab("bilirubin-total", 50, days_ago=10)
    d = plan(b, "mdacc-low-dose")
    assert (d["dose_level"], mgs(d)) == ("-1", [0.8, 0.4])


@pytest.mark.parametrize(("variant", "action"), [("nhs-ta514", "review"), ("mdacc-low-dose", "discontinue")])
def test_interruption_over_28_days(variant: str, action: str) -> None:
    b = patient(70)
    b.fact("response", "CR", days_ago=45)
    b.lab("platelets", 20, days_ago=30)
    d = plan(b, variant)
    assert d["action"] == action and "interruption-too-long" in ids(d, action)


def test_lower_dose_given_before_is_not_raised_silently() -> None:
    d = plan(patient(7, [(0, 1.2)]), "nhs-ta514")  # cycle 1 day 1 given at 0.6 mg/m² instead of 0.8
    assert d["action"] == "review" and "lower-dose-given" in ids(d, "review")


# -- course length, response, HSCT ---------------------------------------------------------------
def _three_cycles(response: str) -> PatientBuilder:
    doses = [*C1, (21, 1.6), (28, 1.0), (35, 1.0), (49, 1.6), (56, 1.0), (63, 1.0)]
    b = patient(77, doses)
    b.fact("response", response, days_ago=3)
    return b


@pytest.mark.parametrize(
    ("variant", "action"),
    [("nhs-ta514", "discontinue"), ("es-valtermed", "discontinue"), ("fda-label", "review")],
)
def test_no_remission_after_3_cycles(variant: str, action: str) -> None:
    d = plan(_three_cycles("NR"), variant)
    assert (d["cycle"], d["action"]) == (4, action) and "no-response" in ids(d, action)


def test_remission_by_cycle_3_continues() -> None:
    d = plan(_three_cycles("CR"), "nhs-ta514")
    assert (d["action"], d["cycle"], mgs(d)) == ("administer", 4, [1.0, 1.0, 1.0])


def test_no_response_assessment_after_3_cycles_is_unknown() -> None:
    b = _three_cycles("CR")
    b.resources = [r for r in b.resources if "response" not in str(r.get("code"))]
    assert plan(b, "nhs-ta514")["action"] == "insufficient-data"


@pytest.mark.parametrize(
    ("response", "action"), [("NR", "discontinue"), ("PR", "review"), ("CRp", "administer")]
)
def test_md_anderson_response_after_2_cycles(response: str, action: str) -> None:
    b = patient(42, [*C1, (21, 1.2), (28, 0.6)])
    b.fact("response", response, days_ago=3)
    assert plan(b, "mdacc-low-dose")["action"] == action


def _hsct_after_2(response: str, mrd: str | None, candidate: str | None = "yes") -> PatientBuilder:
    b = dosing_patient("h", TODAY, 49)
    b.resources = [r for r in b.resources if "hsct-candidate" not in str(r.get("code"))]
    give(b, 49, [*C1, (21, 1.0), (28, 1.0), (35, 1.0)])
    b.fact("response", response, days_ago=3)
    if mrd:
        b.fact("mrd", mrd, days_ago=3)
    if candidate:
        b.fact("hsct-candidate", candidate, days_ago=3)
    return pre_dose_labs(b)


@pytest.mark.parametrize(
    ("variant", "response", "mrd", "action"),
    [
        ("nhs-ta514", "CR", "negative", "complete"),
        ("nhs-ta514", "CR", "positive", "administer"),  # a third cycle to reach MRD negativity
        ("nhs-ta514", "CR", None, "insufficient-data"),
        ("fda-label", "CRi", "negative", "complete"),
        ("fda-label", "CR", "positive", "review"),  # "may be considered"
        ("es-valtermed", "CR", "negative", "complete"),
        ("es-valtermed", "CRi", "negative", "review"),  # the wording reads both ways: safe reading
        ("es-valtermed", "CR", "positive", "review"),
    ],
)
def test_hsct_candidates_after_2_cycles(variant: str, response: str, mrd: str | None, action: str) -> None:
    assert plan(_hsct_after_2(response, mrd), variant)["action"] == action


def test_mrd_as_a_percentage() -> None:
    b = _hsct_after_2("CR", None)
    b.fact("mrd", 0.005, days_ago=2)  # < 0.01%: negative
    assert plan(b, "nhs-ta514")["action"] == "complete"


def test_unknown_hsct_candidacy_that_changes_the_plan_is_unknown() -> None:
    d = plan(_hsct_after_2("CR", "negative", candidate=None), "nhs-ta514")
    assert d["action"] == "insufficient-data" and "hsct-candidacy-unknown" in ids(d)
    assert plan(_hsct_after_2("CR", "negative", candidate="no"), "nhs-ta514")["action"] == "administer"


@pytest.mark.parametrize(("variant", "action"), [("nhs-ta514", "review"), ("mdacc-low-dose", "discontinue")])
def test_progression(variant: str, action: str) -> None:
    b = patient(14, C1[:2])
    b.fact("response", "PD", days_ago=1)
    assert plan(b, variant)["action"] == action


# -- the treatment history ------------------------------------------------------------------------
def test_past_order_without_administration_is_not_assumed_given() -> None:
    b = patient(7, C1[:1])
    b.inotuzumab_order(1, 1.0)
    d = plan(b, "nhs-ta514")
    assert d["action"] == "insufficient-data" and d["doses"] == []
    assert "dose-history" in ids(d, "insufficient-data")


def test_completed_order_counts_as_a_dose_with_a_note() -> None:
    b = patient(7, [])
    b.inotuzumab_order(7, 1.6, status="completed")
    d = plan(b, "nhs-ta514")
    assert (d["action"], d["cycle"], d["day"]) == ("administer", 1, 8)
    assert "dose-history-note" in ids(d)


def test_administration_and_order_of_the_same_dose_are_one_dose() -> None:
    b = patient(7, C1[:1])
    b.inotuzumab_order(7, 1.6, status="completed")
    d = plan(b, "nhs-ta514")
    assert (d["action"], d["day"]) == ("administer", 8)


def test_dose_recorded_in_micrograms_is_converted() -> None:
    b = patient(7, [])
    b.administration(7, 1600, unit="ug")
    assert plan(b, "nhs-ta514")["action"] == "administer"


def test_dose_in_an_unknown_unit_is_a_problem() -> None:
    b = patient(7, [])
    b.administration(7, 1.6, unit="vials")
    d = plan(b, "nhs-ta514")
    assert d["action"] == "insufficient-data" and d["doses"] == [] and "dose-history" in ids(d)


def test_future_orders_are_not_doses() -> None:
    b = patient(0, [])
    b.resources = [r for r in b.resources if r["resourceType"] != "MedicationAdministration"]
    b.inotuzumab_order(-7, 1.0)
    assert (plan(b, "nhs-ta514")["cycle"], plan(b, "nhs-ta514")["treatment_started"]) == (1, False)


def test_weight_change_over_10_percent_is_flagged_and_recalculated() -> None:
    b = dosing_patient("p", TODAY, 21, weight=90)
    b.lab("body-weight", 80, days_ago=20)
    give(b, 21, C1)
    b.fact("response", "CR", days_ago=1)
    b.fact("hsct-candidate", "no", days_ago=0)
    pre_dose_labs(b)
    d = plan(b, "mdacc-low-dose")
    assert "weight-changed" in ids(d)
    assert d["bsa_m2"] == 2.12  # sqrt(180 × 90 / 3600) = 2.1213
    assert mgs(d) == [1.27, 0.64]  # 0.6 × 2.12 = 1.272; 0.3 × 2.12 = 0.636


def test_md_anderson_needs_weight_within_7_days_of_day_1() -> None:
    b = patient(21)
    b.resources = [r for r in b.resources if "29463-7" not in str(r.get("code"))]
    b.lab("body-weight", 80, days_ago=9)
    b.fact("response", "CR", days_ago=1)
    assert plan(b, "mdacc-low-dose")["action"] == "insufficient-data"


# -- where the patient is ------------------------------------------------------------------------
def test_treatment_block_shows_cycles_responses_omissions_and_interruptions() -> None:
    # cycle 1 days 1 and 15 (day 8 lost), CRi; cycle 2 after a 14-day interruption with a liver rise
    b = patient(21 + 14 + 14, [(0, 1.6), (14, 1.0), (35, 0.75)])
    b.fact("response", "CRi", days_ago=30)
    b.fact("response", "PR", days_ago=29)  # a second assessment in cycle 1: CRi is the best
    b.lab("bilirubin-total", 45, days_ago=20)
    d = plan(b, "nhs-ta514")
    t = d["treatment"]
    assert [(c["cycle"], c["day1"], [x["day"] for x in c["doses"]]) for c in t["cycles"]] == [
        (1, "2026-10-03", [1, 15]),
        (2, "2026-11-07", [1]),
    ]
    assert t["cycles"][0]["omitted_days"] == [8] and t["cycles"][0]["best_response"] == "CRi"
    assert t["cycles"][1]["dose_level"] == "-1" and t["reductions"] == 1
    [gap] = [i for i in t["interruptions"] if i["days"] >= 14]
    assert (gap["from"], gap["to"], gap["days"]) == ("2026-10-24", "2026-11-07", 14)
    assert gap["toxicity_evidence"]
    # today is day 15 of cycle 2: day 8 was omitted, day 15 is due (window: day 14 to day 21)
    assert (d["cycle"], d["day"], d["next_dose_window"]) == (
        2,
        15,
        {"earliest": "2026-11-20", "latest": "2026-11-27"},
    )


def test_a_dose_engine_failure_never_becomes_a_dose(monkeypatch: pytest.MonkeyPatch) -> None:
    import adapter.evaluate

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(adapter.evaluate, "plan_next_dose", broken)
    d = plan(dosing_patient("p", TODAY, 0), "nhs-ta514")
    assert d["action"] == "insufficient-data" and d["doses"] == [] and "internal-error" in ids(d)
