"""Eligibility once treatment has started (issue #9): start-only and continuing criteria.

Once the first inotuzumab dose has been given, a start-only criterion (baseline results, washouts,
history) is reported ``not-applicable`` with its result on the day of the first dose (``at_start``,
judged without the drug's own records); only the continuing criteria (input integrity, the
diagnosis) decide the overall status. Dates: cycle 1 day 1 was 21 days before 2026-11-21, on
2026-10-31.
"""

from __future__ import annotations

import copy
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter import protocols
from adapter.api import evaluate_resources, map_resources
from adapter.domain import PatientRecord
from adapter.dosing.history import DRUG
from adapter.eligibility.engine import evaluate_eligibility, without_drug
from adapter.eligibility.results import Overall, Status, overall
from adapter.errors import MappingTableError
from adapter.input.reader import read_resources
from adapter.protocols import PHASES, VARIANTS, load_variant
from adapter.render_text import render_text
from tests.support.synth import PatientBuilder
from tests.support.treatment import dosing_patient, give, pre_dose_labs

TODAY = date(2026, 11, 21)
START = 21  # days ago
STARTED_ON = (TODAY - timedelta(days=START)).isoformat()  # 2026-10-31
C1 = [(0, 1.6), (7, 1.0), (14, 1.0)]
CONTINUING = {"input-integrity", "alive", "b-all-diagnosis", "all-diagnosis"}


def on_treatment() -> PatientBuilder:
    """Pre-treatment work-up before cycle 1 (given 21 days ago) and fresh pre-dose labs today."""
    b = dosing_patient("p", TODAY, START)
    give(b, START, C1)
    return pre_dose_labs(b)


def evaluate(b: PatientBuilder, variant: str, as_of: date = TODAY) -> dict[str, Any]:
    (result,) = evaluate_resources(b.resources, variant, as_of).results
    return result


def by_id(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in result["eligibility"]["criteria"]}


def record_of(b: PatientBuilder) -> PatientRecord:
    (record,) = map_resources(read_resources(b.resources).resources, (), True).records
    return record


# -- the variant files --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_criterion_has_a_phase_and_only_integrity_alive_and_diagnosis_continue(variant: str) -> None:
    specs = load_variant(variant).criteria
    assert all(s.phase in PHASES for s in specs)
    continuing = {s.id for s in specs if s.phase == "continuing"}
    assert continuing == {s.id for s in specs if s.rule in ("input_integrity", "alive", "diagnosis_present")}
    assert continuing <= CONTINUING and {"input-integrity", "alive"} <= continuing and len(continuing) == 3


def _load_edited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Any) -> None:
    doc = yaml.safe_load((protocols.PROTOCOLS_DIR / "nhs-ta514.yaml").read_text(encoding="utf-8"))
    edit(next(c for c in doc["criteria"] if c["id"] == "relapsed-or-refractory"))
    (tmp_path / "nhs-ta514.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    monkeypatch.setattr(protocols, "PROTOCOLS_DIR", tmp_path)
    load_variant.__wrapped__("nhs-ta514")  # bypass the cache: the shipped files stay loaded


def test_the_loader_rejects_a_missing_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MappingTableError, match="relapsed-or-refractory: no phase"):
        _load_edited(tmp_path, monkeypatch, lambda c: c.pop("phase"))


def test_the_loader_rejects_an_unknown_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MappingTableError, match="unknown phase 'always'"):
        _load_edited(tmp_path, monkeypatch, lambda c: c.update(phase="always"))


def test_the_loader_accepts_the_shipped_files_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _load_edited(tmp_path, monkeypatch, lambda c: None)


# -- on treatment -------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_on_treatment_no_start_only_criterion_counts(variant: str) -> None:
    result = evaluate(on_treatment(), variant)
    e = result["eligibility"]
    assert e["treatment_started_on"] == STARTED_ON
    assert e["status"] == "eligible"  # the continuing criteria are met; stale baselines no longer count
    assert result["dose"]["action"] != "not-eligible"
    for c in e["criteria"]:
        if c["phase"] == "continuing":
            assert c["id"] in CONTINUING and c["status"] == "met" and "at_start" not in c, c
            continue
        assert c["status"] == "not-applicable", c
        at = c["at_start"]
        assert set(at) == {"as_of", "status", "reason", "evidence"}
        assert at["as_of"] == STARTED_ON
        assert at["status"] == "met", c  # the work-up before cycle 1 met every criterion
        assert c["evidence"] == at["evidence"]
        assert (
            c["reason"]
            == f"start-only criterion: treatment started on {STARTED_ON} (at start: met: {at['reason']})"
        )


def test_mdacc_antibody_washout_does_not_see_inotuzumab_itself() -> None:
    """Inotuzumab is a monoclonal antibody (ATC L01F): judged as of today, MD Anderson's two-week
    antibody washout would catch the doses of cycle 1."""
    b = on_treatment()
    b.administration(0, 1.2)  # today's dose, recorded already
    result = evaluate(b, "mdacc-low-dose")
    washout = by_id(result)["monoclonal-antibody-2-weeks"]
    assert washout["status"] == "not-applicable"
    assert washout["at_start"]["status"] == "met"
    assert washout["at_start"]["evidence"] == []  # no inotuzumab record cited
    assert "inotuzumab" not in washout["reason"]
    assert result["eligibility"]["status"] == "eligible"


def test_another_antibody_before_the_start_is_still_seen_at_start() -> None:
    b = on_treatment()
    rituximab = b.medication("MedicationAdministration", "L01FA01", "rituximab", START + 5)
    result = evaluate(b, "mdacc-low-dose")
    washout = by_id(result)["monoclonal-antibody-2-weeks"]
    assert washout["status"] == "not-applicable"
    assert washout["at_start"]["status"] == "not-met"
    assert washout["at_start"]["evidence"] == [f"MedicationAdministration/{rituximab['id']}"]
    assert "at start: not-met: monoclonal antibody therapy within 14 days" in washout["reason"]
    assert result["eligibility"]["status"] == "eligible"  # the continuing criteria decide


def test_a_start_only_criterion_not_met_at_start_does_not_drive_overall() -> None:
    b = on_treatment()
    b.medication("MedicationAdministration", "L01CA02", "vincristine", START + 5)  # 5 days before start
    result = evaluate(b, "mdacc-low-dose")
    chemo = by_id(result)["chemotherapy-2-weeks"]
    assert chemo["status"] == "not-applicable"
    assert chemo["at_start"]["status"] == "not-met"
    assert result["eligibility"]["status"] == "eligible"
    # the same patient before the first dose: the washout decides
    before = evaluate(b, "mdacc-low-dose", TODAY - timedelta(days=START + 1))
    assert before["eligibility"]["treatment_started_on"] is None
    assert by_id(before)["chemotherapy-2-weeks"]["status"] == "not-met"
    assert before["eligibility"]["status"] == "ineligible"


def test_at_start_results_use_the_results_of_the_start_not_of_today() -> None:
    b = on_treatment()
    b.lab("platelets", 30, days_ago=START)  # on the first dose day, before the dose
    c = by_id(evaluate(b, "nhs-ta514"))["platelets"]
    assert c["at_start"]["status"] == "review" and f"on {STARTED_ON}" in c["at_start"]["reason"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_input_integrity_continues_an_unreadable_resource_makes_overall_insufficient(variant: str) -> None:
    b = on_treatment()
    bad = b.lab("platelets", 100, days_ago=3)
    bad["valueQuantity"]["value"] = "twelve"
    result = evaluate(b, variant)
    integrity = by_id(result)["input-integrity"]
    assert integrity["phase"] == "continuing" and integrity["status"] == "unknown"
    assert "not valid FHIR R4" in integrity["reason"] and "at_start" not in integrity
    assert result["eligibility"]["status"] == "insufficient-data"


def test_the_diagnosis_continues() -> None:
    b = on_treatment()
    b.resources = [r for r in b.resources if r["resourceType"] != "Condition"]
    result = evaluate(b, "fda-label")
    assert by_id(result)["b-all-diagnosis"]["status"] == "not-met"
    assert result["eligibility"]["status"] == "ineligible"


# -- before the first dose ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_before_the_first_dose_nothing_changes(variant: str) -> None:
    b = dosing_patient("p", TODAY, 0)  # work-up done, no dose yet
    result = evaluate(b, variant)
    e = result["eligibility"]
    assert e["treatment_started_on"] is None
    assert e["status"] == "eligible"
    for c in e["criteria"]:
        assert c["phase"] == ("continuing" if c["id"] in CONTINUING else "start")
        assert c["status"] == "met" and "at_start" not in c, c
    record, spec = record_of(b), load_variant(variant)
    plain = evaluate_eligibility(record, spec, TODAY)
    assert plain.started_on is None and all(c.at_start is None for c in plain.criteria)
    assert evaluate_eligibility(record, spec, TODAY, None) == plain
    # a start after the as-of date (a planned dose) is not a start
    assert evaluate_eligibility(record, spec, TODAY, TODAY + timedelta(days=1)) == plain


def test_a_dose_after_the_as_of_date_does_not_start_treatment() -> None:
    b = on_treatment()
    result = evaluate(b, "nhs-ta514", TODAY - timedelta(days=START + 1))
    assert result["eligibility"]["treatment_started_on"] is None
    assert all("at_start" not in c for c in result["eligibility"]["criteria"])


def test_started_on_the_as_of_date_itself() -> None:
    b = dosing_patient("p", TODAY, 0)
    give(b, 0, [(0, 1.6)])
    e = evaluate(b, "mdacc-low-dose")["eligibility"]
    assert e["treatment_started_on"] == TODAY.isoformat()
    washout = next(c for c in e["criteria"] if c["id"] == "monoclonal-antibody-2-weeks")
    assert washout["at_start"]["status"] == "met"


# -- the engine ---------------------------------------------------------------------------------
def test_the_at_start_view_leaves_the_record_alone() -> None:
    b = on_treatment()
    b.medication("MedicationStatement", "L01FA01", "rituximab", 200, end_days_ago=190)
    record = record_of(b)
    before = copy.deepcopy(record.exposures)
    own = {e.ref for e in record.exposures[DRUG]}
    assert own and any(e.ref in own for e in record.exposures["monoclonal-antibody"])
    view = without_drug(record)
    assert record.exposures == before  # not mutated
    assert DRUG not in view.exposures
    assert not any(e.ref in own for items in view.exposures.values() for e in items)
    assert [e.display for e in view.exposures["monoclonal-antibody"]] == ["rituximab"]
    assert view.readings is record.readings and view.conditions is record.conditions  # shallow
    assert without_drug(record_of(dosing_patient("q", TODAY, 0))).exposures == {}


def test_engine_started_on_fills_at_start_and_eligibility() -> None:
    record, spec = record_of(on_treatment()), load_variant("mdacc-low-dose")
    started = TODAY - timedelta(days=START)
    e = evaluate_eligibility(record, spec, TODAY, started)
    assert e.started_on == started and e.status is Overall.ELIGIBLE
    for c, s in zip(e.criteria, spec.criteria, strict=True):
        assert c.phase == s.phase
        if s.phase == "start":
            assert c.status is Status.NOT_APPLICABLE and c.at_start is not None
            assert c.at_start.as_of == started and c.at_start.status is Status.MET
        else:
            assert c.status is Status.MET and c.at_start is None
    # judged as of today, the washout still never sees inotuzumab itself (its own records are no
    # prior therapy), though the start-only criteria then judge today's (stale) baseline
    today = evaluate_eligibility(record, spec, TODAY)
    washout = next(c for c in today.criteria if c.id == "monoclonal-antibody-2-weeks")
    assert washout.status is Status.MET


def test_overall_ignores_not_applicable() -> None:
    na = Status.NOT_APPLICABLE
    assert overall([Status.MET, na, na]) is Overall.ELIGIBLE
    assert overall([Status.REVIEW, na]) is Overall.NEEDS_REVIEW
    assert overall([Status.UNKNOWN, na, Status.REVIEW]) is Overall.INSUFFICIENT_DATA
    assert overall([Status.NOT_MET, na]) is Overall.INELIGIBLE


# -- text output ----------------------------------------------------------------------------------
def test_text_output_marks_start_only_criteria_at_start() -> None:
    b = on_treatment()
    b.medication("MedicationAdministration", "L01CA02", "vincristine", START + 5)
    text = render_text([evaluate(b, "mdacc-low-dose")])
    assert f"ELIGIBLE (treatment started on {STARTED_ON}: start-only criteria shown at start)" in text
    assert f"  [n/a]     monoclonal-antibody-2-weeks: at start ({STARTED_ON}): met\n" in text
    assert (
        f"  [n/a]     chemotherapy-2-weeks: at start ({STARTED_ON}): not-met: cancer chemotherapy within"
        in text
    )
    assert "  [met]     all-diagnosis: " in text
    fresh = render_text([evaluate(dosing_patient("q", TODAY, 0), "mdacc-low-dose")])
    assert "[n/a]" not in fresh and "at start" not in fresh
