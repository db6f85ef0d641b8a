"""check-order: an inotuzumab MedicationRequest written by someone else, against the plan."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import cli
from adapter.api import check_order_path
from tests.support.synth import ICD10, PatientBuilder
from tests.support.treatment import dosing_patient, give, pre_dose_labs

TODAY = date(2026, 11, 21)


def on_day_8(**labs: Any) -> PatientBuilder:
    b = dosing_patient("o", TODAY, 7)
    give(b, 7, [(0, 1.6)])
    return pre_dose_labs(b, **labs)


def files(tmp_path: Path, b: PatientBuilder, order: dict[str, Any]) -> tuple[Path, Path]:
    b.resources.remove(order)
    ctx, o = tmp_path / "context.json", tmp_path / "order.json"
    ctx.write_text(json.dumps(b.bundle()))
    o.write_text(json.dumps(order))
    return o, ctx


def check(
    tmp_path: Path, b: PatientBuilder, order: dict[str, Any], variant: str = "nhs-ta514"
) -> dict[str, Any]:
    o, ctx = files(tmp_path, b, order)
    return check_order_path(o, ctx, variant)


def ids(result: dict[str, Any], severity: str) -> set[str]:
    return {f["id"] for f in result["findings"] if f["severity"] == severity}


def test_correct_order_agrees(tmp_path: Path) -> None:
    b = on_day_8()
    r = check(tmp_path, b, b.inotuzumab_order(0, 1.0))
    assert r["verdict"] == "info" and "order-agrees" in ids(r, "info")
    assert r["order_date"] == "2026-11-21" and r["plan"]["action"] == "administer"


@pytest.mark.parametrize(
    ("mg", "verdict"), [(1.09, "info"), (0.91, "info"), (1.11, "critical"), (0.8, "critical")]
)
def test_dose_tolerance_is_10_percent(tmp_path: Path, mg: float, verdict: str) -> None:
    b = on_day_8()
    r = check(tmp_path, b, b.inotuzumab_order(0, mg))
    assert r["verdict"] == verdict
    if verdict == "critical":
        assert "dose-mismatch" in ids(r, "critical")


def test_order_in_mg_per_m2_is_compared_per_m2(tmp_path: Path) -> None:
    b = on_day_8()
    r = check(tmp_path, b, b.inotuzumab_order(0, 0.8, unit="mg/m2"))  # day 8 is 0.5 mg/m²
    assert "dose-mismatch" in ids(r, "critical")


def test_order_too_soon_after_the_last_dose(tmp_path: Path) -> None:
    b = on_day_8()
    r = check(tmp_path, b, b.inotuzumab_order(4, 1.0))  # 3 days after day 1
    assert r["verdict"] == "critical" and {"too-soon", "next-dose-not-due"} <= ids(r, "critical")


def test_order_when_treatment_must_stop(tmp_path: Path) -> None:
    b = on_day_8()
    b.condition(ICD10, "K76.5", "Hepatic veno-occlusive disease", onset_days_ago=2)
    r = check(tmp_path, b, b.inotuzumab_order(0, 1.0))
    assert {"vod", "plan-forbids-dose"} <= ids(r, "critical")


def test_order_with_stale_results_cannot_be_verified(tmp_path: Path) -> None:
    b = on_day_8()
    b.resources = [
        r for r in b.resources if not (r["resourceType"] == "Observation" and "2026-11-21" in str(r))
    ]
    b.lab("body-weight", 80, days_ago=0)
    b.lab("body-height", 180, days_ago=0)
    pre_dose_labs(b, days_ago=3)
    r = check(tmp_path, b, b.inotuzumab_order(0, 1.0))
    assert r["verdict"] == "warning" and "hepatic-labs-unknown" in ids(r, "warning")


def test_order_for_another_drug_is_critical(tmp_path: Path) -> None:
    b = on_day_8()
    order = b.inotuzumab_order(0, 1.0)
    order["medicationCodeableConcept"]["coding"][0]["code"] = "L01XC05"  # gemtuzumab ozogamicin (legacy ATC)
    r = check(tmp_path, b, order)
    assert r["verdict"] == "critical" and "not-an-inotuzumab-order" in ids(r, "critical")


def test_order_whose_patient_is_not_in_the_context_is_bad_input(tmp_path: Path) -> None:
    b = on_day_8()
    order = b.inotuzumab_order(0, 1.0)
    order["subject"] = {"reference": "Patient/somebody-else"}
    o, ctx = files(tmp_path, b, order)
    result = CliRunner().invoke(cli.main, ["check-order", str(o), "--context", str(ctx), "-p", "nhs-ta514"])
    assert result.exit_code == 2 and "not in the context" in result.output


def test_cli_json_text_and_fail_on(tmp_path: Path) -> None:
    b = on_day_8()
    o, ctx = files(tmp_path, b, b.inotuzumab_order(0, 1.5))
    runner = CliRunner()
    base = ["check-order", str(o), "--context", str(ctx), "-p", "nhs-ta514"]
    out = runner.invoke(cli.main, base)
    assert out.exit_code == 0 and json.loads(out.output)["verdict"] == "critical"
    text = runner.invoke(cli.main, [*base, "--format", "text"])
    assert "CRITICAL" in text.output and "dose-mismatch" in text.output
    assert runner.invoke(cli.main, [*base, "--fail-on", "critical"]).exit_code == 4


def test_fail_on_does_not_trip_on_an_agreeing_order(tmp_path: Path) -> None:
    b = on_day_8()
    o, ctx = files(tmp_path, b, b.inotuzumab_order(0, 1.0))
    result = CliRunner().invoke(
        cli.main, ["check-order", str(o), "--context", str(ctx), "-p", "nhs-ta514", "--fail-on", "warning"]
    )
    assert result.exit_code == 0, result.output


def test_bundle_records_each_warning_or_critical_finding_on_the_order(tmp_path: Path) -> None:
    from adapter.writeback.bundle import build_check_transaction

    b = on_day_8()
    order = b.inotuzumab_order(0, 0.8)
    o, ctx = files(tmp_path, b, order)
    out = tmp_path / "issues.json"
    result = CliRunner().invoke(
        cli.main,
        ["check-order", str(o), "--context", str(ctx), "-p", "nhs-ta514", "--bundle", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    bundle = json.loads(out.read_text())
    issues = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DetectedIssue"]
    (mismatch,) = [i for i in issues if i["code"]["text"] == "dose-mismatch"]
    assert mismatch["severity"] == "high"
    assert mismatch["implicated"] == [{"reference": f"MedicationRequest/{order['id']}"}]
    assert "0.8 mg" in mismatch["detail"] and "planned 1.00 mg" in mismatch["detail"]
    assert not any(e["resource"]["resourceType"] == "MedicationRequest" for e in bundle["entry"])
    (prov,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert {"reference": f"MedicationRequest/{order['id']}"} in [x["what"] for x in prov["entity"]]
    # an order that agrees raises no issue, so nothing is written
    good = on_day_8()
    checked = check(tmp_path, good, good.inotuzumab_order(0, 1.0))
    assert build_check_transaction(checked, "2026-11-21T09:00:00Z").bundle["entry"] == []


def test_the_check_bundle_passes_the_r4_structure_definitions(tmp_path: Path, r4_validator: Any) -> None:
    from adapter.writeback.bundle import build_check_transaction
    from tests.support.r4_validator import format_issues

    b = on_day_8()
    checked = check(tmp_path, b, b.inotuzumab_order(0, 0.8))
    bundle = build_check_transaction(checked, "2026-11-21T09:00:00Z").bundle
    assert len(bundle["entry"]) == 3  # Device, DetectedIssue, Provenance
    issues = r4_validator(bundle)
    assert not issues, format_issues(issues)
