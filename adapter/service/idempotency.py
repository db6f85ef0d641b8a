"""Idempotent requests: a retried request (same ``Idempotency-Key`` header, or the same CDS ``hookInstance``)
gets the answer of the first, and whatever the first wrote is not written again.

    reply = run_idempotent(deps, scope, key, fingerprint, compute)

- ``scope`` names the caller and the endpoint (a key is only ever matched within them: one client cannot
  read another's answers by guessing keys); ``key`` the client's key; ``fingerprint`` the request (method,
  path, query, body: :func:`fingerprint`).
- The first request claims the key, computes, and keeps the answer when it is final: a success or a
  permanent 4xx. A 5xx/503 (e.g. the FHIR server unreachable) is not kept: the retry computes again.
- A retry of a finished request gets the kept answer (with ``Idempotent-Replayed: true``). A retry while the
  first is still in flight waits for it (up to ``wait_s``), then gets 409 ``Retry-After``.
- The same key with another request (another fingerprint) is a 422: never the other request's answer.

Answers are kept ``idempotency_ttl_s`` (24 h by default), at most ``idempotency_max_entries``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from starlette.responses import Response

from adapter.service.deps import ServiceDeps
from adapter.service.errors import FHIR_JSON, ServiceError, operation_outcome
from adapter.service.store import StoredResponse

MAX_KEY_CHARS = 255
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer a route computed: status, body bytes, media type, extra headers."""

    status: int
    body: bytes
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    def response(self, replayed: bool = False) -> Response:
        headers = dict(self.headers)
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        return Response(self.body, status_code=self.status, media_type=self.media_type, headers=headers)

    @classmethod
    def of_error(cls, exc: ServiceError) -> Reply:
        body = orjson.dumps(operation_outcome(exc.code or "exception", exc.text))
        return cls(exc.status, body, FHIR_JSON, exc.headers)


def fingerprint(method: str, path: str, query: Sequence[tuple[str, str]], body: bytes) -> str:
    """What identifies a request for idempotency: method, path, sorted query and the body's SHA-256."""
    h = hashlib.sha256()
    h.update(orjson.dumps([method.upper(), path, sorted(query)]))
    h.update(b"\x00")
    h.update(body)
    return h.hexdigest()


def check_key(key: str) -> str:
    """A client's key must be 1-255 visible ASCII characters (400 otherwise)."""
    if not key or len(key) > MAX_KEY_CHARS or not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise ServiceError(400, "Idempotency-Key must be 1-255 visible ASCII characters", "invalid")
    return key


def store_key(scope: str, key: str) -> str:
    return hashlib.sha256(f"{scope}\x1f{key}".encode()).hexdigest()


def _replay(stored: StoredResponse, fp: str) -> Response | None:
    if stored.fingerprint != fp:
        return None
    return Reply(stored.status, stored.body, stored.media_type, dict(stored.headers)).response(replayed=True)


def _computed(compute: Callable[[], Reply]) -> Reply:
    try:
        return compute()
    except ServiceError as exc:
        return Reply.of_error(exc)


def run_idempotent(
    deps: ServiceDeps,
    scope: str,
    key: str,
    fp: str,
    compute: Callable[[], Reply],
    *,
    wait_s: float | None = None,
    on_mismatch: Literal["refuse", "recompute"] = "refuse",
    sleep: Callable[[float], None] = time.sleep,
) -> Response:
    """``compute()`` once per (scope, key); see the module docstring. Blocking: call it from a thread.

    ``on_mismatch="recompute"``: a key seen with another request is answered by computing afresh (not
    kept) instead of 422."""
    store = deps.idempotency
    skey = store_key(scope, check_key(key))
    hold = deps.config.request_timeout_s * 2

    def replay(stored: StoredResponse) -> Response:
        answer = _replay(stored, fp)
        if answer is not None:
            return answer
        if on_mismatch == "recompute":
            return _computed(compute).response()
        raise ServiceError(422, "this Idempotency-Key was used for a different request", "business-rule")

    stored = store.get(skey)
    if stored is not None:
        return replay(stored)
    if not store.claim(skey, hold):
        deadline = time.monotonic() + (deps.config.request_timeout_s if wait_s is None else wait_s)
        while time.monotonic() < deadline:
            sleep(0.05)
            stored = store.get(skey)
            if stored is not None:
                return replay(stored)
        raise ServiceError(
            409, "a request with this Idempotency-Key is still in progress", "conflict", {"Retry-After": "1"}
        )
    try:
        reply = _computed(compute)
    except BaseException:
        store.release(skey)
        raise
    if reply.status < 500:
        store.put(
            skey, StoredResponse(reply.status, reply.body, reply.media_type, tuple(reply.headers.items()), fp)
        )
    else:
        store.release(skey)
    return reply.response()


def run_for_hook(
    deps: ServiceDeps,
    claims: Mapping[str, Any],
    service_path: str,
    hook_instance: str,
    body: bytes,
    compute: Callable[[], Reply],
) -> Response:
    """A CDS Hooks call made idempotent by its ``hookInstance``: a retry of the same call (same issuer,
    service and body) gets the same cards without evaluating (or writing feedback) again. The same
    ``hookInstance`` with another body is answered afresh (EHRs are not required to make it unique)."""
    scope = f"cds:{claims.get('iss')}|{service_path}"
    fp = fingerprint("POST", service_path, [], body)
    return run_idempotent(deps, scope, hook_instance, fp, compute, on_mismatch="recompute")
