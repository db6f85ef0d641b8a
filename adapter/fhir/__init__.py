"""The adapter's only I/O edge towards FHIR servers: a small REST client (:mod:`adapter.fhir.client`), its
typed errors (:mod:`adapter.fhir.errors`) and its authorisation (:mod:`adapter.fhir.auth`, which does no
HTTP itself).

Everything else in the adapter is pure; code that talks to a server goes through :class:`FhirClient`.
"""

from __future__ import annotations

from adapter.fhir.auth import (
    Auth,
    AuthConfigError,
    BearerToken,
    NoAuth,
    SmartBackendAuth,
    bearer_from_env,
    bearer_from_file,
    make_auth,
)
from adapter.fhir.client import (
    NO_RETRY,
    BatchEntryResult,
    BatchResult,
    FhirBadRequest,
    FhirChanged,
    FhirClient,
    FhirConflict,
    FhirError,
    FhirMultipleMatches,
    FhirNotFound,
    FhirPreconditionFailed,
    FhirResponse,
    FhirServerError,
    FhirThrottled,
    FhirTransportError,
    FhirUnauthorized,
    FhirUnprocessable,
    RetryPolicy,
    ServerCapabilities,
    is_idempotent_bundle,
)

__all__ = [
    "NO_RETRY",
    "Auth",
    "AuthConfigError",
    "BatchEntryResult",
    "BatchResult",
    "BearerToken",
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
    "NoAuth",
    "RetryPolicy",
    "ServerCapabilities",
    "SmartBackendAuth",
    "bearer_from_env",
    "bearer_from_file",
    "is_idempotent_bundle",
    "make_auth",
]
