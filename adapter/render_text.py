"""Plain-text rendering of evaluation results for a terminal."""

from __future__ import annotations

from typing import Any

MARK = {"met": "[met]    ", "not-met": "[NOT MET]", "unknown": "[UNKNOWN]", "review": "[REVIEW] "}


def render_text(results: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for r in results:
        e = r["eligibility"]
        out.append(f"{r['patient']}  protocol {r['protocol']}  as of {r['as_of']}: {e['status'].upper()}")
        for c in e["criteria"]:
            out.append(f"  {MARK.get(c['status'], c['status'])} {c['id']}: {c['reason']}")
            out.append(f"             source: {c['source']}")
        if e["attestations"]:
            out.append("  To confirm (no data can show these):")
            out.extend(f"    - {a}" for a in e["attestations"])
        if "dose" in r:
            out.extend(_dose_lines(r["dose"]))
        out.append("")
    return "\n".join(out).rstrip("\n")


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
    out = [
        f"{c['order']} for {c['patient']} ({c['protocol']}, dose date {c['order_date']}): "
        f"{c['verdict'].upper()}"
    ]
    for f in c["findings"]:
        out.append(f"  [{f['severity']}] {f['id']}: {f['reason']}")
        out.append(f"           source: {f['source']}")
    return "\n".join(out)
