"""A fast generator of realistic synthetic populations, written as a FHIR Bulk Data export.

    .venv/bin/python bench/gen_population.py --patients 100000 --out DIR [--gzip] [--split N] [--seed S]
        [--as-of 2026-11-21] [--workers W] [--ball-fraction 0.01] [--force]

From Python: ``generate(100_000, Path("DIR"), gzip=True, split=4, seed=13)`` returns a :class:`Summary`.

What it writes (valid FHIR R4; ``tests/test_gen_population.py`` checks a sample with the R4B models):

- ``<Type>.ndjson`` per resource type (``<Type>.<k>.ndjson`` with ``--split N``; ``.ndjson.gz`` with
  ``--gzip``): Patient, Encounter, Observation (laboratory with UCUM units, reference ranges and
  interpretation; vital signs), Condition, MedicationRequest, MedicationStatement,
  MedicationAdministration, Procedure, AllergyIntolerance, Immunization, DocumentReference (notes with
  base64 text).
- ``manifest.json``: ``transactionTime``, ``request``, ``requiresAccessToken``, ``output[]`` (``type``,
  ``url``, ``count`` = lines of the file), ``error[]`` (``log.ndjson``) and ``deleted[]``
  (``deleted/Bundle.ndjson``: transaction Bundles of ``DELETE`` requests for resources absent from
  the export).
- ``log.ndjson``: OperationOutcomes, as an exporter writes them for what it could not export.
- ``generator.json``: the run's parameters and the truth (each B-ALL patient's scenario, the
  patients a broken line names, counts). Not FHIR (a reader skips it).

The population: about ``ball_fraction`` (1 %) of the patients have B-ALL (ICD-10 C91.0) and a protocol
record built with ``tests/support`` (synth.py, treatment.py): complete work-ups that meet every variant's
criteria (Ph-negative; Ph-positive after a TKI), patients on inotuzumab (ATC L01FB01) at different points
of treatment with their administrations, orders for the due dose and responses, and records that some or
all variants refuse or cannot decide (bilirubin 3 x ULN, Burkitt, CD22-negative, hepatitis B, pregnancy,
ECOG 3, six-week-old results, newly diagnosed). ``generator.json`` names each one's scenario; what a
variant decides is the adapter's business (es-valtermed, the strictest, refuses every refusal scenario).
Everyone (B-ALL patients included) has an ordinary record from templates: encounters, vital signs,
laboratory panels, notes, other conditions with their medications, procedures, allergies, immunizations.

Noise: entered-in-error Observations and Conditions (a B-ALL patient's entered-in-error platelet
count of 3 among them), exact duplicate lines, units that are odd but convertible (``K/uL``,
``x10E9/L``, ``IU/L``, ``µmol/L``, mg/dL bilirubin and creatinine, pounds, inches), a few broken lines
(truncated, not JSON, an unknown resourceType).

Order: like an export ordered by ``lastUpdated``, each type's lines are ordered by time slice (the
history is cut into ``max(8, N)`` slices, oldest first, and ``--split N`` cuts that sequence into N
files), and within a slice by blocks of 500 patients whose lines are shuffled. So one patient's
resources are spread over the whole file, never adjacent: a reader cannot group by patient on the fly.

Speed: template dicts (constant parts shared, never copied) serialised by orjson, streamed to disk in
blocks; blocks of patients are made by ``--workers`` processes (default: every CPU), gzip members
compressed in the workers. Deterministic: the same seed, size and as-of date give the same bytes,
whatever the number of workers.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip as gzip_module
import multiprocessing
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests` (the B-ALL builders) is not an installed package
    sys.path.insert(0, str(ROOT))

from tests.support.population import SCENARIOS as TREATMENT_SCENARIOS  # noqa: E402
from tests.support.synth import (  # noqa: E402
    ATC,
    ICD10,
    INO_VALUE,
    LOINC,
    OBS_CAT,
    RXNORM,
    SCT,
    UCUM,
    PatientBuilder,
    full_workup,
)
from tests.support.treatment import dosing_patient, give, pre_dose_labs  # noqa: E402

Json = dict[str, Any]

DEFAULT_AS_OF: Final = date(2026, 11, 21)
DEFAULT_SEED: Final = 13
DEFAULT_BALL_FRACTION: Final = 0.01
DEFAULT_BASE_URL: Final = "https://ehr.example.org/fhir"
#: Patients per block: the unit of work of a process and of shuffling. Fixed, so that the output
#: does not depend on the number of workers.
CHUNK: Final = 500
#: Days of history of an ordinary record.
HISTORY_DAYS: Final = 3 * 365
MIN_SLICES: Final = 8
#: Resource types written, in manifest order.
TYPES: Final = (
    "Patient",
    "Encounter",
    "Observation",
    "Condition",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationAdministration",
    "Procedure",
    "AllergyIntolerance",
    "Immunization",
    "DocumentReference",
)
ICD10CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
CVX: Final = "http://hl7.org/fhir/sid/cvx"
V3_INTERP: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
COND_CAT: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
COND_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VER: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VER: Final = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
DOC_CAT: Final = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
MRN_SYSTEM: Final = "urn:oid:2.16.840.1.113883.19.5"

# Noise rates (per line unless said otherwise).
DUPLICATE_RATE: Final = 0.003
ENTERED_IN_ERROR_RATE: Final = 0.003
ODD_UNIT_RATE: Final = 0.03  # per laboratory value that has an odd-but-convertible form
BROKEN_RATE: Final = 1 / 150_000
LOG_RATE: Final = 1 / 2_000  # OperationOutcomes per patient
DELETED_RATE: Final = 1 / 500  # deleted resources per patient


# ------------------------------------------------------------------------------------- templates
def _cc(system: str, code: str, display: str | None = None, text: str | None = None) -> Json:
    coding: Json = {"system": system, "code": code}
    if display:
        coding["display"] = display
    out: Json = {"coding": [coding]}
    if text:
        out["text"] = text
    return out


def _q(value: float, unit: str) -> Json:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


@dataclass(frozen=True, slots=True)
class Lab:
    """A laboratory test or vital sign: constant parts built once, shared by every Observation."""

    loinc: str
    display: str
    unit: str
    low: float | None
    high: float | None
    mean: float
    sd: float
    decimals: int
    vital: bool = False
    code: Json = field(init=False)
    category: list[Json] = field(init=False)
    reference: list[Json] | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", _cc(LOINC, self.loinc, self.display, self.display))
        cat = "vital-signs" if self.vital else "laboratory"
        object.__setattr__(self, "category", [_cc(OBS_CAT, cat, cat.replace("-", " ").title())])
        ref: Json = {}
        if self.low is not None:
            ref["low"] = _q(self.low, self.unit)
        if self.high is not None:
            ref["high"] = _q(self.high, self.unit)
        object.__setattr__(self, "reference", [ref] if ref else None)


def _lab(
    loinc: str,
    display: str,
    unit: str,
    low: float | None,
    high: float | None,
    mean: float,
    sd: float,
    decimals: int = 1,
) -> Lab:
    return Lab(loinc, display, unit, low, high, mean, sd, decimals)


CBC: Final = (
    _lab("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*9/L", 4.0, 11.0, 7.0, 2.0),
    _lab("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*12/L", 4.2, 5.9, 4.8, 0.45, 2),
    _lab("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 14.0, 1.5),
    _lab("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 36, 50, 42, 4),
    _lab("777-3", "Platelets [#/volume] in Blood by Automated count", "10*9/L", 150, 400, 260, 60, 0),
    _lab("751-8", "Neutrophils [#/volume] in Blood by Automated count", "10*9/L", 1.8, 7.5, 4.2, 1.3),
    _lab("731-0", "Lymphocytes [#/volume] in Blood by Automated count", "10*9/L", 1.0, 4.8, 2.1, 0.6),
)
CMP: Final = (
    _lab("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136, 145, 140, 2.5, 0),
    _lab("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 4.2, 0.4),
    _lab("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 98, 20, 0),
    _lab("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7, 20, 14, 4, 0),
    _lab("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3, 9.4, 0.4),
    _lab("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.5, 5.2, 4.3, 0.35),
    _lab(
        "1742-6",
        "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        7,
        41,
        24,
        9,
        0,
    ),
    _lab(
        "1920-8",
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        8,
        40,
        23,
        7,
        0,
    ),
    _lab(
        "6768-6",
        "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        40,
        130,
        75,
        20,
        0,
    ),
)
# Creatinine and bilirubin: European labs in umol/L (Moles/volume codes), US labs in mg/dL.
CMP_SI: Final = (
    _lab("14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "umol/L", 62, 106, 80, 15, 0),
    _lab("14631-6", "Bilirubin.total [Moles/volume] in Serum or Plasma", "umol/L", 3, 21, 10, 4, 0),
)
CMP_US: Final = (
    _lab("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.7, 1.2, 0.9, 0.17, 2),
    _lab("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 0.2, 1.2, 0.6, 0.25, 1),
)
LIPIDS: Final = (
    _lab("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", None, 200, 190, 35, 0),
    _lab("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", None, 150, 130, 50, 0),
    _lab("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 40, None, 52, 12, 0),
    _lab(
        "13457-7",
        "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation",
        "mg/dL",
        None,
        130,
        112,
        30,
        0,
    ),
)
OTHER_LABS: Final = (
    _lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, 5.8, 0.8),
    _lab("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.4, 4.0, 2.0, 0.9, 2),
    _lab("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", None, 5, 4, 6, 1),
)
HEART_RATE: Final = Lab("8867-4", "Heart rate", "/min", None, None, 75, 12, 0, vital=True)
RESP_RATE: Final = Lab("9279-1", "Respiratory rate", "/min", None, None, 16, 2, 0, vital=True)
TEMPERATURE: Final = Lab("8310-5", "Body temperature", "Cel", None, None, 36.8, 0.35, 1, vital=True)
SPO2: Final = Lab(
    "59408-5",
    "Oxygen saturation in Arterial blood by Pulse oximetry",
    "%",
    None,
    None,
    97,
    1.5,
    0,
    vital=True,
)
WEIGHT: Final = Lab("29463-7", "Body weight", "kg", None, None, 0, 0, 1, vital=True)
HEIGHT: Final = Lab("8302-2", "Body height", "cm", None, None, 0, 0, 0, vital=True)
BMI: Final = Lab("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", None, None, 0, 0, 1, vital=True)
BP_CODE: Final = _cc(LOINC, "85354-9", "Blood pressure panel with all children optional", "Blood pressure")
SYSTOLIC: Final = _cc(LOINC, "8480-6", "Systolic blood pressure")
DIASTOLIC: Final = _cc(LOINC, "8462-4", "Diastolic blood pressure")
VITAL_CAT: Final = WEIGHT.category

#: Odd but convertible forms (units.yaml aliases or other UCUM units): LOINC -> (unit, UCUM code or
#: None for a bare unit string, factor from the canonical value).
ODD_UNITS: Final[dict[str, tuple[str, str | None, float]]] = {
    "777-3": ("K/uL", None, 1.0),
    "751-8": ("x10E9/L", None, 1.0),
    "6690-2": ("x10^9/L", None, 1.0),
    "731-0": ("10^9/L", None, 1.0),
    "1742-6": ("IU/L", None, 1.0),
    "1920-8": ("IU/L", None, 1.0),
    "14682-9": ("µmol/L", None, 1.0),
    "14631-6": ("μmol/L", None, 1.0),  # Greek mu
    "2160-0": ("mg/dl", None, 1.0),
    "29463-7": ("lb", "[lb_av]", 2.20462),
    "8302-2": ("in", "[in_i]", 0.393701),
}

INTERP: Final = {
    "N": [_cc(V3_INTERP, "N", "Normal")],
    "H": [_cc(V3_INTERP, "H", "High")],
    "L": [_cc(V3_INTERP, "L", "Low")],
}
FINAL: Final = "final"
EIE: Final = "entered-in-error"

ENCOUNTER_KINDS: Final = (  # (class Coding, type, weight)
    (
        {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
        [_cc(SCT, "185349003", "Encounter for check up (procedure)")],
        0.8,
    ),
    (
        {"system": ACT_CODE, "code": "EMER", "display": "emergency"},
        [_cc(SCT, "50849002", "Emergency room admission (procedure)")],
        0.1,
    ),
    (
        {"system": ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
        [_cc(SCT, "32485007", "Hospital admission (procedure)")],
        0.1,
    ),
)

# Chronic and acute conditions: (ICD-10 code, SNOMED code, display, prevalence, resolves, safe for a
# B-ALL patient's background, medication index or None).
CONDITIONS: Final = (
    ("I10", "38341003", "Essential (primary) hypertension", 0.28, False, True, 0),
    ("E78.5", "55822004", "Hyperlipidaemia, unspecified", 0.2, False, True, 1),
    ("E11.9", "44054006", "Type 2 diabetes mellitus without complications", 0.1, False, True, 2),
    ("J45.9", "195967001", "Asthma, unspecified", 0.08, False, True, 3),
    ("K21.9", "235595009", "Gastro-oesophageal reflux disease without oesophagitis", 0.1, False, True, 4),
    ("F32.9", "35489007", "Depressive episode, unspecified", 0.08, False, True, 5),
    ("M54.5", "279039007", "Low back pain", 0.1, True, True, 6),
    ("N39.0", "68566005", "Urinary tract infection, site not specified", 0.05, True, True, 7),
    ("J06.9", "54150009", "Acute upper respiratory infection, unspecified", 0.15, True, True, 8),
    ("D64.9", "271737000", "Anaemia, unspecified", 0.04, False, False, None),
    ("C50.9", "254837009", "Malignant neoplasm of breast, unspecified", 0.01, False, False, None),
    # near misses for a B-ALL screen: other leukaemias
    ("C91.1", "92814006", "Chronic lymphocytic leukaemia of B-cell type", 0.002, False, False, None),
    ("C92.0", "91861009", "Acute myeloblastic leukaemia", 0.0005, False, False, None),
)
# (ATC, RxNorm ingredient, display, dose text)
MEDICATIONS: Final = (
    ("C08CA01", "17767", "amlodipine", "amlodipine 5 mg orally once daily"),
    ("C10AA05", "83367", "atorvastatin", "atorvastatin 20 mg orally once daily at night"),
    ("A10BA02", "6809", "metformin", "metformin 500 mg orally twice daily with meals"),
    ("R03AC02", "435", "salbutamol", "salbutamol 100 micrograms inhaled as needed"),
    ("A02BC01", "7646", "omeprazole", "omeprazole 20 mg orally once daily"),
    ("N06AB06", "36437", "sertraline", "sertraline 50 mg orally once daily"),
    ("M01AE01", "5640", "ibuprofen", "ibuprofen 400 mg orally three times daily for 7 days"),
    ("J01XE01", "7454", "nitrofurantoin", "nitrofurantoin 100 mg orally twice daily for 5 days"),
    ("J01CA04", "723", "amoxicillin", "amoxicillin 500 mg orally three times daily for 7 days"),
)
MED_CONCEPTS: Final = [
    {
        "coding": [
            {"system": RXNORM, "code": rx, "display": name},
            {"system": ATC, "code": atc, "display": name},
        ],
        "text": name,
    }
    for atc, rx, name, _ in MEDICATIONS
]
MED_DOSAGES: Final = [[{"text": text}] for *_, text in MEDICATIONS]
PROCEDURES: Final = (
    _cc(SCT, "73761001", "Colonoscopy"),
    _cc(SCT, "80146002", "Appendectomy"),
    _cc(SCT, "38102005", "Cholecystectomy"),
    _cc(SCT, "71651007", "Mammography"),
    _cc(SCT, "29303009", "Electrocardiographic procedure"),
)
ALLERGENS: Final = (
    (_cc(SCT, "764146007", "Penicillin"), "medication"),
    (_cc(SCT, "762952008", "Peanut"), "food"),
    (_cc(SCT, "111088007", "Latex"), "environment"),
)
VACCINES: Final = (
    _cc(CVX, "140", "Influenza, seasonal, injectable, preservative free"),
    _cc(
        CVX, "208", "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL"
    ),
    _cc(CVX, "115", "Tdap"),
)
NOTE_TYPES: Final = (
    _cc(LOINC, "11506-3", "Progress note"),
    _cc(LOINC, "18842-5", "Discharge summary"),
    _cc(LOINC, "34117-2", "History and physical note"),
)
NOTE_CATEGORY: Final = [_cc(DOC_CAT, "clinical-note", "Clinical Note")]
_NOTE_PHRASES: Final = (
    "Patient seen in clinic for routine follow-up.",
    "Reports feeling well, no new complaints.",
    "Blood pressure reviewed; continue current medication.",
    "Discussed diet, exercise and smoking cessation.",
    "Laboratory results reviewed with the patient; no action needed.",
    "Mild cough for three days, no fever; supportive care advised.",
    "Medication list reconciled. Allergies reviewed.",
    "Plan: repeat blood tests in six months, return sooner if symptoms worsen.",
    "Examination: chest clear, heart sounds normal, abdomen soft and non-tender.",
    "Admitted for observation; discharged in a stable condition with follow-up in primary care.",
)


def _notes() -> list[str]:
    """64 note texts of 2-14 phrases, base64-encoded once."""
    rng = random.Random(1)
    out = []
    for i in range(64):
        text = " ".join(rng.choice(_NOTE_PHRASES) for _ in range(2 + i % 13))
        out.append(base64.b64encode(text.encode()).decode())
    return out


NOTES: Final = _notes()
FAMILY: Final = (
    "García",
    "Smith",
    "Müller",
    "Rossi",
    "Dubois",
    "Kowalski",
    "Jensen",
    "Novak",
    "Silva",
    "Murphy",
    "Nowak",
    "Costa",
    "Hansen",
    "Moreno",
    "Ivanova",
    "Okafor",
    "Tanaka",
    "Khan",
)
GIVEN: Final = {
    "female": ("Ana", "Maria", "Sofia", "Emma", "Laura", "Chloe", "Aisha", "Yuki", "Olga", "Grace"),
    "male": ("Luis", "John", "Lukas", "Marco", "Pierre", "Jan", "Ola", "Omar", "Kenji", "David"),
}
CITIES: Final = ("Springfield", "Riverside", "Fairview", "Kingston", "Milton", "Ashford", "Clayton")
MR_TYPE: Final = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
TIMES: Final = tuple(f"T{h:02d}:{m:02d}:00Z" for h in range(7, 19) for m in (0, 15, 30, 45))


# ------------------------------------------------------------------------------------- results
@dataclass(frozen=True, slots=True)
class _Job:
    chunk: int
    first: int
    count: int
    seed: int
    as_of: date
    ball_fraction: float
    slices: int
    gzip_level: int  # 0: plain text
    parts: str  # the directory of the processes' part files


#: (part file, offset, length) of one block's lines of one type and time slice
Piece = tuple[str, int, int]


@dataclass(slots=True)
class _ChunkOut:
    pieces: dict[tuple[str, int], Piece]
    lines: dict[tuple[str, int], int]
    log: list[bytes]
    deleted: list[bytes]
    ball: dict[str, str]
    broken: list[str]
    noise: Counter[str]


@dataclass(slots=True)
class Summary:
    """What one run wrote."""

    out: Path
    patients: int
    seconds: float
    lines: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    files: list[str] = field(default_factory=list)
    ball: dict[str, str] = field(default_factory=dict)
    broken_patients: list[str] = field(default_factory=list)
    noise: Counter[str] = field(default_factory=Counter)
    #: seconds: making the blocks (and writing them out by slice), assembling the files
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def total_lines(self) -> int:
        return sum(self.lines.values())

    def as_json(self) -> Json:
        return {
            "out": str(self.out),
            "patients": self.patients,
            "seconds": round(self.seconds, 3),
            "lines": dict(self.lines),
            "total_lines": self.total_lines,
            "bytes": self.bytes,
            "files": self.files,
            "ball_patients": len(self.ball),
            "noise": dict(self.noise),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
        }


# ------------------------------------------------------------------------------------- one block
class _Block:
    """Makes the resources of one block of patients, serialised, by type and time slice."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.rng = random.Random(job.seed * 1_000_003 + job.chunk)
        self.as_of = job.as_of
        self.slices = job.slices
        self.days = _day_strings(job.as_of)
        self.bufs: dict[str, list[list[bytes]]] = {t: [[] for _ in range(job.slices)] for t in TYPES}
        self.log: list[bytes] = []
        self.deleted: list[bytes] = []
        self.ball: dict[str, str] = {}
        self.broken: list[str] = []
        self.noise: Counter[str] = Counter()
        self.ball_count = 0

    # -- output ---------------------------------------------------------------------------------
    def slice_of(self, days_ago: int) -> int:
        if days_ago >= HISTORY_DAYS:
            return 0
        return (HISTORY_DAYS - 1 - max(days_ago, 0)) * self.slices // HISTORY_DAYS

    def emit(self, rtype: str, days_ago: int, resource: Json) -> None:
        buf = self.bufs[rtype][self.slice_of(days_ago)]
        r = self.rng.random()
        if r > 1 - BROKEN_RATE:  # this resource's line is broken (the resource is lost)
            self.break_line(buf, resource)
            return
        line = orjson.dumps(resource)
        buf.append(line)
        if r < DUPLICATE_RATE:
            buf.append(line)
            self.noise["duplicate lines"] += 1

    def break_line(self, buf: list[bytes], resource: Json, kind: int | None = None) -> None:
        """One more line, broken: truncated, not JSON, or an unknown resourceType."""
        line = orjson.dumps(resource)
        kind = self.rng.randrange(3) if kind is None else kind
        if kind == 0:
            bad = line[: len(line) * 2 // 3]
        elif kind == 1:
            bad = b"\x00\x1b[2J" + line[len(line) // 3 :]  # garbage in front (not JSON)
        else:
            bad = line.replace(b'"resourceType":"', b'"resourceType":"X', 1)
        buf.append(bad)
        subject = resource.get("subject") or resource.get("patient")
        named = subject["reference"] if isinstance(subject, dict) else None
        if resource["resourceType"] == "Patient":
            named = f"Patient/{resource['id']}"
        self.broken.append(named.split("/", 1)[1] if named and bad.count(named.encode()) else "")
        self.noise["broken lines"] += 1

    def result(self) -> _ChunkOut:
        """Shuffle each (type, slice) buffer and append it to this process's part file of that type and
        slice (flushed: the parent copies from it); the parent gets where it is."""
        pieces: dict[tuple[str, int], Piece] = {}
        lines: dict[tuple[str, int], int] = {}
        shuffle = self.rng.shuffle
        for rtype, per_slice in self.bufs.items():
            for s, buf in enumerate(per_slice):
                if not buf:
                    continue
                shuffle(buf)
                data = b"\n".join(buf) + b"\n"
                if self.job.gzip_level:
                    data = gzip_module.compress(data, compresslevel=self.job.gzip_level, mtime=0)
                name, fh = _part_file(self.job.parts, rtype, s)
                pieces[(rtype, s)] = (name, fh.tell(), len(data))
                fh.write(data)
                fh.flush()
                lines[(rtype, s)] = len(buf)
        return _ChunkOut(pieces, lines, self.log, self.deleted, self.ball, self.broken, self.noise)

    # -- the block ------------------------------------------------------------------------------
    def run(self) -> _ChunkOut:
        job = self.job
        rng = self.rng
        for i in range(job.first, job.first + job.count):
            pid = f"pt{i:07d}"
            if rng.random() < job.ball_fraction:
                self.ball_patient(pid)
            else:
                self.patient(pid)
                self.ordinary(pid, 0, safe=False)
            if rng.random() < LOG_RATE or (i == 0):
                self.outcome(pid)
            if rng.random() < DELETED_RATE or (i == 1):
                self.deletion(pid)
        if job.chunk == 0:  # at least a few broken lines in every export
            ref = {"reference": "Patient/pt0000000"}
            obs = {
                "resourceType": "Observation",
                "id": "pt0000000-broken",
                "status": FINAL,
                "code": HEART_RATE.code,
                "subject": ref,
                "valueQuantity": _q(70, "/min"),
            }
            for kind in range(3):
                self.break_line(self.bufs["Observation"][self.slices - 1], obs, kind)
        return self.result()

    def patient(self, pid: str) -> tuple[str, int]:
        rng = self.rng
        gender = "female" if rng.random() < 0.51 else "male"
        age_days = int(rng.random() * 90 * 365) + 365
        resource = {
            "resourceType": "Patient",
            "id": pid,
            "meta": {"versionId": "1", "lastUpdated": self.days[int(rng.random() * HISTORY_DAYS)] + TIMES[0]},
            "identifier": [{"type": MR_TYPE, "system": MRN_SYSTEM, "value": "MRN" + pid[2:]}],
            "active": True,
            "name": [{"use": "official", "family": rng.choice(FAMILY), "given": [rng.choice(GIVEN[gender])]}],
            "telecom": [{"system": "phone", "value": f"555-{int(rng.random() * 10000):04d}", "use": "home"}],
            "gender": gender,
            "birthDate": self.days[age_days],
            "address": [
                {
                    "use": "home",
                    "line": [f"{1 + int(rng.random() * 200)} Main Street"],
                    "city": rng.choice(CITIES),
                    "postalCode": f"{int(rng.random() * 90000) + 10000}",
                    "country": "GB",
                }
            ],
        }
        self.emit("Patient", int(rng.random() * HISTORY_DAYS), resource)
        return gender, age_days

    def outcome(self, pid: str) -> None:
        n = len(self.log) + 1
        if self.rng.random() < 0.5:
            issue = {
                "severity": "error",
                "code": "too-long",
                "diagnostics": f"Could not export the attachment of DocumentReference/{pid}-d{n}: "
                "binary content too large",
            }
        else:
            issue = {
                "severity": "warning",
                "code": "incomplete",
                "diagnostics": "Search for Observation was truncated at the server's page limit and resumed",
            }
        oo = {"resourceType": "OperationOutcome", "id": f"{pid}-oo{n}", "issue": [issue]}
        self.log.append(orjson.dumps(oo))

    def deletion(self, pid: str) -> None:
        rtype = "Observation" if self.rng.random() < 0.7 else "DocumentReference"
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": f"{rtype}/{pid}-del{len(self.deleted)}"}}],
        }
        self.deleted.append(orjson.dumps(bundle))

    # -- an ordinary record (templates) ---------------------------------------------------------
    def ordinary(self, pid: str, min_ago: int, safe: bool) -> None:
        """Encounters with vital signs, panels and notes; conditions, medications, procedures,
        allergies, immunizations. ``min_ago``: nothing more recent (days). ``safe``: nothing that
        a B-ALL patient's evaluation reads as an exclusion (a B-ALL patient's background)."""
        rng = self.rng
        rand = rng.random
        days = self.days
        emit = self.emit
        noise = self.noise
        ref = {"reference": f"Patient/{pid}"}

        def status() -> str:
            if rand() < ENTERED_IN_ERROR_RATE:
                noise["entered-in-error observations"] += 1
                return EIE
            return FINAL

        span = HISTORY_DAYS - min_ago
        n = 0  # resource counter for ids

        us = rand() < 0.35  # a US laboratory: creatinine and bilirubin in mg/dL
        renal = CMP_US if us else CMP_SI
        height = round(rng.gauss(170, 10))
        weight = round(max(40.0, rng.gauss(78, 15)), 1)

        encounters = min(int(rng.expovariate(1 / 2.2)) + (1 if rand() < 0.8 else 0), 16)
        for _ in range(encounters):
            n += 1
            ago = min_ago + int(rand() * span)
            day = days[ago]
            start = day + TIMES[int(rand() * 40)]
            k = 0 if rand() < 0.8 else (1 if rand() < 0.5 else 2)
            klass, etype, _w = ENCOUNTER_KINDS[k]
            end_ago = max(min_ago, ago - 1 - int(rand() * 6)) if k == 2 else ago
            eid = f"{pid}-e{n}"
            meta = {"versionId": "1", "lastUpdated": start}
            emit(
                "Encounter",
                ago,
                {
                    "resourceType": "Encounter",
                    "id": eid,
                    "meta": meta,
                    "status": "finished",
                    "class": klass,
                    "type": etype,
                    "subject": ref,
                    "period": {
                        "start": start,
                        "end": days[end_ago] + ("T17:30:00Z" if k == 2 else "T18:45:00Z"),
                    },
                },
            )
            eref = {"reference": f"Encounter/{eid}"}

            def vital(
                lab: Lab,
                value: float,
                eid: str = eid,
                start: str = start,
                eref: Json = eref,
                meta: Json = meta,
                ago: int = ago,
            ) -> None:
                nonlocal n
                n += 1
                quantity = _q(value, lab.unit)
                if lab.loinc in ODD_UNITS and rand() < ODD_UNIT_RATE:
                    quantity = self.odd(lab, value)
                emit(
                    "Observation",
                    ago,
                    {
                        "resourceType": "Observation",
                        "id": f"{pid}-o{n}",
                        "meta": meta,
                        "status": status(),
                        "category": lab.category,
                        "code": lab.code,
                        "subject": ref,
                        "encounter": eref,
                        "effectiveDateTime": start,
                        "valueQuantity": quantity,
                    },
                )

            vital(HEART_RATE, round(rng.gauss(HEART_RATE.mean, HEART_RATE.sd)))
            vital(TEMPERATURE, round(rng.gauss(TEMPERATURE.mean, TEMPERATURE.sd), 1))
            if rand() < 0.6:
                vital(RESP_RATE, round(rng.gauss(RESP_RATE.mean, RESP_RATE.sd)))
                vital(SPO2, min(100, round(rng.gauss(SPO2.mean, SPO2.sd))))
            if not safe or ago > 45:  # a B-ALL patient's recent weights come from its protocol record
                w = round(weight + rng.gauss(0, 1.2), 1)
                vital(WEIGHT, w)
                if rand() < 0.3:
                    vital(HEIGHT, height)
                vital(BMI, round(w / (height / 100) ** 2, 1))
            n += 1
            systolic = round(rng.gauss(128, 15))
            emit(
                "Observation",
                ago,
                {
                    "resourceType": "Observation",
                    "id": f"{pid}-o{n}",
                    "meta": meta,
                    "status": FINAL,
                    "category": VITAL_CAT,
                    "code": BP_CODE,
                    "subject": ref,
                    "encounter": eref,
                    "effectiveDateTime": start,
                    "component": [
                        {"code": SYSTOLIC, "valueQuantity": _q(systolic, "mm[Hg]")},
                        {
                            "code": DIASTOLIC,
                            "valueQuantity": _q(round(systolic * 0.62 + rng.gauss(0, 6)), "mm[Hg]"),
                        },
                    ],
                },
            )

            r = rand()
            if r < 0.45:
                panels: list[tuple[Lab, ...]] = [CBC]
                if rand() < 0.7:
                    panels += [CMP, renal]
                if rand() < 0.2:
                    panels.append(LIPIDS)
                if rand() < 0.15:
                    panels.append(OTHER_LABS)
                issued = days[max(0, ago - 1)] + "T06:00:00Z"
                for panel in panels:
                    for lab in panel:
                        n += 1
                        value = round(max(0.01, rng.gauss(lab.mean, lab.sd)), lab.decimals)
                        if lab.decimals == 0:
                            value = int(value)
                        interp = INTERP[
                            "H"
                            if lab.high is not None and value > lab.high
                            else "L"
                            if lab.low is not None and value < lab.low
                            else "N"
                        ]
                        odd = lab.loinc in ODD_UNITS and rand() < ODD_UNIT_RATE
                        obs = {
                            "resourceType": "Observation",
                            "id": f"{pid}-o{n}",
                            "meta": meta,
                            "status": status(),
                            "category": lab.category,
                            "code": lab.code,
                            "subject": ref,
                            "encounter": eref,
                            "effectiveDateTime": start,
                            "issued": issued,
                            "valueQuantity": self.odd(lab, value) if odd else _q(value, lab.unit),
                            "interpretation": interp,
                        }
                        if lab.reference is not None:
                            obs["referenceRange"] = self.odd_range(lab) if odd else lab.reference
                        emit("Observation", ago, obs)
            if rand() < 0.65 or k:
                n += 1
                note = NOTES[int(rand() * len(NOTES))]
                emit(
                    "DocumentReference",
                    ago,
                    {
                        "resourceType": "DocumentReference",
                        "id": f"{pid}-d{n}",
                        "meta": meta,
                        "status": "current",
                        "docStatus": "final",
                        "type": NOTE_TYPES[1 if k == 2 else (2 if k else 0)],
                        "category": NOTE_CATEGORY,
                        "subject": ref,
                        "date": start,
                        "content": [
                            {
                                "attachment": {
                                    "contentType": "text/plain; charset=utf-8",
                                    "language": "en",
                                    "data": note,
                                    "title": "Clinical note",
                                }
                            }
                        ],
                        "context": {"encounter": [eref], "period": {"start": start}},
                    },
                )

        for icd, snomed, display, prevalence, resolves, ok_for_ball, med in CONDITIONS:
            if rand() >= prevalence or (safe and not ok_for_ball):
                continue
            n += 1
            ago = min_ago + int(rand() * span)
            code = {
                "coding": [
                    {"system": ICD10, "code": icd, "display": display},
                    {"system": SCT, "code": snomed},
                ],
                "text": display,
            }
            cond: Json = {
                "resourceType": "Condition",
                "id": f"{pid}-c{n}",
                "meta": {"versionId": "1", "lastUpdated": days[ago] + TIMES[3]},
                "clinicalStatus": _CLINICAL["resolved" if resolves else "active"],
                "verificationStatus": _VERIFICATION["confirmed"],
                "category": _PROBLEM_LIST,
                "code": code,
                "subject": ref,
                "onsetDateTime": days[ago],
                "recordedDate": days[ago],
            }
            if resolves:
                cond["abatementDateTime"] = days[max(min_ago, ago - 7 - int(rand() * 20))]
            if rand() < 0.01:
                del cond["clinicalStatus"]  # con-5: no clinicalStatus on an entered-in-error Condition
                cond["verificationStatus"] = _VERIFICATION[EIE]
                self.noise["entered-in-error conditions"] += 1
            self.emit("Condition", ago, cond)
            if med is None:
                continue
            n += 1
            end = None if not resolves else max(min_ago, ago - 7)
            request: Json = {
                "resourceType": "MedicationRequest",
                "id": f"{pid}-m{n}",
                "meta": {"versionId": "1", "lastUpdated": days[ago] + TIMES[4]},
                "status": "completed" if resolves else "active",
                "intent": "order",
                "medicationCodeableConcept": MED_CONCEPTS[med],
                "subject": ref,
                "authoredOn": days[ago],
                "reasonReference": [{"reference": f"Condition/{pid}-c{n - 1}"}],
                "dosageInstruction": MED_DOSAGES[med],
            }
            if end is not None:
                request["dosageInstruction"] = [
                    {
                        **MED_DOSAGES[med][0],
                        "timing": {"repeat": {"boundsPeriod": {"start": days[ago], "end": days[end]}}},
                    }
                ]
            self.emit("MedicationRequest", ago, request)
            if not resolves and rand() < 0.4:
                n += 1
                seen = min_ago + int(rand() * (ago - min_ago + 1))
                self.emit(
                    "MedicationStatement",
                    seen,
                    {
                        "resourceType": "MedicationStatement",
                        "id": f"{pid}-s{n}",
                        "meta": {"versionId": "1", "lastUpdated": days[seen] + TIMES[5]},
                        "status": "active",
                        "medicationCodeableConcept": MED_CONCEPTS[med],
                        "subject": ref,
                        "effectivePeriod": {"start": days[ago]},
                        "dateAsserted": days[seen],
                    },
                )

        if rand() < 0.25:
            n += 1
            ago = min_ago + int(rand() * span)
            self.emit(
                "Procedure",
                ago,
                {
                    "resourceType": "Procedure",
                    "id": f"{pid}-p{n}",
                    "meta": {"versionId": "1", "lastUpdated": days[ago] + TIMES[6]},
                    "status": "completed",
                    "code": PROCEDURES[int(rand() * len(PROCEDURES))],
                    "subject": ref,
                    "performedDateTime": days[ago],
                },
            )
        if rand() < 0.15:
            n += 1
            ago = min_ago + int(rand() * span)
            allergen, category = ALLERGENS[int(rand() * len(ALLERGENS))]
            self.emit(
                "AllergyIntolerance",
                ago,
                {
                    "resourceType": "AllergyIntolerance",
                    "id": f"{pid}-a{n}",
                    "meta": {"versionId": "1", "lastUpdated": days[ago] + TIMES[7]},
                    "clinicalStatus": _ALLERGY_ACTIVE,
                    "verificationStatus": _ALLERGY_CONFIRMED,
                    "type": "allergy",
                    "category": [category],
                    "criticality": "low",
                    "code": allergen,
                    "patient": ref,
                    "recordedDate": days[ago],
                },
            )
        if not safe:  # an unmapped vaccine is a live-vaccine question for a B-ALL patient
            for vaccine in VACCINES:
                if rand() < 0.3:
                    n += 1
                    ago = min_ago + int(rand() * span)
                    self.emit(
                        "Immunization",
                        ago,
                        {
                            "resourceType": "Immunization",
                            "id": f"{pid}-i{n}",
                            "meta": {"versionId": "1", "lastUpdated": days[ago] + TIMES[8]},
                            "status": "completed",
                            "vaccineCode": vaccine,
                            "patient": ref,
                            "occurrenceDateTime": days[ago] + TIMES[8],
                            "primarySource": True,
                        },
                    )

    def odd(self, lab: Lab, value: float) -> Json:
        unit, code, factor = ODD_UNITS[lab.loinc]
        self.noise["odd units"] += 1
        v = round(value * factor, max(lab.decimals, 1)) if factor != 1 else value
        return (
            {"value": v, "unit": unit, "system": UCUM, "code": code} if code else {"value": v, "unit": unit}
        )

    def odd_range(self, lab: Lab) -> list[Json]:
        ref: Json = {}
        if lab.low is not None:
            ref["low"] = self.odd(lab, lab.low)
        if lab.high is not None:
            ref["high"] = self.odd(lab, lab.high)
        self.noise["odd units"] -= len(ref)
        return [ref]

    # -- a B-ALL patient (tests/support builders) -----------------------------------------------
    def ball_patient(self, pid: str) -> None:
        rng = self.rng
        self.ball_count += 1
        label, build = _pick_scenario(rng.random())
        gender = "female" if rng.random() < 0.45 else "male"
        birth = self.days[int((18 + rng.random() * 60) * 365.25)]
        resources = build(pid, self.as_of, gender, birth, rng)
        if rng.random() < 0.2:
            _us_units(resources)
            self.noise["odd units"] += 1
        if rng.random() < 0.3:
            _icd10cm(resources)
        if rng.random() < 0.15:  # a wrong platelet count of 3, withdrawn
            resources.append(_eie_platelets(pid, self.as_of))
            self.noise["entered-in-error observations"] += 1
        self.ball[pid] = label
        broken_at = int(rng.random() * len(resources)) if rng.random() < 0.02 else -1
        for i, r in enumerate(resources):
            ago = _days_ago(r, self.as_of)
            r["meta"] = {"versionId": "1", "lastUpdated": self.days[max(ago, 0)] + TIMES[10]}
            if i == broken_at and r["resourceType"] != "Patient":
                self.break_line(self.bufs[r["resourceType"]][self.slice_of(ago)], r, 0)
            else:
                self.emit(r["resourceType"], ago, r)
        self.ordinary(pid, 60, safe=True)


def _day_strings(as_of: date) -> list[str]:
    """ISO dates by days before ``as_of`` (index 0 = as_of), 100 years back."""
    return [(as_of - timedelta(days=d)).isoformat() for d in range(36_600)]


_CLINICAL: Final = {c: _cc(COND_CLINICAL, c) for c in ("active", "resolved", "relapse")}
_VERIFICATION: Final = {c: _cc(COND_VER, c) for c in ("confirmed", EIE)}
_PROBLEM_LIST: Final = [_cc(COND_CAT, "problem-list-item", "Problem List Item")]
_ALLERGY_ACTIVE: Final = _cc(ALLERGY_CLINICAL, "active")
_ALLERGY_CONFIRMED: Final = _cc(ALLERGY_VER, "confirmed")


def _days_ago(resource: Json, as_of: date) -> int:
    for key in ("effectiveDateTime", "onsetDateTime", "authoredOn", "performedDateTime", "recordedDate"):
        value = resource.get(key)
        if isinstance(value, str):
            return (as_of - date.fromisoformat(value[:10])).days
    period = resource.get("effectivePeriod")
    if isinstance(period, dict) and isinstance(period.get("start"), str):
        return (as_of - date.fromisoformat(period["start"][:10])).days
    return 400  # a Patient: created with the diagnosis


# ------------------------------------------------------------------------------------- B-ALL scenarios
Builder = Callable[[str, date, str, str, random.Random], list[Json]]


def _workup(pid: str, today: date, gender: str, birth: str, ph: str = "negative") -> PatientBuilder:
    return full_workup(PatientBuilder(pid, birth, gender, today), ph=ph)


def _find(resources: list[Json], code: str) -> Json:
    return next(
        r for r in resources if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == code
    )


def _eligible(pid: str, today: date, gender: str, birth: str, rng: random.Random) -> list[Json]:
    b = _workup(pid, today, gender, birth)
    weight, height = _find(b.resources, "29463-7"), _find(b.resources, "8302-2")
    weight["valueQuantity"]["value"] = round(rng.gauss(72 if gender == "female" else 82, 9), 1)
    height["valueQuantity"]["value"] = round(rng.gauss(164 if gender == "female" else 177, 6))
    return b.resources


def _ph_positive(pid: str, today: date, gender: str, birth: str, rng: random.Random) -> list[Json]:
    b = _workup(pid, today, gender, birth, ph="positive")
    b.medication("MedicationStatement", "L01EA02", "dasatinib", start_days_ago=330, end_days_ago=45)
    return b.resources


def _changed(code: str, key: str, value: Any, **extra: Any) -> Builder:
    def build(pid: str, today: date, gender: str, birth: str, rng: random.Random) -> list[Json]:
        if extra.get("female"):
            gender = "female"
        resources = _workup(pid, today, gender, birth).resources
        obs = _find(resources, code)
        if key == "valueCodeableConcept":
            obs[key] = {"coding": [{"system": INO_VALUE if code != "82810-3" else LOINC, "code": value}]}
            if code == "82810-3":
                obs[key] = {"coding": [{"system": LOINC, "code": "LA15173-0", "display": "Pregnant"}]}
        elif key == "valueInteger":
            obs[key] = value
        else:
            obs["valueQuantity"]["value"] = value
        return resources

    return build


def _with_condition(system: str, code: str, display: str) -> Builder:
    def build(pid: str, today: date, gender: str, birth: str, rng: random.Random) -> list[Json]:
        b = _workup(pid, today, gender, birth)
        b.condition(system, code, display, onset_days_ago=200)
        return b.resources

    return build


def _stale(pid: str, today: date, gender: str, birth: str, rng: random.Random) -> list[Json]:
    """A complete work-up, but six weeks old."""
    return _workup(pid, today - timedelta(days=42), gender, birth).resources


def _newly_diagnosed(pid: str, today: date, gender: str, birth: str, rng: random.Random) -> list[Json]:
    b = PatientBuilder(pid, birth, gender, today)
    b.condition(ICD10, "C91.0", "Acute lymphoblastic leukaemia", onset_days_ago=12, clinical="active")
    b.fact("cd22-positive-blasts-percent", 91.0, days_ago=10)
    b.fact("philadelphia-status", "negative", days_ago=9)
    b.fact("prior-induction-lines", 0, days_ago=3)
    b.lab("neutrophils", 0.6, days_ago=1)
    b.lab("platelets", 41, days_ago=1)
    b.lab("leukocytes", 23.0, days_ago=1)
    b.lab("bilirubin-total", 9, days_ago=1)
    b.lab("creatinine", 70, days_ago=1)
    b.lab("body-weight", 70, days_ago=1)
    b.lab("body-height", 172, days_ago=1)
    return b.resources


def _treated(index: int, order: bool) -> Builder:
    label, start, doses, labs = TREATMENT[index]

    def build(pid: str, today: date, gender: str, birth: str, rng: random.Random) -> list[Json]:
        weight = round(rng.gauss(80, 8), 1)
        b = dosing_patient(pid, today, start, weight=weight, gender=gender)
        give(b, start, doses)
        if start:
            pre_dose_labs(b, **labs)  # type: ignore[arg-type]
        bsa = (weight * 180 / 3600) ** 0.5
        if order and label.endswith("-due"):
            day = len(doses) % 3
            per_m2 = (0.8, 0.5, 0.5)[day]
            b.inotuzumab_order(0, round(per_m2 * bsa, 2))
        if start >= 21:
            b.fact("response", "CRi", days_ago=1)
        return b.resources

    return build


#: (label, days since cycle 1 day 1, doses (offset, mg), pre-dose lab overrides): the scenarios of the
#: tests' populations (tests/support/population.py).
TREATMENT: Final = TREATMENT_SCENARIOS

#: (label, weight, builder): what a B-ALL patient's protocol record is.
SCENARIOS: Final[list[tuple[str, float, Builder]]] = [
    ("work-up-complete", 22, _eligible),
    ("ph-positive-after-tki", 8, _ph_positive),
    *((f"on-treatment:{t[0]}", 2.5, _treated(i, False)) for i, t in enumerate(TREATMENT)),
    *((f"on-treatment:{t[0]}+order", 2.5, _treated(i, True)) for i, t in enumerate(TREATMENT)),
    ("bilirubin-3x-uln", 4, _changed("1975-2", "valueQuantity", 64)),
    ("burkitt", 3, _with_condition(ICD10, "C83.7", "Burkitt lymphoma")),
    ("cd22-negative", 4, _changed("cd22-positive-blasts-percent", "valueQuantity", 4.0)),
    ("hepatitis-b", 3, _with_condition(ICD10, "B18.1", "Chronic viral hepatitis B")),
    ("pregnant", 2, _changed("82810-3", "valueCodeableConcept", "pregnant", female=True)),
    ("ecog-3", 3, _changed("89247-1", "valueInteger", 3)),
    ("stale-results", 4, _stale),
    ("newly-diagnosed", 4, _newly_diagnosed),
]
_TOTAL_WEIGHT: Final = sum(w for _, w, _ in SCENARIOS)


def _pick_scenario(r: float) -> tuple[str, Builder]:
    r *= _TOTAL_WEIGHT
    for label, weight, build in SCENARIOS:
        r -= weight
        if r < 0:
            return label, build
    return SCENARIOS[-1][0], SCENARIOS[-1][2]


def _us_units(resources: list[Json]) -> None:
    """A US laboratory's units: bilirubin and creatinine in mg/dL, platelets in 10*3/uL, ANC as x10E9/L."""
    for r in resources:
        if r["resourceType"] != "Observation" or "valueQuantity" not in r:
            continue
        code = r["code"]["coding"][0]["code"]
        q = r["valueQuantity"]
        if code in ("1975-2", "2160-0"):
            factor = 17.104 if code == "1975-2" else 88.42
            r["valueQuantity"] = _q(round(q["value"] / factor, 2), "mg/dL")
            for rr in r.get("referenceRange", []):
                rr["high"] = _q(round(rr["high"]["value"] / factor, 2), "mg/dL")
        elif code == "777-3":
            r["valueQuantity"] = _q(q["value"], "10*3/uL")
        elif code == "751-8":
            r["valueQuantity"] = {"value": q["value"], "unit": "x10E9/L"}


def _icd10cm(resources: list[Json]) -> None:
    """The diagnosis coded in ICD-10-CM (in relapse) with SNOMED beside it, as a US EHR sends it."""
    for r in resources:
        if r["resourceType"] == "Condition" and r["code"]["coding"][0]["code"] == "C91.0":
            relapse = r.get("clinicalStatus", {}).get("coding", [{}])[0].get("code") == "relapse"
            r["code"] = {
                "coding": [
                    {
                        "system": ICD10CM,
                        "code": "C91.02" if relapse else "C91.00",
                        "display": "Acute lymphoblastic leukemia, in relapse"
                        if relapse
                        else "Acute lymphoblastic leukemia not having achieved remission",
                    },
                    {
                        "system": SCT,
                        "code": "277572006",
                        "display": "Acute pre B-cell lymphoblastic leukemia",
                    },
                ],
                "text": "B-ALL",
            }


def _eie_platelets(pid: str, as_of: date) -> Json:
    return {
        "resourceType": "Observation",
        "id": f"{pid}-platelets-eie",
        "status": EIE,
        "category": [_cc(OBS_CAT, "laboratory")],
        "code": _cc(LOINC, "777-3", "Platelets [#/volume] in Blood by Automated count"),
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"{(as_of - timedelta(days=1)).isoformat()}T08:30:00Z",
        "valueQuantity": _q(3, "10*9/L"),
    }


def _run_job(job: _Job) -> _ChunkOut:
    return _Block(job).run()


#: This process's open part files: (directory, type, slice) -> (path, handle).
_PART_FILES: dict[tuple[str, str, int], tuple[str, Any]] = {}


def _part_file(parts: str, rtype: str, s: int) -> tuple[str, Any]:
    key = (parts, rtype, s)
    found = _PART_FILES.get(key)
    if found is None:
        name = os.path.join(parts, f"{os.getpid()}.{rtype}.{s}")
        found = _PART_FILES[key] = (name, open(name, "wb"))  # noqa: SIM115 (closed by _close_part_files)
    return found


def _close_part_files(parts: str | None = None) -> None:
    for key in [k for k in _PART_FILES if parts is None or k[0] == parts]:
        _PART_FILES.pop(key)[1].close()


# ------------------------------------------------------------------------------------- the export
def _file_name(rtype: str, k: int, split: int, gz: bool) -> str:
    part = f".{k + 1:0{len(str(split))}d}" if split > 1 else ""
    return f"{rtype}{part}.ndjson" + (".gz" if gz else "")


def generate(
    patients: int,
    out: Path,
    *,
    gzip: bool = False,
    split: int = 1,
    seed: int = DEFAULT_SEED,
    as_of: date = DEFAULT_AS_OF,
    workers: int | None = None,
    ball_fraction: float = DEFAULT_BALL_FRACTION,
    base_url: str = DEFAULT_BASE_URL,
    gzip_level: int = 1,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Write a Bulk Data export of ``patients`` patients to ``out`` (see the module docstring)."""
    if patients < 1 or split < 1:
        raise ValueError("patients and split must be at least 1")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty (use force=True / --force to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    slices = max(MIN_SLICES, split)
    level = gzip_level if gzip else 0
    tmp = out / ".parts"  # each process's part files, per type and time slice
    tmp.mkdir()
    jobs = [
        _Job(c, first, min(CHUNK, patients - first), seed, as_of, ball_fraction, slices, level, str(tmp))
        for c, first in enumerate(range(0, patients, CHUNK))
    ]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    pieces: dict[tuple[str, int], list[Piece]] = {}
    counts: Counter[tuple[str, int]] = Counter()
    summary = Summary(out, patients, 0.0)
    log: list[bytes] = []
    deleted: list[bytes] = []
    done = 0
    try:
        for result in _results(jobs, workers):
            for key, piece in result.pieces.items():
                pieces.setdefault(key, []).append(piece)
            counts.update(result.lines)
            log += result.log
            deleted += result.deleted
            summary.ball.update(result.ball)
            summary.broken_patients += result.broken
            summary.noise.update(result.noise)
            done += 1
            if progress:
                progress(min(done * CHUNK, patients))
    finally:
        _close_part_files(str(tmp))  # this process's, when workers == 1 (a pool's workers have exited)

    summary.phases["blocks"] = time.perf_counter() - t0
    outputs: list[Json] = []
    for rtype in TYPES:
        for k in range(split):
            parts = [s for s in range(k * slices // split, (k + 1) * slices // split) if (rtype, s) in counts]
            if not parts:
                continue
            name = _file_name(rtype, k, split, gzip)
            _concatenate([p for s in parts for p in pieces[(rtype, s)]], out / name)
            n = sum(counts[(rtype, s)] for s in parts)
            summary.lines[rtype] += n
            outputs.append({"type": rtype, "url": f"{base_url}/bulk/export-{seed}/{name}", "count": n})
            summary.files.append(name)
    shutil.rmtree(tmp)
    summary.phases["assemble"] = time.perf_counter() - t0 - summary.phases["blocks"]
    extra = (("log", log, "log.ndjson"), ("deleted", deleted, "deleted/Bundle.ndjson"))
    urls: dict[str, str] = {}
    for what, lines, plain_name in extra:
        data = b"\n".join(lines) + b"\n"
        name = plain_name + (".gz" if gzip else "")
        if gzip:
            data = gzip_module.compress(data, compresslevel=gzip_level, mtime=0)
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(data)
        urls[what] = f"{base_url}/bulk/export-{seed}/{name}"
        summary.files.append(name)
        summary.lines["OperationOutcome" if what == "log" else "Bundle (deleted)"] += len(lines)
    types = ",".join(TYPES)
    manifest = {
        "transactionTime": f"{as_of.isoformat()}T05:00:00.000Z",
        "request": f"{base_url}/Patient/$export?_type={types}",
        "requiresAccessToken": True,
        "output": outputs,
        "error": [{"type": "OperationOutcome", "url": urls["log"]}],
        "deleted": [{"type": "Bundle", "url": urls["deleted"]}],
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    summary.seconds = time.perf_counter() - t0
    summary.bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    meta = {
        "generator": "bench/gen_population.py",
        "parameters": {
            "patients": patients,
            "seed": seed,
            "as_of": as_of.isoformat(),
            "gzip": gzip,
            "split": split,
            "ball_fraction": ball_fraction,
        },
        **summary.as_json(),
        "ball": summary.ball,
        "ball_scenarios": dict(Counter(summary.ball.values())),
        "broken_patients": summary.broken_patients,
    }
    (out / "generator.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return summary


def _results(jobs: list[_Job], workers: int) -> Iterator[_ChunkOut]:
    if workers == 1:
        yield from map(_run_job, jobs)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_run_job, jobs)


def _concatenate(pieces: list[Piece], target: Path) -> None:
    """The pieces of part files, in order, as ``target`` (copied in the kernel)."""
    with contextlib.ExitStack() as stack, open(target, "wb") as dst:
        sources: dict[str, int] = {}
        for name, offset, length in pieces:
            src = sources.get(name)
            if src is None:
                src = sources[name] = stack.enter_context(open(name, "rb")).fileno()
            left, at = length, offset
            while left > 0:
                copied = os.copy_file_range(src, dst.fileno(), left, offset_src=at)
                if copied <= 0:
                    raise OSError(f"copy_file_range stopped with {left} bytes left of {name}")
                left -= copied
                at += copied


# ------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--patients", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gzip", action="store_true", help="write .ndjson.gz (gzip level 1)")
    parser.add_argument("--split", type=int, default=1, metavar="N", help="files per resource type")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--as-of", type=date.fromisoformat, default=DEFAULT_AS_OF)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every CPU)")
    parser.add_argument("--ball-fraction", type=float, default=DEFAULT_BALL_FRACTION)
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="of the manifest's file URLs")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    try:
        s = generate(
            args.patients,
            args.out,
            gzip=args.gzip,
            split=args.split,
            seed=args.seed,
            as_of=args.as_of,
            workers=args.workers,
            ball_fraction=args.ball_fraction,
            base_url=args.base_url,
            force=args.force,
        )
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    print(
        f"{s.patients} patients ({len(s.ball)} B-ALL) -> {s.out}: {s.total_lines} lines, "
        f"{s.bytes / 1e6:.1f} MB in {len(s.files)} files, {s.seconds:.1f} s "
        f"({s.patients / s.seconds:,.0f} patients/s, {s.total_lines / s.seconds:,.0f} lines/s)"
    )
    print("lines: " + ", ".join(f"{t} {n}" for t, n in s.lines.items()))
    print("noise: " + ", ".join(f"{k} {v}" for k, v in sorted(s.noise.items())))
    print("phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in s.phases.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
