"""`recommend` on results whose answer is known (tests/test_report_fixtures.py): the ranking, the figures
behind it, why each other variant is out, and which suite to run when the results cannot answer."""


import pytest

from harness.report import recommend as rec
from harness.report.data import Results
from tests import test_report_fixtures as fx

N = 8192


def ask(rows=None, **request):
    return rec.recommend(fx.full_rows() if rows is None else rows, rec.Request(seq_len=N, **request))


@pytest.mark.slow
def test_without_constraints_every_runnable_variant_is_ranked_by_latency():
    answer = ask(causal=True)
    # forward latency at 8192: linear 2.08 < flash 2.55 < bigbird 4.30 < vanilla 8.19 ms
    assert [r.variant for r in answer.ranked] == ["linear", "flash-sdpa", "sparse-bigbird", "vanilla"]
    assert list(answer.eliminated) == ["performer"]
    assert answer.eliminated["performer"][0].startswith("unsupported: performer: bfloat16 kernels")
    flash = answer.ranked[1]
    assert flash.latency_ms == pytest.approx(fx.forward_latency_ms("flash-sdpa", N))
    assert flash.tokens_per_s == pytest.approx(fx.TOTAL_TOKENS / (flash.latency_ms / 1e3))
    assert flash.memory_gib == pytest.approx(1.1 * fx.memory_gib("flash-sdpa", N))  # reserved memory
    assert flash.decode_ms == pytest.approx(0.03 + 2e-6 * N)
    assert flash.accuracy == pytest.approx((0.96 + 0.92 + 1.0) / 3) and flash.exact is True
    assert "bfloat16" in answer.setting and "causal" in answer.setting and "batch 2" in answer.setting


def test_each_eliminated_variant_names_every_constraint_it_fails():
    answer = ask(causal=True, memory_gb=10, latency_ms=3, min_accuracy=0.6)
    assert [r.variant for r in answer.ranked] == ["flash-sdpa"]
    out = answer.eliminated
    assert out["vanilla"] == ["peak memory 17.6 GiB > 10 GiB", "latency 8.19 ms > 3 ms"]
    assert out["sparse-bigbird"] == ["latency 4.3 ms > 3 ms"]
    assert out["linear"] == ["accuracy 0.550 < 0.6 (mqar, passkey, selective_copy)"]
    assert len(out["performer"]) == 1 and out["performer"][0].startswith("unsupported")
    text = rec.render(answer)
    assert "  1. flash-sdpa" in text and "Eliminated:" in text
    assert "peak memory <= 10 GiB; latency <= 3 ms; accuracy >= 0.6" in text


def test_train_mode_uses_forward_backward_rows():
    answer = ask(causal=True, mode="train")
    assert [r.variant for r in answer.ranked] == ["linear", "flash-sdpa"]
    assert answer.ranked[0].latency_ms == pytest.approx(3 * fx.forward_latency_ms("linear", N))
    assert answer.eliminated["vanilla"][0].startswith("out of memory at N = 8192")
    assert answer.eliminated["sparse-bigbird"] == [
        "unsupported: backward not implemented for the block-sparse kernel"]
    assert all(r.decode_ms is None for r in answer.ranked)


def test_non_causal_and_dtype_select_their_own_rows():
    non_causal = ask(causal=False)
    flash = next(r for r in non_causal.ranked if r.variant == "flash-sdpa")
    assert flash.latency_ms == pytest.approx(fx.forward_latency_ms("flash-sdpa", N, causal=False))
    fp32 = ask(causal=True, dtype="float32")
    assert [r.variant for r in fp32.ranked] == ["linear", "flash-sdpa", "vanilla"]
    assert fp32.eliminated["sparse-bigbird"][0].startswith("not measured at N = 8192")


def test_missing_length_or_dtype_says_to_run_the_throughput_suite():
    with pytest.raises(rec.MissingData, match=r"at N = 5000 \(measured: 1024, 2048, 4096, 8192, 16384\).*"
                                              r"--suite throughput -n 5000"):
        rec.recommend(fx.full_rows(), rec.Request(seq_len=5000, causal=True))
    with pytest.raises(rec.MissingData, match="--suite throughput.*--dtype float16"):
        ask(causal=True, dtype="float16")


def test_missing_suite_for_a_constraint(tmp_path):
    only_throughput = Results.load(fx.write_run(tmp_path / "tp", [
        r for r in fx.throughput_rows() if r["mode"] == "fwd" and r["seq_len"] == N])).rows
    assert ask(only_throughput, causal=True).ranked  # no accuracy constraint: still answers
    with pytest.raises(rec.MissingData, match="--min-accuracy needs accuracy results: run `attnbench run "
                                              "--suite accuracy"):
        ask(only_throughput, causal=True, min_accuracy=0.5)
    only_accuracy = Results.load(fx.write_run(tmp_path / "acc", fx.accuracy_rows()[:12])).rows
    with pytest.raises(rec.MissingData, match="no throughput results: run `attnbench run --suite throughput"):
        ask(only_accuracy, causal=True)


def test_memory_constraint_on_a_run_without_gpu_memory(tmp_path):
    cpu_rows = [{**r, "mem_alloc_peak_bytes": None, "mem_reserved_peak_bytes": None}
                for r in fx.throughput_rows() if r["mode"] == "fwd" and r["seq_len"] == N]
    rows = Results.load(fx.write_run(tmp_path / "cpu", cpu_rows)).rows
    with pytest.raises(rec.MissingData, match="--memory-gb needs peak GPU memory.*--device cuda"):
        ask(rows, causal=True, memory_gb=10)


def test_results_of_several_devices_are_refused(tmp_path):
    rows = [r for r in fx.throughput_rows() if r["mode"] == "fwd" and r["seq_len"] == N]
    both = Results.load(fx.write_run(tmp_path / "a", rows),
                        fx.write_run(tmp_path / "b", rows, device_name="NVIDIA H200")).rows
    with pytest.raises(ValueError, match="several devices"):
        ask(both, causal=True)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Causal bf16 forward rows and the accuracy suite: enough for the command, quick to load."""
    rows = [r for r in fx.throughput_rows()
            if r["mode"] == "fwd" and r["dtype"] == "bfloat16" and r["causal"]]
    return fx.write_run(tmp_path_factory.mktemp("cli") / "run", rows + fx.accuracy_rows())


def test_recommend_command(cli_run, monkeypatch, capsys):
    code, out, _ = fx.run_cli(monkeypatch, capsys, "recommend", cli_run, "--seq-len", N, "--causal",
                           "--memory-gb", 10, "--latency-ms", 3, "--min-accuracy", 0.6, "--dtype", "bf16")
    assert code == 0
    assert "1. flash-sdpa" in out and "peak memory 17.6 GiB > 10 GiB; latency 8.19 ms > 3 ms" in out
    assert "linear          accuracy 0.450 < 0.6 (mqar, selective_copy)" in out


@pytest.mark.parametrize("args", [
    ["/nonexistent/results", "-n", N],
    ["RUN", "-n", 5000, "--causal"],
    ["RUN", "-n", N, "--min-accuracy", 1.5],
    ["RUN", "-n", N, "--mode", "serve"],
    ["RUN", "-n", N, "--dtype", "fp12"],
])
def test_recommend_command_unusable_input_is_one_line_and_exit_code_2(args, cli_run, monkeypatch, capsys):
    args = [cli_run if a == "RUN" else a for a in args]
    code, out, err = fx.run_cli(monkeypatch, capsys, "recommend", *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("attnbench: error: ")


@pytest.mark.slow
def test_a_smoke_run_says_so_in_the_recommendation(tmp_path):
    def advice(run):
        return rec.render(rec.recommend(Results.load(run).rows, rec.Request(seq_len=4096, causal=True)))

    forward = [r for r in fx.throughput_rows() if r["mode"] == "fwd"]
    quick = fx.write_run(tmp_path / "quick", [{**r, "profile": "quick"} for r in forward])
    note = "Note: smoke run (throughput: quick profile): these figures show the pipeline works"
    assert note in advice(quick)
    assert "smoke run" not in advice(fx.write_run(tmp_path / "plain", forward))
