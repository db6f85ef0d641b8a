"""Reading input in every accepted shape, bad input, and the CLI's contract (exit codes, formats, help)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner

import cli
from adapter.api import evaluate_path, evaluate_resources
from adapter.errors import InputError
from tests.conftest import TODAY, criterion, eligible_patient
from tests.support.make_examples import EXAMPLES_DIR
from tests.test_examples import EXPECTED

N_EXAMPLES = len(EXPECTED)  # example patients in examples/


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def write(tmp_path: Path, name: str, content: Any) -> Path:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else orjson.dumps(content))
    return p


# -- shapes of input ------------------------------------------------------------------------------
@pytest.mark.parametrize("btype", ["collection", "searchset", "transaction", "batch"])
def test_every_bundle_type_gives_the_same_decision(tmp_path: Path, btype: str) -> None:
    bundle = eligible_patient().bundle(btype)
    if btype == "searchset":
        for e in bundle["entry"]:
            e["search"] = {"mode": "match"}
        bundle["entry"].append(
            {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}}
        )
    result = evaluate_path(write(tmp_path, "b.json", bundle), "nhs-ta514", TODAY).results[0]
    assert result["eligibility"]["status"] == "eligible"


def test_ndjson_and_directory_and_single_resource(tmp_path: Path) -> None:
    b = eligible_patient()
    (tmp_path / "bulk").mkdir()
    lines = b"".join(orjson.dumps(r) + b"\n\n" for r in b.resources)
    write(tmp_path / "bulk", "all.ndjson", lines)
    assert (
        evaluate_path(tmp_path / "bulk", "nhs-ta514", TODAY).results[0]["eligibility"]["status"] == "eligible"
    )
    single = write(tmp_path, "patient.json", b.resources[0])
    only = evaluate_path(single, "nhs-ta514", TODAY).results[0]
    # a lone Patient: no diagnosis recorded (closed world) -> ineligible; labs unknown (open world)
    assert only["eligibility"]["status"] == "ineligible"
    assert criterion(only, "b-all-diagnosis")["status"] == "not-met"
    assert criterion(only, "neutrophils")["status"] == "unknown"


def test_several_patients_give_one_result_each() -> None:
    run = evaluate_path(EXAMPLES_DIR, "fda-label", TODAY)
    assert len(run.results) == N_EXAMPLES
    assert len({r["patient"] for r in run.results}) == N_EXAMPLES


def test_urn_uuid_references_in_a_transaction_resolve() -> None:
    bundle = eligible_patient().bundle("transaction")
    for e in bundle["entry"]:
        r = e["resource"]
        e["fullUrl"] = f"urn:uuid:00000000-0000-4000-8000-{abs(hash(r['id'])) % 10**12:012d}"
        if r["resourceType"] == "Patient":
            patient_url = e["fullUrl"]
    for e in bundle["entry"]:
        for key in ("subject", "patient"):
            if key in e["resource"]:
                e["resource"][key] = {"reference": patient_url}
    result = evaluate_resources([bundle], "nhs-ta514", TODAY).results[0]
    assert result["eligibility"]["status"] == "eligible"


def test_absolute_and_versioned_references_resolve() -> None:
    b = eligible_patient()
    for r in b.resources[1:]:
        r["subject"] = {"reference": "https://ehr.example.org/fhir/Patient/p1/_history/3"}
    assert (
        evaluate_resources(b.resources, "nhs-ta514", TODAY).results[0]["eligibility"]["status"] == "eligible"
    )


def test_medication_reference_contained_bundled_and_missing() -> None:
    b = eligible_patient()
    req = b.medication("MedicationRequest", "J01FA09", "clarithromycin", 3)
    med = req.pop("medicationCodeableConcept")
    req["contained"] = [{"resourceType": "Medication", "id": "m1", "code": med}]
    req["medicationReference"] = {"reference": "#m1"}
    res = evaluate_resources(b.resources, "nhs-ta514", TODAY).results[0]
    assert criterion(res, "qt-prolonging-comedication")["status"] == "review"
    del req["contained"]
    req["medicationReference"] = {"reference": "Medication/m2"}
    res = evaluate_resources(b.resources, "nhs-ta514", TODAY).results[0]
    assert criterion(res, "input-integrity")["status"] == "unknown"
    assert res["eligibility"]["status"] == "insufficient-data"
    b.resources.append({"resourceType": "Medication", "id": "m2", "code": med})
    res = evaluate_resources(b.resources, "nhs-ta514", TODAY).results[0]
    assert criterion(res, "qt-prolonging-comedication")["status"] == "review"
    assert criterion(res, "input-integrity")["status"] == "met"


def test_uncoded_medication_blocks_eligible() -> None:
    b = eligible_patient()
    req = b.medication("MedicationRequest", "X", "some tablets", 3)
    req["medicationCodeableConcept"] = {"text": "tablets from abroad"}
    res = evaluate_resources(b.resources, "mdacc-low-dose", TODAY).results[0]
    assert res["eligibility"]["status"] == "insufficient-data"


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "fault"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a FHIR resource"),
        (b'{"hello": "world"}', "no resourceType"),
        (b'{"resourceType": "Banana"}', "unknown resourceType 'Banana'"),
        (b'{"resourceType": "Bundle", "type": "history", "entry": []}', "Bundle type 'history'"),
        (
            b'{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": '
            b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}}}]}',
            "no Patient resource",
        ),
        (b"", "not JSON"),
    ],
)
def test_unusable_input_exits_2_with_one_line_naming_file_and_fault(
    tmp_path: Path, content: bytes, fault: str
) -> None:
    path = write(tmp_path, "input.json", content)
    result = run_cli("evaluate", str(path), "--protocol", "fda-label", "--as-of", "2026-11-21")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0]
    assert fault in lines[0]
    assert "Traceback" not in result.output


def test_bad_ndjson_line_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x.ndjson", b'{"resourceType": "Patient", "id": "a"}\n{oops\n')
    with pytest.raises(InputError, match=r"x\.ndjson:2: not JSON"):
        evaluate_path(path, "fda-label", TODAY)


def test_resources_for_absent_patients_are_reported_not_used(tmp_path: Path) -> None:
    b = eligible_patient()
    stray = copy.deepcopy(b.resources[5])
    stray["id"] = "stray"
    stray["subject"] = {"reference": "Patient/nobody"}
    path = write(
        tmp_path,
        "b.json",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in [*b.resources, stray]],
        },
    )
    result = run_cli("evaluate", str(path), "-p", "nhs-ta514", "--as-of", "2026-11-21")
    assert result.exit_code == 0
    assert "Patient/nobody" in result.stderr
    assert json.loads(result.stdout)["eligibility"]["status"] == "eligible"


def test_duplicate_ids_identical_are_merged_conflicting_block(tmp_path: Path) -> None:
    b = eligible_patient()
    same = copy.deepcopy(b.resources[12])
    res = evaluate_resources([*b.resources, same], "nhs-ta514", TODAY).results[0]
    assert res["eligibility"]["status"] == "eligible"
    other = copy.deepcopy(b.resources[12])
    other["valueQuantity"]["value"] = other["valueQuantity"]["value"] * 3
    res = evaluate_resources([*b.resources, other], "nhs-ta514", TODAY).results[0]
    c = criterion(res, "input-integrity")
    assert c["status"] == "unknown"
    assert "conflicting duplicate" in c["reason"]


def test_invalid_fhir_resource_blocks_eligible_with_reason() -> None:
    b = eligible_patient()
    b.resources[12]["valueQuantity"]["value"] = "twelve"
    res = evaluate_resources(b.resources, "nhs-ta514", TODAY).results[0]
    c = criterion(res, "input-integrity")
    assert c["status"] == "unknown"
    assert "not valid FHIR R4" in c["reason"]
    assert res["eligibility"]["status"] == "insufficient-data"


def test_ignored_resource_types_are_counted(tmp_path: Path) -> None:
    bundle = eligible_patient().bundle()
    bundle["entry"].append(
        {
            "resource": {
                "resourceType": "Encounter",
                "id": "e1",
                "status": "finished",
                "class": {"code": "AMB"},
            }
        }
    )
    result = run_cli(
        "evaluate", str(write(tmp_path, "b.json", bundle)), "-p", "fda-label", "--as-of", "2026-11-21"
    )
    assert result.exit_code == 0
    assert "1 Encounter" in result.stderr


# -- CLI -----------------------------------------------------------------------------------------------
def test_every_command_has_help_text() -> None:
    def walk(cmd: click.Command) -> list[click.Command]:
        subs = list(cmd.commands.values()) if isinstance(cmd, click.Group) else []
        return [cmd, *[c for s in subs for c in walk(s)]]

    for cmd in walk(cli.main):
        assert cmd.help and cmd.help.strip(), cmd.name
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert param.help, f"{cmd.name} {param.name}"
        args = ["--help"] if cmd is cli.main else [str(cmd.name), "--help"]
        assert CliRunner().invoke(cli.main, args).exit_code == 0


@pytest.mark.parametrize("fmt", ["json", "ndjson", "text"])
def test_formats(fmt: str) -> None:
    result = run_cli(
        "evaluate", str(EXAMPLES_DIR), "-p", "mdacc-low-dose", "--as-of", "2026-11-21", "--format", fmt
    )
    assert result.exit_code == 0
    if fmt == "json":
        data = json.loads(result.stdout)
        assert isinstance(data, list) and len(data) == N_EXAMPLES
        assert data[0]["contract"] == "1"
    elif fmt == "ndjson":
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert {r["protocol"] for r in rows} == {"mdacc-low-dose"} and len(rows) == N_EXAMPLES
    else:
        assert "Patient/p07-adolescent" in result.stdout and "ELIGIBLE" in result.stdout


def test_single_patient_json_is_one_object_with_the_contract_keys() -> None:
    result = run_cli(
        "evaluate",
        str(EXAMPLES_DIR / "p01-ph-neg-relapse.json"),
        "-p",
        "es-valtermed",
        "--as-of",
        "2026-11-21",
    )
    data = json.loads(result.stdout)
    assert set(data) == {
        "contract",
        "patient",
        "protocol",
        "protocol_title",
        "ruleset",
        "as_of",
        "subject",
        "eligibility",
        "dose",
    }
    assert data["subject"]["mrn"] == "MRN-p01-ph-neg-relapse"  # typed MR identifier
    assert data["subject"]["age"] == 46
    assert set(data["eligibility"]) == {"status", "treatment_started_on", "criteria", "attestations"}
    assert data["eligibility"]["treatment_started_on"] is None  # not on treatment
    assert {c["phase"] for c in data["eligibility"]["criteria"]} == {"start", "continuing"}
    assert set(data["dose"]) >= {
        "action",
        "cycle",
        "day",
        "dose_level",
        "bsa_m2",
        "bsa_formula",
        "doses",
        "findings",
    }
    assert set(data["dose"]["doses"][0]) == {"day", "mg_per_m2", "mg", "date", "vials", "volume_ml"}
    assert set(data["eligibility"]["criteria"][0]) >= {"id", "status", "reason", "evidence", "source"}
    assert data["as_of"] == "2026-11-21"


def test_bad_mappings_file_exits_3(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("concepts: [oops]\n", encoding="utf-8")
    result = run_cli("evaluate", str(EXAMPLES_DIR), "-p", "fda-label", "--mappings", str(bad))
    assert result.exit_code == 3
    assert "site.yaml" in result.stderr


def test_internal_error_has_no_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import adapter.api

    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("secret patient detail")

    monkeypatch.setattr(adapter.api, "evaluate_path", boom)
    result = run_cli("evaluate", str(EXAMPLES_DIR), "-p", "fda-label")
    assert result.exit_code == 70
    assert "Traceback" not in result.output and "secret" not in result.output


def test_bad_as_of_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        cli.main, ["evaluate", str(EXAMPLES_DIR), "-p", "fda-label", "--as-of", "21/11/2026"]
    )
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.output
