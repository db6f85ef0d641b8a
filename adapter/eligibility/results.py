"""Result types of the eligibility engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from adapter.checks.outcome import Outcome, Status, combine_all

__all__ = [
    "AtStart",
    "CriterionResult",
    "Eligibility",
    "Outcome",
    "Overall",
    "Status",
    "combine_all",
    "overall",
]


class Overall(StrEnum):
    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"
    NEEDS_REVIEW = "needs-review"
    INSUFFICIENT_DATA = "insufficient-data"


@dataclass(frozen=True, slots=True)
class AtStart:
    """A start-only criterion as it was on the day of the first dose (the drug's own records excluded)."""

    as_of: date
    status: Status
    reason: str
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CriterionResult:
    id: str
    title: str
    status: Status
    reason: str
    evidence: tuple[str, ...]
    source: str
    #: "start" (gates only the start of treatment) or "continuing" (applies throughout)
    phase: str
    #: set once treatment has started, for a start-only criterion (whose status is then NOT_APPLICABLE)
    at_start: AtStart | None = None


@dataclass(frozen=True, slots=True)
class Eligibility:
    status: Overall
    criteria: tuple[CriterionResult, ...]
    attestations: tuple[str, ...] = field(default=())
    #: the day of the first inotuzumab dose on or before the as-of date (None: not started)
    started_on: date | None = None


def overall(statuses: list[Status]) -> Overall:
    """Combine criterion statuses in the documented order: not-met, unknown, review, else eligible.

    NOT_APPLICABLE (a start-only criterion once treatment has started) takes no part.
    """
    counted = [s for s in statuses if s is not Status.NOT_APPLICABLE]
    if Status.NOT_MET in counted:
        return Overall.INELIGIBLE
    if Status.UNKNOWN in counted:
        return Overall.INSUFFICIENT_DATA
    if Status.REVIEW in counted:
        return Overall.NEEDS_REVIEW
    return Overall.ELIGIBLE
