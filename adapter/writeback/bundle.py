"""One patient's evaluation → one FHIR R4 transaction Bundle (pure; docs/writeback.md).

What is written, in order: the adapter as a Device, the BSA Observation, a draft MedicationRequest
per planned dose (and premedication proposals when the site asks), a DetectedIssue per warning or
critical finding, the summary DocumentReference, and one Provenance for everything this Bundle
creates or changes.

Idempotency: each resource has a deterministic business identifier (adapter.writeback.keys).
``existing`` says what is already on the server (from a search, or from the input record):

- nothing known → conditional create (``ifNoneExist`` on the identifier; ``put`` mode: PUT to the
  deterministic id), so a replay matches and changes nothing;
- known with the same content → no entry; other entries refer to it by its server reference;
- a still-``draft`` MedicationRequest of ours whose content changed → PUT with ``ifMatch`` on its
  version, so a concurrent signature is never overwritten (no version known → not updated, and said);
- an ``active`` or ``on-hold`` order under our identifier whose content differs → never touched; a
  DetectedIssue says the new plan differs from the signed order. Other statuses (completed,
  cancelled, stopped, entered-in-error) are a prescriber's decision and are left alone;
- a resource of ours that someone changed on the server since we wrote it (``Existing.edited_elsewhere``,
  known to ``sync`` from the versions it recorded) whose content differs → never overwritten: the
  clinician's edit wins; it is listed in ``kept`` and ``not_touched``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapter.writeback import resources as build
from adapter.writeback.codes import WritebackCodes, load_codes
from adapter.writeback.keys import (
    Key,
    clinical_content,
    content,
    content_hash,
    full_url,
    patient_key,
    resource_id,
    short_hash,
)
from adapter.writeback.settings import WriteSettings

OUR_ORDER_UNTOUCHABLE = frozenset({"active", "on-hold"})


@dataclass(frozen=True, slots=True)
class Existing:
    """A resource already on the server (or in the input) under one of our business identifiers."""

    ref: str  # "MedicationRequest/123"
    status: str | None
    etag: str | None  # W/"<versionId>", or None when unknown
    resource: dict[str, Any]
    #: changed on the server by someone else since we wrote it (sync's ledger knows the version we
    #: wrote): its content is never overwritten, whatever the new plan says
    edited_elsewhere: bool = False

    @property
    def version(self) -> str | None:
        version = (self.resource.get("meta") or {}).get("versionId")
        return version if isinstance(version, str) and version else None


@dataclass(slots=True)
class WritePlan:
    """The transaction Bundle and what it will do, for logs and the CLI's report (no PHI)."""

    bundle: dict[str, Any]
    created: list[str] = field(default_factory=list)  # "<type> <identifier value>"
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    not_touched: list[str] = field(default_factory=list)  # orders a prescriber owns, with the reason
    kept: list[str] = field(default_factory=list)  # ours, edited on the server since we wrote it: kept
    keys: list[tuple[str, Key]] = field(default_factory=list)  # (type, key) of every resource planned

    def summary(self) -> dict[str, Any]:
        return {
            "entries": len(self.bundle.get("entry", [])),
            "created": len(self.created),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "not_touched": self.not_touched,
            "kept": len(self.kept),
        }


def existing_from_resources(resources: Iterable[dict[str, Any]]) -> dict[Key, Existing]:
    """Index resources (a search result or the input record) by our business identifiers / tags."""
    codes = load_codes()
    systems = set(codes.identifier_systems.model_dump().values())
    tag_system = codes.provenance_tag_system
    out: dict[Key, Existing] = {}
    for r in resources:
        rtype, rid = r.get("resourceType"), r.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str):
            continue
        version = (r.get("meta") or {}).get("versionId")
        etag = f'W/"{version}"' if isinstance(version, str) and version else None
        keys = [
            Key(i["system"], i["value"])
            for i in r.get("identifier") or []
            if isinstance(i, dict) and i.get("system") in systems and isinstance(i.get("value"), str)
        ]
        keys += [
            Key(t["system"], t["code"])
            for t in (r.get("meta") or {}).get("tag") or []
            if isinstance(t, dict) and t.get("system") == tag_system and isinstance(t.get("code"), str)
        ]
        for k in keys:
            out[k] = Existing(f"{rtype}/{rid}", r.get("status"), etag, r)
    return out


def software_device() -> tuple[Key, dict[str, Any]]:
    """The adapter as a Device (its key and resource): the agent of every Provenance it writes."""
    from adapter import __version__

    key = Key(load_codes().identifier_systems.software, f"ino-adapter-{__version__}")
    return key, build.software_device(key)


def resource_key(resource: dict[str, Any], codes: WritebackCodes | None = None) -> Key:
    """The business identifier a planned resource is found again by (its key tag for the types matched
    by tag; see :func:`lookup_query`)."""
    codes = codes or load_codes()
    if resource["resourceType"] in codes.match_by_tag:
        tag = next(t for t in resource["meta"]["tag"] if t["system"] == codes.provenance_tag_system)
        return Key(tag["system"], tag["code"])
    ident = resource["identifier"][0]
    return Key(ident["system"], ident["value"])


def lookup_query(resource: dict[str, Any], codes: WritebackCodes | None = None) -> str:
    """The search (without '?') that finds ``resource`` again: its business identifier, or its key tag
    for the types matched by tag (mappings/writeback.yaml ``match_by_tag``)."""
    codes = codes or load_codes()
    key = resource_key(resource, codes)
    name = "_tag" if resource["resourceType"] in codes.match_by_tag else "identifier"
    return f"{name}={key.token()}"


class _Assembler:
    def __init__(
        self,
        evaluation: dict[str, Any],
        settings: WriteSettings,
        now: str,
        existing: Mapping[Key, Existing],
        codes: WritebackCodes,
    ) -> None:
        self.ev = evaluation
        self.settings = settings
        self.now = now
        self.existing = existing
        self.codes = codes
        self.systems = codes.identifier_systems
        self.pkey = patient_key(evaluation["patient"])
        self.plan = WritePlan(bundle={"resourceType": "Bundle", "type": "transaction", "entry": []})
        self.written: list[tuple[Key, str, str]] = []  # (key, reference, content hash) created/updated
        self.differs: list[Key] = []  # signed orders (not drafts) whose dose the new plan changes

    def key(self, system: str, *parts: object) -> Key:
        return Key(system, ".".join([self.pkey, self.ev["protocol"], *(str(p) for p in parts)]))

    # -- entries ---------------------------------------------------------------------------
    def put(self, key: Key, resource: dict[str, Any]) -> str:
        """Add ``resource`` unless it already exists unchanged; returns how to refer to it."""
        rtype = resource["resourceType"]
        if rtype in self.codes.match_by_tag and rtype != "Provenance":
            tag = {"system": self.codes.provenance_tag_system, "code": key.value}
            resource["meta"] = {"tag": [tag]}
        label = f"{rtype} {key.value}"
        self.plan.keys.append((rtype, key))
        found = self.existing.get(key)
        if found is not None:
            if content(found.resource) == content(resource):
                self.plan.unchanged.append(label)
                return found.ref
            if rtype == "MedicationRequest" and found.status != "draft":
                if clinical_content(found.resource) == clinical_content(resource):
                    self.plan.unchanged.append(label)  # signed as proposed
                    return found.ref
                self.plan.not_touched.append(f"{label}: status {found.status}, the new plan differs")
                self.differs.append(key)
                return found.ref
            if rtype == "Provenance":  # append-only: its key already carries its content
                self.plan.unchanged.append(label)
                return found.ref
            if found.edited_elsewhere:  # a clinician's edit since we wrote it wins
                self.plan.kept.append(label)
                self.plan.not_touched.append(f"{label}: changed on the server since it was written; kept")
                return found.ref
            if found.etag is None:
                self.plan.not_touched.append(f"{label}: changed, but its version is unknown")
                return found.ref
            body = {**resource, "id": found.ref.split("/", 1)[1]}
            self._entry(full_url(key), body, {"method": "PUT", "url": found.ref, "ifMatch": found.etag})
            self.plan.updated.append(label)
            self.written.append((key, found.ref, content_hash(resource)))
            return found.ref
        if self.settings.id_mode == "put":
            rid = resource_id(key)
            body = {**resource, "id": rid}
            self._entry(full_url(key), body, {"method": "PUT", "url": f"{rtype}/{rid}"})
            ref = f"{rtype}/{rid}"
        else:
            query = lookup_query(resource, self.codes)
            self._entry(full_url(key), resource, {"method": "POST", "url": rtype, "ifNoneExist": query})
            ref = full_url(key)
        self.plan.created.append(label)
        self.written.append((key, ref, content_hash(resource)))
        return ref

    def _entry(self, url: str, resource: dict[str, Any], request: dict[str, str]) -> None:
        self.plan.bundle["entry"].append({"fullUrl": url, "resource": resource, "request": request})

    # -- the evaluation's parts ------------------------------------------------------------
    def device(self) -> str:
        """The adapter as a Device (agent of the Provenance, author of issues and documents)."""
        key, device = software_device()
        ref = self.put(key, device)
        self.written = [w for w in self.written if w[0] != key]  # on its own it is no reason to write
        return ref

    def evidence_refs(self) -> list[str]:
        """Observations the decision used: BSA inputs, criteria evidence, dose findings evidence.

        A start-only criterion once treatment has started (not-applicable) decides nothing: its
        at-start evidence is not listed.
        """
        dose = self.ev.get("dose") or {}
        inputs = dose.get("bsa_inputs") or {}
        refs = [inputs.get("weight") or "", inputs.get("height") or ""]
        for c in (self.ev.get("eligibility") or {}).get("criteria") or []:
            if c.get("status") != "not-applicable":
                refs += c.get("evidence") or []
        for f in dose.get("findings") or []:
            refs += f.get("evidence") or []
        return build.unique(refs)

    def diagnosis_refs(self) -> list[str]:
        return [
            r
            for c in self.ev["eligibility"]["criteria"]
            if c["id"] == "b-all-diagnosis"
            for r in c.get("evidence") or []
            if r.startswith("Condition/")
        ]

    def assemble(self, summaries: Mapping[str, str]) -> WritePlan:
        dose = self.ev.get("dose") or {}
        doses = dose.get("doses") or []
        if doses and dose.get("action") not in build.DOSE_ACTIONS:
            raise ValueError(f"doses listed for action {dose.get('action')!r}: refusing to write them")
        device_ref = self.device()
        supporting = [r for r in self.evidence_refs() if r.startswith("Observation/")]
        if doses:
            if dose.get("bsa_m2") is None or dose.get("cycle") is None:
                raise ValueError("doses listed without a BSA or cycle: refusing to write them")
            bsa_key = self.key(
                self.systems.bsa,
                short_hash(
                    str(dose["bsa_inputs"].get("weight")),
                    str(dose["bsa_inputs"].get("height")),
                    str(dose.get("bsa_formula")),
                    str(dose["bsa_m2"]),
                ),
            )
            bsa = build.bsa_observation(self.codes, bsa_key, self.ev, self.now)
            supporting.append(self.put(bsa_key, bsa))
        notes = self.order_notes()
        cycle_key = self.key(self.systems.cycle, f"c{dose.get('cycle')}")
        reasons = self.diagnosis_refs()
        orders: list[str] = []
        for d in doses:
            key = self.key(self.systems.dose, f"c{dose['cycle']}", f"d{d['day']}")
            request = build.medication_request(
                self.codes,
                self.settings,
                key,
                cycle_key,
                self.ev,
                d,
                self.now,
                reasons,
                supporting,
                notes,
            )
            orders.append(self.put(key, request))
            if key in self.differs and self.existing[key].status in OUR_ORDER_UNTOUCHABLE:
                self.superseded(key, d, device_ref)
            if self.settings.premedication:
                for i, premed in enumerate(dose.get("premedication") or [], start=1):
                    pkey = self.key(self.systems.premedication, f"c{dose['cycle']}", f"d{d['day']}", f"p{i}")
                    self.put(
                        pkey,
                        build.premedication_request(
                            self.codes, self.settings, pkey, cycle_key, self.ev, premed, d, self.now
                        ),
                    )
        self.issues(orders, device_ref)
        summary_key = self.key(self.systems.summary, self.ev["as_of"])
        if summaries:
            self.put(
                summary_key,
                build.summary_document(
                    self.codes, summary_key, self.ev, dict(summaries), orders, self.now, device_ref
                ),
            )
        return self.finish(device_ref)

    def assemble_check(self, check: dict[str, Any]) -> WritePlan:
        """DetectedIssues for an order someone else wrote (check-order): one per warning or critical
        finding, implicating that order; the order itself is never touched."""
        device_ref = self.device()
        order = str(check["order"])
        anchor = f"check-{short_hash(order)}"
        self.finding_issues(
            check.get("findings") or [],
            anchor,
            device_ref,
            implicated=[order],
            prefix=f"Order check ({check.get('order_date') or 'date unknown'}): ",
            exclude=order,
        )
        return self.finish(device_ref)

    def finish(self, device_ref: str) -> WritePlan:
        """Add the Provenance of what is written; with nothing new, send nothing (not even the Device)."""
        if self.written:
            self.provenance(device_ref)
        else:
            self.plan.bundle["entry"] = []
        return self.plan

    def finding_issues(
        self,
        findings: list[dict[str, Any]],
        anchor: str,
        device_ref: str,
        implicated: list[str],
        prefix: str = "",
        exclude: str | None = None,
    ) -> None:
        """A DetectedIssue per kind of warning or critical finding (findings of one id, e.g. bilirubin
        and ALT both out of limits, become one issue), implicating ``implicated`` (else the evidence)."""
        severity = self.codes.detected_issue.severity
        for f in _merge_by_id(findings):
            sev = severity.get(f.get("severity", ""))
            if sev is None:
                continue
            key = self.key(self.systems.issue, f["id"], anchor)
            evidence = [r for r in f.get("evidence") or [] if "/" in r and r != exclude]
            issue = build.detected_issue(
                self.codes,
                key,
                self.ev,
                f["id"],
                sev,
                prefix + f["reason"],
                f.get("source"),
                implicated or evidence,
                evidence,
                self.now,
                device_ref,
            )
            self.put(key, issue)

    def order_notes(self) -> list[str]:
        dose = self.ev["dose"]
        notes = [
            "Proposal by decision support (ino-adapter): verify against the protocol and sign before use."
        ]
        if dose.get("action") == "review":
            why = [f["reason"] for f in dose.get("findings") or [] if f.get("effect") == "review"]
            notes.append("Prescriber authorisation required: " + ("; ".join(why) or "see findings"))
        notes += [
            f"{f['severity'].upper()}: {f['reason']}"
            for f in dose.get("findings") or []
            if f.get("severity") in ("warning", "critical") and f.get("effect") != "review"
        ]
        return notes

    def issues(self, orders: list[str], device_ref: str) -> None:
        dose = self.ev.get("dose") or {}
        anchor = (
            f"c{dose['cycle']}.d{dose['day']}" if dose.get("cycle") and dose.get("day") else self.ev["as_of"]
        )
        self.finding_issues(dose.get("findings") or [], anchor, device_ref, implicated=orders)
        eligibility = self.ev["eligibility"]
        if dose.get("treatment_started") or eligibility.get("treatment_started_on"):
            return  # once treatment runs the dose findings speak; criteria are not issues (docs/writeback.md)
        criterion_severity = self.codes.detected_issue.criterion_severity
        for c in eligibility["criteria"]:
            sev = criterion_severity.get(c["status"])
            if sev is None or c["status"] == "not-applicable":
                continue
            key = self.key(self.systems.issue, f"criterion-{c['id']}", anchor)
            evidence = [r for r in c.get("evidence") or [] if "/" in r]
            detail = f"{c['title']}: {c['status']} — {c['reason']}"
            self.put(
                key,
                build.detected_issue(
                    self.codes,
                    key,
                    self.ev,
                    c["id"],
                    sev,
                    detail,
                    c.get("source"),
                    orders or evidence or [self.ev["patient"]],
                    evidence,
                    self.now,
                    device_ref,
                ),
            )

    def superseded(self, key: Key, d: dict[str, Any], device_ref: str) -> None:
        found = self.existing[key]
        new = build.dose_text(d, self.ev["dose"]["bsa_m2"], self.ev["dose"].get("preparation") or {})
        ikey = self.key(
            self.systems.issue,
            "superseded-active-order",
            f"c{self.ev['dose']['cycle']}",
            f"d{d['day']}",
            short_hash(content_hash(found.resource), new),
        )
        detail = (
            f"The order for cycle {self.ev['dose']['cycle']} day {d['day']} is {found.status} and was not "
            f"changed; the new evaluation as of {self.ev['as_of']} plans: {new} on {d['date']}. "
            "Review the signed order."
        )
        self.put(
            ikey,
            build.detected_issue(
                self.codes,
                ikey,
                self.ev,
                "superseded-active-order",
                "high",
                detail,
                "docs/writeback.md §Updates",
                [found.ref],
                [],
                self.now,
                device_ref,
            ),
        )

    def provenance(self, device_ref: str) -> None:
        targets = [ref for _, ref, _ in self.written]
        pkey = Key(
            self.codes.provenance_tag_system,
            short_hash(*sorted(f"{k.token()}#{h}" for k, _, h in self.written), length=32),
        )
        entities = [
            r
            for r in build.unique([self.ev["patient"], *self.ev.get("order_refs", []), *self.evidence_refs()])
            if "/" in r and not r.startswith("urn:")
        ]
        self.put(pkey, build.provenance(self.codes, pkey, self.ev, targets, entities, self.now, device_ref))


def build_transaction(
    evaluation: dict[str, Any],
    summaries: Mapping[str, str],
    now: str,
    settings: WriteSettings | None = None,
    existing: Mapping[Key, Existing] | None = None,
) -> WritePlan:
    """The transaction Bundle that writes ``evaluation`` back (see the module docstring).

    ``summaries`` maps "html"/"md" to the rendered summary (deterministic: no generation time in
    it, so a replay hashes the same); ``now`` is the FHIR instant stamped on what is written.
    """
    return _Assembler(evaluation, settings or WriteSettings(), now, existing or {}, load_codes()).assemble(
        summaries
    )


def build_check_transaction(
    check: dict[str, Any],
    now: str,
    settings: WriteSettings | None = None,
    existing: Mapping[Key, Existing] | None = None,
) -> WritePlan:
    """The transaction Bundle that records a check-order result as DetectedIssues on the order."""
    context = {
        "patient": check["patient"],
        "protocol": check["protocol"],
        "as_of": check.get("order_date") or "",
        "order_refs": [check["order"]],
        "dose": {"findings": check.get("findings") or []},
        "ruleset": check.get("ruleset") or {},  # the digest of the rules, tables and settings used
    }
    assembler = _Assembler(context, settings or WriteSettings(), now, existing or {}, load_codes())
    return assembler.assemble_check(check)


_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def _merge_by_id(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One finding per id, in first-seen order: the worst severity, the reasons and evidence of all."""
    merged: dict[str, dict[str, Any]] = {}
    for f in findings:
        seen = merged.get(f["id"])
        if seen is None:
            merged[f["id"]] = dict(f)
            continue
        if _SEVERITY_RANK.get(f.get("severity", ""), 0) > _SEVERITY_RANK.get(seen.get("severity", ""), 0):
            seen["severity"] = f.get("severity")
        if f["reason"] not in seen["reason"].split("; "):
            seen["reason"] = f"{seen['reason']}; {f['reason']}"
        seen["evidence"] = list(dict.fromkeys([*(seen.get("evidence") or []), *(f.get("evidence") or [])]))
    return list(merged.values())
