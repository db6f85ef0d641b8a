"""``report.json``: the run's counts and problems, built the same way by both engines (local and Spark), so
that their reports are equal field for field (docs/screen.md §Output)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.input.attribution import orphan_note
from adapter.input.reader import BrokenLine
from adapter.screen.export import Export, ExportFile
from adapter.screen.output import MAX_PROBLEMS, MergeResult, write_report

if TYPE_CHECKING:
    from adapter.screen.local import ScreenOptions


@dataclass(slots=True)
class LineCounts:
    """What pass 2 saw (lines of the files it routed) and pass 1 parsed."""

    resources: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    candidate_lines: int = 0
    unattributed: int = 0
    deleted: int = 0
    patients: int = 0  # Patient lines
    medications: int = 0
    parsed_in_pass1: int = 0


@dataclass(slots=True)
class ExportCounts:
    deleted_resources: int = 0
    deleted_lines_unreadable: int = 0
    export_errors: int = 0


def orphans_in_order(found: Iterable[tuple[int, int, str, str]]) -> list[BrokenLine]:
    """Broken lines whose patient cannot be told, from ``(file index, line, file name, fault)``, in file and
    line order (both engines list them the same way). As in ``evaluate DIR`` (issue #10) they are counted
    and reported with file and line, and every patient is evaluated."""
    return [
        BrokenLine(f"{name}:{lineno}", fault)
        for _f, lineno, name, fault in sorted(found, key=lambda o: (o[0], o[1]))
    ]


def build_report(
    options: ScreenOptions,
    export: Export,
    data_files: Sequence[ExportFile],
    read_files: set[int],
    lines: LineCounts,
    orphans: Sequence[BrokenLine],
    reduced: Sequence[dict[str, Any]],
    merged: MergeResult,
    partitions: int,
    candidates: int | None,
    counts: ExportCounts,
) -> dict[str, Any]:
    setup = options.setup
    status: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    writeback: Counter[str] = Counter()
    for r in reduced:
        status.update(r["status"])
        actions.update(r["actions"])
        writeback.update(r["writeback"])
    files_by_type: dict[str, dict[str, int]] = {}
    for f in data_files:
        entry = files_by_type.setdefault(f.rtype or "(mixed)", {"files": 0, "bytes": 0})
        entry["files"] += 1
        entry["bytes"] += f.size
    not_read = Counter(f.rtype or "(mixed)" for f in data_files if f.index not in read_files)
    evaluated = sum(r["evaluated"] for r in reduced)
    notes = [orphan_note(o) for o in orphans]
    problems = (notes + merged.problems)[:MAX_PROBLEMS]
    return {
        "report": "ino-adapter screen",
        "version": 1,
        "protocol": setup.protocol,
        "as_of": setup.as_of.isoformat(),
        "ruleset_digest": setup.load().ruleset.get("digest"),
        "options": {
            "all_patients": setup.all_patients,
            "validate": setup.validate,
            "bsa_formula": setup.bsa_formula,
            "mappings": [Path(m).name for m in setup.mappings],
        },
        "export": {
            "manifest": export.manifest is not None,
            "transaction_time": export.transaction_time,
            "files": len(export.files),
            "bytes": sum(f.size for f in export.files),
            "data_files": dict(sorted(files_by_type.items())),
            "not_read": dict(sorted(not_read.items())),
            "deleted_files": len(export.of_kind("deleted")),
            "deleted_resources": counts.deleted_resources,
            "deleted_lines_unreadable": counts.deleted_lines_unreadable,
            "error_files": len(export.of_kind("error")),
            "export_errors": counts.export_errors,
            **(options.export_info or {}),
        },
        "skipped_files": [{"file": rel, "why": why} for rel, why in export.skipped],
        "lines": {
            "resources": lines.resources,
            "by_type": dict(sorted(lines.by_type.items())),
            "candidate_lines": lines.candidate_lines,
            "unattributed": lines.unattributed,
            "unreadable_unattributed": len(orphans),
            "deleted": lines.deleted,
            "medications": lines.medications,
            "parsed_in_pass1": lines.parsed_in_pass1,
        },
        "patients": lines.patients,
        "candidates": candidates if candidates is not None else evaluated,
        "evaluated": evaluated,
        "not_evaluated": sum(r["not_evaluated"] for r in reduced),
        # Patient resources of the patients not evaluated (a duplicate Patient line is not a second person)
        "non_candidates": max(0, lines.patients - sum(r.get("patient_lines", 0) for r in reduced)),
        "eligibility": dict(sorted(status.items())),
        "actions": dict(sorted(actions.items())),
        "writeback": dict(sorted(writeback.items())),
        # a line naming its patients counts once per patient it costs; a line of no known patient once
        "broken_lines": sum(r["broken"] for r in reduced) + len(orphans),
        "problems_total": len(notes) + merged.problems_total,
        "problems": problems,
        "partitions": partitions,
        "outputs": merged.outputs,
    }


#: The part of report.json that differs from run to run (everything else is the same for the same input).
RUN_SECTION = "run"


def finish_report(out_dir: Path, report: dict[str, Any], stats: dict[str, Any], engine: str) -> None:
    """Write ``report.json``: the report, then its ``run`` section (engine, timings, peak memory: they vary
    from run to run), and ``run-stats.json`` (every figure of the run)."""
    run = {"engine": engine, "timings_s": stats.get("timings_s"), "peak_rss_mb": stats.get("peak_rss_mb")}
    write_report(out_dir / "report.json", {**report, RUN_SECTION: run})
    write_report(out_dir / "run-stats.json", stats)
