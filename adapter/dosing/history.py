"""The inotuzumab doses a patient has had, from MedicationAdministration (preferred),
MedicationStatement and completed MedicationRequest records.

One dose per day: records of the same dose from several resource types are merged, the
administration winning. Records that cannot be placed (imprecise date), that conflict, or that
cannot tell whether a dose was given (an active order dated in the past with no administration)
become problems; the engine turns them into findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from adapter.domain import Exposure, PatientRecord

DRUG = "inotuzumab-ozogamicin"
#: MedicationAdministration statuses that mean the dose (or part of it) was given
ADMIN_GIVEN = frozenset({"completed", "in-progress", "stopped"})
STATEMENT_GIVEN = frozenset({"completed", "active", "stopped"})
PREFERENCE = {"MedicationAdministration": 0, "MedicationStatement": 1, "MedicationRequest": 2}


@dataclass(frozen=True, slots=True)
class GivenDose:
    day: date
    mg: float | None
    mg_per_m2: float | None
    refs: tuple[str, ...]
    resource_type: str
    partial: bool = False  # administration stopped part-way


@dataclass(slots=True)
class DoseHistory:
    doses: list[GivenDose] = field(default_factory=list)
    #: (reason, evidence) for records that make the history uncertain
    problems: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    #: (reason, evidence) worth telling but not blocking
    notes: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

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
        if day > as_of:  # a planned dose, not a given one
            continue
        if e.resource_type == "MedicationAdministration" and e.status not in ADMIN_GIVEN:
            out.problems.append(
                (f"{e.ref}: administration is {e.status}: whether it was given is unclear", (e.ref,))
            )
            continue
        if e.resource_type == "MedicationStatement" and e.status not in STATEMENT_GIVEN:
            continue
        by_day.setdefault(day, []).append(e)
    for day in sorted(by_day):
        records = sorted(by_day[day], key=lambda e: PREFERENCE.get(e.resource_type, 9))
        best = records[0]
        refs = tuple(e.ref for e in records)
        if best.resource_type == "MedicationRequest":
            if all(e.status == "completed" for e in records):
                out.notes.append(
                    (
                        f"the dose on {day} is known only from a completed order ({', '.join(refs)}), "
                        "not from an administration record",
                        refs,
                    )
                )
            elif any(e.status in ("active", "on-hold") for e in records):
                out.problems.append(
                    (
                        f"an inotuzumab order for {day} ({', '.join(refs)}) has no administration record: "
                        "whether the dose was given is unknown",
                        refs,
                    )
                )
                continue
            else:  # stopped orders: not given
                out.notes.append((f"stopped inotuzumab order(s) for {day} not counted as a dose", refs))
                continue
        same_type = [e for e in records if e.resource_type == best.resource_type]
        doses = {(e.dose_mg, e.dose_mg_per_m2) for e in same_type}
        if len(same_type) > 1:
            if len(doses) > 1:
                out.problems.append(
                    (
                        f"several {best.resource_type} records for {day} with different doses "
                        f"({', '.join(e.ref for e in same_type)})",
                        tuple(e.ref for e in same_type),
                    )
                )
                continue
            out.notes.append(
                (f"{len(same_type)} {best.resource_type} records for {day} taken as one dose", refs)
            )
        if best.dose_problem:
            out.problems.append((f"{best.ref}: {best.dose_problem}", (best.ref,)))
        out.doses.append(
            GivenDose(
                day, best.dose_mg, best.dose_mg_per_m2, refs, best.resource_type, best.status == "stopped"
            )
        )
    return out
