"""The adapter's only I/O edge towards FHIR servers: a small REST client (:mod:`adapter.fhir.client`).

Everything else in the adapter is pure; code that talks to a server goes through :class:`FhirClient`.
"""

from __future__ import annotations

from adapter.fhir.client import (
    FhirBadRequest,
    FhirClient,
    FhirConflict,
    FhirError,
    FhirMultipleMatches,
    FhirNotFound,
    FhirPreconditionFailed,
    FhirResponse,
    FhirServerError,
    FhirTransportError,
    FhirUnauthorized,
    FhirUnprocessable,
)

__all__ = [
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
]
