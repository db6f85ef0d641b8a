"""Findings of the dose engine and how they decide the one action for the next dose."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    ADMINISTER = "administer"
    DELAY = "delay"
    OMIT = "omit"
    DISCONTINUE = "discontinue"
    COMPLETE = "complete"
    REVIEW = "review"
    INSUFFICIENT_DATA = "insufficient-data"
    NOT_ELIGIBLE = "not-eligible"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


#: When findings point to different actions, the first in this order wins. A stop (discontinue,
#: not-eligible, complete) outranks a hold; a known hold outranks missing data (the dose is not
#: given either way); missing data outranks review (a prescriber cannot authorise what is unknown).
PRECEDENCE = (
    Action.DISCONTINUE,
    Action.NOT_ELIGIBLE,
    Action.COMPLETE,
    Action.DELAY,
    Action.INSUFFICIENT_DATA,
    Action.REVIEW,
    Action.OMIT,
    Action.ADMINISTER,
)

DEFAULT_SEVERITY = {
    Action.DISCONTINUE: Severity.CRITICAL,
    Action.NOT_ELIGIBLE: Severity.CRITICAL,
    Action.COMPLETE: Severity.INFO,
    Action.DELAY: Severity.WARNING,
    Action.INSUFFICIENT_DATA: Severity.WARNING,
    Action.REVIEW: Severity.WARNING,
    Action.OMIT: Severity.WARNING,
    Action.ADMINISTER: Severity.INFO,
}


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    severity: Severity
    reason: str
    evidence: tuple[str, ...]
    source: str
    #: the action this finding calls for, or None for information and advice
    effect: Action | None = None
    #: a pre-dose check that passed: what was checked ("liver tests"); its evidence is the results
    check: str | None = None

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id,
            "severity": self.severity.value,
            "reason": self.reason,
            "evidence": list(dict.fromkeys(self.evidence)),
            "source": self.source,
        }
        if self.effect is not None:
            out["effect"] = self.effect.value
        if self.check is not None:
            out["check"] = self.check
        return out


def finding(
    id: str,
    reason: str,
    source: str,
    evidence: tuple[str, ...] | list[str] = (),
    effect: Action | str | None = None,
    severity: Severity | None = None,
    check: str | None = None,
) -> Finding:
    act = Action(effect) if effect is not None else None
    sev = severity or (DEFAULT_SEVERITY[act] if act is not None else Severity.INFO)
    return Finding(id, sev, reason, tuple(evidence), source, act, check)


def decide(findings: list[Finding]) -> Action:
    """The action the findings call for; administer when none calls for anything else."""
    effects = {f.effect for f in findings if f.effect is not None}
    for action in PRECEDENCE:
        if action in effects:
            return action
    return Action.ADMINISTER
