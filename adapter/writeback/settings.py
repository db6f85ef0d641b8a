"""Site settings for write-back: a small YAML file a hospital keeps beside its mapping tables.

    intent: proposal          # or "order" where the site's workflow signs drafts that are orders
    id_mode: conditional      # or "put": client-assigned deterministic ids (server must allow them)
    premedication: false      # also propose premedication MedicationRequests (text-coded)
    template_dir: null        # a directory of summary templates searched before the packaged ones

Unknown keys are rejected so that a misspelt setting is an error, not a silent default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from adapter.errors import MappingTableError
from adapter.mapping.tables import load_yaml_file

Intent = Literal["proposal", "order"]
IdMode = Literal["conditional", "put"]


class WriteSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    intent: Intent = "proposal"
    id_mode: IdMode = "conditional"
    premedication: bool = False
    template_dir: str | None = None


def load_settings(path: str | Path | None) -> WriteSettings:
    """The settings in ``path`` (YAML), or the defaults when ``path`` is None."""
    if path is None:
        return WriteSettings()
    doc = load_yaml_file(Path(path))
    try:
        return WriteSettings.model_validate(doc)
    except ValidationError as exc:
        raise MappingTableError(f"{path}: invalid site settings: {exc}") from None
