"""The course: progression, the maximum number of cycles, the response assessment after n cycles,
an interruption past the limit, and the transplant (HSCT) rules after 2 cycles."""

from __future__ import annotations

from adapter.dosing.context import DoseContext
from adapter.dosing.findings import Action, Finding, Severity, finding
from adapter.dosing.rules import dose_rule
from adapter.dosing.state import hsct_candidate, mrd_negative, remission_on, responses_between

#: complete remission of any count recovery, for the HSCT rules of every source
REMISSION = ("CR", "CRi", "CRp")


def _completed(ctx: DoseContext) -> int | None:
    """Cycles completed before the next dose, when it starts a new cycle."""
    return ctx.next.cycle - 1 if ctx.started and ctx.next.new_cycle else None


@dose_rule("course", ("progression",), ("course.progression_source",))
def progression(ctx: DoseContext) -> list[Finding]:
    """The latest response assessment on treatment is progressive disease."""
    if ctx.timeline is None:
        return []
    co = ctx.spec.course
    responses = responses_between(ctx.record, ctx.timeline.first_dose, ctx.as_of, ctx.accept_preliminary)
    newest = max(responses, key=lambda x: x.day, default=None)
    if newest is None or newest.coded != "PD":
        return []
    return [
        finding(
            "progression",
            f"progressive disease recorded on {newest.day} ({newest.ref})",
            co.progression_source,
            tuple(r.ref for r in responses if r.coded == "PD"),
            effect=co.progression_action,
        )
    ]


@dose_rule("course", ("course-complete", "course-length"), ("course.max_cycles_source",))
def course_length(ctx: DoseContext) -> list[Finding]:
    """The maximum number of cycles (Spain states none: more than 6 need review)."""
    completed = _completed(ctx)
    co = ctx.spec.course
    if completed is None:
        return []
    if co.max_cycles is not None and completed >= co.max_cycles:
        return [
            finding(
                "course-complete",
                f"{completed} cycles given: the maximum is {co.max_cycles}",
                co.max_cycles_source,
                effect=Action.COMPLETE,
            )
        ]
    if co.max_cycles is None and co.review_after_cycles is not None and completed >= co.review_after_cycles:
        return [
            finding(
                "course-length",
                f"{completed} cycles given: the source states no maximum; more cycles need prescriber review",
                co.max_cycles_source,
                effect=Action.REVIEW,
            )
        ]
    return []


@dose_rule("course", ("response-unknown", "response-partial", "no-response"), ("course.stop_source",))
def response_assessment(ctx: DoseContext) -> list[Finding]:
    """After the assessment cycle count (UK, Spain, label: 3; MD Anderson: 2) treatment continues only
    after CR/CRi (MD Anderson: CR/CRi/CRp; PR: the investigator decides)."""
    completed = _completed(ctx)
    co = ctx.spec.course
    if completed is None or ctx.timeline is None or completed < co.stop_without_response_after:
        return []
    if co.max_cycles is not None and completed >= co.max_cycles:
        return []  # the course is complete anyway
    responses = responses_between(ctx.record, ctx.timeline.first_dose, ctx.as_of, ctx.accept_preliminary)
    if any(r.coded in co.stop_responses for r in responses):
        return []
    evidence = tuple(r.ref for r in responses)
    recorded = ", ".join(sorted({r.coded or "" for r in responses}))
    if not responses:
        return [
            finding(
                "response-unknown",
                f"{completed} cycles given and no response assessment recorded: the source stops "
                f"treatment without {'/'.join(co.stop_responses)}",
                co.stop_source,
                effect=Action.INSUFFICIENT_DATA,
            )
        ]
    if any(r.coded in co.review_responses for r in responses):
        return [
            finding(
                "response-partial",
                f"responses after {completed} cycles: {recorded}; continuing needs the investigator's "
                "decision",
                co.stop_source,
                evidence,
                effect=Action.REVIEW,
            )
        ]
    return [
        finding(
            "no-response",
            f"no {'/'.join(co.stop_responses)} after {completed} cycles (recorded: {recorded})",
            co.stop_source,
            evidence,
            effect=co.stop_action,
        )
    ]


@dose_rule("course", ("interruption-too-long",), ("interruption.source",))
def interruption_too_long(ctx: DoseContext) -> list[Finding]:
    """Dosing interrupted longer than the limit (28 days): UK "consider permanently discontinuing"
    (review); MD Anderson discontinues."""
    iv = ctx.spec.interruption
    days = ctx.timeline.interruption_days if ctx.timeline else 0
    if days <= iv.beyond_days:
        return []
    what = (
        ": consider permanent discontinuation"
        if iv.beyond_action == "review"
        else ": permanent discontinuation"
    )
    return [
        finding(
            "interruption-too-long",
            f"dosing interrupted for {days} days (> {iv.beyond_days}){what}",
            iv.source,
            effect=iv.beyond_action,
        )
    ]


@dose_rule("hsct", ("hsct", "hsct-candidacy-unknown"), ("hsct.source",))
def transplant(ctx: DoseContext) -> list[Finding]:
    """HSCT candidates after 2 cycles: UK stops in MRD-negative remission (a third cycle only for MRD
    negativity or a transplant delay); the label "may consider" a third (review); MD Anderson gives
    the fewest cycles that reach CR/CRi/CRp; Spain's self-contradictory wording: review except where
    both readings stop. Remission is the current state (a later relapse or PD ends it)."""
    completed = _completed(ctx)
    hs = ctx.spec.hsct
    if completed is None or ctx.timeline is None or completed < hs.cycles:
        return []
    if ctx.spec.course.max_cycles is not None and completed >= ctx.spec.course.max_cycles:
        return []  # the course is complete anyway
    candidate, cand_evidence = hsct_candidate(ctx.record, ctx.as_of, ctx.accept_preliminary)
    if candidate is False:
        return []
    first = ctx.timeline.first_dose
    state = remission_on(ctx.record, REMISSION, first, ctx.as_of, ctx.accept_preliminary, ctx.as_of)
    in_remission = state.remission is True
    in_cr = in_remission and state.label == "CR"
    mrd, mrd_ev = mrd_negative(ctx.record, ctx.spec, first, ctx.as_of, ctx.accept_preliminary)
    evidence = state.evidence + mrd_ev + cand_evidence
    action: Action | None
    if state.remission is None and state.problem:
        action, why = Action.INSUFFICIENT_DATA, f"HSCT candidate after {completed} cycles: {state.problem}"
    elif completed > hs.cycles and hs.third_cycle != "fewest-to-remission":
        if not in_remission:
            return []  # no remission: the course rules decide, not the transplant plan
        action, why = Action.COMPLETE, f"{completed} cycles given to an HSCT candidate in remission: proceed"
    elif hs.third_cycle == "fewest-to-remission":
        if in_remission:
            action, why = Action.COMPLETE, f"HSCT candidate in {state.text()}: proceed to transplant"
        else:
            action, why = None, "HSCT candidate not yet in CR/CRi/CRp: cycles continue to the fewest needed"
    elif hs.third_cycle == "uk":
        if in_remission and mrd is True:
            action, why = (
                Action.COMPLETE,
                "HSCT candidate in complete remission with MRD negativity after 2 cycles",
            )
        elif in_remission and mrd is None:
            action, why = (
                Action.INSUFFICIENT_DATA,
                "HSCT candidate in remission, MRD status unknown: a third cycle is given only to reach "
                "MRD negativity",
            )
        else:
            action, why = (
                None,
                "HSCT candidate without MRD-negative complete remission: a third cycle may be given to "
                "achieve MRD negativity (or while transplant is delayed)",
            )
    elif hs.third_cycle == "may-consider":
        if in_remission and mrd is True:
            action, why = Action.COMPLETE, "HSCT candidate with CR/CRi and MRD negativity after 2 cycles"
        else:
            action, why = (
                Action.REVIEW,
                "HSCT candidate without CR/CRi and MRD negativity after 2 cycles: a third cycle may be "
                "considered",
            )
    elif in_cr and mrd is True:  # es-literal
        action, why = Action.COMPLETE, "HSCT candidate in CR with MRD negativity after 2 cycles"
    else:
        action, why = (
            Action.REVIEW,
            "HSCT candidate after 2 cycles: the protocol's wording on a third cycle reads two ways "
            "(see es-valtermed.dosing.yaml); prescriber decides",
        )
    if candidate is None:
        if action in (Action.COMPLETE, Action.REVIEW, Action.INSUFFICIENT_DATA):
            return [
                finding(
                    "hsct-candidacy-unknown",
                    f"HSCT candidacy not recorded, and it changes the plan after {hs.cycles} cycles "
                    f"({why} if a candidate)",
                    hs.source,
                    evidence,
                    effect=Action.INSUFFICIENT_DATA,
                )
            ]
        return []
    return [
        finding(
            "hsct",
            why,
            hs.source,
            evidence,
            effect=action,
            severity=Severity.INFO if action is None else None,
        )
    ]
