"""fhir.resources' R4B models accept HL7's official FHIR R4 examples.

The adapter speaks FHIR R4 (4.0.1). fhir.resources 8.x has no R4 package; its default package is R5 and
it ships R4B (4.3), whose resources are wire-compatible with R4 for the types we use. These tests pin that
claim against every example HL7 published for those types in ``hl7.fhir.r4.examples@4.0.1`` (fetched and
verified by ``tests/support/hl7_examples.py``), and show why the R5 default cannot be used.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from fhir.resources.medicationrequest import MedicationRequest as R5MedicationRequest
from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure

from tests.support import hl7_examples
from tests.support.hl7_examples import iter_examples

Examples = list[tuple[Path, dict[str, Any]]]

R4B_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "Patient": Patient,
    "Observation": Observation,
    "Condition": Condition,
    "MedicationRequest": MedicationRequest,
    "MedicationStatement": MedicationStatement,
    "MedicationAdministration": MedicationAdministration,
    "Procedure": Procedure,
    "AllergyIntolerance": AllergyIntolerance,
}

# Examples per type in hl7.fhir.r4.examples@4.0.1 (top-level resourceType; resources inside Bundles or
# `contained` are not counted). The package is pinned, so these are the exact counts; the check is >= so
# that it only guards against the test passing vacuously.
MIN_EXAMPLES: dict[str, int] = {
    "Patient": 22,
    "Observation": 64,
    "Condition": 12,
    "MedicationRequest": 40,
    "MedicationStatement": 7,
    "MedicationAdministration": 14,
    "Procedure": 16,
    "AllergyIntolerance": 6,
}

# Examples of the types above that fhir.resources 8.3.0's R4B models reject, file name -> why.
# Every entry must name a file of a tested type that is in the package and still fails: an entry that
# now passes or is gone fails the tests, so this list cannot go stale.
# Empty: as of fhir.resources 8.3.0 all 181 examples of these eight types validate under R4B.
KNOWN_R4B_FAILURES: dict[str, str] = {}

# MedicationRequest examples that carry `medicationCodeableConcept` (the R4 choice element that R5
# replaced with `medication: CodeableReference`).
MIN_MEDICATION_CODEABLE_CONCEPT_EXAMPLES = 11


@pytest.fixture(scope="module")
def examples_by_type(hl7_r4_examples: Path) -> dict[str, Examples]:
    grouped: dict[str, Examples] = {resource_type: [] for resource_type in R4B_MODELS}
    for path, resource in iter_examples(set(R4B_MODELS), root=hl7_r4_examples):
        grouped[resource["resourceType"]].append((path, resource))
    return grouped


@pytest.fixture(scope="module")
def r4_medication_requests_with_codeable_concept(examples_by_type: dict[str, Examples]) -> Examples:
    found = [
        (path, resource)
        for path, resource in examples_by_type["MedicationRequest"]
        if "medicationCodeableConcept" in resource
    ]
    assert len(found) >= MIN_MEDICATION_CODEABLE_CONCEPT_EXAMPLES, [p.name for p, _ in found]
    return found


def _summarise(exc: pydantic.ValidationError, limit: int = 5) -> str:
    parts = [f"{'.'.join(map(str, err['loc']))}: {err['type']} ({err['msg']})" for err in exc.errors()]
    more = f" ... and {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


@pytest.mark.parametrize("resource_type", list(R4B_MODELS))
def test_r4b_model_accepts_every_hl7_r4_example(
    resource_type: str, examples_by_type: dict[str, Examples]
) -> None:
    examples = examples_by_type[resource_type]
    assert len(examples) >= MIN_EXAMPLES[resource_type], (
        f"only {len(examples)} {resource_type} examples found, expected >= {MIN_EXAMPLES[resource_type]}"
    )
    model = R4B_MODELS[resource_type]

    failures: dict[str, str] = {}
    for path, resource in examples:
        try:
            parsed = model.model_validate(resource)
        except pydantic.ValidationError as exc:
            failures[path.name] = _summarise(exc)
            continue
        assert getattr(parsed, "id", None) == resource.get("id"), path.name

    names = {path.name for path, _ in examples}
    unexpected = {name: why for name, why in failures.items() if name not in KNOWN_R4B_FAILURES}
    now_passing = sorted(name for name in KNOWN_R4B_FAILURES if name in names and name not in failures)
    assert not unexpected, f"R4B {resource_type} rejects HL7 R4 examples:\n" + "\n".join(
        f"  {name}: {why}" for name, why in sorted(unexpected.items())
    )
    assert not now_passing, f"remove from KNOWN_R4B_FAILURES, they now validate: {now_passing}"


def test_known_r4b_failures_name_tested_examples(examples_by_type: dict[str, Examples]) -> None:
    tested = {path.name for examples in examples_by_type.values() for path, _ in examples}
    missing = sorted(set(KNOWN_R4B_FAILURES) - tested)
    assert not missing, f"KNOWN_R4B_FAILURES names files not among the tested examples: {missing}"
    assert all(reason.strip() for reason in KNOWN_R4B_FAILURES.values()), "every entry needs a reason"


def test_r4b_medication_request_json_keeps_medication_codeable_concept(
    r4_medication_requests_with_codeable_concept: Examples,
) -> None:
    for path, resource in r4_medication_requests_with_codeable_concept:
        model = MedicationRequest.model_validate(resource)
        assert model.medicationCodeableConcept is not None, path.name
        assert model.medicationReference is None, path.name

        output: Any = orjson.loads(model.model_dump_json())
        assert output["resourceType"] == "MedicationRequest", path.name
        assert "medication" not in output, path.name
        assert output["medicationCodeableConcept"] == resource["medicationCodeableConcept"], path.name
        # and the round trip is stable
        again = MedicationRequest.model_validate(output)
        assert orjson.loads(again.model_dump_json()) == output, path.name


def test_r5_default_rejects_r4_medication_request(
    r4_medication_requests_with_codeable_concept: Examples,
) -> None:
    """Why the adapter uses fhir.resources.R4B: the package default is R5, where MedicationRequest
    has `medication` (CodeableReference, required) instead of R4's `medication[x]` choice."""
    for path, resource in r4_medication_requests_with_codeable_concept:
        with pytest.raises(pydantic.ValidationError) as info:
            R5MedicationRequest.model_validate(resource)
        problems = {(err["loc"], err["type"]) for err in info.value.errors()}
        assert (("medicationCodeableConcept",), "extra_forbidden") in problems, (path.name, problems)
        assert (("medication",), "missing") in problems, (path.name, problems)


# --------------------------------------------------------------------------- the support module itself


def test_examples_dir_reuses_cache_without_npm(
    hl7_r4_examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")  # npm unreachable: only the completed cache can answer
    assert hl7_examples.examples_dir() == hl7_r4_examples
    assert (hl7_r4_examples / "package.json").is_file()


def test_missing_npm_is_a_loud_runtime_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hl7_examples.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(RuntimeError, match="npm is not on PATH"):
        hl7_examples.examples_dir()
    # nothing half-built is left behind
    leftovers = list((tmp_path / "cache").iterdir()) if (tmp_path / "cache").exists() else []
    assert leftovers == []


def test_integrity_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    tarball = tmp_path / "x.tgz"
    tarball.write_bytes(b"not the pinned tarball")
    pinned = hl7_examples.load_lock().integrity
    with pytest.raises(hl7_examples.ExampleIntegrityError, match="integrity mismatch"):
        hl7_examples.verify_integrity(tarball, pinned)
    hl7_examples.verify_integrity(tarball, hl7_examples.sri_of_file(tarball))


def _tarball_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"{}") -> Path:
    path = tmp_path / "evil.tgz"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("package/ok.json")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"{}"))
        if member.isreg():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return path


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("/tmp/absolute.json"),
        tarfile.TarInfo("package/../../escape.json"),
        tarfile.TarInfo("elsewhere/file.json"),
        _symlink("package/link.json", "/etc/passwd"),
    ],
    ids=["absolute", "dotdot", "outside-package", "symlink"],
)
def test_safe_extract_rejects_unsafe_members(tmp_path: Path, member: tarfile.TarInfo) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(hl7_examples.UnsafeArchiveError):
        hl7_examples.safe_extract(_tarball_with(tmp_path, member), dest)
    assert list(dest.iterdir()) == [], "nothing may be written when any member is unsafe"
