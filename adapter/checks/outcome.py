"""What a check found: a status, a reason a clinician can read, and the resources it used.

Shared by eligibility criteria and the dose engine's pre-dose checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    MET = "met"
    NOT_MET = "not-met"
    UNKNOWN = "unknown"
    REVIEW = "review"
    #: a start-only criterion once treatment has started (its result at the start is kept)
    NOT_APPLICABLE = "not-applicable"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a rule found: a status, a reason a clinician can read, and the resources it used."""

    status: Status
    reason: str
    evidence: tuple[str, ...] = ()


def combine_all(outcomes: list[Outcome], met_reason: str) -> Outcome:
    """All parts must hold: the worst part decides (not-met, then unknown, then review)."""
    evidence = tuple(e for o in outcomes for e in o.evidence)
    for status in (Status.NOT_MET, Status.UNKNOWN, Status.REVIEW):
        bad = [o for o in outcomes if o.status is status]
        if bad:
            return Outcome(status, "; ".join(o.reason for o in bad), evidence)
    return Outcome(Status.MET, met_reason + ": " + "; ".join(o.reason for o in outcomes), evidence)
