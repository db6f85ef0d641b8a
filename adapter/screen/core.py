"""What every screening engine shares (the local engine, adapter/screen/local.py, and Spark,
adapter/screen/spark.py): stable names, engine-independent, picklable where they cross processes.

- :class:`ScreenSetup`: the run's fixed inputs (variant, day, tables, flags), picklable;
  :meth:`ScreenSetup.load` gives the :class:`~adapter.evaluate.Setup`, loaded once per process
  (workers and Spark executors call it for every group; the tables are read once).
- :func:`subject_of` / :func:`subjects_of`: the patient of one NDJSON line by a byte scan, before
  any parse (``"subject"``/``"patient"`` reference to ``Patient/<id>``, or the Patient's own id).
- :func:`candidate_codes` and :func:`candidate_of`: pass 1, whether a line makes its patient a
  candidate (a B-ALL Condition, an inotuzumab MedicationRequest/Administration/Statement, by the
  mapping tables' codes), with a byte pre-filter so that only lines naming one of the codes are
  parsed.
- :func:`evaluate_group`: ONE patient's lines in, its evaluation (the contract, orjson bytes), summary
  row, write-back resources (NDJSON lines per type) and problems out, through adapter/evaluate and
  adapter/api.map_batch exactly as ``evaluate DIR`` reads a directory.
- :func:`partition_of`: the stable partition of a patient; :data:`SUMMARY_COLUMNS`.

Everything here is deterministic: the same lines (in the same order) and ``now`` give the same bytes.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import orjson

from adapter.dosing.bsa import Formula
from adapter.evaluate import Setup, evaluate_record, plan_write_back
from adapter.input.reader import (
    FHIR_ID,
    TOP_LEVEL_SCAN,
    InputBatch,
    _top_level_strings,
    read_ndjson_line,
)
from adapter.mapping.fhir_values import codings, normalise_reference, reference
from adapter.mapping.tables import Tables
from adapter.safe_text import clean, patient_tag
from adapter.writeback.bundle import existing_from_resources

B_ALL = "b-all"
INOTUZUMAB = "inotuzumab-ozogamicin"
MEDICATION_TYPES = frozenset({"MedicationRequest", "MedicationAdministration", "MedicationStatement"})
#: The resource types whose lines can make a patient a candidate (pass 1 reads only these files, and
#: Medication, when a file's type is known).
CANDIDATE_TYPES = frozenset({"Condition", *MEDICATION_TYPES})

#: The summary table's columns, in order (CSV header, Parquet schema, Spark schema).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "patient",
    "variant",
    "as_of",
    "eligibility",
    "action",
    "cycle",
    "day",
    "next_dose_date",
    "key_reasons",
)
#: Columns holding whole numbers (or null); every other column is a string (or null).
SUMMARY_INT_COLUMNS = frozenset({"cycle", "day"})
#: How many reasons ``key_reasons`` lists before "(+N more)".
KEY_REASONS = 5


# -- the run's setup ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScreenSetup:
    """What is fixed for a screening run; picklable (crosses to worker processes and Spark executors).

    ``mappings`` and ``site_settings`` should be absolute paths when workers may run elsewhere.
    ``validate`` turns on R4B validation of the candidates' resources (off by default: screening).
    ``all_patients`` makes every patient a candidate.
    """

    protocol: str
    as_of: date
    mappings: tuple[str, ...] = ()
    validate: bool = False
    all_patients: bool = False
    bsa_formula: Formula = "mosteller"
    site_settings: str | None = None

    def load(self) -> Setup:
        """The evaluation setup (variant, tables, settings, rule-set digest), loaded once per process."""
        return _load_setup(self)

    @property
    def now(self) -> str:
        """The instant stamped on what is written back: midnight UTC of ``as_of`` (so two runs agree)."""
        return now_for(self.as_of)


def now_for(as_of: date) -> str:
    return f"{as_of.isoformat()}T00:00:00Z"


@functools.lru_cache(maxsize=8)
def _load_setup(setup: ScreenSetup) -> Setup:
    return Setup.load(
        setup.protocol, setup.as_of, setup.mappings, setup.site_settings, setup.bsa_formula, setup.validate
    )


# -- whose line is it (byte scan) ----------------------------------------------------------------
#: ``"subject"``/``"patient"`` holding a Reference, matched at the key's position.
_REF_AT = re.compile(
    rb'"(?:subject|patient)"\s*:\s*\{[^{}]{0,4096}?"reference"\s*:\s*"((?:[^"\\]|\\.){1,1024})"'
)
_KEYS = (b'"subject"', b'"patient"')
#: A Patient line as exporters write it: resourceType then id, first.
_PATIENT_HEAD = re.compile(
    rb'\s*\{\s*"resourceType"\s*:\s*"Patient"\s*,\s*"id"\s*:\s*"([A-Za-z0-9\-.]{1,64})"'
)
_PATIENT_HEAD_ID_FIRST = re.compile(
    rb'\s*\{\s*"id"\s*:\s*"([A-Za-z0-9\-.]{1,64})"\s*,\s*"resourceType"\s*:\s*"Patient"\s*[,}]'
)
_RELATIVE_PATIENT = re.compile(r"Patient/[A-Za-z0-9\-.]{1,64}")


def patient_reference(raw: bytes | str) -> str | None:
    """``Patient/<id>`` for a reference as written (relative or absolute RESTful, as the mapping
    normalises it), else None (a contained, ``urn:``, versioned-relative or non-Patient reference)."""
    if isinstance(raw, bytes):
        if b"\\" in raw:
            try:
                text = orjson.loads(b'"' + raw + b'"')
            except orjson.JSONDecodeError:
                return None
        else:
            text = raw.decode("utf-8", "replace")
    else:
        text = raw
    ref = normalise_reference(text)
    return ref if _RELATIVE_PATIENT.fullmatch(ref) else None


def patient_id_of_line(line: bytes) -> str | None:
    """The id of the Patient a line is, by a byte scan (None when it is not a Patient line)."""
    m = _PATIENT_HEAD.match(line) or _PATIENT_HEAD_ID_FIRST.match(line)
    if m is not None:
        return m.group(1).decode("ascii")
    if b'"Patient"' not in line:
        return None
    top = _top_level_strings(line[:TOP_LEVEL_SCAN], (b"resourceType", b"id"))
    pid = top.get(b"id", b"").decode("ascii", "replace")
    return pid if top.get(b"resourceType") == b"Patient" and FHIR_ID.fullmatch(pid) else None


_RELATIVE_PATIENT_BYTES = re.compile(rb"Patient/[A-Za-z0-9\-.]{1,64}")


def counts_as_patient(line: bytes, file_type: str | None) -> bool:
    """Whether a non-blank line counts as a Patient resource of the export (the report's ``patients``):
    every line of a Patient file (a broken one too), a Patient line of a file of mixed types."""
    if file_type == "Patient":
        return True
    return file_type is None and patient_id_of_line(line) is not None


def subject_keys(line: bytes) -> tuple[bytes, ...]:
    """:func:`subjects_of` as bytes (``b"Patient/<id>"``): the engines' per-line routing key, no decoding."""
    m = _PATIENT_HEAD.match(line)
    if m is not None:
        return (b"Patient/" + m.group(1),)
    found: list[bytes] = []
    for key in _KEYS:
        pos = line.find(key)
        while pos >= 0:
            m = _REF_AT.match(line, pos)
            if m is not None:
                raw = m.group(1)
                ref: bytes | None = raw
                if not _RELATIVE_PATIENT_BYTES.fullmatch(raw):
                    text = patient_reference(raw)
                    ref = text.encode() if text is not None else None
                if ref is not None and ref not in found:
                    found.append(ref)
            pos = line.find(key, pos + len(key))
    if not found and b'"Patient"' in line:
        pid = patient_id_of_line(line)
        if pid is not None:
            return (f"Patient/{pid}".encode(),)
    return tuple(found)


def subjects_of(line: bytes) -> tuple[str, ...]:
    """Every patient (``Patient/<id>``) one NDJSON line names, by a byte scan before any parse: its own id
    when it is a Patient, else each ``"subject"``/``"patient"`` reference to a Patient (usually one).
    Empty when it cannot be told. A line goes to every patient it names; the mapping then keeps it for the
    patient its top-level ``subject``/``patient`` element names."""
    return tuple(k.decode() for k in subject_keys(line))


def subject_of(line: bytes) -> str | None:
    """The patient (``Patient/<id>``) of one NDJSON line by a byte scan, or None when it cannot be told."""
    found = subjects_of(line)
    return found[0] if found else None


#: ``"reference": ".../Medication/<id>"`` in raw text (the Medications a group's lines point at).
_MEDICATION_REF = re.compile(rb'"reference"\s*:\s*"((?:[^"\\]|\\.){0,900}?Medication/[A-Za-z0-9\-.]{1,64})"')


def medication_refs_of(line: bytes) -> list[str]:
    """``Medication/<id>`` references in one line (to add the shared Medications a patient's lines need)."""
    if b"Medication/" not in line:
        return []
    out: list[str] = []
    for m in _MEDICATION_REF.finditer(line):
        raw = m.group(1)
        text = raw.decode("utf-8", "replace")
        ref = normalise_reference(text)
        if ref.startswith("Medication/") and ref not in out:
            out.append(ref)
    return out


# -- pass 1: candidates --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConceptCodes:
    """One concept's codes from the merged tables: exact codings, (system, prefix) entries, exclusions."""

    exact: frozenset[tuple[str, str]]
    prefixes: tuple[tuple[str, str], ...]
    excluded: frozenset[tuple[str, str]]

    @classmethod
    def of(cls, tables: Tables, concept: str) -> ConceptCodes:
        exact = frozenset(k for k, names in tables.exact.items() if concept in names)
        prefixes = tuple(
            sorted((system, prefix) for system, entries in tables.prefixes.items() for prefix, name in entries
                   if name == concept)
        )  # fmt: skip
        return cls(exact, prefixes, frozenset(tables.excludes.get(concept, set())))

    def matches(self, found: list[tuple[str, str]]) -> bool:
        """As ``Tables.concepts_for``: a coding maps to the concept and none of them is excluded."""
        hit = any(
            c in self.exact or any(system == c[0] and c[1].startswith(p) for system, p in self.prefixes)
            for c in found
        )
        return hit and not any(c in self.excluded for c in found)

    def needles(self) -> set[bytes]:
        return {code.encode() for _, code in self.exact} | {p.encode() for _, p in self.prefixes}


@dataclass(frozen=True, slots=True)
class CandidateCodes:
    """What pass 1 looks for; picklable. ``needles``: byte strings of which a candidate line contains at
    least one (the codes, and ``Medication/<id>"`` for inotuzumab Medications); ``medication_refs``: the
    export's Medications coded as inotuzumab (found by :func:`inotuzumab_medication`)."""

    conditions: ConceptCodes
    medications: ConceptCodes
    medication_refs: frozenset[str] = frozenset()
    needles: tuple[bytes, ...] = field(default=())

    def with_medications(self, refs: Iterable[str]) -> CandidateCodes:
        """These codes plus the inotuzumab Medications ``refs`` (``Medication/<id>``)."""
        merged = self.medication_refs | frozenset(refs)
        needles = _needles(self.conditions, self.medications, merged)
        return replace(self, medication_refs=merged, needles=needles)


def _needles(conditions: ConceptCodes, medications: ConceptCodes, refs: frozenset[str]) -> tuple[bytes, ...]:
    raw = conditions.needles() | medications.needles() | {r.split("/", 1)[1].encode() + b'"' for r in refs}
    # a needle that contains another is redundant (C91.02 when C91.0 is there)
    kept = sorted(n for n in raw if n and not any(o != n and o in n for o in raw))
    return tuple(kept)


def candidate_codes(setup: ScreenSetup) -> CandidateCodes:
    """The B-ALL and inotuzumab codes of the run's tables (shipped + ``--mappings``)."""
    tables = setup.load().tables
    conditions, medications = ConceptCodes.of(tables, B_ALL), ConceptCodes.of(tables, INOTUZUMAB)
    needles = _needles(conditions, medications, frozenset())
    return CandidateCodes(conditions, medications, frozenset(), needles)


def _medication_codings(med: Mapping[str, Any]) -> list[tuple[str, str]]:
    found = codings(med.get("code"))
    for ing in med.get("ingredient") or []:
        if isinstance(ing, dict):
            found += codings(ing.get("itemCodeableConcept"))
    return found


def inotuzumab_medication(line: bytes, codes: CandidateCodes) -> str | None:
    """``Medication/<id>`` when the line is a Medication coded as inotuzumab (ingredients included)."""
    if not any(n in line for n in codes.needles):
        return None
    try:
        r = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(r, dict) or r.get("resourceType") != "Medication":
        return None
    rid = r.get("id")
    if isinstance(rid, str) and FHIR_ID.fullmatch(rid) and codes.medications.matches(_medication_codings(r)):
        return f"Medication/{rid}"
    return None


def candidate_of(line: bytes, codes: CandidateCodes) -> str | None:
    """Pass 1: the patient (``Patient/<id>``) that this line makes a candidate, else None.

    A Condition coded B-ALL, or an inotuzumab MedicationRequest/Administration/Statement (coded, contained
    or a reference to an inotuzumab Medication), by the tables' codes. Only a line containing one of the
    codes (``codes.needles``) is parsed. A line that names a code but cannot be parsed makes the patient
    its raw text names a candidate too (its evaluation then reports the broken line)."""
    if not any(n in line for n in codes.needles):
        return None
    return candidate_of_parsed(line, codes)


def candidate_of_parsed(line: bytes, codes: CandidateCodes) -> str | None:
    """:func:`candidate_of` without the pre-filter (for a line already known to name a code)."""
    try:
        r = orjson.loads(line)
    except orjson.JSONDecodeError:
        return subject_of(line)
    if not isinstance(r, dict):
        return None
    rtype = r.get("resourceType")
    if rtype == "Condition":
        hit = codes.conditions.matches(codings(r.get("code")))
    elif rtype in MEDICATION_TYPES:
        hit = _is_inotuzumab(r, codes)
    else:
        return None
    if not hit:
        return None
    subject = reference(r.get("subject"))
    return patient_reference(subject) if subject else None


def _is_inotuzumab(r: Mapping[str, Any], codes: CandidateCodes) -> bool:
    if "medicationCodeableConcept" in r:
        return codes.medications.matches(codings(r["medicationCodeableConcept"]))
    target = reference(r.get("medicationReference"))
    if target is None:
        return False
    if target.startswith("#"):
        for c in r.get("contained") or []:
            if isinstance(c, dict) and c.get("id") == target[1:]:
                return codes.medications.matches(_medication_codings(c))
        return False
    return normalise_reference(target) in codes.medication_refs


# -- partitions ----------------------------------------------------------------------------------
def partition_of(patient_ref: str, partitions: int) -> int:
    """The partition of a patient: a stable hash (CRC-32 of the reference), the same on every machine."""
    return zlib.crc32(patient_ref.encode("utf-8", "surrogatepass")) % partitions


# -- one patient's evaluation --------------------------------------------------------------------
@dataclass(slots=True)
class GroupResult:
    """One patient's screening result. ``evaluation_json`` is the contract (orjson, no trailing newline),
    empty when the patient could not be evaluated (no Patient resource among its lines: ``problems`` says
    so). ``writeback`` holds the write-back resources by type, one orjson line each (no trailing newline),
    each with its ``id`` and references between them resolved (ready for ``$import``). ``problems`` are
    one-line notes without patient data (broken lines, with file and line number)."""

    patient: str
    evaluation_json: bytes
    summary_row: dict[str, Any]
    writeback: dict[str, list[bytes]]
    problems: list[str]
    #: resources read / lines broken for this patient (for the run report)
    resources: int = 0
    broken: int = 0
    #: the patient's own Patient lines (a Patient exported twice counts twice, as in ``patients``)
    patient_lines: int = 0

    @property
    def status(self) -> str:
        return str(self.summary_row.get("eligibility") or "not-evaluated")


Line = bytes | tuple[str, int, bytes]


def evaluate_group(patient_ref: str, lines: Iterable[Line], setup: ScreenSetup, now: str) -> GroupResult:
    """ONE patient's NDJSON lines (optionally with their file and line number, for broken-line reports) in;
    the evaluation, summary row, write-back and problems out.

    The lines are read as ``evaluate DIR`` reads a directory's NDJSON (adapter.input.reader), mapped with
    :func:`adapter.api.map_batch` (broken lines make the patient's ``input-integrity`` unknown), evaluated
    with :func:`adapter.evaluate.evaluate_record` and planned with :func:`adapter.evaluate.plan_write_back`
    (our earlier write-back among the lines counts as existing). Lines about other patients (a line names
    several) are dropped by the mapping. Include the shared Medications the lines refer to."""
    from adapter.api import map_batch

    loaded = setup.load()
    batch = InputBatch()
    for i, item in enumerate(lines, start=1):
        if isinstance(item, bytes):
            origin, line = f"<lines>:{i}", item
        else:
            name, lineno, line = item
            origin = f"{name}:{lineno}"
        read_ndjson_line(line, origin, batch)
    broken = len(batch.broken)
    records, notes = map_batch(batch, setup.mappings, loaded.validate)
    record = next((r for r in records.records if r.ref == patient_ref), None)
    tag = patient_tag(patient_ref)
    problems = [n for n in notes if tag in n]
    pid = patient_ref.removeprefix("Patient/")
    own = sum(
        1
        for r in batch.resources
        if r.resource.get("resourceType") == "Patient" and r.resource.get("id") == pid
    )
    own += sum(1 for b in batch.broken if b.patient_id == pid)  # its own Patient lines, read or broken
    if record is None:
        problems.append(
            f"{tag}: no Patient resource among its {len(batch.resources) + broken} line(s); not evaluated"
        )
        return GroupResult(patient_ref, b"", {}, {}, problems, len(batch.resources), broken, own)
    evaluation = evaluate_record(record, loaded)
    existing = existing_from_resources(r.resource for r in batch.resources)
    outcome = plan_write_back(evaluation, loaded.settings, now, None, existing)
    return GroupResult(
        patient_ref,
        orjson.dumps(evaluation),
        summary_row(evaluation),
        writeback_lines(outcome.plan.bundle),
        problems,
        len(batch.resources),
        broken,
        own,
    )


def summary_row(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the summary table (:data:`SUMMARY_COLUMNS`) for an evaluation."""
    eligibility = evaluation.get("eligibility") or {}
    dose = evaluation.get("dose") or {}
    reasons: list[str] = []
    for wanted in ("not-met", "unknown", "review"):
        for c in eligibility.get("criteria") or []:
            if c.get("status") == wanted:
                reasons.append(f"{c.get('id')} ({wanted}): {c.get('reason')}")
    action = dose.get("action")
    for f in dose.get("findings") or []:
        if f.get("effect") and f.get("effect") == action:
            reasons.append(f"{f.get('id')}: {f.get('reason')}")
    reasons = list(dict.fromkeys(reasons))
    shown = reasons[:KEY_REASONS]
    if len(reasons) > KEY_REASONS:
        shown.append(f"(+{len(reasons) - KEY_REASONS} more)")
    return {
        "patient": evaluation.get("patient"),
        "variant": evaluation.get("protocol"),
        "as_of": evaluation.get("as_of"),
        "eligibility": eligibility.get("status"),
        "action": action,
        "cycle": dose.get("cycle"),
        "day": dose.get("day"),
        "next_dose_date": dose.get("next_dose_date"),
        "key_reasons": clean(" | ".join(shown)),
    }


def writeback_lines(bundle: Mapping[str, Any]) -> dict[str, list[bytes]]:
    """The transaction Bundle's resources as NDJSON lines per type, for ``$import`` or a loader: each gets
    its ``id`` (the server's id for an update, else the entry's ``urn:uuid``, stable per identifier) and
    references to other entries (``urn:uuid:...``) become ``Type/id``."""
    entries = [e for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict)]
    ids: dict[str, str] = {}
    placed: list[tuple[str, str, dict[str, Any]]] = []
    for e in entries:
        resource = e["resource"]
        rtype = str(resource.get("resourceType"))
        request = e.get("request") or {}
        url = str(request.get("url") or "")
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            if request.get("method") == "PUT" and url.startswith(f"{rtype}/") and "?" not in url:
                rid = url.split("/", 1)[1]
            else:
                rid = str(e.get("fullUrl") or "").removeprefix("urn:uuid:")
        full_url = e.get("fullUrl")
        if isinstance(full_url, str) and full_url:
            ids[full_url] = f"{rtype}/{rid}"
        placed.append((rtype, rid, resource))
    out: dict[str, list[bytes]] = {}
    for rtype, rid, resource in placed:
        body = _resolve(resource, ids)
        body.pop("id", None)
        out.setdefault(rtype, []).append(orjson.dumps({"resourceType": rtype, "id": rid, **body}))
    return out


def _resolve(value: Any, ids: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (ids.get(v, v) if k == "reference" and isinstance(v, str) else _resolve(v, ids))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_resolve(v, ids) for v in value]
    return value
