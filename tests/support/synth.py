"""Builders for realistic synthetic FHIR R4 records of B-ALL patients (test data and examples/).

No public source has leukaemia patients with neutrophil counts, so tests build their own.
Every builder returns plain R4 JSON dicts; the tests check they validate with the R4B models.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ATC = "http://www.whocc.no/atc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
UCUM = "http://unitsofmeasure.org"
INO = "https://fhir.ino-adapter.org/CodeSystem/protocol-concept"
INO_VALUE = "https://fhir.ino-adapter.org/CodeSystem/protocol-value"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VER = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"

# Lab definitions: concept -> (LOINC code, display, UCUM unit, reference high or None)
LABS: dict[str, tuple[str, str, str, float | None]] = {
    "neutrophils": ("751-8", "Neutrophils [#/volume] in Blood by Automated count", "10*9/L", 7.5),
    "platelets": ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*9/L", 400),
    "leukocytes": ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*9/L", 11.0),
    "bilirubin-total": ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "umol/L", 21),
    "ast": ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 40),
    "alt": ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 41),
    "creatinine": ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "umol/L", 104),
    "body-weight": ("29463-7", "Body weight", "kg", None),
    "body-height": ("8302-2", "Body height", "cm", None),
    "qtcf": ("76634-5", "QT interval corrected by Fridericia formula", "ms", None),
}


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def cc(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text:
        out["text"] = text
    return out


@dataclass
class PatientBuilder:
    """Builds one patient's resources. Dates are given as day offsets from ``today``."""

    pid: str
    birth_date: str | None
    gender: str | None
    today: date
    family: str = "Synthetic"
    given: str = "Test"
    resources: list[dict[str, Any]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "id": self.pid,
            "identifier": [
                {
                    "type": {
                        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                    },
                    "system": "urn:oid:2.16.840.1.113883.19.5",
                    "value": f"MRN-{self.pid}",
                }
            ],
            "name": [{"family": self.family, "given": [self.given]}],
        }
        if self.gender:
            patient["gender"] = self.gender
        if self.birth_date:
            patient["birthDate"] = self.birth_date
        self.resources.append(patient)

    @property
    def ref(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    def _id(self, prefix: str) -> str:
        return f"{self.pid}-{prefix}-{next(self._ids)}"

    def day(self, offset: int) -> str:
        return (self.today + timedelta(days=offset)).isoformat()

    def at(self, offset: int, hour: int = 8) -> str:
        return f"{self.day(offset)}T{hour:02d}:30:00Z"

    # -- observations ------------------------------------------------------------------
    def lab(
        self,
        concept: str,
        value: float,
        days_ago: int = 1,
        unit: str | None = None,
        high: float | bool | None = True,
        status: str = "final",
        comparator: str | None = None,
    ) -> dict[str, Any]:
        code, display, canonical, ref_high = LABS[concept]
        unit = unit or canonical
        category = "vital-signs" if concept in ("body-weight", "body-height") else "laboratory"
        q: dict[str, Any] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        if comparator:
            q["comparator"] = comparator
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": self._id(concept),
            "status": status,
            "category": [cc(OBS_CAT, category)],
            "code": cc(LOINC, code, display),
            "subject": self.ref,
            "effectiveDateTime": self.at(-days_ago),
            "valueQuantity": q,
        }
        if high is True and ref_high is not None:
            obs["referenceRange"] = [
                {"high": {"value": ref_high, "unit": canonical, "system": UCUM, "code": canonical}}
            ]
        elif isinstance(high, (int, float)) and not isinstance(high, bool):
            obs["referenceRange"] = [{"high": {"value": high, "unit": unit, "system": UCUM, "code": unit}}]
        self.resources.append(obs)
        return obs

    def fact(
        self,
        concept: str,
        value: Any,
        days_ago: int = 2,
        system: str = INO,
        code: str | None = None,
        value_system: str = INO_VALUE,
        status: str = "final",
    ) -> dict[str, Any]:
        """A protocol fact Observation: coded (str), integer (int), or percent (float)."""
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": self._id(concept),
            "status": status,
            "category": [cc(OBS_CAT, "laboratory")],
            "code": cc(system, code or concept),
            "subject": self.ref,
            "effectiveDateTime": self.at(-days_ago),
        }
        if isinstance(value, bool):
            obs["valueBoolean"] = value
        elif isinstance(value, int):
            obs["valueInteger"] = value
        elif isinstance(value, float):
            obs["valueQuantity"] = {"value": value, "unit": "%", "system": UCUM, "code": "%"}
        else:
            obs["valueCodeableConcept"] = cc(value_system, str(value))
        self.resources.append(obs)
        return obs

    def quantity(
        self,
        concept: str,
        value: float,
        unit: str,
        days_ago: int = 1,
        system: str = INO,
        code: str | None = None,
    ) -> dict[str, Any]:
        obs = self.fact(concept, "placeholder", days_ago, system, code)
        del obs["valueCodeableConcept"]
        obs["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        return obs

    # -- conditions, procedures, medications, allergies ----------------------------------
    def condition(
        self,
        system: str,
        code: str,
        display: str,
        onset_days_ago: int = 400,
        clinical: str | None = "active",
        verification: str | None = "confirmed",
        abatement_days_ago: int | None = None,
        severity: str | None = None,
    ) -> dict[str, Any]:
        cond: dict[str, Any] = {
            "resourceType": "Condition",
            "id": self._id("cond"),
            "code": cc(system, code, display),
            "subject": self.ref,
            "onsetDateTime": self.day(-onset_days_ago),
        }
        if clinical:
            cond["clinicalStatus"] = cc(COND_CLINICAL, clinical)
        if verification:
            cond["verificationStatus"] = cc(COND_VER, verification)
        if abatement_days_ago is not None:
            cond["abatementDateTime"] = self.day(-abatement_days_ago)
        if severity:
            codes = {"severe": "24484000", "moderate": "6736007", "mild": "255604002"}
            cond["severity"] = cc(SCT, codes[severity], severity.capitalize())
        self.resources.append(cond)
        return cond

    def medication(
        self,
        kind: str,
        atc: str,
        display: str,
        start_days_ago: int,
        end_days_ago: int | None = None,
        status: str | None = None,
        route: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        med = cc(ATC, atc, display, text=display)
        r: dict[str, Any] = {"resourceType": kind, "id": self._id("med"), "subject": self.ref}
        if kind == "MedicationRequest":
            r.update(
                status=status or ("active" if end_days_ago is None else "completed"),
                intent="order",
                medicationCodeableConcept=med,
                authoredOn=self.day(-start_days_ago),
            )
            dosage: dict[str, Any] = {"text": display}
            if end_days_ago is not None:
                dosage["timing"] = {
                    "repeat": {
                        "boundsPeriod": {"start": self.day(-start_days_ago), "end": self.day(-end_days_ago)}
                    }
                }
            if route:
                dosage["route"] = cc(SCT, route[0], route[1])
            r["dosageInstruction"] = [dosage]
        elif kind == "MedicationStatement":
            period: dict[str, str] = {"start": self.day(-start_days_ago)}
            if end_days_ago is not None:
                period["end"] = self.day(-end_days_ago)
            r.update(
                status=status or ("active" if end_days_ago is None else "completed"),
                medicationCodeableConcept=med,
                effectivePeriod=period,
            )
        else:
            r.update(
                status=status or "completed",
                medicationCodeableConcept=med,
                effectiveDateTime=self.at(-start_days_ago),
            )
            if route:
                r["dosage"] = {"route": cc(SCT, route[0], route[1])}
        self.resources.append(r)
        return r

    def administration(
        self,
        days_ago: int,
        mg: float | None,
        status: str = "completed",
        unit: str = "mg",
        atc: str = "L01FB01",
    ) -> dict[str, Any]:
        """An inotuzumab ozogamicin MedicationAdministration (IV) of ``mg`` on the given day."""
        r: dict[str, Any] = {
            "resourceType": "MedicationAdministration",
            "id": self._id("ino-admin"),
            "status": status,
            "medicationCodeableConcept": cc(ATC, atc, "inotuzumab ozogamicin"),
            "subject": self.ref,
            "effectiveDateTime": self.at(-days_ago, 10),
            "dosage": {"route": cc(SCT, "47625008", "Intravenous route")},
        }
        if mg is not None:
            r["dosage"]["dose"] = {"value": mg, "unit": unit, "system": UCUM, "code": unit}
        self.resources.append(r)
        return r

    def inotuzumab_order(
        self,
        days_ago: int,
        mg: float | None,
        status: str = "active",
        unit: str = "mg",
        rid: str | None = None,
    ) -> dict[str, Any]:
        """An inotuzumab ozogamicin MedicationRequest for one dose on the given day (timing.event)."""
        dosage: dict[str, Any] = {
            "text": "inotuzumab ozogamicin IV",
            "timing": {"event": [self.at(-days_ago, 10)]},
            "route": cc(SCT, "47625008", "Intravenous route"),
        }
        if mg is not None:
            dosage["doseAndRate"] = [
                {"doseQuantity": {"value": mg, "unit": unit, "system": UCUM, "code": unit}}
            ]
        r: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": rid or self._id("ino-order"),
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": cc(ATC, "L01FB01", "inotuzumab ozogamicin"),
            "subject": self.ref,
            "authoredOn": self.day(-days_ago - 1),
            "dosageInstruction": [dosage],
        }
        self.resources.append(r)
        return r

    def toxicity(
        self,
        display: str,
        grade: int,
        onset_days_ago: int,
        system: str = "http://example.org/local-ae",
        code: str = "ae",
        clinical: str = "active",
        abatement_days_ago: int | None = None,
    ) -> dict[str, Any]:
        """A Condition graded with an NCI Thesaurus CTCAE grade code in Condition.severity."""
        cond = self.condition(
            system, code, display, onset_days_ago, clinical, "confirmed", abatement_days_ago
        )
        grades = {1: "C41338", 2: "C41339", 3: "C41340", 4: "C41337", 5: "C48275"}
        cond["severity"] = cc(NCIT, grades[grade], f"Grade {grade}")
        return cond

    def procedure(
        self, code: str, display: str, days_ago: int, status: str = "completed", system: str = SCT
    ) -> dict[str, Any]:
        proc = {
            "resourceType": "Procedure",
            "id": self._id("proc"),
            "status": status,
            "code": cc(system, code, display),
            "subject": self.ref,
            "performedDateTime": self.day(-days_ago),
        }
        self.resources.append(proc)
        return proc

    def allergy(
        self, system: str, code: str, display: str, verification: str = "confirmed"
    ) -> dict[str, Any]:
        a = {
            "resourceType": "AllergyIntolerance",
            "id": self._id("allergy"),
            "clinicalStatus": cc(ALLERGY_CLINICAL, "active"),
            "verificationStatus": cc(ALLERGY_VER, verification),
            "code": cc(system, code, display),
            "patient": self.ref,
        }
        self.resources.append(a)
        return a

    # -- output -------------------------------------------------------------------------
    def bundle(self, btype: str = "collection") -> dict[str, Any]:
        entries = []
        for r in self.resources:
            entry: dict[str, Any] = {
                "fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}",
                "resource": copy.deepcopy(r),
            }
            if btype == "transaction":
                entry["request"] = {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
            entries.append(entry)
        return {"resourceType": "Bundle", "type": btype, "entry": entries}


def full_workup(
    b: PatientBuilder, *, female_not_pregnant: bool = True, ph: str = "negative"
) -> PatientBuilder:
    """A complete, fresh pre-treatment work-up that meets every variant's criteria (Ph-negative).

    Labs are 1-2 days old, so they satisfy the UK 7-day window and the 14-day windows.
    """
    b.condition(ICD10, "C91.0", "Acute lymphoblastic leukaemia", onset_days_ago=420, clinical="relapse")
    b.fact("disease-status", "relapsed", days_ago=6)
    b.fact("cd22-positive-blasts-percent", 86.0, days_ago=6)
    b.fact("philadelphia-status", ph, days_ago=30)
    b.fact("hsct-candidate", "yes", days_ago=3)
    b.fact("prior-induction-lines", 1, days_ago=3)
    b.fact("ecog", 1, days_ago=2, system=LOINC, code="89247-1")
    b.fact("hbv-serology", "negative", days_ago=10)
    b.fact("hcv-serology", "negative", days_ago=10)
    b.fact("hiv-serology", "negative", days_ago=10)
    b.lab("neutrophils", 1.9, days_ago=1)
    b.lab("platelets", 92, days_ago=1)
    b.lab("leukocytes", 4.1, days_ago=1)
    b.quantity("peripheral-blasts", 0.6, "10*9/L", days_ago=1)
    b.lab("bilirubin-total", 14, days_ago=1)
    b.lab("ast", 35, days_ago=1)
    b.lab("alt", 30, days_ago=1)
    b.lab("creatinine", 78, days_ago=1)
    b.lab("body-weight", 76.5, days_ago=1)
    b.lab("body-height", 176, days_ago=30)
    b.lab("qtcf", 431, days_ago=5)
    if b.gender == "female" and female_not_pregnant:
        b.fact("pregnancy-status", "not-pregnant", days_ago=2, system=LOINC, code="82810-3")
    return b
