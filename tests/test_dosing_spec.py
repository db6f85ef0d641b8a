"""The dosing tables: every variant loads, every rule cites its source, the numbers are the sources'."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter.dosing.spec import PROTOCOLS_DIR, load_dosing
from adapter.errors import MappingTableError
from adapter.protocols import VARIANTS, load_variant

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _sources(node: Any, path: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k.endswith("source") and isinstance(v, str):
                out.append((f"{path}.{k}", v))
            else:
                out.extend(_sources(v, f"{path}.{k}"))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_sources(v, f"{path}[{i}]"))
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rule_cites_the_variants_source_or_the_documented_policy(variant: str) -> None:
    doc = yaml.safe_load((PROTOCOLS_DIR / f"{variant}.dosing.yaml").read_text(encoding="utf-8"))
    own = load_variant(variant).source_file
    cited = _sources(doc)
    assert len(cited) > 20
    headings = set(re.findall(r"^#+ (.+)$", (DOCS / "dosing.md").read_text(encoding="utf-8"), re.M))
    for where, source in cited:
        assert source.startswith((own, "docs/dosing.md")), f"{where}: {source}"
        assert "§" in source, f"{where}: no section in {source!r}"
        for m in re.finditer(r"docs/dosing\.md §([^;()]+)", source):
            assert m.group(1).strip() in headings, f"{where}: docs/dosing.md has no section {m.group(1)!r}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_cycle_1_is_the_same_in_every_source(variant: str) -> None:
    spec = load_dosing(variant)
    assert [(d.day, d.mg_per_m2) for d in spec.cycle1.days] == [
        (1, Decimal("0.8")),
        (8, Decimal("0.5")),
        (15, Decimal("0.5")),
    ]


def test_md_anderson_dose_levels() -> None:
    spec = load_dosing("mdacc-low-dose")
    assert spec.levels is not None
    table = [[(d.day, d.mg_per_m2) for d in lvl.days] for lvl in spec.levels.levels]
    assert table == [
        [(1, Decimal("0.6")), (8, Decimal("0.3"))],
        [(1, Decimal("0.4")), (8, Decimal("0.2"))],
        [(1, Decimal("0.3")), (8, Decimal("0.1"))],
    ]


def test_a_malformed_dosing_table_is_a_mapping_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adapter.dosing.spec as spec_mod

    bad = yaml.safe_load((PROTOCOLS_DIR / "nhs-ta514.dosing.yaml").read_text(encoding="utf-8"))
    bad["cycle1"]["days"][0]["unexpected"] = 1
    (tmp_path / "nhs-ta514.dosing.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    monkeypatch.setattr(spec_mod, "PROTOCOLS_DIR", tmp_path)
    spec_mod.load_dosing.cache_clear()
    try:
        with pytest.raises(MappingTableError, match="unexpected"):
            spec_mod.load_dosing("nhs-ta514")
    finally:
        monkeypatch.undo()
        spec_mod.load_dosing.cache_clear()
