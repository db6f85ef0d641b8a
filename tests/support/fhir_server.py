"""pytest plugin: a real FHIR R4 server (``sekmet-fhir``, pinned below) for tests that talk HTTP.

The server runs in its own virtual environment so its dependencies never mix with the project's:

    <repo>/.cache/sekmet-fhir/          (or $INO_SEKMET_HOME)
        .install.lock                   # flock()ed while installing: concurrent runs wait for each other
        install.log                     # pip's output of the last install
        venv/                           # python -m venv + pip install sekmet-fhir==<pin>
        venv/.ino-installed.json        # marker, written last; names the requirement that was installed

A venv whose marker is missing or names another pin is deleted and rebuilt under the lock, so an
interrupted install never passes for a complete one. Installing needs only PyPI; any failure raises
:class:`SekmetInstallError` and the tests using the fixture ERROR (nothing is skipped).

One server per test session (``fhir_server``, session-scoped): 127.0.0.1 on a free port, an in-memory
store, the simulator off, no traffic log, bearer auth with a random token, its working files in a
pytest temp dir. SMART Backend Services is enabled too (``server.smart``, :class:`SmartSetup`): the
fixture generates an RSA (RS384) and an EC P-384 (ES384) private key with ``cryptography``, writes them as
PEM files (mode 600) in the working dir and registers their public JWKs as the clients
``ino-adapter-test`` (RSA key) and ``ino-adapter-test-es384`` (EC key), scopes ``system/*.*``; a third
client, ``ino-limited``, holds the same RSA key but may only have ``system/Patient.rs``. (One client per key
type because sekmet 0.1.1 tries every key of a client and answers 500 when a key's type does not fit the
assertion's ``alg``.) Its token endpoint is ``[root]/auth/token`` (discovered through
``[base]/.well-known/smart-configuration``); tokens live ``token_lifetime`` seconds (one hour unless a
test starts its own server with ``start_server(..., token_lifetime=2)``).

It is started as ``python -m uvicorn sekmet.main:app_factory --factory`` (what
``sekmet serve`` runs) with ``SEKMET_CONFIG`` naming the settings file, is ready when
``GET [base]/metadata`` answers, and is stopped by PID (terminate, wait, kill) at session end. Tests share
it, so they must use unique ids and identifiers (e.g. ``uuid4().hex``).

``fhir_client`` (function-scoped) is an :class:`adapter.fhir.client.FhirClient` for that server.
``fault_proxy`` (function-scoped) is a :class:`tests.support.fault_proxy.FaultProxy` in front of it (its
``base_url`` is the server's base on the proxy's port; stopped after the test).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapter.fhir.auth import SmartBackendAuth, jwk_thumbprint, public_jwk
from adapter.fhir.client import FhirClient
from tests.support.fault_proxy import FaultProxy

__all__ = [
    "HOME_ENV_VAR",
    "SEKMET_REQUIREMENT",
    "SekmetInstallError",
    "SekmetServer",
    "SekmetStartError",
    "SmartSetup",
    "ensure_installed",
    "fault_proxy",
    "fhir_client",
    "fhir_server",
    "sekmet_home",
    "start_server",
]

SEKMET_REQUIREMENT = "sekmet-fhir==0.1.1"
HOME_ENV_VAR = "INO_SEKMET_HOME"
REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER_NAME = ".ino-installed.json"
INSTALL_TIMEOUT_SECONDS = 900
LOCK_TIMEOUT_SECONDS = INSTALL_TIMEOUT_SECONDS + 300
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 10
_PORT_ATTEMPTS = 3


class SekmetInstallError(RuntimeError):
    """sekmet-fhir could not be installed into its virtual environment."""


class SekmetStartError(RuntimeError):
    """The sekmet-fhir server did not come up (its stderr tail is in the message)."""


# ---------------------------------------------------------------------------------------------------------
# install


def sekmet_home() -> Path:
    configured = os.environ.get(HOME_ENV_VAR, "").strip()
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT / ".cache" / "sekmet-fhir"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _installed(venv: Path) -> bool:
    marker = venv / MARKER_NAME
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(data, dict)
        and data.get("requirement") == SEKMET_REQUIREMENT
        and _venv_python(venv).exists()
    )


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive flock() on ``path``, waited for at most ``timeout`` seconds."""
    with path.open("a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SekmetInstallError(
                        f"another process has held {path} for over {timeout:.0f}s; is an install stuck?"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_logged(cmd: list[str], log: IO[str], what: str) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    try:
        proc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=INSTALL_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SekmetInstallError(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        log.flush()
        raise SekmetInstallError(f"{what} failed with exit code {proc.returncode}")


def ensure_installed(home: Path | None = None) -> Path:
    """Install the pinned sekmet-fhir into ``home/venv`` unless it is already there; return its python.

    Idempotent and safe when several processes call it at once (they serialise on a file lock).
    """
    home = home or sekmet_home()
    venv = home / "venv"
    if _installed(venv):
        return _venv_python(venv)
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".install.lock", LOCK_TIMEOUT_SECONDS):
        if _installed(venv):  # another process finished while we waited
            return _venv_python(venv)
        if venv.exists():
            shutil.rmtree(venv)
        log_path = home / "install.log"
        with log_path.open("w", encoding="utf-8") as log:
            try:
                _run_logged([sys.executable, "-m", "venv", str(venv)], log, "creating the sekmet-fhir venv")
                python = str(_venv_python(venv))
                pip = [python, "-m", "pip", "install", SEKMET_REQUIREMENT]
                _run_logged(pip, log, f"pip install {SEKMET_REQUIREMENT}")
                _run_logged([python, "-c", "import sekmet.main, uvicorn"], log, "importing sekmet")
            except SekmetInstallError as exc:
                log.flush()
                detail = _tail(log_path.read_text(encoding="utf-8", errors="replace"))
                raise SekmetInstallError(f"{exc} (see {log_path}):\n{detail}") from exc
        (venv / MARKER_NAME).write_text(
            json.dumps({"requirement": SEKMET_REQUIREMENT, "python": sys.version.split()[0]}) + "\n",
            encoding="utf-8",
        )
    return _venv_python(venv)


# ---------------------------------------------------------------------------------------------------------
# SMART Backend Services client registration

SMART_CLIENT_ID = "ino-adapter-test"
SMART_ES384_CLIENT_ID = "ino-adapter-test-es384"
SMART_LIMITED_CLIENT_ID = "ino-limited"
SMART_LIMITED_SCOPES = "system/Patient.rs"


@dataclass(frozen=True)
class SmartSetup:
    """The SMART backend clients registered with a test server and their private key files."""

    client_id: str
    es384_client_id: str
    limited_client_id: str
    limited_scopes: str
    rs384_key: Path
    es384_key: Path
    rs384_kid: str
    es384_kid: str


def _write_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _make_smart(workdir: Path) -> tuple[SmartSetup, list[dict[str, Any]]]:
    """New keys for this server: (the setup, the ``smart_clients`` entries of its settings)."""
    keys = workdir / "smart"
    keys.mkdir(parents=True, exist_ok=True)
    keys.chmod(0o700)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    _write_key(rsa_key, keys / "rs384.pem")
    _write_key(ec_key, keys / "es384.pem")
    setup = SmartSetup(
        client_id=SMART_CLIENT_ID,
        es384_client_id=SMART_ES384_CLIENT_ID,
        limited_client_id=SMART_LIMITED_CLIENT_ID,
        limited_scopes=SMART_LIMITED_SCOPES,
        rs384_key=keys / "rs384.pem",
        es384_key=keys / "es384.pem",
        rs384_kid=jwk_thumbprint(rsa_key),
        es384_kid=jwk_thumbprint(ec_key),
    )
    rs_jwk = {**public_jwk(rsa_key), "alg": "RS384", "use": "sig", "kid": setup.rs384_kid}
    es_jwk = {**public_jwk(ec_key), "alg": "ES384", "use": "sig", "kid": setup.es384_kid}
    clients = [
        {"client_id": SMART_CLIENT_ID, "jwks": {"keys": [rs_jwk]}, "scopes": "system/*.*"},
        {"client_id": SMART_ES384_CLIENT_ID, "jwks": {"keys": [es_jwk]}, "scopes": "system/*.*"},
        {"client_id": SMART_LIMITED_CLIENT_ID, "jwks": {"keys": [rs_jwk]}, "scopes": SMART_LIMITED_SCOPES},
    ]
    return setup, clients


# ---------------------------------------------------------------------------------------------------------
# server


@dataclass
class SekmetServer:
    """A running sekmet-fhir server. ``base_url`` ends in ``/fhir``; every request needs ``token``."""

    base_url: str
    token: str
    process: subprocess.Popen[bytes]
    workdir: Path
    stderr_path: Path
    smart: SmartSetup
    _stopped: bool = field(default=False, repr=False)

    @property
    def root_url(self) -> str:
        """The server's root (``base_url`` without ``/fhir``)."""
        return self.base_url.removesuffix("/fhir")

    @property
    def token_endpoint(self) -> str:
        return f"{self.root_url}/auth/token"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kwargs: Any) -> FhirClient:
        """A new FhirClient for this server (keyword arguments go to FhirClient)."""
        kwargs.setdefault("auth", self.token)
        return FhirClient(self.base_url, **kwargs)

    def smart_auth(self, alg: str = "RS384", **kwargs: Any) -> SmartBackendAuth:
        """SMART backend auth as a registered full-scope client, with its RS384 or ES384 key (keyword
        arguments go to SmartBackendAuth, e.g. ``scopes`` or ``clock``)."""
        es = alg == "ES384"
        key = self.smart.es384_key if es else self.smart.rs384_key
        kwargs.setdefault("client_id", self.smart.es384_client_id if es else self.smart.client_id)
        return SmartBackendAuth.from_key_file(key_file=key, **kwargs)

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            return _tail(self.stderr_path.read_text(encoding="utf-8", errors="replace"), lines)
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate the server process (by its PID), wait, and kill it if it does not exit."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _settings(
    port: int, token: str, workdir: Path, smart_clients: list[dict[str, Any]], token_lifetime: int
) -> dict[str, Any]:
    return {
        "base_url": f"http://127.0.0.1:{port}/fhir",
        "host": "127.0.0.1",
        "port": port,
        "db_path": ":memory:",
        "data_dir": str(workdir / "data"),
        "own_private_key_path": str(workdir / "keys" / "sekmet_private.pem"),
        "log_inbound": False,
        "simulator": {"enabled": False},
        "server_auth": {
            "types": ["bearer", "smart"],
            "tokens": [token],
            "smart_clients": smart_clients,
            "token_lifetime": token_lifetime,
            "enforce_scopes": True,
        },
    }


def _ready(base_url: str) -> bool:
    try:
        resp = requests.get(f"{base_url}/metadata", headers={"Accept": "application/fhir+json"}, timeout=2)
        return resp.status_code == 200 and resp.json().get("resourceType") == "CapabilityStatement"
    except (requests.RequestException, ValueError):
        return False


def _start_once(python: Path, workdir: Path, port: int, token_lifetime: int) -> SekmetServer:
    token = secrets.token_urlsafe(24)
    smart, smart_clients = _make_smart(workdir)
    config = workdir / f"settings-{port}.yaml"
    settings = _settings(port, token, workdir, smart_clients, token_lifetime)
    config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    env.pop("PYTHONPATH", None)
    env["SEKMET_CONFIG"] = str(config)
    stderr_path = workdir / f"server-{port}.log"
    cmd = [
        str(python), "-m", "uvicorn", "sekmet.main:app_factory", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with stderr_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    server = SekmetServer(f"http://127.0.0.1:{port}/fhir", token, process, workdir, stderr_path, smart)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SekmetStartError(
                f"sekmet-fhir exited with code {process.returncode} before answering on port {port}:\n"
                f"{server.stderr_tail()}"
            )
        if _ready(server.base_url):
            return server
        time.sleep(0.1)
    server.stop()
    raise SekmetStartError(
        f"sekmet-fhir did not answer GET /metadata within {START_TIMEOUT_SECONDS}s:\n{server.stderr_tail()}"
    )


def start_server(python: Path, workdir: Path, *, token_lifetime: int = 3600) -> SekmetServer:
    """Start sekmet-fhir on a free loopback port (retrying if another process grabbed the port).
    ``token_lifetime`` is how long its SMART access tokens live, in seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(_PORT_ATTEMPTS):
        try:
            return _start_once(python, workdir, _free_port(), token_lifetime)
        except SekmetStartError as exc:
            if attempt + 1 == _PORT_ATTEMPTS or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    """One sekmet-fhir server for the whole session; use unique ids in every test."""
    python = ensure_installed()
    server = start_server(python, tmp_path_factory.mktemp("sekmet-fhir"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fhir_client(fhir_server: SekmetServer) -> Iterator[FhirClient]:
    """A FhirClient (bearer token set) for the session's sekmet-fhir server."""
    with fhir_server.client() as client:
        yield client


@pytest.fixture
def fault_proxy(fhir_server: SekmetServer) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's server (tests/support/fault_proxy.py)."""
    with FaultProxy(fhir_server.base_url) as proxy:
        yield proxy
