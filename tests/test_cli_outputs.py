"""`evaluate --out` and `render`: the files a hospital integration picks up, and re-rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import time_machine
from click.testing import CliRunner

import cli
from adapter.api import evaluate_path
from adapter.outputs import folder_name
from adapter.safe_text import patient_tag
from tests.conftest import TODAY
from tests.support.make_examples import EXAMPLES_DIR
from tests.support.synth import PatientBuilder

FROZEN = "2026-11-21T09:00:00Z"


def patient_folder(out: Path, pid: str, variant: str = "nhs-ta514") -> Path:
    """Where ``evaluate --out`` writes Patient/<pid>'s evaluation: ``<pid>_<hash of the reference>``."""
    return out / folder_name({"patient": f"Patient/{pid}"}) / variant


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def evaluate_out(src: Path, out: Path, *extra: str) -> Any:
    with time_machine.travel(FROZEN, tick=False):
        return run_cli(
            "evaluate", str(src), "-p", "nhs-ta514", "--as-of", "2026-11-21", "--out", str(out), *extra
        )


def test_out_writes_the_four_files_per_patient(tmp_path: Path) -> None:
    result = evaluate_out(EXAMPLES_DIR, tmp_path)
    assert result.exit_code == 0, result.output
    folders = sorted(p.parent for p in tmp_path.glob("*/nhs-ta514/bundle.json"))
    assert len(folders) == 9  # p01..p09, p08 from the Bulk Data export
    folder = patient_folder(tmp_path, "p09-cycle-2")
    assert sorted(p.name for p in folder.iterdir()) == [
        "bundle.json",
        "evaluation.json",
        "summary.html",
        "summary.md",
    ]
    ev = json.loads((folder / "evaluation.json").read_text())
    assert ev["patient"] == "Patient/p09-cycle-2" and ev["dose"]["action"] == "administer"
    bundle = json.loads((folder / "bundle.json").read_text())
    assert bundle["type"] == "transaction"
    orders = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
    assert [o["authoredOn"] for o in orders] == [FROZEN] * 3
    html = (folder / "summary.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "MRN-p09-cycle-2" in html
    assert "MRN-p09-cycle-2" in (folder / "summary.md").read_text()
    assert f"{folder.parent.name}/nhs-ta514" in result.stderr  # the report names each folder
    assert folder.parent.name.startswith("p09-cycle-2_")
    assert f"{patient_tag('Patient/p09-cycle-2')}: administer" in result.stderr  # and the patient by a hash
    assert "Patient/p09-cycle-2" not in result.stderr


def test_rerunning_rewrites_identical_files(tmp_path: Path) -> None:
    evaluate_out(EXAMPLES_DIR / "p09-cycle-2.json", tmp_path)
    folder = patient_folder(tmp_path, "p09-cycle-2")
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    evaluate_out(EXAMPLES_DIR / "p09-cycle-2.json", tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first


def test_a_changed_evaluation_keeps_the_previous_one_and_the_summary_says_what_changed(
    tmp_path: Path,
) -> None:
    b = PatientBuilder("chg", "1975-01-01", "female", TODAY)
    from tests.support.synth import full_workup

    full_workup(b)
    src = tmp_path / "in.json"
    src.write_text(json.dumps(b.bundle()))
    out = tmp_path / "out"
    evaluate_out(src, out)
    # a new bilirubin result arrives, above the UK limit
    b.lab("bilirubin-total", 40, days_ago=0)
    src.write_text(json.dumps(b.bundle()))
    evaluate_out(src, out)
    folder = patient_folder(out, "chg")
    previous = json.loads((folder / "previous-evaluation.json").read_text())
    current = json.loads((folder / "evaluation.json").read_text())
    assert previous["eligibility"]["status"] == "eligible" != current["eligibility"]["status"]
    md = (folder / "summary.md").read_text()
    assert "bilirubin" in md.lower() and "eligible" in md.lower()
    assert "first summary" not in md.lower()


def test_render_reproduces_the_written_summary(tmp_path: Path) -> None:
    evaluate_out(EXAMPLES_DIR / "p09-cycle-2.json", tmp_path)
    folder = patient_folder(tmp_path, "p09-cycle-2")
    for fmt in ("html", "md"):
        result = run_cli("render", str(folder / "evaluation.json"), "--format", fmt)
        assert result.exit_code == 0, result.output
        assert result.stdout == (folder / f"summary.{fmt}").read_text()
    target = tmp_path / "again.html"
    assert run_cli("render", str(folder / "evaluation.json"), "-o", str(target)).exit_code == 0
    assert target.read_text() == (folder / "summary.html").read_text()


def test_render_uses_a_site_template_directory(tmp_path: Path) -> None:
    (ev,) = evaluate_path(EXAMPLES_DIR / "p01-ph-neg-relapse.json", "nhs-ta514", TODAY).results
    path = tmp_path / "ev.json"
    path.write_text(json.dumps(ev))
    site = tmp_path / "site"
    site.mkdir()
    (site / "summary.md.j2").write_text("SITE {{ v.patient }}\n")
    result = run_cli("render", str(path), "--format", "md", "--template-dir", str(site))
    assert result.exit_code == 0, result.output
    assert result.stdout == "SITE Patient/p01-ph-neg-relapse\n"
    settings = tmp_path / "site.yaml"
    settings.write_text(f"template_dir: {site}\n")
    result = run_cli("render", str(path), "--format", "md", "--site-settings", str(settings))
    assert result.stdout == "SITE Patient/p01-ph-neg-relapse\n"


def test_render_refuses_what_is_not_an_evaluation(tmp_path: Path) -> None:
    bogus = tmp_path / "x.json"
    bogus.write_text('{"resourceType": "Patient"}')
    result = run_cli("render", str(bogus))
    assert result.exit_code == 2
    assert "not an evaluation" in result.stderr


def test_site_settings_change_the_written_orders(tmp_path: Path) -> None:
    settings = tmp_path / "site.yaml"
    settings.write_text("intent: order\nid_mode: put\n")
    evaluate_out(EXAMPLES_DIR / "p09-cycle-2.json", tmp_path / "out", "--site-settings", str(settings))
    bundle = json.loads((patient_folder(tmp_path / "out", "p09-cycle-2") / "bundle.json").read_text())
    orders = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
    assert {o["resource"]["intent"] for o in orders} == {"order"}
    assert {o["request"]["method"] for o in orders} == {"PUT"}


def test_bad_site_settings_exit_3(tmp_path: Path) -> None:
    settings = tmp_path / "site.yaml"
    settings.write_text("intent: maybe\n")
    result = evaluate_out(
        EXAMPLES_DIR / "p09-cycle-2.json", tmp_path / "out", "--site-settings", str(settings)
    )
    assert result.exit_code == 3
    assert "intent" in result.stderr


@pytest.mark.parametrize("status", ["active"])
def test_an_exported_record_with_a_signed_order_is_honoured_offline(tmp_path: Path, status: str) -> None:
    """The input already holds our day-8 proposal, signed: the offline Bundle leaves it alone."""
    out = tmp_path / "out"
    evaluate_out(EXAMPLES_DIR / "p09-cycle-2.json", out)
    written = json.loads((patient_folder(out, "p09-cycle-2") / "bundle.json").read_text())
    day8 = next(
        e["resource"]
        for e in written["entry"]
        if e["resource"]["resourceType"] == "MedicationRequest"
        and e["resource"]["identifier"][0]["value"].endswith(".d8")
    )
    signed = {**day8, "id": "signed-8", "status": status, "meta": {"versionId": "2"}}
    signed["dosageInstruction"] = [{**day8["dosageInstruction"][0], "timing": {"event": ["2026-11-29"]}}]
    signed.pop("supportingInformation")
    record = json.loads((EXAMPLES_DIR / "p09-cycle-2.json").read_text())
    record["entry"].append({"fullUrl": "MedicationRequest/signed-8", "resource": signed})
    src = tmp_path / "exported.json"
    src.write_text(json.dumps(record))
    evaluate_out(src, tmp_path / "out2")
    bundle = json.loads((patient_folder(tmp_path / "out2", "p09-cycle-2") / "bundle.json").read_text())
    resources = [e["resource"] for e in bundle["entry"]]
    orders = [r for r in resources if r["resourceType"] == "MedicationRequest"]
    assert not any(o["identifier"][0]["value"].endswith(".d8") for o in orders)
    issue = next(
        r
        for r in resources
        if r["resourceType"] == "DetectedIssue" and r["code"]["text"] == "superseded-active-order"
    )
    assert issue["implicated"] == [{"reference": "MedicationRequest/signed-8"}]


# -- outputs that cannot be forged (issue #10 §4) --------------------------------------------------
def _two_patients_bundle(tmp_path: Path, *pids: str) -> Path:
    from tests.support.synth import full_workup

    entries = [
        {"resource": r}
        for pid in pids
        for r in full_workup(PatientBuilder(pid, "1975-01-01", "female", TODAY)).resources
    ]
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    return src


def test_a_patient_id_cannot_write_outside_the_output_directory(tmp_path: Path) -> None:
    out = tmp_path / "a" / "out"
    out.mkdir(parents=True)
    result = evaluate_out(_two_patients_bundle(tmp_path, ".."), out)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "a" / "nhs-ta514").exists()
    (written,) = out.iterdir()
    assert written.name == folder_name({"patient": "Patient/.."}) and written.name.startswith("patient_")
    assert json.loads((written / "nhs-ta514" / "evaluation.json").read_text())["patient"] == "Patient/.."


def test_ids_with_the_same_slug_get_their_own_folders(tmp_path: Path) -> None:
    src = _two_patients_bundle(tmp_path, "p:1", "p_1", "P1", "p1")
    out = tmp_path / "out"
    for _ in range(2):
        result = evaluate_out(src, out, "--no-validate")
        assert result.exit_code == 0, result.output
    folders = sorted(out.glob("*/nhs-ta514"))
    assert len(folders) == 4
    patients = {json.loads((f / "evaluation.json").read_text())["patient"] for f in folders}
    assert patients == {"Patient/p:1", "Patient/p_1", "Patient/P1", "Patient/p1"}
    assert not list(out.glob("*/nhs-ta514/previous-evaluation.json"))  # nobody took another's
    assert len({f.parent.name.lower() for f in folders}) == 4  # distinct on a case-insensitive disk too


def test_a_folder_that_leads_outside_or_holds_another_patient_is_refused(tmp_path: Path) -> None:
    src = EXAMPLES_DIR / "p09-cycle-2.json"
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / folder_name({"patient": "Patient/p09-cycle-2"})).symlink_to(elsewhere)
    result = evaluate_out(src, out)
    assert result.exit_code == 2
    assert "resolves outside" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not list(elsewhere.iterdir())
    (out / folder_name({"patient": "Patient/p09-cycle-2"})).unlink()
    folder = patient_folder(out, "p09-cycle-2")
    folder.mkdir(parents=True)
    other = {"contract": "1", "patient": "Patient/someone-else", "protocol": "nhs-ta514", "eligibility": {}}
    (folder / "evaluation.json").write_text(json.dumps(other))
    result = evaluate_out(src, out)
    assert result.exit_code == 2 and "holds another patient's evaluation" in result.stderr
    assert json.loads((folder / "evaluation.json").read_text()) == other
    assert "someone-else" not in result.stderr


def test_folder_names_are_documented_and_stable() -> None:
    from adapter.writeback.keys import patient_key

    name = folder_name({"patient": "Patient/p09-cycle-2"})
    assert name == "p09-cycle-2_" + patient_key("Patient/p09-cycle-2")[:10]
    assert folder_name({"patient": "Patient/-.x"}).startswith("x_")
    assert folder_name({"patient": "urn:uuid:6f1c0a8e-1b0e-4c4b-9e55-3d7c1f0e9a11"}).startswith("patient_")
    assert folder_name({"patient": "Patient/MRN123-a", "subject": {"mrn": "mrn123"}}).startswith("patient_")


TAMPERED: dict[str, bytes] = {
    "infinite number": b'{"contract": "1", "patient": "Patient/x", "protocol": "nhs-ta514", '
    b'"eligibility": {}, "dose": {"bsa_m2": 1e999}}',
    "100k levels": b'{"contract": "1", "patient": "Patient/x", "protocol": "nhs-ta514", "eligibility": '
    + b'{"a": ' * 100_000
    + b"1"
    + b"}" * 100_001,
    "500 levels": b'{"contract": "1", "patient": "Patient/x", "protocol": "nhs-ta514", "eligibility": '
    + b"[" * 500
    + b"]" * 500
    + b"}",
    "patient a list": b'{"contract": "1", "patient": ["Patient/x"], "protocol": "nhs-ta514", '
    b'"eligibility": {}}',
    "protocol an object": b'{"contract": "1", "patient": "Patient/x", "protocol": {}, "eligibility": {}}',
    "eligibility a list": b'{"contract": "1", "patient": "Patient/x", "protocol": "nhs-ta514", '
    b'"eligibility": []}',
    "not UTF-8": b'{"contract": "1", "patient": "Patient/\xff", "protocol": "nhs-ta514", "eligibility": {}}',
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_render_refuses_a_tampered_evaluation_with_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "evaluation.json"
    path.write_bytes(TAMPERED[case])
    result = run_cli("render", str(path), "--format", "md")
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1 and "not an evaluation" in result.stderr
    good = tmp_path / "good.json"
    (ev,) = evaluate_path(EXAMPLES_DIR / "p09-cycle-2.json", "nhs-ta514", TODAY).results
    good.write_text(json.dumps(ev))
    result = run_cli("render", str(good), "--previous", str(path))
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1


def test_render_survives_wrong_types_and_absurd_numbers_anywhere(tmp_path: Path) -> None:
    """Every node of a real evaluation replaced by a hostile value: rendered or refused, never a crash."""
    from adapter.summary.render import render_summary
    from adapter.summary.view import build_view

    (ev,) = evaluate_path(EXAMPLES_DIR / "p09-cycle-2.json", "nhs-ta514", TODAY).results
    hostile: list[Any] = [
        1e300,
        -1e-300,
        10**40,
        "1e999999999",
        "NaN",
        "x\n  [met]     forged\x1b[2J\u202e",
        [],
        {},
        None,
        True,
        {"a": [[[{"b": 1}]]]},
        "",
    ]
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for k, v in items:
            walk(v, (*path, k))

    walk(ev, ())
    assert len(paths) > 300
    for i, path in enumerate(paths[1:], start=1):
        tampered = json.loads(json.dumps(ev))
        node = tampered
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = hostile[i % len(hostile)]
        try:
            build_view(tampered, generated_at=FROZEN)
            out = render_summary(tampered, "md")
        except Exception as exc:  # only the documented refusal is allowed
            from adapter.summary import PreviousMismatchError

            assert isinstance(exc, PreviousMismatchError), (path, exc)
            continue
        assert "\x1b" not in out and "\u202e" not in out, path
        assert not any(line.lstrip().startswith("[met]     forged") for line in out.splitlines()), path
