"""Validate resources with fhir.resources' R4B models (never the package default, R5).

R5 rejects every R4 MedicationRequest (``medicationCodeableConcept`` is gone there); R4B accepts
the R4 wire format of the resources this adapter reads. fhir.resources is imported lazily: it
costs ~0.3 s, which ``ino-adapter --help`` must not pay.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from adapter.input.reader import SourcedResource


@functools.lru_cache(maxsize=32)
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def validation_error(resource: dict[str, Any]) -> str | None:
    """None if the resource is valid R4 (as far as the R4B model checks), else a short reason."""
    from pydantic import ValidationError

    try:
        _model(str(resource.get("resourceType"))).model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"not valid FHIR R4: {loc or resource.get('resourceType')}: {first.get('msg')}{more}"
    except Exception as exc:  # fhir.resources raises other types for some malformed input
        return f"not valid FHIR R4: {type(exc).__name__}"
    return None


def validate_all(resources: Iterable[SourcedResource]) -> dict[str, str]:
    """Origin -> reason for each invalid resource."""
    out: dict[str, str] = {}
    for item in resources:
        problem = validation_error(item.resource)
        if problem:
            out[item.origin] = problem
    return out
