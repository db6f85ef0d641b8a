"""adapter.service.store and adapter.service.idempotency: answers kept by key (memory and SQLite, bounded,
expiring), claims for requests in flight, and the helper the routes and the CDS hooks use."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapter.service.config import ServiceConfig
from adapter.service.deps import ServiceDeps
from adapter.service.errors import ServiceError, UnavailableError
from adapter.service.idempotency import Reply, fingerprint, run_for_hook, run_idempotent
from adapter.service.store import (
    MemoryIdempotencyStore,
    SqliteIdempotencyStore,
    SqliteReplayCache,
    SqliteState,
    StoredResponse,
)

ANSWER = StoredResponse(200, b'{"a":1}', "application/json", (("X-Patients", "1"),), "fp")


@pytest.fixture(params=["memory", "sqlite"])
def store_and_clock(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, list[float]]:
    clock = [1000.0]
    if request.param == "memory":
        return MemoryIdempotencyStore(ttl=60, max_entries=3, clock=lambda: clock[0]), clock
    state = SqliteState(tmp_path / "state.sqlite")
    return SqliteIdempotencyStore(state, ttl=60, max_entries=3, clock=lambda: clock[0]), clock


def test_put_get_expire(store_and_clock: tuple[Any, list[float]]) -> None:
    store, clock = store_and_clock
    assert store.get("k") is None
    store.put("k", ANSWER)
    assert store.get("k") == ANSWER
    clock[0] += 61
    assert store.get("k") is None


def test_bounded(store_and_clock: tuple[Any, list[float]]) -> None:
    store, clock = store_and_clock
    for i in range(5):
        clock[0] += 1
        store.put(f"k{i}", ANSWER)
    assert [store.get(f"k{i}") is not None for i in range(5)] == [False, False, True, True, True]


def test_claims(store_and_clock: tuple[Any, list[float]]) -> None:
    store, clock = store_and_clock
    assert store.claim("k", 10)
    assert not store.claim("k", 10)  # in flight
    assert store.get("k") is None
    store.release("k")
    assert store.claim("k", 10)
    clock[0] += 11
    assert store.claim("k", 10)  # a stale claim (its request died) is taken over
    store.put("k", ANSWER)
    assert not store.claim("k", 10)
    store.release("k")  # an answer is not a claim: kept
    assert store.get("k") == ANSWER


def test_sqlite_state_is_shared_between_connections(tmp_path: Path) -> None:
    a = SqliteIdempotencyStore(SqliteState(tmp_path / "s.sqlite"))
    b = SqliteIdempotencyStore(SqliteState(tmp_path / "s.sqlite"))
    assert a.claim("k", 30) and not b.claim("k", 30)
    a.put("k", ANSWER)
    assert b.get("k") == ANSWER
    ra = SqliteReplayCache(a.state)
    rb = SqliteReplayCache(b.state)
    assert not ra.seen("iss", "j", 2e9) and rb.seen("iss", "j", 2e9)


# ---------------------------------------------------------------------------------------------------------
# run_idempotent


@pytest.fixture
def deps() -> ServiceDeps:
    return ServiceDeps.from_config(ServiceConfig(request_timeout_s=2))


def _counting(status: int = 200) -> tuple[list[int], Any]:
    calls: list[int] = []

    def compute() -> Reply:
        calls.append(1)
        return Reply(status, orjson.dumps({"n": len(calls)}))

    return calls, compute


def test_a_retry_gets_the_first_answer(deps: ServiceDeps) -> None:
    calls, compute = _counting()
    fp = fingerprint("POST", "/evaluate", [], b"{}")
    first = run_idempotent(deps, "token:a|/evaluate", "key-1", fp, compute)
    again = run_idempotent(deps, "token:a|/evaluate", "key-1", fp, compute)
    assert len(calls) == 1
    assert first.body == again.body and again.headers["Idempotent-Replayed"] == "true"
    # another caller's same key is another request
    run_idempotent(deps, "token:b|/evaluate", "key-1", fp, compute)
    assert len(calls) == 2


def test_the_same_key_for_another_request_is_422(deps: ServiceDeps) -> None:
    _calls, compute = _counting()
    run_idempotent(deps, "s", "k", fingerprint("POST", "/e", [], b"1"), compute)
    with pytest.raises(ServiceError) as info:
        run_idempotent(deps, "s", "k", fingerprint("POST", "/e", [], b"2"), compute)
    assert info.value.status == 422


def test_transient_failures_are_not_kept(deps: ServiceDeps) -> None:
    calls: list[int] = []

    def flaky() -> Reply:
        calls.append(1)
        if len(calls) == 1:
            raise UnavailableError("later")
        return Reply(200, b"{}")

    first = run_idempotent(deps, "s", "k", "fp", flaky)
    assert first.status_code == 503 and first.headers["Retry-After"]
    assert run_idempotent(deps, "s", "k", "fp", flaky).status_code == 200
    assert len(calls) == 2


def test_permanent_errors_are_kept(deps: ServiceDeps) -> None:
    calls: list[int] = []

    def bad() -> Reply:
        calls.append(1)
        raise ServiceError(400, "no")

    assert run_idempotent(deps, "s", "k", "fp", bad).status_code == 400
    assert run_idempotent(deps, "s", "k", "fp", bad).status_code == 400
    assert len(calls) == 1


def test_a_retry_while_the_first_runs_waits_for_its_answer(deps: ServiceDeps) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> Reply:
        calls.append(1)
        started.set()
        release.wait(5)
        return Reply(200, b'{"slow":true}')

    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(run_idempotent(deps, "s", "k", "fp", slow)))
    t.start()
    started.wait(5)
    threading.Timer(0.2, release.set).start()
    second = run_idempotent(deps, "s", "k", "fp", slow)
    t.join(5)
    assert len(calls) == 1 and second.body == results[0].body == b'{"slow":true}'


def test_a_retry_gets_409_when_the_first_is_still_running(deps: ServiceDeps) -> None:
    assert deps.idempotency.claim(
        __import__("adapter.service.idempotency", fromlist=["store_key"]).store_key("s", "k"), 30
    )
    with pytest.raises(ServiceError) as info:
        run_idempotent(deps, "s", "k", "fp", lambda: Reply(200, b"{}"), wait_s=0.1)
    assert info.value.status == 409 and info.value.headers["Retry-After"]


@pytest.mark.parametrize("key", ["", "a b", "é", "x" * 256])
def test_unusable_keys_are_400(deps: ServiceDeps, key: str) -> None:
    with pytest.raises(ServiceError) as info:
        run_idempotent(deps, "s", key, "fp", lambda: Reply(200, b"{}"))
    assert info.value.status == 400


def test_hook_instance_helper(deps: ServiceDeps) -> None:
    calls, compute = _counting()
    claims = {"iss": "https://ehr"}
    run_for_hook(deps, claims, "/cds-services/x", "hook-1", b'{"a":1}', compute)
    replay = run_for_hook(deps, claims, "/cds-services/x", "hook-1", b'{"a":1}', compute)
    assert len(calls) == 1 and replay.headers["Idempotent-Replayed"] == "true"
    # the same hookInstance with another body: answered afresh, not refused
    assert run_for_hook(deps, claims, "/cds-services/x", "hook-1", b'{"a":2}', compute).status_code == 200
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/fhir/Patient/p01-ph-neg-relapse/$evaluate", "/fhir/Patient/[id]/$evaluate"),
        ("/evaluate", "/evaluate"),
        ("/cds-services/ino-order-sign-nhs-ta514", "/cds-services/ino-order-sign-nhs-ta514"),
        ("/cds-services/ino-order-sign/summary/abcDEF123", "/cds-services/ino-order-sign/summary/[token]"),
        ("/x/" + "a" * 43, "/x/[opaque]"),
        ("/fhir/OperationDefinition/evaluate", "/fhir/OperationDefinition/[id]"),
    ],
)
def test_logged_path_shapes_hide_ids_and_credentials(path: str, shape: str) -> None:
    from adapter.service.logs import path_shape

    assert path_shape(path) == shape
