"""Longformer attention: a sliding window of +-window positions plus global tokens.

Query i may attend key j when |i - j| <= window; the first global_tokens positions attend to, and are
attended by, every position; causal additionally requires j <= i (positions as in harness.masks).

- `longformer`: FlexAttention (compiled) on CUDA, dense masked softmax on CPU.
- `longformer-banded`: a pure-PyTorch reference in O(N * window) memory that never builds the N x N
  mask: each query scores a padded, unfolded band of keys plus the global key columns. Nq == Nk only.
- `longformer-xformers`: xformers' local-attention bias, for global_tokens == 0 only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness import masks
from harness.registry import HALF, Support, Unsupported, attention_variant
from variants.common import softmax_attention
from variants.flash import xformers_attention, xformers_ops, zero_blind_queries
from variants.sparse import FLEX_SUPPORT, flex_backend, masked_attention

DEFAULTS = dict(window=128, global_tokens=8)


def longformer_predicate(n_q, n_k, causal, device="cpu", *, window, global_tokens) -> masks.Predicate:
    pred = masks.any_of(masks.sliding_window(window), masks.global_tokens(global_tokens))
    return masks.all_of(pred, masks.causal()) if causal else pred


def longformer_mask(n_q: int, n_k: int, causal: bool = False, **params) -> torch.Tensor:
    return masks.dense(longformer_predicate(n_q, n_k, causal, **{**DEFAULTS, **params}), n_q, n_k)


@attention_variant(
    "longformer", family="longformer", exact=True, support=FLEX_SUPPORT, defaults=DEFAULTS,
    mask_fn=longformer_mask, backend=flex_backend,
    description="sliding window + global tokens via FlexAttention (dense masked softmax on CPU)",
)
def longformer(q, k, v, causal=False, **params):
    return masked_attention(q, k, v, longformer_predicate, causal, params)


def _band(x: torch.Tensor, window: int) -> torch.Tensor:
    """(..., n, d) -> (..., n, 2 * window + 1, d): row i holds positions i - window .. i + window."""
    return F.pad(x, (0, 0, window, window)).unfold(-2, 2 * window + 1, 1).transpose(-1, -2)


@attention_variant(
    "longformer-banded", family="longformer", exact=True, support=Support(cross=False), defaults=DEFAULTS,
    mask_fn=longformer_mask, backend=lambda device: "banded-unfold",
    description="Longformer in plain PyTorch with O(N * window) memory: banded keys + global columns",
)
def longformer_banded(q, k, v, causal=False, *, window, global_tokens):
    n, dtype = q.shape[-2], q.dtype
    acc = torch.promote_types(dtype, torch.float32)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    g, scale, never = min(global_tokens, n), q.shape[-1] ** -0.5, torch.finfo(acc).min
    pos = torch.arange(n, device=q.device)

    # Band: key j = i + offset; global keys are left out here and scored once, as their own columns.
    offsets = torch.arange(-window, window + 1, device=q.device)
    band_key = pos[:, None] + offsets
    band_ok = (band_key >= g) & (band_key < n) & ((offsets <= 0) if causal else True)
    k_band, v_band = _band(k, window), _band(v, window)
    band_scores = torch.einsum("...nd,...nwd->...nw", q, k_band) * scale
    global_scores = (q @ k[..., :g, :].transpose(-2, -1)) * scale
    if causal:
        global_scores = global_scores.masked_fill(pos[None, :g] > pos[:, None], never)
    probs = torch.softmax(torch.cat([global_scores, band_scores.masked_fill(~band_ok, never)], -1), -1)
    out = probs[..., :g] @ v[..., :g, :] + torch.einsum("...nw,...nwd->...nd", probs[..., g:], v_band)

    if g:  # global query rows see every key (every earlier key if causal): O(g * N), done densely
        head_mask = pos[None, :] <= pos[:g, None] if causal else None
        out = torch.cat([softmax_attention(q[..., :g, :], k, v, head_mask), out[..., g:, :]], dim=-2)
    return out.to(dtype)


@attention_variant(
    "longformer-xformers", family="longformer", exact=True,
    support=Support(dtypes={"cuda": HALF}, max_head_dim=256, requires=("xformers",)),
    defaults=dict(window=128, global_tokens=0), mask_fn=longformer_mask,
    backend=lambda device: "xformers-local-attention",
    description="sliding window via xformers LocalAttentionFromBottomRightMask (no global tokens)",
)
def longformer_xformers(q, k, v, causal=False, *, window, global_tokens):
    if global_tokens:
        raise Unsupported("xformers local attention has no global tokens (needs global_tokens=0)")
    bias = xformers_ops().fmha.attn_bias.LocalAttentionFromBottomRightMask(
        window_left=window, window_right=0 if causal else window,
    )
    return zero_blind_queries(lambda q, k, v: xformers_attention(q, k, v, bias), q, k, v)
