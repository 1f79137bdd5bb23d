"""The report in a real headless Chromium (Debian's, see `browser`): every page loads from disk with no
console error, its plots and images load, and filtering the pair viewer changes the rows shown. On the
hand-made runs of `report_runs`, and on the report of a quick demo. With VLALIGN_SCREENSHOTS=DIR, the
pages are also saved there as PNG screenshots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import report_runs
from browser import broken_images, chromium, need_chromium, open_page, screenshot

from vlalign.report import write_report

PAGES = ("index.html", "metrics.html", "training.html", "pairs.html", "errors.html")
WITH_PLOTS = ("metrics.html", "training.html")
PAIRS_READY = "document.getElementById('pair-count').textContent"


def _count(driver) -> tuple[int, int, int]:
    """(pairs shown by the filters, pairs in the set, cards on the page)."""
    text = driver.find_element("id", "pair-count").text  # "N of M pairs"
    shown, total = int(text.split()[0]), int(text.split()[2])
    return shown, total, len(driver.find_elements("css selector", "article.pair"))


def _type(driver, element_id: str, text: str) -> None:
    box = driver.find_element("id", element_id)
    box.clear()
    box.send_keys(text)


def check_run_pages(driver, report: Path, shots: Path | None = None) -> None:
    for page in PAGES:
        errors = open_page(driver, report / page, PAIRS_READY if page == "pairs.html" else "true")
        assert errors == [], (page, errors)
        n, broken = broken_images(driver)
        assert broken == [], (page, broken)
        if page in WITH_PLOTS:
            assert n >= 1, page
        if shots is not None:
            screenshot(driver, shots / f"{report.name}-{page.replace('.html', '')}.png")
    check_pair_viewer(driver, report)


def check_pair_viewer(driver, report: Path) -> None:
    from selenium.webdriver.support.ui import Select

    assert open_page(driver, report / "pairs.html", PAIRS_READY) == []
    shown, total, cards = _count(driver)
    assert shown == total > 0 and cards == min(total, 25)
    assert broken_images(driver)[1] == []  # the pairs' images (and POVID's noised ones)
    first = driver.find_element("css selector", "article.pair").get_attribute("data-id")
    _type(driver, "f-text", first)
    assert _count(driver)[0::2] == (1, 1)  # the search finds the one pair
    _type(driver, "f-text", "")
    _type(driver, "f-gap", "1000000")
    assert _count(driver)[0::2] == (0, 0)
    _type(driver, "f-gap", "")
    sources = [o.get_attribute("value") for o in Select(driver.find_element("id", "f-source")).options][1:]
    Select(driver.find_element("id", "f-source")).select_by_value(sources[0])
    shown_sources = {e.text for e in driver.find_elements("css selector", "article.pair .pair-head .source")}
    assert _count(driver)[0] <= total and shown_sources == {sources[0]}
    sets = Select(driver.find_element("id", "f-set")).options
    if len(sets) > 1:  # another round's pairs load on demand
        Select(driver.find_element("id", "f-set")).select_by_index(len(sets) - 1)
        assert _count(driver)[1] > 0
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def _shots() -> Path | None:
    folder = os.environ.get("VLALIGN_SCREENSHOTS")
    return Path(folder) if folder else None


@pytest.mark.slow
def test_hand_made_runs_report_in_chromium(tmp_path):
    need_chromium()
    report = write_report(report_runs.collection(tmp_path / "demo")).parent
    with chromium() as driver:
        assert open_page(driver, report / "index.html") == []
        assert broken_images(driver) == (1, [])
        for run in ("rlaif_v", "silkie", "povid"):
            check_run_pages(driver, report / run)


@pytest.mark.slow
def test_quick_demo_report_in_chromium(quick_demo, tmp_path):
    need_chromium()
    out, summary = quick_demo
    report = write_report(out, tmp_path / "report").parent
    shots = _shots()
    with chromium() as driver:
        assert open_page(driver, report / "index.html") == []
        assert broken_images(driver) == (1, [])
        compared = driver.find_element("id", "compare").text
        assert all(label in compared for label in summary if label in ("base", "rlaif_v", "silkie", "povid", "mpo"))
        if shots is not None:
            screenshot(driver, shots / "demo-index.png")
        for run in ("rlaif_v", "rlaif_v_self", "silkie", "povid", "mdpo", "mpo"):
            check_run_pages(driver, report / run, shots)
