"""The registry contract that every variant honours, whatever its family."""

import itertools

import pytest
import torch

from harness import registry
from harness.attention import softmax_attention
from harness.registry import ALL_FLOAT, Unsupported, package_available
from tests.conftest import TOLERANCE, attention_variants, qkv, skip_unless_cpu_runnable

ALL = registry.names()
ATTENTION = [v.name for v in attention_variants()]


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


@pytest.mark.parametrize("name", ATTENTION)
def test_causal_attention_never_looks_ahead(name):
    v = registry.get(name)
    skip_unless_cpu_runnable(v, causal=True)
    q, k, val = qkv(n_q=96)
    t = 70
    out = v.attention(q, k, val, causal=True)
    k2, v2 = k.clone(), val.clone()
    k2[..., t:, :] += 3.0 * torch.randn_like(k2[..., t:, :])
    v2[..., t:, :] += 3.0 * torch.randn_like(v2[..., t:, :])
    out2 = v.attention(q, k2, v2, causal=True)
    torch.testing.assert_close(out2[..., :t, :], out[..., :t, :], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out2[..., t:, :], out[..., t:, :], atol=1e-3)


@pytest.mark.parametrize("name", ALL)
def test_causal_mixer_never_looks_ahead(name):
    v = registry.get(name)
    skip_unless_cpu_runnable(v, causal=True)
    mixer = v.mixer(64, 2).eval()
    x = torch.randn(2, 80, 64)
    t = 50
    x2 = x.clone()
    x2[:, t:] += torch.randn_like(x2[:, t:])
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
    assert y.shape == x.shape
    torch.testing.assert_close(y2[:, :t], y[:, :t], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y2[:, t:], y[:, t:], atol=1e-4)


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


def test_fully_masked_rows_are_zero_not_nan():
    q, k, val = qkv(n_q=10, n_k=4, requires_grad=True)
    out = registry.get("vanilla").attention(q, k, val, causal=True)  # first 6 queries see no key
    assert torch.isfinite(out).all() and out[..., :6, :].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("name", ATTENTION)
def test_kernel_decode_matches_full_causal_attention(name):
    v = registry.get(name)
    skip_unless_cpu_runnable(v, causal=True)
    q, k, val = qkv(n_q=40)
    try:
        state = v.prefill(k[..., :36, :], val[..., :36, :], capacity=40)
        outs = []
        for t in range(36, 40):
            o, state = v.decode(q[..., t:t + 1, :], k[..., t:t + 1, :], val[..., t:t + 1, :], state)
            outs.append(o)
    except Unsupported as e:
        pytest.skip(str(e))
    full = v.attention(q, k, val, causal=True)
    torch.testing.assert_close(torch.cat(outs, dim=-2), full[..., 36:, :], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_mixer_step_matches_forward(name):
    v = registry.get(name)
    skip_unless_cpu_runnable(v, causal=True)
    mixer = v.mixer(64, 2).eval()
    if not hasattr(mixer, "prefill"):
        pytest.skip(f"{name} mixer has no prefill/step yet")
    x = torch.randn(2, 30, 64)
    with torch.no_grad():
        try:
            _, state = mixer.prefill(x[:, :26], capacity=30)
            steps = []
            for t in range(26, 30):
                y, state = mixer.step(x[:, t:t + 1], state)
                steps.append(y)
        except Unsupported as e:
            pytest.skip(str(e))
        full = mixer(x)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 26:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", [n for n in ALL if registry.get(n).mask is not None])
def test_mask_without_params_is_the_pattern_attention_computes_by_default(name):
    v = registry.get(name)
    skip_unless_cpu_runnable(v)
    q, k, val = qkv(n_q=150)
    expected = softmax_attention(q.double(), k.double(), val.double(), v.mask(150, 150))
    torch.testing.assert_close(v.attention(q, k, val).double(), expected, **TOLERANCE[torch.float32])
