"""Treatment histories for the golden tests of the dose engine (tests/test_dosing_golden.py).

Each case builds one patient on 2026-11-21 and names the variants it is evaluated under. The
inputs are written to tests/data/dosing/<case>/input.json and the expected dose blocks to
expected-<variant>.json (regenerate with INO_UPDATE_GOLDEN=1 and review the diff).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from tests.support.synth import ICD10, PatientBuilder
from tests.support.treatment import dosing_patient, give, pre_dose_labs

TODAY = date(2026, 11, 21)
ALL = ("fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose")
C1 = [(0, 1.6), (7, 1.0), (14, 1.0)]


def _cycle_2(pid: str, *responses: tuple[str, int]) -> PatientBuilder:
    """Cycle 1 given on days 1, 8, 15; the response assessments (value, days ago); cycle 2 day 1
    due today."""
    b = dosing_patient(pid, TODAY, start=21)
    give(b, 21, C1)
    for value, days_ago in responses:
        b.fact("response", value, days_ago=days_ago)
    b.fact("hsct-candidate", "no", days_ago=1)
    return pre_dose_labs(b)


def c2_after_cr() -> PatientBuilder:
    return _cycle_2("c2-cr", ("CR", 1))


def c2_after_nr() -> PatientBuilder:
    return _cycle_2("c2-nr", ("NR", 1))


def interruption_14_days() -> PatientBuilder:
    """Cycle 1 given; hyperbilirubinaemia held cycle 2 until today, 42 days after cycle 1 day 1
    (21 days past the UK's 21-day cycle, 14 past the label's 28-day extension)."""
    b = dosing_patient("int-14", TODAY, start=42)
    give(b, 42, C1)
    b.fact("response", "NR", days_ago=20)
    b.fact("hsct-candidate", "no", days_ago=20)
    b.lab("bilirubin-total", 45, days_ago=18)
    b.lab("bilirubin-total", 38, days_ago=9)
    return pre_dose_labs(b)


def weight_change() -> PatientBuilder:
    """Cycle 2 day 1 with weight 90 kg today against 80 kg before cycle 1 (+12.5%)."""
    b = dosing_patient("wt-change", TODAY, start=21, weight=90)
    b.lab("body-weight", 80, days_ago=20)
    give(b, 21, C1)
    b.fact("response", "CR", days_ago=1)
    b.fact("hsct-candidate", "no", days_ago=1)
    return pre_dose_labs(b)


def vod_on_treatment() -> PatientBuilder:
    """VOD/SOS diagnosed between day 8 and day 15 of cycle 1."""
    b = dosing_patient("vod", TODAY, start=14)
    give(b, 14, C1[:2])
    b.condition(ICD10, "K76.5", "Hepatic veno-occlusive disease", onset_days_ago=2)
    return pre_dose_labs(b, bili=60)


def sixth_cycle_done() -> PatientBuilder:
    """Six cycles (cycle 1 of 21 days, then 28-day cycles at 0.5 mg/m² after CR) completed."""
    b = dosing_patient("six-done", TODAY, start=21 + 5 * 28)
    doses = list(C1)
    for c in range(5):
        d1 = 21 + c * 28
        doses += [(d1, 1.0), (d1 + 7, 1.0), (d1 + 14, 1.0)]
    give(b, 21 + 5 * 28, doses)
    b.fact("response", "CR", days_ago=21 + 4 * 28)
    b.fact("hsct-candidate", "no", days_ago=100)
    return pre_dose_labs(b)


def sixth_cycle_done_low_dose() -> PatientBuilder:
    """MD Anderson: cycle 1, then five 21-day cycles of two doses (level 0, then -1 after CR)."""
    b = dosing_patient("six-done-ld", TODAY, start=21 + 5 * 21)
    doses = list(C1)
    for c in range(5):
        d1 = 21 + c * 21
        doses += [(d1, 1.2 if c == 0 else 0.8), (d1 + 7, 0.6 if c == 0 else 0.4)]
    give(b, 21 + 5 * 21, doses)
    b.fact("response", "CR", days_ago=21 + 4 * 21 + 2)
    b.fact("hsct-candidate", "no", days_ago=100)
    return pre_dose_labs(b)


def cr_on_the_dose_day() -> PatientBuilder:
    """Cycle 1 given; the marrow read this morning, on cycle 2 day 1, shows CR."""
    return _cycle_2("cr-today", ("CR", 0))


def cr_then_pd() -> PatientBuilder:
    """CR on day 15 of cycle 1, progressive disease reported the day before cycle 2 day 1."""
    return _cycle_2("cr-pd", ("CR", 6), ("PD", 1))


def toxicity_spanning_interruption() -> PatientBuilder:
    """Grade 3 stomatitis from cycle 1 day 4 (long before the interruption) lasting until cycle 2
    was given 14 days late; today is cycle 2 day 8."""
    b = dosing_patient("tox-span", TODAY, start=42)
    give(b, 42, [*C1, (35, 1.2)])
    b.toxicity("Stomatitis", 3, onset_days_ago=39, clinical="resolved", abatement_days_ago=8)
    b.fact("response", "NR", days_ago=30)
    b.fact("hsct-candidate", "no", days_ago=30)
    return pre_dose_labs(b)


def third_modification() -> PatientBuilder:
    """Three interruptions of 14 days, each spanned by a toxicity: the third is due today."""
    b = dosing_patient("third-mod", TODAY, start=119)
    give(b, 119, [*C1, (35, 1.2), (42, 0.75), (49, 0.75), (77, 1.2), (84, 0.75)])
    b.fact("response", "CR", days_ago=99)
    b.fact("hsct-candidate", "no", days_ago=99)
    for onset, end in ((3, 34), (45, 76), (80, 118)):
        b.toxicity(
            "Diarrhoea", 2, onset_days_ago=119 - onset, clinical="resolved", abatement_days_ago=119 - end
        )
    return pre_dose_labs(b)


def unreadable_administration_today() -> PatientBuilder:
    """Day 8 is due today; an administration of today has status unknown (given or not?)."""
    b = dosing_patient("unreadable-today", TODAY, start=7)
    give(b, 7, C1[:1])
    b.administration(0, 1.0, status="unknown")
    b.fact("hsct-candidate", "no", days_ago=1)
    return pre_dose_labs(b)


def suspected_vod() -> PatientBuilder:
    """A provisional VOD/SOS diagnosis two days before day 15."""
    b = dosing_patient("vod-suspected", TODAY, start=14)
    give(b, 14, C1[:2])
    b.condition(
        ICD10, "K76.5", "Hepatic veno-occlusive disease", onset_days_ago=2, verification="provisional"
    )
    b.fact("hsct-candidate", "no", days_ago=1)
    return pre_dose_labs(b, bili=30)


def first_dose_liver_out_of_limits() -> PatientBuilder:
    """Before the first dose: bilirubin 1.9 × ULN and ALT 3 × ULN this morning."""
    b = dosing_patient("first-liver", TODAY, start=0)
    b.lab("bilirubin-total", 40, days_ago=0)
    b.lab("alt", 123, days_ago=0)
    return b


CASES: dict[str, tuple[Callable[[], PatientBuilder], tuple[str, ...]]] = {
    "cr-on-the-dose-day": (cr_on_the_dose_day, ALL),
    "cr-then-pd": (cr_then_pd, ALL),
    "toxicity-spanning-interruption": (toxicity_spanning_interruption, ALL),
    "third-modification": (third_modification, ("fda-label", "nhs-ta514", "es-valtermed")),
    "unreadable-administration-today": (unreadable_administration_today, ALL),
    "suspected-vod": (suspected_vod, ALL),
    "first-dose-liver-out-of-limits": (first_dose_liver_out_of_limits, ALL),
    "c2-after-cr": (c2_after_cr, ALL),
    "c2-after-nr": (c2_after_nr, ALL),
    "interruption-14-days": (interruption_14_days, ALL),
    "weight-change": (weight_change, ALL),
    "vod-on-treatment": (vod_on_treatment, ALL),
    "sixth-cycle-done": (sixth_cycle_done, ("fda-label", "nhs-ta514", "es-valtermed")),
    "sixth-cycle-done-low-dose": (sixth_cycle_done_low_dose, ("mdacc-low-dose",)),
}
