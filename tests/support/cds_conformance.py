"""The CDS Hooks 2.0 response, discovery and feedback rules, checked offline (plain code, no network).

Each ``*_faults`` function returns the list of rules a document breaks (empty: it conforms), each fault a
short path and the rule, so that a failing test says exactly what is wrong. What is checked, by the
specification's sections (https://cds-hooks.hl7.org/2.0/):

- Discovery: ``services`` array; each service ``hook``, ``description``, ``id`` strings (REQUIRED), ``title``
  and ``usageRequirements`` strings, ``prefetch`` an object of strings whose tokens are ``{{context.<a root
  field>}}``, one of the four user identifiers, or (a service that asks for it: ``date_tokens``) the
  CDS Hooks 3.0 ballot's ``{{today() - N days}}``; the ids of services of one hook are unique.
- Response: a ``cards`` array (REQUIRED), ``systemActions`` an array of Actions.
- Card: ``summary`` a string shorter than 140 characters; ``indicator`` one of info, warning, critical;
  ``source`` with a ``label`` (``url``/``icon`` absolute URLs, ``topic`` a Coding with code and system);
  ``detail`` a string; ``uuid`` a string, REQUIRED (and a UUID) when the service takes feedback, unique in
  the response; ``suggestions`` demand ``selectionBehavior`` (at-most-one or any); ``overrideReasons``
  Codings each with code, system and a non-empty ``display``; ``links`` with ``label``, an absolute
  ``url``, ``type`` absolute or smart, ``appContext`` only on smart links, ``autolaunchable`` boolean.
- Suggestion: ``label``; ``uuid`` (REQUIRED and unique when feedback is expected: the feedback names it);
  ``isRecommended`` boolean, several recommended only with selectionBehavior ``any``; ``actions``.
- Action: ``type`` create, update or delete and a ``description``; create and update carry a FHIR
  ``resource`` (an object with a ``resourceType``; an update names the resource it replaces by its
  ``id``: our stricter reading, an update without one cannot be applied); delete carries a relative
  ``resourceId`` (``Type/id``; a ``resource`` string is the deprecated form).
- Feedback: a ``feedback`` array; each ``card`` (string), ``outcome`` accepted or overridden,
  ``acceptedSuggestions`` (array of ``{id}``, REQUIRED for accepted), ``overrideReason`` with a ``reason``
  Coding (code, system) and/or a ``userComment``, ``outcomeTimestamp`` RFC 3339 in UTC.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

INDICATORS = frozenset({"info", "warning", "critical"})
SELECTION_BEHAVIORS = frozenset({"at-most-one", "any"})
ACTION_TYPES = frozenset({"create", "update", "delete"})
LINK_TYPES = frozenset({"absolute", "smart"})
OUTCOMES = frozenset({"accepted", "overridden"})
USER_TOKENS = frozenset(
    {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
)
SUMMARY_LIMIT = 140  # "<140-character summary"
_TOKEN = re.compile(r"\{\{(.*?)\}\}")
_CONTEXT_TOKEN = re.compile(r"^context\.[A-Za-z][A-Za-z0-9_]*$")
_TODAY_TOKEN = re.compile(r"^today\(\) - [1-9][0-9]{0,4} days$")
_RELATIVE_REF = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]00:00)$")


def _is_str(value: Any, allow_empty: bool = False) -> bool:
    return isinstance(value, str) and (allow_empty or bool(value.strip()))


def _absolute_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def coding_faults(where: str, coding: Any, need_display: bool = False) -> list[str]:
    if not isinstance(coding, Mapping):
        return [f"{where}: a Coding must be an object"]
    faults = []
    for key in ("code", "system"):
        if not _is_str(coding.get(key)):
            faults.append(f"{where}.{key}: REQUIRED string")
    if need_display and not _is_str(coding.get("display")):
        faults.append(f"{where}.display: REQUIRED (non-empty) on an override reason")
    elif "display" in coding and not isinstance(coding["display"], str):
        faults.append(f"{where}.display: must be a string")
    return faults


def action_faults(where: str, action: Any) -> list[str]:
    if not isinstance(action, Mapping):
        return [f"{where}: an Action must be an object"]
    faults = []
    kind = action.get("type")
    if kind not in ACTION_TYPES:
        faults.append(f"{where}.type: must be one of {sorted(ACTION_TYPES)} (got {kind!r})")
    if not _is_str(action.get("description")):
        faults.append(f"{where}.description: REQUIRED string")
    resource = action.get("resource")
    if kind in ("create", "update"):
        if not isinstance(resource, Mapping) or not _is_str(resource.get("resourceType")):
            faults.append(f"{where}.resource: a {kind} action SHALL carry a FHIR resource")
        elif kind == "update" and not _is_str(resource.get("id")):
            faults.append(f"{where}.resource.id: an update must name the resource it replaces")
        if "resourceId" in action:
            faults.append(f"{where}.resourceId: only for delete actions")
    elif kind == "delete":
        rid = action.get("resourceId")
        if rid is None and isinstance(resource, str):
            rid = resource  # deprecated form
        elif resource is not None:
            faults.append(f"{where}.resource: a delete carries resourceId, not a resource")
        if not isinstance(rid, str) or not _RELATIVE_REF.match(rid):
            faults.append(f"{where}.resourceId: a relative reference Type/id SHOULD be given for delete")
    return faults


def suggestion_faults(where: str, suggestion: Any, feedback: bool) -> list[str]:
    if not isinstance(suggestion, Mapping):
        return [f"{where}: a Suggestion must be an object"]
    faults = []
    if not _is_str(suggestion.get("label")):
        faults.append(f"{where}.label: REQUIRED string")
    if "uuid" in suggestion and not _is_str(suggestion["uuid"]):
        faults.append(f"{where}.uuid: must be a string")
    if feedback and not _is_uuid(suggestion.get("uuid")):
        faults.append(f"{where}.uuid: REQUIRED (a UUID) when feedback is expected")
    if "isRecommended" in suggestion and not isinstance(suggestion["isRecommended"], bool):
        faults.append(f"{where}.isRecommended: must be a boolean")
    actions = suggestion.get("actions")
    if actions is not None:
        if not isinstance(actions, list):
            faults.append(f"{where}.actions: must be an array")
        else:
            for i, action in enumerate(actions):
                faults += action_faults(f"{where}.actions[{i}]", action)
    return faults


def link_faults(where: str, link: Any) -> list[str]:
    if not isinstance(link, Mapping):
        return [f"{where}: a Link must be an object"]
    faults = []
    if not _is_str(link.get("label")):
        faults.append(f"{where}.label: REQUIRED string")
    if not _absolute_url(link.get("url")):
        faults.append(f"{where}.url: REQUIRED absolute http(s) URL")
    if link.get("type") not in LINK_TYPES:
        faults.append(f"{where}.type: must be absolute or smart (got {link.get('type')!r})")
    if "appContext" in link and (link.get("type") != "smart" or not isinstance(link["appContext"], str)):
        faults.append(f"{where}.appContext: a string, only on smart links")
    if "autolaunchable" in link and not isinstance(link["autolaunchable"], bool):
        faults.append(f"{where}.autolaunchable: must be a boolean")
    return faults


def card_faults(card: Any, feedback: bool = True, where: str = "card") -> list[str]:
    """The rules ``card`` breaks. ``feedback``: the service has a feedback endpoint, so the card and its
    suggestions need their ``uuid`` (the feedback names them)."""
    if not isinstance(card, Mapping):
        return [f"{where}: a Card must be an object"]
    faults = []
    summary = card.get("summary")
    if not isinstance(summary, str) or not _is_str(summary):
        faults.append(f"{where}.summary: REQUIRED non-empty string")
    elif len(summary) >= SUMMARY_LIMIT:
        faults.append(f"{where}.summary: {len(summary)} characters (must be < {SUMMARY_LIMIT})")
    elif "\n" in summary or "\r" in summary:
        faults.append(f"{where}.summary: one sentence, one line")
    if card.get("indicator") not in INDICATORS:
        faults.append(
            f"{where}.indicator: must be one of {sorted(INDICATORS)} (got {card.get('indicator')!r})"
        )
    if "detail" in card and not isinstance(card["detail"], str):
        faults.append(f"{where}.detail: must be a (Markdown) string")
    if "uuid" in card and not _is_str(card["uuid"]):
        faults.append(f"{where}.uuid: must be a string")
    if feedback and not _is_uuid(card.get("uuid")):
        faults.append(f"{where}.uuid: REQUIRED (a UUID) when feedback is expected")
    source = card.get("source")
    if not isinstance(source, Mapping):
        faults.append(f"{where}.source: REQUIRED object")
    else:
        if not _is_str(source.get("label")):
            faults.append(f"{where}.source.label: REQUIRED string")
        for key in ("url", "icon"):
            if key in source and not _absolute_url(source[key]):
                faults.append(f"{where}.source.{key}: must be an absolute URL")
        if "topic" in source:
            faults += coding_faults(f"{where}.source.topic", source["topic"])
    suggestions = card.get("suggestions")
    if suggestions is not None:
        if not isinstance(suggestions, list):
            faults.append(f"{where}.suggestions: must be an array")
        else:
            if suggestions and card.get("selectionBehavior") not in SELECTION_BEHAVIORS:
                faults.append(f"{where}.selectionBehavior: MUST be at-most-one or any when suggestions exist")
            recommended = 0
            seen: set[str] = set()
            for i, s in enumerate(suggestions):
                faults += suggestion_faults(f"{where}.suggestions[{i}]", s, feedback)
                if isinstance(s, Mapping):
                    recommended += s.get("isRecommended") is True
                    sid = s.get("uuid")
                    if isinstance(sid, str):
                        if sid in seen:
                            faults.append(f"{where}.suggestions[{i}].uuid: not unique in the card")
                        seen.add(sid)
            if recommended > 1 and card.get("selectionBehavior") != "any":
                faults.append(f"{where}: several recommended suggestions need selectionBehavior 'any'")
    elif "selectionBehavior" in card and card["selectionBehavior"] not in SELECTION_BEHAVIORS:
        faults.append(f"{where}.selectionBehavior: must be at-most-one or any")
    reasons = card.get("overrideReasons")
    if reasons is not None:
        if not isinstance(reasons, list):
            faults.append(f"{where}.overrideReasons: must be an array of Coding")
        else:
            for i, reason in enumerate(reasons):
                faults += coding_faults(f"{where}.overrideReasons[{i}]", reason, need_display=True)
    links = card.get("links")
    if links is not None:
        if not isinstance(links, list):
            faults.append(f"{where}.links: must be an array")
        else:
            for i, link in enumerate(links):
                faults += link_faults(f"{where}.links[{i}]", link)
    return faults


def response_faults(response: Any, feedback: bool = True) -> list[str]:
    """The rules a CDS Service response body breaks (cards, systemActions, unique card uuids)."""
    if not isinstance(response, Mapping):
        return ["response: must be a JSON object"]
    cards = response.get("cards")
    if not isinstance(cards, list):
        return ["response.cards: REQUIRED array"]
    faults = []
    seen: set[str] = set()
    for i, card in enumerate(cards):
        faults += card_faults(card, feedback, f"cards[{i}]")
        cid = card.get("uuid") if isinstance(card, Mapping) else None
        if isinstance(cid, str):
            if cid in seen:
                faults.append(f"cards[{i}].uuid: not unique in the response")
            seen.add(cid)
    actions = response.get("systemActions")
    if actions is not None:
        if not isinstance(actions, list):
            faults.append("response.systemActions: must be an array")
        else:
            for i, action in enumerate(actions):
                faults += action_faults(f"systemActions[{i}]", action)
    return faults


def prefetch_template_faults(where: str, template: Any, date_tokens: bool = False) -> list[str]:
    if not _is_str(template):
        return [f"{where}: a prefetch template is a string"]
    faults = []
    for raw in _TOKEN.findall(template):
        token = raw.strip()
        if _CONTEXT_TOKEN.match(token) or token in USER_TOKENS:
            continue
        if date_tokens and _TODAY_TOKEN.match(token):
            continue
        faults.append(f"{where}: token {{{{{token}}}}} is not a context field or a user identifier")
    if template.startswith("/") or "://" in template.split("?", 1)[0]:
        faults.append(f"{where}: must be a relative FHIR read or search")
    return faults


def discovery_faults(document: Any, date_tokens: bool = False) -> list[str]:
    """The rules a discovery response breaks. ``date_tokens`` accepts ``{{today() - N days}}``."""
    if not isinstance(document, Mapping) or not isinstance(document.get("services"), list):
        return ["discovery.services: REQUIRED array"]
    faults = []
    seen: set[tuple[str, str]] = set()
    for i, service in enumerate(document["services"]):
        where = f"services[{i}]"
        if not isinstance(service, Mapping):
            faults.append(f"{where}: must be an object")
            continue
        for key in ("hook", "description", "id"):
            if not _is_str(service.get(key)):
                faults.append(f"{where}.{key}: REQUIRED string")
        for key in ("title", "usageRequirements"):
            if key in service and not isinstance(service[key], str):
                faults.append(f"{where}.{key}: must be a string")
        pair = (str(service.get("hook")), str(service.get("id")))
        if pair in seen:
            faults.append(f"{where}: service id {pair[1]!r} listed twice for hook {pair[0]!r}")
        seen.add(pair)
        prefetch = service.get("prefetch")
        if prefetch is not None:
            if not isinstance(prefetch, Mapping):
                faults.append(f"{where}.prefetch: must be an object")
            else:
                for key, template in prefetch.items():
                    faults += prefetch_template_faults(f"{where}.prefetch.{key}", template, date_tokens)
    return faults


def feedback_faults(document: Any) -> list[str]:
    """The rules a feedback request body breaks."""
    if not isinstance(document, Mapping) or not isinstance(document.get("feedback"), list):
        return ["feedback: REQUIRED array"]
    faults = []
    for i, item in enumerate(document["feedback"]):
        where = f"feedback[{i}]"
        if not isinstance(item, Mapping):
            faults.append(f"{where}: must be an object")
            continue
        if not _is_str(item.get("card")):
            faults.append(f"{where}.card: REQUIRED (the card's uuid)")
        outcome = item.get("outcome")
        if outcome not in OUTCOMES:
            faults.append(f"{where}.outcome: must be accepted or overridden (got {outcome!r})")
        accepted = item.get("acceptedSuggestions")
        if outcome == "accepted" and not accepted:
            faults.append(f"{where}.acceptedSuggestions: REQUIRED for an accepted outcome")
        if accepted is not None:
            if not isinstance(accepted, list):
                faults.append(f"{where}.acceptedSuggestions: must be an array")
            else:
                for j, s in enumerate(accepted):
                    if not isinstance(s, Mapping) or not _is_str(s.get("id")):
                        faults.append(f"{where}.acceptedSuggestions[{j}].id: REQUIRED string")
        reason = item.get("overrideReason")
        if reason is not None:
            if not isinstance(reason, Mapping):
                faults.append(f"{where}.overrideReason: must be an object")
            else:
                if "reason" in reason:
                    faults += coding_faults(f"{where}.overrideReason.reason", reason["reason"])
                if "userComment" in reason and not isinstance(reason["userComment"], str):
                    faults.append(f"{where}.overrideReason.userComment: must be a string")
                if "reason" not in reason and "userComment" not in reason:
                    faults.append(f"{where}.overrideReason: a reason or a userComment")
        stamp = item.get("outcomeTimestamp")
        if not isinstance(stamp, str) or not _RFC3339_UTC.match(stamp):
            faults.append(f"{where}.outcomeTimestamp: REQUIRED RFC 3339 date-time in UTC")
    return faults
