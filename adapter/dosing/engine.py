"""The dose engine: where the patient is in treatment and what to do about the next dose.

Pure: PatientRecord, eligibility and as-of date in; a DosePlan out. No file, clock or network.

Order of reasoning (docs/dosing.md):
1. The doses given so far (adapter.dosing.history) are replayed against the variant's schedule:
   each dose is matched to a day of its cycle (a dose too late for its day omits it; a dose too
   late for any day of the cycle starts the next cycle), and every interruption is measured.
2. The next dose is the next day of the current cycle still open at the as-of date, else day 1 of
   the next cycle.
3. Before the first dose the action follows eligibility. Once treatment has started the
   start-only criteria no longer apply; the continuation rules below decide.
4. Every rule adds findings; each finding may call for an action, and the most binding action
   wins (adapter.dosing.findings.PRECEDENCE). Doses are listed only when nothing is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from adapter.checks.select import latest
from adapter.checks.values import CheckContext as RuleContext
from adapter.checks.values import renal_function, within_uln_multiple
from adapter.domain import ConditionFact, PatientRecord, Reading
from adapter.dosing.bsa import BsaResult, Formula, bsa_m2
from adapter.dosing.findings import Action, Finding, Severity, decide, finding
from adapter.dosing.history import DoseHistory, GivenDose, dose_history
from adapter.dosing.preparation import preparation_json, prepare
from adapter.dosing.spec import CycleSchedule, DoseDay, Dosing, Product, load_dosing, load_product
from adapter.eligibility.results import Eligibility, Overall, Status

DOSING_DOC = "docs/dosing.md"
ELIGIBILITY_ACTION = {
    Overall.ELIGIBLE: None,
    Overall.NEEDS_REVIEW: Action.REVIEW,
    Overall.INSUFFICIENT_DATA: Action.INSUFFICIENT_DATA,
    Overall.INELIGIBLE: Action.NOT_ELIGIBLE,
}
LEVEL_NAMES = ("0", "-1", "-2")
NOT_A_TOXICITY = frozenset({"haematological-toxicity"})
VOD = "vod-sos"
#: complete remission of any count recovery, for the HSCT rules of every source
REMISSION = frozenset({"CR", "CRi", "CRp"})
INFUSION_REACTION = "infusion-reaction"


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


# -- the replay of given doses ----------------------------------------------------------------
@dataclass(slots=True)
class Cycle:
    number: int
    day1: date
    days: tuple[DoseDay, ...]  # the days of this cycle (two doses after the second reduction)
    steps: int  # toxicity reductions in force for this cycle
    schedule: CycleSchedule
    level: int = 0  # MD Anderson dose level index (0, 1, 2); 0 elsewhere
    given: dict[int, GivenDose] = field(default_factory=dict)
    omitted: list[int] = field(default_factory=list)
    last_index: int = -1  # index in days of the last matched day

    def nominal(self, d: DoseDay) -> date:
        return self.day1 + timedelta(days=d.day - 1)


@dataclass(frozen=True, slots=True)
class Interruption:
    start: date
    end: date
    days: int
    ongoing: bool
    toxicity: tuple[str, ...] | None  # evidence of a toxicity in the interval, or None if none found


@dataclass(slots=True)
class Position:
    cycle: int
    day: DoseDay | None  # None when the next cycle's days are not known yet
    new_cycle: bool
    earliest: date
    due: date
    interruption_start: date | None
    omitted_now: list[int]
    latest: date | None = None  # the last day the next dose is on time


class _Engine:
    def __init__(
        self,
        record: PatientRecord,
        spec: Dosing,
        as_of: date,
        formula: Formula,
        accept_preliminary: bool,
        exclude: frozenset[str],
    ) -> None:
        self.r = record
        self.s = spec
        self.as_of = as_of
        self.formula = formula
        self.accept_preliminary = accept_preliminary
        self.findings: list[Finding] = []
        self.history: DoseHistory = dose_history(record, as_of, exclude)
        self.cycles: list[Cycle] = []
        self.interruptions: list[Interruption] = []
        self.unexplained_steps = 0
        self.current_interruption: Interruption | None = None
        self.pos: Position | None = None

    # -- helpers ------------------------------------------------------------------------------
    def add(self, *args: Any, **kwargs: Any) -> None:
        self.findings.append(finding(*args, **kwargs))

    def first_dose(self) -> date:
        return self.history.doses[0].day

    def ctx(self, on: date) -> RuleContext:
        return RuleContext(self.r, on, self.accept_preliminary, {})

    def responses(self, start: date, end: date) -> list[Reading]:
        """Usable response readings dated in [start, end]."""
        out = []
        for rd in self.r.readings.get("response", ()):
            if (
                start <= rd.day <= end
                and rd.coded
                and (rd.status != "preliminary" or self.accept_preliminary)
            ):
                out.append(rd)
        return out

    def schedule_for(self, number: int, remission: bool | None, level: int) -> CycleSchedule | None:
        if number == 1:
            return self.s.cycle1
        if self.s.levels is not None:
            return self.s.levels.levels[min(level, len(self.s.levels.levels) - 1)]
        assert self.s.later is not None
        if remission is None:
            return None
        return self.s.later.remission if remission else self.s.later.no_remission

    def days_for(self, schedule: CycleSchedule, number: int, steps: int) -> tuple[DoseDay, ...]:
        iv = self.s.interruption
        if number > 1 and iv.reduction == "percent" and steps >= 2 and iv.two_dose_days:
            return tuple(d for d in schedule.days if d.day in iv.two_dose_days)
        return schedule.days

    def latest_for(self, cyc: Cycle, d: DoseDay) -> date:
        w = self.s.window
        last = d.day - 1 + w.omit_from_delay_days - 1
        if w.restart_as_next_cycle_after_day is not None:
            last = min(last, max(w.restart_as_next_cycle_after_day - 1, d.day - 1 + w.late_days))
        return cyc.day1 + timedelta(days=last)

    def due_for(self, cyc: Cycle, d: DoseDay, prev: date) -> date:
        return max(cyc.nominal(d), prev + timedelta(days=self.s.window.min_days_between_doses))

    def toxicity_between(self, start: date, end: date) -> tuple[str, ...] | None:
        """Evidence that a toxicity was present around [start, end], or None."""
        lo, hi = start - timedelta(days=7), end
        evidence: list[str] = []
        for facts in self.r.conditions.values():
            for c in facts:
                when = c.onset or c.recorded
                if when is None or not (lo <= when.latest and when.earliest <= hi):
                    continue
                if c.concept in self.s.toxicity.disease_concepts:
                    continue
                if (c.grade or 0) >= 2 or c.concept in (VOD, INFUSION_REACTION, "haematological-toxicity"):
                    evidence.append(c.ref)
        limits = {
            "neutrophils": (self.s.haematological.neutrophils_min, None),
            "platelets": (self.s.haematological.platelets_min, None),
            "bilirubin-total": (None, self.s.hepatic.bilirubin_max_uln),
            "ast": (None, self.s.hepatic.transaminases_max_uln),
            "alt": (None, self.s.hepatic.transaminases_max_uln),
        }
        for concept, (low, uln_max) in limits.items():
            for rd in self.r.readings.get(concept, ()):
                if not (lo <= rd.day <= hi) or rd.number is None:
                    continue
                if (low is not None and rd.number < float(low)) or (
                    uln_max is not None and rd.uln and rd.number > float(uln_max) * rd.uln
                ):
                    evidence.append(rd.ref)
        return tuple(dict.fromkeys(evidence)) or None

    # -- 1. replay ----------------------------------------------------------------------------
    def remission_before(self, day: date) -> bool | None:
        """Whether CR/CRi (per variant) was recorded between the first dose and ``day``."""
        if not self.history.doses:
            return None
        found = self.responses(self.first_dose(), day)
        if not found:
            return None
        responses = self.remission_responses()
        return any(rd.coded in responses for rd in found)

    def remission_responses(self) -> tuple[str, ...]:
        if self.s.later is not None:
            return self.s.later.remission_responses
        assert self.s.levels is not None
        return self.s.levels.remission_responses

    def level_for(self, number: int, day1: date, steps: int) -> int:
        """MD Anderson dose level index (0, 1, 2) for cycle ``number`` starting on ``day1``."""
        if self.s.levels is None or number == 1:
            return 0
        level = steps
        if number >= self.s.levels.remission_lower_from_cycle and self.history.doses:
            # "0.6 mg/m²/cycle if haematological remission is achieved in the previous cycle": the
            # marrow is not examined every cycle, so a remission once recorded keeps the lower level
            # (the dose is never raised again along a course)
            found = self.responses(self.first_dose(), day1 - timedelta(days=1))
            if any(rd.coded in self.s.levels.remission_responses for rd in found):
                level = max(level, 1)
        return min(level, len(self.s.levels.levels) - 1)

    def new_cycle(self, number: int, day1: date, steps: int) -> Cycle:
        remission = self.remission_before(day1 - timedelta(days=1)) if number > 1 else None
        level = self.level_for(number, day1, steps)
        schedule = self.schedule_for(number, remission, level)
        if schedule is None:  # label/UK/Spain with unknown response: the days are the same either way
            assert self.s.later is not None
            schedule = self.s.later.no_remission
        return Cycle(number, day1, self.days_for(schedule, number, steps), steps, schedule, level)

    def replay(self) -> None:
        w = self.s.window
        prev: date | None = None
        steps = 0
        for dose in self.history.doses:
            if prev is not None and (dose.day - prev).days < w.min_days_between_doses:
                self.add(
                    "doses-too-close",
                    f"the doses on {prev} and {dose.day} are {(dose.day - prev).days} days apart "
                    f"(minimum {w.min_days_between_doses})",
                    w.source,
                    dose.refs,
                    severity=Severity.WARNING,
                )
            if not self.cycles:
                cyc = self.new_cycle(1, dose.day, 0)
                self.cycles.append(cyc)
                self._assign(cyc, 0, dose)
                prev = dose.day
                continue
            assert prev is not None
            cyc = self.cycles[-1]
            first_pending_due: date | None = None
            matched = None
            for i in range(cyc.last_index + 1, len(cyc.days)):
                d = cyc.days[i]
                if first_pending_due is None:
                    first_pending_due = self.due_for(cyc, d, prev)
                if dose.day > self.latest_for(cyc, d):
                    continue
                matched = i
                break
            if matched is not None:
                for j in range(cyc.last_index + 1, matched):
                    cyc.omitted.append(cyc.days[j].day)
                assert first_pending_due is not None
                self._record_interruption(first_pending_due, dose.day, ongoing=False)
                self._assign(cyc, matched, dose)
            else:
                for j in range(cyc.last_index + 1, len(cyc.days)):
                    cyc.omitted.append(cyc.days[j].day)
                start = first_pending_due or cyc.day1 + timedelta(days=cyc.schedule.latest_next_days)
                gap = (dose.day - cyc.day1).days
                if first_pending_due is None and gap < cyc.schedule.earliest_next_days:
                    self.add(
                        "cycle-started-early",
                        f"cycle {cyc.number + 1} started {gap} days after day 1 of cycle {cyc.number} "
                        f"(earliest {cyc.schedule.earliest_next_days})",
                        cyc.schedule.source,
                        dose.refs,
                        severity=Severity.WARNING,
                    )
                inter = self._record_interruption(start, dose.day, ongoing=False)
                if inter is not None and inter.days >= self.s.interruption.reduce_from_days:
                    steps += 1
                    if inter.toxicity is None:
                        self.unexplained_steps += 1
                nxt = self.new_cycle(cyc.number + 1, dose.day, steps)
                self.cycles.append(nxt)
                self._assign(nxt, 0, dose)
            prev = dose.day

    def _assign(self, cyc: Cycle, index: int, dose: GivenDose) -> None:
        cyc.given[cyc.days[index].day] = dose
        cyc.last_index = index

    def _record_interruption(self, start: date, end: date, ongoing: bool) -> Interruption | None:
        days = (end - start).days
        if days <= 0:
            return None
        inter = Interruption(start, end, days, ongoing, self.toxicity_between(start, end))
        self.interruptions.append(inter)
        return inter

    # -- 2. the next dose ---------------------------------------------------------------------
    def position(self) -> Position:
        cyc = self.cycles[-1]
        prev = self.history.doses[-1].day
        w = self.s.window
        omitted: list[int] = []
        first_pending_due: date | None = None
        for i in range(cyc.last_index + 1, len(cyc.days)):
            d = cyc.days[i]
            due = self.due_for(cyc, d, prev)
            if first_pending_due is None:
                first_pending_due = due
            if self.as_of > self.latest_for(cyc, d):
                omitted.append(d.day)
                continue
            earliest = max(
                cyc.nominal(d) - timedelta(days=w.early_days), prev + timedelta(days=w.min_days_between_doses)
            )
            return Position(
                cyc.number, d, False, earliest, due, first_pending_due, omitted, self.latest_for(cyc, d)
            )
        sched = cyc.schedule
        due = max(
            cyc.day1 + timedelta(days=sched.length_days), prev + timedelta(days=w.min_days_between_doses)
        )
        earliest = max(
            cyc.day1 + timedelta(days=sched.earliest_next_days),
            prev + timedelta(days=w.min_days_between_doses),
        )
        if omitted and w.restart_as_next_cycle_after_day is not None:
            # MD Anderson §8.1.5: the day treatment restarts after an interruption past day 14 is
            # day 1 of the next cycle
            restart = cyc.day1 + timedelta(days=w.restart_as_next_cycle_after_day)
            earliest = min(earliest, max(restart, prev + timedelta(days=w.min_days_between_doses)))
            due = min(due, max(earliest, self.as_of))
        start = first_pending_due or cyc.day1 + timedelta(days=sched.latest_next_days)
        latest_day = cyc.day1 + timedelta(days=sched.latest_next_days)
        return Position(cyc.number + 1, None, True, earliest, due, start, omitted, max(latest_day, earliest))

    # -- BSA ----------------------------------------------------------------------------------
    def bsa(self, on: date, weight_days: int) -> BsaResult | None:
        fr = self.s.freshness
        w = latest(self.r, "body-weight", on, weight_days, self.accept_preliminary, "body weight")
        h = latest(self.r, "body-height", on, fr.height_max_age_days, self.accept_preliminary, "body height")
        problems = [p for p in (w.problem, h.problem) if p]
        if problems or w.reading is None or h.reading is None:
            self.add(
                "bsa-unknown",
                "BSA cannot be calculated: " + "; ".join(problems),
                fr.weight_source,
                w.evidence + h.evidence,
                effect=Action.INSUFFICIENT_DATA,
            )
            return None
        wr, hr = w.reading, h.reading
        if wr.number is None or hr.number is None or wr.comparator or hr.comparator:
            self.add(
                "bsa-unknown",
                "BSA cannot be calculated: weight or height reported as a bound",
                fr.weight_source,
                w.evidence + h.evidence,
                effect=Action.INSUFFICIENT_DATA,
            )
            return None
        return BsaResult(
            bsa_m2(wr.number, hr.number, self.formula),
            self.formula,
            wr.number,
            wr.ref,
            wr.day.isoformat(),
            hr.number,
            hr.ref,
            hr.day.isoformat(),
        )

    def weight_change(self, bsa: BsaResult) -> None:
        if not self.history.doses:
            return
        last = self.history.doses[-1]
        before = latest(self.r, "body-weight", last.day, None, self.accept_preliminary)
        if before.reading is None or before.reading.number is None or before.reading.ref == bsa.weight_ref:
            return
        old = before.reading.number
        change = (bsa.weight_kg - old) / old * 100
        limit = float(self.s.freshness.weight_change_percent)
        if abs(change) > limit:
            self.add(
                "weight-changed",
                f"weight {bsa.weight_kg:g} kg on {bsa.weight_date} differs by {change:+.1f}% from "
                f"{old:g} kg ({before.reading.day}), the weight before the last dose (> {limit:g}%): "
                "the dose is recalculated with the current weight and BSA",
                self.s.freshness.weight_source,
                (bsa.weight_ref, before.reading.ref),
                severity=Severity.WARNING,
            )

    # -- checks on the day of a dose -----------------------------------------------------------
    def hepatic(self, on: date, interruption_days: int) -> None:
        hp = self.s.hepatic
        fr = self.s.freshness
        ctx = self.ctx(on)
        bili = within_uln_multiple(
            ctx,
            ["bilirubin-total"],
            float(hp.bilirubin_max_uln),
            gilbert_exempt=True,
            tumour_max_ratio=float(hp.tumour_bilirubin_max_uln) if hp.tumour_bilirubin_max_uln else None,
            max_age_days=fr.labs_max_age_days,
        )
        transaminases = [
            (
                c,
                within_uln_multiple(
                    ctx, [c], float(hp.transaminases_max_uln), max_age_days=fr.labs_max_age_days
                ),
            )
            for c in ("ast", "alt")
        ]
        outcomes = [("bilirubin", bili), *transaminases]
        failed = [name for name, o in outcomes if o.status is Status.NOT_MET]
        haemolysis = [c for c in self.r.conditions.get("haemolysis", ()) if c.active]
        for name, o in outcomes:
            if o.status is Status.UNKNOWN:
                self.add(
                    "hepatic-labs-unknown", o.reason, fr.source, o.evidence, effect=Action.INSUFFICIENT_DATA
                )
            elif o.status is Status.REVIEW:
                self.add("hepatic-exception", o.reason, hp.source, o.evidence, effect=Action.REVIEW)
            elif o.status is Status.NOT_MET:
                if name == "bilirubin" and haemolysis:
                    self.add(
                        "hepatic-haemolysis",
                        o.reason + "; haemolysis is recorded: confirm the rise is due to it",
                        hp.source,
                        o.evidence + tuple(c.ref for c in haemolysis),
                        effect=Action.REVIEW,
                    )
                elif hp.isolated_ast_review and failed == ["ast"]:
                    self.add(
                        "hepatic-isolated-ast",
                        o.reason + "; an isolated AST rise need not delay if it is not hepatobiliary",
                        hp.source,
                        o.evidence,
                        effect=Action.REVIEW,
                    )
                elif hp.no_recovery_days is not None and interruption_days >= hp.no_recovery_days:
                    self.add(
                        "hepatic-no-recovery",
                        o.reason + f"; not recovered after {interruption_days} days of interruption: "
                        "discontinue permanently",
                        hp.source,
                        o.evidence,
                        effect=Action.DISCONTINUE,
                    )
                else:
                    self.add(
                        "hepatic-hold",
                        o.reason + ": interrupt dosing until recovery",
                        hp.source,
                        o.evidence,
                        effect=hp.on_fail,
                    )

    def renal(self, on: date) -> None:
        rn = self.s.renal
        if rn is None:
            return
        o = renal_function(
            self.ctx(on), float(rn.crcl_min), rn.inclusive, max_age_days=self.s.freshness.labs_max_age_days
        )
        if o.status is Status.UNKNOWN:
            self.add(
                "renal-unknown",
                o.reason,
                self.s.freshness.source,
                o.evidence,
                effect=Action.INSUFFICIENT_DATA,
            )
        elif o.status is not Status.MET:
            self.add("renal-limit", o.reason, rn.source, o.evidence, effect=rn.on_fail)

    def haematological(self, on: date, cycle: int) -> None:
        hm = self.s.haematological
        if cycle < hm.from_cycle:
            return
        fr = self.s.freshness
        mins = {"neutrophils": hm.neutrophils_min, "platelets": hm.platelets_min}
        now: dict[str, Reading] = {}
        for concept in mins:
            sel = latest(self.r, concept, on, fr.blood_count_max_age_days, self.accept_preliminary)
            if sel.reading is None or sel.reading.number is None:
                self.add(
                    "counts-unknown",
                    str(sel.problem or f"{concept} reported without a number"),
                    fr.source,
                    sel.evidence,
                    effect=Action.INSUFFICIENT_DATA,
                )
                return
            now[concept] = sel.reading
        low = {c: r for c, r in now.items() if r.bounds[0] < float(mins[c])}
        evidence = tuple(r.ref for r in now.values())
        shown = ", ".join(f"{c} {r.text()} ({r.day})" for c, r in now.items())
        if not low:
            return
        # pre-treatment values: the latest on or before the first dose
        pre = {c: latest(self.r, c, self.first_dose(), None, self.accept_preliminary).reading for c in mins}
        if any(pre[c] is None for c in low):
            self.add(
                "counts-baseline-unknown",
                f"{shown}: below the day-1 thresholds and the pre-treatment counts are not recorded",
                hm.source,
                evidence,
                effect=Action.REVIEW,
            )
            return
        pre_low = {c for c in mins if pre[c] is not None and pre[c].bounds[1] < float(mins[c])}  # type: ignore[union-attr]
        if not pre_low:
            self.add(
                "counts-hold",
                f"{shown}: below neutrophils ≥ {hm.neutrophils_min} / platelets ≥ {hm.platelets_min} ×10⁹/L "
                "at the start of a cycle: withhold until recovery",
                hm.source,
                evidence,
                effect=hm.on_hold,
            )
            return
        # pre-treatment counts were low: recovery to the previous cycle's baseline is enough
        prev_day1 = self.cycles[-1].day1
        baseline = {c: latest(self.r, c, prev_day1, None, self.accept_preliminary).reading for c in mins}
        recovered = all(
            baseline[c] is not None and now[c].bounds[0] >= baseline[c].bounds[1]  # type: ignore[union-attr]
            for c in mins
        )
        if recovered:
            self.add(
                "counts-recovered-to-baseline",
                f"{shown}: low, but at least the baseline of the previous cycle "
                "(pre-treatment counts were low)",
                hm.source,
                evidence + tuple(b.ref for b in baseline.values() if b is not None),
            )
            return
        self.add(
            "counts-disease-related",
            f"{shown}: below thresholds and below the previous cycle's baseline; pre-treatment counts were "
            "low. Dosing may go ahead only if the latest marrow shows stable or improved disease and the "
            "cytopenia is judged due to leukaemia",
            hm.source,
            evidence,
            effect=Action.REVIEW if hm.on_hold == "delay" else hm.on_hold,
        )

    def on_treatment_conditions(self) -> None:
        """VOD/SOS, infusion reactions and other toxicities since the first dose."""
        tx = self.s.toxicity
        start = self.first_dose()
        for c in self.r.conditions.get(VOD, ()):
            after = c.onset is not None and c.onset.latest >= start
            current = c.active or after
            if not current:
                continue
            if c.confirmed:
                self.add(
                    "vod",
                    f"hepatic VOD/SOS recorded ({c.ref}): discontinue permanently",
                    tx.vod_source,
                    (c.ref,),
                    effect=Action.DISCONTINUE,
                )
            else:
                self.add(
                    "vod-suspected",
                    f"possible hepatic VOD/SOS recorded ({c.ref}, not confirmed)",
                    tx.vod_source,
                    (c.ref,),
                    effect=tx.vod_unconfirmed_action,
                )
        for c in self.r.conditions.get(INFUSION_REACTION, ()):
            if not self._since(c, start):
                continue
            if (c.grade or 0) >= 3:
                self.add(
                    "infusion-reaction-severe",
                    f"severe or life-threatening infusion reaction ({c.ref}, grade {c.grade}"
                    f"{'' if c.grade_exact else ' from severity'}): discontinue permanently",
                    tx.infusion_reaction_source,
                    (c.ref,),
                    effect=Action.DISCONTINUE,
                )
            else:
                self.add(
                    "infusion-reaction",
                    f"infusion reaction recorded ({c.ref}, grade {c.grade if c.grade else 'not recorded'}): "
                    "premedication and infusion management to be reviewed",
                    tx.infusion_reaction_source,
                    (c.ref,),
                    effect=Action.REVIEW if c.grade is None else None,
                    severity=Severity.WARNING,
                )
        for c in self.r.conditions.get("liver-toxicity", ()):
            if tx.severe_liver_toxicity_action and c.active and (c.grade or 0) >= 3 and self._since(c, start):
                self.add(
                    "severe-liver-toxicity",
                    f"severe liver toxicity ({c.display or 'toxic liver disease'}, grade {c.grade}, "
                    f"{c.ref}): discontinue permanently",
                    tx.vod_source,
                    (c.ref,),
                    effect=tx.severe_liver_toxicity_action,
                )
        for a in self.r.allergies.get("inotuzumab-hypersensitivity", ()):
            if a.active:
                self.add(
                    "hypersensitivity",
                    f"hypersensitivity to inotuzumab ozogamicin recorded ({a.ref})",
                    tx.infusion_reaction_source,
                    (a.ref,),
                    effect=Action.REVIEW,
                )
        for concept, facts in self.r.conditions.items():
            if (
                concept in tx.disease_concepts
                or concept in NOT_A_TOXICITY
                or concept in (VOD, INFUSION_REACTION)
            ):
                continue
            for c in facts:
                if c.grade is None or not c.active or not self._since(c, start):
                    continue
                label = c.display or concept
                if c.grade >= 4 and tx.grade4_action is not None:
                    self.add(
                        "toxicity-grade-4",
                        f"grade 4 adverse event: {label} ({c.ref})",
                        tx.grade4_source or tx.source,
                        (c.ref,),
                        effect=tx.grade4_action,
                    )
                if c.grade >= tx.hold_from_grade:
                    how = "" if c.grade_exact else " (from its severity)"
                    self.add(
                        "toxicity-hold",
                        f"{label} grade {c.grade}{how} since treatment started ({c.ref}): withhold until "
                        "grade ≤ 1 or baseline",
                        tx.source,
                        (c.ref,),
                        effect=tx.on_hold,
                    )

    @staticmethod
    def _since(c: ConditionFact, start: date) -> bool:
        when = c.onset or c.recorded
        return when is None or when.latest >= start

    # -- course-level rules -------------------------------------------------------------------
    def course_rules(self, pos: Position) -> None:
        """Max cycles, assessment after n cycles, HSCT, progression."""
        co = self.s.course
        start = self.first_dose()
        n = pos.cycle
        responses = self.responses(start, self.as_of)
        latest_resp = max(responses, key=lambda x: x.day, default=None)
        if latest_resp is not None and latest_resp.coded == "PD":
            self.add(
                "progression",
                f"progressive disease recorded on {latest_resp.day} ({latest_resp.ref})",
                co.progression_source,
                tuple(r.ref for r in responses if r.coded == "PD"),
                effect=co.progression_action,
            )
        if not pos.new_cycle:
            return
        completed = n - 1
        if co.max_cycles is not None and completed >= co.max_cycles:
            self.add(
                "course-complete",
                f"{completed} cycles given: the maximum is {co.max_cycles}",
                co.max_cycles_source,
                effect=Action.COMPLETE,
            )
            return
        if (
            co.max_cycles is None
            and co.review_after_cycles is not None
            and completed >= co.review_after_cycles
        ):
            self.add(
                "course-length",
                f"{completed} cycles given: the source states no maximum; more cycles need prescriber review",
                co.max_cycles_source,
                effect=Action.REVIEW,
            )
        evidence = tuple(r.ref for r in responses)
        achieved = any(r.coded in co.stop_responses for r in responses)
        if completed >= co.stop_without_response_after and not achieved:
            if not responses:
                self.add(
                    "response-unknown",
                    f"{completed} cycles given and no response assessment recorded: the source stops "
                    f"treatment without {'/'.join(co.stop_responses)}",
                    co.stop_source,
                    effect=Action.INSUFFICIENT_DATA,
                )
            elif any(r.coded in co.review_responses for r in responses):
                self.add(
                    "response-partial",
                    f"best response after {completed} cycles is "
                    f"{'/'.join(sorted({r.coded or '' for r in responses}))}; continuing needs the "
                    "investigator's decision",
                    co.stop_source,
                    evidence,
                    effect=Action.REVIEW,
                )
            else:
                self.add(
                    "no-response",
                    f"no {'/'.join(co.stop_responses)} after {completed} cycles "
                    f"(recorded: {', '.join(sorted({r.coded or '' for r in responses}))})",
                    co.stop_source,
                    evidence,
                    effect=co.stop_action,
                )
        self.hsct_rules(completed, responses)

    def mrd_negative(self) -> tuple[bool | None, tuple[str, ...]]:
        hs = self.s.hsct
        sel = latest(self.r, "mrd", self.as_of, None, self.accept_preliminary, "MRD")
        rd = sel.reading
        if rd is None or rd.day < self.first_dose():
            return None, sel.evidence
        if rd.coded is not None:
            return rd.coded == "negative", sel.evidence
        assert rd.number is not None
        limit = float(hs.mrd_negative_below_percent)
        lo, hi = rd.bounds
        neg_hi = hi <= limit if hs.mrd_negative_inclusive else hi < limit
        pos_lo = lo > limit if hs.mrd_negative_inclusive else lo >= limit
        if neg_hi:
            return True, sel.evidence
        if pos_lo:
            return False, sel.evidence
        return None, sel.evidence

    def hsct_rules(self, completed: int, responses: list[Reading]) -> None:
        hs = self.s.hsct
        if completed < hs.cycles:
            return
        candidate, cand_evidence = self._candidacy()
        if candidate is False:
            return
        in_remission = any(r.coded in REMISSION for r in responses)
        in_cr = any(r.coded == "CR" for r in responses)
        mrd, mrd_ev = self.mrd_negative()
        evidence = tuple(r.ref for r in responses) + mrd_ev + cand_evidence
        action: Action | None
        why: str
        if completed > hs.cycles and hs.third_cycle != "fewest-to-remission":
            if not in_remission:
                return  # no remission: the course rules decide, not the transplant plan
            action, why = (
                Action.COMPLETE,
                f"{completed} cycles given to an HSCT candidate in remission: proceed",
            )
        elif hs.third_cycle == "fewest-to-remission":
            if in_remission:
                action, why = Action.COMPLETE, "HSCT candidate in CR/CRi/CRp: proceed to transplant"
            else:
                action, why = (
                    None,
                    "HSCT candidate not yet in CR/CRi/CRp: cycles continue to the fewest needed",
                )
        elif hs.third_cycle == "uk":
            if in_remission and mrd is True:
                action, why = (
                    Action.COMPLETE,
                    "HSCT candidate in complete remission with MRD negativity after 2 cycles",
                )
            elif mrd is None and in_remission:
                action, why = (
                    Action.INSUFFICIENT_DATA,
                    "HSCT candidate in remission, MRD status unknown: a third "
                    "cycle is given only to reach MRD negativity",
                )
            else:
                action, why = (
                    None,
                    "HSCT candidate without MRD-negative complete remission: a third cycle may be "
                    "given to achieve MRD negativity (or while transplant is delayed)",
                )
        elif hs.third_cycle == "may-consider":
            if in_remission and mrd is True:
                action, why = Action.COMPLETE, "HSCT candidate with CR/CRi and MRD negativity after 2 cycles"
            else:
                action, why = (
                    Action.REVIEW,
                    "HSCT candidate without CR/CRi and MRD negativity after 2 cycles: "
                    "a third cycle may be considered",
                )
        elif in_cr and mrd is True:  # es-literal
            action, why = Action.COMPLETE, "HSCT candidate in CR with MRD negativity after 2 cycles"
        else:
            action, why = (
                Action.REVIEW,
                "HSCT candidate after 2 cycles: the protocol's wording on a third "
                "cycle reads two ways (see es-valtermed.dosing.yaml); prescriber decides",
            )
        if candidate is None:
            if action in (Action.COMPLETE, Action.REVIEW, Action.INSUFFICIENT_DATA):
                self.add(
                    "hsct-candidacy-unknown",
                    "HSCT candidacy not recorded, and it changes the plan after "
                    f"{hs.cycles} cycles ({why} if a candidate)",
                    hs.source,
                    evidence,
                    effect=Action.INSUFFICIENT_DATA,
                )
            return
        self.add("hsct", why, hs.source, evidence, effect=action)

    # -- the plan -----------------------------------------------------------------------------
    def plan(self, eligibility: Eligibility | None) -> DosePlan:
        for reason, ev in self.history.problems:
            self.add("dose-history", reason, DOSING_DOC + " §Treatment history", ev, effect=Action.REVIEW)
        for reason, ev in self.history.notes:
            self.add("dose-history-note", reason, DOSING_DOC + " §Treatment history", ev)
        if not self.history.started:
            return self._first_dose(eligibility)
        self.replay()
        pos = self.position()
        self.pos = pos
        return self._continuation(pos)

    def _first_dose(self, eligibility: Eligibility | None) -> DosePlan:
        if eligibility is not None:
            effect = ELIGIBILITY_ACTION[eligibility.status]
            blocking = [c for c in eligibility.criteria if c.status is not Status.MET]
            if effect is not None:
                self.add(
                    "eligibility",
                    f"before the first dose the eligibility decides: {eligibility.status.value} ("
                    + ", ".join(f"{c.id}: {c.status.value}" for c in blocking)
                    + ")",
                    DOSING_DOC + " §Before the first dose",
                    tuple(e for c in blocking for e in c.evidence),
                    effect=effect,
                )
        sched = self.s.cycle1
        self._start_advice(first=True)
        bsa = self.bsa(self.as_of, self.s.freshness.first_dose_weight_max_age_days)
        doses = self._doses(sched.days, Decimal(1), bsa, self.as_of, self.as_of)
        return self._result(1, 1, "0", bsa, doses, self.as_of, 0)

    def _start_advice(self, first: bool) -> None:
        if first and self.s.blasts_cytoreduction_above is not None:
            sel = latest(
                self.r, "peripheral-blasts", self.as_of, 14, self.accept_preliminary, "peripheral blasts"
            )
            rd = sel.reading
            adv = next((a for a in self.s.advice if a.when == "high-blasts"), None)
            if (
                rd is not None
                and rd.number is not None
                and adv is not None
                and rd.bounds[1] > float(self.s.blasts_cytoreduction_above)
            ):
                self.add(
                    "cytoreduction",
                    f"peripheral blasts {rd.text()} on {rd.day} (> 10,000/mm³): {adv.text}",
                    adv.source,
                    sel.evidence,
                    severity=Severity.WARNING,
                )
        for when, concept in (
            ("qt-comedication", "qt-prolonging"),
            ("hepatotoxic-comedication", "hepatotoxic-azole"),
        ):
            current = [
                e
                for e in self.r.exposures.get(concept, ())
                if e.ongoing or (e.end and e.end.latest >= self.as_of)
            ]
            adv = next((a for a in self.s.advice if a.when == when), None)
            if current and adv is not None:
                self.add(
                    when,
                    f"{', '.join(e.display or e.concept for e in current)}: {adv.text}",
                    adv.source,
                    tuple(e.ref for e in current),
                    severity=Severity.WARNING,
                )

    def _continuation(self, pos: Position) -> DosePlan:
        s = self.s
        cur = self.cycles[-1]
        inter_days = 0
        if pos.interruption_start is not None and self.as_of > pos.interruption_start:
            inter_days = (self.as_of - pos.interruption_start).days
        due_now = self.as_of >= pos.earliest
        for day in pos.omitted_now:
            self.add(
                "dose-omitted",
                f"cycle {cur.number} day {day} was not given within its window: omitted",
                s.window.source,
                effect=Action.OMIT if not due_now else None,
                severity=Severity.WARNING,
            )
        self.on_treatment_conditions()
        self.course_rules(pos)
        if inter_days > s.interruption.beyond_days:
            self.add(
                "interruption-too-long",
                f"dosing interrupted for {inter_days} days (> {s.interruption.beyond_days})"
                + (
                    ": consider permanent discontinuation"
                    if s.interruption.beyond_action == "review"
                    else ": permanent discontinuation"
                ),
                s.interruption.source,
                effect=s.interruption.beyond_action,
            )
        if decide(self.findings) in (Action.DISCONTINUE, Action.COMPLETE):
            # treatment stops: the day's checks, BSA and doses no longer matter
            return self._result(
                pos.cycle, pos.day.day if pos.day else 1, None, None, [], self.as_of, inter_days
            )
        # the cycle the next dose belongs to
        steps = cur.steps
        if pos.new_cycle:
            if inter_days >= s.interruption.reduce_from_days:
                steps += 1
                start = pos.interruption_start or self.as_of
                self.current_interruption = Interruption(
                    start, self.as_of, inter_days, True, self.toxicity_between(start, self.as_of)
                )
                if self.current_interruption.toxicity is None:
                    self.unexplained_steps += 1
            day1 = max(self.as_of, pos.earliest) if due_now else pos.due
            level = self.level_for(pos.cycle, day1, steps)
            remission = self.remission_before(day1 - timedelta(days=1))
            sched = self.schedule_for(pos.cycle, remission, level)
            if sched is None:
                self.add(
                    "response-unknown-for-dose",
                    f"the day-1 dose of cycle {pos.cycle} depends on whether CR/CRi was reached, and no "
                    "response assessment is recorded since the first dose",
                    s.later.source if s.later else DOSING_DOC,
                    effect=Action.INSUFFICIENT_DATA,
                )
                days: tuple[DoseDay, ...] = ()
            else:
                days = self.days_for(sched, pos.cycle, steps)
            nxt_day = days[0] if days else DoseDay(day=1, mg_per_m2=Decimal(0))
            cycle_day1 = day1
        else:
            level = cur.level
            days = cur.days[cur.days.index(pos.day) :] if pos.day is not None else ()
            nxt_day = pos.day or days[0]
            cycle_day1 = cur.day1
        self.reduction_rules(steps)
        dose_date = self.as_of if due_now else pos.due
        if not due_now and not pos.omitted_now:
            self.add(
                "next-dose-not-due",
                f"the next dose (cycle {pos.cycle} day {nxt_day.day}) is not due before {pos.earliest}: "
                f"evaluate it on its day with that day's results (results at most "
                f"{s.freshness.labs_max_age_days} day(s) old)",
                s.freshness.source,
                effect=Action.INSUFFICIENT_DATA,
                severity=Severity.INFO,
            )
        if due_now:
            self.hepatic(dose_date, inter_days)
            self.renal(dose_date)
            if nxt_day.day == 1:
                self.haematological(dose_date, pos.cycle)
            else:
                self.add(
                    "no-count-hold-within-cycle",
                    f"day {nxt_day.day}: no hold for neutropenia or thrombocytopenia within a cycle",
                    s.haematological.no_hold_within_cycle_source,
                )
        if s.levels is not None and pos.new_cycle:
            self.cri_platelets(pos)
        self._start_advice(first=False)
        weight_days = s.freshness.weight_max_age_days
        if s.freshness.weight_before_cycle_days is not None and nxt_day.day == 1:
            weight_days = s.freshness.weight_before_cycle_days
        # an omission plans the next doses ahead: their BSA is today's (re-checked on the day)
        bsa = (
            self.bsa(dose_date if due_now else self.as_of, weight_days)
            if due_now or pos.omitted_now
            else None
        )
        if bsa is not None:
            self.weight_change(bsa)
            self.reescalation(bsa)
        factor = Decimal(1)
        if (
            s.interruption.reduction == "percent"
            and steps >= 1
            and pos.cycle > 1
            and s.interruption.reduction_factor
        ):
            factor = s.interruption.reduction_factor
        doses = self._doses(days, factor, bsa, dose_date, cycle_day1)
        dose_level = LEVEL_NAMES[min(level if s.levels is not None else steps, 2)]
        return self._result(pos.cycle, nxt_day.day, dose_level, bsa, doses, dose_date, inter_days)

    def reduction_rules(self, steps: int) -> None:
        iv = self.s.interruption
        if steps == 0:
            return
        ended = [i for i in self.interruptions if i.days >= iv.reduce_from_days]
        if self.current_interruption is not None:
            ended.append(self.current_interruption)
        evidence = tuple(e for i in ended for e in (i.toxicity or ()))
        text = ", ".join(f"{i.days} days from {i.start}" + (" (ongoing)" if i.ongoing else "") for i in ended)
        if steps > iv.max_reductions:
            self.add(
                "reductions-exhausted",
                f"{steps} interruptions of ≥ {iv.reduce_from_days} days ({text}): more than "
                f"{iv.max_reductions} dose modifications: discontinue permanently",
                iv.reduction_source,
                evidence,
                effect=Action.REVIEW if self.unexplained_steps else Action.DISCONTINUE,
            )
            return
        if iv.reduction == "percent":
            what = "dose reduced by 25%" + (" and two doses per cycle" if steps >= 2 else "")
        else:
            what = f"{steps} dose level(s) lower"
        # a source that defers the reduction to the product information proposes it for review
        effect = iv.reduction_effect
        unexplained = (
            f"; {self.unexplained_steps} of them without a recorded toxicity (reduction assumed, as the "
            "lower dose is the safer reading)"
            if self.unexplained_steps
            else ""
        )
        self.add(
            "dose-reduced",
            f"interruption(s) of ≥ {iv.reduce_from_days} days ({text}): {what} for later cycles, never "
            f"re-escalated{unexplained}",
            iv.reduction_source,
            evidence,
            effect=effect,
            severity=Severity.WARNING,
        )

    def cri_platelets(self, pos: Position) -> None:
        assert self.s.levels is not None
        prev = self.cycles[-1]
        responses = self.responses(prev.day1, self.as_of)
        if not any(r.coded == "CRi" for r in responses):
            return
        before = latest(self.r, "platelets", prev.day1, None, self.accept_preliminary).reading
        now = latest(
            self.r,
            "platelets",
            self.as_of,
            self.s.freshness.blood_count_max_age_days,
            self.accept_preliminary,
        ).reading
        if (
            before
            and now
            and now.number is not None
            and before.number is not None
            and now.number < before.number
        ):
            self.add(
                "cri-platelets",
                f"CRi with platelets {now.text()} below the {before.text()} before cycle {prev.number}: "
                "consider the next lower dose level",
                self.s.levels.cri_platelets_source,
                (now.ref, before.ref, *(r.ref for r in responses)),
                severity=Severity.WARNING,
            )

    def reescalation(self, bsa: BsaResult) -> None:
        """Doses given below the plan's level for their day: a reduction the replay did not see."""
        for cyc in self.cycles[-2:]:
            for day, dose in cyc.given.items():
                nominal = next((d.mg_per_m2 for d in cyc.schedule.days if d.day == day), None)
                if nominal is None:
                    continue
                if cyc.number > 1 and self.s.interruption.reduction == "percent" and cyc.steps >= 1:
                    nominal = nominal * (self.s.interruption.reduction_factor or Decimal(1))
                if (
                    cyc.number > 1
                    and day == 1
                    and self.s.later is not None
                    and self.remission_before(cyc.day1 - timedelta(days=1)) is None
                ):
                    continue  # which day-1 dose applied is unknown
                per_m2 = dose.mg_per_m2
                if per_m2 is None and dose.mg is not None:
                    then = self._bsa_on(dose.day) or bsa.m2
                    per_m2 = dose.mg / float(then)
                if per_m2 is None:
                    continue
                ratio = per_m2 / float(nominal)
                if ratio < 0.9:
                    self.add(
                        "lower-dose-given",
                        f"cycle {cyc.number} day {day} ({dose.day}) was given at about {per_m2:.2f} mg/m², "
                        f"below the {nominal} mg/m² of the plan: if it was reduced for toxicity it must not "
                        "be re-escalated",
                        self.s.no_reescalation_source,
                        dose.refs,
                        effect=Action.REVIEW,
                    )
                elif ratio > 1.1:
                    self.add(
                        "higher-dose-given",
                        f"cycle {cyc.number} day {day} ({dose.day}) was given at about {per_m2:.2f} mg/m², "
                        f"more than 10% above the {nominal} mg/m² of the plan",
                        self.s.window.source,
                        dose.refs,
                        severity=Severity.WARNING,
                    )

    def _bsa_on(self, day: date) -> Decimal | None:
        w = latest(self.r, "body-weight", day, 30, self.accept_preliminary).reading
        h = latest(self.r, "body-height", day, None, self.accept_preliminary).reading
        if w is None or h is None or w.number is None or h.number is None:
            return None
        return bsa_m2(w.number, h.number, self.formula)

    def _doses(
        self,
        days: tuple[DoseDay, ...],
        factor: Decimal,
        bsa: BsaResult | None,
        first_date: date,
        day1: date,
    ) -> list[PlannedDose]:
        """The doses from ``first_date`` on; later days on their nominal dates, at least the
        minimum interval after the one before."""
        if bsa is None or not days:
            return []
        out = []
        gap = timedelta(days=self.s.window.min_days_between_doses)
        when = first_date
        for i, d in enumerate(days):
            if i > 0:
                when = max(day1 + timedelta(days=d.day - 1), when + gap)
            mg_per_m2 = d.mg_per_m2 * factor
            prep = prepare(mg_per_m2, bsa.m2, load_product())
            out.append(PlannedDose(d.day, mg_per_m2, prep.mg, when, prep.vials, prep.volume_ml))
        return out

    def _result(
        self,
        cycle: int,
        day: int,
        level: str | None,
        bsa: BsaResult | None,
        doses: list[PlannedDose],
        dose_date: date,
        inter_days: int,
    ) -> DosePlan:
        action = decide(self.findings)
        if action not in (Action.ADMINISTER, Action.OMIT, Action.REVIEW):
            # doses are shown to give (administer), to plan around an omission, or for a prescriber
            # to authorise (review); never for a hold, a stop or unknown data
            doses = []
        if doses and action is Action.ADMINISTER:
            self.add(
                "dose-calculated",
                f"{len(doses)} dose(s) of cycle {cycle} from day {day}: BSA {bsa.m2 if bsa else '?'} m² "
                f"({self.formula})",
                doses_source(self.s, cycle),
            )
        premed = [{"text": p.text, "source": p.source} for p in self.s.premedication]
        advice = [
            {"id": a.id, "text": a.text, "source": a.source}
            for a in self.s.advice
            if a.when == "always"
            or (a.when == "cycle-1" and cycle == 1)
            or (a.when == "hsct-candidate" and self._candidacy()[0] is True)
        ]
        return DosePlan(
            action=action,
            cycle=cycle,
            day=day,
            dose_level=level,
            started=self.history.started,
            cycles_started=len(self.cycles),
            last_dose=self.history.doses[-1].day if self.history.doses else None,
            bsa=bsa,
            doses=doses,
            findings=self.findings,
            premedication=premed,
            advice=advice,
            product=load_product(),
            dose_date=dose_date,
            interruption_days=inter_days,
            window=(self.pos.earliest, self.pos.latest) if self.pos is not None else None,
            treatment=self.treatment_json(),
        )

    def treatment_json(self) -> dict[str, Any]:
        """Where the patient is: cycles with their doses, omissions, best response and MRD;
        interruptions; toxicity reductions; graded conditions since the first dose."""
        if not self.cycles:
            return {"cycles": [], "interruptions": [], "reductions": 0, "toxicities": []}
        rank = {"CR": 0, "CRi": 1, "CRp": 2, "PR": 3, "NR": 4, "PD": 5}
        out_cycles = []
        for i, cyc in enumerate(self.cycles):
            end = self.cycles[i + 1].day1 - timedelta(days=1) if i + 1 < len(self.cycles) else self.as_of
            found = sorted(self.responses(cyc.day1, end), key=lambda r: rank.get(r.coded or "", 9))
            mrd = [r for r in self.r.readings.get("mrd", ()) if cyc.day1 <= r.day <= end]
            level = LEVEL_NAMES[min(cyc.level if self.s.levels is not None else cyc.steps, 2)]
            out_cycles.append(
                {
                    "cycle": cyc.number,
                    "day1": cyc.day1.isoformat(),
                    "dose_level": level if cyc.number > 1 else "0",
                    "doses": [
                        {"day": day, "date": g.day.isoformat(), "mg": g.mg, "evidence": list(g.refs)}
                        for day, g in sorted(cyc.given.items())
                    ],
                    "omitted_days": sorted(cyc.omitted),
                    "best_response": found[0].coded if found else None,
                    "response_evidence": [r.ref for r in found[:1]],
                    "mrd": mrd[0].text() if mrd else None,
                }
            )
        start = self.first_dose()
        toxicities = [
            {
                "concept": c.concept,
                "display": c.display,
                "grade": c.grade,
                "onset": str(c.onset) if c.onset else None,
                "active": c.active,
                "evidence": [c.ref],
            }
            for facts in self.r.conditions.values()
            for c in facts
            if c.concept not in self.s.toxicity.disease_concepts
            and (c.grade is not None or c.concept in (VOD, INFUSION_REACTION))
            and self._since(c, start)
        ]
        return {
            "cycles": out_cycles,
            "interruptions": [
                {
                    "from": i.start.isoformat(),
                    "to": i.end.isoformat(),
                    "days": i.days,
                    "ongoing": i.ongoing,
                    "toxicity_evidence": list(i.toxicity or ()),
                }
                for i in self.interruptions
                + ([self.current_interruption] if self.current_interruption else [])
            ],
            "reductions": self.cycles[-1].steps + (1 if self.current_interruption else 0),
            "toxicities": toxicities,
        }

    def _candidacy(self) -> tuple[bool | None, tuple[str, ...]]:
        """Whether the patient is an HSCT candidate (None: not recorded), and the evidence."""
        sel = latest(self.r, "hsct-candidate", self.as_of, None, self.accept_preliminary, "HSCT candidacy")
        return (None if sel.reading is None else sel.reading.coded == "yes"), sel.evidence


def doses_source(spec: Dosing, cycle: int) -> str:
    if cycle == 1:
        return spec.cycle1.source
    if spec.later is not None:
        return spec.later.source
    assert spec.levels is not None
    return spec.levels.levels[0].source


def plan_next_dose(
    record: PatientRecord,
    variant: str,
    as_of: date,
    eligibility: Eligibility | None = None,
    formula: Formula = "mosteller",
    accept_preliminary: bool = False,
    exclude: frozenset[str] = frozenset(),
) -> DosePlan:
    """The action and doses for the patient's next inotuzumab dose under ``variant``.

    ``exclude`` drops resources (by reference) from the treatment history, e.g. the order being
    checked by check-order.
    """
    engine = _Engine(record, load_dosing(variant), as_of, formula, accept_preliminary, exclude)
    return engine.plan(eligibility)
