"""Eligibility in the dose plan: before the first dose it decides; once treatment has started only
the criteria marked ``continuing`` in the variant file still apply (start-only criteria describe the
patient before cycle 1 and are reported "at start" in the eligibility block)."""

from __future__ import annotations

from adapter.checks.outcome import Status
from adapter.dosing.context import DOSING_DOC, DoseContext
from adapter.dosing.findings import Action, Finding, finding
from adapter.dosing.rules import dose_rule
from adapter.eligibility.results import Overall

START_DOC = DOSING_DOC + " §Before the first dose"
ELIGIBILITY_ACTION = {
    Overall.ELIGIBLE: None,
    Overall.NEEDS_REVIEW: Action.REVIEW,
    Overall.INSUFFICIENT_DATA: Action.INSUFFICIENT_DATA,
    Overall.INELIGIBLE: Action.NOT_ELIGIBLE,
}
#: what a continuing criterion that does not hold calls for once treatment has started
CONTINUING_ACTION = {
    Status.NOT_MET: Action.NOT_ELIGIBLE,
    Status.UNKNOWN: Action.INSUFFICIENT_DATA,
    Status.REVIEW: Action.REVIEW,
}


@dose_rule("eligibility", ("eligibility",), (START_DOC,))
def eligibility_before_first_dose(ctx: DoseContext) -> list[Finding]:
    """Before the first dose the eligibility result decides: ineligible, insufficient data or
    needs review stop or hold the first dose."""
    el = ctx.eligibility
    effect = ELIGIBILITY_ACTION[el.status]
    if ctx.started or effect is None:
        return []
    blocking = [c for c in el.criteria if c.status not in (Status.MET, Status.NOT_APPLICABLE)]
    return [
        finding(
            "eligibility",
            f"before the first dose the eligibility decides: {el.status.value} ("
            + ", ".join(f"{c.id}: {c.status.value}" for c in blocking)
            + ")",
            START_DOC,
            tuple(e for c in blocking for e in c.evidence),
            effect=effect,
        )
    ]


@dose_rule("eligibility", ("continuing-criterion",), (DOSING_DOC + " §Once treatment has started",))
def continuing_criteria(ctx: DoseContext) -> list[Finding]:
    """Once treatment has started, a criterion that must hold throughout (input integrity, alive,
    the diagnosis) and does not: unknown → no dose, review → prescriber, not met → not eligible."""
    if not ctx.started:
        return []
    return [
        finding(
            "continuing-criterion",
            f"{c.title}: {c.reason}",
            c.source,
            c.evidence,
            effect=CONTINUING_ACTION[c.status],
        )
        for c in ctx.eligibility.criteria
        if c.phase == "continuing" and c.status in CONTINUING_ACTION
    ]
