"""The registry contract that every variant honours, whatever its family.

The checks of the contract's behaviour (the float64 reference per dtype, Nq != Nk, no visible key,
causality, decode) live in harness.contract, which the doctor and the exactness suite also run: here every
registered variant goes through them on the CPU. The declaration's own promises are tested below.
"""

import itertools

import pytest
import torch

from harness import contract, registry
from harness.attention import softmax_attention
from harness.registry import ALL_FLOAT, package_available
from tests.conftest import TOLERANCE, qkv, skip_unless_cpu_runnable

ALL = registry.names()


def test_names_sorted_and_unknown_name_lists_valid_ones():
    assert ALL == sorted(ALL)
    with pytest.raises(ValueError, match="valid names: .*vanilla"):
        registry.get("no-such-variant")


def test_the_seven_families_are_registered():
    seven = {"vanilla", "flash", "sparse", "longformer", "linear", "performer", "mamba"}
    assert seven <= {v.family for v in registry.all_variants()}


def test_exactly_one_baseline():
    assert [v.name for v in registry.all_variants() if v.baseline] == ["vanilla"]


def declared_reason(v, device: str, dtype: torch.dtype, head_dim: int, causal: bool) -> str | None:
    """What the variant's declaration rules out, worked out here from its Support fields (None: nothing)."""
    s = v.support
    if device not in s.dtypes:
        return "runs on"
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    if any(not package_available(m) for m in s.requires):
        return "not installed"
    if dtype not in s.dtypes[device]:
        return f"{str(dtype).removeprefix('torch.')} not supported on {device}"
    if s.max_head_dim is not None and head_dim > s.max_head_dim:
        return f"head_dim {head_dim} > {s.max_head_dim}"
    if head_dim % s.head_dim_multiple:
        return f"multiple of {s.head_dim_multiple}"
    if causal and not s.causal:
        return "causal masking not supported"
    if not causal and not s.non_causal:
        return "causal only"
    return None


@pytest.mark.parametrize("name", [  # these two run every accepted combination for over 5 s
    pytest.param(n, marks=pytest.mark.slow) if n in ("performer", "longformer-banded") else n for n in ALL])
def test_supports_follows_the_declaration_and_every_yes_on_cpu_runs(name):
    """supports() says no, naming the constraint, wherever the declaration rules a combination out; and
    every combination it accepts on the CPU computes a finite output of the asked dtype."""
    v = registry.get(name)
    accepted = 0
    for device, dtype, head_dim, causal in itertools.product(
            ("cpu", "cuda"), ALL_FLOAT, (16, 40, 64, 128, 256, 512), (False, True)):
        ok, reason = v.supports(device=device, dtype=dtype, head_dim=head_dim, causal=causal)
        expected = declared_reason(v, device, dtype, head_dim, causal)
        if expected is not None:
            assert not ok and expected in reason, (device, dtype, head_dim, causal, reason)
            continue
        check = v.support.check(device, dtype, head_dim, causal) if v.support.check else None
        assert (ok, reason) == ((False, check) if check else (True, "ok")), (device, dtype, head_dim, causal)
        if ok and device == "cpu" and v.attention_fn is not None:
            q, k, val = qkv(b=1, h=2, n_q=24, d=head_dim, dtype=dtype)
            out = v.attention(q, k, val, causal=causal)
            assert out.shape == q.shape and out.dtype == dtype, (dtype, head_dim)
            assert torch.isfinite(out).all(), (dtype, head_dim, causal)
            accepted += 1
    assert accepted > 0 or v.attention_fn is None or "cpu" not in v.support.dtypes


@pytest.mark.parametrize("name", ALL)
def test_declares_family_and_exactness(name):
    v = registry.get(name)
    assert isinstance(v.family, str) and v.family
    assert isinstance(v.exact, bool)
    # Every variant can be checked against a naive twin: attention against its reference (or masked
    # softmax), a mixer-only family's kernel against its kernel_reference.
    if v.attention_fn is None:
        assert v.kernel is not None and v.kernel_reference is not None and v.kernel_inputs is not None
    else:
        assert v.exact or v.reference is not None


def declared_unsupported(v, check: str, dtype: torch.dtype) -> bool:
    """Whether the variant's declaration rules the check out on the CPU (so it may not run)."""
    if not v.supports("cpu", dtype, 64, True)[0] and not v.supports("cpu", dtype, 64, False)[0]:
        return True
    if check in ("cross", "no_visible_key") or (check == "decode" and v.attention_fn is not None):
        return not v.support.cross  # a decoded token is one query against the cache's keys
    return check == "decode" and not hasattr(v.mixer(64, 2), "prefill")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("check", contract.CHECKS)
def test_every_variant_honours_the_contract_on_the_cpu(name, check):
    """Each check of harness.contract in float32 (the reference kinds of attention in bfloat16 too: the
    exactness suite runs every dtype), at a short length with the quick profile's parameters (a window or
    block smaller than the sequence): pass, or unsupported where the declaration says so."""
    v = registry.get(name)
    if check not in contract.applicable(v):
        assert contract.run(v, check, contract.Setting(n=100, dtype=torch.float32)).status == "unsupported"
        return
    both = check in contract.REFERENCE_KINDS and v.attention_fn is not None
    for dtype in (torch.float32, torch.bfloat16) if both else (torch.float32,):
        outcome = contract.run(v, check, contract.Setting(n=100, dtype=dtype, params=dict(v.small_params)))
        if outcome.status == "unsupported":
            assert declared_unsupported(v, check, dtype), outcome.line()
        else:
            assert outcome.passed, outcome.line()


@pytest.mark.parametrize("name", [n for n in ALL if registry.get(n).trainable])
def test_backward_gives_finite_gradients(name):
    v = registry.get(name)
    skip_unless_cpu_runnable(v, causal=True)
    mixer = v.mixer(64, 2)
    x = torch.randn(2, 70, 64, requires_grad=True)
    mixer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in mixer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ALL)
def test_unsupported_combination_returns_a_reason(name):
    v = registry.get(name)
    ok, reason = v.supports(device="cuda" if not torch.cuda.is_available() else "tpu",
                            dtype=torch.float32, head_dim=64)
    assert not ok and reason != "ok"
    ok, reason = v.supports(device="cpu", dtype=torch.float32, head_dim=100_000)
    assert isinstance(ok, bool) and reason


def test_fully_masked_rows_are_zero_not_nan_in_the_backward_pass_too():
    q, k, val = qkv(n_q=10, n_k=4, requires_grad=True)
    out = registry.get("vanilla").attention(q, k, val, causal=True)  # first 6 queries see no key
    assert torch.isfinite(out).all() and out[..., :6, :].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("name", [n for n in ALL if registry.get(n).mask is not None])
def test_mask_without_params_is_the_pattern_attention_computes_by_default(name):
    v = registry.get(name)
    skip_unless_cpu_runnable(v)
    q, k, val = qkv(n_q=150)
    expected = softmax_attention(q.double(), k.double(), val.double(), v.mask(150, 150))
    torch.testing.assert_close(v.attention(q, k, val).double(), expected, **TOLERANCE[torch.float32])
