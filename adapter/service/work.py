"""What the REST and FHIR endpoints do, as plain blocking functions (run in a worker thread).

Every decision goes through the per-patient evaluation unit and the API built on it (adapter.evaluate,
adapter.api): :func:`evaluate_items` is ``evaluate`` (and ``evaluate --out`` with ``include``),
:func:`check_order_items` is ``check-order``, :func:`evaluate_on_server` is one patient of ``sync``: its
record fetched as sync fetches it (adapter.sync.fetch), evaluated, reconciled with what the server holds and
written back in one transaction (adapter.writeback.apply).

Errors of the library become :class:`~adapter.service.errors.ServiceError` (:func:`as_service_error`):
unusable input 400, an unknown patient 404, a draft changed meanwhile 409, the FHIR server's refusal 502,
the FHIR server unreachable or overloaded 503 with ``Retry-After``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, TypeVar

from adapter.api import check_order_in, one_order, run_batch
from adapter.errors import AdapterError, InputError, MappingTableError
from adapter.evaluate import PatientOutcome, Setup, evaluate_patient, plan_write_back, replan
from adapter.fhir.client import (
    FhirChanged,
    FhirClient,
    FhirError,
    FhirNotFound,
    FhirThrottled,
    FhirTransportError,
    FhirUnauthorized,
    is_idempotent_bundle,
)
from adapter.input.reader import read_resources
from adapter.safe_text import patient_tag
from adapter.service.deps import ServiceDeps
from adapter.service.errors import BadRequestError, ServiceError, UnavailableError
from adapter.sync.fetch import fetch_records
from adapter.sync.ledger import PatientState
from adapter.writeback.apply import find_keys, unknown_keys
from adapter.writeback.bundle import Existing, existing_from_resources
from adapter.writeback.keys import Key

INCLUDES: Final = frozenset({"bundle", "summaries"})
#: Tries of one write-back when the server answers 409/412 (a draft changed meanwhile).
MAX_WRITE_ATTEMPTS: Final = 3
_DEVICE: Final = "work.device"
T = TypeVar("T")


def as_service_error(exc: BaseException) -> ServiceError | None:
    """The answer for a library error (None: not one of ours, a bug: 500)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InputError):
        return BadRequestError(exc.message)
    if isinstance(exc, FhirNotFound):
        return ServiceError(404, "the FHIR server does not know the patient", "not-found")
    if isinstance(exc, FhirChanged):
        return ServiceError(409, "the FHIR server's data changed while writing; try again", "conflict")
    if isinstance(exc, FhirUnauthorized):
        return ServiceError(502, "the FHIR server refused the adapter's credentials", "security")
    if isinstance(exc, FhirTransportError | FhirThrottled) or (isinstance(exc, FhirError) and exc.retryable):
        return UnavailableError("the FHIR server is unreachable or overloaded; try again later")
    if isinstance(exc, FhirError):
        return ServiceError(502, f"the FHIR server refused a request: {exc.message}", "exception")
    if isinstance(exc, MappingTableError):
        return ServiceError(500, "the service's tables cannot be used", "exception")
    if isinstance(exc, AdapterError):
        return ServiceError(500, exc.message, "exception")
    return None


def guarded(deps: ServiceDeps, fn: Callable[[], T]) -> T:
    """Run ``fn`` in one of the worker's evaluation slots (503 when none frees within ``queue_timeout_s``),
    with library errors turned into ServiceErrors."""
    if not deps.slots.acquire(timeout=deps.config.queue_timeout_s):
        raise UnavailableError("the service is busy; try again shortly", 1, "throttled")
    try:
        return fn()
    except Exception as exc:
        err = as_service_error(exc)
        if err is None:
            raise
        raise err from None
    finally:
        deps.slots.release()


# ---------------------------------------------------------------------------------------------------------
# POST /evaluate and POST /fhir/$evaluate


@dataclass(slots=True)
class PatientAnswer:
    """One patient's evaluation, and what ``include`` asked for."""

    evaluation: dict[str, Any]
    outcome: PatientOutcome | None = None  # the summaries and the write-back Bundle (include)
    written: dict[str, Any] | None = None  # Patient/{id}/$evaluate with writeBack: what was sent


@dataclass(slots=True)
class Answers:
    patients: list[PatientAnswer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # input problems that cost no run (no patient data)


def _log_patients(deps: ServiceDeps, answers: list[PatientAnswer], ms: float, via: str) -> None:
    for a in answers:
        ev = a.evaluation
        deps.log.info(
            "evaluated",
            via=via,
            patient=patient_tag(ev.get("patient")),
            protocol=ev.get("protocol"),
            eligibility=(ev.get("eligibility") or {}).get("status"),
            action=(ev.get("dose") or {}).get("action"),
            ms=round(ms, 2),
        )


def evaluate_items(
    deps: ServiceDeps,
    items: list[Any],
    protocol: str | None,
    as_of: date,
    include: frozenset[str],
    *,
    log: bool = True,
) -> Answers:
    """``ino-adapter evaluate`` on parsed JSON values (resources or Bundles): every patient in them."""
    setup = deps.setup(protocol, as_of)
    started = time.perf_counter()
    if not all(isinstance(i, dict) for i in items):
        raise BadRequestError("every item must be a FHIR resource (a JSON object)")
    run = run_batch(read_resources(items, origin="<request>"), setup, deps.config.mappings, "<request>")
    answers = [PatientAnswer(ev) for ev in run.results]
    if include:
        existing = run.existing()
        now = deps.now()
        for a in answers:
            a.outcome = plan_write_back(a.evaluation, setup.settings, now, None, existing)
    if log:
        _log_patients(deps, answers, (time.perf_counter() - started) * 1000, "resources")
    notes = [*run.notes, *run.orphans]
    if run.ignored:
        notes.append(
            "ignored resources the protocol does not use: "
            + ", ".join(f"{n} {t}" for t, n in sorted(run.ignored.items()))
        )
    return Answers(answers, notes)


# ---------------------------------------------------------------------------------------------------------
# POST /check-order


def check_order_items(
    deps: ServiceDeps,
    order: Any,
    context: list[Any],
    protocol: str | None,
    as_of: date | None,
    with_bundle: bool,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``ino-adapter check-order``: the check of ``order`` (a MedicationRequest) against the plan for its
    patient in ``context``; with ``with_bundle`` also the DetectedIssue transaction (``--bundle``)."""
    name = deps.protocol(protocol)
    rules = deps.rules[name]
    if not isinstance(order, dict) or order.get("resourceType") != "MedicationRequest":
        raise BadRequestError("order must be a MedicationRequest")
    if not all(isinstance(i, dict) for i in context):
        raise BadRequestError("every context item must be a FHIR resource (a JSON object)")
    the_order = one_order(read_resources([order], origin="<order>"), "<order>")
    result = check_order_in(
        the_order,
        read_resources(context, origin="<context>"),
        name,
        rules.ruleset,
        as_of,
        deps.config.mappings,
        deps.config.validate_input,
        deps.config.bsa_formula,
        "<context>",
    )
    deps.log.info("order checked", protocol=name, verdict=result.get("verdict"))
    bundle = None
    if with_bundle:
        from adapter.writeback.bundle import build_check_transaction

        bundle = build_check_transaction(result, deps.now(), rules.settings).bundle
    return result, bundle


# ---------------------------------------------------------------------------------------------------------
# POST /fhir/Patient/{id}/$evaluate


def _device(deps: ServiceDeps, client: FhirClient, use_batch: bool) -> dict[Key, Existing]:
    """The adapter's Device on the server, created once per process before any patient's transaction (as
    sync does: concurrent transactions must not each create it)."""
    from adapter.sync.runner import ensure_device

    lock = deps.extras.setdefault(_DEVICE + ".lock", threading.Lock())
    with lock:
        device = deps.extras.get(_DEVICE)
        if device is None:
            device = ensure_device(client, dry_run=False, use_batch=use_batch)
            deps.extras[_DEVICE] = device
    assert isinstance(device, dict)
    return device


def _fetch_and_evaluate(
    deps: ServiceDeps, client: FhirClient, setup: Setup, patient_id: str, device: dict[Key, Existing]
) -> tuple[PatientOutcome, dict[Key, Existing], Any]:
    features = client.server_capabilities()
    record = fetch_records(client, features, [PatientState(patient_id)], setup.tables)[patient_id]
    if isinstance(record, FhirError):
        raise record
    if not any(r.get("resourceType") == "Patient" and r.get("id") == patient_id for r in record.resources):
        raise ServiceError(404, "the FHIR server does not know the patient", "not-found")
    entries = [
        {"fullUrl": f"{client.base_url}/{r['resourceType']}/{r['id']}", "resource": r}
        for r in record.resources
        if isinstance(r.get("id"), str) and not (r.get("resourceType") == "Patient" and r["id"] != patient_id)
    ]
    batch = read_resources(
        [{"resourceType": "Bundle", "type": "collection", "entry": entries}], origin="server"
    )
    existing = {**existing_from_resources(record.resources), **device}
    outcome = evaluate_patient(batch.resources, setup, deps.now(), existing=existing)
    return outcome, existing, record


def evaluate_on_server(
    deps: ServiceDeps,
    patient_id: str,
    protocol: str | None,
    as_of: date,
    include: frozenset[str],
    write_back: bool,
) -> Answers:
    """One patient of the configured FHIR server: fetched (as ``sync`` fetches), evaluated, and with
    ``write_back`` reconciled with what the server holds and written in one transaction (a 409/412 re-reads
    and re-plans, at most :data:`MAX_WRITE_ATTEMPTS` times)."""
    client = deps.fhir_client()
    setup = deps.setup(protocol, as_of)
    started = time.perf_counter()
    tag = patient_tag(f"Patient/{patient_id}")
    written: dict[str, Any] | None = None
    attempt = 0
    while True:
        attempt += 1
        features = client.server_capabilities()
        device = _device(deps, client, features.batch) if write_back else {}
        outcome, existing, record = _fetch_and_evaluate(deps, client, setup, patient_id, device)
        if not write_back:
            break
        unknown = unknown_keys(outcome.plan, record.known_absent, existing)
        if unknown:
            found, duplicated = find_keys(client, unknown, use_batch=features.batch)
            if duplicated:
                raise ServiceError(
                    409, "a write-back key matched more than one resource on the server", "conflict"
                )
            existing = {**existing, **existing_from_resources(found)}
            outcome = replan(outcome, setup, deps.now(), existing)
        plan = outcome.plan
        try:
            response = (
                client.transaction(plan.bundle, idempotent=is_idempotent_bundle(plan.bundle))
                if plan.bundle["entry"]
                else None
            )
        except FhirChanged:
            if attempt >= MAX_WRITE_ATTEMPTS:
                raise
            deps.log.info("write-back conflict; reading the record again", patient=tag, attempt=attempt)
            continue
        counts = plan.summary()
        written = {
            "status": "written" if response is not None else "unchanged",
            "entries": counts["entries"] if response is not None else 0,
            "created": counts["created"] if response is not None else 0,
            "updated": counts["updated"] if response is not None else 0,
            "unchanged": counts["unchanged"],
            "kept": counts["kept"],
            "not_touched": list(counts["not_touched"]),
        }
        deps.log.info(
            "written back",
            patient=tag,
            status=written["status"],
            entries=written["entries"],
            created=written["created"],
            updated=written["updated"],
        )
        break
    answer = PatientAnswer(outcome.evaluation, outcome if include else None, written)
    _log_patients(deps, [answer], (time.perf_counter() - started) * 1000, "server")
    return Answers([answer])


#: A made-up patient evaluated once at start: the first real request then finds the R4B models built, the
#: rules' code paths and the summary templates compiled.
_WARM_UP: Final = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {
            "fullUrl": "urn:uuid:0",
            "resource": {"resourceType": "Patient", "id": "warm-up", "gender": "unknown"},
        },
        {
            "resource": {
                "resourceType": "Observation",
                "id": "warm-up-weight",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                "subject": {"reference": "Patient/warm-up"},
                "effectiveDateTime": "2026-01-01",
                "valueQuantity": {
                    "value": 70,
                    "unit": "kg",
                    "system": "http://unitsofmeasure.org",
                    "code": "kg",
                },
            }
        },
    ],
}


def warm_up(deps: ServiceDeps) -> float:
    """Build the R4B models of every resource type the evaluation reads and evaluate a made-up patient in
    every variant (not logged as an evaluation). Returns the seconds it took."""
    from adapter.input.resource_types import USED_RESOURCE_TYPES
    from adapter.input.validate import validation_error

    started = time.perf_counter()
    for rtype in sorted(USED_RESOURCE_TYPES):
        validation_error({"resourceType": rtype})
    for name in deps.rules:
        evaluate_items(deps, [_WARM_UP], name, date.today(), INCLUDES, log=False)
    return time.perf_counter() - started
