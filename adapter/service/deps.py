"""What every route needs, built once per worker process at start (``ServiceDeps.from_config``).

- ``config``: the :class:`~adapter.service.config.ServiceConfig`;
- ``setup(protocol, as_of)``: the per-run :class:`~adapter.evaluate.Setup` for a variant and a day. The
  variants, the mapping tables and the site settings are read (so checked) once, at start, for every
  variant; a request only builds the small ``Setup`` around them. An unknown protocol is a 400;
- ``fhir_client(url=None, token=None)``: the configured FHIR server's client (shared, pooled), or a client
  for an EHR's ``fhirServer`` with its ``fhirAuthorization.access_token`` (CDS Hooks prefetch);
- ``idempotency``: the :class:`~adapter.service.store.IdempotencyStore` (see adapter.service.idempotency);
- ``replay``: the JWT ``jti`` replay cache (adapter.service.security);
- ``now()``: the current instant (FHIR ``instant``, UTC, to the second);
- ``log``: the structured logger (adapter.service.logs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from adapter.evaluate import Setup, load_rules
from adapter.fhir.auth import make_auth
from adapter.fhir.client import FhirClient, RetryPolicy
from adapter.mapping.tables import Tables
from adapter.protocols import VARIANTS, Variant
from adapter.service.config import ServiceConfig
from adapter.service.errors import BadRequestError, ServiceError
from adapter.service.logs import ServiceLog
from adapter.service.store import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    MemoryReplayCache,
    ReplayCache,
    SqliteIdempotencyStore,
    SqliteReplayCache,
    SqliteState,
)
from adapter.writeback.settings import WriteSettings

#: Timeouts and retries for an EHR's FHIR server during a CDS call: short, the clinician is waiting.
EHR_TIMEOUT = (3.0, 10.0)
EHR_RETRY = RetryPolicy(max_tries=2, backoff=0.2, max_backoff=0.5, max_retry_after=1.0)
#: Retries towards the configured server within one request (the request has its own time budget).
SERVER_RETRY = RetryPolicy(max_tries=2, backoff=0.2, max_backoff=1.0, max_retry_after=2.0)


def now_instant() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Rules:
    """One variant's rules as loaded at start."""

    variant: Variant
    tables: Tables
    settings: WriteSettings
    ruleset: dict[str, Any]


@dataclass
class ServiceDeps:
    config: ServiceConfig
    rules: dict[str, Rules]
    idempotency: IdempotencyStore
    replay: ReplayCache
    log: ServiceLog = field(default_factory=ServiceLog)
    now: Callable[[], str] = now_instant
    state: SqliteState | None = None
    server: FhirClient | None = None
    #: Concurrency bound per worker (adapter.service.app): requests past it wait, then get 503.
    slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(8))
    _session: requests.Session = field(default_factory=requests.Session)
    #: Anything else a part of the service keeps for the process's life (e.g. the CDS feedback store).
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: ServiceConfig, *, log: ServiceLog | None = None) -> ServiceDeps:
        """Load every variant's rules and the site tables (MappingTableError on a bad file); open the
        state."""
        rules = {}
        for name in VARIANTS:
            variant, tables, settings, ruleset = load_rules(name, config.mappings, config.site_settings)
            rules[name] = Rules(variant, tables, settings, ruleset)
        state = SqliteState(config.state_db) if config.state_db is not None else None
        idempotency: IdempotencyStore
        replay: ReplayCache
        if state is not None:
            idempotency = SqliteIdempotencyStore(
                state, ttl=config.idempotency_ttl_s, max_entries=config.idempotency_max_entries
            )
            replay = SqliteReplayCache(state, max_entries=config.cds_hooks.max_replay_cache)
        else:
            idempotency = MemoryIdempotencyStore(
                ttl=config.idempotency_ttl_s, max_entries=config.idempotency_max_entries
            )
            replay = MemoryReplayCache(max_entries=config.cds_hooks.max_replay_cache)
        server = None
        if config.fhir_server is not None:
            fs = config.fhir_server
            auth = make_auth(
                fs.auth,
                client_id=fs.client_id,
                key_file=fs.key,
                key_id=fs.key_id,
                token_env=fs.token_env,
                token_file=fs.token_file,
                scopes=fs.scopes,
                token_endpoint=fs.token_endpoint,
            )
            server = FhirClient(
                fs.url,
                auth=auth,
                timeout=(fs.connect_timeout_s, fs.read_timeout_s),
                retry=SERVER_RETRY,
                pool_size=config.max_concurrency * 2,
            )
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=config.max_concurrency * 2, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return cls(
            config=config,
            rules=rules,
            idempotency=idempotency,
            replay=replay,
            log=log or ServiceLog(),
            state=state,
            server=server,
            slots=threading.BoundedSemaphore(config.max_concurrency),
            _session=session,
        )

    # -- evaluation set-up ---------------------------------------------------------------------------
    def protocol(self, protocol: str | None) -> str:
        """The variant a request names (None: the configured default); 400 when unknown."""
        name = protocol or self.config.protocol
        if name not in self.rules:
            raise BadRequestError(
                f"unknown protocol {name!r} (known: {', '.join(sorted(self.rules))})", "value"
            )
        return name

    def setup(self, protocol: str | None, as_of: date) -> Setup:
        rules = self.rules[self.protocol(protocol)]
        return Setup(
            rules.variant,
            as_of,
            rules.tables,
            rules.ruleset,
            rules.settings,
            self.config.bsa_formula,
            self.config.validate_input,
        )

    # -- FHIR servers ----------------------------------------------------------------------------------
    def fhir_client(self, url: str | None = None, token: str | None = None) -> FhirClient:
        """The configured server's client (``url`` None), or a client for an EHR's ``fhirServer`` with its
        bearer ``token``. The caller closes neither (the EHR client shares this process's pool)."""
        if url is None:
            if self.server is None:
                raise ServiceError(404, "no FHIR server is configured (fhir_server)", "not-supported")
            return self.server
        allowed = self.config.cds_hooks.allowed_fhir_servers
        if not url.startswith(("https://", "http://")):
            raise BadRequestError("fhirServer must be an http(s) URL")
        if allowed and not any(url.rstrip("/").startswith(a.rstrip("/")) for a in allowed):
            raise ServiceError(403, "fhirServer is not one this service may call", "forbidden")
        try:
            return FhirClient(url, session=self._session, auth=token, timeout=EHR_TIMEOUT, retry=EHR_RETRY)
        except ValueError:
            raise BadRequestError("fhirServer is not a usable FHIR base URL") from None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self._session.close()
