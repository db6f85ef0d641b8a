"""Small Bulk Data exports on disk for the screening tests: NDJSON per type (plain or gzip, split into
several files per type), a manifest, a ``deleted/`` Bundle, an error file (OperationOutcome) and files that
are not FHIR (a generator's metadata, a JSON log)."""

from __future__ import annotations

import gzip
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from tests.support.population import examples, treatment_patient
from tests.support.synth import ICD10, PatientBuilder

Resources = list[dict[str, Any]]


def small_population(
    today: date, suffix: str = "s", treated: int = 4, others: int = 12
) -> dict[str, Resources]:
    """The example patients, ``treated`` patients on inotuzumab, and ``others`` without leukaemia (labs, a
    Condition, a MedicationRequest: never candidates)."""
    out: dict[str, Resources] = {}
    for resources in examples(suffix).values():
        pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        out[pid] = resources
    for i in range(treated):
        pid = f"tx{i:02d}-{suffix}"
        out[pid] = treatment_patient(pid, today, i, weight=70 + 7 * i)
    for i in range(others):
        pid = f"ot{i:02d}-{suffix}"
        b = PatientBuilder(pid, "1961-05-02", "female" if i % 2 else "male", today)
        b.lab("platelets", 250 + i, days_ago=3)
        b.lab("creatinine", 70 + i, days_ago=3)
        b.condition(ICD10, "I10", "Essential (primary) hypertension", onset_days_ago=900)
        out[pid] = b.resources
    return out


def lines_by_type(population: Mapping[str, Resources]) -> dict[str, list[bytes]]:
    """Each type's NDJSON lines, patients interleaved (round robin), as an export orders them by time."""
    per_patient: list[dict[str, list[bytes]]] = []
    for pid in sorted(population):
        by_type: dict[str, list[bytes]] = defaultdict(list)
        for r in population[pid]:
            by_type[r["resourceType"]].append(orjson.dumps(r))
        per_patient.append(by_type)
    out: dict[str, list[bytes]] = defaultdict(list)
    types = sorted({t for p in per_patient for t in p})
    for rtype in types:
        queues = [p.get(rtype, []) for p in per_patient]
        depth = max(len(q) for q in queues)
        for i in range(depth):
            out[rtype].extend(q[i] for q in queues if i < len(q))
    return dict(out)


def same_run_report(data: bytes) -> bytes:
    """report.json without its ``run`` section (timings, memory: they vary from run to run), as bytes
    that two runs on the same input must share."""
    report = orjson.loads(data)
    assert set(report["run"]) == {"engine", "timings_s", "peak_rss_mb"}
    del report["run"]
    return orjson.dumps(report, option=orjson.OPT_INDENT_2)


def write_export(
    root: Path,
    lines: Mapping[str, list[bytes]],
    *,
    split: int = 1,
    gz: bool = False,
    manifest: bool = True,
    deleted: Iterable[str] = (),
    errors: bool = True,
    noise: bool = True,
) -> Path:
    """Write ``lines`` (type -> NDJSON lines, as they should read) as a Bulk Data export under ``root``.

    ``split`` files per type (``Type.<k>.ndjson``), ``gz`` compressed; ``deleted`` (``Type/id``) as a
    transaction Bundle of DELETE requests in ``deleted/``; ``errors`` an OperationOutcome ``log.ndjson``;
    ``noise`` a generator's metadata and a JSON log (not FHIR). Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    output = []
    suffix = ".ndjson.gz" if gz else ".ndjson"
    for rtype, rows in sorted(lines.items()):
        size = -(-len(rows) // split)
        for k in range(split):
            part = rows[k * size : (k + 1) * size]
            if not part:
                continue
            name = f"{rtype}{f'.{k + 1}' if split > 1 else ''}{suffix}"
            data = b"".join(row + b"\n" for row in part)
            (root / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
            output.append({"type": rtype, "url": f"https://fhir.example.org/bulk/{name}", "count": len(part)})
    deleted_entries = []
    deleted = list(deleted)
    if deleted:
        (root / "deleted").mkdir(exist_ok=True)
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": ref}} for ref in deleted],
        }
        (root / "deleted" / "Bundle.ndjson").write_bytes(orjson.dumps(bundle) + b"\n")
        deleted_entries.append(
            {"type": "Bundle", "url": "https://fhir.example.org/bulk/deleted/Bundle.ndjson"}
        )
    error_entries = []
    if errors:
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": "processing", "diagnostics": "Observation/x: not exported"}
            ],
        }
        (root / "log.ndjson").write_bytes(orjson.dumps(outcome) + b"\n")
        error_entries.append({"type": "OperationOutcome", "url": "https://fhir.example.org/bulk/log.ndjson"})
    if manifest:
        doc = {
            "transactionTime": "2026-11-21T06:00:00Z",
            "request": "https://fhir.example.org/$export",
            "requiresAccessToken": True,
            "output": output,
            "error": error_entries,
            "deleted": deleted_entries,
        }
        (root / "manifest.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    if noise:
        (root / "generator.json").write_bytes(orjson.dumps({"seed": 13, "patients": 99}))
        (root / "run-log.ndjson").write_bytes(
            b'{"level":"info","msg":"started"}\n{"level":"info","msg":"done"}\n'
        )
    return root
