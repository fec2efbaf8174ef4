"""The ``--html`` pages in a real browser: headless Chromium (Debian's ``chromium`` package)
driven by Playwright with ``executable_path`` (never ``playwright install``: no downloads).

One browser for three pages — a passing run, a failing run (a backend wrong in one block)
and a comparison of the two: no console errors, no request leaves the file (no network),
every image decodes with a nonzero size, the case table has one row per case, the failing
case's section is there, and the table sorts on a click. Screenshots go to
``test-artefacts/html/`` (git-ignored; CI keeps them) and to the test's tmp dir.

Skipped only where no browser can be had; under CI (``CI`` set) a missing browser or
Playwright FAILS: ``.ci/run`` installs both.
"""

from __future__ import annotations

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("ACLNN_FAG_CHROMIUM", "/usr/bin/chromium")
ARTEFACTS = ROOT / "test-artefacts" / "html"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-extensions"]


def _playwright_or_skip():
    problems = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        sync_playwright = None
        problems.append(f"the playwright package is missing ({exc}; pip install '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"no browser at {CHROMIUM} (apt-get install -y chromium)")
    if problems:
        message = "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {message}")
        pytest.skip(message)
    return sync_playwright


def _open(browser, path: pathlib.Path, shot: pathlib.Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri(), wait_until="load")
    images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth,"
                           " i.naturalHeight])")
    page.screenshot(path=str(shot), full_page=True)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / shot.name), full_page=True)
    foreign = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert errors == [] and foreign == [], (errors, foreign)
    assert all(done and w > 0 and h > 0 for _, done, w, h in images), images
    assert shot.stat().st_size > 10_000
    return page, images


def _rows(page):
    return page.locator("#cases tbody tr").all_inner_texts()


def test_pages_in_chromium(numpy_only, run_cli, tiny_suite, tmp_path, block_adapter):
    sync_playwright = _playwright_or_skip()
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    pages = {n: tmp_path / f"{n}.html" for n in ("passing", "failing", "compare")}
    base = ("parity", "--suite", tiny_suite, "--quick", "-q", "--json")
    assert run_cli(*base, good, "--html", pages["passing"])[0] == 0
    assert run_cli(*base, bad, "--backend-module", block_adapter, "--html", pages["failing"])[0] == 1
    assert run_cli("parity", "--compare", good, bad, "--html", pages["compare"])[0] == 1
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page, images = _open(browser, pages["passing"], tmp_path / "passing.png")
            assert len(_rows(page)) == 2 and images == []
            assert page.locator("section.case").count() == 0
            assert "PASS 2" in page.locator("body").inner_text()

            page, images = _open(browser, pages["failing"], tmp_path / "failing.png")
            rows = _rows(page)
            assert len(rows) == 2 and all("FAIL" in r for r in rows)
            for name in ("tiny-mode0", "tiny-gqa-causal"):
                section = page.locator(f"#case-{name}")
                assert section.count() == 1 and "FAIL" in section.locator("h3").inner_text()
                assert section.locator("img").count() == 3
            assert len(images) == 6 and min(w for _, _, w, _ in images) > 300
            page.locator("#case-tiny-mode0").screenshot(path=str(ARTEFACTS / "failing-case.png"))
            page.locator("#cases th", has_text="case").first.click()      # sort by name
            first = [r.split("\t")[1] for r in _rows(page)]
            page.locator("#cases th", has_text="case").first.click()
            assert [r.split("\t")[1] for r in _rows(page)] == first[::-1]
            assert first == sorted(first)
            page.locator("#cases a", has_text="tiny-mode0").click()         # the anchor jumps
            assert page.evaluate("location.hash") == "#case-tiny-mode0"

            page, images = _open(browser, pages["compare"], tmp_path / "compare.png")
            rows = _rows(page)
            assert len(rows) == 2 and all(re.search(r"PASS\s+FAIL", r) for r in rows), rows
            assert page.locator("#runs").count() == 1 and len(images) == 6
            assert page.locator("section#case-tiny-mode0").count() == 1
        finally:
            browser.close()
