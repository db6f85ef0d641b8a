"""The CDS services this adapter offers and what they ask the EHR to prefetch.

Services (``GET /cds-services``): for every protocol variant, ``ino-order-select-<variant>`` (hook
``order-select``) and ``ino-order-sign-<variant>`` (hook ``order-sign``); and ``ino-order-select`` /
``ino-order-sign`` for the variant of the configuration (``protocol``). An EHR registers the ids of the
variant its site follows; the unsuffixed ids follow the configuration, so a site changes variant without
re-registering.

Prefetch templates ask for exactly what the rules read, derived from the data (never a hand-kept list):

- ``patient``: ``Patient/{{context.patientId}}``;
- ``labs``: the observation concepts of the mapping tables whose value is a quantity (laboratory results,
  weight, height, BSA, QTcF: the values the rules read by date), by every code the tables give them (LOINC,
  the project's own code, a site table's codes), from a date floor: the longest look-back of the variant's
  files (the eligibility ``windows``, the dosing ``freshness`` limits; the height's 365 days in every
  variant). The floor is written with the CDS Hooks 3.0 ballot's date token ``{{today() - N days}}``;
  CDS Hooks 2.0 has no date token, so a 2.0 client that cannot fill it omits the key and the service
  fetches it itself with the same floor (adapter.service.cds.prefetch);
- ``observations``: the other observation concepts (coded or integer values: response, MRD, disease
  status, serology, CD22, Philadelphia status, ECOG, pregnancy, HSCT candidacy, prior lines), by code and
  without a floor, because the rules read them whatever their age (a CD22 result from diagnosis counts);
- ``conditions``, ``medication-requests``, ``medication-statements``, ``medication-administrations``,
  ``procedures``, ``allergies``, ``immunizations``: every resource of the type for the patient, because the
  rules read them closed world (a graded Condition no table codes is a possible toxicity; any drug may be
  QT-prolonging or hepatotoxic).

The templates keep to the specification's recommended subset (reads, type searches on ``patient``, token
equality, ``date`` with ``ge``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final
from urllib.parse import quote

from adapter.dosing.spec import load_dosing
from adapter.mapping.tables import Tables
from adapter.protocols import VARIANTS, load_variant

HOOKS: Final = ("order-select", "order-sign")
PREFIX: Final = "ino"
PATIENT_TOKEN: Final = "{{context.patientId}}"
#: Search types read closed world: every resource of the type for the patient.
WHOLE_TYPES: Final = (
    ("conditions", "Condition", "patient"),
    ("medication-requests", "MedicationRequest", "patient"),
    ("medication-statements", "MedicationStatement", "patient"),
    ("medication-administrations", "MedicationAdministration", "patient"),
    ("procedures", "Procedure", "patient"),
    ("allergies", "AllergyIntolerance", "patient"),
    ("immunizations", "Immunization", "patient"),
)
_TODAY_TOKEN = re.compile(r"\{\{today\(\) - (\d+) days\}\}")


@dataclass(frozen=True, slots=True)
class PrefetchSpec:
    """One prefetch key: the template the EHR fills, and how the service fills it when the EHR did not."""

    key: str
    resource_type: str
    template: str
    #: a read of one resource (``Patient/{{context.patientId}}``) rather than a search
    read: bool = False
    #: the search's codes (``system|code``), so that the service can split a long search when it fetches
    codes: tuple[str, ...] = ()
    #: the date floor in days before today (``date=ge``), or None
    floor_days: int | None = None

    def params(
        self, patient_id: str, today: date, codes: tuple[str, ...] | None = None
    ) -> list[tuple[str, str]]:
        """The search's parameters with the tokens filled (``codes``: a slice of this search's codes)."""
        params = [("patient", patient_id)]
        chosen = self.codes if codes is None else codes
        if chosen:
            params.append(("code", ",".join(chosen)))
        if self.floor_days is not None:
            params.append(("date", f"ge{(today - timedelta(days=self.floor_days)).isoformat()}"))
        return params


@dataclass(frozen=True, slots=True)
class CdsService:
    id: str
    hook: str
    protocol: str
    title: str
    description: str
    prefetch: tuple[PrefetchSpec, ...] = field(default=())

    @property
    def path(self) -> str:
        return f"/cds-services/{self.id}"

    def spec(self, key: str) -> PrefetchSpec | None:
        return next((p for p in self.prefetch if p.key == key), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": {p.key: p.template for p in self.prefetch},
            "usageRequirements": (
                "Send every prefetch key, or fhirServer with fhirAuthorization (read access to the "
                "patient's Patient, Observation, Condition, MedicationRequest, MedicationStatement, "
                "MedicationAdministration, Medication, Procedure, AllergyIntolerance and Immunization): "
                "what is neither prefetched nor fetchable is answered 412, never guessed. Feedback is "
                "welcome at /feedback."
            ),
        }


# -- what the rules read ----------------------------------------------------------------------------
def observation_codes(tables: Tables, quantity: bool) -> tuple[str, ...]:
    """``system|code`` of the observation concepts whose value is (``quantity``) or is not a quantity."""
    names = {
        n
        for n, c in tables.concepts.items()
        if c.kind == "observation" and (c.value == "quantity") == quantity
    }
    return tuple(sorted(f"{s}|{c}" for (s, c), concepts in tables.exact.items() if concepts & names))


@functools.cache
def lookback_days(protocol: str) -> int:
    """The oldest result (in days) any rule of the variant reads by date: the longest eligibility window
    and dosing freshness limit."""
    variant, dosing = load_variant(protocol), load_dosing(protocol)
    fresh = dosing.freshness
    limits = [
        *variant.windows.values(),
        fresh.labs_max_age_days,
        fresh.first_dose_labs_max_age_days,
        fresh.blood_count_max_age_days,
        fresh.weight_max_age_days,
        fresh.first_dose_weight_max_age_days,
        fresh.height_max_age_days,
    ]
    if fresh.weight_before_cycle_days is not None:
        limits.append(fresh.weight_before_cycle_days)
    return max(limits)


@functools.cache
def pretreatment_days(protocol: str) -> int:
    """How long before the first dose the pre-treatment results may be (the start-only criteria judged on
    the day of the first dose; the baseline counts later cycles recover to)."""
    variant, dosing = load_variant(protocol), load_dosing(protocol)
    fresh = dosing.freshness
    return max(
        [*variant.windows.values(), fresh.first_dose_labs_max_age_days, fresh.first_dose_weight_max_age_days]
    )


def _search(resource_type: str, codes: tuple[str, ...], floor_days: int | None = None) -> str:
    params = [f"patient={PATIENT_TOKEN}"]
    if codes:
        params.append("code=" + ",".join(quote(c, safe=":/") for c in codes))
    if floor_days is not None:
        params.append(f"date=ge{{{{today() - {floor_days} days}}}}")
    return f"{resource_type}?" + "&".join(params)


def prefetch_specs(protocol: str, tables: Tables) -> tuple[PrefetchSpec, ...]:
    labs, other = observation_codes(tables, True), observation_codes(tables, False)
    floor = lookback_days(protocol)
    specs = [
        PrefetchSpec("patient", "Patient", f"Patient/{PATIENT_TOKEN}", read=True),
        PrefetchSpec(
            "labs", "Observation", _search("Observation", labs, floor), codes=labs, floor_days=floor
        ),
        PrefetchSpec("observations", "Observation", _search("Observation", other), codes=other),
    ]
    specs += [PrefetchSpec(key, rtype, _search(rtype, ())) for key, rtype, _ in WHOLE_TYPES]
    return tuple(specs)


# -- the services --------------------------------------------------------------------------------------
def service_id(hook: str, protocol: str | None) -> str:
    return f"{PREFIX}-{hook}" + (f"-{protocol}" if protocol else "")


def _describe(hook: str, protocol: str, title: str) -> tuple[str, str]:
    short = title.split(":", maxsplit=1)[0]
    when = "selected" if hook == "order-select" else "about to be signed"
    return (
        f"Inotuzumab ozogamicin order check ({short})",
        f"Checks each inotuzumab ozogamicin MedicationRequest {when} against the {protocol} protocol "
        "variant: the BSA-based dose (±10%), the day and the interval since the last dose, the results "
        "before the dose, holds and stops; suggests the calculated dose and the premedication.",
    )


def services(tables_for: dict[str, Tables], default_protocol: str) -> tuple[CdsService, ...]:
    """Every service: the configured variant's unsuffixed ids first, then one pair per variant."""
    out: list[CdsService] = []
    for protocol in (None, *VARIANTS):
        name = protocol or default_protocol
        if name not in tables_for:
            continue
        title, description = "", ""
        for hook in HOOKS:
            title, description = _describe(hook, name, load_variant(name).title)
            out.append(
                CdsService(
                    service_id(hook, protocol),
                    hook,
                    name,
                    title,
                    description,
                    prefetch_specs(name, tables_for[name]),
                )
            )
    return tuple(out)


def floor_of(template: str) -> int | None:
    """The N of a template's ``{{today() - N days}}`` token (None: no date floor)."""
    m = _TODAY_TOKEN.search(template)
    return int(m.group(1)) if m else None
