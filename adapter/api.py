"""The Python API: evaluate FHIR input against a protocol variant.

    from adapter.api import evaluate_path
    run = evaluate_path("examples/", "nhs-ta514", as_of=date(2026, 11, 21))
    for result in run.results: print(result["eligibility"]["status"])

Each result is the evaluation JSON contract (docs/contract.md) as a dict.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from adapter import CONTRACT_VERSION
from adapter.checks.values import age_years
from adapter.domain import PatientRecord
from adapter.dosing.bsa import Formula
from adapter.dosing.engine import plan_next_dose
from adapter.dosing.history import first_dose_day
from adapter.eligibility.engine import evaluate_eligibility
from adapter.eligibility.results import CriterionResult, Eligibility
from adapter.errors import InputError, MappingTableError
from adapter.input.attribution import attribute_broken, placeholder_patients
from adapter.input.reader import InputBatch, SourcedResource, read_input, read_resources
from adapter.input.validate import validate_all
from adapter.mapping.record import RecordSet, build_records
from adapter.mapping.tables import load_tables
from adapter.protocols import load_variant
from adapter.ruleset import ruleset_json
from adapter.safe_text import patient_tag, redact_orphan
from adapter.writeback.bundle import Existing, existing_from_resources
from adapter.writeback.keys import Key
from adapter.writeback.settings import load_settings_file


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


def criterion_json(c: CriterionResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": c.id,
        "title": c.title,
        "phase": c.phase,
        "status": c.status.value,
        "reason": c.reason,
        "evidence": list(c.evidence),
        "source": c.source,
    }
    if c.at_start is not None:
        out["at_start"] = {
            "as_of": c.at_start.as_of.isoformat(),
            "status": c.at_start.status.value,
            "reason": c.at_start.reason,
            "evidence": list(c.at_start.evidence),
        }
    return out


def eligibility_json(e: Eligibility) -> dict[str, Any]:
    return {
        "status": e.status.value,
        "treatment_started_on": e.started_on.isoformat() if e.started_on is not None else None,
        "criteria": [criterion_json(c) for c in e.criteria],
        "attestations": list(e.attestations),
    }


def subject_json(record: PatientRecord, as_of: date) -> dict[str, Any]:
    """Who the evaluation is about, for the clinician summary (identity is PHI: never logged)."""
    born = record.birth_date
    age: int | None = None
    if born is not None and born.latest <= as_of:
        youngest, oldest = age_years(born.latest, as_of), age_years(born.earliest, as_of)
        age = youngest if youngest == oldest else None
    return {
        "reference": record.ref,
        "name": record.name,
        "mrn": record.mrn,
        "birth_date": str(born) if born is not None else None,
        "age": age,
        "sex": record.gender,
    }


def dose_error_json(exc: Exception) -> dict[str, Any]:
    """The dose block when the engine failed: no dose, and the reason (without patient data)."""
    return {
        "action": "insufficient-data",
        "cycle": None,
        "day": None,
        "dose_level": None,
        "bsa_m2": None,
        "bsa_formula": None,
        "doses": [],
        "findings": [
            {
                "id": "internal-error",
                "severity": "critical",
                "reason": f"internal error in the dose engine ({type(exc).__name__}); no dose is proposed",
                "evidence": [],
                "source": "docs/dosing.md §Actions",
                "effect": "insufficient-data",
            }
        ],
    }


def map_resources(resources: list[SourcedResource], mappings: Sequence[str], validate: bool) -> RecordSet:
    """Validate (optionally) and map resources into PatientRecords with the merged tables."""
    tables = load_tables(tuple(str(m) for m in mappings))
    invalid = validate_all(resources) if validate else {}
    return build_records(resources, tables, invalid)


def map_batch(batch: InputBatch, mappings: Sequence[str], validate: bool) -> tuple[RecordSet, list[str]]:
    """Map a batch; lines that could not be read make their own patients' input-integrity unknown.

    Returns the records (orphan warnings without patient references) and the notes.
    """
    records = map_resources([*batch.resources, *placeholder_patients(batch)], mappings, validate)
    attributed = attribute_broken(records.records, batch.broken)
    records.orphans = [redact_orphan(o) for o in records.orphans] + attributed.orphans
    skipped = [f"skipped {name}: {why}" for name, why in batch.skipped]
    return records, skipped + attributed.notes


def rule_set(protocol: str, mappings: Sequence[str], site_settings: str | Path | None) -> dict[str, Any]:
    """The ``ruleset`` block: the variant, tables and site settings in force, and their digest
    (adapter.ruleset). Loads (so checks) the tables and settings: a bad file stops before any output."""
    settings = load_settings_file(str(site_settings))[1] if site_settings is not None else None
    return ruleset_json(load_variant(protocol), load_tables(tuple(str(m) for m in mappings)), settings)


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
    variant = load_variant(protocol)
    ruleset = rule_set(protocol, mappings, site_settings)
    records, notes = map_batch(batch, mappings, validate)
    if not records.records:
        skipped = f" ({len(batch.skipped)} file(s) skipped: not FHIR)" if batch.skipped else ""
        raise InputError(source, f"no Patient resource in the input{skipped}")
    run = EvaluationRun(
        ignored=batch.ignored,
        orphans=records.orphans,
        notes=notes,
        sources=batch.resources,
    )
    for record in records.records:
        try:
            started_on = first_dose_day(record, as_of)
        except Exception:  # a history bug: judge every criterion as of today (the stricter reading)
            started_on = None
        # once treatment has started, start-only criteria are reported as they were at the start
        eligibility = evaluate_eligibility(record, variant, as_of, started_on)
        try:
            dose = plan_next_dose(
                record, variant.name, as_of, eligibility, bsa_formula, variant.accept_preliminary
            ).as_json()
        except MappingTableError:
            raise
        except Exception as exc:  # a bug in the dose engine must never become a dose
            dose = dose_error_json(exc)
        run.results.append(
            {
                "contract": CONTRACT_VERSION,
                "patient": record.ref,
                "protocol": variant.name,
                "protocol_title": variant.title,
                "ruleset": copy.deepcopy(ruleset),
                "as_of": as_of.isoformat(),
                "subject": subject_json(record, as_of),
                "eligibility": eligibility_json(eligibility),
                "dose": dose,
            }
        )
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
    from adapter.dosing.order_check import check_order
    from adapter.mapping.fhir_values import normalise_reference, reference
    from adapter.mapping.record import resource_ref

    order_batch = read_input(order_path)
    if order_batch.broken:
        raise InputError(order_batch.broken[0].origin, order_batch.broken[0].fault)
    orders = [r for r in order_batch.resources if r.resource.get("resourceType") == "MedicationRequest"]
    if len(orders) != 1:
        raise InputError(str(order_path), f"expected one MedicationRequest, found {len(orders)}")
    order = orders[0]
    context = read_input(context_path)
    order_ref = resource_ref(order)
    context.resources = [r for r in context.resources if resource_ref(r) != order_ref] + [order]
    records, _ = map_batch(context, mappings, validate)
    subject = reference(order.resource.get("subject"))
    record = next((r for r in records.records if subject and r.ref == normalise_reference(subject)), None)
    if record is None:
        fault = f"the order's patient ({patient_tag(subject)}) is not in the context"
        raise InputError(str(context_path), fault if subject else "the order names no patient")
    result = check_order(record, order_ref, protocol, as_of, bsa_formula).as_json()
    result["ruleset"] = rule_set(protocol, mappings, site_settings)
    return result
