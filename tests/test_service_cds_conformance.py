"""CDS Hooks conformance, offline: the checker (tests/support/cds_conformance.py) catches what the
specification forbids, accepts the specification's own examples, and every card the service produced in
this test session passes it."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from adapter.service.cds.cards import SUMMARY_MAX, md_text, shorten
from tests.support.cds_conformance import card_faults, discovery_faults, feedback_faults, response_faults
from tests.support.cds_hooks import (
    ISSUED,
    Ehr,
    draft,
    full_prefetch,
    order_sign_body,
    start_cds_service,
    utc_today,
)
from tests.support.service import JwtIssuer
from tests.support.treatment import dosing_patient, give, pre_dose_labs

GOOD: dict[str, Any] = {
    "uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
    "summary": "Inotuzumab dose 1.6 mg differs from the calculated 1.00 mg",
    "indicator": "critical",
    "detail": "**Order**: 1\\.6 mg",
    "source": {
        "label": "UK regimen",
        "topic": {"system": "https://x.example/topic", "code": "dose-mismatch"},
    },
    "suggestions": [
        {
            "label": "Change the dose",
            "uuid": "e56e1945-20b3-4393-8503-a1a20fd73152",
            "isRecommended": True,
            "actions": [
                {
                    "type": "update",
                    "description": "Set the dose",
                    "resource": {"resourceType": "MedicationRequest", "id": "d1"},
                }
            ],
        },
        {
            "label": "Remove",
            "uuid": "f6b95768-b1c8-40dc-8385-bf3504b82ffb",
            "actions": [{"type": "delete", "description": "Remove", "resourceId": "MedicationRequest/d1"}],
        },
    ],
    "selectionBehavior": "at-most-one",
    "overrideReasons": [{"system": "https://x.example/reasons", "code": "r1", "display": "Patient refused"}],
    "links": [{"label": "Summary", "url": "https://cds.example.org/s/1", "type": "absolute"}],
}


def broken(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the value at ``path`` (dots; list indexes as numbers) replaced, or removed (value None)."""
    card = copy.deepcopy(GOOD)
    node: Any = card
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return card


def test_a_good_card_passes() -> None:
    assert card_faults(GOOD) == []


@pytest.mark.parametrize(
    ("path", "value", "fault"),
    [
        ("summary", "x" * 140, "summary"),
        ("summary", None, "summary"),
        ("indicator", "hard-stop", "indicator"),
        ("source", None, "source"),
        ("source.label", None, "source.label"),
        ("source.topic.system", None, "topic.system"),
        ("uuid", None, "uuid"),  # feedback is expected
        ("selectionBehavior", None, "selectionBehavior"),
        ("selectionBehavior", "all", "selectionBehavior"),
        ("suggestions.0.uuid", None, "suggestions[0].uuid"),
        ("suggestions.0.label", None, "label"),
        ("suggestions.0.actions.0.type", "patch", "type"),
        ("suggestions.0.actions.0.description", None, "description"),
        ("suggestions.0.actions.0.resource", None, "resource"),
        ("suggestions.0.actions.0.resource", {"resourceType": "MedicationRequest"}, "resource.id"),
        ("suggestions.1.actions.0.resourceId", None, "resourceId"),
        ("suggestions.1.actions.0.resourceId", "https://ehr/x/MedicationRequest/d1", "resourceId"),
        ("suggestions.1.isRecommended", True, "several recommended"),
        ("overrideReasons.0.display", None, "display"),
        ("overrideReasons.0.display", "", "display"),
        ("links.0.type", "iframe", "type"),
        ("links.0.url", "/relative", "url"),
        ("links.0.appContext", "{}", "appContext"),
    ],
)
def test_the_checker_catches_what_the_specification_forbids(path: str, value: Any, fault: str) -> None:
    faults = card_faults(broken(path, value))
    assert faults and any(fault in f for f in faults), faults


def test_uuids_are_optional_without_feedback_and_unique_within_a_response() -> None:
    assert card_faults(broken("uuid", None), feedback=False) == []
    assert any("not unique" in f for f in response_faults({"cards": [GOOD, GOOD]}))
    assert response_faults({"cards": "none"}) == ["response.cards: REQUIRED array"]


def test_the_specifications_examples_pass() -> None:
    """The response, discovery and feedback examples of CDS Hooks 2.0 (its card examples have no uuid)."""
    response = {
        "cards": [
            {
                "uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
                "summary": "Example Card",
                "indicator": "info",
                "detail": "This is an example card.",
                "source": {"label": "Static CDS Service Example", "url": "https://example.com"},
                "links": [
                    {"label": "Google", "url": "https://google.com", "type": "absolute"},
                    {
                        "label": "SMART Example App",
                        "url": "https://smart.example.com/launch",
                        "type": "smart",
                        "appContext": '{"session":3456356}',
                    },
                ],
            },
            {
                "summary": "Another card",
                "indicator": "warning",
                "source": {"label": "Static CDS Service Example"},
                "overrideReasons": [
                    {
                        "code": "reason-code-provided-by-service",
                        "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
                        "display": "Patient refused",
                    }
                ],
            },
        ]
    }
    assert response_faults(response, feedback=False) == []
    discovery = {
        "services": [
            {
                "hook": "order-select",
                "title": "Order Echo CDS Service",
                "description": "An example of a CDS Service that simply echoes the order(s) being placed",
                "id": "order-echo",
                "prefetch": {
                    "patient": "Patient/{{context.patientId}}",
                    "medications": "MedicationRequest?patient={{context.patientId}}",
                    "user": "PractitionerRole?_id={{userPractitionerRoleId}}",
                },
            }
        ]
    }
    assert discovery_faults(discovery) == []
    assert discovery_faults(
        {"services": [{**discovery["services"][0], "prefetch": {"x": "Patient/{{context.medication.id}}"}}]}
    )
    assert discovery_faults(
        {"services": [{**discovery["services"][0], "prefetch": {"x": "Obs?date=ge{{today() - 3 days}}"}}]}
    )
    feedback: dict[str, list[dict[str, Any]]] = {
        "feedback": [
            {
                "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
                "outcomeTimestamp": "2021-12-11T10:05:31Z",
            },
            {
                "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "code": "d7ecf885",
                        "system": "https://example.com/cds-hooks/override-reason-system",
                    },
                    "userComment": "A comment entered by the clinician.",
                },
                "outcomeTimestamp": "2020-12-11T00:00:00Z",
            },
        ]
    }
    assert feedback_faults(feedback) == []
    assert feedback_faults({"feedback": [{**feedback["feedback"][0], "acceptedSuggestions": None}]})
    assert feedback_faults({"feedback": [{**feedback["feedback"][1], "outcomeTimestamp": "2020-12-11"}]})
    assert feedback_faults({"feedback": [{**feedback["feedback"][1], "outcome": "ignored"}]})


def test_markdown_text_and_summaries() -> None:
    assert md_text("a*b_c [d](e) <f> #g\nh") == "a\\*b\\_c \\[d\\]\\(e\\) \\<f\\> \\#g h"
    assert md_text("x\u202ey") == "x\ufffdy"  # bidi control neutralised
    long = shorten("word " * 60)
    assert len(long) <= SUMMARY_MAX and long.endswith("…")


@pytest.fixture(scope="module")
def session_cards(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, dict[str, Any]]]:
    """The cards of this session; when this module runs alone, a few produced here."""
    if ISSUED:
        return ISSUED
    issuer = JwtIssuer()
    svc = start_cds_service(Path(tmp_path_factory.mktemp("cds-conformance")), issuer)
    ehr = Ehr(svc, issuer)
    try:
        for mg in (1.6, 1.0):
            b = pre_dose_labs(
                give(dosing_patient(f"cf-{uuid.uuid4().hex[:8]}", utc_today(), 7), 7, [(0, 1.6)])
            )
            order = b.inotuzumab_order(0, mg, rid="cf-draft")
            b.resources.remove(order)
            ehr.cards(order_sign_body(b.pid, [draft(order)], full_prefetch(b, None)))
    finally:
        ehr.close()
        svc.stop()
    return ISSUED


def test_every_card_the_service_produced_conforms(session_cards: list[tuple[str, dict[str, Any]]]) -> None:
    indicators = {c["indicator"] for _, c in session_cards}
    assert {"critical", "info"} <= indicators, indicators
    assert any(c.get("suggestions") for _, c in session_cards)
    for service, card in session_cards:
        assert card_faults(card) == [], (service, card["summary"])
        for s in card.get("suggestions") or []:
            for action in s["actions"]:
                if "resource" in action:
                    assert action["resource"]["resourceType"] == "MedicationRequest"


def test_every_suggested_resource_is_valid_fhir_r4(
    session_cards: list[tuple[str, dict[str, Any]]], r4_validator: Any
) -> None:
    """What a suggestion asks the EHR to create or update validates against the R4 StructureDefinitions."""
    from tests.support.r4_validator import errors, format_issues

    resources = {
        json.dumps(a["resource"], sort_keys=True): a["resource"]
        for _, card in session_cards
        for s in card.get("suggestions") or []
        for a in s["actions"]
        if "resource" in a
    }
    assert resources
    bad = errors(r4_validator(list(resources.values())))
    assert not bad, format_issues(bad)
