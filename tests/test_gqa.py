"""Grouped-query attention: k and v with kv_heads heads (dividing n_heads) in every softmax-kind family,
linear attention and Performer; each fast path against its reference twin with the KV heads repeated, the
declarations (Support.grouped_kv), the contract and exactness rows, the throughput case and its decode
memory columns, the memory model, and the command line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness import attention, contract, costs, registry, runner
from harness.attention import AttentionMixer, kv_group, repeat_kv, softmax_attention
from harness.context import RunContext
from harness.registry import Support, Unsupported, Variant
from suites import exactness as E
from suites.throughput import measuring, planning, workloads

N_HEADS = 4
GROUPED = [name for name in registry.names()
           if registry.get(name).support.grouped_kv is True and registry.get(name).attention_fn is not None]
CPU_GROUPED = [name for name in GROUPED if registry.get(name).support.unavailable_reason("cpu") is None]


def draw(kv_heads: int, n_q: int = 24, n_k: int = 24, dtype=torch.float64, seed: int = 0, head_dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, N_HEADS, n_q, head_dim, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, kv_heads, n_k, head_dim, generator=g, dtype=torch.float64) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def causal_settings(v: Variant):
    return [c for c in (False, True) if (c and v.support.causal) or (not c and v.support.non_causal)]


# --- the shared pieces ------------------------------------------------------------------------------------

def test_kv_group_counts_query_heads_per_kv_head_and_refuses_what_does_not_divide():
    q = torch.zeros(1, 8, 4, 2)
    assert kv_group(q, torch.zeros(1, 8, 4, 2)) == 1
    assert kv_group(q, torch.zeros(1, 2, 4, 2)) == 4 and kv_group(q, torch.zeros(1, 1, 4, 2)) == 8
    with pytest.raises(ValueError, match="3 KV heads do not divide 8"):
        kv_group(q, torch.zeros(1, 3, 4, 2))
    with pytest.raises(ValueError, match="must be at least 1 and divide n_heads 8"):
        attention.checked_kv_heads(8, 3)
    with pytest.raises(ValueError):
        attention.checked_kv_heads(8, 0)
    assert attention.checked_kv_heads(8, None) == 8


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_the_group_view_equals_softmax_over_repeated_heads_with_gradients(dtype, causal):
    q, k, v = (t.requires_grad_() for t in draw(2, dtype=dtype))
    mask = attention.causal_mask(24, 24, "cpu") if causal else None
    out = softmax_attention(q, k, v, mask)
    ref = softmax_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), mask)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    grad = torch.randn_like(out)
    fast = torch.autograd.grad(out, (q, k, v), grad)
    twin = torch.autograd.grad(ref, (q, k, v), grad)  # repeat_interleave sums each group's gradient back
    for a, b in zip(fast, twin, strict=True):
        torch.testing.assert_close(a, b, atol=tol * 10, rtol=tol * 10)


def test_the_query_head_reads_kv_head_h_over_group_not_h_mod_kv_heads():
    """The fooling case: tiling the KV heads (h % kv_heads) instead of repeating them (h // group)."""
    q, k, v = draw(2)
    out = softmax_attention(q, k, v)
    tiled = softmax_attention(q, k.repeat(1, 2, 1, 1), v.repeat(1, 2, 1, 1))
    assert (out - tiled).abs().max() > 0.1
    torch.testing.assert_close(out[:, 1], softmax_attention(q[:, 1:2], k[:, :1], v[:, :1])[:, 0])
    torch.testing.assert_close(out[:, 2], softmax_attention(q[:, 2:3], k[:, 1:2], v[:, 1:2])[:, 0])


def test_a_per_head_mask_follows_its_query_head_under_grouping():
    q, k, v = draw(1)
    mask = torch.rand(N_HEADS, 24, 24, generator=torch.Generator().manual_seed(1)) > 0.5
    mask[..., 0] = True
    ref = softmax_attention(q, repeat_kv(k, N_HEADS), repeat_kv(v, N_HEADS), mask)
    torch.testing.assert_close(softmax_attention(q, k, v, mask), ref)


# --- every fast path against its twin ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("name", CPU_GROUPED)
def test_each_grouped_fast_path_matches_its_reference_with_repeated_kv_heads(name, kv_heads, dtype):
    v = registry.get(name)
    for causal in causal_settings(v):
        q, k, val = draw(kv_heads, dtype=dtype)
        out = v.attention(q, k, val, causal=causal, **v.small_params)
        assert out.shape == q.shape and out.dtype == dtype
        ref = contract.reference(v, q, k, val, causal, v.small_params)
        tol = 1e-10 if dtype == torch.float64 else 2e-5
        err = float((out.double() - ref).norm() / ref.norm())
        assert err < tol, f"{name} kv_heads={kv_heads} causal={causal}: {err:.1e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", [n for n in CPU_GROUPED if registry.get(n).trainable])
def test_each_grouped_fast_path_has_the_gradients_of_its_twin(name, dtype):
    v = registry.get(name)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for causal in causal_settings(v):
        q, k, val = (t.requires_grad_() for t in draw(2, dtype=dtype))
        out = v.attention(q, k, val, causal=causal, **v.small_params)
        ref = v.attention_reference(q, k, val, causal=causal, **v.small_params)
        grad = torch.randn_like(out)
        fast = torch.autograd.grad(out, (q, k, val), grad)
        twin = torch.autograd.grad(ref, (q, k, val), grad)
        for which, a, b in zip("qkv", fast, twin, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=f"{name} causal={causal} d{which}")


@pytest.mark.parametrize("name", [n for n in CPU_GROUPED if registry.get(n).support.cross])  # decode: Nq = 1
def test_each_grouped_variant_decodes_what_its_full_forward_computes(name):
    v = registry.get(name)
    outcome = contract.run(v, "decode", contract.Setting(n=24, dtype=torch.float64, n_heads=N_HEADS,
                                                         head_dim=16, kv_heads=2, params=v.small_params))
    assert outcome.passed, outcome.line()
    assert "kv_heads=2 of 4" in outcome.detail


def test_linear_attention_shares_the_key_features_of_a_group():
    """Linear attention's feature map has no parameters: grouped equals its ungrouped run on repeated keys
    (the state is simply kept once per KV head)."""
    lin = registry.get("linear")
    for causal in (False, True):
        q, k, v = draw(2)
        out = lin.attention(q, k, v, causal=causal, chunk_size=8)
        torch.testing.assert_close(out, lin.attention(q, repeat_kv(k, 2), repeat_kv(v, 2), causal=causal,
                                                      chunk_size=8))


def test_performer_draws_features_per_kv_head_and_its_group_shares_them():
    perf = registry.get("performer")
    q, k, v = draw(2)
    grouped = perf.attention(q, k, v, causal=True, nb_features=32)
    for h in range(N_HEADS):  # query head h with KV head h // 2 alone: that head's features, drawn as head j
        j = h // 2
        q_h = q[:, h:h + 1]
        pad = torch.zeros_like(q[:, :j])  # heads before j draw their own features; only head j's are read
        alone = perf.attention(torch.cat([pad, q_h], 1), k[:, :j + 1], v[:, :j + 1], causal=True,
                               nb_features=32)[:, j]
        torch.testing.assert_close(grouped[:, h], alone)
    # Sharing is not repeating: the ungrouped run on repeated keys draws every query head its own features.
    repeated = perf.attention(q, repeat_kv(k, 2), repeat_kv(v, 2), causal=True, nb_features=32)
    assert (grouped[:, 1] - repeated[:, 1]).abs().max() > 1e-3


def test_recurrent_states_are_kept_per_kv_head():
    for name in ("linear", "performer"):
        v = registry.get(name)
        sizes = {}
        for kv_heads in (1, 2, N_HEADS):
            _, k, val = draw(kv_heads)
            sizes[kv_heads] = v.prefill(k, val, **v.small_params).kv.shape[1]
        assert sizes == {1: 1, 2: 2, N_HEADS: N_HEADS}, name


# --- declarations -----------------------------------------------------------------------------------------

def fake_variant(**support) -> Variant:
    return Variant(name="fake-mha", family="fake", exact=True, support=Support(**support),
                   attention_fn=lambda q, k, v, causal=False: softmax_attention(q, k, v))


def test_a_variant_that_does_not_declare_grouped_kv_is_unsupported_never_repeated():
    undeclared, refused = fake_variant(), fake_variant(grouped_kv="its kernel takes equal heads")
    q, k, v = draw(2)
    with pytest.raises(Unsupported, match="grouped KV heads not declared"):
        undeclared.attention(q, k, v)
    with pytest.raises(Unsupported, match="its kernel takes equal heads"):
        refused.attention(q, k, v)
    assert undeclared.attention(q, repeat_kv(k, 2), repeat_kv(v, 2)).shape == q.shape  # ungrouped still runs
    assert refused.supports("cpu", grouped=True) == (False, "its kernel takes equal heads")
    assert refused.supports("cpu") == (True, "ok")
    outcome = contract.run(refused, "random", contract.Setting(n=16, dtype=torch.float32, n_heads=4,
                                                               head_dim=16, kv_heads=2))
    assert outcome.status == "unsupported" and "kv_heads=2" in outcome.detail
    assert "equal heads" in outcome.detail
    with pytest.raises(ValueError, match="do not divide"):
        fake_variant(grouped_kv=True).attention(*draw(3))


def test_every_softmax_kind_family_and_the_kernelised_ones_declare_grouped_kv():
    families = {registry.get(n).family for n in GROUPED}
    assert {"vanilla", "flash", "sparse", "longformer", "sinks", "linear", "performer"} <= families
    for name in registry.names():
        v = registry.get(name)
        if v.attention_fn is not None:
            assert v.support.grouped_kv is True, f"{name} takes no grouped KV heads"


def test_a_mixer_only_family_has_no_kv_heads_in_the_contract():
    outcome = contract.run(registry.get("mamba"), "random",
                           contract.Setting(n=16, dtype=torch.float32, n_heads=4, head_dim=16, kv_heads=1))
    assert outcome.status == "unsupported" and "no KV heads" in outcome.detail


def test_decode_state_kinds():
    kinds = {n: registry.get(n).decode_state_kind for n in ("vanilla", "swa-sinks", "linear", "performer",
                                                             "mamba", "flash-sdpa", "longformer")}
    assert kinds == {"vanilla": "kv_cache", "swa-sinks": "kv_cache", "linear": "recurrent",
                     "performer": "recurrent", "mamba": "recurrent", "flash-sdpa": "kv_cache",
                     "longformer": "kv_cache"}


# --- the mixer ---------------------------------------------------------------------------------------------

def test_the_mixer_projects_keys_and_values_to_kv_heads_and_steps_as_it_runs():
    torch.manual_seed(0)
    mixer = AttentionMixer(64, 8, variant=registry.get("vanilla"), kv_heads=2).double()
    assert mixer.qkv.weight.shape == (64 + 2 * 2 * 8, 64)
    x = torch.randn(2, 12, 64, dtype=torch.float64)
    full = mixer(x)
    _, state = mixer.prefill(x[:, :8], capacity=12)
    assert state[0].k.shape[1] == 2  # the cache holds the KV heads only
    steps = []
    for t in range(8, 12):
        y, state = mixer.step(x[:, t:t + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 8:])


def test_the_ungrouped_mixer_keeps_its_layout_and_weights():
    torch.manual_seed(0)
    before = torch.nn.Linear(64, 192, bias=False).weight.detach().clone()
    torch.manual_seed(0)
    mixer = AttentionMixer(64, 8, variant=registry.get("vanilla"))
    torch.testing.assert_close(mixer.qkv.weight, before)  # same draw, same shape: trained runs unchanged
    x = torch.randn(1, 5, 64)
    q, k, v = mixer._heads(x)
    old = mixer.qkv(x).view(1, 5, 3, 8, 8).permute(2, 0, 3, 1, 4)
    for a, b in zip((q, k, v), old, strict=True):
        torch.testing.assert_close(a, b)


def test_a_mixer_of_a_variant_without_grouped_kv_refuses_kv_heads():
    undeclared = fake_variant()
    undeclared.mixer_factory = lambda d_model, n_heads, **params: AttentionMixer(
        d_model, n_heads, variant=undeclared, **params)
    with pytest.raises(Unsupported, match="grouped KV heads not declared"):
        undeclared.mixer(64, 8, kv_heads=2)
    assert undeclared.mixer(64, 8, kv_heads=8).kv_heads == 8  # n_heads itself is the ungrouped mixer
    with pytest.raises(ValueError, match="divide"):
        AttentionMixer(64, 8, variant=registry.get("vanilla"), kv_heads=3)


# --- xformers' 5-D layout, through a fake that follows its documented semantics -----------------------------

class _BottomRight:
    """Stands for xformers' LowerTriangularFromBottomRightMask."""


def fake_xformers_ops(calls: list):
    """xformers.ops as our call sites reach it, following its documented semantics: [B, M, G, H, K] (or
    [B, M, H, K]), every (group, head) attending on its own; it does not broadcast, so k and v must come
    with H heads per group. The keywords are memory_efficient_attention's own (0.0.35)."""

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None,
                                   output_dtype=None):
        calls.append(query.ndim)
        assert query.ndim == key.ndim == value.ndim
        assert key.shape[2:-1] == query.shape[2:-1], "xformers does not broadcast the KV heads"
        move = lambda t: t.movedim(1, -2)  # noqa: E731  [B, M, ..., K] -> [B, ..., M, K]
        mask = None
        if isinstance(attn_bias, _BottomRight):
            mask = attention.causal_mask(query.shape[1], key.shape[1], query.device)
        return softmax_attention(move(query), move(key), move(value), mask).movedim(-2, 1)

    bias = SimpleNamespace(LowerTriangularFromBottomRightMask=_BottomRight)
    return SimpleNamespace(memory_efficient_attention=memory_efficient_attention,
                           fmha=SimpleNamespace(attn_bias=bias))


def test_the_xformers_layout_is_g_groups_of_h_query_heads_with_expanded_kv(monkeypatch):
    from variants import flash

    q, k, v = draw(2)
    lq, lk, lv = flash.xformers_layout(q, k, v)
    assert lq.shape == (2, 24, 2, 2, 16) and lk.shape == (2, 24, 2, 2, 16)
    assert lk.stride(3) == 0 and lv.stride(3) == 0  # expanded views: never a copy of the KV heads
    torch.testing.assert_close(lq[:, :, 1, 0], q[:, 2])  # query head 2 = group 1, head 0
    torch.testing.assert_close(lk[:, :, 1, 1], k[:, 1])
    calls = []
    ops = fake_xformers_ops(calls)
    monkeypatch.setattr(flash, "xformers_ops", lambda: ops)
    for causal in (False, True):
        for n_q in (24, 13, 30):  # square, fewer queries, more (blind queries cut off)
            qq = draw(2, n_q=n_q)[0]
            out = registry.get("flash-xformers").attention_fn(qq, k, v, causal=causal)
            ref = contract.reference(registry.get("vanilla"), qq, k, v, causal, {})
            torch.testing.assert_close(out, ref)
    assert set(calls) == {5}
    out = registry.get("flash-xformers").attention_fn(q, repeat_kv(k, 2), repeat_kv(v, 2), causal=True)
    assert calls[-1] == 4  # ungrouped: the 4-D layout as before


def test_xformers_grouped_backward_is_unsupported_with_its_reason(monkeypatch):
    from variants import flash

    ops = fake_xformers_ops([])
    monkeypatch.setattr(flash, "xformers_ops", lambda: ops)
    q, k, v = (t.requires_grad_() for t in draw(2))
    with pytest.raises(Unsupported, match="forward pass only"):
        flash.xformers_attention(q, k, v)
    with torch.no_grad():
        assert flash.xformers_attention(q, k, v).shape == q.shape


def test_flex_attention_runs_grouped_kv_eagerly_with_enable_gqa():
    """The CUDA path's call (FlexAttention, enable_gqa, a per-query-head block mask) run eagerly on CPU."""
    from harness import flex
    from variants import sparse

    q, k, v = draw(2, n_q=32, n_k=32, dtype=torch.float32)
    params = {**sparse.BIGBIRD_DEFAULTS, "block_size": 8}
    for causal in (False, True):
        out = flex.flex_masked_attention(q, k, v, sparse.bigbird_predicate, causal, params, compiled=False)
        ref = contract.reference(registry.get("sparse-bigbird"), q, k, v, causal, params)
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


# --- the CUDA call sites (right by the libraries' source; run where there is a GPU) -------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("name", ["flash-sdpa", "flash-efficient", "flash-cudnn", "flash-xformers",
                                  "sparse-bigbird", "sparse-strided", "longformer", "longformer-xformers",
                                  "swa-sinks", "swa-learned-sinks", "vanilla", "linear", "performer"])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_cuda_grouped_fast_paths_match_their_reference(name, kv_heads):
    v = registry.get(name)
    ok, reason = v.supports("cuda", torch.bfloat16, 64, True, grouped=True)
    if not ok:
        pytest.skip(reason)
    params = v.small_params if name != "longformer-xformers" else {**v.small_params, "global_tokens": 0}
    for causal in causal_settings(v):
        outcome = contract.run(v, "random", contract.Setting(n=256, dtype=torch.bfloat16, device="cuda",
                                                             causal=causal, n_heads=8, kv_heads=kv_heads,
                                                             params=params))
        assert outcome.status != "fail", outcome.line()


@pytest.mark.cuda
def test_cuda_sdpa_grouped_training_matches_the_twin():
    v = registry.get("flash-sdpa")
    q, k, val = (t.to("cuda", torch.bfloat16).requires_grad_() for t in draw(2, head_dim=64))
    out = v.attention(q, k, val, causal=True)
    out.float().sum().backward()
    assert k.grad.shape == k.shape and torch.isfinite(k.grad).all()


# --- the exactness suite -----------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["quick", "standard"])
def test_exactness_plans_grouped_checks_for_every_attention_variant(profile):
    cases = E.cases(profile, "cpu", registry.names())
    grouped = [c for c in cases if c.kv_heads is not None]
    attention_variants = {n for n in registry.names() if registry.get(n).attention_fn is not None}
    assert {c.variant for c in grouped} == attention_variants
    assert {(c.n_heads, c.kv_heads) for c in grouped} == {(4, 1), (4, 2)}
    kinds, dtypes = E.GROUPED_QUICK if profile == "quick" else (E.GROUPED_KINDS, E.DTYPES)
    assert {c.input_kind for c in grouped} == set(kinds) and {c.dtype for c in grouped} == set(dtypes)
    ungrouped = [c for c in cases if c.kv_heads is None]
    assert all("kv_heads" not in c.identity() for c in ungrouped)  # ADDED_LATER: the old ids stand
    with pytest.raises(ValueError):
        E.ExactnessCase(variant="vanilla", device="cpu", input_kind="random", seq_len=16, n_heads=4,
                        kv_heads=3)


@pytest.mark.parametrize("name", ["vanilla", "performer", "swa-learned-sinks", "sparse-bigbird"])
def test_a_grouped_exactness_row_passes_the_gate_and_names_its_grouping(name):
    v = registry.get(name)
    case = E.ExactnessCase(variant=name, device="cpu", dtype="float32", input_kind="random", seq_len=32,
                           n_heads=4, kv_heads=1, params=v.small_params, causal=True)
    with torch.no_grad():
        row = E.run(case)
    assert row["within_tolerance"] and "kv_heads=1 of 4" in row["check_detail"]
    assert row["rel_err"] is not None


def test_a_grouped_exactness_check_catches_a_kernel_that_reads_the_wrong_kv_head():
    v = registry.get("vanilla")
    tiled = Variant(name="tiled", family="vanilla", exact=True, support=Support(grouped_kv=True),
                    attention_fn=lambda q, k, val, causal=False: v.attention_fn(
                        q, k.repeat(1, q.shape[1] // k.shape[1], 1, 1),
                        val.repeat(1, q.shape[1] // k.shape[1], 1, 1), causal=causal))
    setting = contract.Setting(n=32, dtype=torch.float32, n_heads=4, head_dim=16, kv_heads=2)
    outcome = contract.run(tiled, "random", setting)
    assert outcome.status == "fail"


# --- the throughput case, its decode memory and the memory model -------------------------------------------

def tcase(**fields) -> planning.Case:
    fields = {"variant": "vanilla", "device": "cpu", "mode": "fwd", "level": "kernel", "seq_len": 96,
              "total_tokens": 192, "n_heads": 4, "head_dim": 64, "budget_ms": 10, "warmup_ms": 0, **fields}
    return planning.Case(batch=planning.batch_for(fields["total_tokens"], fields["seq_len"]), **fields)


def test_kv_heads_is_added_later_and_n_heads_itself_is_the_ungrouped_case():
    plain, same = tcase(), tcase(kv_heads=4)
    assert same.kv_heads is None and same.case_id == plain.case_id
    assert "kv_heads" not in plain.identity()
    assert tcase(kv_heads=2).case_id != plain.case_id
    for bad in (3, 0, 8):
        with pytest.raises(ValueError):
            tcase(kv_heads=bad)


def test_the_plan_repeats_every_case_at_each_kv_heads_and_refuses_what_does_not_divide():
    plain = planning.plan("quick", "cpu", ["vanilla"])
    grouped = planning.plan("quick", "cpu", ["vanilla"], kv_heads=[1, 2])
    square = [c for c in plain if c.kind == "sweep" and c.layout == "square"]  # ragged cases: n_heads only
    assert len([c for c in grouped if c.kind == "sweep"]) == 2 * len(square)
    assert {c.kv_heads for c in grouped if c.kind == "sweep"} == {1, 2}
    with pytest.raises(ValueError, match="--kv-heads 3 must be at least 1 and divide n_heads"):
        planning.plan("quick", "cpu", ["vanilla"], kv_heads=[3])
    with pytest.raises(ValueError, match="--kv-heads 0"):
        planning.plan("quick", "cpu", ["vanilla"], kv_heads=[0])


def decode_bytes(**fields) -> tuple[int, str]:
    work = workloads.build_workload(tcase(mode="decode", **fields))
    return work.state_bytes, work.state_kind


def test_the_kv_cache_shrinks_with_kv_heads_and_a_recurrent_state_with_its_groups():
    b, d, n = 2, 64, 96
    for kv in (1, 2, None):
        heads = kv or N_HEADS
        assert decode_bytes(kv_heads=kv) == (2 * b * heads * (n + 1) * d * 4, "kv_cache")
        assert decode_bytes(kv_heads=kv, level="layer") == (2 * b * heads * (n + 1) * d * 4, "kv_cache")
        # linear: S (d x d), z (d) and the shift per KV head, in float32
        assert decode_bytes(variant="linear", kv_heads=kv) == (b * heads * (d * d + d + 1) * 4, "recurrent")
    window, sinks = 8, 2  # the window's cache is bounded whatever N: sink tokens + window keys, own storage
    assert decode_bytes(variant="swa-sinks", kv_heads=1, params={"window": window, "sink_tokens": sinks}) == \
        (2 * b * 1 * (window + sinks) * d * 4, "kv_cache")


def test_decode_rows_put_the_bytes_per_sequence_in_the_column_of_what_they_hold():
    info = {"decode_state_bytes": 800, "decode_state_kind": "kv_cache", "case": {"batch": 4}}
    assert measuring.decode_memory_columns(info) == {"kv_cache_bytes": 200, "state_bytes": None}
    info["decode_state_kind"] = "recurrent"
    assert measuring.decode_memory_columns(info) == {"kv_cache_bytes": None, "state_bytes": 200}
    assert measuring.decode_memory_columns({"case": {"batch": 1}}) == {"kv_cache_bytes": None,
                                                                         "state_bytes": None}


def test_grouped_cases_of_a_mixer_only_family_are_unsupported_rows():
    status, reason, _ = runner.execute("suites.throughput.suite",
                                       tcase(variant="mamba", level="layer", mode="decode", kv_heads=1),
                                       RunContext())
    assert status == "unsupported" and "no KV heads" in reason


def test_the_memory_model_counts_k_and_v_at_kv_heads():
    b, h, n, d = 2, 8, 128, 64
    full = costs.KernelCall("cpu", "x", torch.float16, b, h, n, d)
    mqa = costs.KernelCall("cpu", "x", torch.float16, b, h, n, d, kv_heads=1)
    saved = 2 * b * (h - 1) * n * d  # elements of k and v no longer held
    assert costs.fused_attention_bytes(full) - costs.fused_attention_bytes(mqa) == saved * 2
    assert costs.dense_softmax_bytes(full) - costs.dense_softmax_bytes(mqa) == saved * (2 + 4)  # + upcast
    vanilla = registry.get("vanilla")
    assert vanilla.predicted_peak_bytes("cpu", "float16", b, h, n, d, kv_heads=1) == \
        costs.dense_softmax_bytes(mqa)
    assert vanilla.predicted_peak_bytes("cpu", "float16", b, h, n, d) == costs.dense_softmax_bytes(full)


def test_layer_flops_count_the_smaller_kv_projection():
    from harness import flops

    assert flops.projection_flops("fwd", 10, 64) == 8 * 10 * 64 * 64 * flops.PROJECTION_MODE_FACTOR["fwd"]
    assert flops.projection_flops("fwd", 10, 64, 16) < flops.projection_flops("fwd", 10, 64)


# --- the command line ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--kv-heads", "3"], "--kv-heads 3 must be at least 1 and divide n_heads 4"),
    (["--kv-heads", "0"], "--kv-heads 0 must be at least 1 and divide n_heads 4"),
    (["--kv-heads", "2", "--find-max-n"], "--find-max-n takes no --kv-heads"),
])
def test_bad_kv_heads_exit_2_with_one_line(monkeypatch, capsys, tmp_path, args, message):
    import sys

    from harness import cli

    monkeypatch.setattr(sys, "argv", ["attnbench", "run", "--suite", "throughput", "--device", "cpu",
                                      "-v", "vanilla", "--out", str(tmp_path / "run"), *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
