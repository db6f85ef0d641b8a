"""Fuzzing the HTTP service (a real uvicorn process) with schemathesis against its own OpenAPI document:
no 5xx (but 503 with Retry-After), and every error body an OperationOutcome. Bounded: ~300 examples."""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.support.service import ServiceProcess

PER_OPERATION = 30  # 7 operations, valid and invalid input: a few hundred requests


def _header(response: Any, name: str) -> str:
    for key, values in response.headers.items():
        if key.lower() == name:
            return str(values[0] if isinstance(values, list) else values)
    return ""


def _check(case: Any, service: ServiceProcess, seen: dict[int, int]) -> None:
    response = case.call(base_url=service.url, headers=service.auth(), timeout=30)
    seen[response.status_code] = seen.get(response.status_code, 0) + 1
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500 or response.status_code == 503, (
        where,
        response.status_code,
        response.text[:500],
    )
    if response.status_code >= 400:
        assert _header(response, "content-type").startswith("application/fhir+json"), (
            where,
            response.text[:300],
        )
        body = json.loads(response.content)
        assert body["resourceType"] == "OperationOutcome" and body["issue"], (where, body)
    if response.status_code == 503:
        assert _header(response, "retry-after")


def test_fuzz_the_openapi_operations(service: ServiceProcess) -> None:
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == 7
    seen: dict[int, int] = {}
    for operation, mode in [
        (o, m) for o in operations for m in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]:

        @settings(
            max_examples=PER_OPERATION,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            _check(case, service, seen)

        try:
            run()
        except Unsatisfiable:  # no invalid input exists (e.g. GET /health has no parameters)
            assert mode == GenerationMode.NEGATIVE
    print(f"\nfuzzing: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= 150
    if 200 not in seen:
        pytest.fail("no generated request was accepted: the schema does not describe usable input")
