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
        out.append("")
    return "\n".join(out).rstrip("\n")
