"""One patient through ``sync``: evaluate (with the per-patient unit, adapter.evaluate), reconcile with what
the server holds, write, and record it in the ledger.

Work is done per chunk of patients (one worker at a time per chunk, so never two writers for one
patient): one batch request fetches the chunk's records, one more looks up the keys the records do not
answer (none in a steady state), then each patient that has something new gets its own transaction.

A transaction refused with 409/412 (a clinician changed one of our drafts since we read it) or with
"try later" (429, 5xx, no answer: it may or may not have been applied) is never forced: the patient's
record is read again, re-evaluated and re-planned, at most ``max_attempts`` times in all. On the re-read,
a resource of ours whose server version is not the one we wrote is someone else's edit: it is kept, never
overwritten (adapter.writeback.bundle ``Existing.edited_elsewhere``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from adapter.errors import AdapterError
from adapter.evaluate import PatientOutcome, Setup, evaluate_patient, render_summaries, replan
from adapter.fhir.client import (
    FhirClient,
    FhirError,
    FhirUnauthorized,
    ServerCapabilities,
    is_idempotent_bundle,
)
from adapter.input.reader import read_resources
from adapter.input.validate import validate_all
from adapter.safe_text import clean, patient_tag
from adapter.sync.fetch import Record, fetch_records
from adapter.sync.ledger import Ledger, PatientState, Run
from adapter.sync.options import SyncOptions
from adapter.writeback.apply import find_keys, unknown_keys
from adapter.writeback.bundle import Existing, existing_from_resources, resource_key
from adapter.writeback.keys import Key
from adapter.writeback.settings import WriteSettings

log = logging.getLogger("adapter.sync")

BACKOFF_S = 0.5
_LOCATION = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})/_history/([^/?#]+)")


class ServerUnusable(AdapterError):  # noqa: N818 - a condition, not a failure of one request
    """The server cannot be used at all (authentication refused, or it stopped answering)."""

    exit_code = FhirError.exit_code


@dataclass(slots=True)
class Context:
    """What every worker shares during a run."""

    client: FhirClient
    setup: Setup
    ledger: Ledger
    run: Run
    options: SyncOptions
    features: ServerCapabilities
    device: dict[Key, Existing]
    now: str
    templates: str  # a digest of the summary templates in force (part of the summary cache's key)
    on_result: Callable[[PatientResult], None] = lambda _r: None
    sleep: Callable[[float], None] = time.sleep


@dataclass(slots=True)
class PatientResult:
    """What happened to one patient (no patient data: the id stays in the ledger, messages use the tag)."""

    patient_id: str
    state: str  # written | unchanged | planned | conflict | failed
    reason: str | None = None
    action: str | None = None
    entries: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    kept: int = 0
    not_touched: list[str] = field(default_factory=list)
    conflicts: int = 0  # 409/412 answers met on the way
    attempts: int = 0

    @property
    def tag(self) -> str:
        return patient_tag(f"Patient/{self.patient_id}")


@dataclass(slots=True)
class Work:
    state: PatientState
    record: Record
    outcome: PatientOutcome
    existing: dict[Key, Existing]
    unknown: list[tuple[str, Key]]
    valid: dict[str, str] = field(default_factory=dict)  # resources that passed validation, by version
    summaries: dict[str, str] = field(default_factory=dict)  # the rendered summaries and their key


def _reason(exc: BaseException) -> str:
    """A one-line reason without patient data (FHIR errors are scrubbed by the client)."""
    if isinstance(exc, AdapterError):
        return clean(exc.message)[:300]
    return f"internal error ({type(exc).__name__})"


def _same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b


def existing_for(ctx: Context, state: PatientState, resources: list[dict[str, Any]]) -> dict[Key, Existing]:
    """Our resources in the record (plus the run's Device), each marked ``edited_elsewhere`` when its version
    is not the one the ledger says we left."""
    found = {**existing_from_resources(resources), **ctx.device}
    for key, ex in found.items():
        recorded = state.versions.get(ex.ref)
        if (
            recorded is not None
            and ex.version is not None
            and recorded != ex.version
            and not ex.edited_elsewhere
        ):
            found[key] = dataclasses.replace(ex, edited_elsewhere=True)
    return found


def summary_key(evaluation: Mapping[str, Any], previous: Mapping[str, Any] | None, templates: str) -> str:
    """What a rendered summary depends on: the evaluation, the one it is compared with, the templates."""
    return hashlib.sha256(
        orjson.dumps([evaluation, previous, templates], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def _version(resource: Mapping[str, Any]) -> str | None:
    version = (resource.get("meta") or {}).get("versionId")
    return version if isinstance(version, str) and version else None


def evaluate(ctx: Context, state: PatientState, record: Record) -> Work:
    """The patient's evaluation and first plan, through the per-patient unit. Resources that passed R4B
    validation at the same version last time are not validated again, and summaries rendered from the
    same evaluation last time are not rendered again (both remembered in the ledger)."""
    entries = [
        {"fullUrl": f"{ctx.client.base_url}/{r['resourceType']}/{r['id']}", "resource": r}
        for r in record.resources
        if isinstance(r.get("id"), str)
        and not (r.get("resourceType") == "Patient" and r["id"] != state.patient_id)
    ]
    batch = read_resources(
        [{"resourceType": "Bundle", "type": "collection", "entry": entries}], origin="server"
    )
    existing = existing_for(ctx, state, record.resources)
    refs = {s.origin: f"{s.resource['resourceType']}/{s.resource['id']}" for s in batch.resources}
    unchecked = [s for s in batch.resources if state.valid.get(refs[s.origin]) != _version(s.resource)]
    invalid = validate_all(unchecked) if ctx.setup.validate else {}
    valid = {
        refs[s.origin]: version
        for s in batch.resources
        if s.origin not in invalid and (version := _version(s.resource)) is not None
    }
    rendered: dict[str, str] = {}

    def previous(evaluation: dict[str, Any]) -> dict[str, Any] | None:
        # as `evaluate --out`: the summary compares with the last evaluation that differed
        return state.previous if _same(evaluation, state.evaluation) else state.evaluation

    def render(
        evaluation: dict[str, Any], earlier: dict[str, Any] | None, settings: WriteSettings
    ) -> dict[str, str]:
        key = summary_key(evaluation, earlier, ctx.templates)
        cached = state.summaries or {}
        if cached.get("key") == key and "html" in cached and "md" in cached:
            summaries = {"html": cached["html"], "md": cached["md"]}
        else:
            summaries = render_summaries(evaluation, earlier, settings)
        rendered.update(summaries, key=key)
        return summaries

    outcome = evaluate_patient(
        batch.resources,
        ctx.setup,
        ctx.now,
        previous=previous,
        existing=existing,
        invalid=invalid,
        render=render,
    )
    unknown = unknown_keys(outcome.plan, record.known_absent, existing)
    return Work(state, record, outcome, existing, unknown, valid, rendered)


def resolve_unknown(ctx: Context, works: list[Work]) -> dict[str, str]:
    """Look up every work's unknown keys in one batch request and re-plan with what was found. Returns the
    patients whose keys matched several resources (patient id -> reason)."""
    wanted = [k for w in works for k in w.unknown]
    if not wanted:
        return {}
    found, duplicated = find_keys(ctx.client, wanted, use_batch=ctx.features.batch)
    index = existing_from_resources(found)
    failed = {}
    for i, w in enumerate(works):
        if any(k in duplicated for _, k in w.unknown):
            failed[w.state.patient_id] = "a write-back key matched more than one resource on the server"
            continue
        more = {k: index[k] for _, k in w.unknown if k in index}
        if more:
            existing = {**w.existing, **existing_for(ctx, w.state, [m.resource for m in more.values()])}
            works[i] = dataclasses.replace(
                w, existing=existing, outcome=replan(w.outcome, ctx.setup, ctx.now, existing)
            )
        works[i].unknown = []
    return failed


def _sent_versions(plan_bundle: dict[str, Any], response: dict[str, Any]) -> dict[Key, tuple[str, str]]:
    out: dict[Key, tuple[str, str]] = {}
    for sent, got in zip(plan_bundle.get("entry") or [], response.get("entry") or [], strict=False):
        answer = got.get("response") or {}
        m = _LOCATION.search(str(answer.get("location") or ""))
        if m is None:
            continue
        out[resource_key(sent["resource"])] = (f"{m.group(1)}/{m.group(2)}", m.group(3))
    return out


def versions_after(
    work: Work, response: dict[str, Any] | None
) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """``{reference: version}`` of our resources as we leave them, and their keys, for the ledger. A kept
    clinician edit keeps the version WE wrote (so that it stays recognised as someone else's)."""
    plan = work.outcome.plan
    sent = _sent_versions(plan.bundle, response) if response is not None else {}
    versions: dict[str, str] = {}
    keys: list[tuple[str, str, str]] = []
    for rtype, key in plan.keys:
        if rtype == "Device":
            continue
        keys.append((rtype, key.system, key.value))
        if key in sent:
            ref, version = sent[key]
            versions[ref] = version
            continue
        ex = work.existing.get(key)
        if ex is None:
            continue
        recorded = work.state.versions.get(ex.ref)
        if ex.edited_elsewhere and recorded is not None:
            versions[ex.ref] = recorded
        elif ex.version is not None:
            versions[ex.ref] = ex.version
    return versions, keys


def plan_digest(outcome: PatientOutcome) -> str:
    """What was decided (the evaluation, our own JSON: its numbers are always written the same way)
    as a short hash."""
    return hashlib.sha256(orjson.dumps(outcome.evaluation, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _result(work: Work, state: str, response: dict[str, Any] | None, **kw: Any) -> PatientResult:
    plan = work.outcome.plan
    return PatientResult(
        work.state.patient_id,
        state,
        action=(work.outcome.evaluation.get("dose") or {}).get("action"),
        entries=len(plan.bundle.get("entry") or []) if (response is not None or state == "planned") else 0,
        created=len(plan.created) if response is not None or state == "planned" else 0,
        updated=len(plan.updated) if response is not None or state == "planned" else 0,
        unchanged=len(plan.unchanged),
        kept=len(plan.kept),
        not_touched=list(plan.not_touched),
        **kw,
    )


def _write_out(ctx: Context, work: Work) -> None:
    if ctx.options.out_dir is None:
        return
    from adapter.outputs import write_patient

    write_patient(
        ctx.options.out_dir,
        work.outcome.evaluation,
        ctx.now,
        ctx.setup.settings,
        work.existing,
        outcome=work.outcome,
    )


def _refetch(ctx: Context, state: PatientState) -> Work:
    record = fetch_records(ctx.client, ctx.features, [state], ctx.setup.tables)[state.patient_id]
    if isinstance(record, FhirError):
        raise record
    work = evaluate(ctx, state, record)
    failed = resolve_unknown(ctx, [work]) if work.unknown else {}
    if failed:
        raise FhirError(None, None, failed[state.patient_id])
    return work


def _is_try_later(exc: FhirError) -> bool:
    """The server said "later", or no answer came (the transaction may or may not have been applied)."""
    return exc.status is None or exc.retryable


def write(ctx: Context, work: Work) -> PatientResult:
    """Send the plan (or nothing), re-planning after a conflict or a "try later"; record the result."""
    run, pid = ctx.run, work.state.patient_id
    conflicts = 0
    attempts = 0
    while True:
        attempts += 1
        plan = work.outcome.plan
        digest = plan_digest(work.outcome)
        if ctx.options.dry_run:
            _write_out(ctx, work)
            ctx.ledger.mark(run.run_id, pid, "planned", plan_digest=digest, entries=len(plan.bundle["entry"]))
            return _result(work, "planned", None, conflicts=conflicts, attempts=attempts)
        response: dict[str, Any] | None = None
        if plan.bundle["entry"]:
            ctx.ledger.mark(run.run_id, pid, "evaluated", plan_digest=digest, attempt=True)
            try:
                response = ctx.client.transaction(plan.bundle, idempotent=is_idempotent_bundle(plan.bundle))
            except FhirUnauthorized:
                raise
            except FhirError as exc:
                changed = exc.changed_by_someone
                conflicts += int(changed)
                if not (changed or _is_try_later(exc)):
                    raise
                if attempts >= ctx.options.max_attempts:
                    state = "conflict" if changed else "failed"
                    why = "a draft kept changing on the server while we wrote" if changed else _reason(exc)
                    ctx.ledger.mark(run.run_id, pid, state, why)
                    return PatientResult(pid, state, why, conflicts=conflicts, attempts=attempts)
                log.info("%s: %s; reading the record again", patient_tag(f"Patient/{pid}"), _reason(exc))
                if not changed:
                    ctx.sleep(BACKOFF_S * 2 ** (attempts - 1))
                work = _refetch(ctx, work.state)
                continue
        versions, keys = versions_after(work, response)
        ctx.ledger.save_patient(
            run.scope,
            run.run_id,
            pid,
            work.outcome.evaluation,
            digest,
            versions,
            keys,
            work.valid,
            work.summaries,
        )
        _write_out(ctx, work)
        state = "written" if response is not None else "unchanged"
        ctx.ledger.mark(
            run.run_id, pid, state, plan_digest=digest, entries=len(plan.bundle["entry"]) if response else 0
        )
        return _result(work, state, response, conflicts=conflicts, attempts=attempts)


def process_chunk(ctx: Context, states: list[PatientState]) -> list[PatientResult]:
    """Fetch, evaluate, reconcile and write a chunk of patients (see the module docstring)."""
    results: list[PatientResult] = []

    def done(result: PatientResult) -> None:
        results.append(result)
        ctx.on_result(result)

    def fail(pid: str, why: str) -> None:
        ctx.ledger.mark(ctx.run.run_id, pid, "failed", why)
        done(PatientResult(pid, "failed", why))

    records = fetch_records(ctx.client, ctx.features, states, ctx.setup.tables)
    works: list[Work] = []
    for state in states:
        record = records[state.patient_id]
        if isinstance(record, FhirError):
            if isinstance(record, FhirUnauthorized):
                raise record
            fail(state.patient_id, _reason(record))
            continue
        ctx.ledger.mark(ctx.run.run_id, state.patient_id, "fetched", seen_until=record.seen_until)
        try:
            works.append(evaluate(ctx, state, record))
        except Exception as exc:
            fail(state.patient_id, _reason(exc))
    for pid, why in resolve_unknown(ctx, works).items():
        fail(pid, why)
        works = [w for w in works if w.state.patient_id != pid]
    for work in works:
        try:
            done(write(ctx, work))
        except FhirUnauthorized:
            raise
        except Exception as exc:
            fail(work.state.patient_id, _reason(exc))
    return results
