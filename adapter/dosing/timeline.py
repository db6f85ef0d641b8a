"""The treatment timeline: the doses given, replayed against the variant's schedule.

Pure data, no rules. Each dose is matched to the next day of its cycle whose window it falls in (a
dose too late for its day omits that day; a dose too late for every remaining day starts the next
cycle). Every gap past a due date is an interruption, with the toxicities that were active during
it. A ≥ ``reduce_from_days`` interruption before a cycle lowers that cycle and the later ones one
step. Each later cycle keeps the response that decided its doses (the current response on its day
1, inclusive). Finally the position: the next dose, its window and the interruption running now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from adapter.domain import PatientRecord
from adapter.dosing.history import DoseHistory, GivenDose
from adapter.dosing.spec import CycleSchedule, DoseDay, Dosing
from adapter.dosing.state import ResponseState, remission_on, toxicity_evidence


@dataclass(slots=True)
class Cycle:
    number: int
    day1: date
    schedule: CycleSchedule
    days: tuple[DoseDay, ...]  # the days of this cycle (two doses after the second UK reduction)
    steps: int  # toxicity reductions in force for this cycle
    #: dose level index (0, 1, 2): MD Anderson remission level plus toxicity steps; elsewhere the steps
    level: int
    #: the response that decided this cycle's doses (cycles 2+); None for cycle 1
    response: ResponseState | None = None
    given: dict[int, GivenDose] = field(default_factory=dict)
    omitted: list[int] = field(default_factory=list)
    last_index: int = -1  # index in days of the last matched day

    def nominal(self, d: DoseDay) -> date:
        return self.day1 + timedelta(days=d.day - 1)

    @property
    def complete(self) -> bool:
        """Every day of the cycle was given (none omitted, none pending)."""
        return not self.omitted and self.last_index == len(self.days) - 1


@dataclass(frozen=True, slots=True)
class Interruption:
    start: date
    end: date
    days: int
    ongoing: bool
    #: references of the toxicities active during it (and out-of-limit results around its start)
    toxicity: tuple[str, ...]
    #: the cycle it delayed the start of (it may lower that cycle), or None within a cycle
    before_cycle: int | None = None


@dataclass(slots=True)
class Position:
    """Where the next dose falls."""

    cycle: int
    day: DoseDay | None  # None when the next cycle's days are not known yet
    new_cycle: bool
    earliest: date
    due: date
    interruption_start: date | None
    omitted_now: list[int]
    latest: date | None = None  # the last day the next dose is on time


@dataclass(slots=True)
class Timeline:
    first_dose: date
    last_dose: date
    cycles: list[Cycle]
    interruptions: list[Interruption]  # ended ones, in order
    position: Position
    #: days since the next dose's interruption began (0 when none runs on the as-of date)
    interruption_days: int
    #: the interruption running on the as-of date when it delays a new cycle (it may lower it)
    current_interruption: Interruption | None
    #: toxicity steps for the next dose's cycle
    steps: int

    @property
    def current(self) -> Cycle:
        return self.cycles[-1]

    def reducing(self, reduce_from_days: int) -> list[Interruption]:
        """The interruptions (ended and running) that lowered a cycle."""
        out = [i for i in self.interruptions if i.before_cycle is not None and i.days >= reduce_from_days]
        if self.current_interruption is not None and self.current_interruption.days >= reduce_from_days:
            out.append(self.current_interruption)
        return out


def schedule_for(
    spec: Dosing, number: int, response: ResponseState | None, level: int
) -> CycleSchedule | None:
    """The schedule of cycle ``number``; None when it depends on a response that is not known."""
    if number == 1:
        return spec.cycle1
    if spec.levels is not None:
        return spec.levels.levels[min(level, len(spec.levels.levels) - 1)]
    assert spec.later is not None
    if response is None or response.remission is None:
        return None
    return spec.later.remission if response.remission else spec.later.no_remission


def level_for(spec: Dosing, number: int, steps: int, response: ResponseState | None) -> int | None:
    """The dose level index of cycle ``number``: toxicity steps, plus at MD Anderson one level from
    ``remission_lower_from_cycle`` while in remission (cumulative, §8.1.4 item 3 and §8.1.6).

    Not capped here: an index past the last level means no lower level is available. None when the
    remission that would lower it is not known.
    """
    if spec.levels is None or number == 1:
        return steps if number > 1 else 0
    level = steps
    if number >= spec.levels.remission_lower_from_cycle:
        if response is None or response.remission is None:
            return None
        if response.remission:
            level += 1
    return level


def days_for(spec: Dosing, schedule: CycleSchedule, number: int, steps: int) -> tuple[DoseDay, ...]:
    iv = spec.interruption
    if number > 1 and iv.reduction == "percent" and steps >= 2 and iv.two_dose_days:
        return tuple(d for d in schedule.days if d.day in iv.two_dose_days)
    return schedule.days


class _Replay:
    def __init__(
        self, record: PatientRecord, spec: Dosing, history: DoseHistory, as_of: date, accept_preliminary: bool
    ) -> None:
        self.r = record
        self.s = spec
        self.h = history
        self.as_of = as_of
        self.accept_preliminary = accept_preliminary
        self.first = history.doses[0].day
        self.cycles: list[Cycle] = []
        self.interruptions: list[Interruption] = []

    def response(self, on: date) -> ResponseState:
        remission = self.s.later.remission_responses if self.s.later else self.s.levels.remission_responses  # type: ignore[union-attr]
        return remission_on(self.r, remission, self.first, on, self.accept_preliminary, self.as_of)

    def new_cycle(self, number: int, day1: date, steps: int) -> Cycle:
        response = self.response(day1) if number > 1 else None
        level = level_for(self.s, number, steps, response)
        top = len(self.s.levels.levels) - 1 if self.s.levels else 2
        # an unknown level replays at the toxicity steps (the days are the same at every level)
        shown = min(steps if level is None else level, top)
        schedule = schedule_for(self.s, number, response, shown) or self._either_later()
        return Cycle(
            number, day1, schedule, days_for(self.s, schedule, number, steps), steps, shown, response
        )

    def _either_later(self) -> CycleSchedule:
        """Label/UK/Spain with the response unknown: the days are the same either way."""
        assert self.s.later is not None
        return self.s.later.no_remission

    def latest_for(self, cyc: Cycle, d: DoseDay) -> date:
        w = self.s.window
        last = d.day - 1 + w.omit_from_delay_days - 1
        if w.restart_as_next_cycle_after_day is not None:
            last = min(last, max(w.restart_as_next_cycle_after_day - 1, d.day - 1 + w.late_days))
        return cyc.day1 + timedelta(days=last)

    def due_for(self, cyc: Cycle, d: DoseDay, prev: date) -> date:
        return max(cyc.nominal(d), prev + timedelta(days=self.s.window.min_days_between_doses))

    def interruption(
        self, start: date, end: date, ongoing: bool, before_cycle: int | None
    ) -> Interruption | None:
        days = (end - start).days
        if days <= 0:
            return None
        return Interruption(
            start, end, days, ongoing, toxicity_evidence(self.r, self.s, start, end), before_cycle
        )

    def replay(self) -> int:
        """Match every dose to a day; returns the toxicity steps in force after the last dose."""
        prev: date | None = None
        steps = 0
        for dose in self.h.doses:
            if not self.cycles:
                cyc = self.new_cycle(1, dose.day, 0)
                self.cycles.append(cyc)
                self.assign(cyc, 0, dose)
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
                cyc.omitted.extend(cyc.days[j].day for j in range(cyc.last_index + 1, matched))
                assert first_pending_due is not None
                self.record(self.interruption(first_pending_due, dose.day, False, None))
                self.assign(cyc, matched, dose)
            else:
                cyc.omitted.extend(cyc.days[j].day for j in range(cyc.last_index + 1, len(cyc.days)))
                start = first_pending_due or cyc.day1 + timedelta(days=cyc.schedule.interruption_offset)
                inter = self.interruption(start, dose.day, False, cyc.number + 1)
                self.record(inter)
                if inter is not None and inter.days >= self.s.interruption.reduce_from_days:
                    steps += 1
                nxt = self.new_cycle(cyc.number + 1, dose.day, steps)
                self.cycles.append(nxt)
                self.assign(nxt, 0, dose)
            prev = dose.day
        return steps

    def record(self, inter: Interruption | None) -> None:
        if inter is not None:
            self.interruptions.append(inter)

    @staticmethod
    def assign(cyc: Cycle, index: int, dose: GivenDose) -> None:
        cyc.given[cyc.days[index].day] = dose
        cyc.last_index = index

    def position(self) -> Position:
        cyc = self.cycles[-1]
        prev = self.h.doses[-1].day
        w = self.s.window
        gap = timedelta(days=w.min_days_between_doses)
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
            earliest = max(cyc.nominal(d) - timedelta(days=w.early_days), prev + gap)
            return Position(
                cyc.number, d, False, earliest, due, first_pending_due, omitted, self.latest_for(cyc, d)
            )
        sched = cyc.schedule
        due = max(cyc.day1 + timedelta(days=sched.length_days), prev + gap)
        earliest = max(cyc.day1 + timedelta(days=sched.earliest_next_days), prev + gap)
        if omitted and w.restart_as_next_cycle_after_day is not None:
            # MD Anderson §8.1.5: the day treatment restarts after an interruption past day 14 is
            # day 1 of the next cycle
            restart = cyc.day1 + timedelta(days=w.restart_as_next_cycle_after_day)
            earliest = min(earliest, max(restart, prev + gap))
            due = min(due, max(earliest, self.as_of))
        start = first_pending_due or cyc.day1 + timedelta(days=sched.interruption_offset)
        latest_day = cyc.day1 + timedelta(days=sched.latest_next_days)
        return Position(cyc.number + 1, None, True, earliest, due, start, omitted, max(latest_day, earliest))


def build_timeline(
    record: PatientRecord, spec: Dosing, history: DoseHistory, as_of: date, accept_preliminary: bool
) -> Timeline:
    """Replay ``history`` (at least one dose) against ``spec`` up to ``as_of``."""
    rp = _Replay(record, spec, history, as_of, accept_preliminary)
    steps = rp.replay()
    pos = rp.position()
    inter_days = 0
    if pos.interruption_start is not None and as_of > pos.interruption_start:
        inter_days = (as_of - pos.interruption_start).days
    current = None
    if pos.new_cycle and pos.interruption_start is not None and inter_days > 0:
        current = Interruption(
            pos.interruption_start,
            as_of,
            inter_days,
            True,
            toxicity_evidence(record, spec, pos.interruption_start, as_of),
            pos.cycle,
        )
        if inter_days >= spec.interruption.reduce_from_days:
            steps += 1
    return Timeline(
        first_dose=rp.first,
        last_dose=history.doses[-1].day,
        cycles=rp.cycles,
        interruptions=rp.interruptions,
        position=pos,
        interruption_days=inter_days,
        current_interruption=current,
        steps=steps if pos.new_cycle else rp.cycles[-1].steps,
    )
