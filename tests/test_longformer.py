"""Longformer: mask properties, the Flex path, and the O(N * window) banded reference. (The dense paths
against softmax under the mask in every dtype: tests/test_references.py.)"""

import sys
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from harness import registry
from harness.attention import softmax_attention
from harness.flex import flex_masked_attention
from harness.registry import Unsupported
from tests.conftest import TOLERANCE, assert_same_output_and_grads, qkv
from variants.longformer import longformer_mask, longformer_predicate

SMALL = dict(window=5, global_tokens=3)
BANDED_CASES = [  # (n, window, global_tokens), edge cases included
    (64, 5, 3), (70, 0, 0), (50, 7, 0), (40, 60, 2), (30, 4, 45), (1, 3, 1),
]


def band_and_globals(n_q, n_k, window, global_tokens):
    """The square Longformer pattern from its definition, with triangular matrices."""
    ones = torch.ones(n_q, n_k, dtype=torch.bool)
    band = ones.triu(-window) & ones.tril(window)
    band[:global_tokens] = True
    band[:, :global_tokens] = True
    return band


@pytest.mark.parametrize(("window", "global_tokens"), [(5, 3), (0, 0), (200, 1), (2, 200)])
def test_mask_is_band_plus_global_rows_and_columns(window, global_tokens):
    n = 100
    want = band_and_globals(n, n, window, global_tokens)
    assert torch.equal(longformer_mask(n, n, window=window, global_tokens=global_tokens), want)
    causal = longformer_mask(n, n, causal=True, window=window, global_tokens=global_tokens)
    assert torch.equal(causal, want & torch.ones(n, n, dtype=torch.bool).tril())


def test_mask_row_width():
    n, w, g = 100, 5, 3
    rows = longformer_mask(n, n, window=w, global_tokens=g).sum(-1)
    assert (rows[:g] == n).all()
    assert (rows[g + w : n - w] == 2 * w + 1 + g).all()  # rows whose band is clear of the globals and edges
    causal_rows = longformer_mask(n, n, causal=True, window=w, global_tokens=g).sum(-1)
    assert (causal_rows[g + w :] == w + 1 + g).all()


def test_cross_attention_mask_is_aligned_bottom_right():
    n_q, n_k = 30, 100  # query i sits at key position i + 70
    mask = longformer_mask(n_q, n_k, window=4, global_tokens=2)
    assert torch.equal(mask, band_and_globals(n_k, n_k, 4, 2)[n_k - n_q :])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(100, 100), (100, 37)], ids=["square", "long-q"])  # eager Flex is slow
def test_flex_path_matches_float64_reference(causal, shape):
    """The CUDA code path (FlexAttention over the mask predicate), run eagerly on the CPU. The dense path
    is checked against the same reference with every variant (tests/test_references.py)."""
    q, k, v = qkv(n_q=shape[0], n_k=shape[1])
    mask = longformer_mask(*shape, causal=causal, **SMALL)
    want = softmax_attention(q.double(), k.double(), v.double(), mask)
    flex = flex_masked_attention(q, k, v, longformer_predicate, causal, SMALL, compiled=False)
    torch.testing.assert_close(flex.double(), want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "window", "global_tokens"), BANDED_CASES)
def test_banded_matches_dense_reference_forward_and_backward(causal, n, window, global_tokens):
    params = dict(window=window, global_tokens=global_tokens)
    q, k, v = qkv(n_q=n, dtype=torch.float64, requires_grad=True)
    out = registry.get("longformer-banded").attention(q, k, v, causal=causal, **params)
    want = softmax_attention(q, k, v, longformer_mask(n, n, causal=causal, **params))
    assert_same_output_and_grads(out, want, (q, k, v), TOLERANCE[torch.float64])


class LargestAllocation(TorchDispatchMode):
    """Records the largest storage any aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.nbytes = max(self.nbytes, t.untyped_storage().nbytes())
        return out


def largest_allocation(name, n, d=8, window=4, global_tokens=2):
    q, k, v = qkv(b=1, h=1, n_q=n, d=d, requires_grad=True)
    with LargestAllocation() as probe:
        registry.get(name).attention(q, k, v, causal=True, window=window,
                                     global_tokens=global_tokens).sum().backward()
    return probe.nbytes


def test_banded_never_allocates_an_n_by_n_tensor():
    n = 2048
    n_by_n_bool = n * n  # the smallest N x N tensor there is, 1 byte per element
    assert largest_allocation("longformer-banded", n) < n_by_n_bool / 4
    assert largest_allocation("longformer", n) >= n_by_n_bool  # the probe does see a dense mask


def test_banded_memory_per_query_is_window_plus_head_dim_not_their_product():
    n, d, window, g = 1024, 64, 32, 2
    per_query = largest_allocation("longformer-banded", n, d=d, window=window, global_tokens=g) / n
    # float32 scores over 3 * window + g keys, or a float32 copy of 3 key rows: never window x head_dim.
    assert per_query <= 4 * max(3 * window + g, 3 * d) * 1.1
    assert per_query < 4 * window * d / 4


def test_banded_rejects_cross_attention():
    with pytest.raises(Unsupported, match="Nq == Nk"):
        registry.get("longformer-banded").attention(*qkv(n_q=20, n_k=40))


def test_xformers_variant_refuses_global_tokens_and_a_missing_package(monkeypatch):
    v = registry.get("longformer-xformers")
    assert v.defaults["global_tokens"] == 0
    with pytest.raises(Unsupported, match="global_tokens=0"):
        v.attention(*qkv(n_q=32), causal=True, global_tokens=4)
    monkeypatch.setitem(sys.modules, "xformers", None)
    with pytest.raises(Unsupported, match="xformers not installed"):
        v.attention(*qkv(n_q=32), causal=True)


def flash_attn_local_mask(n_q, n_k, left, right):
    """flash-attn's local window, written from its definition: query i sits at pos = i + n_k - n_q and
    sees the keys j in [pos - left, pos + right] (and 0 <= j < n_k)."""
    mask = torch.zeros(n_q, n_k, dtype=torch.bool)
    for i in range(n_q):
        pos = i + n_k - n_q
        for j in range(max(pos - left, 0), min(pos + right, n_k - 1) + 1):
            mask[i, j] = True
    return mask


WINDOW_SHAPES = [(30, 10), (25, 24), (12, 3), (10, 10), (7, 20)]  # mostly n_q > n_k


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [0, 2, 5])
@pytest.mark.parametrize("shape", WINDOW_SHAPES, ids=str)
def test_window_follows_flash_attns_local_convention(causal, window, shape):
    want = flash_attn_local_mask(*shape, window, 0 if causal else window)
    assert torch.equal(longformer_mask(*shape, causal=causal, window=window, global_tokens=0), want)


@pytest.mark.parametrize("causal", [False, True])
def test_queries_before_key_0_attend_the_keys_their_window_reaches_and_empty_windows_output_zero(causal):
    n_q, n_k, window = 30, 10, 5
    params = dict(window=window, global_tokens=0)
    q, k, val = qkv(n_q=n_q, n_k=n_k, dtype=torch.float64)
    mask = flash_attn_local_mask(n_q, n_k, window, 0 if causal else window)
    want = softmax_attention(q, k, val, mask)
    empty = ~mask.any(-1)  # positions -20..-6 (non-causal), every negative position (causal)
    assert empty.sum() == (15 if not causal else 20) and not mask[15:20].all(-1).any()
    for out in (registry.get("longformer").attention(q, k, val, causal=causal, **params),
                flex_masked_attention(q.float(), k.float(), val.float(), longformer_predicate, causal,
                                      params, compiled=False).double()):
        torch.testing.assert_close(out, want, **TOLERANCE[torch.float32])
        assert out[..., empty, :].abs().max() == 0 and out[..., ~empty, :].abs().amin(-1).min() > 0


def test_a_query_before_key_0_sees_the_global_keys_but_is_not_global():
    mask = longformer_mask(6, 4, window=1, global_tokens=1)  # positions -2..3
    assert mask[:2].tolist() == [[True, False, False, False], [True, False, False, False]]


@pytest.mark.parametrize("causal", [False, True])
def test_xformers_local_mask_cuts_off_only_the_queries_that_see_no_key(monkeypatch, causal):
    """A fake xformers: records the bias and the query count it is called with."""
    calls = []

    class LocalAttentionFromBottomRightMask:
        def __init__(self, window_left, window_right):
            self.window_left, self.window_right = window_left, window_right

    def memory_efficient_attention(q, k, v, attn_bias=None):  # (batch, seq, heads, dim)
        calls.append((q.shape[1], attn_bias.window_left, attn_bias.window_right))
        mask = flash_attn_local_mask(q.shape[1], k.shape[1], attn_bias.window_left, attn_bias.window_right)
        out = softmax_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
        return out.transpose(1, 2)

    ops = SimpleNamespace(memory_efficient_attention=memory_efficient_attention,
                          fmha=SimpleNamespace(attn_bias=SimpleNamespace(
                              LocalAttentionFromBottomRightMask=LocalAttentionFromBottomRightMask)))
    monkeypatch.setattr("variants.longformer.xformers_ops", lambda: ops)
    monkeypatch.setattr("variants.flash.xformers_ops", lambda: ops)
    q, k, val = qkv(n_q=30, n_k=10, dtype=torch.float64)
    out = registry.get("longformer-xformers").attention(q, k, val, causal=causal, window=5)
    right = 0 if causal else 5
    assert calls == [(30 - 20 + right, 5, right)]  # positions >= -right go to the kernel
    want = softmax_attention(q, k, val, flash_attn_local_mask(30, 10, 5, right))
    torch.testing.assert_close(out, want)


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16, causal=True, shape=(300, 300))
@pytest.mark.parametrize("name", ["longformer", "longformer-banded", "longformer-xformers"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(300, 300), (100, 300), (300, 100)], ids=["square", "short-q", "long-q"])
def test_cuda_paths_match_dense_reference(name, dtype, causal, shape):
    v = registry.get(name)
    ok, reason = v.supports("cuda", dtype, 64, causal)
    if not ok:
        pytest.skip(reason)
    if shape[0] != shape[1] and not v.support.cross:
        pytest.skip(f"{name} is self-attention only")
    params = dict(window=16, global_tokens=0 if name == "longformer-xformers" else 4)
    q, k, val = qkv(n_q=shape[0], n_k=shape[1], d=64, dtype=dtype, device="cuda", requires_grad=True)
    out = v.attention(q, k, val, causal=causal, **params)
    mask = longformer_mask(*shape, causal=causal, **params).cuda()
    want = softmax_attention(q.float(), k.float(), val.float(), mask)
    assert_same_output_and_grads(out, want, (q, k, val), TOLERANCE[dtype], dict(atol=5e-2, rtol=5e-2))
