"""adapter.service.security: the EHR's JWT (CDS Hooks 2.0) and the REST bearer tokens, without a server.

Every refusal is an AuthError (401) -- or 503 when keys cannot be had -- and says which check failed."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.requests import Request

from adapter.service.config import ServiceConfig
from adapter.service.deps import ServiceDeps
from adapter.service.errors import ServiceError, UnavailableError
from adapter.service.security import (
    AuthError,
    KeySets,
    keysets,
    verify_api_bearer,
    verify_cds_jwt,
    verify_jwt,
)
from adapter.service.store import MemoryReplayCache
from tests.support.service import JwtIssuer, sha256_hex

BASE = "https://adapter.example.org"
SERVICE = "/cds-services/ino-order-sign-nhs-ta514"
AUD = BASE + SERVICE
JWKS_URL = "https://ehr.test.example/.well-known/jwks.json"
JKU = "https://ehr.test.example/other-jwks.json"


def _request(token: str | None, path: str = SERVICE, scheme: str = "Bearer") -> Request:
    headers = [] if token is None else [(b"authorization", f"{scheme} {token}".encode())]
    return Request(
        {
            "type": "http",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": headers,
            "scheme": "http",
            "server": ("127.0.0.1", 8080),
        }
    )


def _deps(tmp_path: Path, issuer: JwtIssuer, **cds: Any) -> ServiceDeps:
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    trusted = cds.pop("trusted", None) or [{"iss": issuer.iss, "jwks_file": str(jwks)}]
    config = ServiceConfig.model_validate(
        {
            "base_url": BASE,
            "api_tokens_sha256": [sha256_hex("secret-1"), sha256_hex("secret-2")],
            "cds_hooks": {"trusted_issuers": trusted, **cds},
        }
    )
    return ServiceDeps.from_config(config)


@pytest.fixture(scope="module")
def issuer() -> JwtIssuer:
    return JwtIssuer()


@pytest.fixture
def deps(tmp_path: Path, issuer: JwtIssuer) -> ServiceDeps:
    return _deps(tmp_path, issuer)


def _refused(deps: ServiceDeps, token: str, match: str, aud_path: str = SERVICE) -> AuthError:
    with pytest.raises(AuthError, match=match) as info:
        verify_cds_jwt(_request(token), aud_path, deps)
    assert info.value.status == 401
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")
    return info.value


# ---------------------------------------------------------------------------------------------------------
# accepted


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_a_valid_token_is_accepted(deps: ServiceDeps, issuer: JwtIssuer, alg: str) -> None:
    claims = verify_cds_jwt(_request(issuer.token(AUD, alg)), SERVICE, deps)
    assert claims["iss"] == issuer.iss and claims["aud"] == AUD


def test_aud_as_a_one_element_list_is_accepted(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    assert verify_cds_jwt(_request(issuer.token(AUD, aud=[AUD])), SERVICE, deps)["aud"] == [AUD]


# ---------------------------------------------------------------------------------------------------------
# algorithm attacks


def _unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64(header)}.{b64(claims)}."


def test_alg_none_is_refused(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    token = _unsigned(issuer.claims(AUD), {"alg": "none", "kid": issuer.ec_kid, "typ": "JWT"})
    _refused(deps, token, "alg must be one of")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key_is_refused(deps: ServiceDeps, issuer: JwtIssuer, alg: str) -> None:
    """The classic forgery: sign with HMAC using the issuer's PUBLIC key (as PEM, or as its JWK JSON) as
    the secret, hoping the verifier passes that key to an HMAC check."""
    for secret in (
        issuer.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        issuer.ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(issuer.jwks()["keys"][1]).encode(),
    ):
        header = base64.urlsafe_b64encode(
            json.dumps({"alg": alg, "kid": issuer.rsa_kid, "typ": "JWT"}).encode()
        ).rstrip(b"=")
        payload = base64.urlsafe_b64encode(json.dumps(issuer.claims(AUD)).encode()).rstrip(b"=")
        signing_input = header + b"." + payload
        algo = jwt.algorithms.HMACAlgorithm(getattr(jwt.algorithms.HMACAlgorithm, "SHA" + alg[2:]))
        sig = base64.urlsafe_b64encode(algo.sign(signing_input, secret)).rstrip(b"=")
        _refused(deps, (signing_input + b"." + sig).decode(), "alg must be one of")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS384"])
def test_other_asymmetric_algorithms_are_refused(deps: ServiceDeps, issuer: JwtIssuer, alg: str) -> None:
    key = issuer.ec_key if alg.startswith("ES") else issuer.rsa_key
    if alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    _refused(deps, issuer.token(AUD, alg, key=key), "alg must be one of")


def test_a_header_alg_that_differs_from_the_jwk_alg_is_refused(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    # RS384 header naming the EC key's kid
    token = issuer.token(AUD, "RS384", headers={"kid": issuer.ec_kid})
    _refused(deps, token, "alg does not match")


def test_kid_is_required(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    _refused(deps, issuer.token(AUD, headers={"kid": None}), "no kid")


def test_an_unknown_kid_is_refused(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    _refused(deps, issuer.token(AUD, headers={"kid": "nope"}), "no key of the issuer has the JWT's kid")


def test_a_signature_by_another_key_is_refused(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    _refused(deps, issuer.token(AUD, key=other), "signature does not verify")


@pytest.mark.filterwarnings("ignore:The RSA key is 1024 bits")
def test_keys_unfit_for_the_algorithm_are_refused(tmp_path: Path, issuer: JwtIssuer) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p256 = ec.generate_private_key(ec.SECP256R1())
    jwks = issuer.jwks()
    weak_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key())) | {"kid": "weak"}
    p256_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(p256.public_key())) | {"kid": "p256"}
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(issuer.ec_key)) | {"kid": "private"}
    enc = {**jwks["keys"][0], "kid": "enc", "use": "enc"}
    jwks["keys"] += [weak_jwk, p256_jwk, private, enc]
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    config = ServiceConfig.model_validate(
        {"base_url": BASE, "cds_hooks": {"trusted_issuers": [{"iss": issuer.iss, "jwks_file": str(path)}]}}
    )
    deps = ServiceDeps.from_config(config)
    _refused(deps, issuer.token(AUD, "RS384", key=weak, headers={"kid": "weak"}), "at least 2048 bits")
    _refused(
        deps, issuer.token(AUD, "ES384", key=issuer.ec_key, headers={"kid": "p256"}), "cannot be used|P-384"
    )
    _refused(deps, issuer.token(AUD, headers={"kid": "private"}), "private or symmetric")
    _refused(deps, issuer.token(AUD, headers={"kid": "enc"}), "not a signing key")


# ---------------------------------------------------------------------------------------------------------
# claims


def test_an_untrusted_issuer_is_refused(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    _refused(deps, issuer.token(AUD, iss="https://evil.example"), "issuer is not trusted")


@pytest.mark.parametrize(
    "aud",
    [
        BASE,
        BASE + "/cds-services/other",
        AUD + "/",
        "http://adapter.example.org" + SERVICE,
        [AUD, "https://x"],
    ],
)
def test_aud_must_be_exactly_the_service_url(deps: ServiceDeps, issuer: JwtIssuer, aud: Any) -> None:
    _refused(deps, issuer.token(AUD, aud=aud), "aud is not this service's URL")


def test_an_expired_token_is_refused(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    now = int(time.time())
    _refused(deps, issuer.token(AUD, iat=now - 200, exp=now - 60), "expired")


def test_clock_skew_is_tolerated_within_bounds(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    now = int(time.time())
    assert verify_cds_jwt(_request(issuer.token(AUD, iat=now - 100, exp=now - 10)), SERVICE, deps)
    assert verify_cds_jwt(_request(issuer.token(AUD, iat=now + 10, exp=now + 100)), SERVICE, deps)
    _refused(deps, issuer.token(AUD, iat=now + 120, exp=now + 200), "not valid yet")


def test_a_long_lived_token_is_refused(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    now = int(time.time())
    _refused(deps, issuer.token(AUD, iat=now, exp=now + 3600), "lives longer than")


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "iss", "aud"])
def test_required_claims(deps: ServiceDeps, issuer: JwtIssuer, claim: str) -> None:
    with pytest.raises(AuthError):
        verify_cds_jwt(_request(issuer.token(AUD, **{claim: None})), SERVICE, deps)  # type: ignore[arg-type]


def test_a_replayed_jti_is_refused(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    token = issuer.token(AUD)
    verify_cds_jwt(_request(token), SERVICE, deps)
    _refused(deps, token, "already used")
    # the same jti in a new token too
    jti = uuid.uuid4().hex
    verify_cds_jwt(_request(issuer.token(AUD, jti=jti)), SERVICE, deps)
    _refused(deps, issuer.token(AUD, jti=jti, alg="RS384"), "already used")


def test_a_full_replay_cache_refuses_with_503(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    deps.replay = MemoryReplayCache(max_entries=2)
    verify_cds_jwt(_request(issuer.token(AUD)), SERVICE, deps)
    verify_cds_jwt(_request(issuer.token(AUD)), SERVICE, deps)
    with pytest.raises(UnavailableError) as info:
        verify_cds_jwt(_request(issuer.token(AUD)), SERVICE, deps)
    assert info.value.status == 503 and "Retry-After" in info.value.headers


def test_replay_cache_forgets_expired_tokens() -> None:
    now = [1000.0]
    cache = MemoryReplayCache(max_entries=2, clock=lambda: now[0])
    assert not cache.seen("i", "a", 1010)
    assert not cache.seen("i", "b", 1010)
    assert cache.seen("i", "a", 1010)
    now[0] = 1011.0
    assert not cache.seen("i", "c", 1100)  # room made by forgetting a and b
    assert not cache.seen("i", "a", 1100)


@pytest.mark.parametrize(
    "header",
    [None, "Basic dXNlcjpwdw==", "Bearer", "Bearer not.a.jwt", "Bearer a.b"],
)
def test_malformed_authorization_headers(deps: ServiceDeps, header: str | None) -> None:
    request = _request(None)
    if header is not None:
        request = Request({**request.scope, "headers": [(b"authorization", header.encode())]})
    with pytest.raises(AuthError):
        verify_cds_jwt(request, SERVICE, deps)


# ---------------------------------------------------------------------------------------------------------
# key sets from URLs: caching, refresh on an unknown kid (bounded), jku allow-list


class FakeJwks:
    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        self.calls: list[str] = []
        self.fail = False

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if self.fail:
            raise ConnectionError("down")
        return json.dumps(self.docs[url]).encode()


def _url_deps(tmp_path: Path, issuer: JwtIssuer, fake: FakeJwks, clock: list[float]) -> ServiceDeps:
    deps = _deps(
        tmp_path,
        issuer,
        trusted=[{"iss": issuer.iss, "jwks_url": JWKS_URL, "jku": [JKU]}],
        jwks_cache_s=3600,
        jwks_min_refresh_s=30,
    )
    deps.extras["security.keysets"] = KeySets(3600, 30, fake, clock=lambda: clock[0])
    return deps


def test_jwks_url_is_fetched_once_and_cached(tmp_path: Path, issuer: JwtIssuer) -> None:
    fake, clock = FakeJwks({JWKS_URL: issuer.jwks()}), [0.0]
    deps = _url_deps(tmp_path, issuer, fake, clock)
    for _ in range(3):
        verify_cds_jwt(_request(issuer.token(AUD)), SERVICE, deps)
    assert fake.calls == [JWKS_URL]
    clock[0] = 3601.0  # stale: fetched again
    verify_cds_jwt(_request(issuer.token(AUD)), SERVICE, deps)
    assert fake.calls == [JWKS_URL, JWKS_URL]


def test_an_unknown_kid_refreshes_the_keys_at_most_once_per_interval(
    tmp_path: Path, issuer: JwtIssuer
) -> None:
    old = JwtIssuer(iss=issuer.iss, ec_kid="old-ec", rsa_kid="old-rsa")
    fake, clock = FakeJwks({JWKS_URL: old.jwks()}), [0.0]
    deps = _url_deps(tmp_path, issuer, fake, clock)
    verify_cds_jwt(_request(old.token(AUD)), SERVICE, deps)
    assert len(fake.calls) == 1
    # the EHR rotates its key: the new kid is unknown until the set is read again
    fake.docs[JWKS_URL] = {"keys": old.jwks()["keys"] + issuer.jwks()["keys"]}
    clock[0] = 31.0
    verify_cds_jwt(_request(issuer.token(AUD)), SERVICE, deps)
    assert len(fake.calls) == 2
    # random kids cannot make the service hammer the EHR: no refetch within the interval
    for i in range(20):
        with pytest.raises(AuthError, match="kid"):
            verify_cds_jwt(_request(issuer.token(AUD, headers={"kid": f"random-{i}"})), SERVICE, deps)
    assert len(fake.calls) == 2  # the set was just read: no refetch within jwks_min_refresh_s
    clock[0] = 70.0
    with pytest.raises(AuthError, match="kid"):
        verify_cds_jwt(_request(issuer.token(AUD, headers={"kid": "random-x"})), SERVICE, deps)
    assert len(fake.calls) == 3  # one refetch once the interval passed
    with pytest.raises(AuthError, match="kid"):
        verify_cds_jwt(_request(issuer.token(AUD, headers={"kid": "random-y"})), SERVICE, deps)
    assert len(fake.calls) == 3


def test_an_unreachable_jwks_url_is_503_until_keys_are_known(tmp_path: Path, issuer: JwtIssuer) -> None:
    fake, clock = FakeJwks({JWKS_URL: issuer.jwks()}), [0.0]
    fake.fail = True
    deps = _url_deps(tmp_path, issuer, fake, clock)
    with pytest.raises(UnavailableError):
        verify_cds_jwt(_request(issuer.token(AUD)), SERVICE, deps)
    fake.fail = False
    clock[0] = 31.0
    verify_cds_jwt(_request(issuer.token(AUD)), SERVICE, deps)
    fake.fail = True
    clock[0] = 4000.0  # stale, and the EHR is down: the cached keys still serve
    verify_cds_jwt(_request(issuer.token(AUD)), SERVICE, deps)


def test_jku_on_the_allow_list_is_used(tmp_path: Path, issuer: JwtIssuer) -> None:
    other = JwtIssuer(iss=issuer.iss, ec_kid="jku-ec", rsa_kid="jku-rsa")
    fake, clock = FakeJwks({JWKS_URL: issuer.jwks(), JKU: other.jwks()}), [0.0]
    deps = _url_deps(tmp_path, issuer, fake, clock)
    assert verify_cds_jwt(_request(other.token(AUD, headers={"jku": JKU})), SERVICE, deps)
    assert fake.calls == [JKU]


@pytest.mark.parametrize("jku", ["https://evil.example/jwks.json", JKU + "?x=1", JWKS_URL.upper(), 5])
def test_jku_off_the_allow_list_is_refused_without_fetching(
    tmp_path: Path, issuer: JwtIssuer, jku: Any
) -> None:
    fake, clock = FakeJwks({JWKS_URL: issuer.jwks()}), [0.0]
    deps = _url_deps(tmp_path, issuer, fake, clock)
    _refused(deps, issuer.token(AUD, headers={"jku": jku}), "jku is not on the issuer's allow-list")
    assert fake.calls == []


def test_a_changed_jwks_file_is_read_again(tmp_path: Path, issuer: JwtIssuer) -> None:
    deps = _deps(tmp_path, issuer)
    verify_cds_jwt(_request(issuer.token(AUD)), SERVICE, deps)
    new = JwtIssuer(iss=issuer.iss, ec_kid="new-ec", rsa_kid="new-rsa")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": new.jwks()["keys"] + [{"kid": "pad"}]}))
    assert verify_cds_jwt(_request(new.token(AUD)), SERVICE, deps)
    assert isinstance(keysets(deps), KeySets)


# ---------------------------------------------------------------------------------------------------------
# REST bearer


def _api(deps: ServiceDeps, token: str | None, path: str = "/evaluate") -> dict[str, Any]:
    return verify_api_bearer(_request(token, path), deps)


def test_api_tokens_by_their_sha256(deps: ServiceDeps) -> None:
    assert _api(deps, "secret-1") == {"kind": "token", "id": sha256_hex("secret-1")[:12]}
    assert _api(deps, "secret-2")["kind"] == "token"
    for wrong in ("secret-3", "secret-11", "Secret-1", sha256_hex("secret-1")):
        with pytest.raises(AuthError, match="not accepted"):
            _api(deps, wrong)
    with pytest.raises(AuthError, match="Bearer"):
        _api(deps, None)


@pytest.mark.parametrize(
    ("path", "aud_path"),
    [
        ("/evaluate", "/evaluate"),
        ("/check-order", "/check-order"),
        ("/fhir/$evaluate", "/fhir"),
        ("/fhir/Patient/p1/$evaluate", "/fhir"),
    ],
)
def test_api_jwt_audience_per_endpoint(
    deps: ServiceDeps, issuer: JwtIssuer, path: str, aud_path: str
) -> None:
    principal = _api(deps, issuer.token(BASE + aud_path), path)
    assert principal["kind"] == "jwt" and principal["iss"] == issuer.iss
    with pytest.raises(AuthError, match="aud"):
        _api(deps, issuer.token(BASE + "/other"), path)


def test_api_jwt_attacks_are_refused(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    aud = BASE + "/evaluate"
    pem = issuer.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": issuer.rsa_kid}).encode()).rstrip(
        b"="
    )
    payload = base64.urlsafe_b64encode(json.dumps(issuer.claims(aud)).encode()).rstrip(b"=")
    signing_input = header + b"." + payload
    hs = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
    forged = (
        signing_input + b"." + base64.urlsafe_b64encode(hs.sign(signing_input, pem)).rstrip(b"=")
    ).decode()
    now = int(time.time())
    for token in (
        _unsigned(issuer.claims(aud), {"alg": "none", "kid": issuer.ec_kid}),
        forged,
        issuer.token(BASE + "/check-order"),
        issuer.token(aud, iat=now - 300, exp=now - 100),
    ):
        with pytest.raises(AuthError):
            _api(deps, token)
    token = issuer.token(aud)
    _api(deps, token)
    with pytest.raises(AuthError, match="already used"):
        _api(deps, token)


def test_auth_errors_are_service_errors_without_the_token(deps: ServiceDeps, issuer: JwtIssuer) -> None:
    token = issuer.token(AUD, iss="https://evil.example")
    err = _refused(deps, token, "issuer")
    assert isinstance(err, ServiceError)
    assert token not in err.text and token.split(".")[1] not in err.text


def test_verify_jwt_rejects_oversized_tokens(deps: ServiceDeps) -> None:
    with pytest.raises(AuthError, match="not a JWT"):
        verify_jwt("a." + "b" * 20_000 + ".c", AUD, deps)
