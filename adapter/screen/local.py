"""The local screening engine: one machine, worker processes, bounded memory, resumable.

    report = run_screen(ScreenOptions(Path("export/"), Path("out/"), ScreenSetup("nhs-ta514", as_of)))

Stages (docs/screen.md):

0. Scan the export (adapter.screen.export); load the rules (a bad table stops here: exit 3); the run's
   fingerprint = the input files (path, size, mtime), the options and the rule-set digest. A work directory
   ``<out>/.screen-work/`` holds the run's state; a different fingerprint discards it.
1. Pass 1, candidates. 1a: the Medications (the files of type Medication, and of unknown type) go to a
   store on disk (``medications.bin`` with an index), and those coded as inotuzumab are noted. 1b: the
   Condition and Medication{Request,Administration,Statement} files (and those of unknown type) are scanned
   block by block for the codes' bytes (``bytes.find``); only the lines holding one are parsed
   (:func:`adapter.screen.core.candidate_of_parsed`). ``--all-patients`` skips 1b.
2. Pass 2, routing. Every file of a type the rules read (not Medication: the store has them) is streamed
   line by line; each line's patients are found by a byte scan (:func:`adapter.screen.core.subject_keys`,
   no parse) and a candidate's line is appended to its partition (CRC-32 of the patient reference) in the
   task's spill segment (``spill/u<unit>-<n>.seg``: records grouped by partition, an index of offsets; at
   most SPILL_BUFFER bytes buffered per task). Non-candidate lines cost the scan only.
3. Evaluation, per partition: its records from every segment are grouped by patient and each patient's
   lines (with the shared Medications they refer to) are evaluated by
   :func:`adapter.screen.core.evaluate_group`; the results, sorted by patient, go to ``parts/p<n>.out``.
4. Merge: the partitions' files (each sorted by patient) are merged into the outputs
   (adapter.screen.output); the work directory is removed.

Every unit of work (a file range in passes 1 and 2, a partition in stage 3) is written to a temporary name,
renamed when complete and then recorded in ``state.json`` (itself replaced atomically): a run stopped at
any point (SIGKILL included) and restarted with the same input and options redoes only what was not
recorded. Workers are spawned processes (``--workers``; 1 runs everything in this process).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import multiprocessing
import os
import re
import resource
import shutil
import signal
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from adapter.errors import AdapterError, ExitCode, InputError
from adapter.input.reader import unreadable_line
from adapter.input.resource_types import USED_RESOURCE_TYPES
from adapter.screen.core import (
    CANDIDATE_TYPES,
    CandidateCodes,
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
    unit_blocks,
)
from adapter.screen.output import MergeResult, merge_outputs, write_atomic
from adapter.screen.progress import Progress, ProgressMode
from adapter.screen.report import ExportCounts, LineCounts, build_report, finish_report, orphans_in_order

#: The engine's version: part of the fingerprint, so a changed engine never reuses older work.
ENGINE_VERSION = "screen-local-1"
WORK_DIR = ".screen-work"
#: Bytes of candidate lines a routing task buffers before it writes a spill segment.
SPILL_BUFFER = 32 * 1024 * 1024
#: Candidates per partition (the bound on what one evaluation task holds in memory).
PATIENTS_PER_PARTITION = 64
#: With --all-patients, bytes of input per partition.
BYTES_PER_PARTITION = 32 * 1024 * 1024
MIN_PARTITIONS = 16
MAX_PARTITIONS = 4096

T = TypeVar("T")
R = TypeVar("R")


class ScreenStopped(AdapterError):  # noqa: N818 - a stop, not an error
    """The run stopped before its end (a signal, or the test hook); the next run resumes it."""

    exit_code = ExitCode.STOPPED


@dataclass(slots=True)
class ScreenOptions:
    export_dir: Path
    out_dir: Path
    setup: ScreenSetup
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    progress: ProgressMode = "auto"
    #: the number of partitions (None: from the candidates, see :func:`partition_count`)
    partitions: int | None = None
    #: test hook: stop (ScreenStopped) once this many partitions were evaluated by this run
    stop_after: int | None = None
    #: with ``stop_after``: SIGKILL this process instead (an abrupt end, as a crash or an OOM kill)
    kill_on_stop: bool = False
    #: keep the work directory after a successful run (debugging)
    keep_work: bool = False
    #: extra facts for the report (e.g. the server export this input came from)
    export_info: dict[str, Any] | None = None
    #: plain-file bytes per unit (tests make it small to exercise ranges)
    unit_bytes: int | None = None


@dataclass(slots=True)
class ScreenReport:
    report: dict[str, Any]  # report.json without its run section (the same for the same input)
    stats: dict[str, Any]  # run-stats.json (timings, memory, reuse)


def partition_count(candidates: int | None, input_bytes: int) -> int:
    """Partitions for the run: about PATIENTS_PER_PARTITION candidates each (with --all-patients, about
    BYTES_PER_PARTITION of input each), at least MIN_PARTITIONS and at most MAX_PARTITIONS. Depends on the
    input only (never on --workers), so a resumed run finds the same partitions."""
    wanted = (
        math.ceil(input_bytes / BYTES_PER_PARTITION)
        if candidates is None
        else math.ceil(candidates / PATIENTS_PER_PARTITION)
    )
    return max(MIN_PARTITIONS, min(MAX_PARTITIONS, wanted))


# -- state -------------------------------------------------------------------------------------------
class State:
    """``state.json``: what the run has finished (each entry written only after its files were renamed)."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"fingerprint": fingerprint, "pass1a": {}, "pass1b": {}, "pass2": {}}
        self.data.update({"reduce": {}, "partitions": None, "candidates": None})

    @classmethod
    def open(cls, work: Path, fingerprint: str) -> tuple[State, bool]:
        """The state of the work directory, or a fresh one (the directory emptied) when the fingerprint
        differs. Returns (state, whether earlier work is reused)."""
        path = work / "state.json"
        state = cls(path, fingerprint)
        try:
            old = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            old = None
        if isinstance(old, dict) and old.get("fingerprint") == fingerprint:
            state.data.update(old)
            return state, True
        for child in work.iterdir() if work.exists() else []:
            if child.name == "lock":
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        state.save()
        return state, False

    def save(self) -> None:
        write_atomic(self.path, orjson.dumps(self.data, option=orjson.OPT_SORT_KEYS))

    def done(self, stage: str, key: int | str) -> dict[str, Any] | None:
        value = self.data[stage].get(str(key))
        return value if isinstance(value, dict) else None

    def record(self, stage: str, key: int | str, value: dict[str, Any]) -> None:
        self.data[stage][str(key)] = value
        self.save()


@contextlib.contextmanager
def _work_lock(work: Path) -> Iterator[None]:
    work.mkdir(parents=True, exist_ok=True)
    with (work / "lock").open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(str(work.parent), "another screen run is using this --out directory") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# -- worker-side caches (one per process: workers are reused across tasks) -----------------------------
_CACHE: dict[tuple[str, str], Any] = {}


def _cached(kind: str, path: Path, load: Callable[[Path], T]) -> T:
    key = (kind, str(path))
    if key not in _CACHE:
        _CACHE[key] = load(path)
    value: T = _CACHE[key]
    return value


def _load_candidates(path: Path) -> frozenset[bytes]:
    data = path.read_bytes()
    return frozenset(data.split(b"\n")) - {b""}


def _load_deleted(path: Path) -> frozenset[str]:
    if not path.exists():
        return frozenset()
    return frozenset(path.read_text(encoding="utf-8").split("\n")) - {""}


class MedicationStore:
    """The export's Medications on disk (``medications.bin``) with an index in memory: ref -> records."""

    def __init__(self, work: Path) -> None:
        self.path = work / "medications.bin"
        raw = orjson.loads((work / "medications.idx").read_bytes()) if self.path.exists() else {}
        self.index: dict[str, list[list[int]]] = raw

    def lines(self, ref: str) -> list[tuple[int, int, bytes]]:
        """(unit, line in unit, line) of every Medication line with this ``Type/id``."""
        out: list[tuple[int, int, bytes]] = []
        places = self.index.get(ref) or []
        if not places:
            return out
        with self.path.open("rb") as f:
            for unit, lineno, offset, length in places:
                f.seek(offset)
                out.append((unit, lineno, f.read(length)))
        return out


@dataclass(frozen=True, slots=True)
class UnitTable:
    """Per unit: the file's name (the origin of its lines) and the number of lines before the unit."""

    names: tuple[str, ...]
    offsets: tuple[int, ...]

    @classmethod
    def load(cls, path: Path) -> UnitTable:
        raw = orjson.loads(path.read_bytes())
        return cls(tuple(raw["names"]), tuple(raw["offsets"]))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- tasks (module level: picklable for spawned workers) ----------------------------------------------
@dataclass(frozen=True, slots=True)
class ScanTask:
    file: ExportFile
    unit: Unit
    codes: CandidateCodes
    deleted: str  # path of deleted.txt


def medications_task(task: ScanTask) -> dict[str, Any]:
    """Pass 1a: the unit's Medication lines (not deleted), which are inotuzumab, and its line count."""
    deleted = _cached("deleted", Path(task.deleted), _load_deleted)
    meds: list[tuple[str, int, bytes]] = []
    inotuzumab: list[str] = []
    lineno = 0
    known = task.file.rtype == "Medication"
    for block in unit_blocks(task.file, task.unit):
        for line in block.splitlines():
            lineno += 1
            if not known and b'"Medication"' not in line:
                continue
            ref = type_and_id(line)
            if ref is None or not ref.startswith("Medication/") or ref in deleted:
                continue
            meds.append((ref, lineno, line))
            ino = inotuzumab_medication(line, task.codes)
            if ino is not None:
                inotuzumab.append(ino)
    return {"unit": task.unit.index, "lines": lineno, "meds": meds, "ino": inotuzumab, "rss": _rss_mb()}


def candidates_task(task: ScanTask) -> dict[str, Any]:
    """Pass 1b: the patients this unit makes candidates. Blocks are searched for each code's bytes; only
    the lines holding one are parsed."""
    found: set[str] = set()
    parsed = 0
    needles = task.codes.needles
    for block in unit_blocks(task.file, task.unit):
        starts: set[int] = set()
        for needle in needles:
            pos = block.find(needle)
            while pos >= 0:
                start = block.rfind(b"\n", 0, pos) + 1
                end = block.find(b"\n", pos)
                starts.add(start)
                if end < 0:
                    break
                pos = block.find(needle, end)
        for start in sorted(starts):
            end = block.find(b"\n", start)
            segment = block[start : end if end >= 0 else len(block)]
            for line in segment.splitlines() if b"\r" in segment else (segment,):
                if not any(n in line for n in needles):
                    continue
                parsed += 1
                ref = candidate_of_parsed(line, task.codes)
                if ref is not None:
                    found.add(ref)
    return {"unit": task.unit.index, "candidates": sorted(found), "parsed": parsed, "rss": _rss_mb()}


@dataclass(frozen=True, slots=True)
class RouteTask:
    file: ExportFile
    unit: Unit
    work: str
    partitions: int
    all_patients: bool


#: How exporters write a patient reference (compact JSON): the fast path of pass 2 looks for these.
COMPACT_SUBJECTS = (b'"subject":{"reference":"', b'"patient":{"reference":"')
_RELATIVE_PATIENT = re.compile(rb"Patient/[A-Za-z0-9\-.]{1,64}")


class _Router:
    """Pass 2 for one unit: finds each line's patients and spills the candidates' lines by partition.

    Per block of lines, the fast path finds the compact ``"subject":{"reference":"`` (and ``"patient"``)
    occurrences with ``bytes.find`` and looks the reference up without splitting the block into lines or
    copying a non-candidate's line; it is taken only when those occurrences are every ``"subject"`` and
    ``"patient"`` key in the block (else, and for blocks with a CR, every line goes through
    :func:`adapter.screen.core.subject_keys`). Lines without a reference (Patient lines, others) go through
    ``subject_keys`` too. Both paths route a line to every patient it names, with ``evaluate``'s line
    numbers."""

    def __init__(self, task: RouteTask) -> None:
        work = Path(task.work)
        self.task = task
        self.candidates = (
            None if task.all_patients else _cached("candidates", work / "candidates.bin", _load_candidates)
        )
        self.deleted = _cached("deleted", work / "deleted.txt", _load_deleted)
        self.spill = work / "spill"
        self.parts = task.partitions
        self.unit = task.unit.index
        self.buffers: dict[int, list[bytes]] = defaultdict(list)
        self.buffered = 0
        self.segments: list[str] = []
        self.lines = self.blank = self.kept = self.unattributed = self.dropped = self.patients = 0
        self.file_type = task.file.rtype
        #: unreadable lines whose patient cannot be told (reported, as ``evaluate DIR`` does): [line, fault]
        self.orphans: list[list[Any]] = []

    def run(self) -> dict[str, Any]:
        for block in unit_blocks(self.task.file, self.task.unit):
            if b"\r" in block or not self.fast(block):
                for line in block.splitlines():
                    self.lines += 1
                    self.generic(self.lines, line)
        self.flush()
        return {
            "unit": self.unit,
            "segments": self.segments,
            "lines": self.lines,
            "resources": self.lines - self.blank,
            "kept": self.kept,
            "unattributed": self.unattributed,
            "orphans": self.orphans,
            "patients": self.patients,
            "deleted": self.dropped,
            "rss": _rss_mb(),
        }

    @staticmethod
    def compact_references(block: bytes) -> list[int] | None:
        """Where the references start after every ``"subject"``/``"patient"`` key of the block, when each is
        written compactly (``"subject":{"reference":"``); None when one is not (take the per-line path)."""
        starts: list[int] = []
        kinds = 0
        for key, needle in zip((b'"subject"', b'"patient"'), COMPACT_SUBJECTS, strict=True):
            expected = block.count(key)
            if not expected:
                continue
            kinds += 1
            size, found = len(needle), 0
            pos = block.find(needle)
            while pos >= 0:
                starts.append(pos + size)
                found += 1
                pos = block.find(needle, pos + size)
            if found != expected:
                return None
        if kinds > 1:
            starts.sort()
        return starts

    def fast(self, block: bytes) -> bool:
        """The fast path over one block (False, nothing done: take the per-line path).

        A line whose references are all plain (``Patient/<id>``, complete within the line) is routed by them
        without splitting the block; any other line with a reference (absolute, versioned, escaped, or cut
        off with its line) and the lines without one go through :meth:`generic`, the per-line path. Both
        paths route and count every line alike (tests/test_screen.py)."""
        starts = self.compact_references(block)
        if starts is None:
            return False
        before = self.lines  # lines of the unit before this block
        self.lines += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        find, cands, plain = block.find, self.candidates, _RELATIVE_PATIENT.fullmatch
        size, count = len(block), len(starts)
        index = -1  # the index in the block of the current line
        end = -1  # the position of its line feed (size when it has none)
        i = 0
        while i < count:
            start = starts[i]
            previous = block.rfind(b"\n", end + 1, start)
            line_start = previous + 1 if previous >= 0 else end + 1
            if line_start > end + 1:  # lines without a reference come first
                gap = block[end + 1 : line_start]
                self.gap(gap, before + index + 1)
                index += gap.count(b"\n")
            index += 1
            end = find(b"\n", start)
            if end < 0:
                end = size
            keys: list[bytes] = []
            simple = True
            while i < count and starts[i] <= end:  # every reference on this line (one may end it)
                at = starts[i]
                i += 1
                if simple:
                    close = find(b'"', at, end)
                    ref = block[at:close]
                    if close < 0 or not plain(ref):
                        simple = False
                    elif ref not in keys:
                        keys.append(ref)
            lineno = before + index + 1
            if not simple:
                self.generic(lineno, block[line_start:end])
                continue
            for key in keys:
                if cands is None or key in cands:
                    self.take(key, lineno, block[line_start:end])
        if end + 1 < size:
            self.gap(block[end + 1 :], before + index + 1)
        return True

    def gap(self, text: bytes, before: int) -> None:
        """Whole lines without a compact reference (``before``: lines of the unit before them)."""
        if not text:
            return
        lines = text.split(b"\n")
        if text.endswith(b"\n"):
            lines.pop()
        for i, line in enumerate(lines, start=before + 1):
            self.generic(i, line)

    def generic(self, lineno: int, line: bytes) -> None:
        if not line.strip():
            self.blank += 1
            return
        if counts_as_patient(line, self.file_type):
            self.patients += 1
        keys = subject_keys(line)
        if not keys:
            self.unattributed += 1
            broken = unreadable_line(line, "")
            if broken is not None:
                self.orphans.append([lineno, broken.fault])
            return
        for key in dict.fromkeys(keys):
            if self.candidates is None or key in self.candidates:
                self.take(key, lineno, line)

    def take(self, key: bytes, lineno: int, line: bytes) -> None:
        if self.deleted:
            ref = type_and_id(line)
            if ref is not None and ref in self.deleted:
                self.dropped += 1
                return
        record = b"%s\t%d\t%d\t%s\n" % (key, self.unit, lineno, line)
        self.buffers[zlib.crc32(key) % self.parts].append(record)
        self.buffered += len(record)
        self.kept += 1
        if self.buffered >= SPILL_BUFFER:
            self.flush()

    def flush(self) -> None:
        if not self.buffers:
            return
        name = f"u{self.unit:06d}-{len(self.segments):03d}.seg"
        index: list[list[int]] = []
        tmp = self.spill / f".{name}.tmp"
        with tmp.open("wb") as f:
            offset = 0
            for p in sorted(self.buffers):
                data = b"".join(self.buffers[p])
                f.write(data)
                index.append([p, offset, len(data)])
                offset += len(data)
        os.replace(tmp, self.spill / name)
        write_atomic(self.spill / f"{name}.idx", orjson.dumps(index))
        self.segments.append(name)
        self.buffers.clear()
        self.buffered = 0


def route_task(task: RouteTask) -> dict[str, Any]:
    """Pass 2: stream the unit's lines; a candidate's line goes to its partition in a spill segment."""
    return _Router(task).run()


@dataclass(frozen=True, slots=True)
class ReduceTask:
    partition: int
    segments: tuple[tuple[str, int, int], ...]  # (segment file, offset, length)
    work: str
    setup: ScreenSetup


def reduce_task(task: ReduceTask) -> dict[str, Any]:
    """Stage 3: evaluate every patient of one partition; write ``parts/p<n>.out`` sorted by patient."""
    started = time.monotonic()
    work = Path(task.work)
    units = _cached("units", work / "units.json", UnitTable.load)
    meds = _cached("medications", work, MedicationStore)
    groups: dict[bytes, set[tuple[int, int, bytes]]] = defaultdict(set)
    digest = hashlib.sha256()
    for name, offset, length in task.segments:
        with (work / "spill" / name).open("rb") as f:
            f.seek(offset)
            data = f.read(length)
        digest.update(data)
        for record in data.split(b"\n"):
            if not record:
                continue
            key, unit, lineno, line = record.split(b"\t", 3)
            groups[key].add((int(unit), int(lineno), line))
    setup, now = task.setup, task.setup.now
    status: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    tmp = work / "parts" / f".p{task.partition:05d}.tmp"
    with tmp.open("wb") as out:
        for key in sorted(groups):
            ref = key.decode()
            own = groups.pop(key)
            medication_refs = sorted({m for _, _, line in own for m in medication_refs_of(line)})
            for m in medication_refs:
                own.update(meds.lines(m))
            lines = [(units.names[u], units.offsets[u] + n, line) for u, n, line in sorted(own)]
            result = evaluate_group(ref, lines, setup, now)
            counts["broken"] += result.broken
            counts["patient_lines"] += result.patient_lines
            counts["problems"] += len(result.problems)
            if result.evaluation_json:
                counts["evaluated"] += 1
                status[result.status] += 1
                actions[str(result.summary_row.get("action"))] += 1
                out.write(b"%s\tE\t%s\n" % (key, result.evaluation_json))
                out.write(b"%s\tS\t%s\n" % (key, orjson.dumps(result.summary_row)))
                for rtype in sorted(result.writeback):
                    for wline in result.writeback[rtype]:
                        counts[f"writeback:{rtype}"] += 1
                        out.write(b"%s\tW\t%s\t%s\n" % (key, rtype.encode(), wline))
            else:
                counts["not_evaluated"] += 1
            for problem in result.problems:
                out.write(b"%s\tP\t%s\n" % (key, orjson.dumps(problem)))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, work / "parts" / f"p{task.partition:05d}.out")
    return {
        "partition": task.partition,
        "patients": counts["evaluated"] + counts["not_evaluated"],
        "evaluated": counts["evaluated"],
        "not_evaluated": counts["not_evaluated"],
        "broken": counts["broken"],
        "patient_lines": counts["patient_lines"],
        "problems": counts["problems"],
        "status": dict(status),
        "actions": dict(actions),
        "writeback": {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("writeback:")},
        "input_sha256": digest.hexdigest()[:32],
        "rss": _rss_mb(),
        "seconds": round(time.monotonic() - started, 3),
    }


# -- running tasks ------------------------------------------------------------------------------------
START_METHOD_ENV = "INO_SCREEN_START_METHOD"


def start_method() -> str:
    """How worker processes start: ``fork`` on Linux (they inherit the loaded rules, tables and UCUM
    registry: no start-up cost), else ``spawn`` (every task and the setup are picklable, so both work);
    ``INO_SCREEN_START_METHOD`` overrides."""
    wanted = os.environ.get(START_METHOD_ENV)
    if wanted:
        return wanted
    return "fork" if sys.platform.startswith("linux") else "spawn"


def warm_up(setup: ScreenSetup) -> None:
    """Load what evaluating a patient needs once per process: the rules and tables, the UCUM registry
    (about a second to build) and the summary templates."""
    setup.load()
    from adapter.mapping.units import is_valid_ucum

    is_valid_ucum("mg/dL")


class Runner:
    """Runs tasks in this process (workers = 1) or in a pool of worker processes.

    Passes 1 and 2 (byte scans) run in a first pool; meanwhile this process warms up (:func:`warm_up`) in a
    thread, and the evaluation pool is then forked from it warm. With ``spawn`` each evaluation worker
    warms up itself."""

    def __init__(self, workers: int, setup: ScreenSetup) -> None:
        self.workers = max(1, workers)
        self.setup = setup
        self.method = start_method()
        self.pool: Any = None
        self.pool_warm = False
        self.worker_rss = 0.0
        self._warming: threading.Thread | None = None

    def map(
        self, fn: Callable[[T], dict[str, Any]], tasks: Sequence[T], warm: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Results as tasks finish (any order). ``warm``: the tasks evaluate patients."""
        if self.workers == 1 or len(tasks) <= 1:
            for task in tasks:
                yield fn(task)
            return
        if self.pool is None or (warm and not self.pool_warm):
            self.close()
            ctx = multiprocessing.get_context(self.method)
            main_warm = self._join_warming()
            if warm and not (self.method == "fork" and main_warm):
                self.pool = ctx.Pool(self.workers, initializer=_worker_init, initargs=(self.setup,))
            else:
                self.pool = ctx.Pool(self.workers, initializer=_worker_init)
            self.pool_warm = warm
            if not warm and self.method == "fork" and self._warming is None:
                self._warming = threading.Thread(target=warm_up, args=(self.setup,), daemon=True)
                self._warming.start()
        for result in self.pool.imap_unordered(fn, tasks):
            self.worker_rss = max(self.worker_rss, float(result.get("rss") or 0))
            yield result

    def _join_warming(self) -> bool:
        if self._warming is None:
            return False
        self._warming.join()
        return True

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def terminate(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def _worker_init(setup: ScreenSetup | None = None) -> None:
    # the parent handles Ctrl-C and SIGTERM (it terminates the pool); workers just work
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if setup is not None:
        warm_up(setup)


# -- the run ------------------------------------------------------------------------------------------
def fingerprint(export: Export, setup: ScreenSetup, digest: str) -> str:
    h = hashlib.sha256()
    parts = [ENGINE_VERSION, export.fingerprint(), setup.protocol, setup.as_of.isoformat(), digest]
    parts += [str(setup.validate), str(setup.all_patients), setup.bsa_formula, *setup.mappings]
    h.update("\x1f".join(parts).encode())
    return h.hexdigest()


class _Stopper:
    """SIGTERM makes the run stop between tasks (the pool is terminated; finished work is kept)."""

    def __init__(self) -> None:
        self.stop = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(_signum: int, _frame: Any) -> None:
            self.stop = True
            raise ScreenStopped("stopped by a signal; run the same command again to resume")

        old = signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, old)


def _own_files(out_dir: Path) -> tuple[Path, ...]:
    """What a run writes under ``--out`` (never read as input when ``--out`` lies in the export)."""
    from adapter.screen.output import EVALUATIONS, SUMMARY_CSV, SUMMARY_PARQUET, WRITEBACK_DIR

    names = (
        WORK_DIR, WRITEBACK_DIR, EVALUATIONS, SUMMARY_CSV, SUMMARY_PARQUET, "report.json", "run-stats.json"
    )  # fmt: skip
    return tuple(out_dir / name for name in names)


def run_screen(options: ScreenOptions, say: Callable[[str], None] | None = None) -> ScreenReport:
    """Screen the export in ``options.export_dir``; write the outputs under ``options.out_dir``."""
    say = say or (lambda _m: None)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / WORK_DIR
    try:
        export = scan_export(options.export_dir, exclude=_own_files(out_dir))
    except FileNotFoundError:
        raise InputError(str(options.export_dir), "no such directory") from None
    if not export.files:
        raise InputError(str(options.export_dir), "holds no NDJSON file of FHIR resources")
    setup = options.setup
    loaded = setup.load()  # a bad table or settings file stops the run here (exit 3)
    fp = fingerprint(export, setup, str(loaded.ruleset.get("digest")))
    timings["scan"] = time.monotonic() - t0
    runner = Runner(options.workers, setup)
    stopper = _Stopper()
    with _work_lock(work), stopper.installed():
        state, resumed = State.open(work, fp)
        if resumed:
            say(f"resuming the run in {work} (same input and options)")
        try:
            report, stats = _run(options, export, state, work, runner, timings, say)
        except BaseException:
            runner.terminate()
            raise
        runner.close()
    stats["peak_rss_mb"] = {"main": round(_rss_mb(), 1), "workers": round(runner.worker_rss, 1)}
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stats["peak_rss_mb"]["workers"] = round(max(runner.worker_rss, children), 1)
    stats["resumed"]["from_earlier_run"] = resumed
    timings["total"] = time.monotonic() - t0
    stats["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    read = stats.get("bytes_read") or 0
    stats["throughput_mb_s"] = round(read / 1e6 / timings["total"], 1) if timings["total"] > 0 else None
    finish_report(out_dir, report, stats, "local")
    if not options.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return ScreenReport(report, stats)


def _run(
    options: ScreenOptions,
    export: Export,
    state: State,
    work: Path,
    runner: Runner,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    setup = options.setup
    unit_bytes = options.unit_bytes or 64 * 1024 * 1024
    (work / "spill").mkdir(exist_ok=True)
    (work / "parts").mkdir(exist_ok=True)
    data_files = [f for f in export.files if f.kind in ("data", "json")]
    files_by_index = {f.index: f for f in export.files}
    units = export.units(data_files, unit_bytes)
    reused: Counter[str] = Counter()
    mode = options.progress

    # deleted resources and export errors (small: read every run)
    t = time.monotonic()
    deleted, unreadable_deleted = deleted_references(export.of_kind("deleted"))
    write_atomic(work / "deleted.txt", "\n".join(sorted(deleted)).encode())
    export_errors = sum(count_lines(f) for f in export.of_kind("error"))

    # pass 1a: Medications
    codes = candidate_codes(setup)
    med_units = [u for u in units if files_by_index[u.file].rtype in ("Medication", None)]
    line_counts: dict[int, int] = {}
    if state.data["pass1a"].get("done"):
        line_counts.update({int(k): v for k, v in state.data["pass1a"]["lines"].items()})
        ino = state.data["pass1a"]["ino"]
        reused["pass1a"] += 1
    else:
        store: dict[str, list[list[int]]] = {}
        ino_set: set[str] = set()
        tasks = [ScanTask(files_by_index[u.file], u, codes, str(work / "deleted.txt")) for u in med_units]
        results = sorted(_progress(runner, medications_task, tasks, "pass 1 (medications)", mode), key=_unit)
        with (work / ".medications.bin.tmp").open("wb") as f:
            offset = 0
            for r in results:
                line_counts[r["unit"]] = r["lines"]
                ino_set.update(r["ino"])
                for ref, lineno, line in r["meds"]:
                    store.setdefault(ref, []).append([r["unit"], lineno, offset, len(line)])
                    f.write(line)
                    offset += len(line)
        os.replace(work / ".medications.bin.tmp", work / "medications.bin")
        write_atomic(work / "medications.idx", orjson.dumps(store, option=orjson.OPT_SORT_KEYS))
        ino = sorted(ino_set)
        state.data["pass1a"] = {
            "done": True,
            "lines": {str(k): v for k, v in line_counts.items()},
            "ino": ino,
        }
        state.data["pass1a"]["medications"] = len(store)
        state.save()
    codes = codes.with_medications(ino)

    # pass 1b: candidates
    candidate_units = [u for u in units if files_by_index[u.file].rtype in (*CANDIDATE_TYPES, None)]
    if setup.all_patients:
        candidates: int | None = None
    elif state.data["candidates"] is not None:
        candidates = int(state.data["candidates"])
        reused["pass1b"] += 1
    else:
        found: set[str] = set()
        parsed = 0
        todo = [ScanTask(files_by_index[u.file], u, codes, "") for u in candidate_units]
        for r in _progress(runner, candidates_task, todo, "pass 1 (candidates)", mode):
            found.update(r["candidates"])
            parsed += r["parsed"]
        write_atomic(work / "candidates.bin", b"\n".join(sorted(c.encode() for c in found)) + b"\n")
        state.data["pass1b"] = {"parsed": parsed}
        state.data["candidates"] = candidates = len(found)
        state.save()
    timings["pass1"] = time.monotonic() - t
    say(
        f"pass 1: {candidates} candidate patient(s)"
        if candidates is not None
        else "pass 1: --all-patients: every patient is a candidate"
    )

    # partitions
    route_units = [
        u
        for u in units
        if files_by_index[u.file].rtype is None
        or (
            files_by_index[u.file].rtype in USED_RESOURCE_TYPES
            and files_by_index[u.file].rtype != "Medication"
        )
    ]
    if state.data["partitions"] is None:
        input_bytes = sum(files_by_index[u.file].size for u in route_units)
        state.data["partitions"] = options.partitions or partition_count(candidates, input_bytes)
        state.save()
    partitions = int(state.data["partitions"])

    # pass 2: routing
    t = time.monotonic()
    route_todo = []
    for u in route_units:
        if state.done("pass2", u.index) is not None:
            reused["pass2_units"] += 1
            continue
        for stale in (work / "spill").glob(f"u{u.index:06d}-*"):
            stale.unlink()
        route_todo.append(RouteTask(files_by_index[u.file], u, str(work), partitions, setup.all_patients))
    for r in _progress(runner, route_task, route_todo, "pass 2 (routing)", mode, size=_route_size):
        state.record("pass2", r["unit"], {k: v for k, v in r.items() if k != "rss"})
    routed = {int(k): v for k, v in state.data["pass2"].items()}
    for k, v in routed.items():
        line_counts[k] = v["lines"]
    timings["pass2"] = time.monotonic() - t

    # the units' line offsets (a file read in ranges numbers its lines from its start)
    names: list[str] = []
    offsets: list[int] = []
    running: dict[int, int] = defaultdict(int)
    for unit in units:
        names.append(files_by_index[unit.file].name)
        offsets.append(running[unit.file])
        running[unit.file] += line_counts.get(unit.index, 0)
    orphans = orphans_in_order(
        (unit.file, offsets[unit.index] + lineno, names[unit.index], fault)
        for unit in units
        for lineno, fault in (routed.get(unit.index) or {}).get("orphans", ())
    )
    write_atomic(work / "units.json", orjson.dumps({"names": names, "offsets": offsets}))
    _CACHE.pop(("units", str(work / "units.json")), None)
    _CACHE.pop(("medications", str(work)), None)

    # stage 3: evaluate the partitions
    t = time.monotonic()
    ranges: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for unit_index in sorted(routed):
        for name in routed[unit_index]["segments"]:
            for p, offset, length in orjson.loads((work / "spill" / f"{name}.idx").read_bytes()):
                ranges[p].append((name, offset, length))
    reduce_todo = []
    task_seconds: list[float] = []
    for p in range(partitions):
        done = state.done("reduce", p)
        if done is not None and (work / "parts" / f"p{p:05d}.out").exists():
            reused["partitions"] += 1
            continue
        reduce_todo.append(ReduceTask(p, tuple(ranges.get(p, ())), str(work), setup))
    evaluated_now = _progress(
        runner, reduce_task, reduce_todo, "evaluate (partitions)", mode, unit="partitions"
    )
    for finished, r in enumerate(evaluated_now, start=1):
        state.record("reduce", r["partition"], {k: v for k, v in r.items() if k not in ("rss", "seconds")})
        task_seconds.append(r["seconds"])
        if options.stop_after is not None and finished >= options.stop_after:
            if options.kill_on_stop:
                os.kill(os.getpid(), signal.SIGKILL)
            raise ScreenStopped(f"stopped after {finished} partition(s) (test hook); run again to resume")
    timings["evaluate"] = time.monotonic() - t

    # stage 4: merge
    t = time.monotonic()
    parts = [work / "parts" / f"p{p:05d}.out" for p in range(partitions)]
    merged: MergeResult = merge_outputs(parts, out_dir=options.out_dir, work=work)
    timings["merge"] = time.monotonic() - t

    reduced = [state.data["reduce"][str(p)] for p in range(partitions)]
    counted = LineCounts(
        medications=state.data["pass1a"].get("medications", 0),
        parsed_in_pass1=(state.data.get("pass1b") or {}).get("parsed", 0),
    )
    for u in route_units:
        rtype, done = files_by_index[u.file].rtype, routed[u.index]
        counted.by_type[rtype or "(mixed)"] += done["resources"]
        counted.resources += done["resources"]
        counted.candidate_lines += done["kept"]
        counted.unattributed += done["unattributed"]
        counted.deleted += done["deleted"]
        counted.patients += done["patients"]
    routed_files = {u.file for u in route_units} | {u.file for u in med_units}
    report = build_report(
        options, export, data_files, routed_files, counted, orphans, reduced, merged, partitions, candidates,
        ExportCounts(len(deleted), unreadable_deleted, export_errors),
    )  # fmt: skip
    stats: dict[str, Any] = {
        "workers": runner.workers,
        "partitions": partitions,
        "units": len(units),
        "bytes_read": sum(files_by_index[i].size for i in routed_files),
        "resumed": {
            "pass1": bool(reused["pass1a"] or reused["pass1b"]),
            "pass2_units_reused": reused["pass2_units"],
            "partitions_reused": reused["partitions"],
        },
        "partition_peak_patients": max((r["patients"] for r in reduced), default=0),
        "evaluate_task_seconds": {"sum": round(sum(task_seconds), 3), "max": max(task_seconds, default=0.0)},
    }
    return report, stats


def _unit(result: dict[str, Any]) -> int:
    return int(result["unit"])


def _route_size(task: Any) -> float:
    f: ExportFile = task.file
    u: Unit = task.unit
    if u.end < 0 and u.start == 0:
        return float(f.size)
    end = f.size if u.end < 0 else u.end
    return float(end - u.start)


def _progress(
    runner: Runner,
    fn: Callable[[T], dict[str, Any]],
    tasks: Sequence[T],
    desc: str,
    mode: ProgressMode,
    size: Callable[[Any], float] | None = None,
    unit: str = "B",
    warm: bool = False,
) -> Iterable[dict[str, Any]]:
    """Run ``tasks`` with a progress display (bytes of input by default, else one per task)."""
    sizes = [size(t) if size else (_route_size(t) if unit == "B" else 1.0) for t in tasks]
    total = sum(sizes)
    by_index = {id(t): s for t, s in zip(tasks, sizes, strict=True)}
    if not tasks:
        return
    with Progress(desc, total, unit, mode if total else "none") as bar:
        keyed = {_task_key(t): by_index[id(t)] for t in tasks}
        for result in runner.map(fn, tasks, warm):
            bar.update(keyed.get(_result_key(result), 0.0))
            yield result


def _task_key(task: Any) -> tuple[str, int]:
    if isinstance(task, ReduceTask):
        return ("partition", task.partition)
    return ("unit", task.unit.index)


def _result_key(result: dict[str, Any]) -> tuple[str, int]:
    if "partition" in result:
        return ("partition", int(result["partition"]))
    return ("unit", int(result["unit"]))


def default_workers() -> int:
    return os.cpu_count() or 1


if sys.platform == "win32":  # pragma: no cover - fcntl is POSIX
    raise ImportError("the local screening engine needs a POSIX system")
