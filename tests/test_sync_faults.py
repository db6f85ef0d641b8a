"""``sync`` through the fault proxy (tests/support/fault_proxy.py) in front of the session's sekmet server,
and with clinicians editing our drafts: every fault is retried or reported as specified, and afterwards
the server holds exactly what ``evaluate --out`` builds, once. Also: SMART Backend Services end to end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapter.fhir.auth import READ_TYPES as SYNC_READ_TYPES
from adapter.fhir.auth import WRITE_TYPES, smart_scopes
from adapter.fhir.client import FhirClient, RetryPolicy
from adapter.sync import SyncReport, run_sync
from adapter.sync.options import SyncOptions
from tests.support.fault_proxy import Fault, FaultProxy, on
from tests.support.fhir_server import SekmetServer
from tests.support.population import seed, treatment_patient
from tests.support.sync_helpers import (
    device_existing,
    differences,
    expected,
    keyed,
    our_resources,
    patient_of,
    token_file,
)
from tests.test_sync import NOW, TODAY, VARIANT

FAST_RETRY = RetryPolicy(max_tries=3, backoff=0.05, max_backoff=0.2, max_retry_after=2)
TRANSACTION = b'"type":"transaction"'
BATCH = b'"type":"batch"'


@dataclass
class Cohort:
    records: dict[str, list[dict[str, Any]]]
    group: str
    tmp: Path
    server: SekmetServer

    def options(self, base_url: str, **kw: Any) -> SyncOptions:
        kw.setdefault("progress", "none")
        kw.setdefault("retry", FAST_RETRY)
        kw.setdefault("timeout", (2.0, 5.0))
        return SyncOptions(
            server=base_url,
            protocol=VARIANT,
            state=kw.pop("state", self.tmp / "state.sqlite"),
            as_of=TODAY,
            auth="bearer",
            token_file=str(token_file(self.tmp, self.server.token)),
            group=self.group,
            **kw,
        )

    def sync(self, base_url: str, **kw: Any) -> SyncReport:
        return run_sync(self.options(base_url, **kw))


def make_cohort(client: FhirClient, server: SekmetServer, tmp: Path, n: int = 6) -> Cohort:
    sfx = uuid.uuid4().hex[:8]
    records = {f"ft{i:02d}-{sfx}": treatment_patient(f"ft{i:02d}-{sfx}", TODAY, i) for i in range(n)}
    seed(client, [r for rs in records.values() for r in rs])
    group = f"g-{sfx}"
    client.update(
        {
            "resourceType": "Group",
            "id": group,
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{p}"}} for p in records],
        }
    )
    return Cohort(records, group, tmp, server)


def assert_exactly_once(client: FhirClient, cohort: Cohort) -> None:
    """The server holds each resource of the cohort once, as `evaluate --out` builds it."""
    ours = our_resources(client)
    mine = [r for r in ours if r["resourceType"] == "Device" or (patient_of(r) or "").removeprefix("Patient/")
            in cohort.records]  # fmt: skip
    server, duplicates = keyed(mine)
    assert duplicates == []
    device = device_existing(server)
    for pid, resources in cohort.records.items():
        assert differences(expected(resources, VARIANT, TODAY, NOW, device).bundle, server) == [], pid
    assert sum(1 for r in mine if r["resourceType"] == "Provenance") == len(cohort.records)


@pytest.fixture
def cohort(fhir_client: FhirClient, fhir_server: SekmetServer, tmp_path: Path) -> Cohort:
    return make_cohort(fhir_client, fhir_server, tmp_path)


FAULTS: dict[str, Callable[[FaultProxy], object]] = {
    "503 with Retry-After on a batch": lambda p: p.inject(
        on("POST", r"^/fhir/?$"), Fault.status(503, retry_after="1"), times=1, body=lambda b: BATCH in b
    ),
    "429 on the Group read": lambda p: p.inject(on("GET", r"/fhir/Group/"), Fault.status(429), times=2),
    "connection reset after the server committed a transaction": lambda p: p.inject(
        on("POST", r"^/fhir/?$"), Fault.reset(forward=True), times=2, body=lambda b: TRANSACTION in b
    ),
    "read timeout on a transaction": lambda p: p.inject(
        on("POST", r"^/fhir/?$"), Fault.hold(7, forward=True), times=1, body=lambda b: TRANSACTION in b
    ),
    "412 on a transaction": lambda p: p.inject(
        on("POST", r"^/fhir/?$"), Fault.status(412), times=1, body=lambda b: TRANSACTION in b
    ),
    "429 inside a batch under an outer 200": lambda p: p.inject(
        on("POST", r"^/fhir/?$"), Fault.entry_status(0), times=2, body=lambda b: BATCH in b
    ),
    "502 on the CapabilityStatement read": lambda p: p.inject(
        on("GET", r"/metadata"), Fault.status(502), times=2
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_is_retried_and_nothing_is_lost_or_duplicated(
    fault: str, cohort: Cohort, fault_proxy: FaultProxy, fhir_client: FhirClient
) -> None:
    FAULTS[fault](fault_proxy)
    report = cohort.sync(fault_proxy.base_url)
    data = report.as_json()
    assert report.exit_code == 0, data["failures"]
    assert data["patients"]["written"] == len(cohort.records)
    assert fault_proxy.pending() == 0  # the fault did happen
    if fault == "412 on a transaction":
        assert data["patients"]["conflicts"] == 1
    assert_exactly_once(fhir_client, cohort)
    # and a second run through the proxy changes nothing
    again = cohort.sync(fault_proxy.base_url).as_json()
    assert again["patients"]["written"] == 0 and again["patients"]["unchanged"] == len(cohort.records)


def test_a_lasting_outage_aborts_with_exit_5_and_the_next_run_finishes(
    cohort: Cohort, fault_proxy: FaultProxy, fhir_client: FhirClient
) -> None:
    # the selection works, then the server stops answering
    fault_proxy.inject(
        on("POST", r"^/fhir/?$"), Fault.status(503), times=None, body=lambda b: b"$everything" in b
    )
    down = cohort.sync(fault_proxy.base_url, concurrency=1, patients_per_request=2)
    assert down.status == "aborted" and down.exit_code == 5
    assert "stopped answering" in (down.aborted_reason or "")
    fault_proxy.clear_faults()
    up = cohort.sync(fault_proxy.base_url)
    assert up.exit_code == 0 and up.resumed
    assert_exactly_once(fhir_client, cohort)


def test_refused_credentials_abort_with_exit_5(
    cohort: Cohort, fhir_server: SekmetServer, tmp_path: Path
) -> None:
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token\n")
    bad.chmod(0o600)
    options = cohort.options(fhir_server.base_url)
    from dataclasses import replace

    from adapter.errors import AdapterError

    with pytest.raises(AdapterError) as exc:
        run_sync(replace(options, token_file=str(bad)))
    assert exc.value.exit_code == 5


def _weight_changed(client: FhirClient, cohort: Cohort, pid: str, kg: float) -> None:
    weight = next(r for r in cohort.records[pid] if r["id"].startswith(f"{pid}-body-weight"))
    client.update({**weight, "valueQuantity": {**weight["valueQuantity"], "value": kg}})


def _drafts(client: FhirClient, pid: str) -> dict[str, dict[str, Any]]:
    return {
        o["identifier"][0]["value"].rsplit(".", 1)[-1]: o
        for o in client.search("MedicationRequest", {"subject": f"Patient/{pid}"})
    }


def _edited(client: FhirClient, draft: dict[str, Any]) -> dict[str, Any]:
    draft = {**draft, "note": [*draft.get("note", []), {"text": "checked by pharmacy"}]}
    return client.update(draft).body or {}


def _mg(order: dict[str, Any]) -> float:
    return float(order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"])


def test_a_clinician_edit_since_we_wrote_it_is_kept(cohort: Cohort, fhir_client: FhirClient) -> None:
    base = cohort.server.base_url
    assert cohort.sync(base).exit_code == 0
    pid = next(p for p in cohort.records if p.startswith("ft01"))  # cycle 1 day 8 due: drafts d8 and d15
    drafts = _drafts(fhir_client, pid)
    edited = _edited(fhir_client, drafts["d15"])
    _weight_changed(fhir_client, cohort, pid, 100)  # the plan's doses change
    report = cohort.sync(base, since="auto")
    data = report.as_json()
    assert report.exit_code == 0 and data["resources"]["kept_clinician_edits"] == 1
    assert data["conflicts"][0]["kept"] == 1
    after = _drafts(fhir_client, pid)
    assert after["d15"]["meta"]["versionId"] == edited["meta"]["versionId"]  # not overwritten
    assert after["d15"]["note"][-1]["text"] == "checked by pharmacy"
    # the other draft follows the new plan (same dose, the cycle keeps its BSA; a weight-change warning)
    assert int(after["d8"]["meta"]["versionId"]) > int(drafts["d8"]["meta"]["versionId"])
    assert any("weight" in n["text"].lower() for n in after["d8"]["note"])
    assert _mg(after["d8"]) == _mg(drafts["d8"])
    # the edit keeps winning: the next run changes nothing
    again = cohort.sync(base).as_json()
    assert again["patients"]["written"] == 0 and again["resources"]["kept_clinician_edits"] == 1
    assert _drafts(fhir_client, pid)["d15"]["meta"]["versionId"] == edited["meta"]["versionId"]


def test_an_edit_between_our_read_and_our_write_gives_412_and_wins(
    cohort: Cohort, fault_proxy: FaultProxy, fhir_client: FhirClient
) -> None:
    # the ledger is per server URL: both runs go through the proxy
    assert cohort.sync(fault_proxy.base_url).exit_code == 0
    pid = next(p for p in cohort.records if p.startswith("ft01"))
    _weight_changed(fhir_client, cohort, pid, 100)
    edits: list[dict[str, Any]] = []

    def pharmacist_edits_first(body: bytes) -> bool:
        # the moment our transaction arrives, a pharmacist saves the draft (a side effect; no fault)
        if TRANSACTION in body and not edits:
            edits.append(_edited(fhir_client, _drafts(fhir_client, pid)["d15"]))
        return False

    fault_proxy.inject(on("POST", r"^/fhir/?$"), Fault.status(500), times=None, body=pharmacist_edits_first)
    report = cohort.sync(fault_proxy.base_url)
    data = report.as_json()
    assert report.exit_code == 0 and edits
    assert data["patients"]["conflicts"] == 1 and data["conflicts"][0]["conflicts"] == 1
    kept = _drafts(fhir_client, pid)["d15"]
    assert kept["meta"]["versionId"] == edits[0]["meta"]["versionId"]
    assert kept["note"][-1]["text"] == "checked by pharmacy"


def test_smart_backend_services_end_to_end(
    cohort: Cohort, fhir_server: SekmetServer, fhir_client: FhirClient
) -> None:
    options = cohort.options(fhir_server.base_url)
    from dataclasses import replace

    # sekmet authorises a batch or transaction (POST [base]) only with a create scope on every type
    scopes = (*smart_scopes(read=SYNC_READ_TYPES, write=WRITE_TYPES, version="v2"), "system/*.c")
    smart = replace(
        options,
        auth="smart",
        token_file=None,
        client_id=fhir_server.smart.client_id,
        key_file=str(fhir_server.smart.rs384_key),
        scopes=scopes,
    )
    report = run_sync(smart)
    assert report.exit_code == 0, report.as_json()["failures"]
    assert report.as_json()["patients"]["written"] == len(cohort.records)
    assert_exactly_once(fhir_client, cohort)
