"""adapter.fhir.client against a real FHIR server (sekmet-fhir, tests/support/fhir_server.py), plus fault
injection through a fake ``requests`` transport adapter (the server itself is never mocked)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from adapter.errors import AdapterError, ExitCode
from adapter.fhir.client import (
    DEFAULT_TIMEOUT,
    FhirBadRequest,
    FhirClient,
    FhirConflict,
    FhirError,
    FhirMultipleMatches,
    FhirNotFound,
    FhirPreconditionFailed,
    FhirServerError,
    FhirThrottled,
    FhirTransportError,
    FhirUnauthorized,
    FhirUnprocessable,
)
from tests.support.fhir_server import SekmetServer

SYS = "urn:ino-adapter:test"


def uid() -> str:
    return uuid.uuid4().hex[:12]


def patient(value: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYS, "value": value}], **extra}


def observation(subject: str, value: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": SYS, "value": value}],
        "status": "final",
        "code": {"text": "test"},
        "subject": {"reference": subject},
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------
# against the real server


def test_capabilities(fhir_client: FhirClient) -> None:
    cs = fhir_client.capabilities()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"


def test_create_read_update_with_if_match(fhir_client: FhirClient) -> None:
    created = fhir_client.create(patient(uid(), gender="female"))
    assert created.status == 201
    assert created.etag == 'W/"1"' and created.version_id == "1"
    assert created.location and "/Patient/" in created.location
    assert created.body is not None
    pid = created.body["id"]

    resource, etag = fhir_client.read("Patient", pid)
    assert resource["gender"] == "female" and etag == 'W/"1"'

    resource["gender"] = "male"
    updated = fhir_client.update(resource, if_match=etag)
    assert updated.status == 200 and updated.version_id == "2"

    resource["gender"] = "other"
    with pytest.raises(FhirPreconditionFailed) as stale:
        fhir_client.update(resource, if_match=etag)  # still W/"1"
    assert stale.value.status == 412
    assert stale.value.outcome is not None and stale.value.outcome["resourceType"] == "OperationOutcome"
    assert fhir_client.read("Patient", pid)[0]["gender"] == "male"

    assert fhir_client.update(resource, if_match="2").version_id == "3"  # a bare version id works too
    old, old_etag = fhir_client.vread("Patient", pid, "1")
    assert old["gender"] == "female" and old_etag == 'W/"1"'


def test_update_with_client_assigned_id_creates_then_updates(fhir_client: FhirClient) -> None:
    resource = {"id": f"ino-{uid()}", **patient(uid())}
    assert fhir_client.update(resource).status == 201
    again = fhir_client.update(resource)
    assert again.status == 200
    assert again.version_id == "2"  # this server bumps the version even on an identical PUT


def test_create_if_none_exist_returns_the_existing_resource(fhir_client: FhirClient) -> None:
    value = uid()
    first = fhir_client.create(patient(value), if_none_exist=f"identifier={SYS}|{value}")
    second = fhir_client.create(patient(value), if_none_exist=[("identifier", f"{SYS}|{value}")])
    assert (first.status, second.status) == (201, 200)
    assert first.body and second.body and first.body["id"] == second.body["id"]


def test_conditional_update_creates_then_updates_the_match(fhir_client: FhirClient) -> None:
    value = uid()
    query = f"identifier={SYS}|{value}"
    first = fhir_client.conditional_update(patient(value, gender="male"), query)
    second = fhir_client.conditional_update(patient(value, gender="female"), {"identifier": f"{SYS}|{value}"})
    assert (first.status, second.status) == (201, 200)
    assert first.body and second.body and first.body["id"] == second.body["id"]
    assert second.version_id == "2"


def test_read_missing_raises_not_found_and_keeps_the_outcome(fhir_client: FhirClient) -> None:
    missing = f"missing-{uid()}"
    with pytest.raises(FhirNotFound) as err:
        fhir_client.read("Patient", missing)
    assert err.value.status == 404
    assert err.value.outcome is not None
    assert err.value.outcome["issue"][0]["code"] == "not-found"
    assert missing in err.value.outcome["issue"][0]["diagnostics"]  # kept verbatim on the exception ...
    assert missing not in str(err.value)  # ... but scrubbed from the message
    assert isinstance(err.value, AdapterError) and err.value.exit_code == ExitCode.FHIR_SERVER


def test_deleted_resource_raises_not_found_410(fhir_client: FhirClient) -> None:
    created = fhir_client.create(patient(uid()))
    assert created.body is not None
    fhir_client.request("DELETE", f"Patient/{created.body['id']}")
    with pytest.raises(FhirNotFound) as err:
        fhir_client.read("Patient", created.body["id"])
    assert err.value.status == 410


def test_invalid_resource_raises_bad_request_with_the_servers_issues(fhir_client: FhirClient) -> None:
    with pytest.raises(FhirBadRequest) as err:
        fhir_client.create({"resourceType": "Observation", "status": "final"})  # no code
    assert err.value.outcome is not None
    assert err.value.outcome["issue"][0]["expression"] == ["Observation.code"]
    assert "Observation.code" in str(err.value)


def test_missing_token_raises_unauthorized(fhir_server: SekmetServer) -> None:
    with FhirClient(fhir_server.base_url) as anonymous, pytest.raises(FhirUnauthorized) as err:
        anonymous.read("Patient", "anything")
    assert err.value.status == 401


def test_search_follows_next_links_over_several_pages(fhir_client: FhirClient) -> None:
    subject = fhir_client.create(patient(uid())).body
    assert subject is not None
    ref = f"Patient/{subject['id']}"
    made = set()
    for _ in range(5):
        body = fhir_client.create(observation(ref, uid())).body
        assert body is not None
        made.add(body["id"])

    pages = list(fhir_client.search_pages("Observation", {"subject": ref, "_count": "2"}))
    assert len(pages) == 3 and pages[0]["total"] == 5
    found = [r["id"] for r in fhir_client.search("Observation", [("subject", ref), ("_count", "2")])]
    assert sorted(found) == sorted(made)


def test_search_one_none_one_or_ambiguous(fhir_client: FhirClient) -> None:
    value = uid()
    assert fhir_client.search_one("Patient", {"identifier": f"{SYS}|{value}"}) is None
    created = fhir_client.create(patient(value)).body
    assert created is not None
    found = fhir_client.search_one("Patient", {"identifier": f"{SYS}|{value}"})
    assert found is not None and found["id"] == created["id"]
    fhir_client.create(patient(value))
    with pytest.raises(FhirMultipleMatches):
        fhir_client.search_one("Patient", {"identifier": f"{SYS}|{value}"})


def test_strict_search_rejects_parameters_the_server_does_not_support(fhir_client: FhirClient) -> None:
    # sekmet-fhir 0.1.1 defines no `identifier` search parameter for DetectedIssue; without strict handling
    # it would ignore the parameter and return every DetectedIssue.
    with pytest.raises(FhirBadRequest):
        fhir_client.search_one("DetectedIssue", {"identifier": f"{SYS}|{uid()}"})


def _write_back_bundle(key: str) -> dict[str, Any]:
    pat, order = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    med = {
        "resourceType": "MedicationRequest",
        "identifier": [{"system": SYS, "value": f"mr-{key}"}],
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "inotuzumab ozogamicin"},
        "subject": {"reference": pat},
    }
    prov = {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": SYS, "code": f"prov-{key}"}]},
        "target": [{"reference": order}],
        "recorded": "2026-11-21T10:00:00Z",
        "agent": [{"who": {"display": "ino-adapter"}}],
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": pat,
                "resource": patient(f"pat-{key}"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYS}|pat-{key}"},
            },
            {
                "fullUrl": order,
                "resource": med,
                "request": {
                    "method": "POST",
                    "url": "MedicationRequest",
                    "ifNoneExist": f"identifier={SYS}|mr-{key}",
                },
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": prov,
                "request": {"method": "POST", "url": "Provenance", "ifNoneExist": f"_tag={SYS}|prov-{key}"},
            },
        ],
    }


def test_transaction_replay_with_if_none_exist_does_not_duplicate(fhir_client: FhirClient) -> None:
    key = uid()
    first = fhir_client.transaction(_write_back_bundle(key))
    replay = fhir_client.transaction(_write_back_bundle(key))  # new urn:uuids, same business identifiers

    assert [e["response"]["status"] for e in first["entry"]] == ["201 Created"] * 3
    assert [e["response"]["status"] for e in replay["entry"]] == ["200 OK"] * 3
    ids = [e["resource"]["id"] for e in first["entry"]]
    assert [e["resource"]["id"] for e in replay["entry"]] == ids
    assert all(e["response"]["etag"] == 'W/"1"' for e in replay["entry"])
    assert first["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{ids[0]}"
    assert first["entry"][2]["resource"]["target"][0]["reference"] == f"MedicationRequest/{ids[1]}"

    for rtype, params in (
        ("Patient", {"identifier": f"{SYS}|pat-{key}"}),
        ("MedicationRequest", {"identifier": f"{SYS}|mr-{key}"}),
        ("Provenance", {"_tag": f"{SYS}|prov-{key}"}),
    ):
        assert len(list(fhir_client.search(rtype, params))) == 1, rtype


def test_transaction_with_stale_if_match_rolls_back(fhir_client: FhirClient) -> None:
    obs_id = f"ino-{uid()}"
    fhir_client.update({"id": obs_id, **observation("Patient/x", uid())})
    marker = uid()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(marker), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"id": obs_id, **observation("Patient/x", uid(), status="amended")},
                "request": {"method": "PUT", "url": f"Observation/{obs_id}", "ifMatch": 'W/"9"'},
            },
        ],
    }
    with pytest.raises(FhirPreconditionFailed):
        fhir_client.transaction(bundle)
    assert fhir_client.search_one("Patient", {"identifier": f"{SYS}|{marker}"}) is None


def test_no_info_log_record_carries_ids_or_query_strings(
    fhir_client: FhirClient, fhir_server: SekmetServer, caplog: pytest.LogCaptureFixture
) -> None:
    value = uid()
    caplog.set_level(logging.DEBUG, logger="adapter.fhir")
    created = fhir_client.create(patient(value))
    assert created.body is not None
    pid = created.body["id"]
    fhir_client.read("Patient", pid)
    fhir_client.search_one("Patient", {"identifier": f"{SYS}|{value}"})
    with pytest.raises(FhirNotFound):
        fhir_client.read("Patient", f"gone-{value}")
    with pytest.raises(FhirBadRequest):
        fhir_client.search_one("Patient", {"identifier": f"{SYS}|{value}", "birthdate": f"x{value}"})

    records = [r for r in caplog.records if r.name.startswith("adapter.fhir")]
    assert any(r.levelno >= logging.WARNING for r in records)  # the failures were logged ...
    for r in records:
        text = r.getMessage()
        assert "?" not in text and fhir_server.token not in text
        if r.levelno >= logging.INFO:  # ... without ids, identifiers or queries
            assert pid not in text and value not in text and "identifier" not in text


# ---------------------------------------------------------------------------------------------------------
# fault injection through the transport (requests adapter), never through the server

BASE = "http://fhir.test/fhir"
Handler = Callable[[requests.PreparedRequest], "requests.Response | Exception"]


class FakeTransport(BaseAdapter):
    """A requests transport adapter that answers from a function and records what was sent (and, through
    the client's injected ``sleep``, how long the client would have waited: ``sleeps``)."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.sent: list[tuple[requests.PreparedRequest, Any]] = []
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        with self.lock:
            self.sent.append((request, timeout))
        answer = self.handler(request)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass

    def urls(self) -> list[str]:
        return [r.url or "" for r, _ in self.sent]


def respond(
    request: requests.PreparedRequest, status: int, body: Any = None, headers: dict[str, str] | None = None
) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp.reason = "Reason"
    resp._content = body if isinstance(body, bytes) else (b"" if body is None else orjson.dumps(body))
    resp.headers = CaseInsensitiveDict(headers or {"Content-Type": "application/fhir+json"})
    resp.url = request.url or ""
    resp.request = request
    return resp


Fake = Callable[..., tuple[FhirClient, FakeTransport]]


def fake_clients() -> Iterator[Fake]:
    """The body of the ``fake`` fixture (other test modules define theirs with ``yield from``)."""
    clients: list[FhirClient] = []

    def make(handler: Handler, **kwargs: Any) -> tuple[FhirClient, FakeTransport]:
        transport = FakeTransport(handler)
        session = requests.Session()
        session.mount("http://", transport)
        session.mount("https://", transport)
        kwargs.setdefault("auth", "s3cret-token")
        kwargs.setdefault("sleep", transport.sleeps.append)
        client = FhirClient(BASE, session=session, **kwargs)
        clients.append(client)
        return client, transport

    yield make
    for c in clients:
        c.session.close()


@pytest.fixture
def fake() -> Iterator[Fake]:
    """``fake(handler, **client_kwargs)``: a client on a fake transport; it never really sleeps."""
    yield from fake_clients()


SECRET = "Jane-Secretname-1970"
OUTCOME_500 = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "fatal",
            "code": "exception",
            "diagnostics": f"cannot store Patient/{SECRET} for urn:x|{SECRET} (GET Patient?name={SECRET})",
        }
    ],
}


def test_500_with_operation_outcome_is_a_server_error_without_patient_data(fake: Any) -> None:
    client, transport = fake(lambda req: respond(req, 500, OUTCOME_500))
    with pytest.raises(FhirServerError) as err:
        client.create(patient("x", name=[{"family": SECRET}]))
    exc = err.value
    assert exc.status == 500 and exc.outcome == OUTCOME_500
    assert "fatal exception: cannot store Patient/" in str(exc)
    assert SECRET not in str(exc)
    assert len(transport.sent) == 1  # a plain POST is never retried
    request, timeout = transport.sent[0]
    assert timeout == DEFAULT_TIMEOUT
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert request.headers["Accept"] == "application/fhir+json"
    assert request.headers["Authorization"] == "Bearer s3cret-token"
    assert "s3cret-token" not in repr(client)


def test_503_with_html_body_keeps_no_body(fake: Any) -> None:
    client, _ = fake(lambda req: respond(req, 503, b"<html>upstream down " + SECRET.encode() + b"</html>"))
    with pytest.raises(FhirServerError) as err:
        client.read("Patient", "p1")
    assert err.value.status == 503 and err.value.outcome is None
    assert SECRET not in str(err.value) and "<html>" not in str(err.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, FhirBadRequest),
        (401, FhirUnauthorized),
        (403, FhirUnauthorized),
        (404, FhirNotFound),
        (408, FhirThrottled),
        (409, FhirConflict),
        (410, FhirNotFound),
        (412, FhirPreconditionFailed),
        (418, FhirError),
        (422, FhirUnprocessable),
        (429, FhirThrottled),
        (502, FhirServerError),
        (302, FhirError),
    ],
)
def test_status_maps_to_typed_error(fake: Any, status: int, error: type[FhirError]) -> None:
    client, _ = fake(lambda req: respond(req, status, {"resourceType": "OperationOutcome", "issue": []}))
    with pytest.raises(FhirError) as err:
        client.read("Patient", "p1")
    assert type(err.value) is error and err.value.status == status


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectionError(f"Max retries exceeded with url: /fhir/Patient?identifier=urn:x|{SECRET}"),
        requests.ReadTimeout(f"Read timed out. (url: /fhir/Patient?identifier=urn:x|{SECRET})"),
        requests.ConnectTimeout("connect timeout"),
    ],
)
def test_network_failures_are_transport_errors(fake: Any, failure: Exception) -> None:
    client, _ = fake(lambda req: failure)
    with pytest.raises(FhirTransportError) as err:
        client.search_one("Patient", {"identifier": f"urn:x|{SECRET}"})
    assert err.value.status is None and err.value.outcome is None
    assert SECRET not in str(err.value) and "?" not in str(err.value)
    assert err.value.__cause__ is None  # the requests exception (full URL inside) is not chained


def test_2xx_with_a_non_json_body_is_an_error(fake: Any) -> None:
    client, _ = fake(lambda req: respond(req, 200, b"<html>login page</html>"))
    with pytest.raises(FhirError) as err:
        client.read("Patient", "p1")
    assert err.value.status == 200


def _searchset(next_url: str | None, self_url: str) -> dict[str, Any]:
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": []}


def test_search_stops_on_a_repeated_next_link(fake: Any) -> None:
    page = f"{BASE}/Patient?_offset=20"
    client, transport = fake(lambda req: respond(req, 200, _searchset(page, page)))
    with pytest.raises(FhirError, match="repeated"):
        list(client.search("Patient"))
    assert len(transport.sent) == 1


def test_search_stops_after_max_pages(fake: Any) -> None:
    count = iter(range(1000))
    client, transport = fake(
        lambda req: respond(req, 200, _searchset(f"{BASE}/Patient?_offset={next(count) + 1}", req.url or ""))
    )
    client.max_pages = 3
    with pytest.raises(FhirError, match="more than 3 pages"):
        list(client.search("Patient"))
    assert len(transport.sent) == 3


def test_next_link_outside_the_base_is_refused(fake: Any) -> None:
    elsewhere = "http://elsewhere.test/fhir/Patient?p=2"
    client, transport = fake(lambda req: respond(req, 200, _searchset(elsewhere, "")))
    with pytest.raises(FhirError, match="outside the FHIR base"):
        list(client.search("Patient"))
    assert [r.url for r, _ in transport.sent] == [f"{BASE}/Patient"]


def test_ignored_search_parameter_reported_in_the_bundle_is_an_error(fake: Any) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": "parameter ignored"}],
    }
    bundle = _searchset(None, "")
    bundle["entry"] = [
        {"resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "match"}},
        {"resource": outcome, "search": {"mode": "outcome"}},
    ]
    client, transport = fake(lambda req: respond(req, 200, bundle))
    with pytest.raises(FhirError, match="parameter ignored"):
        client.search_one("Patient", {"foo": "bar"})
    assert transport.sent[0][0].headers["Prefer"] == "handling=strict"
    assert [r["id"] for r in client.search("Patient", {"foo": "bar"}, strict=False)] == ["a"]


def test_transaction_answer_must_match_the_request(fake: Any) -> None:
    answer = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
    client, _ = fake(lambda req: respond(req, 200, answer))
    entry = {"request": {"method": "GET", "url": "Patient/x"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    with pytest.raises(FhirError, match="1 entries sent but 0"):
        client.transaction(bundle)


def test_a_code_system_url_in_the_query_is_not_taken_for_an_absolute_url(fake: Any) -> None:
    client, transport = fake(lambda req: respond(req, 200, _searchset(None, req.url or "")))
    list(client.search("Observation", {"code": "http://loinc.org|1975-2"}))
    resp = client.request("GET", "Observation?code=http://loinc.org|1975-2")
    assert resp.status == 200 and len(transport.sent) == 2
