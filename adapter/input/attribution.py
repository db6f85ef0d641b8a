"""Bulk data that could not be read costs its own patient, not the run.

Each :class:`~adapter.input.reader.BrokenLine` is attributed to the patients its raw text named
(a ``subject``/``patient`` reference, or the line being the Patient itself): the problem joins
their records' integrity problems, so the continuing ``input-integrity`` criterion makes them
``unknown`` (no eligibility, no dose) while every other patient is evaluated. A line whose patient
cannot be told is an orphan problem. Messages name patients by :func:`patient_tag`, never by
reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from adapter.domain import PatientRecord
from adapter.input.reader import BrokenLine, InputBatch, SourcedResource
from adapter.mapping.fhir_values import normalise_reference
from adapter.safe_text import patient_tag


@dataclass(slots=True)
class Attribution:
    #: One line per attributed broken line (no patient data): where, fault, whose integrity.
    notes: list[str] = field(default_factory=list)
    #: One line per broken line whose patient could not be told.
    orphans: list[str] = field(default_factory=list)


def placeholder_patients(batch: InputBatch) -> list[SourcedResource]:
    """A bare Patient (``resourceType`` and ``id``) for each broken Patient line whose Patient is
    nowhere else in the input, so that the patient still gets a result (blocked by input-integrity)
    and their other resources are not orphans."""
    known = {
        f"Patient/{item.resource.get('id')}"
        for item in batch.resources
        if item.resource.get("resourceType") == "Patient"
    }
    out: list[SourcedResource] = []
    for broken in batch.broken:
        if broken.patient_id is None:
            continue
        ref = f"Patient/{broken.patient_id}"
        if ref not in known:
            known.add(ref)
            out.append(SourcedResource({"resourceType": "Patient", "id": broken.patient_id}, broken.origin))
    return out


def _candidates(broken: BrokenLine) -> list[str]:
    refs = [f"Patient/{broken.patient_id}"] if broken.patient_id else []
    for ref in broken.references:
        refs += [ref, normalise_reference(ref)]
    return list(dict.fromkeys(refs))


def attribute_broken(records: Sequence[PatientRecord], broken: Iterable[BrokenLine]) -> Attribution:
    """Add each broken line's problem to the records of the patients it names."""
    by_ref = {record.ref: record for record in records}
    out = Attribution()
    for line in broken:
        owners: list[PatientRecord] = []
        for ref in _candidates(line):
            record = by_ref.get(ref)
            if record is not None and all(record is not o for o in owners):
                owners.append(record)
        for record in owners:
            record.integrity_problems.append(
                f"{line.where} cannot be read ({line.fault}); its data is not used"
            )
        if owners:
            whose = ", ".join(patient_tag(record.ref) for record in owners)
            out.notes.append(f"{line.origin}: {line.fault}; input-integrity is unknown for {whose}")
        else:
            out.orphans.append(orphan_note(line))
    return out


def orphan_note(line: BrokenLine) -> str:
    """The note for a broken line whose patient cannot be told (counted, reported; no patient data)."""
    return f"{line.origin}: {line.fault}; ignored: its patient cannot be told"
