"""What every dose rule reads: the patient, the variant's rules, the timeline and the next dose.

Built once per plan by the engine; the rules only read it. Results are selected "for the day of the
dose" with the freshness window of that dose (the pre-treatment window for cycle 1 day 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from adapter.checks.select import Selection, latest
from adapter.checks.values import CheckContext
from adapter.domain import PatientRecord
from adapter.dosing.bsa import BsaResult
from adapter.dosing.history import DoseHistory
from adapter.dosing.spec import DoseDay, Dosing
from adapter.dosing.state import ResponseState
from adapter.dosing.timeline import Timeline
from adapter.eligibility.results import Eligibility

DOSING_DOC = "docs/dosing.md"


@dataclass(frozen=True, slots=True)
class NextDose:
    """The dose the plan is about."""

    cycle: int
    day: int
    #: the doses of the cycle from this one on (empty when they depend on something unknown)
    days: tuple[DoseDay, ...]
    cycle_day1: date
    #: the day it is planned for: the as-of date when it is due now, else the day it falls due
    on: date
    due_now: bool
    new_cycle: bool
    #: toxicity reductions in force for its cycle
    steps: int
    #: dose level index (None: it depends on a response that is not known)
    level: int | None
    #: the response that decides its cycle's doses (cycles 2+)
    response: ResponseState | None
    #: the percent reduction factor (label/UK/Spain after a reduction), else 1
    factor: Decimal
    window: tuple[date, date | None] | None

    @property
    def first(self) -> bool:
        """Cycle 1 day 1: the first dose of the course."""
        return self.cycle == 1 and self.day == 1


@dataclass(frozen=True, slots=True)
class DoseContext:
    record: PatientRecord
    spec: Dosing
    as_of: date
    accept_preliminary: bool
    history: DoseHistory
    eligibility: Eligibility
    timeline: Timeline | None  # None before the first dose
    next: NextDose
    #: the BSA for the dose, once the engine has computed it
    bsa: BsaResult | None = None

    @property
    def started(self) -> bool:
        return self.timeline is not None

    @property
    def labs_max_age(self) -> int:
        fr = self.spec.freshness
        return fr.first_dose_labs_max_age_days if self.next.first else fr.labs_max_age_days

    @property
    def counts_max_age(self) -> int:
        fr = self.spec.freshness
        return fr.first_dose_labs_max_age_days if self.next.first else fr.blood_count_max_age_days

    @property
    def freshness_source(self) -> str:
        fr = self.spec.freshness
        return fr.first_dose_source if self.next.first else fr.source

    def checks(self) -> CheckContext:
        """The shared check context for the dose day."""
        return CheckContext(self.record, self.next.on, self.accept_preliminary, {}, now=self.as_of)

    def select(
        self, concept: str, max_age_days: int | None, label: str | None = None, on: date | None = None
    ) -> Selection:
        return latest(self.record, concept, on or self.next.on, max_age_days, self.accept_preliminary, label)
