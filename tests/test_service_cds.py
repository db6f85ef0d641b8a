"""CDS Hooks end to end: the real service process (uvicorn), an EHR signing JWTs (ES384/RS384, JWKS file),
and the real FHIR server for the data a prefetch lacks (docs/cds-hooks.md)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt

import cli
from adapter.fhir.client import FhirClient
from adapter.mapping.tables import load_tables
from adapter.service.cds.cards import OVERRIDE_SYSTEM, md_text
from adapter.writeback.codes import load_codes
from tests.support.cds_conformance import discovery_faults
from tests.support.cds_hooks import (
    SELECT,
    SIGN,
    Ehr,
    by_kind,
    draft,
    full_prefetch,
    order_sign_body,
    start_cds_service,
    utc_today,
)
from tests.support.fhir_server import SekmetServer
from tests.support.service import JwtIssuer, ServiceProcess
from tests.support.synth import ATC, RXNORM, PatientBuilder, cc
from tests.support.treatment import dosing_patient, give, pre_dose_labs

#: cycle 1 day 8 at BSA 2.00 m²: 0.5 mg/m² = 1.00 mg
DAY_8_MG = 1.0


@pytest.fixture(scope="module")
def issuer() -> JwtIssuer:
    return JwtIssuer()


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, issuer: JwtIssuer) -> Iterator[ServiceProcess]:
    process = start_cds_service(tmp_path_factory.mktemp("cds"), issuer)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def ehr(svc: ServiceProcess, issuer: JwtIssuer) -> Iterator[Ehr]:
    client = Ehr(svc, issuer)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def discovery(svc: ServiceProcess) -> dict[str, Any]:
    r = httpx.get(svc.url + "/cds-services")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


@pytest.fixture(scope="module")
def lab_codes(discovery: dict[str, Any]) -> set[str]:
    service = next(s for s in discovery["services"] if s["id"] == SIGN)
    query = service["prefetch"]["labs"].split("?", 1)[1]
    codes = next(p for p in query.split("&") if p.startswith("code="))[len("code=") :]
    return {unquote(c) for c in codes.split(",")}


def day_8(pid: str, **labs: Any) -> PatientBuilder:
    """Cycle 1 day 1 (1.6 mg) was given 7 days ago; day 8 is due today with today's results."""
    b = dosing_patient(pid, utc_today(), 7)
    give(b, 7, [(0, 1.6)])
    return pre_dose_labs(b, **labs)


def order_for(b: PatientBuilder, mg: float | None, rid: str | None = None) -> dict[str, Any]:
    """A draft inotuzumab order for today (not part of the patient's stored record)."""
    order = b.inotuzumab_order(0, mg, rid=rid or f"{b.pid}-draft")
    b.resources.remove(order)
    return draft(order)


def pid() -> str:
    return f"cds-{uuid.uuid4().hex[:12]}"


# -- discovery ------------------------------------------------------------------------------------------
def test_discovery_lists_order_select_and_order_sign_per_variant(discovery: dict[str, Any]) -> None:
    assert discovery_faults(discovery, date_tokens=True) == []
    ids = {s["id"]: s for s in discovery["services"]}
    for variant in ("fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose"):
        assert ids[f"ino-order-sign-{variant}"]["hook"] == "order-sign"
        assert ids[f"ino-order-select-{variant}"]["hook"] == "order-select"
    assert ids["ino-order-sign"]["hook"] == "order-sign"  # the configured variant (nhs-ta514)
    prefetch = ids[SIGN]["prefetch"]
    assert set(prefetch) == {
        "patient",
        "labs",
        "observations",
        "conditions",
        "medication-requests",
        "medication-statements",
        "medication-administrations",
        "procedures",
        "allergies",
        "immunizations",
    }
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert prefetch["conditions"] == "Condition?patient={{context.patientId}}"
    # labs by the mapping tables' codes with a date floor (the variant's longest look-back: height, 365 d)
    assert prefetch["labs"].startswith("Observation?patient={{context.patientId}}&code=")
    assert prefetch["labs"].endswith("&date=ge{{today() - 365 days}}")
    labs, other = unquote(prefetch["labs"]), unquote(prefetch["observations"])
    tables = load_tables(())
    for concept in ("bilirubin-total", "ast", "alt", "neutrophils", "platelets", "creatinine", "body-weight"):
        for (system, code), names in tables.exact.items():
            if concept in names:
                assert f"{system}|{code}" in labs, (concept, code)
    assert "http://loinc.org|88040-1" in other  # response to treatment: coded, no floor
    assert "protocol-concept|mrd" in other and "date=" not in other


def test_unknown_service_is_404(ehr: Ehr) -> None:
    r = ehr.call(order_sign_body("x", [], None), service="ino-order-sign-nowhere")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


# -- order-sign -----------------------------------------------------------------------------------------
def test_wrong_dose_gives_a_critical_card_whose_suggestion_carries_the_calculated_dose(
    ehr: Ehr, lab_codes: set[str]
) -> None:
    b = day_8(pid())
    order = order_for(b, 1.6)
    cards = ehr.cards(order_sign_body(b.pid, [order], full_prefetch(b, lab_codes)))
    assert cards[0]["indicator"] == "critical"
    card = by_kind(cards)["dose-mismatch"]
    assert card["indicator"] == "critical"
    assert len(card["summary"]) < 140 and "1.00 mg" in card["summary"]
    assert card["selectionBehavior"] == "at-most-one"
    assert {r["display"] for r in card["overrideReasons"]} and all(
        r["system"] == OVERRIDE_SYSTEM for r in card["overrideReasons"]
    )
    update, remove = card["suggestions"]
    assert update["isRecommended"] is True and remove["isRecommended"] is False
    (action,) = update["actions"]
    assert action["type"] == "update"
    resource = action["resource"]
    assert resource["id"] == order["id"] and resource["status"] == "draft"
    dose = resource["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    assert dose == {"value": DAY_8_MG, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
    assert "1.00 mg" in resource["dosageInstruction"][0]["text"]
    assert remove["actions"] == [
        {
            "type": "delete",
            "description": "Remove the draft inotuzumab ozogamicin order",
            "resourceId": f"MedicationRequest/{order['id']}",
        }
    ]
    assert card["source"]["topic"]["code"] == "dose-mismatch"
    # the link serves the rendered regimen summary of this call, privately
    (link,) = card["links"]
    assert link["type"] == "absolute"
    page = httpx.get(link["url"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "regimen summary" in page.text  # rendered from the evaluation when the link is opened
    assert (
        page.headers["cache-control"] == "no-store"
        and "default-src 'none'" in page.headers["content-security-policy"]
    )
    assert httpx.get(link["url"][:-4] + "AAAA").status_code == 404


def test_a_correct_order_gives_no_critical_card_and_offers_the_premedication(
    ehr: Ehr, svc: ServiceProcess, lab_codes: set[str]
) -> None:
    b = day_8(pid())
    order = order_for(b, DAY_8_MG)
    rid = uuid.uuid4().hex
    r = ehr.call(order_sign_body(b.pid, [order], full_prefetch(b, lab_codes)), headers={"X-Request-Id": rid})
    assert r.status_code == 200
    cards = r.json()["cards"]
    (event,) = svc.events("cds hook", rid)
    assert "procedures:null" in event["prefetch"]  # null without a server: the specification's "no data"
    assert not [c for c in cards if c["indicator"] in ("critical", "warning")], cards
    kinds = by_kind(cards)
    assert "1.00 mg" in kinds["order-agrees"]["summary"]
    premed = kinds["premedication"]
    (suggestion,) = premed["suggestions"]
    assert premed["selectionBehavior"] == "any"
    system = load_codes().identifier_systems.premedication
    created = [a["resource"] for a in suggestion["actions"]]
    assert [a["type"] for a in suggestion["actions"]] == ["create"] * 3
    assert all(r["identifier"][0]["system"] == system for r in created)
    assert created[0]["medicationCodeableConcept"]["text"].startswith("Dexamethasone 8 mg")
    assert {r["dosageInstruction"][0]["timing"]["event"][0] for r in created} == {utc_today().isoformat()}
    # premedication ordered with it in the same session (any other medication order): not offered
    other = {
        "resourceType": "MedicationRequest",
        "id": "dex-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": "dexamethasone 8 mg PO"},
        "subject": {"reference": f"Patient/{b.pid}"},
    }
    cards = ehr.cards(order_sign_body(b.pid, [order, other], full_prefetch(b, lab_codes)))
    assert "premedication" not in by_kind(cards)


def test_an_order_naming_its_drug_by_reference_is_checked(ehr: Ehr, lab_codes: set[str]) -> None:
    """The drug as a Medication in the draft Bundle (RxNorm inotuzumab 0.9 MG Injection)."""
    b = day_8(pid())
    order = order_for(b, 1.6)
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": "Medication/ino-vial"}
    medication = {
        "resourceType": "Medication",
        "id": "ino-vial",
        "code": cc(RXNORM, "1942954", "inotuzumab ozogamicin 0.9 MG Injection"),
    }
    body = order_sign_body(b.pid, [order], full_prefetch(b, lab_codes))
    body["context"]["draftOrders"]["entry"].append({"resource": medication})
    kinds = by_kind(ehr.cards(body))
    assert kinds["dose-mismatch"]["indicator"] == "critical"
    assert "continuing-criterion" not in kinds  # the drug was readable: no integrity problem


def test_a_patient_later_in_treatment_with_a_held_dose_gets_a_card_that_removes_the_order(
    ehr: Ehr, lab_codes: set[str]
) -> None:
    b = day_8(pid(), bili=35)  # 1.67 × ULN: the UK regimen holds the dose
    order = order_for(b, DAY_8_MG)
    cards = ehr.cards(order_sign_body(b.pid, [order], full_prefetch(b, lab_codes)))
    kinds = by_kind(cards)
    assert kinds["hepatic-hold"]["indicator"] == "critical" and "suggestions" not in kinds["hepatic-hold"]
    assert "dose-not-verifiable" not in kinds
    forbid = kinds["plan-forbids-dose"]
    assert forbid["indicator"] == "critical"
    (remove,) = forbid["suggestions"]
    assert remove["isRecommended"] is True and remove["actions"][0]["type"] == "delete"
    assert "premedication" not in kinds and "order-agrees" not in kinds


def test_order_select_checks_the_selected_orders_and_not_missing_details(
    ehr: Ehr, lab_codes: set[str]
) -> None:
    b = day_8(pid())
    order = order_for(b, None)  # selected from the catalogue: no dose yet
    amox = {
        "resourceType": "MedicationRequest",
        "id": "amox-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": cc(RXNORM, "617993", "Amoxicillin 120 MG/ML Oral Suspension"),
        "subject": {"reference": f"Patient/{b.pid}"},
    }
    prefetch = full_prefetch(b, lab_codes)
    body = order_sign_body(b.pid, [order, amox], prefetch, hook="order-select")
    assert "order-dose-missing" not in by_kind(ehr.cards(body, SELECT))
    only_amox = order_sign_body(
        b.pid, [order, amox], prefetch, hook="order-select", selections=["MedicationRequest/amox-1"]
    )
    assert ehr.cards(only_amox, SELECT) == []
    # the same order at signing: the missing dose is critical, and the calculated dose is offered
    card = by_kind(ehr.cards(order_sign_body(b.pid, [order], prefetch)))["order-dose-missing"]
    assert card["indicator"] == "critical"
    dose = card["suggestions"][0]["actions"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][0]
    assert dose["doseQuantity"]["value"] == DAY_8_MG


def test_no_inotuzumab_order_needs_no_data(ehr: Ehr) -> None:
    amox = {
        "resourceType": "MedicationRequest",
        "id": "amox-2",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": cc(ATC, "J01CR02", "amoxicillin and beta-lactamase inhibitor"),
        "subject": {"reference": "Patient/anyone"},
    }
    r = ehr.call(order_sign_body("anyone", [amox], None))  # no prefetch, no fhirServer: nothing needed
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_patient_data_never_becomes_markup(ehr: Ehr, lab_codes: set[str]) -> None:
    b = day_8(pid())
    evil = "<img src=x onerror=alert(1)> [click](https://evil.example) **now** www.evil.example"
    b.toxicity(evil, 2, onset_days_ago=3)
    order = order_for(b, DAY_8_MG)
    card = by_kind(ehr.cards(order_sign_body(b.pid, [order], full_prefetch(b, lab_codes))))["toxicity-hold"]
    detail = card["detail"]
    assert md_text(evil) in detail
    for raw in ("<", "[", "](", "*", "www."):  # every markup character from the data comes escaped
        assert re.search(r"(?<!\\)" + re.escape(raw), detail.replace("**", "")) is None, raw
    html = MarkdownIt("commonmark").render(detail)
    assert "<img" not in html and "<a " not in html and "<strong>now" not in html


def test_a_retried_hook_instance_gets_the_same_cards(ehr: Ehr, lab_codes: set[str]) -> None:
    b = day_8(pid())
    body = order_sign_body(b.pid, [order_for(b, 1.6)], full_prefetch(b, lab_codes))
    first = ehr.call(body)
    again = ehr.call(body)  # a new JWT, the same hookInstance
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
    other = json.loads(json.dumps(body))
    other["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][0][
        "doseQuantity"
    ]["value"] = 1.0
    assert ehr.call(other).status_code == 422  # the same hookInstance for another order: refused


# -- prefetch ------------------------------------------------------------------------------------------
def _seed(client: FhirClient, resources: list[dict[str, Any]]) -> None:
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


def test_missing_prefetch_is_fetched_from_the_fhir_server(
    ehr: Ehr, svc: ServiceProcess, lab_codes: set[str], fhir_server: SekmetServer, fhir_client: FhirClient
) -> None:
    b = day_8(pid())
    _seed(fhir_client, b.resources)
    prefetch = full_prefetch(b, lab_codes)
    prefetch["labs"] = None  # "could not prefetch" from some EHRs: fetched when a server is given
    prefetch["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "prefetch timed out"}],
    }
    del prefetch["medication-administrations"]  # omitted: not satisfied
    rid = uuid.uuid4().hex
    body = order_sign_body(
        b.pid, [order_for(b, 1.6)], prefetch, fhir_server=fhir_server.base_url, token=fhir_server.token
    )
    r = ehr.call(body, headers={"X-Request-Id": rid})
    assert r.status_code == 200, r.text
    kinds = by_kind(r.json()["cards"])
    # day 8 is known only from the fetched administration; the fetched labs and diagnosis let it go ahead
    assert kinds["dose-mismatch"]["indicator"] == "critical"
    assert not {"plan-forbids-dose", "hepatic-labs-unknown", "counts-unknown", "continuing-criterion"} & set(
        kinds
    )
    (event,) = svc.events("cds hook", rid)
    how = dict(item.split(":") for item in event["prefetch"].split(","))
    assert how["labs"] == how["conditions"] == how["medication-administrations"] == "fetched"
    assert how["observations"] == "prefetch"
    assert how["procedures"] == "fetched"  # null ("no data") is fetched anyway when a server is given


def test_prefetch_pages_are_read_from_the_fhir_server(
    ehr: Ehr, lab_codes: set[str], fhir_server: SekmetServer, fhir_client: FhirClient
) -> None:
    b = day_8(pid())
    _seed(fhir_client, b.resources)
    prefetch = full_prefetch(b, lab_codes)
    # the EHR paged the search: the first page is empty, the rest is behind the next link
    prefetch["medication-administrations"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [
            {"relation": "next", "url": f"{fhir_server.base_url}/MedicationAdministration?patient={b.pid}"}
        ],
        "entry": [],
    }
    body = order_sign_body(
        b.pid, [order_for(b, 1.6)], prefetch, fhir_server=fhir_server.base_url, token=fhir_server.token
    )
    assert "dose-mismatch" in by_kind(ehr.cards(body))  # day 8: the administration came from the next page
    del body["fhirServer"], body["fhirAuthorization"]
    body["hookInstance"] = str(uuid.uuid4())
    assert ehr.call(body).status_code == 412  # pages that cannot be read: never a partial record


def test_results_older_than_the_labs_floor_are_fetched_when_treatment_started_before_it(
    ehr: Ehr, svc: ServiceProcess, lab_codes: set[str], fhir_server: SekmetServer, fhir_client: FhirClient
) -> None:
    """The first dose 380 days ago: its pre-treatment results lie before the 365-day floor of ``labs``."""
    b = pre_dose_labs(give(dosing_patient(pid(), utc_today(), 380), 380, [(0, 1.6)]))
    _seed(fhir_client, b.resources)
    prefetch = full_prefetch(b, lab_codes)
    floor = (utc_today() - timedelta(days=365)).isoformat()
    prefetch["labs"]["entry"] = [  # as the EHR applies the template's date floor
        e for e in prefetch["labs"]["entry"] if e["resource"]["effectiveDateTime"][:10] >= floor
    ]
    body = order_sign_body(b.pid, [order_for(b, 1.0)], prefetch)
    assert ehr.call(body).status_code == 412  # needed, and no fhirServer to fetch it from
    body.update(hookInstance=str(uuid.uuid4()), fhirServer=fhir_server.base_url)
    body["fhirAuthorization"] = {
        "access_token": fhir_server.token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/*.read",
        "subject": "ino",
    }
    rid = uuid.uuid4().hex
    assert ehr.call(body, headers={"X-Request-Id": rid}).status_code == 200
    (event,) = svc.events("cds hook", rid)
    assert "labs:prefetch+older" in event["prefetch"]


@pytest.mark.parametrize(
    "case",
    ["omitted-no-server", "outcome-no-server", "patient-null", "server-refuses", "server-unreachable"],
)
def test_data_that_cannot_be_obtained_gives_412(
    case: str, ehr: Ehr, lab_codes: set[str], fhir_server: SekmetServer
) -> None:
    b = day_8(pid())
    prefetch = full_prefetch(b, lab_codes)
    server: str | None = None
    token: str | None = None
    if case == "omitted-no-server":
        del prefetch["conditions"]
    elif case == "outcome-no-server":
        prefetch["labs"] = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "exception"}],
        }
    elif case == "patient-null":
        prefetch["patient"] = None
    elif case == "server-refuses":
        del prefetch["conditions"]
        server, token = fhir_server.base_url, "not-the-token"
    else:
        del prefetch["conditions"]
        server, token = "http://127.0.0.1:9/fhir", "t"
    body = order_sign_body(b.pid, [order_for(b, 1.6)], prefetch, fhir_server=server, token=token)
    r = ehr.call(body)
    assert r.status_code == 412, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert b.pid not in r.text
    if case == "omitted-no-server":  # not kept: the same hookInstance with the data now given is answered
        body["prefetch"] = full_prefetch(b, lab_codes)
        assert ehr.call(body).status_code == 200


# -- feedback --------------------------------------------------------------------------------------------
def test_feedback_is_stored_and_reported_per_card_kind_and_reason(
    ehr: Ehr, svc: ServiceProcess, lab_codes: set[str]
) -> None:
    b = day_8(pid())
    wrong = by_kind(ehr.cards(order_sign_body(b.pid, [order_for(b, 1.6)], full_prefetch(b, lab_codes))))
    right = by_kind(ehr.cards(order_sign_body(b.pid, [order_for(b, 1.0)], full_prefetch(b, lab_codes))))
    critical, premed = wrong["dose-mismatch"], right["premedication"]
    reason = critical["overrideReasons"][4]  # local practice
    items = [
        {
            "card": critical["uuid"],
            "outcome": "overridden",
            "overrideReason": {
                "reason": {"system": reason["system"], "code": reason["code"]},
                "userComment": "x",
            },
            "outcomeTimestamp": "2026-11-21T10:05:31Z",
        },
        {
            "card": premed["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": premed["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": "2026-11-21T10:06:00Z",
        },
    ]
    assert ehr.feedback(SIGN, items).status_code == 200
    assert ehr.feedback(SIGN, items[:1]).status_code == 200  # sent twice: kept once
    bad = [{"card": premed["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-21T10:06:00Z"}]
    assert ehr.feedback(SIGN, bad).status_code == 400  # accepted needs acceptedSuggestions
    late = [{**items[0], "outcomeTimestamp": "2026-11-21 10:05"}]
    assert ehr.feedback(SIGN, late).status_code == 400

    db = Path(svc.config["feedback_db"])
    result = CliRunner().invoke(cli.main, ["feedback-report", "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    kinds = {k["kind"]: k for k in report["kinds"]}
    dm = kinds["dose-mismatch"]
    assert dm["issued"] >= 1 and dm["overridden"] == 1 and dm["override_rate"] is not None
    assert dm["reasons"] == [
        {"system": OVERRIDE_SYSTEM, "code": "local-practice", "display": reason["display"], "count": 1}
    ]
    assert kinds["premedication"]["accepted"] == 1
    text = CliRunner().invoke(
        cli.main, ["feedback-report", "--db", str(db), "--since", utc_today().isoformat()]
    )
    assert text.exit_code == 0 and "dose-mismatch" in text.output and reason["display"] in text.output
    assert "x" not in text.output.split("\n", 2)[-1].split()  # comments are never printed
    future = CliRunner().invoke(
        cli.main, ["feedback-report", "--db", str(db), "--since", "2999-01-01", "--format", "json"]
    )
    assert json.loads(future.output)["total"]["issued"] == 0
    missing = CliRunner().invoke(cli.main, ["feedback-report", "--db", str(db.parent / "nope.sqlite")])
    assert missing.exit_code == 2
