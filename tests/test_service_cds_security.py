"""The CDS endpoints refuse every caller that is not the trusted EHR, end to end, before any evaluation
(the JWT rules themselves are unit-tested with adapter.service.security)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.cds_hooks import (
    SIGN,
    Ehr,
    draft,
    full_prefetch,
    order_sign_body,
    start_cds_service,
    utc_today,
)
from tests.support.service import JwtIssuer, ServiceProcess
from tests.support.treatment import dosing_patient, give, pre_dose_labs


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(signature)


@pytest.fixture(scope="module")
def issuer() -> JwtIssuer:
    return JwtIssuer()


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, issuer: JwtIssuer) -> Iterator[ServiceProcess]:
    process = start_cds_service(tmp_path_factory.mktemp("cds-security"), issuer)
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
def body() -> dict[str, Any]:
    """A call that gives a critical card when it is let in (day 8 ordered at the day-1 dose)."""
    b = pre_dose_labs(give(dosing_patient(f"sec-{uuid.uuid4().hex[:8]}", utc_today(), 7), 7, [(0, 1.6)]))
    order = b.inotuzumab_order(0, 1.6, rid="sec-draft")
    b.resources.remove(order)
    return order_sign_body(b.pid, [draft(order)], full_prefetch(b, None))


def forged(case: str, aud: str, issuer: JwtIssuer) -> str | None:
    now = int(time.time())
    claims = issuer.claims(aud)
    if case == "no-token":
        return None
    if case == "wrong-signature":
        other = ec.generate_private_key(ec.SECP384R1())
        return issuer.token(aud, key=other)
    if case == "alg-none":
        return unsigned({"alg": "none", "typ": "JWT", "kid": issuer.ec_kid}, claims)
    if case == "hs256-with-public-key":
        pem = issuer.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        head = {"alg": "HS256", "typ": "JWT", "kid": issuer.rsa_kid}
        signing_input = unsigned(head, claims).rsplit(".", 1)[0]
        return signing_input + "." + b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    if case == "wrong-aud":
        return issuer.token(aud.replace("nhs-ta514", "fda-label"))
    if case == "expired":
        return issuer.token(aud, exp=now - 120, iat=now - 180)
    if case == "untrusted-issuer":
        return JwtIssuer(iss="https://elsewhere.example").token(aud)
    if case == "not-a-jwt":
        return "opaque-token"
    raise AssertionError(case)


CASES = [
    "no-token",
    "wrong-signature",
    "alg-none",
    "hs256-with-public-key",
    "wrong-aud",
    "expired",
    "untrusted-issuer",
    "not-a-jwt",
]


@pytest.mark.parametrize("case", CASES)
def test_a_caller_that_is_not_the_trusted_ehr_is_refused_before_any_evaluation(
    case: str, ehr: Ehr, svc: ServiceProcess, issuer: JwtIssuer, body: dict[str, Any]
) -> None:
    path = f"/cds-services/{SIGN}"
    token = forged(case, svc.config["base_url"] + path, issuer)
    rid = uuid.uuid4().hex
    headers = {"X-Request-Id": rid, **({"Authorization": f"Bearer {token}"} if token else {})}
    r = httpx.post(svc.url + path, json=body, headers=headers)
    assert r.status_code in (401, 403), r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    if r.status_code == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert svc.events("cds auth refused", rid)
    assert not svc.events("cds hook", rid)  # no evaluation, no fetch
    fpath = path + "/feedback"
    ftoken = forged(case, svc.config["base_url"] + fpath, issuer)
    feedback = httpx.post(
        svc.url + fpath,
        json={
            "feedback": [
                {
                    "card": str(uuid.uuid4()),
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-11-21T10:00:00Z",
                }
            ]
        },
        headers={"Authorization": f"Bearer {ftoken}"} if ftoken else {},
    )
    assert feedback.status_code in (401, 403)


def test_a_replayed_jti_is_refused(ehr: Ehr, svc: ServiceProcess, body: dict[str, Any]) -> None:
    path = f"/cds-services/{SIGN}"
    token = ehr.token(path)
    call = {**body, "hookInstance": str(uuid.uuid4())}
    assert ehr.post(path, call, token=token).status_code == 200
    rid = uuid.uuid4().hex
    again = ehr.post(
        path, {**call, "hookInstance": str(uuid.uuid4())}, token=token, headers={"X-Request-Id": rid}
    )
    assert again.status_code == 401 and "replay" in again.text
    assert not svc.events("cds hook", rid)


def test_the_trusted_ehr_is_let_in_with_either_algorithm_and_refusals_left_no_trace(
    ehr: Ehr, body: dict[str, Any]
) -> None:
    """After every refusal above, the same hookInstance is evaluated afresh: nothing was computed or kept."""
    path = f"/cds-services/{SIGN}"
    for alg in ("ES384", "RS384"):
        instance = body["hookInstance"] if alg == "ES384" else str(uuid.uuid4())
        r = ehr.call({**body, "hookInstance": instance}, token=ehr.token(path, alg=alg))
        assert r.status_code == 200, r.text
        assert r.json()["cards"][0]["indicator"] == "critical"
        assert r.headers.get("idempotent-replayed") is None


def test_discovery_needs_no_token(svc: ServiceProcess) -> None:
    assert httpx.get(svc.url + "/cds-services").status_code == 200


def test_a_token_for_another_endpoint_is_refused(ehr: Ehr, svc: ServiceProcess) -> None:
    """A JWT is good for the endpoint it names: a hook's token cannot send feedback, and vice versa."""
    hook_token = ehr.token(f"/cds-services/{SIGN}")
    r = ehr.post(f"/cds-services/{SIGN}/feedback", {"feedback": []}, token=hook_token)
    assert r.status_code == 401
    feedback_token = ehr.token(f"/cds-services/{SIGN}/feedback")
    r = ehr.post(f"/cds-services/{SIGN}", {"hook": "order-sign"}, token=feedback_token)
    assert r.status_code == 401
    assert jwt.get_unverified_header(hook_token)["alg"] == "ES384"
