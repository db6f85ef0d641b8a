"""The bundled examples: generated deterministically, and decided as a clinician would expect.

Golden files: tests/data/examples/<variant>.json holds the full evaluation of examples/ for each
variant, compared as parsed JSON. Regenerate after an intended change with
``INO_UPDATE_GOLDEN=1 pytest tests/test_examples.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from adapter.api import evaluate_path
from adapter.protocols import load_variant
from tests.conftest import TODAY
from tests.support.make_examples import EXAMPLES_DIR, generate

GOLDEN = Path(__file__).parent / "data" / "examples"
VARIANTS = ["fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose"]

# The decision a haematologist would expect for each example, per variant.
EXPECTED = {
    "p01-ph-neg-relapse": {
        "fda-label": "eligible",
        "nhs-ta514": "eligible",
        "es-valtermed": "eligible",
        "mdacc-low-dose": "eligible",
    },
    "p02-ph-pos-after-tki": {
        "fda-label": "eligible",
        "nhs-ta514": "eligible",
        "es-valtermed": "eligible",
        "mdacc-low-dose": "ineligible",
    },
    "p03-hepatic-review": {
        "fda-label": "eligible",
        "nhs-ta514": "needs-review",
        "es-valtermed": "ineligible",
        "mdacc-low-dose": "needs-review",
    },
    "p04-prior-vod": {
        "fda-label": "needs-review",
        "nhs-ta514": "ineligible",
        "es-valtermed": "ineligible",
        "mdacc-low-dose": "ineligible",
    },
    "p05-incomplete": {v: "insufficient-data" for v in VARIANTS},
    "p06-recent-hsct": {
        "fda-label": "eligible",
        "nhs-ta514": "eligible",
        "es-valtermed": "ineligible",
        "mdacc-low-dose": "ineligible",
    },
    "p07-adolescent": {
        "fda-label": "ineligible",
        "nhs-ta514": "ineligible",
        "es-valtermed": "ineligible",
        "mdacc-low-dose": "eligible",
    },
    "p08-low-cd22": {
        "fda-label": "eligible",
        "nhs-ta514": "needs-review",
        "es-valtermed": "ineligible",
        "mdacc-low-dose": "eligible",
    },
    # On treatment: only the continuing criteria (input integrity, the diagnosis) count; the
    # start-only ones are reported as they were on the day of the first dose, without inotuzumab's
    # own records (MD Anderson's antibody washout no longer sees inotuzumab itself), and the dose
    # engine decides (docs/criteria.md §Once treatment has started).
    "p09-cycle-2": {v: "eligible" for v in VARIANTS},
}

# The next-dose action and its mg for each example, per variant (BSA 1.93 m² for p01-p08 with
# 76.5 kg and 176 cm; p09 2.00 m²).
EXPECTED_DOSE = {
    ("p01-ph-neg-relapse", "nhs-ta514"): ("administer", [1.54, 0.97, 0.97]),
    ("p03-hepatic-review", "nhs-ta514"): ("review", [1.54, 0.97, 0.97]),
    ("p04-prior-vod", "nhs-ta514"): ("not-eligible", []),
    ("p05-incomplete", "nhs-ta514"): ("insufficient-data", []),
    ("p09-cycle-2", "fda-label"): ("administer", [1.0, 1.0, 1.0]),
    ("p09-cycle-2", "nhs-ta514"): ("administer", [1.0, 1.0, 1.0]),
    ("p09-cycle-2", "es-valtermed"): ("administer", [1.0, 1.0, 1.0]),
    ("p09-cycle-2", "mdacc-low-dose"): ("administer", [1.2, 0.6]),
}


#: Files in examples/ written by hand, not by the generator: the HTTP service's local configuration.
HAND_WRITTEN = ("serve.yaml", "serve/")


def test_committed_examples_match_the_generator() -> None:
    generated = generate()
    on_disk = {
        str(p.relative_to(EXAMPLES_DIR)): p.read_bytes()
        for p in EXAMPLES_DIR.rglob("*")
        if p.is_file() and not str(p.relative_to(EXAMPLES_DIR)).startswith(HAND_WRITTEN)
    }
    assert on_disk == generated, "examples/ is stale: run python -m tests.support.make_examples"


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_example_gets_the_expected_decision(variant: str) -> None:
    run = evaluate_path(EXAMPLES_DIR, variant, TODAY)
    got = {r["patient"].removeprefix("Patient/"): r["eligibility"]["status"] for r in run.results}
    assert got == {pid: decisions[variant] for pid, decisions in EXPECTED.items()}


@pytest.mark.parametrize(("pid", "variant"), sorted(EXPECTED_DOSE))
def test_each_example_gets_the_expected_next_dose(pid: str, variant: str) -> None:
    run = evaluate_path(EXAMPLES_DIR, variant, TODAY)
    dose = next(r["dose"] for r in run.results if r["patient"] == f"Patient/{pid}")
    assert (dose["action"], [d["mg"] for d in dose["doses"]]) == EXPECTED_DOSE[(pid, variant)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_evaluation(variant: str) -> None:
    run = evaluate_path(EXAMPLES_DIR, variant, TODAY)
    actual = orjson.loads(orjson.dumps(run.results))
    path = GOLDEN / f"{variant}.json"
    if os.environ.get("INO_UPDATE_GOLDEN"):
        path.write_bytes(orjson.dumps(actual, option=orjson.OPT_INDENT_2) + b"\n")
    assert actual == orjson.loads(path.read_bytes())


SOURCES = Path(__file__).resolve().parents[2] / "shared" / "sources"


def test_every_criterion_cites_its_variants_source_file_and_a_section() -> None:
    for variant in VARIANTS:
        own = load_variant(variant).source_file
        for result in evaluate_path(EXAMPLES_DIR, variant, TODAY).results:
            for c in result["eligibility"]["criteria"]:
                cited, _, section = c["source"].partition(" §")
                assert section, c
                if cited.startswith("docs/"):
                    assert (Path(__file__).resolve().parents[1] / cited).is_file()
                else:
                    assert cited == own, c
                assert c["reason"], c


@pytest.mark.skipif(not SOURCES.is_dir(), reason="../shared/sources is not beside this checkout")
def test_every_variants_source_file_exists_in_the_shared_sources() -> None:
    for variant in VARIANTS:
        assert (SOURCES / load_variant(variant).source_file).is_file(), variant
