"""A FHIR R4 REST client: the adapter's only code that talks to a FHIR server (or its token endpoint).

One method, :meth:`FhirClient._send`, performs HTTP; :meth:`FhirClient.request` wraps it for FHIR calls. The
client sends and accepts ``application/fhir+json``, always passes a timeout, never follows redirects, and
turns every non-2xx answer into a typed :class:`FhirError` that keeps the server's OperationOutcome
(``exc.outcome``). The thin methods on top (read, search, create, update, batch, transaction, everything,
...) only build requests and check the shape of what comes back.

Retries (:class:`RetryPolicy`; ``retry=NO_RETRY`` turns them off)
    408, 429, 500, 502, 503, 504 and failures without an answer (connection reset or refused, read or
    connect timeout) are tried again, at most ``max_tries`` times in all (4), after exponential backoff
    with jitter (0.5 s, 1 s, 2 s ... capped at ``max_backoff``, each drawn from [d/2, d]) or after the
    server's ``Retry-After`` (delta-seconds or an HTTP-date; capped at ``max_retry_after``, 60 s). Only
    idempotent requests are retried: GET, HEAD, PUT, DELETE, and a POST whose caller says it is idempotent
    by construction (``transaction(bundle, idempotent=True)``, ``batch(..., idempotent=True)``; checked with
    :func:`is_idempotent_bundle`: every entry a read, a PUT, a DELETE or a conditional create). A POST that
    never left (connection refused, connect timeout) is always safe to send again. 409 and 412 (someone
    changed it: :class:`FhirChanged`) are never retried. Note that a retried PUT with ``If-Match`` whose
    first try was applied answers 412: re-read, nothing is lost or doubled. Sleeping goes through the
    injectable ``sleep``; ``clock`` (UNIX seconds) reads HTTP-dates.

Batches and transactions
    Every ``entry.response.status`` is checked, not only the outer 200. In a transaction a failing entry
    raises the typed error for its status with the entry's ``outcome``. :meth:`FhirClient.batch` returns
    one :class:`BatchEntryResult` per entry and, when the batch is idempotent, sends again (bounded by
    ``max_tries``) only the entries that failed with a retryable status, e.g. a 429 under an outer 200.

Auth (:mod:`adapter.fhir.auth`)
    ``auth`` is None, a bearer token string, or an :class:`~adapter.fhir.auth.Auth` (``make_auth``):
    static bearer (from an environment variable or a file) or SMART Backend Services (``private_key_jwt``;
    token endpoint discovered through :meth:`FhirClient.smart_configuration`, token requested through
    :meth:`FhirClient.request_token`). On a 401 a renewable credential is dropped and the request sent once
    more with a new one; a second 401 (or a 401 with a static token) raises :class:`FhirUnauthorized`. A 403
    message says which scopes the SMART client was granted.

Capabilities
    :meth:`FhirClient.capabilities` reads ``[base]/metadata`` once per client (cached);
    :meth:`FhirClient.server_capabilities` sums up what it says as a :class:`ServerCapabilities`
    (``Patient/$everything``, ``_lastUpdated`` search, conditional create, batch, transaction).

Threads
    One client may be used by several threads at once. Shared: the ``requests.Session`` and its connection
    pool (an ``HTTPAdapter`` with ``pool_size`` connections per host; size it to the number of worker
    threads), the auth (the SMART token cache takes a lock; one token request at a time), and the cached
    CapabilityStatement (a lock). Everything else lives in the call.

Privacy rules, because requests carry patient data:

- exception messages never contain a request body, a query string or a literal reference's id; the
  summary of the server's OperationOutcome is scrubbed of ``Type/id`` references, query strings and
  token values (``system|value``). The complete OperationOutcome stays available on ``exc.outcome``.
- the ``adapter.fhir`` logger logs at INFO or above only the method, a path *shape* such as
  ``Patient/[id]`` and the status; DEBUG adds the request path (with ids, still without the query).
- credentials (bearer and access tokens, private keys, signed assertions) are never logged, never in an
  exception's text and never in ``repr()``; requests to URLs outside ``base_url`` (e.g. a paging link
  pointing elsewhere) are refused so the token cannot leak. The token request goes to the discovered
  token endpoint, without the access token.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from adapter.fhir.auth import Auth, BearerToken, NoAuth, SmartConfiguration, scrub_secrets
from adapter.fhir.errors import (
    RETRYABLE_STATUSES,
    FhirBadRequest,
    FhirChanged,
    FhirConflict,
    FhirError,
    FhirMultipleMatches,
    FhirNotFound,
    FhirPreconditionFailed,
    FhirServerError,
    FhirThrottled,
    FhirTransportError,
    FhirUnauthorized,
    FhirUnprocessable,
    error_class,
)

__all__ = [
    "DEFAULT_MAX_PAGES",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_TIMEOUT",
    "FHIR_JSON",
    "NO_RETRY",
    "RETRYABLE_STATUSES",
    "BatchEntryResult",
    "BatchResult",
    "FhirBadRequest",
    "FhirChanged",
    "FhirClient",
    "FhirConflict",
    "FhirError",
    "FhirMultipleMatches",
    "FhirNotFound",
    "FhirPreconditionFailed",
    "FhirResponse",
    "FhirServerError",
    "FhirThrottled",
    "FhirTransportError",
    "FhirUnauthorized",
    "FhirUnprocessable",
    "RetryPolicy",
    "ServerCapabilities",
    "is_idempotent_bundle",
    "non_idempotent_entries",
    "parse_retry_after",
    "summarize_outcome",
]

log = logging.getLogger("adapter.fhir")

FHIR_JSON: Final = "application/fhir+json"
DEFAULT_TIMEOUT: Final[tuple[float, float]] = (5.0, 60.0)  # (connect, read) seconds
DEFAULT_MAX_PAGES: Final = 100
DEFAULT_POOL_SIZE: Final = 10
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

JsonObject: TypeAlias = dict[str, Any]
Params: TypeAlias = Mapping[str, str] | Sequence[tuple[str, str]]
Timeout: TypeAlias = float | tuple[float, float]

_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_INSTANT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_MAX_ISSUES = 3
_MAX_DIAGNOSTICS = 200
_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
#: Answer headers kept on :attr:`FhirResponse.headers` (Bulk Data status polling).
_KEPT_HEADERS = frozenset({"x-progress", "expires", "content-type"})
#: Bytes per read when downloading a file.
_DOWNLOAD_CHUNK = 1024 * 1024


# ---------------------------------------------------------------------------------------------------------
# retries


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date (``now`` in UNIX seconds).
    None when absent or unreadable; never negative."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds: float = when.timestamp() - now
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry (see the module docstring). ``max_tries`` counts every try."""

    max_tries: int = 4
    backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 60.0
    statuses: frozenset[int] = RETRYABLE_STATUSES

    def __post_init__(self) -> None:
        if self.max_tries < 1:
            raise ValueError("max_tries must be at least 1")
        if min(self.backoff, self.max_backoff, self.max_retry_after) < 0:
            raise ValueError("delays cannot be negative")

    def backoff_delay(self, retry: int, rand: float) -> float:
        """The pause before retry number ``retry`` (1 = the first): exponential, jittered into [d/2, d]."""
        full: float = min(self.max_backoff, self.backoff * 2.0 ** (retry - 1))
        return full / 2 + rand * full / 2

    def delay(self, retry: int, retry_after: str | None, now: float, rand: float) -> float:
        """``Retry-After`` when the server sent a readable one (capped), else the backoff."""
        asked = parse_retry_after(retry_after, now)
        if asked is None:
            return self.backoff_delay(retry, rand)
        return min(asked, self.max_retry_after)


NO_RETRY: Final = RetryPolicy(max_tries=1)


def non_idempotent_entries(bundle: Mapping[str, Any]) -> list[int]:
    """The indexes of a batch/transaction Bundle's entries that are not idempotent by construction.

    Idempotent: GET/HEAD, PUT (to ``Type/id`` or conditional ``Type?query``), DELETE, a POST with
    ``ifNoneExist`` (conditional create), a PATCH with ``ifMatch``. Anything else (a plain POST, an
    operation) could do its work twice if sent twice."""
    bad = []
    for i, entry in enumerate(bundle.get("entry") or []):
        request = entry.get("request") if isinstance(entry, Mapping) else None
        if not isinstance(request, Mapping):
            bad.append(i)
            continue
        method = str(request.get("method", "")).upper()
        if method in ("GET", "HEAD", "PUT", "DELETE"):
            continue
        if (
            method == "POST"
            and isinstance(request.get("ifNoneExist"), str)
            and request["ifNoneExist"].strip()
        ):
            continue
        if method == "PATCH" and isinstance(request.get("ifMatch"), str) and request["ifMatch"].strip():
            continue
        bad.append(i)
    return bad


def is_idempotent_bundle(bundle: Mapping[str, Any]) -> bool:
    """True when sending ``bundle`` twice has the effect of sending it once (see
    :func:`non_idempotent_entries`): then ``transaction``/``batch`` may retry it."""
    return not non_idempotent_entries(bundle)


# ---------------------------------------------------------------------------------------------------------
# message scrubbing

_REFERENCE_RE = re.compile(r"\b([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}")
_QUERY_RE = re.compile(r"\?[^\s)'\"]*")
_TOKEN_VALUE_RE = re.compile(r"\|[^\s,)'\"]+")
_SPACE_RE = re.compile(r"\s+")


def _scrub(text: str) -> str:
    """Remove what may identify a patient from a server's diagnostics: ids in literal references, query
    strings and token values. Best effort; the untouched OperationOutcome stays on the exception."""
    text = _QUERY_RE.sub("?…", text)
    text = _REFERENCE_RE.sub(r"\1/…", text)
    text = _TOKEN_VALUE_RE.sub("|…", text)
    text = _SPACE_RE.sub(" ", text).strip()
    if len(text) > _MAX_DIAGNOSTICS:
        text = text[: _MAX_DIAGNOSTICS - 1] + "…"
    return text


def _issue_text(issue: Mapping[str, Any]) -> str:
    diagnostics = issue.get("diagnostics")
    if isinstance(diagnostics, str) and diagnostics.strip():
        return diagnostics
    details = issue.get("details")
    if isinstance(details, Mapping):
        text = details.get("text")
        if isinstance(text, str) and text.strip():
            return text
        for coding in details.get("coding") or []:
            if isinstance(coding, Mapping):
                shown = coding.get("display") or coding.get("code")
                if isinstance(shown, str) and shown.strip():
                    return shown
    return ""


def summarize_outcome(outcome: Mapping[str, Any] | None) -> str:
    """A one-line, scrubbed summary of an OperationOutcome's issues (at most three)."""
    if not outcome:
        return ""
    issues = [i for i in outcome.get("issue") or [] if isinstance(i, Mapping)]
    parts = []
    for issue in issues[:_MAX_ISSUES]:
        head = " ".join(str(issue[k]) for k in ("severity", "code") if isinstance(issue.get(k), str))
        text = _scrub(_issue_text(issue))
        parts.append(f"{head}: {text}" if head and text else head or text)
    if len(issues) > _MAX_ISSUES:
        parts.append(f"(+{len(issues) - _MAX_ISSUES} more)")
    return "; ".join(p for p in parts if p)


def _path_shape(relative_path: str) -> str:
    """``Patient/123/_history/2`` -> ``Patient/[id]/_history/[id]``: the path without ids or query."""
    segments = [s for s in relative_path.split("?", 1)[0].split("/") if s]
    if not segments:
        return "[base]"
    shape = [segments[0]]
    shape += [s if s.startswith(("_", "$")) else "[id]" for s in segments[1:]]
    return "/".join(shape)


# ---------------------------------------------------------------------------------------------------------
# responses


@dataclass(frozen=True)
class FhirResponse:
    """A successful (2xx) answer. ``body`` is the parsed JSON object, or None for an empty body."""

    status: int
    body: JsonObject | None
    etag: str | None
    location: str | None
    last_modified: str | None
    retry_after: str | None = None
    #: Other answer headers a caller may need (Bulk Data: ``X-Progress``, ``Expires``), lower-cased names.
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def version_id(self) -> str | None:
        """The version in a ``W/"n"`` ETag, else the body's meta.versionId, else None."""
        if self.etag:
            tag = self.etag.removeprefix("W/").strip('"')
            if tag:
                return tag
        meta = (self.body or {}).get("meta")
        version = meta.get("versionId") if isinstance(meta, Mapping) else None
        return version if isinstance(version, str) else None


@dataclass(frozen=True)
class BatchEntryResult:
    """One entry of a batch: its final ``status``, the entry's ``response`` (location, etag, outcome ...),
    its ``resource`` when the server returned one, the typed ``error`` when the status is not a success,
    and how many times it was sent (``tries``)."""

    index: int
    status: int
    response: JsonObject
    resource: JsonObject | None
    error: FhirError | None
    tries: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class BatchResult:
    """The per-entry results of :meth:`FhirClient.batch`, in the order of the request's entries."""

    entries: tuple[BatchEntryResult, ...]

    def __iter__(self) -> Iterator[BatchEntryResult]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> BatchEntryResult:
        return self.entries[index]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries)

    @property
    def failed(self) -> list[BatchEntryResult]:
        return [e for e in self.entries if not e.ok]

    def raise_for_failures(self) -> None:
        """Raise the first failed entry's error, if any."""
        for entry in self.entries:
            if entry.error is not None:
                raise entry.error


@dataclass(frozen=True)
class ServerCapabilities:
    """What a server's CapabilityStatement says it supports, as far as the adapter cares.

    ``last_updated`` and ``conditional_create`` hold resource types (``"*"``: every type, from a
    server-wide search parameter); ask with :meth:`searches_last_updated` / :meth:`creates_conditionally`.
    """

    fhir_version: str | None = None
    everything: bool = False
    batch: bool = False
    transaction: bool = False
    last_updated: frozenset[str] = field(default=frozenset(), repr=False)
    conditional_create: frozenset[str] = field(default=frozenset(), repr=False)
    smart: bool = False
    resource_types: frozenset[str] = field(default=frozenset(), repr=False)

    def searches_last_updated(self, resource_type: str) -> bool:
        return "*" in self.last_updated or resource_type in self.last_updated

    def creates_conditionally(self, resource_type: str) -> bool:
        return resource_type in self.conditional_create

    @classmethod
    def from_statement(cls, statement: Mapping[str, Any]) -> ServerCapabilities:
        everything = batch = transaction = smart = False
        last_updated: set[str] = set()
        conditional: set[str] = set()
        types: set[str] = set()
        for rest in _mappings(statement.get("rest")):
            if rest.get("mode", "server") != "server":
                continue
            codes = {i.get("code") for i in _mappings(rest.get("interaction"))}
            batch = batch or "batch" in codes
            transaction = transaction or "transaction" in codes
            if any(p.get("name") == "_lastUpdated" for p in _mappings(rest.get("searchParam"))):
                last_updated.add("*")
            everything = everything or any(_is_everything(o) for o in _mappings(rest.get("operation")))
            security = rest.get("security")
            if isinstance(security, Mapping):
                smart = smart or _oauth_token_uri(security) is not None
            for res in _mappings(rest.get("resource")):
                rtype = res.get("type")
                if not isinstance(rtype, str):
                    continue
                types.add(rtype)
                if any(p.get("name") == "_lastUpdated" for p in _mappings(res.get("searchParam"))):
                    last_updated.add(rtype)
                if res.get("conditionalCreate") is True:
                    conditional.add(rtype)
                if rtype == "Patient" and any(_is_everything(o) for o in _mappings(res.get("operation"))):
                    everything = True
        version = statement.get("fhirVersion")
        return cls(
            fhir_version=version if isinstance(version, str) else None,
            everything=everything,
            batch=batch,
            transaction=transaction,
            last_updated=frozenset(last_updated),
            conditional_create=frozenset(conditional),
            smart=smart,
            resource_types=frozenset(types),
        )


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _is_everything(operation: Mapping[str, Any]) -> bool:
    name = str(operation.get("name", "")).lstrip("$")
    definition = str(operation.get("definition", ""))
    return name == "everything" or definition.endswith("/Patient-everything")


def _oauth_token_uri(security: Mapping[str, Any]) -> str | None:
    for ext in _mappings(security.get("extension")):
        if ext.get("url") != _OAUTH_URIS:
            continue
        for sub in _mappings(ext.get("extension")):
            if sub.get("url") == "token" and isinstance(sub.get("valueUri"), str):
                uri: str = sub["valueUri"]
                return uri
    return None


def _param_list(params: Params | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        return [(str(k), str(v)) for k, v in params.items()]
    return [(str(k), str(v)) for k, v in params]


def _if_match(value: str) -> str:
    """Accept a full ETag (``W/"3"``) or a bare version id (``3``)."""
    value = value.strip()
    if value.startswith(('W/"', '"')):
        return value
    return f'W/"{value}"'


def _check_type(resource_type: str) -> str:
    if not _TYPE_RE.match(resource_type):
        raise ValueError(f"not a FHIR resource type name: {resource_type!r}")
    return resource_type


def _check_id(resource_id: str) -> str:
    if not _ID_RE.match(resource_id):
        raise ValueError("not a valid FHIR logical id (1-64 of A-Z a-z 0-9 - .)")
    return resource_id


def _type_of(resource: Mapping[str, Any]) -> str:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise ValueError("resource has no resourceType")
    return _check_type(rtype)


def _instant(since: str | datetime) -> str:
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        return since.isoformat()
    if not _INSTANT_RE.match(since):
        raise ValueError("since must be a FHIR instant with a time zone (e.g. 2026-11-21T09:00:00Z)")
    return since


# ---------------------------------------------------------------------------------------------------------
# one exchange on the wire


@dataclass
class _Raw:
    """An HTTP answer, any status (internal)."""

    status: int
    reason: str
    content: bytes
    etag: str | None
    location: str | None
    last_modified: str | None
    retry_after: str | None
    reauthorised: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    written: int = 0  # a download's bytes written to its sink (the content is then empty)


class _NoAnswer(Exception):  # noqa: N818 - internal signal
    """No HTTP answer; ``sent`` is False when the request certainly never reached the server."""

    def __init__(self, error: FhirTransportError, kind: str, *, sent: bool) -> None:
        super().__init__(kind)
        self.error = error
        self.kind = kind
        self.sent = sent


def _never_sent(exc: requests.RequestException) -> bool:
    """Connection refused / name not resolved / connect timeout: the request cannot have been processed."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


# ---------------------------------------------------------------------------------------------------------
# client


class FhirClient:
    """A FHIR R4 REST client for one server (``base_url``, e.g. ``https://host/fhir``).

    - ``auth``: None, a bearer token string, or an :class:`~adapter.fhir.auth.Auth` (see
      :func:`adapter.fhir.auth.make_auth`).
    - ``timeout``: (connect, read) seconds or one number for both; there is always one.
    - ``retry``: a :class:`RetryPolicy` (``NO_RETRY`` for none); ``sleep`` and ``clock`` (UNIX seconds) are
      injectable so that tests need not wait.
    - ``pool_size``: connections kept per host (size it to the number of threads using the client).
    - ``session`` may be injected (tests, proxies, TLS settings); the client then leaves its adapters
      alone. A session the client created itself is closed by :meth:`close`.
    - ``headers`` are added to every request; ``max_pages`` bounds every paged read.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        auth: str | Auth | None = None,
        headers: Mapping[str, str] | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
        retry: RetryPolicy | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("base_url must be an http(s) URL without query or fragment")
        if timeout is None or (isinstance(timeout, tuple) and None in timeout):
            raise ValueError("a timeout is required")
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.timeout: Timeout = timeout
        self.max_pages = max_pages
        self.retry = retry if retry is not None else RetryPolicy()
        self.pool_size = pool_size
        self._sleep = sleep
        self._clock = clock
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self._headers: dict[str, str] = {"Accept": FHIR_JSON}
        self._headers.update(headers or {})
        if isinstance(auth, str):
            auth = BearerToken(auth) if auth else None
        self._auth: Auth = auth if auth is not None else NoAuth()
        base = urlsplit(self.base_url)
        self._scheme, self._netloc, self._base_path = base.scheme.lower(), base.netloc.lower(), base.path
        self._caps_lock = threading.Lock()
        self._statement: JsonObject | None = None
        self._capabilities: ServerCapabilities | None = None

    @property
    def auth(self) -> Auth:
        return self._auth

    def __repr__(self) -> str:
        return f"FhirClient({self.base_url!r})"

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- the one function that performs HTTP ----

    def _send(
        self,
        method: str,
        url: str,
        what: str,
        params: list[tuple[str, str]] | None,
        data: bytes | None,
        headers: Mapping[str, str],
        sink: Path | None = None,
    ) -> _Raw:
        """One HTTP exchange (no retry): the answer, whatever its status; :class:`_NoAnswer` without one.

        With ``sink`` (a download) a 2xx body is streamed into that file, never held in memory, and
        redirects are followed only when the request carries no Authorization header (the token never
        follows a redirect); a body broken off is no answer (the file is removed)."""
        netloc = urlsplit(url).netloc
        try:
            resp = self.session.request(
                method,
                url,
                params=params or None,
                data=data,
                headers=dict(headers),
                timeout=self.timeout,
                allow_redirects=sink is not None and "Authorization" not in headers,
                stream=sink is not None,
            )
        except requests.Timeout as exc:
            kind = _kind(exc)
            message = f"{what}: no answer from {netloc} in time ({kind})"
            raise _NoAnswer(
                FhirTransportError(None, None, message), kind, sent=not _never_sent(exc)
            ) from None
        except requests.RequestException as exc:
            kind = _kind(exc)
            message = f"{what}: cannot reach {netloc} ({kind})"
            raise _NoAnswer(
                FhirTransportError(None, None, message), kind, sent=not _never_sent(exc)
            ) from None
        with resp:
            h = resp.headers
            written = 0
            if sink is not None and 200 <= resp.status_code < 300:
                written = self._stream_into(resp, sink, what, netloc)
            return _Raw(
                status=resp.status_code,
                reason=resp.reason or "",
                content=b"" if sink is not None and 200 <= resp.status_code < 300 else resp.content,
                etag=h.get("ETag"),
                location=h.get("Location") or h.get("Content-Location"),
                last_modified=h.get("Last-Modified"),
                retry_after=h.get("Retry-After"),
                headers={k.lower(): v for k, v in h.items() if k.lower() in _KEPT_HEADERS},
                written=written,
            )

    @staticmethod
    def _stream_into(resp: requests.Response, sink: Path, what: str, netloc: str) -> int:
        written = 0
        try:
            with sink.open("wb") as out:
                for chunk in resp.iter_content(_DOWNLOAD_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        except requests.RequestException as exc:
            sink.unlink(missing_ok=True)
            kind = _kind(exc)
            message = f"{what}: the download from {netloc} broke off ({kind})"
            raise _NoAnswer(FhirTransportError(None, None, message), kind, sent=True) from None
        return written

    def _call(
        self,
        method: str,
        url: str,
        what: str,
        *,
        headers: Mapping[str, str],
        params: list[tuple[str, str]] | None = None,
        data: bytes | Callable[[], bytes] | None = None,
        idempotent: bool,
        authenticate: bool,
        sink: Path | None = None,
    ) -> _Raw:
        """:meth:`_send` with the retry policy and one re-authorisation on a 401. Returns the last answer
        (any status); raises :class:`FhirTransportError` when the last try had none."""
        policy = self.retry
        tries = 0
        reauthorised = False
        while True:
            tries += 1
            sent = dict(headers)
            authorization = self._auth.authorization(self) if authenticate else None
            if authorization:
                sent["Authorization"] = authorization
            payload = data() if callable(data) else data
            try:
                raw = self._send(method, url, what, params, payload, sent, sink)
            except _NoAnswer as failure:
                may_retry = idempotent or not failure.sent
                if may_retry and tries < policy.max_tries:
                    pause = policy.backoff_delay(tries, random.random())
                    log.warning(
                        "%s: no answer (%s); try %d of %d in %.1f s",
                        what, failure.kind, tries + 1, policy.max_tries, pause,
                    )  # fmt: skip
                    self._sleep(pause)
                    continue
                log.warning("%s: no answer (%s)", what, failure.kind)
                error = failure.error
                if not may_retry:
                    error = FhirTransportError(
                        None,
                        None,
                        f"{error.message}; not retried: not idempotent, and it may have been processed",
                    )
                elif tries > 1:
                    error = FhirTransportError(None, None, f"{error.message} after {tries} tries")
                raise error from None
            if (
                raw.status == 401
                and authenticate
                and not reauthorised
                and self._auth.invalidate(authorization)
            ):
                reauthorised = True
                tries -= 1
                log.info("%s: HTTP 401, re-authorising once", what)
                continue
            if raw.status in policy.statuses and tries < policy.max_tries and idempotent:
                pause = policy.delay(tries, raw.retry_after, self._clock(), random.random())
                log.warning(
                    "%s: HTTP %d; try %d of %d in %.1f s",
                    what,
                    raw.status,
                    tries + 1,
                    policy.max_tries,
                    pause,
                )
                self._sleep(pause)
                continue
            raw.reauthorised = reauthorised
            return raw

    # ---- FHIR requests ----

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Params | None = None,
        json: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> FhirResponse:
        """Send one request to ``base_url/path`` (or to an absolute URL under ``base_url``), with retries.

        ``idempotent`` defaults to the method's nature (GET, HEAD, PUT, DELETE: yes; POST, PATCH: no); say
        True only for a request that does no harm when the server receives it twice.
        Returns the 2xx answer; raises a :class:`FhirError` subclass for anything else.
        """
        method = method.upper()
        url, relative = self._resolve(path_or_url)
        shape = _path_shape(relative)
        what = f"FHIR {method} {shape}"
        sent = dict(self._headers)
        data: bytes | None = None
        if json is not None:
            data = orjson.dumps(json)
            sent["Content-Type"] = FHIR_JSON
        sent.update(headers or {})
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        log.debug("FHIR %s %s", method, urlsplit(url).path)
        raw = self._call(
            method,
            url,
            what,
            headers=sent,
            params=_param_list(params),
            data=data,
            idempotent=idempotent,
            authenticate=True,
        )
        log.debug("FHIR %s %s -> %d", method, urlsplit(url).path, raw.status)
        return self._fhir_response(raw, what)

    def _fhir_response(self, raw: _Raw, what: str) -> FhirResponse:
        status = raw.status
        body, parsed = _parse(raw.content)
        if 200 <= status < 300:
            if not parsed or (body is not None and not isinstance(body, dict)):
                raise FhirError(status, None, f"{what}: HTTP {status} with a body that is not a JSON object")
            return FhirResponse(
                status=status,
                body=body,
                etag=raw.etag,
                location=raw.location,
                last_modified=raw.last_modified,
                retry_after=raw.retry_after,
                headers=raw.headers,
            )
        is_outcome = isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"
        outcome = body if is_outcome else None
        log.warning("%s: HTTP %d", what, status)
        summary = summarize_outcome(outcome) or (raw.reason or "no OperationOutcome")
        message = f"{what}: HTTP {status}: {summary}"
        if status == 401 and raw.reauthorised:
            message += " (refused again after re-authorising)"
        if status == 403 and self._auth.scope_note():
            message += f" ({self._auth.scope_note()})"
        raise error_class(status)(status, outcome, message)

    def _resolve(self, path_or_url: str) -> tuple[str, str]:
        """(absolute URL, path relative to the base). Absolute URLs must lie under base_url."""
        if "://" not in path_or_url.split("?", 1)[0]:  # a code system URL in the query is not absolute
            relative = path_or_url.lstrip("/")
            return (f"{self.base_url}/{relative}" if relative else self.base_url), relative
        parts = urlsplit(path_or_url)
        path = parts.path
        inside = (
            parts.scheme.lower() == self._scheme
            and parts.netloc.lower() == self._netloc
            and (path == self._base_path or path.startswith(self._base_path.rstrip("/") + "/"))
        )
        if not inside:
            raise FhirError(None, None, "refusing to send a request to a URL outside the FHIR base URL")
        return path_or_url, path[len(self._base_path) :].lstrip("/")

    # ---- SMART (the TokenTransport of adapter.fhir.auth) ----

    def smart_configuration(self) -> SmartConfiguration:
        """The server's SMART configuration: ``[base]/.well-known/smart-configuration``, else the token
        endpoint in the CapabilityStatement's ``oauth-uris`` extension. Unauthenticated."""
        what = "FHIR GET .well-known/smart-configuration"
        raw = self._call(
            "GET",
            f"{self.base_url}/.well-known/smart-configuration",
            what,
            headers={"Accept": "application/json"},
            idempotent=True,
            authenticate=False,
        )
        body, _ = _parse(raw.content)
        if 200 <= raw.status < 300 and isinstance(body, dict):
            config = SmartConfiguration.from_json(body)
            if config is not None:
                return config
        log.info("%s: HTTP %d without a token endpoint; trying the CapabilityStatement", what, raw.status)
        raw = self._call(
            "GET", f"{self.base_url}/metadata", "FHIR GET metadata", headers=dict(self._headers),
            idempotent=True, authenticate=False,
        )  # fmt: skip
        statement, _ = _parse(raw.content)
        if 200 <= raw.status < 300 and isinstance(statement, dict):
            for rest in _mappings(statement.get("rest")):
                security = rest.get("security")
                endpoint = _oauth_token_uri(security) if isinstance(security, Mapping) else None
                if endpoint:
                    return SmartConfiguration(endpoint, source="capability-statement")
        raise FhirUnauthorized(
            None,
            None,
            f"SMART: {self._netloc} advertises no token endpoint (neither in .well-known/smart-configuration "
            "nor in the CapabilityStatement's oauth-uris extension)",
        )

    def request_token(self, token_url: str, form: Callable[[], dict[str, str]], client_id: str) -> JsonObject:
        """POST the form ``form()`` (rebuilt for every try: a new assertion each time) to the token endpoint;
        the JSON answer. A refusal raises :class:`FhirUnauthorized` with the OAuth error, scrubbed."""
        parts = urlsplit(token_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
            raise FhirUnauthorized(None, None, "SMART: the token endpoint is not an http(s) URL")
        if self._scheme == "https" and parts.scheme != "https":
            raise FhirUnauthorized(
                None, None, "SMART: refusing a plain-http token endpoint for an https server"
            )
        what = f"SMART token request to {parts.netloc}"
        raw = self._call(
            "POST",
            token_url,
            what,
            headers={"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"},
            data=lambda: urlencode(form()).encode(),
            idempotent=True,  # no side effect; every try carries a new assertion (new jti)
            authenticate=False,
        )
        body, _ = _parse(raw.content)
        if 200 <= raw.status < 300 and isinstance(body, dict):
            return body
        error = description = ""
        if isinstance(body, dict):
            error = scrub_secrets(str(body.get("error") or ""))
            description = scrub_secrets(str(body.get("error_description") or ""))
        detail = ": ".join(p for p in (error, description) if p) or raw.reason or "no OAuth error"
        log.warning("%s: HTTP %d (%s) for client %s", what, raw.status, error or "no error code", client_id)
        cls = error_class(raw.status) if raw.status >= 500 or raw.status in (408, 429) else FhirUnauthorized
        raise cls(raw.status, None, f"{what}: HTTP {raw.status} for client {client_id}: {detail}")

    # ---- capabilities ----

    def capabilities(self, *, refresh: bool = False) -> JsonObject:
        """GET [base]/metadata: the server's CapabilityStatement, read once per client (``refresh`` reads
        it again). The same object is returned every time: do not change it."""
        with self._caps_lock:
            if self._statement is None or refresh:
                resp = self.request("GET", "metadata")
                self._statement = self._expect_resource(resp, "CapabilityStatement", "metadata")
                self._capabilities = None
            return self._statement

    def server_capabilities(self) -> ServerCapabilities:
        """What the server supports (Patient/$everything, _lastUpdated, conditional create, batch,
        transaction), from the cached CapabilityStatement."""
        statement = self.capabilities()
        with self._caps_lock:
            if self._capabilities is None:
                self._capabilities = ServerCapabilities.from_statement(statement)
            return self._capabilities

    # ---- thin interactions ----

    def read(self, resource_type: str, resource_id: str) -> tuple[JsonObject, str | None]:
        """GET [base]/Type/id -> (resource, ETag)."""
        path = f"{_check_type(resource_type)}/{_check_id(resource_id)}"
        resp = self.request("GET", path)
        return self._expect_resource(resp, resource_type, path), resp.etag

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> tuple[JsonObject, str | None]:
        """GET [base]/Type/id/_history/vid -> (resource, ETag)."""
        path = f"{_check_type(resource_type)}/{_check_id(resource_id)}/_history/{_check_id(version_id)}"
        resp = self.request("GET", path)
        return self._expect_resource(resp, resource_type, path), resp.etag

    def search_pages(
        self, resource_type: str, params: Params | None = None, *, strict: bool = True
    ) -> Iterator[JsonObject]:
        """GET [base]/Type?params, then every ``next`` page: yields each searchset Bundle.

        ``strict`` asks the server to reject unknown parameters (``Prefer: handling=strict``) instead of
        silently ignoring them, and raises if a page reports ignored/unsupported parameters anyway.
        Raises :class:`FhirError` when paging loops (a repeated ``next`` link, an ``_offset`` that does not
        advance, a page repeating only resources already seen) or passes ``max_pages``.
        """
        _check_type(resource_type)
        headers = {"Prefer": "handling=strict"} if strict else None
        resp = self.request("GET", resource_type, params=params, headers=headers)
        first = self._expect_resource(resp, "Bundle", resource_type)
        yield from self._pages(first, f"search {resource_type}", headers, strict)

    def pages_from(self, bundle: JsonObject, *, strict: bool = False) -> Iterator[JsonObject]:
        """``bundle`` (a searchset already in hand, e.g. a batch entry's resource) and every ``next`` page
        after it, with the loop guards of :meth:`search_pages`. ``strict`` as there (for the pages' search
        outcomes; the pages are fetched without ``Prefer: handling=strict``)."""
        yield from self._pages(bundle, "search", None, strict)

    def _pages(
        self, first: JsonObject, where: str, headers: Mapping[str, str] | None, strict: bool
    ) -> Iterator[JsonObject]:
        """The Bundle ``first`` and every page after it, guarded against paging loops."""
        seen_links: set[str] = set()
        seen_entries: set[str] = set()
        fetched: str | None = None
        pages = 0
        bundle = first
        while True:
            if bundle.get("resourceType") != "Bundle":
                raise FhirError(None, None, f"FHIR {where}: a page that is not a Bundle")
            self._check_search_outcomes(bundle, where, strict)
            keys = [k for k in (_entry_key(e) for e in _matches(bundle)) if k is not None]
            if keys and all(k in seen_entries for k in keys):
                raise FhirError(
                    None, None, f"FHIR {where}: a page repeated earlier results (paging does not advance)"
                )
            seen_entries.update(keys)
            yield bundle
            pages += 1
            links: dict[str, str] = {}
            for link in bundle.get("link") or []:
                if isinstance(link, Mapping) and isinstance(link.get("url"), str):
                    links[str(link.get("relation"))] = link["url"]
            if "self" in links:
                seen_links.add(_page_key(links["self"]))
            next_url = links.get("next")
            if next_url is None:
                return
            if _page_key(next_url) in seen_links:
                raise FhirError(None, None, f"FHIR {where}: the server repeated a page link")
            current = _offset(links.get("self")) if "self" in links else _offset(fetched)
            following = _offset(next_url)
            if current is not None and following is not None and following <= current:
                raise FhirError(None, None, f"FHIR {where}: the next page's _offset does not advance")
            if pages >= self.max_pages:
                raise FhirError(None, None, f"FHIR {where}: more than {self.max_pages} pages")
            seen_links.add(_page_key(next_url))
            fetched = next_url
            bundle = self._expect_resource(self.request("GET", next_url, headers=headers), "Bundle", where)

    def search(
        self, resource_type: str, params: Params | None = None, *, strict: bool = True
    ) -> Iterator[JsonObject]:
        """Every matching resource over all pages (``search.mode`` match; includes and outcomes skipped)."""
        for bundle in self.search_pages(resource_type, params, strict=strict):
            for entry in _matches(bundle):
                resource = entry.get("resource")
                if isinstance(resource, dict):
                    yield resource

    def search_one(
        self, resource_type: str, params: Params | None = None, *, strict: bool = True
    ) -> JsonObject | None:
        """The single match, or None. More than one match raises :class:`FhirMultipleMatches`."""
        plist = _param_list(params)
        if not any(k == "_count" for k, _ in plist):
            plist.append(("_count", "2"))
        found: JsonObject | None = None
        for resource in self.search(resource_type, plist, strict=strict):
            if found is not None:
                raise FhirMultipleMatches(
                    None, None, f"FHIR search {resource_type}: expected at most one match, found more"
                )
            found = resource
        return found

    def everything(
        self,
        patient_id: str,
        since: str | datetime | None = None,
        *,
        types: Sequence[str] | None = None,
        count: int | None = None,
    ) -> list[JsonObject]:
        """GET [base]/Patient/id/$everything (``_since``, ``_type``, ``_count`` when given), every page.

        Returns the resources (the Patient included). Verifies the result: paging must advance (see
        :meth:`search_pages`), no resource may come on two pages (the record changed while paging: read
        again), and the number received must equal the first page's ``total`` when it gives one. A server
        that ignores ``_since`` or ``_type`` returns more, never less. Check
        ``server_capabilities().everything`` first; a server without the operation answers 4xx.
        """
        path = f"Patient/{_check_id(patient_id)}/$everything"
        params: list[tuple[str, str]] = []
        if since is not None:
            params.append(("_since", _instant(since)))
        if types:
            params.append(("_type", ",".join(_check_type(t) for t in types)))
        if count is not None:
            if count < 1:
                raise ValueError("count must be at least 1")
            params.append(("_count", str(count)))
        where = "Patient/[id]/$everything"
        resources: list[JsonObject] = []
        seen: set[str] = set()
        total: int | None = None
        first = self._expect_resource(self.request("GET", path, params=params), "Bundle", where)
        for number, bundle in enumerate(self._pages(first, where, None, False)):
            if number == 0 and isinstance(bundle.get("total"), int):
                total = bundle["total"]
            for entry in _matches(bundle):
                resource = entry.get("resource")
                if not isinstance(resource, dict):
                    continue
                key = _entry_key(entry)
                if key is not None and key in seen:
                    raise FhirError(
                        None,
                        None,
                        f"FHIR {where}: a resource came on two pages (the record changed while paging)",
                    )
                if key is not None:
                    seen.add(key)
                resources.append(resource)
        if total is not None and total != len(resources):
            raise FhirError(
                None,
                None,
                f"FHIR {where}: incomplete: the server announced {total} resources and sent {len(resources)}",
            )
        return resources

    def download(
        self,
        url: str,
        dest: str | os.PathLike[str],
        *,
        authenticate: bool = True,
        accept: str = "application/fhir+ndjson",
    ) -> int:
        """GET a file (e.g. a Bulk Data output file) into ``dest``, streamed (never held in memory), with the
        retries of any GET; returns the bytes written. Written to ``<dest>.part`` and renamed when complete,
        so a broken-off download never passes for a file.

        ``authenticate`` True sends the access token (the manifest's ``requiresAccessToken`` is true): the
        URL must then lie under ``base_url``, like every request, so the token never goes elsewhere. False
        sends no Authorization header (pre-signed storage URLs refuse one) and accepts any http(s) URL,
        redirects included. A 401 renews a renewable token once, as :meth:`request` does.
        """
        if authenticate:
            full, relative = self._resolve(url)
        else:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise FhirError(None, None, "refusing to download from a URL that is not http(s)")
            full, relative = url, parts.path.lstrip("/")
        what = f"FHIR GET {_path_shape(relative)} (download)"
        target = Path(dest)
        part = target.with_name(target.name + ".part")
        headers = {**self._headers, "Accept": accept}
        raw = self._call(
            "GET", full, what, headers=headers, idempotent=True, authenticate=authenticate, sink=part
        )
        if not 200 <= raw.status < 300:
            part.unlink(missing_ok=True)
            self._fhir_response(raw, what)  # raises the typed error, with the OperationOutcome
        os.replace(part, target)
        return raw.written

    def create(self, resource: Mapping[str, Any], if_none_exist: str | Params | None = None) -> FhirResponse:
        """POST [base]/Type. With ``if_none_exist`` (search criteria without '?') a server that finds one
        match answers 200 with that resource instead of creating (201); such a create is retried like an
        idempotent request, a plain one is not."""
        rtype = _type_of(resource)
        headers = {"Prefer": "return=representation"}
        if if_none_exist is not None:
            headers["If-None-Exist"] = _query(if_none_exist)
        return self.request(
            "POST", rtype, json=resource, headers=headers, idempotent=bool(headers.get("If-None-Exist"))
        )

    def update(self, resource: Mapping[str, Any], if_match: str | None = None) -> FhirResponse:
        """PUT [base]/Type/id (update, or create with a client-assigned id). ``if_match`` is an ETag
        (``W/"3"``) or a bare version id; a stale one raises :class:`FhirPreconditionFailed`."""
        rtype = _type_of(resource)
        rid = resource.get("id")
        if not isinstance(rid, str):
            raise ValueError("update needs a resource with an id")
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = _if_match(if_match)
        return self.request("PUT", f"{rtype}/{_check_id(rid)}", json=resource, headers=headers)

    def conditional_update(
        self, resource: Mapping[str, Any], query: str | Params, if_match: str | None = None
    ) -> FhirResponse:
        """PUT [base]/Type?query: updates the one match, creates when none, 412 when several."""
        rtype = _type_of(resource)
        q = _query(query)
        if not q:
            raise ValueError("conditional update needs search criteria")
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = _if_match(if_match)
        return self.request("PUT", f"{rtype}?{q}", json=resource, headers=headers)

    def transaction(self, bundle: Mapping[str, Any], *, idempotent: bool = False) -> JsonObject:
        """POST a transaction Bundle to [base]; returns the transaction-response Bundle (one response
        entry per request entry, in the same order).

        ``idempotent=True`` (only for a Bundle that :func:`is_idempotent_bundle` accepts, else ValueError)
        lets the client retry it after a retryable status or a lost answer. Every entry's status is
        checked: a failing one raises the typed error for its status, with the entry's outcome.
        """
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise ValueError("transaction needs a Bundle of type 'transaction'")
        if idempotent:
            _require_idempotent(bundle, "transaction")
        resp = self.request(
            "POST", "", json=bundle, headers={"Prefer": "return=representation"}, idempotent=idempotent
        )
        out = self._expect_resource(resp, "Bundle", "[base]")
        if out.get("type") != "transaction-response":
            raise FhirError(resp.status, None, "FHIR transaction: the answer is not a transaction-response")
        sent, got = bundle.get("entry") or [], out.get("entry") or []
        if len(sent) != len(got):
            raise FhirError(
                resp.status,
                None,
                f"FHIR transaction: {len(sent)} entries sent but {len(got)} responses received",
            )
        for index, (request_entry, response_entry) in enumerate(zip(sent, got, strict=True)):
            status, response = _entry_status(response_entry, "transaction", index)
            error = _entry_error("transaction", index, request_entry, status, response)
            if error is not None:
                log.warning("FHIR transaction: entry %d: HTTP %d", index, status)
                raise error
        return out

    def batch(self, bundle: Mapping[str, Any], *, idempotent: bool = False) -> BatchResult:
        """POST a batch Bundle to [base]; the result of every entry (:class:`BatchResult`).

        Entries fail on their own (their ``error`` is set; nothing is raised for them). With
        ``idempotent=True`` (only for a Bundle that :func:`is_idempotent_bundle` accepts, else ValueError)
        the whole batch is retried after a retryable status or a lost answer, and the entries that failed
        with a retryable status (408, 429, 5xx) under an outer 200 are sent again, alone, after a backoff
        (or the outer ``Retry-After``), up to ``max_tries`` rounds in all.
        """
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "batch":
            raise ValueError("batch needs a Bundle of type 'batch'")
        if idempotent:
            _require_idempotent(bundle, "batch")
        entries = list(bundle.get("entry") or [])
        results: dict[int, BatchEntryResult] = {}
        pending = list(range(len(entries)))
        rounds = 0
        while pending:
            rounds += 1
            sub = {"resourceType": "Bundle", "type": "batch", "entry": [entries[i] for i in pending]}
            resp = self.request(
                "POST", "", json=sub, headers={"Prefer": "return=representation"}, idempotent=idempotent
            )
            out = self._expect_resource(resp, "Bundle", "[base]")
            if out.get("type") != "batch-response":
                raise FhirError(resp.status, None, "FHIR batch: the answer is not a batch-response")
            got = out.get("entry") or []
            if len(got) != len(pending):
                raise FhirError(
                    resp.status,
                    None,
                    f"FHIR batch: {len(pending)} entries sent but {len(got)} responses received",
                )
            again = []
            for index, response_entry in zip(pending, got, strict=True):
                status, response = _entry_status(response_entry, "batch", index)
                error = _entry_error("batch", index, entries[index], status, response)
                resource = response_entry.get("resource") if isinstance(response_entry, Mapping) else None
                results[index] = BatchEntryResult(
                    index, status, response, resource if isinstance(resource, dict) else None, error, rounds
                )
                if error is not None and idempotent and status in self.retry.statuses:
                    again.append(index)
            if not again or rounds >= self.retry.max_tries:
                break
            pause = self.retry.delay(rounds, resp.retry_after, self._clock(), random.random())
            log.warning(
                "FHIR batch: %d of %d entries failed with a retryable status; round %d of %d in %.1f s",
                len(again), len(entries), rounds + 1, self.retry.max_tries, pause,
            )  # fmt: skip
            self._sleep(pause)
            pending = again
        return BatchResult(tuple(results[i] for i in range(len(entries))))

    # ---- helpers ----

    @staticmethod
    def _expect_resource(resp: FhirResponse, resource_type: str, where: str) -> JsonObject:
        body = resp.body
        if body is None or body.get("resourceType") != resource_type:
            raise FhirError(
                resp.status, None, f"FHIR {_path_shape(where)}: expected a {resource_type} in the answer"
            )
        return body

    @staticmethod
    def _check_search_outcomes(bundle: Mapping[str, Any], where: str, strict: bool) -> None:
        for entry in bundle.get("entry") or []:
            if not isinstance(entry, Mapping):
                continue
            search = entry.get("search")
            outcome = entry.get("resource")
            if not isinstance(search, Mapping) or search.get("mode") != "outcome":
                continue
            if not isinstance(outcome, dict):
                continue
            issues = [i for i in outcome.get("issue") or [] if isinstance(i, Mapping)]
            fatal = [i for i in issues if i.get("severity") in ("error", "fatal")]
            ignored = [i for i in issues if i.get("code") == "not-supported"]
            if fatal or (strict and ignored):
                summary = summarize_outcome(outcome)
                raise FhirError(200, outcome, f"FHIR {where}: the server reported: {summary}")
            if issues:
                log.warning("FHIR %s: the server returned %d warning(s)", where, len(issues))


def _matches(bundle: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The entries of a searchset whose ``search.mode`` is match (or absent)."""
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, Mapping):
            continue
        search = entry.get("search")
        if (search.get("mode", "match") if isinstance(search, Mapping) else "match") == "match":
            yield entry


def _entry_key(entry: Mapping[str, Any]) -> str | None:
    resource = entry.get("resource")
    if isinstance(resource, Mapping) and isinstance(resource.get("id"), str):
        return f"{resource.get('resourceType')}/{resource['id']}"
    full = entry.get("fullUrl")
    return full if isinstance(full, str) else None


def _page_key(url: str) -> str:
    """A paging link without the order of its query parameters (and without the fragment)."""
    parts = urlsplit(url)
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path}?{query}"


def _offset(url: str | None) -> int | None:
    if not url:
        return None
    for name, value in parse_qsl(urlsplit(url).query):
        if name in ("_offset", "_getpagesoffset") and value.isdigit():
            return int(value)
    return None


def _require_idempotent(bundle: Mapping[str, Any], kind: Literal["batch", "transaction"]) -> None:
    bad = non_idempotent_entries(bundle)
    if bad:
        shown = ", ".join(str(i) for i in bad[:10])
        raise ValueError(
            f"{kind} marked idempotent but entries {shown} are not idempotent by construction "
            "(a POST without ifNoneExist, a PATCH without ifMatch, or no request)"
        )


def _entry_status(entry: Any, kind: str, index: int) -> tuple[int, JsonObject]:
    response = entry.get("response") if isinstance(entry, Mapping) else None
    status = response.get("status") if isinstance(response, dict) else None
    code = str(status).split(" ", 1)[0] if isinstance(status, str) else ""
    if not isinstance(response, dict) or not code.isdigit():
        raise FhirError(200, None, f"FHIR {kind}: response entry {index} has no readable status")
    return int(code), response


def _entry_error(
    kind: str, index: int, request_entry: Any, status: int, response: Mapping[str, Any]
) -> FhirError | None:
    if 200 <= status < 300 or status == 304:
        return None
    request = request_entry.get("request") if isinstance(request_entry, Mapping) else None
    method = str(request.get("method", "?")).upper() if isinstance(request, Mapping) else "?"
    url = str(request.get("url", "")) if isinstance(request, Mapping) else ""
    outcome = response.get("outcome")
    outcome = (
        outcome if isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome" else None
    )
    summary = summarize_outcome(outcome) or "no OperationOutcome"
    message = f"FHIR {kind} entry {index} ({method} {_path_shape(url)}): HTTP {status}: {summary}"
    return error_class(status)(status, outcome, message)


def _query(query: str | Params) -> str:
    if isinstance(query, str):
        return query.lstrip("?")
    return urlencode(_param_list(query))


def _parse(content: bytes) -> tuple[Any, bool]:
    """(parsed JSON or None, whether the body was empty or valid JSON)."""
    if not content.strip():
        return None, True
    try:
        return orjson.loads(content), True
    except orjson.JSONDecodeError:
        return None, False


def _kind(exc: BaseException) -> str:
    """The exception's class (and its cause's), never its text: requests puts the full URL in messages."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(reason, BaseException):
        return f"{type(exc).__name__}/{type(reason).__name__}"
    return type(exc).__name__
