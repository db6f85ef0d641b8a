"""The adapter on HL7's official R4 examples: everything reads, nothing crashes, nothing is 'eligible'.

These are real R4 resources from many domains (none are leukaemia patients), which proves the
adapter ignores what it should and never turns unrelated data into a decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapter.api import evaluate_resources
from adapter.input.reader import read_resources
from adapter.input.resource_types import R4_RESOURCE_TYPES, USED_RESOURCE_TYPES
from adapter.input.validate import validation_error
from adapter.mapping.record import build_records
from adapter.mapping.tables import load_tables
from tests.conftest import TODAY
from tests.support.hl7_examples import iter_examples


def test_every_example_resource_type_is_an_r4_type(hl7_r4_examples: Path) -> None:
    types = {d["resourceType"] for _, d in iter_examples(root=hl7_r4_examples)}
    assert types <= R4_RESOURCE_TYPES, types - R4_RESOURCE_TYPES
    assert len(types) > 130


def test_used_resources_validate_with_the_adapters_r4b_validator(hl7_r4_examples: Path) -> None:
    used = list(iter_examples(set(USED_RESOURCE_TYPES), root=hl7_r4_examples))
    assert len(used) > 150
    failures = {p.name: validation_error(d) for p, d in used if validation_error(d)}
    assert failures == {}


def test_whole_example_set_maps_and_evaluates_without_crashing(hl7_r4_examples: Path) -> None:
    items: list[dict[str, Any]] = [
        d for _, d in iter_examples(root=hl7_r4_examples) if d["resourceType"] != "Bundle"
    ]
    batch = read_resources(items)
    assert batch.ignored  # most HL7 examples are types the protocol does not use
    records = build_records(batch.resources, load_tables())
    assert len(records.records) >= 20
    for variant in ("fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose"):
        run = evaluate_resources(items, variant, TODAY, validate=False)
        statuses = {r["eligibility"]["status"] for r in run.results}
        assert "eligible" not in statuses
        assert len(run.results) == len(records.records)


def test_hl7_bundles_are_read_or_rejected_cleanly(hl7_r4_examples: Path) -> None:
    from adapter.errors import InputError

    read = rejected = 0
    for _, d in iter_examples({"Bundle"}, root=hl7_r4_examples):
        try:
            read_resources([d])
            read += 1
        except InputError:
            rejected += 1
    assert read > 10
    assert rejected > 0  # history and response Bundles are refused with a reason
