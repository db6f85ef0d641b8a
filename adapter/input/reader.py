"""Read FHIR R4 JSON into plain dicts, remembering where each resource came from.

Accepted: a Bundle (collection, searchset, transaction, batch, document, message), a single
resource, a directory of such files, or Bulk Data NDJSON (one resource per line). Resources the
protocol does not use are counted and dropped here; anything that is not FHIR stops the run with
an :class:`~adapter.errors.InputError` naming the file and the fault.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from adapter.errors import InputError
from adapter.input.resource_types import R4_RESOURCE_TYPES, USED_RESOURCE_TYPES

JSON_SUFFIXES = (".json",)
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
READABLE_BUNDLE_TYPES = frozenset({"collection", "searchset", "transaction", "batch", "document", "message"})


@dataclass(frozen=True, slots=True)
class SourcedResource:
    """One resource as a parsed dict, with where it came from."""

    resource: dict[str, Any]
    origin: str  # e.g. "examples/a.json#entry[3]" or "Observation.ndjson:17"
    full_url: str | None = None


@dataclass(slots=True)
class InputBatch:
    """Everything read from one input: the used resources and a count of the others."""

    resources: list[SourcedResource] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)


def read_input(path: str | Path) -> InputBatch:
    """Read a file or a directory (recursively, in name order)."""
    p = Path(path)
    batch = InputBatch()
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in JSON_SUFFIXES + NDJSON_SUFFIXES
        )
        if not files:
            raise InputError(str(p), "directory holds no .json or .ndjson files")
        for f in files:
            _read_file(f, batch)
    elif p.is_file():
        _read_file(p, batch)
    else:
        raise InputError(str(p), "no such file or directory")
    return batch


def read_resources(items: Iterable[dict[str, Any]], origin: str = "<api>") -> InputBatch:
    """Read already-parsed JSON values (resources or Bundles), e.g. from the Python API."""
    batch = InputBatch()
    for i, item in enumerate(items):
        _take(item, f"{origin}[{i}]", None, batch)
    return batch


def parse_json_bytes(data: bytes, origin: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(origin, f"not JSON ({exc})") from None


def _read_file(path: Path, batch: InputBatch) -> None:
    name = str(path)
    batch.files.append(name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(name, f"cannot read ({exc.strerror})") from None
    if path.suffix.lower() in NDJSON_SUFFIXES:
        for lineno, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                origin = f"{name}:{lineno}"
                _take(parse_json_bytes(line, origin), origin, None, batch)
        return
    _take(parse_json_bytes(data, name), name, None, batch)


def _take(value: Any, origin: str, full_url: str | None, batch: InputBatch) -> None:
    if not isinstance(value, dict):
        raise InputError(origin, f"not a FHIR resource (a JSON {type(value).__name__}, expected an object)")
    rtype = value.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise InputError(origin, "not a FHIR resource (no resourceType)")
    if rtype not in R4_RESOURCE_TYPES:
        raise InputError(origin, f"unknown resourceType {rtype!r} (not a FHIR R4 resource)")
    if rtype == "Bundle":
        for sub_origin, entry_url, resource in _bundle_entries(value, origin):
            _take(resource, sub_origin, entry_url, batch)
        return
    if rtype in USED_RESOURCE_TYPES:
        batch.resources.append(SourcedResource(value, origin, full_url))
    else:
        batch.ignored[rtype] += 1


def _bundle_entries(bundle: dict[str, Any], origin: str) -> Iterator[tuple[str, str | None, Any]]:
    btype = bundle.get("type")
    if btype not in READABLE_BUNDLE_TYPES:
        readable = ", ".join(sorted(READABLE_BUNDLE_TYPES))
        raise InputError(origin, f"Bundle type {btype!r} is not readable (expected one of: {readable})")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise InputError(origin, "Bundle.entry is not a list")
    for i, entry in enumerate(entries):
        sub = f"{origin}#entry[{i}]"
        if not isinstance(entry, dict):
            raise InputError(sub, "Bundle entry is not an object")
        if "resource" not in entry:
            # A transaction/batch entry may be a DELETE or conditional reference without a body.
            continue
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        full_url = entry.get("fullUrl")
        yield sub, full_url if isinstance(full_url, str) else None, entry["resource"]
