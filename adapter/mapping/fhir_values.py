"""Small readers for FHIR R4 datatypes in plain dicts. Defensive: bad shapes return None."""

from __future__ import annotations

import calendar
import math
import re
from datetime import date
from typing import Any

from adapter.domain import DateRange

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(?:T.*)?$")


def date_range(value: Any) -> DateRange | None:
    """A FHIR date/dateTime/instant as the range of days it may mean; None if unreadable.

    A dateTime keeps the calendar day written in it (its own time-zone offset), which is the day
    the clinician saw.
    """
    if not isinstance(value, str):
        return None
    m = _DATE.match(value)
    if not m:
        return None
    try:
        year = int(m.group(1))
        if m.group(3):
            d = date(year, int(m.group(2)), int(m.group(3)))
            return DateRange(d, d)
        if m.group(2):
            month = int(m.group(2))
            last = calendar.monthrange(year, month)[1]
            return DateRange(date(year, month, 1), date(year, month, last))
        return DateRange(date(year, 1, 1), date(year, 12, 31))
    except ValueError:
        return None


def period_range(period: Any) -> tuple[DateRange | None, DateRange | None]:
    if not isinstance(period, dict):
        return None, None
    return date_range(period.get("start")), date_range(period.get("end"))


def codings(concept: Any) -> list[tuple[str, str]]:
    """(system, code) pairs of a CodeableConcept; codings without both are skipped."""
    out: list[tuple[str, str]] = []
    if isinstance(concept, dict) and isinstance(concept.get("coding"), list):
        for c in concept["coding"]:
            if isinstance(c, dict):
                system, code = c.get("system"), c.get("code")
                if isinstance(system, str) and isinstance(code, str) and system and code:
                    out.append((system, code.strip()))
    return out


def display(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    text = concept.get("text")
    if isinstance(text, str) and text:
        return text
    coding = concept.get("coding")
    for c in coding if isinstance(coding, list) else []:
        if isinstance(c, dict):
            d = c.get("display") or c.get("code")
            if isinstance(d, str):
                return d
    return ""


def status_code(concept: Any, system: str, codes: frozenset[str]) -> tuple[str | None, str | None]:
    """A status CodeableConcept (clinicalStatus, verificationStatus) read against its HL7 code system.

    Returns ``(code, None)``; ``(None, None)`` when the element is absent; ``(None, problem)`` when it
    is present but cannot be read: no coding in ``system`` (a coding without its system, a local
    system, text only) or a code that is not one of ``codes``, or codings that disagree. A status
    that cannot be read is never taken for the default (docs/criteria.md §Conditions).
    """
    if concept is None:
        return None, None
    found = {code for s, code in codings(concept) if s == system}
    if len(found) == 1 and (code := next(iter(found))) in codes:
        return code, None
    if len(found) > 1:
        return None, f"codes that disagree ({', '.join(sorted(found))})"
    shown = _codings_text(concept) or display(concept) or "no coding"
    if found:
        return None, f"{shown} is not a code of {system}"
    return None, f"{shown} has no coding in {system}"


def _codings_text(concept: Any) -> str:
    """Every coding as written (``system|code``, ``code`` when the system is missing)."""
    out = []
    if isinstance(concept, dict) and isinstance(concept.get("coding"), list):
        for c in concept["coding"]:
            if isinstance(c, dict):
                system, code = c.get("system"), c.get("code")
                shown = str(code) if code is not None else "(no code)"
                out.append(f"{system}|{shown}" if isinstance(system, str) and system else shown)
    return ", ".join(out)


def reference(value: Any) -> str | None:
    """A Reference's target as written: "Patient/1", an absolute URL, "urn:uuid:..." or "#id"."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref:
            return ref
    return None


def normalise_reference(ref: str) -> str:
    """Relative form of an absolute RESTful reference, without _history; others unchanged."""
    if ref.startswith(("http://", "https://")):
        parts = [p for p in ref.split("/") if p]
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        if len(parts) >= 2:
            return f"{parts[-2]}/{parts[-1]}"
    return ref


def is_number(value: Any) -> bool:
    """A finite JSON number (not a bool, NaN, infinity, or an int too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
