"""One hook call (``order-select`` or ``order-sign``): the request in, the cards out (blocking; run it in a
worker thread).

1. The request is checked: ``hook`` is the service's, ``hookInstance`` a string, ``context.patientId`` a FHIR
   id, ``context.draftOrders`` a Bundle (``order-select``: ``context.selections`` names the orders to
   check).
2. The draft inotuzumab orders are picked by the mapping tables' codes for ``inotuzumab-ozogamicin`` (the
   drug's codeable concept, or the Medication it references: contained, in the draft Bundle, in the
   prefetch, or read from ``fhirServer``). An order whose drug cannot be identified is not checked. With
   no inotuzumab order the answer is no card, and nothing is fetched.
3. The patient's record is gathered (adapter.service.cds.prefetch; 412 when required data cannot be
   obtained). When the first dose lies further back than the labs' date floor allows for its pre-treatment
   results, the older results are fetched too.
4. The per-patient evaluation unit (adapter.evaluate: ``map_with``, ``evaluate_record``) evaluates the
   record as of today, for the regimen summary the cards link to (rendered when the link is opened).
5. Each order is checked with check-order (adapter.dosing.order_check.check_order) on the record mapped with
   the order included, as it will be once signed (status ``active``; a draft is otherwise not a
   prescription the dose history counts), for the order's own dose date.
6. The premedication the protocol asks for is built by the write-back (the site's settings with
   premedication on: adapter.writeback.bundle.build_transaction) for the ordered dose's day, and offered
   when the orders being signed hold nothing but inotuzumab (so a premedication order set signed with it is
   never taken for missing) and no premedication proposal of ours is already there.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

from adapter.domain import PatientRecord
from adapter.dosing.history import DRUG, first_dose_day
from adapter.dosing.order_check import check_order
from adapter.evaluate import Setup, evaluate_record, map_with
from adapter.fhir.client import FhirClient
from adapter.fhir.errors import FhirError
from adapter.input.reader import SourcedResource, read_resources
from adapter.input.validate import validate_all
from adapter.mapping.fhir_values import codings, normalise_reference, reference
from adapter.mapping.record import resource_ref
from adapter.mapping.tables import Tables
from adapter.service.cds.cards import CardContext, OrderView, order_cards, sort_cards
from adapter.service.cds.discovery import CdsService, pretreatment_days
from adapter.service.cds.prefetch import Gatherer, PreconditionFailedError, ServerAccess
from adapter.service.errors import BadRequestError
from adapter.writeback.bundle import build_transaction
from adapter.writeback.codes import load_codes
from adapter.writeback.resources import DOSE_ACTIONS

_FHIR_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ORDER_STATUSES_KEPT: Final = frozenset({"active", "on-hold"})


@dataclass(slots=True)
class HookRequest:
    hook: str
    hook_instance: str
    patient_id: str
    draft_bundle: dict[str, Any]
    selections: tuple[str, ...] | None
    access: ServerAccess
    prefetch: Any


@dataclass(slots=True)
class HookResult:
    cards: list[dict[str, Any]]
    #: the evaluation the cards' summary link shows (rendered when the link is opened, not before)
    summary_evaluation: dict[str, Any] | None = None
    how: dict[str, str] | None = None  # prefetch key -> how it was obtained (for the log)
    orders: int = 0


def parse_request(service: CdsService, body: Any) -> HookRequest:
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    if body.get("hook") != service.hook:
        raise BadRequestError(f"hook must be {service.hook!r} for this service")
    instance = body.get("hookInstance")
    if not isinstance(instance, str) or not instance or len(instance) > 128:
        raise BadRequestError("hookInstance must be a string (a UUID)")
    context = body.get("context")
    if not isinstance(context, dict):
        raise BadRequestError("context must be an object")
    pid = context.get("patientId")
    if not isinstance(pid, str) or not _FHIR_ID.match(pid):
        raise BadRequestError("context.patientId must be a FHIR id")
    drafts = context.get("draftOrders")
    if not isinstance(drafts, dict) or drafts.get("resourceType") != "Bundle":
        raise BadRequestError("context.draftOrders must be a FHIR Bundle")
    selections: tuple[str, ...] | None = None
    if service.hook == "order-select":
        raw = context.get("selections")
        if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            raise BadRequestError("context.selections must be an array of references (order-select)")
        selections = tuple(normalise_reference(s) for s in raw)
    return HookRequest(
        service.hook, instance, pid, drafts, selections, ServerAccess.from_request(body), body.get("prefetch")
    )


# -- the draft orders ----------------------------------------------------------------------------------
def _prefetched_medications(prefetch: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not isinstance(prefetch, dict):
        return out
    for value in prefetch.values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            for entry in value.get("entry") or []:
                r = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(r, dict) and r.get("resourceType") == "Medication":
                    out.append(r)
    return out


def drug_codings(
    order: Mapping[str, Any],
    medications: Mapping[str, Mapping[str, Any]],
    fetch: Callable[[str], Mapping[str, Any] | None],
) -> list[tuple[str, str]] | None:
    """The codings of an order's drug (None: it cannot be identified)."""
    if "medicationCodeableConcept" in order:
        return codings(order.get("medicationCodeableConcept"))
    target = reference(order.get("medicationReference"))
    if target is None:
        return None
    med: Mapping[str, Any] | None = None
    if target.startswith("#"):
        med = next(
            (c for c in order.get("contained") or [] if isinstance(c, dict) and c.get("id") == target[1:]),
            None,
        )
    else:
        target = normalise_reference(target)
        med = medications.get(target)
        if med is None and target.startswith("Medication/"):
            med = fetch(target.split("/", 1)[1])
    if med is None:
        return None
    found = codings(med.get("code"))
    for ing in med.get("ingredient") or []:
        if isinstance(ing, dict):
            found += codings(ing.get("itemCodeableConcept"))
    return found


def is_inotuzumab(found: Iterable[tuple[str, str]] | None, tables: Tables) -> bool:
    return found is not None and DRUG in tables.concepts_for(found, "medication")


@dataclass(slots=True)
class Draft:
    sourced: SourcedResource
    ref: str

    @property
    def resource(self) -> dict[str, Any]:
        return self.sourced.resource


def draft_orders(request: HookRequest) -> tuple[list[Draft], list[dict[str, Any]]]:
    """The draft MedicationRequests to look at (order-select: the selected ones) and every resource of the
    draft Bundle."""
    items = [
        SourcedResource(e["resource"], f"draftOrders.entry[{i}]", e.get("fullUrl"))
        for i, e in enumerate(request.draft_bundle.get("entry") or [])
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and isinstance(e["resource"].get("resourceType"), str)
    ]  # the hook's Bundle need not have a type (the specification's examples have none)
    everything = [r.resource for r in items]
    drafts = []
    for item in items:
        if item.resource.get("resourceType") != "MedicationRequest":
            continue
        ref = resource_ref(item)
        if request.selections is not None and ref not in request.selections:
            continue
        drafts.append(Draft(item, ref))
    return drafts, everything


def as_signed(draft: Draft, patient_id: str) -> SourcedResource:
    """The draft as the prescription it becomes once signed (status active; the context's patient when it
    names none). A draft naming another patient is refused."""
    order = copy.deepcopy(draft.resource)
    subject = reference(order.get("subject"))
    if subject is None:
        order["subject"] = {"reference": f"Patient/{patient_id}"}
    elif normalise_reference(subject) != f"Patient/{patient_id}":
        raise BadRequestError("a draft inotuzumab order names another patient than context.patientId")
    if order.get("status") not in ORDER_STATUSES_KEPT:
        order["status"] = "active"
    return SourcedResource(order, draft.sourced.origin, draft.sourced.full_url)


# -- premedication ---------------------------------------------------------------------------------------
def premedication_requests(
    evaluation: Mapping[str, Any], check: Mapping[str, Any], setup: Setup, now: str, held: set[str]
) -> list[dict[str, Any]]:
    """The premedication MedicationRequests the site's write-back builds for the ordered dose's day, less
    those whose identifier is already held."""
    plan = check.get("plan") or {}
    doses = plan.get("doses") or []
    if not doses or not plan.get("premedication") or plan.get("action") not in DOSE_ACTIONS:
        return []
    planned_on = doses[0]["date"]
    ev = {**evaluation, "as_of": check.get("order_date") or evaluation["as_of"], "dose": dict(plan)}
    settings = setup.settings.model_copy(update={"premedication": True})
    try:
        tx = build_transaction(ev, {}, now, settings)
    except ValueError:
        return []
    system = load_codes().identifier_systems.premedication
    out = []
    for entry in tx.bundle.get("entry") or []:
        r = entry.get("resource") or {}
        ident = next((i for i in r.get("identifier") or [] if i.get("system") == system), None)
        if r.get("resourceType") != "MedicationRequest" or ident is None:
            continue
        events = ((r.get("dosageInstruction") or [{}])[0].get("timing") or {}).get("event") or []
        if planned_on in events and f"{system}|{ident['value']}" not in held:
            out.append(r)
    return out


def _identifiers(resources: Iterable[Mapping[str, Any]]) -> set[str]:
    return {
        f"{i.get('system')}|{i.get('value')}"
        for r in resources
        if r.get("resourceType") == "MedicationRequest"
        for i in r.get("identifier") or []
        if isinstance(i, dict)
    }


# -- the call ----------------------------------------------------------------------------------------------
def _pick(
    resources: list[SourcedResource], setup: Setup, patient_id: str, invalid: Mapping[str, str]
) -> PatientRecord:
    records = map_with(resources, setup.tables, setup.validate, invalid)
    record = next((r for r in records.records if r.ref == f"Patient/{patient_id}"), None)
    if record is None:
        raise PreconditionFailedError("the patient's record holds no Patient resource for context.patientId")
    return record


def run_hook(
    service: CdsService,
    request: HookRequest,
    setup: Setup,
    now: str,
    clients: Callable[[str, str | None], FhirClient],
    summary_url: str | None,
) -> HookResult:
    """The cards of one call (see the module docstring). ``summary_url`` is where the cards link to the
    regimen summary (None: no link)."""
    drafts, draft_resources = draft_orders(request)
    if not drafts:
        return HookResult([])
    today = setup.as_of
    gatherer = Gatherer(service, request.patient_id, today, request.access, clients)
    known: dict[str, Mapping[str, Any]] = {}
    for med in [*draft_resources, *_prefetched_medications(request.prefetch)]:
        if med.get("resourceType") == "Medication" and isinstance(med.get("id"), str):
            known[f"Medication/{med['id']}"] = med

    fetched: dict[str, dict[str, Any]] = {}

    def fetch_medication(mid: str) -> Mapping[str, Any] | None:
        if request.access.url is None:
            return None
        if mid not in fetched:
            try:
                resource, _ = gatherer.client("a draft order's medication is not in the request").read(
                    "Medication", mid
                )
            except FhirError:
                return None
            fetched[mid] = resource
        return fetched[mid]

    ino = [
        d for d in drafts if is_inotuzumab(drug_codings(d.resource, known, fetch_medication), setup.tables)
    ]
    if not ino:
        return HookResult([])
    signed = [as_signed(d, request.patient_id) for d in ino]
    record = gatherer.gather(request.prefetch, draft_resources)
    # the drugs the draft orders name (from their Bundle, or read above) belong to the record too
    record.add([r for r in draft_resources if r.get("resourceType") == "Medication"])
    record.add(fetched.values())

    # the record, validated once; the older labs when treatment started before the labs' date floor
    base = [r for r in read_resources(record.resources, "prefetch").resources]
    invalid = dict(validate_all(base)) if setup.validate else {}
    patient = _pick(base, setup, request.patient_id, invalid)
    labs = service.spec("labs")
    first = first_dose_day(patient, today)
    if labs is not None and labs.floor_days is not None and first is not None:
        floor = today - timedelta(days=labs.floor_days)
        needed = first - timedelta(days=pretreatment_days(service.protocol))
        if needed < floor:
            gatherer.fetch_between(labs, needed, floor)
            base = [r for r in read_resources(record.resources, "prefetch").resources]
            invalid = dict(validate_all(base)) if setup.validate else {}
            patient = _pick(base, setup, request.patient_id, invalid)

    evaluation = evaluate_record(patient, setup)
    ctx = CardContext(
        service.id,
        service.hook,
        request.hook_instance,
        service.protocol,
        setup.variant.title,
        setup.variant.source_file,
        summary_url,
    )
    only_inotuzumab = all(
        is_inotuzumab(drug_codings(r, known, fetch_medication), setup.tables)
        for r in draft_resources
        if r.get("resourceType") == "MedicationRequest"
    )
    held = _identifiers([*draft_resources, *record.resources])
    cards: list[dict[str, Any]] = []
    for draft, order in zip(ino, signed, strict=True):
        others = [r for r in base if resource_ref(r) != draft.ref]
        order_invalid = {**invalid, **(validate_all([order]) if setup.validate else {})}
        with_order = _pick([*others, order], setup, request.patient_id, order_invalid)
        check = check_order(with_order, draft.ref, service.protocol, None, setup.formula).as_json()
        premeds = premedication_requests(evaluation, check, setup, now, held) if only_inotuzumab else []
        cards += order_cards(ctx, OrderView(draft.ref, draft.resource, check, premeds))
    unique = list({c["uuid"]: c for c in cards}.values())
    # the cards link to the HTML summary, rendered only when a clinician opens the link
    shown = evaluation if unique and summary_url else None
    return HookResult(sort_cards(unique), shown, dict(record.how), len(ino))


def today_of(now: str) -> date:
    return date.fromisoformat(now[:10])
