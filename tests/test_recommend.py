"""`recommend` on results whose answer is known (tests/test_report_fixtures.py and small rows made here): the
ranking, the product figures behind it (measured or extrapolated, and said which), why each other variant
is out, accuracy on equal terms, and which suite to run when the results cannot answer."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import entry, intervals
from harness.report import data, equal_terms, recommend_section, serving
from harness.report import recommend as rec
from harness.report.data import GIB, Results
from tests import test_report_fixtures as fx

N = 8192
REFERENCE = Path(__file__).resolve().parent.parent / "results/reference/cpu-standard-intel-xeon-2core"


def ask(rows=None, **request):
    return rec.recommend(fx.full_rows() if rows is None else rows, rec.Request(seq_len=N, **request))


@pytest.mark.slow
def test_without_constraints_every_runnable_variant_is_ranked_by_time_to_first_token():
    answer = ask(causal=True)
    # one prompt's forward at 8192 (batch 2 per call): linear 1.04 < flash 1.27 < bigbird 2.15 < vanilla 4.10
    assert [r.variant for r in answer.ranked] == ["linear", "flash-sdpa", "sparse-bigbird", "vanilla"]
    assert list(answer.eliminated) == ["performer"]
    assert answer.eliminated["performer"][0].startswith("unsupported: performer: bfloat16 kernels")
    flash = answer.ranked[1]
    assert flash.latency_ms == pytest.approx(fx.forward_latency_ms("flash-sdpa", N) / 2)
    assert flash.decode_ms == pytest.approx(0.03 + 2e-6 * N)
    assert answer.serving["flash-sdpa"].prefill_ms.source == f"measured at N = {N}"
    # every ranked variant ran mqar, passkey and selective_copy: the summary is over all three
    assert flash.accuracy == pytest.approx((0.96 + 0.92 + 1.0) / 3) and flash.exact is True
    assert answer.accuracy.common == ["mqar", "passkey", "selective_copy"]
    assert "bfloat16" in answer.setting and "causal" in answer.setting and "16 heads x 64" in answer.setting


def test_each_eliminated_variant_names_every_constraint_it_fails():
    answer = ask(causal=True, ttft_ms=2, tokens_per_s_per_user=10_000, min_accuracy=0.6)
    assert [r.variant for r in answer.ranked] == ["flash-sdpa"]
    out = answer.eliminated
    # vanilla decodes at 0.05 + 1e-5 N = 0.132 ms a step: 7,580 tokens/s
    assert out["vanilla"] == ["TTFT 4.1 ms > 2 ms", "decode 7,580 tokens/s per user < 10000"]
    assert out["sparse-bigbird"] == ["TTFT 2.15 ms > 2 ms", "decode not measured"]
    assert out["linear"] == ["accuracy 0.550 < 0.6 (over mqar, passkey, selective_copy)"]
    assert len(out["performer"]) == 1 and out["performer"][0].startswith("unsupported")
    text = rec.render(answer)
    assert "TTFT <= 2 ms; decode >= 10000 tokens/s per user; accuracy >= 0.6" in text
    assert "│ 1    │ flash-sdpa" in text


def test_train_mode_uses_forward_backward_rows():
    answer = ask(causal=True, mode="train")
    assert [r.variant for r in answer.ranked] == ["linear", "flash-sdpa"]
    assert answer.ranked[0].latency_ms == pytest.approx(3 * fx.forward_latency_ms("linear", N))
    assert answer.eliminated["vanilla"][0].startswith("out of memory at N = 8192")
    assert answer.eliminated["sparse-bigbird"] == [
        "unsupported: backward not implemented for the block-sparse kernel"]
    assert all(r.decode_ms is None for r in answer.ranked)


def test_a_context_between_measured_lengths_is_interpolated_and_says_so():
    answer = rec.recommend(fx.full_rows(), rec.Request(seq_len=5000, causal=True))
    flash = answer.serving["flash-sdpa"].prefill_ms
    assert flash.source.startswith("interpolated from N = ") and not flash.measured
    assert "k = " in flash.source and flash.low < flash.value < flash.high
    assert any(line.startswith("flash-sdpa TTFT: interpolated") for line in rec.sources(answer))


def test_missing_dtype_says_to_run_the_throughput_suite():
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


def test_results_of_several_devices_are_refused(tmp_path):
    rows = [r for r in fx.throughput_rows() if r["mode"] == "fwd" and r["seq_len"] == N]
    both = Results.load(fx.write_run(tmp_path / "a", rows),
                        fx.write_run(tmp_path / "b", rows, device_name="NVIDIA H200")).rows
    with pytest.raises(ValueError, match="several devices"):
        ask(both, causal=True)


# --- product figures on small rows whose answer is worked out by hand ------------------------------------

LENGTHS = (1024, 4096, 16384)
HEADS, HEAD_DIM, TOKENS = 4, 64, 16384


def tp_row(variant, mode, n, latency_ms, state=None, device="cuda", **extra):
    """One sweep row: batch = TOKENS // n (constant tokens), `latency_ms` per call."""
    batch = max(1, TOKENS // n) if mode == "fwd" else 1
    return {"case_id": f"{variant}-{mode}-{n}-{extra.get('kv_heads', '')}", "suite": "throughput",
            "kind": "sweep", "variant": variant, "family": variant, "device": device, "device_name": "GPU X",
            "dtype": "float32", "params": "{}", "mode": mode, "level": "kernel", "causal": True, "seq_len": n,
            "batch": batch, "n_heads": HEADS, "head_dim": HEAD_DIM, "total_tokens": TOKENS, "status": "ok",
            "reason": "", "latency_ms": latency_ms * (batch if mode == "fwd" else 1),
            "mem_alloc_peak_bytes": 2**20 * batch if device == "cuda" else None,
            "decode_state_bytes_per_seq": state, "exact": True, **extra}


def kv_cache_bytes(n, kv_heads=HEADS):
    return 2 * kv_heads * n * HEAD_DIM * 4


def product_rows(device="cuda"):
    """`cache`: per prompt 1e-4 N ms, a decode step 1e-5 N ms, a KV cache; `scan`: per prompt 1e-3 N ms, a
    step 0.5 ms, a constant 64 KiB state."""
    rows = []
    for n in LENGTHS:
        rows += [tp_row("cache", "fwd", n, 1e-4 * n, device=device),
                 tp_row("cache", "decode", n, 1e-5 * n, kv_cache_bytes(n), device=device),
                 tp_row("scan", "fwd", n, 1e-3 * n, device=device),
                 tp_row("scan", "decode", n, 0.5, 65536, device=device)]
    return pd.DataFrame(rows)


def serve(rows=None, **product):
    request = rec.Request(seq_len=product.pop("context", 65536), causal=True, **product)
    return rec.recommend(product_rows() if rows is None else rows, request)


def test_figures_beyond_the_measured_lengths_are_extrapolated_with_the_fit_named():
    answer = serve(context=65536)
    cache = answer.serving["cache"]
    assert cache.prefill_ms.value == pytest.approx(1e-4 * 65536, rel=1e-6)  # the law holds exactly: k = 1
    assert cache.prefill_ms.source == "extrapolated from N = 1024-16384 (3 lengths; k = 1.00 [1.00, 1.00])"
    assert cache.state_bytes.value == pytest.approx(kv_cache_bytes(65536), rel=1e-6)
    assert cache.state_kind == "grows with N" and answer.serving["scan"].state_kind == "constant in N"
    assert answer.serving["scan"].state_bytes.value == pytest.approx(65536)
    assert cache.tokens_per_s_per_user.value == pytest.approx(1e3 / (1e-5 * 65536), rel=1e-6)
    assert [r.variant for r in answer.ranked] == ["cache", "scan"]  # 6.6 ms against 66 ms
    at_16k = serve(context=16384).serving["cache"]
    assert at_16k.prefill_ms.measured and at_16k.prefill_ms.low is None


def test_a_fit_interval_is_carried_to_the_context():
    rows = product_rows()
    noisy = rows["mode"].eq("fwd") & rows.variant.eq("cache") & rows.seq_len.eq(4096)
    rows.loc[noisy, "latency_ms"] *= 1.3
    prefill = serve(rows, context=65536).serving["cache"].prefill_ms
    k, k_low, k_high, _ = serving.analysis.fit_with_interval(LENGTHS, [0.1024, 0.4096 * 1.3, 1.6384])
    assert f"k = {k:.2f} [{k_low:.2f}, {k_high:.2f}]" in prefill.source
    assert prefill.low == pytest.approx(1.6384 * 4**k_low)
    assert prefill.high == pytest.approx(1.6384 * 4**k_high)


def test_users_that_fit_and_the_constraint_that_eliminates():
    per_user = kv_cache_bytes(65536)  # 128 MiB at 4 KV heads
    answer = serve(context=65536, users=64, memory_gb=8)
    # the cache: (8 GiB - the prefill peak of one prompt, 1 MiB) / 128 MiB = 63 users, one short of 64
    assert answer.serving["cache"].users_fit == (8 * GIB - 2**20) // per_user == 63
    assert answer.eliminated["cache"] == ["memory: 63 sequences fit in 8 GiB (needs 64)"]
    scan = answer.serving["scan"]
    assert scan.prefill_peak_bytes.value == pytest.approx(2**20)  # constant along N: extrapolated, k = 0
    assert scan.users_fit == (8 * GIB - 2**20) // 65536  # not one fewer for a fit's rounding error
    assert [r.variant for r in answer.ranked] == ["scan"]
    # decode at batch 64: 64 x 0.5 ms a step, 31.25 tokens/s per user
    assert answer.serving["scan"].tokens_per_s_per_user.value == pytest.approx(1e3 / 32)
    slow = serve(context=65536, batch=64, tokens_per_s_per_user=40, ttft_ms=100)
    assert slow.eliminated["scan"] == [f"decode {1e3 / 32:.3g} tokens/s per user < 40"]
    assert slow.eliminated["cache"] == [f"decode {1e3 / (64 * 1e-5 * 65536):.3g} tokens/s per user < 40"]
    ttft = serve(context=65536, ttft_ms=10)
    assert ttft.eliminated["scan"] == ["TTFT 65.5 ms > 10 ms"] and ttft.ranked[0].variant == "cache"


def test_kv_heads_scale_the_cache_unless_rows_measured_them():
    per_user = kv_cache_bytes(65536)
    scaled = serve(context=65536, kv_heads=1, memory_gb=8).serving["cache"]
    assert scaled.state_bytes.value == pytest.approx(per_user / 4, rel=1e-6)
    assert scaled.state_bytes.source.endswith("scaled from 4 to 1 KV heads")
    rows = product_rows()
    gqa = [tp_row("cache", "decode", n, 1e-5 * n, kv_cache_bytes(n, 1) * 1.5, kv_heads=1) for n in LENGTHS]
    measured = serve(pd.concat([rows, pd.DataFrame(gqa)], ignore_index=True), context=16384, kv_heads=1)
    state = measured.serving["cache"].state_bytes
    assert state.source == "measured at N = 16384" and state.value == kv_cache_bytes(16384, 1) * 1.5


def test_kv_cache_and_state_columns_are_read_when_rows_have_them():
    rows = product_rows()
    rows["kv_cache_bytes"] = np.where(rows["mode"].eq("decode") & rows.variant.eq("cache"), 1000.0, np.nan)
    rows["state_bytes"] = np.where(rows["mode"].eq("decode") & rows.variant.eq("cache"), 24.0, np.nan)
    rows["batch"] = 4  # the columns are per sequence already: the batch must not divide them again
    answer = serve(rows, context=16384)
    assert answer.serving["cache"].state_bytes.value == 1024
    assert answer.serving["scan"].state_bytes.value == 65536  # no split: decode_state_bytes_per_seq


def test_layers_multiply_time_and_state():
    one, many = serve(context=16384).serving["cache"], serve(context=16384, layers=32).serving["cache"]
    assert many.prefill_ms.value == pytest.approx(32 * one.prefill_ms.value)
    assert many.state_bytes.value == pytest.approx(32 * one.state_bytes.value)
    assert many.tokens_per_s_per_user.value == pytest.approx(one.tokens_per_s_per_user.value / 32)


def test_a_cpu_run_says_its_memory_figures_are_cpu_memory():
    answer = serve(product_rows(device="cpu"), context=16384, memory_gb=1)
    assert any("CPU-resident memory" in note for note in answer.notes)
    assert answer.serving["scan"].users_fit == GIB // 65536  # no prefill peak recorded: states only
    assert not any("CPU-resident" in note for note in serve(context=16384, memory_gb=1).notes)


def test_the_note_on_missing_prefill_memory_names_only_the_variants_it_concerns():
    rows = product_rows()
    rows.loc[rows.variant.eq("scan"), "mem_alloc_peak_bytes"] = None
    notes = [n for n in serve(rows, context=16384, memory_gb=1).notes if "prefill memory" in n]
    assert len(notes) == 1 and "for scan (" in notes[0] and "cache" not in notes[0]
    assert not any("prefill memory" in n for n in serve(context=16384, memory_gb=1).notes)


def test_too_few_lengths_to_fit_is_said_not_guessed():
    rows = product_rows()
    rows = rows[~(rows.variant.eq("scan") & rows.seq_len.eq(1024))]
    answer = serve(rows, context=65536)
    assert answer.serving["scan"].prefill_ms is None
    assert answer.eliminated["scan"] == ["prefill not measured at N = 65536; 2 length(s) (4096, 16384), "
                                         "too few to fit"]


# --- accuracy on equal terms -------------------------------------------------------------------------------

def learned_row(variant, task, seed, scores, **condition):
    return {"suite": "accuracy", "variant": variant, "task": task, "seed": seed, "status": "ok", "lr": 1e-3,
            "seq_len": condition.pop("seq_len", 64), "accuracy": float(np.mean(scores)),
            "example_accuracy": list(scores), "training_id": f"{variant}-{task}-{seed}-{condition}",
            "device_name": "GPU X", "dtype": "float32", **condition}


def examples(p, seed, n=200):
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def two_task_sets():
    """`wide` ran mqar (0.9) and listops (0.1); `narrow` ran mqar only (0.5), at one of wide's two widths."""
    rows = []
    for seed in range(3):
        rows += [learned_row("wide", "mqar", seed, examples(0.9, seed), d_model=64),
                 learned_row("wide", "mqar", seed, examples(0.2, 10 + seed), d_model=128),
                 learned_row("wide", "listops", seed, examples(0.1, 20 + seed), d_model=64),
                 learned_row("narrow", "mqar", seed, examples(0.5, 30 + seed), d_model=64)]
    return data.best_lr(data.learned(pd.DataFrame(rows)))


def test_two_variants_with_different_task_sets_are_compared_on_the_tasks_both_ran():
    best = two_task_sets()
    # the average over each one's own tasks (and widths) would call them equal: 0.4 against 0.5
    naive = data.quality(best).set_index("variant").accuracy
    assert naive["wide"] == pytest.approx(np.mean([(0.9 + 0.2) / 2, 0.1]), abs=0.05)
    terms = equal_terms.compare(best, ["wide", "narrow"])
    assert terms.common == ["mqar"] and terms.missing == {"narrow": ["listops"]}
    assert terms.conditions == {"listops": 1, "mqar": 1}  # mqar: only the width both ran
    wide, narrow = terms.summary["wide"], terms.summary["narrow"]
    assert wide.mean == pytest.approx(0.9, abs=0.05) and narrow.mean == pytest.approx(0.5, abs=0.06)
    assert wide.low > narrow.high  # far apart: the intervals do not touch
    wide_mqar = [examples(0.9, s) for s in range(3)]
    assert wide == intervals.contrast([(1.0, wide_mqar)])
    one_configuration = terms.per_task["wide", "mqar"]  # one set of seeds: the t-interval of `estimate`
    assert (one_configuration.low, one_configuration.high) == pytest.approx(
        (intervals.estimate(wide_mqar).low, intervals.estimate(wide_mqar).high))
    assert "listops" not in terms.summary_text("wide") and "over mqar" in terms.summary_text("wide")


def test_the_summary_over_several_tasks_is_their_equal_weight_mean_with_its_interval():
    best = two_task_sets()
    terms = equal_terms.compare(best, ["wide"])
    assert terms.common == ["listops", "mqar"]
    # listops at one width; mqar's two widths are two configurations (separate models), a quarter each
    listops = [examples(0.1, 20 + s) for s in range(3)]
    mqar_64, mqar_128 = [examples(0.9, s) for s in range(3)], [examples(0.2, 10 + s) for s in range(3)]
    expected = intervals.contrast([(0.5, listops), (0.25, mqar_128), (0.25, mqar_64)])
    summary = terms.summary["wide"]
    assert summary.mean == pytest.approx(expected.mean)
    assert expected.mean == pytest.approx(0.1 / 2 + (0.9 + 0.2) / 4, abs=0.04)
    assert (summary.low, summary.high) == pytest.approx((expected.low, expected.high))
    assert summary.low < summary.mean < summary.high


def test_min_accuracy_judges_only_the_common_tasks():
    ran = [("cache", "mqar", 0.95), ("cache", "listops", 0.1), ("scan", "mqar", 0.4)]
    best_rows = pd.DataFrame([learned_row(v, t, s, examples(p, 7 * s + i), d_model=64)
                              for i, (v, t, p) in enumerate(ran) for s in range(3)])
    rows = pd.concat([product_rows(), best_rows], ignore_index=True)
    answer = serve(rows, context=16384, min_accuracy=0.6)
    assert [r.variant for r in answer.ranked] == ["cache"]  # 0.95 on mqar, never averaged with listops
    (reason,) = answer.eliminated["scan"]
    assert re.fullmatch(r"accuracy 0\.[34]\d\d < 0\.6 \(over mqar\)", reason), reason
    text = rec.render(answer)
    assert "scan lacks listops: left out of every summary" in text


# --- the command line ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Causal bf16 forward and decode rows and the accuracy suite: enough for the command, quick to load."""
    rows = [r for r in fx.throughput_rows() if r["mode"] in ("fwd", "decode") and r["dtype"] == "bfloat16"
            and r["causal"]]
    return fx.write_run(tmp_path_factory.mktemp("cli") / "run", rows + fx.accuracy_rows())


def light_cli(monkeypatch, capsys, *args):
    """The command through harness.entry, the console script's path (no harness.cli)."""
    return fx.run_cli(monkeypatch, capsys, *args, main=entry.main)


@pytest.mark.parametrize("call", [fx.run_cli, light_cli], ids=["cli", "entry"])
def test_recommend_command(call, cli_run, monkeypatch, capsys):
    code, out, _ = call(monkeypatch, capsys, "recommend", cli_run, "--context", N, "--causal", "--ttft-ms", 2,
                        "--min-accuracy", 0.6, "--dtype", "bf16", "--users", 4)
    assert code == 0
    assert "│ 1    │ flash-sdpa" in out and "TTFT 4.1 ms > 2 ms" in out
    assert "accuracy 0.450 < 0.6 (over mqar, selective_copy)" in out


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/results", "-n", N], "no such directory"),
    (["RUN", "-n", 5000, "--causal", "--mode", "train"], "no forward+backward causal throughput rows"),
    (["RUN", "-n", N, "--min-accuracy", 1.5], "fraction"),
    (["RUN", "-n", N, "--mode", "serve"], "unknown mode 'serve'"),
    (["RUN", "-n", N, "--dtype", "fp12"], "--dtype: unknown dtype 'fp12'"),
    (["RUN", "-n", N, "--users", 8, "--batch", 8], "give --users or --batch, not both"),
    (["RUN", "-n", N, "--users", 0], "--users must be a number greater than 0"),
    (["RUN", "-n", N, "--batch", -2], "--batch must be a number greater than 0"),
    (["RUN", "-n", N, "--kv-heads", 0], "--kv-heads must be"),
    (["RUN", "-n", N, "--layers", 0], "--layers must be"),
    (["RUN", "-n", N, "--ttft-ms", "nan"], "--ttft-ms must be"),
    (["RUN", "-n", N, "--tokens-per-s-per-user", 0], "--tokens-per-s-per-user must be"),
    (["RUN", "-n", N, "--memory-gb", -80], "--memory-gb must be"),
    (["RUN", "--context", 0], "--context must be between 1 and"),
    (["RUN", "-n", N, "--users", "many"], "Invalid value for '--users'"),
    (["RUN", "-n", N, "--latency-ms", 3], "--latency-ms limits one training call"),
    (["RUN", "-n", N, "--mode", "train", "--users", 4], "--users is a serving figure"),
])
@pytest.mark.parametrize("call", [fx.run_cli, light_cli], ids=["cli", "entry"])
def test_recommend_command_unusable_input_is_one_line_and_exit_code_2(call, args, message, cli_run,
                                                                       monkeypatch, capsys):
    args = [cli_run if a == "RUN" else a for a in args]
    code, out, err = call(monkeypatch, capsys, "recommend", *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("attnbench: error: ")
    assert message in err


@pytest.mark.slow
def test_a_smoke_run_says_so_in_the_recommendation(tmp_path):
    def advice(run):
        return rec.render(rec.recommend(Results.load(run).rows, rec.Request(seq_len=4096, causal=True)))

    forward = [r for r in fx.throughput_rows() if r["mode"] == "fwd"]
    quick = fx.write_run(tmp_path / "quick", [{**r, "profile": "quick"} for r in forward])
    note = "Note: smoke run (throughput: quick profile): these figures show the pipeline works"
    assert note in advice(quick)
    assert "smoke run" not in advice(fx.write_run(tmp_path / "plain", forward))


# --- end to end on the committed CPU standard run ----------------------------------------------------------

@pytest.mark.slow
def test_the_product_question_on_the_committed_cpu_run(monkeypatch, capsys):
    code, out, err = light_cli(monkeypatch, capsys, "recommend", REFERENCE, "--context", 32768, "--users", 64,
                               "--memory-gb", 80, "--kv-heads", 8, "--causal")
    assert code == 0, err
    assert "users that fit" in out and "CPU-resident memory" in out
    assert "vanilla TTFT: extrapolated from N = " in out and "scaled from 1 to 8 KV heads" in out
    # the old answer set linear's 0.314 over (listops, mqar) beside vanilla's 0.730 over five tasks
    assert "0.314 (listops, mqar)" not in out
    words = " ".join(out.split())  # notes wrap at the console's width
    assert "the summary is the mean over listops, mqar, the tasks every ranked variant ran" in words
    answer = rec.recommend(Results.load(REFERENCE, columns=rec.COLUMNS).rows,
                           rec.Request(seq_len=32768, causal=True, users=64, memory_gb=80, kv_heads=8))
    terms = answer.accuracy
    with_accuracy = [r for r in answer.ranked if r.accuracy is not None]
    assert with_accuracy and all(r.tasks == ", ".join(terms.common) for r in with_accuracy)
    for variant, tasks in terms.missing.items():  # a missing task is marked, and never in a summary
        assert not set(tasks) & set(terms.common), variant
    assert all(a.users_fit is not None for a in answer.serving.values() if a.state_bytes is not None)


@pytest.mark.slow
def test_recommend_through_the_entry_point_imports_no_torch():
    code = ("import sys; sys.argv = ['attnbench', *sys.argv[1:]]\n"
            "import atexit, json\n"
            "heavy = {'torch', 'suites', 'variants', 'matplotlib'}\n"
            "loaded = lambda: sorted({m.split('.')[0] for m in sys.modules} & heavy)\n"
            "atexit.register(lambda: print('LOADED ' + json.dumps(loaded()), file=sys.stderr))\n"
            "from harness.entry import main; main()")
    args = ["recommend", str(REFERENCE), "-n", "16384", "--causal"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "│ 1    │" in done.stdout
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("LOADED "))
    assert json.loads(line.removeprefix("LOADED ")) == []


# --- the report's section -------------------------------------------------------------------------------

def test_the_report_section_answers_at_the_longest_decoded_context():
    rows = fx.full_rows()
    assert recommend_section.context_of(rows) == 16384
    body = recommend_section.html_section(rows)
    assert "at a context of 16384 tokens" in body and "<td>flash-sdpa</td>" in body
    assert "(m)</td>" in body and "Accuracy per task, on equal terms" in body
    forward_only = rows[rows["mode"].ne("decode") | rows.suite.ne("throughput")]
    assert recommend_section.context_of(forward_only) is None
    assert 'class="missing"' in recommend_section.html_section(forward_only)


@pytest.mark.slow
def test_the_report_has_the_serving_section():
    page = fx.built_report().html.read_text()
    assert '<section id="serving"><h2>Serving</h2>' in page and "attnbench recommend RUN --context" in page
