"""Site tables are data that can break safety (issue #10 §2): hostile ``--mappings`` and
``--site-settings`` files stop the run with exit 3 and one line naming the file and the entry; a
safety-critical shipped code is removed only with an explicit ``override_safety``, which every
evaluation then reports; the rule-set digest covers the variant, every table and the site settings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import cli
from adapter.api import check_order_path, evaluate_resources
from adapter.errors import MappingTableError
from adapter.mapping.tables import SHIPPED_FILES, load_tables, load_yaml_file
from tests.conftest import TODAY, criterion, eligible_patient
from tests.support.make_examples import EXAMPLES_DIR

BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)
# the same bomb where a table reads it: every str() of it walks 9^9 strings
BOMB_IN_TABLE = BOMB.replace("a: &a", "x1: &a").replace("\n", "\n  ").join(["systems:\n  ", ""]) + (
    "concepts:\n  neutrophils:\n    codes: *i\n"
)

# (id, site table, what the one-line message must name besides the file)
HOSTILE: list[tuple[str, str, str]] = [
    # numbers that are not numbers, or cannot be limits
    ("uln-negative", "default_uln: {bilirubin-total: -1}\n", "default_uln.bilirubin-total"),
    ("uln-zero", "default_uln: {bilirubin-total: 0}\n", "default_uln.bilirubin-total"),
    ("uln-nan", "default_uln: {bilirubin-total: .nan}\n", "default_uln.bilirubin-total"),
    ("uln-inf", "default_uln: {bilirubin-total: .inf}\n", "default_uln.bilirubin-total"),
    ("uln-text", "default_uln: {bilirubin-total: seventeen}\n", "default_uln.bilirubin-total"),
    ("uln-quoted-number", "default_uln: {bilirubin-total: '17'}\n", "default_uln.bilirubin-total"),
    ("uln-bool", "default_uln: {bilirubin-total: true}\n", "default_uln.bilirubin-total"),
    ("uln-list", "default_uln: {bilirubin-total: [17]}\n", "default_uln.bilirubin-total"),
    ("uln-unknown-concept", "default_uln: {bilirubin: 17}\n", "default_uln.bilirubin"),
    ("uln-not-a-mapping", "default_uln: 17\n", "default_uln"),
    ("uln-implausible", "default_uln: {bilirubin-total: 1000000000}\n", "default_uln.bilirubin-total"),
    ("molar-mass-zero", "molar_mass: {creatinine: 0}\n", "molar_mass.creatinine"),
    ("molar-mass-negative", "molar_mass: {creatinine: -113.12}\n", "molar_mass.creatinine"),
    ("molar-mass-nan", "molar_mass: {creatinine: .nan}\n", "molar_mass.creatinine"),
    ("molar-mass-inf", "molar_mass: {creatinine: .inf}\n", "molar_mass.creatinine"),
    ("molar-mass-text", "molar_mass: {creatinine: heavy}\n", "molar_mass.creatinine"),
    ("molar-mass-list", "molar_mass: {creatinine: [1]}\n", "molar_mass.creatinine"),
    ("plausible-nan", "plausible: {neutrophils: {min: 0, max: .nan}}\n", "plausible.neutrophils"),
    ("plausible-inf", "plausible: {neutrophils: {min: 0, max: .inf}}\n", "plausible.neutrophils"),
    ("plausible-minus-inf", "plausible: {neutrophils: {min: -.inf, max: 10}}\n", "plausible.neutrophils"),
    ("plausible-inverted", "plausible: {neutrophils: {min: 100, max: 1}}\n", "plausible.neutrophils"),
    ("plausible-inverted-excl", "plausible: {body-weight: {min_exclusive: 400, max: 400}}\n", "body-weight"),
    ("plausible-no-bounds", "plausible: {neutrophils: {}}\n", "plausible.neutrophils"),
    ("plausible-null", "plausible: {neutrophils: null}\n", "plausible.neutrophils"),
    ("plausible-text", "plausible: {neutrophils: {min: low, max: 10}}\n", "plausible.neutrophils"),
    ("plausible-unknown-concept", "plausible: {neutrophil: {min: 0, max: 10}}\n", "plausible.neutrophil"),
    ("plausible-dotted-unknown", "plausible: {nothing.dose-mg: {min: 0, max: 1}}\n", "nothing.dose-mg"),
    # units
    (
        "unit-not-ucum",
        "concepts:\n  site-lab:\n    kind: observation\n    value: quantity\n    unit: bananas per litre\n",
        "concept site-lab",
    ),
    (
        "unit-not-text",
        "concepts:\n  site-lab:\n    kind: observation\n    value: quantity\n    unit: [mg]\n",
        "site-lab",
    ),
    ("unit-changes-meaning", "concepts:\n  neutrophils:\n    unit: /uL\n", "concept neutrophils"),
    ("alias-not-ucum", "aliases:\n  'x10^9/L': 'thousand million per litre'\n", "aliases"),
    ("alias-not-text", "aliases:\n  'G/L': [1]\n", "aliases"),
    ("aliases-not-a-mapping", "aliases: 'kg'\n", "aliases"),
    ("equivalent-list", "equivalent: [a]\n", "equivalent"),
    # shapes that used to crash
    ("systems-list", "systems: [a, b]\n", "systems"),
    ("systems-url-list", "systems:\n  lab: [1]\n", "systems.lab"),
    ("systems-url-number", "systems:\n  lab: 5\n", "systems.lab"),
    ("value-sets-list", "value_sets: [x]\n", "value_sets"),
    (
        "value-set-codes-text",
        "value_sets:\n  positive-negative:\n    positive: sct 10828004\n",
        "must be a list",
    ),
    ("concept-list", "concepts:\n  x: [1]\n", "concept x"),
    ("concepts-text", "concepts: everything\n", "concepts"),
    (
        "codes-text",
        "concepts:\n  neutrophils:\n    codes: loinc 751-8\n",
        "neutrophils: codes must be a list",
    ),
    ("code-number", "concepts:\n  neutrophils:\n    codes: [751]\n", "concept neutrophils"),
    ("code-null", "concepts:\n  neutrophils:\n    codes: [null]\n", "concept neutrophils"),
    (
        "exclude-text",
        "concepts:\n  chemotherapy:\n    exclude: atc L01BC02\n",
        "chemotherapy: exclude must be a list",
    ),
    ("value-set-list", "concepts:\n  site-x:\n    kind: condition\n    value_set: [a]\n", "concept site-x"),
    ("kind-list", "concepts:\n  site-x:\n    kind: [condition]\n", "concept site-x"),
    ("kind-changed", "concepts:\n  vod-sos:\n    kind: procedure\n", "concept vod-sos"),
    # safety
    ("safety-exclude", "concepts:\n  vod-sos:\n    exclude: [icd10 K76.5]\n", "vod-sos"),
    ("safety-exclude-under-prefix", "concepts:\n  b-all:\n    exclude: [icd10cm C91.00]\n", "b-all"),
    (
        "safety-exclude-project-code",
        "concepts:\n  infusion-reaction:\n    exclude: [ino infusion-reaction]\n",
        "infusion-reaction",
    ),
    (
        "safety-override-empty",
        "concepts:\n  vod-sos:\n    override_safety: ''\n    exclude: [icd10 K76.5]\n",
        "override_safety must be text",
    ),
    ("safety-flag-in-site", "concepts:\n  vod-sos:\n    safety_critical: false\n", "project's tables only"),
    # YAML itself
    ("yaml-syntax", "concepts:\n  neutrophils:\n    codes: [loinc 751-8\n  x: 1\n", "line"),
    ("yaml-duplicate-key", "default_uln:\n  ast: 40\n  ast: 400\n", "duplicate key"),
    ("yaml-alias", "default_uln:\n  ast: &u 40\n  alt: *u\n", "alias"),
    ("yaml-bomb", BOMB, "alias"),
    ("yaml-bomb-in-table", BOMB_IN_TABLE, "alias"),
    (
        "yaml-tag",
        "default_uln: !!python/object:os.system {}\n",
        "bad.yaml: not valid YAML: line 1, column 14",
    ),
    ("top-level-list", "- 1\n- 2\n", "top level"),
]


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli.main, list(args))


def one_line_error(result: Any, file_name: str, entry: str) -> None:
    assert result.exit_code == 3, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ino-adapter: error: "), lines[0]
    assert file_name in lines[0] and entry in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "entry"), [(c, e) for _, c, e in HOSTILE], ids=[i for i, _, _ in HOSTILE]
)
def test_hostile_site_table_exits_3_with_one_line_naming_file_and_entry(
    tmp_path: Path, content: str, entry: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content, encoding="utf-8")
    started = time.perf_counter()
    result = run_cli("evaluate", str(EXAMPLES_DIR), "--protocol", "nhs-ta514", "--mappings", str(bad))
    assert time.perf_counter() - started < 10
    one_line_error(result, "bad.yaml", entry)


def test_alias_bomb_fails_fast(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB_IN_TABLE, encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(MappingTableError, match="alias"):
        load_yaml_file(bomb)
    with pytest.raises(MappingTableError, match="alias"):
        load_tables((str(bomb),))
    assert time.perf_counter() - started < 0.5


def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("concepts: " + "[" * 20000 + "]" * 20000 + "\n", encoding="utf-8")
    with pytest.raises(MappingTableError, match=r"deep\.yaml"):
        load_yaml_file(deep)


def test_yaml_error_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("concepts:\n  neutrophils:\n    codes: [loinc 751-8\n  x: 1\n", encoding="utf-8")
    with pytest.raises(MappingTableError) as caught:
        load_yaml_file(bad)
    message = caught.value.message
    assert "\n" not in message and "^" not in message
    assert message.startswith(f"{bad}: not valid YAML: line 4, column ")


def test_valid_site_values_are_accepted(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "concepts:\n  neutrophils:\n    unit: 10*3/uL\n"  # the same quantity, another spelling
        "  site-lab:\n    kind: observation\n    value: quantity\n    unit: mg/dL\n"
        "plausible:\n  neutrophils: {min: 0, max: 500}\n  site-lab: {min_exclusive: 0}\n"
        "  inotuzumab-ozogamicin.dose-mg: {min_exclusive: 0, max: 6}\n"
        "default_uln: {bilirubin-total: 17, site-lab: 1.2}\n"
        "molar_mass: {site-lab: 100}\n",
        encoding="utf-8",
    )
    t = load_tables((str(site),))
    assert t.plausible["neutrophils"] == {"min": 0.0, "max": 500.0}
    assert t.default_uln["bilirubin-total"] == 17.0
    assert t.concepts["site-lab"].unit == "mg/dL"


# -- safety-critical codes -------------------------------------------------------------------------
def test_safety_critical_concepts_are_declared_as_data() -> None:
    t = load_tables()
    for name in (
        "vod-sos",
        "inotuzumab-ozogamicin",
        "inotuzumab-hypersensitivity",
        "b-all",
        "b-all-relapse",
        "infusion-reaction",
        "liver-toxicity",
        "haemolysis",
        "hepatitis-b",
        "hepatitis-c",
        "hiv",
        "pregnancy-status",
        "pregnancy-test",
    ):
        assert name in t.safety_critical, name
    assert t.safety_critical <= set(t.concepts)


def test_excluding_a_safety_critical_code_needs_an_override_and_is_reported(tmp_path: Path) -> None:
    b = eligible_patient()
    b.condition("http://hl7.org/fhir/sid/icd-10", "K76.5", "VOD", onset_days_ago=100)
    plain = evaluate_resources(b.resources, "nhs-ta514", TODAY).results[0]
    assert criterion(plain, "vod-history")["status"] == "not-met"
    assert plain["ruleset"]["site_overrides"] == []
    site = tmp_path / "site.yaml"
    site.write_text(
        "concepts:\n  vod-sos:\n    override_safety: 'K76.5 is used for the local hepatic code list'\n"
        "    exclude: [icd10 K76.5]\n",
        encoding="utf-8",
    )
    result = evaluate_resources(b.resources, "nhs-ta514", TODAY, mappings=[str(site)]).results[0]
    assert result["ruleset"]["site_overrides"] == [
        {
            "file": "site.yaml",
            "concept": "vod-sos",
            "code": "http://hl7.org/fhir/sid/icd-10|K76.5",
            "reason": "K76.5 is used for the local hepatic code list",
        }
    ]
    assert criterion(result, "vod-history")["status"] == "met"  # the site's decision, and it says so


def test_excluding_a_code_the_project_does_not_ship_needs_no_override(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "systems:\n  lab: urn:oid:1.2.3\nconcepts:\n  vod-sos:\n    codes: [lab VOD, lab VOD-Q]\n"
        "    exclude: [lab VOD-Q]\n  gilbert-syndrome:\n    exclude: [icd10 E80.4]\n",
        encoding="utf-8",
    )
    t = load_tables((str(site),))
    assert t.site_overrides == ()


# -- the digest ------------------------------------------------------------------------------------
def test_ruleset_lists_every_file_and_the_digest_covers_tables_and_settings(tmp_path: Path) -> None:
    b = eligible_patient()
    plain = evaluate_resources(b.resources, "nhs-ta514", TODAY).results[0]["ruleset"]
    assert [t["file"] for t in plain["tables"]] == list(SHIPPED_FILES)
    assert [t["file"] for t in plain["rules"]] == ["nhs-ta514.yaml", "nhs-ta514.dosing.yaml", "product.yaml"]
    assert all(len(f["sha256"]) == 16 for f in plain["tables"] + plain["rules"])
    assert plain["settings"] is None and len(plain["digest"]) == 16
    site = tmp_path / "site.yaml"
    site.write_text("default_uln: {bilirubin-total: 17}\n", encoding="utf-8")
    with_site = evaluate_resources(b.resources, "nhs-ta514", TODAY, mappings=[str(site)]).results[0][
        "ruleset"
    ]
    assert with_site["tables"][-1] == {
        "file": "site.yaml",
        "sha256": with_site["tables"][-1]["sha256"],
        "origin": "site",
    }
    assert str(tmp_path) not in str(with_site)
    assert with_site["digest"] != plain["digest"]
    settings = tmp_path / "settings.yaml"
    settings.write_text("intent: order\n", encoding="utf-8")
    with_settings = evaluate_resources(
        b.resources, "nhs-ta514", TODAY, mappings=[str(site)], site_settings=str(settings)
    ).results[0]["ruleset"]
    assert with_settings["settings"]["file"] == "settings.yaml"
    assert with_settings["digest"] not in (plain["digest"], with_site["digest"])
    again = evaluate_resources(
        b.resources, "nhs-ta514", TODAY, mappings=[str(site)], site_settings=str(settings)
    ).results[0]["ruleset"]
    assert again == with_settings


def test_provenance_of_every_write_back_records_the_digest(tmp_path: Path) -> None:
    from tests.support.make_examples import EXAMPLES_DIR as EX

    site = tmp_path / "site.yaml"
    site.write_text("default_uln: {bilirubin-total: 17}\n", encoding="utf-8")
    settings = tmp_path / "settings.yaml"
    settings.write_text("premedication: true\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli(
        "evaluate", str(EX / "p09-cycle-2.json"), "-p", "nhs-ta514", "--as-of", "2026-11-21",
        "--mappings", str(site), "--site-settings", str(settings), "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    (folder,) = {p.parent for p in out.glob("*/nhs-ta514/evaluation.json")}
    evaluation = json.loads((folder / "evaluation.json").read_text(encoding="utf-8"))
    bundle = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
    (prov,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert any(p.endswith(f"/rules/{evaluation['ruleset']['digest']}") for p in prov["policy"])
    assert evaluation["ruleset"]["settings"]["file"] == "settings.yaml"


def test_check_order_bundle_provenance_records_the_digest(tmp_path: Path) -> None:
    import json

    from tests.test_order_check import files, on_day_8

    b = on_day_8()
    order, ctx = files(tmp_path, b, b.inotuzumab_order(0, 0.8))
    settings = tmp_path / "settings.yaml"
    settings.write_text("intent: proposal\n", encoding="utf-8")
    out = tmp_path / "issues.json"
    args = ["check-order", str(order), "--context", str(ctx), "-p", "nhs-ta514", "--bundle", str(out)]
    result = run_cli(*args, "--site-settings", str(settings))
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert checked["ruleset"]["settings"]["file"] == "settings.yaml"
    assert checked["ruleset"] == check_order_path(order, ctx, "nhs-ta514", site_settings=settings)["ruleset"]
    bundle = json.loads(out.read_text(encoding="utf-8"))
    (prov,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert any(p.endswith(f"/rules/{checked['ruleset']['digest']}") for p in prov["policy"])
    assert not any("unknown" in p for p in prov["policy"])


# -- site settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "entry"),
    [
        (BOMB, "alias"),
        ("intent: order\nintent: proposal\n", "duplicate key"),
        ("template_dir: /nonexistent/templates\n", "template_dir"),
        ("intnet: order\n", "intnet"),
        ("premedication: [yes\n", "line"),
    ],
    ids=["bomb", "duplicate", "missing-template-dir", "unknown-key", "syntax"],
)
def test_hostile_site_settings_exit_3_with_one_line(tmp_path: Path, content: str, entry: str) -> None:
    bad = tmp_path / "settings.yaml"
    bad.write_text(content, encoding="utf-8")
    result = run_cli(
        "evaluate", str(EXAMPLES_DIR), "--protocol", "nhs-ta514", "--site-settings", str(bad),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    one_line_error(result, "settings.yaml", entry)
    assert not (tmp_path / "out").exists()


def test_missing_template_dir_option_exits_3(tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text("{}", encoding="utf-8")
    result = run_cli("render", str(evaluation), "--template-dir", str(tmp_path / "nope"))
    assert result.exit_code == 3, result.output
    assert len(result.stderr.splitlines()) == 1 and "nope" in result.stderr


def test_text_output_says_when_a_site_overrides_a_safety_critical_code(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "concepts:\n  vod-sos:\n    override_safety: local coding review 2026-10\n"
        "    exclude: [icd10 K76.5]\n",
        encoding="utf-8",
    )
    args = ["evaluate", str(EXAMPLES_DIR / "p04-prior-vod.json"), "-p", "nhs-ta514", "--as-of", "2026-11-21"]
    result = run_cli(*args, "--mappings", str(site), "--format", "text")
    assert result.exit_code == 0, result.output
    assert (
        "  SITE OVERRIDE: site.yaml excludes http://hl7.org/fhir/sid/icd-10|K76.5 from vod-sos: "
        "local coding review 2026-10"
    ) in result.stdout.splitlines()
    plain = run_cli(*args, "--format", "text")
    assert "SITE OVERRIDE" not in plain.stdout


def test_shipped_units_are_ucum() -> None:
    """Site units are checked at load time; the shipped ones here (no UCUM registry at start-up)."""
    from adapter.mapping.units import is_valid_ucum

    t = load_tables()
    units = {c.unit for c in t.concepts.values() if c.unit} | set(t.unit_aliases.values())
    units |= set(t.unit_equivalent) | set(t.unit_equivalent.values())
    assert {u for u in units if not is_valid_ucum(u)} == set()


@pytest.mark.parametrize("target", ["nhs-ta514.yaml", "nhs-ta514.dosing.yaml"])
def test_protocol_and_dosing_files_load_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    import shutil

    from adapter import protocols
    from adapter.dosing import spec

    for f in protocols.PROTOCOLS_DIR.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / target).write_text(BOMB, encoding="utf-8")
    monkeypatch.setattr(protocols, "PROTOCOLS_DIR", tmp_path)
    monkeypatch.setattr(spec, "PROTOCOLS_DIR", tmp_path)
    loader = protocols.load_variant if target == "nhs-ta514.yaml" else spec.load_dosing
    started = time.perf_counter()
    with pytest.raises(MappingTableError, match="aliases"):
        loader.__wrapped__("nhs-ta514")  # bypass the cache
    assert time.perf_counter() - started < 0.5
