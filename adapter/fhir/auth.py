"""How the FHIR client authorises its requests: no auth, a static bearer token, or SMART Backend Services.

This module does no HTTP. :class:`SmartBackendAuth` asks its *transport* -- the :class:`FhirClient` that
uses it (``adapter.fhir.client``, still the adapter's only code that does HTTP) -- for the server's SMART
configuration and to POST the token request.

- :class:`NoAuth`: no ``Authorization`` header.
- :class:`BearerToken`: a static token, read from an environment variable (:func:`bearer_from_env`) or a
  file (:func:`bearer_from_file`); never from a command-line argument (it would show in ``ps`` and in shell
  history). A 401 is final: a static token cannot be renewed.
- :class:`SmartBackendAuth`: SMART Backend Services (client-credentials grant, ``private_key_jwt``). The
  client signs a short-lived assertion (``iss`` = ``sub`` = client_id, ``aud`` = the token endpoint, ``exp``
  at most 5 minutes ahead -- 4 by default --, a unique ``jti``; header ``alg`` RS384 or ES384 by the key,
  ``kid`` given or the key's RFC 7638 JWK thumbprint) with a PEM private key (RSA >= 2048 bits or EC P-384),
  and trades it for an access token at the token endpoint found in ``[base]/.well-known/smart-configuration``
  (else in the CapabilityStatement's ``oauth-uris`` extension). Scopes: SMART v2 (``system/Patient.rs``) or
  v1 (``system/Patient.read``), whichever the server advertises (``capabilities`` ``permission-v2`` /
  ``permission-v1``, else the shape of ``scopes_supported``; v1 when it says nothing). The default asks
  read+search on every type the adapter reads and create/read/update/search on every type it writes
  (:data:`READ_TYPES`, :data:`WRITE_TYPES`); pass ``scopes`` to ask for others. The token is cached until
  shortly before it expires (``refresh_margin``, 60 s, at most half its lifetime) and shared by every thread
  of the client (a lock: one token request at a time). On a 401 the client drops the token and
  re-authorises once (:meth:`Auth.invalidate`); a second 401 is a ``FhirUnauthorized``.

Secrets -- tokens, private keys, signed assertions -- are never logged, never put in an exception's text
and never shown by ``repr()``. Messages name the environment variable, the file, the client id and the
key id, which are not secrets.

:func:`make_auth` builds one of these from CLI-style options.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapter.errors import AdapterError, ExitCode
from adapter.fhir.errors import FhirUnauthorized
from adapter.input.resource_types import USED_RESOURCE_TYPES

__all__ = [
    "ASSERTION_TYPE",
    "READ_TYPES",
    "WRITE_TYPES",
    "Auth",
    "AuthConfigError",
    "BearerToken",
    "NoAuth",
    "SmartBackendAuth",
    "SmartConfiguration",
    "TokenTransport",
    "bearer_from_env",
    "bearer_from_file",
    "jwk_thumbprint",
    "make_auth",
    "public_jwk",
    "smart_scopes",
]

log = logging.getLogger("adapter.fhir.auth")

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ScopeVersion = Literal["v1", "v2"]
AuthKind = Literal["none", "bearer", "smart"]

#: The resource types the adapter reads: the evaluation's input (adapter.input.resource_types), and
#: Group (a cohort given by its members); and those it writes back (docs/writeback.md).
READ_TYPES: Final[tuple[str, ...]] = (*sorted(USED_RESOURCE_TYPES), "Group")
WRITE_TYPES: Final[tuple[str, ...]] = (
    "MedicationRequest",
    "Observation",
    "DetectedIssue",
    "DocumentReference",
    "Provenance",
    "Device",
)

DEFAULT_REFRESH_MARGIN: Final = 60.0
DEFAULT_ASSERTION_LIFETIME: Final = 240  # seconds; SMART allows at most 300
DEFAULT_EXPIRES_IN: Final = 300  # when a token response omits expires_in (SMART requires it)
_MIN_RSA_BITS: Final = 2048
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII, no spaces: safe in an HTTP header
_JWT_LIKE_RE = re.compile(r"[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}")
_LONG_OPAQUE_RE = re.compile(r"[A-Za-z0-9_\-+/=]{40,}")
_MAX_DESCRIPTION: Final = 200


class AuthConfigError(AdapterError):
    """The credentials cannot be used: a variable unset, a file unreadable, a key of an unsupported type.

    The message names the variable, file or option, never the secret. Exit code 2 (unusable input)."""

    exit_code = ExitCode.BAD_INPUT


def scrub_secrets(text: str) -> str:
    """Remove what looks like a token or signed JWT from server-supplied text (OAuth error descriptions)."""
    text = _JWT_LIKE_RE.sub("[redacted]", text)
    text = _LONG_OPAQUE_RE.sub("[redacted]", text)
    text = " ".join(text.split())
    if len(text) > _MAX_DESCRIPTION:
        text = text[: _MAX_DESCRIPTION - 1] + "…"
    return text


# ---------------------------------------------------------------------------------------------------------
# what SMART needs from the HTTP side


@dataclass(frozen=True)
class SmartConfiguration:
    """The parts of ``.well-known/smart-configuration`` the client uses (or the CapabilityStatement's
    ``oauth-uris`` extension, which gives only the token endpoint)."""

    token_endpoint: str
    scopes_supported: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    signing_algs: tuple[str, ...] = ()
    source: Literal["smart-configuration", "capability-statement", "configured"] = "smart-configuration"

    @property
    def scope_version(self) -> ScopeVersion:
        """v2 (``.rs``) or v1 (``.read``) scopes, as the server advertises them; v1 when it says nothing."""
        if "permission-v2" in self.capabilities:
            return "v2"
        if "permission-v1" in self.capabilities:
            return "v1"
        perms = [s.rpartition(".")[2].split("?", 1)[0] for s in self.scopes_supported if "/" in s]
        if any(p and p not in ("read", "write", "*") and set(p) <= set("cruds") for p in perms):
            return "v2"
        return "v1"

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SmartConfiguration | None:
        endpoint = body.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            return None
        return cls(
            token_endpoint=endpoint,
            scopes_supported=_strings(body.get("scopes_supported")),
            capabilities=_strings(body.get("capabilities")),
            signing_algs=_strings(body.get("token_endpoint_auth_signing_alg_values_supported")),
        )


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


class TokenTransport(Protocol):
    """What :class:`SmartBackendAuth` needs from the HTTP side (implemented by ``FhirClient``)."""

    def smart_configuration(self) -> SmartConfiguration:
        """The server's SMART configuration (discovered, unauthenticated)."""
        ...

    def request_token(
        self, token_url: str, form: Callable[[], dict[str, str]], client_id: str
    ) -> dict[str, Any]:
        """POST ``form()`` (form-encoded; called again for every try) to ``token_url``; the JSON answer."""
        ...


# ---------------------------------------------------------------------------------------------------------
# auth kinds


class Auth:
    """How to authorise a request. Subclasses: :class:`NoAuth`, :class:`BearerToken`,
    :class:`SmartBackendAuth`. Instances may be shared by threads."""

    kind: str = "none"

    def authorization(self, transport: TokenTransport) -> str | None:
        """The ``Authorization`` header value for the next request (None: send none)."""
        return None

    def invalidate(self, authorization: str | None) -> bool:
        """The server refused ``authorization`` (401). Drop it if cached; True when another try may
        succeed with new credentials."""
        return False

    def scope_note(self) -> str:
        """A short note on the scopes held, for a 403's message ("" when not applicable)."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoAuth(Auth):
    """No Authorization header."""


class BearerToken(Auth):
    """A static bearer token (never shown by ``repr``; a 401 is final)."""

    kind = "bearer"
    __slots__ = ("_header", "source")

    def __init__(self, token: str, *, source: str = "a bearer token") -> None:
        token = token.strip()
        if not token or not _TOKEN_RE.match(token):
            raise AuthConfigError(
                f"{source}: not a usable bearer token (empty, or spaces or control characters)"
            )
        self._header = f"Bearer {token}"
        self.source = source

    def authorization(self, transport: TokenTransport) -> str | None:
        return self._header

    def __repr__(self) -> str:
        return f"BearerToken(source={self.source!r}, token=***)"


def bearer_from_env(name: str) -> BearerToken:
    """A bearer token from the environment variable ``name`` (which must be set and non-empty)."""
    value = os.environ.get(name, "")
    if not value.strip():
        raise AuthConfigError(f"environment variable {name} is not set or empty (it should hold the token)")
    return BearerToken(value, source=f"environment variable {name}")


def bearer_from_file(path: str | os.PathLike[str]) -> BearerToken:
    """A bearer token from a file holding it on one line (surrounding white space ignored). A file that
    group or others may read is used, with a warning."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"{p}: cannot read the token file ({type(exc).__name__})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is readable by group or others (chmod 600 it)", p)
    return BearerToken(text, source=f"token file {p}")


def smart_scopes(
    read: Iterable[str] = READ_TYPES, write: Iterable[str] = WRITE_TYPES, version: ScopeVersion = "v2"
) -> list[str]:
    """System scopes for reading (read+search) ``read`` and writing (create, read, update, search) ``write``.

    v2: ``system/Patient.rs``, ``system/Observation.crus``; v1: ``system/Patient.read`` (+ ``.write``)."""
    reads, writes = set(read), set(write)
    scopes = []
    for rtype in sorted(reads | writes):
        if version == "v2":
            scopes.append(f"system/{rtype}.{'crus' if rtype in writes else 'rs'}")
        else:
            scopes.append(f"system/{rtype}.read")
            if rtype in writes:
                scopes.append(f"system/{rtype}.write")
    return scopes


# ---------------------------------------------------------------------------------------------------------
# keys

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _b64url_uint(number: int, length: int | None = None) -> str:
    raw = number.to_bytes(length or max(1, (number.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(key: PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK members (RFC 7517) of an RSA or EC P-384 key (kty, n, e / crv, x, y)."""
    pub = key.public_key() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else key
    if isinstance(pub, rsa.RSAPublicKey):
        numbers = pub.public_numbers()
        return {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    if isinstance(pub.curve, ec.SECP384R1):
        point = pub.public_numbers()
        return {"kty": "EC", "crv": "P-384", "x": _b64url_uint(point.x, 48), "y": _b64url_uint(point.y, 48)}
    raise AuthConfigError(f"unsupported EC curve {pub.curve.name} (ES384 needs P-384)")


def jwk_thumbprint(key: PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """The RFC 7638 SHA-256 JWK thumbprint (base64url), the default ``kid``."""
    jwk = public_jwk(key)
    required = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = orjson.dumps({k: jwk[k] for k in required}, option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def _alg_for(key: PrivateKey, source: str) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise AuthConfigError(f"{source}: RSA key of {key.key_size} bits; RS384 needs at least 2048")
        return "RS384"
    if isinstance(key.curve, ec.SECP384R1):
        return "ES384"
    raise AuthConfigError(f"{source}: EC key on {key.curve.name}; ES384 needs P-384 (secp384r1)")


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """A PEM private key (PKCS#8 or traditional, unencrypted) from ``path``: RSA or EC."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AuthConfigError(f"{p}: cannot read the private key file ({type(exc).__name__})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise AuthConfigError(f"{p}: not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise AuthConfigError(f"{p}: unsupported key type {type(key).__name__} (RSA or EC P-384 needed)")
    return key


# ---------------------------------------------------------------------------------------------------------
# SMART Backend Services


class SmartBackendAuth(Auth):
    """SMART Backend Services: client credentials with a ``private_key_jwt`` client assertion.

    ``key`` is the private key (see :meth:`from_key_file`); ``key_id`` defaults to its JWK thumbprint.
    ``scopes`` (default: :func:`smart_scopes` in the syntax the server advertises) are requested as given.
    ``token_endpoint`` skips discovery. ``clock`` (monotonic seconds) decides when the cached token is
    due for renewal; ``wall_clock`` (UNIX seconds) dates the assertions. Thread-safe.
    """

    kind = "smart"

    def __init__(
        self,
        client_id: str,
        key: PrivateKey,
        *,
        key_id: str | None = None,
        scopes: Sequence[str] | None = None,
        token_endpoint: str | None = None,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        assertion_lifetime: int = DEFAULT_ASSERTION_LIFETIME,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        key_source: str = "the private key",
    ) -> None:
        if not client_id or not client_id.strip():
            raise AuthConfigError("SMART backend auth needs a client id")
        if not 0 < assertion_lifetime <= 300:
            raise ValueError("assertion_lifetime must be within (0, 300] seconds")
        self.client_id = client_id.strip()
        self._key = key
        self.alg = _alg_for(key, key_source)
        self.key_id = key_id or jwk_thumbprint(key)
        self.scopes: tuple[str, ...] | None = tuple(scopes) if scopes is not None else None
        self.token_endpoint = token_endpoint
        self.refresh_margin = refresh_margin
        self.assertion_lifetime = assertion_lifetime
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._config: SmartConfiguration | None = None
        self._token: str | None = None
        self._renew_at = 0.0
        self.requested_scopes: tuple[str, ...] = ()
        self.granted_scopes: tuple[str, ...] = ()
        self.tokens_fetched = 0

    @classmethod
    def from_key_file(
        cls, client_id: str, key_file: str | os.PathLike[str], **kwargs: Any
    ) -> SmartBackendAuth:
        """Load the PEM private key in ``key_file`` (RSA >= 2048 bits: RS384; EC P-384: ES384)."""
        return cls(client_id, load_private_key(key_file), key_source=str(key_file), **kwargs)

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self.client_id!r}, alg={self.alg!r}, key_id={self.key_id!r})"

    # ---- Auth ----

    def authorization(self, transport: TokenTransport) -> str | None:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._fetch(transport)
            return f"Bearer {self._token}"

    def invalidate(self, authorization: str | None) -> bool:
        with self._lock:
            if self._token is not None and authorization == f"Bearer {self._token}":
                self._token = None  # another thread may already have replaced it: keep that one
        return True

    def scope_note(self) -> str:
        if not self.requested_scopes:
            return ""
        missing = [s for s in self.requested_scopes if s not in self.granted_scopes]
        note = f"scopes granted to client {self.client_id}: {' '.join(self.granted_scopes) or '(none)'}"
        if missing:
            note += f"; requested but not granted: {' '.join(missing)}"
        return note

    # ---- internals ----

    def assertion(self, audience: str) -> str:
        """A newly signed client assertion for ``audience`` (the token endpoint). A secret: never log it."""
        now = int(self._wall_clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + self.assertion_lifetime,
            "jti": secrets.token_urlsafe(32),
        }
        return jwt.encode(claims, self._key, algorithm=self.alg, headers={"kid": self.key_id, "typ": "JWT"})

    def _fetch(self, transport: TokenTransport) -> None:
        if self._config is None:
            self._config = (
                SmartConfiguration(self.token_endpoint, source="configured")
                if self.token_endpoint
                else transport.smart_configuration()
            )
            if self._config.signing_algs and self.alg not in self._config.signing_algs:
                log.warning(
                    "SMART: the server lists signing algorithms %s, not %s; trying anyway",
                    ",".join(self._config.signing_algs),
                    self.alg,
                )
        config = self._config
        scopes = self.scopes if self.scopes is not None else tuple(smart_scopes(version=config.scope_version))
        self.requested_scopes = scopes

        def form() -> dict[str, str]:
            return {
                "grant_type": "client_credentials",
                "scope": " ".join(scopes),
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.assertion(config.token_endpoint),
            }

        started = self._clock()
        body = transport.request_token(config.token_endpoint, form, self.client_id)
        token = body.get("access_token")
        token_type = body.get("token_type")
        if not isinstance(token, str) or not _TOKEN_RE.match(token):
            raise _unauthorized(f"SMART token endpoint: no usable access_token for client {self.client_id}")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise _unauthorized(f"SMART token endpoint: token_type is not bearer for client {self.client_id}")
        expires_in = body.get("expires_in")
        lifetime = (
            float(expires_in)
            if isinstance(expires_in, int | float) and expires_in > 0
            else DEFAULT_EXPIRES_IN
        )
        granted = body.get("scope")
        self.granted_scopes = tuple(granted.split()) if isinstance(granted, str) else scopes
        missing = [s for s in scopes if s not in self.granted_scopes]
        if missing:
            log.warning("SMART: client %s was not granted the scopes %s", self.client_id, " ".join(missing))
        self._token = token
        self._renew_at = started + lifetime - min(self.refresh_margin, lifetime / 2)
        self.tokens_fetched += 1
        log.info("SMART: access token for client %s, valid for %d s", self.client_id, int(lifetime))


def _unauthorized(message: str) -> FhirUnauthorized:
    return FhirUnauthorized(None, None, message)


# ---------------------------------------------------------------------------------------------------------
# factory


def make_auth(
    kind: AuthKind | str,
    *,
    client_id: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    key_id: str | None = None,
    token_env: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    scopes: Sequence[str] | None = None,
    token_endpoint: str | None = None,
) -> Auth:
    """Build the auth for ``--auth none|bearer|smart``.

    - ``none``: no other option.
    - ``bearer``: exactly one of ``token_env`` (the NAME of an environment variable holding the token) or
      ``token_file`` (a file holding it). The token itself is never an argument.
    - ``smart``: ``client_id`` and ``key_file`` (PEM private key, RSA or EC P-384); optional ``key_id``
      (default: the JWK thumbprint), ``scopes`` (default: :func:`smart_scopes`), ``token_endpoint``
      (default: discovered).

    Raises :class:`AuthConfigError` (exit code 2) for a missing or contradictory option, an unset variable,
    an unreadable file or an unusable key.
    """
    given = {
        "client_id": client_id,
        "key_file": key_file,
        "key_id": key_id,
        "token_env": token_env,
        "token_file": token_file,
        "scopes": scopes,
        "token_endpoint": token_endpoint,
    }
    allowed = {
        "none": set(),
        "bearer": {"token_env", "token_file"},
        "smart": {"client_id", "key_file", "key_id", "scopes", "token_endpoint"},
    }
    if kind not in allowed:
        raise AuthConfigError(f"unknown auth kind {kind!r} (none, bearer or smart)")
    stray = sorted(k for k, v in given.items() if v is not None and k not in allowed[kind])
    if stray:
        raise AuthConfigError(f"auth {kind}: {', '.join(stray)} do(es) not apply")
    if kind == "none":
        return NoAuth()
    if kind == "bearer":
        if (token_env is None) == (token_file is None):
            raise AuthConfigError(
                "auth bearer: give exactly one of token_env (a variable name) or token_file"
            )
        return bearer_from_env(token_env) if token_env is not None else bearer_from_file(str(token_file))
    if not client_id or key_file is None:
        raise AuthConfigError("auth smart: client_id and key_file are both required")
    return SmartBackendAuth.from_key_file(
        client_id, key_file, key_id=key_id, scopes=scopes, token_endpoint=token_endpoint
    )
