"""The write-back code table (``mappings/writeback.yaml``), validated and loaded once."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from adapter.errors import MappingTableError
from adapter.mapping.tables import MAPPINGS_DIR, load_yaml_file

WRITEBACK_FILE = MAPPINGS_DIR / "writeback.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(_Model):
    system: str
    code: str
    display: str | None = None


class Concept(_Model):
    coding: tuple[Coding, ...]
    text: str | None = None

    def as_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"coding": [c.model_dump(exclude_none=True) for c in self.coding]}
        if self.text:
            out["text"] = self.text
        return out


class IdentifierSystems(_Model):
    dose: str
    cycle: str
    premedication: str
    bsa: str
    issue: str
    summary: str
    software: str


class NormalizationBasis(_Model):
    url: str
    value: Concept


class BsaObservation(_Model):
    category: Concept
    code: Concept


class SummaryDocument(_Model):
    type: Concept
    category: Concept


class ProvenanceCodes(_Model):
    agent_type: Concept
    activity: Concept
    entity_role: str


class IssueCode(_Model):
    match: tuple[str, ...] = ()
    code: str
    display: str


class DetectedIssueCodes(_Model):
    severity: dict[str, str]
    criterion_severity: dict[str, str]
    codes: tuple[IssueCode, ...]
    default: IssueCode

    def code_for(self, finding_id: str) -> IssueCode:
        """The v3-ActCode of the first rule matching the id exactly or as a prefix ending in '-'."""
        for rule in self.codes:
            for m in rule.match:
                if finding_id == m or (m.endswith("-") and finding_id.startswith(m)):
                    return rule
        return self.default


class WritebackCodes(_Model):
    identifier_systems: IdentifierSystems
    provenance_tag_system: str
    match_by_tag: tuple[str, ...]
    protocol_uri: str
    finding_system: str
    medication: Concept
    route: Concept
    dose_rate_type: Concept
    normalization_basis: NormalizationBasis
    bsa_observation: BsaObservation
    summary_document: SummaryDocument
    provenance: ProvenanceCodes
    detected_issue: DetectedIssueCodes


@functools.cache
def load_codes() -> WritebackCodes:
    doc = load_yaml_file(WRITEBACK_FILE)
    try:
        return WritebackCodes.model_validate(doc)
    except ValidationError as exc:
        raise MappingTableError(f"{WRITEBACK_FILE}: {exc}") from None
