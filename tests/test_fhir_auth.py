"""Auth for the FHIR client (adapter/fhir/auth.py): static bearer tokens and SMART Backend Services.

Unit tests run the client against a fake transport that plays the SMART configuration, the token endpoint
and a FHIR server (no real sleeping; the token cache runs on a fake clock). Integration tests use the real
sekmet server (tests/support/fhir_server.py registers SMART backend clients with freshly generated RS384
and ES384 keys).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapter.errors import AdapterError, ExitCode
from adapter.fhir.auth import (
    ASSERTION_TYPE,
    AuthConfigError,
    BearerToken,
    NoAuth,
    SmartBackendAuth,
    SmartConfiguration,
    bearer_from_env,
    bearer_from_file,
    jwk_thumbprint,
    make_auth,
    smart_scopes,
)
from adapter.fhir.client import FhirClient, FhirUnauthorized, RetryPolicy
from tests.support.fhir_server import SekmetServer, ensure_installed, start_server
from tests.test_fhir_client import Fake, fake_clients, patient, respond

TOKEN_URL = "https://auth.test/oauth/token"
CLIENT_ID = "ino-backend"
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")


@pytest.fixture
def fake() -> Iterator[Fake]:
    yield from fake_clients()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key(path: Path, key: Any) -> Path:
    path.write_bytes(pem(key))
    path.chmod(0o600)
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSmartServer:
    """SMART configuration + token endpoint + a FHIR read that wants one of the issued tokens."""

    def __init__(self, *, expires_in: int = 300, config: dict[str, Any] | None = None) -> None:
        self.expires_in = expires_in
        self.config = config or {
            "token_endpoint": TOKEN_URL,
            "capabilities": ["client-confidential-asymmetric", "permission-v2"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        }
        self.forms: list[dict[str, str]] = []
        self.tokens: list[str] = []
        self.valid: set[str] = set()
        self.fhir_calls = 0
        self.token_delay = 0.0
        self.token_error: tuple[int, dict[str, Any]] | None = None
        self.metadata: dict[str, Any] | None = None
        self.lock = threading.Lock()

    def revoke_all(self) -> None:
        self.valid.clear()

    def __call__(self, req: requests.PreparedRequest) -> requests.Response:
        url = req.url or ""
        path = urlsplit(url).path
        if path.endswith("/.well-known/smart-configuration"):
            if self.config is None:
                return respond(req, 404, {"resourceType": "OperationOutcome", "issue": []})
            return respond(req, 200, self.config, {"Content-Type": "application/json"})
        if path.endswith("/metadata"):
            return respond(req, 200 if self.metadata else 404, self.metadata or {})
        if url == TOKEN_URL:
            body = req.body.decode() if isinstance(req.body, bytes) else str(req.body)
            form = dict(parse_qsl(body))
            time.sleep(self.token_delay)
            with self.lock:
                self.forms.append(form)
                if self.token_error is not None:
                    status, answer = self.token_error
                    return respond(req, status, answer, {"Content-Type": "application/json"})
                token = f"at-{uuid.uuid4().hex}"
                self.tokens.append(token)
                self.valid.add(token)
            answer = {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
            answer["scope"] = form.get("scope", "")
            return respond(req, 200, answer, {"Content-Type": "application/json"})
        with self.lock:
            self.fhir_calls += 1
        header = req.headers.get("Authorization", "")
        if header.removeprefix("Bearer ") in self.valid:
            return respond(req, 200, {"resourceType": "Patient", "id": "p1"})
        return respond(
            req, 401, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}
        )


def smart_client(fake: Fake, server: FakeSmartServer, key: Any, **auth_kwargs: Any) -> tuple[FhirClient, Any]:
    auth = SmartBackendAuth(CLIENT_ID, key, **auth_kwargs)
    client, _ = fake(server, auth=auth)
    return client, auth


# ---------------------------------------------------------------------------------------------------------
# SMART, unit


def test_token_is_cached_until_shortly_before_expiry(fake: Fake, rsa_key: rsa.RSAPrivateKey) -> None:
    server, clock = FakeSmartServer(expires_in=300), Clock()
    client, auth = smart_client(fake, server, rsa_key, clock=clock)
    for _ in range(3):
        client.read("Patient", "p1")
    assert len(server.tokens) == 1 and auth.tokens_fetched == 1
    clock.now += 239  # renewed 60 s before expiry
    client.read("Patient", "p1")
    assert len(server.tokens) == 1
    clock.now += 2
    client.read("Patient", "p1")
    assert len(server.tokens) == 2


def test_a_short_lived_token_is_renewed_at_half_its_life(fake: Fake, rsa_key: rsa.RSAPrivateKey) -> None:
    server, clock = FakeSmartServer(expires_in=60), Clock()
    client, _ = smart_client(fake, server, rsa_key, clock=clock)
    client.read("Patient", "p1")
    clock.now += 29
    client.read("Patient", "p1")
    assert len(server.tokens) == 1
    clock.now += 2
    client.read("Patient", "p1")
    assert len(server.tokens) == 2


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_the_client_assertion(
    fake: Fake, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, alg: str
) -> None:
    key = rsa_key if alg == "RS384" else ec_key
    server, clock = FakeSmartServer(), Clock()
    client, auth = smart_client(fake, server, key, clock=clock)
    client.read("Patient", "p1")
    clock.now += 1000
    client.read("Patient", "p1")
    assert len(server.forms) == 2
    jtis = set()
    for form in server.forms:
        assert form["grant_type"] == "client_credentials"
        assert (
            form["client_assertion_type"]
            == ASSERTION_TYPE
            == ("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        )
        assert form["scope"] == " ".join(smart_scopes(version="v2"))
        assertion = form["client_assertion"]
        header = jwt.get_unverified_header(assertion)
        assert header == {"alg": alg, "kid": jwk_thumbprint(key), "typ": "JWT"}
        claims = jwt.decode(assertion, key.public_key(), algorithms=[alg], audience=TOKEN_URL)
        assert claims["iss"] == claims["sub"] == CLIENT_ID
        assert claims["aud"] == TOKEN_URL
        assert 0 < claims["exp"] - time.time() <= 300 and claims["exp"] - claims["iat"] <= 300
        jtis.add(claims["jti"])
    assert len(jtis) == 2
    assert auth.alg == alg


def test_an_explicit_key_id_goes_in_the_header(fake: Fake, ec_key: ec.EllipticCurvePrivateKey) -> None:
    server = FakeSmartServer()
    client, _ = smart_client(fake, server, ec_key, key_id="key-2026-11")
    client.read("Patient", "p1")
    assert jwt.get_unverified_header(server.forms[0]["client_assertion"])["kid"] == "key-2026-11"


def test_a_401_renews_the_token_once(
    fake: Fake, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adapter.fhir")
    server = FakeSmartServer()
    client, _ = smart_client(fake, server, rsa_key)
    client.read("Patient", "p1")
    server.revoke_all()  # the token expired early, or the server restarted
    assert client.read("Patient", "p1")[0]["id"] == "p1"
    assert len(server.tokens) == 2 and server.fhir_calls == 3
    assert any("re-authorising once" in r.getMessage() for r in caplog.records)


def test_a_second_401_is_final(fake: Fake, rsa_key: rsa.RSAPrivateKey) -> None:
    server = FakeSmartServer()

    class Refusing(set[str]):
        def add(self, _item: str) -> None:
            pass

    server.valid = Refusing()  # the FHIR side accepts no token, old or new
    client, _ = smart_client(fake, server, rsa_key)
    with pytest.raises(FhirUnauthorized, match="refused again after re-authorising") as err:
        client.read("Patient", "p1")
    assert err.value.status == 401 and err.value.exit_code == ExitCode.FHIR_SERVER
    assert len(server.tokens) == 2 and server.fhir_calls == 2


def test_threads_share_one_token(fake: Fake, rsa_key: rsa.RSAPrivateKey) -> None:
    server = FakeSmartServer()
    server.token_delay = 0.05
    client, _ = smart_client(fake, server, rsa_key)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                client.read("Patient", "p1")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and len(server.tokens) == 1 and server.fhir_calls == 40


def test_token_endpoint_discovered_from_the_capability_statement(
    fake: Fake, rsa_key: rsa.RSAPrivateKey
) -> None:
    server = FakeSmartServer()
    server.config = None  # type: ignore[assignment]  # no .well-known/smart-configuration
    server.metadata = {
        "resourceType": "CapabilityStatement",
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [{"url": "token", "valueUri": TOKEN_URL}],
                        }
                    ]
                },
            }
        ],
    }
    client, _ = smart_client(fake, server, rsa_key)
    client.read("Patient", "p1")
    assert server.forms[0]["scope"] == " ".join(smart_scopes(version="v1"))  # the server said nothing: v1
    assert "system/Patient.read" in server.forms[0]["scope"].split()


def test_no_token_endpoint_anywhere_is_a_clear_error(fake: Fake, rsa_key: rsa.RSAPrivateKey) -> None:
    server = FakeSmartServer()
    server.config = None  # type: ignore[assignment]
    client, _ = smart_client(fake, server, rsa_key)
    with pytest.raises(FhirUnauthorized, match="advertises no token endpoint"):
        client.read("Patient", "p1")


def test_a_plain_http_token_endpoint_is_refused_for_an_https_server(
    fake: Fake, rsa_key: rsa.RSAPrivateKey
) -> None:
    server = FakeSmartServer(config={"token_endpoint": "http://auth.test/token"})
    session = fake(server)[0].session  # the fake transport, for a client on an https base
    auth = SmartBackendAuth(CLIENT_ID, rsa_key)
    with (
        FhirClient("https://fhir.test/fhir", session=session, auth=auth) as client,
        pytest.raises(FhirUnauthorized, match="plain-http"),
    ):
        client.read("Patient", "p1")
    assert server.forms == []


def test_a_token_endpoint_outage_is_retried_with_a_new_assertion(
    fake: Fake, rsa_key: rsa.RSAPrivateKey
) -> None:
    server = FakeSmartServer()
    server.token_error = (503, {"error": "temporarily_unavailable"})
    auth = SmartBackendAuth(CLIENT_ID, rsa_key)
    calls = 0

    def sleep(_seconds: float) -> None:
        nonlocal calls
        calls += 1
        server.token_error = None  # back after the first pause

    client, _ = fake(server, auth=auth, sleep=sleep)
    client.read("Patient", "p1")
    assert calls == 1 and len(server.forms) == 2
    assert server.forms[0]["client_assertion"] != server.forms[1]["client_assertion"]


def test_scope_syntax_follows_what_the_server_advertises() -> None:
    assert SmartConfiguration("t", capabilities=("permission-v2", "permission-v1")).scope_version == "v2"
    assert SmartConfiguration("t", capabilities=("permission-v1",)).scope_version == "v1"
    assert SmartConfiguration("t", scopes_supported=("system/*.rs",)).scope_version == "v2"
    assert SmartConfiguration("t", scopes_supported=("system/*.read", "openid")).scope_version == "v1"
    assert SmartConfiguration("t").scope_version == "v1"
    v2 = smart_scopes()
    assert "system/Patient.rs" in v2 and "system/MedicationRequest.crus" in v2 and "system/Device.crus" in v2
    assert "system/Condition.rs" in v2 and "system/Provenance.crus" in v2
    v1 = smart_scopes(version="v1")
    assert "system/Condition.read" in v1 and "system/Condition.write" not in v1
    assert {"system/DetectedIssue.read", "system/DetectedIssue.write"} <= set(v1)
    assert smart_scopes(read=["Patient"], write=[], version="v2") == ["system/Patient.rs"]


def test_secrets_never_reach_logs_errors_or_repr(
    fake: Fake, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = FakeSmartServer()
    client, auth = smart_client(fake, server, rsa_key)
    client.read("Patient", "p1")
    server.revoke_all()
    client.read("Patient", "p1")  # a 401 and a renewal
    assertion = server.forms[-1]["client_assertion"]
    # a token endpoint that echoes the assertion back in its error description
    server.token_error = (401, {"error": "invalid_client", "error_description": f"bad assertion {assertion}"})
    server.revoke_all()
    with pytest.raises(FhirUnauthorized) as err:
        client.read("Patient", "p1")
    message = str(err.value)
    assert "invalid_client" in message and CLIENT_ID in message and "[redacted]" in message
    secrets_seen = [*server.tokens, *(f["client_assertion"] for f in server.forms)]
    key_text = pem(rsa_key).decode()
    texts = [message, repr(auth), repr(client), repr(err.value)]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert not JWT_RE.search(text), text
        assert not any(s in text for s in secrets_seen), text
        assert "PRIVATE KEY" not in text and key_text[40:80] not in text


# ---------------------------------------------------------------------------------------------------------
# static bearer tokens and the factory


def test_bearer_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INO_TEST_TOKEN", "  tok-123  ")
    auth = bearer_from_env("INO_TEST_TOKEN")
    assert auth.authorization(None) == "Bearer tok-123"  # type: ignore[arg-type]
    assert "tok-123" not in repr(auth) and "INO_TEST_TOKEN" in repr(auth)
    monkeypatch.delenv("INO_TEST_TOKEN")
    with pytest.raises(AuthConfigError, match="INO_TEST_TOKEN is not set") as err:
        bearer_from_env("INO_TEST_TOKEN")
    assert isinstance(err.value, AdapterError) and err.value.exit_code == ExitCode.BAD_INPUT


def test_bearer_from_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "token"
    path.write_text("tok-456\n")
    path.chmod(0o600)
    assert bearer_from_file(path).authorization(None) == "Bearer tok-456"  # type: ignore[arg-type]
    assert not caplog.records
    path.chmod(0o644)
    bearer_from_file(path)
    assert "readable by group or others" in caplog.text
    path.write_text("two words\n")
    with pytest.raises(AuthConfigError, match="not a usable bearer token") as err:
        bearer_from_file(path)
    assert "two" not in str(err.value)
    with pytest.raises(AuthConfigError, match="cannot read the token file"):
        bearer_from_file(tmp_path / "missing")


def test_make_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey) -> None:
    monkeypatch.setenv("INO_TEST_TOKEN", "tok-789")
    assert isinstance(make_auth("none"), NoAuth)
    bearer = make_auth("bearer", token_env="INO_TEST_TOKEN")
    assert isinstance(bearer, BearerToken)
    key_file = write_key(tmp_path / "key.pem", rsa_key)
    smart = make_auth("smart", client_id="c1", key_file=key_file, key_id="k1", scopes=["system/Patient.rs"])
    assert isinstance(smart, SmartBackendAuth)
    assert (smart.client_id, smart.key_id, smart.alg, smart.scopes) == (
        "c1",
        "k1",
        "RS384",
        ("system/Patient.rs",),
    )
    assert isinstance(make_auth("smart", client_id="c1", key_file=key_file), SmartBackendAuth)
    for kind, kwargs, message in [
        ("bearer", {}, "exactly one"),
        ("bearer", {"token_env": "A", "token_file": "b"}, "exactly one"),
        ("smart", {"client_id": "c1"}, "both required"),
        ("none", {"token_env": "X"}, "token_env"),
        ("bearer", {"token_env": "INO_TEST_TOKEN", "key_file": "k"}, "key_file"),
        ("kerberos", {}, "unknown auth kind"),
    ]:
        with pytest.raises(AuthConfigError, match=message):
            make_auth(kind, **kwargs)


def test_unusable_keys_are_refused_with_the_file_named(tmp_path: Path) -> None:
    weak = write_key(tmp_path / "weak.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(AuthConfigError, match="1024 bits"):
        SmartBackendAuth.from_key_file("c", weak)
    p256 = write_key(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(AuthConfigError, match="P-384"):
        SmartBackendAuth.from_key_file("c", p256)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(AuthConfigError, match=r"garbage\.pem: not an unencrypted PEM private key"):
        SmartBackendAuth.from_key_file("c", garbage)
    with pytest.raises(AuthConfigError, match="cannot read the private key"):
        SmartBackendAuth.from_key_file("c", tmp_path / "missing.pem")


def test_jwk_thumbprint_matches_rfc_7638() -> None:
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
        "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-k"
        "EgU8awapJzKnqDKgw"
    )
    import base64

    modulus = int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big")
    key = rsa.RSAPublicNumbers(65537, modulus).public_key()
    assert jwk_thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# ---------------------------------------------------------------------------------------------------------
# against the real server


def _seed_patient(server: SekmetServer) -> str:
    with server.client() as direct:
        created = direct.create(patient(uuid.uuid4().hex))
    assert created.body is not None
    pid: str = created.body["id"]
    return pid


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_backend_services_against_the_server(fhir_server: SekmetServer, alg: str) -> None:
    pid = _seed_patient(fhir_server)
    auth = fhir_server.smart_auth(alg)
    with FhirClient(fhir_server.base_url, auth=auth) as client:
        assert client.read("Patient", pid)[0]["id"] == pid
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "test"},
            "subject": {"reference": f"Patient/{pid}"},
        }
        assert client.create(observation).status == 201  # a write scope
        assert [r["id"] for r in client.search("Observation", {"subject": f"Patient/{pid}"})]
        assert client.server_capabilities().smart
    assert auth.alg == alg and auth.tokens_fetched == 1
    assert set(auth.granted_scopes) == set(smart_scopes(version="v2"))


def test_make_auth_smart_with_a_key_file(fhir_server: SekmetServer) -> None:
    pid = _seed_patient(fhir_server)
    auth = make_auth("smart", client_id=fhir_server.smart.client_id, key_file=fhir_server.smart.rs384_key)
    with FhirClient(fhir_server.base_url, auth=auth) as client:
        assert client.read("Patient", pid)[0]["id"] == pid


def test_bearer_token_file_against_the_server(fhir_server: SekmetServer, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(fhir_server.token + "\n")
    path.chmod(0o600)
    pid = _seed_patient(fhir_server)
    with FhirClient(fhir_server.base_url, auth=make_auth("bearer", token_file=path)) as client:
        assert client.read("Patient", pid)[0]["id"] == pid


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_a_wrong_key_is_refused_clearly_and_without_secrets(
    fhir_server: SekmetServer, alg: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    if alg == "RS384":
        wrong: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        client_id = fhir_server.smart.client_id
    else:
        wrong = ec.generate_private_key(ec.SECP384R1())
        client_id = fhir_server.smart.es384_client_id
    auth = SmartBackendAuth(client_id, wrong)
    with (
        FhirClient(fhir_server.base_url, auth=auth) as client,
        pytest.raises(FhirUnauthorized) as err,
    ):
        client.read("Patient", "anything")
    exc = err.value
    assert isinstance(exc, AdapterError) and exc.exit_code == ExitCode.FHIR_SERVER
    assert int(exc.exit_code) == 5
    assert exc.status == 401
    message = str(exc)
    assert "SMART token request" in message and "invalid_client" in message and client_id in message
    key_text = pem(wrong).decode()
    for text in [message, repr(auth), *(r.getMessage() for r in caplog.records)]:
        assert not JWT_RE.search(text) and "PRIVATE KEY" not in text and key_text[40:80] not in text


def test_an_expired_token_is_renewed_once_mid_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = start_server(ensure_installed(), tmp_path / "sekmet", token_lifetime=2)
    try:
        caplog.set_level(logging.INFO, logger="adapter.fhir")
        pid = _seed_patient(server)
        # the client's clock stands still, so it believes its token fresh: the server decides it expired
        auth = server.smart_auth("RS384", clock=lambda: 0.0)
        with FhirClient(server.base_url, auth=auth) as client:
            client.read("Patient", pid)
            time.sleep(2.2)
            assert client.read("Patient", pid)[0]["id"] == pid
        assert auth.tokens_fetched == 2
        assert sum("re-authorising once" in r.getMessage() for r in caplog.records) == 1
    finally:
        server.stop()


def test_a_missing_scope_is_reported_clearly(
    fhir_server: SekmetServer, caplog: pytest.LogCaptureFixture
) -> None:
    smart = fhir_server.smart
    pid = _seed_patient(fhir_server)
    auth = SmartBackendAuth.from_key_file(smart.limited_client_id, smart.rs384_key)
    with FhirClient(fhir_server.base_url, auth=auth, retry=RetryPolicy(max_tries=1)) as client:
        assert client.read("Patient", pid)[0]["id"] == pid  # granted: system/Patient.rs
        with pytest.raises(FhirUnauthorized) as err:
            list(client.search("Observation", {"subject": f"Patient/{pid}"}))
    message = str(err.value)
    assert err.value.status == 403
    assert f"scopes granted to client {smart.limited_client_id}: system/Patient.rs" in message
    assert "requested but not granted:" in message and "system/Observation.crus" in message
    assert "was not granted the scopes" in caplog.text

    only_missing = SmartBackendAuth.from_key_file(
        smart.limited_client_id, smart.rs384_key, scopes=["system/Observation.rs"]
    )
    with (
        FhirClient(fhir_server.base_url, auth=only_missing) as client,
        pytest.raises(FhirUnauthorized, match="invalid_scope") as err,
    ):
        client.read("Patient", pid)
    assert err.value.status == 400 and "system/Observation.rs" in str(err.value)


def test_threads_share_one_smart_client_and_one_token(fhir_server: SekmetServer) -> None:
    pid = _seed_patient(fhir_server)
    auth = fhir_server.smart_auth("ES384")
    errors: list[BaseException] = []
    with FhirClient(fhir_server.base_url, auth=auth, pool_size=8) as client:

        def work() -> None:
            try:
                for _ in range(3):
                    client.read("Patient", pid)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors and auth.tokens_fetched == 1


def test_key_files_written_by_the_fixture_are_private(fhir_server: SekmetServer) -> None:
    for path in (fhir_server.smart.rs384_key, fhir_server.smart.es384_key):
        assert os.stat(path).st_mode & 0o077 == 0
