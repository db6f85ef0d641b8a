"""Untrusted text made safe to print, and patients named without their identifiers.

Strings from the data (FHIR text, codes, ids, file names) may hold control characters that a
terminal obeys (ESC sequences, BEL, backspace), Unicode bidirectional controls that reorder what
is shown, and line breaks that would let a value start an output line of its own (a forged
``[met]`` line, a forged ``ino-adapter: error:`` line). :func:`clean` is the one function that
neutralises them; the text renderer, the summary view model and the CLI's messages all use it.

Messages (errors, warnings, logs) never print a patient's reference, identifiers, name or birth
date: :func:`patient_tag` names a patient by a short stable hash of its reference instead.
"""

from __future__ import annotations

import ast
import hashlib
import re
from typing import Any

#: What a neutralised control character becomes (visible, so that tampering shows).
REPLACEMENT = "\ufffd"

#: Line and paragraph breaks (CR, LF, VT, FF, the file/group/record separators str.splitlines()
#: honours, NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR) and TAB become one space each.
_BREAKS = "\n\r\t\v\f\x1c\x1d\x1e\x85\u2028\u2029"
#: Unicode bidirectional controls (embeddings, overrides, isolates, marks).
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def _table() -> dict[int, str]:
    table: dict[int, str] = {}
    controls = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]  # C0, DEL, C1
    surrogates = range(0xD800, 0xE000)  # lone surrogates cannot be encoded for output
    for cp in [*controls, *(ord(c) for c in _BIDI), *surrogates]:
        table[cp] = REPLACEMENT
    for c in _BREAKS:
        table[ord(c)] = " "
    return table


_TABLE = _table()


def clean(value: object) -> str:
    """``value`` as text that prints on one line and cannot steer a terminal or reorder text.

    Line breaks (a CRLF pair counts as one) and TAB become a space; every other control character
    (C0, DEL, C1) and every bidirectional control becomes U+FFFD (�). Other text is unchanged.
    """
    return str(value).replace("\r\n", " ").translate(_TABLE)


def clean_data(value: Any) -> Any:
    """A copy of a JSON-like value with :func:`clean` applied to every string (keys included)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean_data(k): clean_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_data(v) for v in value]
    return value


def patient_tag(reference: object) -> str:
    """How messages name a patient: ``patient <10 hex>``, a stable hash of the reference.

    The hex is the start of the patient key that the write-back's identifier values carry
    (``adapter.writeback.keys.patient_key``), so a message can be matched with what was written.
    """
    digest = hashlib.sha256(f"patient\x1f{reference}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"patient {digest[:10]}"


_ORPHAN = re.compile(r"^(?P<head>.*) ignored: its patient (?P<ref>.+) is not in the input$", re.DOTALL)


def redact_orphan(message: str) -> str:
    """An orphan warning from the mapping step with the missing patient's reference hashed.

    The mapping step writes ``<ref> (<origin>) ignored: its patient '<reference>' is not in the
    input``; the reference may be a conditional one carrying an MRN (``Patient?identifier=...``).
    """
    m = _ORPHAN.match(message)
    if m is None:
        head, sep, why = message.partition(" ignored: ")
        if sep and why != "it has no patient reference":  # a wording this function does not know
            return clean(f"{head} ignored (the reason is not shown: it may name the patient)")
        return clean(message)
    try:
        ref = ast.literal_eval(m.group("ref"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        ref = m.group("ref")
    return clean(f"{m.group('head')} ignored: its patient ({patient_tag(ref)}) is not in the input")
