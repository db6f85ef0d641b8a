"""Choosing the value a rule may use: the latest usable result at or before the as-of date.

The choice is conservative: if the newest result for a concept is unusable (bad unit,
implausible, ambiguous code), or two results of the same day disagree, or the newest is older
than the freshness window, there is no value, and the reason says why. An older good value is
never silently used in place of a newer unusable one.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, timedelta

from adapter.domain import PatientRecord, Reading

FINAL_STATUSES = frozenset({"final", "amended", "corrected"})


@dataclass(frozen=True, slots=True)
class Selection:
    reading: Reading | None
    problem: str | None  # why there is no reading
    evidence: tuple[str, ...] = ()


def months_before(day: date, months: int) -> date:
    month_index = day.year * 12 + day.month - 1 - months
    year, month = divmod(month_index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def latest(
    record: PatientRecord,
    concept: str,
    as_of: date,
    max_age_days: int | None = None,
    accept_preliminary: bool = False,
    label: str | None = None,
) -> Selection:
    label = label or concept
    statuses = FINAL_STATUSES | ({"preliminary"} if accept_preliminary else set())
    all_readings = [r for r in record.readings.get(concept, ()) if r.day <= as_of]
    readings = [r for r in all_readings if r.status in statuses]
    unusable = [u for u in record.unusable.get(concept, ()) if u.day is None or u.day <= as_of]
    if not readings:
        reasons = [f"{u.ref}: {u.reason}" for u in unusable]
        evidence = tuple(u.ref for u in unusable) + tuple(r.ref for r in all_readings)
        if all_readings:
            reasons.append(
                f"only {', '.join(sorted({r.status for r in all_readings}))} results "
                f"({', '.join(r.ref for r in all_readings)}); a final result is required"
            )
        if reasons:
            return Selection(None, f"no usable {label} ({'; '.join(reasons)})", evidence)
        return Selection(None, f"no {label} recorded", ())
    best_day = readings[0].day  # readings are sorted newest first
    newer_bad = [u for u in unusable if u.day is not None and u.day >= best_day]
    if newer_bad:
        u = newer_bad[0]
        return Selection(
            None,
            f"the most recent {label} ({u.ref}, {u.day}) is unusable: {u.reason}",
            (*(x.ref for x in newer_bad), readings[0].ref),
        )
    # a newer result the variant does not accept (preliminary, registered) makes the value unknown:
    # an older final result never decides in its place; on the same day it must agree
    not_accepted = [
        r
        for r in all_readings
        if r.status not in statuses
        and (r.day > best_day or (r.day == best_day and not _same_value(r, readings[0])))
    ]
    if not_accepted:
        r = not_accepted[0]
        return Selection(
            None,
            f"the most recent {label} ({r.ref}, {r.day}) is {r.status}; a final result is required "
            "and an older one cannot stand in for it",
            (*(x.ref for x in not_accepted), readings[0].ref),
        )
    same_day = [r for r in readings if r.day == best_day]
    distinct = {(r.number, r.comparator, r.coded) for r in same_day}
    if len(distinct) > 1:
        shown = ", ".join(f"{r.text()} ({r.ref})" for r in same_day)
        return Selection(
            None, f"conflicting {label} results on {best_day}: {shown}", tuple(r.ref for r in same_day)
        )
    chosen = same_day[0]
    evidence = tuple(r.ref for r in same_day)
    if max_age_days is not None and chosen.day < as_of - timedelta(days=max_age_days):
        return Selection(
            None,
            f"the latest {label} ({chosen.text()} on {chosen.day}) is older than {max_age_days} days",
            evidence,
        )
    return Selection(chosen, None, evidence)


def _same_value(a: Reading, b: Reading) -> bool:
    return (a.number, a.comparator, a.coded) == (b.number, b.comparator, b.coded)
