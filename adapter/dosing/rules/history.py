"""The treatment history: records that cannot be read, notes, and how the doses were spaced."""

from __future__ import annotations

import itertools
from datetime import timedelta

from adapter.dosing.context import DOSING_DOC, DoseContext
from adapter.dosing.findings import Action, Finding, Severity, finding
from adapter.dosing.rules import dose_rule

HISTORY_DOC = DOSING_DOC + " §Treatment history"


@dose_rule("history", ("dose-history",), (HISTORY_DOC,))
def unreadable_dose_records(ctx: DoseContext) -> list[Finding]:
    """An inotuzumab record that exists but cannot be read blocks every dose.

    No usable date, status unknown or on hold, a past order with no administration, conflicting
    administrations of one day, or a dose quantity that is unreadable or implausible: whether (or
    how much) a dose was given is unknown, so no dose is proposed until the record is corrected.
    """
    return [
        finding(
            "dose-history",
            reason + ": no dose is proposed until the record is corrected",
            HISTORY_DOC,
            evidence,
            effect=Action.INSUFFICIENT_DATA,
            severity=Severity.CRITICAL,
        )
        for reason, evidence in ctx.history.problems
    ]


@dose_rule("history", ("dose-history-note",), (HISTORY_DOC,))
def history_notes(ctx: DoseContext) -> list[Finding]:
    """What the history shows that does not block: doses known only from completed orders, several
    records of one dose, stopped orders, an order already written for today's dose."""
    return [
        finding("dose-history-note", reason, HISTORY_DOC, evidence) for reason, evidence in ctx.history.notes
    ]


@dose_rule("history", ("doses-too-close",), ("window.source",))
def doses_too_close(ctx: DoseContext) -> list[Finding]:
    """Two given doses closer than the minimum interval between doses."""
    w = ctx.spec.window
    doses = ctx.history.doses
    return [
        finding(
            "doses-too-close",
            f"the doses on {a.day} and {b.day} are {(b.day - a.day).days} days apart "
            f"(minimum {w.min_days_between_doses})",
            w.source,
            b.refs,
            severity=Severity.WARNING,
        )
        for a, b in itertools.pairwise(doses)
        if (b.day - a.day).days < w.min_days_between_doses
    ]


@dose_rule("history", ("cycle-started-early",), ("cycle1.source", "later.source", "levels.levels.0.source"))
def cycle_started_early(ctx: DoseContext) -> list[Finding]:
    """A cycle started before the earliest day its predecessor allows."""
    if ctx.timeline is None:
        return []
    out = []
    cycles = ctx.timeline.cycles
    for prev, cyc in itertools.pairwise(cycles):
        gap = (cyc.day1 - prev.day1).days
        if not prev.omitted and gap < prev.schedule.earliest_next_days:
            out.append(
                finding(
                    "cycle-started-early",
                    f"cycle {cyc.number} started {gap} days after day 1 of cycle {prev.number} "
                    f"(earliest {prev.schedule.earliest_next_days}; due "
                    f"{prev.day1 + timedelta(days=prev.schedule.length_days)})",
                    prev.schedule.source,
                    cyc.given[cyc.days[0].day].refs,
                    severity=Severity.WARNING,
                )
            )
    return out
