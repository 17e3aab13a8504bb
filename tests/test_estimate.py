"""Plan estimates that count what a GPU pays (harness.estimate): a compile or an autotune charged once per
distinct key as the variant declares it, `attnbench run --estimate` printing a plan per suite and family
without running it, the GPU standard throughput grid's estimate against the figure docs/gpu.md states, and
the smoke's sweeps estimated by the same model."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness import cli, costs, estimate, registry, smoke
from harness.registry import Support, Variant
from suites import accuracy, long_range
from suites import estimate as learned
from suites.throughput import planning
from tests.test_cli_inputs import run_cli

ROOT = Path(__file__).resolve().parent.parent
FLEX = "sparse-strided"  # a FlexAttention variant: compiles per shape on CUDA
AUTOTUNED = "gla"  # fla's Triton kernels: autotune once per dtype, heads and head dimension


def throughput_case(variant=FLEX, **fields) -> planning.Case:
    values = dict(variant=variant, device="cuda", dtype="bfloat16", mode="fwd", level="kernel", seq_len=1024,
                  batch=16, total_tokens=16384, n_heads=32, head_dim=64)
    values.update(fields)
    values["batch"] = planning.batch_for(values["total_tokens"], values["seq_len"])
    return planning.Case(**values)


def bill(cases) -> estimate.CompileBill:
    return estimate.compile_cost(cases, planning.compile_shapes)


# --- one compile per distinct key ---------------------------------------------------------------------

def test_two_cases_of_one_shape_compile_once_and_two_shapes_twice():
    flex = registry.get(FLEX).compile_cost("cuda")
    kernel, layer = throughput_case(), throughput_case(level="layer")  # the layer calls the same kernel
    fidelity = throughput_case(kind="fidelity")
    assert bill([kernel]).compilations == 1 and bill([kernel]).seconds == flex.forward_s
    assert bill([kernel, layer, fidelity]).compilations == 1
    assert bill([kernel, layer, fidelity]).seconds == flex.forward_s
    longer = throughput_case(seq_len=2048)
    assert bill([kernel, longer]).compilations == 2
    assert bill([kernel, longer]).seconds == 2 * flex.forward_s


def test_every_field_of_the_shape_is_a_new_flex_compile_and_a_backward_is_charged_apart():
    flex = registry.get(FLEX).compile_cost("cuda")
    base = throughput_case()
    others = [throughput_case(dtype="float16"), throughput_case(head_dim=128, n_heads=16),
              throughput_case(causal=False), throughput_case(total_tokens=32768),
              throughput_case(mode="decode")]
    for other in others:
        assert bill([base, other]).compilations == 2, other.describe()
    training = throughput_case(mode="fwd_bwd")
    assert bill([training]).compilations == 2  # its own forward graph and the backward
    assert bill([training]).seconds == flex.forward_s + flex.backward_s
    assert bill([base, training]).compilations == 3


def test_an_autotuned_kernel_pays_once_per_key_whatever_the_length():
    tuned = registry.get(AUTOTUNED).compile_cost("cuda")
    lengths = [throughput_case(AUTOTUNED, seq_len=n) for n in (1024, 4096, 16384)]
    assert bill(lengths).compilations == 1 and bill(lengths).seconds == tuned.forward_s
    training = [throughput_case(AUTOTUNED, seq_len=n, mode="fwd_bwd") for n in (1024, 4096)]
    assert bill(lengths + training).seconds == tuned.forward_s + tuned.backward_s  # forward kernels shared
    assert bill([*lengths, throughput_case(AUTOTUNED, dtype="float16")]).compilations == 2


def test_nothing_is_charged_where_nothing_compiles():
    assert bill([throughput_case("vanilla"), throughput_case("flash-sdpa", seq_len=4096)]).compilations == 0
    on_cpu = [throughput_case(FLEX, device="cpu", dtype="float32"), throughput_case(AUTOTUNED, device="cpu",
                                                                                   dtype="float32")]
    assert bill(on_cpu) == estimate.CompileBill(0.0, 0, {})  # the dense masked path and the torch chunks
    assert planning.estimate(planning.plan("quick", "cpu")).compile_s == 0


def test_a_plugin_is_charged_by_what_it_declares_not_by_its_name(monkeypatch):
    """A FlexAttention path under a name with no "flex" in it, and one declaring nothing, side by side."""
    masked = costs.CompileCost("my compile", 3.0, 5.0, costs.SHAPE_FIELDS, "assumed for the test")
    def attend(q, k, v, causal=False):
        return q

    declared = Variant("plugin-masked", "plugin", True, Support(), attention_fn=attend,
                       compiles=lambda device: masked if device == "cuda" else None)
    silent = Variant("plugin-eager", "plugin", True, Support(), attention_fn=attend)
    real_get = registry.get
    plugins = {v.name: v for v in (declared, silent)}
    monkeypatch.setattr(registry, "get", lambda name: plugins.get(name) or real_get(name))
    cases = [throughput_case(n, mode=m) for n in plugins for m in ("fwd", "fwd_bwd")]
    found = bill(cases)
    assert (found.seconds, found.compilations) == (3.0 + 3.0 + 5.0, 3)
    assert found.bases == {"my compile": "assumed for the test"}
    # --shard balances by per-shape compiles too: the eager plugin's case costs its measuring alone.
    assert planning.case_cost(cases[1]) == planning.measuring_seconds(cases[1]) + 3.0 + 5.0
    assert planning.case_cost(cases[2]) == planning.measuring_seconds(cases[2])


def test_a_compile_cost_keyed_by_an_unknown_field_is_refused():
    with pytest.raises(ValueError, match="unknown fields"):
        costs.CompileCost("x", 1.0, 1.0, ("seq_len", "moon_phase"), "none")


def test_the_learned_suites_charge_a_flex_trainings_graphs_once_per_model():
    """Quick passkey on longformer: one model (trained at N = 32) evaluated at 32 and 128 at two depths.
    Its training step (forward and backward), its validation at 32, which its evaluations at 32 share
    (64 sequences a batch), and its evaluation at 128: four compiles for four cases. CPU plans: none."""
    flex = registry.get("longformer").compile_cost("cuda")
    cases = [c for c in long_range.plan("quick", "cuda", variants=["longformer"]) if c.task == "passkey"]
    assert len(cases) == 4 and len({c.training_key() for c in cases}) == 1
    assert {c.seq_len for c in cases} == {32, 128} and {c.train_seq_len for c in cases} == {32}
    found = estimate.compile_cost(cases, learned.compile_shapes)
    assert found.compilations == 4
    assert found.seconds == pytest.approx(3 * flex.forward_s + flex.backward_s)
    assert long_range.estimate(cases).compile_s == found.seconds
    assert accuracy.estimate(accuracy.plan("quick", "cpu")).compile_s == 0


# --- attnbench run --estimate -------------------------------------------------------------------------

def seconds_of(duration: str) -> float:
    """harness.estimate.duration's text back in seconds: "0.2 s", "70 s" or "2.5 min (151 s)"."""
    return float(re.search(r"\((\d+) s\)", duration).group(1) if "min" in duration else duration[:-2])


def family_lines(out: str) -> dict[str, tuple[int, float]]:
    found = re.findall(r"^  family (\S+): (\d+) cases, (.+?);", out, re.M)
    return {f: (int(n), seconds_of(d)) for f, n, d in found}


def head_figures(out: str) -> tuple[int, float]:
    n, duration = re.search(r": (\d+) cases, estimated (.+?);", out.splitlines()[0]).groups()
    return int(n), seconds_of(duration)


def test_estimate_prints_the_suite_and_each_family_and_runs_nothing(monkeypatch, capsys, tmp_path):
    def no_run(*args, **kwargs):
        raise AssertionError("--estimate ran the plan")

    monkeypatch.setattr(cli.runner, "run", no_run)
    out_dir = tmp_path / "run"
    code, out, err = run_cli(monkeypatch, capsys, ["run", "--suite", "throughput", "--device", "cuda",
                                                   "--profile", "standard", "--estimate", "--out", out_dir])
    assert (code, err) == (0, "")
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []  # no records, no log, no directory
    plan = planning.plan("standard", "cuda")
    total = planning.estimate(plan)
    head = out.splitlines()[0]
    assert head.startswith(f"throughput on cuda, profile standard: {len(plan)} cases, estimated ")
    assert f"({total.seconds:.0f} s)" in head and f"over {total.compilations} keys" in head
    families = family_lines(out)
    expected = {}
    for case in plan:
        expected.setdefault(registry.get(case.variant).family, []).append(case)
    assert {f: n for f, (n, _) in families.items()} == {f: len(c) for f, c in expected.items()}
    assert families["sparse"][1] == round(planning.estimate(expected["sparse"]).seconds)
    assert "FlexAttention compile: lower bound" in out
    assert "Triton autotune (fla chunk_gla): assumption" in out


@pytest.mark.parametrize("suite", ["accuracy", "long-range", "throughput"])
def test_estimate_works_for_every_suite_and_for_a_shard(monkeypatch, capsys, suite):
    code, whole, _ = run_cli(monkeypatch, capsys, ["run", "--suite", suite, "--device", "cpu", "--estimate"])
    assert code == 0 and "cases, estimated" in whole and family_lines(whole)
    planned, _ = head_figures(whole)
    parts = []
    for i in (1, 2):
        code, out, _ = run_cli(monkeypatch, capsys, ["run", "--suite", suite, "--device", "cpu", "--estimate",
                                                     "--shard", f"{i}/2"])
        assert code == 0 and f"shard {i}/2 of {planned} cases: " in out
        parts.append(int(re.search(r"cases: (\d+) cases", out).group(1)))
    assert sum(parts) == planned


@pytest.mark.parametrize("args, message", [
    (["--find-max-n"], "--find-max-n has no plan to estimate"),
    (["--shard", "0/2"], "--shard 0/2"),
    (["-v", "no-such-variant"], "unknown variant 'no-such-variant'"),
    (["--profile", "huge"], "--profile"),
])
def test_bad_input_to_estimate_exits_2_with_one_line(monkeypatch, capsys, args, message):
    code, out, err = run_cli(monkeypatch, capsys, ["run", "--suite", "throughput", "--device", "cpu",
                                                   "--estimate", *args])
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


# --- the GPU standard grid and the smoke --------------------------------------------------------------

def documented_gpu_standard_s() -> int:
    """The figure docs/gpu.md states for the GPU standard throughput grid's estimate."""
    text = (ROOT / "docs" / "gpu.md").read_text(encoding="utf-8")
    return int(re.search(r"GPU standard throughput grid's own estimate is (\d[\d,]*) s", text).group(1)
               .replace(",", ""))


def test_the_gpu_standard_grid_fits_ten_minutes_or_docs_state_its_estimate():
    found = planning.estimate(planning.plan("standard", "cuda"))
    assert found.compile_s > 0  # compiling is counted: the figure would fool no one otherwise
    assert found.seconds <= 600 or round(found.seconds) == documented_gpu_standard_s()


def test_the_smokes_sweeps_are_estimated_by_the_same_model_as_run_estimate(tmp_path):
    """The smoke's printed figure for its uncompiled sweep is what `attnbench run --estimate` says of
    its command lines' cases as one plan (the lines run one length each; compiles are paid once)."""
    first, *rest = smoke.sweep_commands("cuda", compiled=False)(tmp_path)
    command = (*first, *(a for c in rest for a in ("-n", c[c.index("-n") + 1])))
    printed = subprocess.run([*command, "--estimate"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    cases, model = smoke.model_estimates("cuda")["sweep"]
    assert head_figures(printed.stdout) == (cases, round(model.seconds))
    assert list(tmp_path.iterdir()) == []  # the command with --estimate wrote nothing
    budget = next(s.budget_s for s in smoke.steps("cuda") if s.name == "sweep")
    lines = smoke.model_lines(smoke.steps("cuda"), "cuda")
    assert lines[0].startswith(f"cost model, sweep on cuda: {cases} cases, {model.seconds:.0f} s of which "
                               f"compiling and autotuning {model.compile_s:.0f} s (budget {budget:g} s)")
