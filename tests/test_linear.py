"""Linear attention: the chunked paths against the O(N^2) definition at any chunk size, segments, alignment,
eps, the fla parity. (Every dtype and the gradients against its reference: tests/test_references.py.)"""

import sys

import pytest
import torch

from harness import registry
from tests.conftest import TOLERANCE, qkv
from variants import linear
from variants.linear import (
    elu_feature_map,
    linear_attention,
    linear_attention_reference,
    normalized_linear_attention,
)

SHAPES = [(100, 100), (37, 100), (100, 37)]  # 100 is not a multiple of the 64-query chunk


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 64, 128])
@pytest.mark.parametrize("shape", SHAPES, ids=["square", "short-q", "long-q"])
def test_chunked_prefix_sums_equal_definition_for_any_chunk(chunk_size, shape):
    q, k, v = qkv(n_q=shape[0], n_k=shape[1], dtype=torch.float64)
    out = linear_attention(q, k, v, causal=True, chunk_size=chunk_size)
    torch.testing.assert_close(out, linear_attention_reference(q, k, v, causal=True), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("grad", [False, True])
def test_segments_of_the_causal_path_carry_the_state_exactly(monkeypatch, grad):
    """Many segments of few chunks (the path long sequences take) give the one-segment result."""
    q, k, v = qkv(n_q=100, requires_grad=grad)
    whole = linear_attention(q, k, v, causal=True, chunk_size=8)
    monkeypatch.setattr(linear, "SEGMENT_CHUNKS", 2)  # 100 tokens: 7 segments of 2 chunks of 8
    segmented = linear_attention(q, k, v, causal=True, chunk_size=8)
    torch.testing.assert_close(segmented, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(segmented, linear_attention_reference(q, k, v, causal=True),
                               **TOLERANCE[torch.float32])
    if grad:
        grads = torch.autograd.grad(segmented.sum(), (q, k, v))
        expected = torch.autograd.grad(linear_attention_reference(q, k, v, causal=True).sum(), (q, k, v))
        for g, e in zip(grads, expected, strict=True):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_causal_alignment_is_bottom_right():
    q, k, v = qkv(b=1, h=1, n_q=4, n_k=6, dtype=torch.float64)
    out = linear_attention(q, k, v, causal=True, chunk_size=3)
    # Query 0 sits at position 2: it sees keys 0..2 and nothing else.
    weights = elu_feature_map(q[..., :1, :]) @ elu_feature_map(k[..., :3, :]).transpose(-1, -2)
    expected = (weights @ v[..., :3, :]) / (weights.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(out[..., :1, :], expected)


def test_queries_before_the_first_key_output_zeros():
    q, k, v = qkv(n_q=10, n_k=4, requires_grad=True)
    out = linear_attention(q, k, v, causal=True)
    assert torch.isfinite(out).all() and out[..., :6, :].abs().max() == 0
    assert out[..., 6:, :].abs().min() > 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_eps_enters_the_denominator():
    q, k, v = qkv(n_q=20, dtype=torch.float64)
    small = linear_attention(q, k, v, causal=True, eps=1e-6)
    large = linear_attention(q, k, v, causal=True, eps=1e3)
    torch.testing.assert_close(large, linear_attention_reference(q, k, v, causal=True, eps=1e3))
    assert large.abs().max() < 0.5 * small.abs().max()


def test_backend_names_the_causal_path():
    v = registry.get("linear")
    assert v.backend_for("cpu") == "torch-chunked"
    assert v.backend_for("cuda") == ("fla-chunk" if linear.fla_backend_available() else "torch-chunked")


def check_fla_matches_chunked(device, dtype, shape, tol):
    """The fla path against the chunked PyTorch path, outputs and gradients. Each path gets its own
    feature nodes: backpropagating twice through shared ones would fail (their saved tensors are freed
    by the first backward)."""
    q, k, v = qkv(n_q=shape[0], n_k=shape[1], d=64, dtype=dtype, device=device, requires_grad=True)

    def attend(use_fla):
        phi_q, phi_k = elu_feature_map(q.float()), elu_feature_map(k.float())
        return normalized_linear_attention(phi_q, phi_k, v, causal=True, eps=1e-6, use_fla=use_fla)

    fast, slow = attend(True), attend(False)
    torch.testing.assert_close(fast, slow, **tol)
    grad_out = torch.randn_like(slow)
    fast_grads = torch.autograd.grad(fast, (q, k, v), grad_out)
    slow_grads = torch.autograd.grad(slow, (q, k, v), grad_out)
    for fast_grad, slow_grad in zip(fast_grads, slow_grads, strict=True):
        assert torch.isfinite(fast_grad).all()
        scale = slow_grad.float().abs().max()
        torch.testing.assert_close(fast_grad.float() / scale, slow_grad.float() / scale, **tol)
    return q, k, v, slow


def fake_fla(calls):
    """A stand-in for fla-core 0.6's fla.ops.linear_attn.chunk_linear_attn (same signature), computing
    the unnormalised causal numerator in PyTorch on [B, T, H, K] inputs."""
    import types

    def chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False,
                          normalize=True, cu_seqlens=None):
        calls.append(dict(shape=tuple(q.shape), scale=scale, normalize=normalize))
        qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))  # [B, H, T, K]
        weights = (qh @ kh.transpose(-1, -2) * (1.0 if scale is None else scale)).tril()
        return (weights @ vh).transpose(1, 2).to(v.dtype), None

    modules = {name: types.ModuleType(name) for name in ("fla", "fla.ops", "fla.ops.linear_attn")}
    modules["fla.ops.linear_attn"].chunk_linear_attn = chunk_linear_attn
    return modules


@pytest.mark.parametrize("shape", [(100, 100), (40, 100)], ids=["square", "short-q"])
def test_fla_parity_check_runs_on_cpu_with_a_stand_in_for_fla(monkeypatch, shape):
    calls = []
    for name, module in fake_fla(calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    check_fla_matches_chunked("cpu", torch.float32, shape, TOLERANCE[torch.float32])
    assert calls and all(c["scale"] == 1.0 and c["normalize"] is False for c in calls)
    assert calls[0]["shape"] == (2, max(shape), 3, 64)  # [B, T, H, K], T after bottom-right padding


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16, shape=(300, 300))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(300, 300), (100, 300)], ids=["square", "short-q"])
def test_fla_kernel_matches_chunked_pytorch_on_gpu(dtype, shape):
    if not linear.fla_backend_available():
        pytest.skip("fla-core not installed")
    tol = dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else dict(atol=1e-2, rtol=1e-2)
    q, k, v, slow = check_fla_matches_chunked("cuda", dtype, shape, tol)
    torch.testing.assert_close(linear_attention(q, k, v, causal=True).float(), slow, **tol)
