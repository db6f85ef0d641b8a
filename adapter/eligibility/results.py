"""Result types of the eligibility engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from adapter.checks.outcome import Outcome, Status, combine_all

__all__ = ["CriterionResult", "Eligibility", "Outcome", "Overall", "Status", "combine_all", "overall"]


class Overall(StrEnum):
    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"
    NEEDS_REVIEW = "needs-review"
    INSUFFICIENT_DATA = "insufficient-data"


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
