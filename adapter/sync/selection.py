"""Who ``sync`` evaluates: the cohort on the server, and which of it changed since it was last evaluated.

Cohort (``--patient`` and ``--group`` replace the searches when given):

- patients with a B-ALL Condition: ``Condition?code=system|code,...`` with the ``b-all`` concept's codes
  from the mapping tables (shipped + ``--mappings``). A prefix entry such as ``icd10 C91.0*`` cannot be
  searched portably (``:below`` is defined for hierarchical code systems only, and few servers support it
  on ICD-10), so it is searched as the exact code ``C91.0`` plus every exact code the tables know under
  that prefix (``C91.02``, ``b-all-relapse``), plus the project's own code for the concept. A site whose
  records carry finer codes (ICD-10-CM ``C91.00``, ``C91.01``) lists them in its site table's ``b-all``
  entry (mappings/README.md);
- patients with any inotuzumab record: ``MedicationRequest``, ``MedicationAdministration`` and
  ``MedicationStatement`` with ``code=`` the ``inotuzumab-ozogamicin`` codes (records that name their drug
  by ``medicationReference`` only are not found by this search: list such patients with ``--patient`` or a
  ``Group``);
- ``--patient ID`` (repeatable) and the members of ``--group ID`` (``Group.member.entity``, Patients only).

Every selected patient is checked to exist with one ``Patient?_id=...`` search per chunk of ids.

Changes (``--since``): for the patients whose last evaluation the ledger holds, one batch per chunk of
patients asks every type the rules read for resources with ``_lastUpdated`` after the patient's
checkpoint. A resource of ours whose version is the one we left does not count (our own write-back).
The latest ``meta.lastUpdated`` seen while selecting -- resources, and searchset Bundles, which servers
stamp with their own clock -- is the run's view of the server's clock (the checkpoint).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlencode

from adapter.fhir.client import FhirClient
from adapter.mapping.tables import Tables
from adapter.sync.ledger import PatientState, later, parse_instant
from adapter.writeback.apply import get_many, search_entries
from adapter.writeback.bundle import existing_from_resources

B_ALL = "b-all"
INOTUZUMAB = "inotuzumab-ozogamicin"
MEDICATION_TYPES = ("MedicationRequest", "MedicationAdministration", "MedicationStatement")
#: The types the rules read that point at their patient, with the search parameter that does.
PATIENT_TYPES: tuple[tuple[str, str], ...] = (
    ("Observation", "patient"),
    ("Condition", "patient"),
    ("MedicationRequest", "patient"),
    ("MedicationStatement", "patient"),
    ("MedicationAdministration", "patient"),
    ("Procedure", "patient"),
    ("AllergyIntolerance", "patient"),
    ("Immunization", "patient"),
)
#: Patients per search in the existence check and the change scan (keeps URLs short).
IDS_PER_SEARCH = 50
CODES_PER_SEARCH = 40

_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def patient_id_of(reference: object) -> str | None:
    """The logical id in a Patient reference (relative, absolute or versioned), else None."""
    if not isinstance(reference, str):
        return None
    m = _PATIENT_REF.search(reference)
    return m.group(1) if m else None


def subject_id(resource: Mapping[str, Any]) -> str | None:
    """The id of the Patient a resource is about (``subject`` or ``patient``), or its own for a Patient."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    for name in ("subject", "patient"):
        ref = resource.get(name)
        if isinstance(ref, Mapping):
            found = patient_id_of(ref.get("reference"))
            if found:
                return found
    return None


def last_updated(resource: Mapping[str, Any]) -> str | None:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        parse_instant(value)
    except ValueError:
        return None
    return value


def concept_codes(tables: Tables, concept: str) -> list[str]:
    """``system|code`` tokens to search for ``concept``: its exact codes, each prefix as an exact code
    and every exact code the tables know under a prefix (see the module docstring); excluded codes not."""
    excluded = tables.excludes.get(concept, set())
    tokens: dict[str, None] = {}
    for (system, code), names in sorted(tables.exact.items()):
        if concept in names and (system, code) not in excluded:
            tokens[f"{system}|{code}"] = None
    for system, prefixes in sorted(tables.prefixes.items()):
        for prefix, name in prefixes:
            if name != concept:
                continue
            if (system, prefix) not in excluded:
                tokens[f"{system}|{prefix}"] = None
            for s, code in sorted(tables.exact):
                if s == system and code.startswith(prefix) and (s, code) not in excluded:
                    tokens[f"{s}|{code}"] = None
    return list(tokens)


@dataclass(slots=True)
class Selection:
    """The patients to consider, in a stable order, and what selecting them saw."""

    patient_ids: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # asked for (--patient, --group) but not on the server
    server_time: str | None = None  # the latest meta.lastUpdated seen
    sources: dict[str, int] = field(default_factory=dict)  # how many ids each source gave

    def saw(self, value: str | None) -> None:
        self.server_time = later(self.server_time, value)


def _token_chunks(tokens: Sequence[str], size: int = CODES_PER_SEARCH) -> list[str]:
    return [",".join(tokens[i : i + size]) for i in range(0, len(tokens), size)]


def select_patients(
    client: FhirClient,
    tables: Tables,
    *,
    patients: Sequence[str] = (),
    group: str | None = None,
    page_size: int = 200,
    use_batch: bool = True,
) -> Selection:
    """Resolve the cohort (module docstring) and check that each selected patient exists."""
    sel = Selection()
    ids: dict[str, None] = {}
    explicit: dict[str, None] = {}
    for pid in patients:
        explicit[pid] = None
    sel.sources["patient"] = len(explicit)
    if group is not None:
        resource, _etag = client.read("Group", group)
        sel.saw(last_updated(resource))
        members = 0
        for member in resource.get("member") or []:
            entity = member.get("entity") if isinstance(member, Mapping) else None
            member_id = patient_id_of(entity.get("reference")) if isinstance(entity, Mapping) else None
            if member_id is not None and not (isinstance(member, Mapping) and member.get("inactive") is True):
                explicit[member_id] = None
                members += 1
        sel.sources["group"] = members
    ids.update(explicit)
    if not patients and group is None:
        searches: list[tuple[str, str, str]] = [
            ("Condition", "code", chunk) for chunk in _token_chunks(concept_codes(tables, B_ALL))
        ]
        searches += [
            (rtype, "code", chunk)
            for rtype in MEDICATION_TYPES
            for chunk in _token_chunks(concept_codes(tables, INOTUZUMAB))
        ]
        for rtype, name, value in searches:
            found = 0
            for page in client.search_pages(rtype, [(name, value), ("_count", str(page_size))]):
                sel.saw(last_updated(page))
                for resource in _matches(page):
                    sel.saw(last_updated(resource))
                    subject = subject_id(resource)
                    if subject is not None and subject not in ids:
                        ids[subject] = None
                        found += 1
            source = "condition" if rtype == "Condition" else "medication"
            sel.sources[source] = sel.sources.get(source, 0) + found
    existing = _existing_patients(client, list(ids), sel, use_batch)
    sel.patient_ids = [pid for pid in ids if pid in existing]
    sel.missing = [pid for pid in explicit if pid not in existing]
    return sel


def _matches(page: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for entry in page.get("entry") or []:
        search = entry.get("search") if isinstance(entry, Mapping) else None
        mode = search.get("mode", "match") if isinstance(search, Mapping) else "match"
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if mode == "match" and isinstance(resource, dict):
            out.append(resource)
    return out


def _existing_patients(client: FhirClient, ids: list[str], sel: Selection, use_batch: bool) -> set[str]:
    urls = [
        "Patient?" + urlencode([("_id", ",".join(chunk)), ("_count", str(len(chunk)))])
        for chunk in (ids[i : i + IDS_PER_SEARCH] for i in range(0, len(ids), IDS_PER_SEARCH))
    ]
    found: set[str] = set()
    for answer in get_many(client, urls, use_batch=use_batch):
        bundle = answer.value()
        sel.saw(last_updated(bundle))
        for resource in search_entries(client, bundle):
            sel.saw(last_updated(resource))
            if isinstance(resource.get("id"), str):
                found.add(resource["id"])
    return found


# -- changes ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class Changes:
    """Per patient, the latest change found after its checkpoint (patients absent: nothing changed)."""

    changed: dict[str, str] = field(default_factory=dict)
    server_time: str | None = None


def _ours(resource: Mapping[str, Any], versions: Mapping[str, str]) -> bool:
    """A resource of ours (our identifier or key tag) that is still at the version we left it."""
    if not existing_from_resources([dict(resource)]):
        return False
    ref = f"{resource.get('resourceType')}/{resource.get('id')}"
    version = (resource.get("meta") or {}).get("versionId")
    return versions.get(ref) == version


def scan_changes(
    client: FhirClient,
    known: Mapping[str, PatientState],
    since: Mapping[str, str],
    *,
    use_batch: bool = True,
) -> Changes:
    """Which of the patients in ``since`` (id -> checkpoint) have a resource changed after their checkpoint.

    One batch per chunk of patients: ``Patient?_id=...`` and, per type the rules read,
    ``Type?patient=...&_lastUpdated=gt<the chunk's earliest checkpoint>``; each resource is then held
    against its own patient's checkpoint."""
    out = Changes()
    ids = sorted(since, key=lambda p: (since[p], p))
    for start in range(0, len(ids), IDS_PER_SEARCH):
        chunk = ids[start : start + IDS_PER_SEARCH]
        floor = min(since[p] for p in chunk)
        refs = ",".join(f"Patient/{p}" for p in chunk)
        urls = ["Patient?" + urlencode([("_id", ",".join(chunk)), ("_lastUpdated", f"gt{floor}")])]
        urls += [
            f"{rtype}?" + urlencode([(param, refs), ("_lastUpdated", f"gt{floor}"), ("_count", "1000")])
            for rtype, param in PATIENT_TYPES
        ]
        for answer in get_many(client, urls, use_batch=use_batch):
            bundle = answer.value()
            out.server_time = later(out.server_time, last_updated(bundle))
            for resource in search_entries(client, bundle):
                changed = last_updated(resource)
                out.server_time = later(out.server_time, changed)
                pid = subject_id(resource)
                if pid is None or pid not in since or changed is None:
                    continue
                if parse_instant(changed) <= parse_instant(since[pid]):
                    continue
                state = known.get(pid)
                if state is not None and _ours(resource, state.versions):
                    continue
                out.changed[pid] = later(out.changed.get(pid), changed) or changed
    return out


def dose_due(state: PatientState, as_of: date) -> bool:
    """Whether the last plan's next dose window includes ``as_of``, or closed since the last evaluation
    (a dose day, or a missed one, always gets a fresh evaluation)."""
    if state.dose_earliest is None or state.dose_latest is None:
        return False
    try:
        earliest, latest = date.fromisoformat(state.dose_earliest), date.fromisoformat(state.dose_latest)
    except ValueError:
        return True  # unreadable: evaluate
    if earliest <= as_of <= latest:
        return True
    last = (state.evaluation or {}).get("as_of")
    try:
        last_as_of = date.fromisoformat(last) if isinstance(last, str) else None
    except ValueError:
        last_as_of = None
    return last_as_of is not None and last_as_of <= latest < as_of
