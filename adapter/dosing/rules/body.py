"""Weight, height and BSA for the dose; a weight change of more than 10%; doses given off the plan
(a lower dose given is a reduction the replay cannot explain and is never raised silently)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from adapter.checks.select import latest
from adapter.dosing.bsa import BsaResult, Formula, bsa_m2
from adapter.dosing.context import DoseContext
from adapter.dosing.findings import Action, Finding, Severity, finding
from adapter.dosing.rules import dose_rule
from adapter.dosing.spec import load_product


def weight_max_age(ctx: DoseContext) -> int:
    fr = ctx.spec.freshness
    if not ctx.started:
        return fr.first_dose_weight_max_age_days
    if fr.weight_before_cycle_days is not None and ctx.next.day == 1:
        return fr.weight_before_cycle_days
    return fr.weight_max_age_days


#: where the plausible BSA range (product.yaml ``bsa_m2``) is documented
BSA_DOC = "docs/dosing.md §Doses, rounding and preparation"


def plausible_bsa(m2: Decimal) -> str | None:
    """Why a computed BSA cannot be used for a dose: outside ``bsa_m2`` of product.yaml."""
    limits = load_product().bsa_m2
    if limits.min <= m2 <= limits.max:
        return None
    return (
        f"the computed BSA {m2} m² is outside the plausible {limits.min}–{limits.max} m²: the weight or "
        "height behind it is wrong (a unit or entry error?)"
    )


@dose_rule("body", ("bsa-unknown",), ("freshness.weight_source", BSA_DOC))
def bsa_for_dose(ctx: DoseContext, formula: Formula) -> tuple[BsaResult | None, list[Finding]]:
    """The BSA from the weight and height valid for the dose (the as-of date when doses after an
    omission are planned ahead: they are re-checked on their day). Weight and height outside their
    plausible limits (mappings/units.yaml) are unusable, and a BSA outside ``bsa_m2`` (product.yaml)
    is never used: no dose until the record is corrected."""
    fr = ctx.spec.freshness
    on = ctx.next.on if ctx.next.due_now else ctx.as_of
    w = latest(ctx.record, "body-weight", on, weight_max_age(ctx), ctx.accept_preliminary, "body weight")
    h = latest(ctx.record, "body-height", on, fr.height_max_age_days, ctx.accept_preliminary, "body height")
    problems = [p for p in (w.problem, h.problem) if p]
    wr, hr = w.reading, h.reading
    if (
        not problems
        and wr is not None
        and hr is not None
        and (wr.number is None or hr.number is None or wr.comparator or hr.comparator)
    ):
        problems.append("weight or height reported as a bound")
    if problems or wr is None or hr is None or wr.number is None or hr.number is None:
        return None, [
            finding(
                "bsa-unknown",
                "BSA cannot be calculated: " + "; ".join(problems),
                fr.weight_source,
                w.evidence + h.evidence,
                effect=Action.INSUFFICIENT_DATA,
            )
        ]
    m2 = bsa_m2(wr.number, hr.number, formula)
    implausible = plausible_bsa(m2)
    if implausible:
        return None, [
            finding(
                "bsa-unknown",
                f"BSA cannot be used: {implausible} (weight {wr.text()} on {wr.day}, height {hr.text()} on "
                f"{hr.day})",
                load_product().bsa_m2.source,
                w.evidence + h.evidence,
                effect=Action.INSUFFICIENT_DATA,
            )
        ]
    bsa = BsaResult(
        m2,
        formula,
        wr.number,
        wr.ref,
        wr.day.isoformat(),
        hr.number,
        hr.ref,
        hr.day.isoformat(),
    )
    return bsa, []


@dose_rule("body", ("weight-changed",), ("freshness.weight_source",))
def weight_change(ctx: DoseContext) -> list[Finding]:
    """The current weight differs by more than 10% from the weight before the last dose: the dose is
    recalculated with the current weight and BSA (it always is) and the change is flagged."""
    bsa = ctx.bsa
    if bsa is None or not ctx.history.doses:
        return []
    last = ctx.history.doses[-1]
    before = latest(ctx.record, "body-weight", last.day, None, ctx.accept_preliminary)
    rd = before.reading
    if rd is None or rd.number is None or rd.comparator is not None or rd.ref == bsa.weight_ref:
        return []  # no exact weight before the last dose to compare with
    change = (bsa.weight_kg - rd.number) / rd.number * 100
    limit = float(ctx.spec.freshness.weight_change_percent)
    if abs(change) <= limit:
        return []
    return [
        finding(
            "weight-changed",
            f"weight {bsa.weight_kg:g} kg on {bsa.weight_date} differs by {change:+.1f}% from "
            f"{rd.number:g} kg ({rd.day}), the weight before the last dose (> {limit:g}%): "
            "the dose is recalculated with the current weight and BSA",
            ctx.spec.freshness.weight_source,
            (bsa.weight_ref, rd.ref),
            severity=Severity.WARNING,
        )
    ]


def _bsa_on(ctx: DoseContext, day: date, formula: Formula) -> Decimal | None:
    w = latest(ctx.record, "body-weight", day, 30, ctx.accept_preliminary).reading
    h = latest(ctx.record, "body-height", day, None, ctx.accept_preliminary).reading
    if w is None or h is None or w.number is None or h.number is None or w.comparator or h.comparator:
        return None
    m2 = bsa_m2(w.number, h.number, formula)
    return None if plausible_bsa(m2) else m2


@dose_rule("body", ("lower-dose-given", "higher-dose-given"), ("no_reescalation_source", "window.source"))
def doses_off_plan(ctx: DoseContext) -> list[Finding]:
    """A dose of the last two cycles given below the plan's level for its day (by more than 10%) is a
    reduction the replay cannot explain: if it was for toxicity it must not be re-escalated, so the
    plan needs review. More than 10% above the plan is a warning."""
    bsa = ctx.bsa
    if ctx.timeline is None or bsa is None:
        return []
    s = ctx.spec
    out = []
    for cyc in ctx.timeline.cycles[-2:]:
        if (
            cyc.number > 1
            and s.later is not None
            and (cyc.response is None or cyc.response.remission is None)
        ):
            continue  # which day-1 dose applied is unknown
        for day, dose in cyc.given.items():
            nominal = next((d.mg_per_m2 for d in cyc.schedule.days if d.day == day), None)
            if nominal is None:
                continue
            if cyc.number > 1 and s.interruption.reduction == "percent" and cyc.steps >= 1:
                nominal = nominal * (s.interruption.reduction_factor or Decimal(1))
            per_m2 = dose.mg_per_m2
            if per_m2 is None and dose.mg is not None:
                then = _bsa_on(ctx, dose.day, bsa.formula) or bsa.m2
                per_m2 = dose.mg / float(then)
            if per_m2 is None:
                continue
            ratio = per_m2 / float(nominal)
            if ratio < 0.9:
                out.append(
                    finding(
                        "lower-dose-given",
                        f"cycle {cyc.number} day {day} ({dose.day}) was given at about {per_m2:.2f} mg/m², "
                        f"below the {nominal} mg/m² of the plan: if it was reduced for toxicity it must not "
                        "be re-escalated",
                        s.no_reescalation_source,
                        dose.refs,
                        effect=Action.REVIEW,
                    )
                )
            elif ratio > 1.1:
                out.append(
                    finding(
                        "higher-dose-given",
                        f"cycle {cyc.number} day {day} ({dose.day}) was given at about {per_m2:.2f} mg/m², "
                        f"more than 10% above the {nominal} mg/m² of the plan",
                        s.window.source,
                        dose.refs,
                        severity=Severity.WARNING,
                    )
                )
    return out
