"""Rule functions. Each takes the patient's record and its parameters from the variant's YAML
and returns an Outcome with a reason and the evidence it used. No rule reads a file, a clock
or the network; the as-of date comes in the context.

Open and closed world (documented in docs/criteria.md):
- a *measurement or test* the protocol needs that is not recorded is ``unknown`` (open world);
- a *diagnosis*, procedure, allergy or medication that is not recorded counts as absent
  (closed world), so an exclusion on it is ``met`` when nothing is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

from adapter.checks.outcome import Outcome, Status
from adapter.checks.select import months_before
from adapter.checks.values import (
    CheckContext,
    age_years,
    birth_date_problem,
    conditions_of,
    conditions_text,
    facts_text,
    judge,
    label_of,
    limits_text,
    renal_function,
    within_bounds,
    within_uln_multiple,
)
from adapter.domain import UNREADABLE_STATUS, ConditionFact, DateRange, Exposure, ProcedureFact

MET, NOT_MET, UNKNOWN, REVIEW = Status.MET, Status.NOT_MET, Status.UNKNOWN, Status.REVIEW

#: eligibility criteria read the record through the shared check context
RuleContext = CheckContext

Rule = Callable[..., Outcome]
RULES: dict[str, Rule] = {}


def rule(fn: Rule) -> Rule:
    RULES[fn.__name__] = fn
    return fn


rule(within_uln_multiple)
rule(renal_function)


def _status(name: str) -> Status:
    return Status(name)


# -- demographics ---------------------------------------------------------------------------
@rule
def age_at_least(ctx: RuleContext, years: int) -> Outcome:
    rec = ctx.record
    problem = birth_date_problem(ctx)
    if problem is not None or rec.birth_date is None:
        return Outcome(UNKNOWN, problem or "birth date not recorded", (rec.ref,))
    youngest = age_years(rec.birth_date.latest, ctx.as_of)
    oldest = age_years(rec.birth_date.earliest, ctx.as_of)
    if youngest >= years:
        return Outcome(MET, f"age {youngest} (born {rec.birth_date}) ≥ {years}", (rec.ref,))
    if oldest < years:
        return Outcome(NOT_MET, f"age {oldest} (born {rec.birth_date}) < {years}", (rec.ref,))
    return Outcome(
        UNKNOWN, f"birth date {rec.birth_date} is not precise enough to tell age ≥ {years}", (rec.ref,)
    )


@rule
def alive(ctx: RuleContext) -> Outcome:
    """Not recorded as deceased (docs/criteria.md §Deceased patients): Patient.deceasedBoolean true,
    or a deceasedDateTime on or before the as-of date, is not met; a deceasedDateTime after the
    as-of date is implausible (unknown)."""
    rec = ctx.record
    evidence = (rec.ref,)
    if rec.deceased_problem:
        return Outcome(
            UNKNOWN, f"whether the patient is alive cannot be read: {rec.deceased_problem}", evidence
        )
    if not rec.deceased:
        return Outcome(MET, "not recorded as deceased", evidence)
    died = rec.deceased_on
    if died is None:
        return Outcome(NOT_MET, "recorded as deceased (Patient.deceasedBoolean true)", evidence)
    if died.latest <= ctx.as_of:
        return Outcome(NOT_MET, f"recorded as deceased on {died} (Patient.deceasedDateTime)", evidence)
    if died.earliest > ctx.as_of:
        return Outcome(
            UNKNOWN,
            f"recorded as deceased on {died}, after the as-of date {ctx.as_of}: the date is implausible; "
            "correct the record",
            evidence,
        )
    return Outcome(
        UNKNOWN,
        f"recorded as deceased on {died}, not precise enough to tell whether before the as-of date "
        f"{ctx.as_of}; correct the record",
        evidence,
    )


# -- diagnosis and disease --------------------------------------------------------------------
def _usable(ctx: RuleContext, f: ConditionFact) -> bool:
    """A condition that may stand as evidence for a criterion: confirmed, its status readable and
    its onset not in the future."""
    return f.confirmed and f.status_problem is None and not ctx.in_future(f.onset)


@rule
def diagnosis_present(ctx: RuleContext, concepts: list[str], label: str) -> Outcome:
    facts = conditions_of(ctx, concepts, history=True)
    confirmed = [f for f in facts if _usable(ctx, f)]
    if confirmed:
        return Outcome(MET, f"{label} recorded: {facts_text(confirmed)}", tuple(f.ref for f in confirmed))
    if facts:
        return Outcome(
            REVIEW,
            f"{label} recorded but not confirmed, with a status that cannot be read or an onset in the "
            f"future: {conditions_text(ctx, facts)}",
            tuple(f.ref for f in facts),
        )
    return Outcome(NOT_MET, f"no {label} diagnosis recorded", ())


@rule
def relapsed_or_refractory(ctx: RuleContext, relapse_conditions: list[str], diagnosis: list[str]) -> Outcome:
    sel = ctx.select("disease-status", label="disease status")
    if sel.reading is not None:
        value = sel.reading.coded
        if value in ("relapsed", "refractory"):
            return Outcome(MET, f"disease status {value} on {sel.reading.day}", sel.evidence)
        return Outcome(NOT_MET, f"disease status is {value} on {sel.reading.day}", sel.evidence)
    if sel.evidence:  # a disease status is recorded but unusable: never fall back to older facts
        return Outcome(UNKNOWN, str(sel.problem), sel.evidence)
    recorded = conditions_of(ctx, relapse_conditions, history=False)
    recorded += [
        f
        for f in conditions_of(ctx, diagnosis, history=False)
        if f.clinical_status in ("relapse", "recurrence")
    ]
    relapse = [f for f in recorded if _usable(ctx, f)]
    if relapse:
        return Outcome(MET, f"relapse recorded: {facts_text(relapse)}", tuple(f.ref for f in relapse))
    unclear = [f for f in recorded if f.confirmed or f.status_problem]
    if unclear:  # a relapse record that cannot stand as evidence is never read as "no relapse data"
        return Outcome(
            UNKNOWN,
            f"relapse recorded but it cannot be used: {conditions_text(ctx, unclear)}; {sel.problem}",
            tuple(f.ref for f in unclear) + sel.evidence,
        )
    return Outcome(UNKNOWN, f"relapsed/refractory status not recorded ({sel.problem})", sel.evidence)


@rule
def cd22_positive(ctx: RuleContext, min_percent: float | None = None) -> Outcome:
    sel = ctx.select("cd22-positive-blasts-percent", label="CD22 on blasts")
    r = sel.reading
    if r is None:
        return Outcome(UNKNOWN, str(sel.problem), sel.evidence)
    if r.number is not None:
        lo, incl = (min_percent, True) if min_percent is not None else (0.0, False)
        verdict = within_bounds(r.bounds, lo, None, incl, True)
        need = limits_text(lo, None, incl, True, "%")
        text = f"CD22 on {r.text()} of blasts on {r.day} (required {need})"
        return judge(verdict, NOT_MET, text, sel.evidence, r)
    if r.coded == "negative":
        return Outcome(NOT_MET, f"CD22 negative on {r.day}", sel.evidence)
    if min_percent is not None:
        return Outcome(
            UNKNOWN,
            f"CD22 reported positive on {r.day} without the percentage of blasts "
            f"(required ≥ {min_percent:g}%)",
            sel.evidence,
        )
    return Outcome(MET, f"CD22 positive on {r.day}", sel.evidence)


def _given_before(ctx: RuleContext, concept: str) -> list[Exposure]:
    """Exposures given on or before the day judged, and records of a drug given (administration,
    statement, immunization) dated in the future: an impossible date is never silently skipped
    (``_dated_in_future``). An order for a later date is a plan, not an exposure."""
    return [
        e
        for e in ctx.record.exposures.get(concept, ())
        if e.start is None or e.start.earliest <= ctx.as_of or _dated_in_future(ctx, e)
    ]


def _dated_in_future(ctx: RuleContext, e: Exposure) -> bool:
    """A record of a drug given (not an order) dated after the as-of date: impossible."""
    return e.resource_type != "MedicationRequest" and ctx.in_future(e.start)


def _future_text(ctx: RuleContext, items: list[Exposure]) -> str:
    return ", ".join(
        f"{e.display or e.concept} ({e.ref}, dated {e.start}, after the as-of date {ctx.today})"
        for e in items
    )


@rule
def ph_positive_needs_tki(ctx: RuleContext) -> Outcome:
    sel = ctx.select("philadelphia-status", label="Philadelphia chromosome status")
    if sel.reading is None:
        return Outcome(UNKNOWN, str(sel.problem), sel.evidence)
    if sel.reading.coded == "negative":
        return Outcome(
            MET, f"Philadelphia chromosome negative ({sel.reading.day}); no TKI needed", sel.evidence
        )
    records = _given_before(ctx, "tki")
    tkis = [e for e in records if e.status != "unknown" and not _dated_in_future(ctx, e)]
    if tkis:
        names = facts_text(tkis)
        return Outcome(
            MET, f"Ph-positive with prior TKI therapy: {names}", sel.evidence + tuple(e.ref for e in tkis)
        )
    if records:  # a TKI record whose status or date does not say whether it was given before
        return Outcome(
            UNKNOWN,
            f"Ph-positive; TKI recorded with status unknown or dated in the future: {facts_text(records)}",
            sel.evidence + tuple(e.ref for e in records),
        )
    return Outcome(NOT_MET, "Ph-positive and no tyrosine kinase inhibitor recorded", sel.evidence)


@rule
def ph_negative(ctx: RuleContext) -> Outcome:
    sel = ctx.select("philadelphia-status", label="Philadelphia chromosome status")
    if sel.reading is None:
        return Outcome(UNKNOWN, str(sel.problem), sel.evidence)
    if sel.reading.coded == "negative":
        return Outcome(MET, f"Philadelphia chromosome negative ({sel.reading.day})", sel.evidence)
    return Outcome(NOT_MET, f"Philadelphia chromosome positive ({sel.reading.day})", sel.evidence)


# -- measurements -------------------------------------------------------------------------------
@rule
def value_in_range(
    ctx: RuleContext,
    concept: str,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    on_fail: str = "not-met",
    max_age_days: int | None = None,
    label: str | None = None,
    unit_text: str = "",
) -> Outcome:
    label = label or label_of(concept)
    sel = ctx.select(concept, max_age_days, label)
    r = sel.reading
    if r is None:
        return Outcome(UNKNOWN, str(sel.problem), sel.evidence)
    if r.number is None:
        return Outcome(UNKNOWN, f"{label} is coded ({r.coded}), a number is needed", sel.evidence)
    need = limits_text(min, max, min_inclusive, max_inclusive, unit_text)
    text = f"{label} {r.text()} on {r.day} (required {need})"
    verdict = within_bounds(r.bounds, min, max, min_inclusive, max_inclusive)
    return judge(verdict, _status(on_fail), text, sel.evidence, r)


@rule
def value_is(
    ctx: RuleContext,
    concept: str,
    expected: list[str],
    label: str | None = None,
    on_fail: str = "not-met",
    max_age_days: int | None = None,
) -> Outcome:
    label = label or label_of(concept)
    sel = ctx.select(concept, max_age_days, label)
    if sel.reading is None:
        return Outcome(UNKNOWN, str(sel.problem), sel.evidence)
    value = sel.reading.coded
    text = f"{label}: {value} on {sel.reading.day}"
    return Outcome(MET if value in expected else _status(on_fail), text, sel.evidence)


@rule
def recorded(
    ctx: RuleContext, concept: str, label: str | None = None, max_age_days: int | None = None
) -> Outcome:
    label = label or label_of(concept)
    sel = ctx.select(concept, max_age_days, label)
    if sel.reading is None:
        return Outcome(UNKNOWN, str(sel.problem), sel.evidence)
    if sel.reading.comparator is not None:  # a bound is not the measurement the source asks for
        return Outcome(
            UNKNOWN,
            f"{label} reported only as a bound ({sel.reading.text()} on {sel.reading.day}); "
            "a measured value is needed",
            sel.evidence,
        )
    return Outcome(MET, f"{label} {sel.reading.text()} recorded on {sel.reading.day}", sel.evidence)


# -- history: conditions, procedures, medicines, allergies ------------------------------------
@rule
def condition_absent(
    ctx: RuleContext,
    concepts: list[str],
    label: str,
    history: bool = False,
    on_present: str = "not-met",
    only_severe_or_active: bool = False,
    serology: str | None = None,
    serology_required: bool = False,
    serology_positive: str | None = None,
) -> Outcome:
    """No (active, or with ``history`` ever) condition; optionally a negative serology too.

    Closed world: a recorded condition counts as present even when its onset is dated in the future
    (the date is wrong, not the disease). One whose clinical status cannot be read is possibly
    active: with ``history`` it counts like any record, otherwise it is for review, like an
    unconfirmed one (docs/criteria.md §Conditions)."""
    facts = conditions_of(ctx, concepts, history)
    evidence = tuple(f.ref for f in facts)
    confirmed = [f for f in facts if f.confirmed and (history or f.clinical_status != UNREADABLE_STATUS)]
    if only_severe_or_active:
        # an unreadable clinical status is possibly active, not shown to be: review unless severe
        blocking = [
            f
            for f in confirmed
            if (f.active and f.clinical_status != UNREADABLE_STATUS) or f.severity == "severe"
        ]
        if blocking:
            return Outcome(
                _status(on_present), f"severe or ongoing {label}: {conditions_text(ctx, blocking)}", evidence
            )
        if confirmed:
            return Outcome(
                REVIEW,
                f"prior {label} not recorded as severe or ongoing: {conditions_text(ctx, confirmed)}; "
                "confirm its severity",
                evidence,
            )
    elif confirmed:
        return Outcome(_status(on_present), f"{label} recorded: {conditions_text(ctx, confirmed)}", evidence)
    if facts:
        return Outcome(
            REVIEW,
            f"{label} recorded as unconfirmed or with a status that cannot be read: "
            f"{conditions_text(ctx, facts)}",
            evidence,
        )
    if serology is not None:
        sel = ctx.select(serology, label=f"{label} serology")
        if sel.reading is not None:
            if sel.reading.coded == "positive":
                return Outcome(
                    _status(serology_positive or on_present),
                    f"{label} serology positive on {sel.reading.day}",
                    sel.evidence,
                )
            return Outcome(MET, f"no {label} recorded; serology negative on {sel.reading.day}", sel.evidence)
        if serology_required or sel.evidence:
            # required, or recorded but unusable (it might be positive): never read as negative
            return Outcome(UNKNOWN, f"no {label} diagnosis recorded, but {sel.problem}", sel.evidence)
    scope = "ever" if history else "active"
    return Outcome(MET, f"no {label} recorded ({scope})", ())


def _cutoff(as_of: date, days: int | None, months: int | None) -> date:
    if months is not None:
        return months_before(as_of, months)
    return as_of - timedelta(days=days or 0)


def _window_text(days: int | None, months: int | None) -> str:
    return f"{months} months" if months is not None else f"{days} days"


@rule
def procedure_not_within(
    ctx: RuleContext, concept: str, label: str, months: int | None = None, days: int | None = None
) -> Outcome:
    """No procedure on or after (as-of − window): the sources say "within ≤ 4 months". One dated in
    the future is impossible: whether it was within the window cannot be told (unknown)."""
    cutoff = _cutoff(ctx.as_of, days, months)
    facts = _procedures(ctx, concept)
    window = _window_text(days, months)
    future = [p for p in facts if ctx.in_future(p.when)]
    facts = [p for p in facts if p not in future]
    undated = [p for p in facts if p.when is None]
    recent = [p for p in facts if p.when is not None and p.when.earliest >= cutoff]
    unclear = [p for p in facts if p.when is not None and p.when.earliest < cutoff <= p.when.latest]
    if recent:
        return Outcome(
            NOT_MET,
            f"{label} within {window} (on or after {cutoff}): "
            + ", ".join(f"{p.ref} on {p.when}" for p in recent),
            tuple(p.ref for p in recent),
        )
    if undated or unclear or future:
        reasons = []
        if undated or unclear:
            reasons.append(
                f"{label} recorded without a date precise enough to tell if it was within {window}: "
                + ", ".join(p.ref for p in undated + unclear)
            )
        if future:
            reasons.append(
                f"{label} dated after the as-of date {ctx.today} (an impossible date): whether it was "
                f"within {window} cannot be told: " + ", ".join(f"{p.ref} on {p.when}" for p in future)
            )
        return Outcome(UNKNOWN, "; ".join(reasons), tuple(p.ref for p in undated + unclear + future))
    if facts:
        last = max(facts, key=lambda p: p.when.latest if p.when else date.min)
        return Outcome(MET, f"last {label} on {last.when}, before {cutoff}", tuple(p.ref for p in facts))
    return Outcome(MET, f"no {label} recorded", ())


@rule
def procedure_absent(ctx: RuleContext, concept: str, label: str, on_present: str = "review") -> Outcome:
    """No procedure ever (closed world): one dated in the future still counts as recorded."""
    facts = _procedures(ctx, concept)
    if facts:
        return Outcome(
            _status(on_present),
            f"prior {label}: "
            + ", ".join(
                f"{p.ref} ({p.when}{', after the as-of date' if ctx.in_future(p.when) else ''})"
                for p in facts
            ),
            tuple(p.ref for p in facts),
        )
    return Outcome(MET, f"no {label} recorded", ())


def _procedures(ctx: RuleContext, concept: str) -> list[ProcedureFact]:
    """The procedures done on or before the day judged, and those dated in the future (kept: an
    impossible date is never silently skipped)."""
    return [p for p in ctx.record.procedures.get(concept, ()) if not ctx.later(p.when)]


def _exposure_end(e: Exposure, as_of: date) -> DateRange | None:
    if e.ongoing:
        return DateRange(as_of, as_of)
    return e.end


@rule
def medication_not_within(
    ctx: RuleContext,
    concepts: list[str],
    label: str,
    days: int | None = None,
    months: int | None = None,
    except_intrathecal: bool = False,
    on_recent: str = "not-met",
) -> Outcome:
    """No exposure ending on or after (as-of − window). Ongoing exposure counts as now."""
    cutoff = _cutoff(ctx.as_of, days, months)
    window = _window_text(days, months)
    exposures = [
        e for c in concepts for e in _given_before(ctx, c) if not (except_intrathecal and e.intrathecal)
    ]
    recent, unclear = [], []
    future = [e for e in exposures if _dated_in_future(ctx, e)]
    for e in exposures:
        end = _exposure_end(e, ctx.as_of)
        if e in future:  # given on an impossible date: when cannot be told
            continue
        if e.status == "unknown":  # may or may not have been given: never read as absent
            if end is None or end.latest >= cutoff:
                unclear.append(e)
        elif end is not None:
            if end.latest >= cutoff and end.earliest >= cutoff:
                recent.append(e)
            elif end.latest >= cutoff:
                unclear.append(e)
        elif e.start is not None and e.start.earliest >= cutoff:
            recent.append(e)
        else:
            unclear.append(e)
    if recent:
        return Outcome(
            _status(on_recent),
            f"{label} within {window} (on or after {cutoff}): {facts_text(recent)}",
            tuple(e.ref for e in recent),
        )
    if unclear or future:
        reasons = []
        if unclear:
            started = ", ".join(
                f"{e.display or e.concept} ({e.ref}, started {e.start or 'date not recorded'}"
                + (", status unknown" if e.status == "unknown" else "")
                + ")"
                for e in unclear
            )
            reasons.append(
                f"{label} with no recorded end date or status: {started}; confirm it ended before {cutoff}"
            )
        if future:
            reasons.append(
                f"{label} dated after the as-of date (an impossible date): {_future_text(ctx, future)}; "
                f"confirm when it was given"
            )
        return Outcome(REVIEW, "; ".join(reasons), tuple(e.ref for e in unclear + future))
    return Outcome(MET, f"no {label} within {window}", tuple(e.ref for e in exposures))


@rule
def medication_not_current(
    ctx: RuleContext, concepts: list[str], label: str, on_present: str = "review", advice: str = ""
) -> Outcome:
    current = [
        e
        for c in concepts
        for e in _given_before(ctx, c)
        if (end := _exposure_end(e, ctx.as_of)) is not None and end.latest >= ctx.as_of
    ]
    if current:
        future = [e for e in current if _dated_in_future(ctx, e)]
        shown = facts_text([e for e in current if e not in future])
        if future:
            shown = ", ".join(x for x in (shown, _future_text(ctx, future)) if x)
        return Outcome(
            _status(on_present),
            f"current {label}: {shown}" + (f"; {advice}" if advice else ""),
            tuple(e.ref for e in current),
        )
    return Outcome(MET, f"no current {label} recorded", ())


@rule
def allergy_absent(ctx: RuleContext, concept: str, label: str) -> Outcome:
    """No active allergy. One whose clinicalStatus cannot be read counts as active (an allergy is
    rarely outgrown); one whose verificationStatus cannot be read is for review, like an
    unconfirmed one (docs/criteria.md §Conditions)."""
    facts = [a for a in ctx.record.allergies.get(concept, ()) if a.active]
    shown = ", ".join(
        f"{a.display or a.concept} ({a.ref}{'; ' + a.status_problem if a.status_problem else ''})"
        for a in facts
    )
    if [a for a in facts if a.confirmed]:
        return Outcome(NOT_MET, f"{label} recorded: {shown}", tuple(a.ref for a in facts))
    if facts:
        return Outcome(
            REVIEW,
            f"{label} recorded as unconfirmed or with a status that cannot be read: {shown}",
            tuple(a.ref for a in facts),
        )
    return Outcome(MET, f"no {label} recorded", ())


@rule
def not_pregnant(ctx: RuleContext, on_positive: str = "not-met", max_age_days: int | None = None) -> Outcome:
    """Latest pregnancy status or test. Required for female patients; not applicable to male ones."""
    status = ctx.select("pregnancy-status", max_age_days, "pregnancy status")
    test = ctx.select("pregnancy-test", max_age_days, "pregnancy test")
    found = [s for s in (status, test) if s.reading is not None and s.reading.coded != "unknown"]
    if found:
        s = max(found, key=lambda x: x.reading.day if x.reading else date.min)
        assert s.reading is not None
        if s.reading.coded in ("pregnant", "positive"):
            return Outcome(
                _status(on_positive), f"pregnant ({s.reading.coded} on {s.reading.day})", s.evidence
            )
        return Outcome(MET, f"not pregnant ({s.reading.coded} on {s.reading.day})", s.evidence)
    if ctx.record.gender == "male":
        return Outcome(MET, "not applicable (male patient)", (ctx.record.ref,))
    return Outcome(
        UNKNOWN,
        f"pregnancy status needed for a {ctx.record.gender or 'patient of unrecorded sex'}: "
        f"{status.problem}; {test.problem}",
        status.evidence + test.evidence + (ctx.record.ref,),
    )


@rule
def input_integrity(ctx: RuleContext) -> Outcome:
    rec = ctx.record
    if rec.integrity_problems:
        return Outcome(
            UNKNOWN,
            "some of this patient's resources cannot be used: " + "; ".join(rec.integrity_problems),
            tuple(dict.fromkeys(rec.integrity_evidence)),
        )
    return Outcome(MET, "every resource for this patient could be read", ())
