"""HL7's official FHIR R4 examples (npm package ``hl7.fhir.r4.examples@4.0.1``, CC0) for tests.

The package is fetched at test time with ``npm pack``, checked against the SRI hash pinned in
``hl7-examples.lock`` (beside this file), extracted with a tar filter that refuses anything outside
the package folder, and cached under ``$INO_TEST_CACHE/hl7.fhir.r4.examples-4.0.1/`` (or
``~/.cache/ino-adapter/hl7.fhir.r4.examples-4.0.1/`` when ``INO_TEST_CACHE`` is unset or empty).

Cache layout::

    <cache root>/hl7.fhir.r4.examples-4.0.1/
        .complete.json      # marker, written last; names the integrity the files were checked against
        package/            # the tarball's files: <ResourceType>-<id>.json and package.json

The cache directory is built in a temporary sibling directory and moved into place with a single
``os.rename``, so an interrupted run never leaves a half-filled cache that looks complete.

Failures are loud on purpose: no npm, an unreachable registry or a hash mismatch raise
``RuntimeError`` (or its subclasses below) and the tests using the fixture error out; nothing is
skipped.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
import pytest

__all__ = [
    "CACHE_ENV_VAR",
    "ExampleIntegrityError",
    "ExamplesFetchError",
    "ExamplesLock",
    "UnsafeArchiveError",
    "cache_root",
    "examples_dir",
    "hl7_r4_examples",
    "iter_examples",
    "load_lock",
    "safe_extract",
    "sri_of_file",
    "verify_integrity",
]

CACHE_ENV_VAR = "INO_TEST_CACHE"
LOCK_FILE = Path(__file__).with_name("hl7-examples.lock")
MARKER_NAME = ".complete.json"
PACKAGE_DIR_NAME = "package"  # npm tarballs keep every file under "package/"
NPM_TIMEOUT_SECONDS = 300
ABANDONED_AFTER_SECONDS = 3600
_SRI_ALGORITHMS = frozenset({"sha256", "sha384", "sha512"})
_NON_EXAMPLE_FILES = frozenset({"package.json"})


class ExamplesFetchError(RuntimeError):
    """npm is missing, or ``npm pack`` failed (registry unreachable, package not found, ...)."""


class ExampleIntegrityError(RuntimeError):
    """The downloaded tarball does not match the SRI hash pinned in the lock file."""


class UnsafeArchiveError(RuntimeError):
    """The tarball holds a member that could write outside the extraction directory."""


@dataclass(frozen=True)
class ExamplesLock:
    package: str
    version: str
    integrity: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def cache_name(self) -> str:
        return f"{self.package}-{self.version}"


def load_lock(path: Path | None = None) -> ExamplesLock:
    """Read the pinned package name, version and SRI integrity string (default: ``LOCK_FILE``)."""
    path = LOCK_FILE if path is None else path
    raw: Any = orjson.loads(path.read_bytes())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    values: dict[str, str] = {}
    for key in ("package", "version", "integrity"):
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{path}: missing or empty string field {key!r}")
        values[key] = value
    _parse_sri(values["integrity"])  # fail early on a malformed pin
    return ExamplesLock(package=values["package"], version=values["version"], integrity=values["integrity"])


def cache_root() -> Path:
    """``$INO_TEST_CACHE`` if set and non-empty, else ``~/.cache/ino-adapter``."""
    configured = os.environ.get(CACHE_ENV_VAR, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "ino-adapter"


# --------------------------------------------------------------------------- integrity


def _parse_sri(sri: str) -> tuple[str, bytes]:
    algorithm, sep, b64 = sri.strip().partition("-")
    if not sep or algorithm not in _SRI_ALGORITHMS or not b64:
        raise ValueError(f"not a single SRI hash (expected e.g. 'sha512-<base64>'): {sri!r}")
    try:
        digest = base64.b64decode(b64, validate=True)
    except ValueError as exc:
        raise ValueError(f"SRI hash has invalid base64: {sri!r}") from exc
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise ValueError(f"SRI hash has the wrong length for {algorithm}: {sri!r}")
    return algorithm, digest


def sri_of_file(path: Path, algorithm: str = "sha512") -> str:
    """The SRI string (``<algorithm>-<base64 digest>``) of a file, as npm's ``dist.integrity``."""
    hasher = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(chunk)
    return f"{algorithm}-{base64.b64encode(hasher.digest()).decode('ascii')}"


def verify_integrity(path: Path, expected_sri: str) -> None:
    """Raise ExampleIntegrityError unless ``path`` hashes to ``expected_sri``."""
    algorithm, _ = _parse_sri(expected_sri)
    actual = sri_of_file(path, algorithm)
    if actual != expected_sri.strip():
        raise ExampleIntegrityError(
            f"integrity mismatch for {path.name}:\n"
            f"  expected {expected_sri.strip()}\n"
            f"  got      {actual}\n"
            f"The tarball is not the one pinned in {LOCK_FILE}. Do not just update the pin: find out "
            "why the registry served different bytes for the same version."
        )


# --------------------------------------------------------------------------- extraction


def _member_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
    """Allow only regular files and directories under ``package/``; reject absolute paths and ``..``."""
    name = member.name
    posix = PurePosixPath(name)
    if not name or name.startswith(("/", "\\")) or posix.is_absolute():
        raise UnsafeArchiveError(f"absolute path in archive: {name!r}")
    if ".." in posix.parts or "\\" in name:
        raise UnsafeArchiveError(f"path traversal in archive: {name!r}")
    if posix.parts[0] != PACKAGE_DIR_NAME:
        raise UnsafeArchiveError(f"archive member outside {PACKAGE_DIR_NAME}/: {name!r}")
    if not (member.isreg() or member.isdir()):
        raise UnsafeArchiveError(f"archive member is not a regular file or directory: {name!r}")
    # The stdlib 'data' filter adds its own checks (resolved path stays inside dest, sane modes).
    return tarfile.data_filter(member, dest_path)


def safe_extract(tarball: Path, dest: Path) -> int:
    """Extract a (gzipped) npm tarball into ``dest``; return the number of regular files."""
    with tarfile.open(tarball, "r:*") as tar:
        tar.errorlevel = 2
        members = tar.getmembers()
        for member in members:  # check everything before writing anything
            _member_filter(member, str(dest))
        tar.extractall(dest, filter=_member_filter)
    return sum(1 for m in members if m.isreg())


# --------------------------------------------------------------------------- download


def _npm_pack(spec: str, dest_dir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ExamplesFetchError(
            f"npm is not on PATH; it is needed to fetch {spec} (HL7's FHIR R4 examples) for the tests. "
            "Install Node.js/npm, or pre-populate the cache (see tests/support/hl7_examples.py)."
        )
    env = dict(os.environ)
    env.update(npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false")
    # `--loglevel=error` is `--silent` except that npm still explains a failure on stderr.
    cmd = [npm, "pack", spec, "--loglevel=error", "--ignore-scripts"]
    try:
        proc = subprocess.run(  # fixed argv, no shell
            cmd,
            cwd=dest_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ExamplesFetchError(
            f"`npm pack {spec}` did not finish within {NPM_TIMEOUT_SECONDS}s; is the npm registry reachable?"
        ) from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-2000:] or "(npm printed nothing)"
        raise ExamplesFetchError(
            f"`npm pack {spec}` failed with exit code {proc.returncode}; is the npm registry reachable?\n"
            f"{detail}"
        )
    tarballs = sorted(dest_dir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise ExamplesFetchError(
            f"`npm pack {spec}` succeeded but left {len(tarballs)} .tgz files in {dest_dir}: "
            f"{[p.name for p in tarballs]}"
        )
    return tarballs[0]


# --------------------------------------------------------------------------- cache


def _cache_is_complete(target: Path, lock: ExamplesLock) -> bool:
    marker = target / MARKER_NAME
    try:
        data: Any = orjson.loads(marker.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return (
        isinstance(data, dict)
        and data.get("integrity") == lock.integrity
        and data.get("spec") == lock.spec
        and (target / PACKAGE_DIR_NAME).is_dir()
    )


def _remove_tree(path: Path) -> None:
    """Move ``path`` aside first so a reader never sees it half-deleted, then delete it."""
    doomed = Path(tempfile.mkdtemp(prefix=".stale-", dir=path.parent))
    with contextlib.suppress(FileNotFoundError):
        path.rename(doomed / path.name)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_abandoned_staging(parent: Path, lock: ExamplesLock) -> None:
    """Delete staging/stale dirs left by killed runs (older than an hour, so never a live one)."""
    cutoff = time.time() - ABANDONED_AFTER_SECONDS
    for pattern in (f".tmp-{lock.cache_name}-*", ".stale-*"):
        for leftover in parent.glob(pattern):
            with contextlib.suppress(OSError):
                if leftover.is_dir() and leftover.stat().st_mtime < cutoff:
                    shutil.rmtree(leftover, ignore_errors=True)


def _build_cache(target: Path, lock: ExamplesLock) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(target.parent, lock)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{lock.cache_name}-", dir=target.parent))
    try:
        download_dir = staging / ".download"
        download_dir.mkdir()
        tarball = _npm_pack(lock.spec, download_dir)
        verify_integrity(tarball, lock.integrity)
        file_count = safe_extract(tarball, staging)
        shutil.rmtree(download_dir)

        manifest: Any = orjson.loads((staging / PACKAGE_DIR_NAME / "package.json").read_bytes())
        if not isinstance(manifest, dict) or (manifest.get("name"), manifest.get("version")) != (
            lock.package,
            lock.version,
        ):
            raise ExampleIntegrityError(f"package.json inside the tarball does not name {lock.spec}")

        marker = {"spec": lock.spec, "integrity": lock.integrity, "files": file_count}
        (staging / MARKER_NAME).write_bytes(orjson.dumps(marker, option=orjson.OPT_INDENT_2))
        try:
            os.rename(staging, target)
        except OSError:
            # Another process (e.g. a parallel pytest worker) finished first; use its copy if sound.
            if not _cache_is_complete(target, lock):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def examples_dir() -> Path:
    """Directory holding the extracted JSON files of the pinned ``hl7.fhir.r4.examples`` package.

    Downloads, verifies and caches the package on first use; later calls (also in later runs) reuse the
    cache once its completion marker matches the pinned integrity.
    """
    lock = load_lock()
    target = cache_root() / lock.cache_name
    if not _cache_is_complete(target, lock):
        if target.exists():
            _remove_tree(target)  # stale (other pin) or foreign content
        _build_cache(target, lock)
    return target / PACKAGE_DIR_NAME


def iter_examples(
    resource_types: set[str] | None = None, *, root: Path | None = None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield ``(path, resource)`` for each example whose top-level ``resourceType`` is wanted.

    ``resource_types=None`` yields every resource. Files are visited in name order; non-JSON files and
    the package manifest (and dotfiles such as ``.index.json``) are skipped. A ``.json`` file that does
    not parse raises, since the package is pinned and verified.
    """
    directory = examples_dir() if root is None else root
    for path in sorted(directory.iterdir()):
        if path.suffix != ".json" or path.name.startswith(".") or path.name in _NON_EXAMPLE_FILES:
            continue
        if not path.is_file():
            continue
        try:
            data: Any = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            continue
        resource_type = data.get("resourceType")
        if not isinstance(resource_type, str):
            continue
        if resource_types is None or resource_type in resource_types:
            yield path, data


@pytest.fixture(scope="session")
def hl7_r4_examples() -> Path:
    """Session-wide path to the extracted HL7 FHIR R4 example files (see ``examples_dir``)."""
    return examples_dir()
