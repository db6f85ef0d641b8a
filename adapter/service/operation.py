"""The FHIR operation ``$evaluate``: its OperationDefinition, and its ``Parameters`` in and out.

In (a ``Parameters`` resource; every parameter optional, each at most once unless said):

- ``resource`` (Resource, 0..*): the patients' resources, one per parameter; and/or
- ``bundle`` (Bundle, 0..*): Bundles of them (collection, searchset, transaction ...);
- ``protocol`` (code): the variant (default: the service's ``protocol``);
- ``asOf`` (date): the evaluation date (default: today);
- ``include`` (code, 0..*): ``bundle`` (the write-back transaction Bundle) and/or ``summaries`` (the
  clinician summaries, HTML and Markdown);
- ``writeBack`` (boolean; ``Patient/[id]/$evaluate`` only): write the result back to the FHIR server.

At the system level (``POST [base]/$evaluate``) the input is ``resource``/``bundle``; at the instance level
(``POST [base]/Patient/[id]/$evaluate``) the record is read from the configured FHIR server and
``resource``/``bundle`` are refused.

Out (a ``Parameters`` resource), one ``evaluation`` parameter per patient, with parts:

- ``patient`` (Reference): the evaluation's ``patient``;
- ``eligibility`` (code): ``eligibility.status``; ``action`` (code): ``dose.action``;
- ``result`` (Binary, ``application/json``): the evaluation JSON of docs/contract.md, byte for byte what
  ``POST /evaluate`` answers for that patient (base64 in ``data``). A Binary keeps the contract exact
  (no FHIR string rules applied to it) and typed by its content type;
- ``bundle`` (Bundle): the write-back transaction, when ``include=bundle``;
- ``summary`` (Binary, ``text/html`` then ``text/markdown``), when ``include=summaries``;
- ``written`` (instance level with ``writeBack=true``): parts ``status`` (code ``written`` |
  ``unchanged``), ``entries``, ``created``, ``updated``, ``unchanged`` (integer).

The OperationDefinition is served at ``[base]/OperationDefinition/evaluate`` and validated with the R4B
models in the tests.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

import orjson

from adapter import __version__
from adapter.protocols import VARIANTS
from adapter.service.errors import BadRequestError
from adapter.service.work import INCLUDES, Answers

CANONICAL: Final = "https://fhir.ino-adapter.org/OperationDefinition/evaluate"


def _param(name: str, use: str, lo: int, hi: str, doc: str, type_: str | None = None, **more: Any) -> Any:
    out: dict[str, Any] = {"name": name, "use": use, "min": lo, "max": hi, "documentation": doc}
    if type_ is not None:
        out["type"] = type_
    out.update(more)
    return out


OPERATION_DEFINITION: Final[dict[str, Any]] = {
    "resourceType": "OperationDefinition",
    "id": "evaluate",
    "url": CANONICAL,
    "version": __version__,
    "name": "Evaluate",
    "title": "Evaluate inotuzumab ozogamicin eligibility and the next dose",
    "status": "active",
    "kind": "operation",
    "publisher": "ino-adapter",
    "description": (
        "Evaluates the patients in the input (system level) or one patient of the configured FHIR server "
        "(instance level) against a protocol variant of inotuzumab ozogamicin (Besponsa) in relapsed or "
        "refractory CD22-positive B-cell precursor ALL: eligibility and the plan for the next dose. Each "
        "evaluation is returned as the adapter's evaluation JSON (contract 1) in a Binary."
    ),
    "affectsState": True,
    "code": "evaluate",
    "comment": "affectsState: only the instance level with writeBack=true writes (one transaction).",
    "system": True,
    "type": False,
    "instance": True,
    "resource": ["Patient"],
    "parameter": [
        _param(
            "resource", "in", 0, "*", "A resource of the patients' records (system level only).", "Resource"
        ),
        _param("bundle", "in", 0, "*", "A Bundle of the patients' resources (system level only).", "Bundle"),
        _param("protocol", "in", 0, "1", "The protocol variant: " + ", ".join(VARIANTS) + ".", "code"),
        _param("asOf", "in", 0, "1", "The evaluation date (default: today).", "date"),
        _param(
            "include",
            "in",
            0,
            "*",
            "bundle: add the write-back transaction Bundle; summaries: add the clinician summaries.",
            "code",
        ),
        _param(
            "writeBack",
            "in",
            0,
            "1",
            "Instance level: write the result back to the FHIR server (default false).",
            "boolean",
        ),
        _param(
            "evaluation",
            "out",
            0,
            "*",
            "One per patient evaluated.",
            part=[
                _param("patient", "out", 1, "1", "The patient evaluated.", "Reference"),
                _param("eligibility", "out", 1, "1", "eligibility.status of the evaluation.", "code"),
                _param("action", "out", 1, "1", "dose.action of the evaluation.", "code"),
                _param(
                    "result", "out", 1, "1", "The evaluation JSON (contract 1), application/json.", "Binary"
                ),
                _param("bundle", "out", 0, "1", "The write-back transaction (include=bundle).", "Bundle"),
                _param(
                    "summary",
                    "out",
                    0,
                    "2",
                    "The clinician summaries, text/html and text/markdown (include=summaries).",
                    "Binary",
                ),
                _param(
                    "written",
                    "out",
                    0,
                    "1",
                    "What the write-back did (instance level, writeBack=true).",
                    part=[
                        _param("status", "out", 1, "1", "written or unchanged.", "code"),
                        _param("entries", "out", 1, "1", "Entries of the transaction sent.", "integer"),
                        _param("created", "out", 1, "1", "Resources created.", "integer"),
                        _param("updated", "out", 1, "1", "Resources updated.", "integer"),
                        _param("unchanged", "out", 1, "1", "Resources already up to date.", "integer"),
                    ],
                ),
            ],
        ),
    ],
}


# ---------------------------------------------------------------------------------------------------------
# in


@dataclass(slots=True)
class OperationInput:
    items: list[Any] = field(default_factory=list)
    protocol: str | None = None
    as_of: date | None = None
    include: frozenset[str] = frozenset()
    write_back: bool = False


_SINGLE: Final = ("protocol", "asOf", "writeBack")
_VALUE_KEYS: Final = ("valueCode", "valueString", "valueDate", "valueBoolean")


def _value(p: dict[str, Any], name: str, keys: tuple[str, ...], kind: type) -> Any:
    present = [k for k in p if k.startswith("value")]
    if len(present) != 1 or present[0] not in keys or not isinstance(p[present[0]], kind):
        raise BadRequestError(f"parameter {name}: expected {' or '.join(keys)}")
    return p[present[0]]


def parse_parameters(doc: Any, instance: bool) -> OperationInput:
    """The operation's input from a ``Parameters`` resource (400 for anything else)."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "Parameters":
        raise BadRequestError("the body must be a FHIR Parameters resource")
    params = doc.get("parameter", [])
    if not isinstance(params, list) or not all(isinstance(p, dict) for p in params):
        raise BadRequestError("Parameters.parameter must be a list of parameters")
    out = OperationInput()
    seen: set[str] = set()
    include: set[str] = set()
    for p in params:
        name = p.get("name")
        if not isinstance(name, str):
            raise BadRequestError("every parameter needs a name")
        if name in _SINGLE and name in seen:
            raise BadRequestError(f"parameter {name}: given more than once")
        seen.add(name)
        if name in ("resource", "bundle"):
            if instance:
                raise BadRequestError(
                    f"parameter {name}: the instance level reads the record from the server"
                )
            res = p.get("resource")
            if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
                raise BadRequestError(f"parameter {name}: expected a resource")
            if name == "bundle" and res.get("resourceType") != "Bundle":
                raise BadRequestError("parameter bundle: expected a Bundle")
            out.items.append(res)
        elif name == "protocol":
            out.protocol = _value(p, name, ("valueCode", "valueString"), str)
        elif name == "asOf":
            text = _value(p, name, ("valueDate",), str)
            try:
                out.as_of = date.fromisoformat(text)
            except ValueError:
                raise BadRequestError("parameter asOf: expected a full date (YYYY-MM-DD)") from None
        elif name == "include":
            code = _value(p, name, ("valueCode", "valueString"), str)
            if code not in INCLUDES:
                raise BadRequestError(f"parameter include: expected one of {', '.join(sorted(INCLUDES))}")
            include.add(code)
        elif name == "writeBack":
            if not instance:
                raise BadRequestError("parameter writeBack: only Patient/[id]/$evaluate writes back")
            out.write_back = _value(p, name, ("valueBoolean",), bool)
        else:
            raise BadRequestError(f"unknown parameter {name!r}")
    out.include = frozenset(include)
    return out


# ---------------------------------------------------------------------------------------------------------
# out


def _binary(content_type: str, data: bytes) -> dict[str, Any]:
    return {"resourceType": "Binary", "contentType": content_type, "data": base64.b64encode(data).decode()}


def evaluation_bytes(evaluation: dict[str, Any]) -> bytes:
    """The evaluation JSON as ``POST /evaluate`` sends it for one patient."""
    return orjson.dumps(evaluation)


def to_parameters(answers: Answers, include: frozenset[str]) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for a in answers.patients:
        ev = a.evaluation
        parts: list[dict[str, Any]] = [
            {"name": "patient", "valueReference": {"reference": ev["patient"]}},
            {"name": "eligibility", "valueCode": ev["eligibility"]["status"]},
            {"name": "action", "valueCode": (ev.get("dose") or {}).get("action") or "insufficient-data"},
            {"name": "result", "resource": _binary("application/json", evaluation_bytes(ev))},
        ]
        if a.outcome is not None and "bundle" in include:
            parts.append({"name": "bundle", "resource": a.outcome.plan.bundle})
        if a.outcome is not None and "summaries" in include:
            for fmt, media in (("html", "text/html"), ("md", "text/markdown")):
                parts.append(
                    {"name": "summary", "resource": _binary(media, a.outcome.summaries[fmt].encode())}
                )
        if a.written is not None:
            w = a.written
            parts.append(
                {
                    "name": "written",
                    "part": [
                        {"name": "status", "valueCode": w["status"]},
                        *(
                            {"name": k, "valueInteger": int(w[k])}
                            for k in ("entries", "created", "updated", "unchanged")
                        ),
                    ],
                }
            )
        out.append({"name": "evaluation", "part": parts})
    return {"resourceType": "Parameters", "parameter": out}


def evaluations_of(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation JSONs in an ``$evaluate`` answer (for clients and tests)."""
    found = []
    for p in parameters.get("parameter", []):
        if p.get("name") != "evaluation":
            continue
        for part in p.get("part", []):
            if part.get("name") == "result":
                found.append(orjson.loads(base64.b64decode(part["resource"]["data"])))
    return found
