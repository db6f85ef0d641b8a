"""Check-order findings as CDS Hooks cards (pure: no I/O, no clock).

One card per kind of finding that matters for one draft order (findings of one id merged, as the contract
allows): the check's ``critical`` and ``warning`` findings, the plan's warnings that no check finding
repeats (QT-prolonging or hepatotoxic co-medication, high blasts), an ``info`` card when the order agrees
with the plan, and an ``info`` card offering the premedication the protocol asks for when the orders being
signed hold none of it. Cards come critical first.

- ``uuid``: a UUID 5 of the service, the ``hookInstance``, the card's kind and the order, so a retried call
  gets the same uuids and feedback names one issued card; suggestions likewise.
- ``summary``: one line under 140 characters, built from our own numbers and the finding's reason.
- ``detail``: Markdown whose data-derived parts (reasons, references, citations) are escaped with
  :func:`md_text` (every ASCII punctuation character backslash-escaped, control and bidi characters
  neutralised), so patient data never becomes markup, a link or an image.
- ``source``: the protocol citation as ``label`` and the card's kind as ``topic`` (a Coding in the
  project's card-topic system: one code per finding id, for filtering and for the feedback report).
- ``suggestions``: on a dose card (dose-mismatch, order-dose-missing, order-dose-unreadable), an ``update``
  of the draft MedicationRequest to the calculated dose (recommended) or the order's removal; on a card
  whose plan forbids the dose (too soon, not due, delay, omit, stop), the order's removal; on the
  premedication card, ``create`` actions with the premedication MedicationRequests exactly as the
  site's premedication write-back builds them. ``selectionBehavior`` is ``at-most-one`` (or ``any`` for
  the one premedication suggestion) whenever there are suggestions (CDS Hooks 2.0 requires it).
- ``overrideReasons``: on critical and warning cards, the reasons of :data:`OVERRIDE_REASONS` (each with a
  display); the feedback report counts overrides by them.
- ``links``: an ``absolute`` link to the rendered regimen summary of this call (a capability URL that
  expires: adapter.service.cds.routes).
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from adapter.safe_text import clean
from adapter.writeback.resources import dose_text, fmt_decimal

TOPIC_SYSTEM: Final = "https://fhir.ino-adapter.org/CodeSystem/cds-card-topic"
OVERRIDE_SYSTEM: Final = "https://fhir.ino-adapter.org/CodeSystem/cds-override-reason"
UCUM: Final = "http://unitsofmeasure.org"
NAMESPACE: Final = uuid.UUID("6b1d3f0e-8a1e-5c55-9a51-0c1d5e7a2b10")
SUMMARY_MAX: Final = 139
#: Why a prescriber may override a card (CDS Hooks prescribes no set): code -> display.
OVERRIDE_REASONS: Final[dict[str, str]] = {
    "prescriber-judgement": "Prescriber's clinical judgement (documented in the record)",
    "newer-results": "Newer results than the record shows (to be entered)",
    "record-incorrect": "The record is wrong and will be corrected",
    "approved-deviation": "Protocol deviation approved (consultant or principal investigator)",
    "local-practice": "Local practice (e.g. dose rounding, vial sharing)",
    "patient-specific": "Patient-specific circumstances",
}
#: Card kinds whose remedy is a change of the order's dose.
DOSE_KINDS: Final = frozenset({"dose-mismatch", "order-dose-missing", "order-dose-unreadable"})
#: Plan actions for which the order should not go ahead (adapter.dosing.order_check.FORBIDDEN).
STOP_EFFECTS: Final = frozenset({"discontinue", "not-eligible", "complete", "delay", "omit"})
STOP_KINDS: Final = frozenset({"plan-forbids-dose", "too-soon", "next-dose-not-due"})
#: Order details that are not expected yet on order-select (the hook says some may be missing).
INCOMPLETE_ON_SELECT: Final = frozenset({"order-dose-missing", "order-date-unknown"})
#: Short titles of the kinds a card is about (others: the id in words).
TITLES: Final[dict[str, str]] = {
    "dose-mismatch": "Dose differs from the calculated dose",
    "order-dose-missing": "No dose on the order",
    "order-dose-unreadable": "The order's dose cannot be read",
    "order-date-unknown": "The order has no dose date",
    "too-soon": "Too soon after the last dose",
    "next-dose-not-due": "Dose not due yet",
    "plan-forbids-dose": "The plan gives no dose",
    "dose-not-verifiable": "Dose cannot be verified",
    "not-an-inotuzumab-order": "Not a readable inotuzumab order",
    "order-agrees": "Order agrees with the plan",
    "premedication": "Premedication before inotuzumab",
    "hepatic-hold": "Liver tests hold the dose",
    "hepatic-labs-unknown": "Liver tests missing or stale",
    "counts-hold": "Blood counts hold the dose",
    "counts-unknown": "Blood count missing or stale",
    "counts-outside-limits": "Blood counts outside the standard limits",
    "renal-limit": "Renal function below the limit",
    "renal-unknown": "Renal function missing or stale",
    "bsa-unknown": "BSA cannot be calculated",
    "toxicity-hold": "Toxicity holds the dose",
    "vod-suspected": "Suspected VOD/SOS",
    "continuing-criterion": "A continuing criterion is not met",
    "qt-comedication": "QT-prolonging co-medication",
    "hepatotoxic-comedication": "Hepatotoxic co-medication",
    "high-blasts": "High peripheral blasts",
    "weight-changed": "Weight changed by more than 10%",
}
SEVERITY_RANK: Final = {"critical": 0, "warning": 1, "info": 2}
_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")


def md_text(value: Any) -> str:
    """``value`` as Markdown text that renders literally: one line (``clean``: control and bidi characters
    neutralised, breaks as spaces) with every ASCII punctuation character backslash-escaped (CommonMark
    lets any of them be escaped), so no emphasis, link, autolink, image, HTML, heading, list or table can
    start in it."""
    return _PUNCT.sub(r"\\\1", " ".join(clean(value).split()))


def plain(value: Any) -> str:
    """One line of plain text (for ``summary`` and labels)."""
    return " ".join(clean(value).split())


def shorten(text: str, limit: int = SUMMARY_MAX) -> str:
    text = plain(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return cut + "…"


def title_of(kind: str) -> str:
    return TITLES.get(kind) or kind.replace("-", " ").capitalize()


def source_label(citation: str, protocol_title: str, source_file: str) -> str:
    """A short label for a citation: the variant's name and the section (``UK regimen (NICE TA514)
    §Dose modifications``); adapter policy cites ``ino-adapter docs/dosing.md §...``."""
    head = plain(citation).split(" (", 1)[0].split("; ", 1)[0]
    short = protocol_title.split(":", 1)[0]
    if head.startswith(source_file):
        return shorten(f"{short} {head[len(source_file) :].strip()}".strip(), 100)
    return shorten(f"ino-adapter {head}", 100)


@dataclass(frozen=True, slots=True)
class CardContext:
    """What every card of one call shares."""

    service_id: str
    hook: str
    hook_instance: str
    protocol: str
    protocol_title: str
    source_file: str
    summary_url: str | None = None


@dataclass(slots=True)
class OrderView:
    """One draft inotuzumab order and its check (``check``: OrderCheck.as_json())."""

    ref: str
    resource: Mapping[str, Any]  # the draft as the EHR sent it
    check: Mapping[str, Any]
    premedication: list[dict[str, Any]] = field(default_factory=list)  # create-ready, missing from the orders

    @property
    def plan(self) -> Mapping[str, Any]:
        return self.check.get("plan") or {}

    @property
    def planned(self) -> Mapping[str, Any] | None:
        doses = self.plan.get("doses") or []
        return doses[0] if doses else None

    @property
    def resource_id(self) -> str | None:
        rid = self.resource.get("id")
        return f"MedicationRequest/{rid}" if isinstance(rid, str) and rid else None


@dataclass(slots=True)
class Kind:
    """Findings of one id for one order, merged."""

    id: str
    severity: str
    reasons: list[str]
    evidence: list[str]
    sources: list[str]
    effects: set[str]


def _merge(findings: Iterable[Mapping[str, Any]]) -> list[Kind]:
    out: dict[str, Kind] = {}
    for f in findings:
        fid = str(f.get("id"))
        k = out.setdefault(fid, Kind(fid, str(f.get("severity")), [], [], [], set()))
        if SEVERITY_RANK.get(str(f.get("severity")), 9) < SEVERITY_RANK.get(k.severity, 9):
            k.severity = str(f.get("severity"))
        for target, values in (
            (k.reasons, [f.get("reason")]),
            (k.evidence, f.get("evidence") or []),
            (k.sources, [f.get("source")]),
        ):
            for v in values:
                if isinstance(v, str) and v and v not in target:
                    target.append(v)
        if isinstance(f.get("effect"), str):
            k.effects.add(str(f["effect"]))
    return list(out.values())


def card_kinds(order: OrderView, hook: str) -> list[Kind]:
    """The kinds that get a card: the check's critical and warning findings, the plan's effect-less
    warnings it does not repeat, else (all is well) the order's agreement."""
    findings = list(order.check.get("findings") or [])
    kinds = [k for k in _merge(findings) if k.severity in ("critical", "warning")]
    if hook == "order-select":
        kinds = [k for k in kinds if k.id not in INCOMPLETE_ON_SELECT]
    seen = {k.id for k in kinds}
    advice = [
        f
        for f in order.plan.get("findings") or []
        if f.get("severity") in ("critical", "warning") and "effect" not in f and f.get("id") not in seen
    ]
    kinds += _merge(advice)
    if any(k.id in STOP_KINDS for k in kinds):  # "no planned dose to compare with" says nothing more
        kinds = [k for k in kinds if k.id != "dose-not-verifiable"]
    if not kinds and order.check.get("verdict") == "info":
        kinds = [k for k in _merge(findings) if k.id == "order-agrees"]
    return sorted(kinds, key=lambda k: SEVERITY_RANK.get(k.severity, 9))


# -- the parts of a card ---------------------------------------------------------------------------
def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "\x1f".join(parts)))


def _ordered(order: OrderView) -> tuple[str | None, str | None]:
    """The order's dose quantity and date as written (for display only)."""
    for dosage in order.resource.get("dosageInstruction") or []:
        if not isinstance(dosage, dict):
            continue
        for dr in dosage.get("doseAndRate") or []:
            q = dr.get("doseQuantity") if isinstance(dr, dict) else None
            if isinstance(q, dict) and q.get("value") is not None:
                return f"{q.get('value')} {q.get('unit') or q.get('code') or ''}".strip(), None
    return None, None


def _calculated(order: OrderView) -> str | None:
    planned, plan = order.planned, order.plan
    if planned is None:
        return None
    return (
        f"{fmt_decimal(planned['mg'], 2)} mg = {fmt_decimal(planned['mg_per_m2'])} mg/m² × "
        f"{fmt_decimal(plan.get('bsa_m2'), 2)} m², cycle {plan.get('cycle')} day {planned['day']} "
        f"on {planned['date']}"
    )


def _summary(kind: Kind, order: OrderView, ctx: CardContext) -> str:
    planned = order.planned
    ordered, _ = _ordered(order)
    if kind.id == "dose-mismatch" and planned is not None and ordered:
        return shorten(
            f"Inotuzumab dose {ordered} differs from the calculated {fmt_decimal(planned['mg'], 2)} mg "
            f"by more than 10% ({ctx.protocol}, cycle {order.plan.get('cycle')} day {planned['day']})"
        )
    if kind.id == "order-dose-missing" and planned is not None:
        return shorten(f"The inotuzumab order states no dose; calculated: {fmt_decimal(planned['mg'], 2)} mg")
    if kind.id == "order-agrees" and planned is not None:
        return shorten(
            f"Inotuzumab order agrees with the {ctx.protocol} plan: {fmt_decimal(planned['mg'], 2)} mg, "
            f"cycle {order.plan.get('cycle')} day {planned['day']}"
        )
    reason = kind.reasons[0] if kind.reasons else ""
    title = title_of(kind.id)
    if not reason or reason.lower().startswith(title.lower()):
        return shorten(reason or title)
    return shorten(f"{title}: {reason}")


def _detail(kind: Kind, order: OrderView, ctx: CardContext) -> str:
    lines: list[str] = []
    ordered, _ = _ordered(order)
    lines.append(f"**Order**: {md_text(order.ref)}" + (f", {md_text(ordered)}" if ordered else ""))
    calculated = _calculated(order)
    if calculated:
        lines.append(f"**Calculated** ({md_text(ctx.protocol)}): {md_text(calculated)}")
    plan = order.plan
    if plan.get("action"):
        lines.append(f"**Plan for the order's date**: {md_text(plan['action'])}")
    for reason in kind.reasons:
        lines.append(f"- {md_text(reason)}")
    if kind.evidence:
        lines.append("**Evidence**: " + ", ".join(md_text(e) for e in kind.evidence[:20]))
    for source in kind.sources:
        lines.append(f"**Source**: {md_text(source)}")
    return "\n\n".join(lines)


def _dose_update(order: OrderView) -> dict[str, Any] | None:
    """The draft order in its entirety with the calculated dose (mg) and a dosage text that says it."""
    planned, plan = order.planned, order.plan
    if planned is None or order.resource_id is None:
        return None
    updated = copy.deepcopy(dict(order.resource))
    dosages = updated.setdefault("dosageInstruction", [])
    if not dosages or not isinstance(dosages[0], dict):
        dosages.insert(0, {})
    target = next(
        (
            d
            for d in dosages
            if isinstance(d, dict)
            and any(isinstance(dr, dict) and "doseQuantity" in dr for dr in d.get("doseAndRate") or [])
        ),
        dosages[0],
    )
    quantity = {"value": float(planned["mg"]), "unit": "mg", "system": UCUM, "code": "mg"}
    rates = [dr for dr in target.get("doseAndRate") or [] if isinstance(dr, dict)]
    with_dose = next((dr for dr in rates if "doseQuantity" in dr), None)
    if with_dose is not None:
        with_dose["doseQuantity"] = quantity
    else:
        rates.insert(0, {"doseQuantity": quantity})
    for dr in rates:
        dr.pop("doseRange", None)
    target["doseAndRate"] = rates
    target["text"] = (
        f"{dose_text(dict(planned), plan.get('bsa_m2'), plan.get('preparation') or {})} — cycle "
        f"{plan.get('cycle')} day {planned['day']} on {planned['date']}"
    )
    return updated


def _suggestions(kind: Kind, order: OrderView, card_id: str, stop_card: bool) -> list[dict[str, Any]]:
    """``stop_card``: another card of the order (too soon, not due, the plan forbids it) offers the
    removal; a hold's own card then only explains."""
    out: list[dict[str, Any]] = []
    planned = order.planned
    if kind.id in DOSE_KINDS and planned is not None:
        updated = _dose_update(order)
        if updated is not None:
            out.append(
                {
                    "label": f"Change the dose to the calculated {fmt_decimal(planned['mg'], 2)} mg",
                    "uuid": _uuid(card_id, "update-dose"),
                    "isRecommended": True,
                    "actions": [
                        {
                            "type": "update",
                            "description": (
                                "Set the dose of the draft inotuzumab order to "
                                f"{fmt_decimal(planned['mg'], 2)} mg "
                                f"({fmt_decimal(planned['mg_per_m2'])} mg/m² × "
                                f"{fmt_decimal(order.plan.get('bsa_m2'), 2)} m²)"
                            ),
                            "resource": updated,
                        }
                    ],
                }
            )
    stops = kind.id in STOP_KINDS or (
        not stop_card and kind.severity == "critical" and bool(kind.effects & STOP_EFFECTS)
    )
    if (stops or kind.id in DOSE_KINDS) and order.resource_id is not None:
        out.append(
            {
                "label": "Remove this inotuzumab order",
                "uuid": _uuid(card_id, "delete-order"),
                "isRecommended": stops,
                "actions": [
                    {
                        "type": "delete",
                        "description": "Remove the draft inotuzumab ozogamicin order",
                        "resourceId": order.resource_id,
                    }
                ],
            }
        )
    return out


def override_reasons() -> list[dict[str, str]]:
    return [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS.items()]


def _card(
    ctx: CardContext,
    order: OrderView,
    kind_id: str,
    indicator: str,
    summary: str,
    detail: str,
    citation: str,
    suggestions: Sequence[dict[str, Any]],
    selection: str,
) -> dict[str, Any]:
    card_id = _uuid(ctx.service_id, ctx.hook_instance, kind_id, order.ref)
    card: dict[str, Any] = {
        "uuid": card_id,
        "summary": summary,
        "indicator": indicator,
        "detail": detail,
        "source": {
            "label": source_label(citation, ctx.protocol_title, ctx.source_file),
            "topic": {"system": TOPIC_SYSTEM, "code": kind_id, "display": title_of(kind_id)},
        },
    }
    if suggestions:
        card["suggestions"] = list(suggestions)
        card["selectionBehavior"] = selection
    if indicator in ("critical", "warning"):
        card["overrideReasons"] = override_reasons()
    if ctx.summary_url:
        card["links"] = [
            {"label": "Regimen summary (ino-adapter)", "url": ctx.summary_url, "type": "absolute"}
        ]
    return card


def order_cards(ctx: CardContext, order: OrderView) -> list[dict[str, Any]]:
    """The cards of one draft order (critical first)."""
    cards: list[dict[str, Any]] = []
    kinds = card_kinds(order, ctx.hook)
    stop_card = any(k.id in STOP_KINDS for k in kinds)
    for kind in kinds:
        card_id = _uuid(ctx.service_id, ctx.hook_instance, kind.id, order.ref)
        citation = kind.sources[0] if kind.sources else "docs/dosing.md §Checking an order"
        cards.append(
            _card(
                ctx,
                order,
                kind.id,
                kind.severity if kind.severity in SEVERITY_RANK else "warning",
                _summary(kind, order, ctx),
                _detail(kind, order, ctx),
                citation,
                _suggestions(kind, order, card_id, stop_card),
                "at-most-one",
            )
        )
    if order.premedication and not any(c["indicator"] == "critical" for c in cards):
        cards.append(premedication_card(ctx, order))
    return cards


def premedication_card(ctx: CardContext, order: OrderView) -> dict[str, Any]:
    premeds = list(order.plan.get("premedication") or [])
    texts = [str(p.get("text", "")) for p in premeds]
    card_id = _uuid(ctx.service_id, ctx.hook_instance, "premedication", order.ref)
    planned = order.planned or {}
    detail = "\n\n".join(
        [
            f"**Before the dose on {md_text(planned.get('date', ''))}** ({md_text(ctx.protocol)}); "
            "the orders being signed hold only inotuzumab:",
            *(f"- {md_text(t)}" for t in texts),
            *(
                f"**Source**: {md_text(s)}"
                for s in dict.fromkeys(str(p.get("source", "")) for p in premeds)
                if s
            ),
        ]
    )
    n = len(order.premedication)
    suggestion = {
        "label": f"Add the premedication ({n} order{'s' if n > 1 else ''})",
        "uuid": _uuid(card_id, "create-premedication"),
        "isRecommended": True,
        "actions": [
            {
                "type": "create",
                "description": "Propose: "
                + plain((r.get("medicationCodeableConcept") or {}).get("text", "premedication")),
                "resource": r,
            }
            for r in order.premedication
        ],
    }
    citation = (
        str(premeds[0].get("source", "")) if premeds else "docs/dosing.md §Doses, rounding and preparation"
    )
    return _card(
        ctx,
        order,
        "premedication",
        "info",
        shorten(
            f"Premedication is due before this inotuzumab dose ({len(texts)} item"
            f"{'s' if len(texts) != 1 else ''}); the orders hold only inotuzumab"
        ),
        detail,
        citation,
        [suggestion],
        "any",
    )


def sort_cards(cards: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(cards, key=lambda c: SEVERITY_RANK.get(str(c.get("indicator")), 9))
