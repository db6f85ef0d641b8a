"""The Spark screening engine (``ino-adapter screen --engine spark``): the local engine's job
(adapter/screen/local.py) on PySpark, with the same per-patient function and the same output bytes.

    report = run_spark("export/", "out/", ScreenSetup("nhs-ta514", date(2026, 11, 21)), master="local[2]")

PySpark and a Java runtime are optional (``pip install 'ino-adapter[spark]'``, scripts/ensure_java.sh);
pyspark is imported only here, when the engine runs.

How the job runs (docs/screen.md; the local engine's stages, each a Spark job):

0. Driver: the export is scanned (:func:`adapter.screen.export.scan_export`), the rules loaded (a bad table
   stops the run before Spark starts: exit 3), the deleted resources and export errors read (small).
1. Lines. Bulk NDJSON (plain or gzip) is read by Spark's ``text`` source, each line cast to ``binary`` (the
   file's exact bytes: no decoding, invalid UTF-8 kept) with its file and the start of its split
   (``_metadata``); Hadoop splits lines at LF, CR and CRLF as ``bytes.splitlines`` does. Files Spark's
   file listing would skip or misread (``.json`` resources/Bundles, names starting with ``_`` or ``.``,
   glob characters) are read in a task by the local engine's reader (``adapter.screen.export.unit_lines``).
   A line's number is its index in its split plus the lines of the file's earlier splits (each pass
   emits one count per split; the driver adds them up), so a broken line is reported at the same
   ``file:line`` as by ``evaluate`` and the local engine.
2. Pass 1: the Medications (a line per ``Medication/<id>``, kept as an RDD) and which are inotuzumab;
   then the candidates: the lines holding one of the codes' bytes are selected in the JVM (a ``contains``
   filter, no decoding) and parsed in Python (:func:`adapter.screen.core.candidate_of_parsed`).
3. Pass 2: each line's patients by a byte scan (:func:`adapter.screen.core.subject_keys`), kept when the
   patient is a candidate (the candidate set is broadcast: a broadcast join), deleted resources dropped.
   The Medications the kept lines refer to are joined in (``join`` on ``Medication/<id>``).
4. Evaluation: the lines are partitioned by the local engine's partition function (CRC-32 of the patient
   reference, the same number of partitions) and sorted by (patient, file, line) with Spark's spilling
   sort (``repartitionAndSortWithinPartitions``); each executor task streams through its partition one
   patient at a time and calls :func:`adapter.screen.core.evaluate_group` (the pickled
   :class:`~adapter.screen.core.ScreenSetup`; the tables are loaded once per Python worker process, which
   Spark reuses across tasks). Its results are the local engine's partition records, sorted by patient.
5. Output: the evaluated RDD is persisted (memory and disk, on the executors) and counted, so that every
   partition is evaluated in parallel; then the driver fetches the partitions ONE AT A TIME
   (``toLocalIterator``) into ``parts/p<n>.out`` and merges them with the local engine's writer
   (:func:`adapter.screen.output.merge_outputs`, a heap over the partition files). The driver holds at most
   one partition's results (about 64 patients) and a line per partition during the merge, whatever the
   population: the outputs are byte for byte the local engine's, and need no shared file system.

The run's report (report.json) is the local engine's, to the byte but for its ``run`` section (engine,
timings, the driver's peak memory); run-stats.json has the rest (master, Spark version). A Spark run is not
resumable (Spark retries failed tasks; a stopped driver starts again). Nothing here schedules or talks to a
cluster: Spark does (``--master`` or ``spark-submit``).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload
from urllib.parse import unquote, urlsplit

import orjson

from adapter.errors import AdapterError, ExitCode, InputError
from adapter.input.reader import unreadable_line
from adapter.input.resource_types import USED_RESOURCE_TYPES
from adapter.screen.core import (
    CANDIDATE_TYPES,
    CandidateCodes,
    GroupResult,
    ScreenSetup,
    candidate_codes,
    candidate_of_parsed,
    counts_as_patient,
    evaluate_group,
    inotuzumab_medication,
    medication_refs_of,
    subject_keys,
)
from adapter.screen.export import (
    Export,
    ExportFile,
    Unit,
    count_lines,
    deleted_references,
    scan_export,
    type_and_id,
)
from adapter.screen.export import unit_lines as export_unit_lines
from adapter.screen.local import ScreenOptions, ScreenReport, _work_lock, partition_count
from adapter.screen.output import MergeResult, merge_outputs
from adapter.screen.report import ExportCounts, LineCounts, build_report, finish_report, orphans_in_order

if TYPE_CHECKING:
    from pyspark import RDD
    from pyspark.sql import SparkSession

ENGINE = "spark"
#: Under ``<out>/.screen-work/`` (the local engine's work directory, whose lock keeps two runs apart).
WORK_SUBDIR = "spark"
#: The local engine's default plain-file unit (its report's partition count depends on it).
LOCAL_UNIT_BYTES = 64 * 1024 * 1024
#: Settings for a session this module starts (quick start, quiet, no Hive, no UI).
SESSION_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.catalogImplementation": "in-memory",
    "spark.sql.shuffle.partitions": "8",
    "spark.python.worker.reuse": "true",
}
#: File names Spark's text source reads as they are: no leading ``_``/``.`` (Spark's listing treats
#: those as hidden and reads nothing), no glob or URI characters.
_SPARK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,@ -]*")
_PATH_UNSAFE = re.compile(r"[*?\[\]{}\\:#%]")

Row = tuple[int, int, bytes]  # (file index, split start, line)


class SparkUnavailableError(AdapterError):
    """PySpark or its Java runtime is missing."""

    exit_code = ExitCode.BAD_INPUT


# -- the session -------------------------------------------------------------------------------------
def _import_pyspark() -> Any:
    try:
        import pyspark
    except ImportError:
        raise SparkUnavailableError(
            "--engine spark needs PySpark and a Java runtime: pip install 'ino-adapter[spark]' "
            "(Debian: apt-get install openjdk-17-jre-headless, or scripts/ensure_java.sh)"
        ) from None
    return pyspark


def java_available() -> bool:
    """Whether a ``java`` is on PATH or under JAVA_HOME (PySpark starts the JVM with it)."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return True
    return shutil.which("java") is not None


@contextlib.contextmanager
def spark_session(master: str | None = None, app_name: str = "ino-adapter screen") -> Iterator[SparkSession]:
    """The active Spark session (a caller's, e.g. ``spark-submit``'s driver script: kept open), else a new
    one on ``master`` (default ``local[2]``; a ``spark-submit --master`` wins) stopped at the end."""
    _import_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    if not java_available():
        raise SparkUnavailableError(
            "--engine spark needs a Java runtime (17 or 21): none on PATH or in JAVA_HOME "
            "(Debian: apt-get install openjdk-17-jre-headless, or scripts/ensure_java.sh)"
        )
    from pyspark import SparkConf, SparkContext

    chosen = master
    if chosen is None:
        # under spark-submit the JVM already holds --master: read it rather than override it
        SparkContext._ensure_initialized()
        chosen = SparkConf().get("spark.master") or "local[2]"
    conf = SparkConf()
    for key, value in SESSION_CONF.items():
        conf.setIfMissing(key, value)
    if chosen.startswith("local"):
        # the executors are this machine's Python: the same interpreter (venv) as the driver
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no look-up of this host's address
        conf.setIfMissing("spark.driver.host", "127.0.0.1")
        conf.setIfMissing("spark.driver.bindAddress", "127.0.0.1")
    builder = SparkSession.builder.config(conf=conf).master(chosen).appName(app_name)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    try:
        yield session
    finally:
        session.stop()


# -- reading lines -----------------------------------------------------------------------------------
def spark_readable(f: ExportFile) -> bool:
    """Whether Spark's text source reads this file exactly as the local engine does."""
    if f.kind == "json":
        return False  # a resource or Bundle per file: its "lines" are the entries (export.json_file_lines)
    name = f.path.name
    if not _SPARK_NAME.fullmatch(name) or _PATH_UNSAFE.search(os.path.abspath(f.path)):
        return False
    return not f.gz or name.endswith(".gz")  # Hadoop picks the codec by the exact suffix


def _file_lines(f: ExportFile) -> Iterator[Row]:
    """A file read whole by the local engine's reader, as one split starting at 0."""
    for line in export_unit_lines(f, Unit(0, f.index, 0, -1)):
        yield (f.index, 0, line)


def read_lines(
    spark: SparkSession, files: list[ExportFile], contains: tuple[bytes, ...] | None = None
) -> RDD[Any]:
    """The lines of ``files`` as (file index, split start, line bytes), each split's lines together and in
    order within a partition. ``contains``: only the lines holding one of these byte strings (the JVM
    filters; line numbers are then unknown, and not needed)."""
    from pyspark.sql import functions as sf

    sc = spark.sparkContext
    by_spark = [f for f in files if spark_readable(f)]
    by_python = [f for f in files if not spark_readable(f)]
    parts: list[RDD[Any]] = []
    if by_spark:
        paths = {os.path.abspath(f.path): f.index for f in by_spark}
        df = spark.read.format("text").load(list(paths))
        if contains is not None:
            wanted = sf.lit(False)
            for needle in contains:
                wanted = wanted | sf.col("value").contains(needle.decode("utf-8", "surrogateescape"))
            df = df.where(wanted)
        df = df.select(
            sf.col("_metadata.file_path").alias("path"),
            sf.col("_metadata.file_block_start").alias("start"),
            sf.col("value").cast("binary").alias("line"),
        )
        parts.append(df.rdd.mapPartitions(_IndexRows(paths)))
    if by_python:
        python = sc.parallelize(by_python, len(by_python)).flatMap(_file_lines)
        if contains is not None:
            python = python.filter(_Contains(contains))
        parts.append(python)
    if not parts:
        return sc.emptyRDD()
    return parts[0] if len(parts) == 1 else sc.union(parts)


@dataclass(frozen=True, slots=True)
class _IndexRows:
    """Spark rows (path URI, split start, line) to (file index, split start, bytes)."""

    paths: dict[str, int]

    def __call__(self, rows: Iterable[Any]) -> Iterator[Row]:
        cache: dict[str, int] = {}
        for path, start, line in rows:
            index = cache.get(path)
            if index is None:
                local = os.path.abspath(unquote(urlsplit(path).path))
                if local not in self.paths:
                    raise RuntimeError(f"Spark read a file the export does not list: {local}")
                index = cache[path] = self.paths[local]
            yield (index, start, bytes(line))


@dataclass(frozen=True, slots=True)
class _Contains:
    needles: tuple[bytes, ...]

    def __call__(self, row: Row) -> bool:
        return any(n in row[2] for n in self.needles)


def _numbered(rows: Iterable[Row]) -> Iterator[tuple[int, int, int, bytes, bool]]:
    """(file, split start, number of the line in its split from 1, line, whether the split ends here)."""
    prev: tuple[int, int, int, bytes] | None = None
    for f, start, line in rows:
        if prev is not None:
            same = prev[0] == f and prev[1] == start
            yield (*prev, not same)
            n = prev[2] + 1 if same else 1
        else:
            n = 1
        prev = (f, start, n, line)
    if prev is not None:
        yield (*prev, True)


# -- pass 1: Medications and candidates ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _MedicationScan:
    """Pass 1a on a partition: ("M", ref, file, split, n, line) per Medication line (not deleted), ("I", ref)
    when it is inotuzumab, ("C", file, split, lines) per split (as local.medications_task)."""

    typed: frozenset[int]  # files of type Medication (others: only lines naming "Medication")
    codes: CandidateCodes
    deleted: Any  # Broadcast[frozenset[str]]

    def __call__(self, rows: Iterable[Row]) -> Iterator[tuple[Any, ...]]:
        deleted: frozenset[str] = self.deleted.value
        for f, start, n, line, last in _numbered(rows):
            if f in self.typed or b'"Medication"' in line:
                ref = type_and_id(line)
                if ref is not None and ref.startswith("Medication/") and ref not in deleted:
                    yield ("M", ref, f, start, n, line)
                    ino = inotuzumab_medication(line, self.codes)
                    if ino is not None:
                        yield ("I", ino)
            if last:
                yield ("C", f, start, n)


@dataclass(frozen=True, slots=True)
class _CandidateScan:
    """Pass 1b on a partition of lines holding a code's bytes: ("P", parsed), then each candidate once."""

    codes: CandidateCodes

    def __call__(self, rows: Iterable[Row]) -> Iterator[tuple[str, Any]]:
        found: set[str] = set()
        parsed = 0
        needles = self.codes.needles
        for _f, _start, line in rows:
            if not any(n in line for n in needles):
                continue
            parsed += 1
            ref = candidate_of_parsed(line, self.codes)
            if ref is not None:
                found.add(ref)
        yield ("P", parsed)
        for ref in sorted(found):
            yield ("K", ref)


# -- pass 2: routing ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Route:
    """Pass 2 on a partition (as local._Router's per-line path): ("R", patient, file, split, n, line) per
    candidate's line, ("O", file, split, n, fault) per unreadable line whose patient cannot be told,
    ("C", file, split, lines, blank, kept, unattributed, deleted, patients) per split."""

    candidates: Any  # Broadcast[frozenset[bytes]] or None (--all-patients)
    deleted: Any  # Broadcast[frozenset[str]]
    types: dict[int, str | None]  # file index -> its resource type (None: mixed)

    def __call__(self, rows: Iterable[Row]) -> Iterator[tuple[Any, ...]]:
        candidates: frozenset[bytes] | None = self.candidates.value if self.candidates is not None else None
        deleted: frozenset[str] = self.deleted.value
        blank = kept = unattributed = dropped = patients = 0
        for f, start, n, line, last in _numbered(rows):
            if not line.strip():
                blank += 1
            else:
                patients += counts_as_patient(line, self.types[f])
                keys = subject_keys(line)
                if not keys:
                    unattributed += 1
                    broken = unreadable_line(line, "")
                    if broken is not None:  # reported, as local._Router.generic does
                        yield ("O", f, start, n, broken.fault)
                for key in dict.fromkeys(keys):
                    if candidates is not None and key not in candidates:
                        continue
                    if deleted:
                        ref = type_and_id(line)
                        if ref is not None and ref in deleted:
                            dropped += 1
                            continue
                    kept += 1
                    yield ("R", key, f, start, n, line)
            if last:
                yield ("C", f, start, n, blank, kept, unattributed, dropped, patients)
                blank = kept = unattributed = dropped = patients = 0


# -- evaluation --------------------------------------------------------------------------------------
def _patient_partition(key: tuple[bytes, int, int]) -> int:
    """The local engine's partition of a patient (CRC-32 of the reference; Spark takes it modulo N)."""
    return zlib.crc32(key[0])


@dataclass(frozen=True, slots=True)
class _Evaluate:
    """Stage 3 on a partition sorted by (patient, file, line): ("E", partition, record) per output record
    (the local engine's ``parts/p<n>.out`` lines, sorted by patient), then ("S", partition, counts)."""

    setup: ScreenSetup
    now: str
    names: tuple[str, ...]  # file index -> name (the origin of its lines, as the local engine names it)

    def __call__(
        self, partition: int, items: Iterable[tuple[tuple[bytes, int, int], bytes]]
    ) -> Iterator[Any]:
        counts: Counter[str] = Counter()
        status: Counter[str] = Counter()
        actions: Counter[str] = Counter()
        writeback: Counter[str] = Counter()
        for key, group in groupby(items, key=lambda item: item[0][0]):
            lines: list[tuple[str, int, bytes]] = []
            last: tuple[int, int] | None = None
            for (_patient, f, lineno), line in group:
                if (f, lineno) == last:
                    continue  # the same line twice (a Medication line of a mixed file): once, as locally
                last = (f, lineno)
                lines.append((self.names[f], lineno, line))
            result = evaluate_group(key.decode(), lines, self.setup, self.now)
            counts["broken"] += result.broken
            counts["patient_lines"] += result.patient_lines
            if result.evaluation_json:
                counts["evaluated"] += 1
                status[result.status] += 1
                actions[str(result.summary_row.get("action"))] += 1
                for rtype, wlines in result.writeback.items():
                    writeback[rtype] += len(wlines)
            else:
                counts["not_evaluated"] += 1
            for record in partition_records(key, result):
                yield ("E", partition, record)
        stats = {
            "partition": partition,
            "patients": counts["evaluated"] + counts["not_evaluated"],
            "evaluated": counts["evaluated"],
            "not_evaluated": counts["not_evaluated"],
            "broken": counts["broken"],
            "patient_lines": counts["patient_lines"],
            "status": dict(status),
            "actions": dict(actions),
            "writeback": dict(writeback),
        }
        yield ("S", partition, stats)


def partition_records(key: bytes, result: GroupResult) -> Iterator[bytes]:
    """One patient's lines of a partition file (adapter/screen/output.py's format), as local.reduce_task
    writes them: the evaluation, the summary row, the write-back resources by type, the problems."""
    if result.evaluation_json:
        yield b"%s\tE\t%s\n" % (key, result.evaluation_json)
        yield b"%s\tS\t%s\n" % (key, orjson.dumps(result.summary_row))
        for rtype in sorted(result.writeback):
            for wline in result.writeback[rtype]:
                yield b"%s\tW\t%s\t%s\n" % (key, rtype.encode(), wline)
    for problem in result.problems:
        yield b"%s\tP\t%s\n" % (key, orjson.dumps(problem))


def _is(tag: str) -> Callable[[tuple[Any, ...]], bool]:
    return _Tag(tag)


@dataclass(frozen=True, slots=True)
class _Tag:
    tag: str

    def __call__(self, record: tuple[Any, ...]) -> bool:
        return bool(record[0] == self.tag)


@dataclass(frozen=True, slots=True)
class _Numbered:
    """("R"/"M", key, file, split, n, line) -> ((patient, file, line number), line) with the split offsets."""

    offsets: Any  # Broadcast[dict[tuple[int, int], int]]

    def own(self, r: tuple[Any, ...]) -> tuple[tuple[bytes, int, int], bytes]:
        _tag, key, f, start, n, line = r
        return (key, f, self.offsets.value[(f, start)] + n), line

    def medication(self, r: tuple[Any, ...]) -> tuple[str, tuple[int, int, bytes]]:
        _tag, ref, f, start, n, line = r
        return ref, (f, self.offsets.value[(f, start)] + n, line)


def _needs(r: tuple[Any, ...]) -> list[tuple[str, bytes]]:
    """(Medication/<id>, patient) for each Medication a patient's line refers to."""
    return [(m, r[1]) for m in medication_refs_of(r[5])]


def _joined(item: tuple[str, tuple[bytes, tuple[int, int, bytes]]]) -> tuple[tuple[bytes, int, int], bytes]:
    _ref, (patient, (f, lineno, line)) = item
    return (patient, f, lineno), line


def _offsets(counts: Iterable[tuple[int, int, int]]) -> dict[tuple[int, int], int]:
    """(file, split start) -> lines of the file before the split, from (file, split start, lines)."""
    by_file: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for f, start, lines in counts:
        by_file[f].append((start, lines))
    out: dict[tuple[int, int], int] = {}
    for f, splits in by_file.items():
        running = 0
        for start, lines in sorted(splits):
            out[(f, start)] = running
            running += lines
    return out


def _check_read(files: list[ExportFile], counts: Iterable[tuple[int, int, int]], what: str) -> None:
    """Every non-empty plain file Spark read gave lines (Spark's listing silently skips some names: never
    lose a file; :func:`spark_readable` keeps those names away from it)."""
    seen = {f for f, _start, _lines in counts}
    for f in files:
        if spark_readable(f) and not f.gz and f.size > 0 and f.index not in seen:
            raise InputError(f.name, f"Spark read no line of this file in {what}")


# -- the run -----------------------------------------------------------------------------------------
@overload
def run_spark(
    options: ScreenOptions, *, master: str | None = None, say: Callable[[str], None] | None = None
) -> ScreenReport: ...


@overload
def run_spark(
    options: str | Path,
    out_dir: str | Path,
    setup: ScreenSetup,
    master: str | None = "local[2]",
    *,
    now: str | None = None,
    partitions: int | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]: ...


def run_spark(
    options: ScreenOptions | str | Path,
    out_dir: str | Path | None = None,
    setup: ScreenSetup | None = None,
    master: str | None = "local[2]",
    *,
    now: str | None = None,
    partitions: int | None = None,
    say: Callable[[str], None] | None = None,
) -> ScreenReport | dict[str, Any]:
    """Screen the export with Spark; write the local engine's outputs under the output directory.

    ``run_spark(input_dir, out_dir, setup, master="local[2]")`` returns the report (report.json's dict);
    ``run_spark(ScreenOptions, master=..., say=...)`` (the CLI) returns a :class:`ScreenReport`. With a
    Spark session already active (``spark-submit``, a notebook) that session is used and left open, and
    ``master`` is ignored; else a session is started on ``master`` and stopped at the end. ``now`` (the
    instant stamped on write-back) defaults to the local engine's (midnight UTC of the as-of date)."""
    if isinstance(options, ScreenOptions):
        result = _run(options, master, now, say or (lambda _m: None))
        return result
    if out_dir is None or setup is None:
        raise TypeError("run_spark(input_dir, out_dir, setup, ...) needs out_dir and setup")
    opts = ScreenOptions(Path(options), Path(out_dir), setup, partitions=partitions)
    return _run(opts, master, now, say or (lambda _m: None)).report


def _run(
    options: ScreenOptions, master: str | None, now: str | None, say: Callable[[str], None]
) -> ScreenReport:
    t0 = time.monotonic()
    _import_pyspark()
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        export = scan_export(options.export_dir, exclude=(out_dir,))
    except FileNotFoundError:
        raise InputError(str(options.export_dir), "no such directory") from None
    if not export.files:
        raise InputError(str(options.export_dir), "holds no NDJSON file of FHIR resources")
    options.setup.load()  # a bad table or settings file stops the run here (exit 3), before Spark starts
    work_root = out_dir / ".screen-work"
    timings: dict[str, float] = {"scan": time.monotonic() - t0}
    with _work_lock(work_root), spark_session(master) as spark:
        work = work_root / WORK_SUBDIR
        shutil.rmtree(work, ignore_errors=True)
        (work / "parts").mkdir(parents=True)
        try:
            report, stats = _job(spark, options, export, work, now or options.setup.now, timings, say)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        stats["master"] = spark.sparkContext.master
        stats["spark_version"] = spark.version
        stats["default_parallelism"] = spark.sparkContext.defaultParallelism
    if {p.name for p in work_root.iterdir()} <= {"lock"}:
        shutil.rmtree(work_root, ignore_errors=True)  # a local run's resumable state is left alone
    timings["total"] = time.monotonic() - t0
    stats["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    # the driver's own peak (the executors' memory is Spark's: its UI and metrics report it)
    stats["peak_rss_mb"] = {"driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    finish_report(out_dir, report, stats, ENGINE)
    return ScreenReport(report, stats)


def _job(
    spark: SparkSession,
    options: ScreenOptions,
    export: Export,
    work: Path,
    now: str,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    from pyspark import StorageLevel

    sc = spark.sparkContext
    setup = options.setup
    keep = StorageLevel.MEMORY_AND_DISK
    data_files = [f for f in export.files if f.kind in ("data", "json")]
    med_files = [f for f in data_files if f.rtype in ("Medication", None)]
    candidate_files = [f for f in data_files if f.rtype in (*CANDIDATE_TYPES, None)]
    route_files = [
        f
        for f in data_files
        if f.rtype is None or (f.rtype in USED_RESOURCE_TYPES and f.rtype != "Medication")
    ]

    t = time.monotonic()
    deleted, unreadable_deleted = deleted_references(export.of_kind("deleted"))
    export_errors = sum(count_lines(f) for f in export.of_kind("error"))
    deleted_b = sc.broadcast(frozenset(deleted))
    persisted: list[Any] = []

    # pass 1a: the Medications (kept on the executors) and which are inotuzumab
    codes = candidate_codes(setup)
    typed = frozenset(f.index for f in med_files if f.rtype == "Medication")
    scan = read_lines(spark, med_files).mapPartitions(_MedicationScan(typed, codes, deleted_b))
    scan = scan.persist(keep)
    persisted.append(scan)
    small = scan.filter(lambda r: r[0] != "M").collect()
    med_counts = [(r[1], r[2], r[3]) for r in small if r[0] == "C"]
    _check_read(med_files, med_counts, "pass 1 (medications)")
    ino = sorted({r[1] for r in small if r[0] == "I"})
    medications = scan.filter(_is("M"))
    medication_refs = medications.map(lambda r: r[1]).distinct().count()
    codes = codes.with_medications(ino)

    # pass 1b: the candidates (the lines holding a code's bytes, chosen in the JVM, parsed in Python)
    candidates: int | None = None
    candidates_b = None
    parsed = 0
    if not setup.all_patients:
        found: set[str] = set()
        if candidate_files and codes.needles:
            lines = read_lines(spark, candidate_files, contains=codes.needles)
            for tag, value in lines.mapPartitions(_CandidateScan(codes)).collect():
                if tag == "P":
                    parsed += int(value)
                else:
                    found.add(str(value))
        candidates = len(found)
        candidates_b = sc.broadcast(frozenset(c.encode() for c in found))
    timings["pass1"] = time.monotonic() - t
    say(
        f"pass 1: {candidates} candidate patient(s)"
        if candidates is not None
        else "pass 1: --all-patients: every patient is a candidate"
    )

    # the partitions: the local engine's count (so its partition function and report agree)
    units = export.units(data_files, options.unit_bytes or LOCAL_UNIT_BYTES)
    files_by_index = {f.index: f for f in export.files}
    route_indices = {f.index for f in route_files}
    input_bytes = sum(files_by_index[u.file].size for u in units if u.file in route_indices)
    partitions = options.partitions or partition_count(candidates, input_bytes)

    # pass 2: route the candidates' lines (counts per split for the line numbers and the report)
    t = time.monotonic()
    routed = (
        read_lines(spark, route_files)
        .mapPartitions(_Route(candidates_b, deleted_b, {f.index: f.rtype for f in route_files}))
        .persist(keep)
    )
    persisted.append(routed)
    small = routed.filter(lambda r: r[0] in ("C", "O")).collect()
    route_counts = [r for r in small if r[0] == "C"]
    _check_read(route_files, [(r[1], r[2], r[3]) for r in route_counts], "pass 2 (routing)")
    tally = LineCounts(medications=medication_refs, parsed_in_pass1=parsed)
    lines_read = 0
    for _tag, f, _start, lines_n, blank, kept, unattributed, dropped, patients in route_counts:
        rtype = files_by_index[f].rtype
        lines_read += lines_n
        tally.resources += lines_n - blank
        tally.candidate_lines += kept
        tally.unattributed += unattributed
        tally.deleted += dropped
        tally.by_type[rtype or "(mixed)"] += lines_n - blank
        tally.patients += patients
    line_offsets = _offsets((r[1], r[2], r[3]) for r in route_counts)
    orphans = orphans_in_order(
        (f, line_offsets[(f, start)] + n, files_by_index[f].name, fault)
        for _tag, f, start, n, fault in (r for r in small if r[0] == "O")
    )
    timings["pass2"] = time.monotonic() - t

    # stage 3: line numbers, the Medications joined in, sorted by patient, evaluated in the executors
    t = time.monotonic()
    own_n = _Numbered(sc.broadcast(line_offsets))
    med_n = _Numbered(sc.broadcast(_offsets(med_counts)))
    kept_lines = routed.filter(_is("R"))
    own = kept_lines.map(own_n.own)
    wanted = kept_lines.flatMap(_needs).distinct()
    shared = wanted.join(medications.map(med_n.medication)).map(_joined)
    grouped = sc.union([own, shared]).repartitionAndSortWithinPartitions(partitions, _patient_partition)
    names = tuple(f.name for f in export.files)
    evaluated = grouped.mapPartitionsWithIndex(_Evaluate(setup, now, names)).persist(keep)
    persisted.append(evaluated)
    reduced = sorted((r[2] for r in evaluated.filter(_is("S")).collect()), key=lambda s: int(s["partition"]))
    timings["evaluate"] = time.monotonic() - t

    # stage 4: the partitions' records to the driver one partition at a time, merged by the local writer
    t = time.monotonic()
    parts = [work / "parts" / f"p{p:05d}.out" for p in range(partitions)]
    handle: Any = None
    current = -1
    try:
        for _tag, p, record in evaluated.filter(_is("E")).toLocalIterator(prefetchPartitions=False):
            if p != current:
                if handle is not None:
                    handle.close()
                handle = parts[p].open("wb")
                current = p
            handle.write(record)
    finally:
        if handle is not None:
            handle.close()
    for rdd in persisted:
        rdd.unpersist()
    merged: MergeResult = merge_outputs(parts, out_dir=options.out_dir, work=work)
    timings["merge"] = time.monotonic() - t

    read_files = {f.index for f in route_files} | {f.index for f in med_files}
    report = build_report(
        options, export, data_files, read_files, tally, orphans, reduced, merged, partitions, candidates,
        ExportCounts(len(deleted), unreadable_deleted, export_errors),
    )  # fmt: skip
    stats: dict[str, Any] = {
        "engine": ENGINE,
        "partitions": partitions,
        "lines_read": lines_read,
        "partition_peak_patients": max((r["patients"] for r in reduced), default=0),
    }
    return report, stats
