"""Dose modifications: reductions after interruptions for toxicity (never re-escalated), their limit,
MD Anderson's dose levels (remission and toxicity cumulative) and its CRi platelet rule."""

from __future__ import annotations

from adapter.checks.select import latest
from adapter.dosing.context import DoseContext
from adapter.dosing.findings import Action, Finding, Severity, finding
from adapter.dosing.rules import dose_rule
from adapter.dosing.state import responses_between
from adapter.dosing.timeline import Interruption


def _describe(i: Interruption) -> str:
    tox = (
        f"toxicity recorded during it: {', '.join(i.toxicity)}"
        if i.toxicity
        else "no toxicity recorded during it"
    )
    return f"{i.days} days from {i.start}{' (ongoing)' if i.ongoing else ''}, {tox}"


@dose_rule(
    "reductions",
    ("dose-reduced", "reductions-exhausted"),
    ("interruption.reduction_source",),
)
def toxicity_reductions(ctx: DoseContext) -> list[Finding]:
    """An interruption of ≥ 14 days lowers the next cycle and all later ones one step (label/UK/Spain:
    25%, then two doses per cycle; MD Anderson: one dose level), never re-escalated. One more than
    the allowed modifications discontinues ("if still not tolerated permanently discontinue"; MD
    Anderson: more than two reductions withdraw) when a toxicity spans the interruption; without
    one, or where the source defers to the product information, it is the prescriber's decision."""
    if ctx.timeline is None or ctx.next.steps == 0:
        return []
    iv = ctx.spec.interruption
    reducing = ctx.timeline.reducing(iv.reduce_from_days)
    evidence = tuple(e for i in reducing for e in i.toxicity)
    text = "; ".join(_describe(i) for i in reducing)
    steps = ctx.next.steps
    if steps > iv.max_reductions:
        explained = bool(reducing and reducing[-1].toxicity)
        stop = explained and iv.reduction_effect is None
        return [
            finding(
                "reductions-exhausted",
                f"{steps} interruptions of ≥ {iv.reduce_from_days} days ({text}): more than "
                f"{iv.max_reductions} dose modifications"
                + (
                    ": still not tolerated, discontinue permanently"
                    if stop
                    else ": discontinuation to be decided by the prescriber"
                    + ("" if explained else " (no toxicity is recorded during the last interruption)")
                ),
                iv.reduction_source,
                evidence,
                effect=Action.DISCONTINUE if stop else Action.REVIEW,
            )
        ]
    what = (
        "dose reduced by 25%" + (" and two doses per cycle" if steps >= 2 else "")
        if iv.reduction == "percent"
        else f"{steps} dose level(s) lower"
    )
    unexplained = sum(1 for i in reducing if not i.toxicity)
    note = (
        f"; {unexplained} of them without a recorded toxicity (reduction applied, as the lower dose is the "
        "safer reading)"
        if unexplained
        else ""
    )
    return [
        finding(
            "dose-reduced",
            f"interruption(s) of ≥ {iv.reduce_from_days} days ({text}): {what} for later cycles, never "
            f"re-escalated{note}",
            iv.reduction_source,
            evidence,
            effect=iv.reduction_effect,
            severity=Severity.WARNING,
        )
    ]


@dose_rule("reductions", ("no-lower-level",), ("interruption.reduction_source", "levels.remission_source"))
def lowest_level_reached(ctx: DoseContext) -> list[Finding]:
    """MD Anderson: the remission level and the toxicity reductions add up; when they call for a level
    below −2 (and the reductions alone do not withdraw the patient) no lower level is available:
    the investigator decides whether to continue at −2."""
    levels = ctx.spec.levels
    level = ctx.next.level
    if (
        levels is None
        or level is None
        or level < len(levels.levels)
        or ctx.next.steps > ctx.spec.interruption.max_reductions
    ):
        return []
    return [
        finding(
            "no-lower-level",
            f"cycle {ctx.next.cycle} calls for dose level −{level} (remission and {ctx.next.steps} toxicity "
            f"reduction(s)); the lowest level is {levels.names[-1]}: continue at it only if the investigator "
            "decides",
            ctx.spec.interruption.reduction_source,
            effect=Action.REVIEW,
        )
    ]


@dose_rule("reductions", ("cri-platelets",), ("levels.cri_platelets_source",))
def cri_platelets(ctx: DoseContext) -> list[Finding]:
    """MD Anderson: CRi with platelets below their value before the previous cycle: a reduction to the
    next lower level "should also be considered" (review)."""
    levels = ctx.spec.levels
    if levels is None or ctx.timeline is None or not ctx.next.new_cycle:
        return []
    prev = ctx.timeline.current
    responses = responses_between(ctx.record, prev.day1, ctx.as_of, ctx.accept_preliminary)
    cri = [r for r in responses if r.coded == "CRi"]
    if not cri:
        return []
    before = latest(ctx.record, "platelets", prev.day1, None, ctx.accept_preliminary).reading
    now = ctx.select("platelets", ctx.counts_max_age).reading
    if before is None or now is None or now.number is None or before.number is None:
        return []
    if now.bounds[0] >= before.bounds[1]:
        return []  # not below, whatever the reported bounds
    below = now.bounds[1] < before.bounds[0]
    how = "below" if below else "possibly below (the reported bound cannot tell)"
    return [
        finding(
            "cri-platelets",
            f"CRi with platelets {now.text()} {how} the {before.text()} before cycle {prev.number}: "
            "consider the next lower dose level",
            levels.cri_platelets_source,
            (now.ref, before.ref, *(r.ref for r in cri)),
            effect=levels.cri_platelets_action,
        )
    ]
