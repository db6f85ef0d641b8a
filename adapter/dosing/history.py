"""The inotuzumab doses a patient has had, from MedicationAdministration (preferred),
MedicationStatement and completed MedicationRequest records.

One dose per day: records of the same dose from several resource types are merged, the
administration winning. A record that exists but cannot be read — no date precise to the day,
an administration or statement dated after the as-of date, status ``unknown`` or on hold, an
active order dated in the past with no administration, several administrations of one day with
different doses, a dose that cannot be read or is implausible — is a **blocking** problem: the
plan becomes ``insufficient-data``, never a dose. Skipping such a record could propose a second
dose on a day one was given, or take a given dose for an omission.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from adapter.domain import Exposure, PatientRecord

DRUG = "inotuzumab-ozogamicin"
#: statuses that mean the dose (or part of it) was given, per resource type
GIVEN = {
    "MedicationAdministration": frozenset({"completed", "in-progress", "stopped"}),
    "MedicationStatement": frozenset({"completed", "active", "stopped"}),
    "MedicationRequest": frozenset({"completed"}),
}
#: statuses that leave it unknown whether a dose was given
UNCLEAR = frozenset({"unknown", "on-hold"})
#: an order still open: the dose may or may not have been given
OPEN_ORDER = frozenset({"active", "on-hold", "unknown"})
PREFERENCE = {"MedicationAdministration": 0, "MedicationStatement": 1, "MedicationRequest": 2}


@dataclass(frozen=True, slots=True)
class GivenDose:
    day: date
    mg: float | None
    mg_per_m2: float | None
    refs: tuple[str, ...]
    resource_type: str
    partial: bool = False  # administration stopped part-way
    #: the recorded amount cannot be used (unreadable, implausible or conflicting)
    amount_unknown: bool = False


@dataclass(slots=True)
class DoseHistory:
    doses: list[GivenDose] = field(default_factory=list)
    #: (reason, evidence) for records that exist but cannot be read: they block any dose
    problems: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    #: (reason, evidence) worth telling but not blocking
    notes: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    #: open orders planned for the as-of day: the dose in hand, not a dose given
    todays_orders: list[str] = field(default_factory=list)

    @property
    def started(self) -> bool:
        return bool(self.doses)


def _when(e: Exposure) -> tuple[date | None, str | None]:
    point = e.planned if e.resource_type == "MedicationRequest" and e.planned else e.start
    if point is None:
        return None, "no date"
    if not point.precise:
        return None, f"date {point} is not precise to the day"
    return point.earliest, None


def dose_history(record: PatientRecord, as_of: date, exclude: frozenset[str] = frozenset()) -> DoseHistory:
    out = DoseHistory()
    by_day: dict[date, list[Exposure]] = {}
    for e in record.exposures.get(DRUG, ()):
        if e.ref in exclude:
            continue
        day, problem = _when(e)
        if day is None:
            out.problems.append((f"{e.ref}: inotuzumab {e.resource_type} with {problem}", (e.ref,)))
            continue
        if day > as_of:
            if e.resource_type != "MedicationRequest":
                # an administration or statement dated in the future is impossible: it may be a dose
                # given today with a wrong date, so it blocks like any record that cannot be read
                out.problems.append(
                    (
                        f"{e.ref}: inotuzumab {e.resource_type} dated {day}, after the as-of date {as_of}: "
                        "a dose cannot have been given in the future",
                        (e.ref,),
                    )
                )
            continue  # an order for a later date is a planned dose, not a given one
        by_day.setdefault(day, []).append(e)
    for day in sorted(by_day):
        _read_day(out, day, by_day[day], as_of)
    return out


def _read_day(out: DoseHistory, day: date, records: list[Exposure], as_of: date) -> None:
    """The dose of one day from its records, or the problem that makes it unknown."""
    records = sorted(records, key=lambda e: PREFERENCE.get(e.resource_type, 9))
    given = [e for e in records if e.status in GIVEN.get(e.resource_type, frozenset())]
    unclear = [e for e in records if e.resource_type != "MedicationRequest" and e.status in UNCLEAR]
    open_orders = [e for e in records if e.resource_type == "MedicationRequest" and e.status in OPEN_ORDER]
    refs = tuple(e.ref for e in records)
    for e in unclear:
        out.problems.append(
            (
                f"{e.ref}: inotuzumab {e.resource_type} is {e.status}: whether the dose was given is unknown",
                (e.ref,),
            )
        )
    best_type = given[0].resource_type if given else None
    if open_orders and best_type in (None, "MedicationRequest"):
        if day == as_of and not given:
            # an order written for today's dose (ours or the site's) is the dose in hand
            out.todays_orders.extend(e.ref for e in open_orders)
            out.notes.append((f"order(s) for today's dose: {', '.join(e.ref for e in open_orders)}", refs))
        else:
            out.problems.append(
                (
                    f"an inotuzumab order for {day} ({', '.join(e.ref for e in open_orders)}) has no "
                    "administration record: whether the dose was given is unknown",
                    tuple(e.ref for e in open_orders),
                )
            )
    if not given:
        stopped = [e.ref for e in records if e.resource_type == "MedicationRequest" and e.status == "stopped"]
        if stopped:
            out.notes.append((f"stopped inotuzumab order(s) for {day} not counted as a dose", tuple(stopped)))
        return
    same_type = [e for e in given if e.resource_type == best_type]
    best = same_type[0]
    if best_type == "MedicationRequest":
        out.notes.append(
            (
                f"the dose on {day} is known only from a completed order "
                f"({', '.join(e.ref for e in same_type)}), not from an administration record",
                tuple(e.ref for e in same_type),
            )
        )
    amount_unknown = False
    amounts = {(e.dose_mg, e.dose_mg_per_m2) for e in same_type}
    if len(same_type) > 1:
        if len(amounts) > 1:
            out.problems.append(
                (
                    f"several {best_type} records for {day} with different doses "
                    f"({', '.join(e.ref for e in same_type)})",
                    tuple(e.ref for e in same_type),
                )
            )
            amount_unknown = True
        else:
            out.notes.append((f"{len(same_type)} {best_type} records for {day} taken as one dose", refs))
    for e in same_type:
        if e.dose_problem:
            out.problems.append((f"{e.ref}: the recorded dose cannot be used ({e.dose_problem})", (e.ref,)))
            amount_unknown = True
    out.doses.append(
        GivenDose(
            day,
            None if amount_unknown else best.dose_mg,
            None if amount_unknown else best.dose_mg_per_m2,
            refs,
            best.resource_type,
            best.status == "stopped",
            amount_unknown,
        )
    )


def first_dose_day(record: PatientRecord, as_of: date) -> date | None:
    """The day of the first inotuzumab dose given on or before ``as_of`` (None: not started)."""
    doses = dose_history(record, as_of).doses
    return doses[0].day if doses else None
