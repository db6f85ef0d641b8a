"""POST /fhir/Patient/{id}/$evaluate against a real FHIR server (sekmet-fhir) through a fault-injecting proxy,
with the service as a real uvicorn process: the record fetched as sync fetches it, written back once per
Idempotency-Key, 503 + Retry-After when the server is down or too slow, and a graceful SIGTERM."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.api import evaluate_resources
from adapter.fhir.client import FhirClient
from adapter.service.operation import evaluations_of
from tests.conftest import TODAY
from tests.support.fault_proxy import Fault, FaultProxy, on
from tests.support.fhir_server import SekmetServer
from tests.support.service import JwtIssuer, ServiceProcess, base_config, start_service
from tests.test_writeback_server import load_example, ours, seed

AS_OF = TODAY.isoformat()
TOKEN_ENV = "SERVICE_TEST_FHIR_TOKEN"


def _params(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "asOf", "valueDate": AS_OF}, *parts]}


def _written(answer: dict[str, Any]) -> dict[str, Any]:
    part = next(p for p in answer["parameter"][0]["part"] if p["name"] == "written")
    return {p["name"]: p.get("valueCode", p.get("valueInteger")) for p in part["part"]}


@pytest.fixture(scope="module")
def proxy(fhir_server: SekmetServer) -> Iterator[FaultProxy]:
    with FaultProxy(fhir_server.base_url) as p:
        yield p


def _fhir_service(tmp_path: Path, fhir_server: SekmetServer, url: str, **more: Any) -> ServiceProcess:
    issuer = JwtIssuer()
    config = base_config(
        tmp_path,
        issuer,
        fhir_server={"url": url, "auth": "bearer", "token_env": TOKEN_ENV, "read_timeout_s": 10},
        **more,
    )
    return start_service(tmp_path, config, env={TOKEN_ENV: fhir_server.token})


@pytest.fixture(scope="module")
def fhir_service(
    tmp_path_factory: pytest.TempPathFactory, fhir_server: SekmetServer, proxy: FaultProxy
) -> Iterator[ServiceProcess]:
    svc = _fhir_service(
        tmp_path_factory.mktemp("fhir-service"), fhir_server, proxy.base_url, request_timeout_s=4
    )
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def faults(proxy: FaultProxy) -> Iterator[FaultProxy]:
    proxy.clear_faults()
    proxy.clear()
    yield proxy
    proxy.clear_faults()


def test_patient_evaluate_equals_evaluating_the_record(
    fhir_service: ServiceProcess, fhir_client: FhirClient, faults: FaultProxy
) -> None:
    record = load_example("p09-cycle-2", "svc-read")
    seed(fhir_client, record)
    expected = evaluate_resources(record, "nhs-ta514", TODAY).results[0]
    pid = expected["patient"].split("/")[1]
    r = httpx.post(
        f"{fhir_service.url}/fhir/Patient/{pid}/$evaluate",
        json=_params(),
        headers=fhir_service.auth(),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    (got,) = evaluations_of(r.json())
    assert got["eligibility"] == expected["eligibility"]
    assert got["dose"] == expected["dose"]
    assert not any(p["name"] == "written" for p in r.json()["parameter"][0]["part"])
    assert faults.count("POST", r"^/fhir/?$") == 0 or all(
        b'"transaction"' not in s.body for s in faults.requests("POST", r"^/fhir/?$")
    )  # nothing written without writeBack


def test_unknown_patient_is_404(fhir_service: ServiceProcess, faults: FaultProxy) -> None:
    r = httpx.post(
        f"{fhir_service.url}/fhir/Patient/nobody-{time.time_ns()}/$evaluate", headers=fhir_service.auth()
    )
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def test_write_back_with_idempotency_key_writes_once(
    fhir_service: ServiceProcess, fhir_client: FhirClient, faults: FaultProxy
) -> None:
    record = load_example("p09-cycle-2", "svc-write")
    seed(fhir_client, record)
    patient = next(f"Patient/{r['id']}" for r in record if r["resourceType"] == "Patient")
    url = f"{fhir_service.url}/fhir/{patient}/$evaluate"
    body = _params({"name": "writeBack", "valueBoolean": True})
    headers = {**fhir_service.auth(), "Idempotency-Key": f"wb-{time.time_ns()}"}
    first = httpx.post(url, json=body, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    assert _written(first.json())["status"] == "written"
    transactions = sum(b'"transaction"' in s.body for s in faults.requests("POST", r"^/fhir/?$"))
    assert transactions == 1
    after_first = ours(fhir_client, patient)
    assert after_first == Counter(
        {"MedicationRequest": 3, "Observation": 1, "DocumentReference": 1, "Provenance": 1}
    )

    faults.clear()
    again = httpx.post(url, json=body, headers=headers, timeout=30)
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert faults.seen == []  # the retry did not even read the server
    assert ours(fhir_client, patient) == after_first

    # without the key: evaluated again, reconciled with what the server holds, nothing duplicated
    fresh = httpx.post(url, json=body, headers=fhir_service.auth(), timeout=30)
    assert fresh.status_code == 200
    assert evaluations_of(fresh.json()) == evaluations_of(first.json())
    assert ours(fhir_client, patient) == after_first


def test_transaction_lost_in_flight_then_retried_with_the_key(
    fhir_service: ServiceProcess, fhir_client: FhirClient, faults: FaultProxy
) -> None:
    """The server applies the transaction but the answer is lost (reset after forwarding): the client sees
    an error and retries with the same key; the server still holds one of each."""
    record = load_example("p09-cycle-2", "svc-lost")
    seed(fhir_client, record)
    patient = next(f"Patient/{r['id']}" for r in record if r["resourceType"] == "Patient")
    url = f"{fhir_service.url}/fhir/{patient}/$evaluate"
    body = _params({"name": "writeBack", "valueBoolean": True})
    headers = {**fhir_service.auth(), "Idempotency-Key": f"lost-{time.time_ns()}"}
    faults.inject(
        on("POST", r"^/fhir/?$"), Fault.reset(forward=True), times=2, body=lambda b: b'"transaction"' in b
    )
    first = httpx.post(url, json=body, headers=headers, timeout=30)
    assert first.status_code == 503 and first.headers["retry-after"]
    retry = httpx.post(url, json=body, headers=headers, timeout=30)
    assert retry.status_code == 200, retry.text
    assert ours(fhir_client, patient) == Counter(
        {"MedicationRequest": 3, "Observation": 1, "DocumentReference": 1, "Provenance": 1}
    )


def test_fhir_server_down_is_503_with_retry_after(fhir_service: ServiceProcess, faults: FaultProxy) -> None:
    faults.inject(None, Fault.reset(), times=None)
    r = httpx.post(f"{fhir_service.url}/fhir/Patient/p1/$evaluate", headers=fhir_service.auth(), timeout=30)
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
    assert r.json()["resourceType"] == "OperationOutcome"
    time.sleep(2.1)  # /ready caches its answer for 2 s
    ready = httpx.get(f"{fhir_service.url}/ready")
    assert ready.status_code == 503 and ready.headers["retry-after"]


def test_fhir_server_overloaded_is_503(fhir_service: ServiceProcess, faults: FaultProxy) -> None:
    faults.inject(None, Fault.status(503, retry_after="1"), times=None)
    r = httpx.post(f"{fhir_service.url}/fhir/Patient/p1/$evaluate", headers=fhir_service.auth(), timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"]


def test_a_slow_fhir_server_hits_the_request_timeout(
    fhir_service: ServiceProcess, faults: FaultProxy
) -> None:
    faults.inject(None, Fault.hold(8.0), times=None)
    started = time.monotonic()
    r = httpx.post(f"{fhir_service.url}/fhir/Patient/p1/$evaluate", headers=fhir_service.auth(), timeout=30)
    elapsed = time.monotonic() - started
    assert r.status_code == 503 and r.headers["retry-after"], r.text
    assert "took longer than" in r.json()["issue"][0]["diagnostics"]
    assert 3.5 < elapsed < 7.0
    faults.clear_faults()


def test_sigterm_lets_requests_in_flight_finish(
    tmp_path: Path, fhir_server: SekmetServer, fhir_client: FhirClient
) -> None:
    record = load_example("p09-cycle-2", "svc-term")
    seed(fhir_client, record)
    patient = next(f"Patient/{r['id']}" for r in record if r["resourceType"] == "Patient")
    with FaultProxy(fhir_server.base_url) as slow:
        slow.inject(on("GET"), Fault.delay(1.5), times=1)
        svc = _fhir_service(tmp_path, fhir_server, slow.base_url)
        try:
            answers: list[httpx.Response] = []
            t = threading.Thread(
                target=lambda: answers.append(
                    httpx.post(
                        f"{svc.url}/fhir/{patient}/$evaluate", json=_params(), headers=svc.auth(), timeout=30
                    )
                )
            )
            t.start()
            time.sleep(0.7)
            svc.proc.send_signal(15)
            t.join(20)
            assert answers and answers[0].status_code == 200, answers
            assert svc.proc.wait(20) == 0
            with pytest.raises(httpx.HTTPError):
                httpx.get(svc.url + "/health", timeout=2)
        finally:
            svc.stop()
