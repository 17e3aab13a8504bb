"""Fused exact kernels: the CPU flash path runs the fused kernel, backend pinning, decode masks, CUDA parity.
(Its outputs and gradients against the float64 reference in every dtype: tests/test_references.py.)"""

import sys

import pytest
import torch
from torch.profiler import profile

from harness import masks, registry
from harness.attention import softmax_attention
from harness.registry import ALL_FLOAT, Unsupported
from tests.conftest import TOLERANCE, assert_same_output_and_grads, qkv

FLASH = ["flash-sdpa", "flash-cudnn", "flash-efficient", "flash-xformers"]


def reference(q, k, v, causal):
    mask = masks.dense(masks.causal(), q.shape[-2], k.shape[-2]) if causal else None
    return softmax_attention(q.double(), k.double(), v.double(), mask)


def test_queries_before_the_first_key_output_zero_and_the_rest_is_square_causal():
    q, k, v = qkv(n_q=50, n_k=20)
    out = registry.get("flash-sdpa").attention(q, k, v, causal=True)
    assert out[..., :30, :].abs().max() == 0
    square = registry.get("flash-sdpa").attention(q[..., 30:, :], k, v, causal=True)
    torch.testing.assert_close(out[..., 30:, :], square)


@pytest.mark.parametrize("shape", [(64, 64), (23, 64), (64, 23)], ids=["square", "short-q", "long-q"])
def test_cpu_flash_runs_the_fused_kernel_forward_and_backward(shape):
    q, k, v = qkv(n_q=shape[0], n_k=shape[1], requires_grad=True)
    with profile() as prof:
        registry.get("flash-sdpa").attention(q, k, v, causal=True).sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops


@pytest.mark.parametrize("name", ["flash-cudnn", "flash-efficient"])
def test_pinned_backend_without_a_kernel_raises_unsupported(name):
    with pytest.raises(Unsupported, match="cannot run these inputs"):
        registry.get(name).attention(*qkv(n_q=16), causal=True)


@pytest.mark.parametrize("causal", [False, True])
def test_xformers_missing_raises_unsupported(monkeypatch, causal):
    monkeypatch.setitem(sys.modules, "xformers", None)  # makes `import xformers.ops` fail
    with pytest.raises(Unsupported, match="xformers not installed"):
        registry.get("flash-xformers").attention(*qkv(n_q=16), causal=causal)


def test_declared_support():
    sdpa = registry.get("flash-sdpa")
    for dtype in ALL_FLOAT:
        assert sdpa.supports("cpu", dtype, head_dim=512, causal=True) == (True, "ok")
    for name in ["flash-cudnn", "flash-efficient", "flash-xformers"]:
        ok, reason = registry.get(name).supports("cpu", torch.float32, 64)
        assert not ok and reason == "runs on cuda only"
    assert len({registry.get(n).backend_for("cuda") for n in FLASH}) == len(FLASH)
    assert sdpa.backend_for("cpu") != sdpa.backend_for("cuda")


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16, causal=True, shape=(256, 256))
@pytest.mark.parametrize("name", FLASH)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(256, 256), (100, 300), (300, 100), (1, 129)],
                         ids=["square", "short-q", "long-q", "decode"])
def test_cuda_flash_matches_vanilla(name, dtype, causal, shape):
    v = registry.get(name)
    ok, reason = v.supports("cuda", dtype, 64, causal)
    if not ok:
        pytest.skip(reason)
    q, k, val = qkv(n_q=shape[0], n_k=shape[1], d=64, dtype=dtype, device="cuda", requires_grad=True)
    out = v.attention(q, k, val, causal=causal)
    want = registry.get("vanilla").attention(q, k, val, causal=causal)
    assert out.dtype == dtype
    assert_same_output_and_grads(out, want, (q, k, val), TOLERANCE[dtype], dict(atol=5e-2, rtol=5e-2))


@pytest.mark.parametrize("name", ["flash-cudnn", "flash-sdpa", "flash-efficient"])
def test_a_causal_decode_step_passes_no_mask(monkeypatch, name):
    """One query against a cache sees every key: SDPA gets no mask and is_causal=False (no CausalBias
    built per step). A spy stands in for F.scaled_dot_product_attention (cuDNN needs a GPU)."""
    import variants.flash as flash

    calls = []

    def spy(q, k, v, attn_mask=None, is_causal=False):
        calls.append((q.shape[-2], k.shape[-2], attn_mask, is_causal))
        return softmax_attention(q, k, v)

    monkeypatch.setattr(flash.F, "scaled_dot_product_attention", spy)
    v = registry.get(name)
    q, k, val = qkv(n_q=1, n_k=40)
    out = v.attention_fn(q, k, val, causal=True)
    assert calls == [(1, 40, None, False)]
    torch.testing.assert_close(out, reference(q, k, val, causal=True).float())
    state = v.prefill(k, val, capacity=41)
    v.decode(q, k[..., :1, :], val[..., :1, :], state)
    assert calls[-1] == (1, 41, None, False)
    v.attention_fn(*qkv(n_q=3, n_k=40), causal=True)  # more than one query still gets the bottom-right mask
    assert calls[-1][2] is not None and calls[-1][3] is False
