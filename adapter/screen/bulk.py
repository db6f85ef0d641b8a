"""``ino-adapter screen --server URL --export``: a FHIR Bulk Data export (v2), downloaded, then screened.

1. Kick-off: ``GET [base]/$export`` (or ``Patient/$export``, ``Group/{id}/$export``) with ``_type`` = the
   types the rules read (adapter.input.resource_types.USED_RESOURCE_TYPES), ``_since`` when given,
   ``_outputFormat=application/fhir+ndjson``, headers ``Prefer: respond-async`` and
   ``Accept: application/fhir+json``. The server answers 202 with the status URL (``Content-Location``),
   which is kept in ``<out>/export-job.json`` at once.
2. Poll the status URL: 202 (with ``X-Progress``, shown, and ``Retry-After``, obeyed, capped at
   MAX_POLL_WAIT s; without it the wait doubles from 1 s) until 200 with the manifest. An error answer
   stops the run (exit 5); transient ones (429, 5xx, lost connections) are retried by the client.
3. Download every ``output[]``, ``deleted[]`` and ``error[]`` file with the FHIR client, streamed, into
   ``<out>/export/`` (``deleted/`` for deletions). ``requiresAccessToken`` true: the access token is sent
   (and the file must lie under the FHIR base URL); false: no Authorization header. A manifest naming the
   local files is written next to them (``manifest.json``), so screening reads the types from it.
4. Screen ``<out>/export/`` (adapter.screen.local), then ``DELETE`` the status URL (the server may drop
   the files) and remove ``export-job.json``.

Interrupted at any point, the same command resumes: with ``export-job.json`` present (and the same
request) it polls the kept status URL instead of kicking off again, skips the files already downloaded,
and the screening resumes its own work.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from adapter.errors import AdapterError, ExitCode
from adapter.fhir.client import FhirClient, FhirError, parse_retry_after
from adapter.input.resource_types import USED_RESOURCE_TYPES
from adapter.screen.output import write_atomic

JOB_FILE = "export-job.json"
EXPORT_DIR = "export"
MAX_POLL_WAIT = 60.0
#: Give up polling after this long (seconds).
MAX_EXPORT_TIME = 24 * 3600.0
NDJSON = "application/fhir+ndjson"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class ExportUsageError(AdapterError):
    exit_code = ExitCode.BAD_INPUT


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What to export: ``level`` system (``[base]/$export``), patient (``Patient/$export``) or group
    (``Group/{group}/$export``); ``since`` a FHIR instant (``_since``)."""

    level: str = "system"
    group: str | None = None
    since: str | None = None
    types: tuple[str, ...] = tuple(sorted(USED_RESOURCE_TYPES))

    @property
    def path(self) -> str:
        if self.level == "group":
            return f"Group/{self.group}/$export"
        return "Patient/$export" if self.level == "patient" else "$export"

    @property
    def params(self) -> list[tuple[str, str]]:
        out = [("_outputFormat", NDJSON), ("_type", ",".join(self.types))]
        if self.since:
            out.append(("_since", self.since))
        return out

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "params": [list(p) for p in self.params]}


def _read_job(path: Path) -> dict[str, Any] | None:
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _write_job(path: Path, job: dict[str, Any]) -> None:
    write_atomic(path, orjson.dumps(job, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def kick_off(client: FhirClient, request: ExportRequest) -> str:
    """Start the export; the status URL."""
    resp = client.request(
        "GET",
        request.path,
        params=request.params,
        headers={"Prefer": "respond-async", "Accept": "application/fhir+json"},
    )
    if resp.status != 202 or not resp.location:
        raise FhirError(resp.status, None, f"FHIR {request.path}: expected 202 with a Content-Location")
    return resp.location


def poll(
    client: FhirClient,
    status_url: str,
    say: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    max_time: float = MAX_EXPORT_TIME,
) -> dict[str, Any]:
    """Poll the status URL until the manifest (200); obeys ``Retry-After``, shows ``X-Progress``."""
    started = clock()
    wait = 1.0
    last_progress = None
    while True:
        resp = client.request("GET", status_url, headers={"Accept": "application/json"})
        if resp.status == 200:
            if not isinstance(resp.body, dict) or not isinstance(resp.body.get("output"), list):
                raise FhirError(200, None, "Bulk Data status: the answer is not a manifest (no output[])")
            return resp.body
        progress = resp.headers.get("x-progress")
        if progress and progress != last_progress:
            say(f"export in progress: {progress[:100]}")
            last_progress = progress
        asked = parse_retry_after(resp.retry_after, time.time())
        pause = min(MAX_POLL_WAIT, max(0.5, asked)) if asked is not None else wait
        wait = min(MAX_POLL_WAIT, wait * 2)
        if clock() - started + pause > max_time:
            raise FhirError(
                None, None, f"Bulk Data export not complete after {max_time:.0f} s; run again to resume"
            )
        sleep(pause)


def _local_name(url: str, used: set[str]) -> str:
    name = _SAFE_NAME.sub("_", Path(urlsplit(url).path).name) or "file.ndjson"
    if not name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")):
        name += ".ndjson"
    base, n = name, 1
    while name in used:
        n += 1
        name = f"{n}-{base}"
    used.add(name)
    return name


def download_all(
    client: FhirClient, manifest: dict[str, Any], dest: Path, job: dict[str, Any], job_path: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """Download the manifest's files into ``dest``; write the local manifest. Files done are kept in the
    job file and not fetched again. Returns facts for the report."""
    dest.mkdir(parents=True, exist_ok=True)
    token = bool(manifest.get("requiresAccessToken"))
    done: dict[str, int] = job.setdefault("downloaded", {})
    used: set[str] = set()
    local: dict[str, Any] = {k: v for k, v in manifest.items() if k not in ("output", "error", "deleted")}
    counts = {"output": 0, "deleted": 0, "error": 0}
    total = 0
    for section in ("output", "deleted", "error"):
        entries = []
        for item in manifest.get(section) or []:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                continue
            name = _local_name(item["url"], used)
            rel = f"deleted/{name}" if section == "deleted" else name
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if done.get(rel) is None or not target.exists() or target.stat().st_size != done[rel]:
                size = client.download(item["url"], target, authenticate=token)
                done[rel] = size
                _write_job(job_path, job)
            total += done[rel]
            counts[section] += 1
            entries.append({**item, "url": rel})
        local[section] = entries
    (dest / "manifest.json").write_bytes(orjson.dumps(local, option=orjson.OPT_INDENT_2) + b"\n")
    say(
        f"downloaded {counts['output']} file(s), {counts['deleted']} deletion and "
        f"{counts['error']} error file(s)"
    )
    return {
        "server_export": {
            "files": counts,
            "bytes_downloaded": total,
            "requires_access_token": token,
        }
    }


def fetch_export(
    client: FhirClient,
    request: ExportRequest,
    out_dir: Path,
    say: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    stop_after_kickoff: bool = False,
) -> tuple[Path, dict[str, Any], str]:
    """Kick off (or resume) the export and download it into ``<out>/export``. Returns the directory, facts
    for the report and the status URL (to delete once screened)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job_path = out_dir / JOB_FILE
    job = _read_job(job_path)
    if job is not None and job.get("request") != request.as_json():
        raise ExportUsageError(
            f"{job_path}: an unfinished export with other parameters; remove the file to start a new one"
        )
    if job is None:
        status_url = kick_off(client, request)
        job = {"request": request.as_json(), "status_url": status_url}
        _write_job(job_path, job)
        say("export started")
        if stop_after_kickoff:
            raise ExportStopped("stopped after the kick-off (test hook)")
    else:
        status_url = str(job["status_url"])
        say("resuming the export kept in " + str(job_path))
    manifest = job.get("manifest")
    if not isinstance(manifest, dict):
        manifest = poll(client, status_url, say, sleep)
        job["manifest"] = manifest
        _write_job(job_path, job)
    info = download_all(client, manifest, out_dir / EXPORT_DIR, job, job_path, say)
    transaction_time = manifest.get("transactionTime")
    info["server_export"]["transaction_time"] = (
        transaction_time if isinstance(transaction_time, str) else None
    )
    return out_dir / EXPORT_DIR, info, status_url


def finish_export(client: FhirClient, status_url: str, out_dir: Path, say: Callable[[str], None]) -> None:
    """DELETE the job on the server (it may free the files) and forget it here."""
    try:
        client.request("DELETE", status_url)
    except FhirError as exc:
        say(f"warning: could not delete the export job on the server ({exc.message})")
    (out_dir / JOB_FILE).unlink(missing_ok=True)


class ExportStopped(AdapterError):  # noqa: N818 - a stop, not an error
    exit_code = ExitCode.STOPPED
