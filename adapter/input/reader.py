"""Read FHIR R4 JSON into plain dicts, remembering where each resource came from.

Accepted: a Bundle (collection, searchset, transaction, batch, document, message), a single
resource, a directory of such files, or Bulk Data NDJSON (one resource per line). Resources the
protocol does not use are counted and dropped here.

A file given on its own that is not FHIR stops the run with an :class:`~adapter.errors.InputError`
naming the file and the fault. Bulk data is read so that one bad line costs one patient, not the
run: an NDJSON line that cannot be read becomes a :class:`BrokenLine` (with the patients a cheap
scan of its raw text names), and a directory's files that hold no FHIR resource at all (a Bulk
Data manifest, a generator's metadata) are skipped and listed in :attr:`InputBatch.skipped`.
"""

from __future__ import annotations

import re
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
#: The fault of a line that does not parse as JSON (the parser's details dropped).
NOT_JSON = "not JSON"
READABLE_BUNDLE_TYPES = frozenset({"collection", "searchset", "transaction", "batch", "document", "message"})

#: A FHIR id (R4 ``id`` datatype).
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")
_CODE = re.compile(r"[a-z][a-z-]{0,31}")
#: How much of broken text is scanned for the outermost object's resourceType and id (they come
#: first in every exporter we know; the scan is a Python loop).
TOP_LEVEL_SCAN = 64 * 1024
#: ``"subject"`` or ``"patient"`` holding a Reference, in raw (possibly broken) JSON text.
_SUBJECT_REFERENCE = re.compile(
    rb'"(?:subject|patient)"\s*:\s*\{[^{}]{0,4096}?"reference"\s*:\s*"((?:[^"\\]|\\.){1,1024})"'
)


@dataclass(frozen=True, slots=True)
class SourcedResource:
    """One resource as a parsed dict, with where it came from."""

    resource: dict[str, Any]
    origin: str  # e.g. "examples/a.json#entry[3]" or "Observation.ndjson:17"
    full_url: str | None = None


@dataclass(frozen=True, slots=True)
class BrokenLine:
    """Bulk data that could not be read: an NDJSON line, or a file in a directory that is not JSON.

    ``references`` are the patients a scan of the raw text found (``subject``/``patient``
    references, as written); ``patient_id`` is set when the text is a Patient itself with an id.
    Neither the text nor anything else from it is kept.
    """

    origin: str  # "dir/Observation.ndjson:17" (a line) or "dir/x.json" (a whole file)
    fault: str
    references: tuple[str, ...] = ()
    patient_id: str | None = None

    @property
    def where(self) -> str:
        """The place without directories (for the evaluation JSON): ``Observation.ndjson line 17``."""
        path, sep, line = self.origin.rpartition(":")
        if sep and line.isdigit():
            return f"{Path(path).name} line {line}"
        return Path(self.origin).name


@dataclass(slots=True)
class InputBatch:
    """Everything read from one input: the used resources and a count of the others."""

    resources: list[SourcedResource] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    #: NDJSON lines (and, in a directory, whole files) that could not be read.
    broken: list[BrokenLine] = field(default_factory=list)
    #: Files of a directory that hold no FHIR resource (file, why), skipped.
    skipped: list[tuple[str, str]] = field(default_factory=list)


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
            _read_file(f, batch, in_directory=True)
    elif p.is_file():
        _read_file(p, batch, in_directory=False)
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


def _read_file(path: Path, batch: InputBatch, in_directory: bool) -> None:
    name = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(name, f"cannot read ({exc.strerror})") from None
    if path.suffix.lower() in NDJSON_SUFFIXES:
        _read_ndjson(name, data, batch, in_directory)
        return
    try:
        value = parse_json_bytes(data, name)
    except InputError as exc:
        if not in_directory:
            raise
        # possibly a truncated Bundle of patient data: its patients' integrity is affected
        batch.files.append(name)
        batch.broken.append(_broken(name, exc.fault, data))
        return
    if in_directory and (fault := _not_a_resource(value)) is not None:
        batch.skipped.append((name, fault))  # a manifest, a generator's metadata, ...
        return
    batch.files.append(name)
    _take(value, name, None, batch)


def _read_ndjson(name: str, data: bytes, batch: InputBatch, in_directory: bool) -> None:
    """Each line on its own: a line that cannot be read is a BrokenLine, the others are read."""
    part = InputBatch()
    read = 0  # lines that were FHIR resources (used or not)
    for lineno, line in enumerate(data.splitlines(), start=1):
        read += read_ndjson_line(line, f"{name}:{lineno}", part)
    broken = part.broken
    if read == 0 and broken:
        if not in_directory:  # a file given on its own with not one resource is unusable
            raise InputError(broken[0].origin, broken[0].fault)
        if not any(b.fault == NOT_JSON for b in broken):  # JSON, but not FHIR (a log, metadata)
            batch.skipped.append((name, f"no FHIR resource on any line ({broken[0].fault})"))
            return
    batch.files.append(name)
    batch.resources.extend(part.resources)
    batch.ignored.update(part.ignored)
    batch.broken.extend(broken)


def read_ndjson_line(line: bytes, origin: str, batch: InputBatch) -> bool:
    """Read one Bulk Data NDJSON line (``origin`` is ``file:line``) into ``batch``, as a directory's
    NDJSON file is read: a resource (or a Bundle's entries), an ignored type counted, or a
    :class:`BrokenLine` (never its content). True when the line was a FHIR resource; blank lines
    are nothing (False, nothing added). Population screening reads one patient's lines with it."""
    if not line.strip():
        return False
    one = InputBatch()
    try:
        _take(parse_json_bytes(line, origin), origin, None, one)
    except InputError as exc:
        batch.broken.append(_broken(origin, exc.fault, line))
        return False
    batch.resources.extend(one.resources)
    batch.ignored.update(one.ignored)
    return True


def unreadable_line(line: bytes, origin: str) -> BrokenLine | None:
    """The :class:`BrokenLine` for one non-blank NDJSON line that cannot be read as FHIR R4 (not JSON, not a
    resource, an unknown type, an unreadable Bundle), or None when it can. Nothing of it is kept."""
    one = InputBatch()
    read_ndjson_line(line, origin, one)
    return one.broken[0] if one.broken else None


def not_a_resource(value: Any) -> str | None:
    """Why a parsed JSON value is not a FHIR R4 resource at all, or None when it is one."""
    return _not_a_resource(value)


def _not_a_resource(value: Any) -> str | None:
    """Why a parsed JSON value is not a FHIR R4 resource at all, or None when it is one."""
    if not isinstance(value, dict):
        return f"not a FHIR resource (a JSON {type(value).__name__}, expected an object)"
    rtype = value.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        return "not a FHIR resource (no resourceType)"
    if rtype not in R4_RESOURCE_TYPES:
        return f"unknown resourceType {_shown(rtype, _TYPE_NAME)} (not a FHIR R4 resource)"
    return None


def _shown(value: Any, shape: re.Pattern[str]) -> str:
    """A data value for a message only when it has the expected shape (a type name, a code)."""
    return repr(value) if isinstance(value, str) and shape.fullmatch(value) else "(not shown)"


def _take(value: Any, origin: str, full_url: str | None, batch: InputBatch) -> None:
    fault = _not_a_resource(value)
    if fault is not None:
        raise InputError(origin, fault)
    rtype = value["resourceType"]
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
        raise InputError(
            origin, f"Bundle type {_shown(btype, _CODE)} is not readable (expected one of: {readable})"
        )
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


# ---------------------------------------------------------------------------- broken lines


def _broken(origin: str, fault: str, raw: bytes) -> BrokenLine:
    """A BrokenLine with the patients its raw text names; ``fault`` says what, never the content."""
    if fault.startswith(NOT_JSON):
        fault = NOT_JSON  # the parser's position details are noise here
    references = []
    for m in _SUBJECT_REFERENCE.finditer(raw):
        try:
            ref = orjson.loads(b'"' + m.group(1) + b'"')
        except orjson.JSONDecodeError:
            continue
        if isinstance(ref, str) and ref:
            references.append(ref)
    top = _top_level_strings(raw[:TOP_LEVEL_SCAN], (b"resourceType", b"id"))
    pid = top.get(b"id", b"").decode("ascii", "replace")
    is_patient = top.get(b"resourceType") == b"Patient" and FHIR_ID.fullmatch(pid) is not None
    return BrokenLine(origin, fault, tuple(dict.fromkeys(references)), pid if is_patient else None)


def _top_level_strings(raw: bytes, keys: tuple[bytes, ...]) -> dict[bytes, bytes]:
    """The string values of ``keys`` in the outermost object of raw, possibly broken, JSON text.

    A tolerant scan (strings, nesting, ``key: value`` pairs); the first occurrence of a key wins.
    """
    out: dict[bytes, bytes] = {}
    depth, i, n = 0, 0, len(raw)
    key: bytes | None = None  # the last key seen at depth 1
    value_of: bytes | None = None  # the key whose value comes next
    while i < n:
        c = raw[i]
        if c == 0x22:  # a string
            j = i + 1
            while j < n and raw[j] != 0x22:
                j += 2 if raw[j] == 0x5C else 1
            text = raw[i + 1 : j]
            if depth == 1:
                if value_of is not None:
                    if value_of in keys:
                        out.setdefault(value_of, text)
                    value_of = None
                else:
                    key = text
            i = j + 1
            continue
        if c in b"{[":
            depth += 1
            value_of = None
        elif c in b"}]":
            depth -= 1
        elif c == 0x3A and depth == 1:  # ':'
            value_of, key = key, None
        elif c == 0x2C:  # ','
            key = value_of = None
        i += 1
    return out
