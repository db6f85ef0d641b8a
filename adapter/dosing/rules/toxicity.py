"""Toxicities on treatment: VOD/SOS (confirmed or suspected), infusion reactions, severe liver
toxicity, hypersensitivity, and other toxicities by CTCAE grade (an ungraded one cannot be shown
to be below the hold grade)."""

from __future__ import annotations

from adapter.domain import ConditionFact
from adapter.dosing.context import DoseContext
from adapter.dosing.findings import Action, Finding, Severity, finding
from adapter.dosing.rules import dose_rule
from adapter.dosing.state import HAEM_TOXICITY, INFUSION_REACTION, VOD, since

#: handled by their own rules, or not a "non-haematological toxicity" (cytopenias)
OWN_RULES = frozenset({VOD, INFUSION_REACTION, HAEM_TOXICITY})


def _on_treatment(ctx: DoseContext, c: ConditionFact) -> bool:
    return ctx.timeline is not None and since(c, ctx.timeline.first_dose)


@dose_rule("toxicity", ("vod", "vod-suspected"), ("toxicity.vod_source",))
def vod_on_treatment(ctx: DoseContext) -> list[Finding]:
    """VOD/SOS on treatment discontinues permanently; a suspected one (provisional, differential,
    unconfirmed) holds every dose until it is confirmed or refuted (MD Anderson: possible VOD
    discontinues)."""
    tx = ctx.spec.toxicity
    out = []
    for c in ctx.record.conditions.get(VOD, ()):
        if not (c.active or (c.onset is not None and _on_treatment(ctx, c))):
            continue
        unread = f" (its status cannot be read, so it is taken as possibly active: {c.status_problem})"
        note = unread if c.status_problem else ""
        if c.confirmed:
            out.append(
                finding(
                    "vod",
                    f"hepatic VOD/SOS recorded ({c.ref}){note}: discontinue permanently",
                    tx.vod_source,
                    (c.ref,),
                    effect=Action.DISCONTINUE,
                )
            )
        else:
            hold = tx.vod_unconfirmed_action == "delay"
            out.append(
                finding(
                    "vod-suspected",
                    f"suspected hepatic VOD/SOS ({c.ref}, {c.clinical_status or 'status not recorded'}, not "
                    f"confirmed){note}: "
                    + (
                        "hold every dose until it is confirmed (discontinue) or refuted"
                        if hold
                        else "possible VOD: discontinue permanently"
                    ),
                    tx.vod_source,
                    (c.ref,),
                    effect=tx.vod_unconfirmed_action,
                    severity=Severity.CRITICAL,
                )
            )
    return out


@dose_rule(
    "toxicity", ("infusion-reaction-severe", "infusion-reaction"), ("toxicity.infusion_reaction_source",)
)
def infusion_reactions(ctx: DoseContext) -> list[Finding]:
    """A severe or life-threatening (grade ≥ 3) infusion reaction discontinues; a milder one is a
    warning; one without a grade needs review."""
    tx = ctx.spec.toxicity
    out = []
    for c in ctx.record.conditions.get(INFUSION_REACTION, ()):
        if not _on_treatment(ctx, c):
            continue
        if (c.grade or 0) >= 3:
            out.append(
                finding(
                    "infusion-reaction-severe",
                    f"severe or life-threatening infusion reaction ({c.ref}, grade {c.grade}"
                    f"{'' if c.grade_exact else ' from severity'}): discontinue permanently",
                    tx.infusion_reaction_source,
                    (c.ref,),
                    effect=Action.DISCONTINUE,
                )
            )
        else:
            out.append(
                finding(
                    "infusion-reaction",
                    f"infusion reaction recorded ({c.ref}, grade {c.grade if c.grade else 'not recorded'}): "
                    "premedication and infusion management to be reviewed",
                    tx.infusion_reaction_source,
                    (c.ref,),
                    effect=Action.REVIEW if c.grade is None else None,
                    severity=Severity.WARNING,
                )
            )
    return out


@dose_rule("toxicity", ("severe-liver-toxicity",), ("toxicity.vod_source",))
def severe_liver_toxicity(ctx: DoseContext) -> list[Finding]:
    """MD Anderson: other severe (grade ≥ 3) liver toxicity discontinues permanently."""
    tx = ctx.spec.toxicity
    if tx.severe_liver_toxicity_action is None:
        return []
    return [
        finding(
            "severe-liver-toxicity",
            f"severe liver toxicity ({c.display or 'toxic liver disease'}, grade {c.grade}, {c.ref}): "
            "discontinue permanently",
            tx.vod_source,
            (c.ref,),
            effect=tx.severe_liver_toxicity_action,
        )
        for c in ctx.record.conditions.get("liver-toxicity", ())
        if c.active and (c.grade or 0) >= 3 and _on_treatment(ctx, c)
    ]


@dose_rule("toxicity", ("hypersensitivity",), ("toxicity.infusion_reaction_source",))
def hypersensitivity(ctx: DoseContext) -> list[Finding]:
    """A recorded hypersensitivity to inotuzumab ozogamicin needs review before any further dose."""
    return [
        finding(
            "hypersensitivity",
            f"hypersensitivity to inotuzumab ozogamicin recorded ({a.ref})",
            ctx.spec.toxicity.infusion_reaction_source,
            (a.ref,),
            effect=Action.REVIEW,
        )
        for a in ctx.record.allergies.get("inotuzumab-hypersensitivity", ())
        if a.active and ctx.started
    ]


def _other_toxicities(ctx: DoseContext) -> list[ConditionFact]:
    tx = ctx.spec.toxicity
    return [
        c
        for concept, facts in ctx.record.conditions.items()
        if concept not in tx.disease_concepts and concept not in OWN_RULES
        for c in facts
        if c.active and _on_treatment(ctx, c)
    ]


@dose_rule("toxicity", ("toxicity-hold", "toxicity-grade-4"), ("toxicity.source", "toxicity.grade4_source"))
def graded_toxicities(ctx: DoseContext) -> list[Finding]:
    """Any other toxicity since the first dose at or above the hold grade (2) withholds treatment
    until grade ≤ 1 or baseline; MD Anderson: a grade 4 event needs the investigator."""
    tx = ctx.spec.toxicity
    out = []
    for c in _other_toxicities(ctx):
        if c.grade is None:
            continue
        label = c.display or c.concept
        if c.grade >= 4 and tx.grade4_action is not None:
            out.append(
                finding(
                    "toxicity-grade-4",
                    f"grade 4 adverse event: {label} ({c.ref})",
                    tx.grade4_source or tx.source,
                    (c.ref,),
                    effect=tx.grade4_action,
                )
            )
        if c.grade >= tx.hold_from_grade:
            how = "" if c.grade_exact else " (from its severity)"
            out.append(
                finding(
                    "toxicity-hold",
                    f"{label} grade {c.grade}{how} since treatment started ({c.ref}): withhold until "
                    "grade ≤ 1 or baseline",
                    tx.source,
                    (c.ref,),
                    effect=tx.on_hold,
                )
            )
    return out


@dose_rule("toxicity", ("toxicity-ungraded",), ("toxicity.source",))
def ungraded_toxicities(ctx: DoseContext) -> list[Finding]:
    """A new toxicity without a grade (a toxicity concept of the variant, arisen on treatment and
    active) cannot be shown to be below the hold grade: review, never silently dropped."""
    tx = ctx.spec.toxicity
    return [
        finding(
            "toxicity-ungraded",
            f"{c.display or c.concept} since treatment started ({c.ref}) has no CTCAE grade: it cannot be "
            f"shown to be below grade {tx.hold_from_grade}; grade it or decide",
            tx.source,
            (c.ref,),
            effect=tx.ungraded_action,
        )
        for c in _other_toxicities(ctx)
        if c.grade is None and c.concept in tx.toxicity_concepts
    ]
