"""Validate resources with fhir.resources' R4B models (never the package default, R5).

R5 rejects every R4 MedicationRequest (``medicationCodeableConcept`` is gone there); R4B accepts
the R4 wire format of the resources this adapter reads. fhir.resources is imported lazily: it
costs ~0.3 s, which ``ino-adapter --help`` must not pay.

Validation is the costliest step of an evaluation, and a long-running process (the HTTP service) sees
the same resources again and again (an EHR prefetches a patient's record for order-select, then for
order-sign, then for the next order). :func:`validation_error` therefore remembers its answer for the
last :data:`MEMO_SIZE` distinct resources, keyed by a digest of their canonical JSON: the answer of a
pure function of that content. Resources that cannot be serialised canonically are not remembered.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final

import orjson

from adapter.input.reader import SourcedResource

#: Distinct resources whose validation answer is remembered (a few MB at most).
MEMO_SIZE: Final = 20_000
_memo: OrderedDict[bytes, str | None] = OrderedDict()
_memo_lock = threading.Lock()
_MISSING: Final = object()


@functools.lru_cache(maxsize=32)
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def validation_error(resource: dict[str, Any]) -> str | None:
    """None if the resource is valid R4 (as far as the R4B model checks), else a short reason.
    Remembered per distinct content (see the module docstring)."""
    try:
        key = hashlib.blake2b(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
    except (TypeError, orjson.JSONEncodeError):
        return _validate(resource)
    with _memo_lock:
        known = _memo.get(key, _MISSING)
        if known is not _MISSING:
            _memo.move_to_end(key)
            return known  # type: ignore[return-value]
    answer = _validate(resource)
    with _memo_lock:
        _memo[key] = answer
        if len(_memo) > MEMO_SIZE:
            _memo.popitem(last=False)
    return answer


def _validate(resource: dict[str, Any]) -> str | None:
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
