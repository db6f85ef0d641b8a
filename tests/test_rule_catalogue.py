"""docs/rules.md is generated from the variant files and the rule functions and must be current."""

from __future__ import annotations

from pathlib import Path

from adapter.catalogue import citations, dose_rules_in_order, render, resolve
from adapter.dosing.rules import REGISTRY
from adapter.dosing.spec import load_dosing
from adapter.protocols import VARIANTS, load_variant

DOCS = Path(__file__).resolve().parent.parent / "docs" / "rules.md"


def test_docs_rules_md_is_current() -> None:
    assert DOCS.read_text(encoding="utf-8") == render(), (
        "docs/rules.md is stale: run `python -m adapter.catalogue > docs/rules.md`"
    )


def test_every_dose_rule_is_catalogued_with_its_findings_and_a_citation() -> None:
    rules = dose_rules_in_order()
    assert {r.name for r in rules} == set(REGISTRY)
    for rule in rules:
        assert rule.findings and rule.summary, rule.name
        # every rule cites something for at least one variant, and every path it names resolves
        # somewhere (a typo in a path would silently drop the citation)
        assert any(citations(rule, load_dosing(v)) for v in VARIANTS), rule.name
        for path in rule.cites:
            assert any(resolve(load_dosing(v), path) for v in VARIANTS), (rule.name, path)


def test_every_citation_names_its_variant_source_or_adapter_policy() -> None:
    for v in VARIANTS:
        source_file = load_variant(v).source_file
        spec = load_dosing(v)
        for rule in dose_rules_in_order():
            for cite in citations(rule, spec):
                assert cite.startswith((source_file, "docs/")), (v, rule.name, cite)


def test_a_finding_id_leads_to_its_rule_in_one_hop() -> None:
    text = render()
    for rule in REGISTRY.values():
        section = text[text.index(f"#### `{rule.name}`") :]
        section = section[: section.index("| variant |")]
        for fid in rule.findings:
            assert f"`{fid}`" in section, (rule.name, fid)
