"""Write one evaluation back to a FHIR server (the I/O edge of write-back).

1. Build the Bundle once without knowledge, to learn which business identifiers it would use.
2. Look them all up on the server in ONE batch request (:func:`lookup_keys`: the keys of one type share
   one ``identifier=`` / ``_tag=`` search; more than one match for a key is an error, never a guess).
3. Build again with what exists: unchanged resources drop out, a changed draft becomes a PUT with
   ``ifMatch``, a signed order is left alone and a DetectedIssue says so (adapter.writeback.bundle).
4. POST the transaction. A 412 (someone changed a draft meanwhile) surfaces as
   ``FhirPreconditionFailed``: re-run to re-read and rebuild.

``ino-adapter sync`` (adapter.sync) uses the same pieces: it looks up only the keys that the fetched
record does not already answer (:func:`unknown_keys`), so a steady-state run looks up nothing.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from adapter.fhir.client import (
    FhirClient,
    FhirError,
    FhirMultipleMatches,
    FhirUnauthorized,
    is_idempotent_bundle,
    summarize_outcome,
)
from adapter.writeback.bundle import (
    Existing,
    WritePlan,
    build_transaction,
    existing_from_resources,
    resource_key,
)
from adapter.writeback.codes import load_codes
from adapter.writeback.keys import Key
from adapter.writeback.settings import WriteSettings

log = logging.getLogger("adapter.writeback")

#: Entries of one batch request (servers cap batch sizes; HAPI's default is far above this).
MAX_BATCH_ENTRIES = 50
#: Keys looked up by one search (an OR list of tokens; keeps URLs short).
KEYS_PER_SEARCH = 40


@dataclass(slots=True)
class WriteResult:
    plan: WritePlan
    response: dict[str, Any] | None  # the transaction-response Bundle; None when nothing was sent


@dataclass(frozen=True, slots=True)
class Answer:
    """One GET of a batch: the resource the server answered, or the error it reported for that entry."""

    url: str
    resource: dict[str, Any] | None
    error: FhirError | None = None

    def value(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        if self.resource is None:
            raise FhirError(None, None, "FHIR batch: an entry answered without a resource")
        return self.resource


def get_many(
    client: FhirClient,
    urls: Sequence[str],
    *,
    use_batch: bool = True,
    max_entries: int = MAX_BATCH_ENTRIES,
) -> list[Answer]:
    """GET every relative URL (``Type?query``, ``Type/id``, ``Patient/id/$everything``) in as few round
    trips as the server allows: one ``batch`` Bundle per ``max_entries`` URLs (the client checks each
    entry's status and sends an entry the server answered 429/503/... again, alone, a bounded number of
    times), or one GET each when ``use_batch`` is False. Errors of single entries come back in their
    :class:`Answer`; a failure of the whole request (the server unreachable, a 401) raises."""
    if not use_batch:
        out = []
        for url in urls:
            try:
                out.append(Answer(url, client.request("GET", url).body))
            except FhirError as exc:
                if isinstance(exc, FhirUnauthorized) or exc.status is None:
                    raise
                out.append(Answer(url, None, exc))
        return out
    answers: list[Answer] = []
    for start in range(0, len(urls), max_entries):
        chunk = urls[start : start + max_entries]
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": url}} for url in chunk],
        }
        result = client.batch(bundle, idempotent=True)
        answers += [Answer(url, e.resource, e.error) for url, e in zip(chunk, result, strict=True)]
    return answers


def search_entries(client: FhirClient, bundle: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The match entries' resources of a searchset Bundle and of every ``next`` page after it."""
    seen: set[str] = set()
    pages = 0
    while True:
        for entry in bundle.get("entry") or []:
            search = entry.get("search") if isinstance(entry, dict) else None
            mode = search.get("mode", "match") if isinstance(search, dict) else "match"
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if mode == "outcome" and isinstance(resource, dict):
                issues = [i for i in resource.get("issue") or [] if isinstance(i, dict)]
                if any(
                    i.get("severity") in ("error", "fatal") or i.get("code") == "not-supported"
                    for i in issues
                ):
                    raise FhirError(
                        200, resource, f"FHIR search: the server reported: {summarize_outcome(resource)}"
                    )
            elif mode == "match" and isinstance(resource, dict):
                yield resource
        links = {
            str(link.get("relation")): link.get("url")
            for link in bundle.get("link") or []
            if isinstance(link, dict) and isinstance(link.get("url"), str)
        }
        next_url = links.get("next")
        if not isinstance(next_url, str):
            return
        pages += 1
        if next_url in seen or pages >= client.max_pages:
            raise FhirError(None, None, "FHIR search: paging loops or has too many pages")
        seen.add(next_url)
        page = client.request("GET", next_url).body
        if not isinstance(page, dict) or page.get("resourceType") != "Bundle":
            raise FhirError(None, None, "FHIR search: a page that is not a Bundle")
        bundle = page


def lookup_urls(wanted: Iterable[tuple[str, Key]]) -> list[str]:
    """The searches that find ``(resource type, key)``s: keys of one type share a search (an OR list)."""
    codes = load_codes()
    by_type: dict[str, list[Key]] = defaultdict(list)
    for rtype, key in wanted:
        if key not in by_type[rtype]:
            by_type[rtype].append(key)
    urls = []
    for rtype, keys in sorted(by_type.items()):
        name = "_tag" if rtype in codes.match_by_tag else "identifier"
        for start in range(0, len(keys), KEYS_PER_SEARCH):
            chunk = keys[start : start + KEYS_PER_SEARCH]
            query = urlencode(
                [(name, ",".join(k.token() for k in chunk)), ("_count", str(2 * len(chunk) + 1))]
            )
            urls.append(f"{rtype}?{query}")
    return urls


def find_keys(
    client: FhirClient, wanted: Iterable[tuple[str, Key]], *, use_batch: bool = True
) -> tuple[list[dict[str, Any]], set[Key]]:
    """What the server holds under the given ``(resource type, key)``s (one batch request), and the keys
    that more than one resource matched."""
    wanted = list(wanted)
    if not wanted:
        return [], set()
    found: list[dict[str, Any]] = []
    for answer in get_many(client, lookup_urls(wanted), use_batch=use_batch):
        found.extend(search_entries(client, answer.value()))
    counts: dict[Key, int] = defaultdict(int)
    for resource in found:
        for key in existing_from_resources([resource]):
            counts[key] += 1
    return found, {key for _, key in wanted if counts[key] > 1}


def lookup_keys(
    client: FhirClient, wanted: Iterable[tuple[str, Key]], *, use_batch: bool = True
) -> list[dict[str, Any]]:
    """What the server holds under the given ``(resource type, key)``s, found in one batch request.

    A key matched by more than one resource raises :class:`FhirMultipleMatches` (never a guess)."""
    found, duplicated = find_keys(client, wanted, use_batch=use_batch)
    if duplicated:
        raise FhirMultipleMatches(None, None, "FHIR search: a write-back key matched more than one resource")
    return found


def planned_keys(plan: WritePlan) -> list[tuple[str, Key]]:
    """``(type, key)`` of every entry of the plan that has to be looked up (Provenance is not: keyed by
    what it records, it is new or matched by its ``ifNoneExist``)."""
    return [
        (entry["resource"]["resourceType"], resource_key(entry["resource"]))
        for entry in plan.bundle.get("entry", [])
        if entry["resource"]["resourceType"] != "Provenance"
    ]


def unknown_keys(
    plan: WritePlan, known_absent: Callable[[str, Key], bool], existing: Mapping[Key, Existing]
) -> list[tuple[str, Key]]:
    """The plan's keys that neither ``existing`` nor ``known_absent`` answers: what must be looked up
    before the plan can be trusted."""
    return [(t, k) for t, k in planned_keys(plan) if k not in existing and not known_absent(t, k)]


def fetch_existing(client: FhirClient, plan: WritePlan, *, use_batch: bool = True) -> dict[Key, Existing]:
    """What the server already holds under the plan's keys (one batch request for all of them)."""
    return existing_from_resources(lookup_keys(client, planned_keys(plan), use_batch=use_batch))


def write_back(
    client: FhirClient,
    evaluation: dict[str, Any],
    summaries: Mapping[str, str],
    now: str,
    settings: WriteSettings | None = None,
) -> WriteResult:
    """Reconcile ``evaluation`` with the server and send what is new or changed, in one transaction."""
    settings = settings or WriteSettings()
    first = build_transaction(evaluation, summaries, now, settings)
    existing = fetch_existing(client, first)
    plan = build_transaction(evaluation, summaries, now, settings, existing)
    if not plan.bundle["entry"]:
        log.info("write-back: nothing new or changed (%d unchanged)", len(plan.unchanged))
        return WriteResult(plan, None)
    response = client.transaction(plan.bundle, idempotent=is_idempotent_bundle(plan.bundle))
    counts = plan.summary()
    log.info(
        "write-back: %d entries (%d created, %d updated, %d not touched)",
        counts["entries"],
        counts["created"],
        counts["updated"],
        len(counts["not_touched"]),
    )
    return WriteResult(plan, response)
