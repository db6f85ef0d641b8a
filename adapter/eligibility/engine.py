"""Run a protocol variant's criteria over a PatientRecord."""

from __future__ import annotations

from datetime import date

from adapter.domain import PatientRecord
from adapter.eligibility.results import CriterionResult, Eligibility, Outcome, Status, overall
from adapter.eligibility.rules import RULES, RuleContext
from adapter.protocols import Variant


def evaluate_eligibility(record: PatientRecord, variant: Variant, as_of: date) -> Eligibility:
    ctx = RuleContext(record, as_of, variant.accept_preliminary, variant.windows)
    results = []
    for spec in variant.criteria:
        try:
            outcome = RULES[spec.rule](ctx, **spec.params)
        except Exception as exc:  # a rule bug must never turn into "met"
            outcome = Outcome(Status.UNKNOWN, f"internal error in rule {spec.rule}: {type(exc).__name__}")
        results.append(
            CriterionResult(
                spec.id,
                spec.title,
                outcome.status,
                outcome.reason,
                tuple(dict.fromkeys(outcome.evidence)),
                spec.source,
            )
        )
    return Eligibility(overall([r.status for r in results]), tuple(results), variant.attestations)
