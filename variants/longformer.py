"""Longformer attention: a sliding window of +-window positions plus global tokens.

Query i may attend key j when |i - j| <= window; the first global_tokens positions attend to, and are
attended by, every position; causal additionally requires j <= i (positions as in harness.masks).
With n_q > n_k the window follows flash-attn's local-window convention: query i sits at position
p = i + n_k - n_q and sees the keys in [p - window, p + window] (causal: [p - window, p]); a query at a
negative position is not a global one, and one whose window holds no key outputs zero.

- `longformer`: FlexAttention (compiled) on CUDA, dense masked softmax on CPU.
- `longformer-banded`: a pure-PyTorch reference in O(N * window) memory that never builds the N x N
  mask: query chunks of `window` score the keys of their neighbouring chunks plus the global key
  columns (Longformer's sliding chunks, matmuls throughout). Nq == Nk only.
- `longformer-xformers`: xformers' local-attention bias, for global_tokens == 0 only.

Every path takes grouped KV heads (harness.attention): FlexAttention's enable_gqa, the dense and banded
paths' group view, xformers' [B, M, G, H, K] layout (forward only: variants.flash).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness import costs, flex, flops, masks
from harness.attention import group_queries, kv_group, softmax_attention
from harness.ragged import NO_PADDED_PATTERN
from harness.registry import HALF, Support, Unsupported, attention_variant
from variants.flash import xformers_attention, xformers_ops, zero_blind_queries

DEFAULTS = dict(window=128, global_tokens=8)


def longformer_predicate(n_q, n_k, causal, n_heads=1, device="cpu", *, window,
                         global_tokens) -> masks.Predicate:
    pred = masks.any_of(masks.sliding_window(window), masks.global_tokens(global_tokens))
    return masks.all_of(pred, masks.causal()) if causal else pred


def longformer_pairs(n_q: int, n_k: int, causal: bool, *, window, global_tokens) -> int:
    return flops.window_pairs(n_q, n_k, causal, window, global_tokens)


FLOPS = flops.softmax(longformer_pairs)


def longformer_cost(d_model, n_layers, n_heads, seq_len, *, window=128, **params) -> costs.MixerCost:
    """Scores and weighted values over a band of 3 windows (the banded path's key chunks), at most N."""
    return costs.MixerCost(flops=costs.attention_flops(d_model, n_layers, min(seq_len, 3 * window)))


def banded_peak_bytes(call: costs.KernelCall, *, window, **params) -> float:
    """The sliding-chunks path: q, k, v (k and v at kv_heads) and the upcast inputs; per query row, 5
    head_dim-sized temporaries (padded copies, the output and its parts; counted per query head, an upper
    bound for grouped KV heads) and 2.5 copies of its (3 window) chunk scores (masked scores, probabilities;
    the raw scores are freed part-way)."""
    c = call
    return c.qkv_x * c.e + c.upcast + c.rows * c.a * (5 * c.head_dim + 7.5 * window)


def longformer_mask(n_q: int, n_k: int, causal: bool = False, n_heads: int = 1, **params) -> torch.Tensor:
    return masks.dense(longformer_predicate(n_q, n_k, causal, **{**DEFAULTS, **params}), n_q, n_k)


@attention_variant(
    "longformer", family="longformer", exact=True, support=flex.SUPPORT, defaults=DEFAULTS,
    mask_fn=longformer_mask, flops=FLOPS, packed_fn=flex.packed(longformer_predicate),
    backend=flex.backend, cost=longformer_cost,
    peak_bytes=flex.peak_bytes, compiles=flex.compiles,
    small_params={"window": 8, "global_tokens": 2},
    description="sliding window + global tokens via FlexAttention (dense masked softmax on CPU)",
)
def longformer(q, k, v, causal=False, **params):
    return flex.masked_attention(q, k, v, longformer_predicate, causal, params)


def _key_windows(x: torch.Tensor, chunk: int, n_chunks: int) -> torch.Tensor:
    """(..., n, d) -> (..., n_chunks, 3 * chunk, d): chunk m holds positions from (m - 1) * chunk on.

    Overlapping windows of the zero-padded sequence: about 3x the input, whatever the window is.
    """
    padded = F.pad(x, (0, 0, chunk, (n_chunks + 1) * chunk - x.shape[-2]))
    return padded.unfold(-2, 3 * chunk, chunk).transpose(-1, -2)


@attention_variant(
    "longformer-banded", family="longformer", exact=True, support=Support(cross=False, grouped_kv=True,
                                                                       padded=NO_PADDED_PATTERN, packed=True),
    defaults=DEFAULTS,
    mask_fn=longformer_mask, flops=FLOPS, backend=lambda device: "sliding-chunks", cost=longformer_cost,
    peak_bytes=banded_peak_bytes,
    small_params={"window": 8, "global_tokens": 2},
    description="Longformer in plain PyTorch with O(N * window) memory: sliding key chunks + global columns",
)
def longformer_banded(q, k, v, causal=False, *, window, global_tokens):
    """Queries in chunks of `window`; chunk m scores the keys of chunks m-1..m+1, which hold every key
    within `window` of its queries (Longformer's sliding chunks), plus the global key columns.

    Grouped KV heads: the queries of a group run against one copy of its keys (harness.attention's group
    view, broadcast by every matmul below)."""
    group = kv_group(q, k)
    if group > 1:
        out = longformer_banded(group_queries(q, group), k.unsqueeze(2), v.unsqueeze(2), causal,
                                window=window, global_tokens=global_tokens)
        return out.flatten(1, 2)
    n, dtype = q.shape[-2], q.dtype
    acc = torch.promote_types(dtype, torch.float32)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    g, scale, never = min(global_tokens, n), q.shape[-1] ** -0.5, torch.finfo(acc).min
    chunk = max(window, 1)
    n_chunks = -(-n // chunk)
    pos = torch.arange(n_chunks * chunk, device=q.device)

    q_chunks = F.pad(q, (0, 0, 0, n_chunks * chunk - n)).unflatten(-2, (n_chunks, chunk))
    q_pos = pos.view(n_chunks, chunk, 1)
    k_pos = (pos.view(n_chunks, chunk)[:, :1] - chunk + torch.arange(3 * chunk, device=q.device)).unsqueeze(1)
    # Global keys are left out of the windows and scored once, as their own columns.
    window_ok = ((q_pos - k_pos).abs() <= window) & (k_pos >= g) & (k_pos < n)
    if causal:
        window_ok &= k_pos <= q_pos
    window_scores = (q_chunks @ _key_windows(k, chunk, n_chunks).transpose(-1, -2)) * scale
    global_scores = (q @ k[..., :g, :].transpose(-2, -1)) * scale
    if causal:
        global_scores = global_scores.masked_fill(pos[None, :g] > pos[:n, None], never)
    global_scores = F.pad(global_scores, (0, 0, 0, n_chunks * chunk - n)).unflatten(-2, (n_chunks, chunk))
    probs = torch.softmax(torch.cat([global_scores, window_scores.masked_fill(~window_ok, never)], -1), -1)
    out = probs[..., :g] @ v[..., :g, :].unsqueeze(-3) + probs[..., g:] @ _key_windows(v, chunk, n_chunks)
    out = out.flatten(-3, -2)[..., :n, :]

    if g:  # global query rows see every key (every earlier key if causal): O(g * N), done densely
        head_mask = pos[None, :n] <= pos[:g, None] if causal else None
        out = torch.cat([softmax_attention(q[..., :g, :], k, v, head_mask), out[..., g:, :]], dim=-2)
    return out.to(dtype)


@attention_variant(
    "longformer-xformers", family="longformer", exact=True,
    support=Support(dtypes={"cuda": HALF}, max_head_dim=256, requires=("xformers",), grouped_kv=True,
                    padded=NO_PADDED_PATTERN, packed=True),
    defaults=dict(window=128, global_tokens=0), mask_fn=longformer_mask, flops=FLOPS,
    small_params={"window": 8},
    backend=lambda device: "xformers-local-attention", cost=longformer_cost,
    peak_bytes=costs.fused_attention_bytes,
    description="sliding window via xformers LocalAttentionFromBottomRightMask (no global tokens)",
)
def longformer_xformers(q, k, v, causal=False, *, window, global_tokens):
    if global_tokens:
        raise Unsupported("xformers local attention has no global tokens (needs global_tokens=0)")
    right = 0 if causal else window
    local = xformers_ops().fmha.attn_bias.LocalAttentionFromBottomRightMask
    bias = local(window_left=window, window_right=right)
    # Queries whose window ends before key 0 see nothing: cut off (kernels differ on empty rows).
    return zero_blind_queries(lambda q, k, v: xformers_attention(q, k, v, bias), q, k, v, reach=right)
