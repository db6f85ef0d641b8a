"""Protocol variants as data: one YAML file per variant, loaded once.

Each file names its source document in ../shared/sources and lists its criteria in order:
``id``, ``title``, ``phase`` (``start``: it gates only the start of treatment; ``continuing``: it
still applies once treatment has started; docs/criteria.md), ``rule`` (a function in
adapter.eligibility.rules), ``params`` and ``source`` ("<file> §<section>"). ``windows`` gives
freshness limits (days) per concept; ``attestations`` lists what no data can show and a clinician
must confirm.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapter.errors import MappingTableError
from adapter.yaml_files import SourceFile, read_yaml

PROTOCOLS_DIR = Path(__file__).resolve().parent
VARIANTS = ("fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose")
#: ``start``: the criterion gates only the start of treatment; ``continuing``: it applies throughout
PHASES = ("start", "continuing")


@dataclass(frozen=True, slots=True)
class CriterionSpec:
    id: str
    title: str
    rule: str
    params: dict[str, Any]
    source: str
    phase: str  # one of PHASES


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    title: str
    source_file: str
    version: str
    accept_preliminary: bool
    windows: dict[str, int]
    criteria: tuple[CriterionSpec, ...]
    attestations: tuple[str, ...]


@functools.cache
def rule_files(name: str) -> tuple[SourceFile, ...]:
    """The files that make up a variant's rules (criteria, dosing, product), each with its SHA-256.

    Part of the rule-set digest (adapter.ruleset) recorded in each evaluation and in Provenance,
    so a written decision names the exact rules used.
    """
    if name not in VARIANTS:
        raise MappingTableError(f"unknown protocol variant {name!r} (known: {', '.join(VARIANTS)})")
    return tuple(
        SourceFile(file, hashlib.sha256((PROTOCOLS_DIR / file).read_bytes()).hexdigest(), "protocol")
        for file in (f"{name}.yaml", f"{name}.dosing.yaml", "product.yaml")
    )


@functools.cache
def load_variant(name: str) -> Variant:
    from adapter.eligibility.rules import RULES

    if name not in VARIANTS:
        raise MappingTableError(f"unknown protocol variant {name!r} (known: {', '.join(VARIANTS)})")
    path = PROTOCOLS_DIR / f"{name}.yaml"
    doc, _ = read_yaml(path, "protocol")  # bounded: no aliases, one-line errors
    criteria = []
    seen: set[str] = set()
    for raw in doc["criteria"]:
        phase = raw.get("phase")
        if phase not in PHASES:
            what = "no phase" if phase is None else f"unknown phase {phase!r}"
            raise MappingTableError(
                f"{path}: criterion {raw.get('id')}: {what} (expected one of: {', '.join(PHASES)})"
            )
        spec = CriterionSpec(
            raw["id"], raw["title"], raw["rule"], dict(raw.get("params") or {}), raw["source"], str(phase)
        )
        if spec.id in seen:
            raise MappingTableError(f"{path}: duplicate criterion id {spec.id}")
        seen.add(spec.id)
        fn = RULES.get(spec.rule)
        if fn is None:
            raise MappingTableError(f"{path}: criterion {spec.id}: unknown rule {spec.rule}")
        try:
            inspect.signature(fn).bind(None, **spec.params)
        except TypeError as exc:
            raise MappingTableError(
                f"{path}: criterion {spec.id}: bad params for {spec.rule}: {exc}"
            ) from None
        if not spec.source.startswith(doc["source_file"]) and not spec.source.startswith("docs/"):
            raise MappingTableError(f"{path}: criterion {spec.id}: source must cite {doc['source_file']}")
        criteria.append(spec)
    return Variant(
        name=doc["name"],
        title=doc["title"],
        source_file=doc["source_file"],
        version=str(doc["version"]),
        accept_preliminary=bool(doc.get("accept_preliminary", False)),
        windows={str(k): int(v) for k, v in (doc.get("windows") or {}).items()},
        criteria=tuple(criteria),
        attestations=tuple(str(a) for a in doc.get("attestations") or ()),
    )
