"""Plain-text rendering of evaluation results for a terminal.

Every string from the results passes through :func:`adapter.safe_text.clean` first: a value
prints on its own line's remainder (no line breaks, no terminal escapes, no bidi reordering).
"""

from __future__ import annotations

from typing import Any

from adapter.safe_text import clean_data

MARK = {
    "met": "[met]    ",
    "not-met": "[NOT MET]",
    "unknown": "[UNKNOWN]",
    "review": "[REVIEW] ",
    "not-applicable": "[n/a]    ",  # a start-only criterion once treatment has started
}


def render_text(results: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for r in clean_data(results):
        e = r["eligibility"]
        started = e.get("treatment_started_on")
        since = f" (treatment started on {started}: start-only criteria shown at start)" if started else ""
        out.append(
            f"{r['patient']}  protocol {r['protocol']}  as of {r['as_of']}: {e['status'].upper()}{since}"
        )
        out.extend(  # a site table removed a safety-critical code (mappings/README.md): always said
            f"  SITE OVERRIDE: {o['file']} excludes {o['code']} from {o['concept']}: {o['reason']}"
            for o in (r.get("ruleset") or {}).get("site_overrides") or ()
        )
        for c in e["criteria"]:
            out.append(f"  {MARK.get(c['status'], c['status'])} {c['id']}: {_criterion_text(c)}")
            out.append(f"             source: {c['source']}")
        if e["attestations"]:
            out.append("  To confirm (no data can show these):")
            out.extend(f"    - {a}" for a in e["attestations"])
        if "dose" in r:
            out.extend(_dose_lines(r["dose"]))
        out.append("")
    return "\n".join(out).rstrip("\n")


def _criterion_text(c: dict[str, Any]) -> str:
    """The reason; for a start-only criterion once treatment has started, its status at the start
    (and why, unless it was met)."""
    at = c.get("at_start")
    if c["status"] != "not-applicable" or not at:
        return str(c["reason"])
    brief = f"at start ({at['as_of']}): {at['status']}"
    return brief if at["status"] == "met" else f"{brief}: {at['reason']}"


def _dose_lines(d: dict[str, Any]) -> list[str]:
    where = f"cycle {d['cycle']} day {d['day']}" if d.get("cycle") else "no dose position"
    out = [f"  Next dose: {d['action'].upper()} ({where}, dose level {d.get('dose_level')})"]
    if d.get("bsa_m2") is not None:
        i = d["bsa_inputs"]
        out.append(
            f"    BSA {d['bsa_m2']} m² ({d['bsa_formula']}; weight {i['weight_kg']} kg on "
            f"{i['weight_date']}, height {i['height_cm']} cm on {i['height_date']})"
        )
    for x in d.get("doses", []):
        out.append(
            f"    day {x['day']:>2} {x['date']}: {x['mg_per_m2']} mg/m² = {x['mg']} mg "
            f"({x['vials']} vial(s), withdraw {x['volume_ml']} mL)"
        )
    for f in d.get("findings", []):
        out.append(f"    [{f['severity']}] {f['id']}: {f['reason']}")
        out.append(f"             source: {f['source']}")
    return out


def render_check(c: dict[str, Any]) -> str:
    c = clean_data(c)
    out = [
        f"{c['order']} for {c['patient']} ({c['protocol']}, dose date {c['order_date']}): "
        f"{c['verdict'].upper()}"
    ]
    for f in c["findings"]:
        out.append(f"  [{f['severity']}] {f['id']}: {f['reason']}")
        out.append(f"           source: {f['source']}")
    return "\n".join(out)
