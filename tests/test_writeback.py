"""Write-back resources from an evaluation (pure; no server): what a pharmacist's system receives."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import pytest

from adapter.api import evaluate_path
from adapter.input.validate import validation_error
from adapter.writeback.bundle import Existing, build_transaction, existing_from_resources
from adapter.writeback.keys import Key, content_hash
from adapter.writeback.settings import WriteSettings, load_settings
from tests.conftest import TODAY
from tests.support.make_examples import EXAMPLES_DIR

NOW = "2026-11-21T09:00:00Z"
SUMMARIES = {"html": "<!doctype html><title>s</title><p>summary</p>", "md": "# summary\n"}
SNOMED_IV = "47625008"


def evaluation(pid: str, variant: str = "nhs-ta514") -> dict[str, Any]:
    run = evaluate_path(EXAMPLES_DIR / f"{pid}.json", variant, TODAY)
    (result,) = run.results
    return result


def of_type(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def entry_for(bundle: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in bundle["entry"] if e["resource"] is resource)


@pytest.fixture(scope="module")
def p09() -> dict[str, Any]:
    return evaluation("p09-cycle-2")


def test_one_draft_proposal_per_planned_dose_with_the_dose_and_its_arithmetic(p09: dict[str, Any]) -> None:
    bundle = build_transaction(p09, SUMMARIES, NOW).bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    orders = of_type(bundle, "MedicationRequest")
    planned = p09["dose"]["doses"]
    assert len(orders) == len(planned) == 3
    for order, dose in zip(orders, planned, strict=True):
        assert order["status"] == "draft" and order["intent"] == "proposal"
        assert order["subject"] == {"reference": "Patient/p09-cycle-2"}
        assert order["authoredOn"] == NOW
        codes = {(c["system"], c["code"]) for c in order["medicationCodeableConcept"]["coding"]}
        assert ("http://www.whocc.no/atc", "L01FB01") in codes
        assert any(s == "http://www.nlm.nih.gov/research/umls/rxnorm" for s, _ in codes)
        (dosage,) = order["dosageInstruction"]
        assert dosage["timing"]["event"] == [dose["date"]]
        assert dosage["route"]["coding"][0]["code"] == SNOMED_IV
        (rate,) = dosage["doseAndRate"]
        assert rate["type"]["coding"][0]["code"] == "calculated"
        assert rate["doseQuantity"] == {
            "value": dose["mg"],
            "unit": "mg",
            "system": "http://unitsofmeasure.org",
            "code": "mg",
        }
        assert rate["rateQuantity"]["value"] == 50 and rate["rateQuantity"]["code"] == "mL/h"
        assert dosage["text"].startswith(
            "0.5 mg/m² × 2.00 m² = 1.00 mg IV over 60 min in 50 mL sodium chloride 0.9%"
        )
        assert f"day {dose['day']} on {dose['date']}" in dosage["text"]
        assert order["dispenseRequest"]["quantity"] == {"value": dose["vials"], "unit": "vial"}
        basis = order["extension"][0]
        assert basis["url"] == "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-normalization-basis"
        assert basis["valueCodeableConcept"]["coding"][0]["code"] == "301898006"
        assert order["reasonReference"] == [{"reference": "Condition/p09-cycle-2-cond-1"}]
        assert order["instantiatesUri"] == ["https://fhir.ino-adapter.org/protocol/nhs-ta514"]
    # one cycle group; one identifier per dose, naming cycle and day
    assert len({o["groupIdentifier"]["value"] for o in orders}) == 1
    assert orders[0]["groupIdentifier"]["value"].endswith(".nhs-ta514.c2")
    assert [o["identifier"][0]["value"].rsplit(".", 2)[-2:] for o in orders] == [
        ["c2", "d1"],
        ["c2", "d8"],
        ["c2", "d15"],
    ]


def test_the_bsa_observation_and_every_input_observation_support_the_order(p09: dict[str, Any]) -> None:
    bundle = build_transaction(p09, SUMMARIES, NOW).bundle
    (bsa,) = of_type(bundle, "Observation")
    assert bsa["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "8277-6",
        "display": "Body surface area",
    }
    assert bsa["valueQuantity"] == {
        "value": 2.0,
        "unit": "m2",
        "system": "http://unitsofmeasure.org",
        "code": "m2",
    }
    inputs = p09["dose"]["bsa_inputs"]
    assert [d["reference"] for d in bsa["derivedFrom"]] == [inputs["weight"], inputs["height"]]
    bsa_url = entry_for(bundle, bsa)["fullUrl"]
    # on treatment, the start-only criteria's evidence (results at the start) decides nothing
    at_start = {e for c in p09["eligibility"]["criteria"] for e in c.get("at_start", {}).get("evidence", [])}
    assert any("neutrophils" in r for r in at_start)
    for order in of_type(bundle, "MedicationRequest"):
        refs = [r["reference"] for r in order["supportingInformation"]]
        assert {inputs["weight"], inputs["height"], bsa_url} <= set(refs)
        assert not at_start & set(refs)
    # before the first dose the criteria decide: their observations support the order
    first = evaluation("p01-ph-neg-relapse")
    for order in of_type(build_transaction(first, SUMMARIES, NOW).bundle, "MedicationRequest"):
        refs = [r["reference"] for r in order["supportingInformation"]]
        assert any("neutrophils" in r for r in refs) and any("bilirubin" in r for r in refs)


def test_intent_order_for_sites_that_sign_drafts_as_orders(p09: dict[str, Any]) -> None:
    bundle = build_transaction(p09, SUMMARIES, NOW, WriteSettings(intent="order")).bundle
    assert {o["intent"] for o in of_type(bundle, "MedicationRequest")} == {"order"}
    assert {o["status"] for o in of_type(bundle, "MedicationRequest")} == {
        "draft"
    }  # still a proposal to sign


def test_premedication_proposals_only_when_the_site_asks(p09: dict[str, Any]) -> None:
    plain = of_type(build_transaction(p09, SUMMARIES, NOW).bundle, "MedicationRequest")
    with_premed = of_type(
        build_transaction(p09, SUMMARIES, NOW, WriteSettings(premedication=True)).bundle, "MedicationRequest"
    )
    premeds = [m for m in with_premed if "premedication" in m["identifier"][0]["system"]]
    assert len(plain) == 3
    assert len(premeds) == 3 * len(p09["dose"]["premedication"]) > 0
    assert {m["status"] for m in premeds} == {"draft"}
    assert premeds[0]["medicationCodeableConcept"]["text"] == p09["dose"]["premedication"][0]["text"]


def test_every_entry_is_a_conditional_create_on_its_business_identifier(p09: dict[str, Any]) -> None:
    bundle = build_transaction(p09, SUMMARIES, NOW).bundle
    for entry in bundle["entry"]:
        request, resource = entry["request"], entry["resource"]
        assert request["method"] == "POST" and request["url"] == resource["resourceType"]
        assert entry["fullUrl"].startswith("urn:uuid:")
        if resource["resourceType"] == "Provenance":
            tag = resource["meta"]["tag"][0]
            assert request["ifNoneExist"] == f"_tag={tag['system']}|{tag['code']}"
        else:
            ident = resource["identifier"][0]
            assert request["ifNoneExist"] == f"identifier={ident['system']}|{ident['value']}"
        assert "id" not in resource


def test_the_bundle_is_deterministic_and_only_timestamps_follow_the_clock(p09: dict[str, Any]) -> None:
    first = build_transaction(p09, SUMMARIES, NOW).bundle
    again = build_transaction(copy.deepcopy(p09), SUMMARIES, NOW).bundle
    later = build_transaction(p09, SUMMARIES, "2026-11-21T17:45:00Z").bundle
    assert first == again
    assert [e["fullUrl"] for e in first["entry"]] == [e["fullUrl"] for e in later["entry"]]
    assert [content_hash(e["resource"]) for e in first["entry"]] == [
        content_hash(e["resource"]) for e in later["entry"]
    ]


def test_put_mode_uses_deterministic_client_ids_and_refers_by_them(p09: dict[str, Any]) -> None:
    bundle = build_transaction(p09, SUMMARIES, NOW, WriteSettings(id_mode="put")).bundle
    ids = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        assert resource["id"].startswith("ino-") and len(resource["id"]) <= 64
        ids.add(f"{resource['resourceType']}/{resource['id']}")
    (bsa,) = of_type(bundle, "Observation")
    order = of_type(bundle, "MedicationRequest")[0]
    assert {"reference": f"Observation/{bsa['id']}"} in order["supportingInformation"]
    (prov,) = of_type(bundle, "Provenance")
    assert {t["reference"] for t in prov["target"]} <= ids
    assert build_transaction(p09, SUMMARIES, NOW, WriteSettings(id_mode="put")).bundle == bundle


def test_provenance_names_the_adapter_the_rules_and_what_was_used(p09: dict[str, Any]) -> None:
    bundle = build_transaction(p09, SUMMARIES, NOW).bundle
    (prov,) = of_type(bundle, "Provenance")
    (device,) = of_type(bundle, "Device")
    device_url = entry_for(bundle, device)["fullUrl"]
    targets = {t["reference"] for t in prov["target"]}
    written = {
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] not in ("Provenance", "Device")
    }
    assert targets == written
    assert prov["recorded"] == NOW
    assert prov["agent"][0]["who"]["reference"] == device_url
    assert device["version"][0]["value"] in prov["agent"][0]["who"]["display"]
    ruleset = p09["ruleset"]
    assert any(
        ruleset["digest"] in p and ruleset["version"] in p and "nhs-ta514" in p for p in prov["policy"]
    )
    entities = [e["what"]["reference"] for e in prov["entity"]]
    assert entities[0] == "Patient/p09-cycle-2"
    assert p09["dose"]["bsa_inputs"]["weight"] in entities
    assert {e["role"] for e in prov["entity"]} == {"source"}


def test_the_summary_document_carries_both_renderings_with_their_sha1(p09: dict[str, Any]) -> None:
    bundle = build_transaction(p09, SUMMARIES, NOW).bundle
    (doc,) = of_type(bundle, "DocumentReference")
    assert doc["status"] == "current" and doc["subject"] == {"reference": "Patient/p09-cycle-2"}
    assert doc["type"]["coding"][0]["code"] == "18776-5" and doc["category"]
    assert doc["date"] == NOW
    by_type = {c["attachment"]["contentType"].split(";")[0]: c["attachment"] for c in doc["content"]}
    assert set(by_type) == {"text/html", "text/markdown"}
    for kind, text in (("text/html", SUMMARIES["html"]), ("text/markdown", SUMMARIES["md"])):
        att = by_type[kind]
        raw = base64.b64decode(att["data"])
        assert raw.decode() == text and att["size"] == len(raw)
        assert att["hash"] == base64.b64encode(hashlib.sha1(raw).digest()).decode()
    orders = {entry_for(bundle, o)["fullUrl"] for o in of_type(bundle, "MedicationRequest")}
    assert {r["reference"] for r in doc["context"]["related"]} == orders


def test_not_eligible_writes_no_order_but_an_issue_per_failed_criterion() -> None:
    ev = evaluation("p04-prior-vod")
    bundle = build_transaction(ev, SUMMARIES, NOW).bundle
    assert of_type(bundle, "MedicationRequest") == [] and of_type(bundle, "Observation") == []
    issues = of_type(bundle, "DetectedIssue")
    not_met = [c for c in ev["eligibility"]["criteria"] if c["status"] == "not-met"]
    assert not_met
    for c in not_met:
        issue = next(i for i in issues if i["code"]["text"] == c["id"])
        assert issue["severity"] == "high" and issue["status"] == "preliminary"
        assert c["reason"] in issue["detail"] and c["source"] in issue["detail"]
        assert {r["reference"] for r in issue["implicated"]} >= set(c["evidence"])
        assert issue["patient"] == {"reference": ev["patient"]}
    stop = next(i for i in issues if i["code"]["text"] == "eligibility")
    assert stop["severity"] == "high"
    assert {c["code"] for c in stop["code"]["coding"]} >= {"eligibility"}


def test_insufficient_data_writes_no_order_and_moderate_issues_for_what_is_missing() -> None:
    ev = evaluation("p05-incomplete")
    bundle = build_transaction(ev, SUMMARIES, NOW).bundle
    assert of_type(bundle, "MedicationRequest") == []
    issues = {i["code"]["text"]: i for i in of_type(bundle, "DetectedIssue")}
    assert issues["bsa-unknown"]["severity"] == "moderate"
    assert issues["bsa-unknown"]["code"]["coding"][0]["code"] == "DOSE"
    unknown = [c["id"] for c in ev["eligibility"]["criteria"] if c["status"] == "unknown"]
    assert unknown and all(issues[cid]["severity"] == "moderate" for cid in unknown)


def test_review_orders_say_authorisation_is_required() -> None:
    ev = evaluation("p03-hepatic-review")
    assert ev["dose"]["action"] == "review"
    orders = of_type(build_transaction(ev, SUMMARIES, NOW).bundle, "MedicationRequest")
    assert orders and all(
        any(n["text"].startswith("Prescriber authorisation required") for n in o["note"]) for o in orders
    )


def test_on_treatment_criteria_do_not_raise_issues(p09: dict[str, Any]) -> None:
    ev = evaluation("p09-cycle-2", "mdacc-low-dose")
    assert ev["dose"]["treatment_started"] and ev["eligibility"]["treatment_started_on"] == "2026-10-31"
    # a start-only criterion not met at the start, and a continuing one failing now: still no issue
    criteria = {c["id"]: c for c in ev["eligibility"]["criteria"]}
    criteria["monoclonal-antibody-2-weeks"]["at_start"]["status"] = "not-met"
    criteria["all-diagnosis"]["status"] = "review"
    issues = of_type(build_transaction(ev, SUMMARIES, NOW).bundle, "DetectedIssue")
    assert not any(i["code"]["text"] in criteria for i in issues)


def test_a_not_applicable_criterion_never_raises_an_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if the evaluation says treatment has not started (a hand-edited or inconsistent one),
    or a site maps the not-applicable status to a severity."""
    import adapter.writeback.bundle as bundle_mod
    from adapter.writeback.codes import load_codes

    codes = load_codes()
    issue_codes = codes.detected_issue.model_copy(
        update={"criterion_severity": {**codes.detected_issue.criterion_severity, "not-applicable": "low"}}
    )
    monkeypatch.setattr(
        bundle_mod, "load_codes", lambda: codes.model_copy(update={"detected_issue": issue_codes})
    )
    ev = evaluation("p09-cycle-2", "mdacc-low-dose")
    ev["dose"]["treatment_started"] = False
    ev["eligibility"]["treatment_started_on"] = None
    next(c for c in ev["eligibility"]["criteria"] if c["id"] == "all-diagnosis")["status"] = "not-met"
    bundle = build_transaction(ev, SUMMARIES, NOW).bundle
    raised = {i["code"]["text"] for i in of_type(bundle, "DetectedIssue")}
    assert "all-diagnosis" in raised  # criteria are checked: treatment is taken as not started
    assert not raised & {c["id"] for c in ev["eligibility"]["criteria"] if c["status"] == "not-applicable"}


def test_doses_on_a_non_dose_action_are_refused(p09: dict[str, Any]) -> None:
    tampered = copy.deepcopy(p09)
    tampered["dose"]["action"] = "insufficient-data"
    with pytest.raises(ValueError, match="refusing"):
        build_transaction(tampered, SUMMARIES, NOW)


# -- what already exists -------------------------------------------------------------------------
def _as_stored(bundle: dict[str, Any], version: str = "1", status: str | None = None) -> list[dict[str, Any]]:
    """The bundle's resources as a server would hold them after applying it."""
    stored = []
    for n, entry in enumerate(bundle["entry"]):
        resource = copy.deepcopy(entry["resource"])
        resource["id"] = f"srv{n}"
        resource["meta"] = {**resource.get("meta", {}), "versionId": version}
        if status and resource["resourceType"] == "MedicationRequest":
            resource["status"] = status
        stored.append(resource)
    # server-side references point at server ids, as after a real transaction
    urls = {
        e["fullUrl"]: f"{r['resourceType']}/{r['id']}" for e, r in zip(bundle["entry"], stored, strict=True)
    }
    text = json.dumps(stored)
    for url, ref in urls.items():
        text = text.replace(url, ref)
    out: list[dict[str, Any]] = json.loads(text)
    return out


def test_replay_against_what_exists_sends_nothing(p09: dict[str, Any]) -> None:
    first = build_transaction(p09, SUMMARIES, NOW).bundle
    existing = existing_from_resources(_as_stored(first))
    replay = build_transaction(p09, SUMMARIES, "2026-11-22T08:00:00Z", existing=existing)
    assert replay.bundle["entry"] == []
    assert replay.created == [] and replay.updated == [] and len(replay.unchanged) == len(first["entry"]) - 1


def test_a_changed_draft_is_updated_with_if_match_on_its_version(p09: dict[str, Any]) -> None:
    first = build_transaction(p09, SUMMARIES, NOW).bundle
    existing = existing_from_resources(_as_stored(first, version="3"))
    changed = copy.deepcopy(p09)
    changed["dose"]["doses"][1]["mg"] = 0.9  # a new evaluation plans a different day-8 dose
    plan = build_transaction(changed, SUMMARIES, NOW, existing=existing)
    puts = [e for e in plan.bundle["entry"] if e["request"]["method"] == "PUT"]
    day8 = next(e for e in puts if e["resource"]["resourceType"] == "MedicationRequest")
    assert day8["request"]["ifMatch"] == 'W/"3"'
    assert day8["request"]["url"] == f"MedicationRequest/{day8['resource']['id']}"
    assert day8["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 0.9
    assert day8["resource"]["identifier"][0]["value"].endswith(".c2.d8")
    # the unchanged day-1 and day-15 proposals are not resent
    assert sum(1 for e in puts if e["resource"]["resourceType"] == "MedicationRequest") == 1
    (prov,) = of_type(plan.bundle, "Provenance")
    assert {"reference": day8["request"]["url"]} in prov["target"]


@pytest.mark.parametrize("status", ["active", "on-hold"])
def test_a_signed_order_is_never_touched_and_an_issue_says_the_plan_differs(
    p09: dict[str, Any], status: str
) -> None:
    first = build_transaction(p09, SUMMARIES, NOW).bundle
    stored = _as_stored(first, status=status)
    existing = existing_from_resources(stored)
    changed = copy.deepcopy(p09)
    changed["dose"]["doses"][0]["mg"] = 0.9
    plan = build_transaction(changed, SUMMARIES, NOW, existing=existing)
    assert not any(e["resource"]["resourceType"] == "MedicationRequest" for e in plan.bundle["entry"])
    assert any(status in n for n in plan.not_touched)
    (issue,) = [
        i for i in of_type(plan.bundle, "DetectedIssue") if i["code"]["text"] == "superseded-active-order"
    ]
    signed = next(r for r in stored if r["resourceType"] == "MedicationRequest")
    assert issue["implicated"] == [{"reference": f"MedicationRequest/{signed['id']}"}]
    assert issue["severity"] == "high" and "0.90 mg" in issue["detail"]


def test_a_signed_order_that_matches_the_plan_raises_nothing(p09: dict[str, Any]) -> None:
    first = build_transaction(p09, SUMMARIES, NOW).bundle
    plan = build_transaction(
        p09, SUMMARIES, NOW, existing=existing_from_resources(_as_stored(first, status="active"))
    )
    assert plan.bundle["entry"] == []


def test_a_changed_draft_without_a_known_version_is_not_overwritten(p09: dict[str, Any]) -> None:
    first = build_transaction(p09, SUMMARIES, NOW).bundle
    stored = _as_stored(first)
    for r in stored:
        r.pop("meta")
    changed = copy.deepcopy(p09)
    changed["dose"]["doses"][0]["mg"] = 0.9
    plan = build_transaction(changed, SUMMARIES, NOW, existing=existing_from_resources(stored))
    assert not any(e["resource"]["resourceType"] == "MedicationRequest" for e in plan.bundle["entry"])
    assert any("version is unknown" in n for n in plan.not_touched)


def test_existing_index_reads_only_our_identifiers() -> None:
    foreign = {
        "resourceType": "MedicationRequest",
        "id": "x",
        "identifier": [{"system": "urn:h", "value": "1"}],
    }
    ours = {
        "resourceType": "MedicationRequest",
        "id": "y",
        "status": "draft",
        "meta": {"versionId": "7"},
        "identifier": [{"system": "https://fhir.ino-adapter.org/identifier/dose-proposal", "value": "k"}],
    }
    index = existing_from_resources([foreign, ours])
    assert index == {
        Key("https://fhir.ino-adapter.org/identifier/dose-proposal", "k"): Existing(
            "MedicationRequest/y", "draft", 'W/"7"', ours
        )
    }


# -- validity ------------------------------------------------------------------------------------
VARIANTS = ["fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose"]
PIDS = sorted(p.stem for p in EXAMPLES_DIR.glob("p*.json"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_resource_written_for_every_example_is_valid_r4b(variant: str) -> None:
    for pid in PIDS:
        bundle = build_transaction(
            evaluation(pid, variant), SUMMARIES, NOW, WriteSettings(premedication=True)
        ).bundle
        assert validation_error(bundle) is None, pid
        for entry in bundle["entry"]:
            assert validation_error(entry["resource"]) is None, (pid, entry["resource"]["resourceType"])


def test_site_settings_reject_unknown_keys(tmp_path: Any) -> None:
    from adapter.errors import MappingTableError

    good = tmp_path / "site.yaml"
    good.write_text("intent: order\nid_mode: put\npremedication: true\n")
    assert load_settings(good) == WriteSettings(intent="order", id_mode="put", premedication=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("intnet: order\n")
    with pytest.raises(MappingTableError, match="intnet"):
        load_settings(bad)


def test_every_resource_written_for_every_example_passes_the_r4_structure_definitions(
    r4_validator: Any,
) -> None:
    """HL7 R4 StructureDefinitions (cardinality, required elements, types, required bindings)
    through @medplum/core, offline: all examples × variants in one batch, in both id modes."""
    from tests.support.r4_validator import errors, format_issues

    bundles = [
        build_transaction(
            evaluation(pid, variant), SUMMARIES, NOW, WriteSettings(premedication=True, id_mode=mode)
        ).bundle
        for pid in PIDS
        for variant in VARIANTS
        for mode in ("conditional", "put")
    ]
    assert sum(len(b["entry"]) for b in bundles) > 200
    issues = r4_validator(bundles)
    assert not errors(issues), format_issues(errors(issues))
    assert not issues, format_issues(issues)  # no warnings either
