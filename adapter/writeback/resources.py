"""Pure builders: one FHIR R4 resource (a dict) from one part of an evaluation.

Codes come from ``mappings/writeback.yaml`` (adapter.writeback.codes); references to resources
written in the same Bundle are passed in already resolved (``refs``), so these functions neither
look anything up nor read a clock: ``now`` is given.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from adapter import __version__
from adapter.writeback.codes import WritebackCodes
from adapter.writeback.keys import Key
from adapter.writeback.settings import WriteSettings

UCUM = "http://unitsofmeasure.org"
DOSE_ACTIONS = frozenset({"administer", "omit", "review"})


def reference(ref: str, display: str | None = None) -> dict[str, str]:
    out = {"reference": ref}
    if display:
        out["display"] = display
    return out


def identifier(key: Key) -> dict[str, str]:
    return {"system": key.system, "value": key.value}


def number(value: Any) -> float | int:
    """A JSON number from the evaluation's numbers, without float noise (2.0 → 2, 1.60 → 1.6)."""
    d = Decimal(str(value)).normalize()
    return int(d) if d == d.to_integral_value() else float(d)


def fmt_decimal(value: Any, places: int | None = None) -> str:
    d = Decimal(str(value))
    if places is not None:
        return f"{d:.{places}f}"
    return format(d.normalize(), "f")


def unique(refs: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for r in refs:
        if r and r not in seen:
            seen[r] = None
    return list(seen)


# -- Device: the adapter itself ---------------------------------------------------------------
def software_device(key: Key) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "identifier": [{"system": key.system, "value": key.value}],
        "status": "active",
        "deviceName": [{"name": "ino-adapter", "type": "manufacturer-name"}],
        "type": {"text": "Clinical decision support software"},
        "version": [{"value": __version__}],
    }


# -- BSA Observation ------------------------------------------------------------------------
def bsa_observation(codes: WritebackCodes, key: Key, evaluation: dict[str, Any], now: str) -> dict[str, Any]:
    """The BSA the doses used. No performer: R4 does not allow a Device there; the Provenance
    names the adapter."""
    dose = evaluation["dose"]
    inputs = dose.get("bsa_inputs") or {}
    dates = [d for d in (inputs.get("weight_date"), inputs.get("height_date")) if d]
    derived = [reference(r) for r in unique([inputs.get("weight", ""), inputs.get("height", "")])]
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [identifier(key)],
        "status": "final",
        "category": [codes.bsa_observation.category.as_fhir()],
        "code": codes.bsa_observation.code.as_fhir(),
        "subject": reference(evaluation["patient"]),
        "effectiveDateTime": max(dates) if dates else evaluation["as_of"],
        "issued": now,
        "valueQuantity": {"value": float(dose["bsa_m2"]), "unit": "m2", "system": UCUM, "code": "m2"},
        "method": {"text": f"{str(dose.get('bsa_formula') or '').capitalize()} formula (calculated)"},
        "note": [
            {
                "text": (
                    f"Calculated by ino-adapter from weight {fmt_decimal(inputs.get('weight_kg'))} kg "
                    f"({inputs.get('weight_date')}) and height {fmt_decimal(inputs.get('height_cm'))} cm "
                    f"({inputs.get('height_date')})."
                )
            }
        ],
    }
    if derived:
        obs["derivedFrom"] = derived
    return obs


# -- MedicationRequest per planned dose -------------------------------------------------------
def dose_text(dose: dict[str, Any], bsa_m2: Any, preparation: dict[str, Any]) -> str:
    """e.g. "0.8 mg/m² × 2.00 m² = 1.60 mg IV over 60 min in 50 mL sodium chloride 0.9%"."""
    text = (
        f"{fmt_decimal(dose['mg_per_m2'])} mg/m² × {fmt_decimal(bsa_m2, 2)} m² = "
        f"{fmt_decimal(dose['mg'], 2)} mg IV"
    )
    minutes = preparation.get("infusion_minutes")
    diluent_ml = preparation.get("diluent_ml")
    diluent = preparation.get("diluent")
    if minutes:
        text += f" over {minutes} min"
    if diluent_ml and diluent:
        text += f" in {diluent_ml} mL {diluent}"
    return text


def preparation_text(dose: dict[str, Any], preparation: dict[str, Any]) -> str | None:
    if not preparation or dose.get("vials") is None:
        return None
    parts = [
        f"Prepare {dose['vials']} × {fmt_decimal(preparation['vial_mg'])} mg vial(s)",
        f"reconstitute each with {fmt_decimal(preparation['reconstitute_with_ml'])} mL "
        f"to {fmt_decimal(preparation['reconstituted_mg_per_ml'])} mg/mL",
        f"withdraw {fmt_decimal(dose['volume_ml'], 2)} mL",
        f"dilute to {preparation['diluent_ml']} mL {preparation['diluent']}",
    ]
    if preparation.get("protect_from_light"):
        parts.append("protect from light")
    if preparation.get("max_hours_reconstitution_to_dilution"):
        parts.append(f"≤ {preparation['max_hours_reconstitution_to_dilution']} h reconstitution to dilution")
    if preparation.get("max_hours_reconstitution_to_end_of_infusion"):
        parts.append(
            f"≤ {preparation['max_hours_reconstitution_to_end_of_infusion']} h reconstitution "
            "to end of infusion"
        )
    return "; ".join(parts) + f" ({preparation.get('source', '')})".rstrip(" ()")


def medication_request(
    codes: WritebackCodes,
    settings: WriteSettings,
    key: Key,
    cycle_key: Key,
    evaluation: dict[str, Any],
    dose: dict[str, Any],
    now: str,
    reason_refs: Sequence[str],
    supporting_refs: Sequence[str],
    notes: Sequence[str],
) -> dict[str, Any]:
    plan = evaluation["dose"]
    preparation = plan.get("preparation") or {}
    text = dose_text(dose, plan["bsa_m2"], preparation)
    dosage: dict[str, Any] = {
        "sequence": 1,
        "text": f"{text} — cycle {plan['cycle']} day {dose['day']} on {dose['date']}",
        "timing": {"event": [dose["date"]]},
        "route": codes.route.as_fhir(),
        "doseAndRate": [
            {
                "type": codes.dose_rate_type.as_fhir(),
                "doseQuantity": {"value": float(dose["mg"]), "unit": "mg", "system": UCUM, "code": "mg"},
            }
        ],
    }
    minutes, volume = preparation.get("infusion_minutes"), preparation.get("diluent_ml")
    if minutes and volume:
        dosage["doseAndRate"][0]["rateQuantity"] = {
            "value": number(Decimal(str(volume)) * 60 / Decimal(str(minutes))),
            "unit": "mL/h",
            "system": UCUM,
            "code": "mL/h",
        }
    prep = preparation_text(dose, preparation)
    all_notes = [*notes, *([prep] if prep else [])]
    request: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "extension": [
            {
                "url": codes.normalization_basis.url,
                "valueCodeableConcept": codes.normalization_basis.value.as_fhir(),
            }
        ],
        "identifier": [identifier(key)],
        "instantiatesUri": [f"{codes.protocol_uri}/{evaluation['protocol']}"],
        "status": "draft",
        "intent": settings.intent,
        "medicationCodeableConcept": codes.medication.as_fhir(),
        "subject": reference(evaluation["patient"]),
        "authoredOn": now,
        "groupIdentifier": identifier(cycle_key),
        "dosageInstruction": [dosage],
    }
    if reason_refs:
        request["reasonReference"] = [reference(r) for r in reason_refs]
    if supporting_refs:
        request["supportingInformation"] = [reference(r) for r in supporting_refs]
    if all_notes:
        request["note"] = [{"text": n} for n in all_notes]
    if dose.get("vials") is not None:
        request["dispenseRequest"] = {"quantity": {"value": int(dose["vials"]), "unit": "vial"}}
    return request


def premedication_request(
    codes: WritebackCodes,
    settings: WriteSettings,
    key: Key,
    cycle_key: Key,
    evaluation: dict[str, Any],
    premed: dict[str, Any],
    dose: dict[str, Any],
    now: str,
) -> dict[str, Any]:
    """A text-coded premedication proposal for one dose day (the sources name no codes)."""
    return {
        "resourceType": "MedicationRequest",
        "identifier": [identifier(key)],
        "instantiatesUri": [f"{codes.protocol_uri}/{evaluation['protocol']}"],
        "status": "draft",
        "intent": settings.intent,
        "medicationCodeableConcept": {"text": premed["text"]},
        "subject": reference(evaluation["patient"]),
        "authoredOn": now,
        "groupIdentifier": identifier(cycle_key),
        "dosageInstruction": [
            {
                "text": f"{premed['text']} — before inotuzumab ozogamicin, cycle "
                f"{evaluation['dose']['cycle']} day {dose['day']} on {dose['date']}",
                "timing": {"event": [dose["date"]]},
            }
        ],
        "note": [{"text": f"Premedication ({premed.get('source', '')})"}],
    }


# -- DetectedIssue ----------------------------------------------------------------------------
def detected_issue(
    codes: WritebackCodes,
    key: Key,
    evaluation: dict[str, Any],
    issue_id: str,
    severity: str,
    detail: str,
    source: str | None,
    implicated: Sequence[str],
    evidence: Sequence[str],
    now: str,
    device_ref: str,
) -> dict[str, Any]:
    code = codes.detected_issue.code_for(issue_id)
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "identifier": [identifier(key)],
        "status": "preliminary",
        "code": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": code.code,
                    "display": code.display,
                },
                {"system": codes.finding_system, "code": issue_id},
            ],
            "text": issue_id,
        },
        "severity": severity,
        "patient": reference(evaluation["patient"]),
        "identifiedDateTime": now,
        "author": reference(device_ref, "ino-adapter"),
        "detail": detail + (f" (source: {source})" if source else ""),
    }
    if implicated:
        issue["implicated"] = [reference(r) for r in implicated]
    if evidence:
        issue["evidence"] = [{"detail": [reference(r) for r in evidence]}]
    return issue


# -- DocumentReference with the rendered summaries ------------------------------------------
def attachment(data: str, content_type: str, title: str) -> dict[str, Any]:
    raw = data.encode("utf-8")
    return {
        "contentType": content_type,
        "language": "en",
        "data": base64.b64encode(raw).decode("ascii"),
        "size": len(raw),
        # R4 Attachment.hash is the base64 SHA-1 of the data
        "hash": base64.b64encode(hashlib.sha1(raw, usedforsecurity=False).digest()).decode("ascii"),
        "title": title,
    }


SUMMARY_CONTENT_TYPES = {"html": "text/html; charset=utf-8", "md": "text/markdown; charset=utf-8"}


def summary_document(
    codes: WritebackCodes,
    key: Key,
    evaluation: dict[str, Any],
    summaries: dict[str, str],
    related: Sequence[str],
    now: str,
    device_ref: str,
) -> dict[str, Any]:
    title = f"Inotuzumab ozogamicin regimen summary ({evaluation['protocol']}, {evaluation['as_of']})"
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [identifier(key)],
        "status": "current",
        "docStatus": "preliminary",
        "type": codes.summary_document.type.as_fhir(),
        "category": [codes.summary_document.category.as_fhir()],
        "subject": reference(evaluation["patient"]),
        "date": now,
        "author": [reference(device_ref, "ino-adapter")],
        "description": title,
        "content": [
            {"attachment": attachment(summaries[fmt], SUMMARY_CONTENT_TYPES[fmt], f"{title}.{fmt}")}
            for fmt in ("html", "md")
            if fmt in summaries
        ],
        "context": {"period": {"start": evaluation["as_of"]}},
    }
    if related:
        doc["context"]["related"] = [reference(r) for r in related]
    return doc


# -- Provenance ------------------------------------------------------------------------------
def provenance(
    codes: WritebackCodes,
    key: Key,
    evaluation: dict[str, Any],
    targets: Sequence[str],
    entities: Sequence[str],
    now: str,
    device_ref: str,
) -> dict[str, Any]:
    ruleset = evaluation.get("ruleset") or {}
    policy = f"{codes.protocol_uri}/{evaluation['protocol']}"
    prov: dict[str, Any] = {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": key.system, "code": key.value}]},
        "target": [reference(t) for t in targets],
        "recorded": now,
        "policy": [
            policy,
            f"{policy}/version/{ruleset.get('version', 'unknown')}/rules/{ruleset.get('digest', 'unknown')}",
        ],
        "activity": codes.provenance.activity.as_fhir(),
        "agent": [
            {
                "type": codes.provenance.agent_type.as_fhir(),
                "who": reference(device_ref, f"ino-adapter {__version__}"),
            }
        ],
        "reason": [
            {"text": f"Decision support for protocol {evaluation['protocol']} as of {evaluation['as_of']}"}
        ],
    }
    if entities:
        prov["entity"] = [{"role": codes.provenance.entity_role, "what": reference(e)} for e in entities]
    return prov
