"""The result of the dose engine (the ``dose`` block of the evaluation contract, docs/contract.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from adapter.domain import PatientRecord
from adapter.dosing.bsa import BsaResult
from adapter.dosing.findings import Action, Finding
from adapter.dosing.preparation import preparation_json
from adapter.dosing.spec import Dosing, Product
from adapter.dosing.state import INFUSION_REACTION, VOD, responses_between, since
from adapter.dosing.timeline import Timeline

LEVEL_NAMES = ("0", "-1", "-2")
#: best first, for the per-cycle "best response" shown in the treatment block
RESPONSE_RANK = {"CR": 0, "CRi": 1, "CRp": 2, "PR": 3, "NR": 4, "PD": 5}


def level_name(index: int) -> str:
    return LEVEL_NAMES[min(index, len(LEVEL_NAMES) - 1)]


@dataclass(frozen=True, slots=True)
class PlannedDose:
    day: int
    mg_per_m2: Decimal
    mg: Decimal
    date: date
    vials: int
    volume_ml: Decimal

    def as_json(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "mg_per_m2": float(self.mg_per_m2),
            "mg": float(self.mg),
            "date": self.date.isoformat(),
            "vials": self.vials,
            "volume_ml": float(self.volume_ml),
        }


@dataclass(slots=True)
class DosePlan:
    action: Action
    cycle: int | None
    day: int | None
    dose_level: str | None
    started: bool
    cycles_started: int
    last_dose: date | None
    bsa: BsaResult | None
    doses: list[PlannedDose]
    findings: list[Finding]
    premedication: list[dict[str, str]]
    advice: list[dict[str, str]]
    product: Product
    #: the date the next dose is planned for (the as-of date when it is due now)
    dose_date: date | None = None
    interruption_days: int = 0
    window: tuple[date, date | None] | None = None
    treatment: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "cycle": self.cycle,
            "day": self.day,
            "dose_level": self.dose_level,
            "treatment_started": self.started,
            "cycles_started": self.cycles_started,
            "last_dose": self.last_dose.isoformat() if self.last_dose else None,
            "next_dose_date": self.dose_date.isoformat() if self.dose_date else None,
            "next_dose_window": (
                {
                    "earliest": self.window[0].isoformat(),
                    "latest": self.window[1].isoformat() if self.window[1] else None,
                }
                if self.window
                else None
            ),
            "interruption_days": self.interruption_days,
            "bsa_m2": float(self.bsa.m2) if self.bsa else None,
            "bsa_formula": self.bsa.formula if self.bsa else None,
            "bsa_inputs": self.bsa.as_json() if self.bsa else None,
            "doses": [d.as_json() for d in self.doses],
            "findings": [f.as_json() for f in self.findings],
            "preparation": preparation_json(self.product),
            "premedication": self.premedication,
            "advice": self.advice,
            "treatment": self.treatment,
        }


def treatment_json(
    record: PatientRecord, spec: Dosing, timeline: Timeline | None, as_of: date, accept_preliminary: bool
) -> dict[str, Any]:
    """Where the patient is: cycles with their doses, omissions, the response that decided each
    cycle's doses and the best response and MRD recorded in it; interruptions with the toxicities
    active during them; toxicity reductions in force; conditions graded since the first dose."""
    if timeline is None:
        return {"cycles": [], "interruptions": [], "reductions": 0, "toxicities": []}
    cycles = timeline.cycles
    out_cycles = []
    for i, cyc in enumerate(cycles):
        end = cycles[i + 1].day1 - timedelta(days=1) if i + 1 < len(cycles) else as_of
        found = sorted(
            responses_between(record, cyc.day1, end, accept_preliminary),
            key=lambda r: RESPONSE_RANK.get(r.coded or "", 9),
        )
        mrd = [r for r in record.readings.get("mrd", ()) if cyc.day1 <= r.day <= end]
        decided = cyc.response
        out_cycles.append(
            {
                "cycle": cyc.number,
                "day1": cyc.day1.isoformat(),
                "dose_level": level_name(cyc.level) if cyc.number > 1 else "0",
                "doses": [
                    {"day": day, "date": g.day.isoformat(), "mg": g.mg, "evidence": list(g.refs)}
                    for day, g in sorted(cyc.given.items())
                ],
                "omitted_days": sorted(cyc.omitted),
                "best_response": found[0].coded if found else None,
                "response_evidence": [r.ref for r in found[:1]],
                "mrd": mrd[0].text() if mrd else None,
                "response_for_dose": (
                    {
                        "remission": decided.remission,
                        "response": decided.label,
                        "date": decided.day.isoformat() if decided.day else None,
                        "evidence": list(decided.evidence),
                    }
                    if decided is not None
                    else None
                ),
            }
        )
    interruptions = list(timeline.interruptions)
    if timeline.current_interruption is not None:
        interruptions.append(timeline.current_interruption)
    toxicities = [
        {
            "concept": c.concept,
            "display": c.display,
            "grade": c.grade,
            "onset": str(c.onset) if c.onset else None,
            "active": c.active,
            "evidence": [c.ref],
        }
        for facts in record.conditions.values()
        for c in facts
        if c.concept not in spec.toxicity.disease_concepts
        and (
            c.grade is not None
            or c.concept in (VOD, INFUSION_REACTION)
            or c.concept in spec.toxicity.toxicity_concepts
        )
        and since(c, timeline.first_dose)
    ]
    return {
        "cycles": out_cycles,
        "interruptions": [
            {
                "from": i.start.isoformat(),
                "to": i.end.isoformat(),
                "days": i.days,
                "ongoing": i.ongoing,
                "toxicity_evidence": list(i.toxicity),
            }
            for i in interruptions
        ],
        "reductions": timeline.steps,
        "toxicities": toxicities,
    }
