"""Where the next dose falls: omitted days, a dose not due yet, and the response that decides the
doses of a new cycle (label/UK/Spain: the day-1 dose after CR/CRi; MD Anderson: the lower level
after remission from cycle 3)."""

from __future__ import annotations

from adapter.dosing.context import DoseContext
from adapter.dosing.findings import Action, Finding, Severity, finding
from adapter.dosing.rules import dose_rule


@dose_rule("schedule", ("dose-omitted",), ("window.source",))
def omitted_doses(ctx: DoseContext) -> list[Finding]:
    """A dose not given within its window is omitted; when the next dose is not due yet the plan is
    `omit` (with the doses after the omission)."""
    if ctx.timeline is None:
        return []
    pos = ctx.timeline.position
    return [
        finding(
            "dose-omitted",
            f"cycle {ctx.timeline.current.number} day {day} was not given within its window: omitted",
            ctx.spec.window.source,
            effect=None if ctx.next.due_now else Action.OMIT,
            severity=Severity.WARNING,
        )
        for day in pos.omitted_now
    ]


@dose_rule("schedule", ("next-dose-not-due",), ("freshness.source",))
def not_due_yet(ctx: DoseContext) -> list[Finding]:
    """A dose whose window has not opened is not a dose yet: its pre-dose results cannot exist."""
    if ctx.timeline is None or ctx.next.due_now or ctx.timeline.position.omitted_now:
        return []
    earliest = ctx.timeline.position.earliest
    return [
        finding(
            "next-dose-not-due",
            f"the next dose (cycle {ctx.next.cycle} day {ctx.next.day}) is not due before {earliest}: "
            f"evaluate it on its day with that day's results (results at most "
            f"{ctx.spec.freshness.labs_max_age_days} day(s) old)",
            ctx.spec.freshness.source,
            effect=Action.INSUFFICIENT_DATA,
            severity=Severity.INFO,
        )
    ]


def _response_source(ctx: DoseContext) -> str:
    if ctx.spec.later is not None:
        return ctx.spec.later.source
    assert ctx.spec.levels is not None
    return ctx.spec.levels.remission_source


@dose_rule(
    "schedule", ("response-unknown-for-dose", "response-decides"), ("later.source", "levels.remission_source")
)
def response_for_dose(ctx: DoseContext) -> list[Finding]:
    """The doses of a new cycle that depend on the response: decided by the current response on the
    day of the dose (an assessment dated that day counts), and the finding names it."""
    nxt = ctx.next
    if not nxt.new_cycle or nxt.response is None:
        return []
    state = nxt.response
    depends = ctx.spec.later is not None or (
        ctx.spec.levels is not None and nxt.cycle >= ctx.spec.levels.remission_lower_from_cycle
    )
    if not depends:
        return []
    if state.remission is None:
        why = state.problem or "no response assessment is recorded since the first dose"
        return [
            finding(
                "response-unknown-for-dose",
                f"the doses of cycle {nxt.cycle} depend on whether remission (CR/CRi) is current on "
                f"{nxt.on}: {why}",
                _response_source(ctx),
                state.evidence,
                effect=Action.INSUFFICIENT_DATA,
            )
        ]
    what = "in remission" if state.remission else "not in remission"
    return [
        finding(
            "response-decides",
            f"cycle {nxt.cycle}: {what} on {nxt.on} by the latest assessment, {state.text()}",
            _response_source(ctx),
            state.evidence,
        )
    ]
