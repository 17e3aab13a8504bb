"""Model presets (harness.model_presets): their shapes, `run --suite throughput --model` (the preset's
per-layer attention shape reaches the cases and their measurement) and `recommend --model` (its layers
and KV heads, the per-layer figures multiplied and said so), and bad input."""

import pandas as pd
import pytest

from harness import entry, model_presets
from harness.context import RunContext
from harness.report import recommend as rec
from harness.runner import execute
from suites.throughput import planning, workloads
from tests import test_report_fixtures as fx
from tests.test_recommend import tp_row

# --- the presets ----------------------------------------------------------------------------------


def test_presets_are_the_shapes_of_the_open_models_they_name():
    one, eight = model_presets.preset("1b"), model_presets.preset("8B")
    assert (one.source, one.n_layers, one.d_model, one.n_heads, one.kv_heads, one.head_dim) == (
        "Llama-3.2-1B", 16, 2048, 32, 8, 64)
    assert (eight.source, eight.n_layers, eight.d_model, eight.n_heads, eight.kv_heads, eight.head_dim) == (
        "Llama-3.1-8B", 32, 4096, 32, 8, 128)


def test_an_unknown_preset_names_the_presets_in_one_line():
    with pytest.raises(ValueError, match="unknown --model '70b'; presets: 1b .*; 8b ") as found:
        model_presets.preset("70b")
    assert "\n" not in str(found.value)


def test_a_shape_whose_heads_do_not_divide_is_refused():
    with pytest.raises(ValueError, match="kv_heads 3 must divide n_heads 32"):
        model_presets.ModelShape(name="x", source="y", n_layers=2, d_model=2048, n_heads=32, kv_heads=3)
    with pytest.raises(ValueError, match="n_heads 30 must divide d_model 2048"):
        model_presets.ModelShape(name="x", source="y", n_layers=2, d_model=2048, n_heads=30, kv_heads=2)


# --- the plan -------------------------------------------------------------------------------------


def test_the_preset_shape_reaches_every_case_of_the_plan():
    cases = planning.plan("quick", "cpu", ["vanilla", "mamba2"], model="1b")
    assert cases and all(c.model == "1b" and (c.n_heads, c.head_dim, c.d_model) == (32, 64, 2048)
                         for c in cases)
    assert {c.kv_heads for c in cases if c.variant == "vanilla"} == {8}
    assert {c.kv_heads for c in cases if c.variant == "mamba2"} == {None}  # a mixer has no KV heads
    assert {c.mode for c in cases} == {"fwd", "decode"} and all(c.causal for c in cases)
    assert {c.kind for c in cases} == {"sweep"}  # the fidelity cases stay at the grid's shape
    assert {c.level for c in cases} == {"kernel", "layer"}
    assert all(c.flat()["model_layers"] == 16 and c.flat()["model"] == "1b" for c in cases)
    eight = planning.plan("quick", "cpu", ["vanilla"], model="8b", kv_heads=[1])
    assert {(c.n_heads, c.head_dim, c.kv_heads) for c in eight} == {(32, 128, 1)}  # --kv-heads overrides


def test_the_model_field_is_added_later_so_the_grid_cases_keep_their_ids():
    plain = planning.plan("quick", "cpu", ["vanilla"])
    assert all("model" not in c.identity() and "model_layers" not in c.flat() for c in plain)
    one = planning.plan("quick", "cpu", ["vanilla"], model="1b", seq_lens=[128])[0]
    same_shape = one.model_copy(update={"model": None})
    assert one.case_id != same_shape.case_id and one.identity()["model"] == "1b"


def test_bad_model_plans_are_refused():
    with pytest.raises(ValueError, match="unknown --model"):
        planning.plan("quick", "cpu", ["vanilla"], model="70b")
    with pytest.raises(ValueError, match="--kv-heads 3 must be at least 1 and divide n_heads 32"):
        planning.plan("quick", "cpu", ["vanilla"], model="1b", kv_heads=[3])
    case = planning.plan("quick", "cpu", ["vanilla"], model="1b", seq_lens=[128])[0]
    with pytest.raises(ValueError, match="model 1b has 32 heads of 64, not 16 of 64"):
        planning.Case(**{**case.model_dump(), "n_heads": 16, "kv_heads": None})


def test_the_measurement_runs_at_the_preset_shape():
    """Decode state at model 1b: 8 KV heads of 64 (not the 32 query heads), N + 1 positions; mamba2's state
    at the model's width, the same after any context."""
    decode = planning.plan("quick", "cpu", ["vanilla", "mamba2"], model="1b", seq_lens=[16])
    kernel = next(c for c in decode if c.variant == "vanilla" and c.level == "kernel" and c.mode == "decode")
    work = workloads.build_workload(kernel)
    assert work.state_bytes == 2 * kernel.batch * 8 * 17 * 64 * 4 and work.state_kind == "kv_cache"
    layer = next(c for c in decode if c.variant == "mamba2" and c.level == "layer" and c.mode == "decode")
    states = {n: workloads.build_workload(layer.model_copy(update={"seq_len": n})).state_bytes / layer.batch
              for n in (16, 64)}
    assert states[16] == states[64] > 0


def test_a_model_row_carries_the_preset_and_the_predicted_memory():
    case = next(c for c in planning.plan("quick", "cpu", ["vanilla"], model="1b", seq_lens=[128])
                if c.level == "kernel" and c.mode == "fwd")
    status, reason, metrics = execute("suites.throughput.suite", case, RunContext())
    assert status == "ok", reason
    assert metrics["mem_predicted_bytes"] == planning.predicted_buffer_bytes(case) > 0
    assert metrics["mem_tracked_peak_bytes"] > 0


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--suite", "throughput", "--model", "70b"], "unknown --model '70b'; presets: 1b"),
    (["--suite", "accuracy", "--model", "1b"], "--model applies to the throughput suite, not to accuracy"),
    (["--suite", "throughput", "--model", "1b", "--find-max-n"], "--find-max-n takes no --model"),
    (["--suite", "throughput", "--model", "1b", "--kv-heads", "5"], "--kv-heads 5 must be at least 1"),
])
def test_bad_model_input_exits_2_with_one_line(monkeypatch, capsys, tmp_path, args, message):
    code, out, err = fx.run_cli(monkeypatch, capsys, "run", "--device", "cpu", "-v", "vanilla",
                                "--out", tmp_path / "run", *args)
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_estimate_plans_at_the_preset(monkeypatch, capsys, tmp_path):
    code, out, err = fx.run_cli(monkeypatch, capsys, "run", "--suite", "throughput", "--device", "cpu",
                                "-v", "vanilla", "--model", "8b", "--estimate", "--out", tmp_path / "run")
    assert code == 0, err
    assert "8 cases" in " ".join(out.split())  # quick: 2 lengths x fwd, decode x kernel, layer


# --- recommend ------------------------------------------------------------------------------------


def model_rows(model="8b", heads=32, head_dim=128, kv_heads=8):
    """`cache` (attention at the model's KV heads) and `scan` (a mixer: no KV heads) at a preset's shape."""
    rows = []
    for n in (1024, 4096, 16384):
        shape = {"n_heads": heads, "head_dim": head_dim, "model": model, "model_layers": 32}
        cache = 2 * kv_heads * n * head_dim * 4
        rows += [tp_row("cache", "fwd", n, 1e-4 * n, kv_heads=kv_heads, **shape),
                 tp_row("cache", "decode", n, 1e-5 * n, kv_heads=kv_heads, kv_cache_bytes=cache, **shape),
                 tp_row("scan", "fwd", n, 1e-3 * n, **shape),
                 tp_row("scan", "decode", n, 0.5, state_bytes=65536.0, **shape)]
    return pd.DataFrame(rows)


def grid_rows():
    """The same variants at a grid's shape (1 head of 64), ten times faster: never mixed with the model's."""
    rows = model_rows(model=None, heads=1, head_dim=64, kv_heads=1)
    rows["latency_ms"] /= 10
    return rows.drop(columns=["model", "model_layers", "kv_heads"])


def answer(rows, **request):
    return rec.recommend(rows, rec.Request(seq_len=16384, causal=True, **request))


def test_recommend_multiplies_by_the_presets_layers_and_says_so():
    rows = pd.concat([model_rows(), grid_rows()], ignore_index=True)
    per_layer, model = answer(model_rows(), layers=1), answer(rows, model="8b")
    for variant in ("cache", "scan"):
        one, many = per_layer.serving[variant], model.serving[variant]
        assert many.prefill_ms.value == pytest.approx(32 * one.prefill_ms.value)
        assert many.state_bytes.value == pytest.approx(32 * one.state_bytes.value)
        assert many.tokens_per_s_per_user.value == pytest.approx(one.tokens_per_s_per_user.value / 32)
    assert model.serving["cache"].prefill_ms.value == pytest.approx(32 * 1e-4 * 16384)  # not the grid's
    assert model.serving["scan"].state_bytes.value == 32 * 65536  # a mixer's state: no KV heads to scale
    statement = model.notes[0]
    assert "one attention layer's measured figure x 32 layers (model 8b (Llama-3.1-8B: 32 layers" in statement
    assert "(model 8b) x 32 layers" in model.setting
    text = " ".join(rec.render(model).split())
    assert "x 32 layers (model 8b (Llama-3.1-8B" in text


def test_explicit_layers_and_kv_heads_override_the_preset():
    rows = model_rows()
    four = answer(rows, model="8b", layers=4)
    assert four.serving["cache"].prefill_ms.value == pytest.approx(4 * 1e-4 * 16384)
    assert "x 4 layers (--layers 4, over model 8b's 32)" in four.notes[0]
    mqa = answer(rows, model="8b", kv_heads=1).serving["cache"].state_bytes
    assert mqa.value == pytest.approx(32 * 2 * 1 * 16384 * 128 * 4)  # scaled from the rows' 8 KV heads
    assert mqa.source.endswith("scaled from 8 to 1 KV heads")


def test_without_a_preset_the_grid_rows_answer_alone():
    plain = answer(pd.concat([model_rows(), grid_rows()], ignore_index=True))
    assert plain.serving["cache"].prefill_ms.value == pytest.approx(1e-5 * 16384)  # the grid's, per layer
    assert not any("layers" in note for note in plain.notes)


def test_a_preset_without_rows_names_the_run_to_make():
    expected = (r"no throughput rows at model 1b's shape \(this run measured model 8b\): run `attnbench run "
                r"--suite throughput --model 1b")
    with pytest.raises(rec.MissingData, match=expected):
        answer(model_rows(), model="1b")
    with pytest.raises(ValueError, match="several model presets"):
        answer(pd.concat([model_rows(), model_rows(model="1b", head_dim=64)], ignore_index=True))


@pytest.mark.parametrize("args,message", [
    (["--model", "70b"], "unknown --model '70b'; presets: 1b"),
    (["--model", "1b", "--mode", "train"], "--model is a serving figure"),
])
def test_recommend_bad_model_exits_2_with_one_line(monkeypatch, capsys, tmp_path, args, message):
    run = fx.write_run(tmp_path / "run", [r for r in fx.throughput_rows() if r["mode"] == "fwd"][:5])
    code, out, err = fx.run_cli(monkeypatch, capsys, "recommend", run, "-n", 1024, *args, main=entry.main)
    assert code == 2 and out == "" and message in err
    assert len(err.strip().splitlines()) == 1
