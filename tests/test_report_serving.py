"""The report's product charts from a small run written through the real results store: decode state
against KV heads (grouped-query attention), the serving profile (at a model preset: x its layers), the
memory model's prediction beside the measured peak; and each left out, with its reason, when its rows are
missing.

Laws of the rows (per sequence, one layer): vanilla's KV cache 2 x kv_heads x N x 64 x 4 bytes; linear's
state kv_heads x 64 x 65 x 4 bytes; mamba (no KV heads) 10 KiB; forward 1e-3 N ms per prompt; a decode
step 1e-5 N ms per sequence; the predicted peak 0.8 x the measured one.
"""

import numpy as np
import pytest

from harness.report import charts, render
from harness.report.analysis import Findings
from harness.report.data import GIB, Results
from tests import test_report_fixtures as fx
from tests.test_report import lines, panels

HEADS, HEAD_DIM, TOKENS, LENGTHS = 8, 64, 4096, (256, 1024, 4096)
FAMILY = {"vanilla": "vanilla", "linear": "linear", "mamba": "mamba"}


def state_bytes(variant: str, n: int, kv: int) -> float:
    return {"vanilla": 2 * kv * n * HEAD_DIM * 4, "linear": kv * HEAD_DIM * (HEAD_DIM + 1) * 4,
            "mamba": 10240}[variant]


def tp_row(variant, mode, n, kv=None, level="kernel", model=None, layers=None, **metrics):
    batch = max(1, TOKENS // n)
    heads, head_dim = (32, 128) if model else (HEADS, HEAD_DIM)
    config = {"suite": "throughput", "kind": "sweep", "variant": variant, "device": "cuda",
              "dtype": "bfloat16", "params": "{}", "mode": mode, "level": level, "seq_len": n, "batch": batch,
              "n_heads": heads, "head_dim": head_dim, "causal": True, "total_tokens": TOKENS, "kv_heads": kv,
              "model": model, "model_layers": layers}
    per_call = (1e-3 if mode == "fwd" else 1e-5) * n * batch
    base = fx.row({**config, "variant": "vanilla"})  # the fixture's environment columns
    return {**base, **config, "case_id": fx.case_id(config), "family": FAMILY[variant],
            "exact": variant == "vanilla", "baseline": variant == "vanilla", "latency_ms": per_call,
            "tokens_per_s": batch * n / per_call * 1e3, **metrics}


def gqa_rows(level="layer", model=None, layers=None) -> list[dict]:
    rows = []
    for n in LENGTHS:
        for variant in ("vanilla", "linear", "mamba"):
            for kv in ((None, 4, 1) if variant != "mamba" else (None,)):
                heads = kv or HEADS
                state = state_bytes(variant, n, heads)
                column = "kv_cache_bytes" if variant == "vanilla" else "state_bytes"
                rows.append(tp_row(variant, "decode", n, kv, level, model, layers,
                                   decode_state_bytes_per_seq=state, **{column: state}))
            rows.append(tp_row(variant, "fwd", n, None, level, model, layers))
    return rows


def memory_rows() -> list[dict]:
    rows = []
    for n in LENGTHS:
        measured = 2.0 * n * 2**20
        rows.append(tp_row("vanilla", "fwd", n, mem_alloc_peak_bytes=measured,
                           mem_predicted_bytes=0.8 * measured))
        rows.append(tp_row("mamba", "fwd", n, mem_alloc_peak_bytes=2**30))  # no model: measured alone
    return rows


def points(tmp_path, rows):
    return Findings.compute(Results.load(fx.write_run(tmp_path / "run", rows)).rows).points


def test_the_gqa_chart_draws_state_against_kv_heads_per_series(tmp_path):
    fig = charts.gqa_memory_chart(points(tmp_path, gqa_rows()))
    (ax,) = panels(fig).values()
    assert "N = 4k" in ax.get_title() and "layer level" in ax.get_title()
    drawn = lines(ax, "series")
    assert set(drawn) == {"vanilla", "linear", "mamba"}
    np.testing.assert_array_equal(drawn["vanilla"].get_xdata(), [1, 4, 8])
    for variant in ("vanilla", "linear"):
        expected = [state_bytes(variant, 4096, kv) for kv in (1, 4, 8)]
        np.testing.assert_allclose(drawn[variant].get_ydata(), expected)
    assert list(drawn["mamba"].get_xdata()) == [8]  # no KV heads: one point
    assert drawn["vanilla"].get_color() != drawn["linear"].get_color()  # a hue per family


def test_the_gqa_chart_is_left_out_with_its_reason_without_several_kv_heads(tmp_path):
    rows = [r for r in gqa_rows() if r["kv_heads"] is None]
    left = charts.gqa_memory_chart(points(tmp_path, rows))
    assert isinstance(left, charts.LeftOut) and "more than one KV head count" in left.reason
    forward_only = charts.gqa_memory_chart(points(tmp_path / "b", [r for r in rows if r["mode"] == "fwd"]))
    assert isinstance(forward_only, charts.LeftOut) and forward_only.reason.startswith("no decode rows")


def test_the_serving_profile_multiplies_a_models_rows_by_its_layers_and_says_so(tmp_path):
    rows = gqa_rows() + gqa_rows(model="8b", layers=32)
    fig = charts.serving_profile_chart(points(tmp_path, rows))
    titles = panels(fig)
    assert len(titles) == 6  # TTFT, decode rate, state: for the grid's rows and for model 8b's
    ttft = next(ax for t, ax in titles.items() if t.startswith("time to first token") and "model 8b" in t)
    assert "x 32 layers" in ttft.get_title()
    line = {l.get_gid(): l for l in ttft.lines}["series:vanilla:ttft_ms"]
    np.testing.assert_allclose(line.get_ydata(), [32 * 1e-3 * n for n in LENGTHS])  # per prompt x layers
    rate = next(ax for t, ax in titles.items() if t.startswith("decode tokens/s") and "model 8b" in t)
    rate_line = {l.get_gid(): l for l in rate.lines}["series:vanilla:tokens_per_s_per_user"]
    np.testing.assert_allclose(rate_line.get_ydata(), [1e3 / (32 * 1e-5 * n) for n in LENGTHS])
    grid = next(ax for t, ax in titles.items() if t.startswith("memory per sequence") and "one layer" in t)
    state = {l.get_gid(): l for l in grid.lines}["series:mamba:state_bytes"]
    np.testing.assert_allclose(state.get_ydata(), [10240] * 3)  # one layer: not multiplied


def test_the_serving_profile_is_left_out_with_its_reason_without_decode_rows(tmp_path):
    forward = [r for r in gqa_rows() if r["mode"] == "fwd"]
    left = charts.serving_profile_chart(points(tmp_path, forward))
    assert isinstance(left, charts.LeftOut) and "forward and decode rows" in left.reason


def test_the_memory_chart_draws_the_prediction_beside_the_measurement(tmp_path):
    fig = charts.memory_chart(points(tmp_path, memory_rows()))
    (ax,) = panels(fig).values()
    measured, predicted = lines(ax, "series"), lines(ax, "predicted")
    assert set(measured) == {"vanilla", "mamba"} and set(predicted) == {"vanilla"}  # mamba has no model
    np.testing.assert_allclose(measured["vanilla"].get_ydata(), [2.0 * n * 2**20 / GIB for n in LENGTHS])
    np.testing.assert_allclose(predicted["vanilla"].get_ydata(), [1.6 * n * 2**20 / GIB for n in LENGTHS])
    assert predicted["vanilla"].get_color() == measured["vanilla"].get_color()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert charts.PREDICTED_LABEL in legend and "measured and predicted" in fig.get_suptitle()


def test_the_memory_chart_without_measured_peaks_is_left_out_not_drawn_from_predictions(tmp_path):
    rows = [{**r, "mem_alloc_peak_bytes": None} for r in memory_rows()]
    left = charts.memory_chart(points(tmp_path, rows))
    assert isinstance(left, charts.LeftOut) and "measured peak" in left.reason


@pytest.mark.slow
def test_the_report_prints_why_a_chart_is_left_out_and_puts_the_profile_in_serving(tmp_path):
    run = fx.write_run(tmp_path / "run", [r for r in gqa_rows() if r["kv_heads"] is None])
    built = render.build([run], tmp_path / "report")
    page = built.html.read_text()
    assert set(built.left_out) == {"gqa_memory", "memory"}
    assert "Decode state vs KV heads: left out, no decode rows at more than one KV head count" in page
    serving = page[page.index('<section id="serving">'):]
    assert serving.index('id="chart-serving_profile"') < serving.index("</section>")
    assert (tmp_path / "report" / "charts" / "serving_profile.svg").is_file()
