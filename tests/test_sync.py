"""``ino-adapter sync`` against a real FHIR server (sekmet-fhir): a population of a few hundred patients.

The module has a server of its own (started with tests/support/fhir_server.py's helpers), so that the
default cohort (every B-ALL Condition and inotuzumab record on the server) is exactly the population
seeded here, and "nothing else changed" can be checked on the whole server. It holds the example
patients, patients on treatment at different points of their cycles and people without leukaemia; the
Condition search is paged (page size 50) over more than 200 matches.

The tests run in order and build on each other's runs (one state file for the module).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from adapter.api import evaluate_resources
from adapter.fhir.client import FhirClient
from adapter.sync import SyncReport, run_sync
from adapter.sync.ledger import Ledger
from adapter.sync.selection import dose_due
from adapter.writeback.bundle import existing_from_resources
from adapter.writeback.keys import content
from tests.support.fhir_server import SekmetServer, ensure_installed, start_server
from tests.support.population import population, seed
from tests.support.sync_helpers import (
    device_existing,
    differences,
    expected,
    keyed,
    options,
    our_resources,
    patient_of,
    snapshot,
    token_file,
)

TODAY = date(2026, 11, 21)
NOW = "2026-11-21T09:00:00Z"
VARIANT = "nhs-ta514"
TREATED = 170
HEALTHY = 60


@dataclass
class World:
    server: SekmetServer
    client: FhirClient
    records: dict[str, list[dict[str, Any]]]  # patient id -> resources (as seeded)
    cohort: list[str]  # the ids with B-ALL (the examples and the treated)
    state: Path
    token: Path
    out: Path

    def sync(self, **kw: Any) -> SyncReport:
        kw.setdefault("page_size", 50)
        return run_sync(options(self.server.base_url, self.token, self.state, TODAY, **kw))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sync")
    server = start_server(ensure_installed(), tmp / "sekmet")
    try:
        with server.client() as client:
            records = population("s", TODAY, treated=TREATED, healthy=HEALTHY)
            seed(client, [r for resources in records.values() for r in resources])
            cohort = [p for p in records if not p.startswith("hy")]
            yield World(server, client, records, cohort, tmp / "state.sqlite", token_file(tmp, server.token),
                        tmp / "out")  # fmt: skip
    finally:
        server.stop()


@pytest.fixture(scope="module")
def first(world: World) -> SyncReport:
    return world.sync(concurrency=4, out_dir=world.out)


def test_first_run_selects_the_cohort_over_several_pages_and_writes_everyone(first: SyncReport) -> None:
    data = first.as_json()
    assert first.exit_code == 0, data["failures"]
    assert data["patients"]["selected"] == len(first.results) == 8 + TREATED
    assert data["patients"]["written"] == 8 + TREATED and data["patients"]["failed"] == 0
    assert data["http"]["per_patient"] <= 3  # first run: fetch + look-up per chunk, a transaction each


def test_the_server_holds_exactly_what_evaluate_out_builds(world: World, first: SyncReport) -> None:
    assert first.exit_code == 0
    ours = our_resources(world.client)
    server, duplicates = keyed(ours)
    assert duplicates == []
    device = device_existing(server)
    wanted_keys = set(device)
    for pid in world.cohort:
        want = expected(world.records[pid], VARIANT, TODAY, NOW, device)
        assert differences(want.bundle, server) == [], pid
        for e in want.bundle["entry"]:
            wanted_keys |= set(existing_from_resources([{**e["resource"], "id": "x"}]))
    # nothing else of ours anywhere: the people without leukaemia were never written to
    assert set(server) == wanted_keys
    assert not any(str(patient_of(r)).startswith("Patient/hy") for r in ours)
    devices = [r for r in ours if r["resourceType"] == "Device"]
    assert len(devices) == 1
    provenances = [r for r in ours if r["resourceType"] == "Provenance"]
    assert len(provenances) == len(world.cohort)  # one per patient written


def test_out_folders_hold_the_same_evaluations_bundles_and_summaries(world: World, first: SyncReport) -> None:
    assert first.exit_code == 0
    device = device_existing(keyed(our_resources(world.client))[0])
    for pid in ("tx0001-s", "p09-cycle-2-s", "p04-prior-vod-s"):
        want = expected(world.records[pid], VARIANT, TODAY, NOW, device)
        folder = next(world.out.glob(f"{pid}_*")) / VARIANT
        assert json.loads((folder / "evaluation.json").read_text()) == want.evaluation
        sent = json.loads((folder / "bundle.json").read_text())
        assert [(e["fullUrl"], e["request"], content(e["resource"])) for e in sent["entry"]] == [
            (e["fullUrl"], e["request"], content(e["resource"])) for e in want.bundle["entry"]
        ]
        assert (folder / "summary.md").read_text().startswith("#")


def test_a_second_run_changes_nothing_on_the_server(world: World, first: SyncReport) -> None:
    assert first.exit_code == 0
    before = snapshot(world.client)
    again = world.sync()  # every patient evaluated again (no --since)
    data = again.as_json()
    assert again.exit_code == 0 and data["patients"]["written"] == 0
    assert data["patients"]["unchanged"] == len(world.cohort)
    assert snapshot(world.client) == before  # same resources, same versions
    assert data["http"]["per_patient"] <= 3
    assert data["http"]["round_trips"] < len(world.cohort) / 2  # one batch fetches a chunk; no look-ups


def test_since_auto_skips_the_unchanged_but_never_a_dose_day(world: World, first: SyncReport) -> None:
    assert first.exit_code == 0
    before = snapshot(world.client)
    report = world.sync(since="auto")
    data = report.as_json()
    assert report.exit_code == 0 and data["patients"]["written"] == 0
    ledger = Ledger(world.state)
    try:
        due = {
            p
            for p in world.cohort
            if dose_due(ledger.patient(f"{world.server.base_url} {VARIANT}", p), TODAY)
        }
    finally:
        ledger.close()
    evaluated = {r.patient_id for r in report.results}
    assert evaluated == due and 0 < len(due) < len(world.cohort)
    assert data["patients"]["skipped_unchanged"] == len(world.cohort) - len(due)
    assert snapshot(world.client) == before


def test_a_changed_lab_re_evaluates_and_updates_only_that_patient(world: World, first: SyncReport) -> None:
    assert first.exit_code == 0
    # a patient not on a dose day: its weight is measured again, heavier (its BSA and doses change)
    pid = "tx0004-s"  # scenario "c1d8-not-yet": next dose in four days
    ledger = Ledger(world.state)
    try:
        assert not dose_due(ledger.patient(f"{world.server.base_url} {VARIANT}", pid), TODAY)
    finally:
        ledger.close()
    weight = next(r for r in world.records[pid] if r["id"].startswith(f"{pid}-body-weight"))
    weight = {**weight, "valueQuantity": {**weight["valueQuantity"], "value": 95}}
    world.client.update(weight)
    before = snapshot(world.client)
    report = world.sync(since="auto")
    data = report.as_json()
    assert report.exit_code == 0
    assert pid in {r.patient_id for r in report.results}
    assert [r.patient_id for r in report.results if r.state == "written"] in ([pid], [])
    after = snapshot(world.client)
    changed = {ref for ref, version in after.items() if before.get(ref) != version}
    resources = {f"{r['resourceType']}/{r['id']}": r for r in our_resources(world.client)}
    assert all(patient_of(resources[ref]) == f"Patient/{pid}" for ref in changed)
    (evaluation,) = evaluate_resources(
        [weight if r["id"] == weight["id"] else r for r in world.records[pid]], VARIANT, TODAY
    ).results
    assert data["patients"]["failed"] == 0
    assert (evaluation["dose"].get("bsa_inputs") or {}).get("weight_kg") in (None, 95)
