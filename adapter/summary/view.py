"""The view model of the clinician regimen summary: evaluation JSON in, display strings out.

Pure: no files, clock or network. Every value a template prints is a string prepared here
(numbers formatted, missing data shown as ``NOT_RECORDED`` or ``DASH``, never invented), so the
templates only lay the page out. The keys are listed in templates/README.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from adapter import CONTRACT_VERSION, __version__
from adapter.errors import AdapterError, ExitCode
from adapter.safe_text import clean

NOT_RECORDED = "not recorded"
DASH = "—"
NO_DOSE = "No dose proposed"
NOT_PROPOSED = "Next dose (not proposed)"

#: Human labels of protocol variants, used when the caller does not pass the variant's title.
VARIANT_LABELS: dict[str, str] = {
    "fda-label": "FDA label (BESPONSA)",
    "nhs-ta514": "UK regimen (NICE TA514)",
    "es-valtermed": "Spanish therapeutic protocol (VALTERMED)",
    "mdacc-low-dose": "MD Anderson phase II low-dose regimen",
}

ELIGIBILITY: dict[str, tuple[str, str, str]] = {
    # status: (label, symbol, tone)
    "eligible": ("Eligible", "✓", "ok"),
    "ineligible": ("Not eligible", "✗", "stop"),
    "needs-review": ("Needs clinical review", "!", "review"),
    "insufficient-data": ("Insufficient data", "?", "unknown"),
}

CRITERION: dict[str, tuple[str, str, str]] = {
    "met": ("Met", "✓", "ok"),
    "not-met": ("Not met", "✗", "stop"),
    "unknown": ("Unknown", "?", "unknown"),
    "review": ("Review", "!", "review"),
    # a start-only criterion once treatment has started; shown with its status at the start
    "not-applicable": ("Not applicable now", "–", "info"),
}
#: the criterion statuses that decide the overall eligibility (counted in the banner)
COUNTED = ("met", "not-met", "unknown", "review")

#: action: (label, banner headline, tone, doses shown)
ACTION: dict[str, tuple[str, str, str, bool]] = {
    "administer": ("Administer", "Administer the next dose", "ok", True),
    "delay": ("Delay", "No dose proposed — dose on hold (delay)", "hold", False),
    "omit": ("Omit", "Dose omitted — no dose due now; the plan after the omission is shown", "hold", True),
    "discontinue": ("Discontinue", "No dose proposed — discontinue treatment", "stop", False),
    "complete": ("Course complete", "No dose proposed — course complete", "stop", False),
    "review": ("Prescriber review", "Prescriber review required before any dose", "review", True),
    "insufficient-data": ("Insufficient data", "No dose proposed — insufficient data", "unknown", False),
    "not-eligible": ("Not eligible", "No dose proposed — not eligible", "stop", False),
}

DOSE_HEADING: dict[str, str] = {
    "administer": "Proposed (draft) — requires prescriber signature",
    "review": "For prescriber review (draft) — requires prescriber signature",
    "omit": "Planned after the omission (draft) — requires prescriber signature",
}

#: How the schedule position is introduced for each action (a stop gives no dose at all).
POSITION_LABEL: dict[str, str] = {
    "administer": "Next dose",
    "review": "Next dose",
    "omit": "Next dose",
    "delay": "Next dose (on hold)",
    "insufficient-data": NOT_PROPOSED,
    "discontinue": "Schedule position (no dose to be given)",
    "complete": "Schedule position (no dose to be given)",
    "not-eligible": "Schedule position (no dose to be given)",
}

SEVERITY: dict[str, tuple[str, str, str]] = {
    # severity: (label, symbol, tone); findings are listed in this order
    "critical": ("Critical", "✗", "stop"),
    "warning": ("Warning", "!", "review"),
    "info": ("Info", "i", "info"),
}

SEX = {"male": "Male", "female": "Female", "other": "Other", "unknown": "Unknown"}
BSA_FORMULA = {"mosteller": "Mosteller", "dubois": "DuBois"}
DOSE_LEVEL = {"0": "0 (full dose)", "-1": "−1 (one reduction)", "-2": "−2 (two reductions)"}

DENSE_CRITERIA = 20

MONITORING_ADVICE = ("monitoring", "vital-signs", "observe-after-infusion")

#: The fixed safety box: topic id, heading, one factual line, and the pattern that links the
#: evaluation's own advice, attestations, criteria and findings to the topic.
SAFETY_TOPICS: tuple[tuple[str, str, str, str], ...] = (
    (
        "vod",
        "Hepatic VOD/SOS",
        "Hepatotoxicity including VOD/SOS; higher risk with HSCT.",
        r"\bvod\b|veno-occlusive|sinusoidal obstruction|defibrotide",
    ),
    ("qt", "QT prolongation", "ECG and QT-prolonging co-medication as the protocol specifies.", r"\bqt"),
    (
        "tls",
        "Tumour lysis",
        "High tumour burden: prophylaxis as the protocol specifies.",
        r"tumou?r lysis|\btls\b|uric acid",
    ),
    (
        "contraception",
        "Contraception",
        "Avoid pregnancy; contraception as the protocol specifies.",
        r"contracept|pregnan|childbearing",
    ),
    (
        "live-vaccines",
        "Live vaccines",
        "Not recommended around treatment; timing per the protocol.",
        r"vaccin",
    ),
)


class PreviousMismatchError(AdapterError, ValueError):
    """The previous evaluation is about another patient or protocol (the message names no one)."""

    exit_code = ExitCode.BAD_INPUT


# ---------------------------------------------------------------------------- small helpers


def _map(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _text(value: Any, missing: str = NOT_RECORDED) -> str:
    """A value as display text on one line (``clean``: no control or bidi characters, whitespace
    runs as one space); None, empty and non-scalar values are ``missing``."""
    if value is None or isinstance(value, Mapping | list | tuple):
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = " ".join(clean(value).split())
    return text or missing


#: Numbers shown as numbers lie within 10^-12 .. 10^15; others (tampered or absurd) are shown as
#: written, never formatted digit by digit.
_MAGNITUDE = range(-12, 16)


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or (number and number.adjusted() not in _MAGNITUDE):
        return None
    return number


def fixed(value: Any, places: int, unit: str = "", missing: str = DASH) -> str:
    """``value`` with exactly ``places`` decimals (half-up) and the unit, or ``missing``."""
    number = _decimal(value)
    if number is None:
        return missing if value is None else _text(value, missing)
    text = f"{number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):f}"
    return f"{text} {unit}".rstrip() if unit else text


def plain(value: Any, unit: str = "", missing: str = DASH) -> str:
    """A number without trailing zeros (0.5, 0.375, 1), with the unit, or ``missing``."""
    number = _decimal(value)
    if number is None:
        return missing if value is None else _text(value, missing)
    text = f"{number:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}".rstrip() if unit else text


def day_text(value: Any, missing: str = DASH) -> str:
    """An ISO date with its weekday (``2026-11-21 (Sat)``); other text as it is."""
    if value is None:
        return missing
    text = _text(value, missing)
    try:
        weekday = date.fromisoformat(text).strftime("%a")
    except ValueError:
        return text
    return f"{text} ({weekday})"


def _label(table: Mapping[str, tuple[Any, ...]], code: Any, what: str) -> tuple[str, str, str]:
    """(label, symbol, tone) for a status code; unknown codes are shown, never guessed."""
    entry = table.get(code) if isinstance(code, str) else None
    if entry is None:
        return (f"Unrecognised {what} ({_text(code)})", "?", "unknown")
    return (str(entry[0]), str(entry[1]), str(entry[2]))


def _level_text(level: Any) -> str:
    return DOSE_LEVEL.get(level, _text(level, DASH)) if isinstance(level, str) else _text(level, DASH)


def _refs(value: Any) -> list[str]:
    return [_text(v) for v in _list(value) if v is not None]


# ---------------------------------------------------------------------------- sections


def _subject(evaluation: Mapping[str, Any]) -> dict[str, str]:
    s = _map(evaluation.get("subject"))
    age = s.get("age")
    sex = s.get("sex")
    return {
        "name": _text(s.get("name")),
        "mrn": _text(s.get("mrn")),
        "age": f"{_text(age)} years" if isinstance(age, int) and not isinstance(age, bool) else _text(age),
        "sex": SEX.get(sex, _text(sex)) if isinstance(sex, str) else _text(sex),
        "birth_date": _text(s.get("birth_date")),
        "reference": _text(s.get("reference") or evaluation.get("patient")),
    }


def _protocol(evaluation: Mapping[str, Any], info: Mapping[str, Any] | None) -> dict[str, str]:
    """The variant: id, human title, its source file ("" when unknown) and file version."""
    pid = _text(evaluation.get("protocol"))
    info = _map(info)
    ruleset = _map(evaluation.get("ruleset"))  # what the evaluation itself used (0.3.0+) wins
    title = evaluation.get("protocol_title") or info.get("title") or VARIANT_LABELS.get(pid) or pid
    return {
        "id": pid,
        "title": _text(title),
        "source_file": _text(info.get("source_file"), ""),
        "version": _text(ruleset.get("version") or info.get("version")),
        "digest": _text(ruleset.get("digest"), ""),
    }


def _at_start(c: Mapping[str, Any]) -> dict[str, Any]:
    """The criterion's result at the start of treatment ({} unless it is a start-only criterion
    reported not-applicable once treatment has started)."""
    at = _map(c.get("at_start"))
    return at if c.get("status") == "not-applicable" and at else {}


def _criteria(eligibility: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every criterion. A start-only one once treatment has started (``at_start``) is shown with its
    status, reason and evidence at the start, in a neutral tone: it no longer decides."""
    out = []
    for raw in _list(eligibility.get("criteria")):
        c = _map(raw)
        at = _at_start(c)
        label, symbol, tone = _label(CRITERION, (at or c).get("status"), "status")
        out.append(
            {
                "id": _text(c.get("id")),
                "title": _text(c.get("title")),
                "phase": _text(c.get("phase"), ""),
                "status": _text(c.get("status")),
                "at_start": bool(at),
                "at_start_date": _text(at.get("as_of")) if at else "",
                "at_start_status": _text(at.get("status")) if at else "",
                "label": label,
                "symbol": symbol,
                "tone": "info" if at else tone,
                "reason": _text((at or c).get("reason")),
                "source": _text(c.get("source")),
                "evidence": _refs((at or c).get("evidence")),
            }
        )
    return out


def _eligibility(evaluation: Mapping[str, Any], dose: Mapping[str, Any]) -> dict[str, Any]:
    e = _map(evaluation.get("eligibility"))
    label, symbol, tone = _label(ELIGIBILITY, e.get("status"), "eligibility status")
    criteria = _criteria(e)
    current = [c for c in criteria if not c["at_start"]]
    at_start = [c for c in criteria if c["at_start"]]
    counts = {key: sum(1 for c in current if c["status"] == key) for key in COUNTED}
    counts["at-start"] = len(at_start)
    started_on = _text(e.get("treatment_started_on"), "")
    started = bool(started_on) or dose.get("treatment_started") is True
    as_of = _text(evaluation.get("as_of"))
    heading, banner_label, note = f"Eligibility as of {as_of}", "Eligibility", ""
    if started_on:  # 0.4.0+: start-only criteria are reported as they were at the start
        banner_label = "Eligibility (continuing criteria)"
        note = (
            f"Treatment started on {started_on}: the start-only criteria (baseline results, washouts, "
            "history) are shown as they were at the start and no longer decide; the continuation "
            "rules decide each dose."
        )
    elif started:  # an evaluation from before 0.4.0: every criterion judged as of today
        cycles = _list(_map(dose.get("treatment")).get("cycles"))
        first_day1 = _text(_map(cycles[0]).get("day1"), "") if cycles else ""
        since = f" on {first_day1}" if first_day1 else ""
        heading, banner_label = f"{heading} (for reference)", "Eligibility (pre-treatment, for reference)"
        note = (
            f"Treatment started{since}: these pre-treatment criteria (e.g. stale baseline results, "
            "washouts) no longer decide the dose; the continuation rules do. Shown for reference."
        )
    return {
        "status": _text(e.get("status")),
        "label": label,
        "symbol": symbol,
        "tone": tone,
        "criteria": criteria,
        "current": current,
        "at_start": at_start,
        "at_start_heading": f"At start ({at_start[0]['at_start_date']})" if at_start else "",
        "counts": counts,
        "attestations": [_text(a) for a in _list(e.get("attestations"))],
        "treatment_started": started,
        "started_on": started_on,
        "heading": heading,
        "banner_label": banner_label,
        "note": note,
    }


def _action(dose: Mapping[str, Any], doses: list[dict[str, str]]) -> dict[str, Any]:
    """The decision banner: what to do about the next dose, in words that cannot be misread."""
    code = dose.get("action")
    entry = ACTION.get(code) if isinstance(code, str) else None
    if entry is None:
        label, headline, tone, shows = (
            f"Unrecognised action ({_text(code)})",
            "No dose proposed — unrecognised action",
            "unknown",
            False,
        )
    else:
        label, headline, tone, shows = entry
    position = _position_text(dose)
    position_label = POSITION_LABEL.get(code, NOT_PROPOSED) if isinstance(code, str) else NOT_PROPOSED
    detail = ""
    if shows and doses:
        first = doses[0]
        detail = f"{position}: {first['mg']} ({first['mg_per_m2']}) on {first['date']}"
    elif shows:
        detail = "The evaluation lists no calculated dose: nothing can be given from this summary."
    elif tone != "stop" and position != NOT_RECORDED:
        detail = f"{position_label}: {position}"
    reasons = [
        _text(_map(f).get("reason"))
        for f in _list(dose.get("findings"))
        if _map(f).get("effect") not in (None, "administer")
    ]
    return {
        "code": _text(code),
        "label": label,
        "headline": headline,
        "tone": tone,
        "symbol": {"ok": "✓", "hold": "‖", "stop": "✗", "review": "!", "unknown": "?"}[tone],
        "proposes_dose": code == "administer" and bool(doses),
        "shows_doses": shows,
        "highlight": code != "administer" or not doses,
        "detail": detail,
        "reasons": reasons,
        "position_label": position_label,
        "doses_heading": DOSE_HEADING.get(code, NO_DOSE) if isinstance(code, str) else NO_DOSE,
    }


def _position_text(dose: Mapping[str, Any]) -> str:
    cycle, day = dose.get("cycle"), dose.get("day")
    if cycle is None and day is None:
        return NOT_RECORDED
    return f"cycle {_text(cycle, DASH)} day {_text(day, DASH)}"


def _calendar(dose: Mapping[str, Any], shows: bool) -> list[dict[str, str]]:
    if not shows:
        return []
    rows = []
    for raw in _list(dose.get("doses")):
        d = _map(raw)
        rows.append(
            {
                "day": _text(d.get("day"), DASH),
                "date": day_text(d.get("date")),
                "iso_date": _text(d.get("date"), DASH),
                "mg_per_m2": plain(d.get("mg_per_m2"), "mg/m²"),
                "mg": fixed(d.get("mg"), 2, "mg"),
                "vials": _text(d.get("vials"), DASH),
                "volume_ml": fixed(d.get("volume_ml"), 2, "mL"),
            }
        )
    return rows


def _schedule(dose: Mapping[str, Any]) -> dict[str, Any]:
    window = _map(dose.get("next_dose_window"))
    win = f"{_text(window.get('earliest'), DASH)} to {_text(window.get('latest'), DASH)}" if window else DASH
    started = dose.get("treatment_started")
    level = dose.get("dose_level")
    return {
        "position": _position_text(dose),
        "cycle": _text(dose.get("cycle"), DASH),
        "day": _text(dose.get("day"), DASH),
        "dose_level": _level_text(level),
        "treatment_started": ("yes" if started else "no") if isinstance(started, bool) else NOT_RECORDED,
        "cycles_started": _text(dose.get("cycles_started"), DASH),
        "last_dose": day_text(dose.get("last_dose")),
        "next_dose_date": day_text(dose.get("next_dose_date")),
        "next_dose_window": win,
        "interruption_days": _text(dose.get("interruption_days"), DASH),
        "interruption": plain(dose.get("interruption_days"), "days"),
        "has_cycle": dose.get("cycle") is not None,
    }


def _bsa(dose: Mapping[str, Any]) -> dict[str, Any]:
    i = _map(dose.get("bsa_inputs"))
    formula = dose.get("bsa_formula")
    recorded = _decimal(dose.get("bsa_m2")) is not None
    out = {
        "recorded": recorded,
        "value": fixed(dose.get("bsa_m2"), 2, "m²", NOT_RECORDED),
        "formula": BSA_FORMULA.get(formula, _text(formula)) if isinstance(formula, str) else NOT_RECORDED,
        "weight": fixed(i.get("weight_kg"), 1, "kg", NOT_RECORDED),
        "weight_date": _text(i.get("weight_date"), DASH),
        "weight_ref": _text(i.get("weight"), DASH),
        "height": fixed(i.get("height_cm"), 1, "cm", NOT_RECORDED),
        "height_date": _text(i.get("height_date"), DASH),
        "height_ref": _text(i.get("height"), DASH),
    }
    out["value_text"] = f"{out['value']} ({out['formula']})" if recorded else out["value"]
    for what in ("weight", "height"):
        when = out[f"{what}_date"]
        out[f"{what}_text"] = f"{out[what]} on {when}" if when != DASH else out[what]
    return out


def _preparation(dose: Mapping[str, Any]) -> dict[str, Any]:
    p = _map(dose.get("preparation"))
    light = p.get("protect_from_light")
    steps = []
    if p:
        steps = [
            ("Vial", f"{fixed(p.get('vial_mg'), 1, 'mg', NOT_RECORDED)} single-dose vial"),
            (
                "Reconstitute",
                f"each vial with {plain(p.get('reconstitute_with_ml'), 'mL', NOT_RECORDED)} "
                f"→ {plain(p.get('reconstituted_mg_per_ml'), 'mg/mL', NOT_RECORDED)}",
            ),
            (
                "Dilute",
                f"to {plain(p.get('diluent_ml'), 'mL', NOT_RECORDED)} {_text(p.get('diluent'))}",
            ),
            ("Infuse", f"over {plain(p.get('infusion_minutes'), 'minutes', NOT_RECORDED)}"),
            ("Light", _light(light)),
            (
                "Time limits",
                f"≤ {plain(p.get('max_hours_reconstitution_to_dilution'), 'h', NOT_RECORDED)} "
                "from reconstitution to dilution; "
                f"≤ {plain(p.get('max_hours_reconstitution_to_end_of_infusion'), 'h', NOT_RECORDED)} "
                "from reconstitution to the end of the infusion",
            ),
            ("Rounding", _text(p.get("rounding"))),
        ]
    sources = [{"source": _text(p.get(k))} for k in ("source", "infusion_source") if p.get(k)]
    return {
        "recorded": bool(p),
        "steps": [{"label": k, "text": v} for k, v in steps],
        "sources": sources,
    }


def _light(flag: Any) -> str:
    if flag is True:
        return "protect from light"
    if flag is False:
        return "no light protection stated"
    return NOT_RECORDED


def _sourced(items: Any) -> list[dict[str, str]]:
    out = []
    for raw in _list(items):
        item = _map(raw)
        out.append(
            {
                "id": _text(item.get("id"), ""),
                "text": _text(item.get("text")),
                "source": _text(item.get("source")),
            }
        )
    return out


def _findings(dose: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for raw in _list(dose.get("findings")):
        f = _map(raw)
        label, symbol, tone = _label(SEVERITY, f.get("severity"), "severity")
        severity = f.get("severity")
        order = list(SEVERITY).index(severity) if isinstance(severity, str) and severity in SEVERITY else -1
        effect = f.get("effect")
        out.append(
            {
                "id": _text(f.get("id")),
                "severity": _text(f.get("severity")),
                "label": label,
                "symbol": symbol,
                "tone": tone,
                "order": order,
                "reason": _text(f.get("reason")),
                "source": _text(f.get("source")),
                "effect": _label(ACTION, effect, "action")[0] if effect is not None else "",
                "evidence": _refs(f.get("evidence")),
                "check": _text(f.get("check")) if f.get("check") is not None else "",
            }
        )
    # Unrecognised severities first (order -1), then critical, warning, info; stable otherwise.
    return sorted(out, key=lambda f: int(f["order"]))


def _monitoring(advice: list[dict[str, str]], findings: list[dict[str, Any]], stop: bool) -> dict[str, Any]:
    """Monitoring advice, and the findings to resolve before a dose (none when treatment stops)."""
    items = [a for a in advice if a["id"] in MONITORING_ADVICE or "monitor" in a["id"]]
    open_findings = (
        [] if stop else [f"{f['id']} ({f['label'].lower()})" for f in findings if f["severity"] != "info"]
    )
    return {"advice": items, "open_findings": open_findings}


def _treatment(dose: Mapping[str, Any]) -> dict[str, Any]:
    t = _map(dose.get("treatment"))
    cycles = []
    for raw in _list(t.get("cycles")):
        c = _map(raw)
        rows = [
            {
                "day": _text(_map(d).get("day"), DASH),
                "date": day_text(_map(d).get("date")),
                "mg": fixed(_map(d).get("mg"), 2, "mg"),
                "status": "Given",
                "evidence": _refs(_map(d).get("evidence")),
            }
            for d in _list(c.get("doses"))
        ]
        rows += [
            {"day": _text(day, DASH), "date": DASH, "mg": DASH, "status": "Omitted", "evidence": []}
            for day in _list(c.get("omitted_days"))
        ]
        cycles.append(
            {
                "cycle": _text(c.get("cycle"), DASH),
                "day1": day_text(c.get("day1")),
                "dose_level": _level_text(c.get("dose_level")),
                "doses": rows,
                "best_response": _text(c.get("best_response")),
                "mrd": _text(c.get("mrd")),
            }
        )
    interruptions = []
    for raw in _list(t.get("interruptions")):
        i = _map(raw)
        ongoing = " (ongoing)" if i.get("ongoing") is True else ""
        interruptions.append(
            f"{_text(i.get('days'), DASH)} days from {_text(i.get('from'), DASH)} "
            f"to {_text(i.get('to'), DASH)}{ongoing}"
        )
    toxicities = []
    for raw in _list(t.get("toxicities")):
        x = _map(raw)
        grade = x.get("grade")
        grade_text = f"grade {_text(grade)}" if grade is not None else "grade not recorded"
        flag = x.get("active")
        active = ("active" if flag else "resolved") if isinstance(flag, bool) else "status not recorded"
        toxicities.append(
            f"{_text(x.get('display') or x.get('concept'))}, {grade_text}, "
            f"onset {_text(x.get('onset'))}, {active}"
        )
    return {
        "recorded": bool(t),
        "cycles": cycles,
        "interruptions": interruptions,
        "reductions": _text(t.get("reductions"), DASH),
        "toxicities": toxicities,
    }


def _safety(
    advice: list[dict[str, str]],
    attestations: list[str],
    criteria: list[dict[str, Any]],
    findings: list[dict[str, Any]],
    monitoring_ids: set[str],
) -> list[dict[str, Any]]:
    """The five safety topics, each with pointers to what this evaluation says about it."""
    topics = []
    for topic_id, heading, text, pattern in SAFETY_TOPICS:
        rx = re.compile(pattern, re.IGNORECASE)
        found: list[tuple[str, str]] = []
        for a in advice:
            if rx.search(f"{a['id']} {a['text']}"):
                in_monitoring = a["id"] in monitoring_ids
                found.append(("monitoring", "see Monitoring") if in_monitoring else ("advice", "see Advice"))
        found += [
            ("attestation", f"confirm item {n} below")
            for n, att in enumerate(attestations, 1)
            if rx.search(att)
        ]
        found += [
            (
                "criterion",
                f"criterion {c['id']}: {c['symbol']} {c['label']}" + (" at start" if c["at_start"] else ""),
            )
            for c in criteria
            if rx.search(f"{c['id']} {c['title']}")
        ]
        found += [
            ("finding", f"finding {f['id']}: {f['symbol']} {f['label']}")
            for f in findings
            if rx.search(f"{f['id']} {f['reason']}")
        ]
        links = [{"kind": kind, "ref": ref} for kind, ref in dict.fromkeys(found)]
        topics.append({"id": topic_id, "heading": heading, "text": text, "links": links})
    return topics


def _add_cites(node: Any, source_file: str) -> None:
    """Give every dict with a ``source`` a ``cite``: the source without the variant's own file name.

    The summary states once that sections without a file name are in the variant's source file.
    """
    if isinstance(node, dict):
        source = node.get("source")
        if isinstance(source, str):
            prefix = f"{source_file} "
            short = source[len(prefix) :] if source_file and source.startswith(prefix) else source
            node["cite"] = short
        for value in node.values():
            _add_cites(value, source_file)
    elif isinstance(node, list):
        for value in node:
            _add_cites(value, source_file)


# ---------------------------------------------------------------------------- changes


def _criterion_status_text(c: Mapping[str, Any]) -> str:
    """A criterion's status in words; a start-only one once treatment has started, at the start."""
    at = _at_start(c)
    if at:
        return f"{_label(CRITERION, at.get('status'), 'status')[0]} at start, {_text(at.get('as_of'))}"
    return _label(CRITERION, c.get("status"), "status")[0]


def _key_statuses(evaluation: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for raw in _list(_map(evaluation.get("eligibility")).get("criteria")):
        c = _map(raw)
        out[_text(c.get("id"))] = _criterion_status_text(c)
    return out


def _first_dose(dose: Mapping[str, Any]) -> str:
    doses = [_map(d) for d in _list(dose.get("doses"))]
    if not doses or not ACTION.get(str(dose.get("action")), ("", "", "", False))[3]:
        return "none"
    d = doses[0]
    return f"{fixed(d.get('mg'), 2, 'mg')} ({plain(d.get('mg_per_m2'), 'mg/m²')})"


def _finding_keys(dose: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in _list(dose.get("findings")):
        f = _map(raw)
        out[_text(f.get("id"))] = _text(f.get("severity"))
    return out


def compute_changes(current: Mapping[str, Any], previous: Mapping[str, Any]) -> list[str]:
    """Human-readable differences from ``previous`` (same patient and protocol) to ``current``."""
    changes: list[str] = []

    def changed(what: str, old: str, new: str) -> None:
        if old != new:
            changes.append(f"{what}: {old} → {new}")

    e_old, e_new = _map(previous.get("eligibility")), _map(current.get("eligibility"))
    changed(
        "Eligibility",
        _label(ELIGIBILITY, e_old.get("status"), "eligibility status")[0],
        _label(ELIGIBILITY, e_new.get("status"), "eligibility status")[0],
    )
    old_c, new_c = _key_statuses(previous), _key_statuses(current)
    for cid, status in new_c.items():
        if cid not in old_c:
            changes.append(f"Criterion {cid}: new ({status})")
        else:
            changed(f"Criterion {cid}", old_c[cid], status)
    changes.extend(f"Criterion {cid}: no longer listed" for cid in old_c if cid not in new_c)
    old_att = {_text(a) for a in _list(e_old.get("attestations"))}
    new_att = [_text(a) for a in _list(e_new.get("attestations"))]
    changes.extend(f"New attestation: {a}" for a in new_att if a not in old_att)

    d_old, d_new = _map(previous.get("dose")), _map(current.get("dose"))
    changed(
        "Action",
        _label(ACTION, d_old.get("action"), "action")[0],
        _label(ACTION, d_new.get("action"), "action")[0],
    )
    changed("Next dose", _position_text(d_old), _position_text(d_new))
    changed("Dose level", _level_text(d_old.get("dose_level")), _level_text(d_new.get("dose_level")))
    changed("First proposed dose", _first_dose(d_old), _first_dose(d_new))
    changed(
        "BSA",
        fixed(d_old.get("bsa_m2"), 2, "m²", NOT_RECORDED),
        fixed(d_new.get("bsa_m2"), 2, "m²", NOT_RECORDED),
    )
    changed("BSA formula", _text(d_old.get("bsa_formula")), _text(d_new.get("bsa_formula")))
    f_old, f_new = _finding_keys(d_old), _finding_keys(d_new)
    # information (checks passed, notes) appearing or going is not a change worth a clinician's line
    for fid, severity in f_new.items():
        if fid not in f_old:
            if severity != "info":
                changes.append(f"New finding: {fid} ({severity})")
        elif f_old[fid] != severity:
            changed(f"Finding {fid}", f_old[fid], severity)
    changes.extend(
        f"Finding no longer present: {fid} ({sev})"
        for fid, sev in f_old.items()
        if fid not in f_new and sev != "info"
    )
    return changes


# ---------------------------------------------------------------------------- entry point


def build_view(
    evaluation: Mapping[str, Any],
    previous: Mapping[str, Any] | None = None,
    *,
    generated_at: str | None = None,
    protocol_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary's view model for one evaluation (and the previous one of the same patient).

    ``protocol_info`` may carry the variant's ``title``, ``source_file`` and ``version``.
    Raises PreviousMismatchError (a ValueError) when ``previous`` is about another patient or protocol.
    """
    if previous is not None:
        for key in ("patient", "protocol"):
            if previous.get(key) != evaluation.get(key):
                raise PreviousMismatchError(
                    f"previous evaluation: it is for a different {key}; the changes cannot be compared"
                )
    dose = _map(evaluation.get("dose"))
    code = dose.get("action")
    calendar = _calendar(dose, isinstance(code, str) and code in ACTION and ACTION[code][3])
    action = _action(dose, calendar)
    eligibility = _eligibility(evaluation, dose)
    advice = _sourced(dose.get("advice"))
    all_findings = _findings(dose)
    # pre-dose checks that passed are one line ("Checked before the dose"), not a finding each
    findings = [f for f in all_findings if not f["check"]]
    checks = list(dict.fromkeys(f["check"] for f in all_findings if f["check"]))
    monitoring = _monitoring(advice, findings, stop=action["tone"] == "stop")
    monitoring_ids = {a["id"] for a in monitoring["advice"]}
    safety = _safety(advice, eligibility["attestations"], eligibility["criteria"], findings, monitoring_ids)
    protocol = _protocol(evaluation, protocol_info)
    changes = compute_changes(evaluation, previous) if previous is not None else []
    view: dict[str, Any] = {
        "title": "Inotuzumab ozogamicin (Besponsa) — regimen summary",
        "as_of": _text(evaluation.get("as_of")),
        "patient": _text(evaluation.get("patient")),
        "subject": _subject(evaluation),
        "protocol": protocol,
        "action": action,
        "eligibility": eligibility,
        "schedule": _schedule(dose),
        "calendar": calendar,
        "bsa": _bsa(dose),
        "preparation": _preparation(dose),
        "premedication": _sourced(dose.get("premedication")),
        "monitoring": monitoring,
        "advice": [a for a in advice if a["id"] not in monitoring_ids],
        "findings": findings,
        "checks": checks,
        "safety": safety,
        "treatment": _treatment(dose),
        "changes": changes,
        "first_summary": previous is None,
        # Long lists (criteria, and changes printed in two columns) print in a smaller type so
        # that the page still fits on one sheet.
        "dense": len(eligibility["criteria"]) + bool(eligibility["at_start"]) + (len(changes) + 1) // 2
        > DENSE_CRITERIA,
        "previous_as_of": _text(previous.get("as_of")) if previous is not None else "",
        "footer": {
            "adapter_version": __version__,
            "contract": _text(evaluation.get("contract"), CONTRACT_VERSION),
            "generated_at": _text(generated_at, ""),  # "" when not given: the footer omits it
            "disclaimer": "Decision support only — verify against the source protocol before prescribing.",
            # a site table that removed a safety-critical code (override_safety): always shown
            "site_overrides": [
                f"{_text(o.get('concept'))} {_text(o.get('code'))} excluded by {_text(o.get('file'))}: "
                f"{_text(o.get('reason'))}"
                for o in (_map(x) for x in _list(_map(evaluation.get("ruleset")).get("site_overrides")))
            ],
        },
    }
    _add_cites(view, protocol["source_file"])
    return view
