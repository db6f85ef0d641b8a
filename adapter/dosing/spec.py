"""A protocol variant's dosing rules as data: ``adapter/protocols/<variant>.dosing.yaml``.

The YAML is validated here (pydantic, unknown keys rejected) and loaded once. Every block that
encodes a rule carries ``source``: "<file> §<section>" in ``../shared/sources`` (or ``docs/`` for
adapter policy). The engine (adapter.dosing.engine) reads only these models.

Numbers stay ``Decimal`` so that mg/m² × m² and the rounding of doses are exact.
"""

from __future__ import annotations

import functools
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from adapter.errors import MappingTableError

PROTOCOLS_DIR = Path(__file__).resolve().parent.parent / "protocols"

Action = Literal["administer", "delay", "omit", "discontinue", "complete", "review", "insufficient-data"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DoseDay(_Model):
    day: int
    mg_per_m2: Decimal


class CycleSchedule(_Model):
    """The doses of one kind of cycle, and when the next cycle's day 1 falls."""

    days: tuple[DoseDay, ...]
    #: next cycle's day 1 is due ``length_days`` after this cycle's day 1 ...
    length_days: int
    #: ... may start from ``earliest_next_days`` ...
    earliest_next_days: int
    #: ... and is on time until ``latest_next_days``; later counts as an interruption.
    latest_next_days: int
    #: the day of this cycle on which the next day 1 is planned, from which a late day 1 is counted
    #: as an interruption (MD Anderson: day 28); default: the day after ``latest_next_days``
    interruption_from_day: int | None = None
    source: str

    @property
    def interruption_offset(self) -> int:
        """Days from this cycle's day 1 to the start of an interruption before the next day 1."""
        return (self.interruption_from_day - 1) if self.interruption_from_day else self.latest_next_days

    @field_validator("days")
    @classmethod
    def _ordered(cls, v: tuple[DoseDay, ...]) -> tuple[DoseDay, ...]:
        if not v or v[0].day != 1 or [d.day for d in v] != sorted({d.day for d in v}):
            raise ValueError("days must start with day 1 and increase")
        return v


class Later(_Model):
    """Cycles 2+ for label/UK/Spain: the dose depends on remission (CR/CRi) in an earlier cycle."""

    remission: CycleSchedule
    no_remission: CycleSchedule
    remission_responses: tuple[str, ...]
    source: str


class Levels(_Model):
    """Cycles 2+ for MD Anderson: dose levels 0, -1, -2 (index 0, 1, 2)."""

    levels: tuple[CycleSchedule, ...]
    names: tuple[str, ...]
    #: from this cycle on, the next lower level after haematological remission in the previous cycle
    remission_lower_from_cycle: int
    remission_responses: tuple[str, ...]
    remission_source: str
    #: CRi with platelets below the previous cycle's pre-treatment value: consider one level lower
    cri_platelets_source: str
    cri_platelets_action: Action = "review"


class Window(_Model):
    """When a dose within a cycle counts as on time, delayed or lost."""

    early_days: int  # a dose may be given this many days before its nominal day
    late_days: int  # ... or this many days after it, without counting as a delay
    #: a dose delayed by this many days or more is omitted (the next dose in the cycle follows)
    omit_from_delay_days: int
    min_days_between_doses: int
    #: MD Anderson: an interruption running past this day restarts as day 1 of the next cycle
    restart_as_next_cycle_after_day: int | None = None
    source: str


class Course(_Model):
    max_cycles: int | None
    #: what happens after max_cycles; with max_cycles null, ``review_after_cycles`` applies
    max_cycles_source: str
    review_after_cycles: int | None = None
    stop_without_response_after: int
    stop_responses: tuple[str, ...]
    #: responses that neither continue nor stop by themselves (MD Anderson: PR after 2 cycles)
    review_responses: tuple[str, ...] = ()
    stop_action: Action
    stop_source: str
    progression_action: Action
    progression_source: str


class Hsct(_Model):
    cycles: int
    #: "uk": a third cycle only for MRD negativity (or a transplant delay);
    #: "may-consider": a third cycle may be considered without CR/CRi and MRD negativity (label);
    #: "es-literal": the Spanish wording (see es-valtermed.dosing.yaml)
    #: "fewest-to-remission": MD Anderson, 2 cycles or the fewest that reach CR/CRi/CRp
    third_cycle: Literal["uk", "may-consider", "es-literal", "fewest-to-remission"]
    mrd_negative_below_percent: Decimal
    mrd_negative_inclusive: bool
    source: str


class Interruption(_Model):
    """Dose modification by length of interruption due to toxicity."""

    reduce_from_days: int
    beyond_days: int
    beyond_action: Action
    source: str
    #: label/UK/Spain: percent reduction, then two doses per cycle, then discontinue;
    #: MD Anderson: one dose level per step, withdrawal after more than ``max_reductions``
    reduction: Literal["percent", "level"]
    reduction_factor: Decimal | None = None
    two_dose_days: tuple[int, ...] | None = None
    max_reductions: int
    reduction_source: str
    #: None: apply the reduction; "review": the source defers it to the product information
    reduction_effect: Action | None = None


class CountLimits(_Model):
    """Limits checked before every dose where no count hold applies (UK standard limits)."""

    neutrophils_min: Decimal
    platelets_min: Decimal
    on_fail: Action
    source: str


class Haematological(_Model):
    from_cycle: int
    neutrophils_min: Decimal
    platelets_min: Decimal
    on_hold: Action
    source: str
    no_hold_within_cycle_source: str
    #: "every-dose": a blood count is required before every dose (missing or stale: no dose);
    #: "cycle-start": only where the day-1 hold applies
    counts_before: Literal["every-dose", "cycle-start"] = "cycle-start"
    counts_before_source: str | None = None
    every_dose_limits: CountLimits | None = None


class Hepatic(_Model):
    bilirubin_max_uln: Decimal
    transaminases_max_uln: Decimal
    tumour_bilirubin_max_uln: Decimal | None = None
    #: MD Anderson: an isolated AST rise need not delay if not hepatobiliary (review)
    isolated_ast_review: bool = False
    on_fail: Action
    #: discontinue when the values have not recovered after this many days of interruption
    no_recovery_days: int | None
    source: str


class Renal(_Model):
    crcl_min: Decimal
    inclusive: bool
    on_fail: Action
    source: str


class Toxicity(_Model):
    hold_from_grade: int
    on_hold: Action
    #: conditions read as toxicities of treatment (besides VOD and infusion reactions): an ungraded
    #: one arising on treatment cannot be shown to be below the hold grade
    toxicity_concepts: tuple[str, ...]
    ungraded_action: Action
    grade4_action: Action | None = None
    grade4_source: str | None = None
    source: str
    vod_unconfirmed_action: Action
    vod_source: str
    #: MD Anderson: other severe (grade ≥ 3) liver toxicity discontinues permanently
    severe_liver_toxicity_action: Action | None = None
    infusion_reaction_source: str
    #: conditions that are the disease itself, not a toxicity of treatment
    disease_concepts: tuple[str, ...]


class Freshness(_Model):
    labs_max_age_days: int
    #: results before cycle 1 day 1 (the pre-treatment validity window)
    first_dose_labs_max_age_days: int
    first_dose_source: str
    blood_count_max_age_days: int
    weight_max_age_days: int
    first_dose_weight_max_age_days: int
    #: MD Anderson: weight within this many days before each cycle's day 1
    weight_before_cycle_days: int | None = None
    weight_change_percent: Decimal
    height_max_age_days: int
    source: str
    weight_source: str


class Premedication(_Model):
    text: str
    source: str


class Advice(_Model):
    id: str
    text: str
    source: str
    when: Literal[
        "always", "cycle-1", "hsct-candidate", "qt-comedication", "hepatotoxic-comedication", "high-blasts"
    ]


class Dosing(_Model):
    variant: str
    cycle1: CycleSchedule
    later: Later | None = None
    levels: Levels | None = None
    window: Window
    course: Course
    hsct: Hsct
    interruption: Interruption
    no_reescalation_source: str
    haematological: Haematological
    hepatic: Hepatic
    renal: Renal | None = None
    toxicity: Toxicity
    freshness: Freshness
    premedication: tuple[Premedication, ...]
    advice: tuple[Advice, ...]
    blasts_cytoreduction_above: Decimal | None = None  # 10^9/L


class BsaRange(_Model):
    """The body surface area a dose may be computed from (m², inclusive): outside it the weight or
    height behind it is wrong, and no dose is computed (adapter policy; not a cap)."""

    min: Decimal
    max: Decimal
    source: str

    @field_validator("max")
    @classmethod
    def _ordered(cls, v: Decimal, info: ValidationInfo) -> Decimal:
        low = info.data.get("min")
        if low is None or not 0 < low < v:
            raise ValueError("bsa_m2 needs 0 < min < max")
        return v


class Product(_Model):
    vial_mg: Decimal
    reconstitution_ml: Decimal
    concentration_mg_per_ml: Decimal
    diluent: str
    diluent_ml: int
    infusion_minutes: int
    protect_from_light: bool
    max_hours_reconstitution_to_dilution: int
    max_hours_reconstitution_to_end: int
    mg_decimals: int
    ml_decimals: int
    rounding: str
    source: str
    infusion_source: str
    bsa_m2: BsaRange


def _load_yaml(path: Path) -> object:
    from adapter.yaml_files import read_yaml  # bounded: no aliases, one-line errors (issue #10)

    return read_yaml(path, "protocol")[0]


@functools.cache
def load_dosing(variant: str) -> Dosing:
    path = PROTOCOLS_DIR / f"{variant}.dosing.yaml"
    try:
        spec = Dosing.model_validate(_load_yaml(path))
    except ValidationError as exc:
        raise MappingTableError(f"{path}: {exc}") from None
    if spec.variant != variant:
        raise MappingTableError(f"{path}: variant {spec.variant!r} does not match the file name")
    if (spec.later is None) == (spec.levels is None):
        raise MappingTableError(f"{path}: give exactly one of `later` or `levels`")
    return spec


@functools.cache
def load_product() -> Product:
    path = PROTOCOLS_DIR / "product.yaml"
    try:
        return Product.model_validate(_load_yaml(path))
    except ValidationError as exc:
        raise MappingTableError(f"{path}: {exc}") from None
