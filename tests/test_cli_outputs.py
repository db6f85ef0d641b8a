"""`evaluate --out` and `render`: the files a hospital integration picks up, and re-rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import time_machine
from click.testing import CliRunner

import cli
from adapter.api import evaluate_path
from tests.conftest import TODAY
from tests.support.make_examples import EXAMPLES_DIR
from tests.support.synth import PatientBuilder

FROZEN = "2026-11-21T09:00:00Z"


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def evaluate_out(src: Path, out: Path, *extra: str) -> Any:
    with time_machine.travel(FROZEN, tick=False):
        return run_cli(
            "evaluate", str(src), "-p", "nhs-ta514", "--as-of", "2026-11-21", "--out", str(out), *extra
        )


def test_out_writes_the_four_files_per_patient(tmp_path: Path) -> None:
    result = evaluate_out(EXAMPLES_DIR, tmp_path)
    assert result.exit_code == 0, result.output
    folders = sorted(p.parent for p in tmp_path.glob("*/nhs-ta514/bundle.json"))
    assert len(folders) == 9  # p01..p09, p08 from the Bulk Data export
    folder = tmp_path / "p09-cycle-2" / "nhs-ta514"
    assert sorted(p.name for p in folder.iterdir()) == [
        "bundle.json",
        "evaluation.json",
        "summary.html",
        "summary.md",
    ]
    ev = json.loads((folder / "evaluation.json").read_text())
    assert ev["patient"] == "Patient/p09-cycle-2" and ev["dose"]["action"] == "administer"
    bundle = json.loads((folder / "bundle.json").read_text())
    assert bundle["type"] == "transaction"
    orders = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
    assert [o["authoredOn"] for o in orders] == [FROZEN] * 3
    html = (folder / "summary.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "MRN-p09-cycle-2" in html
    assert "MRN-p09-cycle-2" in (folder / "summary.md").read_text()
    assert "p09-cycle-2/nhs-ta514" in result.stderr  # the report names each folder


def test_rerunning_rewrites_identical_files(tmp_path: Path) -> None:
    evaluate_out(EXAMPLES_DIR / "p09-cycle-2.json", tmp_path)
    folder = tmp_path / "p09-cycle-2" / "nhs-ta514"
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    evaluate_out(EXAMPLES_DIR / "p09-cycle-2.json", tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first


def test_a_changed_evaluation_keeps_the_previous_one_and_the_summary_says_what_changed(
    tmp_path: Path,
) -> None:
    b = PatientBuilder("chg", "1975-01-01", "female", TODAY)
    from tests.support.synth import full_workup

    full_workup(b)
    src = tmp_path / "in.json"
    src.write_text(json.dumps(b.bundle()))
    out = tmp_path / "out"
    evaluate_out(src, out)
    # a new bilirubin result arrives, above the UK limit
    b.lab("bilirubin-total", 40, days_ago=0)
    src.write_text(json.dumps(b.bundle()))
    evaluate_out(src, out)
    folder = out / "chg" / "nhs-ta514"
    previous = json.loads((folder / "previous-evaluation.json").read_text())
    current = json.loads((folder / "evaluation.json").read_text())
    assert previous["eligibility"]["status"] == "eligible" != current["eligibility"]["status"]
    md = (folder / "summary.md").read_text()
    assert "bilirubin" in md.lower() and "eligible" in md.lower()
    assert "first summary" not in md.lower()


def test_render_reproduces_the_written_summary(tmp_path: Path) -> None:
    evaluate_out(EXAMPLES_DIR / "p09-cycle-2.json", tmp_path)
    folder = tmp_path / "p09-cycle-2" / "nhs-ta514"
    for fmt in ("html", "md"):
        result = run_cli("render", str(folder / "evaluation.json"), "--format", fmt)
        assert result.exit_code == 0, result.output
        assert result.stdout == (folder / f"summary.{fmt}").read_text()
    target = tmp_path / "again.html"
    assert run_cli("render", str(folder / "evaluation.json"), "-o", str(target)).exit_code == 0
    assert target.read_text() == (folder / "summary.html").read_text()


def test_render_uses_a_site_template_directory(tmp_path: Path) -> None:
    (ev,) = evaluate_path(EXAMPLES_DIR / "p01-ph-neg-relapse.json", "nhs-ta514", TODAY).results
    path = tmp_path / "ev.json"
    path.write_text(json.dumps(ev))
    site = tmp_path / "site"
    site.mkdir()
    (site / "summary.md.j2").write_text("SITE {{ v.patient }}\n")
    result = run_cli("render", str(path), "--format", "md", "--template-dir", str(site))
    assert result.exit_code == 0, result.output
    assert result.stdout == "SITE Patient/p01-ph-neg-relapse\n"
    settings = tmp_path / "site.yaml"
    settings.write_text(f"template_dir: {site}\n")
    result = run_cli("render", str(path), "--format", "md", "--site-settings", str(settings))
    assert result.stdout == "SITE Patient/p01-ph-neg-relapse\n"


def test_render_refuses_what_is_not_an_evaluation(tmp_path: Path) -> None:
    bogus = tmp_path / "x.json"
    bogus.write_text('{"resourceType": "Patient"}')
    result = run_cli("render", str(bogus))
    assert result.exit_code == 2
    assert "not an evaluation" in result.stderr


def test_site_settings_change_the_written_orders(tmp_path: Path) -> None:
    settings = tmp_path / "site.yaml"
    settings.write_text("intent: order\nid_mode: put\n")
    evaluate_out(EXAMPLES_DIR / "p09-cycle-2.json", tmp_path / "out", "--site-settings", str(settings))
    bundle = json.loads((tmp_path / "out" / "p09-cycle-2" / "nhs-ta514" / "bundle.json").read_text())
    orders = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
    assert {o["resource"]["intent"] for o in orders} == {"order"}
    assert {o["request"]["method"] for o in orders} == {"PUT"}


def test_bad_site_settings_exit_3(tmp_path: Path) -> None:
    settings = tmp_path / "site.yaml"
    settings.write_text("intent: maybe\n")
    result = evaluate_out(
        EXAMPLES_DIR / "p09-cycle-2.json", tmp_path / "out", "--site-settings", str(settings)
    )
    assert result.exit_code == 3
    assert "intent" in result.stderr


@pytest.mark.parametrize("status", ["active"])
def test_an_exported_record_with_a_signed_order_is_honoured_offline(tmp_path: Path, status: str) -> None:
    """The input already holds our day-8 proposal, signed: the offline Bundle leaves it alone."""
    out = tmp_path / "out"
    evaluate_out(EXAMPLES_DIR / "p09-cycle-2.json", out)
    written = json.loads((out / "p09-cycle-2" / "nhs-ta514" / "bundle.json").read_text())
    day8 = next(
        e["resource"]
        for e in written["entry"]
        if e["resource"]["resourceType"] == "MedicationRequest"
        and e["resource"]["identifier"][0]["value"].endswith(".d8")
    )
    signed = {**day8, "id": "signed-8", "status": status, "meta": {"versionId": "2"}}
    signed["dosageInstruction"] = [{**day8["dosageInstruction"][0], "timing": {"event": ["2026-11-29"]}}]
    signed.pop("supportingInformation")
    record = json.loads((EXAMPLES_DIR / "p09-cycle-2.json").read_text())
    record["entry"].append({"fullUrl": "MedicationRequest/signed-8", "resource": signed})
    src = tmp_path / "exported.json"
    src.write_text(json.dumps(record))
    evaluate_out(src, tmp_path / "out2")
    bundle = json.loads((tmp_path / "out2" / "p09-cycle-2" / "nhs-ta514" / "bundle.json").read_text())
    resources = [e["resource"] for e in bundle["entry"]]
    orders = [r for r in resources if r["resourceType"] == "MedicationRequest"]
    assert not any(o["identifier"][0]["value"].endswith(".d8") for o in orders)
    issue = next(
        r
        for r in resources
        if r["resourceType"] == "DetectedIssue" and r["code"]["text"] == "superseded-active-order"
    )
    assert issue["implicated"] == [{"reference": "MedicationRequest/signed-8"}]
