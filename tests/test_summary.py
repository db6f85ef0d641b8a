"""The clinician regimen summary (adapter/summary, templates/): content, escaping, overrides, goldens.

Golden files: tests/data/summary/p09-cycle-2.nhs-ta514.evaluation.json is a snapshot of the
evaluation the summary is rendered from (so the goldens test the rendering, not the engine), and
.html / .md hold the rendered summary with a fixed ``generated_at``. Regenerate after an intended
change with ``INO_UPDATE_GOLDEN=1 pytest tests/test_summary.py`` and review the diff.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import orjson
import pytest

from adapter import __version__
from adapter.api import evaluate_path
from adapter.errors import ExitCode
from adapter.evaluate import dose_error_json
from adapter.protocols import VARIANTS, load_variant
from adapter.summary import (
    SUMMARY_FORMATS,
    PreviousMismatchError,
    build_view,
    compute_changes,
    render_summary,
)
from adapter.summary.render import md_escape, packaged_template_dir
from adapter.summary.view import day_text, fixed, plain
from tests.conftest import TODAY

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("p*.json"))
GOLDEN = Path(__file__).parent / "data" / "summary"
UPDATE = os.environ.get("INO_UPDATE_GOLDEN") == "1"
GENERATED_AT = "2026-11-21T09:00:00Z"
DOSE_ACTIONS = ("administer", "review", "omit")  # the actions whose doses the summary lists


@functools.cache
def _evaluation_json(example: str, variant: str) -> bytes:
    run = evaluate_path(ROOT / "examples" / f"{example}.json", variant, TODAY)
    assert len(run.results) == 1
    return orjson.dumps(run.results[0])


def evaluation(example: str, variant: str) -> dict[str, Any]:
    """A fresh copy of the evaluation of one example (tests may mutate it)."""
    result: dict[str, Any] = orjson.loads(_evaluation_json(example, variant))
    return result


def shown(text: str, fmt: str) -> str:
    """``text`` as it appears in the output of ``fmt`` (escaped)."""
    if fmt == "html":
        return str(markupsafe.escape(" ".join(text.split())))
    return md_escape(text)


def render(ev: dict[str, Any], fmt: str, **kwargs: Any) -> str:
    return render_summary(ev, fmt, generated_at=GENERATED_AT, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ every example


@pytest.mark.parametrize("fmt", SUMMARY_FORMATS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_renders_with_identity_criteria_and_doses(example: str, variant: str, fmt: str) -> None:
    ev = evaluation(example, variant)
    out = render(ev, fmt)
    subject = ev["subject"]
    for key in ("name", "mrn", "birth_date"):
        if subject.get(key):
            assert shown(subject[key], fmt) in out
    assert shown(ev["protocol"], fmt) in out
    assert ev["as_of"] in out
    assert load_variant(variant).title in out or shown(load_variant(variant).title, fmt) in out
    for c in ev["eligibility"]["criteria"]:
        assert shown(c["id"], fmt) in out
        assert shown(c["title"], fmt) in out
        # a start-only criterion once treatment has started is shown as it was at the start
        assert shown(c["at_start"]["reason"] if "at_start" in c else c["reason"], fmt) in out
        section = c["source"].split(" ", 1)[1] if " " in c["source"] else c["source"]
        assert shown(section, fmt) in out, c["source"]
    for attestation in ev["eligibility"]["attestations"]:
        assert shown(attestation, fmt) in out
    dose = ev["dose"]
    for finding in dose["findings"]:
        if "check" in finding:  # a passed pre-dose check: named on one line, not listed
            assert shown(finding["check"], fmt) in out and finding["id"] not in out
            continue
        assert shown(finding["id"], fmt) in out
        assert shown(finding["reason"], fmt) in out
    if dose["action"] in DOSE_ACTIONS:
        for d in dose["doses"]:
            assert f"{d['mg']:.2f} mg" in out
            assert d["date"] in out
            assert f"{d['volume_ml']:.2f} mL" in out
    else:
        assert "Proposed (draft)" not in out
    assert f"ino-adapter {__version__}" in out
    assert GENERATED_AT in out
    assert "verify against the source protocol" in out


def test_calendar_rows_match_the_evaluation() -> None:
    ev = evaluation("p09-cycle-2", "nhs-ta514")
    view = build_view(ev)
    doses = ev["dose"]["doses"]
    assert [row["iso_date"] for row in view["calendar"]] == [d["date"] for d in doses]
    assert [row["mg"] for row in view["calendar"]] == [f"{d['mg']:.2f} mg" for d in doses]
    assert [row["day"] for row in view["calendar"]] == [str(d["day"]) for d in doses]
    assert [row["vials"] for row in view["calendar"]] == [str(d["vials"]) for d in doses]
    assert view["calendar"][0]["date"] == "2026-11-21 (Sat)"
    assert view["calendar"][0]["mg_per_m2"] == "0.5 mg/m²"
    html = render(ev, "html")
    table = html[
        html.index('<table class="doses">') : html.index("</table>", html.index('<table class="doses">'))
    ]
    assert table.count("<tr>") == 1 + len(doses)
    assert "Proposed (draft) — requires prescriber signature" in table


def test_previous_cycles_are_listed_with_the_doses_given() -> None:
    ev = evaluation("p09-cycle-2", "nhs-ta514")
    cycle = ev["dose"]["treatment"]["cycles"][0]
    for fmt in SUMMARY_FORMATS:
        out = render(ev, fmt)
        assert "Treatment so far" in out
        for d in cycle["doses"]:
            assert f"day {d['day']}: {d['mg']:.2f} mg" in out
        assert cycle["best_response"] in out


def test_bsa_and_its_inputs() -> None:
    ev = evaluation("p09-cycle-2", "nhs-ta514")
    inputs = ev["dose"]["bsa_inputs"]
    for fmt in SUMMARY_FORMATS:
        out = render(ev, fmt)
        assert f"{ev['dose']['bsa_m2']:.2f} m² (Mosteller)" in out
        assert f"{inputs['weight_kg']:.1f} kg on {inputs['weight_date']}" in out
        assert f"{inputs['height_cm']:.1f} cm on {inputs['height_date']}" in out


def test_preparation_values_come_from_the_evaluation() -> None:
    ev = evaluation("p01-ph-neg-relapse", "nhs-ta514")
    before = {fmt: render(ev, fmt) for fmt in SUMMARY_FORMATS}
    for out in before.values():
        assert "with 4 mL → 0.25 mg/mL" in out
        assert "to 50 mL sodium chloride 0.9%" in out
        assert "over 60 minutes" in out
        assert "≤ 4 h from reconstitution to dilution" in out
        assert "≤ 8 h from reconstitution to the end of the infusion" in out
    prep = ev["dose"]["preparation"]
    prep.update(
        reconstitute_with_ml=5.0,
        reconstituted_mg_per_ml=0.2,
        diluent="glucose 5%",
        diluent_ml=100,
        infusion_minutes=90,
        max_hours_reconstitution_to_dilution=3,
        max_hours_reconstitution_to_end_of_infusion=6,
        protect_from_light=None,
    )
    for fmt in SUMMARY_FORMATS:
        out = render(ev, fmt)
        assert "with 5 mL → 0.2 mg/mL" in out
        assert "to 100 mL glucose 5%" in out
        assert "over 90 minutes" in out
        assert "≤ 3 h from reconstitution to dilution" in out
        assert "≤ 6 h from reconstitution to the end of the infusion" in out
        assert "4 mL → 0.25" not in out
        assert "to 50 mL sodium chloride" not in out
        assert "Light: protect from light" not in out and "<dd>protect from light</dd>" not in out
        assert "Light: not recorded" in out or "<dt>Light</dt><dd>not recorded</dd>" in out


def test_premedication_monitoring_and_advice_are_listed_with_sources() -> None:
    ev = evaluation("p01-ph-neg-relapse", "mdacc-low-dose")
    for fmt in SUMMARY_FORMATS:
        out = render(ev, fmt)
        for item in ev["dose"]["premedication"] + ev["dose"]["advice"]:
            assert shown(item["text"], fmt) in out
        assert "Monitoring before each dose" in out


def test_safety_box_has_the_five_topics_and_points_to_the_evaluation() -> None:
    ev = evaluation("p09-cycle-2", "nhs-ta514")
    view = build_view(ev, protocol_info={"source_file": "uk-regimen-nice-ta514.txt"})
    topics = {t["id"]: t for t in view["safety"]}
    assert list(topics) == ["vod", "qt", "tls", "contraception", "live-vaccines"]
    vod_refs = [link["ref"] for link in topics["vod"]["links"]]
    assert "criterion vod-history: ✓ Met at start" in vod_refs  # a start-only criterion, on treatment
    assert any(ref.startswith("confirm item") for ref in vod_refs)  # defibrotide attestation
    assert any("contraception" in a.lower() for a in ev["eligibility"]["attestations"])
    assert [link["kind"] for link in topics["contraception"]["links"]] == ["attestation"]
    for fmt in SUMMARY_FORMATS:
        out = render(ev, fmt)
        text = re.sub(r"<[^>]+>", "", out)
        assert "Safety — always check (details: uk-regimen-nice-ta514.txt)" in text
        for heading in (
            "Hepatic VOD/SOS",
            "QT prolongation",
            "Tumour lysis",
            "Contraception",
            "Live vaccines",
        ):
            assert heading in out


# ------------------------------------------------------------------------------ decisions


@pytest.mark.parametrize("fmt", SUMMARY_FORMATS)
def test_not_eligible_banner(fmt: str) -> None:
    out = render(evaluation("p04-prior-vod", "nhs-ta514"), fmt)
    headline = "No dose proposed — not eligible"
    assert (headline if fmt == "html" else headline.upper()) in out
    assert "✗ Not eligible" in out
    assert "Proposed (draft)" not in out
    assert "Schedule position (no dose to be given)" in out
    if fmt == "html":
        assert 'class="banner tone-stop highlight"' in out
        assert '<table class="doses">' not in out


@pytest.mark.parametrize("fmt", SUMMARY_FORMATS)
def test_insufficient_data_banner(fmt: str) -> None:
    ev = evaluation("p05-incomplete", "nhs-ta514")
    out = render(ev, fmt)
    headline = "No dose proposed — insufficient data"
    assert (headline if fmt == "html" else headline.upper()) in out
    assert "BSA: not recorded" in out or ">not recorded<" in out
    for finding in ev["dose"]["findings"]:
        assert shown(finding["reason"], fmt) in out
    assert "Proposed (draft)" not in out


def test_review_lists_doses_for_the_prescriber() -> None:
    ev = evaluation("p03-hepatic-review", "nhs-ta514")
    assert ev["dose"]["action"] == "review"
    out = render(ev, "html")
    assert "Prescriber review required before any dose" in out
    assert "For prescriber review (draft) — requires prescriber signature" in out


def test_administer_is_labelled_as_a_draft_needing_a_signature() -> None:
    for fmt in SUMMARY_FORMATS:
        out = render(evaluation("p01-ph-neg-relapse", "nhs-ta514"), fmt)
        assert "Administer the next dose" in out
        assert "Proposed (draft) — requires prescriber signature" in out
        assert "cycle 1 day 1: 1.54 mg (0.8 mg/m²) on 2026-11-21 (Sat)" in out


def test_start_only_criteria_are_shown_at_start_once_treatment_started() -> None:
    ev = evaluation("p09-cycle-2", "mdacc-low-dose")
    assert ev["eligibility"]["treatment_started_on"] == "2026-10-31"
    assert ev["eligibility"]["status"] == "eligible" and ev["dose"]["action"] == "administer"
    view = build_view(ev)["eligibility"]
    assert [c["id"] for c in view["current"]] == ["input-integrity", "alive", "all-diagnosis"]
    washout = next(c for c in view["at_start"] if c["id"] == "monoclonal-antibody-2-weeks")
    assert (washout["label"], washout["symbol"], washout["tone"]) == ("Met", "✓", "info")
    assert view["counts"] == {"met": 3, "not-met": 0, "unknown": 0, "review": 0, "at-start": 19}
    assert view["at_start_heading"] == "At start (2026-10-31)"
    for fmt in SUMMARY_FORMATS:
        out = render(ev, fmt)
        assert "Eligibility as of 2026-11-21:" in out
        assert "Eligibility (continuing criteria):" in out
        assert "At start (2026-10-31) — start-only criteria" in out
        assert "Treatment started on 2026-10-31" in out
        assert "for reference" not in out
        assert "Not applicable" not in out
        # the current list comes first, then the start-only criteria at the start
        assert out.index("all-diagnosis") < out.index("At start (2026-10-31)") < out.index("age-12")
    html = render(ev, "html")
    assert '<tr class="not-met">' not in html and '<tr class="at-start at-start-' in html
    fresh = render(evaluation("p01-ph-neg-relapse", "nhs-ta514"), "html")
    assert "for reference" not in fresh and "At start" not in fresh


def test_a_start_only_criterion_not_met_at_start_is_not_a_current_failure() -> None:
    ev = evaluation("p09-cycle-2", "nhs-ta514")
    c = next(c for c in ev["eligibility"]["criteria"] if c["id"] == "platelets")
    c["at_start"].update(status="not-met", reason="platelets 40 10*9/L on 2026-10-30 (required ≥ 50)")
    view = build_view(ev)["eligibility"]
    row = next(r for r in view["at_start"] if r["id"] == "platelets")
    assert (row["label"], row["symbol"], row["tone"]) == ("Not met", "✗", "info")
    assert view["counts"]["not-met"] == 0
    for fmt in SUMMARY_FORMATS:
        out = render(ev, fmt)
        assert shown("platelets 40 10*9/L on 2026-10-30 (required ≥ 50)", fmt) in out
    assert '<tr class="not-met">' not in render(ev, "html")


def test_an_evaluation_from_before_0_4_0_on_treatment_is_for_reference() -> None:
    """Evaluations without ``treatment_started_on`` (0.3.0): every criterion judged as of today."""
    ev = evaluation("p09-cycle-2", "mdacc-low-dose")
    del ev["eligibility"]["treatment_started_on"]
    for c in ev["eligibility"]["criteria"]:
        at = c.pop("at_start", None)
        del c["phase"]
        if at is not None:
            c["status"], c["reason"] = at["status"], at["reason"]
    assert ev["dose"]["treatment_started"] is True
    for fmt in SUMMARY_FORMATS:
        out = render(ev, fmt)
        assert "Eligibility as of 2026-11-21 (for reference)" in out
        assert "Eligibility (pre-treatment, for reference)" in out
        assert "Treatment started on 2026-10-31" in out
        assert "no longer decide the dose" in out
        assert "At start" not in out


@pytest.mark.parametrize("fmt", SUMMARY_FORMATS)
def test_minimal_dose_block_from_an_engine_error(fmt: str) -> None:
    ev = evaluation("p01-ph-neg-relapse", "nhs-ta514")
    ev["dose"] = dose_error_json(RuntimeError("boom"))
    out = render(ev, fmt)
    assert "internal error in the dose engine (RuntimeError)" in out
    assert (
        "No dose proposed — insufficient data" if fmt == "html" else "NO DOSE PROPOSED — INSUFFICIENT DATA"
    ) in out
    assert "Preparation not recorded." in out
    assert "Premedication not recorded." in out
    assert "Treatment history not recorded." in out
    assert "not recorded" in out
    assert "Proposed (draft)" not in out
    assert "None" not in out


@pytest.mark.parametrize("fmt", SUMMARY_FORMATS)
def test_missing_and_null_data_never_crash_or_invent(fmt: str) -> None:
    bare: dict[str, Any] = {
        "contract": "1",
        "patient": "Patient/x",
        "protocol": "nhs-ta514",
        "as_of": "2026-11-21",
    }
    out = render(bare, fmt)
    assert "not recorded" in out
    assert "No criteria recorded." in out
    assert "None" not in out
    nulls = copy.deepcopy(bare)
    nulls["subject"] = {k: None for k in ("reference", "name", "mrn", "birth_date", "age", "sex")}
    nulls["eligibility"] = {"status": None, "criteria": [{"id": "x"}], "attestations": None}
    nulls["dose"] = {
        "action": "administer",
        "findings": [{"id": "odd", "severity": "severe"}],
        "doses": [{"day": 1, "mg": None, "mg_per_m2": None, "date": None, "vials": None, "volume_ml": None}],
        "preparation": {"vial_mg": None},
        "bsa_inputs": None,
        "next_dose_window": {"earliest": None, "latest": None},
        "treatment": {
            "cycles": [{"cycle": 1, "doses": [{"day": 1}]}],
            "interruptions": [{}],
            "toxicities": [{}],
        },
    }
    out = render(nulls, fmt)
    assert "None" not in out
    assert "Unrecognised severity (severe)" in out
    assert "Unrecognised eligibility status" in out
    view = build_view(nulls)
    assert view["calendar"][0]["mg"] == "—" and view["calendar"][0]["date"] == "—"
    assert view["bsa"]["value"] == "not recorded"


@pytest.mark.parametrize("fmt", SUMMARY_FORMATS)
def test_administer_without_doses_gives_nothing(fmt: str) -> None:
    ev = evaluation("p01-ph-neg-relapse", "nhs-ta514")
    ev["dose"]["doses"] = []
    out = render(ev, fmt)
    assert "The evaluation lists no calculated dose: nothing can be given from this summary." in out
    assert build_view(ev)["action"]["highlight"] is True


def test_unknown_action_is_not_a_dose() -> None:
    ev = evaluation("p01-ph-neg-relapse", "nhs-ta514")
    ev["dose"]["action"] = "give-double"
    view = build_view(ev)
    assert view["calendar"] == []
    assert view["action"]["headline"] == "No dose proposed — unrecognised action"
    assert "Unrecognised action (give-double)" in render(ev, "html")


DOSING_CASES = sorted(p.parent.name for p in (Path(__file__).parent / "data" / "dosing").glob("*/input.json"))


@functools.cache
def _dosing_json(case: str, variant: str) -> bytes:
    run = evaluate_path(Path(__file__).parent / "data" / "dosing" / case / "input.json", variant, TODAY)
    return orjson.dumps(run.results[0])


def dosing_evaluation(case: str, variant: str) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(_dosing_json(case, variant))
    return result


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", DOSING_CASES)
def test_treatment_histories_render(case: str, variant: str) -> None:
    ev = dosing_evaluation(case, variant)
    for fmt in SUMMARY_FORMATS:
        out = render(ev, fmt)
        for cycle in ev["dose"]["treatment"]["cycles"]:
            for d in cycle["doses"]:
                assert f"day {d['day']}: {d['mg']:.2f} mg" in out
        for finding in ev["dose"]["findings"]:
            expected = finding.get("check") or finding["reason"]  # passed checks are named, not listed
            assert shown(expected, fmt) in out


def test_discontinue_gives_no_dose_and_no_pre_dose_checks() -> None:
    ev = dosing_evaluation("vod-on-treatment", "nhs-ta514")
    assert ev["dose"]["action"] == "discontinue"
    out = render(ev, "md")
    assert "NO DOSE PROPOSED — DISCONTINUE TREATMENT" in out
    assert "Schedule position (no dose to be given): cycle" in out
    assert "Resolve before dosing" not in out
    assert "Hepatic veno-occlusive disease, grade not recorded, onset 2026-11-19, active" in out
    assert "| Day | Date |" not in out


def test_reduced_doses_for_review_show_their_mg_per_m2() -> None:
    ev = dosing_evaluation("interruption-14-days", "fda-label")
    assert ev["dose"]["action"] == "review"
    out = render(ev, "md")
    for d in ev["dose"]["doses"]:
        assert f"| {d['day']} | " in out
        assert plain(d["mg_per_m2"], "mg/m²") in out
    assert "dose level −1 (one reduction)" in out
    assert "Interruptions: 14 days from 2026-11-07 to 2026-11-21 (ongoing)" in out


# ------------------------------------------------------------------------------ escaping


def _hostile() -> dict[str, Any]:
    ev = evaluation("p09-cycle-2", "nhs-ta514")
    ev["subject"]["name"] = "<script>alert(1)</script>"
    hostile = "<b>& [click](javascript:alert(2)) *bold* _it_ `code` | cell &amp;"
    criteria = ev["eligibility"]["criteria"]
    assert criteria[2]["phase"] == "start" and criteria[3]["phase"] == "continuing"
    criteria[2]["at_start"]["reason"] = hostile  # shown at start (treatment has started)
    criteria[3]["reason"] = hostile
    ev["dose"]["treatment"]["cycles"][0]["best_response"] = "CR | <img src=x onerror=alert(3)>"
    return ev


def test_html_escapes_every_value() -> None:
    out = render(_hostile(), "html")
    assert "<script" not in out
    assert "<img" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<title>Regimen summary — &lt;script&gt;" in out
    assert "&lt;b&gt;&amp; [click](javascript:alert(2))" in out
    assert "&amp;amp;" in out
    assert "&lt;img src=x onerror=alert(3)&gt;" in out


def test_markdown_neutralises_markup_in_values() -> None:
    out = render(_hostile(), "md")
    assert re.search(r"(?<!\\)<(script|img|b)\b", out) is None  # every < of a value is escaped
    assert r"\<script>alert(1)\</script>" in out
    assert r"\<b>& \[click\](javascript:alert(2)) \*bold\* \_it\_ \`code\` \| cell \&amp;" in out
    assert r"CR \| \<img src=x onerror=alert(3)>" in out
    table_row = next(line for line in out.splitlines() if line.startswith("| 1 | 2026-10-31"))
    assert len(re.findall(r"(?<!\\)\|", table_row)) == 7  # still six cells


CONTROLS = (
    "\x00\x07\x08\x1b\x7f\x85\x9b\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
BREAKS = "\r\n\r\x0b\x0c\u2028\u2029"


@pytest.mark.parametrize("fmt", SUMMARY_FORMATS)
def test_control_and_bidi_characters_are_neutralised(fmt: str) -> None:
    ev = evaluation("p09-cycle-2", "nhs-ta514")
    forged = f"Alex{BREAKS}[met] forged\x1b[2J\u202eevil"
    ev["subject"]["name"] = forged
    continuing = next(c for c in ev["eligibility"]["criteria"] if c["phase"] == "continuing")
    continuing["reason"] = f"ok{BREAKS}| x | forged row |{CONTROLS}"
    ev["dose"]["findings"][0]["reason"] = f"a{CONTROLS}b"
    ev["dose"]["treatment"]["toxicities"] = [{"display": "Rash\n- forged item", "grade": "2\x1b[31m"}]
    out = render(ev, fmt)
    for c in CONTROLS + "\r\x0b\x0c\u2028\u2029":
        assert c not in out, repr(c)
    assert "\ufffd" in out  # neutralised visibly
    lines = out.splitlines()
    assert not any(
        line.lstrip().startswith(("[met] forged", "| x | forged", "- forged", "\\| x")) for line in lines
    )
    assert shown("Alex [met] forged\ufffd[2J\ufffdevil", fmt) in out


def test_md_escape_keeps_ordinary_text_readable() -> None:
    assert md_escape("CD22 on 86 % of blasts (required > 0%); U+Es & LFTs") == (
        "CD22 on 86 % of blasts (required > 0%); U+Es & LFTs"
    )
    assert md_escape("line\nbreak") == "line break"
    assert md_escape("a\u2028b\x1b[1mc\u202e") == "a b\ufffd\\[1mc\ufffd"
    assert md_escape(None) == "—"


# ------------------------------------------------------------------------------ templates


def test_site_template_directory_is_searched_first(tmp_path: Path) -> None:
    (tmp_path / "summary.html.j2").write_text(
        '{% import "_macros.html.j2" as m %}'
        'SITE {{ v.subject.name }} {{ m.badge("✓", v.action.label, "ok") }}',
        encoding="utf-8",
    )
    ev = evaluation("p01-ph-neg-relapse", "nhs-ta514")
    ev["subject"]["name"] = "<i>Alex</i>"
    html = render(ev, "html", template_dir=tmp_path)
    assert html.startswith("SITE &lt;i&gt;Alex&lt;/i&gt; ")  # autoescaped in site templates too
    assert '<span class="badge tone-ok">' in html  # the packaged macros are still found
    md = render(ev, "md", template_dir=str(tmp_path))  # no site summary.md.j2: the packaged one
    assert md.startswith("# Inotuzumab ozogamicin (Besponsa) — regimen summary")
    assert render(ev, "html") != html


def test_strict_undefined_catches_template_typos(tmp_path: Path) -> None:
    (tmp_path / "summary.html.j2").write_text("{{ v.subject.nmae }}", encoding="utf-8")
    (tmp_path / "summary.md.j2").write_text("{{ v.subjcet }}", encoding="utf-8")
    ev = evaluation("p01-ph-neg-relapse", "nhs-ta514")
    with pytest.raises(jinja2.UndefinedError):
        render(ev, "html", template_dir=tmp_path)
    with pytest.raises(jinja2.UndefinedError):
        render(ev, "md", template_dir=tmp_path)


def test_unknown_format_is_refused() -> None:
    assert SUMMARY_FORMATS == ("html", "md")
    with pytest.raises(ValueError, match="unknown summary format"):
        render(evaluation("p01-ph-neg-relapse", "nhs-ta514"), "pdf")


def test_packaged_templates_are_found() -> None:
    folder = packaged_template_dir()
    assert (folder / "summary.html.j2").is_file()
    assert (folder / "summary.md.j2").is_file()
    assert (folder / "README.md").is_file()


def test_html_is_self_contained_and_semantic() -> None:
    out = render(evaluation("p09-cycle-2", "nhs-ta514"), "html")
    assert out.startswith("<!DOCTYPE html>")
    assert '<html lang="en">' in out
    assert '<meta charset="utf-8">' in out
    assert "<script" not in out
    assert re.search(r"""(src|href)\s*=|@import|url\(|https?://""", out) is None
    assert "@media print" in out and "@page { margin:" in out
    assert re.search(r"@page[^}]*size", out) is None  # the paper size is left to the printer
    assert '<th scope="col">' in out and '<th scope="row">' in out
    for section in ("decision", "doses", "history", "findings", "monitoring", "bsa", "preparation"):
        assert f'id="{section}"' in out
    for section in ("premedication", "advice", "safety", "eligibility", "attestations"):
        assert f'id="{section}"' in out
    assert out.count("☐") == len(evaluation("p09-cycle-2", "nhs-ta514")["eligibility"]["attestations"])


def test_output_is_deterministic() -> None:
    ev = evaluation("p09-cycle-2", "nhs-ta514")
    for fmt in SUMMARY_FORMATS:
        assert render(ev, fmt) == render(copy.deepcopy(ev), fmt)
        # no clock: without generated_at the footer names no time (write-back needs identical re-runs)
        assert "generated" not in render_summary(ev, fmt).split("Generated by", 1)[1].split("\n", 2)[0]
        stamped = render_summary(ev, fmt, generated_at="2026-11-21T09:00:00Z")
        assert "generated 2026-11-21T09:00:00Z" in stamped
        assert f"(rules {ev['ruleset']['digest']})" in render_summary(ev, fmt)


# ------------------------------------------------------------------------------ changes


def test_first_summary_has_no_changes() -> None:
    view = build_view(evaluation("p09-cycle-2", "nhs-ta514"))
    assert view["first_summary"] is True and view["changes"] == []
    assert "First summary" in render(evaluation("p09-cycle-2", "nhs-ta514"), "md")


def test_changes_since_the_previous_evaluation() -> None:
    current = evaluation("p09-cycle-2", "nhs-ta514")
    previous = copy.deepcopy(current)
    previous["as_of"] = "2026-11-14"
    previous["eligibility"]["status"] = "insufficient-data"
    bilirubin = next(c for c in previous["eligibility"]["criteria"] if c["id"] == "bilirubin")
    bilirubin["status"] = "unknown"  # judged as of 2026-11-14 (as before 0.4.0)
    del bilirubin["at_start"]
    diagnosis = next(c for c in previous["eligibility"]["criteria"] if c["id"] == "b-all-diagnosis")
    diagnosis["status"] = "review"
    previous["eligibility"]["criteria"] = [
        c for c in previous["eligibility"]["criteria"] if c["id"] != "adult"
    ]
    previous["eligibility"]["criteria"].append({"id": "old-rule", "title": "Old", "status": "met"})
    previous["dose"].update(action="delay", cycle=1, day=15, doses=[], bsa_m2=1.95, dose_level="0")
    previous["dose"]["findings"] = [
        {"id": "hepatic-hold", "severity": "warning", "reason": "bilirubin above limit", "effect": "delay"},
        {"id": "dose-calculated", "severity": "warning", "reason": "x"},
    ]
    changes = compute_changes(current, previous)
    # information appearing (a check passed, the response that decided) is not a change to report
    assert any(f["severity"] == "info" and f["id"] == "response-decides" for f in current["dose"]["findings"])
    assert changes == [
        "Eligibility: Insufficient data → Eligible",
        "Criterion adult: new (Met at start, 2026-10-31)",
        "Criterion b-all-diagnosis: Review → Met",
        "Criterion bilirubin: Unknown → Met at start, 2026-10-31",
        "Criterion old-rule: no longer listed",
        "Action: Delay → Administer",
        "Next dose: cycle 1 day 15 → cycle 2 day 1",
        "First proposed dose: none → 1.00 mg (0.5 mg/m²)",
        "BSA: 1.95 m² → 2.00 m²",
        "Finding dose-calculated: warning → info",
        "Finding no longer present: hepatic-hold (warning)",
    ]
    view = build_view(current, previous)
    assert view["changes"] == changes and view["first_summary"] is False
    for fmt in SUMMARY_FORMATS:
        out = render(current, fmt, previous=previous)
        assert "2026-11-14" in out
        for change in changes:
            assert shown(change, fmt) in out


def test_dose_and_level_changes() -> None:
    previous = evaluation("p09-cycle-2", "nhs-ta514")
    current = copy.deepcopy(previous)
    current["dose"]["dose_level"] = "-1"
    current["dose"]["doses"][0].update(mg=0.75, mg_per_m2=0.375)
    current["dose"]["bsa_formula"] = "dubois"
    current["eligibility"]["attestations"].append("Check something new")
    current["dose"]["findings"].append({"id": "dose-reduced", "severity": "warning", "reason": "r"})
    assert compute_changes(current, previous) == [
        "New attestation: Check something new",
        "Dose level: 0 (full dose) → −1 (one reduction)",
        "First proposed dose: 1.00 mg (0.5 mg/m²) → 0.75 mg (0.375 mg/m²)",
        "BSA formula: mosteller → dubois",
        "New finding: dose-reduced (warning)",
    ]


def test_no_changes_and_mismatched_previous() -> None:
    ev = evaluation("p09-cycle-2", "nhs-ta514")
    assert compute_changes(ev, copy.deepcopy(ev)) == []
    assert "No changes" in render(ev, "html", previous=copy.deepcopy(ev))
    with pytest.raises(PreviousMismatchError, match="different patient") as caught:
        build_view(ev, evaluation("p01-ph-neg-relapse", "nhs-ta514"))
    assert caught.value.exit_code == ExitCode.BAD_INPUT  # the CLI reports it as unusable input
    assert "p01" not in caught.value.message and "p09" not in caught.value.message  # names no one
    with pytest.raises(ValueError, match="different protocol"):
        render(ev, "md", previous=evaluation("p09-cycle-2", "fda-label"))


# ------------------------------------------------------------------------------ formatting


def test_number_and_date_formatting() -> None:
    assert fixed(0.935, 2, "mg") == "0.94 mg"  # half-up, as the engine rounds
    assert fixed(1, 2, "mg") == "1.00 mg"
    assert fixed(None, 2, "mg") == "—"
    assert fixed(True, 2) == "yes"  # a bool is not a number: shown as it is
    assert plain(0.375, "mg/m²") == "0.375 mg/m²"
    assert plain(0.50) == "0.5"
    assert plain(50) == "50"
    assert plain("n/a") == "n/a"
    assert day_text("2026-11-21") == "2026-11-21 (Sat)"
    assert day_text("2026-11") == "2026-11"
    assert day_text(None) == "—"


def test_absurd_numbers_are_shown_as_written_never_expanded() -> None:
    """A tampered evaluation: no crash (decimal overflow) and no billion-digit string."""
    assert fixed(1e300, 2, "mg") == "1e+300"
    assert plain("1e999999999", "mg") == "1e999999999"
    assert fixed(10**40, 2) == str(10**40)
    assert fixed(float("inf"), 2) == "inf" and plain(float("nan")) == "nan"
    assert fixed(123456.785, 2, "mg") == "123456.79 mg"


# ------------------------------------------------------------------------------ goldens


def _normalise(text: str, variant: str) -> str:
    """Replace what moves with releases (adapter and protocol file versions) by placeholders."""
    text = text.replace(f"ino-adapter {__version__}", "ino-adapter <version>")
    return text.replace(
        f"protocol file version {load_variant(variant).version}", "protocol file version <version>"
    )


@pytest.mark.parametrize("fmt", SUMMARY_FORMATS)
def test_golden_p09(fmt: str) -> None:
    case, variant = "p09-cycle-2", "nhs-ta514"
    snapshot = GOLDEN / f"{case}.{variant}.evaluation.json"
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        snapshot.write_bytes(
            orjson.dumps(evaluation(case, variant), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    ev = orjson.loads(snapshot.read_bytes())
    out = _normalise(render(ev, fmt), variant)
    expected = GOLDEN / f"{case}.{variant}.{fmt}"
    if UPDATE:
        expected.write_text(out, encoding="utf-8")
    assert out == expected.read_text(encoding="utf-8")


def test_a_site_override_of_a_safety_critical_code_is_printed() -> None:
    ev = copy.deepcopy(evaluation("p09-cycle-2", "nhs-ta514"))
    ev["ruleset"]["site_overrides"] = [
        {"file": "site.yaml", "concept": "vod-sos", "code": "icd10 K76.5", "reason": "local <b>coding</b>"}
    ]
    for fmt in SUMMARY_FORMATS:
        out = render(ev, fmt)
        assert "SITE OVERRIDE of a safety-critical code: vod-sos icd10 K76.5 excluded by site.yaml" in out
        assert "<b>coding</b>" not in out  # data, not markup
