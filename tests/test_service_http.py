"""The HTTP service as a real uvicorn process (tests/support/service.py): the REST endpoints and the FHIR
operation without a FHIR server: auth, limits, errors, equality with the CLI, idempotency, the OpenAPI
document, the OperationDefinition, and no patient data in the logs."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.operationdefinition import OperationDefinition
from fhir.resources.R4B.parameters import Parameters

from adapter.api import check_order_path, evaluate_path
from adapter.protocols import VARIANTS
from adapter.service.openapi import document_bytes
from adapter.service.operation import evaluations_of
from tests.conftest import TODAY
from tests.support.make_examples import EXAMPLES_DIR
from tests.support.service import REPO, JwtIssuer, ServiceProcess
from tests.support.treatment import dosing_patient, give, pre_dose_labs

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.json"))
AS_OF = TODAY.isoformat()


def _bundle(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _outcome(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/fhir+json"), r.text
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"], body
    return body


@pytest.fixture(scope="module")
def http(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30.0) as client:
        yield client


# ---------------------------------------------------------------------------------------------------------
# health, request ids


def test_health_and_ready(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").json() == {"status": "ready"}


def test_request_id_is_echoed_or_made(http: httpx.Client, service: ServiceProcess) -> None:
    r = http.get("/health", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = http.get("/health", headers={"X-Request-Id": "bad id;/x"}).headers["x-request-id"]
    assert made != "bad id" and len(made) == 32
    time.sleep(0.1)
    assert service.events("request", "abc-123")


# ---------------------------------------------------------------------------------------------------------
# auth: refused requests evaluate nothing


def _no_evaluation(service: ServiceProcess, request_id: str) -> None:
    time.sleep(0.1)
    assert service.events("auth refused", request_id), service.log_text()[-2000:]
    assert not service.events("evaluated", request_id)


@pytest.mark.parametrize(
    "path", ["/evaluate", "/check-order", "/fhir/$evaluate", "/fhir/Patient/x/$evaluate"]
)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", "Basic dXNlcjpwdw==", "Bearer", "Bearer a.b.c"]
)
def test_missing_or_wrong_tokens_are_401(
    http: httpx.Client, service: ServiceProcess, path: str, authorization: str | None
) -> None:
    body = _bundle(EXAMPLES[0])
    headers = {"X-Request-Id": f"auth-{abs(hash((path, authorization)))}"}
    if authorization is not None:
        headers["Authorization"] = authorization
    r = http.post(path, json=body, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    _outcome(r)
    _no_evaluation(service, headers["X-Request-Id"])


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _hmac_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """HS256 signed with ``secret`` (the attacker uses the issuer's public key as the secret)."""
    import hashlib
    import hmac

    signing_input = _b64(json.dumps(header).encode()) + b"." + _b64(json.dumps(claims).encode())
    return (signing_input + b"." + _b64(hmac.new(secret, signing_input, hashlib.sha256).digest())).decode()


def test_jwt_on_rest(http: httpx.Client, service: ServiceProcess, service_issuer: JwtIssuer) -> None:
    from cryptography.hazmat.primitives import serialization

    aud = service.url + "/evaluate"
    body = _bundle(EXAMPLES[0])
    now = int(time.time())
    pem = service_issuer.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = _hmac_token({"alg": "HS256", "kid": service_issuer.rsa_kid}, service_issuer.claims(aud), pem)
    header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"ec-1"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(service_issuer.claims(aud)).encode()).rstrip(b"=").decode()
    replayed = service_issuer.token(aud)
    assert (
        http.post("/evaluate", json=body, headers=service.auth(replayed), params={"as-of": AS_OF}).status_code
        == 200
    )
    refused = {
        "none": f"{header}.{payload}.",
        "hs256-public-key": forged,
        "wrong-aud": service_issuer.token(service.url + "/check-order"),
        "expired": service_issuer.token(aud, iat=now - 400, exp=now - 100),
        "replayed": replayed,
        "untrusted": JwtIssuer(iss="https://evil.example").token(aud),
    }
    for name, token in refused.items():
        rid = f"jwt-{name}"
        r = http.post("/evaluate", json=body, headers={**service.auth(token), "X-Request-Id": rid})
        assert r.status_code == 401, (name, r.text)
        _outcome(r)
        _no_evaluation(service, rid)
    # the FHIR endpoints' aud is base_url + /fhir
    fhir = service_issuer.token(service.url + "/fhir")
    params = {"resourceType": "Parameters", "parameter": [{"name": "bundle", "resource": body}]}
    assert http.post("/fhir/$evaluate", json=params, headers=service.auth(fhir)).status_code == 200


# ---------------------------------------------------------------------------------------------------------
# limits and errors


def test_oversized_body_is_413_before_reading(http: httpx.Client, service: ServiceProcess) -> None:
    big = b"[" + b" " * 1_100_000 + b"]"
    r = http.post("/evaluate", content=big, headers={**service.auth(), "Content-Type": "application/json"})
    assert r.status_code == 413
    _outcome(r)


def test_oversized_chunked_body_is_413(http: httpx.Client, service: ServiceProcess) -> None:
    def chunks() -> Any:
        for _ in range(30):
            yield b" " * 50_000

    r = http.post(
        "/evaluate", content=chunks(), headers={**service.auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == 413
    _outcome(r)


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"42", 400, "must be a FHIR resource"),
        (b'{"resources": 5}', 400, "resources must be"),
        (b'{"resourceType": "Bundle", "type": "collection"}', 400, "no Patient"),
        (b'[{"resourceType": "Observation"}, 3]', 400, "every item"),
        (b'{"resources": [], "colour": 1}', 400, "unknown key"),
        (b'{"resources": [], "as_of": "tomorrow"}', 400, "as_of"),
    ],
)
def test_bad_bodies_are_400(
    http: httpx.Client, service: ServiceProcess, body: bytes, status: int, text: str
) -> None:
    r = http.post("/evaluate", content=body, headers={**service.auth(), "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert text in _outcome(r)["issue"][0]["diagnostics"]


def test_not_json_is_415(http: httpx.Client, service: ServiceProcess) -> None:
    r = http.post("/evaluate", content=b"hello", headers={**service.auth(), "Content-Type": "text/plain"})
    assert r.status_code == 415
    _outcome(r)


def test_unknown_protocol_is_400(http: httpx.Client, service: ServiceProcess) -> None:
    body = _bundle(EXAMPLES[0])
    r = http.post("/evaluate", params={"protocol": "nice-2099"}, json=body, headers=service.auth())
    assert r.status_code == 400 and "unknown protocol" in _outcome(r)["issue"][0]["diagnostics"]
    r = http.post("/evaluate", json={"resources": [body], "protocol": "x"}, headers=service.auth())
    assert r.status_code == 400
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "bundle", "resource": body}, {"name": "protocol", "valueCode": "x"}],
    }
    r = http.post("/fhir/$evaluate", json=params, headers=service.auth())
    assert r.status_code == 400 and "unknown protocol" in _outcome(r)["issue"][0]["diagnostics"]


def test_unknown_paths_and_methods_are_operation_outcomes(
    http: httpx.Client, service: ServiceProcess
) -> None:
    assert http.get("/nope").status_code == 404
    _outcome(http.get("/nope"))
    r = http.get("/evaluate", headers=service.auth())
    assert r.status_code == 405
    _outcome(r)


def test_patient_evaluate_without_a_fhir_server_is_404(http: httpx.Client, service: ServiceProcess) -> None:
    r = http.post("/fhir/Patient/p1/$evaluate", headers=service.auth())
    assert r.status_code == 404
    assert "no FHIR server" in _outcome(r)["issue"][0]["diagnostics"]


# ---------------------------------------------------------------------------------------------------------
# the same evaluation as the CLI


@pytest.mark.parametrize("variant", VARIANTS)
def test_evaluate_and_fhir_evaluate_equal_the_cli(
    http: httpx.Client, service: ServiceProcess, variant: str
) -> None:
    for path in EXAMPLES:
        expected = evaluate_path(path, variant, TODAY).results
        body = _bundle(path)
        r = http.post(
            "/evaluate", params={"protocol": variant, "as-of": AS_OF}, json=body, headers=service.auth()
        )
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got if isinstance(got, list) else [got]) == expected, path.name
        params = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "bundle", "resource": body},
                {"name": "protocol", "valueCode": variant},
                {"name": "asOf", "valueDate": AS_OF},
            ],
        }
        r = http.post(
            "/fhir/$evaluate",
            json=params,
            headers={**service.auth(), "Content-Type": "application/fhir+json"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+json")
        assert evaluations_of(r.json()) == expected, path.name


def test_several_patients_give_an_array_in_input_order(http: httpx.Client, service: ServiceProcess) -> None:
    bodies = [_bundle(p) for p in EXAMPLES]
    expected = [evaluate_path(p, "nhs-ta514", TODAY).results[0] for p in EXAMPLES]
    r = http.post("/evaluate", json={"resources": bodies, "as_of": AS_OF}, headers=service.auth())
    assert r.status_code == 200 and r.headers["x-patients"] == str(len(EXAMPLES))
    assert sorted(r.json(), key=lambda e: e["patient"]) == sorted(expected, key=lambda e: e["patient"])
    r = http.post(
        "/evaluate", params={"format": "ndjson", "as-of": AS_OF}, json=bodies, headers=service.auth()
    )
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.headers["content-type"].startswith("application/x-ndjson") and len(lines) == len(EXAMPLES)
    r = http.post(
        "/evaluate", params={"format": "text", "as-of": AS_OF}, json=bodies[0], headers=service.auth()
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def test_include_bundle_and_summaries(http: httpx.Client, service: ServiceProcess, r4_validator: Any) -> None:
    body = _bundle(EXAMPLES_DIR / "p09-cycle-2.json")
    r = http.post(
        "/evaluate", params={"include": "bundle,summaries", "as-of": AS_OF}, json=body, headers=service.auth()
    )
    got = r.json()
    assert set(got) == {"evaluation", "bundle", "summaries"}
    assert (
        got["evaluation"] == evaluate_path(EXAMPLES_DIR / "p09-cycle-2.json", "nhs-ta514", TODAY).results[0]
    )
    assert got["bundle"]["type"] == "transaction" and got["bundle"]["entry"]
    assert got["summaries"]["html"].lstrip().lower().startswith("<!doctype html")
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "bundle", "resource": body},
            {"name": "asOf", "valueDate": AS_OF},
            {"name": "include", "valueCode": "bundle"},
            {"name": "include", "valueCode": "summaries"},
        ],
    }
    out = http.post("/fhir/$evaluate", json=params, headers=service.auth()).json()
    Parameters.model_validate(out)  # valid R4(B) Parameters, Binary and Bundle included
    parts = {p["name"]: p for p in out["parameter"][0]["part"]}
    assert parts["bundle"]["resource"]["type"] == "transaction"
    assert parts["eligibility"]["valueCode"] == got["evaluation"]["eligibility"]["status"]
    assert parts["action"]["valueCode"] == got["evaluation"]["dose"]["action"]
    summaries = [p for p in out["parameter"][0]["part"] if p["name"] == "summary"]
    assert [s["resource"]["contentType"] for s in summaries] == ["text/html", "text/markdown"]


def test_check_order_equals_the_cli(http: httpx.Client, service: ServiceProcess, tmp_path: Path) -> None:
    b = dosing_patient("o", TODAY, 7)
    give(b, 7, [(0, 1.6)])
    pre_dose_labs(b)
    order = b.inotuzumab_order(0, 1.3)
    b.resources.remove(order)
    (tmp_path / "o.json").write_text(json.dumps(order))
    (tmp_path / "c.json").write_text(json.dumps(b.bundle()))
    expected = check_order_path(tmp_path / "o.json", tmp_path / "c.json", "nhs-ta514")
    r = http.post("/check-order", json={"order": order, "context": b.bundle()}, headers=service.auth())
    assert r.status_code == 200, r.text
    assert r.json() == expected and expected["verdict"] == "critical"
    r = http.post(
        "/check-order",
        json={"order": order, "context": b.resources, "include": ["bundle"]},
        headers=service.auth(),
    )
    assert r.json()["check"] == expected and r.json()["bundle"]["type"] == "transaction"
    r = http.post("/check-order", json={"order": b.resources[0], "context": []}, headers=service.auth())
    assert r.status_code == 400
    _outcome(r)


# ---------------------------------------------------------------------------------------------------------
# idempotency


def test_idempotency_key_replays_without_evaluating_again(
    http: httpx.Client, service: ServiceProcess
) -> None:
    body = _bundle(EXAMPLES[1])
    key = f"k-{time.time_ns()}"
    first = http.post(
        "/evaluate", json=body, headers={**service.auth(), "Idempotency-Key": key, "X-Request-Id": key + "-1"}
    )
    again = http.post(
        "/evaluate", json=body, headers={**service.auth(), "Idempotency-Key": key, "X-Request-Id": key + "-2"}
    )
    assert first.status_code == again.status_code == 200
    assert first.content == again.content and again.headers["idempotent-replayed"] == "true"
    time.sleep(0.1)
    assert service.events("evaluated", key + "-1") and not service.events("evaluated", key + "-2")
    other = http.post(
        "/evaluate", json=_bundle(EXAMPLES[2]), headers={**service.auth(), "Idempotency-Key": key}
    )
    assert other.status_code == 422
    _outcome(other)


# ---------------------------------------------------------------------------------------------------------
# documents


def test_served_openapi_equals_docs(http: httpx.Client) -> None:
    served = http.get("/openapi.json").json()
    on_disk = (REPO / "docs" / "openapi.json").read_bytes()
    assert document_bytes(served) == on_disk, (
        "docs/openapi.json is stale: .venv/bin/python -m adapter.service.openapi > docs/openapi.json"
    )
    assert served["openapi"].startswith("3.")
    assert not any(p.startswith("/cds-services") for p in served["paths"])


def test_operation_definition_is_valid_r4(http: httpx.Client) -> None:
    r = http.get("/fhir/OperationDefinition/evaluate")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    doc = r.json()
    od = OperationDefinition.model_validate(doc)
    assert od.code == "evaluate" and od.system and od.instance and od.resource == ["Patient"]
    names = {(p["name"], p["use"]) for p in doc["parameter"]}
    assert {
        ("resource", "in"),
        ("bundle", "in"),
        ("protocol", "in"),
        ("asOf", "in"),
        ("evaluation", "out"),
    } <= names


def test_logs_hold_no_patient_data(http: httpx.Client, service: ServiceProcess) -> None:
    body = _bundle(EXAMPLES_DIR / "p01-ph-neg-relapse.json")
    http.post("/evaluate", json=body, headers=service.auth())
    http.post("/fhir/Patient/p01-ph-neg-relapse/$evaluate", headers=service.auth())
    time.sleep(0.2)
    text = service.log_text()
    for path in EXAMPLES:
        for ev in evaluate_path(path, "nhs-ta514", TODAY).results:
            subject = ev["subject"]
            for secret in (subject["name"], subject["mrn"], ev["patient"], ev["patient"].split("/")[-1]):
                if secret:
                    assert secret not in text, f"{secret!r} in the service log"
    assert service.token not in text
    for line in text.splitlines():
        assert line.startswith("{"), line  # every line structured


def test_several_workers_share_the_idempotency_store(tmp_path: Path, service_issuer: JwtIssuer) -> None:
    from tests.support.service import base_config, start_service

    config = base_config(tmp_path, service_issuer, state_db=str(tmp_path / "state.sqlite"))
    svc = start_service(tmp_path, config, workers=2)
    try:
        body = _bundle(EXAMPLES[0])
        key = f"multi-{time.time_ns()}"
        answers = []
        for i in range(6):  # new connections: the kernel spreads them over the workers
            with httpx.Client(base_url=svc.url, timeout=30) as client:
                answers.append(
                    client.post(
                        "/evaluate",
                        json=body,
                        headers={**svc.auth(), "Idempotency-Key": key, "X-Request-Id": f"{key}-{i}"},
                    )
                )
        assert {a.status_code for a in answers} == {200}
        assert len({a.content for a in answers}) == 1
        time.sleep(0.2)
        assert len(svc.events("evaluated")) == 1
        assert len({e["pid"] for e in svc.events("worker started")}) == 2
    finally:
        assert svc.stop() == 0
