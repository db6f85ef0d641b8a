"""The HTML summary in a real browser: layout on screen and one printed page (A4 and Letter).

Drives the system Chromium (/usr/bin/chromium, installed by scripts/ensure_chromium.sh) with
Playwright; Playwright's own browser downloads are never used. Without Chromium the tests skip,
unless INO_REQUIRE_BROWSER=1 (CI), where they fail. Output for a person to look at goes to
test-output/summary/ (gitignored): <case>.html, <case>.png (1280 px), <case>-800.png,
<case>-A4.pdf and <case>-Letter.pdf.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapter.api import evaluate_path
from adapter.summary import render_summary
from tests.conftest import TODAY

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "test-output" / "summary"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GENERATED_AT = "2026-11-21T09:00:00Z"
PATIENTS = ["p09-cycle-2", "p01-ph-neg-relapse"]
VARIANTS = ["nhs-ta514", "fda-label", "es-valtermed", "mdacc-low-dose"]
CASES = [(p, v) for p in PATIENTS for v in VARIANTS]


def _unavailable(reason: str) -> None:
    if os.environ.get("INO_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (INO_REQUIRE_BROWSER=1; run scripts/ensure_chromium.sh)")
    pytest.skip(f"{reason}; run scripts/ensure_chromium.sh (as root) to install it")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _render(patient: str, variant: str) -> tuple[dict[str, Any], Path]:
    run = evaluate_path(ROOT / "examples" / f"{patient}.json", variant, TODAY)
    evaluation: dict[str, Any] = run.results[0]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{patient}.{variant}.html"
    path.write_text(render_summary(evaluation, "html", generated_at=GENERATED_AT), encoding="utf-8")
    snapshot = orjson.dumps(evaluation, option=orjson.OPT_INDENT_2)
    (OUT / f"{patient}.{variant}.evaluation.json").write_bytes(snapshot)
    return evaluation, path


def _pdf_pages(path: Path) -> int:
    from pypdf import PdfReader

    return len(PdfReader(str(path)).pages)


@pytest.mark.parametrize(("patient", "variant"), CASES)
def test_summary_on_screen_and_in_print(browser: Any, patient: str, variant: str) -> None:
    evaluation, html = _render(patient, variant)
    case = html.stem
    subject = evaluation["subject"]
    requests: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.on("request", lambda request: requests.append(request.url))
        page.goto(html.as_uri())
        title = f"Regimen summary — {subject['name']} ({subject['mrn']}) — as of {evaluation['as_of']}"
        assert page.title() == title
        assert page.locator(".identity").get_by_text(subject["name"], exact=True).is_visible()
        assert page.locator(".identity").get_by_text(subject["mrn"], exact=True).is_visible()
        banner = page.locator("#decision")
        assert banner.is_visible()
        assert "Administer the next dose" in banner.inner_text()
        assert "Proposed (draft) — requires prescriber signature" in banner.inner_text()

        for width in (1280, 800):
            page.set_viewport_size({"width": width, "height": 900})
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{case}: horizontal overflow of {overflow} px at {width} px wide"
            assert banner.is_visible()
            suffix = "" if width == 1280 else f"-{width}"
            page.screenshot(path=str(OUT / f"{case}{suffix}.png"), full_page=True)

        page.set_viewport_size({"width": 1280, "height": 900})
        for paper in ("A4", "Letter"):
            pdf = OUT / f"{case}-{paper}.pdf"
            page.pdf(path=str(pdf), format=paper, print_background=True)
            assert _pdf_pages(pdf) == 1, f"{case} prints on {_pdf_pages(pdf)} {paper} pages"
    finally:
        page.close()
    assert all(url.startswith("file:") for url in requests), f"external requests: {requests}"


def test_not_eligible_banner_is_unmistakable(browser: Any) -> None:
    evaluation = evaluate_path(ROOT / "examples" / "p04-prior-vod.json", "nhs-ta514", TODAY).results[0]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "p04-prior-vod.nhs-ta514.html"
    path.write_text(render_summary(evaluation, "html", generated_at=GENERATED_AT), encoding="utf-8")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(path.as_uri())
        head = page.locator("#decision .head")
        assert head.is_visible()
        assert "NO DOSE PROPOSED — NOT ELIGIBLE" in head.inner_text()  # upper-cased by the stylesheet
        box = head.bounding_box()
        assert box is not None and box["y"] < 300  # above the fold
        assert page.locator("table.doses").count() == 0
        page.screenshot(path=str(OUT / "p04-prior-vod.nhs-ta514.png"), full_page=True)
    finally:
        page.close()


def test_a_summary_with_changes_still_prints_on_one_page(browser: Any) -> None:
    current, _ = _render("p09-cycle-2", "nhs-ta514")
    previous = orjson.loads(orjson.dumps(current))
    previous["as_of"] = "2026-11-14"
    previous["eligibility"]["status"] = "insufficient-data"
    for criterion in previous["eligibility"]["criteria"][:4]:
        criterion["status"] = "unknown"
    previous["dose"].update(action="delay", cycle=1, day=15, doses=[], bsa_m2=1.95)
    previous["dose"]["findings"] = [
        {"id": "hepatic-hold", "severity": "warning", "reason": "bilirubin above limit", "effect": "delay"}
    ]
    path = OUT / "p09-cycle-2.nhs-ta514.changes.html"
    path.write_text(
        render_summary(current, "html", previous=previous, generated_at=GENERATED_AT), encoding="utf-8"
    )
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(path.as_uri())
        assert page.locator("#changes li").count() >= 10
        page.screenshot(path=str(OUT / "p09-cycle-2.nhs-ta514.changes.png"), full_page=True)
        for paper in ("A4", "Letter"):
            pdf = OUT / f"p09-cycle-2.nhs-ta514.changes-{paper}.pdf"
            page.pdf(path=str(pdf), format=paper, print_background=True)
            assert _pdf_pages(pdf) == 1, f"with changes, prints on {_pdf_pages(pdf)} {paper} pages"
    finally:
        page.close()
