"""The Python API: evaluate FHIR input against a protocol variant.

    from adapter.api import evaluate_path
    run = evaluate_path("examples/", "nhs-ta514", as_of=date(2026, 11, 21))
    for result in run.results: print(result["eligibility"]["status"])

Each result is the evaluation JSON contract (docs/contract.md) as a dict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from adapter.dosing.bsa import Formula
from adapter.errors import InputError
from adapter.evaluate import Setup, evaluate_record, load_rules, map_with
from adapter.input.attribution import attribute_broken, placeholder_patients
from adapter.input.reader import InputBatch, SourcedResource, read_input, read_resources
from adapter.mapping.record import RecordSet
from adapter.mapping.tables import load_tables
from adapter.safe_text import patient_tag, redact_orphan
from adapter.writeback.bundle import Existing, existing_from_resources
from adapter.writeback.keys import Key


@dataclass(slots=True)
class EvaluationRun:
    results: list[dict[str, Any]] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)  # resource types not used, with counts
    orphans: list[str] = field(default_factory=list)  # resources with no Patient in the input
    #: Input problems that cost no run, one line each, without patient data: bulk data lines that
    #: could not be read (and whose patient's input-integrity is unknown), files skipped.
    notes: list[str] = field(default_factory=list)
    #: The input's resources, kept (not copied) so that write-back can index them on demand.
    sources: list[SourcedResource] = field(default_factory=list)

    def existing(self) -> dict[Key, Existing]:
        """Resources in the input written earlier by the adapter (our identifiers), for write-back.

        Computed only when asked (``evaluate --out``), so a plain evaluation does no write-back work.
        """
        return existing_from_resources(r.resource for r in self.sources)


def map_resources(resources: list[SourcedResource], mappings: Sequence[str], validate: bool) -> RecordSet:
    """Validate (optionally) and map resources into PatientRecords with the merged tables."""
    return map_with(resources, load_tables(tuple(str(m) for m in mappings)), validate)


def map_batch(batch: InputBatch, mappings: Sequence[str], validate: bool) -> tuple[RecordSet, list[str]]:
    """Map a batch; lines that could not be read make their own patients' input-integrity unknown.

    Returns the records (orphan warnings without patient references) and the notes.
    """
    records = map_resources([*batch.resources, *placeholder_patients(batch)], mappings, validate)
    attributed = attribute_broken(records.records, batch.broken)
    records.orphans = [redact_orphan(o) for o in records.orphans] + attributed.orphans
    skipped = [f"skipped {name}: {why}" for name, why in batch.skipped]
    return records, skipped + attributed.notes


def evaluate_batch(
    batch: InputBatch,
    protocol: str,
    as_of: date,
    mappings: Sequence[str] = (),
    validate: bool = True,
    source: str = "input",
    bsa_formula: Formula = "mosteller",
    site_settings: str | Path | None = None,
) -> EvaluationRun:
    setup = Setup.load(protocol, as_of, mappings, site_settings, bsa_formula, validate)
    return run_batch(batch, setup, mappings, source)


def run_batch(
    batch: InputBatch, setup: Setup, mappings: Sequence[str] = (), source: str = "input"
) -> EvaluationRun:
    """Evaluate a batch with a :class:`Setup` loaded once (the HTTP service loads it at start); ``mappings``
    are the site tables ``setup`` was loaded with (the mapping step finds them in its cache)."""
    records, notes = map_batch(batch, mappings, setup.validate)
    if not records.records:
        skipped = f" ({len(batch.skipped)} file(s) skipped: not FHIR)" if batch.skipped else ""
        raise InputError(source, f"no Patient resource in the input{skipped}")
    run = EvaluationRun(
        ignored=batch.ignored,
        orphans=records.orphans,
        notes=notes,
        sources=batch.resources,
    )
    run.results.extend(evaluate_record(record, setup) for record in records.records)
    return run


def evaluate_path(
    path: str | Path,
    protocol: str,
    as_of: date,
    mappings: Sequence[str] = (),
    validate: bool = True,
    bsa_formula: Formula = "mosteller",
    site_settings: str | Path | None = None,
) -> EvaluationRun:
    """Evaluate a file or directory (Bundle, resource, NDJSON). ``site_settings`` (the write-back
    settings file, if any) takes part in the rule-set digest."""
    batch = read_input(path)
    return evaluate_batch(batch, protocol, as_of, mappings, validate, str(path), bsa_formula, site_settings)


def evaluate_resources(
    items: Iterable[dict[str, Any]],
    protocol: str,
    as_of: date,
    mappings: Sequence[str] = (),
    validate: bool = True,
    bsa_formula: Formula = "mosteller",
    site_settings: str | Path | None = None,
) -> EvaluationRun:
    """Evaluate already-parsed resources or Bundles (e.g. from an integration engine)."""
    batch = read_resources(items)
    return evaluate_batch(batch, protocol, as_of, mappings, validate, "<api>", bsa_formula, site_settings)


def check_order_path(
    order_path: str | Path,
    context_path: str | Path,
    protocol: str,
    as_of: date | None = None,
    mappings: Sequence[str] = (),
    validate: bool = True,
    bsa_formula: Formula = "mosteller",
    site_settings: str | Path | None = None,
) -> dict[str, Any]:
    """Check the inotuzumab MedicationRequest in ORDER against the plan for its patient in CONTEXT.

    The result carries the ``ruleset`` block (as an evaluation does), for the Provenance of --bundle."""
    order = one_order(read_input(order_path), str(order_path))
    context = read_input(context_path)
    ruleset = load_rules(protocol, mappings, site_settings)[3]
    return check_order_in(
        order, context, protocol, ruleset, as_of, mappings, validate, bsa_formula, str(context_path)
    )


def one_order(order_batch: InputBatch, source: str) -> SourcedResource:
    """The one MedicationRequest of an order input (InputError otherwise)."""
    if order_batch.broken:
        raise InputError(order_batch.broken[0].origin, order_batch.broken[0].fault)
    orders = [r for r in order_batch.resources if r.resource.get("resourceType") == "MedicationRequest"]
    if len(orders) != 1:
        raise InputError(source, f"expected one MedicationRequest, found {len(orders)}")
    return orders[0]


def check_order_in(
    order: SourcedResource,
    context: InputBatch,
    protocol: str,
    ruleset: dict[str, Any],
    as_of: date | None = None,
    mappings: Sequence[str] = (),
    validate: bool = True,
    bsa_formula: Formula = "mosteller",
    context_source: str = "<context>",
) -> dict[str, Any]:
    """Check ``order`` against the plan for its patient in ``context`` (inputs already read: the CLI and the
    HTTP service), with the ``ruleset`` block of the rules in force (adapter.evaluate.load_rules)."""
    from adapter.dosing.order_check import check_order
    from adapter.mapping.fhir_values import normalise_reference, reference
    from adapter.mapping.record import resource_ref

    order_ref = resource_ref(order)
    context.resources = [r for r in context.resources if resource_ref(r) != order_ref] + [order]
    records, _ = map_batch(context, mappings, validate)
    subject = reference(order.resource.get("subject"))
    record = next((r for r in records.records if subject and r.ref == normalise_reference(subject)), None)
    if record is None:
        fault = f"the order's patient ({patient_tag(subject)}) is not in the context"
        raise InputError(context_source, fault if subject else "the order names no patient")
    result = check_order(record, order_ref, protocol, as_of, bsa_formula).as_json()
    result["ruleset"] = ruleset
    return result
