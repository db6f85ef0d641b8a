"""Helpers for the CDS Hooks tests: an EHR calling the real service process (tests/support/service.py).

- :func:`start_cds_service` starts ``ino-adapter serve`` with a trusted EHR (ES384 and RS384 keys, JWKS file)
  and a feedback database in the work dir.
- :class:`Ehr` signs a fresh JWT for every call (``aud`` = the service URL, a new ``jti``), builds order-sign
  and order-select requests in the specification's example shape from a :class:`PatientBuilder`, and
  checks every response it gets against the CDS Hooks rules (tests/support/cds_conformance.py); every card
  it ever received is kept in :data:`ISSUED` for the suite-wide conformance test.

Dates: the service decides as of its own clock (UTC), so patients are built relative to :func:`utc_today`.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support.cds_conformance import response_faults
from tests.support.service import JwtIssuer, ServiceProcess, base_config, start_service
from tests.support.synth import PatientBuilder

#: Every card any CDS test received, with where it came from (checked by the suite-wide conformance test).
ISSUED: list[tuple[str, dict[str, Any]]] = []
SIGN = "ino-order-sign-nhs-ta514"
SELECT = "ino-order-select-nhs-ta514"
#: prefetch key -> the resource types it holds (discovery's templates)
PREFETCH_TYPES: dict[str, tuple[str, ...]] = {
    "conditions": ("Condition",),
    "medication-requests": ("MedicationRequest",),
    "medication-statements": ("MedicationStatement",),
    "medication-administrations": ("MedicationAdministration",),
    "procedures": ("Procedure",),
    "allergies": ("AllergyIntolerance",),
    "immunizations": ("Immunization",),
}


def utc_today() -> date:
    return datetime.now(UTC).date()


def start_cds_service(workdir: Path, issuer: JwtIssuer, **more: Any) -> ServiceProcess:
    config = base_config(workdir, issuer, feedback_db=str(workdir / "feedback.sqlite"), **more)
    return start_service(workdir, config)


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A searchset Bundle of ``resources``; None (the specification's "no data") when there are none."""
    if not resources:
        return None
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}",
                "resource": copy.deepcopy(r),
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def full_prefetch(b: PatientBuilder, lab_codes: set[str] | None = None) -> dict[str, Any]:
    """Every prefetch key filled as a conformant EHR would from ``b``'s resources. Observations go to
    ``labs`` when their code is one of ``lab_codes`` (``system|code``), else to ``observations``."""
    res = b.resources
    patient = next(r for r in res if r["resourceType"] == "Patient")
    obs = [r for r in res if r["resourceType"] == "Observation"]

    def is_lab(o: dict[str, Any]) -> bool:
        codes = {f"{c.get('system')}|{c.get('code')}" for c in o.get("code", {}).get("coding", [])}
        return bool(lab_codes and codes & lab_codes)

    out: dict[str, Any] = {
        "patient": copy.deepcopy(patient),
        "labs": searchset([o for o in obs if is_lab(o)]),
        "observations": searchset([o for o in obs if not is_lab(o)]),
    }
    for key, types in PREFETCH_TYPES.items():
        out[key] = searchset([r for r in res if r["resourceType"] in types])
    return out


def order_sign_body(
    patient_id: str,
    orders: list[dict[str, Any]],
    prefetch: dict[str, Any] | None,
    *,
    hook: str = "order-sign",
    fhir_server: str | None = None,
    token: str | None = None,
    selections: list[str] | None = None,
    instance: str | None = None,
) -> dict[str, Any]:
    """A request shaped like the specification's order-sign (R4) example; ``orders`` are the draftOrders."""
    context: dict[str, Any] = {
        "userId": "PractitionerRole/123",
        "patientId": patient_id,
        "encounterId": "89284",
    }
    if hook == "order-select":
        context["selections"] = selections or [f"MedicationRequest/{o['id']}" for o in orders]
    context["draftOrders"] = {
        "resourceType": "Bundle",
        "entry": [{"resource": copy.deepcopy(o)} for o in orders],
    }
    body: dict[str, Any] = {"hookInstance": instance or str(uuid.uuid4()), "hook": hook, "context": context}
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
        if token is not None:
            body["fhirAuthorization"] = {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "user/Patient.read user/Observation.read",
                "subject": "ino-adapter",
            }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def draft(order: dict[str, Any]) -> dict[str, Any]:
    """The order as a draft of the current ordering session."""
    out = copy.deepcopy(order)
    out["status"] = "draft"
    return out


@dataclass
class Ehr:
    svc: ServiceProcess
    issuer: JwtIssuer
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60.0))

    def url(self, path: str) -> str:
        return self.svc.url + path

    def token(self, path: str, **kwargs: Any) -> str:
        return self.issuer.token(self.svc.config["base_url"] + path, **kwargs)

    def post(self, path: str, body: Any, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token(path)}", **kwargs.pop("headers", {})}
        return self.client.post(self.url(path), json=body, headers=headers, **kwargs)

    def call(self, body: dict[str, Any], service: str = SIGN, **kwargs: Any) -> httpx.Response:
        """Call a service; a 200 answer is checked against the CDS Hooks rules and its cards kept."""
        r = self.post(f"/cds-services/{service}", body, **kwargs)
        if r.status_code == 200:
            answer = r.json()
            faults = response_faults(answer)
            assert not faults, faults
            ISSUED.extend((service, c) for c in answer["cards"])
        return r

    def cards(self, body: dict[str, Any], service: str = SIGN) -> list[dict[str, Any]]:
        r = self.call(body, service)
        assert r.status_code == 200, r.text
        cards: list[dict[str, Any]] = r.json()["cards"]
        return cards

    def feedback(self, service: str, items: list[dict[str, Any]]) -> httpx.Response:
        return self.post(f"/cds-services/{service}/feedback", {"feedback": items})

    def close(self) -> None:
        self.client.close()


def by_kind(cards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["source"]["topic"]["code"]: c for c in cards}
