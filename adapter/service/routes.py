"""The REST and FHIR endpoints (docs/service.md) and the health checks.

Every protected endpoint: the caller is authenticated first (adapter.service.security; a refused caller
costs no parsing and no evaluation), then the body is read (within ``max_request_bytes``) and parsed, then
the work runs in a worker thread within the worker's evaluation slots (adapter.service.work). With an
``Idempotency-Key`` header the answer is kept and a retry gets it back (adapter.service.idempotency).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Final

import anyio
import orjson
from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from adapter.protocols import VARIANTS
from adapter.service.deps import ServiceDeps
from adapter.service.errors import FHIR_JSON, BadRequestError, ServiceError, UnavailableError
from adapter.service.idempotency import Reply, fingerprint, run_idempotent
from adapter.service.openapi import errors, json_body
from adapter.service.operation import OPERATION_DEFINITION, parse_parameters, to_parameters
from adapter.service.security import AuthError, api_token_principal, bearer_token, verify_api_bearer
from adapter.service.work import (
    INCLUDES,
    Answers,
    check_order_items,
    evaluate_items,
    evaluate_on_server,
    guarded,
)

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
READY_CACHE_S: Final = 2.0
NDJSON: Final = "application/x-ndjson"

ProtocolQuery = Annotated[
    str | None,
    Query(
        description="Protocol variant (default: the service's protocol).",
        json_schema_extra={"enum": list(VARIANTS)},
    ),
]
AsOfQuery = Annotated[date | None, Query(alias="as-of", description="Evaluation date (default: today).")]
IncludeQuery = Annotated[
    str | None,
    Query(
        description="Comma-separated: bundle (the write-back transaction), summaries (HTML and Markdown).",
        pattern=r"^(bundle|summaries)(,(bundle|summaries))?$",
    ),
]

_EVALUATE_BODY: Final = {
    "description": "A Bundle, one resource, an array of resources, or "
    '{"resources": [...], "protocol": ..., "as_of": ..., "include": [...]}.',
    "oneOf": [
        {"$ref": "#/components/schemas/Resource"},
        {"type": "array", "items": {"$ref": "#/components/schemas/Resource"}},
        {
            "type": "object",
            "required": ["resources"],
            "additionalProperties": False,
            "properties": {
                "resources": {"type": "array", "items": {"$ref": "#/components/schemas/Resource"}},
                "protocol": {"type": "string", "enum": list(VARIANTS)},
                "as_of": {"type": "string", "format": "date"},
                "include": {"type": "array", "items": {"type": "string", "enum": sorted(INCLUDES)}},
            },
        },
    ],
}
_CHECK_BODY: Final = {
    "type": "object",
    "required": ["order", "context"],
    "additionalProperties": False,
    "properties": {
        "order": {"$ref": "#/components/schemas/Resource"},
        "context": {
            "description": "The patient's record: a Bundle, one resource or an array of resources.",
            "oneOf": [
                {"$ref": "#/components/schemas/Resource"},
                {"type": "array", "items": {"$ref": "#/components/schemas/Resource"}},
            ],
        },
        "protocol": {"type": "string", "enum": list(VARIANTS)},
        "as_of": {"type": "string", "format": "date"},
        "include": {"type": "array", "items": {"type": "string", "enum": ["bundle"]}},
    },
}
_PARAMETERS: Final = {"$ref": "#/components/schemas/Parameters"}
_IDEMPOTENCY_HEADER: Final = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A retried request with the same key gets the first answer; nothing is written twice.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}
_SECURE: Final[dict[str, Any]] = {"security": [{"bearer": []}]}


def _extra(body: dict[str, Any], *, required: bool = True, fhir: bool = True) -> dict[str, Any]:
    return {**json_body(body, required=required, fhir=fhir), **_SECURE, "parameters": [_IDEMPOTENCY_HEADER]}


def _ok(schema: dict[str, Any], media: str = "application/json", **more: Any) -> dict[int | str, Any]:
    return {200: {"description": "The answer.", "content": {media: {"schema": schema}, **more}}}


# ---------------------------------------------------------------------------------------------------------
# request bodies


def parse_json(body: bytes, content_type: str | None) -> Any:
    if content_type is not None and "json" not in content_type.lower():
        raise ServiceError(
            415, "the body must be JSON (application/json or application/fhir+json)", "not-supported"
        )
    if not body.strip():
        raise BadRequestError("the body is empty; a JSON document is required")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequestError("the body is not valid JSON") from None


def _include(values: Any) -> frozenset[str]:
    if values is None:
        return frozenset()
    if not isinstance(values, list) or not all(isinstance(v, str) and v in INCLUDES for v in values):
        raise BadRequestError(f"include must be a list of {', '.join(sorted(INCLUDES))}")
    return frozenset(values)


def _as_of(value: Any) -> date | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequestError("as_of must be a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequestError("as_of must be a date (YYYY-MM-DD)") from None


def _one(name: str, query: Any, body: Any) -> Any:
    if query is not None and body is not None and query != body:
        raise BadRequestError(f"{name} is given in the query and in the body, differently")
    return body if body is not None else query


def _resources(value: Any, what: str) -> list[Any]:
    """A Bundle or resource (one item) or a list of them."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        return [value]
    raise BadRequestError(f"{what} must be a FHIR resource, a Bundle or an array of resources")


_ENVELOPE_KEYS: Final = frozenset({"resources", "protocol", "as_of", "include"})


def parse_evaluate_body(doc: Any) -> tuple[list[Any], dict[str, Any]]:
    if isinstance(doc, dict) and "resourceType" not in doc:
        extra = sorted(set(doc) - _ENVELOPE_KEYS)
        if extra:
            raise BadRequestError(f"unknown key {extra[0]!r} (resources, protocol, as_of, include)")
        if "resources" not in doc:
            raise BadRequestError("resources is required")
        return _resources(doc["resources"], "resources"), doc
    return _resources(doc, "the body"), {}


# ---------------------------------------------------------------------------------------------------------
# answers


def _evaluation_reply(answers: Answers, include: frozenset[str], fmt: str) -> Reply:
    items: list[Any] = []
    for a in answers.patients:
        if not include:
            items.append(a.evaluation)
            continue
        item: dict[str, Any] = {"evaluation": a.evaluation}
        if a.outcome is not None and "bundle" in include:
            item["bundle"] = a.outcome.plan.bundle
        if a.outcome is not None and "summaries" in include:
            item["summaries"] = dict(a.outcome.summaries)
        items.append(item)
    headers = {"X-Patients": str(len(items))}
    if fmt == "ndjson":
        return Reply(200, b"".join(orjson.dumps(i) + b"\n" for i in items), NDJSON, headers)
    if fmt == "text":
        from adapter.render_text import render_text

        return Reply(
            200,
            render_text([a.evaluation for a in answers.patients]).encode(),
            "text/plain; charset=utf-8",
            headers,
        )
    payload = items[0] if len(items) == 1 else items
    return Reply(200, orjson.dumps(payload), "application/json", headers)


def _fhir_reply(doc: dict[str, Any]) -> Reply:
    return Reply(200, orjson.dumps(doc), FHIR_JSON)


# ---------------------------------------------------------------------------------------------------------
# the router


def build_router(deps: ServiceDeps) -> APIRouter:
    router = APIRouter()
    ready_cache: dict[str, Any] = {"at": float("-inf"), "fault": None}

    async def authenticate(request: Request) -> dict[str, Any]:
        try:
            # a listed token is checked here (a hash); a JWT may need its issuer's keys: in a thread
            principal = api_token_principal(bearer_token(request), deps)
            if principal is not None:
                return principal
            return await anyio.to_thread.run_sync(verify_api_bearer, request, deps)
        except AuthError as exc:
            deps.log.warning("auth refused", reason=exc.text, status=exc.status)
            raise

    async def protected(request: Request, work: Callable[[bytes], Reply]) -> Response:
        """Authenticate, read the body, run ``work(body)`` in a thread in an evaluation slot, idempotently
        when the request has an Idempotency-Key."""
        principal = await authenticate(request)
        body = await request.body()
        key = request.headers.get("idempotency-key")

        def compute() -> Reply:
            return guarded(deps, lambda: work(body))

        def run() -> Response:
            if key is None:
                return compute().response()
            who = principal.get("id") or principal.get("iss")
            scope = f"{principal['kind']}:{who}|{request.url.path}"
            fp = fingerprint(request.method, request.url.path, list(request.query_params.multi_items()), body)
            return run_idempotent(deps, scope, key, fp, compute)

        return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)

    # -- health ------------------------------------------------------------------------------------
    @router.get(
        "/health",
        summary="Liveness: the process answers.",
        responses=_ok({"type": "object", "properties": {"status": {"type": "string"}}}),
    )
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    def readiness() -> str | None:
        if set(deps.rules) != set(VARIANTS):
            return "the protocol tables are not loaded"
        if deps.state is not None:
            try:
                deps.state.check()
            except Exception:
                return "the state database cannot be used"
        if deps.server is not None:
            try:
                deps.server.capabilities(refresh=True)
            except Exception:
                return "the FHIR server does not answer"
        return None

    @router.get(
        "/ready",
        summary="Readiness: the tables are loaded and the FHIR server (when configured) answers.",
        responses={
            **_ok({"type": "object", "properties": {"status": {"type": "string"}}}),
            **errors(503),
        },
    )
    async def ready() -> Response:
        now = time.monotonic()
        if now - ready_cache["at"] >= READY_CACHE_S:
            ready_cache["fault"] = await anyio.to_thread.run_sync(readiness, abandon_on_cancel=True)
            ready_cache["at"] = now
        if ready_cache["fault"] is not None:
            raise UnavailableError(f"not ready: {ready_cache['fault']}", 10)
        return Response(b'{"status":"ready"}', media_type="application/json")

    # -- POST /evaluate ------------------------------------------------------------------------------
    @router.post(
        "/evaluate",
        summary="Evaluate every patient in the body (the evaluation JSON contract, docs/contract.md).",
        description="One object for one patient, an array for several. With include, each item is "
        '{"evaluation", "bundle"?, "summaries"?}. format=ndjson gives one line per patient, format=text '
        "the readable text of `ino-adapter evaluate --format text`.",
        openapi_extra=_extra(_EVALUATE_BODY),
        responses={
            200: {
                "description": "The evaluation(s).",
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/Evaluation"},
                                {"$ref": "#/components/schemas/EvaluationWithOutputs"},
                                {"type": "array", "items": {"type": "object"}},
                            ]
                        }
                    },
                    NDJSON: {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
            **errors(400, 401, 409, 413, 415, 422, 503),
        },
    )
    async def evaluate(
        request: Request,
        protocol: ProtocolQuery = None,
        as_of: AsOfQuery = None,
        include: IncludeQuery = None,
        format: Annotated[
            str, Query(pattern="^(json|ndjson|text)$", description="json, ndjson or text.")
        ] = "json",
    ) -> Response:
        def work(body: bytes) -> Reply:
            items, env = parse_evaluate_body(parse_json(body, request.headers.get("content-type")))
            wanted = _include(env.get("include")) | (
                frozenset(include.split(",")) if include else frozenset()
            )
            if wanted and format == "text":
                raise BadRequestError("format=text cannot include the bundle or the summaries")
            name = _one("protocol", protocol, env.get("protocol"))
            if name is not None and not isinstance(name, str):
                raise BadRequestError("protocol must be a string")
            day = _one("as_of", as_of, _as_of(env.get("as_of"))) or date.today()
            answers = evaluate_items(deps, items, name, day, wanted)
            return _evaluation_reply(answers, wanted, format)

        return await protected(request, work)

    # -- POST /check-order ---------------------------------------------------------------------------
    @router.post(
        "/check-order",
        summary="Check an inotuzumab ozogamicin MedicationRequest against the plan (check-order).",
        description='Body: {"order": MedicationRequest, "context": the patient\'s record, "protocol"?, '
        '"as_of"?, "include"?: ["bundle"]}. as_of defaults to the order\'s dose date. With include=bundle '
        'the answer is {"check": ..., "bundle": the DetectedIssue transaction}.',
        openapi_extra=_extra(_CHECK_BODY),
        responses={**_ok({"type": "object"}), **errors(400, 401, 409, 413, 415, 422, 503)},
    )
    async def check_order(
        request: Request, protocol: ProtocolQuery = None, as_of: AsOfQuery = None
    ) -> Response:
        def work(body: bytes) -> Reply:
            doc = parse_json(body, request.headers.get("content-type"))
            if not isinstance(doc, dict) or "resourceType" in doc:
                raise BadRequestError('the body must be {"order": ..., "context": ...}')
            extra = sorted(set(doc) - {"order", "context", "protocol", "as_of", "include"})
            if extra:
                raise BadRequestError(f"unknown key {extra[0]!r} (order, context, protocol, as_of, include)")
            if "order" not in doc or "context" not in doc:
                raise BadRequestError("order and context are required")
            wanted = _include(doc.get("include"))
            if "summaries" in wanted:
                raise BadRequestError("check-order can include the bundle only")
            name = _one("protocol", protocol, doc.get("protocol"))
            if name is not None and not isinstance(name, str):
                raise BadRequestError("protocol must be a string")
            day = _one("as_of", as_of, _as_of(doc.get("as_of")))
            result, bundle = check_order_items(
                deps, doc["order"], _resources(doc["context"], "context"), name, day, "bundle" in wanted
            )
            payload = {"check": result, "bundle": bundle} if bundle is not None else result
            return Reply(200, orjson.dumps(payload), "application/json")

        return await protected(request, work)

    # -- FHIR ----------------------------------------------------------------------------------------
    @router.get(
        "/fhir/OperationDefinition/evaluate",
        summary="The OperationDefinition of $evaluate.",
        responses=_ok({"$ref": "#/components/schemas/Resource"}, FHIR_JSON),
    )
    async def operation_definition() -> Response:
        return Response(orjson.dumps(OPERATION_DEFINITION), media_type=FHIR_JSON)

    @router.post(
        "/fhir/$evaluate",
        summary="FHIR operation $evaluate (system level): Parameters in (resource/bundle, protocol, asOf, "
        "include), Parameters out (one evaluation per patient).",
        openapi_extra=_extra(_PARAMETERS),
        responses={**_ok(_PARAMETERS, FHIR_JSON), **errors(400, 401, 409, 413, 415, 422, 503)},
    )
    async def fhir_evaluate(request: Request) -> Response:
        def work(body: bytes) -> Reply:
            op = parse_parameters(parse_json(body, request.headers.get("content-type")), instance=False)
            if not op.items:
                raise BadRequestError("give the patients' resources as resource or bundle parameters")
            answers = evaluate_items(deps, op.items, op.protocol, op.as_of or date.today(), op.include)
            return _fhir_reply(to_parameters(answers, op.include))

        return await protected(request, work)

    @router.post(
        "/fhir/Patient/{patient_id}/$evaluate",
        summary="FHIR operation $evaluate on a patient of the configured FHIR server; writeBack=true writes "
        "the result back (one transaction).",
        openapi_extra=_extra(_PARAMETERS, required=False),
        responses={**_ok(_PARAMETERS, FHIR_JSON), **errors(400, 401, 404, 409, 413, 415, 422, 502, 503)},
    )
    async def patient_evaluate(request: Request, patient_id: str) -> Response:
        def work(body: bytes) -> Reply:
            if not _ID.match(patient_id):
                raise BadRequestError("the patient id is not a FHIR id")
            if body.strip():
                op = parse_parameters(parse_json(body, request.headers.get("content-type")), instance=True)
            else:
                op = parse_parameters({"resourceType": "Parameters"}, instance=True)
            answers = evaluate_on_server(
                deps, patient_id, op.protocol, op.as_of or date.today(), op.include, op.write_back
            )
            return _fhir_reply(to_parameters(answers, op.include))

        return await protected(request, work)

    return router
