"""The report: what each chart draws, the findings (scaling fits, crossings, Pareto front, best learning
rate), the comparison of two runs, the HTML and Markdown files and the `report` command.

Expected values come from the laws the synthetic results were written with (tests/test_report_fixtures.py),
not from the report's own tables.
"""

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes

from harness.report import analysis, charts, compare, data
from harness.report.analysis import Findings
from tests import test_report_fixtures as fx

FWD = "forward\nbfloat16, causal"
FWD_BWD = "forward+backward\nbfloat16, causal"


@pytest.fixture(scope="module")
def findings():
    return Findings.compute(fx.full_rows())


def panels(fig) -> dict[str, Axes]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}


def lines(ax, kind: str) -> dict[str, object]:
    """Artists of one kind (series, oom, max-n) on an axes, by series name."""
    return {line.get_gid().split(":", 1)[1]: line for line in ax.lines
            if (line.get_gid() or "").startswith(kind + ":")}


def expected_ok_variants(mode, causal=True, dtype="bfloat16", metric="latency_ms"):
    """From the rows as written: the variants with at least one measured value in that configuration."""
    return {r["variant"] for r in fx.throughput_rows() if r["mode"] == mode and r["causal"] == causal
            and r["dtype"] == dtype and r["status"] == "ok" and r.get(metric) is not None}


def test_latency_chart_one_line_per_variant_log_log_axes(findings):
    fig = charts.latency_chart(findings.points)
    axes = panels(fig)
    assert len(axes) == 5  # fwd/fwd_bwd/decode bf16 causal, fwd bf16 non-causal, fwd fp32 causal
    for title, mode, causal, dtype in ((FWD, "fwd", True, "bfloat16"), (FWD_BWD, "fwd_bwd", True, "bfloat16"),
                                       ("forward\nbfloat16, non-causal", "fwd", False, "bfloat16"),
                                       ("forward\nfloat32, causal", "fwd", True, "float32"),
                                       ("decode\nbfloat16, causal", "decode", True, "bfloat16")):
        ax = axes[title]
        assert set(lines(ax, "series")) == expected_ok_variants(mode, causal, dtype), title
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "performer" not in lines(axes[FWD], "series")  # unsupported everywhere: no line
    flash = lines(axes[FWD], "series")["flash-sdpa"]
    assert list(flash.get_xdata()) == list(fx.SEQ_LENS)
    np.testing.assert_allclose(flash.get_ydata(),
                               [fx.forward_latency_ms("flash-sdpa", n) for n in fx.SEQ_LENS])


def test_oom_points_and_largest_feasible_n_are_marked(findings):
    axes = panels(charts.latency_chart(findings.points, largest=findings.largest))
    # vanilla runs out of memory at 16384 forward and 8192 forward+backward (16384 there was skipped).
    assert list(lines(axes[FWD], "oom")["vanilla"].get_xdata()) == [16384]
    assert list(lines(axes[FWD_BWD], "oom")["vanilla"].get_xdata()) == [8192]
    assert set(lines(axes[FWD], "oom")) == {"vanilla"}
    star = lines(axes[FWD], "max-n")["vanilla"]
    assert list(star.get_xdata()) == [8192] and star.get_ydata()[0] == pytest.approx(8.192)
    assert list(lines(axes[FWD_BWD], "max-n")["vanilla"].get_xdata()) == [4096]
    # Only vanilla's sweeps found a limit: a star where nothing failed would claim one.
    assert set(lines(axes[FWD], "max-n")) == set(lines(axes[FWD_BWD], "max-n")) == {"vanilla"}


def test_a_variant_out_of_memory_at_every_length_is_still_marked(tmp_path):
    rows = forward_rows()
    for r in rows:
        if r["variant"] == "vanilla":
            r.update(status="oom", reason="OutOfMemoryError", latency_ms=None, flops=None, tflops=None)
    found = Findings.compute(data.Results.load(small_run(tmp_path / "run", rows)).rows)
    for chart in (charts.latency_chart, charts.tflops_chart):
        ax = panels(chart(found.points))[FWD]
        assert set(lines(ax, "series")) == {"flash-sdpa"}
        assert list(lines(ax, "oom")["vanilla"].get_xdata()) == [1024, 2048, 4096]
    legend = charts.latency_chart(found.points, largest=found.largest).legends[0]
    # No star: vanilla never ran, flash-sdpa never failed.
    assert {t.get_text() for t in legend.get_texts()} == {"flash-sdpa", "vanilla", "out of memory"}


def test_memory_chart_has_device_memory_line(findings):
    axes = panels(charts.memory_chart(findings.points))
    for ax in axes.values():
        device = [line for line in ax.lines if line.get_gid() == "device-memory"]
        assert len(device) == 1 and device[0].get_ydata()[0] == pytest.approx(80.0)
        assert ax.get_yscale() == "log"
    linear = lines(axes[FWD], "series")["linear"]
    np.testing.assert_allclose(linear.get_ydata(), [fx.memory_gib("linear", n) for n in fx.SEQ_LENS])


def test_tflops_chart_shows_softmax_kernels_and_percent_of_peak(findings):
    axes = panels(charts.tflops_chart(findings.points))
    assert "decode\nbfloat16, causal" not in axes  # no FLOP count for decoding
    ax = axes[FWD]
    assert set(lines(ax, "series")) == expected_ok_variants("fwd", metric="tflops") == {
        "vanilla", "flash-sdpa", "sparse-bigbird"}
    right = [child for child in ax.child_axes if "% of matmul peak" in child.get_ylabel()]
    assert len(right) == 1 and "800 TFLOP/s" in right[0].get_ylabel()
    vanilla = lines(ax, "series")["vanilla"]
    # 4 B H N^2 D / 2 (causal) FLOPs in 1e-6 N s, with B = 16384 / N: 2 * 16384 * 16 * 64 / 1e6 TFLOP/s
    np.testing.assert_allclose(vanilla.get_ydata(), 2 * 16384 * 16 * 64 / 1e6)


def test_tokens_and_energy_charts(findings):
    tokens = panels(charts.tokens_chart(findings.points))[FWD]
    assert tokens.get_yscale() == "log" and tokens.get_xscale() == "log"
    linear = lines(tokens, "series")["linear"]
    np.testing.assert_allclose(linear.get_ydata(), [16384 / (fx.forward_latency_ms("linear", n) / 1e3)
                                                    for n in fx.SEQ_LENS])
    energy = panels(charts.energy_chart(findings.points))[FWD]
    assert len(lines(energy, "series")) == len(expected_ok_variants("fwd"))


def test_charts_without_data_are_none():
    empty = Findings.compute(fx.full_rows().iloc[0:0])
    assert charts.latency_chart(empty.points) is None and charts.passkey_chart(empty.best) is None
    assert charts.pareto_chart(empty.pareto) is None and charts.accuracy_chart(
        data.task_accuracy(empty.best)) is None


def task_mean(variant, task):
    if task == "passkey":
        return np.mean([fx.passkey_accuracy(variant, n, d)
                        for n in fx.PASSKEY_LENS for d in fx.PASSKEY_DEPTHS])
    return fx.LEARNED[variant][task][1]


def test_accuracy_chart_bars_are_best_learning_rate_accuracy(findings):
    fig = charts.accuracy_chart(data.task_accuracy(findings.best))
    ax = fig.axes[0]
    tasks = [t.get_text() for t in ax.get_xticklabels()]
    assert tasks == ["mqar", "passkey", "selective_copy"]
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}
    assert set(bars) == set(fx.LEARNED)
    for variant, heights in bars.items():
        np.testing.assert_allclose(heights, [task_mean(variant, t) for t in tasks], atol=1e-9)


def test_best_learning_rate_is_chosen_per_trained_model(findings):
    best = findings.best
    chosen = best.groupby(["variant", "task"]).lr.unique()
    for variant, tasks in fx.LEARNED.items():
        for task, (lr, _) in tasks.items():
            assert list(chosen[(variant, task)]) == [lr]
        # One rate for the whole passkey model, every length and depth.
        assert list(chosen[(variant, "passkey")]) == [fx.PASSKEY_BEST_LR]
    assert set(best.seed[best.task == "mqar"]) == {0, 1}  # both seeds of the best rate are kept
    quality = data.quality(best).set_index("variant").accuracy
    assert quality["linear"] == pytest.approx(np.mean([task_mean("linear", t)
                                                       for t in ("mqar", "selective_copy", "passkey")]))


def test_passkey_heatmap_per_variant(findings):
    fig = charts.passkey_chart(findings.best)
    maps = {ax.get_title(): ax for ax in fig.axes if (ax.get_gid() or "").startswith("passkey:")}
    assert set(maps) == set(fx.LEARNED)
    cells = maps["linear"].collections[0].get_array().reshape(len(fx.PASSKEY_DEPTHS), len(fx.PASSKEY_LENS))
    expected = [[fx.passkey_accuracy("linear", n, d) for n in fx.PASSKEY_LENS] for d in fx.PASSKEY_DEPTHS]
    np.testing.assert_allclose(cells, expected)


def test_long_range_chart_averages_depths(findings):
    ax = panels(charts.long_range_chart(findings.best))["passkey\naccuracy vs length"]
    linear = lines(ax, "series")["linear"]
    assert list(linear.get_xdata()) == list(fx.PASSKEY_LENS)
    assert linear.get_ydata()[1] == pytest.approx(np.mean([0.4, 0.7, 1.0]))
    assert len(lines(ax, "series")) == len(fx.LEARNED)


def test_pareto_front_function():
    import pandas as pd

    x = pd.Series([1.0, 2.0, 3.0, 2.0, 0.5])
    y = pd.Series([0.9, 0.8, 0.1, 0.5, 0.9])
    assert list(analysis.pareto_front(x, y)) == [True, True, True, False, False]


def test_pareto_chart_at_the_length_most_variants_ran(findings):
    front = findings.pareto
    # vanilla runs out of memory at 16384, so 8192 is the largest length with four variants.
    assert front.seq_len == 8192 and front.tasks == ["mqar", "passkey", "selective_copy"]
    on_front = set(front.points.variant[front.points.on_front])
    assert on_front == {"vanilla", "flash-sdpa", "linear"}  # sparse-bigbird: slower and worse than flash
    ax = charts.pareto_chart(front).axes[0]
    edge = [line for line in ax.lines if line.get_gid() == "pareto-front"][0]
    speed = {v: 16384 / (fx.forward_latency_ms(v, 8192) / 1e3) for v in on_front}
    np.testing.assert_allclose(edge.get_xdata(), sorted(speed.values()))
    assert ax.get_xscale() == "log"


def test_scaling_fits_read_time_per_sequence(findings):
    table = findings.fits.set_index(["config", "variant"])
    config = "H100 80GB HBM3, bfloat16, forward, causal"
    assert table.exponent[(config, "vanilla")] == pytest.approx(2.0, abs=0.005)  # 1e-3 N at batch 16384 / N
    assert table.exponent[(config, "linear")] == pytest.approx(1.0, abs=0.05)  # a constant per batch
    assert 1.5 < table.exponent[(config, "flash-sdpa")] < 2.0
    assert (table.k_low <= table.exponent).all() and (table.exponent <= table.k_high).all()


def test_crossings_are_written_out(findings):
    config = "H100 80GB HBM3, bfloat16, forward, causal"
    found = {(c.faster, c.slower): c for c in findings.crossings if c.config == config}
    # 2 + 1e-5 N < 0.25e-3 N + 0.5 from N = 6250: first measured at 8192.
    linear = found[("linear", "flash-sdpa")]
    assert (linear.slower_at, linear.faster_from) == (4096, 8192)
    assert "linear beats flash-sdpa on " + config in linear.sentence
    assert ("flash-sdpa", "vanilla") not in found  # faster everywhere
    assert not any(c.faster == "vanilla" for c in findings.crossings)


def test_largest_feasible_n(findings):
    table = findings.largest.set_index(["config", "variant"])
    fwd = table.loc["H100 80GB HBM3, bfloat16, forward, causal"]
    assert fwd.loc["vanilla", "largest_feasible_n"] == 8192 and fwd.loc["vanilla", "first_failure"] == \
        "oom at N = 16384"
    assert np.isnan(fwd.loc["performer", "largest_feasible_n"]) and fwd.loc["performer", "first_failure"] == \
        "unsupported"
    bwd = table.loc["H100 80GB HBM3, bfloat16, forward+backward, causal"]
    assert bwd.loc["vanilla", "largest_feasible_n"] == 4096


@pytest.mark.slow  # two reports rendered
def test_comparison_flags_changes_beyond_the_threshold():
    report = fx.built_report()
    regressions = report.comparison.regressions
    # flash-sdpa is 10% slower than the baseline in each of its 25 measured cases; linear's 3% is within 5%.
    assert len(regressions) == 25 and set(regressions.variant) == {"flash-sdpa"}
    assert set(regressions.what) == {"latency (ms)"}
    np.testing.assert_allclose(regressions.change, 0.10)
    linear = report.comparison.changes.query("variant == 'linear' and what == 'latency (ms)'")
    assert (linear.verdict == compare.SAME).all() and len(linear) == 25


def small_run(path, rows):
    return fx.write_run(path, rows)


def forward_rows(variants=("vanilla", "flash-sdpa"), max_n=4096):
    return [r for r in fx.throughput_rows() if r["mode"] == "fwd" and r["dtype"] == "bfloat16" and r["causal"]
            and r["variant"] in variants and r["seq_len"] <= max_n]


def test_runs_from_several_devices_are_drawn_and_summarized_apart(tmp_path):
    h100 = small_run(tmp_path / "h100", forward_rows())
    h200 = fx.write_run(tmp_path / "h200", forward_rows(), device_name="NVIDIA H200")
    found = Findings.compute(data.Results.load(h100, h200).rows)
    axes = panels(charts.latency_chart(found.points))
    assert set(axes) == {"forward\nH100 80GB HBM3, bfloat16, causal", "forward\nH200, bfloat16, causal"}
    for ax in axes.values():
        assert set(lines(ax, "series")) == {"vanilla", "flash-sdpa"}
        assert len(lines(ax, "series")["vanilla"].get_xdata()) == 3  # 1024..4096, not merged across devices
    assert found.headlines == ["H100 80GB HBM3, bfloat16, forward, causal", "H200, bfloat16, forward, causal"]


def test_comparison_flags_a_case_that_stopped_running_and_accuracy_drops(tmp_path):
    before = forward_rows() + [r for r in fx.accuracy_rows() if r["variant"] == "linear"]
    after = [dict(r) for r in before]
    broken = next(r for r in after if r["variant"] == "vanilla" and r.get("seq_len") == 4096)
    broken.update(status="oom", reason="OutOfMemoryError", latency_ms=None)
    for r in after:
        if r.get("task") == "mqar":
            r["accuracy"] -= 0.1  # ten points: beyond a 5-point threshold
    result = compare.compare(data.Results.load(small_run(tmp_path / "a", after)),
                             data.Results.load(small_run(tmp_path / "b", before)), 0.05, "b")
    reg = result.regressions
    status = reg[reg.what == "status"]
    assert len(status) == 1 and status.iloc[0].seq_len == 4096 and status.iloc[0].current == "oom"
    accuracy = reg[reg.what == "accuracy"]
    assert set(accuracy.config) == {"mqar"} and np.allclose(accuracy.change, -0.1)
    assert (result.changes[result.changes.what == "latency (ms)"].verdict == compare.SAME).all()


@pytest.mark.slow
def test_html_report_is_self_contained():
    report = fx.built_report()
    page = report.html.read_text()
    out = report.html.parent
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(report.charts) == 13  # the serving profile too; GQA memory left out
    assert set(report.left_out) == {"gqa_memory"}
    for src in sources:
        assert not src.startswith(("/", "http:", "https:", "file:")) and (out / src).is_file()
        assert src.endswith(".svg") and (out / src).stat().st_size > 10_000
    assert not list((out / "charts").glob("*.png"))  # one format
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from anywhere
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert 'xlink:href="http' not in (out / "charts" / "latency.svg").read_text()


def test_html_report_has_environment_tables_and_findings():
    page = fx.built_report().html.read_text()
    for text in ("NVIDIA H100 80GB HBM3", "550.54", "Largest feasible N", "Scaling exponents",
                 "linear beats flash-sdpa on H100 80GB HBM3, bfloat16, forward, causal from N ~",
                 "(slower at 4096, faster from 8192)", "25 regressions", "backward not implemented",
                 'id="chart-passkey"', 'id="chart-pareto"', "baseline: "):
        assert text in page, text


def test_markdown_summary_is_short_and_says_what_matters():
    report = fx.built_report()
    text = report.markdown.read_text()
    assert len(text.splitlines()) < 70 and len(text) < 6000
    assert "linear beats flash-sdpa on H100 80GB HBM3, bfloat16, forward, causal from N ~" in text
    # Time per sequence: 1e-3 N ms at batch 16384 / N is N^2 per sequence, exactly.
    assert "| vanilla | 8192 | oom at N = 16384 | 2.00 [2.00, 2.00] |" in text
    assert "**25 regression(s)**" in text
    assert text.rstrip().endswith(f"`{report.html}`")


def test_report_without_throughput_says_which_suite_to_run(tmp_path):
    from harness.report import build

    run = small_run(tmp_path / "run", fx.accuracy_rows())
    (run / "report" / "charts").mkdir(parents=True)
    (run / "report" / "charts" / "latency.png").write_bytes(b"from an earlier report")
    report = build([run])
    assert [c.name for c in report.charts] == ["exactness", "approximation", "accuracy"]
    assert not (run / "report" / "charts" / "latency.png").exists()
    page = report.html.read_text()
    assert "no throughput results: run `attnbench run --suite throughput" in page
    assert "_No throughput results._" in report.markdown.read_text()


@pytest.mark.slow
def test_report_command_prints_the_path_of_report_html(tmp_path, monkeypatch, capsys):
    run = small_run(tmp_path / "run", forward_rows())
    code, out, _ = fx.run_cli(monkeypatch, capsys, "report", run)
    assert code == 0
    assert Path(out.strip().splitlines()[-1]) == run / "report" / "report.html"
    assert (run / "report" / "report.html").is_file() and (run / "report" / "summary.md").is_file()


@pytest.mark.parametrize("args", [["report", "/nonexistent/results"],
                                  ["report", "RUN", "--compare", "/nonexistent/baseline"],
                                  ["report", "EMPTY"], ["report", "RUN", "--threshold", "5"]])
def test_report_command_bad_input_is_one_line_and_exit_code_2(args, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty" / "records").mkdir(parents=True)
    run = small_run(tmp_path / "run", forward_rows(("vanilla",))[:1])
    args = [{"RUN": run, "EMPTY": tmp_path / "empty"}.get(a, a) for a in args]
    code, _, err = fx.run_cli(monkeypatch, capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("attnbench: error: ")


# --- honest about what the results can say ---------------------------------------------------------

@pytest.mark.slow
def test_a_quick_profile_run_is_labelled_a_smoke_run_everywhere(tmp_path):
    from harness.report import build

    rows = [{**r, "profile": "quick"} for r in forward_rows() + fx.accuracy_rows()]
    report = build([small_run(tmp_path / "run", rows)])
    assert report.findings.smoke == {"throughput": ["quick profile"], "exactness": ["quick profile"],
                                     "learned": ["quick profile"]}  # the accuracy rows have two seeds
    sentence = ("Smoke run (throughput: quick profile; exactness: quick profile; learned tasks: quick "
                "profile): it shows that the pipeline works, not which architecture to choose.")
    assert f'<p class="smoke"><strong>{sentence}</strong></p>' in report.html.read_text()
    lines = report.markdown.read_text().splitlines()
    assert lines[2] == "### Correctness" and lines[5] == f"> **{sentence}**"  # right after the correctness
    for chart in report.charts:
        svg = (report.html.parent / chart.svg).read_text()
        assert "<!-- smoke run (quick profile): not findings -->" in svg or (
            "smoke run (quick profile): not findings" in svg), chart.name


@pytest.mark.slow
def test_one_seed_labels_the_learned_charts_only(tmp_path):
    from harness.report import build

    rows = forward_rows() + [r for r in fx.accuracy_rows() if r.get("seed", 0) == 0]
    report = build([small_run(tmp_path / "run", rows)])
    assert report.findings.smoke == {"throughput": [], "exactness": [], "learned": ["one seed per model"]}
    labelled = {c.name for c in report.charts
                if "smoke run (one seed per model)" in (report.html.parent / c.svg).read_text()}
    assert labelled == {"accuracy", "pareto"} and {"latency", "exactness"} <= {c.name for c in report.charts}
    assert "Smoke run (learned tasks: one seed per model)" in report.markdown.read_text()


def test_a_sweep_whose_later_seeds_train_at_its_chosen_rate_is_not_one_seed(tmp_path):
    """Seed 0 trains at every rate; seeds 1 and 2 at the one it chose (`lr` empty, `lr_used` set)."""
    from harness.report import build

    first = [r for r in fx.accuracy_rows() if r.get("seed", 0) == 0 and r.get("task") != "exactness"]
    later = [{**r, "case_id": f"{r['case_id']}-s{seed}", "seed": seed, "lr": None, "lr_used": r["lr"]}
             for r in first for seed in (1, 2)]
    report = build([small_run(tmp_path / "run", first + later)])
    assert report.findings.smoke["learned"] == []


def test_a_run_with_two_seeds_and_no_profile_is_not_labelled(findings):
    assert findings.smoke_sentence() is None
    assert "Smoke run" not in fx.built_report().html.read_text()


def two_variant_rows(lengths, oom_at=None):
    """vanilla slower than linear from the second length on; vanilla out of memory at `oom_at`."""
    rows = []
    for r in forward_rows(("vanilla", "linear"), max_n=16384):
        if r["seq_len"] not in lengths:
            continue
        r = dict(r)
        if r["variant"] == "vanilla":
            r.update(status="ok", reason="", latency_ms=1e-3 * r["seq_len"])
            if oom_at is not None and r["seq_len"] >= oom_at:
                r.update(status="oom", reason="OutOfMemoryError", latency_ms=None)
        rows.append(r)
    return rows


@pytest.mark.parametrize("lengths, crossover", [((1024, 4096), False), ((1024, 4096, 8192), True)])
def test_a_crossover_needs_three_lengths(tmp_path, lengths, crossover):
    found = Findings.compute(data.Results.load(small_run(tmp_path / "run", two_variant_rows(lengths))).rows)
    assert [(c.faster, c.slower, c.faster_from) for c in found.crossings] == (
        [("linear", "vanilla", 4096)] if crossover else [])


def test_largest_feasible_n_only_where_a_sweep_of_three_lengths_hit_a_size_limit(tmp_path):
    def largest(lengths, oom_at):
        rows = two_variant_rows(lengths, oom_at)
        found = Findings.compute(data.Results.load(small_run(tmp_path / f"{lengths}-{oom_at}", rows)).rows)
        table = found.largest.set_index("variant")
        return table.loc["vanilla", "largest_feasible_n"], table.loc["vanilla", "first_failure"]

    assert largest((1024, 2048, 4096, 8192), 8192) == (4096, "oom at N = 8192")
    n, why = largest((1024, 2048, 4096, 8192), None)
    assert np.isnan(n) and why == "no failure up to N = 8192"  # nothing failed: no limit found
    n, why = largest((1024, 4096), 4096)
    assert np.isnan(n) and why == "oom at N = 4096; 2 lengths, too few to say"


def test_length_ticks_are_the_measured_lengths(findings):
    for ax in panels(charts.latency_chart(findings.points)).values():
        assert [int(t) for t in ax.get_xticks()] == list(fx.SEQ_LENS)
    rows = [r for r in forward_rows() if r["seq_len"] != 2048]  # a gap in the sweep: no tick there
    found = Findings.compute(data.Results.load(small_run(Path(fx._scratch()) / "gap", rows)).rows)
    ax = panels(charts.latency_chart(found.points))[FWD]
    assert [int(t) for t in ax.get_xticks()] == [1024, 4096]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1k", "4k"]


def test_accuracy_legend_lists_each_variant_once(findings):
    fig = charts.accuracy_chart(data.task_accuracy(findings.best))
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    entries = [t.get_text() for legend in legends for t in legend.get_texts()]
    assert entries == sorted(fx.LEARNED)


def test_exactness_chart_says_na_where_a_pair_was_not_measured(tmp_path):
    rows = [r for r in fx.accuracy_rows() if r["task"] == "exactness"
            and not (r["variant"] == "linear" and r["input_kind"] == "peaked")]
    exact = data.exactness(data.Results.load(small_run(tmp_path / "run", rows)).rows)
    ax = charts.exactness_chart(exact).axes[0]
    notes = [(t.get_text(), t.get_position()[0]) for t in ax.texts]
    assert [n for n, _ in notes] == ["n/a"]
    variants = [t.get_text() for t in ax.get_xticklabels()]
    # Where linear's peaked bar would be: the second of its two bars (input kinds peaked, random).
    linear_random = [p for c in ax.containers for p in c.patches if p.get_height() > 0
                     and abs(p.get_x() + p.get_width() / 2 - variants.index("linear")) < 0.5]
    assert len(linear_random) == 1
    missing_x = variants.index("linear") - 0.2
    assert notes[0][1] == pytest.approx(missing_x)
    assert linear_random[0].get_x() + linear_random[0].get_width() / 2 == pytest.approx(missing_x + 0.4)


def test_pareto_labels_overlap_no_label_and_no_other_point(findings):
    fig = charts.pareto_chart(findings.pareto)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    assert set(boxes) == set(findings.pareto.points.variant)
    for a, b in itertools.combinations(boxes, 2):
        assert not boxes[a].overlaps(boxes[b]), (a, b)
    points = {p.get_gid().split(":", 1)[1]: ax.transData.transform(p.get_offsets()[0])
              for p in ax.collections if (p.get_gid() or "").startswith("point:")}
    for name, box in boxes.items():
        for other, (x, y) in points.items():
            assert other == name or not box.contains(x, y), (name, other)


@pytest.mark.slow
def test_summary_table_leads_with_the_baseline_and_fills_every_column(tmp_path):
    from harness.report import build

    rows = [{**r, "variant": v} for r in forward_rows(("flash-sdpa",)) for v in
            ("flash-sdpa", "linear", "longformer", "mamba", "performer", "sparse-bigbird", "sparse-strided",
             "longformer-banded", "flash-cudnn", "flash-efficient", "flash-xformers", "longformer-xformers")]
    rows = [{**r, "case_id": fx.case_id({**r, "k": 1})} for r in rows] + forward_rows(("vanilla",))
    text = build([small_run(tmp_path / "run", rows)]).markdown.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    table = lines[1:14]  # the rows of the first table
    assert table[0].startswith("| vanilla | ") and len(table) == 13 and "more rows" not in text
    # time per sequence: 1e-3 N ms at batch 16384 / N is N^2 per sequence, exactly
    assert "| vanilla |  | no failure up to N = 4096 | 2.00 [2.00, 2.00] |" in text
    for line in table:
        assert all(cell.strip() for cell in line.strip("|").split("|")[2:]), line  # then, exponent


def test_the_summary_leads_with_the_row_flagged_baseline_and_names_defaulted_models(tmp_path):
    """The order follows the rows' `baseline` flag, not a name; variants whose rows say they took the
    planners' default models are named in the summary and the report."""
    from harness.report import build

    rows = [{**r, "variant": v, "baseline": v == "linear", "default_models": "cost, memory" * (v == "plug")}
            for r in forward_rows(("flash-sdpa",)) for v in ("flash-sdpa", "linear", "plug", "vanilla")]
    rows = [{**r, "case_id": fx.case_id({**r, "k": 1})} for r in rows]
    report = build([small_run(tmp_path / "run", rows)])
    text = report.markdown.read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert [line.split("|")[1].strip() for line in table[1:5]] == ["linear", "flash-sdpa", "plug", "vanilla"]
    assert "take the stated defaults (harness.costs): plug (cost, memory)." in text
    assert "plug (cost, memory)" in report.html.read_text()
    # Rows written before the flags were recorded: the registry's baseline (vanilla) leads, no sentence.
    old = [{k: x for k, x in r.items() if k not in ("baseline", "default_models")} for r in rows]
    text = build([small_run(tmp_path / "old", old)]).markdown.read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert [line.split("|")[1].strip() for line in table[1:5]] == ["vanilla", "flash-sdpa", "linear", "plug"]
    assert "stated defaults" not in text


@pytest.mark.parametrize("n", [3, 10, 17, 20, 21, 40])
def test_every_variant_gets_its_own_colour_and_line_style(n):
    """Spread over 5 families (a family holds up to 16 colour and line-style slots)."""
    colors = charts.palette({f"family{i % 5}-{i}": f"family{i % 5}" for i in range(n)})
    assert len({(c, colors.linestyle[name]) for name, c in colors.items()}) == n
