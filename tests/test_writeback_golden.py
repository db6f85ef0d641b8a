"""Golden transaction Bundles: every example patient × variant, time frozen, compared as parsed JSON.

``tests/data/writeback/<patient>/<variant>.json`` is the Bundle that ``evaluate --out`` writes for
``examples/<patient>.json``, with each summary attachment's ``data`` replaced by a marker (the
summaries have their own golden files and tests; here the attachment is checked to be exactly the
rendered summary, its size and SHA-1). Regenerate after an intended change with
``INO_UPDATE_GOLDEN=1 pytest tests/test_writeback_golden.py`` and review the diff.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from adapter.api import evaluate_path
from adapter.evaluate import render_summaries
from adapter.writeback.bundle import build_transaction
from adapter.writeback.settings import WriteSettings
from tests.conftest import TODAY
from tests.support.make_examples import EXAMPLES_DIR

GOLDEN = Path(__file__).parent / "data" / "writeback"
NOW = "2026-11-21T09:00:00Z"
VARIANTS = ["fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose"]
SOURCES = {p.stem: p for p in EXAMPLES_DIR.glob("p*.json")} | {"p08-low-cd22": EXAMPLES_DIR / "bulk-export"}
PIDS = sorted(SOURCES)
FORMAT_OF = {"text/html": "html", "text/markdown": "md"}


def _without_summary_data(bundle: dict[str, Any], summaries: dict[str, str]) -> dict[str, Any]:
    out = copy.deepcopy(bundle)
    for entry in out["entry"]:
        if entry["resource"]["resourceType"] != "DocumentReference":
            continue
        for c in entry["resource"]["content"]:
            att = c["attachment"]
            fmt = FORMAT_OF[att["contentType"].split(";")[0]]
            raw = base64.b64decode(att["data"])
            assert raw.decode("utf-8") == summaries[fmt]
            assert att["size"] == len(raw)
            assert att["hash"] == base64.b64encode(hashlib.sha1(raw).digest()).decode()
            att["data"] = f"<summary.{fmt}>"
            att["hash"] = f"<sha1 of summary.{fmt}>"
            att["size"] = f"<size of summary.{fmt}>"
    return out


@pytest.mark.parametrize("pid", PIDS)
def test_golden_transaction_bundle(pid: str) -> None:
    actual: dict[str, Any] = {}
    for variant in VARIANTS:
        (ev,) = evaluate_path(SOURCES[pid], variant, TODAY).results
        summaries = render_summaries(ev, None, WriteSettings())
        bundle = build_transaction(ev, summaries, NOW).bundle
        actual[variant] = _without_summary_data(bundle, summaries)
    actual = json.loads(json.dumps(actual))
    path = GOLDEN / f"{pid}.json"
    if os.environ.get("INO_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(actual, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    assert actual == json.loads(path.read_text(encoding="utf-8"))
