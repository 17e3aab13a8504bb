"""The throughput parts of the report that judge a measurement: scaling fits and crossovers with their
intervals, noisy points, the decode state, the timer checks, the memory frontier, the per-precision peaks,
and what `recommend` says when a ranking rests on noise.

Rows are synthetic (laws known by construction), written through the real results store.
"""

import numpy as np
import pandas as pd
import pytest

from harness.report import analysis, build, charts, data
from harness.report import recommend as rec
from harness.report.analysis import Findings
from tests import test_report_fixtures as fx

TOKENS = 16384
LENGTHS = (256, 1024, 2048, 4096, 8192, 16384)


def sweep_row(variant, n, latency_ms, mode="fwd", median_ci=0.005, noisy=False, **metrics):
    batch = max(1, TOKENS // n)
    config = {"suite": "throughput", "variant": variant, "device": "cpu", "dtype": "float32", "params": "{}",
              "mode": mode, "level": "kernel", "batch": batch, "seq_len": n, "n_heads": 1, "head_dim": 64,
              "causal": True, "total_tokens": TOKENS, "kind": "sweep"}
    return fx.row(config, latency_ms=latency_ms, latency_ms_p20=latency_ms, latency_ms_p80=latency_ms,
                  tokens_per_s=batch * n / latency_ms * 1e3, rounds=7, spread_iqr=2 * median_ci,
                  median_ci=median_ci, noisy=noisy, peak_precision="float32", peak_matmul_tflops=0.3,
                  **metrics)


def per_call(per_sequence_ms, n):
    return per_sequence_ms * max(1, TOKENS // n)


def frame(rows):
    return pd.DataFrame(rows)


def test_exponents_of_time_per_sequence_come_with_an_interval_that_holds_the_law():
    rng = np.random.default_rng(0)
    rows = [sweep_row("vanilla", n, per_call(2e-6 * n**2, n) * rng.uniform(0.97, 1.03)) for n in LENGTHS]
    rows += [sweep_row("linear", n, per_call(3e-3 * n, n) * rng.uniform(0.97, 1.03), noisy=n == 8192)
             for n in LENGTHS]
    fits = Findings.compute(frame(rows)).fits.set_index("variant")
    for variant, k in (("vanilla", 2.0), ("linear", 1.0)):
        fit = fits.loc[variant]
        assert fit.k_low < k < fit.k_high and fit.k_high - fit.k_low < 0.3, fit
        assert fit.fit_from_n == analysis.FIT_FROM_N and fit.fit_to_n == 16384 and fit.points == 4
    assert fits.loc["linear", "noisy_points"] == 1 and fits.loc["vanilla", "noisy_points"] == 0


def test_fits_read_the_batch_1_lengths_where_a_shrinking_batch_would_bend_the_law():
    """A linear-time kernel whose threads idle at batch 1 (2x per token there, as the 2-core CPU's scan
    did): across the batch change the fit reads k ~ 1.3; on the batch-1 lengths alone it reads 1."""
    def linear_time(n):
        return per_call(1e-3 * n, n) * (2.0 if n >= TOKENS else 1.0)

    mixed = [sweep_row("linear", n, linear_time(n)) for n in LENGTHS]
    fit = Findings.compute(frame(mixed)).fits.set_index("variant").loc["linear"]
    assert fit.fit_from_n == analysis.FIT_FROM_N and fit.exponent > 1.2
    single = mixed + [sweep_row("linear", n, linear_time(n)) for n in (32768, 65536, 131072)]
    fit = Findings.compute(frame(single)).fits.set_index("variant").loc["linear"]
    assert (fit.fit_from_n, fit.fit_to_n, fit.points) == (16384, 131072, 4)
    assert fit.exponent == pytest.approx(1.0)


def test_an_exact_law_has_a_zero_width_interval_and_two_lengths_give_no_fit():
    k, low, high, r2 = analysis.fit_with_interval([2048, 4096, 8192], [n**2 for n in (2048, 4096, 8192)])
    assert k == pytest.approx(2) and low == pytest.approx(2) and high == pytest.approx(2) and r2 == 1
    assert analysis.fit_with_interval([2048, 4096], [1, 4]) is None
    assert analysis.t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert analysis.t_quantile(0.975, 10) == pytest.approx(2.228, abs=1e-3)


def test_a_crossover_is_placed_between_measurably_slower_and_measurably_faster():
    # linear: 4 ms per call; flash: 0.001 N ms per call: equal at N = 4000.
    rows = [sweep_row("linear", n, 4.0) for n in LENGTHS] + [sweep_row("flash-sdpa", n, 1e-3 * n)
                                                                for n in LENGTHS]
    (crossing,) = Findings.compute(frame(rows)).crossings
    assert (crossing.faster, crossing.slower) == ("linear", "flash-sdpa")
    assert (crossing.slower_at, crossing.faster_from) == (2048, 4096) and crossing.within_noise == ()
    assert crossing.estimate == pytest.approx(4000, rel=0.01)  # log-linear interpolation of the ratio
    assert "from N ~ 4000 (slower at 2048, faster from 4096)" in crossing.sentence


def test_lengths_within_noise_widen_the_crossover_and_noise_everywhere_gives_none():
    # 4% apart at 4096 with medians known to +-3%: neither is measurably faster there.
    rows = [sweep_row("linear", n, 4.0, median_ci=0.03) for n in LENGTHS]
    rows += [sweep_row("flash-sdpa", n, {4096: 4.16}.get(n, 1e-3 * n), median_ci=0.03) for n in LENGTHS]
    (crossing,) = Findings.compute(frame(rows)).crossings
    assert (crossing.slower_at, crossing.faster_from, crossing.within_noise) == (2048, 8192, (4096,))
    # The medians flip (flash 10% slower, then 10% faster) inside +-20% intervals: no crossover.
    noisy = [sweep_row("linear", n, 4.0, median_ci=0.2) for n in LENGTHS]
    noisy += [sweep_row("flash-sdpa", n, 4.4 if n < 4096 else 3.6, median_ci=0.2) for n in LENGTHS]
    assert Findings.compute(frame(noisy)).crossings == []


def test_noisy_points_are_ringed_on_the_latency_chart():
    rows = [sweep_row("linear", n, 4.0, noisy=n in (1024, 8192)) for n in LENGTHS]
    fig = charts.latency_chart(Findings.compute(frame(rows)).points)
    ax = next(a for a in fig.axes if a.get_visible() and a.get_title())
    (ring,) = [line for line in ax.lines if line.get_gid() == "noisy:linear"]
    assert list(ring.get_xdata()) == [1024, 8192]
    assert charts.NOISY_LABEL in {t.get_text() for t in fig.legends[0].get_texts()}


def test_decode_state_is_charted_per_sequence_against_the_context():
    rows = [sweep_row("vanilla", n, 1.0, mode="decode", decode_state_bytes=2 * max(1, TOKENS // n) * n * 256,
                      decode_state_bytes_per_seq=2 * n * 256) for n in LENGTHS]
    rows += [sweep_row("linear", n, 1.0, mode="decode", decode_state_bytes_per_seq=16644.0) for n in LENGTHS]
    fig = charts.decode_state_chart(Findings.compute(frame(rows)).points)
    ax = next(a for a in fig.axes if a.get_visible() and a.get_title())
    lines = {line.get_gid(): line for line in ax.lines}
    np.testing.assert_allclose(lines["series:vanilla"].get_ydata(), [512 * n for n in LENGTHS])
    np.testing.assert_allclose(lines["series:linear"].get_ydata(), 16644.0)
    assert ax.get_yscale() == "log"
    assert charts.decode_state_chart(Findings.compute(frame([sweep_row("linear", 256, 1.0)])).points) is None


def fidelity_row(variant, n, ours, theirs):
    config = {"suite": "throughput", "variant": variant, "device": "cpu", "dtype": "float32", "params": "{}",
              "mode": "fwd", "level": "kernel", "batch": max(1, TOKENS // n), "seq_len": n, "n_heads": 1,
              "head_dim": 64, "causal": True, "total_tokens": TOKENS, "kind": "fidelity"}
    return fx.row(config, latency_ms=ours, reference_latency_ms=theirs, fidelity_ratio=ours / theirs,
                  reference_timer="torch.utils.benchmark.Timer.blocked_autorange", rounds=6)


def frontier_row(variant, n, status, reason="", peak=None, predicted_n=10_000):
    config = {"suite": "throughput", "variant": variant, "device": "cpu", "dtype": "float32", "params": "{}",
              "mode": "fwd", "level": "kernel", "batch": 1, "seq_len": n, "n_heads": 16, "head_dim": 64,
              "causal": True, "total_tokens": n, "kind": "frontier", "memory_cap_mb": 20 * 1024}
    return fx.row(config, status, reason, latency_ms=1.0 if status == "ok" else None,
                  mem_tracked_peak_bytes=peak, predicted_peak_bytes=None if peak is None else 1.1 * peak,
                  predicted_max_n=predicted_n)


@pytest.mark.slow
def test_timer_checks_and_the_frontier_stay_out_of_the_curves_and_into_their_tables(tmp_path):
    rows = [sweep_row("vanilla", n, per_call(2e-6 * n**2, n),
                      others_cpu_share=0.4 if n == LENGTHS[-1] else 0.0) for n in LENGTHS]
    rows += [fidelity_row("vanilla", 2048, 10.2, 10.0), fidelity_row("flash-sdpa", 1024, 5.0, 5.1)]
    rows += [frontier_row("vanilla", 8192, "ok", peak=15 * 2**30),
             frontier_row("vanilla", 9216, "ok", peak=18 * 2**30),
             frontier_row("vanilla", 10240, "oom", "MemoryError: out of memory under a cap of 20480 MiB"),
             frontier_row("vanilla", 16384, "oom", "MemoryError: out of memory")]
    run = fx.write_run(tmp_path / "run", rows, device_name="Intel(R) Xeon(R) Processor")
    results = data.Results.load(run)
    points = data.points(data.throughput(results.rows))
    assert len(points) == len(LENGTHS)  # one per sweep length: the other kinds are not points
    checks = data.fidelity(results.rows).set_index("variant")
    assert checks.loc["vanilla", "fidelity_ratio"] == pytest.approx(1.02)
    (frontier,) = data.frontier(results.rows).itertuples()
    assert (frontier.largest_n, frontier.next_n, frontier.next_status) == (9216, 10240, "oom")
    assert frontier.peak_gib_at_largest == pytest.approx(18) and frontier.predicted_max_n == 10_000
    assert frontier.memory_cap_gib == pytest.approx(20)
    page = build([run], tmp_path / "report").html.read_text()
    for text in ("Timer fidelity", "blocked_autorange", "Memory frontier", "MemoryError: out of memory under",
                 "matmul peak of its own precision", "threads",
                 f"other processes used up to 40% of the CPU while a case was timed (1 of {len(LENGTHS)}"):
        assert text in page, text


def test_each_precision_has_its_own_peak():
    rows = [sweep_row("vanilla", 1024, 1.0), {**sweep_row("vanilla", 2048, 1.0), "dtype": "bfloat16",
                                              "peak_precision": "bfloat16", "peak_matmul_tflops": 2.5}]
    peaks = data.matmul_peaks(frame(rows)).set_index("precision").peak_tflops
    assert peaks.to_dict() == {"bfloat16": 2.5, "float32": 0.3}


def ranked(rows, **request):
    return rec.recommend(frame(rows), rec.Request(seq_len=4096, causal=True, **request))


def test_recommend_says_when_the_ranking_rests_on_noise():
    clear = ranked([sweep_row("linear", 4096, 4.0), sweep_row("flash-sdpa", 4096, 8.0)])
    assert [r.variant for r in clear.ranked] == ["linear", "flash-sdpa"]
    assert not any("noise" in n for n in clear.notes)
    close = ranked([sweep_row("linear", 4096, 4.0, median_ci=0.03), sweep_row("flash-sdpa", 4096, 4.1)])
    assert any("within noise of each other" in n and "linear and flash-sdpa" in n for n in close.notes)
    noisy = ranked([sweep_row("linear", 4096, 4.0, median_ci=0.08, noisy=True),
                    sweep_row("flash-sdpa", 4096, 8.0)])
    (note,) = [n for n in noisy.notes if "rests on noisy" in n]
    assert "linear (+-8%)" in note and "noisy" in rec.render(noisy)
