"""The rule set in force for an evaluation, and its digest (the evaluation's ``ruleset`` block).

A decision depends on the variant's files (criteria, dosing, product), on every mapping table
merged (shipped, then the site's ``--mappings`` in order) and on the site settings when given. The
digest covers all of them, so an evaluation, and the Provenance of what is written back
(``policy`` ``…/version/<version>/rules/<digest>``), names exactly the rules and tables used::

    "ruleset": {"version": "2026-11-21.1", "digest": "<16 hex>",
                "rules": [{"file": "nhs-ta514.yaml", "sha256": "<16 hex>", "origin": "protocol"}, ...],
                "tables": [{"file": "project.yaml", "sha256": "<16 hex>", "origin": "shipped"}, ...,
                           {"file": "site.yaml", "sha256": "<16 hex>", "origin": "site"}],
                "settings": {"file": "settings.yaml", "sha256": "<16 hex>", "origin": "settings"} | null,
                "site_overrides": [{"file", "concept", "code", "reason"}, ...]}

Files are named by base name only (a directory can carry a user name). The digest is over the
files' contents, their order and roles, and the shipped files' names; renaming or moving a site
file does not change it, editing it does.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from adapter.mapping.tables import Tables
from adapter.protocols import Variant, rule_files
from adapter.yaml_files import SourceFile


@functools.lru_cache(maxsize=64)
def combined_digest(files: tuple[SourceFile, ...]) -> str:
    """SHA-256 (first 16 hex) over the files in order: role, shipped name, content hash."""
    digest = hashlib.sha256()
    for f in files:
        name = "" if f.origin in ("site", "settings") else f.file
        digest.update(f"{f.origin}\x1f{name}\x1f{f.sha256}\n".encode())
    return digest.hexdigest()[:16]


def ruleset_json(variant: Variant, tables: Tables, settings: SourceFile | None = None) -> dict[str, Any]:
    """The ``ruleset`` block of an evaluation (a fresh dict each call; the hashing is cached)."""
    rules = rule_files(variant.name)
    every = (*rules, *tables.files, *((settings,) if settings is not None else ()))
    return {
        "version": variant.version,
        "digest": combined_digest(every),
        "rules": [f.as_json() for f in rules],
        "tables": [f.as_json() for f in tables.files],
        "settings": settings.as_json() if settings is not None else None,
        "site_overrides": [o.as_json() for o in tables.site_overrides],
    }
