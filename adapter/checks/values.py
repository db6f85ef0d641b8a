"""Checks that eligibility criteria and the dose engine's pre-dose checks both use.

- ``CheckContext.select``: the latest usable value of a concept (adapter.checks.select);
- limits on a value that may be a bound (``<3``): met only if the whole interval meets them;
- ULN multiples, with the exceptions the sources allow (Gilbert's syndrome, tumour-related bilirubin);
- renal function: measured creatinine clearance, else Cockcroft–Gault, or creatinine ≤ k × ULN.

Pure: no file, clock or network.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from adapter.checks.outcome import Outcome, Status, combine_all
from adapter.checks.select import Selection, latest
from adapter.domain import ConditionFact, DateRange, PatientRecord, Reading

MET, NOT_MET, UNKNOWN, REVIEW = Status.MET, Status.NOT_MET, Status.UNKNOWN, Status.REVIEW
#: An age above this (a birth date more than 120 years before the as-of date) is not a patient's
#: age but an entry error (the oldest verified human lived 122 years): age is unknown.
MAX_PLAUSIBLE_AGE_YEARS = 120


@dataclass(frozen=True, slots=True)
class CheckContext:
    """The record, the day the check is for, and how values may be chosen (status, freshness).

    ``now`` is the evaluation's as-of date when the check is for an earlier day (the at-start view
    of docs/criteria.md judges as of the first dose): a fact dated after ``as_of`` but on or before
    ``now`` is a later fact, left out; one dated after ``now`` is impossible (dated in the future)
    and is never silently left out (``in_future``).
    """

    record: PatientRecord
    as_of: date
    accept_preliminary: bool = False
    windows: dict[str, int] = field(default_factory=dict)  # concept -> max age in days
    now: date | None = None

    @property
    def today(self) -> date:
        """The evaluation's as-of date: anything dated after it is dated in the future."""
        return self.now or self.as_of

    def in_future(self, when: DateRange | None) -> bool:
        """Dated after the evaluation's as-of date: an impossible date for a fact."""
        return when is not None and when.earliest > self.today

    def later(self, when: DateRange | None) -> bool:
        """Dated after the day judged but not in the future: not yet part of the record then."""
        return when is not None and self.as_of < when.earliest <= self.today

    def select(self, concept: str, max_age_days: int | None = None, label: str | None = None) -> Selection:
        window = max_age_days if max_age_days is not None else self.windows.get(concept)
        return latest(self.record, concept, self.as_of, window, self.accept_preliminary, label)


def label_of(concept: str) -> str:
    return concept.replace("-", " ")


def within_bounds(
    bounds: tuple[float, float], lo: float | None, hi: float | None, lo_incl: bool, hi_incl: bool
) -> bool | None:
    """True if the whole interval satisfies the limits, False if none of it does, None if it straddles."""

    def ok(x: float) -> bool:
        if lo is not None and (x < lo or (x == lo and not lo_incl)):
            return False
        return not (hi is not None and (x > hi or (x == hi and not hi_incl)))

    a, b = bounds
    if ok(a) and ok(b):
        return True
    reaches_lo = lo is None or b > lo or (b == lo and lo_incl)
    reaches_hi = hi is None or a < hi or (a == hi and hi_incl)
    if not (reaches_lo and reaches_hi):
        return False
    return None


def judge(
    verdict: bool | None, fail: Status, text: str, evidence: tuple[str, ...], reading: Reading | None = None
) -> Outcome:
    """An Outcome from a within_bounds verdict: met, the given failure status, or unknown if undecided.

    When ``reading`` is a bound (``<0.2``) that decides, the reason says so: the whole interval the
    true value lies in is on one side of the limit."""
    if verdict is None:
        return Outcome(UNKNOWN, text + ": the reported bound cannot tell", evidence)
    if reading is not None and reading.comparator:
        text += ": decided by the reported bound (the whole interval lies on one side of the limit)"
    return Outcome(MET if verdict else fail, text, evidence)


def limits_text(lo: float | None, hi: float | None, lo_incl: bool, hi_incl: bool, unit: str = "") -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'≥' if lo_incl else '>'} {lo:g}{unit}")
    if hi is not None:
        parts.append(f"{'≤' if hi_incl else '<'} {hi:g}{unit}")
    return " and ".join(parts)


def age_years(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def birth_date_problem(ctx: CheckContext) -> str | None:
    """Why the patient's age on ``ctx.as_of`` cannot be known: no birth date, one after the as-of
    date, or one that makes the patient older than MAX_PLAUSIBLE_AGE_YEARS (an entry error)."""
    rec = ctx.record
    born = rec.birth_date
    if born is None:
        return rec.birth_problem or "birth date not recorded"
    if born.earliest > ctx.as_of:
        return f"birth date {born} is after the as-of date (age < 0)"
    oldest = age_years(born.earliest, ctx.as_of)
    if oldest > MAX_PLAUSIBLE_AGE_YEARS:
        return (
            f"birth date {born} gives an age of {oldest}, above {MAX_PLAUSIBLE_AGE_YEARS}: "
            "implausible (an entry error), so the age is unknown"
        )
    return None


def conditions_of(ctx: CheckContext, concepts: Iterable[str], history: bool) -> list[ConditionFact]:
    """The conditions of ``concepts`` (active ones, or with ``history`` all) known on the day judged.

    A condition whose onset is after that day but not in the future is left out (the record as it
    was then). One whose onset is in the future is kept: the date is wrong, not the diagnosis, so a
    recorded disease still counts as recorded (closed world); rules that need its timing ask
    ``ctx.in_future``."""
    out = []
    for concept in concepts:
        for fact in ctx.record.conditions.get(concept, ()):
            if ctx.later(fact.onset):
                continue
            if history or fact.active:
                out.append(fact)
    return out


def conditions_text(ctx: CheckContext, facts: Iterable[ConditionFact]) -> str:
    """Like ``facts_text``, with what is wrong with each record: a status that cannot be read, an
    onset in the future."""
    parts = []
    for f in facts:
        notes = [f.status_problem] if f.status_problem else []
        if ctx.in_future(f.onset):
            notes.append(f"onset {f.onset} is after the as-of date {ctx.today}")
        parts.append(f"{f.display or f.concept} ({f.ref}{'; ' + '; '.join(notes) if notes else ''})")
    return ", ".join(parts)


def facts_text(facts: Iterable[Any]) -> str:
    return ", ".join(f"{f.display or f.concept} ({f.ref})" for f in facts)


def uln_ratio(
    ctx: CheckContext, concept: str, max_ratio: float, max_age_days: int | None
) -> tuple[Outcome, Reading | None]:
    label = label_of(concept)
    sel = ctx.select(concept, max_age_days, label)
    r = sel.reading
    if r is None:
        return Outcome(UNKNOWN, str(sel.problem), sel.evidence), None
    if r.number is None or r.uln is None:
        why = r.uln_problem or "no upper limit of normal (no referenceRange.high and no default)"
        return Outcome(UNKNOWN, f"{label} {r.text()} on {r.day}: {why}", sel.evidence), None
    lo, hi = r.bounds
    ratio_bounds = (lo / r.uln, hi / r.uln)
    uln_note = "" if r.uln_source == "referenceRange" else " default"
    text = (
        f"{label} {r.text()} on {r.day} = {r.comparator or ''}{r.number / r.uln:.2f}×ULN "
        f"(ULN {r.uln:.4g}{uln_note}; limit ≤ {max_ratio:g}×ULN)"
    )
    verdict = within_bounds(ratio_bounds, None, max_ratio, True, True)
    return judge(verdict, NOT_MET, text, sel.evidence, r), r


def within_uln_multiple(
    ctx: CheckContext,
    concepts: list[str],
    max_ratio: float,
    on_fail: str = "not-met",
    gilbert_exempt: bool = False,
    tumour_max_ratio: float | None = None,
    max_age_days: int | None = None,
) -> Outcome:
    """Each lab ≤ max_ratio × its ULN. Exceptions the sources allow become ``review``."""
    outcomes = []
    for concept in concepts:
        outcome, reading = uln_ratio(ctx, concept, max_ratio, max_age_days)
        if outcome.status is NOT_MET:
            gilbert = conditions_of(ctx, ["gilbert-syndrome"], history=True) if gilbert_exempt else []
            assert reading is not None and reading.uln is not None
            if gilbert:
                outcome = Outcome(
                    REVIEW,
                    outcome.reason + f"; documented Gilbert's syndrome ({facts_text(gilbert)}) "
                    "exempts bilirubin: confirm the rise is due to it",
                    outcome.evidence + tuple(f.ref for f in gilbert),
                )
            elif (
                tumour_max_ratio is not None
                and reading.number is not None
                and reading.bounds[1] / reading.uln <= tumour_max_ratio
            ):
                outcome = Outcome(
                    REVIEW,
                    outcome.reason + f"; allowed up to {tumour_max_ratio:g}×ULN if due to "
                    "leukaemia: confirm with the investigator",
                    outcome.evidence,
                )
            else:
                outcome = Outcome(Status(on_fail), outcome.reason, outcome.evidence)
        outcomes.append(outcome)
    return combine_all(outcomes, "within limits")


def cockcroft_gault(ctx: CheckContext, creatinine: Reading, max_age_days: int | None) -> Outcome | float:
    rec = ctx.record
    weight = ctx.select("body-weight", max_age_days, "body weight")
    if weight.reading is None or weight.reading.number is None:
        return Outcome(
            UNKNOWN,
            f"creatinine clearance not recorded and cannot be estimated: {weight.problem}",
            weight.evidence,
        )
    if weight.reading.comparator is not None:
        return Outcome(
            UNKNOWN,
            f"creatinine clearance not recorded and cannot be estimated: body weight reported as a bound "
            f"({weight.reading.text()})",
            weight.evidence,
        )
    born_problem = birth_date_problem(ctx)
    if born_problem is not None or rec.birth_date is None or not rec.birth_date.precise:
        why = born_problem or "birth date not precise to the day"
        return Outcome(UNKNOWN, f"creatinine clearance not recorded and cannot be estimated: {why}", ())
    if rec.gender not in ("male", "female"):
        return Outcome(
            UNKNOWN,
            "creatinine clearance not recorded and cannot be estimated: sex not recorded as male or female",
            (rec.ref,),
        )
    if creatinine.comparator is not None or creatinine.number is None:
        return Outcome(
            UNKNOWN, "creatinine reported as a bound; clearance cannot be estimated", (creatinine.ref,)
        )
    age = age_years(rec.birth_date.earliest, ctx.as_of)
    scr_mg_dl = creatinine.number / 88.4  # umol/L -> mg/dL
    crcl = (140 - age) * weight.reading.number / (72 * scr_mg_dl)
    return crcl * (0.85 if rec.gender == "female" else 1.0)


def renal_function(
    ctx: CheckContext,
    crcl_min: float,
    crcl_inclusive: bool,
    creatinine_max_uln: float | None = None,
    on_fail: str = "not-met",
    max_age_days: int | None = None,
) -> Outcome:
    """CrCl above a limit (measured, else Cockcroft–Gault from creatinine), or creatinine ≤ k×ULN."""
    options: list[Outcome] = []
    need = limits_text(crcl_min, None, crcl_inclusive, True, " mL/min")
    measured = ctx.select("creatinine-clearance", max_age_days, "creatinine clearance")
    creat = ctx.select("creatinine", max_age_days, "creatinine")
    if measured.reading is not None and measured.reading.number is not None:
        r = measured.reading
        verdict = within_bounds(r.bounds, crcl_min, None, crcl_inclusive, True)
        text = f"creatinine clearance {r.text()} on {r.day} (required {need})"
        options.append(judge(verdict, NOT_MET, text, measured.evidence, r))
    elif creat.reading is not None:
        est = cockcroft_gault(ctx, creat.reading, max_age_days)
        if isinstance(est, Outcome):
            options.append(est)
        else:
            text = (
                f"creatinine clearance {est:.0f} mL/min estimated by Cockcroft–Gault from creatinine "
                f"{creat.reading.text()} on {creat.reading.day} (required {need})"
            )
            ok = est >= crcl_min if crcl_inclusive else est > crcl_min
            options.append(Outcome(MET if ok else NOT_MET, text, creat.evidence))
    else:
        options.append(
            Outcome(UNKNOWN, f"{measured.problem}; {creat.problem}", measured.evidence + creat.evidence)
        )
    if creatinine_max_uln is not None:
        outcome, _ = uln_ratio(ctx, "creatinine", creatinine_max_uln, max_age_days)
        options.append(outcome)
    evidence = tuple(e for o in options for e in o.evidence)
    met = [o for o in options if o.status is MET]
    if met:
        return Outcome(MET, "; ".join(o.reason for o in met), evidence)
    if any(o.status is UNKNOWN for o in options):
        return Outcome(UNKNOWN, "; ".join(o.reason for o in options), evidence)
    return Outcome(Status(on_fail), "; ".join(o.reason for o in options), evidence)
