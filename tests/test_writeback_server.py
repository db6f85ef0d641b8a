"""Write-back against a real FHIR server (sekmet-fhir, started by tests/support/fhir_server.py).

The server is not mocked: replays, draft updates with If-Match and signed orders are checked on
what the server actually holds afterwards.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

import pytest

from adapter.api import evaluate_resources
from adapter.fhir.client import FhirClient, FhirPreconditionFailed
from adapter.writeback.apply import write_back
from adapter.writeback.bundle import build_transaction
from adapter.writeback.settings import WriteSettings
from tests.conftest import TODAY
from tests.support.make_examples import EXAMPLES_DIR

NOW = "2026-11-21T09:00:00Z"
SUMMARIES = {"html": "<!doctype html><title>s</title><p>summary</p>", "md": "# summary\n"}
WRITTEN_TYPES = (
    "Device",
    "Observation",
    "MedicationRequest",
    "DetectedIssue",
    "DocumentReference",
    "Provenance",
)


def _renamed(resources: list[dict[str, Any]], suffix: str) -> list[dict[str, Any]]:
    """The example patient under fresh ids, so that tests sharing one server do not meet."""
    text = (
        json.dumps(resources)
        .replace("p09-cycle-2", f"p09-{suffix}")
        .replace("p04-prior-vod", f"p04-{suffix}")
    )
    out: list[dict[str, Any]] = json.loads(text)
    return out


def load_example(name: str, suffix: str) -> list[dict[str, Any]]:
    bundle = json.loads((EXAMPLES_DIR / f"{name}.json").read_text())
    return _renamed([e["resource"] for e in bundle["entry"]], suffix)


def seed(client: FhirClient, resources: list[dict[str, Any]]) -> None:
    """Put the patient's record on the server under its own ids."""
    client.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                for r in resources
            ],
        }
    )


def evaluate(resources: list[dict[str, Any]], variant: str = "nhs-ta514") -> dict[str, Any]:
    (result,) = evaluate_resources(resources, variant, TODAY).results
    return result


def ours(client: FhirClient, patient: str) -> Counter[str]:
    """How many of each written type the server holds for this patient (ours are tagged/identified)."""
    counts: Counter[str] = Counter()
    for rtype, param in (
        ("MedicationRequest", "subject"),
        ("Observation", "subject"),
        ("DocumentReference", "subject"),
    ):
        for r in client.search(rtype, {param: patient, "_count": "100"}):
            if any("ino-adapter" in i.get("system", "") for i in r.get("identifier") or []):
                counts[rtype] += 1
    for r in client.search(
        "Provenance", {"_count": "1000"}
    ):  # its targets are ours, its entities the patient's
        if {"reference": patient} in [e["what"] for e in r.get("entity") or []]:
            counts["Provenance"] += 1
    tag = "https://fhir.ino-adapter.org/CodeSystem/write-key|"
    for r in client.search("DetectedIssue", {"_count": "1000"}):
        if r["patient"]["reference"] == patient and any(
            f"{t['system']}|" == tag for t in (r.get("meta") or {}).get("tag") or []
        ):
            counts["DetectedIssue"] += 1
    return counts


def proposals_by_day(client: FhirClient, patient: str) -> dict[str, dict[str, Any]]:
    """The patient's dose proposals on the server, keyed by the day part of their identifier ("d8")."""
    return {
        o["identifier"][0]["value"].rsplit(".", 1)[-1]: o
        for o in client.search("MedicationRequest", {"subject": patient})
    }


def test_applying_the_same_bundle_twice_leaves_exactly_one_of_each(fhir_client: FhirClient) -> None:
    record = load_example("p09-cycle-2", "twice")
    seed(fhir_client, record)
    ev = evaluate(record)
    bundle = build_transaction(ev, SUMMARIES, NOW).bundle
    first = fhir_client.transaction(bundle)
    # entry 0 is the adapter's Device: one per server, so other tests (sync) may have created it already
    assert bundle["entry"][0]["resource"]["resourceType"] == "Device"
    assert [e["response"]["status"].split()[0] for e in first["entry"][1:]] == ["201"] * (
        len(bundle["entry"]) - 1
    )
    after_first = ours(fhir_client, ev["patient"])
    second = fhir_client.transaction(copy.deepcopy(bundle))
    assert [e["response"]["status"].split()[0] for e in second["entry"]] == ["200"] * len(bundle["entry"])
    assert [e["response"]["location"].split("/_history")[0] for e in second["entry"]] == [
        e["response"]["location"].split("/_history")[0] for e in first["entry"]
    ]
    assert (
        ours(fhir_client, ev["patient"])
        == after_first
        == Counter({"MedicationRequest": 3, "Observation": 1, "DocumentReference": 1, "Provenance": 1})
    )
    # references inside the written resources point at the server's resources, not at urn:uuid
    orders = list(fhir_client.search("MedicationRequest", {"subject": ev["patient"], "status": "draft"}))
    assert len(orders) == 3
    for order in orders:
        refs = [r["reference"] for r in order["supportingInformation"]]
        assert not any(r.startswith("urn:") for r in refs)
        bsa_ref = next(r for r in refs if r.startswith("Observation/") and "-" not in r.split("/")[1][:3])
        assert bsa_ref


def test_write_back_reconciles_and_a_second_run_sends_nothing(fhir_client: FhirClient) -> None:
    record = load_example("p09-cycle-2", "reconcile")
    seed(fhir_client, record)
    ev = evaluate(record)
    first = write_back(fhir_client, ev, SUMMARIES, NOW)
    assert first.response is not None and len(first.plan.created) == len(first.plan.bundle["entry"])
    again = write_back(fhir_client, ev, SUMMARIES, "2026-11-21T15:00:00Z")
    assert again.response is None and again.plan.bundle["entry"] == []
    assert ours(fhir_client, ev["patient"])["MedicationRequest"] == 3


def test_a_changed_plan_updates_the_still_draft_proposal_with_if_match(fhir_client: FhirClient) -> None:
    record = load_example("p09-cycle-2", "update")
    seed(fhir_client, record)
    ev = evaluate(record)
    write_back(fhir_client, ev, SUMMARIES, NOW)
    changed = copy.deepcopy(ev)
    changed["dose"]["doses"][2]["mg"] = 0.9
    result = write_back(fhir_client, changed, SUMMARIES, NOW)
    assert [u.split()[0] for u in result.plan.updated] == ["MedicationRequest"]
    orders = proposals_by_day(fhir_client, ev["patient"])
    assert len(orders) == 3
    day15 = orders["d15"]
    assert day15["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 0.9
    assert day15["meta"]["versionId"] == "2" and day15["status"] == "draft"
    assert orders["d1"]["meta"]["versionId"] == "1"
    assert ours(fhir_client, ev["patient"])["Provenance"] == 2  # the first write and the update


def test_a_concurrent_change_to_the_draft_makes_the_update_fail_not_overwrite(
    fhir_client: FhirClient,
) -> None:
    record = load_example("p09-cycle-2", "race")
    seed(fhir_client, record)
    ev = evaluate(record)
    write_back(fhir_client, ev, SUMMARIES, NOW)
    changed = copy.deepcopy(ev)
    changed["dose"]["doses"][0]["mg"] = 0.9
    from adapter.writeback.apply import fetch_existing

    stale = fetch_existing(fhir_client, build_transaction(changed, SUMMARIES, NOW))
    # a pharmacist edits the draft between our read and our write
    draft = proposals_by_day(fhir_client, ev["patient"])["d1"]
    draft["note"] = [*draft.get("note", []), {"text": "checked by pharmacy"}]
    fhir_client.update(draft)
    plan = build_transaction(changed, SUMMARIES, NOW, existing=stale)
    with pytest.raises(FhirPreconditionFailed):
        fhir_client.transaction(plan.bundle)
    kept = fhir_client.read("MedicationRequest", draft["id"])[0]
    assert kept["note"][-1]["text"] == "checked by pharmacy"


def test_a_signed_order_is_left_alone_and_a_detected_issue_is_raised(fhir_client: FhirClient) -> None:
    record = load_example("p09-cycle-2", "signed")
    seed(fhir_client, record)
    ev = evaluate(record)
    write_back(fhir_client, ev, SUMMARIES, NOW)
    order = proposals_by_day(fhir_client, ev["patient"])["d8"]
    order["status"] = "active"  # the prescriber signs
    fhir_client.update(order)
    changed = copy.deepcopy(ev)
    changed["dose"]["doses"][1]["mg"] = 0.9
    result = write_back(fhir_client, changed, SUMMARIES, NOW)
    signed = fhir_client.read("MedicationRequest", order["id"])[0]
    assert signed["status"] == "active" and signed["meta"]["versionId"] == "2"
    assert signed["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 1.0
    issues = [
        i
        for i in fhir_client.search("DetectedIssue", {"_count": "1000"})
        if i["patient"]["reference"] == ev["patient"] and i["code"]["text"] == "superseded-active-order"
    ]
    assert len(issues) == 1 and issues[0]["implicated"] == [{"reference": f"MedicationRequest/{order['id']}"}]
    assert any("active" in n for n in result.plan.not_touched)
    # and running it again raises nothing new
    write_back(fhir_client, changed, SUMMARIES, NOW)
    assert ours(fhir_client, ev["patient"])["DetectedIssue"] == 1


@pytest.fixture
def own_server_client(tmp_path: Any) -> Any:
    """A server of its own: put mode gives the adapter's Device a client id, which a server that
    already holds the conditionally created Device would then hold twice (docs/writeback.md)."""
    from tests.support.fhir_server import ensure_installed, start_server

    server = start_server(ensure_installed(), tmp_path / "sekmet")
    try:
        with server.client() as client:
            yield client
    finally:
        server.stop()


def test_put_mode_with_client_ids_is_also_replay_safe(own_server_client: FhirClient) -> None:
    fhir_client = own_server_client
    record = load_example("p09-cycle-2", "put")
    seed(fhir_client, record)
    ev = evaluate(record)
    settings = WriteSettings(id_mode="put")
    bundle = build_transaction(ev, SUMMARIES, NOW, settings).bundle
    fhir_client.transaction(bundle)
    fhir_client.transaction(copy.deepcopy(bundle))
    assert ours(fhir_client, ev["patient"]) == Counter(
        {"MedicationRequest": 3, "Observation": 1, "DocumentReference": 1, "Provenance": 1}
    )
    again = write_back(fhir_client, ev, SUMMARIES, NOW, settings)
    assert again.response is None


def test_not_eligible_patient_gets_issues_and_no_orders_once(fhir_client: FhirClient) -> None:
    record = load_example("p04-prior-vod", "issues")
    seed(fhir_client, record)
    ev = evaluate(record)
    bundle = build_transaction(ev, SUMMARIES, NOW).bundle
    fhir_client.transaction(bundle)
    fhir_client.transaction(copy.deepcopy(bundle))
    counts = ours(fhir_client, ev["patient"])
    expected_issues = sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "DetectedIssue")
    assert counts["MedicationRequest"] == 0 and counts["DetectedIssue"] == expected_issues > 0
