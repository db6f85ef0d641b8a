"""The offline FHIR R4 validator (tests/support/r4_validator.py) has teeth and raises no false alarms.

(a) HL7's official R4 examples of the resource types the adapter writes, and their transaction
    Bundles, pass (no errors; the only warnings are two known flaws in the examples themselves).
(b) Deliberately broken resources fail, each with exactly the expected issue at a sensible path.
(c) Resources shaped like the adapter's own (draft MedicationRequest with the mCODE normalization-basis
    extension, BSA Observation, DetectedIssue, Provenance, summary DocumentReference, and the
    transaction Bundle holding them) pass with no issue at all.
(d) What the validator does NOT check is pinned here too, so a dependency upgrade that changes it shows
    up as a failing test (see tools/fhir-validator/README.md, "What is checked").

Each group validates its resources in one node process.
"""

from __future__ import annotations

import copy
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.hl7_examples import iter_examples
from tests.support.r4_validator import (
    SCRIPT,
    STAMP,
    TOOL_DIR,
    Issue,
    R4Validator,
    ResourceResult,
    ensure_installed,
    errors,
    format_issues,
    run_validator,
)

Resource = dict[str, Any]

# --------------------------------------------------------------------------- (a) official examples

EXAMPLE_TYPES = ("MedicationRequest", "DetectedIssue", "Provenance", "DocumentReference", "Observation")
TRANSACTION_BUNDLES = (
    "Bundle-bundle-transaction.json",
    "Bundle-xds.json",  # holds a DocumentReference
    "Bundle-hla-1.json",  # urn:uuid references between entries
    "Bundle-ussg-fht.json",
)
VITAL_SIGN_EXAMPLES = (
    "Observation-example.json",  # body weight (LOINC 29463-7)
    "Observation-body-height.json",
    "Observation-bmi.json",
    "Observation-vitals-panel.json",
)
# Flaws in HL7's R4 examples themselves (not validator quirks): each references a resource type the
# element does not allow. Both are warnings (see README); nothing else in these examples is reported.
KNOWN_EXAMPLE_WARNINGS = {
    # MedicationRequest.dispenseRequest.performer is Reference(Organization) in R4.
    ("MedicationRequest-medrx0301.json", "MedicationRequest.dispenseRequest.performer", 'got "Practitioner"'),
    # Observation.performer does not allow Encounter.
    ("Observation-clinical-gender.json", "Observation.performer[0]", 'got "Encounter"'),
}


@pytest.fixture(scope="module")
def official_issues(hl7_r4_examples: Path, r4_validator: R4Validator) -> dict[str, list[Issue]]:
    """File name -> issues of that example (a Bundle's entries included), from one validator run."""
    names: list[str] = []
    documents: list[Resource] = []
    for path, resource in iter_examples({*EXAMPLE_TYPES, "Bundle"}, root=hl7_r4_examples):
        if resource["resourceType"] == "Bundle" and path.name not in TRANSACTION_BUNDLES:
            continue
        names.append(path.name)
        documents.append(resource)
    bundles = {n: d for n, d in zip(names, documents, strict=True) if n in TRANSACTION_BUNDLES}
    assert sorted(bundles) == sorted(TRANSACTION_BUNDLES)
    assert {b["type"] for b in bundles.values()} == {"transaction"}
    results = run_validator(documents)
    return _issues_by_document(names, results)


def _issues_by_document(names: list[str], results: list[ResourceResult]) -> dict[str, list[Issue]]:
    by_name: dict[str, list[Issue]] = {name: [] for name in names}
    name_of_result: dict[int, str] = {}
    top_level = iter(names)
    for result in results:
        name = next(top_level) if result.bundle_index is None else name_of_result[result.bundle_index]
        name_of_result[result.index] = name
        by_name[name].extend(result.issues)
    assert next(top_level, None) is None, "validator returned fewer top-level results than documents"
    return by_name


def test_the_official_example_set_is_not_empty(official_issues: dict[str, list[Issue]]) -> None:
    for resource_type in EXAMPLE_TYPES:
        assert any(name.startswith(f"{resource_type}-") for name in official_issues), resource_type
    for name in (*VITAL_SIGN_EXAMPLES, *TRANSACTION_BUNDLES):
        assert name in official_issues
    assert sum(name.startswith("MedicationRequest-") for name in official_issues) >= 30


@pytest.mark.parametrize("prefix", [*(f"{t}-" for t in EXAMPLE_TYPES), "Bundle-"])
def test_official_examples_have_no_errors(official_issues: dict[str, list[Issue]], prefix: str) -> None:
    found = [i for name, issues in official_issues.items() if name.startswith(prefix) for i in errors(issues)]
    assert not found, f"errors in HL7's official {prefix}* examples:\n{format_issues(found)}"


def test_official_example_warnings_are_the_known_flaws_of_the_examples(
    official_issues: dict[str, list[Issue]],
) -> None:
    warnings = [(name, i) for name, issues in official_issues.items() for i in issues if not i.is_error]
    unexpected = [
        f"{name}: {i}"
        for name, i in warnings
        if not any(name == n and i.path == p and s in i.message for n, p, s in KNOWN_EXAMPLE_WARNINGS)
    ]
    assert not unexpected, "\n".join(unexpected)
    assert len(warnings) == len(KNOWN_EXAMPLE_WARNINGS), format_issues(i for _, i in warnings)


def test_every_entry_resource_of_a_transaction_bundle_gets_its_own_result(
    hl7_r4_examples: Path, r4_validator: R4Validator
) -> None:
    bundle: Resource = orjson.loads((hl7_r4_examples / "Bundle-bundle-transaction.json").read_bytes())
    results = run_validator(bundle)
    with_resource = [i for i, e in enumerate(bundle["entry"]) if "resource" in e]
    assert [r.entry_index for r in results] == [None, *with_resource]
    assert [r.full_url for r in results[1:]] == [bundle["entry"][i].get("fullUrl") for i in with_resource]


# --------------------------------------------------------------------------- resources shaped like ours

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MCODE_NORMALIZATION_BASIS = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-normalization-basis"
IDS = "https://fhir.ino-adapter.org/identifier"
MR_URL = "urn:uuid:5b0c3d0e-8a51-4f5e-9a53-0d1b9c2f7a01"
BSA_URL = "urn:uuid:5b0c3d0e-8a51-4f5e-9a53-0d1b9c2f7a02"
ISSUE_URL = "urn:uuid:5b0c3d0e-8a51-4f5e-9a53-0d1b9c2f7a03"
DOC_URL = "urn:uuid:5b0c3d0e-8a51-4f5e-9a53-0d1b9c2f7a04"
PROV_URL = "urn:uuid:5b0c3d0e-8a51-4f5e-9a53-0d1b9c2f7a05"


def our_medication_request(bsa_ref: str = "Observation/bsa-p1-c1") -> Resource:
    return {
        "resourceType": "MedicationRequest",
        "id": "dose-p1-c1-d1",
        "identifier": [
            {"system": f"{IDS}/dose-proposal", "value": "p1:fda-label:c1:d1"},
            {"system": f"{IDS}/cycle", "value": "p1:fda-label:c1"},
        ],
        "status": "draft",
        "intent": "proposal",
        "instantiatesUri": ["https://fhir.ino-adapter.org/protocol/fda-label"],
        "groupIdentifier": {"system": f"{IDS}/cycle", "value": "p1:fda-label:c1"},
        "medicationCodeableConcept": {
            "coding": [
                {"system": "http://www.whocc.no/atc", "code": "L01FB01", "display": "inotuzumab ozogamicin"},
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "1942954",
                    "display": "inotuzumab ozogamicin 0.9 MG Injection",
                },
            ],
            "text": "inotuzumab ozogamicin",
        },
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-11-21T09:30:00+01:00",
        "reasonReference": [{"reference": "Condition/all-p1"}],
        "supportingInformation": [{"reference": bsa_ref}],
        "note": [{"text": "Proposal generated by ino-adapter; requires prescriber review."}],
        "dosageInstruction": [
            {
                "extension": [
                    {
                        "url": MCODE_NORMALIZATION_BASIS,
                        "valueCodeableConcept": {
                            "coding": [
                                {"system": SNOMED, "code": "301898006", "display": "Body surface area"}
                            ]
                        },
                    }
                ],
                "sequence": 1,
                "text": "0.8 mg/m2 (1.6 mg) IV over 1 hour on day 1",
                "timing": {"event": ["2026-11-23"]},
                "route": {
                    "coding": [{"system": SNOMED, "code": "47625008", "display": "Intravenous route"}],
                    "text": "IV",
                },
                "doseAndRate": [
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/dose-rate-type",
                                    "code": "calculated",
                                    "display": "Calculated",
                                }
                            ]
                        },
                        "doseQuantity": {"value": 1.6, "unit": "mg", "system": UCUM, "code": "mg"},
                    }
                ],
            }
        ],
    }


def our_bsa_observation() -> Resource:
    return {
        "resourceType": "Observation",
        "id": "bsa-p1-c1",
        "identifier": [{"system": f"{IDS}/bsa-observation", "value": "p1:2026-11-21"}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                        "display": "Vital Signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": "8277-6", "display": "Body surface area"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-21",
        "valueQuantity": {"value": 2.01, "unit": "m2", "system": UCUM, "code": "m2"},
        "derivedFrom": [{"reference": "Observation/weight-p1"}, {"reference": "Observation/height-p1"}],
    }


def our_detected_issue(implicated: str = "MedicationRequest/dose-p1-c1-d1") -> Resource:
    return {
        "resourceType": "DetectedIssue",
        "id": "issue-p1-bilirubin",
        "identifier": [{"system": f"{IDS}/detected-issue", "value": "p1:fda-label:c1:bilirubin"}],
        "status": "preliminary",
        "code": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "LAB",
                    "display": "Lab Alert",
                },
                {"system": "https://fhir.ino-adapter.org/CodeSystem/finding", "code": "bilirubin"},
            ]
        },
        "severity": "high",
        "patient": {"reference": "Patient/p1"},
        "identifiedDateTime": "2026-11-21T09:30:00+01:00",
        "implicated": [{"reference": implicated}],
        "detail": "Total bilirubin 2.1 x ULN (limit 1.5 x ULN): hold the dose.",
    }


def our_document_reference() -> Resource:
    return {
        "resourceType": "DocumentReference",
        "id": "summary-p1",
        "identifier": [{"system": f"{IDS}/regimen-summary", "value": "p1:fda-label"}],
        "status": "current",
        "docStatus": "preliminary",
        "type": {
            "coding": [{"system": LOINC, "code": "18776-5", "display": "Plan of care note"}],
            "text": "Inotuzumab ozogamicin regimen summary",
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                        "code": "clinical-note",
                        "display": "Clinical Note",
                    }
                ]
            }
        ],
        "subject": {"reference": "Patient/p1"},
        "date": "2026-11-21T09:30:00+01:00",
        "content": [
            {
                "attachment": {
                    "contentType": "text/html",
                    "data": "PGgxPlN1bW1hcnk8L2gxPg==",
                    "title": "Regimen summary",
                    "creation": "2026-11-21T09:30:00+01:00",
                }
            }
        ],
    }


def our_provenance(targets: tuple[str, ...] = ("MedicationRequest/dose-p1-c1-d1",)) -> Resource:
    return {
        "resourceType": "Provenance",
        "id": "prov-p1",
        "meta": {
            "tag": [{"system": "https://fhir.ino-adapter.org/CodeSystem/write-key", "code": "p1:run-1"}]
        },
        "target": [{"reference": t} for t in targets],
        "recorded": "2026-11-21T09:30:00.000+01:00",
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                    "display": "create",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "assembler",
                            "display": "Assembler",
                        }
                    ]
                },
                "who": {
                    "identifier": {"system": f"{IDS}/software", "value": "ino-adapter 0.2.0"},
                    "display": "ino-adapter 0.2.0",
                },
            }
        ],
        "entity": [{"role": "source", "what": {"reference": "Patient/p1"}}],
    }


def _post(full_url: str, resource: Resource, identifier_query: str | None = None) -> Resource:
    request: Resource = {"method": "POST", "url": resource["resourceType"]}
    if identifier_query:
        request["ifNoneExist"] = f"identifier={identifier_query}"
    entry_resource = {k: v for k, v in resource.items() if k != "id"}
    return {"fullUrl": full_url, "resource": entry_resource, "request": request}


def our_transaction_bundle() -> Resource:
    return {
        "resourceType": "Bundle",
        "id": "writeback-p1",
        "type": "transaction",
        "entry": [
            _post(BSA_URL, our_bsa_observation(), f"{IDS}/bsa-observation|p1:2026-11-21"),
            _post(MR_URL, our_medication_request(bsa_ref=BSA_URL), f"{IDS}/dose-proposal|p1:fda-label:c1:d1"),
            _post(ISSUE_URL, our_detected_issue(implicated=MR_URL)),
            _post(DOC_URL, our_document_reference()),
            _post(PROV_URL, our_provenance(targets=(MR_URL, BSA_URL, ISSUE_URL, DOC_URL))),
        ],
    }


def test_a_medication_request_shaped_like_ours_passes_without_any_issue(r4_validator: R4Validator) -> None:
    issues = r4_validator(our_medication_request())
    assert not issues, format_issues(issues)


def test_our_transaction_bundle_and_each_of_its_resources_pass(r4_validator: R4Validator) -> None:
    singles = [our_bsa_observation(), our_detected_issue(), our_document_reference(), our_provenance()]
    bundle = our_transaction_bundle()
    results = run_validator([*singles, bundle])
    issues = [i for r in results for i in r.issues]
    assert not issues, format_issues(issues)
    # 4 single resources, the Bundle, and its 5 entry resources were each validated.
    assert [(r.resource_type, r.entry_index) for r in results[4:]] == [
        ("Bundle", None),
        ("Observation", 0),
        ("MedicationRequest", 1),
        ("DetectedIssue", 2),
        ("DocumentReference", 3),
        ("Provenance", 4),
    ]


# --------------------------------------------------------------------------- (b) broken resources

Mutation = Callable[[], Resource]


def _mr(change: Callable[[Resource], object]) -> Mutation:
    return _mutated(our_medication_request, change)


def _mutated(factory: Callable[[], Resource], change: Callable[[Resource], object]) -> Mutation:
    def build() -> Resource:
        resource = copy.deepcopy(factory())
        change(resource)
        return resource

    return build


def _dosage_as_object(r: Resource) -> None:
    r["dosageInstruction"] = r["dosageInstruction"][0]


def _dose_value_as_string(r: Resource) -> None:
    r["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = "1.6"


def _extension_without_url(r: Resource) -> None:
    del r["dosageInstruction"][0]["extension"][0]["url"]


def _entry_without_request(b: Resource) -> None:
    del b["entry"][2]["request"]


def _entry_bad_method(b: Resource) -> None:
    b["entry"][0]["request"]["method"] = "CREATE"


def _subject_is_an_observation_in_the_bundle(b: Resource) -> None:
    b["entry"][1]["resource"]["subject"] = {"reference": BSA_URL}


MR_DOSE_VALUE = "MedicationRequest.dosageInstruction[0].doseAndRate[0].dose[x].value"
MISSING = "Missing required property"
NOT_IN_VS = "is not in the required value set"

# (id, broken resource, expected issues as (severity, path, message fragment)); nothing else may be reported.
BROKEN: list[tuple[str, Mutation, list[tuple[str, str, str]]]] = [
    ("mr-missing-status", _mr(lambda r: r.pop("status")), [("error", "MedicationRequest.status", MISSING)]),
    ("mr-missing-intent", _mr(lambda r: r.pop("intent")), [("error", "MedicationRequest.intent", MISSING)]),
    (
        "mr-missing-subject",
        _mr(lambda r: r.pop("subject")),
        [("error", "MedicationRequest.subject", MISSING)],
    ),
    (
        "mr-status-not-in-required-value-set",
        _mr(lambda r: r.update(status="proposed")),
        [("error", "MedicationRequest.status", f'Code "proposed" {NOT_IN_VS}')],
    ),
    (
        "mr-intent-not-in-required-value-set",
        _mr(lambda r: r.update(intent="suggestion")),
        [("error", "MedicationRequest.intent", f'Code "suggestion" {NOT_IN_VS}')],
    ),
    (
        "mr-dosage-instruction-object-not-array",
        _mr(_dosage_as_object),
        [("error", "MedicationRequest.dosageInstruction", "Expected array of values")],
    ),
    (
        "mr-dose-value-is-a-string",
        _mr(_dose_value_as_string),
        [("error", MR_DOSE_VALUE, "Invalid JSON type: expected number, but got string")],
    ),
    (
        "mr-extension-without-url",
        _mr(_extension_without_url),
        [("error", "MedicationRequest.dosageInstruction[0].extension[0].url", MISSING)],
    ),
    (
        "mr-unknown-element",
        _mr(lambda r: r.update(dosage=[{"text": "typo"}])),
        [("error", "MedicationRequest.dosage", 'Invalid additional property "dosage"')],
    ),
    (
        "mr-empty-array",
        _mr(lambda r: r.update(note=[])),
        [("error", "MedicationRequest.note", "Empty arrays are not allowed")],
    ),
    (
        "mr-bad-authored-on",
        _mr(lambda r: r.update(authoredOn="21/11/2026")),
        [("error", "MedicationRequest.authoredOn", "Invalid dateTime format")],
    ),
    (
        "provenance-missing-target",
        _mutated(our_provenance, lambda r: r.pop("target")),
        [("error", "Provenance.target", MISSING)],
    ),
    (
        "provenance-missing-agent",
        _mutated(our_provenance, lambda r: r.pop("agent")),
        [("error", "Provenance.agent", MISSING)],
    ),
    (
        "provenance-entity-role-not-in-required-value-set",
        _mutated(our_provenance, lambda r: r["entity"][0].update(role="input")),
        [("error", "Provenance.entity[0].role", f'Code "input" {NOT_IN_VS}')],
    ),
    (
        "detected-issue-missing-status",
        _mutated(our_detected_issue, lambda r: r.pop("status")),
        [("error", "DetectedIssue.status", MISSING)],
    ),
    (
        "detected-issue-severity-not-in-required-value-set",
        _mutated(our_detected_issue, lambda r: r.update(severity="critical")),
        [("error", "DetectedIssue.severity", f'Code "critical" {NOT_IN_VS}')],
    ),
    (
        "document-reference-missing-content",
        _mutated(our_document_reference, lambda r: r.pop("content")),
        [("error", "DocumentReference.content", MISSING)],
    ),
    (
        "observation-missing-code",
        _mutated(our_bsa_observation, lambda r: r.pop("code")),
        [("error", "Observation.code", MISSING)],
    ),
    (
        "transaction-entry-without-request",
        _mutated(our_transaction_bundle, _entry_without_request),
        [("error", "Bundle", "Constraint bdl-3 not met")],
    ),
    (
        "transaction-entry-method-not-in-required-value-set",
        _mutated(our_transaction_bundle, _entry_bad_method),
        [("error", "Bundle.entry[0].request.method", f'Code "CREATE" {NOT_IN_VS}')],
    ),
    (
        "transaction-entry-reference-to-wrong-type",
        _mutated(our_transaction_bundle, _subject_is_an_observation_in_the_bundle),
        [("warning", "MedicationRequest.subject", f'"{BSA_URL}" is a Observation in this Bundle')],
    ),
]


@pytest.fixture(scope="module")
def broken_issues(r4_validator: R4Validator) -> dict[str, list[Issue]]:
    names = [name for name, _, _ in BROKEN]
    return _issues_by_document(names, run_validator([build() for _, build, _ in BROKEN]))


@pytest.mark.parametrize(("name", "expected"), [pytest.param(n, e, id=n) for n, _, e in BROKEN])
def test_broken_resource_is_rejected_at_the_right_path(
    broken_issues: dict[str, list[Issue]], name: str, expected: list[tuple[str, str, str]]
) -> None:
    issues = broken_issues[name]
    got = sorted((i.severity, i.path or "", i.message) for i in issues)
    assert len(got) == len(expected), f"expected {expected}, got:\n{format_issues(issues)}"
    for (severity, path, fragment), (got_severity, got_path, got_message) in zip(
        sorted(expected), got, strict=True
    ):
        assert (got_severity, got_path) == (severity, path), format_issues(issues)
        assert fragment in got_message, format_issues(issues)


def test_an_unknown_resource_type_is_an_error_not_a_crash(r4_validator: R4Validator) -> None:
    issues = r4_validator([{"resourceType": "MedicationProposal", "id": "x"}, {"id": "no-type"}])
    assert [(i.severity, i.message) for i in issues] == [
        ("error", "Unknown data type: MedicationProposal"),
        ("error", "Missing resourceType"),
    ]


# --------------------------------------------------------------------------- (d) what is not checked


def _with_unknown_extension(r: Resource) -> None:
    r["extension"] = [{"url": "https://example.org/fhir/StructureDefinition/made-up", "valueString": "x"}]
    r["modifierExtension"] = [
        {"url": "https://example.org/fhir/StructureDefinition/made-up-mod", "valueBoolean": True}
    ]


def _with_unresolvable_snomed_route(r: Resource) -> None:
    r["dosageInstruction"][0]["route"]["coding"][0]["code"] = "not-a-snomed-code"


def _with_profile_it_does_not_meet(r: Resource) -> None:
    r["meta"] = {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]}
    del r["category"]  # required (1..*) by the vital-signs profile, optional in base R4


def _with_unreferenced_contained_resource(r: Resource) -> None:
    r["contained"] = [{"resourceType": "Patient", "id": "orphan"}]


def _with_relative_reference_to_wrong_type(r: Resource) -> None:
    r["subject"] = {"reference": "Medication/m1"}


# Pinned quirks: (id, resource, expected issues as (severity, path)); see the README.
NOT_CHECKED: list[tuple[str, Mutation, list[tuple[str, str]]]] = [
    # Extension definitions are never resolved: any url (even on a modifierExtension) is accepted and
    # its value[x] type is not compared with a definition. Only "url present" and ext-1 are checked.
    ("unknown-extension-and-modifier-extension", _mr(_with_unknown_extension), []),
    # Only *required* bindings are checked; example/preferred/extensible ones and external code
    # systems (SNOMED CT, LOINC, RxNorm, UCUM) are not.
    ("non-required-binding-with-unknown-code", _mr(_with_unresolvable_snomed_route), []),
    # meta.profile is not enforced: validation is against the base R4 definitions only.
    ("meta-profile-not-enforced", _mutated(our_bsa_observation, _with_profile_it_does_not_meet), []),
    # dom-3 (a contained resource must be referenced) is skipped by medplum.
    (
        "unreferenced-contained-resource",
        _mutated(our_bsa_observation, _with_unreferenced_contained_resource),
        [],
    ),
    # A relative reference to a disallowed type is only a warning.
    (
        "relative-reference-to-wrong-type",
        _mr(_with_relative_reference_to_wrong_type),
        [("warning", "MedicationRequest.subject")],
    ),
]


def test_what_the_validator_does_not_check_is_as_documented(r4_validator: R4Validator) -> None:
    names = [name for name, _, _ in NOT_CHECKED]
    by_name = _issues_by_document(names, run_validator([build() for _, build, _ in NOT_CHECKED]))
    for name, _, expected in NOT_CHECKED:
        got = [(i.severity, i.path) for i in by_name[name]]
        assert got == expected, f"{name}:\n{format_issues(by_name[name])}"


# --------------------------------------------------------------------------- install and CLI contract


def test_install_is_stamped_with_the_lock_file_and_idempotent(r4_validator: R4Validator) -> None:
    stamp = STAMP.read_text(encoding="utf-8")
    mtime = STAMP.stat().st_mtime_ns
    ensure_installed()  # current: must not reinstall
    assert STAMP.read_text(encoding="utf-8") == stamp
    assert STAMP.stat().st_mtime_ns == mtime


def test_cli_reports_usage_errors_with_exit_code_2(r4_validator: R4Validator) -> None:
    proc = subprocess.run(
        ["node", str(SCRIPT), "-"], cwd=TOOL_DIR, input=b"{not json", capture_output=True, check=False
    )
    assert proc.returncode == 2
    assert b"not valid JSON" in proc.stderr
    assert proc.stdout == b""


def test_issues_group_by_resource(r4_validator: R4Validator) -> None:
    broken = _mr(lambda r: r.pop("status"))()
    issues = r4_validator([our_bsa_observation(), broken])
    grouped: dict[tuple[str | None, str | None], list[str | None]] = defaultdict(list)
    for i in issues:
        grouped[(i.resource_type, i.resource_id)].append(i.path)
    assert dict(grouped) == {("MedicationRequest", "dose-p1-c1-d1"): ["MedicationRequest.status"]}


def test_missing_npm_is_a_loud_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import tests.support.r4_validator as r4

    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeError, match="npm is not on PATH"):
        r4._npm_ci()
    with pytest.raises(RuntimeError, match="node is not on PATH"):
        r4.run_validator({"resourceType": "Basic"})
