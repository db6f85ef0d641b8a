"""Fetching patients' records with few round trips.

- ``Patient/{id}/$everything`` when the server's CapabilityStatement offers it, several patients per
  ``batch`` request. Its answer is checked: every ``next`` page is read, and a ``total`` larger than what
  came back makes the patient fall back to searches (a server that caps ``$everything`` is not trusted).
- else one ``batch`` of the searches the rules need, per patient: the Patient, Observations by the
  mapping tables' codes (our BSA Observation's code among them), Conditions, the three medication
  types (``_include`` of their Medication), Procedures, AllergyIntolerances, Immunizations, and our
  summary DocumentReferences by our identifier system.
- with either, our write-back resources that the record cannot hold (DetectedIssue is not in every
  server's patient compartment: sekmet-fhir does not index its ``patient``) are looked up with the
  record, by the keys the ledger remembers from the last run.

``Record.known_absent`` then says which keys are surely not on the server: keys of the types the fetch
covers completely (a draft proposal, the BSA Observation, the summary), and the keys looked up with the
record. Only the plan's other keys need a look-up before writing, so a steady-state run needs none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from adapter.fhir.client import FhirClient, FhirError, ServerCapabilities
from adapter.mapping.tables import Tables
from adapter.sync.ledger import PatientState, later
from adapter.sync.selection import PATIENT_TYPES, last_updated
from adapter.writeback.apply import Answer, get_many, lookup_urls, search_entries
from adapter.writeback.codes import load_codes
from adapter.writeback.keys import Key

#: Types whose resources of ours a complete fetch holds (they point at the patient with ``subject``).
COVERED_TYPES = frozenset({"MedicationRequest", "Observation", "DocumentReference"})
CODES_PER_SEARCH = 40
EVERYTHING_COUNT = 1000
#: An entry status for ``$everything`` that sends the patient to the searches instead.
FALLBACK_STATUSES = frozenset({400, 404, 405, 422, 501})


@dataclass(slots=True)
class Record:
    """One patient's record as fetched, with our write-back resources found beside it."""

    patient_id: str
    bundles: list[dict[str, Any]] = field(default_factory=list)  # searchset pages, as read
    resources: list[dict[str, Any]] = field(default_factory=list)  # every resource, once
    complete_types: frozenset[str] = frozenset()
    searched: set[Key] = field(default_factory=set)
    seen_until: str | None = None  # the latest meta.lastUpdated in the record
    how: str = "everything"

    def known_absent(self, rtype: str, key: Key) -> bool:
        """Whether the fetch shows that no resource of ``rtype`` has ``key`` (so no look-up is needed)."""
        return rtype in self.complete_types or key in self.searched

    def add(self, bundle: dict[str, Any], resources: list[dict[str, Any]]) -> None:
        self.bundles.append(bundle)
        seen = {(r.get("resourceType"), r.get("id")) for r in self.resources}
        for r in resources:
            if (r.get("resourceType"), r.get("id")) in seen:
                continue
            seen.add((r.get("resourceType"), r.get("id")))
            self.resources.append(r)
            if r.get("resourceType") == "Patient" and r.get("id") != self.patient_id:
                continue  # another patient linked from this one: not part of this record
            self.seen_until = later(self.seen_until, last_updated(r))


def _observation_codes(tables: Tables) -> list[str]:
    names = {n for n, c in tables.concepts.items() if c.kind == "observation"}
    return sorted(f"{s}|{c}" for (s, c), concepts in tables.exact.items() if concepts & names)


def search_urls(patient_id: str, tables: Tables) -> list[str]:
    """The searches that read one patient's record when ``$everything`` cannot."""
    ref = f"Patient/{patient_id}"
    codes = _observation_codes(tables)
    summary_system = load_codes().identifier_systems.summary
    urls = [f"Patient?{urlencode([('_id', patient_id)])}"]
    for i in range(0, len(codes), CODES_PER_SEARCH):
        chunk = ",".join(codes[i : i + CODES_PER_SEARCH])
        urls.append("Observation?" + urlencode([("patient", ref), ("code", chunk), ("_count", "1000")]))
    for rtype, param in PATIENT_TYPES:
        if rtype == "Observation":
            continue
        params = [(param, ref), ("_count", "1000")]
        if rtype.startswith("Medication"):
            params.append(("_include", f"{rtype}:medication"))
        urls.append(f"{rtype}?{urlencode(params)}")
    ours = f"{summary_system}|"
    urls.append(
        "DocumentReference?" + urlencode([("patient", ref), ("identifier", ours), ("_count", "1000")])
    )
    return urls


def everything_url(patient_id: str) -> str:
    return f"Patient/{patient_id}/$everything?" + urlencode([("_count", str(EVERYTHING_COUNT))])


def remembered_urls(state: PatientState, complete_types: frozenset[str]) -> tuple[list[str], set[Key]]:
    """Searches for the keys of ours the ledger remembers that the record does not cover."""
    wanted = [
        (t, Key(s, v))
        for t, s, v in state.keys
        if t not in complete_types and t not in ("Provenance", "Device")
    ]
    return lookup_urls(wanted), {k for _, k in wanted}


class IncompleteFetch(FhirError):  # noqa: N818 - a kind of FhirError
    """``$everything`` answered fewer resources than its ``total``: the record is fetched by searches."""


def _read_everything(client: FhirClient, record: Record, answer: Answer) -> None:
    bundle = answer.value()
    if bundle.get("resourceType") != "Bundle":
        raise FhirError(None, None, "FHIR $everything: the answer is not a Bundle")
    resources = list(search_entries(client, bundle))
    total = bundle.get("total")
    if isinstance(total, int) and total > len(resources):
        raise IncompleteFetch(None, None, f"FHIR $everything: {len(resources)} of {total} resources returned")
    record.add(bundle, resources)


def _read_search(client: FhirClient, record: Record, answer: Answer) -> None:
    bundle = answer.value()
    record.add(bundle, list(search_entries(client, bundle)))


def fetch_records(
    client: FhirClient,
    features: ServerCapabilities,
    patients: Sequence[PatientState],
    tables: Tables,
    *,
    max_entries: int = 50,
) -> dict[str, Record | FhirError]:
    """The records of ``patients`` (a failure per patient is returned, not raised; a failure of the whole
    request, e.g. the server unreachable, raises)."""
    out: dict[str, Record | FhirError] = {}
    plans: list[tuple[PatientState, Record, list[tuple[str, str]]]] = []  # (state, record, [(kind, url)])
    for state in patients:
        how = "everything" if features.everything else "search"
        record = Record(state.patient_id, complete_types=COVERED_TYPES, how=how)
        urls = (
            [("everything", everything_url(state.patient_id))]
            if features.everything
            else [("search", u) for u in search_urls(state.patient_id, tables)]
        )
        extra, searched = remembered_urls(state, record.complete_types)
        record.searched = searched
        urls += [("ours", u) for u in extra]
        plans.append((state, record, urls))
    flat = [url for _, _, urls in plans for _, url in urls]
    answers = iter(get_many(client, flat, use_batch=features.batch, max_entries=max_entries))
    fallback: list[PatientState] = []
    for state, record, urls in plans:
        failure: FhirError | None = None
        for kind, _url in urls:
            answer = next(answers)
            if failure is not None:
                continue
            try:
                if kind == "everything":
                    _read_everything(client, record, answer)
                else:
                    _read_search(client, record, answer)
            except FhirError as exc:
                failure = exc
                if kind == "everything" and (
                    isinstance(exc, IncompleteFetch) or exc.status in FALLBACK_STATUSES
                ):
                    fallback.append(state)  # $everything capped or refused: read the record by searches
        if failure is None:
            out[state.patient_id] = record
        elif state not in fallback:
            out[state.patient_id] = failure
    if fallback:
        searched_features = dataclasses.replace(features, everything=False)
        out.update(fetch_records(client, searched_features, fallback, tables, max_entries=max_entries))
    return out
