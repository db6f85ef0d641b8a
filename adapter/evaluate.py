"""The per-patient evaluation unit: ONE patient's record in, the evaluation JSON (and, for
write-back, the rendered summaries and the transaction Bundle) out.

Every interface calls this and nothing else to decide about a patient: ``evaluate`` and the Python
API (adapter.api), ``evaluate --out`` (adapter.outputs), ``sync`` against a FHIR server, the
service and population screening. None of them re-implements mapping, rules or write-back
building.

    setup = Setup.load("nhs-ta514", date(2026, 11, 21), mappings=("site.yaml",))
    outcome = evaluate_patient(resources_of_one_patient, setup, now="2026-11-21T09:00:00Z")
    outcome.evaluation, outcome.summaries, outcome.plan.bundle

Pure apart from :meth:`Setup.load`, which reads (and so checks) the variant, the tables and the site
settings once per run: a bad file stops the run before any patient is evaluated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from adapter.input.reader import SourcedResource
from adapter.input.validate import validate_all
from adapter.mapping.record import RecordSet, build_records
from adapter.mapping.tables import Tables, load_tables
from adapter.protocols import Variant, load_variant
from adapter.ruleset import ruleset_json
from adapter.summary.render import SUMMARY_FORMATS, render_summary
from adapter.writeback.bundle import Existing, WritePlan, build_transaction, existing_from_resources
from adapter.writeback.keys import Key
from adapter.writeback.settings import WriteSettings, load_settings_file


@dataclass(frozen=True, slots=True)
class Setup:
    """What is fixed for a run: the variant, the day, the tables and settings, and their digest."""

    variant: Variant
    as_of: date
    tables: Tables
    ruleset: dict[str, Any]
    settings: WriteSettings
    formula: Formula = "mosteller"
    validate: bool = True

    @classmethod
    def load(
        cls,
        protocol: str,
        as_of: date,
        mappings: Sequence[str | Path] = (),
        site_settings: str | Path | None = None,
        formula: Formula = "mosteller",
        validate: bool = True,
    ) -> Setup:
        variant, tables, settings, ruleset = load_rules(protocol, mappings, site_settings)
        return cls(variant, as_of, tables, ruleset, settings, formula, validate)


def load_rules(
    protocol: str, mappings: Sequence[str | Path] = (), site_settings: str | Path | None = None
) -> tuple[Variant, Tables, WriteSettings, dict[str, Any]]:
    """The variant, the merged tables and the site settings, read (so checked) once, and the
    ``ruleset`` block that names them (adapter.ruleset)."""
    variant = load_variant(protocol)
    tables = load_tables(tuple(str(m) for m in mappings))
    settings, source = (
        load_settings_file(str(site_settings)) if site_settings is not None else (WriteSettings(), None)
    )
    return variant, tables, settings, ruleset_json(variant, tables, source)


@dataclass(slots=True)
class PatientOutcome:
    """One patient's evaluation and what writing it back would send."""

    evaluation: dict[str, Any]
    summaries: dict[str, str]
    plan: WritePlan


# -- the evaluation JSON (the contract, docs/contract.md) ---------------------------------------
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


def evaluate_record(record: PatientRecord, setup: Setup) -> dict[str, Any]:
    """The evaluation JSON of one mapped patient: eligibility (start-only criteria at the start once
    treatment has started) and the plan for the next dose. A bug in a rule never becomes a dose."""
    variant, as_of = setup.variant, setup.as_of
    try:
        started_on = first_dose_day(record, as_of)
    except Exception:  # a history bug: judge every criterion as of today (the stricter reading)
        started_on = None
    eligibility = evaluate_eligibility(record, variant, as_of, started_on)
    try:
        dose = plan_next_dose(
            record, variant.name, as_of, eligibility, setup.formula, variant.accept_preliminary
        ).as_json()
    except MappingTableError:
        raise
    except Exception as exc:  # a bug in the dose engine must never become a dose
        dose = dose_error_json(exc)
    return {
        "contract": CONTRACT_VERSION,
        "patient": record.ref,
        "protocol": variant.name,
        "protocol_title": variant.title,
        "ruleset": copy.deepcopy(setup.ruleset),
        "as_of": as_of.isoformat(),
        "subject": subject_json(record, as_of),
        "eligibility": eligibility_json(eligibility),
        "dose": dose,
    }


# -- mapping ---------------------------------------------------------------------------------
def map_with(
    resources: list[SourcedResource], tables: Tables, validate: bool, invalid: Mapping[str, str] | None = None
) -> RecordSet:
    """Validate (optionally) and map resources into PatientRecords. ``invalid`` (origin -> reason) is the
    validation already done by the caller (``sync`` validates only what changed since its last run)."""
    if invalid is None:
        invalid = validate_all(resources) if validate else {}
    return build_records(resources, tables, invalid)


# -- write-back ------------------------------------------------------------------------------
def render_summaries(
    evaluation: dict[str, Any], previous: dict[str, Any] | None, settings: WriteSettings
) -> dict[str, str]:
    """The clinician summaries (HTML and Markdown); ``previous`` makes them say what changed."""
    return {
        fmt: render_summary(evaluation, fmt, previous=previous, template_dir=settings.template_dir)
        for fmt in SUMMARY_FORMATS
    }


#: How summaries are rendered: ``render_summaries``, or a caller's cache in front of it.
Renderer = Callable[[dict[str, Any], dict[str, Any] | None, WriteSettings], dict[str, str]]


def plan_write_back(
    evaluation: dict[str, Any],
    settings: WriteSettings,
    now: str,
    previous: dict[str, Any] | None = None,
    existing: Mapping[Key, Existing] | None = None,
    render: Renderer = render_summaries,
) -> PatientOutcome:
    """The summaries and the transaction Bundle that writes ``evaluation`` back, reconciled with
    what the server (or the input) already holds under our identifiers (``existing``)."""
    summaries = render(evaluation, previous, settings)
    plan = build_transaction(evaluation, summaries, now, settings, existing)
    return PatientOutcome(evaluation, summaries, plan)


def evaluate_patient(
    resources: list[SourcedResource],
    setup: Setup,
    now: str,
    previous: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    existing: Mapping[Key, Existing] | None = None,
    *,
    invalid: Mapping[str, str] | None = None,
    render: Renderer = render_summaries,
) -> PatientOutcome:
    """ONE patient's resources (e.g. ``Patient/$everything``, with our earlier write-back resources)
    in; the evaluation and its write plan out. Our resources among the input are what exists, with
    ``existing`` (what a server holds under our keys, e.g. found by ``sync``) over them. ``previous`` is
    the evaluation the summary compares with, or a function choosing it once the evaluation is known.
    ``invalid`` is R4B validation already done (see :func:`map_with`); ``render`` may cache summaries."""
    records = map_with(resources, setup.tables, setup.validate, invalid)
    if len(records.records) != 1:
        raise InputError("<patient>", f"expected the resources of one Patient, found {len(records.records)}")
    evaluation = evaluate_record(records.records[0], setup)
    known = {**existing_from_resources(r.resource for r in resources), **(existing or {})}
    earlier = previous(evaluation) if callable(previous) else previous
    return plan_write_back(evaluation, setup.settings, now, earlier, known, render)


def replan(
    outcome: PatientOutcome, setup: Setup, now: str, existing: Mapping[Key, Existing]
) -> PatientOutcome:
    """The same evaluation and summaries, reconciled again with what is now known to exist (e.g. after
    looking up the keys the first plan would have created)."""
    plan = build_transaction(outcome.evaluation, outcome.summaries, now, setup.settings, existing)
    return PatientOutcome(outcome.evaluation, outcome.summaries, plan)
