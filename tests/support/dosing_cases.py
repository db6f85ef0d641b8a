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


def _cycle_2(pid: str, response: str) -> PatientBuilder:
    """Cycle 1 given on days 1, 8, 15; ``response`` on the day-21 marrow; cycle 2 day 1 due today."""
    b = dosing_patient(pid, TODAY, start=21)
    give(b, 21, C1)
    b.fact("response", response, days_ago=1)
    b.fact("hsct-candidate", "no", days_ago=1)
    return pre_dose_labs(b)


def c2_after_cr() -> PatientBuilder:
    return _cycle_2("c2-cr", "CR")


def c2_after_nr() -> PatientBuilder:
    return _cycle_2("c2-nr", "NR")


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


CASES: dict[str, tuple[Callable[[], PatientBuilder], tuple[str, ...]]] = {
    "c2-after-cr": (c2_after_cr, ALL),
    "c2-after-nr": (c2_after_nr, ALL),
    "interruption-14-days": (interruption_14_days, ALL),
    "weight-change": (weight_change, ALL),
    "vod-on-treatment": (vod_on_treatment, ALL),
    "sixth-cycle-done": (sixth_cycle_done, ("fda-label", "nhs-ta514", "es-valtermed")),
    "sixth-cycle-done-low-dose": (sixth_cycle_done_low_dose, ("mdacc-low-dose",)),
}
