"""The report's findings section: verdicts with their reasons and seed counts, the trained precondition,
recipe changes, figure tables and evidence charts, all from findings.json."""

import json

import pandas as pd
import pytest
from rich.console import Console

from harness import store
from harness.report import render, verdicts
from suites import findings as F
from tests.test_findings import listops_rows, mqar_rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run whose rows decide MQAR and ListOps, written by the suites' summarize; ListOps' recipe changed
    after its first rows."""
    out = tmp_path_factory.mktemp("run")
    run = store.RunStore(out)
    run.open({"device": "cpu", "device_name": "test cpu"})
    run.update_environment(recipes={"listops_lra": {"recipe": {"settings": {"max_steps": 800}}, "hash": "a"}},
                           recipe_changes={"listops_lra": [{"recipe": {"settings": {"max_steps": 1600}},
                                                            "hash": "b"}]})
    rows = mqar_rows(linear=(0.52, 0.17)) + listops_rows(softmax=0.40, linear=0.38, performer=0.39)
    for i, r in enumerate(rows):
        run.write({"case_id": f"case{i}", "suite": "accuracy", "device": "cpu", "dtype": "float32", **r})
    F.summarize(out, Console(width=200, quiet=True))
    return out


@pytest.mark.slow
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
    assert "reference:majority class" in gids
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
def test_report_shows_each_verdict_with_its_reason_seeds_precondition_and_recipe(run_dir, tmp_path):
    report = render.build([run_dir], tmp_path / "report")
    page = report.html.read_text()
    assert "Published findings" in page
    assert "mqar: <span class='verdict-ok'>reproduced</span>" in page  # linear left out: it did not train
    assert "listops: <span class='verdict-bad'>not reproduced</span>" in page
    assert "(recipe changed after results)" in page and "settings.max_steps: 800 -&gt; 1600" in page
    assert "Zoology (Arora et al. 2023)" in page and "Long Range Arena (Tay et al. 2021), Table 1" in page
    assert "Trained precondition" in page and "trivial baseline" in page
    assert "seeds per configuration: 3" in page and "(n=3)" in page
    assert "not testable at this budget (did not train): linear" in page
    assert "accuracy [95% interval]" in page and "finding-mqar-0.svg" in page
    assert (tmp_path / "report" / "charts" / "finding-mqar-0.svg").exists()
    assert "passkey" in page and "no data" in page  # undecided findings are listed, not hidden
    summary = report.markdown.read_text()
    assert "## Findings" in summary
    assert "### listops: not reproduced (recipe changed after results)" in summary
    assert "| finding | verdict | reason | seeds | recipe | claim (source) |" in summary
    assert "- `settings.max_steps: 800 -> 1600`" in summary


def test_a_family_that_never_trained_is_shown_as_not_testable(run_dir):
    found = verdicts.load([run_dir])
    families = verdicts.families_table(found["mqar"]).set_index("family")
    assert families.loc["linear", "trained"] == "no"
    assert families.loc["linear", "verdict"] == "not testable at this budget"
    assert families.loc["vanilla", "trained"] == "yes"
    assert "(n=3)" in families.loc["linear", "accuracy [95% interval] (seeds)"]
    assert "not testable at this budget (did not train): linear" in found["mqar"]["reason"]


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
    table = verdicts.figures_table({"table": [{"variant": "v", "mean": 0.5, "low": 0.4, "high": 0.6,
                                               "n_seeds": 3}]})
    assert list(table["accuracy [95% interval]"]) == ["0.500 [0.400, 0.600]"] and list(table["seeds"]) == [3]
    assert isinstance(table, pd.DataFrame)
    assert verdicts.seeds_text({"seeds": {"min": 3, "max": 5}}) == "3-5"
