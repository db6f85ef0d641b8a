"""The HTTP service as a REAL process: ``python -m cli serve --config FILE`` (uvicorn) on 127.0.0.1.

    svc = start_service(tmp_path, {"api_tokens_sha256": [sha256_hex("t")]})
    try:
        r = httpx.post(svc.url + "/evaluate", json=bundle, headers=svc.auth())
    finally:
        svc.stop()

- :func:`start_service` writes the configuration (YAML) into ``workdir``, picks a free port (unless the
  configuration names one), starts the process with its stderr (the JSON log) in ``workdir/service.log``,
  and waits until ``GET /health`` answers (an exit or a timeout raises with the log's tail).
- :meth:`ServiceProcess.stop` sends SIGTERM (graceful shutdown), waits, kills after ``timeout`` and
  returns the exit status; it is idempotent.
- :meth:`ServiceProcess.logs` parses the JSON log lines (the service's structured log).
- :class:`JwtIssuer` is an EHR: an EC P-384 key and an RSA key, their JWK Set in a file (for the
  configuration's ``jwks_file``), and :meth:`JwtIssuer.token` to sign CDS Hooks JWTs.

The ``service`` fixture (session-scoped) is a plain service with a bearer token (``TOKEN``) and a trusted
issuer (``service_issuer``); tests that need another configuration start their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-7f3c2a"  # the bearer token of the ``service`` fixture
ISSUER = "https://ehr.test.example"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------------------
# an EHR signing JWTs


@dataclass
class JwtIssuer:
    iss: str = ISSUER
    ec_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    rsa_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    ec_kid: str = "ec-1"
    rsa_kid: str = "rsa-1"

    def jwks(self) -> dict[str, Any]:
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key()))
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        ec_jwk.update(kid=self.ec_kid, alg="ES384", use="sig")
        rsa_jwk.update(kid=self.rsa_kid, alg="RS384", use="sig")
        return {"keys": [ec_jwk, rsa_jwk]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def claims(self, audience: str, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.iss,
            "aud": audience,
            "exp": now + 120,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        claims.update(over)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        audience: str,
        alg: str = "ES384",
        headers: dict[str, Any] | None = None,
        key: Any = None,
        **claims: Any,
    ) -> str:
        """A signed JWT (ES384 with the EC key, RS384 with the RSA key); ``claims`` override (None drops)."""
        if key is None:
            key = self.ec_key if alg.startswith("ES") else self.rsa_key
        kid = self.ec_kid if alg.startswith("ES") else self.rsa_kid
        head: dict[str, Any] = {"kid": kid, "typ": "JWT"}
        head.update(headers or {})
        head = {k: v for k, v in head.items() if v is not None}
        return jwt.encode(self.claims(audience, **claims), key, algorithm=alg, headers=head)


# ---------------------------------------------------------------------------------------------------------
# the process


@dataclass
class ServiceProcess:
    url: str
    workdir: Path
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    config: dict[str, Any]
    token: str = TOKEN

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    out.append(item)
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, event: str, request_id: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.logs()
            if e.get("event") == event and (request_id is None or e.get("request_id") == request_id)
        ]

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_service(
    workdir: Path,
    config: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    workers: int | None = None,
    timeout: float = 30.0,
) -> ServiceProcess:
    """Start ``ino-adapter serve`` with ``config`` (written to ``workdir/service.yaml``); ready when /health
    answers and, with ``workers``, when every worker process has logged that it started (a loaded machine
    starts them one after the other)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {"host": "127.0.0.1", "port": free_port(), **config}
    config.setdefault("base_url", f"http://127.0.0.1:{config['port']}")
    config_path = workdir / "service.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = workdir / "service.log"
    cmd = [sys.executable, "-m", "cli", "serve", "--config", str(config_path)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INO_ADAPTER_")}
    full_env.update(env or {})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    svc = ServiceProcess(f"http://127.0.0.1:{config['port']}", workdir, config_path, log_path, proc, config)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}:\n{svc.log_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(svc.url + "/health", timeout=1.0).status_code == 200:
                started = {e.get("pid") for e in svc.events("worker started")}
                if workers is None or len(started) >= workers:
                    return svc
        if time.monotonic() > deadline:
            svc.stop()
            raise RuntimeError(f"the service did not start within {timeout} s:\n{svc.log_text()[-3000:]}")
        time.sleep(0.1)


def base_config(workdir: Path, issuer: JwtIssuer, **more: Any) -> dict[str, Any]:
    """A configuration with the test token and ``issuer`` trusted (its JWK Set in a file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    jwks = issuer.write_jwks(workdir / "jwks.json")
    return {
        "protocol": "nhs-ta514",
        "api_tokens_sha256": [sha256_hex(TOKEN)],
        "cds_hooks": {"trusted_issuers": [{"iss": issuer.iss, "jwks_file": str(jwks)}]},
        **more,
    }


@pytest.fixture(scope="session")
def service_issuer() -> JwtIssuer:
    return JwtIssuer()


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, service_issuer: JwtIssuer) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("service")
    svc = start_service(workdir, base_config(workdir, service_issuer, max_request_bytes=1_000_000))
    try:
        yield svc
    finally:
        svc.stop()
