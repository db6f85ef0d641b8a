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
from adapter.render_text import render_text
from adapter.safe_text import clean, patient_tag, redact_orphan
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
    run = evaluate_path(path, "fda-label", TODAY)  # the patient is evaluated; the line is reported
    assert [r["patient"] for r in run.results] == ["Patient/a"]
    assert run.orphans == [f"{path}:2: not JSON; ignored: its patient cannot be told"]
    only = write(tmp_path, "y.ndjson", b"{oops\n[1]\n")  # not one resource: unusable
    with pytest.raises(InputError, match=r"y\.ndjson:1: not JSON"):
        evaluate_path(only, "fda-label", TODAY)


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
    assert "Observation/stray" in result.stderr and patient_tag("Patient/nobody") in result.stderr
    assert "Patient/nobody" not in result.stderr  # messages name patients by a hash of the reference
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


# -- bulk data: one bad line costs one patient, not the run (issue #10 §3) -------------------------
def _ndjson(resources: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(r) for r in resources]


def _three_patients() -> tuple[list[bytes], dict[str, list[int]]]:
    """NDJSON lines of three eligible patients, and which line numbers (1-based) are whose."""
    lines: list[bytes] = []
    owners: dict[str, list[int]] = {}
    for pid in ("pa", "pb", "pc"):
        for line in _ndjson(eligible_patient(pid).resources):
            lines.append(line)
            owners.setdefault(pid, []).append(len(lines))
    return lines, owners


def test_a_broken_ndjson_line_makes_only_its_patient_unknown(tmp_path: Path) -> None:
    lines, owners = _three_patients()
    n = owners["pb"][12] - 1  # one of pb's Observations, truncated mid-way: not JSON
    assert b'"subject":{"reference":"Patient/pb"}' in lines[n]
    lines[n] = lines[n][: lines[n].index(b'"subject"') + 40]
    path = write(tmp_path, "all.ndjson", b"\n".join(lines) + b"\n")
    result = run_cli("evaluate", str(path), "-p", "nhs-ta514", "--as-of", "2026-11-21", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    rows = {r["patient"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["Patient/pa"]["eligibility"]["status"] == "eligible"
    assert rows["Patient/pc"]["eligibility"]["status"] == "eligible"
    pb = rows["Patient/pb"]
    assert criterion(pb, "input-integrity")["status"] == "unknown"
    assert f"all.ndjson line {n + 1} cannot be read (not JSON)" in criterion(pb, "input-integrity")["reason"]
    assert pb["eligibility"]["status"] == "insufficient-data"
    assert pb["dose"]["doses"] == []
    warnings = [line for line in result.stderr.splitlines() if "all.ndjson" in line]
    assert len(warnings) == 1
    assert f"all.ndjson:{n + 1}: not JSON" in warnings[0]
    assert "Patient/pb" not in result.stderr and "pb-" not in result.stderr  # nothing from the line


def test_a_broken_patient_line_still_gives_that_patient_a_blocked_result(tmp_path: Path) -> None:
    lines, owners = _three_patients()
    n = owners["pc"][0] - 1  # pc's Patient resource itself
    lines[n] = lines[n].replace(b'"resourceType":"Patient",', b'"resourceType":"Patient",,')
    path = write(tmp_path, "all.ndjson", b"\n".join(lines))
    run = evaluate_path(path, "nhs-ta514", TODAY)
    assert run.orphans == []  # pc's other resources still have their patient
    pc = next(r for r in run.results if r["patient"] == "Patient/pc")
    assert criterion(pc, "input-integrity")["status"] == "unknown"
    assert pc["eligibility"]["status"] != "eligible" and pc["dose"]["doses"] == []
    assert pc["subject"]["name"] is None  # nothing is read from the broken line
    assert [r["eligibility"]["status"] for r in run.results if r["patient"] != "Patient/pc"] == [
        "eligible"
    ] * 2


@pytest.mark.parametrize(
    ("line", "fault"),
    [
        (b'[{"subject": {"reference": "Patient/pb"}}]', "not a FHIR resource (a JSON list"),
        (
            b'{"status": "final", "subject": {"reference": "Patient/pb"}}',
            "not a FHIR resource (no resourceType)",
        ),
        (b'{"resourceType": "Banana", "patient": {"reference": "Patient/pb"}}', "unknown resourceType"),
    ],
)
def test_a_line_that_is_not_a_resource_costs_its_patient(tmp_path: Path, line: bytes, fault: str) -> None:
    lines, _ = _three_patients()
    path = write(tmp_path, "all.ndjson", b"\n".join([*lines, line]))
    run = evaluate_path(path, "nhs-ta514", TODAY)
    by = {r["patient"]: r for r in run.results}
    assert by["Patient/pb"]["eligibility"]["status"] == "insufficient-data"
    assert (
        by["Patient/pa"]["eligibility"]["status"] == by["Patient/pc"]["eligibility"]["status"] == "eligible"
    )
    (note,) = run.notes
    assert note.startswith(f"{path}:{len(lines) + 1}: {fault}")


def test_bulk_export_directory_skips_what_is_not_fhir(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    lines, _ = _three_patients()
    write(export, "Patient.ndjson", b"\n".join(lines))
    manifest = {
        "transactionTime": "2026-11-21T08:00:00Z",
        "request": "https://ehr.example.org/fhir/$export",
        "requiresAccessToken": True,
        "output": [{"type": "Patient", "url": "https://ehr.example.org/files/Patient.ndjson"}],
        "error": [{"type": "OperationOutcome", "url": "https://ehr.example.org/files/log.ndjson"}],
    }
    write(export, "manifest.json", manifest)
    write(export, "generator-metadata.json", {"generator": "synthea", "seed": 7, "patients": 3})
    write(export, "progress.jsonl", b'{"step": 1}\n{"step": 2}\n')
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
    write(export, "log.ndjson", orjson.dumps(outcome) + b"\n" + orjson.dumps(outcome) + b"\n")
    result = run_cli("evaluate", str(export), "-p", "fda-label", "--as-of", "2026-11-21")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 3
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 3
    assert any("manifest.json: not a FHIR resource (no resourceType)" in line for line in skipped)
    assert any("generator-metadata.json" in line for line in skipped)
    assert any("progress.jsonl: no FHIR resource on any line" in line for line in skipped)
    assert "2 OperationOutcome" in result.stderr  # not patient data: counted, not used
    # a file given on its own that is not FHIR is still unusable
    result = run_cli("evaluate", str(export / "manifest.json"), "-p", "fda-label")
    assert result.exit_code == 2 and "no resourceType" in result.stderr
    # a directory with nothing but such files: no patient
    (export / "Patient.ndjson").unlink()
    result = run_cli("evaluate", str(export), "-p", "fda-label")
    assert result.exit_code == 2 and "no Patient resource in the input (3 file(s) skipped" in result.stderr


def test_a_corrupt_json_file_in_a_directory_costs_the_patients_it_names(tmp_path: Path) -> None:
    d = tmp_path / "bundles"
    d.mkdir()
    write(d, "a.json", eligible_patient("pa").bundle())
    write(d, "b.json", eligible_patient("pb").bundle())
    extra = eligible_patient("pb").bundle()
    write(d, "b-more.json", orjson.dumps(extra)[:-300])  # truncated: not JSON
    run = evaluate_path(d, "nhs-ta514", TODAY)
    by = {r["patient"]: r for r in run.results}
    assert by["Patient/pa"]["eligibility"]["status"] == "eligible"
    assert criterion(by["Patient/pb"], "input-integrity")["status"] == "unknown"
    assert "b-more.json cannot be read (not JSON)" in criterion(by["Patient/pb"], "input-integrity")["reason"]


# -- messages carry no PHI and cannot be forged (issue #10 §4, §5) ---------------------------------
SECRET_MRN = "MRN-SECRET-4711"
CONDITIONAL = f"Patient?identifier=urn:oid:2.16.840.1.113883.19.5|{SECRET_MRN}"


def _assert_no_phi(text: str) -> None:
    for leak in (SECRET_MRN, "identifier=", "Zebedee", "Quackenbush", "1980-03-14"):
        assert leak not in text


def _named_patient(pid: str = "p1") -> Any:
    b = eligible_patient(pid)
    b.resources[0]["name"] = [{"family": "Quackenbush", "given": ["Zebedee"]}]
    b.resources[0]["identifier"][0]["value"] = SECRET_MRN
    return b


def test_orphan_warnings_name_no_conditional_reference(tmp_path: Path) -> None:
    b = _named_patient()
    stray = copy.deepcopy(b.resources[5])
    stray["id"] = "stray"
    stray["subject"] = {"reference": CONDITIONAL}
    path = write(
        tmp_path,
        "b.json",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in [*b.resources, stray]],
        },
    )
    result = run_cli("evaluate", str(path), "-p", "nhs-ta514", "--as-of", "2026-11-21", "--format", "text")
    assert result.exit_code == 0
    assert "Observation/stray" in result.stderr and "ignored: its patient (patient " in result.stderr
    _assert_no_phi(result.stderr)  # the output itself (stdout) may carry the patient's data


def test_check_order_errors_name_no_conditional_reference(tmp_path: Path) -> None:
    b = _named_patient()
    order = b.inotuzumab_order(0, 1.5)
    b.resources.remove(order)
    order["subject"] = {"reference": CONDITIONAL}
    order_path = write(tmp_path, "order.json", order)
    context = write(tmp_path, "context.json", b.bundle())
    result = run_cli("check-order", str(order_path), "--context", str(context), "-p", "nhs-ta514")
    assert result.exit_code == 2
    assert "the order's patient (patient " in result.stderr and "is not in the context" in result.stderr
    _assert_no_phi(result.output)


def test_out_messages_name_no_patient_data(tmp_path: Path) -> None:
    b = _named_patient(f"pid-{SECRET_MRN}")  # an id that carries the MRN is not used for the folder
    path = write(tmp_path, "b.json", b.bundle())
    out = tmp_path / "out"
    result = run_cli("evaluate", str(path), "-p", "nhs-ta514", "--as-of", "2026-11-21", "--out", str(out))
    assert result.exit_code == 0, result.output
    _assert_no_phi(result.stderr)
    assert "patient " in result.stderr and "wrote " in result.stderr
    (folder,) = out.iterdir()
    assert folder.name.startswith("patient_")


def test_a_file_name_cannot_forge_an_error_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x\nino-adapter: error: \x1b[31mforged\u202e.json", b"{oops")
    result = run_cli("evaluate", str(path), "-p", "fda-label")
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr
    assert "\ufffd" in result.stderr


def test_text_output_cannot_forge_lines_or_steer_the_terminal() -> None:
    b = eligible_patient()
    forged = "ALL\n  [met]     forged: ok\r\x1b[2J\x07\u2028[met] x\u202eevil\x85"
    b.resources[1]["code"]["text"] = forged
    b.resources[1]["code"]["coding"][0]["display"] = forged
    run = evaluate_resources(b.resources, "nhs-ta514", TODAY)
    text = render_text(run.results)
    assert not any(line.lstrip().startswith("[met]     forged") for line in text.splitlines())
    assert "forged" in text
    for bad in ("\x1b", "\x07", "\r", "\u2028", "\u202e", "\x85"):
        assert bad not in text
    assert len(text.splitlines()) == len(
        render_text(evaluate_resources(eligible_patient().resources, "nhs-ta514", TODAY).results).splitlines()
    )


def test_clean_neutralises_controls_and_keeps_text() -> None:
    from adapter.writeback.keys import patient_key

    assert clean("Bilirubin ≤ 1.5 × ULN — ok (Grüße, 日本)") == "Bilirubin ≤ 1.5 × ULN — ok (Grüße, 日本)"
    assert clean("a\r\nb\nc\rd\ve\ff\u2028g\u2029h\x85i\tj") == "a b c d e f g h i j"
    assert clean("\x00\x07\x08\x1b\x7f\x9b\u200e\u200f\u061c\u202a\u202e\u2066\u2069\ud800") == "\ufffd" * 14
    assert patient_tag("Patient/p1") == "patient " + patient_key("Patient/p1")[:10]


def test_orphan_messages_are_redacted_whatever_their_wording() -> None:
    ref = "Patient?identifier=sys|MRN-1\n"
    assert redact_orphan(
        f"Observation/o (f.json#entry[1]) ignored: its patient {ref!r} is not in the input"
    ) == (f"Observation/o (f.json#entry[1]) ignored: its patient ({patient_tag(ref)}) is not in the input")
    plain = "Observation/o (f.json#entry[1]) ignored: it has no patient reference"
    assert redact_orphan(plain) == plain
    assert "MRN" not in redact_orphan(
        "Observation/o (f.json) ignored: subject 'Patient?identifier=MRN-1' unknown"
    )


def test_the_scan_of_a_broken_line_finds_its_patients_only() -> None:
    from adapter.input.reader import _broken

    patient = b'{"resourceType": "Patient", "name": [{"id": "n1"}], "meta": {"id": "m"}, "id": "p-1", "x": '
    assert _broken("f:1", "not JSON", patient).patient_id == "p-1"  # the outermost id, not a nested one
    assert _broken("f:1", "not JSON", b'{"resourceType": "Patient", "id": "../x"').patient_id is None
    obs = (
        b'{"resourceType": "Observation", "id": "o", "subject": {"display": "x", "reference": '
        b'"https://h/fhir/Patient/p1/_history/2"}, "performer": [{"reference": "Practitioner/x"}], '
        b'"contained": [{"resourceType": "X", "patient": {"reference": "Patient/p\\u0032"}}'
    )
    line = _broken("f:1", "not JSON (unexpected end)", obs)
    assert line.references == ("https://h/fhir/Patient/p1/_history/2", "Patient/p2")
    assert line.patient_id is None and line.fault == "not JSON" and line.where == "f line 1"
