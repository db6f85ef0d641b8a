"""The patient's record for one hook call: the request's prefetch, and what is missing from the EHR's
``fhirServer`` (with ``fhirAuthorization``). Nothing is guessed: what can be neither read from the prefetch
nor fetched is answered 412 Precondition Failed (CDS Hooks 2.0 §Providing FHIR Resources).

Per prefetch key of the service (adapter.service.cds.discovery):

- **omitted**: the EHR did not satisfy it (the specification: "MUST omit the prefetch key if relevant
  details cannot be provided"): fetched from ``fhirServer``; without one, 412.
- **null**: the specification defines it as "no data to populate the key" (an empty result). Some EHRs
  send null when they could not prefetch, which would silently drop records the rules read closed world
  (a VOD history, a drug). So with a ``fhirServer`` a null key is fetched anyway (one search; certain);
  without one it is taken as the specification defines it, an empty result (the ``patient`` read cannot be
  empty: 412).
- **an OperationOutcome** (the EHR's error for that key, which the specification asks services to look
  for), or a searchset Bundle reporting an error in a ``search.mode = outcome`` entry: not obtained, fetched
  (412 without ``fhirServer``).
- **a searchset Bundle with a ``next`` link** (the EHR paged it): the remaining pages are read from
  ``fhirServer`` (412 without one).
- **anything else that is not a resource or a Bundle**: 400 (a malformed request).

Medications that a medication record names by ``medicationReference`` and that neither the prefetch nor the
draft orders hold (nor a ``contained`` one) are read from ``fhirServer`` too: without the drug's code the
record cannot be read, so they are required data (412 without a server).

Every fetch failure (the server unreachable, 401/403, a 4xx/5xx, a search the server reports as failed)
is 412: the service cannot decide without the data. Messages name the prefetch key and the HTTP status,
never a resource's content or id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from adapter.fhir.client import FhirClient
from adapter.fhir.errors import FhirError, FhirNotFound
from adapter.mapping.fhir_values import normalise_reference, reference
from adapter.service.cds.discovery import CdsService, PrefetchSpec
from adapter.service.errors import BadRequestError, ServiceError
from adapter.writeback.apply import search_entries

#: Codes per search when the service fetches a code-filtered search itself (keeps URLs short).
CODES_PER_SEARCH = 40
#: Medications read by ``_id`` per search.
IDS_PER_SEARCH = 50
MEDICATION_TYPES = frozenset({"MedicationRequest", "MedicationStatement", "MedicationAdministration"})


class PreconditionFailedError(ServiceError):
    """412: required data is neither in the prefetch nor obtainable from the EHR's FHIR server."""

    def __init__(self, text: str) -> None:
        super().__init__(412, text, "incomplete")


ClientFactory = Callable[[str, str | None], FhirClient]


@dataclass
class Record:
    """The patient's resources gathered for one call, and how each prefetch key was obtained."""

    patient_id: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    #: prefetch key -> "prefetch", "null", "fetched" (for the log; no data)
    how: dict[str, str] = field(default_factory=dict)
    client: FhirClient | None = None
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def add(self, resources: Iterable[Any]) -> None:
        for r in resources:
            if not isinstance(r, dict) or not isinstance(r.get("resourceType"), str):
                continue
            if r["resourceType"] in ("OperationOutcome", "Bundle"):
                continue
            rid = r.get("id")
            if isinstance(rid, str) and rid:
                key = (r["resourceType"], rid)
                if key in self._seen:
                    continue
                self._seen.add(key)
            self.resources.append(r)

    def has(self, resource_type: str, rid: str) -> bool:
        return (resource_type, rid) in self._seen


@dataclass(frozen=True, slots=True)
class ServerAccess:
    """``fhirServer`` and the bearer token of ``fhirAuthorization`` (either may be absent)."""

    url: str | None
    token: str | None

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> ServerAccess:
        url, auth = body.get("fhirServer"), body.get("fhirAuthorization")
        if url is not None and (not isinstance(url, str) or not url):
            raise BadRequestError("fhirServer must be a URL string")
        token: str | None = None
        if auth is not None:
            if not isinstance(auth, dict):
                raise BadRequestError("fhirAuthorization must be an object")
            if url is None:
                raise BadRequestError("fhirAuthorization is given without fhirServer (cds-r-1)")
            token = auth.get("access_token")
            if not isinstance(token, str) or not token:
                raise BadRequestError("fhirAuthorization.access_token must be a non-empty string")
            if str(auth.get("token_type", "Bearer")).lower() != "bearer":
                raise BadRequestError("fhirAuthorization.token_type must be Bearer")
        return cls(url, token)


def _entries(bundle: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        search = entry.get("search")
        mode = search.get("mode", "match") if isinstance(search, dict) else "match"
        yield str(mode), entry["resource"]


def _reports_error(outcome: Mapping[str, Any]) -> bool:
    return any(
        isinstance(i, dict) and (i.get("severity") in ("error", "fatal") or i.get("code") == "not-supported")
        for i in outcome.get("issue") or []
    )


def _next_link(bundle: Mapping[str, Any]) -> bool:
    return any(
        isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str)
        for link in bundle.get("link") or []
    )


class Gatherer:
    """Fills a :class:`Record` for ``service`` from a request body (see the module docstring)."""

    def __init__(
        self, service: CdsService, patient_id: str, today: date, access: ServerAccess, clients: ClientFactory
    ):
        self.service = service
        self.patient_id = patient_id
        self.today = today
        self.access = access
        self._clients = clients
        self.record = Record(patient_id)

    # -- the server ------------------------------------------------------------------------------------
    def client(self, why: str) -> FhirClient:
        if self.record.client is None:
            if self.access.url is None:
                raise PreconditionFailedError(f"{why}, and the request gives no fhirServer to fetch it from")
            self.record.client = self._clients(self.access.url, self.access.token)
        return self.record.client

    def _get(self, key: str, resource_type: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        client = self.client(f"prefetch {key!r} was not obtained")
        try:
            body = client.request("GET", resource_type, params=params).body
            if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
                raise FhirError(None, None, "the answer is not a Bundle")
            return list(search_entries(client, body))
        except FhirError as exc:
            raise PreconditionFailedError(
                f"prefetch {key!r} could not be fetched from fhirServer ({_why(exc)})"
            ) from None

    def fetch(self, spec: PrefetchSpec) -> None:
        if spec.read:
            client = self.client(f"prefetch {spec.key!r} was not obtained")
            try:
                resource, _ = client.read(spec.resource_type, self.patient_id)
            except FhirNotFound:
                raise PreconditionFailedError("the patient cannot be read from fhirServer (404)") from None
            except FhirError as exc:
                raise PreconditionFailedError(
                    f"prefetch {spec.key!r} could not be fetched ({_why(exc)})"
                ) from None
            self.record.add([resource])
        else:
            chunks: list[tuple[str, ...] | None] = [
                spec.codes[i : i + CODES_PER_SEARCH] for i in range(0, len(spec.codes), CODES_PER_SEARCH)
            ]
            for chunk in chunks or [None]:
                params = spec.params(self.patient_id, self.today, chunk)
                self.record.add(self._get(spec.key, spec.resource_type, params))
        self.record.how[spec.key] = "fetched"

    def fetch_between(self, spec: PrefetchSpec, start: date, end: date) -> None:
        """The search of ``spec`` for results dated from ``start`` and before ``end`` (older results the
        rules need than the prefetch's date floor gives)."""
        for i in range(0, max(len(spec.codes), 1), CODES_PER_SEARCH):
            params = [("patient", self.patient_id)]
            if spec.codes:
                params.append(("code", ",".join(spec.codes[i : i + CODES_PER_SEARCH])))
            params += [("date", f"ge{start.isoformat()}"), ("date", f"lt{end.isoformat()}")]
            self.record.add(self._get(spec.key, spec.resource_type, params))
        self.record.how[spec.key] = self.record.how.get(spec.key, "prefetch") + "+older"

    # -- the prefetch ----------------------------------------------------------------------------------
    def take(self, spec: PrefetchSpec, value: Any) -> bool:
        """Use a prefetched value; False when it was not obtained (to be fetched)."""
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise BadRequestError(f"prefetch {spec.key!r} is neither a FHIR resource, a Bundle nor null")
        kind = value["resourceType"]
        if kind == "OperationOutcome":
            return False
        if kind != "Bundle":
            if kind != spec.resource_type:
                raise BadRequestError(f"prefetch {spec.key!r} holds a {kind}, not a {spec.resource_type}")
            self.record.add([value])
            self.record.how[spec.key] = "prefetch"
            return True
        found: list[dict[str, Any]] = []
        for _mode, resource in _entries(value):
            if resource.get("resourceType") == "OperationOutcome":
                if _reports_error(resource):
                    return False  # the EHR's error for this key: not obtained
                continue
            found.append(resource)
        if _next_link(value):
            client = self.client(f"prefetch {spec.key!r} is paged")
            try:
                pages = list(client.pages_from(value))[1:]
            except FhirError as exc:
                raise PreconditionFailedError(
                    f"prefetch {spec.key!r}: its next pages could not be read ({_why(exc)})"
                ) from None
            for page in pages:
                found += [r for _, r in _entries(page) if r.get("resourceType") != "OperationOutcome"]
        self.record.add(found)
        self.record.how[spec.key] = "prefetch"
        return True

    def gather(self, prefetch: Any, extra: Iterable[dict[str, Any]] = ()) -> Record:
        """The record: every prefetch key taken or fetched, then the Medications the records name. ``extra``
        (the draft orders' Bundle entries) may hold Medications too."""
        if prefetch is None:
            prefetch = {}
        if not isinstance(prefetch, dict):
            raise BadRequestError("prefetch must be an object")
        missing: list[PrefetchSpec] = []
        for spec in self.service.prefetch:
            if spec.key not in prefetch:
                missing.append(spec)
            elif prefetch[spec.key] is None:
                if self.access.url is not None or spec.read:
                    missing.append(spec)
                else:
                    self.record.how[spec.key] = "null"
            elif not self.take(spec, prefetch[spec.key]):
                missing.append(spec)
        for spec in missing:
            self.fetch(spec)
        if not self.record.has("Patient", self.patient_id):
            raise PreconditionFailedError("the prefetched patient is not context.patientId")
        self.medications(extra)
        return self.record

    def medications(self, extra: Iterable[dict[str, Any]]) -> None:
        """Read the Medications that medication records name and nothing in hand holds."""
        extra = list(extra)
        held = {
            r.get("id") for r in [*self.record.resources, *extra] if r.get("resourceType") == "Medication"
        }
        wanted: set[str] = set()
        for r in [*self.record.resources, *extra]:
            if r.get("resourceType") not in MEDICATION_TYPES:
                continue
            target = reference(r.get("medicationReference"))
            if target is None or target.startswith("#"):
                continue
            target = normalise_reference(target)
            rtype, _, rid = target.partition("/")
            if rtype == "Medication" and rid and rid not in held:
                wanted.add(rid)
        ids = sorted(wanted)
        for i in range(0, len(ids), IDS_PER_SEARCH):
            chunk = ",".join(ids[i : i + IDS_PER_SEARCH])
            self.record.add(self._get("medications", "Medication", [("_id", chunk)]))


def _why(exc: FhirError) -> str:
    return f"HTTP {exc.status}" if exc.status is not None else "no answer"
