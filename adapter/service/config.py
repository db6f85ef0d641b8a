"""The service's configuration: one YAML file (``ino-adapter serve --config FILE``), every key of which may
also come from the environment as ``INO_ADAPTER_<KEY>`` (upper case; nested keys joined with ``__``, e.g.
``INO_ADAPTER_FHIR_SERVER__URL``). The environment wins over the file. An environment value that starts
with ``[`` or ``{`` is read as a YAML flow collection (``INO_ADAPTER_MAPPINGS=[a.yaml, b.yaml]``); any
other value is a plain string that pydantic converts (``INO_ADAPTER_PORT=9000``).

Relative paths in the file (mappings, site settings, JWKS files, keys, databases) are relative to the
file's directory; relative paths from the environment are relative to the working directory.

Any fault -- an unknown key, a wrong type, a missing file -- is a :class:`MappingTableError` with a one-line
message: the service refuses to start (exit code 3). See docs/service.md for every key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapter.errors import MappingTableError
from adapter.protocols import VARIANTS
from adapter.yaml_files import parse_yaml, read_yaml

ENV_PREFIX = "INO_ADAPTER_"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class TrustedIssuer(_Strict):
    """An EHR allowed to call the CDS services (and, with a JWT, the REST endpoints)."""

    iss: str = Field(min_length=1)
    jwks_url: str | None = None
    jwks_file: str | None = None
    #: JWK Set URLs the EHR may name in a JWT's ``jku`` header (exact match); none: ``jku`` is refused.
    jku: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_source(self) -> TrustedIssuer:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError(f"issuer {self.iss}: give exactly one of jwks_url or jwks_file")
        for url in (self.jwks_url, *self.jku):
            if url is not None and not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
                raise ValueError(f"issuer {self.iss}: JWKS URLs must be https (or loopback http)")
        return self


class CdsHooksConfig(_Strict):
    trusted_issuers: tuple[TrustedIssuer, ...] = ()
    #: Seconds of clock difference tolerated on ``exp``, ``iat`` and ``nbf``.
    clock_skew_s: int = Field(default=30, ge=0, le=300)
    #: Longest accepted token life (``exp - iat``); CDS Hooks says at most 5 minutes.
    max_token_lifetime_s: int = Field(default=300, ge=1, le=3600)
    #: A JWKS fetched from a URL is kept this long; an unknown ``kid`` refetches it, at most once per
    #: ``jwks_min_refresh_s`` per URL (so that random kids cannot make the service hammer the EHR).
    jwks_cache_s: int = Field(default=3600, ge=0)
    jwks_min_refresh_s: int = Field(default=30, ge=0)
    #: ``jti`` values remembered (each until its token expires); a full cache refuses new tokens (503).
    max_replay_cache: int = Field(default=100_000, ge=100)
    #: FHIR servers (URL prefixes) an EHR's ``fhirServer`` may name; empty: any http(s) URL.
    allowed_fhir_servers: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> CdsHooksConfig:
        names = [t.iss for t in self.trusted_issuers]
        if len(names) != len(set(names)):
            raise ValueError("trusted_issuers: an iss is listed twice")
        return self


class FhirServerConfig(_Strict):
    """The hospital's FHIR server, as ``ino-adapter sync`` takes it (``make_auth`` options)."""

    url: str
    auth: Literal["none", "bearer", "smart"] = "none"
    client_id: str | None = None
    key: str | None = None
    key_id: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    scopes: tuple[str, ...] | None = None
    token_endpoint: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    read_timeout_s: float = Field(default=20.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/")


class ServiceConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    #: The public URL; each CDS service's JWT ``aud`` is ``base_url`` + its path. Default: http://host:port.
    base_url: str | None = None
    protocol: str = "nhs-ta514"
    mappings: tuple[str, ...] = ()
    site_settings: str | None = None
    bsa_formula: Literal["mosteller", "dubois"] = "mosteller"
    #: R4B validation of every input resource (as the CLI without --no-validate).
    validate_input: bool = True
    cds_hooks: CdsHooksConfig = CdsHooksConfig()
    api_tokens_sha256: tuple[str, ...] = ()
    fhir_server: FhirServerConfig | None = None
    feedback_db: str | None = None
    #: SQLite file for the idempotency store and the JWT replay cache, shared by the workers (required
    #: with more than one worker); none: in memory, in this process.
    state_db: str | None = None
    idempotency_ttl_s: int = Field(default=86_400, ge=60)
    idempotency_max_entries: int = Field(default=10_000, ge=10)
    max_request_bytes: int = Field(default=5_000_000, ge=1024)
    #: Wall-clock budget of one request; past it the answer is 503 + Retry-After (docs/service.md).
    request_timeout_s: float = Field(default=30.0, gt=0, le=600)
    #: Requests evaluated at once per worker; more wait up to ``queue_timeout_s`` and then get 503.
    max_concurrency: int = Field(default=8, ge=1, le=256)
    queue_timeout_s: float = Field(default=2.0, ge=0, le=60)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("protocol")
    @classmethod
    def _variant(cls, v: str) -> str:
        if v not in VARIANTS:
            raise ValueError(f"unknown protocol variant {v!r} (known: {', '.join(VARIANTS)})")
        return v

    @field_validator("base_url")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not v.startswith(("http://", "https://")) or "?" in v or "#" in v:
            raise ValueError("must be an http(s) URL without query or fragment")
        return v.rstrip("/")

    @field_validator("api_tokens_sha256")
    @classmethod
    def _hashes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for h in v:
            if not _HEX64.match(h.lower()):
                raise ValueError("each entry must be the SHA-256 of a token as 64 hex digits")
        return tuple(h.lower() for h in v)

    @model_validator(mode="after")
    def _workers(self) -> ServiceConfig:
        if self.workers > 1 and self.state_db is None:
            raise ValueError(
                "state_db is required with more than one worker (the workers share the idempotency "
                "store and the JWT replay cache)"
            )
        return self

    @property
    def public_url(self) -> str:
        return self.base_url or f"http://{self.host}:{self.port}"


# ---------------------------------------------------------------------------------------------------------
# loading

_PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("site_settings",),
    ("feedback_db",),
    ("state_db",),
    ("fhir_server", "key"),
    ("fhir_server", "token_file"),
)


def _env_value(raw: str) -> Any:
    text = raw.strip()
    if text[:1] in ("[", "{"):
        return parse_yaml(text)
    return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``INO_ADAPTER_*`` variables as a nested dict (keys lower case, ``__`` nests)."""
    out: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in path):
            raise MappingTableError(f"environment variable {name}: empty key segment")
        try:
            value = _env_value(environ[name])
        except Exception:
            raise MappingTableError(f"environment variable {name}: not a valid YAML flow value") from None
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise MappingTableError(f"environment variable {name}: conflicts with another variable")
            node = nxt
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve(data: dict[str, Any], base: Path) -> None:
    """Relative paths in the file are relative to the file's directory."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value):
            return str(base / value)
        return value

    for path in _PATH_KEYS:
        node: Any = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            node[path[-1]] = fix(node[path[-1]])
    if isinstance(data.get("mappings"), list):
        data["mappings"] = [fix(m) for m in data["mappings"]]
    cds = data.get("cds_hooks")
    if isinstance(cds, dict) and isinstance(cds.get("trusted_issuers"), list):
        for issuer in cds["trusted_issuers"]:
            if isinstance(issuer, dict) and "jwks_file" in issuer:
                issuer["jwks_file"] = fix(issuer["jwks_file"])


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    err = errors[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {msg}{more}"


def _check_files(config: ServiceConfig, source: str) -> None:
    files: list[tuple[str, str | None]] = [("site_settings", config.site_settings)]
    files += [("mappings", m) for m in config.mappings]
    files += [("cds_hooks.trusted_issuers.jwks_file", t.jwks_file) for t in config.cds_hooks.trusted_issuers]
    if config.fhir_server is not None:
        files += [("fhir_server.key", config.fhir_server.key)]
        files += [("fhir_server.token_file", config.fhir_server.token_file)]
    for key, path in files:
        if path is not None and not Path(path).is_file():
            raise MappingTableError(f"{source}: {key}: no such file: {path}")
    for key, path in (("state_db", config.state_db), ("feedback_db", config.feedback_db)):
        if path is not None and not Path(path).parent.is_dir():
            raise MappingTableError(f"{source}: {key}: the directory of {path} does not exist")


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """The configuration in ``path`` (None: environment only) with the environment over it."""
    data: dict[str, Any] = {}
    source = str(path) if path is not None else "environment"
    if path is not None:
        doc, _ = read_yaml(Path(path), "settings")
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise MappingTableError(f"{path}: the configuration must be a YAML mapping")
        data = doc
        _resolve(data, Path(path).resolve().parent)
    data = _merge(data, env_overrides(os.environ if environ is None else environ))
    try:
        config = ServiceConfig.model_validate(data)
    except ValidationError as exc:
        raise MappingTableError(f"{source}: {_first_error(exc)}") from None
    _check_files(config, source)
    return config
