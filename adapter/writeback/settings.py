"""Site settings for write-back: a small YAML file a hospital keeps beside its mapping tables.

    intent: proposal          # or "order" where the site's workflow signs drafts that are orders
    id_mode: conditional      # or "put": client-assigned deterministic ids (server must allow them)
    premedication: false      # also propose premedication MedicationRequests (text-coded)
    template_dir: null        # a directory of summary templates searched before the packaged ones

Unknown keys are rejected so that a misspelt setting is an error, not a silent default; a
``template_dir`` that is not a directory is an error too. The file is loaded with the bounded
loader (adapter.yaml_files) and its hash is part of the evaluation's rule-set digest
(adapter.ruleset), so the Provenance of a write-back names the settings in force.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from adapter.errors import MappingTableError
from adapter.yaml_files import SourceFile, read_yaml

Intent = Literal["proposal", "order"]
IdMode = Literal["conditional", "put"]


class WriteSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    intent: Intent = "proposal"
    id_mode: IdMode = "conditional"
    premedication: bool = False
    template_dir: str | None = None


def check_template_dir(template_dir: str | None, where: str) -> None:
    """A site template directory that does not exist is an error, never silently ignored."""
    if template_dir is not None and not Path(template_dir).is_dir():
        raise MappingTableError(f"{where}: template_dir {template_dir!r} is not a directory")


@functools.lru_cache(maxsize=16)
def load_settings_file(path: str) -> tuple[WriteSettings, SourceFile]:
    """The settings in ``path`` and what was read (for the digest). Cached per path, so that the
    evaluation's digest and the write-back use the same reading of the file."""
    doc, source = read_yaml(Path(path), "settings")
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise MappingTableError(f"{path}: top level must be a mapping")
    try:
        settings = WriteSettings.model_validate(doc)
    except ValidationError as exc:
        faults = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
        )
        raise MappingTableError(f"{path}: invalid site settings: {faults}") from None
    check_template_dir(settings.template_dir, f"{path}")
    return settings, source


def load_settings(path: str | Path | None) -> WriteSettings:
    """The settings in ``path`` (YAML), or the defaults when ``path`` is None."""
    if path is None:
        return WriteSettings()
    return load_settings_file(str(path))[0]
