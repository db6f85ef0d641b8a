"""The per-patient unit (adapter.evaluate): every interface decides through it, so one patient's
resources give the same evaluation and write plan whichever interface asks."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from adapter.api import evaluate_path
from adapter.errors import InputError
from adapter.evaluate import Setup, evaluate_patient, plan_write_back
from adapter.input.reader import read_input
from adapter.outputs import write_patient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TODAY = date(2026, 11, 21)
NOW = "2026-11-21T09:00:00Z"


@pytest.mark.parametrize("example", ["p01-ph-neg-relapse", "p09-cycle-2"])
@pytest.mark.parametrize("variant", ["nhs-ta514", "mdacc-low-dose"])
def test_one_patient_gives_what_evaluate_and_out_give(example: str, variant: str, tmp_path: Path) -> None:
    path = EXAMPLES / f"{example}.json"
    setup = Setup.load(variant, TODAY)
    outcome = evaluate_patient(read_input(path).resources, setup, NOW)
    [batch_result] = evaluate_path(path, variant, TODAY).results
    assert outcome.evaluation == batch_result
    written = write_patient(tmp_path, batch_result, NOW, setup.settings)
    assert written.plan.bundle == outcome.plan.bundle
    assert json.loads((written.folder / "bundle.json").read_text()) == outcome.plan.bundle
    again = plan_write_back(outcome.evaluation, setup.settings, NOW)
    assert again.summaries == outcome.summaries


def test_the_unit_takes_exactly_one_patient() -> None:
    resources = read_input(EXAMPLES).resources
    with pytest.raises(InputError, match="one Patient"):
        evaluate_patient(resources, Setup.load("nhs-ta514", TODAY), NOW)
