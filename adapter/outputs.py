"""Per-patient output folders (an I/O edge): ``<out>/<slug>_<hash>/<variant>/``.

Each folder holds the evaluation (``evaluation.json``), the rendered summaries (``summary.html``,
``summary.md``) and the transaction Bundle that writes them back (``bundle.json``). The evaluation
written last time becomes ``previous-evaluation.json`` when the new one differs, so the summary can
say what changed; re-running with the same data rewrites identical files.

A folder's name is safe and unique per patient reference (:func:`folder_name`); a folder that
would resolve outside ``<out>`` (e.g. through a symbolic link) or that holds another patient's
evaluation is refused, never written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from adapter.errors import InputError, OutputError
from adapter.evaluate import PatientOutcome, plan_write_back
from adapter.safe_text import patient_tag
from adapter.writeback.bundle import Existing, WritePlan
from adapter.writeback.keys import Key
from adapter.writeback.settings import WriteSettings

_PATIENT_ID = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})")
_VARIANT = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
#: Deeper JSON is not an evaluation (the contract nests a few levels); refusing it keeps every
#: later comparison and rendering away from recursion limits.
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class PatientOutput:
    folder: Path
    plan: WritePlan


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _depth_within(value: Any, limit: int) -> bool:
    """True when ``value`` nests no deeper than ``limit`` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return True


def _read_json(path: Path) -> Any:
    """Parsed JSON, or None when it is unreadable, not JSON, has non-finite numbers or nests too deep."""
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return value if _depth_within(value, MAX_DEPTH) else None


def folder_name(evaluation: Mapping[str, Any]) -> str:
    """``<slug>_<hash>``: the hash (10 hex, as in messages' ``patient <hash>``) is of the full patient
    reference, so two references never share a folder (``p:1`` and ``p_1``, ``P1`` and ``p1`` on a
    case-insensitive disk). The slug is the Patient's logical id when the reference is
    ``Patient/<id>`` (FHIR id characters only, leading dots and dashes dropped, never containing
    the patient's MRN), else ``patient``. FHIR ids cannot contain ``_``, so the last ``_`` starts
    the hash.
    """
    ref = str(evaluation.get("patient"))
    m = _PATIENT_ID.fullmatch(ref)
    slug = m.group(1).lstrip(".-") if m else ""
    subject = evaluation.get("subject")
    mrn = subject.get("mrn") if isinstance(subject, Mapping) else None
    if isinstance(mrn, str) and mrn.strip() and mrn.strip().lower() in slug.lower():
        slug = ""
    return f"{slug or 'patient'}_{patient_tag(ref).rsplit(' ', 1)[-1]}"


def folder_for(out_dir: Path, evaluation: Mapping[str, Any]) -> Path:
    """The patient's folder for the evaluation's variant; refused when it resolves outside ``out_dir``."""
    variant = evaluation.get("protocol")
    if not isinstance(variant, str) or not _VARIANT.fullmatch(variant):
        raise OutputError("--out: the evaluation's protocol is not a variant name; nothing written")
    folder = out_dir / folder_name(evaluation) / variant
    root = out_dir.resolve()
    if not folder.resolve().is_relative_to(root):
        raise OutputError(f"--out: {folder} resolves outside {out_dir}; nothing written there")
    return folder


def write_patient(
    out_dir: Path,
    evaluation: dict[str, Any],
    now: str,
    settings: WriteSettings,
    existing: Mapping[Key, Existing] | None = None,
    outcome: PatientOutcome | None = None,
) -> PatientOutput:
    """Write one patient's folder and return it with the write plan. ``outcome`` is a plan already made
    for ``evaluation`` (``sync``: the summaries and the Bundle it sends); without it the plan is made here,
    the summary comparing with the folder's previous evaluation."""
    folder = folder_for(out_dir, evaluation)
    folder.mkdir(parents=True, exist_ok=True)
    if not folder.resolve().is_relative_to(out_dir.resolve()):  # a link made while we looked
        raise OutputError(f"--out: {folder} resolves outside {out_dir}; nothing written there")
    current_path, previous_path = folder / "evaluation.json", folder / "previous-evaluation.json"
    last = _read_json(current_path)
    if isinstance(last, dict) and last.get("patient") != evaluation["patient"]:
        raise OutputError(
            f"--out: {folder} holds another patient's evaluation; not overwritten "
            f"({patient_tag(evaluation['patient'])})"
        )
    if isinstance(last, dict) and last != evaluation and last.get("protocol") == evaluation["protocol"]:
        previous_path.write_text(_dump(last), encoding="utf-8")
    previous = _read_json(previous_path)
    if not _same_subject(previous, evaluation):
        previous = None  # a stray or tampered file: the summary compares with nothing
    if outcome is None:
        outcome = plan_write_back(evaluation, settings, now, previous, existing)
    current_path.write_text(_dump(evaluation), encoding="utf-8")
    (folder / "summary.html").write_text(outcome.summaries["html"], encoding="utf-8")
    (folder / "summary.md").write_text(outcome.summaries["md"], encoding="utf-8")
    (folder / "bundle.json").write_text(_dump(outcome.plan.bundle), encoding="utf-8")
    return PatientOutput(folder, outcome.plan)


def _same_subject(previous: Any, evaluation: Mapping[str, Any]) -> bool:
    return (
        isinstance(previous, dict)
        and previous.get("patient") == evaluation.get("patient")
        and previous.get("protocol") == evaluation.get("protocol")
    )


#: The keys an evaluation must have, with their JSON types.
_REQUIRED: dict[str, type] = {"contract": str, "patient": str, "protocol": str, "eligibility": dict}


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """An evaluation JSON written by ``evaluate`` (one object, the contract's keys).

    Anything else (not JSON, numbers too large for a double, nesting deeper than ``MAX_DEPTH``,
    the contract's keys missing or of the wrong type) is an :class:`InputError`.
    """
    data = _read_json(Path(path))
    if not isinstance(data, dict) or not all(isinstance(data.get(k), t) for k, t in _REQUIRED.items()):
        raise InputError(str(path), "not an evaluation JSON written by `ino-adapter evaluate` (one patient)")
    return data
