"""A Bulk Data export on disk, as screening reads it (docs/screen.md §Input).

- Files: ``*.ndjson`` / ``*.jsonl``, plain or gzip (``.gz``), in the directory and below (name order, as
  ``evaluate DIR`` reads them), possibly several per type; ``.json`` files holding FHIR resources or
  Bundles are read too (one line per resource). The directory's manifest (``transactionTime`` and
  ``output[]``; a ``.json`` file) gives each file's type and says which files are errors and deletions.
- A file's resource type: the manifest's ``output[].type``; else its name (``Observation.ndjson``,
  ``Observation.2.ndjson.gz``, ``Observation-001.ndjson``); else unknown (a file of mixed types: every
  pass reads it).
- Deleted resources: files under a ``deleted/`` directory or in the manifest's ``deleted[]`` (Bundles whose
  entries are ``DELETE Type/id`` requests); what they name is removed from its patient's record.
- Errors: files in the manifest's ``error[]``, or whose lines are OperationOutcomes: counted, not patient
  data.
- Files that hold no FHIR resource (a manifest, a generator's metadata, a JSON log) are skipped with the
  reason, never fatal: an NDJSON file is skipped when its first lines are all JSON and none is a FHIR
  resource (a file whose lines do not parse is read: its lines are broken lines).

Large plain files are read in byte ranges (:class:`Unit`) by several workers; a gzip file is one unit.
Lines are numbered as ``evaluate`` numbers them (``bytes.splitlines``), so a broken line is reported with
the same file and line number.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from adapter.input.reader import not_a_resource
from adapter.input.resource_types import R4_RESOURCE_TYPES

FileKind = Literal["data", "deleted", "error", "json"]
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
#: Bytes read at a time (a block ends at a line end).
READ_BLOCK = 4 * 1024 * 1024
#: A plain file larger than this is read as several units (byte ranges) by parallel workers.
UNIT_BYTES = 64 * 1024 * 1024
#: Lines looked at to tell a data file from a JSON file that is not FHIR.
PEEK_LINES = 8
_TYPE_IN_NAME = re.compile(r"^([A-Z][A-Za-z]{1,63})(?:[._-].*)?$")
#: ``{"resourceType":"X","id":"Y"`` at the start of a line (how exporters write it).
_HEAD = re.compile(
    rb'\s*\{\s*"resourceType"\s*:\s*"([A-Za-z]{1,64})"\s*,\s*"id"\s*:\s*"([A-Za-z0-9\-.]{1,64})"'
)


@dataclass(frozen=True, slots=True)
class ExportFile:
    index: int
    path: Path  # the export directory joined with ``rel`` (its string is the origin of its lines)
    rel: str  # POSIX path under the export directory
    kind: FileKind
    rtype: str | None  # the resource type of every line, when known
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def gz(self) -> bool:
        return self.path.suffix.lower() == ".gz"


@dataclass(frozen=True, slots=True)
class Unit:
    """A piece of one file read by one task: the lines that start in ``[start, end)`` (``end`` -1: to EOF)."""

    index: int
    file: int
    start: int
    end: int


@dataclass(slots=True)
class Export:
    root: Path
    files: list[ExportFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)
    manifest: dict[str, Any] | None = None

    @property
    def transaction_time(self) -> str | None:
        value = (self.manifest or {}).get("transactionTime")
        return value if isinstance(value, str) else None

    def of_kind(self, kind: FileKind) -> list[ExportFile]:
        return [f for f in self.files if f.kind == kind]

    def fingerprint(self) -> str:
        """What identifies the input: every file's path, size, modification time, kind and type."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.rel}\x1f{f.size}\x1f{f.mtime_ns}\x1f{f.kind}\x1f{f.rtype}\x1e".encode())
        for rel, why in self.skipped:
            h.update(f"skipped\x1f{rel}\x1f{why}\x1e".encode())
        return h.hexdigest()

    def units(self, files: list[ExportFile], unit_bytes: int = UNIT_BYTES) -> list[Unit]:
        """``files`` as units: a plain NDJSON file in ranges of about ``unit_bytes``, others whole."""
        out: list[Unit] = []
        for f in files:
            if f.gz or f.kind == "json" or f.size <= unit_bytes:
                out.append(Unit(len(out), f.index, 0, -1))
                continue
            start = 0
            while start < f.size:
                end = min(f.size, start + unit_bytes)
                out.append(Unit(len(out), f.index, start, -1 if end >= f.size else end))
                start = end
        return out


def _suffixes(path: Path) -> tuple[str, bool]:
    """(the data suffix, gzip?) of a file name: ``.ndjson``/``.jsonl``/``.json``, plain or ``.gz``."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for suffix in (*NDJSON_SUFFIXES, ".json"):
        if name.endswith(suffix):
            return suffix, gz
    return "", gz


def _type_from_name(path: Path) -> str | None:
    m = _TYPE_IN_NAME.match(path.name)
    return m.group(1) if m and m.group(1) in R4_RESOURCE_TYPES else None


def _open(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def _peek(path: Path) -> list[bytes]:
    """The first non-blank lines of a file (at most PEEK_LINES; the first MiB)."""
    try:
        with _open(path) as f:
            head = f.read(1024 * 1024)
    except (OSError, EOFError, gzip.BadGzipFile):
        return []
    lines = [ln for ln in head.splitlines() if ln.strip()]
    return lines[:PEEK_LINES]


def _is_manifest(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("output"), list) and "transactionTime" in value


def scan_export(root: Path, exclude: tuple[Path, ...] = ()) -> Export:
    """The export directory's files, classified (see the module docstring). Nothing is fatal here but a
    directory that does not exist or holds no file to read (:class:`FileNotFoundError`)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    excluded = [e.resolve() for e in exclude]
    export = Export(root)
    candidates: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        resolved = path.resolve()
        if any(resolved == e or resolved.is_relative_to(e) for e in excluded):
            continue
        suffix, _gz = _suffixes(path)
        if suffix:
            candidates.append(path)
        else:  # a README, a checksum file, an editor's backup: listed, never read
            export.skipped.append((path.relative_to(root).as_posix(), "not an NDJSON or JSON file"))
    manifests: list[tuple[Path, dict[str, Any]]] = []
    data: list[Path] = []
    for path in candidates:
        suffix, gz = _suffixes(path)
        rel = path.relative_to(root).as_posix()
        if suffix == ".json" and not gz:
            try:
                value = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                export.skipped.append((rel, "not JSON"))
                continue
            if _is_manifest(value):
                manifests.append((path, value))
                export.skipped.append((rel, "a Bulk Data manifest (read for the files' types)"))
                continue
            why = not_a_resource(value)
            if why is not None:
                export.skipped.append((rel, why))
                continue
        data.append(path)
    manifest = manifests[0][1] if manifests else None
    export.manifest = manifest
    by_name: dict[str, tuple[FileKind, str | None]] = {}
    sections: tuple[tuple[str, FileKind], ...] = (
        ("output", "data"),
        ("deleted", "deleted"),
        ("error", "error"),
    )
    for section, listed_kind in sections:
        for item in (manifest or {}).get(section) or []:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                continue
            name = Path(urlsplit(item["url"]).path).name
            listed_type = item.get("type")
            by_name[name] = (listed_kind, listed_type if listed_type in R4_RESOURCE_TYPES else None)
    for path in data:
        suffix, gz = _suffixes(path)
        rel = path.relative_to(root).as_posix()
        kind: FileKind
        rtype: str | None
        listed = by_name.get(path.name)
        if listed is not None:
            kind, rtype = listed
        else:
            kind, rtype = "data", _type_from_name(path)
            if "deleted" in Path(rel).parts[:-1]:
                kind = "deleted"
        if suffix == ".json" and not gz:
            kind = "json" if kind == "data" else kind
        elif kind == "data" or rtype is None:
            lines = _peek(path)
            values = []
            for line in lines:
                try:
                    values.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    values.append(None)
            parsed = [v for v in values if v is not None]
            faults = [not_a_resource(v) for v in parsed]
            if lines and len(parsed) == len(lines) and all(faults):
                export.skipped.append((rel, f"no FHIR resource on its first lines ({faults[0]})"))
                continue
            types = {v.get("resourceType") for v, fault in zip(parsed, faults, strict=True) if fault is None}
            if types == {"OperationOutcome"}:
                kind, rtype = "error", "OperationOutcome"
            elif kind == "data" and rtype is None and types == {"Bundle"} and "deleted" in path.name.lower():
                kind = "deleted"
        if rtype == "OperationOutcome" and kind == "data":
            kind = "error"
        stat = path.stat()
        export.files.append(
            ExportFile(len(export.files), path, rel, kind, rtype, stat.st_size, stat.st_mtime_ns)
        )
    return export


# -- reading lines -------------------------------------------------------------------------------
def json_file_lines(path: Path) -> bytes:
    """A ``.json`` file's resources (a resource, or a Bundle's entries) as NDJSON (one line each)."""
    value = orjson.loads(path.read_bytes())
    items: list[Any] = [value]
    if isinstance(value, dict) and value.get("resourceType") == "Bundle":
        items = [
            e.get("resource") for e in value.get("entry") or [] if isinstance(e, dict) and "resource" in e
        ]
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def unit_blocks(f: ExportFile, unit: Unit, block: int = READ_BLOCK) -> Iterator[bytes]:
    """Blocks of whole lines (each ends with a line feed, but perhaps the file's last) holding exactly
    the lines that start in the unit's range."""
    if f.kind == "json":
        yield json_file_lines(f.path)
        return
    end = unit.end if unit.end >= 0 else None
    with _open(f.path) as handle:
        pos = 0
        if unit.start > 0:
            handle.seek(unit.start - 1)
            if handle.read(1) != b"\n":
                handle.readline()  # the line that started before the range belongs to the previous unit
            pos = handle.tell()
            if end is not None and pos >= end:
                return  # one line spans the whole range: it belongs to the unit where it starts
        tail = b""
        while True:
            data = handle.read(block)
            if not data:
                if tail:
                    yield tail
                return
            buf = tail + data
            base = pos - len(tail)
            pos += len(data)
            cut = buf.rfind(b"\n")
            if end is not None and base + len(buf) >= end:
                last = buf.find(b"\n", max(0, end - base - 1))
                if last >= 0:
                    yield buf[: last + 1]
                    return
            if cut < 0:
                tail = buf
                continue
            yield buf[: cut + 1]
            tail = buf[cut + 1 :]


def unit_lines(f: ExportFile, unit: Unit) -> Iterator[bytes]:
    """The unit's lines, blank ones included (so that counting them gives ``evaluate``'s line numbers)."""
    for block in unit_blocks(f, unit):
        yield from block.splitlines()


def type_and_id(line: bytes) -> str | None:
    """``Type/id`` of a line: a byte match of the usual head, else a parse (None when it cannot be told)."""
    m = _HEAD.match(line)
    if m is not None:
        return f"{m.group(1).decode()}/{m.group(2).decode()}"
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if (
        isinstance(value, dict)
        and isinstance(value.get("resourceType"), str)
        and isinstance(value.get("id"), str)
    ):
        return f"{value['resourceType']}/{value['id']}"
    return None


def deleted_references(files: list[ExportFile]) -> tuple[set[str], int]:
    """``Type/id`` of every resource the ``deleted`` files name, and how many lines could not be read."""
    out: set[str] = set()
    unreadable = 0
    for f in files:
        for unit_line in unit_lines(f, Unit(0, f.index, 0, -1)):
            if not unit_line.strip():
                continue
            try:
                value = orjson.loads(unit_line)
            except orjson.JSONDecodeError:
                unreadable += 1
                continue
            if not isinstance(value, dict):
                unreadable += 1
                continue
            if value.get("resourceType") != "Bundle":
                ref = type_and_id(unit_line)
                if ref:
                    out.add(ref)
                continue
            for entry in value.get("entry") or []:
                if not isinstance(entry, dict):
                    continue
                request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
                url = request.get("url") if isinstance(request, dict) else None
                if isinstance(url, str) and "?" not in url:
                    parts = [p for p in urlsplit(url).path.split("/") if p]
                    if "_history" in parts:
                        parts = parts[: parts.index("_history")]
                    if len(parts) >= 2:
                        out.add(f"{parts[-2]}/{parts[-1]}")
                        continue
                resource = entry.get("resource")
                if isinstance(resource, dict) and isinstance(resource.get("id"), str):
                    out.add(f"{resource.get('resourceType')}/{resource['id']}")
    return out, unreadable


def count_lines(f: ExportFile) -> int:
    """Non-blank lines of a file (error files: how many OperationOutcomes)."""
    return sum(1 for line in unit_lines(f, Unit(0, f.index, 0, -1)) if line.strip())


def file_stat(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
