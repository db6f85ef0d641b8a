"""Load the mapping tables in ``mappings/`` (once) and merge a site's ``--mappings`` file over them.

The format is documented in ``mappings/README.md``. In short, every file may hold ``systems``
(short aliases for code-system URLs), ``concepts`` (codes per protocol concept),
``value_sets`` (codes per coded value) and the unit sections of ``units.yaml``. A site file uses
the same sections: codes are added to existing concepts and values, scalar settings replace the
shipped ones, and new concepts or values may be introduced.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapter.errors import MappingTableError

MAPPINGS_DIR = Path(__file__).resolve().parent.parent.parent / "mappings"
SHIPPED_FILES = ("project.yaml", "concepts.yaml", "values.yaml", "qualifiers.yaml", "units.yaml")
KINDS = frozenset({"observation", "condition", "procedure", "medication", "allergy"})
VALUE_TYPES = frozenset({"quantity", "integer", "coded", "quantity-or-coded"})

Coding = tuple[str, str]  # (system URL, code)


@dataclass(frozen=True, slots=True)
class Concept:
    name: str
    kind: str
    value: str | None = None  # observation value type
    value_set: str | None = None
    unit: str | None = None  # canonical UCUM unit


@dataclass(slots=True)
class Tables:
    """The merged tables. Built once per set of files; treat as read-only."""

    systems: dict[str, str] = field(default_factory=dict)
    concepts: dict[str, Concept] = field(default_factory=dict)
    exact: dict[Coding, set[str]] = field(default_factory=dict)
    prefixes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # system -> (prefix, concept)
    excludes: dict[str, set[Coding]] = field(default_factory=dict)
    values: dict[str, dict[Coding, str]] = field(default_factory=dict)  # value set -> coding -> value
    value_names: dict[str, set[str]] = field(default_factory=dict)
    unit_aliases: dict[str, str] = field(default_factory=dict)
    unit_equivalent: dict[str, str] = field(default_factory=dict)
    molar_mass: dict[str, float] = field(default_factory=dict)
    plausible: dict[str, dict[str, float]] = field(default_factory=dict)
    default_uln: dict[str, float] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    # -- look-ups used by the mapper -------------------------------------------------------
    def concepts_for(self, codings: Iterable[Coding], kind: str) -> set[str]:
        """Protocol concepts of ``kind`` that any of the codings maps to."""
        found: set[str] = set()
        codings = list(codings)
        for system, code in codings:
            for name in self.exact.get((system, code), ()):
                found.add(name)
            for prefix, name in self.prefixes.get(system, ()):
                if code.startswith(prefix):
                    found.add(name)
        return {
            n
            for n in found
            if self.concepts[n].kind == kind and not any(c in self.excludes.get(n, ()) for c in codings)
        }

    def values_for(self, value_set: str, codings: Iterable[Coding]) -> set[str]:
        table = self.values.get(value_set, {})
        return {table[c] for c in codings if c in table}


def _parse_code(entry: Any, systems: Mapping[str, str], where: str) -> tuple[str, str, bool]:
    if not isinstance(entry, str) or len(entry.split()) != 2:
        raise MappingTableError(f"{where}: code entry {entry!r} must be '<system alias> <code>'")
    alias, code = entry.split()
    system = systems.get(alias, alias if "://" in alias or alias.startswith("urn:") else None)
    if system is None:
        raise MappingTableError(f"{where}: unknown system alias {alias!r} (declare it under systems:)")
    prefix = code.endswith("*")
    return system, code.rstrip("*"), prefix


def load_yaml_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingTableError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise MappingTableError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MappingTableError(f"{path}: top level must be a mapping")
    return data


def _merge_doc(t: Tables, doc: dict[str, Any], where: str) -> None:
    known = {
        "systems",
        "concepts",
        "value_sets",
        "aliases",
        "equivalent",
        "molar_mass",
        "plausible",
        "default_uln",
    }
    unknown = set(doc) - known
    if unknown:
        raise MappingTableError(f"{where}: unknown section(s) {sorted(unknown)}")
    for alias, url in (doc.get("systems") or {}).items():
        t.systems[str(alias)] = str(url)
    raw_concepts = doc.get("concepts") or {}
    if not isinstance(raw_concepts, dict):
        raise MappingTableError(f"{where}: concepts must be a mapping")
    for name, spec in raw_concepts.items():
        _merge_concept(t, str(name), spec or {}, f"{where}: concept {name}")
    for vs_name, values in (doc.get("value_sets") or {}).items():
        if not isinstance(values, dict):
            raise MappingTableError(f"{where}: value set {vs_name} must map values to code lists")
        table = t.values.setdefault(str(vs_name), {})
        names = t.value_names.setdefault(str(vs_name), set())
        for raw_value, codes in values.items():
            value = str(raw_value)
            names.add(value)
            for entry in codes or []:
                system, code, prefix = _parse_code(entry, t.systems, f"{where}: value set {vs_name}.{value}")
                if prefix:
                    raise MappingTableError(f"{where}: value set {vs_name}: prefix codes are not allowed")
                previous = table.get((system, code))
                if previous is not None and previous != value:
                    raise MappingTableError(
                        f"{where}: value set {vs_name}: {system}|{code} maps to both {previous} and {value}"
                    )
                table[(system, code)] = value
    for key, target in (doc.get("aliases") or {}).items():
        t.unit_aliases[str(key)] = str(target)
    for key, target in (doc.get("equivalent") or {}).items():
        t.unit_equivalent[str(key)] = str(target)
    for key, mass in (doc.get("molar_mass") or {}).items():
        t.molar_mass[str(key)] = float(mass)
    for key, limits in (doc.get("plausible") or {}).items():
        if not isinstance(limits, dict) or not set(limits) <= {"min", "max", "min_exclusive"}:
            raise MappingTableError(f"{where}: plausible.{key} takes min, max, min_exclusive")
        t.plausible[str(key)] = {k: float(v) for k, v in limits.items()}
    for key, uln in (doc.get("default_uln") or {}).items():
        t.default_uln[str(key)] = float(uln)


def _merge_concept(t: Tables, name: str, spec: dict[str, Any], where: str) -> None:
    if not isinstance(spec, dict):
        raise MappingTableError(f"{where}: must be a mapping")
    allowed = {"kind", "value", "value_set", "unit", "codes", "exclude"}
    if set(spec) - allowed:
        raise MappingTableError(f"{where}: unknown key(s) {sorted(set(spec) - allowed)}")
    old = t.concepts.get(name)
    kind = spec.get("kind", old.kind if old else None)
    if kind not in KINDS:
        raise MappingTableError(f"{where}: kind must be one of {sorted(KINDS)}")
    value = spec.get("value", old.value if old else None)
    if kind == "observation" and value not in VALUE_TYPES:
        raise MappingTableError(f"{where}: observation value must be one of {sorted(VALUE_TYPES)}")
    concept = Concept(
        name=name,
        kind=kind,
        value=value,
        value_set=spec.get("value_set", old.value_set if old else None),
        unit=spec.get("unit", old.unit if old else None),
    )
    if kind == "observation" and value in ("quantity", "quantity-or-coded") and not concept.unit:
        raise MappingTableError(f"{where}: quantity concepts need a canonical unit")
    if value in ("coded", "quantity-or-coded") and not concept.value_set:
        raise MappingTableError(f"{where}: coded concepts need a value_set")
    t.concepts[name] = concept
    for entry in spec.get("codes") or []:
        system, code, prefix = _parse_code(entry, t.systems, where)
        if prefix:
            t.prefixes.setdefault(system, []).append((code, name))
        else:
            t.exact.setdefault((system, code), set()).add(name)
    for entry in spec.get("exclude") or []:
        system, code, prefix = _parse_code(entry, t.systems, where)
        if prefix:
            raise MappingTableError(f"{where}: exclude entries must be exact codes")
        t.excludes.setdefault(name, set()).add((system, code))


def _finish(t: Tables) -> None:
    """Add the project's own code for every concept and value; check cross references."""
    project = t.systems.get("ino")
    project_values = t.systems.get("ino-value")
    if not project or not project_values:
        raise MappingTableError("mappings: systems 'ino' and 'ino-value' must be declared (project.yaml)")
    for name, concept in t.concepts.items():
        t.exact.setdefault((project, name), set()).add(name)
        if concept.value_set and concept.value_set not in t.values:
            raise MappingTableError(f"mappings: concept {name} names unknown value set {concept.value_set}")
    for vs_name, names in t.value_names.items():
        for value in names:
            t.values[vs_name].setdefault((project_values, value), value)


@functools.lru_cache(maxsize=8)
def load_tables(site_files: tuple[str, ...] = ()) -> Tables:
    """The shipped tables merged with the site files, in order. Cached per argument."""
    t = Tables()
    paths = [MAPPINGS_DIR / name for name in SHIPPED_FILES] + [Path(p) for p in site_files]
    for path in paths:
        _merge_doc(t, load_yaml_file(path), str(path))
    _finish(t)
    t.sources = tuple(str(p) for p in paths)
    return t
