"""The OpenAPI 3 document of the non-CDS endpoints (served at ``/openapi.json``; checked in as
docs/openapi.json, which a test keeps equal to the served one).

Regenerate the checked-in copy after changing an endpoint::

    .venv/bin/python -m adapter.service.openapi > docs/openapi.json
"""

from __future__ import annotations

import sys
from typing import Any, Final

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from adapter.service.errors import FHIR_JSON

OUTCOME_REF: Final = {"$ref": "#/components/schemas/OperationOutcome"}
CDS_PREFIX: Final = "/cds-services"

DESCRIPTIONS: Final[dict[int, str]] = {
    400: "Unusable request: malformed JSON, not FHIR, an unknown protocol or parameter.",
    401: "No bearer token, or one that is not accepted.",
    403: "The caller may not do this.",
    404: "Unknown patient, or no FHIR server configured.",
    409: "The FHIR server's data changed while writing, or the same Idempotency-Key is in flight.",
    413: "The body is larger than max_request_bytes.",
    415: "The body is not JSON.",
    422: "The Idempotency-Key was used for a different request.",
    502: "The FHIR server refused the adapter's request.",
    503: "Try again later (Retry-After): overloaded, too slow, or the FHIR server unreachable.",
}

COMPONENTS: Final[dict[str, Any]] = {
    "schemas": {
        "OperationOutcome": {
            "type": "object",
            "description": "A FHIR R4 OperationOutcome: every error answer.",
            "required": ["resourceType", "issue"],
            "properties": {
                "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                "issue": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["severity", "code"],
                        "properties": {
                            "severity": {
                                "type": "string",
                                "enum": ["fatal", "error", "warning", "information"],
                            },
                            "code": {"type": "string"},
                            "diagnostics": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Resource": {
            "type": "object",
            "description": "A FHIR R4 resource (JSON).",
            "required": ["resourceType"],
            "properties": {"resourceType": {"type": "string"}},
        },
        "Evaluation": {
            "type": "object",
            "description": "The evaluation JSON of one patient (docs/contract.md, contract 1).",
            "required": ["contract", "patient", "protocol", "eligibility", "dose"],
            "properties": {
                "contract": {"type": "string"},
                "patient": {"type": "string"},
                "protocol": {"type": "string"},
                "as_of": {"type": "string", "format": "date"},
                "eligibility": {"type": "object"},
                "dose": {"type": "object"},
            },
        },
        "EvaluationWithOutputs": {
            "type": "object",
            "description": "With include: the evaluation, the write-back Bundle and the summaries.",
            "required": ["evaluation"],
            "properties": {
                "evaluation": {"$ref": "#/components/schemas/Evaluation"},
                "bundle": {"$ref": "#/components/schemas/Resource"},
                "summaries": {
                    "type": "object",
                    "properties": {"html": {"type": "string"}, "md": {"type": "string"}},
                },
            },
        },
        "Parameters": {
            "type": "object",
            "description": "A FHIR R4 Parameters resource.",
            "required": ["resourceType"],
            "properties": {
                "resourceType": {"type": "string", "enum": ["Parameters"]},
                "parameter": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    },
                },
            },
        },
    },
    "securitySchemes": {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token whose SHA-256 is in api_tokens_sha256, or an EHR's JWT (ES384/RS384) "
            "whose aud is base_url + /evaluate, /check-order or /fhir.",
        }
    },
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses (OperationOutcome bodies)."""
    return {
        s: {"description": DESCRIPTIONS.get(s, "Error."), "content": {FHIR_JSON: {"schema": OUTCOME_REF}}}
        for s in statuses
    }


def json_body(schema: dict[str, Any], *, required: bool = True, fhir: bool = True) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    if fhir:
        content[FHIR_JSON] = {"schema": schema}
    return {"requestBody": {"required": required, "content": content}}


def _strip_validation(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 validation answer for every parameterised route; the service answers 400
    (a 422 a route documents itself, with an OperationOutcome, is kept)."""
    for methods in schema.get("paths", {}).values():
        for op in methods.values():
            responses = op.get("responses", {}) if isinstance(op, dict) else {}
            if FHIR_JSON not in responses.get("422", {}).get("content", {FHIR_JSON: None}):
                responses.pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)


def _not_null(schema: dict[str, Any]) -> None:
    """An optional query parameter is absent, never null: ``anyOf [X, null]`` becomes X."""
    for methods in schema.get("paths", {}).values():
        for op in methods.values():
            for param in op.get("parameters", []) if isinstance(op, dict) else []:
                s = param.get("schema", {})
                branches = s.get("anyOf")
                if isinstance(branches, list) and {"type": "null"} in branches and len(branches) == 2:
                    (kept,) = [b for b in branches if b != {"type": "null"}]
                    del s["anyOf"]
                    s.update(kept)


def build_openapi(app: FastAPI) -> dict[str, Any]:
    routes = [r for r in app.routes if not str(getattr(r, "path", "")).startswith(CDS_PREFIX)]
    schema = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version="3.1.0",
        description=(
            "The ino-adapter HTTP service: evaluation and order checks for integration engines, and the "
            "FHIR operation $evaluate (docs/service.md). Every error body is a FHIR OperationOutcome. The "
            "CDS Hooks services (/cds-services) are described by their discovery endpoint, not here."
        ),
        routes=routes,
    )
    _strip_validation(schema)
    _not_null(schema)
    components = schema.setdefault("components", {})
    for key, value in COMPONENTS.items():
        components.setdefault(key, {}).update(value)
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_bytes(schema: dict[str, Any]) -> bytes:
    """The checked-in form: sorted keys, two-space indent, final newline."""
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> None:
    from adapter.service.app import create_app
    from adapter.service.config import ServiceConfig
    from adapter.service.deps import ServiceDeps

    app = create_app(ServiceDeps.from_config(ServiceConfig()))
    sys.stdout.buffer.write(document_bytes(app.openapi()))


if __name__ == "__main__":
    main()
