"""Write one evaluation back to a FHIR server (the I/O edge of write-back).

1. Build the Bundle once without knowledge, to learn which business identifiers it would use.
2. Look each one up on the server (``identifier=`` / ``_tag=`` search; more than one match is an
   error, never a guess).
3. Build again with what exists: unchanged resources drop out, a changed draft becomes a PUT with
   ``ifMatch``, a signed order is left alone and a DetectedIssue says so (adapter.writeback.bundle).
4. POST the transaction. A 412 (someone changed a draft meanwhile) surfaces as
   ``FhirPreconditionFailed``: re-run to re-read and rebuild.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapter.fhir.client import FhirClient
from adapter.writeback.bundle import (
    Existing,
    WritePlan,
    build_transaction,
    existing_from_resources,
    lookup_query,
)
from adapter.writeback.keys import Key
from adapter.writeback.settings import WriteSettings

log = logging.getLogger("adapter.writeback")


@dataclass(slots=True)
class WriteResult:
    plan: WritePlan
    response: dict[str, Any] | None  # the transaction-response Bundle; None when nothing was sent


def fetch_existing(client: FhirClient, plan: WritePlan) -> dict[Key, Existing]:
    """What the server already holds under the plan's keys (one search per planned resource)."""
    found: list[dict[str, Any]] = []
    for entry in plan.bundle.get("entry", []):
        resource = entry["resource"]
        if resource["resourceType"] == "Provenance":
            continue  # keyed by what it records: rebuilt below, it is new or matched by ifNoneExist
        name, _, value = lookup_query(resource).partition("=")
        match = client.search_one(resource["resourceType"], {name: value})
        if match is not None:
            found.append(match)
    return existing_from_resources(found)


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
    response = client.transaction(plan.bundle)
    counts = plan.summary()
    log.info(
        "write-back: %d entries (%d created, %d updated, %d not touched)",
        counts["entries"],
        counts["created"],
        counts["updated"],
        len(counts["not_touched"]),
    )
    return WriteResult(plan, response)
