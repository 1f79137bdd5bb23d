"""Debian's headless Chromium driven through its ChromeDriver (selenium), for the report's browser tests:
no browser is downloaded, and the page's console is read back (`goog:loggingPrefs`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Headless as root on a closed network: no sandbox, no GPU, and no background connections to refuse.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", "--window-size=1400,1000")


def need_chromium() -> None:
    """Skip where Chromium is not installed, but fail in CI, whose .ci/run installs it."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("selenium")


@contextmanager
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    need_chromium()
    profile = tempfile.mkdtemp(prefix="vlalign-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path, ready: str = "true") -> list[dict]:
    """Load `path` from disk, wait until the page is loaded and `ready` (a JS expression) holds, and return
    the console's errors (severe entries: a script error, console.error, a file that failed to load)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(f"return document.readyState === 'complete' && Boolean({ready});"))
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def broken_images(driver) -> tuple[int, list[str]]:
    """(how many images the page has, those that did not load)."""
    images = driver.execute_script(
        "return [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);")
    return len(images), [src for src, ok in images if not ok]


def screenshot(driver, path: Path) -> None:
    """The whole page as a PNG (the window stretched to the page's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1400, min(max(height, 600), 6000))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
