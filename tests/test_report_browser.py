"""The HTML report in a real headless Chromium, offline: every image loads, the console stays clean, no
label of any chart overlaps another (measured on the SVG as the browser lays it out), and the committed
standard run's report opens on its decision page with no visible table longer than 40 rows.

Screenshots of the first screen and of one chart go to $ATTNBENCH_SCREENSHOTS (default: a fresh temporary
directory), for CI to keep as artifacts; they are not committed.

Chromium and its driver come from Debian's packages (`bash .ci/install-chromium.sh`). Where either is
missing the tests skip with the reason, except under CI (CI=true), where they must run.
"""

import functools
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from harness.report import charts, html, render
from tests import test_report_fixtures as fx

REFERENCE_RUN = Path(__file__).resolve().parents[1] / "results" / "reference" / "cpu-quick-amd-epyc-2core"
STANDARD_RUN = REFERENCE_RUN.parent / "cpu-standard-intel-xeon-2core"
SCREENSHOTS = "ATTNBENCH_SCREENSHOTS"
MAX_VISIBLE_ROWS = 40
OVERLAP_PX = 0.5  # boxes that share less than this (anti-aliasing, touching edges) do not overlap

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")



def locate(program: str) -> str | None:
    """The program on PATH, else Debian's place for it, else None."""
    found = shutil.which(program) or f"/usr/bin/{program}"
    return found if Path(found).exists() else None


def under_ci(environ) -> bool:
    """CI=true, as CI services set it (an empty, "0" or "false" CI is not CI)."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def why_skip(environ, locate=locate) -> str | None:
    """Why the browser tests cannot run here, or None: they run where Chromium and chromedriver are both
    installed, and always under CI (where a missing browser must fail, not skip)."""
    missing = [program for program in ("chromium", "chromedriver") if locate(program) is None]
    if not missing or under_ci(environ):
        return None
    return f"{' and '.join(missing)} not installed (bash .ci/install-chromium.sh); under CI these tests run"


@pytest.fixture
def browser():
    reason = why_skip(os.environ)
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="attnbench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = locate("chromium") or "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium must not try to download one (the network is closed).
    driver = webdriver.Chrome(options=options,
                              service=Service(locate("chromedriver") or "/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.parametrize(("installed", "ci", "skips_for"), [
    ({"chromium", "chromedriver"}, "", None),
    ({"chromedriver"}, "", "chromium not installed"),
    ({"chromium"}, "", "chromedriver not installed"),
    (set(), "", "chromium and chromedriver not installed"),
    (set(), "false", "chromium and chromedriver not installed"),
    (set(), "true", None),
    ({"chromium"}, "true", None),
], ids=["both-installed", "no-chromium", "no-driver", "neither", "ci-false", "ci-neither", "ci-no-driver"])
def test_the_browser_tests_skip_outside_ci_when_chromium_or_its_driver_is_missing(installed, ci, skips_for):
    """No browser needed: the programs found and CI are stand-ins. Under CI the tests always run (a
    missing browser then fails them); elsewhere a missing program skips them, naming it."""
    def fake_locate(program):
        return f"/usr/bin/{program}" if program in installed else None

    reason = why_skip({"CI": ci} if ci else {}, fake_locate)
    if skips_for is None:
        assert reason is None
    else:
        assert reason.startswith(skips_for) and "install-chromium.sh" in reason


def images(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,"
        " width: i.naturalWidth}))")


@pytest.mark.slow  # a browser
def test_report_opens_offline_with_every_image_and_no_console_error(browser):
    report = fx.built_report()
    browser.get(report.html.resolve().as_uri())
    assert browser.title == "attnbench report"
    shown = images(browser)
    assert len(shown) == len(report.charts) == 13
    assert [i["src"] for i in shown if not (i["complete"] and i["width"] > 0)] == []
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    sections = browser.execute_script("return Array.from(document.querySelectorAll('section h2'))"
                                      ".map(h => h.textContent)")
    assert sections[:3] == ["Which one? The decision page", "Correctness", "Overview"]
    assert "Comparison" in sections


# Visible tables: a table inside a closed <details> is folded away, one hidden by CSS has no box.
VISIBLE_TABLE_ROWS = """
return Array.from(document.querySelectorAll('table'))
  .filter(t => !t.closest('details:not([open])') && t.getClientRects().length > 0)
  .map(t => t.rows.length - t.tHead.rows.length);
"""
FIRST_SECTION = "return document.querySelector('section').id"


def screenshot_dir() -> Path:
    chosen = os.environ.get(SCREENSHOTS) or tempfile.mkdtemp(prefix="attnbench-screenshots-")
    Path(chosen).mkdir(parents=True, exist_ok=True)
    return Path(chosen)


@pytest.mark.slow  # a browser on the committed standard report
def test_the_committed_standard_report_opens_on_its_decision_page_with_short_tables(browser):
    """The committed CPU standard run, rendered afresh into a temporary directory (the committed report is
    regenerated by hand): the decision page first, no visible table over 40 rows; screenshots of the first
    screen and of the latency chart."""
    if not STANDARD_RUN.is_dir():
        pytest.skip(f"no {STANDARD_RUN}")
    report = render.build([STANDARD_RUN], Path(tempfile.mkdtemp(prefix="attnbench-browser-")) / "report")
    browser.get(report.html.resolve().as_uri())
    assert browser.execute_script(FIRST_SECTION) == "decision"
    rows = browser.execute_script(VISIBLE_TABLE_ROWS)
    assert rows and max(rows) <= MAX_VISIBLE_ROWS, rows
    shots = screenshot_dir()
    assert browser.save_screenshot(str(shots / "report-first-screen.png"))
    chart = browser.find_element("css selector", "#chart-latency img")
    browser.execute_script("arguments[0].scrollIntoView()", chart)
    assert chart.screenshot(str(shots / "report-latency-chart.png"))


def test_the_table_check_counts_only_visible_tables(browser, tmp_path):
    """The check above can fail: a long open table counts, the same table folded away does not."""
    long = html.table(pd.DataFrame({"n": range(MAX_VISIBLE_ROWS + 5)}))
    page = tmp_path / "tables.html"
    page.write_text(f"<!DOCTYPE html><html><body>{long}{long.replace('<details>', '<details open>')}"
                    "</body></html>")
    browser.get(page.as_uri())
    assert browser.execute_script(VISIBLE_TABLE_ROWS) == [MAX_VISIBLE_ROWS + 5]


def test_a_missing_image_is_caught(browser, tmp_path):
    """The check above can fail: a broken image shows as naturalWidth 0 and a console error."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head>'
                    '<body><img src="charts/missing.png"></body></html>')
    browser.get(page.as_uri())
    assert [i["width"] for i in images(browser)] == [0]
    assert any("missing.png" in entry["message"] for entry in browser.get_log("browser"))


# --- labels that overlap --------------------------------------------------------------------------------

# Every text of a matplotlib SVG is a <g id="text_N"> holding a comment with the text and one transformed
# group of glyph paths per line. A line's box is its glyphs' bounding box in their own space, mapped by
# their transform to the screen: rotated labels keep their true (oriented) outline.
TEXT_BOXES = """
return Array.from(document.querySelectorAll('g[id^="text_"]')).map(g => {
  const label = Array.from(g.childNodes).filter(n => n.nodeType === 8).map(n => n.nodeValue.trim()).join(' ');
  const lines = Array.from(g.children).map(line => {
    const b = line.getBBox(), m = line.getScreenCTM();
    if (b.width === 0 || b.height === 0) return null;
    return [[b.x, b.y], [b.x + b.width, b.y], [b.x + b.width, b.y + b.height], [b.x, b.y + b.height]]
      .map(([x, y]) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f]);
  }).filter(q => q !== null);
  return {label: label, lines: lines};
}).filter(t => t.lines.length > 0);
"""


def _separated(a: np.ndarray, b: np.ndarray) -> bool:
    """Two convex quadrilaterals are apart when, on one of their edges' normals, their projections
    overlap by less than OVERLAP_PX (the separating axis theorem)."""
    for quad in (a, b):
        for i in range(4):
            edge = quad[(i + 1) % 4] - quad[i]
            normal = np.array([-edge[1], edge[0]]) / (np.hypot(*edge) or 1.0)
            pa, pb = a @ normal, b @ normal
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) < OVERLAP_PX:
                return True
    return False


def overlapping_labels(driver, svg: Path) -> list[tuple[str, str]]:
    driver.get(svg.resolve().as_uri())
    texts = driver.execute_script(TEXT_BOXES)
    assert texts, f"no text found in {svg}"
    found = []
    for a, b in itertools.combinations(texts, 2):
        close = [(qa, qb) for qa in a["lines"] for qb in b["lines"] if _boxes_meet(qa, qb)]
        if any(not _separated(np.array(qa), np.array(qb)) for qa, qb in close):
            found.append((a["label"], b["label"]))
    return found


def _boxes_meet(a: list, b: list) -> bool:
    """Whether the two quadrilaterals' upright bounding boxes share a point: those that do not cannot
    overlap, and most pairs of a chart's labels are such (skipping them spares the exact check's time)."""
    (ax, ay), (bx, by) = zip(*a, strict=True), zip(*b, strict=True)
    return max(ax) >= min(bx) and max(bx) >= min(ax) and max(ay) >= min(by) and max(by) >= min(ay)


@functools.cache
def reference_report() -> render.Report:
    """The committed CPU quick run: every registered variant, long names, real numbers, the product axes."""
    return render.build([REFERENCE_RUN], Path(tempfile.mkdtemp(prefix="attnbench-browser-")) / "report")


def every_chart() -> list[tuple[str, Path]]:
    built = [("fixture", fx.built_report())]
    if REFERENCE_RUN.is_dir():
        built.append(("reference", reference_report()))
    return [(f"{name}-{c.name}", r.html.parent / c.svg) for name, r in built for c in r.charts]


@pytest.mark.slow
def test_no_label_of_any_chart_overlaps_another(browser):
    charts_seen = every_chart()
    assert len(charts_seen) >= 11 + 15  # the fixture's 11, the reference run's 15
    product = {f"reference-{c}" for c in ("gqa_memory", "ragged", "compiled", "serving_profile")}
    assert product <= {name for name, _ in charts_seen}  # the product axes' charts from measured rows
    overlaps = {name: found for name, svg in charts_seen if (found := overlapping_labels(browser, svg))}
    assert overlaps == {}


def test_the_overlap_check_finds_overlapping_labels_and_spares_rotated_neighbours(browser, tmp_path):
    """The check above can fail: two labels on one spot overlap; two rotated ones side by side, whose
    upright bounding boxes would overlap, do not."""
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.set_axis_off()
    ax.text(0.2, 0.8, "sparse-bigbird", transform=ax.transAxes)
    ax.text(0.25, 0.8, "vanilla", transform=ax.transAxes)
    for x in (0.2, 0.3):
        ax.text(x, 0.1, "longformer-banded", rotation=45, transform=ax.transAxes)
    charts.save(fig, tmp_path, "labels")
    assert overlapping_labels(browser, tmp_path / "labels.svg") == [("sparse-bigbird", "vanilla")]
