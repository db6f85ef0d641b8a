"""The FHIR client's typed errors (re-exported by :mod:`adapter.fhir.client`). All are ``AdapterError``
subclasses with exit code 5 (``ExitCode.FHIR_SERVER``); ``outcome`` keeps the server's OperationOutcome
when it sent one.

409 and 412 both mean "someone changed it" (a version conflict, a stale ``If-Match``, conditional criteria
that now match more than one resource): both derive from :class:`FhirChanged` and have
``changed_by_someone`` True, so callers handle them alike (re-read, rebuild, try again). The client never
retries them by itself.
"""

from __future__ import annotations

from typing import Any, Final

from adapter.errors import AdapterError, ExitCode

__all__ = [
    "RETRYABLE_STATUSES",
    "FhirBadRequest",
    "FhirChanged",
    "FhirConflict",
    "FhirError",
    "FhirMultipleMatches",
    "FhirNotFound",
    "FhirPreconditionFailed",
    "FhirServerError",
    "FhirThrottled",
    "FhirTransportError",
    "FhirUnauthorized",
    "FhirUnprocessable",
    "error_class",
]

JsonObject = dict[str, Any]

#: Statuses that say "try again later": the client retries them (idempotent requests only).
RETRYABLE_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})


class FhirError(AdapterError):
    """A FHIR interaction failed. ``status`` is the HTTP status (None when there was no usable answer),
    ``outcome`` the server's OperationOutcome when it sent one."""

    exit_code = ExitCode.FHIR_SERVER

    def __init__(self, status: int | None, outcome: JsonObject | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome

    @property
    def changed_by_someone(self) -> bool:
        """True for 409 and 412: the resource changed since it was read (see :class:`FhirChanged`)."""
        return False

    @property
    def retryable(self) -> bool:
        """True when trying again later may succeed (408, 429, 5xx, no answer)."""
        return self.status in RETRYABLE_STATUSES


class FhirBadRequest(FhirError):  # noqa: N818 - named after the HTTP status
    """400: the server could not use the request (invalid resource, unknown search parameter, ...)."""


class FhirUnauthorized(FhirError):  # noqa: N818 - named after the HTTP status
    """401 or 403: missing, invalid or insufficient credentials (or a refused SMART token request)."""


class FhirNotFound(FhirError):  # noqa: N818 - named after the HTTP status
    """404 (unknown resource, type or operation) or 410 (deleted)."""


class FhirChanged(FhirError):  # noqa: N818 - "someone changed it"
    """409 or 412: someone changed the resource (or what conditional criteria match) since it was read.
    Re-read and rebuild; never retried blindly."""

    @property
    def changed_by_someone(self) -> bool:
        return True


class FhirConflict(FhirChanged):
    """409: e.g. a version conflict or a duplicate."""


class FhirPreconditionFailed(FhirChanged):
    """412: a stale If-Match, or conditional criteria that matched more than one resource."""


class FhirUnprocessable(FhirError):  # noqa: N818 - named after the HTTP status
    """422: the server understood the resource but rejects it (business rules, profiles)."""


class FhirThrottled(FhirError):  # noqa: N818 - named after the HTTP status
    """429 (too many requests) or 408 (request timeout) still failing after the client's retries."""


class FhirServerError(FhirError):
    """5xx: the server failed."""


class FhirTransportError(FhirError):
    """No HTTP answer: connection refused or reset, DNS failure, TLS failure or timeout (status is None)."""

    @property
    def retryable(self) -> bool:
        return True


class FhirMultipleMatches(FhirError):  # noqa: N818 - named after the HTTP status
    """A search that must find at most one resource found more (status is None: not an HTTP error)."""


_STATUS_ERRORS: Final[dict[int, type[FhirError]]] = {
    400: FhirBadRequest,
    401: FhirUnauthorized,
    403: FhirUnauthorized,
    404: FhirNotFound,
    408: FhirThrottled,
    410: FhirNotFound,
    409: FhirConflict,
    412: FhirPreconditionFailed,
    422: FhirUnprocessable,
    429: FhirThrottled,
}


def error_class(status: int) -> type[FhirError]:
    """The :class:`FhirError` subclass for an HTTP status."""
    if status >= 500:
        return FhirServerError
    return _STATUS_ERRORS.get(status, FhirError)
