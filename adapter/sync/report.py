"""The final report of a ``sync`` run: printed, and written as JSON with ``--report`` (no patient data:
patients are named by ``patient_tag``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapter.errors import ExitCode
from adapter.safe_text import patient_tag
from adapter.sync.patient import PatientResult

NOT_FOUND = "no such Patient on the server"


@dataclass(slots=True)
class SyncReport:
    run_id: str
    server: str
    protocol: str
    as_of: str
    status: str = "running"  # completed | stopped | aborted | dry-run
    resumed: bool = False
    since: str | None = None
    checkpoint: str | None = None
    selected: int = 0
    skipped_unchanged: int = 0
    done_before: int = 0  # finished by the run this one resumed
    not_found: list[str] = field(default_factory=list)
    results: list[PatientResult] = field(default_factory=list)
    round_trips: int = 0
    durations: dict[str, float] = field(default_factory=dict)
    aborted_reason: str | None = None

    def count(self, *states: str) -> int:
        return sum(1 for r in self.results if r.state in states)

    @property
    def failed(self) -> list[PatientResult]:
        return [r for r in self.results if r.state in ("failed", "conflict")]

    @property
    def exit_code(self) -> int:
        if self.status == "aborted":
            return int(ExitCode.FHIR_SERVER)
        if self.status == "stopped":
            return int(ExitCode.STOPPED)
        if self.failed or self.not_found:
            return int(ExitCode.PATIENTS_FAILED)
        return int(ExitCode.OK)

    def as_json(self) -> dict[str, Any]:
        evaluated = [r for r in self.results if r.state in ("written", "unchanged", "planned")]
        processed = len(self.results) + self.skipped_unchanged
        return {
            "run_id": self.run_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "resumed": self.resumed,
            "server": self.server,
            "protocol": self.protocol,
            "as_of": self.as_of,
            "since": self.since,
            "checkpoint": self.checkpoint,
            "aborted_reason": self.aborted_reason,
            "patients": {
                "selected": self.selected,
                "skipped_unchanged": self.skipped_unchanged,
                "done_before_resume": self.done_before,
                "evaluated": len(evaluated),
                "written": self.count("written"),
                "unchanged": self.count("unchanged"),
                "planned": self.count("planned"),
                "conflicts": sum(1 for r in self.results if r.conflicts or r.kept or r.state == "conflict"),
                "failed": len(self.failed) + len(self.not_found),
                "not_found": len(self.not_found),
            },
            "resources": {
                "entries_sent": sum(r.entries for r in self.results if r.state == "written"),
                "created": sum(r.created for r in self.results if r.state in ("written", "planned")),
                "updated": sum(r.updated for r in self.results if r.state in ("written", "planned")),
                "kept_clinician_edits": sum(r.kept for r in self.results),
            },
            "failures": [{"patient": r.tag, "state": r.state, "reason": r.reason} for r in self.failed]
            + [
                {"patient": patient_tag(f"Patient/{p}"), "state": "failed", "reason": NOT_FOUND}
                for p in self.not_found
            ],
            "conflicts": [
                {"patient": r.tag, "conflicts": r.conflicts, "kept": r.kept, "not_touched": r.not_touched}
                for r in self.results
                if r.conflicts or r.kept
            ],
            "http": {
                "round_trips": self.round_trips,
                "per_patient": round(self.round_trips / processed, 3) if processed else None,
            },
            "durations_s": {k: round(v, 3) for k, v in self.durations.items()},
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n", encoding="utf-8")

    def text(self) -> str:
        data = self.as_json()
        p, res, http = data["patients"], data["resources"], data["http"]
        lines = [
            f"sync {self.status}: {p['selected']} selected, {p['skipped_unchanged']} skipped (unchanged), "
            f"{p['evaluated']} evaluated ({p['written']} written, {p['unchanged']} unchanged"
            + (f", {p['planned']} planned (dry run)" if p["planned"] else "")
            + f"), {p['conflicts']} with conflicts, {p['failed']} failed",
            f"resources: {res['created']} created, {res['updated']} updated, "
            f"{res['kept_clinician_edits']} clinician edits kept; "
            f"HTTP round trips: {http['round_trips']} ({http['per_patient']} per patient); "
            f"{data['durations_s'].get('total', 0):.1f} s",
        ]
        if self.done_before:
            lines.append(f"resumed run {self.run_id[:8]}: {self.done_before} patients were done before")
        if self.aborted_reason:
            lines.append(f"aborted: {self.aborted_reason}")
        lines += [f"failed: {f['patient']}: {f['reason']}" for f in data["failures"]]
        return "\n".join(lines)
