"""The protocol's view of one patient (PatientRecord) and the facts it is made of.

Rules read only these types, never FHIR JSON. Every fact keeps the reference of the FHIR
resource it came from, so every decision can show its evidence. Values that could not be used
are kept too (``Unusable``), with the reason, so that a rule can say *why* a datum is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date


@dataclass(frozen=True, slots=True)
class DateRange:
    """A FHIR date or dateTime as the range of days it may mean ("2026-07" is a whole month)."""

    earliest: date
    latest: date

    @property
    def precise(self) -> bool:
        return self.earliest == self.latest

    def __str__(self) -> str:
        return self.earliest.isoformat() if self.precise else f"{self.earliest}..{self.latest}"


@dataclass(frozen=True, slots=True)
class Reading:
    """A usable Observation value, in the concept's canonical unit or as a mapped coded value."""

    concept: str
    ref: str
    day: date
    status: str
    number: float | None = None
    #: "<", "<=", ">=", ">" when the result is a bound, not a measurement (quantities and integers
    #: alike): a rule reads it through ``bounds`` and decides only where the whole bound is on one
    #: side of its limit ("ad" is never a Reading: it is not a measurement)
    comparator: str | None = None
    unit: str | None = None
    coded: str | None = None
    uln: float | None = None
    uln_source: str | None = None  # "referenceRange" or "default"
    uln_problem: str | None = None  # why the Observation's own ULN could not be used

    def text(self) -> str:
        if self.number is not None:
            num = f"{self.number:.4g}"
            unit = f" {self.unit}" if self.unit and self.unit != "1" else ""
            return f"{self.comparator or ''}{num}{unit}"
        return str(self.coded)

    @property
    def bounds(self) -> tuple[float, float]:
        """The interval the true value lies in (a comparator makes it half-open)."""
        assert self.number is not None
        v = self.number
        if self.comparator in ("<", "<="):
            return (float("-inf"), v)
        if self.comparator in (">", ">="):
            return (v, float("inf"))
        return (v, v)


@dataclass(frozen=True, slots=True)
class Unusable:
    """An Observation for a protocol concept whose value cannot be used, and why."""

    concept: str
    ref: str
    day: date | None
    reason: str


#: ``ConditionFact.clinical_status`` when the clinicalStatus is recorded but cannot be read (no HL7
#: system, a code the system does not have): not a code of the HL7 code system
UNREADABLE_STATUS = "unknown"


@dataclass(frozen=True, slots=True)
class ConditionFact:
    concept: str
    ref: str
    #: clinicalStatus active/recurrence/relapse (or absent, with no abatement); True too when the
    #: clinicalStatus cannot be read (possibly active: ``status_problem`` says why)
    active: bool
    #: the HL7 code; None when not recorded; UNREADABLE_STATUS when recorded but unreadable
    clinical_status: str | None
    #: verificationStatus confirmed (or absent); False for unconfirmed/provisional/differential and
    #: when the verificationStatus cannot be read (``status_problem``)
    confirmed: bool
    onset: DateRange | None = None
    abatement: DateRange | None = None
    severity: str | None = None  # "mild" | "moderate" | "severe" | None
    display: str = ""
    #: CTCAE grade 1-5 when Condition.severity carries one (NCI Thesaurus grade codes), or the
    #: grade a SNOMED severity implies (mild 1, moderate 2, severe 3); ``grade_exact`` tells which.
    grade: int | None = None
    grade_exact: bool = False
    recorded: DateRange | None = None  # Condition.recordedDate
    #: why the clinicalStatus or verificationStatus cannot be read (no HL7 system, unknown code):
    #: the status is unknown, never the default (docs/criteria.md §Conditions)
    status_problem: str | None = None


@dataclass(frozen=True, slots=True)
class Exposure:
    """A medication given, taken or ordered (MedicationRequest/-Statement/-Administration)."""

    concept: str
    ref: str
    status: str
    start: DateRange | None
    end: DateRange | None  # None with ongoing=False: end not recorded
    ongoing: bool
    intrathecal: bool = False
    display: str = ""
    resource_type: str = ""  # MedicationAdministration | MedicationStatement | MedicationRequest | ...
    #: The dose of one administration (or ordered per administration), converted to mg or mg/m2.
    dose_mg: float | None = None
    dose_mg_per_m2: float | None = None
    dose_problem: str | None = None  # why a recorded dose could not be read
    #: MedicationRequest: the planned date of the dose (Timing.event, else boundsPeriod.start).
    planned: DateRange | None = None


@dataclass(frozen=True, slots=True)
class ProcedureFact:
    concept: str
    ref: str
    status: str
    when: DateRange | None  # the end of performedPeriod, or performedDateTime
    display: str = ""


@dataclass(frozen=True, slots=True)
class AllergyFact:
    concept: str
    ref: str
    active: bool  # True too when the clinicalStatus cannot be read
    confirmed: bool  # False too when the verificationStatus cannot be read
    display: str = ""
    status_problem: str | None = None


@dataclass(slots=True)
class PatientRecord:
    ref: str  # "Patient/<id>"
    birth_date: DateRange | None = None
    birth_problem: str | None = None
    #: Patient.deceasedBoolean true or a deceasedDateTime (criterion ``alive``); ``deceased_on`` is
    #: the date when one is given; ``deceased_problem`` why a deceased[x] cannot be read
    deceased: bool = False
    deceased_on: DateRange | None = None
    deceased_problem: str | None = None
    gender: str | None = None
    #: Display name and medical record number, for the clinician summary only (rules never read them).
    name: str | None = None
    mrn: str | None = None
    readings: dict[str, list[Reading]] = field(default_factory=dict)
    unusable: dict[str, list[Unusable]] = field(default_factory=dict)
    conditions: dict[str, list[ConditionFact]] = field(default_factory=dict)
    exposures: dict[str, list[Exposure]] = field(default_factory=dict)
    procedures: dict[str, list[ProcedureFact]] = field(default_factory=dict)
    allergies: dict[str, list[AllergyFact]] = field(default_factory=dict)
    #: Problems with this patient's input that must block an "eligible" (invalid or conflicting resources).
    integrity_problems: list[str] = field(default_factory=list)
    integrity_evidence: list[str] = field(default_factory=list)
