"""Checks for the sync tests: what the server holds of ours, and what ``evaluate --out`` would build."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from adapter.api import evaluate_resources
from adapter.evaluate import render_summaries
from adapter.fhir.client import FhirClient
from adapter.sync import SyncOptions
from adapter.writeback.bundle import (
    Existing,
    build_transaction,
    existing_from_resources,
    resource_key,
    software_device,
)
from adapter.writeback.codes import load_codes
from adapter.writeback.keys import Key, content
from adapter.writeback.settings import WriteSettings


def _our_searches() -> list[tuple[str, str, str]]:
    """Our written types and how the server finds all of them (a token search on our system alone)."""
    codes = load_codes()
    ids = codes.identifier_systems
    tag = codes.provenance_tag_system
    return [
        ("MedicationRequest", "identifier", f"{ids.dose}|"),
        ("Observation", "identifier", f"{ids.bsa}|"),
        ("DocumentReference", "identifier", f"{ids.summary}|"),
        ("DetectedIssue", "_tag", f"{tag}|"),
        ("Provenance", "_tag", f"{tag}|"),
        ("Device", "identifier", f"{ids.software}|"),
    ]


def our_resources(client: FhirClient) -> list[dict[str, Any]]:
    """Every resource of ours on the server (all pages)."""
    out: list[dict[str, Any]] = []
    for rtype, name, value in _our_searches():
        out += list(client.search(rtype, [(name, value), ("_count", "500")]))
    return out


def snapshot(client: FhirClient) -> dict[str, str]:
    """``Type/id`` -> versionId of every resource of ours."""
    return {f"{r['resourceType']}/{r['id']}": r["meta"]["versionId"] for r in our_resources(client)}


def keyed(resources: Iterable[dict[str, Any]]) -> tuple[dict[Key, dict[str, Any]], list[Key]]:
    """Our resources by key, and the keys held by more than one resource (duplicates)."""
    counts: Counter[Key] = Counter()
    index: dict[Key, dict[str, Any]] = {}
    for r in resources:
        for key in existing_from_resources([r]):
            counts[key] += 1
            index[key] = r
    return index, [k for k, n in counts.items() if n > 1]


def patient_of(resource: Mapping[str, Any]) -> str | None:
    for name in ("subject", "patient"):
        ref = resource.get(name)
        if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
            return str(ref["reference"])
    if resource.get("resourceType") == "Provenance":
        for entity in resource.get("entity") or []:
            what = str((entity.get("what") or {}).get("reference", ""))
            if what.startswith("Patient/"):
                return what
    return None


@dataclass
class Expected:
    evaluation: dict[str, Any]
    bundle: dict[str, Any]


def expected(
    resources: list[dict[str, Any]],
    variant: str,
    as_of: date,
    now: str,
    existing: Mapping[Key, Existing] | None = None,
) -> Expected:
    """What ``evaluate --out`` builds for this record with nothing written before (``existing``: e.g. the
    adapter's Device, which sync finds on the server; the Provenance's key depends on how the resources
    refer to it)."""
    (evaluation,) = evaluate_resources(resources, variant, as_of).results
    summaries = render_summaries(evaluation, None, WriteSettings())
    return Expected(evaluation, build_transaction(evaluation, summaries, now, existing=existing).bundle)


def device_existing(server: Mapping[Key, dict[str, Any]]) -> dict[Key, Existing]:
    """The adapter's Device as found on the server (to build what sync builds)."""
    key, _device = software_device()
    return existing_from_resources([server[key]]) if key in server else {}


def _substitute(value: Any, refs: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (refs.get(v, v) if k == "reference" and isinstance(v, str) else _substitute(v, refs))
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list):
        return [_substitute(v, refs) for v in value]
    return value


def differences(bundle: dict[str, Any], server: Mapping[Key, dict[str, Any]]) -> list[str]:
    """How the server's resources differ from the Bundle's (empty: the same, apart from timestamps and
    the server's ids): each entry's key must be on the server with the same content once the Bundle's
    ``urn:uuid`` references are replaced by the server's references."""
    refs: dict[str, str] = {}
    problems = []
    for entry in bundle.get("entry", []):
        key = resource_key(entry["resource"])
        found = server.get(key)
        if found is None:
            problems.append(f"missing {entry['resource']['resourceType']} {key.value}")
            continue
        refs[entry["fullUrl"]] = f"{found['resourceType']}/{found['id']}"
    for entry in bundle.get("entry", []):
        key = resource_key(entry["resource"])
        found = server.get(key)
        if found is None:
            continue
        want = _substitute(copy.deepcopy(entry["resource"]), refs)
        want.pop("meta", None)
        if content(want) != content(found):
            problems.append(f"differs: {entry['resource']['resourceType']} {key.value}")
    return problems


def options(server_url: str, token_file: Path, state: Path, as_of: date, **kw: Any) -> SyncOptions:
    kw.setdefault("progress", "none")
    return SyncOptions(
        server=server_url,
        protocol=kw.pop("protocol", "nhs-ta514"),
        state=state,
        as_of=as_of,
        auth="bearer",
        token_file=str(token_file),
        **kw,
    )


def token_file(directory: Path, token: str) -> Path:
    path = directory / "token"
    path.write_text(token + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path
