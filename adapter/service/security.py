"""Who may call the service.

CDS Hooks 2.0 JWT (:func:`verify_cds_jwt`): the EHR signs a short-lived JWT per call and sends it as
``Authorization: Bearer <jwt>``. It is accepted only when

- the header's ``alg`` is ES384 or RS384 (``none`` and every HMAC algorithm are refused before anything
  else: the well-known "HS256 with the public key as the secret" forgery cannot get through, because the
  key is never used as an HMAC secret) and its ``kid`` names a key of the issuer;
- the (unverified) ``iss`` is one of ``cds_hooks.trusted_issuers``; the key comes from that issuer's
  ``jwks_file`` or ``jwks_url``, or from the JWT's ``jku`` header when that exact URL is on the issuer's
  ``jku`` allow-list (any other ``jku`` is refused). Key sets fetched from a URL are cached
  (``jwks_cache_s``); an unknown ``kid`` refetches them, at most once per ``jwks_min_refresh_s`` per URL;
  a file is read again when it changed. The key must fit the algorithm (RSA >= 2048 bits for RS384, EC
  P-384 for ES384) and, when the JWK says, its ``alg`` and ``use``;
- the signature verifies; ``aud`` is exactly the service's URL (``base_url`` + the service path);
  ``exp`` is in the future and ``iat`` not (``clock_skew_s`` either way); the token lives at most
  ``max_token_lifetime_s`` (``exp - iat``); ``jti`` is present and was not seen before (the replay cache
  remembers it until the token expires).

REST and FHIR endpoints (:func:`verify_api_bearer`): ``Authorization: Bearer <token>`` where the SHA-256
(hex) of the token is in ``api_tokens_sha256`` (compared in constant time with every entry), or a JWT by
the rules above whose ``aud`` is ``base_url`` + ``/evaluate``, ``/check-order`` or ``/fhir`` (every
``/fhir/...`` endpoint).

Failures raise :class:`AuthError`: 401 with ``WWW-Authenticate: Bearer`` (a missing, malformed, forged,
expired, replayed or otherwise unacceptable token), or 503 when a key set cannot be fetched. Messages say
which check failed, never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
import orjson
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.requests import Request

from adapter.service.config import TrustedIssuer
from adapter.service.deps import ServiceDeps
from adapter.service.errors import ServiceError, UnavailableError
from adapter.service.store import ReplayCacheFull

ALGORITHMS: Final = ("ES384", "RS384")
MAX_JWKS_BYTES: Final = 1_000_000
JWKS_TIMEOUT: Final = (3.0, 5.0)
MAX_TOKEN_CHARS: Final = 16_384
_KEYSETS: Final = "security.keysets"


class AuthError(ServiceError):
    """401 (``WWW-Authenticate: Bearer``) or 403: the caller is not let in."""

    def __init__(self, text: str, status: int = 401) -> None:
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else {}
        super().__init__(status, text, "login" if status == 401 else "forbidden", headers)


# ---------------------------------------------------------------------------------------------------------
# key sets


@dataclass
class _KeySet:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # kid -> JWK
    fetched: float = float("-inf")  # when the keys were read
    tried: float = float("-inf")  # when a read was last attempted
    stamp: tuple[float, int] | None = None  # a file's (mtime, size)


def _parse_jwks(raw: bytes) -> dict[str, dict[str, Any]]:
    if len(raw) > MAX_JWKS_BYTES:
        raise ValueError("JWK Set too large")
    doc = orjson.loads(raw)
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWK Set")
    return {k["kid"]: k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}


class KeySets:
    """The issuers' JWK Sets, cached per source (a URL or a file)."""

    def __init__(
        self,
        cache_s: float,
        min_refresh_s: float,
        fetch: Callable[[str], bytes],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_s = cache_s
        self.min_refresh_s = min_refresh_s
        self._fetch = fetch
        self._clock = clock
        self._sets: dict[str, _KeySet] = {}
        self._lock = threading.Lock()

    def key(self, source: str, kid: str, is_file: bool) -> dict[str, Any] | None:
        """The JWK ``kid`` of ``source``; reads the source when it is stale, or when ``kid`` is unknown and
        the source was not read in the last ``min_refresh_s`` seconds (a file: when it changed)."""
        with self._lock:
            ks = self._sets.setdefault(source, _KeySet())
            now = self._clock()
            if is_file:
                self._read_file(source, ks)
            else:
                stale = now - ks.fetched >= self.cache_s
                unknown = kid not in ks.keys and now - ks.tried >= self.min_refresh_s
                if stale or unknown:
                    self._read_url(source, ks, now)
            return ks.keys.get(kid)

    def _read_file(self, path: str, ks: _KeySet) -> None:
        try:
            st = os.stat(path)
            stamp = (st.st_mtime, st.st_size)
            if stamp == ks.stamp:
                return
            with open(path, "rb") as fh:
                ks.keys = _parse_jwks(fh.read(MAX_JWKS_BYTES + 1))
            ks.stamp = stamp
        except (OSError, ValueError) as exc:
            raise UnavailableError(
                f"the issuer's JWK Set file cannot be read ({type(exc).__name__})"
            ) from None

    def _read_url(self, url: str, ks: _KeySet, now: float) -> None:
        ks.tried = now
        try:
            ks.keys = _parse_jwks(self._fetch(url))
            ks.fetched = now
        except Exception as exc:
            if not ks.keys:
                raise UnavailableError(
                    f"the issuer's JWK Set cannot be fetched ({type(exc).__name__})"
                ) from None
            # keep the keys we have; an unknown kid stays unknown


def http_fetch(session: requests.Session) -> Callable[[str], bytes]:
    def fetch(url: str) -> bytes:
        with session.get(url, timeout=JWKS_TIMEOUT, stream=True, headers={"Accept": "application/json"}) as r:
            r.raise_for_status()
            raw = r.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
            return bytes(raw)

    return fetch


def keysets(deps: ServiceDeps) -> KeySets:
    """This process's key-set cache (created on first use)."""
    ks = deps.extras.get(_KEYSETS)
    if ks is None:
        cds = deps.config.cds_hooks
        ks = deps.extras.setdefault(
            _KEYSETS, KeySets(cds.jwks_cache_s, cds.jwks_min_refresh_s, http_fetch(deps._session))
        )
    assert isinstance(ks, KeySets)
    return ks


# ---------------------------------------------------------------------------------------------------------
# JWT


def _public_key(jwk: Mapping[str, Any], alg: str) -> Any:
    if jwk.get("alg") not in (None, alg):
        raise AuthError("the key's alg does not match the token's")
    if jwk.get("use") not in (None, "sig"):
        raise AuthError("the key is not a signing key")
    if jwk.get("d") is not None or jwk.get("k") is not None:
        raise AuthError("the key set holds a private or symmetric key")
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=alg).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
        raise AuthError("the key cannot be used") from None
    if alg == "RS384":
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
            raise AuthError("RS384 needs an RSA public key of at least 2048 bits")
    elif not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AuthError("ES384 needs an EC P-384 public key")
    return key


def _issuer(deps: ServiceDeps, iss: Any) -> TrustedIssuer:
    for t in deps.config.cds_hooks.trusted_issuers:
        if isinstance(iss, str) and hmac.compare_digest(t.iss.encode(), iss.encode()):
            return t
    raise AuthError("the token's issuer is not trusted")


def verify_jwt(token: str, audience: str, deps: ServiceDeps) -> dict[str, Any]:
    """The claims of ``token`` after every check in the module docstring (AuthError otherwise)."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise AuthError("the bearer token is not a JWT")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthError("the bearer token is not a readable JWT") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise AuthError(f"JWT alg must be one of {', '.join(ALGORITHMS)}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthError("the JWT header has no kid")
    issuer = _issuer(deps, unverified.get("iss"))
    jku = header.get("jku")
    if jku is not None:
        if not isinstance(jku, str) or jku not in issuer.jku:
            raise AuthError("the JWT's jku is not on the issuer's allow-list")
        jwk = keysets(deps).key(jku, kid, is_file=False)
    elif issuer.jwks_file is not None:
        jwk = keysets(deps).key(issuer.jwks_file, kid, is_file=True)
    else:
        assert issuer.jwks_url is not None
        jwk = keysets(deps).key(issuer.jwks_url, kid, is_file=False)
    if jwk is None:
        raise AuthError("no key of the issuer has the JWT's kid")
    key = _public_key(jwk, alg)
    cds = deps.config.cds_hooks
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            audience=audience,
            issuer=issuer.iss,
            leeway=cds.clock_skew_s,
            options={"require": ["iss", "aud", "exp", "iat", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the JWT has expired") from None
    except jwt.InvalidAudienceError:
        raise AuthError("the JWT's aud is not this service's URL") from None
    except jwt.ImmatureSignatureError:
        raise AuthError("the JWT is not valid yet (iat or nbf in the future)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"the JWT has no {exc.claim} claim") from None
    except jwt.InvalidSignatureError:
        raise AuthError("the JWT's signature does not verify") from None
    except jwt.PyJWTError:
        raise AuthError("the JWT is not acceptable") from None
    if claims.get("aud") not in (audience, [audience]):
        raise AuthError("the JWT's aud is not this service's URL")
    exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise AuthError("the JWT's jti is not a usable string")
    if float(exp) - float(iat) > cds.max_token_lifetime_s:
        raise AuthError(f"the JWT lives longer than {cds.max_token_lifetime_s} s")
    try:
        replayed = deps.replay.seen(issuer.iss, jti, float(exp) + cds.clock_skew_s)
    except ReplayCacheFull:
        raise UnavailableError("too many tokens to check for replay; try again shortly") from None
    if replayed:
        raise AuthError("the JWT was already used (jti replayed)")
    return claims


def _bearer(request: Request) -> str:
    value = request.headers.get("authorization")
    if value is None:
        raise AuthError("an Authorization: Bearer header is required")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    return token


def service_url(deps: ServiceDeps, path: str) -> str:
    """The URL a JWT's ``aud`` must equal for ``path`` (``base_url`` + path)."""
    return deps.config.public_url + (path if path.startswith("/") else "/" + path)


def verify_cds_jwt(request: Request, service_path: str, deps: ServiceDeps) -> dict[str, Any]:
    """The EHR's JWT claims for a call to the CDS service at ``service_path`` (e.g. ``/cds-services/x``)."""
    return verify_jwt(_bearer(request), service_url(deps, service_path), deps)


def api_audience_path(path: str) -> str:
    """The ``aud`` path of a REST/FHIR endpoint: ``/fhir`` for every ``/fhir/...``, else the path."""
    return "/fhir" if path == "/fhir" or path.startswith("/fhir/") else path


def api_token_principal(token: str, deps: ServiceDeps) -> dict[str, Any] | None:
    """``{"kind": "token", "id": ...}`` when ``token``'s SHA-256 is listed (never blocks: the app calls it
    on the event loop before handing a JWT to a thread)."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
    matched = False
    for allowed in deps.config.api_tokens_sha256:
        matched |= hmac.compare_digest(digest, allowed)  # every entry compared: no early exit
    return {"kind": "token", "id": digest[:12]} if matched else None


def bearer_token(request: Request) -> str:
    """The request's bearer token (AuthError when there is none)."""
    return _bearer(request)


def verify_api_bearer(request: Request, deps: ServiceDeps) -> dict[str, Any]:
    """The caller of a REST/FHIR endpoint: ``{"kind": "token", "id": <12 hex of the hash>}`` or
    ``{"kind": "jwt", "iss": ..., "claims": {...}}``. AuthError when neither a listed token nor a JWT."""
    token = _bearer(request)
    principal = api_token_principal(token, deps)
    if principal is not None:
        return principal
    if token.count(".") == 2 and deps.config.cds_hooks.trusted_issuers:
        claims = verify_jwt(token, service_url(deps, api_audience_path(request.url.path)), deps)
        return {"kind": "jwt", "iss": claims["iss"], "claims": claims}
    raise AuthError("the bearer token is not accepted")
