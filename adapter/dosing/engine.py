"""The dose engine: composes the timeline and the rules into one action for the next dose.

Pure: PatientRecord, eligibility and as-of date in; a DosePlan out. No file, clock or network.

1. The doses given (adapter.dosing.history) are replayed into a timeline (adapter.dosing.timeline):
   cycles, days, omissions, interruptions with the toxicities that span them, reductions, and the
   position of the next dose.
2. The next dose is fixed: its cycle, day, date, toxicity steps, dose level and the response that
   decides its doses (adapter.dosing.context.NextDose).
3. The rules run in stages (adapter.dosing.rules.*): the record (unreadable dose records,
   eligibility), the stops (toxicities, course, transplant, reductions), the schedule, the pre-dose
   checks on the day of the dose (every dose, the first one included), advice, then the BSA.
4. The most binding finding decides the action (adapter.dosing.findings.PRECEDENCE). Doses are
   listed only to administer, to plan around an omission, or for a prescriber to review.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

from adapter.domain import PatientRecord
from adapter.dosing.bsa import BsaResult, Formula
from adapter.dosing.context import DoseContext, NextDose
from adapter.dosing.findings import Action, Finding, decide, finding
from adapter.dosing.history import dose_history
from adapter.dosing.plan import DosePlan, PlannedDose, level_name, treatment_json
from adapter.dosing.preparation import prepare
from adapter.dosing.rules import (
    RuleFn,
    advice,
    body,
    course,
    haematological,
    hepatic,
    history,
    reductions,
    renal,
    run,
    schedule,
    start,
    toxicity,
)
from adapter.dosing.spec import Dosing, load_dosing, load_product
from adapter.dosing.state import hsct_candidate, remission_on
from adapter.dosing.timeline import Timeline, build_timeline, days_for, level_for, schedule_for
from adapter.eligibility.results import Eligibility

#: stage 1, always: the record and eligibility
RECORD: tuple[RuleFn, ...] = (
    history.unreadable_dose_records,
    history.history_notes,
    history.doses_too_close,
    history.cycle_started_early,
    start.eligibility_before_first_dose,
    start.continuing_criteria,
)
#: stage 2, once treatment has started: what stops or holds treatment whatever the day's results
STOPS: tuple[RuleFn, ...] = (
    toxicity.vod_on_treatment,
    toxicity.infusion_reactions,
    toxicity.severe_liver_toxicity,
    toxicity.hypersensitivity,
    toxicity.graded_toxicities,
    toxicity.ungraded_toxicities,
    course.progression,
    course.course_length,
    course.response_assessment,
    course.transplant,
    course.interruption_too_long,
    reductions.toxicity_reductions,
)
#: stage 3: where the next dose falls and what decides its doses
SCHEDULE: tuple[RuleFn, ...] = (
    schedule.omitted_doses,
    schedule.not_due_yet,
    schedule.response_for_dose,
    reductions.lowest_level_reached,
    reductions.cri_platelets,
)
#: stage 4, on the day of the dose (each rule returns nothing when it is not due)
PRE_DOSE: tuple[RuleFn, ...] = (
    hepatic.liver_tests,
    renal.renal_limit,
    haematological.day_1_counts,
    haematological.counts_before_every_dose,
)
ADVICE: tuple[RuleFn, ...] = (advice.cytoreduction, advice.comedication)
#: stage 5, with the BSA
WITH_BSA: tuple[RuleFn, ...] = (body.weight_change, body.doses_off_plan)
#: actions after which the day's checks, the BSA and the doses no longer matter
STOPPING = (Action.DISCONTINUE, Action.NOT_ELIGIBLE, Action.COMPLETE)


def _first_dose(spec: Dosing, as_of: date) -> NextDose:
    return NextDose(1, 1, spec.cycle1.days, as_of, as_of, True, True, 0, 0, None, Decimal(1), None)


def _next_dose(
    record: PatientRecord, spec: Dosing, tl: Timeline, as_of: date, accept_preliminary: bool
) -> NextDose:
    pos = tl.position
    due_now = as_of >= pos.earliest
    when = as_of if due_now else pos.due
    window = (pos.earliest, pos.latest)
    iv = spec.interruption
    if pos.new_cycle:
        day1 = max(as_of, pos.earliest) if due_now else pos.due
        remission = spec.later.remission_responses if spec.later else spec.levels.remission_responses  # type: ignore[union-attr]
        response = remission_on(record, remission, tl.first_dose, day1, accept_preliminary, as_of)
        level = level_for(spec, pos.cycle, tl.steps, response)
        sched = None
        if level is not None:
            top = len(spec.levels.levels) - 1 if spec.levels else level
            sched = schedule_for(spec, pos.cycle, response, min(level, top))
        days = days_for(spec, sched, pos.cycle, tl.steps) if sched is not None else ()
        factor = (
            iv.reduction_factor
            if iv.reduction == "percent" and tl.steps >= 1 and iv.reduction_factor
            else Decimal(1)
        )
        day = days[0].day if days else 1
        return NextDose(
            pos.cycle, day, days, day1, when, due_now, True, tl.steps, level, response, factor, window
        )
    cur = tl.current
    assert pos.day is not None
    days = cur.days[cur.days.index(pos.day) :]
    factor = Decimal(1)
    if iv.reduction == "percent" and cur.steps >= 1 and cur.number > 1 and iv.reduction_factor:
        factor = iv.reduction_factor
    return NextDose(
        cur.number,
        pos.day.day,
        days,
        cur.day1,
        when,
        due_now,
        False,
        cur.steps,
        cur.level,
        cur.response,
        factor,
        window,
    )


def _doses(spec: Dosing, nxt: NextDose, bsa: BsaResult | None) -> list[PlannedDose]:
    """The doses of the cycle from the next one on: later days on their nominal dates, at least the
    minimum interval after the one before."""
    if bsa is None or not nxt.days:
        return []
    out = []
    gap = timedelta(days=spec.window.min_days_between_doses)
    when = nxt.on
    product = load_product()
    for i, d in enumerate(nxt.days):
        if i > 0:
            when = max(nxt.cycle_day1 + timedelta(days=d.day - 1), when + gap)
        mg_per_m2 = d.mg_per_m2 * nxt.factor
        prep = prepare(mg_per_m2, bsa.m2, product)
        out.append(PlannedDose(d.day, mg_per_m2, prep.mg, when, prep.vials, prep.volume_ml))
    return out


def doses_source(spec: Dosing, cycle: int) -> str:
    if cycle == 1:
        return spec.cycle1.source
    if spec.later is not None:
        return spec.later.source
    assert spec.levels is not None
    return spec.levels.levels[0].source


def _advice(ctx: DoseContext) -> list[dict[str, str]]:
    candidate = hsct_candidate(ctx.record, ctx.as_of, ctx.accept_preliminary)[0]
    return [
        {"id": a.id, "text": a.text, "source": a.source}
        for a in ctx.spec.advice
        if a.when == "always"
        or (a.when == "cycle-1" and ctx.next.cycle == 1)
        or (a.when == "hsct-candidate" and candidate is True)
    ]


def _plan(ctx: DoseContext, findings: list[Finding], doses: list[PlannedDose], stopped: bool) -> DosePlan:
    spec, nxt, tl = ctx.spec, ctx.next, ctx.timeline
    action = decide(findings)
    if action not in (Action.ADMINISTER, Action.OMIT, Action.REVIEW):
        # doses are shown to give (administer), to plan around an omission, or for a prescriber to
        # authorise (review); never for a hold, a stop or unknown data
        doses = []
    if doses and action is Action.ADMINISTER:
        findings.append(
            finding(
                "dose-calculated",
                f"{len(doses)} dose(s) of cycle {nxt.cycle} from day {nxt.day}: BSA "
                f"{ctx.bsa.m2 if ctx.bsa else '?'} m² ({ctx.bsa.formula if ctx.bsa else '?'})",
                doses_source(spec, nxt.cycle),
            )
        )
    level = None
    if not stopped:
        level = level_name(0 if nxt.cycle == 1 else (nxt.level if nxt.level is not None else nxt.steps))
    return DosePlan(
        action=action,
        cycle=nxt.cycle,
        day=nxt.day,
        dose_level=level,
        started=ctx.started,
        cycles_started=len(tl.cycles) if tl else 0,
        last_dose=tl.last_dose if tl else None,
        bsa=None if stopped else ctx.bsa,
        doses=doses,
        findings=findings,
        premedication=[{"text": p.text, "source": p.source} for p in spec.premedication],
        advice=_advice(ctx),
        product=load_product(),
        dose_date=ctx.as_of if stopped else nxt.on,
        interruption_days=tl.interruption_days if tl else 0,
        window=nxt.window,
        treatment=treatment_json(ctx.record, spec, tl, ctx.as_of, ctx.accept_preliminary),
    )


def plan_next_dose(
    record: PatientRecord,
    variant: str,
    as_of: date,
    eligibility: Eligibility,
    formula: Formula = "mosteller",
    accept_preliminary: bool = False,
    exclude: frozenset[str] = frozenset(),
) -> DosePlan:
    """The action and doses for the patient's next inotuzumab dose under ``variant``.

    ``exclude`` drops resources (by reference) from the treatment history, e.g. the order being
    checked by check-order.
    """
    spec = load_dosing(variant)
    hist = dose_history(record, as_of, exclude)
    tl = build_timeline(record, spec, hist, as_of, accept_preliminary) if hist.started else None
    nxt = _next_dose(record, spec, tl, as_of, accept_preliminary) if tl else _first_dose(spec, as_of)
    ctx = DoseContext(record, spec, as_of, accept_preliminary, hist, eligibility, tl, nxt)
    findings = run(ctx, RECORD)
    if ctx.started:
        findings += run(ctx, STOPS)
        if decide(findings) in STOPPING:
            return _plan(ctx, findings, [], stopped=True)
    findings += run(ctx, SCHEDULE) + run(ctx, PRE_DOSE) + run(ctx, ADVICE)
    bsa: BsaResult | None = None
    if nxt.due_now or (tl is not None and tl.position.omitted_now):
        # an omission plans the next doses ahead: their BSA is today's (re-checked on the day)
        bsa, missing = body.bsa_for_dose(ctx, formula)
        findings += missing
        ctx = replace(ctx, bsa=bsa)
        findings += run(ctx, WITH_BSA)
    return _plan(ctx, findings, _doses(spec, nxt, bsa), stopped=False)


__all__ = ["DosePlan", "PlannedDose", "doses_source", "plan_next_dose"]
