"""Every error the service answers is a FHIR OperationOutcome (``application/fhir+json``).

Permanent faults (bad input, bad credentials, unknown protocol) are deterministic 4xx: the same request
gets the same answer. Transient ones (the FHIR server unreachable or overloaded, this service overloaded
or too slow) are 503 with ``Retry-After``. Texts never carry patient data: they name what was wrong with
the request, never a resource's content (patients are named by :func:`adapter.safe_text.patient_tag`).

Used by the REST and FHIR endpoints and by the CDS Hooks routes (adapter.service.cds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
from starlette.responses import Response

from adapter.safe_text import clean

FHIR_JSON: Final = "application/fhir+json"

#: HTTP status -> the OperationOutcome issue code used when the caller gives none.
DEFAULT_CODES: Final[dict[int, str]] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
    500: "exception",
    502: "transient",
    503: "transient",
    504: "timeout",
}

#: Seconds a client is told to wait after a transient fault.
DEFAULT_RETRY_AFTER: Final = 5


def operation_outcome(code: str, text: str, severity: str = "error") -> dict[str, Any]:
    """One-issue OperationOutcome; ``text`` is made single-line and control-free (never patient data)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": clean(text)[:500]}],
    }


def outcome_response(
    status: int, code: str | None, text: str, headers: Mapping[str, str] | None = None
) -> Response:
    """An error answer: ``status`` with an OperationOutcome body. 503 always carries ``Retry-After``."""
    body = operation_outcome(code or DEFAULT_CODES.get(status, "exception"), text)
    out = dict(headers or {})
    if status == 503 and not any(k.lower() == "retry-after" for k in out):
        out["Retry-After"] = str(DEFAULT_RETRY_AFTER)
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=out)


class ServiceError(Exception):
    """A fault the service answers with ``outcome_response(status, code, text, headers)``.

    Raise it anywhere in a route (or in a dependency); the app's handler turns it into the response.
    """

    def __init__(
        self, status: int, text: str, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return outcome_response(self.status, self.code, self.text, self.headers)


class BadRequestError(ServiceError):
    def __init__(self, text: str, code: str = "invalid") -> None:
        super().__init__(400, text, code)


class UnavailableError(ServiceError):
    """503: try again later (``Retry-After`` seconds)."""

    def __init__(self, text: str, retry_after: int = DEFAULT_RETRY_AFTER, code: str = "transient") -> None:
        super().__init__(503, text, code, {"Retry-After": str(retry_after)})
