"""The accuracy suite's Part A: every row a contract check with its tolerance, the method's error apart."""

import dataclasses
import typing
from pathlib import Path

import pytest
import torch

from harness import contract, registry, runner
from harness.attention import softmax_attention
from harness.context import RunContext
from suites import accuracy as A
from suites import exactness as E
from suites.exactness import ExactnessCase

ROOT = Path(__file__).resolve().parent.parent
GATE_COLUMNS = {"checked_err", "tolerance", "within_tolerance", "check_detail"}


def exactness(variant, dtype="float32", kind="random", n=128, causal=True, **params):
    case = ExactnessCase(variant=variant, device="cpu", dtype=dtype, input_kind=kind, seq_len=n,
                         causal=causal, params=params)
    with torch.no_grad():
        return E.run(case)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5), ("bfloat16", 5e-2)])
def test_exact_variants_match_the_reference_in_their_dtype(dtype, tol):
    row = exactness("vanilla", dtype)
    assert row["reference"] == "softmax" and row["full_attention_err"] is None
    assert row["rel_err"] < tol and row["max_abs_err"] < 50 * tol
    assert row["within_tolerance"] and row["checked_err"] <= row["tolerance"]
    if dtype == "bfloat16":
        assert row["rel_err"] > 1e-4  # rounding to bf16 shows


def test_masked_families_are_exact_under_their_mask_and_far_from_full_attention():
    masked = (("longformer", {"window": 8, "global_tokens": 2}), ("sparse-bigbird", {"block_size": 8}))
    for name, params in masked:
        row = exactness(name, **params)
        assert row["reference"] == "masked_softmax" and row["rel_err"] < 1e-5 and row["within_tolerance"]
        assert row["full_attention_err"] > 0.1  # the pattern leaves out much of the attention
    wide = exactness("longformer", window=1000, global_tokens=0)
    assert wide["full_attention_err"] < 1e-12  # a window covering the sequence is full attention


def test_the_float64_references_are_shared_across_dtypes_and_never_across_variants(monkeypatch):
    """A variant's dtypes share its float64 references on the unrounded inputs (cached); the figures equal
    those computed afresh; a name registered again with another mask is another variant."""
    caches = (E._unrounded_references, E._softmax_reference, E._unrounded_inputs)
    for cache in caches:
        cache.cache_clear()
    float32 = exactness("longformer", "float32", window=8, global_tokens=2)
    exactness("longformer", "float64", window=8, global_tokens=2)
    assert E._unrounded_references.cache_info().hits == 1
    for cache in caches:
        cache.cache_clear()
    assert exactness("longformer", "float32", window=8, global_tokens=2) == float32
    assert float32["full_attention_err"] > 0.1
    causal_only = dataclasses.replace(registry.get("longformer"),
                                      mask_fn=lambda n_q, n_k, causal=False, **params: torch.ones(
                                          n_q, n_k, dtype=torch.bool).tril())
    monkeypatch.setitem(registry._REGISTRY, "longformer", causal_only)
    assert exactness("longformer", "float32", window=8, global_tokens=2)["full_attention_err"] < 1e-12


def test_approximation_error_is_measured_apart_and_never_judged():
    row = exactness("linear", causal=False)
    assert row["reference"] == "softmax" and row["rel_err"] > 0.05  # linear attention is not softmax
    assert row["impl_err"] < 1e-5  # but float32 reproduces its own float64 result
    assert row["within_tolerance"] and row["checked_err"] < 1e-5  # the gate judges the implementation
    row = exactness("performer", causal=False, nb_features=32)
    assert row["nb_features"] == 32 and row["impl_err"] < 1e-5 and row["within_tolerance"]


def test_performer_error_shrinks_with_features_on_small_logits():
    """FAVOR+ estimates exp(q.k): more features, less variance (here with moderate norms)."""
    q, k, v = (t * 0.5 for t in contract.qkv("random", 64, 64, head_dim=16))
    ref = softmax_attention(q, k, v)
    errors = [E.relative_error(registry.get("performer").attention(q, k, v, nb_features=m, seed=s), ref)
              for m in (8, 512) for s in range(3)]
    assert sum(errors[3:]) < 0.5 * sum(errors[:3])


def test_mamba_scan_held_to_the_float64_recurrence():
    fp32, bf16 = exactness("mamba", "float32", n=64), exactness("mamba", "bfloat16", n=64)
    assert fp32["reference"] == "kernel_reference" and fp32["rel_err"] < 1e-5
    assert fp32["rel_err"] < bf16["rel_err"] < 0.1
    assert fp32["checked_err"] == fp32["rel_err"] and fp32["within_tolerance"] and bf16["within_tolerance"]


def test_structured_inputs_are_what_they_claim():
    peak = {}
    for kind in ("random", "peaked", "large_logits"):
        q, k, _ = contract.qkv(kind, 256, 256)
        logits = q @ k.mT / 8
        peak[kind] = torch.softmax(logits, -1).amax(-1).mean()
        if kind == "large_logits":
            assert logits.abs().max() > 100  # exp() overflows float32 and bfloat16 past 88.7
    assert peak["large_logits"] > peak["peaked"] > 0.5 > 0.1 > peak["random"]
    _, k, _ = contract.qkv("near_duplicate", 256, 256)
    assert (k[..., contract.DUPLICATE_KEYS:, :] - k[..., :-contract.DUPLICATE_KEYS, :]).abs().max() < 0.01


@pytest.mark.parametrize("kind", contract.CHECKS)
def test_every_check_is_a_row_within_its_tolerance_for_a_correct_variant(kind):
    name = "mamba" if kind == "mixer" else "vanilla"
    row = exactness(name, "bfloat16", kind=kind, n=64)
    assert GATE_COLUMNS <= set(row) and row["within_tolerance"] is True
    assert row["check_detail"].startswith(f"{kind}: ") and "bfloat16" in row["check_detail"]
    assert contract.tolerance(torch.bfloat16, 32) <= row["tolerance"] < 0.1  # bf16's, grown by N and logits


def test_a_check_that_cannot_run_is_an_unsupported_row_naming_the_check():
    case = ExactnessCase(variant="longformer-banded", device="cpu", input_kind="cross", seq_len=64)
    status, reason, _ = runner.execute("suites.accuracy", case, RunContext())
    assert status == "unsupported" and reason.startswith("cross: ") and "Nq == Nk" in reason


def test_the_input_kinds_are_the_contract_checks():
    kinds = typing.get_args(ExactnessCase.model_fields["input_kind"].annotation)
    assert set(kinds) == set(contract.CHECKS)
    assert set(E.MEASURED_KINDS) | set(E.CHECK_KINDS) == set(contract.CHECKS)


def test_quick_plan_runs_every_applicable_check_at_every_dtype():
    cases = [c for c in A.plan("quick", "cpu", variants=["vanilla", "mamba"]) if isinstance(c, ExactnessCase)]
    seen = {(c.variant, c.input_kind, c.dtype) for c in cases}
    for name in ("vanilla", "mamba"):
        for kind in contract.applicable(registry.get(name)):
            assert {(name, kind, d) for d in E.DTYPES} <= seen, (name, kind)
    assert not {k for v, k, _ in seen if v == "mamba"} & {"peaked", "cross", "no_visible_key"}


@pytest.mark.cuda
@pytest.mark.parametrize("variant", ["vanilla", "longformer", "linear", "mamba"])
def test_cuda_exactness_rows(variant):
    case = ExactnessCase(variant=variant, device="cuda", dtype="bfloat16", input_kind="random", seq_len=256)
    ok, _ = registry.get(variant).supports("cuda", torch.bfloat16, case.head_dim, True)
    if not ok:
        pytest.skip(f"{variant} does not take bf16 on this GPU")
    with torch.no_grad():
        row = E.run(case)
        cpu = E.run(case.model_copy(update={"device": "cpu"}))
    assert row["reference"] == cpu["reference"] and row["within_tolerance"]
    assert row["rel_err"] < 5e-2 and abs(row["rel_err"] - cpu["rel_err"]) < 5e-2
