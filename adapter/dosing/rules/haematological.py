"""Blood counts before a dose: the day-1 hold from cycle 2 (neutrophils ≥ 1.0 and platelets ≥ 50 ×
10⁹/L, or recovery to the previous cycle's baseline when the pre-treatment counts were low), no hold
within a cycle, a count required before every dose where the source asks for one, and the UK's
standard limits outside which the prescriber authorises the dose."""

from __future__ import annotations

from decimal import Decimal

from adapter.checks.select import latest
from adapter.checks.values import within_bounds
from adapter.domain import Reading
from adapter.dosing.context import DoseContext
from adapter.dosing.findings import Action, Finding, finding
from adapter.dosing.rules import dose_rule

COUNTS = ("neutrophils", "platelets")


def _day1_hold_applies(ctx: DoseContext) -> bool:
    return ctx.next.day == 1 and ctx.next.cycle >= ctx.spec.haematological.from_cycle


def _counts(ctx: DoseContext) -> tuple[dict[str, Reading], list[Finding]]:
    """Today's counts, or the finding that they are missing, stale or unusable."""
    now: dict[str, Reading] = {}
    for concept in COUNTS:
        sel = ctx.select(concept, ctx.counts_max_age, concept)
        if sel.reading is None or sel.reading.number is None:
            return {}, [
                finding(
                    "counts-unknown",
                    str(sel.problem or f"{concept} reported without a number"),
                    ctx.spec.haematological.counts_before_source or ctx.freshness_source,
                    sel.evidence,
                    effect=Action.INSUFFICIENT_DATA,
                )
            ]
        now[concept] = sel.reading
    return now, []


def _shown(now: dict[str, Reading]) -> str:
    return ", ".join(f"{c} {r.text()} ({r.day})" for c, r in now.items())


def _low(
    now: dict[str, Reading], mins: dict[str, Decimal], source: str
) -> tuple[dict[str, Reading], list[Finding]]:
    """The counts below their minimum, or the finding that a count reported as a bound (``>0.5``)
    cannot tell: a bound decides only when the whole of it is on one side of the limit."""
    low: dict[str, Reading] = {}
    undecided = []
    for c, r in now.items():
        verdict = within_bounds(r.bounds, float(mins[c]), None, True, True)
        if verdict is None:
            undecided.append(f"{c} {r.text()} ({r.day}) against ≥ {mins[c]}")
        elif verdict is False:
            low[c] = r
    if undecided:
        return low, [
            finding(
                "counts-unknown",
                "; ".join(undecided) + ": the reported bound cannot tell",
                source,
                tuple(r.ref for r in now.values()),
                effect=Action.INSUFFICIENT_DATA,
            )
        ]
    return low, []


@dose_rule(
    "haematological",
    (
        "counts-unknown",
        "counts-hold",
        "counts-baseline-unknown",
        "counts-recovered-to-baseline",
        "counts-disease-related",
        "counts-within-limits",
    ),
    ("haematological.source", "freshness.source"),
)
def day_1_counts(ctx: DoseContext) -> list[Finding]:
    """Day 1 of cycles 2+: neutrophils and platelets at the thresholds when the pre-treatment counts
    met them (withhold until recovery); otherwise recovery to the previous cycle's baseline, or the
    prescriber's judgement that a cytopenia is due to the leukaemia with stable marrow."""
    if not ctx.next.due_now or not _day1_hold_applies(ctx) or ctx.timeline is None:
        return []
    hm = ctx.spec.haematological
    mins = {"neutrophils": hm.neutrophils_min, "platelets": hm.platelets_min}
    now, missing = _counts(ctx)
    if missing:
        return missing
    low, undecided = _low(now, mins, hm.source)
    if undecided:
        return undecided
    evidence = tuple(r.ref for r in now.values())
    shown = _shown(now)
    if not low:
        return [
            finding(
                "counts-within-limits",
                f"{shown}: at the day-1 thresholds",
                hm.source,
                evidence,
                check="blood counts",
            )
        ]
    first = ctx.timeline.first_dose
    pre = {c: latest(ctx.record, c, first, None, ctx.accept_preliminary).reading for c in mins}
    if any(pre[c] is None for c in low):
        return [
            finding(
                "counts-baseline-unknown",
                f"{shown}: below the day-1 thresholds and the pre-treatment counts are not recorded",
                hm.source,
                evidence,
                effect=Action.REVIEW,
            )
        ]
    pre_low = {c for c, r in pre.items() if r is not None and r.bounds[1] < float(mins[c])}
    if not pre_low:
        return [
            finding(
                "counts-hold",
                f"{shown}: below neutrophils ≥ {hm.neutrophils_min} / platelets ≥ {hm.platelets_min} ×10⁹/L "
                "at the start of a cycle: withhold until recovery",
                hm.source,
                evidence,
                effect=hm.on_hold,
            )
        ]
    prev_day1 = ctx.timeline.current.day1
    baseline = {c: latest(ctx.record, c, prev_day1, None, ctx.accept_preliminary).reading for c in mins}
    recovered = all((b := baseline[c]) is not None and now[c].bounds[0] >= b.bounds[1] for c in mins)
    if recovered:
        return [
            finding(
                "counts-recovered-to-baseline",
                f"{shown}: low, but at least the baseline of the previous cycle (pre-treatment counts "
                "were low)",
                hm.source,
                evidence + tuple(b.ref for b in baseline.values() if b is not None),
            )
        ]
    return [
        finding(
            "counts-disease-related",
            f"{shown}: below thresholds and below the previous cycle's baseline; pre-treatment counts were "
            "low. Dosing may go ahead only if the latest marrow shows stable or improved disease and the "
            "cytopenia is judged due to leukaemia",
            hm.source,
            evidence,
            effect=Action.REVIEW if hm.on_hold == "delay" else hm.on_hold,
        )
    ]


@dose_rule(
    "haematological",
    (
        "no-count-hold-within-cycle",
        "counts-unknown",
        "counts-checked",
        "counts-within-limits",
        "counts-outside-limits",
    ),
    (
        "haematological.no_hold_within_cycle_source",
        "haematological.counts_before_source",
        "haematological.every_dose_limits.source",
    ),
)
def counts_before_every_dose(ctx: DoseContext) -> list[Finding]:
    """Where the source asks for a blood count before every dose, a missing or stale one means no
    dose. Within a cycle (and on cycle 1 day 1) low counts do not hold the dose; the UK's standard
    limits still need the prescriber's authorisation (review, with the doses listed)."""
    if not ctx.next.due_now or _day1_hold_applies(ctx):
        return []
    hm = ctx.spec.haematological
    out: list[Finding] = []
    if ctx.next.day != 1:
        out.append(
            finding(
                "no-count-hold-within-cycle",
                f"day {ctx.next.day}: no hold for neutropenia or thrombocytopenia within a cycle",
                hm.no_hold_within_cycle_source,
            )
        )
    if hm.counts_before != "every-dose":
        return out
    now, missing = _counts(ctx)
    if missing:
        return out + missing
    limits = hm.every_dose_limits
    evidence = tuple(r.ref for r in now.values())
    if limits is None:
        source = hm.counts_before_source or hm.source
        checked = f"{_shown(now)}: recorded before the dose"
        return [*out, finding("counts-checked", checked, source, evidence, check="blood counts")]
    mins = {"neutrophils": limits.neutrophils_min, "platelets": limits.platelets_min}
    low, undecided = _low(now, mins, limits.source)
    if undecided:
        return out + undecided
    if not low:
        out.append(
            finding(
                "counts-within-limits",
                f"{_shown(now)}: within the standard limits",
                limits.source,
                evidence,
                check="blood counts",
            )
        )
    else:
        out.append(
            finding(
                "counts-outside-limits",
                f"{_shown(now)}: outside the standard limits (neutrophils ≥ {limits.neutrophils_min}, "
                f"platelets ≥ {limits.platelets_min} ×10⁹/L): the dose is not held, but the prescriber must "
                "authorise it",
                limits.source,
                tuple(now[c].ref for c in low),
                effect=limits.on_fail,
            )
        )
    return out
