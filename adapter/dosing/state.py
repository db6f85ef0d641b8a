"""The patient's state on a given day, as the dose rules need it: response (remission now, and which
assessment says so), MRD, HSCT candidacy, and the toxicities that were active during a span.

Pure functions over the PatientRecord; values are chosen with adapter.checks.select, so a newer
unusable or non-final assessment makes the state unknown rather than letting an older one decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from adapter.checks.select import latest
from adapter.domain import ConditionFact, DateRange, PatientRecord, Reading
from adapter.dosing.spec import Dosing

VOD = "vod-sos"
INFUSION_REACTION = "infusion-reaction"
HAEM_TOXICITY = "haematological-toxicity"
RELAPSE = "b-all-relapse"
#: days before an interruption in which an out-of-limit result is taken as its cause
LAB_LOOKBACK_DAYS = 7


@dataclass(frozen=True, slots=True)
class ResponseState:
    """Whether the patient is in remission on a day, and what decided it.

    ``remission`` is None when no usable assessment since the first dose says (``problem`` tells
    why). ``decided_by`` is the assessment (or relapse record) that decided; ``label`` names it.
    """

    remission: bool | None
    label: str | None
    day: date | None
    evidence: tuple[str, ...]
    problem: str | None = None

    def text(self) -> str:
        if self.remission is None:
            return self.problem or "no response assessment since the first dose"
        return f"{self.label} on {self.day}"


def remission_on(
    record: PatientRecord,
    remission_responses: tuple[str, ...],
    first_dose: date,
    on: date,
    accept_preliminary: bool,
    now: date | None = None,
) -> ResponseState:
    """The current response on ``on`` (inclusive): the latest assessment since the first dose.

    Remission is the current state, not the best of the course: a later PD, NR or PR, a relapse
    Condition, or a disease status "relapsed" dated after the remission ends it. A relapse dated
    after ``now`` (the as-of date: an impossible date) or whose status cannot be read makes the
    response unknown rather than being skipped.
    """
    sel = latest(record, "response", on, None, accept_preliminary, "response assessment")
    rd = sel.reading
    if rd is None:
        if sel.evidence:  # recorded but unusable, conflicting or not final: never fall back
            return ResponseState(None, None, None, sel.evidence, sel.problem)
        return ResponseState(None, None, None, (), None)
    if rd.day < first_dose:
        return ResponseState(None, None, None, (), None)
    in_remission = rd.coded in remission_responses
    if in_remission:
        lost = _remission_lost(record, rd.day, on, accept_preliminary, now)
        if lost is not None:
            return lost
    return ResponseState(in_remission, rd.coded, rd.day, sel.evidence)


def _remission_lost(
    record: PatientRecord, since: date, on: date, accept_preliminary: bool, now: date | None
) -> ResponseState | None:
    """A relapse recorded after ``since`` (exclusive) and on or before ``on``."""
    for c in record.conditions.get(RELAPSE, ()):
        when = c.onset or c.recorded
        if now is not None and when is not None and when.earliest > now and (c.confirmed or c.status_problem):
            why = f"relapse recorded on {when} ({c.ref}), after the as-of date {now}: an impossible date"
            return ResponseState(None, None, None, (c.ref,), why)
        if c.confirmed and when is not None and since < when.earliest and when.latest <= on:
            return ResponseState(False, "relapse", when.latest, (c.ref,))
        if c.status_problem and when is not None and since < when.latest and when.earliest <= on:
            # a relapse whose status cannot be read might be one: the response is unknown
            why = (
                f"a relapse recorded on {when} ({c.ref}) has a status that cannot be read: {c.status_problem}"
            )
            return ResponseState(None, None, None, (c.ref,), why)
    status = latest(record, "disease-status", on, None, accept_preliminary, "disease status")
    rd = status.reading
    if rd is not None and rd.coded == "relapsed" and rd.day > since:
        return ResponseState(False, "disease status relapsed", rd.day, status.evidence)
    unreadable = [
        u for u in record.unusable.get("disease-status", ()) if u.day is None or since < u.day <= on
    ]
    if rd is None and unreadable:  # a newer disease status that cannot be read might be a relapse
        return ResponseState(None, None, None, status.evidence, status.problem)
    return None


def responses_between(
    record: PatientRecord, start: date, end: date, accept_preliminary: bool
) -> list[Reading]:
    """Usable coded response assessments dated in [start, end]."""
    return [
        rd
        for rd in record.readings.get("response", ())
        if start <= rd.day <= end and rd.coded and (rd.status != "preliminary" or accept_preliminary)
    ]


def hsct_candidate(
    record: PatientRecord, as_of: date, accept_preliminary: bool
) -> tuple[bool | None, tuple[str, ...]]:
    """Whether the patient is an HSCT candidate (None: not recorded or unusable), and the evidence."""
    sel = latest(record, "hsct-candidate", as_of, None, accept_preliminary, "HSCT candidacy")
    return (None if sel.reading is None else sel.reading.coded == "yes"), sel.evidence


def mrd_negative(
    record: PatientRecord, spec: Dosing, first_dose: date, as_of: date, accept_preliminary: bool
) -> tuple[bool | None, tuple[str, ...]]:
    """MRD negativity by the variant's threshold (None: not assessed since the first dose)."""
    hs = spec.hsct
    sel = latest(record, "mrd", as_of, None, accept_preliminary, "MRD")
    rd = sel.reading
    if rd is None or rd.day < first_dose:
        return None, sel.evidence
    if rd.coded is not None:
        return rd.coded == "negative", sel.evidence
    if rd.number is None:
        return None, sel.evidence
    limit = float(hs.mrd_negative_below_percent)
    lo, hi = rd.bounds
    if hi <= limit if hs.mrd_negative_inclusive else hi < limit:
        return True, sel.evidence
    if lo > limit if hs.mrd_negative_inclusive else lo >= limit:
        return False, sel.evidence
    return None, sel.evidence


def is_toxicity(c: ConditionFact, spec: Dosing) -> bool:
    """A condition read as a toxicity of treatment: graded ≥ 2, or a toxicity concept of the variant."""
    if c.concept in spec.toxicity.disease_concepts:
        return False
    return (
        (c.grade or 0) >= 2
        or c.concept in (VOD, INFUSION_REACTION, HAEM_TOXICITY)
        or (c.concept in spec.toxicity.toxicity_concepts)
    )


def active_during(c: ConditionFact, start: date, end: date) -> bool:
    """Active at any time in [start, end]: onset on or before the end, and abatement on or after
    the start, or none. A condition with no onset (and no recorded date) is taken to span."""
    when = c.onset or c.recorded
    if when is not None and when.earliest > end:
        return False
    return c.abatement is None or c.abatement.latest >= start


def since(c: ConditionFact, start: date) -> bool:
    """Arose on or after ``start`` (undated: cannot be shown to be older, so counted)."""
    when: DateRange | None = c.onset or c.recorded
    return when is None or when.latest >= start


def toxicity_evidence(record: PatientRecord, spec: Dosing, start: date, end: date) -> tuple[str, ...]:
    """References of the toxicities active during [start, end] and of the out-of-limit liver tests
    and day-1 counts from a week before ``start`` to ``end`` (what may explain an interruption)."""
    evidence: list[str] = []
    for facts in record.conditions.values():
        for c in facts:
            if is_toxicity(c, spec) and active_during(c, start, end):
                evidence.append(c.ref)
    limits = {
        "neutrophils": (spec.haematological.neutrophils_min, None),
        "platelets": (spec.haematological.platelets_min, None),
        "bilirubin-total": (None, spec.hepatic.bilirubin_max_uln),
        "ast": (None, spec.hepatic.transaminases_max_uln),
        "alt": (None, spec.hepatic.transaminases_max_uln),
    }
    lo = start - timedelta(days=LAB_LOOKBACK_DAYS)
    for concept, (low, uln_max) in limits.items():
        for rd in record.readings.get(concept, ()):
            if not (lo <= rd.day <= end) or rd.number is None:
                continue
            if (low is not None and rd.bounds[1] < float(low)) or (
                uln_max is not None and rd.uln and rd.bounds[0] > float(uln_max) * rd.uln
            ):
                evidence.append(rd.ref)
    return tuple(dict.fromkeys(evidence))
