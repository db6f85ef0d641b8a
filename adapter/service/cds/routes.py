"""The CDS Hooks 2.0 endpoints (docs/cds-hooks.md):

- ``GET /cds-services``: discovery (no authentication: it describes the services and holds no data);
- ``POST /cds-services/{id}``: a hook call. The EHR's JWT is verified first (``verify_cds_jwt``: a refused
  caller costs no parsing and no evaluation), then the body is read and the call runs in a worker thread in
  one of the worker's evaluation slots. A retried call (same issuer, service and ``hookInstance``, same
  ``hook`` and ``context``) gets the first call's answer from the idempotency store; the same
  ``hookInstance`` with another context is 422. Only answers with cards are kept: a 412 (data that could
  not be obtained) is computed again on a retry, when the data may have become obtainable;
- ``POST /cds-services/{id}/feedback``: feedback, JWT-verified, stored in the feedback database;
- ``GET /cds-services/{id}/summary/{token}``: the regimen summary (HTML) of one call, which the cards link
  to. It is opened in the clinician's browser, which carries no EHR JWT, so the URL itself is the
  credential: 256 random bits, valid :data:`SUMMARY_LINK_TTL_S` seconds, served ``no-store`` with
  ``Referrer-Policy: no-referrer`` and a Content-Security-Policy that allows no script and no remote load.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from typing import Any, Final

import anyio
import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from adapter.safe_text import patient_tag
from adapter.service.cds.discovery import CdsService, services
from adapter.service.cds.feedback import FeedbackStore, parse_feedback
from adapter.service.cds.hook import parse_request, run_hook, today_of
from adapter.service.cds.prefetch import PreconditionFailedError
from adapter.service.deps import ServiceDeps
from adapter.service.errors import BadRequestError, ServiceError
from adapter.service.idempotency import Reply, run_idempotent
from adapter.service.security import AuthError, verify_cds_jwt
from adapter.service.store import StoredResponse
from adapter.service.work import guarded
from adapter.summary.render import render_summary

JSON: Final = "application/json"
SUMMARY_LINK_TTL_S: Final = 8 * 3600
FEEDBACK_KEY: Final = "cds.feedback"
_SUMMARY_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'self'",
}


class _NotKept(Exception):  # noqa: N818 - a signal through run_idempotent
    """An answer that must not be kept for the hookInstance (412: the data may be obtainable later)."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.text)
        self.error = error


def feedback_store(deps: ServiceDeps) -> FeedbackStore:
    store = deps.extras.get(FEEDBACK_KEY)
    if store is None:
        store = FeedbackStore(deps.config.feedback_db)
        deps.extras[FEEDBACK_KEY] = store
        if deps.config.feedback_db is None:
            deps.log.warning("cds feedback kept in memory only: set feedback_db to keep it")
    assert isinstance(store, FeedbackStore)
    return store


def hook_fingerprint(body: Any) -> str:
    """What makes a retry the same call: the hook and its context (not the prefetch or the token, which
    a client may renew between tries)."""
    if not isinstance(body, dict):
        return ""
    payload = {"hook": body.get("hook"), "context": body.get("context")}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


#: how a stored summary link keeps its evaluation (rendered to HTML when the link is opened)
EVALUATION = "application/x-ino-evaluation+json"


def _summary_key(token: str) -> str:
    return "cds-summary:" + hashlib.sha256(token.encode()).hexdigest()


def build_router(deps: ServiceDeps) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    tables = {name: rules.tables for name, rules in deps.rules.items()}
    offered = services(tables, deps.config.protocol)
    by_id: dict[str, CdsService] = {s.id: s for s in offered}
    discovery = orjson.dumps({"services": [s.as_json() for s in offered]})
    store = feedback_store(deps)

    def service_of(service_id: str) -> CdsService:
        service = by_id.get(service_id)
        if service is None:
            raise ServiceError(404, "no CDS service with this id", "not-found")
        return service

    async def authenticate(request: Request, path: str) -> dict[str, Any]:
        try:
            return await anyio.to_thread.run_sync(verify_cds_jwt, request, path, deps)
        except AuthError as exc:
            deps.log.warning("cds auth refused", reason=exc.text, status=exc.status)
            raise

    def parse_json(raw: bytes) -> Any:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequestError("the body is not JSON") from None

    @router.get("/cds-services")
    async def discover() -> Response:
        return Response(discovery, media_type=JSON)

    @router.post("/cds-services/{service_id}")
    async def call(request: Request, service_id: str) -> Response:
        service = service_of(service_id)
        claims = await authenticate(request, service.path)
        raw = await request.body()

        def compute(body: Any) -> Reply:
            hook = parse_request(service, body)
            now = deps.now()
            setup = deps.setup(service.protocol, today_of(now))
            token = secrets.token_urlsafe(32)
            url = f"{deps.config.public_url}{service.path}/summary/{token}"
            started = time.perf_counter()
            try:
                result = run_hook(service, hook, setup, now, deps.fhir_client, url)
            except PreconditionFailedError as exc:
                deps.log.warning("cds 412", service=service.id, reason=exc.text)
                raise _NotKept(exc) from None
            if result.summary_evaluation is not None:
                deps.idempotency.put(
                    _summary_key(token),
                    StoredResponse(
                        200,
                        orjson.dumps(result.summary_evaluation),
                        EVALUATION,
                        (("x-expires", str(time.time() + SUMMARY_LINK_TTL_S)),),
                    ),
                )
            try:
                store.record_cards(
                    result.cards,
                    service_id=service.id,
                    hook=service.hook,
                    protocol=service.protocol,
                    hook_instance=hook.hook_instance,
                    issuer=str(claims.get("iss")),
                    issued_at=now,
                )
            except sqlite3.Error as exc:  # bookkeeping must not withhold the cards
                deps.log.error("cds cards not recorded", error=type(exc).__name__)
            deps.log.info(
                "cds hook",
                service=service.id,
                patient=patient_tag(f"Patient/{hook.patient_id}"),
                orders=result.orders,
                cards=len(result.cards),
                critical=sum(c["indicator"] == "critical" for c in result.cards),
                prefetch=",".join(f"{k}:{v}" for k, v in sorted((result.how or {}).items())),
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
            return Reply(200, orjson.dumps({"cards": result.cards}), JSON)

        def run() -> Response:
            body = parse_json(raw)
            instance = body.get("hookInstance") if isinstance(body, dict) else None
            if not isinstance(instance, str) or not instance or len(instance) > 128:
                raise BadRequestError("hookInstance must be a string (a UUID)")
            scope = f"cds:{claims.get('iss')}|{service.id}"
            try:
                return run_idempotent(
                    deps,
                    scope,
                    instance,
                    hook_fingerprint(body),
                    lambda: guarded(deps, lambda: compute(body)),
                )
            except _NotKept as signal:
                raise signal.error from None

        return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)

    @router.post("/cds-services/{service_id}/feedback")
    async def feedback(request: Request, service_id: str) -> Response:
        service = service_of(service_id)
        claims = await authenticate(request, f"{service.path}/feedback")
        raw = await request.body()

        def run() -> Response:
            items = parse_feedback(parse_json(raw))
            new = store.record_feedback(
                items, service_id=service.id, issuer=str(claims.get("iss")), received_at=deps.now()
            )
            deps.log.info("cds feedback", service=service.id, items=len(items), new=new)
            return Response(b"{}", media_type=JSON)

        return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)

    @router.get("/cds-services/{service_id}/summary/{token}")
    async def summary(service_id: str, token: str) -> Response:
        service = service_of(service_id)
        if not 20 <= len(token) <= 100:
            raise ServiceError(404, "no such summary (or it expired)", "not-found")
        stored = await anyio.to_thread.run_sync(deps.idempotency.get, _summary_key(token))
        expires = dict(stored.headers).get("x-expires") if stored is not None else None
        if (
            stored is None
            or expires is None
            or float(expires) < time.time()
            or stored.media_type != EVALUATION
        ):
            raise ServiceError(404, "no such summary (or it expired)", "not-found")

        def render() -> bytes:
            evaluation = orjson.loads(stored.body)
            template_dir = deps.setup(service.protocol, today_of(deps.now())).settings.template_dir
            return render_summary(evaluation, "html", template_dir=template_dir).encode()

        html = await anyio.to_thread.run_sync(render)
        return Response(html, media_type="text/html; charset=utf-8", headers=_SUMMARY_HEADERS)

    return router
