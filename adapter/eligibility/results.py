"""Result types shared by rules and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    MET = "met"
    NOT_MET = "not-met"
    UNKNOWN = "unknown"
    REVIEW = "review"


class Overall(StrEnum):
    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"
    NEEDS_REVIEW = "needs-review"
    INSUFFICIENT_DATA = "insufficient-data"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a rule found: a status, a reason a clinician can read, and the resources it used."""

    status: Status
    reason: str
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CriterionResult:
    id: str
    title: str
    status: Status
    reason: str
    evidence: tuple[str, ...]
    source: str


@dataclass(frozen=True, slots=True)
class Eligibility:
    status: Overall
    criteria: tuple[CriterionResult, ...]
    attestations: tuple[str, ...] = field(default=())


def overall(statuses: list[Status]) -> Overall:
    """Combine criterion statuses in the documented order: not-met, unknown, review, else eligible."""
    if Status.NOT_MET in statuses:
        return Overall.INELIGIBLE
    if Status.UNKNOWN in statuses:
        return Overall.INSUFFICIENT_DATA
    if Status.REVIEW in statuses:
        return Overall.NEEDS_REVIEW
    return Overall.ELIGIBLE


def combine_all(outcomes: list[Outcome], met_reason: str) -> Outcome:
    """All parts must hold: the worst part decides (not-met, then unknown, then review)."""
    evidence = tuple(e for o in outcomes for e in o.evidence)
    for status in (Status.NOT_MET, Status.UNKNOWN, Status.REVIEW):
        bad = [o for o in outcomes if o.status is status]
        if bad:
            return Outcome(status, "; ".join(o.reason for o in bad), evidence)
    return Outcome(Status.MET, met_reason + ": " + "; ".join(o.reason for o in outcomes), evidence)
