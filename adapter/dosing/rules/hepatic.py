"""Liver tests before every dose, the first one included: bilirubin ≤ 1.5 × ULN and AST/ALT ≤ 2.5 ×
ULN (the sources' exceptions: Gilbert's syndrome, haemolysis, MD Anderson's tumour-related bilirubin
and isolated AST rise); not recovered after 28 days of interruption (UK) discontinues."""

from __future__ import annotations

from adapter.checks.outcome import Outcome, Status
from adapter.checks.values import within_uln_multiple
from adapter.dosing.context import DoseContext
from adapter.dosing.findings import Action, Finding, finding
from adapter.dosing.rules import dose_rule


def _outcomes(ctx: DoseContext) -> list[tuple[str, Outcome]]:
    hp = ctx.spec.hepatic
    checks = ctx.checks()
    bili = within_uln_multiple(
        checks,
        ["bilirubin-total"],
        float(hp.bilirubin_max_uln),
        gilbert_exempt=True,
        tumour_max_ratio=float(hp.tumour_bilirubin_max_uln) if hp.tumour_bilirubin_max_uln else None,
        max_age_days=ctx.labs_max_age,
    )
    return [("bilirubin", bili)] + [
        (c, within_uln_multiple(checks, [c], float(hp.transaminases_max_uln), max_age_days=ctx.labs_max_age))
        for c in ("ast", "alt")
    ]


@dose_rule(
    "hepatic",
    (
        "hepatic-labs-unknown",
        "hepatic-exception",
        "hepatic-haemolysis",
        "hepatic-isolated-ast",
        "hepatic-no-recovery",
        "hepatic-hold",
        "hepatic-first-dose",
        "liver-tests-within-limits",
    ),
    ("hepatic.source", "freshness.source", "freshness.first_dose_source"),
)
def liver_tests(ctx: DoseContext) -> list[Finding]:
    """Bilirubin and AST/ALT within their ULN multiples on the day of the dose (missing or stale: no
    dose). Before the first dose, out of limits is the prescriber's decision on top of eligibility;
    later it holds the dose (label, Spain: review) unless an exception of the source applies."""
    if not ctx.next.due_now:
        return []
    hp = ctx.spec.hepatic
    outcomes = _outcomes(ctx)
    failed = [name for name, o in outcomes if o.status is Status.NOT_MET]
    haemolysis = [c for c in ctx.record.conditions.get("haemolysis", ()) if c.active]
    days = ctx.timeline.interruption_days if ctx.timeline else 0
    if all(o.status is Status.MET for _, o in outcomes):
        return [
            finding(
                "liver-tests-within-limits",
                "; ".join(o.reason for _, o in outcomes),
                hp.source,
                tuple(e for _, o in outcomes for e in o.evidence),
                check="liver tests",
            )
        ]
    out = []
    for name, o in outcomes:
        if o.status is Status.UNKNOWN:
            out.append(
                finding(
                    "hepatic-labs-unknown",
                    o.reason,
                    ctx.freshness_source,
                    o.evidence,
                    effect=Action.INSUFFICIENT_DATA,
                )
            )
        elif o.status is Status.REVIEW:
            out.append(finding("hepatic-exception", o.reason, hp.source, o.evidence, effect=Action.REVIEW))
        elif o.status is not Status.NOT_MET:
            continue
        elif name == "bilirubin" and haemolysis:
            out.append(
                finding(
                    "hepatic-haemolysis",
                    o.reason + "; haemolysis is recorded: confirm the rise is due to it",
                    hp.source,
                    o.evidence + tuple(c.ref for c in haemolysis),
                    effect=Action.REVIEW,
                )
            )
        elif hp.isolated_ast_review and failed == ["ast"]:
            out.append(
                finding(
                    "hepatic-isolated-ast",
                    o.reason + "; an isolated AST rise need not delay if it is not hepatobiliary",
                    hp.source,
                    o.evidence,
                    effect=Action.REVIEW,
                )
            )
        elif ctx.next.first:
            out.append(
                finding(
                    "hepatic-first-dose",
                    o.reason + ": out of limits before the first dose; treatment is not recommended above "
                    "them without the prescriber's decision",
                    hp.source,
                    o.evidence,
                    effect=Action.REVIEW,
                )
            )
        elif hp.no_recovery_days is not None and days >= hp.no_recovery_days:
            out.append(
                finding(
                    "hepatic-no-recovery",
                    o.reason + f"; not recovered after {days} days of interruption: discontinue permanently",
                    hp.source,
                    o.evidence,
                    effect=Action.DISCONTINUE,
                )
            )
        else:
            out.append(
                finding(
                    "hepatic-hold",
                    o.reason + ": interrupt dosing until recovery",
                    hp.source,
                    o.evidence,
                    effect=hp.on_fail,
                )
            )
    return out
