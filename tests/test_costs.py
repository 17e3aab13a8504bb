"""The planners' models come from the variants' hooks (harness.costs): the same figures the family-name code
gave, a stated default for a variant that declares none, and rows that say which variants took it."""

import itertools
from types import SimpleNamespace

import pytest
import torch

import variants.linear
import variants.mamba
from harness import costs, memory, registry, runner
from harness.registry import Support, Variant
from suites import accuracy, estimate, frontier, long_range
from suites.throughput import planning as tp

# --- the code the hooks replaced, kept verbatim as the reference of the figures -------------------------

OLD_SCAN_PASSES = 30
OLD_CHUNK_LOOP_S = {"cpu": {"mamba2": 0.031, "gated-deltanet": 0.040, "deltanet": 0.028, "gla": 0.016},
                    "cuda": {}}


def old_token_work(case, seq_len: int) -> tuple[float, float]:
    d, layers, family = case.d_model, case.n_layers, registry.get(case.variant).family
    flops = 6 * layers * 12 * d * d
    params = {**registry.get(case.variant).defaults, **case.params}
    if family in ("vanilla", "flash", "sparse"):
        flops += 6 * layers * 2 * d * seq_len
    elif family == "longformer":
        flops += 6 * layers * 2 * d * min(seq_len, 3 * params.get("window", 128))
    elif family == "performer":
        flops += 6 * layers * 4 * d * params.get("nb_features", 256) // case.n_heads
    scan = 0
    if family == "mamba":
        scan = OLD_SCAN_PASSES * layers * params.get("expand", 2) * d * params.get("d_state", 16)
    return flops, scan


def old_step_seconds(case, device: str, tokens: int, seq_len: int, share: float = 1.0) -> float:
    flops, scan = old_token_work(case, seq_len)
    work = tokens * share * (flops / estimate.MATMUL_FLOPS[device] + scan / estimate.SCAN_ELEMENTS[device])
    loops = share * case.n_layers * OLD_CHUNK_LOOP_S[device].get(case.variant, 0.0)
    return work + loops + estimate.STEP_OVERHEAD_S[device]


OLD_SEGMENT_TOKENS = 64 * 64
OLD_FUSED_BACKENDS = ("sdpa-flash-cpu", "sdpa-flash-cuda", "sdpa-cudnn", "sdpa-mem-efficient",
                      "xformers-memory-efficient-attention", "xformers-local-attention",
                      "flex-attention-compiled", "fla-chunk", "mamba_ssm.selective_scan_fn")


def old_predicted_peak_bytes(case) -> int | None:
    if case.level != "kernel" or case.mode != "fwd":
        return None
    v = registry.get(case.variant)
    backend = v.backend_for(case.device)
    params = {**v.defaults, **case.params}
    e = case.torch_dtype.itemsize
    a = max(e, 4)
    rows = case.batch * case.n_heads * case.seq_len
    x = rows * case.head_dim
    upcast = 3 * x * a if e < a else 0
    if backend in ("vanilla", "dense-masked-softmax"):
        peak = 4 * x * e + upcast + 3 * rows * case.seq_len * a + 2 * case.seq_len**2
    elif backend == "torch-chunked" and v.family in ("linear", "performer"):
        features = params.get("nb_features", case.head_dim)
        segment = (case.batch * case.n_heads * min(case.seq_len, OLD_SEGMENT_TOKENS)
                   * (features + case.head_dim))
        peak = 3 * x * e + x * (a if e < a else 0) + rows * a * (2 * features + 2 * case.head_dim)
        peak += 4 * segment * a + (rows * a * features if "nb_features" in params else 0)
    elif backend == "sliding-chunks":
        peak = 3 * x * e + upcast + rows * a * (5 * case.head_dim + 7.5 * params["window"])
    elif backend == "torch-scan":
        peak = 3 * x * e + 5 * x * a
    elif backend in OLD_FUSED_BACKENDS:
        peak = 4 * x * e + 4 * rows
    else:
        return None
    return int(peak + frontier.RUNTIME_BYTES)


# --- the estimate: identical figures over the plans -----------------------------------------------------

PLANS = list(itertools.product(("quick", "standard", "full"), ("cpu", "cuda")))


@pytest.mark.parametrize("profile, device", PLANS)
def test_the_estimate_gives_the_figures_of_the_family_name_code_over_the_plans(monkeypatch, profile, device):
    """Every step time (training, validation, evaluation), case cost and plan total, compared exactly."""
    cases = [c for suite in (accuracy, long_range) for c in suite.plan(profile, device)]
    trained = [c for c in cases if c.task != "exactness"]
    for case in trained:
        for tokens, seq_len, share in [(case.batch_size * case.train_seq_len, case.train_seq_len, 1.0),
                                       (case.n_test * case.seq_len, case.seq_len, estimate.FORWARD_SHARE)]:
            assert (estimate.step_seconds(case, device, tokens, seq_len, share)
                    == old_step_seconds(case, device, tokens, seq_len, share)), case
    new = [estimate.case_cost(c) for c in cases], estimate.estimate(cases)
    monkeypatch.setattr(estimate, "step_seconds", old_step_seconds)
    assert new == ([estimate.case_cost(c) for c in cases], estimate.estimate(cases))
    # Every branch of the old code ran: attention, windows, features, the scan, loops, and none of these.
    assert {"vanilla", "longformer-banded", "performer", "mamba", "mamba2", "gated-deltanet",
            "linear"} <= {c.variant for c in trained}


@pytest.mark.parametrize("variant", ["vanilla", "flash-sdpa", "sparse-fixed", "longformer", "performer",
                                     "mamba", "mamba2", "deltanet", "gla", "retnet", "linear", "swa-sinks"])
def test_each_family_costs_what_the_family_name_code_charged(variant):
    """Shapes and parameters the plans do not hold (odd head counts, windows, features), on both devices."""
    for d_model, n_heads, n_layers, seq_len, params in [(64, 2, 2, 512, {}), (48, 3, 1, 100, {}),
                                                        (64, 8, 2, 4096, {"window": 16, "nb_features": 7}),
                                                        (96, 5, 3, 77, {"expand": 3, "d_state": 4})]:
        known = {k: p for k, p in params.items() if k in registry.get(variant).defaults}
        case = SimpleNamespace(variant=variant, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                               params=known)
        for device in ("cpu", "cuda"):
            assert (estimate.step_seconds(case, device, 1000, seq_len, 0.5)
                    == old_step_seconds(case, device, 1000, seq_len, 0.5)), (case, device)


# --- the frontier's model: identical predictions over a grid ---------------------------------------------

def kernel_case(variant, device, dtype, seq_len, batch, n_heads, head_dim, params, mode="fwd"):
    return tp.Case(variant=variant, device=device, dtype=dtype, mode=mode, level="kernel", seq_len=seq_len,
                   batch=batch, total_tokens=batch * seq_len, n_heads=n_heads, head_dim=head_dim,
                   params=params, kind="frontier")


def frontier_grid():
    for name in registry.names():
        v = registry.get(name)
        for params in ({}, v.small_params):
            for device, dtype, seq_len, batch, n_heads, head_dim in itertools.product(
                    ("cpu", "cuda"), ("float64", "float32", "float16", "bfloat16"),
                    (1, 100, 4096, 5000, 70000), (1, 3), (1, 16), (32, 64)):
                yield kernel_case(name, device, dtype, seq_len, batch, n_heads, head_dim, params)


FAST_PATHS = {  # the library code paths a CPU machine does not take, switched on to reach their models
    "none": {},
    "fla": {(variants.linear, "fla_backend_available"): lambda: True},
    "mamba_ssm inner": {(variants.mamba, "_block_kernels"): lambda: SimpleNamespace(mamba_inner_fn=object())},
    "mamba_ssm scan": {(variants.mamba, "_block_kernels"): lambda: SimpleNamespace(mamba_inner_fn=None)},
}


@pytest.mark.parametrize("paths", list(FAST_PATHS))
def test_the_memory_model_predicts_what_the_backend_name_code_did(monkeypatch, paths):
    for (module, name), value in FAST_PATHS[paths].items():
        monkeypatch.setattr(module, name, value)
    backends, modelled = set(), 0
    for case in frontier_grid():
        old = old_predicted_peak_bytes(case)
        assert frontier.predicted_peak_bytes(case) == old, case
        backends.add(registry.get(case.variant).backend_for(case.device))
        modelled += old is not None
    assert modelled  # the grid reaches modelled code paths, not only None == None
    if paths != "none":  # the switch took: the library's code path is among those compared
        assert backends & {"fla-chunk", "mamba_ssm.mamba_inner_fn", "mamba_ssm.selective_scan_fn"}


def test_the_model_predicts_nothing_for_other_levels_and_modes():
    case = kernel_case("vanilla", "cpu", "float32", 1024, 1, 16, 64, {})
    assert frontier.predicted_peak_bytes(case) is not None
    assert frontier.predicted_peak_bytes(case.model_copy(update={"mode": "fwd_bwd"})) is None
    assert frontier.predicted_peak_bytes(case.model_copy(update={"level": "layer"})) is None


def test_the_predicted_frontier_of_every_variant_is_unchanged():
    """predicted_max_n, the figure frontier rows carry, by bisection over the old model."""
    cap = 2 * 2**30
    for name in registry.names():
        new = frontier.predicted_max_n(name, "cpu", "float32", cap)
        fits = lambda n, name=name: old_predicted_peak_bytes(  # noqa: E731
            frontier.frontier_case(name, "cpu", "float32", n, 1))
        if fits(1) is None:
            assert new is None, name
        else:
            assert fits(new) <= cap < fits(new + 1), name


# --- hooks and defaults -----------------------------------------------------------------------------------

def test_every_built_in_variant_declares_both_hooks():
    own = [v for v in registry.all_variants() if v.source.package == "attnbench"]
    assert own and {v.name: v.default_models for v in own if v.default_models} == {}


def bare_variant(**hooks) -> Variant:
    return Variant(name="bare", family="bare", exact=False, support=Support(),
                   attention_fn=lambda q, k, v, causal=False: v, **hooks)


def test_a_variant_without_hooks_gets_the_stated_defaults():
    v = bare_variant()
    assert v.default_models == ("cost", "memory")
    assert v.mixer_cost(64, 2, 4, 512) == costs.MixerCost(flops=6 * 2 * 2 * 64 * 512)  # causal attention
    dense = costs.KernelCall("cpu", "bare", torch.float16, 1, 16, 1024, 64)
    assert v.predicted_peak_bytes("cpu", "float16", 1, 16, 1024, 64) == costs.dense_softmax_bytes(dense)
    # A mixer's kernel has no default model: its frontier is measured, not predicted.
    kernel = Variant(name="k", family="k", exact=False, support=Support(), mixer_factory=object,
                     kernel=lambda x: x, kernel_inputs=lambda *a: {})
    assert kernel.predicted_peak_bytes("cpu", "float32", 1, 16, 1024, 64) is None


def test_declared_hooks_are_called_with_the_shape_and_the_parameters_over_the_defaults():
    calls = []

    def cost(d_model, n_layers, n_heads, seq_len, **params):
        calls.append(("cost", d_model, n_layers, n_heads, seq_len, params))
        return costs.MixerCost(flops=1, loop_s={"cpu": 0.5})

    def peak_bytes(call, **params):
        calls.append(("memory", call, params))
        return 123

    v = bare_variant(cost=cost, peak_bytes=peak_bytes)
    v.defaults = {"window": 8, "seed": 1}
    assert v.default_models == ()
    assert v.mixer_cost(64, 2, 4, 512, {"window": 16}) == costs.MixerCost(flops=1, loop_s={"cpu": 0.5})
    assert v.predicted_peak_bytes("cuda:1", torch.bfloat16, 2, 4, 100, 32) == 123
    call = costs.KernelCall("cuda", "bare", torch.bfloat16, 2, 4, 100, 32)
    assert calls == [("cost", 64, 2, 4, 512, {"window": 16, "seed": 1}),
                     ("memory", call, {"window": 8, "seed": 1})]
    assert (call.e, call.a, call.rows, call.x, call.upcast) == (2, 4, 800, 25600, 3 * 25600 * 4)


def test_a_hook_that_is_not_a_function_is_refused():
    with pytest.raises(TypeError, match="cost must be a function or None"):
        bare_variant(cost=costs.MixerCost())
    with pytest.raises(TypeError, match="peak_bytes must be a function or None"):
        bare_variant(peak_bytes=1024)


def test_rows_carry_the_baseline_flag_and_the_defaulted_models(monkeypatch):
    case = kernel_case("vanilla", "cpu", "float32", 1024, 1, 16, 64, {})
    row = runner.case_row(case, "ok", "", {}, {}, "t0", "t1")
    assert row["baseline"] is True and row["default_models"] == ""
    plain = bare_variant()
    monkeypatch.setitem(registry._REGISTRY, "bare", plain)
    assert runner.variant_facts("bare") == {"baseline": False, "default_models": "cost, memory"}


def test_the_frontier_runtime_is_added_to_the_buffers_the_hook_models():
    case = kernel_case("vanilla", "cpu", "float32", 2048, 1, 16, 64, {})
    buffers = costs.dense_softmax_bytes(costs.KernelCall("cpu", "vanilla", torch.float32, 1, 16, 2048, 64))
    assert frontier.predicted_peak_bytes(case) == buffers + frontier.RUNTIME_BYTES
    assert frontier.RUNTIME_BYTES == 64 * memory.MIB
