"""Load the mapping tables in ``mappings/`` (once) and merge a site's ``--mappings`` file over them.

The format is documented in ``mappings/README.md``. In short, every file may hold ``systems``
(short aliases for code-system URLs), ``concepts`` (codes per protocol concept),
``value_sets`` (codes per coded value) and the unit sections of ``units.yaml``. A site file uses
the same sections: codes are added to existing concepts and values, scalar settings replace the
shipped ones, and new concepts or values may be introduced.

Site tables are data that can break safety (issue #10), so they are checked for meaning, not only
for shape: numbers are finite and within sense (ULN defaults and molar masses > 0, plausibility
bounds ordered), units are UCUM, a shipped concept keeps its kind, value type, value set and unit
(a different spelling of the same unit is fine), a system alias keeps its URL, and a code that the
project ships for a safety-critical concept is excluded only with an ``override_safety`` reason,
which every evaluation then reports (``ruleset.site_overrides``). Every fault is one line naming
the file and the entry.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapter.errors import MappingTableError
from adapter.yaml_files import SourceFile, read_yaml

MAPPINGS_DIR = Path(__file__).resolve().parent.parent.parent / "mappings"
SHIPPED_FILES = ("project.yaml", "concepts.yaml", "values.yaml", "qualifiers.yaml", "units.yaml")
KINDS = frozenset({"observation", "condition", "procedure", "medication", "allergy"})
VALUE_TYPES = frozenset({"quantity", "integer", "coded", "quantity-or-coded"})
SECTIONS = (
    "systems",
    "concepts",
    "value_sets",
    "aliases",
    "equivalent",
    "molar_mass",
    "plausible",
    "default_uln",
)
CONCEPT_KEYS = frozenset({"kind", "value", "value_set", "unit", "codes", "exclude"})
PLAUSIBLE_KEYS = ("min", "min_exclusive", "max")

Coding = tuple[str, str]  # (system URL, code)


@dataclass(frozen=True, slots=True)
class Concept:
    name: str
    kind: str
    value: str | None = None  # observation value type
    value_set: str | None = None
    unit: str | None = None  # canonical UCUM unit


@dataclass(frozen=True, slots=True)
class SiteOverride:
    """A site table's exclusion of a code the project ships for a safety-critical concept."""

    file: str  # the site table's base name
    concept: str
    code: str  # "<system URL>|<code>"
    reason: str  # the entry's override_safety

    def as_json(self) -> dict[str, str]:
        return {"file": self.file, "concept": self.concept, "code": self.code, "reason": self.reason}


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
    #: concepts flagged ``safety_critical: true`` in the shipped tables (mappings/README.md)
    safety_critical: frozenset[str] = frozenset()
    #: shipped safety-critical codes that site tables excluded, with their reasons
    site_overrides: tuple[SiteOverride, ...] = ()
    #: every table file merged, in order, with the SHA-256 of its bytes (for the rule-set digest)
    files: tuple[SourceFile, ...] = ()

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


# -- checking values -----------------------------------------------------------------------------
def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mapping(value: Any, where: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MappingTableError(f"{where} must be a mapping (got {type(value).__name__})")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MappingTableError(f"{where} must be a list of '<system alias> <code>' entries")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MappingTableError(f"{where} must be text (got {_short(value)})")
    return value


def _key(value: Any, where: str, numbers: bool = False) -> str:
    """A name used as a key. YAML reads unquoted yes/no/on/off as booleans and 1.0 as a number:
    those would silently become other names, so only text (and, where asked, integers) is taken."""
    if isinstance(value, str) and value.strip():
        return value
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise MappingTableError(f"{where}: name {_short(value)} must be text (quote it)")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MappingTableError(f"{where} must be a number (got {_short(value)})")
    number = float(value)
    if not math.isfinite(number):
        raise MappingTableError(f"{where} must be a finite number (got {value})")
    return number


def _positive(value: Any, where: str) -> float:
    number = _number(value, where)
    if number <= 0:
        raise MappingTableError(f"{where} must be greater than 0 (got {value})")
    return number


def _ucum(unit: str, where: str) -> str:
    from adapter.mapping.units import is_valid_ucum  # builds the UCUM registry: only for site units

    if not is_valid_ucum(unit):
        raise MappingTableError(f"{where}: {unit!r} is not a valid UCUM unit")
    return unit


def _same_quantity(old: str, new: str) -> bool:
    from adapter.mapping.units import UnitError, conversion_factor

    try:
        return conversion_factor(new, old) == 1.0
    except UnitError:
        return False


def _parse_code(entry: Any, systems: Mapping[str, str], where: str) -> tuple[str, str, bool]:
    if not isinstance(entry, str) or len(entry.split()) != 2:
        raise MappingTableError(f"{where}: code entry {_short(entry)} must be '<system alias> <code>'")
    alias, code = entry.split()
    system = systems.get(alias, alias if "://" in alias or alias.startswith("urn:") else None)
    if system is None:
        raise MappingTableError(f"{where}: unknown system alias {alias!r} (declare it under systems:)")
    prefix = code.endswith("*")
    return system, code.rstrip("*"), prefix


def load_yaml_file(path: Path) -> dict[str, Any]:
    """A table or settings file as a mapping (bounded loading: adapter.yaml_files)."""
    return _load_doc(path, "site")[0]


def _load_doc(path: Path, origin: Any) -> tuple[dict[str, Any], SourceFile]:
    data, source = read_yaml(path, origin)
    if data is None:
        return {}, source
    if not isinstance(data, dict):
        raise MappingTableError(f"{path}: top level must be a mapping")
    return data, source


# -- merging -----------------------------------------------------------------------------------
class _Merger:
    """Merges files into one Tables, remembering what the project shipped (to guard it)."""

    def __init__(self) -> None:
        self.t = Tables()
        self.critical: set[str] = set()
        self.shipped_concepts: dict[str, Concept] = {}
        self.shipped_exact: dict[Coding, set[str]] = {}
        self.shipped_prefixes: dict[str, list[tuple[str, str]]] = {}
        self.overrides: list[SiteOverride] = []
        self.where_set: dict[str, str] = {}  # "default_uln.<key>" etc. -> "<file>: <section>.<key>"
        self.site = False
        self.where = ""
        self.file = ""

    def merge(self, doc: dict[str, Any], path: Path, site: bool) -> None:
        self.site, self.where, self.file = site, str(path), path.name
        where = self.where
        unknown = [str(k) for k in doc if k not in SECTIONS]
        if unknown:
            raise MappingTableError(f"{where}: unknown section(s) {sorted(unknown)}")
        for alias, url in _mapping(doc.get("systems"), f"{where}: systems").items():
            self.system(_key(alias, f"{where}: systems"), url)
        concepts = _mapping(doc.get("concepts"), f"{where}: concepts")
        for name, spec in concepts.items():
            key = _key(name, f"{where}: concepts")
            self.concept(key, spec, f"{where}: concept {key}")
        for vs_name, values in _mapping(doc.get("value_sets"), f"{where}: value_sets").items():
            vs = _key(vs_name, f"{where}: value_sets")
            self.value_set(vs, _mapping(values, f"{where}: value set {vs}"), f"{where}: value set {vs}")
        self.units(doc)

    def system(self, alias: str, url: Any) -> None:
        where = f"{self.where}: systems.{alias}"
        url = _text(url, where)
        if len(url.split()) != 1:
            raise MappingTableError(f"{where}: a system URL has no spaces (got {_short(url)})")
        known = self.t.systems.get(alias)
        if known is not None and known != url:
            raise MappingTableError(f"{where}: alias {alias!r} already means {known}; use another alias")
        self.t.systems[alias] = url

    def concept(self, name: str, raw: Any, where: str) -> None:
        spec = _mapping(raw, where)
        allowed = CONCEPT_KEYS | ({"override_safety"} if self.site else {"safety_critical"})
        extra = sorted(str(k) for k in set(spec) - allowed)
        if extra:
            hint = " (set by the project's tables only)" if "safety_critical" in extra and self.site else ""
            raise MappingTableError(f"{where}: unknown key(s) {extra}{hint}")
        old = self.t.concepts.get(name)
        kind = spec.get("kind", old.kind if old else None)
        if not isinstance(kind, str) or kind not in KINDS:
            raise MappingTableError(f"{where}: kind must be one of {sorted(KINDS)} (got {_short(kind)})")
        value = spec.get("value", old.value if old else None)
        if value is not None and (not isinstance(value, str) or value not in VALUE_TYPES):
            raise MappingTableError(
                f"{where}: value must be one of {sorted(VALUE_TYPES)} (got {_short(value)})"
            )
        if kind == "observation" and value is None:
            raise MappingTableError(f"{where}: observation value must be one of {sorted(VALUE_TYPES)}")
        value_set = spec.get("value_set", old.value_set if old else None)
        if value_set is not None:
            value_set = _text(value_set, f"{where}: value_set")
        unit = spec.get("unit", old.unit if old else None)
        if unit is not None:
            unit = _text(unit, f"{where}: unit")
        concept = Concept(name=name, kind=kind, value=value, value_set=value_set, unit=unit)
        if self.site:
            self.guard_shipped(concept, spec, where)
        if kind == "observation" and value in ("quantity", "quantity-or-coded") and not concept.unit:
            raise MappingTableError(f"{where}: quantity concepts need a canonical unit")
        if value in ("coded", "quantity-or-coded") and not concept.value_set:
            raise MappingTableError(f"{where}: coded concepts need a value_set")
        if "safety_critical" in spec:
            if not isinstance(spec["safety_critical"], bool):
                raise MappingTableError(f"{where}: safety_critical must be true or false")
            if spec["safety_critical"]:
                self.critical.add(name)
            else:
                self.critical.discard(name)
        self.t.concepts[name] = concept
        for entry in _list(spec.get("codes"), f"{where}: codes"):
            system, code, prefix = _parse_code(entry, self.t.systems, where)
            if prefix:
                self.t.prefixes.setdefault(system, []).append((code, name))
                if not self.site:
                    self.shipped_prefixes.setdefault(system, []).append((code, name))
            else:
                self.t.exact.setdefault((system, code), set()).add(name)
                if not self.site:
                    self.shipped_exact.setdefault((system, code), set()).add(name)
        if not self.site:
            self.shipped_concepts[name] = concept
        reason = spec.get("override_safety")
        if reason is not None:
            reason = _text(reason, f"{where}: override_safety")
        for entry in _list(spec.get("exclude"), f"{where}: exclude"):
            system, code, prefix = _parse_code(entry, self.t.systems, where)
            if prefix:
                raise MappingTableError(f"{where}: exclude entries must be exact codes")
            if self.site and name in self.critical and self.ships(name, system, code):
                if reason is None:
                    raise MappingTableError(
                        f"{where}: exclude {entry!r} removes a code the project ships for the "
                        f"safety-critical concept {name}; say why with override_safety: '<reason>' "
                        "on this concept (every evaluation then reports it)"
                    )
                self.overrides.append(SiteOverride(self.file, name, f"{system}|{code}", reason.strip()))
            self.t.excludes.setdefault(name, set()).add((system, code))

    def guard_shipped(self, concept: Concept, spec: dict[str, Any], where: str) -> None:
        """A site may add codes to a shipped concept, not change what the rules read from it."""
        if concept.unit is not None and "unit" in spec:
            _ucum(concept.unit, f"{where}: unit")
        shipped = self.shipped_concepts.get(concept.name)
        if shipped is None:
            return
        for attr in ("kind", "value", "value_set"):
            if getattr(concept, attr) != getattr(shipped, attr):
                raise MappingTableError(
                    f"{where}: {attr} of a shipped concept cannot change "
                    f"({getattr(shipped, attr)!r} -> {getattr(concept, attr)!r}); the rules read it"
                )
        if (
            shipped.unit
            and concept.unit != shipped.unit
            and not _same_quantity(shipped.unit, str(concept.unit))
        ):
            raise MappingTableError(
                f"{where}: unit {concept.unit!r} is not the shipped unit {shipped.unit!r} (the protocol's "
                "limits are in it); give the same unit, or another spelling of it"
            )

    def ships(self, name: str, system: str, code: str) -> bool:
        """Whether the project's tables map (system, code) to ``name`` (exactly, by prefix, or as
        the project's own code for the concept)."""
        if name in self.shipped_exact.get((system, code), ()):
            return True
        if (system, code) == (self.t.systems.get("ino"), name):
            return True
        return any(n == name and code.startswith(p) for p, n in self.shipped_prefixes.get(system, ()))

    def value_set(self, vs: str, values: dict[Any, Any], where: str) -> None:
        table = self.t.values.setdefault(vs, {})
        names = self.t.value_names.setdefault(vs, set())
        for raw_value, codes in values.items():
            value = _key(raw_value, where, numbers=True)
            names.add(value)
            for entry in _list(codes, f"{where}.{value}"):
                system, code, prefix = _parse_code(entry, self.t.systems, f"{where}.{value}")
                if prefix:
                    raise MappingTableError(f"{where}: prefix codes are not allowed")
                previous = table.get((system, code))
                if previous is not None and previous != value:
                    raise MappingTableError(f"{where}: {system}|{code} maps to both {previous} and {value}")
                table[(system, code)] = value

    def units(self, doc: dict[str, Any]) -> None:
        where, t = self.where, self.t
        for section, target in (("aliases", t.unit_aliases), ("equivalent", t.unit_equivalent)):
            for key, unit in _mapping(doc.get(section), f"{where}: {section}").items():
                name = _key(key, f"{where}: {section}")
                entry = f"{where}: {section}.{name}"
                target[name] = _text(unit, entry)
                if self.site:
                    _ucum(target[name], entry)
                    if section == "equivalent":
                        _ucum(name, entry)
        for key, mass in _mapping(doc.get("molar_mass"), f"{where}: molar_mass").items():
            name = self.concept_key(key, "molar_mass")
            t.molar_mass[name] = _positive(mass, f"{where}: molar_mass.{name}")
        for key, limits in _mapping(doc.get("plausible"), f"{where}: plausible").items():
            name = self.concept_key(key, "plausible")
            self.where_set[f"plausible.{name}"] = f"{where}: plausible.{name}"
            t.plausible[name] = _limits(limits, f"{where}: plausible.{name}")
        for key, uln in _mapping(doc.get("default_uln"), f"{where}: default_uln").items():
            name = self.concept_key(key, "default_uln")
            self.where_set[f"default_uln.{name}"] = f"{where}: default_uln.{name}"
            t.default_uln[name] = _positive(uln, f"{where}: default_uln.{name}")

    def concept_key(self, key: Any, section: str) -> str:
        """A unit-section key: a concept, or ``<concept>.<aspect>`` (e.g. ``bilirubin-total.uln``)."""
        name = _key(key, f"{self.where}: {section}")
        if name.split(".", 1)[0] not in self.t.concepts:
            raise MappingTableError(f"{self.where}: {section}.{name}: no concept {name.split('.', 1)[0]!r}")
        return name


def _limits(raw: Any, where: str) -> dict[str, float]:
    if not isinstance(raw, dict) or not raw or not set(raw) <= set(PLAUSIBLE_KEYS):
        raise MappingTableError(f"{where} takes at least one of min, min_exclusive, max")
    limits = {str(k): _number(v, f"{where}.{k}") for k, v in raw.items()}
    top = limits.get("max")
    for low in ("min", "min_exclusive"):
        if (
            low in limits
            and top is not None
            and not (limits[low] <= top if low == "min" else limits[low] < top)
        ):
            raise MappingTableError(f"{where}: {low} {limits[low]:g} is not below max {top:g}")
    return limits


def _within(limits: Mapping[str, float], value: float) -> bool:
    return (
        ("min" not in limits or value >= limits["min"])
        and ("min_exclusive" not in limits or value > limits["min_exclusive"])
        and ("max" not in limits or value <= limits["max"])
    )


def _finish(m: _Merger) -> None:
    """Add the project's own code for every concept and value; check cross references."""
    t = m.t
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
    for name, uln in t.default_uln.items():  # a default ULN must itself be a plausible ULN
        limits = t.plausible.get(f"{name}.uln")
        if limits is not None and not _within(limits, uln):
            bounds = ", ".join(f"{k} {v:g}" for k, v in limits.items())
            raise MappingTableError(
                f"{m.where_set[f'default_uln.{name}']} {uln:g} is outside "
                f"{m.where_set[f'plausible.{name}.uln']} ({bounds})"
            )
    t.safety_critical = frozenset(m.critical)
    t.site_overrides = tuple(m.overrides)


@functools.lru_cache(maxsize=8)
def load_tables(site_files: tuple[str, ...] = ()) -> Tables:
    """The shipped tables merged with the site files, in order. Cached per argument."""
    m = _Merger()
    paths = [(MAPPINGS_DIR / name, False) for name in SHIPPED_FILES] + [(Path(p), True) for p in site_files]
    files = []
    for path, site in paths:
        doc, source = _load_doc(path, "site" if site else "shipped")
        m.merge(doc, path, site)
        files.append(source)
    _finish(m)
    m.t.sources = tuple(str(p) for p, _ in paths)
    m.t.files = tuple(files)
    return m.t
