"""Build one PatientRecord per Patient from parsed FHIR R4 resources (plain dicts).

Everything here is pure: no files, no clock, no network. The shapes of the inputs are not
trusted (fhir.resources validation is optional and happens at the edge), so every read is
defensive; a value that cannot be used becomes an ``Unusable`` with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapter.domain import (
    UNREADABLE_STATUS,
    AllergyFact,
    ConditionFact,
    DateRange,
    Exposure,
    PatientRecord,
    ProcedureFact,
    Reading,
    Unusable,
)
from adapter.input.reader import SourcedResource
from adapter.mapping.fhir_values import (
    codings,
    date_range,
    display,
    is_number,
    normalise_reference,
    period_range,
    reference,
    status_code,
)
from adapter.mapping.tables import Concept, Tables
from adapter.mapping.units import UCUM_SYSTEM, UnitError, conversion_factor, drop_float_noise, is_valid_ucum

OBS_USABLE = frozenset({"final", "amended", "corrected", "preliminary", "registered"})
OBS_IGNORED = frozenset({"entered-in-error", "cancelled"})
COND_ACTIVE = frozenset({"active", "recurrence", "relapse"})
COND_INACTIVE = frozenset({"inactive", "remission", "resolved"})
VERIFICATION_IGNORED = frozenset({"refuted", "entered-in-error"})
VERIFICATION_UNCONFIRMED = frozenset({"unconfirmed", "provisional", "differential"})
#: The HL7 code systems of the status elements and their codes: a status read from anything else
#: (a coding without its system, a local system, a code the system does not have) is unknown.
COND_CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_CLINICAL_CODES = COND_ACTIVE | COND_INACTIVE
COND_VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_VERIFICATION_CODES = VERIFICATION_IGNORED | VERIFICATION_UNCONFIRMED | {"confirmed"}
ALLERGY_CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_CLINICAL_CODES = frozenset({"active", "inactive", "resolved"})
ALLERGY_VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
ALLERGY_VERIFICATION_CODES = frozenset({"unconfirmed", "confirmed", "refuted", "entered-in-error"})
#: Quantity.comparator values that bound the value; "ad" (sufficient to achieve this total quantity)
#: is not a measurement at all
BOUND_COMPARATORS = frozenset({"<", "<=", ">=", ">"})
# Medication statuses kept: the drug was (or is being) given, or may have been (``unknown``: the
# record exists but does not say; its readers decide, never skip). The others say it was not given
# (not-done, not-taken, intended, cancelled, draft, entered-in-error).
MED_GIVEN = {
    "MedicationRequest": frozenset({"active", "on-hold", "completed", "stopped", "unknown"}),
    "MedicationStatement": frozenset({"active", "on-hold", "completed", "stopped", "unknown"}),
    "MedicationAdministration": frozenset({"in-progress", "on-hold", "completed", "stopped", "unknown"}),
}
MED_ONGOING = frozenset({"active", "on-hold", "in-progress"})
PROC_DONE = frozenset({"completed", "in-progress", "stopped"})
SUBJECT_FIELD = {
    "Observation": "subject",
    "Condition": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "MedicationAdministration": "subject",
    "Procedure": "subject",
    "AllergyIntolerance": "patient",
    "Immunization": "patient",
}
#: Concept for a vaccine whose code the tables do not classify (live or not is unknown).
UNCLASSIFIED_VACCINE = "unclassified-vaccine"
#: Concept for a graded Condition (CTCAE grade or severity) whose code no table classifies.
ADVERSE_EVENT = "adverse-event"
#: The CTCAE grade a SNOMED severity implies when no CTCAE grade is coded (a lower bound for
#: "severe", which may also be grade 4).
SEVERITY_GRADE = {"mild": 1, "moderate": 2, "severe": 3}


@dataclass(slots=True)
class RecordSet:
    records: list[PatientRecord] = field(default_factory=list)
    #: Resources that could not be attributed to a Patient in the input, with the reason.
    orphans: list[str] = field(default_factory=list)


def resource_ref(item: SourcedResource) -> str:
    r = item.resource
    rid = r.get("id")
    if isinstance(rid, str) and rid:
        return f"{r.get('resourceType')}/{rid}"
    return item.full_url or f"{r.get('resourceType')}@{item.origin}"


def build_records(
    resources: Iterable[SourcedResource],
    tables: Tables,
    invalid: Mapping[str, str] | None = None,
) -> RecordSet:
    """Group resources by Patient and map them. ``invalid`` maps origins to validation errors."""
    invalid = invalid or {}
    out = RecordSet()
    items = _deduplicate(list(resources))
    patients: dict[str, PatientRecord] = {}
    medications: dict[str, dict[str, Any]] = {}
    conflicts: dict[str, str] = {}
    for item, conflict in items:
        r = item.resource
        rtype = r.get("resourceType")
        ref = resource_ref(item)
        if conflict:
            conflicts[item.origin] = conflict
        if rtype == "Patient":
            record = patients.get(ref)
            if record is None:
                record = _patient(r, ref)
                patients[ref] = record
                out.records.append(record)
            if item.full_url:
                patients.setdefault(item.full_url, record)
        elif rtype == "Medication" and item.origin not in invalid and item.origin not in conflicts:
            # an invalid or conflicting Medication is not indexed: a reference to it stays unresolved
            medications[ref] = r
            if item.full_url:
                medications[item.full_url] = r
    mapper = _Mapper(tables, medications)
    for item, _ in items:
        r = item.resource
        rtype = r.get("resourceType")
        if rtype in ("Patient", "Medication"):
            if item.origin in invalid or item.origin in conflicts:
                record = patients.get(resource_ref(item)) if rtype == "Patient" else None
                problem = invalid.get(item.origin) or conflicts[item.origin]
                if record is not None:
                    record.integrity_problems.append(f"{resource_ref(item)}: {problem}")
                    record.integrity_evidence.append(resource_ref(item))
            continue
        subject = reference(r.get(SUBJECT_FIELD.get(str(rtype), "subject")))
        record = patients.get(normalise_reference(subject)) if subject else None
        ref = resource_ref(item)
        if record is None:
            why = f"its patient {subject!r} is not in the input" if subject else "it has no patient reference"
            out.orphans.append(f"{ref} ({item.origin}) ignored: {why}")
            continue
        fault = invalid.get(item.origin) or conflicts.get(item.origin)
        if fault:
            record.integrity_problems.append(f"{ref}: {fault}")
            record.integrity_evidence.append(ref)
            continue
        try:
            mapper.map(record, rtype, r, ref)
        except (TypeError, ValueError, AttributeError, OverflowError, KeyError) as exc:
            # Unvalidated input in a shape the mapper cannot read: never a crash, never silently
            # dropped (the resource might have been the one that excludes the patient).
            record.integrity_problems.append(f"{ref}: cannot be read ({type(exc).__name__})")
            record.integrity_evidence.append(ref)
    for record in out.records:
        for readings in record.readings.values():
            readings.sort(key=lambda x: x.day, reverse=True)
    return out


def _deduplicate(items: list[SourcedResource]) -> list[tuple[SourcedResource, str | None]]:
    """Drop exact duplicates (same type/id, same content); flag different content under one id."""
    seen: dict[str, SourcedResource] = {}
    out: list[tuple[SourcedResource, str | None]] = []
    for item in items:
        rid = item.resource.get("id")
        if not isinstance(rid, str) or not rid:
            out.append((item, None))
            continue
        key = f"{item.resource.get('resourceType')}/{rid}"
        first = seen.get(key)
        if first is None:
            seen[key] = item
            out.append((item, None))
        elif _same(first.resource, item.resource):
            continue
        else:
            out.append(
                (item, f"conflicting duplicate of {key} (also in {first.origin}); neither version is used")
            )
            # mark the first one as conflicting too
            for i, (prev, _) in enumerate(out):
                if prev is first:
                    out[i] = (
                        prev,
                        f"conflicting duplicate of {key} (also in {item.origin}); neither version is used",
                    )
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    strip = ("meta",)
    return {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}


def _patient(r: dict[str, Any], ref: str) -> PatientRecord:
    record = PatientRecord(ref=ref)
    birth = r.get("birthDate")
    if birth is None:
        record.birth_problem = "Patient.birthDate is not recorded"
    else:
        record.birth_date = date_range(birth)
        if record.birth_date is None:
            record.birth_problem = f"Patient.birthDate {birth!r} is not a valid date"
    _deceased(record, r)
    gender = r.get("gender")
    record.gender = gender if isinstance(gender, str) else None
    record.name = _display_name(r.get("name"))
    record.mrn = _mrn(r.get("identifier"))
    return record


def _deceased(record: PatientRecord, r: dict[str, Any]) -> None:
    """Patient.deceased[x]: a deceasedBoolean true or any deceasedDateTime records a death."""
    when, flag = r.get("deceasedDateTime"), r.get("deceasedBoolean")
    if when is not None:
        record.deceased = True
        record.deceased_on = date_range(when)
        if record.deceased_on is None:
            record.deceased_problem = f"Patient.deceasedDateTime {when!r} is not a valid date"
    elif flag is not None:
        if isinstance(flag, bool):
            record.deceased = flag
        else:
            record.deceased_problem = f"Patient.deceasedBoolean {flag!r} is not a boolean"


_NAME_USE_ORDER = ("official", "usual", None)
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _display_name(names: Any) -> str | None:
    """The official name (else usual, else first unlabelled) as one line; None when there is none."""
    if not isinstance(names, list):
        return None
    usable = [n for n in names if isinstance(n, dict) and n.get("use") not in ("old", "anonymous")]
    for use in _NAME_USE_ORDER:
        for n in usable:
            if n.get("use") == use or use is None:
                text = n.get("text")
                if isinstance(text, str) and text.strip():
                    return text.strip()
                given = [g for g in n.get("given") or [] if isinstance(g, str)]
                family = n.get("family") if isinstance(n.get("family"), str) else None
                parts = [*given, *([family] if family else [])]
                if parts:
                    return " ".join(parts)
    return None


def _mrn(identifiers: Any) -> str | None:
    """The medical record number: the identifier typed MR (HL7 v2-0203); else the only identifier.

    Several untyped identifiers are not guessed between: the summary then shows none.
    """
    if not isinstance(identifiers, list):
        return None
    ids = [i for i in identifiers if isinstance(i, dict) and isinstance(i.get("value"), str)]
    typed = [
        i
        for i in ids
        if any(
            c.get("system") == _V2_0203 and c.get("code") == "MR"
            for c in ((i.get("type") or {}).get("coding") or [])
            if isinstance(c, dict)
        )
    ]
    if len(typed) == 1:
        return str(typed[0]["value"])
    if not typed and len(ids) == 1:
        return str(ids[0]["value"])
    return None


class _Mapper:
    def __init__(self, tables: Tables, medications: dict[str, dict[str, Any]]) -> None:
        self.t = tables
        self.medications = medications

    def map(self, record: PatientRecord, rtype: Any, r: dict[str, Any], ref: str) -> None:
        if rtype == "Observation":
            self.observation(record, r, ref)
        elif rtype == "Condition":
            self.condition(record, r, ref)
        elif rtype in MED_GIVEN:
            self.medication(record, str(rtype), r, ref)
        elif rtype == "Procedure":
            self.procedure(record, r, ref)
        elif rtype == "AllergyIntolerance":
            self.allergy(record, r, ref)
        elif rtype == "Immunization":
            self.immunization(record, r, ref)

    # -- Observation ---------------------------------------------------------------------
    def observation(self, record: PatientRecord, r: dict[str, Any], ref: str) -> None:
        status = r.get("status")
        if status in OBS_IGNORED:
            return
        # the Observation itself and its components (e.g. QTcF inside an ECG panel); evidence
        # cites the Observation
        components = r.get("component")
        parts = [r, *(c for c in (components if isinstance(components, list) else []) if isinstance(c, dict))]
        when = date_range(r.get("effectiveDateTime") or r.get("effectiveInstant"))
        if when is None:
            when = period_range(r.get("effectivePeriod"))[0]
        for part in parts:
            names = self.t.concepts_for(codings(part.get("code")), "observation")
            if not names:
                continue
            if len(names) > 1:
                for name in names:
                    why = f"its code maps to several protocol concepts ({', '.join(sorted(names))})"
                    self._unusable(record, name, ref, when, why)
                continue
            concept = self.t.concepts[next(iter(names))]
            if status not in OBS_USABLE:
                self._unusable(record, concept.name, ref, when, f"status {status!r} is not a result status")
                continue
            if when is None:
                self._unusable(record, concept.name, ref, None, "no effective date")
                continue
            if not when.precise:
                self._unusable(
                    record, concept.name, ref, None, f"effective date {when} is not precise to the day"
                )
                continue
            result = self._value(concept, part)
            if isinstance(result, str):
                self._unusable(record, concept.name, ref, when.latest, result)
                continue
            reading = Reading(concept=concept.name, ref=ref, day=when.latest, status=str(status), **result)
            record.readings.setdefault(concept.name, []).append(reading)

    def _unusable(self, record: PatientRecord, concept: str, ref: str, when: Any, reason: str) -> None:
        day = when.latest if isinstance(when, DateRange) else when
        record.unusable.setdefault(concept, []).append(Unusable(concept, ref, day, reason))

    def _value(self, concept: Concept, part: dict[str, Any]) -> dict[str, Any] | str:
        """Keyword arguments for Reading, or the reason the value is unusable."""
        absent = part.get("dataAbsentReason")
        if absent is not None:
            why = display(absent) or "given"
            if any(k.startswith("value") for k in part):
                # FHIR obs-6: a value and a reason it is absent cannot both hold; neither is trusted
                return (
                    f"both a value and a dataAbsentReason ({why}) are recorded (FHIR invariant obs-6): "
                    "the value cannot be trusted"
                )
            return f"no value (dataAbsentReason: {why})"
        kind = concept.value
        if kind in ("quantity", "quantity-or-coded") and "valueQuantity" in part:
            return self._quantity(concept, part)
        if kind == "integer":
            return self._integer(concept, part)
        if kind in ("coded", "quantity-or-coded"):
            return self._coded(concept, part)
        present = [k for k in part if k.startswith("value")]
        return f"expected a quantity, found {present[0] if present else 'no value'}"

    def _resolve_unit(self, q: dict[str, Any]) -> str | None:
        code, system, unit = q.get("code"), q.get("system"), q.get("unit")
        if system == UCUM_SYSTEM and isinstance(code, str) and code:
            return self.t.unit_equivalent.get(code, code)
        return self._unit_from_text(code, unit)

    def _unit_from_text(self, code: Any, unit: Any) -> str | None:
        for candidate in (code, unit):
            if isinstance(candidate, str) and candidate:
                if candidate in self.t.unit_aliases:
                    return self.t.unit_aliases[candidate]
                if candidate in self.t.unit_equivalent:
                    return self.t.unit_equivalent[candidate]
        if isinstance(unit, str) and unit and is_valid_ucum(unit):
            return unit
        return None

    def _convert(self, value: float, q: dict[str, Any], concept: Concept) -> float | str:
        unit = self._resolve_unit(q)
        target = concept.unit or "1"
        if unit is None:
            shown = q.get("unit") or q.get("code")
            return f"unknown unit {shown!r}" if shown else "no unit"
        disagreement = self._unit_disagreement(q, unit, concept)
        if disagreement:
            return disagreement
        try:
            factor = conversion_factor(unit, target, self.t.molar_mass.get(concept.name))
        except UnitError as exc:
            return f"unit {unit!r} cannot be converted to {target!r} ({exc})"
        converted = value * factor
        if not math.isfinite(converted):
            return f"value {value!r} {unit} is not a finite number in {target}"
        return drop_float_noise(converted)

    def _unit_disagreement(self, q: dict[str, Any], coded: str, concept: Concept) -> str | None:
        """The display unit, when it is a unit we know, must mean the same as the coded one."""
        shown = q.get("unit")
        if q.get("system") != UCUM_SYSTEM or not isinstance(shown, str) or not shown:
            return None
        text_unit = self._unit_from_text(None, shown)
        if text_unit is None or text_unit == coded:
            return None
        try:
            mm = self.t.molar_mass.get(concept.name)
            same = abs(conversion_factor(text_unit, coded, mm) - 1.0) < 1e-9
        except UnitError:
            same = False
        return None if same else f"Quantity.unit {shown!r} disagrees with Quantity.code {coded!r}"

    def _plausible(self, concept: str, value: float) -> str | None:
        if not math.isfinite(value):
            return f"value {value!r} is not a finite number"
        limits = self.t.plausible.get(concept)
        if not limits:
            return None
        if "min" in limits and value < limits["min"]:
            return f"implausible value {value:g} (below {limits['min']:g})"
        if "min_exclusive" in limits and value <= limits["min_exclusive"]:
            return f"implausible value {value:g} (must be above {limits['min_exclusive']:g})"
        if "max" in limits and value > limits["max"]:
            return f"implausible value {value:g} (above {limits['max']:g})"
        return None

    def _quantity(self, concept: Concept, part: dict[str, Any]) -> dict[str, Any] | str:
        q = part.get("valueQuantity")
        if not isinstance(q, dict) or not is_number(q.get("value")):
            return "valueQuantity has no numeric value"
        comparator, problem = self._comparator(q)
        if problem:
            return problem
        converted = self._convert(float(q["value"]), q, concept)
        if isinstance(converted, str):
            return converted
        implausible = self._plausible(concept.name, converted)
        if implausible:
            return f"{implausible} {concept.unit}"
        out: dict[str, Any] = {"number": converted, "comparator": comparator, "unit": concept.unit}
        out.update(self._uln(concept, part))
        return out

    @staticmethod
    def _comparator(q: dict[str, Any]) -> tuple[str | None, str | None]:
        """The Quantity's bound comparator (None: an exact value), or why the value is not usable."""
        comparator = q.get("comparator")
        if comparator is None:
            return None, None
        if isinstance(comparator, str) and comparator in BOUND_COMPARATORS:
            return comparator, None
        if comparator == "ad":
            return None, "comparator 'ad' (sufficient to achieve this total quantity) is not a measured value"
        return None, f"unknown comparator {comparator!r}"

    def _uln(self, concept: Concept, part: dict[str, Any]) -> dict[str, Any]:
        """The ULN from the Observation's own referenceRange.high, else the table's default.

        A referenceRange.high that cannot be used (no number, a unit that does not convert, not
        positive, outside the plausible ULN range ``plausible: <concept>.uln`` in units.yaml), or
        several that disagree, make the ULN unknown with the reason: the default never stands in
        for a ULN the laboratory reported, however wrong it is.
        """
        highs: list[float] = []
        problem: str | None = None
        for rr in part.get("referenceRange") or []:
            if not isinstance(rr, dict) or not isinstance(rr.get("high"), dict):
                continue
            rtype = codings(rr.get("type"))
            if rtype and not any(code == "normal" for _s, code in rtype):
                continue
            high = rr["high"]
            if not is_number(high.get("value")):
                problem = "referenceRange.high has no number"
                continue
            converted = self._convert(float(high["value"]), high, concept)
            if isinstance(converted, str):
                problem = f"referenceRange.high: {converted}"
                continue
            if converted <= 0:
                problem = f"referenceRange.high {converted:g} is not positive"
                continue
            implausible = self._plausible(f"{concept.name}.uln", converted)
            if implausible:
                problem = f"referenceRange.high: {implausible} {concept.unit} for an upper limit of normal"
                continue
            highs.append(converted)
        if problem is not None:
            return {"uln": None, "uln_source": None, "uln_problem": problem}
        if highs and max(highs) - min(highs) <= 1e-9 * max(highs):
            return {"uln": highs[0], "uln_source": "referenceRange"}
        if len(highs) > 1:
            problem = "several reference ranges with different upper limits"
        default = self.t.default_uln.get(concept.name)
        if problem is None and default is not None:
            return {"uln": default, "uln_source": "default"}
        return {"uln": None, "uln_source": None, "uln_problem": problem}

    def _integer(self, concept: Concept, part: dict[str, Any]) -> dict[str, Any] | str:
        value: Any = None
        comparator: str | None = None
        if "valueInteger" in part:
            value = part["valueInteger"]
        elif isinstance(part.get("valueQuantity"), dict):
            q = part["valueQuantity"]
            unit = q.get("code") or q.get("unit")
            if unit not in (None, "1", "{score}", "{#}", "{count}"):
                return f"unexpected unit {unit!r} for a count or score"
            value = q.get("value")
            comparator, bad = self._comparator(q)
            if bad:
                return bad
        elif concept.value_set and "valueCodeableConcept" in part:
            coded = self._coded(concept, part)
            if isinstance(coded, str):
                return coded
            value = coded["coded"]
            try:
                value = int(value)
            except ValueError:
                return f"coded value {value!r} is not a number"
        else:
            present = [k for k in part if k.startswith("value")]
            return f"expected an integer, found {present[0] if present else 'no value'}"
        if not is_number(value) or float(value) != int(value):
            return f"value {value!r} is not a whole number"
        problem = self._plausible(concept.name, float(value))
        if problem:
            return problem
        return {"number": float(value), "comparator": comparator, "unit": None}

    def _coded(self, concept: Concept, part: dict[str, Any]) -> dict[str, Any] | str:
        vs = concept.value_set or ""
        if "valueCodeableConcept" in part:
            cc = part["valueCodeableConcept"]
            found = self.t.values_for(vs, codings(cc))
            if not found:
                shown = ", ".join(f"{s}|{c}" for s, c in codings(cc)) or display(cc) or "no coding"
                return f"coded value ({shown}) is not in value set {vs!r}"
        elif isinstance(part.get("valueBoolean"), bool) and vs in ("yes-no", "positive-negative"):
            truth = part["valueBoolean"]
            found = {("yes" if truth else "no") if vs == "yes-no" else ("positive" if truth else "negative")}
        elif not any(k.startswith("value") for k in part) and part.get("interpretation"):
            found = set()
            for interp in part.get("interpretation") or []:
                found |= self.t.values_for(vs, codings(interp))
            if not found:
                return f"no value, and the interpretation is not in value set {vs!r}"
        else:
            present = [k for k in part if k.startswith("value")]
            return f"expected a coded value, found {present[0] if present else 'no value'}"
        if len(found) > 1:
            return f"coded value is ambiguous ({', '.join(sorted(found))})"
        return {"coded": next(iter(found))}

    # -- Condition -----------------------------------------------------------------------
    def condition(self, record: PatientRecord, r: dict[str, Any], ref: str) -> None:
        verification, ver_problem = status_code(
            r.get("verificationStatus"), COND_VERIFICATION_SYSTEM, COND_VERIFICATION_CODES
        )
        if verification in VERIFICATION_IGNORED:
            return
        names = self.t.concepts_for(codings(r.get("code")), "condition")
        severity_codings = codings(r.get("severity"))
        severities = self.t.values_for("severity", severity_codings)
        grades = self.t.values_for("ctcae-grade", severity_codings)
        grade_exact = len(grades) == 1
        if grade_exact:
            grade: int | None = int(next(iter(grades)))
        else:
            grade = SEVERITY_GRADE.get(next(iter(severities))) if len(severities) == 1 else None
        recorded = date_range(r.get("recordedDate"))
        if not names and (grade is not None or r.get("severity") is not None):
            # A graded condition no table names may be a toxicity of treatment; the dose engine
            # decides by its dates whether it arose on treatment. A severity that cannot be read
            # as a grade marks it too (ungraded: never silently dropped).
            names = {ADVERSE_EVENT}
        if not names:
            return
        clinical, clin_problem = status_code(
            r.get("clinicalStatus"), COND_CLINICAL_SYSTEM, COND_CLINICAL_CODES
        )
        has_abatement = any(k.startswith("abatement") for k in r)
        # a status that cannot be read is unknown: possibly active, not confirmed (never the default)
        active = (
            clinical in COND_ACTIVE or clin_problem is not None or (clinical is None and not has_abatement)
        )
        problems = [
            f"clinicalStatus {clin_problem}" if clin_problem else None,
            f"verificationStatus {ver_problem}" if ver_problem else None,
        ]
        status_problem = "; ".join(p for p in problems if p) or None
        onset = date_range(r.get("onsetDateTime")) or period_range(r.get("onsetPeriod"))[0]
        abatement = date_range(r.get("abatementDateTime")) or period_range(r.get("abatementPeriod"))[1]
        for name in names:
            fact = ConditionFact(
                concept=name,
                ref=ref,
                active=active,
                clinical_status=UNREADABLE_STATUS if clin_problem else clinical,
                confirmed=verification not in VERIFICATION_UNCONFIRMED and ver_problem is None,
                onset=onset,
                abatement=abatement,
                severity=next(iter(severities)) if len(severities) == 1 else None,
                display=display(r.get("code")),
                grade=grade,
                grade_exact=grade_exact,
                recorded=recorded,
                status_problem=status_problem,
            )
            record.conditions.setdefault(name, []).append(fact)

    # -- Medications ---------------------------------------------------------------------
    def _medication_codings(
        self, r: dict[str, Any], ref: str
    ) -> tuple[list[tuple[str, str]], str, str | None]:
        """Codings of the drug, its display, and a problem if the drug cannot be identified."""
        if "medicationCodeableConcept" in r:
            cc = r["medicationCodeableConcept"]
            found = codings(cc)
            if not found:
                return [], display(cc), f"{ref}: the medication is not coded ({display(cc) or 'no text'})"
            return found, display(cc), None
        target = reference(r.get("medicationReference"))
        if target is None:
            return [], "", f"{ref}: no medication given"
        med: Any = None
        if target.startswith("#"):
            for c in r.get("contained") or []:
                if isinstance(c, dict) and c.get("id") == target[1:]:
                    med = c
        else:
            med = self.medications.get(normalise_reference(target)) or self.medications.get(target)
        if not isinstance(med, dict):
            return [], "", f"{ref}: medication {target} is not in the input, so the drug is unknown"
        found = codings(med.get("code"))
        for ing in med.get("ingredient") or []:
            if isinstance(ing, dict):
                found += codings(ing.get("itemCodeableConcept"))
        if not found:
            return [], display(med.get("code")), f"{ref}: medication {target} is not coded"
        return found, display(med.get("code")), None

    def medication(self, record: PatientRecord, rtype: str, r: dict[str, Any], ref: str) -> None:
        status = r.get("status")
        if status not in MED_GIVEN[rtype]:
            return
        found, shown, problem = self._medication_codings(r, ref)
        if problem:
            record.integrity_problems.append(problem)
            record.integrity_evidence.append(ref)
            return
        names = self.t.concepts_for(found, "medication")
        if not names:
            return
        start, end = self._exposure_dates(rtype, r)
        ongoing = status in MED_ONGOING
        intrathecal = self._intrathecal(rtype, r)
        dose = self._dose(rtype, r)
        planned = self._planned(r) if rtype == "MedicationRequest" else None
        for name in names:
            record.exposures.setdefault(name, []).append(
                Exposure(
                    name,
                    ref,
                    str(status),
                    start,
                    end,
                    ongoing,
                    intrathecal,
                    shown,
                    resource_type=rtype,
                    planned=planned,
                    **self._plausible_dose(name, dose),
                )
            )

    def _dosages(self, rtype: str, r: dict[str, Any]) -> list[dict[str, Any]]:
        if rtype == "MedicationAdministration":
            dosage = r.get("dosage")
            return [dosage] if isinstance(dosage, dict) else []
        key = "dosageInstruction" if rtype == "MedicationRequest" else "dosage"
        return [d for d in r.get(key) or [] if isinstance(d, dict)]

    def _dose(self, rtype: str, r: dict[str, Any]) -> dict[str, Any]:
        """The dose per administration in mg (or mg/m2), or why it cannot be read."""
        quantities: list[Any] = []
        for dosage in self._dosages(rtype, r):
            if rtype == "MedicationAdministration":
                if "dose" in dosage:
                    quantities.append(dosage.get("dose"))
                continue
            for dr in dosage.get("doseAndRate") or []:
                if isinstance(dr, dict) and "doseQuantity" in dr:
                    quantities.append(dr.get("doseQuantity"))
        if not quantities:
            return {}
        if len(quantities) > 1:
            return {"dose_problem": "several doses recorded in one resource"}
        q = quantities[0]
        if not isinstance(q, dict) or not is_number(q.get("value")):
            return {"dose_problem": "the dose has no numeric value"}
        unit = self._resolve_unit(q)
        if unit is None:
            shown = q.get("unit") or q.get("code")
            return {"dose_problem": f"unknown dose unit {shown!r}" if shown else "the dose has no unit"}
        value = float(q["value"])
        for target, key in (("mg", "dose_mg"), ("mg/m2", "dose_mg_per_m2")):
            try:
                return {key: drop_float_noise(value * conversion_factor(unit, target, None))}
            except UnitError:
                continue
        return {"dose_problem": f"dose unit {unit!r} is neither a mass nor a mass per m2"}

    def _plausible_dose(self, concept: str, dose: dict[str, Any]) -> dict[str, Any]:
        """The dose, or the reason it cannot be used when it is outside the concept's plausible
        range (``plausible: <concept>.dose-mg`` / ``.dose-mg-per-m2`` in units.yaml)."""
        kinds = (("dose_mg", "dose-mg", "mg"), ("dose_mg_per_m2", "dose-mg-per-m2", "mg/m2"))
        for key, suffix, unit in kinds:
            value = dose.get(key)
            if value is not None:
                problem = self._plausible(f"{concept}.{suffix}", value)
                if problem:
                    return {"dose_problem": f"{problem} {unit} for one dose"}
        return dose

    def _planned(self, r: dict[str, Any]) -> DateRange | None:
        for dosage in self._dosages("MedicationRequest", r):
            timing = dosage.get("timing")
            if not isinstance(timing, dict):
                continue
            events = timing.get("event")
            if isinstance(events, list) and events:
                return date_range(events[0])
            repeat = timing.get("repeat")
            if isinstance(repeat, dict):
                start = period_range(repeat.get("boundsPeriod"))[0]
                if start is not None:
                    return start
        return None

    def _exposure_dates(self, rtype: str, r: dict[str, Any]) -> tuple[DateRange | None, DateRange | None]:
        if rtype in ("MedicationAdministration", "MedicationStatement"):
            point = date_range(r.get("effectiveDateTime"))
            if point is not None:
                return point, point
            return period_range(r.get("effectivePeriod"))
        # MedicationRequest: the order's bounds, else when it was written (start only)
        start = date_range(r.get("authoredOn"))
        end = None
        for dosage in r.get("dosageInstruction") or []:
            if not isinstance(dosage, dict):
                continue
            repeat = (
                (dosage.get("timing") or {}).get("repeat") if isinstance(dosage.get("timing"), dict) else None
            )
            if isinstance(repeat, dict):
                b_start, b_end = period_range(repeat.get("boundsPeriod"))
                start = start or b_start
                if b_end and (end is None or b_end.latest > end.latest):
                    end = b_end
        if end is None:
            dispense = r.get("dispenseRequest")
            if isinstance(dispense, dict):
                end = period_range(dispense.get("validityPeriod"))[1]
        return start, end

    def _intrathecal(self, rtype: str, r: dict[str, Any]) -> bool:
        routes = [d.get("route") for d in self._dosages(rtype, r)]
        return any("intrathecal" in self.t.values_for("route", codings(route)) for route in routes)

    # -- Immunization ----------------------------------------------------------------------
    def immunization(self, record: PatientRecord, r: dict[str, Any], ref: str) -> None:
        """A given vaccine is an exposure; one the tables cannot classify is kept as unclassified."""
        if r.get("status") != "completed":
            return
        names = self.t.concepts_for(codings(r.get("vaccineCode")), "medication") or {UNCLASSIFIED_VACCINE}
        when = date_range(r.get("occurrenceDateTime"))
        for name in names:
            record.exposures.setdefault(name, []).append(
                Exposure(name, ref, "completed", when, when, False, False, display(r.get("vaccineCode")))
            )

    # -- Procedure -----------------------------------------------------------------------
    def procedure(self, record: PatientRecord, r: dict[str, Any], ref: str) -> None:
        status = r.get("status")
        if status not in PROC_DONE:
            return
        names = self.t.concepts_for(codings(r.get("code")), "procedure")
        if not names:
            return
        start, end = period_range(r.get("performedPeriod"))
        when = date_range(r.get("performedDateTime")) or end or start
        for name in names:
            record.procedures.setdefault(name, []).append(
                ProcedureFact(name, ref, str(status), when, display(r.get("code")))
            )

    # -- AllergyIntolerance ----------------------------------------------------------------
    def allergy(self, record: PatientRecord, r: dict[str, Any], ref: str) -> None:
        verification, ver_problem = status_code(
            r.get("verificationStatus"), ALLERGY_VERIFICATION_SYSTEM, ALLERGY_VERIFICATION_CODES
        )
        if verification in VERIFICATION_IGNORED:
            return
        found = codings(r.get("code"))
        for reaction in r.get("reaction") or []:
            if isinstance(reaction, dict):
                found += codings(reaction.get("substance"))
        names = self.t.concepts_for(found, "allergy")
        clinical, clin_problem = status_code(
            r.get("clinicalStatus"), ALLERGY_CLINICAL_SYSTEM, ALLERGY_CLINICAL_CODES
        )
        problems = [
            f"clinicalStatus {clin_problem}" if clin_problem else None,
            f"verificationStatus {ver_problem}" if ver_problem else None,
        ]
        for name in names:
            record.allergies.setdefault(name, []).append(
                AllergyFact(
                    name,
                    ref,
                    active=clinical not in ("inactive", "resolved"),
                    confirmed=verification not in VERIFICATION_UNCONFIRMED and ver_problem is None,
                    display=display(r.get("code")),
                    status_problem="; ".join(p for p in problems if p) or None,
                )
            )
