"""Run a protocol variant's criteria over a PatientRecord.

Criteria never see the protocol drug's own records (:func:`without_drug`): an inotuzumab order or
dose is not "prior therapy". Before treatment starts every criterion is judged as of the as-of
date. Once it has started
(``started_on``, the day of the first inotuzumab dose, on or before the as-of date) only the
``continuing`` criteria are; each ``start``-only criterion is judged as of ``started_on`` on the
record without the protocol drug's own records, and reported NOT_APPLICABLE with that result
kept in ``at_start`` (docs/criteria.md §Once treatment has started).
"""

from __future__ import annotations

import dataclasses
from datetime import date

from adapter.checks.outcome import Outcome, Status
from adapter.domain import PatientRecord
from adapter.dosing.history import DRUG
from adapter.eligibility.results import AtStart, CriterionResult, Eligibility, overall
from adapter.eligibility.rules import RULES, RuleContext
from adapter.protocols import CriterionSpec, Variant


def without_drug(record: PatientRecord) -> PatientRecord:
    """A shallow copy of ``record`` without the protocol drug's own records.

    Every Exposure (in any concept list: inotuzumab is also a monoclonal antibody) whose reference
    is that of an inotuzumab exposure is left out; the record itself is not changed.
    """
    own = {e.ref for e in record.exposures.get(DRUG, ())}
    if not own:
        return record
    exposures = {
        concept: kept
        for concept, items in record.exposures.items()
        if (kept := [e for e in items if e.ref not in own])
    }
    return dataclasses.replace(record, exposures=exposures)


def _run(spec: CriterionSpec, ctx: RuleContext) -> Outcome:
    try:
        return RULES[spec.rule](ctx, **spec.params)
    except Exception as exc:  # a rule bug must never turn into "met"
        return Outcome(Status.UNKNOWN, f"internal error in rule {spec.rule}: {type(exc).__name__}")


def evaluate_eligibility(
    record: PatientRecord, variant: Variant, as_of: date, started_on: date | None = None
) -> Eligibility:
    """The variant's criteria for ``record`` as of ``as_of``.

    ``started_on`` is the day of the first dose (None, or a day after ``as_of``: not started).
    """
    started = started_on if started_on is not None and started_on <= as_of else None
    # the protocol drug's own records (an order for the first dose, the order check-order checks,
    # the doses given) are never "prior therapy": MD Anderson's antibody washout would catch them
    view = without_drug(record)
    now = RuleContext(view, as_of, variant.accept_preliminary, variant.windows)
    at_start = (
        RuleContext(view, started, variant.accept_preliminary, variant.windows, now=as_of)
        if started is not None
        else None
    )
    results = []
    for spec in variant.criteria:
        if at_start is None or spec.phase == "continuing":
            outcome = _run(spec, now)
            results.append(
                CriterionResult(
                    spec.id,
                    spec.title,
                    outcome.status,
                    outcome.reason,
                    tuple(dict.fromkeys(outcome.evidence)),
                    spec.source,
                    spec.phase,
                )
            )
            continue
        then = _run(spec, at_start)
        kept = AtStart(at_start.as_of, then.status, then.reason, tuple(dict.fromkeys(then.evidence)))
        results.append(
            CriterionResult(
                spec.id,
                spec.title,
                Status.NOT_APPLICABLE,
                f"start-only criterion: treatment started on {kept.as_of.isoformat()} "
                f"(at start: {kept.status.value}: {kept.reason})",
                kept.evidence,
                spec.source,
                spec.phase,
                kept,
            )
        )
    return Eligibility(overall([r.status for r in results]), tuple(results), variant.attestations, started)
