"""Retries, backoff, Retry-After, idempotency, batch/transaction entry statuses and paging guards.

Unit tests inject faults through a fake ``requests`` transport (``fake`` from test_fhir_client; the client's
``sleep`` is recorded, never slept). Integration tests put the fault proxy (tests/support/fault_proxy.py)
in front of the real sekmet server and check on the server's contents that nothing was lost or duplicated.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError

from adapter.fhir.client import (
    NO_RETRY,
    FhirChanged,
    FhirClient,
    FhirConflict,
    FhirError,
    FhirNotFound,
    FhirPreconditionFailed,
    FhirServerError,
    FhirThrottled,
    FhirTransportError,
    FhirUnauthorized,
    RetryPolicy,
    ServerCapabilities,
    is_idempotent_bundle,
    non_idempotent_entries,
    parse_retry_after,
)
from tests.support.fault_proxy import Fault, FaultProxy, on
from tests.support.fhir_server import SekmetServer
from tests.test_fhir_client import BASE, SYS, Fake, fake_clients, patient, respond

Answer = Any  # (status, body[, headers]) or an Exception


@pytest.fixture
def fake() -> Iterator[Fake]:
    yield from fake_clients()


def script(*answers: Answer) -> Callable[[requests.PreparedRequest], Any]:
    """A handler answering with ``answers`` in turn (the last one again and again)."""
    queue = list(answers)

    def handler(req: requests.PreparedRequest) -> Any:
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            return answer
        status, body, *rest = answer
        headers = {"Content-Type": "application/fhir+json", **(rest[0] if rest else {})}
        return respond(req, status, body, headers)

    return handler


PATIENT = {"resourceType": "Patient", "id": "p1"}
OO = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "transient"}]}


def refused() -> requests.ConnectionError:
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] refused")  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, "/fhir/Patient", reason))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Retry-After and backoff


def test_parse_retry_after_seconds_date_and_garbage() -> None:
    now = datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after("3", now.timestamp()) == 3.0
    assert parse_retry_after(later, now.timestamp()) == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now.timestamp()) == 0.0
    assert parse_retry_after("soon", now.timestamp()) is None
    assert parse_retry_after(None, now.timestamp()) is None


def test_503_with_retry_after_seconds_is_honoured(fake: Fake) -> None:
    client, transport = fake(
        script((503, OO, {"Retry-After": "2"}), (503, OO, {"Retry-After": "1"}), (200, PATIENT))
    )
    assert client.read("Patient", "p1")[0] == PATIENT
    assert len(transport.sent) == 3 and transport.sleeps == [2.0, 1.0]


def test_retry_after_http_date_is_read_against_the_clock(fake: Fake) -> None:
    now = datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=12), usegmt=True)
    client, transport = fake(script((429, OO, {"Retry-After": date}), (200, PATIENT)), clock=now.timestamp)
    client.read("Patient", "p1")
    assert transport.sleeps == [12.0]


def test_retry_after_is_capped_and_the_cap_is_configurable(fake: Fake) -> None:
    client, transport = fake(script((503, OO, {"Retry-After": "3600"}), (200, PATIENT)))
    client.read("Patient", "p1")
    assert transport.sleeps == [60.0]
    client, transport = fake(
        script((503, OO, {"Retry-After": "3600"}), (200, PATIENT)), retry=RetryPolicy(max_retry_after=5)
    )
    client.read("Patient", "p1")
    assert transport.sleeps == [5.0]


def test_backoff_is_exponential_with_jitter_and_bounded(fake: Fake) -> None:
    policy = RetryPolicy(max_tries=5, backoff=1.0, max_backoff=3.0)
    client, transport = fake(script((500, OO)), retry=policy)
    with pytest.raises(FhirServerError) as err:
        client.read("Patient", "p1")
    assert len(transport.sent) == 5 and len(transport.sleeps) == 4
    for pause, (low, high) in zip(transport.sleeps, [(0.5, 1), (1, 2), (1.5, 3), (1.5, 3)], strict=True):
        assert low <= pause <= high
    assert err.value.status == 500
    assert [policy.backoff_delay(n, 1.0) for n in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert [policy.backoff_delay(n, 0.0) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_every_retryable_status_is_retried(fake: Fake, status: int) -> None:
    client, transport = fake(script((status, OO), (200, PATIENT)))
    assert client.read("Patient", "p1")[0]["id"] == "p1"
    assert len(transport.sent) == 2


@pytest.mark.parametrize(
    ("status", "error"), [(429, FhirThrottled), (408, FhirThrottled), (504, FhirServerError)]
)
def test_a_retryable_status_that_persists_raises_its_typed_error(
    fake: Fake, status: int, error: type[FhirError]
) -> None:
    client, transport = fake(script((status, OO)), retry=RetryPolicy(max_tries=3))
    with pytest.raises(error) as err:
        client.read("Patient", "p1")
    assert len(transport.sent) == 3 and err.value.retryable
    assert err.value.outcome == OO


def test_no_retry_policy_sends_once(fake: Fake) -> None:
    client, transport = fake(script((503, OO)), retry=NO_RETRY)
    with pytest.raises(FhirServerError):
        client.read("Patient", "p1")
    assert len(transport.sent) == 1 and transport.sleeps == []


@pytest.mark.parametrize(
    "failure",
    [requests.ConnectionError("Connection reset by peer"), requests.ReadTimeout("read timed out")],
    ids=["reset", "read-timeout"],
)
def test_get_is_retried_after_a_lost_answer(fake: Fake, failure: Exception) -> None:
    client, transport = fake(script(failure, failure, (200, PATIENT)))
    assert client.read("Patient", "p1")[0]["id"] == "p1"
    assert len(transport.sent) == 3 and len(transport.sleeps) == 2


# ---------------------------------------------------------------------------------------------------------
# idempotency


def test_plain_post_is_not_retried_on_503(fake: Fake) -> None:
    client, transport = fake(script((503, OO, {"Retry-After": "1"}), (201, PATIENT)))
    with pytest.raises(FhirServerError):
        client.create(patient("x"))
    assert len(transport.sent) == 1


@pytest.mark.parametrize(
    "failure",
    [requests.ConnectionError("Connection reset by peer"), requests.ReadTimeout("read timed out")],
    ids=["reset", "read-timeout"],
)
def test_plain_post_is_not_retried_after_a_lost_answer(fake: Fake, failure: Exception) -> None:
    client, transport = fake(script(failure, (201, PATIENT)))
    with pytest.raises(FhirTransportError, match="not retried: not idempotent"):
        client.create(patient("x"))
    assert len(transport.sent) == 1


def test_a_post_that_never_left_is_sent_again(fake: Fake) -> None:
    client, transport = fake(script(refused(), (201, PATIENT)))
    assert client.create(patient("x")).status == 201
    assert len(transport.sent) == 2


def test_conditional_create_is_retried(fake: Fake) -> None:
    client, transport = fake(script(requests.ConnectionError("reset"), (503, OO), (200, PATIENT)))
    assert client.create(patient("x"), if_none_exist=f"identifier={SYS}|x").status == 200
    assert len(transport.sent) == 3
    assert all(r.headers["If-None-Exist"] == f"identifier={SYS}|x" for r, _ in transport.sent)


def _conditional_bundle(kind: str = "transaction", n: int = 2) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {
                "resource": patient(f"v{i}"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYS}|v{i}"},
            }
            for i in range(n)
        ],
    }


def _response_bundle(
    kind: str, statuses: list[str], outcomes: dict[int, Any] | None = None
) -> dict[str, Any]:
    entries = []
    for i, status in enumerate(statuses):
        response: dict[str, Any] = {"status": status}
        if outcomes and i in outcomes:
            response["outcome"] = outcomes[i]
        entry: dict[str, Any] = {"response": response}
        if status.startswith("2"):
            entry["resource"] = {"resourceType": "Patient", "id": f"id{i}"}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": f"{kind}-response", "entry": entries}


def test_is_idempotent_bundle() -> None:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "PUT", "url": "Observation/ino-1"}},
            {"request": {"method": "PUT", "url": f"Observation?identifier={SYS}|1"}},
            {"request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYS}|1"}},
            {"request": {"method": "GET", "url": "Patient/1"}},
            {"request": {"method": "DELETE", "url": "Patient/1"}},
            {"request": {"method": "PATCH", "url": "Patient/1", "ifMatch": 'W/"1"'}},
        ],
    }
    assert is_idempotent_bundle(bundle)
    bundle["entry"] += [
        {"request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "POST", "url": "Patient", "ifNoneExist": " "}},
        {"request": {"method": "PATCH", "url": "Patient/1"}},
        {"resource": {}},
    ]
    assert non_idempotent_entries(bundle) == [6, 7, 8, 9]
    assert not is_idempotent_bundle(bundle)


def test_transaction_marked_idempotent_is_retried_after_a_reset(fake: Fake) -> None:
    answer = _response_bundle("transaction", ["200 OK", "201 Created"])
    client, transport = fake(script(requests.ConnectionError("reset"), (200, answer)))
    assert client.transaction(_conditional_bundle(), idempotent=True) == answer
    assert len(transport.sent) == 2


def test_transaction_not_marked_idempotent_is_not_retried(fake: Fake) -> None:
    client, transport = fake(script((503, OO), (200, _response_bundle("transaction", ["200 OK", "200 OK"]))))
    with pytest.raises(FhirServerError):
        client.transaction(_conditional_bundle())
    assert len(transport.sent) == 1


def test_marking_a_bundle_with_a_plain_post_idempotent_is_refused(fake: Fake) -> None:
    client, transport = fake(script((200, {})))
    bundle = _conditional_bundle()
    del bundle["entry"][1]["request"]["ifNoneExist"]
    with pytest.raises(ValueError, match="entries 1 are not idempotent"):
        client.transaction(bundle, idempotent=True)
    bundle["type"] = "batch"
    with pytest.raises(ValueError, match="not idempotent"):
        client.batch(bundle, idempotent=True)
    assert transport.sent == []


@pytest.mark.parametrize(("status", "error"), [(409, FhirConflict), (412, FhirPreconditionFailed)])
def test_409_and_412_mean_someone_changed_it_and_are_never_retried(
    fake: Fake, status: int, error: type
) -> None:
    client, transport = fake(script((status, OO)))
    with pytest.raises(FhirChanged) as err:
        client.update({"resourceType": "Patient", "id": "p1"}, if_match="1")  # a PUT: idempotent
    assert type(err.value) is error and err.value.changed_by_someone and not err.value.retryable
    assert len(transport.sent) == 1
    with pytest.raises(FhirChanged):
        client.transaction(_conditional_bundle(), idempotent=True)
    assert len(transport.sent) == 2
    assert not FhirNotFound(404, None, "x").changed_by_someone


def test_a_static_token_refused_with_401_is_not_retried(fake: Fake) -> None:
    client, transport = fake(script((401, OO), (200, PATIENT)))
    with pytest.raises(FhirUnauthorized):
        client.read("Patient", "p1")
    assert len(transport.sent) == 1


# ---------------------------------------------------------------------------------------------------------
# entry statuses in transactions and batches


def test_a_failing_entry_in_a_transaction_response_raises_its_typed_error(fake: Fake) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "conflict", "diagnostics": "version mismatch on Observation/o-77"}
        ],
    }
    answer = _response_bundle("transaction", ["200 OK", "412 Precondition Failed"], {1: outcome})
    client, _ = fake(script((200, answer)))
    bundle = _conditional_bundle()
    bundle["entry"][1]["request"] = {"method": "PUT", "url": "Observation/o-77", "ifMatch": 'W/"3"'}
    with pytest.raises(FhirPreconditionFailed) as err:
        client.transaction(bundle)
    assert err.value.status == 412 and err.value.outcome == outcome and err.value.changed_by_someone
    assert "transaction entry 1 (PUT Observation/[id]): HTTP 412" in str(err.value)
    assert "o-77" not in str(err.value)


def test_an_unreadable_entry_status_is_an_error(fake: Fake) -> None:
    answer = {"resourceType": "Bundle", "type": "transaction-response", "entry": [{"response": {}}]}
    client, _ = fake(script((200, answer)))
    with pytest.raises(FhirError, match="no readable status"):
        client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {}}]})


def test_batch_returns_per_entry_results_and_retries_only_retryable_failures(fake: Fake) -> None:
    sent_entries: list[int] = []

    def handler(req: requests.PreparedRequest) -> Any:
        body = orjson.loads(req.body or b"{}")
        sent_entries.append(len(body["entry"]))
        if len(sent_entries) == 1:
            return respond(
                req, 200, _response_bundle("batch", ["201 Created", "429 Too Many Requests", "404 Not Found"])
            )
        return respond(req, 200, _response_bundle("batch", ["200 OK"]))

    client, transport = fake(handler)
    result = client.batch(_conditional_bundle("batch", 3), idempotent=True)
    assert sent_entries == [3, 1]
    assert orjson.loads(transport.sent[1][0].body or b"")["entry"][0]["request"]["ifNoneExist"].endswith(
        "|v1"
    )
    assert [e.status for e in result] == [201, 200, 404]
    assert [e.tries for e in result] == [1, 2, 1]
    assert not result.ok and [e.index for e in result.failed] == [2]
    assert isinstance(result[2].error, FhirNotFound)
    assert result[1].resource == {"resourceType": "Patient", "id": "id0"}
    assert len(transport.sleeps) == 1
    with pytest.raises(FhirNotFound):
        result.raise_for_failures()


def test_batch_not_marked_idempotent_leaves_failed_entries_failed(fake: Fake) -> None:
    client, transport = fake(
        script((200, _response_bundle("batch", ["201 Created", "429 Too Many Requests"])))
    )
    result = client.batch(_conditional_bundle("batch"))
    assert len(transport.sent) == 1
    assert isinstance(result[1].error, FhirThrottled) and result[1].error.retryable


def test_batch_entry_retries_are_bounded_and_use_the_outer_retry_after(fake: Fake) -> None:
    client, transport = fake(
        script((200, _response_bundle("batch", ["503 Service Unavailable"]), {"Retry-After": "2"})),
        retry=RetryPolicy(max_tries=3),
    )
    result = client.batch(_conditional_bundle("batch", 1), idempotent=True)
    assert len(transport.sent) == 3 and transport.sleeps == [2.0, 2.0]
    assert result[0].tries == 3 and isinstance(result[0].error, FhirServerError)


def test_batch_answer_must_match_the_request(fake: Fake) -> None:
    client, _ = fake(script((200, _response_bundle("batch", ["200 OK"]))))
    with pytest.raises(FhirError, match="2 entries sent but 1"):
        client.batch(_conditional_bundle("batch", 2))
    client, _ = fake(script((200, _response_bundle("transaction", ["200 OK"]))))
    with pytest.raises(FhirError, match="not a batch-response"):
        client.batch(_conditional_bundle("batch", 1))


# ---------------------------------------------------------------------------------------------------------
# pooling, capabilities, paging


def test_the_client_pools_connections_to_its_pool_size() -> None:
    with FhirClient(BASE, pool_size=7) as client:
        adapter = client.session.get_adapter(BASE)
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        assert adapter._pool_maxsize == 7  # type: ignore[attr-defined]
        assert adapter.max_retries.total == 0  # the client retries, not urllib3
    with pytest.raises(ValueError):
        FhirClient(BASE, pool_size=0)


STATEMENT = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "rest": [
        {
            "mode": "server",
            "interaction": [{"code": "transaction"}, {"code": "history-system"}],
            "resource": [
                {
                    "type": "Patient",
                    "conditionalCreate": True,
                    "operation": [{"name": "everything", "definition": "x"}],
                    "searchParam": [{"name": "_lastUpdated", "type": "date"}],
                },
                {"type": "Observation", "searchParam": [{"name": "code", "type": "token"}]},
            ],
        }
    ],
}


def test_capabilities_are_read_once_and_summed_up(fake: Fake) -> None:
    client, transport = fake(script((200, STATEMENT)))
    caps = client.server_capabilities()
    assert client.capabilities() is client.capabilities()
    assert client.server_capabilities() is caps
    assert len(transport.sent) == 1
    assert caps == ServerCapabilities.from_statement(STATEMENT)
    assert caps.everything and caps.transaction and not caps.batch and not caps.smart
    assert caps.searches_last_updated("Patient") and not caps.searches_last_updated("Observation")
    assert caps.creates_conditionally("Patient") and not caps.creates_conditionally("Observation")
    client.capabilities(refresh=True)
    assert len(transport.sent) == 2


def test_server_wide_last_updated_and_rest_level_everything() -> None:
    statement = {
        "resourceType": "CapabilityStatement",
        "rest": [
            {
                "mode": "server",
                "interaction": [{"code": "batch"}],
                "searchParam": [{"name": "_lastUpdated", "type": "date"}],
                "operation": [
                    {"name": "x", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
                ],
            }
        ],
    }
    caps = ServerCapabilities.from_statement(statement)
    assert caps.batch and caps.everything and caps.searches_last_updated("Observation")


def _page(self_url: str, next_url: str | None, ids: list[str], total: int | None = None) -> dict[str, Any]:
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {"resource": {"resourceType": "Observation", "id": i}, "search": {"mode": "match"}} for i in ids
        ],
    }
    if total is not None:
        bundle["total"] = total
    return bundle


def test_paging_whose_offset_does_not_advance_is_stopped(fake: Fake) -> None:
    pages = iter(
        [
            _page(
                f"{BASE}/Observation?_count=2&_offset=2", f"{BASE}/Observation?_count=2&_offset=2&x=1", ["a"]
            ),
            _page("", None, ["b"]),
        ]
    )
    client, transport = fake(lambda req: respond(req, 200, next(pages)))
    with pytest.raises(FhirError, match="_offset does not advance"):
        list(client.search("Observation"))
    assert len(transport.sent) == 1


def test_a_next_link_differing_only_in_parameter_order_is_a_repeat(fake: Fake) -> None:
    page = _page(f"{BASE}/Observation?a=1&b=2", f"{BASE}/Observation?b=2&a=1", ["a"])
    client, transport = fake(script((200, page)))
    with pytest.raises(FhirError, match="repeated a page link"):
        list(client.search("Observation"))
    assert len(transport.sent) == 1


def test_a_server_ignoring_the_offset_is_caught_by_repeated_results(fake: Fake) -> None:
    count = iter(range(1, 100))
    client, transport = fake(
        lambda req: respond(
            req, 200, _page(req.url or "", f"{BASE}/Observation?_offset={next(count)}", ["a", "b"])
        )
    )
    with pytest.raises(FhirError, match="repeated earlier results"):
        list(client.search("Observation"))
    assert len(transport.sent) == 2


def test_pages_from_follows_a_searchset_in_hand_with_the_same_guards(fake: Fake) -> None:
    second = f"{BASE}/Observation?_offset=2"
    first = _page(f"{BASE}/Observation?_offset=0", second, ["a", "b"])
    client, transport = fake(script((200, _page(second, None, ["c"]))))
    assert [len(p["entry"]) for p in client.pages_from(first)] == [2, 1]
    assert transport.urls() == [second]
    looping = _page(f"{BASE}/Observation?_offset=2", f"{BASE}/Observation?_offset=2", ["a"])
    with pytest.raises(FhirError, match="repeated a page link"):
        list(client.pages_from(looping))
    with pytest.raises(FhirError, match="not a Bundle"):
        list(client.pages_from({"resourceType": "Patient"}))


def test_everything_follows_pages_and_checks_the_total(fake: Fake) -> None:
    first = f"{BASE}/Patient/p1/$everything?_count=2&_offset=0"
    second = f"{BASE}/Patient/p1/$everything?_count=2&_offset=2"
    pages = {"0": _page(first, second, ["a", "b"], total=3), "2": _page(second, None, ["c"])}
    client, transport = fake(
        lambda req: respond(req, 200, pages["2" if "_offset=2" in (req.url or "") else "0"])
    )
    found = client.everything("p1", since="2026-11-01T00:00:00Z", count=2)
    assert [r["id"] for r in found] == ["a", "b", "c"]
    assert "_since=2026-11-01T00%3A00%3A00Z" in transport.urls()[0] and "_count=2" in transport.urls()[0]


def test_everything_that_is_incomplete_or_shifts_while_paging_is_an_error(fake: Fake) -> None:
    client, _ = fake(script((200, _page("", None, ["a", "b"], total=5))))
    with pytest.raises(FhirError, match="announced 5 resources and sent 2"):
        client.everything("p1")
    first, second = f"{BASE}/x?_offset=0", f"{BASE}/x?_offset=2"
    pages = iter([_page(first, second, ["a", "b"]), _page(second, None, ["b", "c"])])
    client, _ = fake(lambda req: respond(req, 200, next(pages)))
    with pytest.raises(FhirError, match="came on two pages"):
        client.everything("p1")


def test_everything_refuses_a_since_without_a_time_zone(fake: Fake) -> None:
    client, transport = fake(script((200, _page("", None, []))))
    with pytest.raises(ValueError, match=r"time ?zone"):
        client.everything("p1", since=datetime(2026, 11, 1))
    with pytest.raises(ValueError):
        client.everything("p1", since="2026-11-01")
    assert client.everything("p1", since=datetime(2026, 11, 1, tzinfo=UTC)) == []
    assert "_since=2026-11-01T00%3A00%3A00%2B00%3A00" in transport.urls()[0]


# ---------------------------------------------------------------------------------------------------------
# through the fault proxy, against the real server

FAST = RetryPolicy(max_tries=4, backoff=0.05, max_backoff=0.2)
BASE_POST = on("POST", r"^/fhir/?$")


def uid() -> str:
    return uuid.uuid4().hex[:12]


def _count(server: SekmetServer, rtype: str, param: str, value: str) -> int:
    with server.client() as direct:
        return len(list(direct.search(rtype, {param: value})))


def _transaction(key: str, conditional: bool = True) -> dict[str, Any]:
    pat, obs = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": pat,
            "resource": patient(f"pat-{key}"),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYS}|pat-{key}"},
        },
        {
            "fullUrl": obs,
            "resource": {
                "resourceType": "Observation",
                "identifier": [{"system": SYS, "value": f"obs-{key}"}],
                "status": "final",
                "code": {"text": "test"},
                "subject": {"reference": pat},
            },
            "request": {"method": "POST", "url": "Observation", "ifNoneExist": f"identifier={SYS}|obs-{key}"},
        },
    ]
    if not conditional:
        for entry in entries:
            del entry["request"]["ifNoneExist"]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_proxy_503_with_retry_after_is_waited_for(fault_proxy: FaultProxy, fhir_server: SekmetServer) -> None:
    with FhirClient(fault_proxy.base_url, auth=fhir_server.token) as client:
        created = client.update({"resourceType": "Patient", "id": f"ino-{uid()}", **patient(uid())})
        assert created.body is not None
        fault_proxy.inject(on("GET", r"/fhir/Patient/"), Fault.status(503, retry_after="1"))
        fault_proxy.clear()
        started = time.monotonic()
        resource, _ = client.read("Patient", created.body["id"])
    assert resource["id"] == created.body["id"]
    gets = fault_proxy.requests("GET", r"/fhir/Patient/")
    assert [s.fault for s in gets] == ["status", None]
    assert gets[1].at - gets[0].at >= 1.0 and time.monotonic() - started < 5


def test_proxy_429_on_a_conditional_create_is_retried_and_creates_one(
    fault_proxy: FaultProxy, fhir_server: SekmetServer
) -> None:
    value = uid()
    fault_proxy.inject(on("POST", r"/fhir/Patient$"), Fault.status(429, retry_after="0"), times=2)
    with FhirClient(fault_proxy.base_url, auth=fhir_server.token, retry=FAST) as client:
        assert client.create(patient(value), if_none_exist=f"identifier={SYS}|{value}").status == 201
    assert fault_proxy.count("POST", r"/fhir/Patient$") == 3 and fault_proxy.pending() == 0
    assert _count(fhir_server, "Patient", "identifier", f"{SYS}|{value}") == 1


def test_proxy_reset_after_the_server_committed_an_idempotent_transaction_creates_each_resource_once(
    fault_proxy: FaultProxy, fhir_server: SekmetServer
) -> None:
    key = uid()
    fault_proxy.inject(BASE_POST, Fault.reset(forward=True))  # the server does the work, the answer is lost
    with FhirClient(fault_proxy.base_url, auth=fhir_server.token, retry=FAST) as client:
        out = client.transaction(_transaction(key), idempotent=True)
    assert [e["response"]["status"] for e in out["entry"]] == ["200 OK", "200 OK"]  # the retry found them
    assert fault_proxy.count("POST") == 2
    assert _count(fhir_server, "Patient", "identifier", f"{SYS}|pat-{key}") == 1
    assert _count(fhir_server, "Observation", "identifier", f"{SYS}|obs-{key}") == 1


def test_proxy_reset_on_a_plain_transaction_is_reported_not_retried(
    fault_proxy: FaultProxy, fhir_server: SekmetServer
) -> None:
    key = uid()
    fault_proxy.inject(BASE_POST, Fault.reset(forward=True))
    with (
        FhirClient(fault_proxy.base_url, auth=fhir_server.token, retry=FAST) as client,
        pytest.raises(FhirTransportError, match="may have been processed") as err,
    ):
        client.transaction(_transaction(key, conditional=False))
    assert err.value.exit_code == 5
    assert fault_proxy.count("POST") == 1
    assert _count(fhir_server, "Patient", "identifier", f"{SYS}|pat-{key}") == 1  # done once, never twice


def test_proxy_read_timeout_is_retried_without_duplicating(
    fault_proxy: FaultProxy, fhir_server: SekmetServer
) -> None:
    key = uid()
    fault_proxy.inject(BASE_POST, Fault.hold(3, forward=True))
    with FhirClient(fault_proxy.base_url, auth=fhir_server.token, retry=FAST, timeout=(2.0, 0.5)) as client:
        started = time.monotonic()
        client.transaction(_transaction(key), idempotent=True)
        assert time.monotonic() - started < 2.5
    assert [s.fault for s in fault_proxy.requests("POST")] == ["hold", None]
    assert _count(fhir_server, "Patient", "identifier", f"{SYS}|pat-{key}") == 1
    assert _count(fhir_server, "Observation", "identifier", f"{SYS}|obs-{key}") == 1


def test_proxy_412_on_a_transaction_is_reported_not_retried(
    fault_proxy: FaultProxy, fhir_server: SekmetServer
) -> None:
    key = uid()
    fault_proxy.inject(BASE_POST, Fault.status(412))
    with (
        FhirClient(fault_proxy.base_url, auth=fhir_server.token, retry=FAST) as client,
        pytest.raises(FhirPreconditionFailed) as err,
    ):
        client.transaction(_transaction(key), idempotent=True)
    assert err.value.changed_by_someone and err.value.outcome is not None
    assert fault_proxy.count("POST") == 1
    assert _count(fhir_server, "Patient", "identifier", f"{SYS}|pat-{key}") == 0


def test_proxy_429_inside_a_batch_under_an_outer_200_retries_only_that_entry(
    fault_proxy: FaultProxy, fhir_server: SekmetServer
) -> None:
    key = uid()
    entries = [
        {
            "resource": patient(f"b{i}-{key}"),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYS}|b{i}-{key}"},
        }
        for i in range(3)
    ]
    fault_proxy.inject(BASE_POST, Fault.entry_status(1, "429 Too Many Requests"))
    with FhirClient(fault_proxy.base_url, auth=fhir_server.token, retry=FAST) as client:
        result = client.batch({"resourceType": "Bundle", "type": "batch", "entry": entries}, idempotent=True)
    assert result.ok
    assert [e.status for e in result] == [201, 200, 201]  # entry 1: the server had created it; found again
    assert [e.tries for e in result] == [1, 2, 1]
    posts = fault_proxy.requests("POST")
    assert [len(p.json()["entry"]) for p in posts] == [3, 1]
    assert posts[1].json()["entry"][0]["request"]["ifNoneExist"].endswith(f"b1-{key}")
    for i in range(3):
        assert _count(fhir_server, "Patient", "identifier", f"{SYS}|b{i}-{key}") == 1


@pytest.mark.parametrize("status", [408, 500, 502, 504])
def test_proxy_transient_statuses_on_a_search_are_retried(
    fault_proxy: FaultProxy, fhir_server: SekmetServer, status: int
) -> None:
    fault_proxy.inject(on("GET", r"/fhir/Patient\?"), Fault.status(status))
    with FhirClient(fault_proxy.base_url, auth=fhir_server.token, retry=FAST) as client:
        assert client.search_one("Patient", {"identifier": f"{SYS}|{uid()}"}) is None
    assert [s.fault for s in fault_proxy.requests("GET")] == ["status", None]


def test_proxy_lasting_outage_ends_in_a_typed_error_after_max_tries(
    fault_proxy: FaultProxy, fhir_server: SekmetServer
) -> None:
    fault_proxy.inject(None, Fault.reset(), times=None)
    with (
        FhirClient(fault_proxy.base_url, auth=fhir_server.token, retry=FAST) as client,
        pytest.raises(FhirTransportError, match="after 4 tries") as err,
    ):
        client.read("Patient", "anything")
    assert err.value.status is None and fault_proxy.count() == 4


# ---------------------------------------------------------------------------------------------------------
# the fault proxy itself (tests/support/fault_proxy.py)


def test_fault_proxy_delay_rewrite_body_match_and_http_date(fhir_server: SekmetServer) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with FaultProxy(fhir_server.base_url) as proxy:
        url, headers = f"{proxy.base_url}/metadata", fhir_server.auth_headers
        proxy.inject(on("GET", "metadata"), Fault.delay(0.3))
        started = time.monotonic()
        assert requests.get(url, headers=headers, timeout=5).status_code == 200
        assert time.monotonic() - started >= 0.3
        proxy.inject(None, Fault.rewrite(lambda status, h, body: (418, h, b"{}")))
        assert requests.get(url, headers=headers, timeout=5).status_code == 418
        proxy.inject(None, Fault.status(503, retry_after=when), body=lambda b: b"needle" in b)
        assert (
            requests.post(f"{proxy.base_url}/Patient", data=b"{}", headers=headers, timeout=5).status_code
            != 503
        )
        answer = requests.post(f"{proxy.base_url}/Patient", data=b'{"needle":1}', headers=headers, timeout=5)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "Wed, 02 Jan 2030 03:04:05 GMT"
        assert proxy.pending() == 0
        assert [s.fault for s in proxy.seen] == ["delay", "rewrite", None, "status"]
        assert proxy.seen[3].json() == {"needle": 1}
        # links in answers point at the proxy, so that paging stays behind it
        bundle = requests.get(f"{proxy.base_url}/Patient?_count=1", headers=headers, timeout=5).json()
        assert all(link["url"].startswith(proxy.base_url) for link in bundle["link"])


def test_fault_proxy_stops_promptly_while_holding_a_connection(fhir_server: SekmetServer) -> None:
    proxy = FaultProxy(fhir_server.base_url).start()
    proxy.inject(None, Fault.hold(60))
    failures: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(f"{proxy.base_url}/metadata", timeout=30)
        except requests.RequestException as exc:
            failures.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while not proxy.seen and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    proxy.stop()
    caller.join(5)
    assert time.monotonic() - started < 2 and not caller.is_alive() and len(failures) == 1
    proxy.stop()  # idempotent


def test_proxy_download_broken_off_is_retried_and_never_left_as_a_file(
    fault_proxy: FaultProxy, fhir_server: SekmetServer, tmp_path: Path
) -> None:
    """A Bulk Data file download (client.download) whose body breaks off mid-way is fetched again; one that
    always breaks off is an error, and neither leaves a file (nor its ``.part``) that could pass for data."""
    with FhirClient(fault_proxy.base_url, auth=fhir_server.token, retry=FAST) as client:
        created = client.update({"resourceType": "Patient", "id": f"ino-{uid()}", **patient(uid())})
        assert created.body is not None
        path = f"Patient/{created.body['id']}"
        whole = requests.get(
            f"{fhir_server.base_url}/{path}", headers=fhir_server.auth_headers, timeout=10
        ).content
        fault_proxy.inject(on("GET", path), Fault.cut(), times=1)
        target = tmp_path / "Patient.ndjson"
        assert client.download(path, target) == len(whole)
        assert target.read_bytes() == whole and not list(tmp_path.glob("*.part"))
        assert [s.fault for s in fault_proxy.requests("GET", path)] == ["cut", None]
        fault_proxy.inject(on("GET", path), Fault.cut(), times=None)
        broken = tmp_path / "broken.ndjson"
        with pytest.raises(FhirTransportError, match="broke off"):
            client.download(path, broken)
        fault_proxy.clear_faults()
        with pytest.raises(FhirNotFound):
            client.download("Patient/no-such-patient-x", tmp_path / "missing.ndjson")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Patient.ndjson"]
