"""Check an inotuzumab MedicationRequest someone else wrote against the plan.

The order is mapped like any other input, the plan is computed for the order's date with the
order itself left out of the treatment history, and the two are compared: the dose within ±10%
(MD Anderson §8.1.3 calls a larger difference a dosing error), at least the minimum interval since
the last dose, results fresh and within limits, no reason to stop. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from adapter.domain import Exposure, PatientRecord
from adapter.dosing.bsa import Formula
from adapter.dosing.engine import DosePlan, plan_next_dose
from adapter.dosing.findings import Action, Finding, Severity, finding
from adapter.dosing.history import DRUG, first_dose_day
from adapter.dosing.spec import load_dosing
from adapter.eligibility.engine import evaluate_eligibility
from adapter.protocols import load_variant

TOLERANCE = Decimal("0.10")
#: MD Anderson states the ±10% rule; for the other variants it is adapter policy taken from it
TOLERANCE_SOURCES = {
    "mdacc-low-dose": "mdacc-low-dose-phase2.txt §8.1.3 (a dose 10% above or below the prescribed one is a "
    "dosing error)",
}
TOLERANCE_POLICY = "docs/dosing.md §Checking an order (±10%: adapter policy, after MD Anderson §8.1.3)"
CHECK_DOC = "docs/dosing.md §Checking an order"
#: plan actions that forbid the ordered dose outright
FORBIDDEN = {Action.DISCONTINUE, Action.NOT_ELIGIBLE, Action.COMPLETE, Action.DELAY, Action.OMIT}
SEVERITY_ORDER = (Severity.INFO, Severity.WARNING, Severity.CRITICAL)


@dataclass(slots=True)
class OrderCheck:
    order: str
    patient: str
    protocol: str
    order_date: date | None
    findings: list[Finding]
    plan: DosePlan | None

    @property
    def verdict(self) -> Severity:
        worst = Severity.INFO
        for f in self.findings:
            if SEVERITY_ORDER.index(f.severity) > SEVERITY_ORDER.index(worst):
                worst = f.severity
        return worst

    def as_json(self) -> dict[str, Any]:
        from adapter import CONTRACT_VERSION

        return {
            "contract": CONTRACT_VERSION,
            "order": self.order,
            "patient": self.patient,
            "protocol": self.protocol,
            "order_date": self.order_date.isoformat() if self.order_date else None,
            "verdict": self.verdict.value,
            "findings": [f.as_json() for f in self.findings],
            "plan": self.plan.as_json() if self.plan else None,
        }


def _order_exposure(record: PatientRecord, order_ref: str) -> Exposure | None:
    return next((e for e in record.exposures.get(DRUG, ()) if e.ref == order_ref), None)


def check_order(
    record: PatientRecord,
    order_ref: str,
    protocol: str,
    as_of: date | None = None,
    formula: Formula = "mosteller",
) -> OrderCheck:
    """``record`` holds the patient's data and the order (mapped); ``order_ref`` names the order."""
    variant = load_variant(protocol)
    spec = load_dosing(protocol)
    findings: list[Finding] = []
    exposure = _order_exposure(record, order_ref)
    if exposure is None:
        findings.append(
            finding(
                "not-an-inotuzumab-order",
                f"{order_ref} is not a readable inotuzumab ozogamicin MedicationRequest for this patient "
                "(drug not coded as inotuzumab, status not active/on-hold/completed, or unreadable)",
                CHECK_DOC,
                (order_ref,),
                severity=Severity.CRITICAL,
            )
        )
        return OrderCheck(order_ref, record.ref, protocol, None, findings, None)
    when = exposure.planned or exposure.start
    order_date = when.earliest if when is not None and when.precise else None
    if order_date is None:
        findings.append(
            finding(
                "order-date-unknown",
                "the order has no dose date precise to the day (timing.event, "
                "boundsPeriod.start or authoredOn)",
                CHECK_DOC,
                (order_ref,),
                severity=Severity.CRITICAL,
            )
        )
    day = as_of or order_date
    if day is None:
        return OrderCheck(order_ref, record.ref, protocol, None, findings, None)
    eligibility = evaluate_eligibility(record, variant, day, first_dose_day(record, day))
    plan = plan_next_dose(
        record,
        protocol,
        day,
        eligibility,
        formula,
        variant.accept_preliminary,
        exclude=frozenset({order_ref}),
    )
    # the plan's own reasons, as the order's findings
    for f in plan.findings:
        if f.effect is None:
            continue
        severity = (
            Severity.CRITICAL
            if f.effect in FORBIDDEN or f.severity is Severity.CRITICAL
            else Severity.WARNING
        )
        reason = f.reason
        if f.id == "next-dose-not-due" and plan.window is not None:  # ordered before the window opens
            severity = Severity.CRITICAL
            reason = (
                f"ordered for {day}; cycle {plan.cycle} day {plan.day} is not due before {plan.window[0]}"
            )
        findings.append(Finding(f.id, severity, reason, f.evidence, f.source, f.effect))
    if plan.action in FORBIDDEN:
        findings.append(
            finding(
                "plan-forbids-dose",
                f"the plan for {day} is '{plan.action.value}', not a dose",
                CHECK_DOC,
                (order_ref,),
                severity=Severity.CRITICAL,
            )
        )
    if plan.last_dose is not None and order_date is not None:
        gap = (order_date - plan.last_dose).days
        if gap < spec.window.min_days_between_doses:
            findings.append(
                finding(
                    "too-soon",
                    f"ordered for {order_date}, {gap} days after the last dose on {plan.last_dose} "
                    f"(minimum {spec.window.min_days_between_doses})",
                    spec.window.source,
                    (order_ref,),
                    severity=Severity.CRITICAL,
                )
            )
    findings.extend(
        _dose_findings(exposure, plan, order_ref, TOLERANCE_SOURCES.get(protocol, TOLERANCE_POLICY))
    )
    if not any(f.severity is not Severity.INFO for f in findings):
        findings.append(
            finding("order-agrees", "dose, day and timing agree with the plan", CHECK_DOC, (order_ref,))
        )
    return OrderCheck(order_ref, record.ref, protocol, order_date, findings, plan)


def _dose_findings(
    exposure: Exposure, plan: DosePlan, order_ref: str, tolerance_source: str
) -> list[Finding]:
    if exposure.dose_problem:
        return [
            finding(
                "order-dose-unreadable",
                exposure.dose_problem,
                CHECK_DOC,
                (order_ref,),
                severity=Severity.CRITICAL,
            )
        ]
    if exposure.dose_mg is None and exposure.dose_mg_per_m2 is None:
        return [
            finding(
                "order-dose-missing",
                "the order states no dose quantity",
                CHECK_DOC,
                (order_ref,),
                severity=Severity.CRITICAL,
            )
        ]
    if not plan.doses:
        return [
            finding(
                "dose-not-verifiable",
                f"no planned dose to compare with (plan: {plan.action.value})",
                CHECK_DOC,
                (order_ref,),
                severity=Severity.WARNING,
            )
        ]
    planned = plan.doses[0]
    if exposure.dose_mg is not None:
        ordered, expected, unit = Decimal(repr(exposure.dose_mg)), planned.mg, "mg"
    else:
        ordered, expected, unit = Decimal(repr(exposure.dose_mg_per_m2)), planned.mg_per_m2, "mg/m²"
    diff = (ordered - expected) / expected
    text = (
        f"ordered {ordered} {unit}; planned {expected} {unit} for cycle {plan.cycle} day {planned.day} "
        f"({planned.mg_per_m2} mg/m² × {plan.bsa.m2 if plan.bsa else '?'} m²): {diff * 100:+.1f}%"
    )
    if abs(diff) > TOLERANCE:
        return [
            finding(
                "dose-mismatch",
                text + " (outside ±10%)",
                tolerance_source,
                (order_ref,),
                severity=Severity.CRITICAL,
            )
        ]
    return [finding("dose-within-tolerance", text + " (within ±10%)", tolerance_source, (order_ref,))]
