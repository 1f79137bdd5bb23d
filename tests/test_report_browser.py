"""The report in a real headless Chromium (Debian's, see `browser`): every page loads from disk with no
console error, its plots and images load, and filtering the pair viewer changes the rows shown. On the
hand-made runs of `report_runs`, and on the report of a quick demo. With VLALIGN_SCREENSHOTS=DIR, the
pages are also saved there as PNG screenshots."""

from __future__ import annotations

import os
import re
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


TABLES = """return [...document.querySelectorAll('table.metrics')].map(t => ({
  columns: [...t.querySelectorAll('thead th')].slice(1).map(th => th.textContent.trim()),
  rows: [...t.querySelectorAll('tbody tr')].map(tr => ({
    label: tr.querySelector('th').textContent.trim(), headline: tr.classList.contains('headline'),
    changes: [...tr.querySelectorAll('td')].map(td => (td.querySelector('.chg') || {}).textContent || '')}))}));"""
LEGEND = "return [...document.querySelectorAll('.metric-legend dt')].map(dt => dt.textContent.trim());"
CHARTS = "return [...document.images].map(i => i.src).filter(s => s.includes('/plots/') && !s.includes('training'));"
PANELS = """return [document.querySelectorAll('g[id^="axes_"]').length,
                   [...document.querySelectorAll('g[id^="base-"]')].map(g => g.id)];"""


def check_against_base(driver, page: Path) -> int:
    """On `page`: every metrics chart draws the base's value in each of its panels (the SVG group
    `base-<metric>`); a legend names every figure of the tables; and every headline figure shows its change
    against the base in every column but the base's. Returns how many headline cells carry a change."""
    assert open_page(driver, page) == [], page
    tables, legend, charts = (driver.execute_script(js) for js in (TABLES, LEGEND, CHARTS))
    assert tables and charts, page
    changed = 0
    for table in tables:
        assert "base" in table["columns"], (page, table["columns"])
        base = table["columns"].index("base")
        for row in table["rows"]:
            assert any(entry.startswith(row["label"] + " ") for entry in legend), (page, row["label"], legend)
            if row["headline"]:
                others = [c for i, c in enumerate(row["changes"]) if i != base]
                assert all(re.fullmatch(r"[+-]\d+\.\d( pts)?( \([+-]\d+%\))?", c) for c in others if c) and others, \
                    (page, row)
                changed += sum(bool(c) for c in others)
    for chart in charts:
        driver.get(chart)
        panels, lines = driver.execute_script(PANELS)
        assert panels > 0 and len(lines) == panels, (chart, panels, lines)
    return changed


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


def test_every_metrics_page_against_the_base_in_chromium(tmp_path):
    need_chromium()
    report = write_report(report_runs.collection(tmp_path / "demo")).parent
    with chromium() as driver:
        pages = [report / "index.html", *(report / run / "metrics.html" for run in ("rlaif_v", "silkie", "povid"))]
        assert all(check_against_base(driver, page) > 0 for page in pages)


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
        # the demo's index and every run's metrics against the base: the charts' lines, the legend, the changes
        for page in [report / "index.html", *(report / run / "metrics.html" for run in summary if (report / run).is_dir())]:
            assert check_against_base(driver, page) > 0, page
