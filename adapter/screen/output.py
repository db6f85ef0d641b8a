"""The outputs of a screening run (docs/screen.md §Outputs), merged from the partitions' files.

Each partition file (``parts/p<n>.out``) is sorted by patient; its records are ``<patient>\\t<kind>\\t...``:
``E`` the evaluation JSON, ``S`` the summary row, ``W <Type>`` a write-back resource, ``P`` a problem. The
merge (a heap over the partition files: memory O(partitions)) writes, under ``--out``:

- ``evaluations.ndjson``: one evaluation (the contract, docs/contract.md) per line, sorted by patient;
- ``writeback/<Type>.ndjson``: the write-back resources per type (ids set, references between them
  resolved; the software Device once), ready for ``$import`` or a transaction loader;
- ``summary.csv`` and ``summary.parquet``: one row per evaluated patient (``SUMMARY_COLUMNS``);
- ``report.json`` (written by the engine, adapter/screen/report.py): the run's counts and problems, and
  its ``run`` section (timings, peak memory).

Everything is written under a temporary name and renamed when complete; nothing but the report's ``run``
section and run-stats.json holds a time or a measure, so two runs on the same input write the same bytes.
"""

from __future__ import annotations

import csv
import heapq
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from adapter.screen.core import SUMMARY_COLUMNS, SUMMARY_INT_COLUMNS

#: Problems listed in report.json (all are counted).
MAX_PROBLEMS = 1000
#: Rows per Parquet row group.
PARQUET_ROWS = 65536
#: Write-back types shared by every patient (written once).
SHARED_TYPES = frozenset({"Device"})
EVALUATIONS = "evaluations.ndjson"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
WRITEBACK_DIR = "writeback"


@dataclass(slots=True)
class MergeResult:
    problems: list[str] = field(default_factory=list)
    problems_total: int = 0
    outputs: list[str] = field(default_factory=list)


def _records(path: Path) -> Iterator[tuple[bytes, bytes, bytes]]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            key, kind, rest = line.rstrip(b"\n").split(b"\t", 2)
            yield key, kind, rest


def summary_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(c, pa.int32() if c in SUMMARY_INT_COLUMNS else pa.string()) for c in SUMMARY_COLUMNS])


class _Parquet:
    """Rows to a Parquet file, one row group per PARQUET_ROWS rows (bounded memory)."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.schema = summary_schema()
        self.writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= PARQUET_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if not self.rows:
            return
        columns = {c: [r.get(c) for r in self.rows] for c in SUMMARY_COLUMNS}
        self.writer.write_table(pa.Table.from_pydict(columns, schema=self.schema))
        self.rows = []

    def close(self) -> None:
        if not self.rows:
            # an empty table still gets its schema (and a file other tools can open)
            import pyarrow as pa

            if self.writer is not None:
                empty: dict[str, list[Any]] = {c: [] for c in SUMMARY_COLUMNS}
                self.writer.write_table(pa.Table.from_pydict(empty, schema=self.schema))
        self.flush()
        self.writer.close()


def _csv_line(row: dict[str, Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        ["" if row.get(c) is None else row.get(c) for c in SUMMARY_COLUMNS]
    )
    return buffer.getvalue()


def merge_outputs(parts: list[Path], out_dir: Path, work: Path) -> MergeResult:
    """Merge the partition files into the outputs under ``out_dir`` (see the module docstring)."""
    staging = work / "final"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / WRITEBACK_DIR).mkdir(parents=True)
    result = MergeResult()
    writeback: dict[str, Any] = {}
    shared_seen: set[bytes] = set()
    parquet = _Parquet(staging / SUMMARY_PARQUET)
    with (
        (staging / EVALUATIONS).open("wb") as evaluations,
        (staging / SUMMARY_CSV).open("w", encoding="utf-8", newline="") as table,
    ):
        table.write(_csv_line(dict(zip(SUMMARY_COLUMNS, SUMMARY_COLUMNS, strict=True))))
        streams = [_records(p) for p in parts]
        for _key, kind, rest in heapq.merge(*streams, key=lambda r: r[0]):
            if kind == b"E":
                evaluations.write(rest + b"\n")
            elif kind == b"S":
                row = orjson.loads(rest)
                table.write(_csv_line(row))
                parquet.add(row)
            elif kind == b"W":
                rtype_bytes, line = rest.split(b"\t", 1)
                rtype = rtype_bytes.decode()
                if rtype in SHARED_TYPES:
                    if line in shared_seen:
                        continue
                    shared_seen.add(line)
                handle = writeback.get(rtype)
                if handle is None:
                    handle = writeback[rtype] = (staging / WRITEBACK_DIR / f"{rtype}.ndjson").open("wb")
                handle.write(line + b"\n")
            elif kind == b"P":
                result.problems_total += 1
                if len(result.problems) < MAX_PROBLEMS:
                    result.problems.append(orjson.loads(rest))
    for handle in writeback.values():
        handle.close()
    parquet.close()
    # move into place: the files one by one (each a rename), the write-back folder as a whole
    for name in (EVALUATIONS, SUMMARY_CSV, SUMMARY_PARQUET):
        os.replace(staging / name, out_dir / name)
        result.outputs.append(name)
    old = out_dir / WRITEBACK_DIR
    if old.exists():
        shutil.rmtree(old)
    os.replace(staging / WRITEBACK_DIR, old)
    result.outputs += [f"{WRITEBACK_DIR}/{name}.ndjson" for name in sorted(writeback)]
    return result


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` all or nothing: a temporary file, flushed to disk, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_report(path: Path, report: dict[str, Any]) -> None:
    write_atomic(path, orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
