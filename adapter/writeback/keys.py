"""Deterministic identity for what the adapter writes (docs/writeback.md §Identity).

A written resource is found again by its business identifier (system + value), never by content;
the same evaluation always yields the same identifiers, entry fullUrls and (in ``put`` mode) ids,
so replaying a Bundle changes nothing. Identifier values carry a hash of the patient reference, not
the reference itself, so they reveal nothing about the patient.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: Namespace of the entry fullUrls (urn:uuid:<uuid5(namespace, system|value)>).
ENTRY_NAMESPACE = uuid.UUID("5b0e3a52-7c1e-4a51-9a43-3e1d6f0b9c27")

#: Elements that change on every run (or are the server's) and are not part of a resource's content.
VOLATILE = frozenset({"id", "meta", "text", "authoredOn", "recorded", "date", "identifiedDateTime", "issued"})

#: What a prescriber's signature leaves as it was: the dose itself (status, requester, notes may change).
CLINICAL = ("subject", "medicationCodeableConcept", "medicationReference", "dosageInstruction")


@dataclass(frozen=True, slots=True, order=True)
class Key:
    """A business identifier: for Provenance (no identifier in R4) it travels as a meta.tag."""

    system: str
    value: str

    def token(self) -> str:
        return f"{self.system}|{self.value}"


def short_hash(*parts: str, length: int = 16) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]


def patient_key(patient_ref: str) -> str:
    return short_hash("patient", patient_ref)


def resource_id(key: Key) -> str:
    """A FHIR id ([A-Za-z0-9-.]{1,64}) for ``put`` mode, fixed by the key."""
    return "ino-" + short_hash(key.system, key.value, length=32)


def full_url(key: Key) -> str:
    return f"urn:uuid:{uuid.uuid5(ENTRY_NAMESPACE, key.token())}"


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, str | bool) or value is None:
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _number(value: float) -> str:
    """The number as plain decimal text without trailing zeros: 1, 1.0 and 1.00 are the same number.

    The shortest repr of a float has no trailing zeros but ``.0``; only an exponent needs Decimal."""
    text = repr(value)
    if "e" in text or "E" in text or "n" in text:  # exponent, or inf/nan
        return format(Decimal(text).normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def content(resource: dict[str, Any]) -> Any:
    """The resource without its volatile elements, numbers normalised: what "changed" compares."""
    return _canonical({k: v for k, v in resource.items() if k not in VOLATILE})


def clinical_content(request: dict[str, Any]) -> Any:
    """The part of a MedicationRequest that says what is given, when and how."""
    return _canonical({k: request.get(k) for k in CLINICAL})


def content_hash(resource: dict[str, Any]) -> str:
    text = json.dumps(content(resource), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
