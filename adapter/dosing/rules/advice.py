"""Warnings that do not change the action: cytoreduction before the first dose when peripheral
blasts are high, and QT-prolonging or hepatotoxic co-medication."""

from __future__ import annotations

from adapter.checks.select import latest
from adapter.dosing.context import DoseContext
from adapter.dosing.findings import Finding, Severity, finding
from adapter.dosing.rules import dose_rule

#: the advice kind of the variant file -> the exposure concept that triggers it
COMEDICATION = (("qt-comedication", "qt-prolonging"), ("hepatotoxic-comedication", "hepatotoxic-azole"))
BLASTS_LOOKBACK_DAYS = 14


@dose_rule("advice", ("cytoreduction",), ("advice.cytoreduction",))
def cytoreduction(ctx: DoseContext) -> list[Finding]:
    """Before the first dose, peripheral blasts above 10 × 10⁹/L (10,000/mm³): cytoreduce first."""
    s = ctx.spec
    adv = next((a for a in s.advice if a.when == "high-blasts"), None)
    if ctx.started or s.blasts_cytoreduction_above is None or adv is None:
        return []
    sel = latest(
        ctx.record,
        "peripheral-blasts",
        ctx.as_of,
        BLASTS_LOOKBACK_DAYS,
        ctx.accept_preliminary,
        "peripheral blasts",
    )
    rd = sel.reading
    if rd is None or rd.number is None or rd.bounds[1] <= float(s.blasts_cytoreduction_above):
        return []
    # a bound that reaches above the limit may be above it: warned, and said so
    above = "> 10,000/mm³" if rd.bounds[0] > float(s.blasts_cytoreduction_above) else "possibly > 10,000/mm³"
    return [
        finding(
            "cytoreduction",
            f"peripheral blasts {rd.text()} on {rd.day} ({above}): {adv.text}",
            adv.source,
            sel.evidence,
            severity=Severity.WARNING,
        )
    ]


@dose_rule(
    "advice",
    ("qt-comedication", "hepatotoxic-comedication"),
    ("advice.qt-comedication", "advice.hepatotoxic-comedication"),
)
def comedication(ctx: DoseContext) -> list[Finding]:
    """Current QT-prolonging or hepatotoxic (azole) medication: the source's advice, as a warning."""
    out = []
    for when, concept in COMEDICATION:
        adv = next((a for a in ctx.spec.advice if a.when == when), None)
        current = [
            e
            for e in ctx.record.exposures.get(concept, ())
            if e.ongoing or (e.end and e.end.latest >= ctx.as_of)
        ]
        if current and adv is not None:
            out.append(
                finding(
                    when,
                    f"{', '.join(e.display or e.concept for e in current)}: {adv.text}",
                    adv.source,
                    tuple(e.ref for e in current),
                    severity=Severity.WARNING,
                )
            )
    return out
