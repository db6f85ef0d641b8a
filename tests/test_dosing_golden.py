"""Golden files for the dose block of `evaluate` on treatment histories.

tests/data/dosing/<case>/input.json is generated from tests/support/dosing_cases.py and
expected-<variant>.json holds the dose block, compared as parsed JSON (as-of date fixed).
Regenerate after an intended change with ``INO_UPDATE_GOLDEN=1 pytest tests/test_dosing_golden.py``
and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapter.api import evaluate_path
from tests.support.dosing_cases import CASES, TODAY

DATA = Path(__file__).parent / "data" / "dosing"
UPDATE = os.environ.get("INO_UPDATE_GOLDEN") == "1"
PARAMS = [(case, variant) for case, (_, variants) in CASES.items() for variant in variants]


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


@pytest.mark.parametrize("case", sorted(CASES))
def test_inputs_are_generated_from_the_case_builders(case: str) -> None:
    builder, _ = CASES[case]
    bundle = builder().bundle()
    path = DATA / case / "input.json"
    if UPDATE:
        _write(path, bundle)
    assert orjson.loads(path.read_bytes()) == orjson.loads(orjson.dumps(bundle))


@pytest.mark.parametrize(("case", "variant"), PARAMS)
def test_dose_block_matches_golden(case: str, variant: str) -> None:
    run = evaluate_path(DATA / case / "input.json", variant, TODAY)
    dose = run.results[0]["dose"]
    path = DATA / case / f"expected-{variant}.json"
    if UPDATE:
        _write(path, dose)
    assert dose == orjson.loads(path.read_bytes())
