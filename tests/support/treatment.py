"""Synthetic patients on inotuzumab treatment, for the dose engine's tests and examples.

Times are day offsets: ``start`` is how many days ago cycle 1 day 1 was given, and each dose is
placed at an offset from that day. The patient weighs 80 kg and is 180 cm tall (Mosteller BSA
exactly 2.00 m²) unless told otherwise, and the pre-dose results are from the as-of day.
"""

from __future__ import annotations

from datetime import date, timedelta

from tests.support.synth import PatientBuilder, full_workup

#: cycle 1 (0.8/0.5/0.5 mg/m²) at BSA 2.00 m²
C1_MG = (1.6, 1.0, 1.0)


def dosing_patient(
    pid: str, today: date, start: int = 0, weight: float = 80, height: float = 180, gender: str = "male"
) -> PatientBuilder:
    """A patient whose complete pre-treatment work-up precedes cycle 1 day 1 (``start`` days ago),
    with weight and height measured today."""
    b = full_workup(PatientBuilder(pid, "1980-03-14", gender, today - timedelta(days=start)))
    b.today = today
    b.lab("body-weight", weight, days_ago=0)
    b.lab("body-height", height, days_ago=0)
    return b


def give(b: PatientBuilder, start: int, doses: list[tuple[int, float]]) -> PatientBuilder:
    """Administrations at (offset from cycle 1 day 1, mg)."""
    for offset, mg in doses:
        b.administration(start - offset, mg)
    return b


def pre_dose_labs(
    b: PatientBuilder,
    days_ago: int = 0,
    anc: float = 1.9,
    plt: float = 120,
    bili: float = 14,
    ast: float = 35,
    alt: float = 30,
    creat: float = 78,
) -> PatientBuilder:
    b.lab("neutrophils", anc, days_ago=days_ago)
    b.lab("platelets", plt, days_ago=days_ago)
    b.lab("bilirubin-total", bili, days_ago=days_ago)
    b.lab("ast", ast, days_ago=days_ago)
    b.lab("alt", alt, days_ago=days_ago)
    b.lab("creatinine", creat, days_ago=days_ago)
    return b


def cycles(
    start: int, n: int, length: int, mg: tuple[float, ...], days: tuple[int, ...] = (1, 8, 15)
) -> list[tuple[int, float]]:
    """``n`` full cycles of ``length`` days from offset 0, cycle 1 at 0.8/0.5/0.5 × 2.00 m²."""
    out: list[tuple[int, float]] = []
    for c in range(n):
        dose_mg = C1_MG if c == 0 else mg
        cdays = (1, 8, 15) if c == 0 else days
        for day, m in zip(cdays, dose_mg, strict=False):
            out.append((c * length + day - 1, m))
    return out
