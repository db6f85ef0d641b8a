"""What one ``sync`` run is asked to do (the CLI's options, checked), and its usage errors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

from adapter.errors import AdapterError, ExitCode
from adapter.fhir.client import RetryPolicy

Progress = Literal["auto", "bar", "lines", "none"]
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class SyncUsageError(AdapterError):
    """A bad invocation: contradictory options, an unusable state file, another run holding it."""

    exit_code = ExitCode.BAD_INPUT


def parse_since(value: str | None) -> str | None:
    """``None`` (evaluate every selected patient), ``auto`` (the ledger's checkpoints), or a FHIR dateTime
    with a time zone, returned as a UTC instant."""
    if value is None or value == "auto":
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SyncUsageError(
            f"--since {value!r}: expected 'auto' or a date-time such as 2026-11-20T06:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise SyncUsageError(f"--since {value!r}: give a time zone (e.g. Z or +01:00)")
    utc = parsed.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def check_ids(values: Sequence[str], option: str) -> tuple[str, ...]:
    """FHIR logical ids, in order, without duplicates."""
    out: dict[str, None] = {}
    for v in values:
        if not _ID.fullmatch(v):
            raise SyncUsageError(f"{option}: not a FHIR logical id (1-64 of A-Z a-z 0-9 - .)")
        out[v] = None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """One run of ``ino-adapter sync`` (docs in README §sync and adapter/sync/__init__.py)."""

    server: str
    protocol: str
    state: Path
    as_of: date
    auth: str = "none"
    client_id: str | None = None
    key_file: str | None = None
    key_id: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    patients: tuple[str, ...] = ()
    group: str | None = None
    since: str | None = None
    dry_run: bool = False
    concurrency: int = 4
    out_dir: Path | None = None
    mappings: tuple[str, ...] = ()
    site_settings: str | None = None
    report_path: Path | None = None
    # tuning, not on the command line
    patients_per_request: int = 10
    page_size: int = 200
    max_attempts: int = 3  # per patient: the first write and the re-plans after a conflict or "try later"
    timeout: tuple[float, float] = (5.0, 60.0)
    validate: bool = True
    progress: Progress = "auto"
    extra_headers: dict[str, str] = field(default_factory=dict)
    retry: RetryPolicy | None = None  # the client's retries (None: its default)
    scopes: tuple[str, ...] | None = None  # SMART scopes to ask for (None: what sync reads and writes)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.concurrency > 64:
            raise SyncUsageError("--concurrency must be between 1 and 64")
        if self.patients_per_request < 1:
            raise SyncUsageError("patients_per_request must be at least 1")
        if self.group is not None and not _ID.fullmatch(self.group):
            raise SyncUsageError("--group: not a FHIR logical id")
        check_ids(self.patients, "--patient")
        parse_since(self.since)

    @property
    def scope(self) -> str:
        """What the ledger's checkpoints are for: the server and the variant."""
        return f"{self.server.rstrip('/')} {self.protocol}"

    def selection(self) -> dict[str, object]:
        """The options that decide who is selected (a resumed run must have the same)."""
        return {
            "patients": list(self.patients),
            "group": self.group,
            "since": self.since,
            "mappings": list(self.mappings),
            "site_settings": self.site_settings,
        }
