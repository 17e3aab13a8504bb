"""The HTML report in a real headless Chromium, offline: every image loads and the console stays clean.

Chromium and its driver come from Debian's packages (`bash .ci/install-chromium.sh`). Without them the
test is skipped, except under CI (CI=true), where it must run.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests import test_report_fixtures as fx

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="chromium is not installed (bash .ci/install-chromium.sh); under CI this test always runs",
)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="attnbench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium must not try to download one (the network is closed).
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def images(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,"
        " width: i.naturalWidth}))")


def test_report_opens_offline_with_every_image_and_no_console_error(browser):
    report = fx.built_report()
    browser.get(report.html.resolve().as_uri())
    assert browser.title == "attnbench report"
    shown = images(browser)
    assert len(shown) == len(report.charts) == 11
    assert [i["src"] for i in shown if not (i["complete"] and i["width"] > 0)] == []
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    sections = browser.execute_script("return Array.from(document.querySelectorAll('section h2'))"
                                      ".map(h => h.textContent)")
    assert sections[:2] == ["Overview", "Environment"] and "Comparison" in sections


def test_a_missing_image_is_caught(browser, tmp_path):
    """The check above can fail: a broken image shows as naturalWidth 0 and a console error."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head>'
                    '<body><img src="charts/missing.png"></body></html>')
    browser.get(page.as_uri())
    assert [i["width"] for i in images(browser)] == [0]
    assert any("missing.png" in entry["message"] for entry in browser.get_log("browser"))
