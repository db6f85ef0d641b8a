"""Renal function before every dose where the source sets a limit (UK: CrCl > 15 mL/min, else
prescriber authorisation; MD Anderson: ≥ 15 mL/min, else the dose is delayed)."""

from __future__ import annotations

from adapter.checks.outcome import Status
from adapter.checks.values import renal_function
from adapter.dosing.context import DoseContext
from adapter.dosing.findings import Action, Finding, finding
from adapter.dosing.rules import dose_rule


@dose_rule(
    "renal", ("renal-unknown", "renal-limit", "renal-within-limits"), ("renal.source", "freshness.source")
)
def renal_limit(ctx: DoseContext) -> list[Finding]:
    """Creatinine clearance (measured, else Cockcroft–Gault) on the day of the dose; missing or stale:
    no dose. Before the first dose, out of limits is the prescriber's decision."""
    rn = ctx.spec.renal
    if rn is None or not ctx.next.due_now:
        return []
    o = renal_function(ctx.checks(), float(rn.crcl_min), rn.inclusive, max_age_days=ctx.labs_max_age)
    if o.status is Status.UNKNOWN:
        return [
            finding(
                "renal-unknown", o.reason, ctx.freshness_source, o.evidence, effect=Action.INSUFFICIENT_DATA
            )
        ]
    if o.status is Status.MET:
        return [finding("renal-within-limits", o.reason, rn.source, o.evidence, check="renal function")]
    effect = Action.REVIEW if ctx.next.first else rn.on_fail
    return [finding("renal-limit", o.reason, rn.source, o.evidence, effect=effect)]
