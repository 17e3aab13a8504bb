"""The report's findings section: verdicts, checks, figure tables and evidence charts from findings.json."""

import json

import pandas as pd
import pytest
from rich.console import Console

from harness import store
from harness.report import render, verdicts
from suites import findings as F
from tests.test_findings import mqar_rows, seeds


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run whose rows decide MQAR and ListOps, written by the suites' summarize."""
    out = tmp_path_factory.mktemp("run")
    run = store.RunStore(out)
    run.open({"device": "cpu", "device_name": "test cpu"})
    rows = mqar_rows() + seeds("listops_lra", "vanilla", 0.4, task="listops", n_test=2000)
    rows += seeds("listops_lra", "linear", 0.38, task="listops", n_test=2000)
    for i, r in enumerate(rows):
        run.write({"case_id": f"case{i}", "suite": "accuracy", "device": "cpu", "dtype": "float32", **r})
    F.summarize(out, Console(width=200, quiet=True))
    return out


def test_every_chart_kind_draws_its_series_and_intervals(run_dir):
    found = verdicts.load([run_dir])
    for chart in found["mqar"]["charts"] + found["listops"]["charts"]:
        fig = verdicts.chart_figure(chart)
        gids = {a.get_gid() for ax in fig.axes for a in ax.get_children() if a.get_gid()}
        for series in chart["series"]:
            assert f"series:{series['name']}" in gids and f"interval:{series['name']}" in gids
    bars = next(c for c in found["listops"]["charts"] if c["kind"] == "bars")
    gids = {a.get_gid() for ax in verdicts.chart_figure(bars).axes for a in ax.get_children()}
    assert "published:vanilla" in gids and "published:linear" in gids  # LRA's figures beside ours
    heatmap = {"kind": "heatmap", "title": "t", "x": "N", "y": "depth", "series": [
        {"name": "a", "points": [{"x": 64, "y": 0.5, "mean": 1.0, "low": 1.0, "high": 1.0}]}]}
    assert {ax.get_gid() for ax in verdicts.chart_figure(heatmap).axes} >= {"heatmap:a"}
    with pytest.raises(ValueError, match="unknown chart kind"):
        verdicts.chart_figure({**heatmap, "kind": "pie"})


def test_a_length_axis_ticks_exactly_the_measured_lengths():
    """Induction's chart: accuracy against test length on a log2 axis, a tick at each length measured."""
    points = [{"x": n, "mean": 0.9, "low": 0.8, "high": 1.0} for n in (64, 256, 1024)]
    chart = {"kind": "lines", "title": "t", "x": "test length", "y": "accuracy", "log_x": True,
             "series": [{"name": "mamba", "points": points}]}
    ax = verdicts.chart_figure(chart).axes[0]
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [64, 256, 1024]


@pytest.mark.slow
def test_report_shows_each_finding_verdict_figures_and_charts(run_dir, tmp_path):
    report = render.build([run_dir], tmp_path / "report")
    page = report.html.read_text()
    assert "Published findings" in page and "mqar: <span class='verdict-ok'>reproduced</span>" in page
    assert "accuracy [95% interval]" in page and "finding-mqar-0.png" in page
    assert (tmp_path / "report" / "charts" / "finding-mqar-0.svg").exists()
    assert "passkey" in page and "no data" in page  # undecided findings are listed, not hidden
    summary = report.markdown.read_text()
    assert "## Findings" in summary and "### mqar: reproduced" in summary
    assert "### listops: " in summary and "| finding | verdict | claim |" in summary


def test_a_run_without_findings_says_how_to_get_them(tmp_path):
    assert "no findings.json" in verdicts.html_section({}, {})
    assert verdicts.markdown_lines({}, lambda df: []) == []


def test_later_runs_decide_findings_an_earlier_run_could_not(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for path, verdict in ((first, "reproduced"), (second, "no data")):
        path.mkdir()
        (path / verdicts.FINDINGS_FILE).write_text(json.dumps({"mqar": {"verdict": verdict, "claim": "c"}}))
    assert verdicts.load([first, second])["mqar"]["verdict"] == "reproduced"
    assert verdicts.load([second])["mqar"]["verdict"] == "no data"
    table = verdicts.figures_table({"table": [{"variant": "v", "mean": 0.5, "low": 0.4, "high": 0.6}]})
    assert list(table["accuracy [95% interval]"]) == ["0.500 [0.400, 0.600]"]
    assert isinstance(table, pd.DataFrame)
