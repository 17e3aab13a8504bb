"""Linear attention: the chunked/einsum paths against the O(N^2) definition, gradients, the fla parity."""

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


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=["square", "short-q", "long-q"])
def test_float32_matches_float64_definition(causal, shape):
    q, k, v = qkv(n_q=shape[0], n_k=shape[1])
    out = registry.get("linear").attention(q, k, v, causal=causal)
    assert out.dtype == torch.float32
    expected = linear_attention_reference(q.double(), k.double(), v.double(), causal=causal)
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_half_inputs_accumulate_in_float32(dtype, causal):
    q, k, v = qkv(n_q=130, dtype=dtype)
    out = linear_attention(q, k, v, causal=causal)
    assert out.dtype == dtype
    expected = linear_attention_reference(q.double(), k.double(), v.double(), causal=causal)
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 64, 128])
@pytest.mark.parametrize("shape", SHAPES, ids=["square", "short-q", "long-q"])
def test_chunked_prefix_sums_equal_definition_for_any_chunk(chunk_size, shape):
    q, k, v = qkv(n_q=shape[0], n_k=shape[1], dtype=torch.float64)
    out = linear_attention(q, k, v, causal=True, chunk_size=chunk_size)
    torch.testing.assert_close(out, linear_attention_reference(q, k, v, causal=True), atol=1e-12, rtol=1e-10)


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


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(5, 5), (3, 5), (5, 3)], ids=["square", "short-q", "long-q"])
def test_gradients_match_finite_differences(causal, shape):
    q, k, v = qkv(b=1, h=2, n_q=shape[0], n_k=shape[1], d=4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: linear_attention(*t, causal=causal, chunk_size=2), (q, k, v),
                                     fast_mode=True)


def test_backend_names_the_causal_path():
    v = registry.get("linear")
    assert v.backend_for("cpu") == "torch-chunked"
    assert v.backend_for("cuda") == ("fla-chunk" if linear.fla_backend_available() else "torch-chunked")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(300, 300), (100, 300)], ids=["square", "short-q"])
def test_fla_kernel_matches_chunked_pytorch_on_gpu(dtype, shape):
    if not linear.fla_backend_available():
        pytest.skip("fla-core not installed")
    q, k, v = qkv(n_q=shape[0], n_k=shape[1], d=64, dtype=dtype, device="cuda", requires_grad=True)
    phi_q, phi_k = elu_feature_map(q.float()), elu_feature_map(k.float())
    fast = normalized_linear_attention(phi_q, phi_k, v, causal=True, eps=1e-6, use_fla=True)
    slow = normalized_linear_attention(phi_q, phi_k, v, causal=True, eps=1e-6, use_fla=False)
    tol = dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(fast, slow, **tol)
    torch.testing.assert_close(linear_attention(q, k, v, causal=True).float(), slow, **tol)

    grad_out = torch.randn_like(slow)
    fast_grads = torch.autograd.grad(fast, (q, k, v), grad_out)
    slow_grads = torch.autograd.grad(slow, (q, k, v), grad_out)
    for fast_grad, slow_grad in zip(fast_grads, slow_grads, strict=True):
        assert torch.isfinite(fast_grad).all()
        scale = slow_grad.float().abs().max()
        torch.testing.assert_close(fast_grad.float() / scale, slow_grad.float() / scale, **tol)
