"""A small FHIR R4 REST client: the adapter's only code that talks to a FHIR server.

One method, :meth:`FhirClient.request`, performs HTTP. It sends and accepts ``application/fhir+json``, always
passes a timeout, never follows redirects, and turns every non-2xx answer into a typed :class:`FhirError`
that keeps the server's OperationOutcome (``exc.outcome``). The thin methods on top (read, search, create,
update, transaction, ...) only build requests and check the shape of what comes back.

Privacy rules, because requests carry patient data:

- exception messages never contain a request body, a query string or a literal reference's id; the
  summary of the server's OperationOutcome is scrubbed of ``Type/id`` references, query strings and
  token values (``system|value``). The complete OperationOutcome stays available on ``exc.outcome``.
- the ``adapter.fhir`` logger logs at INFO or above only the method, a path *shape* such as
  ``Patient/[id]`` and the status; DEBUG adds the request path (with ids, still without the query).
- the bearer token is never logged and never appears in ``repr()``; requests to URLs outside
  ``base_url`` (e.g. a paging link pointing elsewhere) are refused so the token cannot leak.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias
from urllib.parse import urlencode, urlsplit

import orjson
import requests

from adapter.errors import AdapterError, ExitCode

__all__ = [
    "DEFAULT_MAX_PAGES",
    "DEFAULT_TIMEOUT",
    "FHIR_JSON",
    "FhirBadRequest",
    "FhirClient",
    "FhirConflict",
    "FhirError",
    "FhirMultipleMatches",
    "FhirNotFound",
    "FhirPreconditionFailed",
    "FhirResponse",
    "FhirServerError",
    "FhirTransportError",
    "FhirUnauthorized",
    "FhirUnprocessable",
    "summarize_outcome",
]

log = logging.getLogger("adapter.fhir")

FHIR_JSON: Final = "application/fhir+json"
DEFAULT_TIMEOUT: Final[tuple[float, float]] = (5.0, 60.0)  # (connect, read) seconds
DEFAULT_MAX_PAGES: Final = 100

JsonObject: TypeAlias = dict[str, Any]
Params: TypeAlias = Mapping[str, str] | Sequence[tuple[str, str]]
Timeout: TypeAlias = float | tuple[float, float]

_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_MAX_ISSUES = 3
_MAX_DIAGNOSTICS = 200


# ---------------------------------------------------------------------------------------------------------
# errors


class FhirError(AdapterError):
    """A FHIR interaction failed. ``status`` is the HTTP status (None when there was no usable answer),
    ``outcome`` the server's OperationOutcome when it sent one."""

    exit_code = ExitCode.FHIR_SERVER

    def __init__(self, status: int | None, outcome: JsonObject | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


class FhirBadRequest(FhirError):  # noqa: N818 - named after the HTTP status
    """400: the server could not use the request (invalid resource, unknown search parameter, ...)."""


class FhirUnauthorized(FhirError):  # noqa: N818 - named after the HTTP status
    """401 or 403: missing, invalid or insufficient credentials."""


class FhirNotFound(FhirError):  # noqa: N818 - named after the HTTP status
    """404 (unknown resource, type or operation) or 410 (deleted)."""


class FhirConflict(FhirError):  # noqa: N818 - named after the HTTP status
    """409: e.g. a version conflict or a duplicate."""


class FhirPreconditionFailed(FhirError):  # noqa: N818 - named after the HTTP status
    """412: a stale If-Match, or conditional criteria that matched more than one resource."""


class FhirUnprocessable(FhirError):  # noqa: N818 - named after the HTTP status
    """422: the server understood the resource but rejects it (business rules, profiles)."""


class FhirServerError(FhirError):
    """5xx: the server failed."""


class FhirTransportError(FhirError):
    """No HTTP answer: connection refused or reset, DNS failure, TLS failure or timeout (status is None)."""


class FhirMultipleMatches(FhirError):  # noqa: N818 - named after the HTTP status
    """A search that must find at most one resource found more (status is None: not an HTTP error)."""


_STATUS_ERRORS: Final[dict[int, type[FhirError]]] = {
    400: FhirBadRequest,
    401: FhirUnauthorized,
    403: FhirUnauthorized,
    404: FhirNotFound,
    410: FhirNotFound,
    409: FhirConflict,
    412: FhirPreconditionFailed,
    422: FhirUnprocessable,
}


def _error_class(status: int) -> type[FhirError]:
    if status >= 500:
        return FhirServerError
    return _STATUS_ERRORS.get(status, FhirError)


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


# ---------------------------------------------------------------------------------------------------------
# client


class FhirClient:
    """A FHIR R4 REST client for one server (``base_url``, e.g. ``https://host/fhir``).

    ``session`` may be injected (tests, connection pooling, proxies, TLS settings); a session the client
    created itself is closed by :meth:`close`. ``auth`` is a bearer token. ``headers`` are added to every
    request. ``timeout`` is (connect, read) seconds or one number for both; there is always one.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        auth: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("base_url must be an http(s) URL without query or fragment")
        if timeout is None or (isinstance(timeout, tuple) and None in timeout):
            raise ValueError("a timeout is required")
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.timeout: Timeout = timeout
        self.max_pages = max_pages
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self._headers: dict[str, str] = {"Accept": FHIR_JSON}
        self._headers.update(headers or {})
        if auth:
            self._headers["Authorization"] = f"Bearer {auth}"
        base = urlsplit(self.base_url)
        self._scheme, self._netloc, self._base_path = base.scheme.lower(), base.netloc.lower(), base.path

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

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Params | None = None,
        json: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> FhirResponse:
        """Send one request to ``base_url/path`` (or to an absolute URL under ``base_url``).

        Returns the 2xx answer; raises a :class:`FhirError` subclass for anything else.
        """
        method = method.upper()
        url, relative = self._resolve(path_or_url)
        shape = _path_shape(relative)
        sent = dict(self._headers)
        data: bytes | None = None
        if json is not None:
            data = orjson.dumps(json)
            sent["Content-Type"] = FHIR_JSON
        sent.update(headers or {})
        log.debug("FHIR %s %s", method, urlsplit(url).path)
        try:
            resp = self.session.request(
                method,
                url,
                params=_param_list(params) or None,
                data=data,
                headers=sent,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            log.warning("FHIR %s %s: timed out", method, shape)
            raise FhirTransportError(
                None, None, f"FHIR {method} {shape}: no answer from {self._netloc} in time ({_kind(exc)})"
            ) from None
        except requests.RequestException as exc:
            log.warning("FHIR %s %s: transport failure (%s)", method, shape, _kind(exc))
            raise FhirTransportError(
                None, None, f"FHIR {method} {shape}: cannot reach {self._netloc} ({_kind(exc)})"
            ) from None
        with resp:
            status = resp.status_code
            body, parsed = _parse(resp.content)
            log.debug("FHIR %s %s -> %d", method, urlsplit(url).path, status)
            if 200 <= status < 300:
                if not parsed or (body is not None and not isinstance(body, dict)):
                    raise FhirError(
                        status,
                        None,
                        f"FHIR {method} {shape}: HTTP {status} with a body that is not a JSON object",
                    )
                return FhirResponse(
                    status=status,
                    body=body,
                    etag=resp.headers.get("ETag"),
                    location=resp.headers.get("Location") or resp.headers.get("Content-Location"),
                    last_modified=resp.headers.get("Last-Modified"),
                )
            is_outcome = isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"
            outcome = body if is_outcome else None
            log.warning("FHIR %s %s: HTTP %d", method, shape, status)
            summary = summarize_outcome(outcome) or (resp.reason or "no OperationOutcome")
            raise _error_class(status)(status, outcome, f"FHIR {method} {shape}: HTTP {status}: {summary}")

    def _resolve(self, path_or_url: str) -> tuple[str, str]:
        """(absolute URL, path relative to the base). Absolute URLs must lie under base_url."""
        if "://" not in path_or_url:
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

    # ---- thin interactions ----

    def capabilities(self) -> JsonObject:
        """GET [base]/metadata: the server's CapabilityStatement."""
        return self._expect_resource(self.request("GET", "metadata"), "CapabilityStatement", "metadata")

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
        Raises :class:`FhirError` when paging loops (a repeated ``next`` link) or passes ``max_pages``.
        """
        _check_type(resource_type)
        headers = {"Prefer": "handling=strict"} if strict else None
        resp = self.request("GET", resource_type, params=params, headers=headers)
        seen: set[str] = set()
        pages = 0
        while True:
            bundle = self._expect_resource(resp, "Bundle", resource_type)
            self._check_search_outcomes(bundle, resource_type, strict)
            yield bundle
            pages += 1
            links: dict[str, str] = {}
            for link in bundle.get("link") or []:
                if isinstance(link, Mapping) and isinstance(link.get("url"), str):
                    links[str(link.get("relation"))] = link["url"]
            if "self" in links:
                seen.add(links["self"])
            next_url = links.get("next")
            if next_url is None:
                return
            if next_url in seen:
                raise FhirError(None, None, f"FHIR search {resource_type}: the server repeated a page link")
            if pages >= self.max_pages:
                raise FhirError(None, None, f"FHIR search {resource_type}: more than {self.max_pages} pages")
            seen.add(next_url)
            resp = self.request("GET", next_url, headers=headers)

    def search(
        self, resource_type: str, params: Params | None = None, *, strict: bool = True
    ) -> Iterator[JsonObject]:
        """Every matching resource over all pages (``search.mode`` match; includes and outcomes skipped)."""
        for bundle in self.search_pages(resource_type, params, strict=strict):
            for entry in bundle.get("entry") or []:
                if not isinstance(entry, Mapping):
                    continue
                search = entry.get("search")
                mode = search.get("mode", "match") if isinstance(search, Mapping) else "match"
                resource = entry.get("resource")
                if mode == "match" and isinstance(resource, dict):
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

    def create(self, resource: Mapping[str, Any], if_none_exist: str | Params | None = None) -> FhirResponse:
        """POST [base]/Type. With ``if_none_exist`` (search criteria without '?') a server that finds one
        match answers 200 with that resource instead of creating (201)."""
        rtype = _type_of(resource)
        headers = {"Prefer": "return=representation"}
        if if_none_exist is not None:
            headers["If-None-Exist"] = _query(if_none_exist)
        return self.request("POST", rtype, json=resource, headers=headers)

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

    def transaction(self, bundle: Mapping[str, Any]) -> JsonObject:
        """POST a transaction Bundle to [base]; returns the transaction-response Bundle (one response
        entry per request entry, in the same order)."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise ValueError("transaction needs a Bundle of type 'transaction'")
        resp = self.request("POST", "", json=bundle, headers={"Prefer": "return=representation"})
        out = self._expect_resource(resp, "Bundle", "[base]")
        if out.get("type") != "transaction-response":
            raise FhirError(resp.status, None, "FHIR transaction: the answer is not a transaction-response")
        sent, got = len(bundle.get("entry") or []), len(out.get("entry") or [])
        if sent != got:
            raise FhirError(
                resp.status, None, f"FHIR transaction: {sent} entries sent but {got} responses received"
            )
        return out

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
    def _check_search_outcomes(bundle: Mapping[str, Any], resource_type: str, strict: bool) -> None:
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
                raise FhirError(200, outcome, f"FHIR search {resource_type}: the server reported: {summary}")
            if issues:
                log.warning("FHIR search %s: the server returned %d warning(s)", resource_type, len(issues))


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
