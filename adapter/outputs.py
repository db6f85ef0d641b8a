"""Per-patient output folders (an I/O edge): ``<out>/<patient id>/<variant>/``.

Each folder holds the evaluation (``evaluation.json``), the rendered summaries (``summary.html``,
``summary.md``) and the transaction Bundle that writes them back (``bundle.json``). The evaluation
written last time becomes ``previous-evaluation.json`` when the new one differs, so the summary can
say what changed; re-running with the same data rewrites identical files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapter.summary.render import SUMMARY_FORMATS, render_summary
from adapter.writeback.bundle import Existing, WritePlan, build_transaction
from adapter.writeback.keys import Key
from adapter.writeback.settings import WriteSettings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class PatientOutput:
    folder: Path
    plan: WritePlan


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def folder_for(out_dir: Path, evaluation: dict[str, Any]) -> Path:
    patient_id = str(evaluation["patient"]).split("/", 1)[-1]
    return out_dir / (_UNSAFE.sub("_", patient_id) or "_") / str(evaluation["protocol"])


def render_summaries(
    evaluation: dict[str, Any], previous: dict[str, Any] | None, settings: WriteSettings
) -> dict[str, str]:
    return {
        fmt: render_summary(evaluation, fmt, previous=previous, template_dir=settings.template_dir)
        for fmt in SUMMARY_FORMATS
    }


def write_patient(
    out_dir: Path,
    evaluation: dict[str, Any],
    now: str,
    settings: WriteSettings,
    existing: Mapping[Key, Existing] | None = None,
) -> PatientOutput:
    """Write one patient's folder and return it with the write plan."""
    folder = folder_for(out_dir, evaluation)
    folder.mkdir(parents=True, exist_ok=True)
    current_path, previous_path = folder / "evaluation.json", folder / "previous-evaluation.json"
    last = _read_json(current_path)
    if isinstance(last, dict) and last != evaluation and last.get("protocol") == evaluation["protocol"]:
        previous_path.write_text(_dump(last), encoding="utf-8")
    previous = _read_json(previous_path)
    summaries = render_summaries(evaluation, previous if isinstance(previous, dict) else None, settings)
    plan = build_transaction(evaluation, summaries, now, settings, existing)
    current_path.write_text(_dump(evaluation), encoding="utf-8")
    (folder / "summary.html").write_text(summaries["html"], encoding="utf-8")
    (folder / "summary.md").write_text(summaries["md"], encoding="utf-8")
    (folder / "bundle.json").write_text(_dump(plan.bundle), encoding="utf-8")
    return PatientOutput(folder, plan)


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """An evaluation JSON written by ``evaluate`` (one object, the contract's keys)."""
    from adapter.errors import InputError

    data = _read_json(Path(path))
    if not isinstance(data, dict) or not {"contract", "patient", "protocol", "eligibility"} <= set(data):
        raise InputError(str(path), "not an evaluation JSON written by `ino-adapter evaluate` (one patient)")
    return data
