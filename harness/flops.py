"""Exact FLOP counts of softmax attention, from the number of visible (query, key) pairs.

Forward softmax attention costs 4 * batch * heads * head_dim FLOPs per visible pair (Q K^T and P V,
2 FLOPs per multiply-add); backward counts 2.5x forward, so forward + backward is 3.5x. A variant
declares its FLOPs (`flops=softmax(its pair counter)` in the registry); only the softmax kinds do:
linear attention, Performer and the state-space families are reported as latency and tokens/s (no
comparable FLOP convention exists for them).

Pairs follow harness.masks: query i sits at position p = i + (n_k - n_q) (bottom-right); queries at
p < 0 see nothing, except through a non-causal window that reaches key 0 (and the global keys beside
it). Counts never build the n_q x n_k mask: dense, window, strided and fixed masks are counted per
query row in closed form, block-sparse masks per (query block, key block) from the block layout, which
is the variant's own block layout, head by head where the pattern differs per head. Tests hold every
counter to the sum of the dense mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

BACKWARD_FACTOR = 2.5
MODE_FACTOR = {"fwd": 1.0, "fwd_bwd": 1.0 + BACKWARD_FACTOR, "decode": 1.0}
# A linear layer's backward is two matmuls of its forward's size (input and weight gradients).
PROJECTION_MODE_FACTOR = {"fwd": 1.0, "fwd_bwd": 3.0, "decode": 1.0}


def query_positions(n_q: int, n_k: int) -> torch.Tensor:
    """Absolute positions p >= 0 of the queries, int64 (the ones a causal or block pattern lets see)."""
    positions = torch.arange(n_q, dtype=torch.int64) + (n_k - n_q)
    return positions[positions >= 0]


def dense_pairs(n_q: int, n_k: int, causal: bool) -> int:
    """Pairs of full or causal attention.

    Causal, the query at position p sees keys 0..p, so the count is the sum of p + 1 over the queries.
    For n_q == n_k == N that is N (N + 1) / 2: exactly half of the N^2 non-causal pairs plus half the
    N diagonal pairs, i.e. 2 * causal - non_causal == N.
    """
    if not causal:
        return n_q * n_k
    first = max(n_k - n_q + 1, 1)  # keys seen by the first query (queries at p < 0 see none)
    return (n_k * (n_k + 1) - (first - 1) * first) // 2


def window_pairs(n_q: int, n_k: int, causal: bool, window: int, global_tokens: int) -> int:
    """Pairs of |p - j| <= window, or either position among the first `global_tokens`; causal: j <= p.

    Every query counts, those at negative positions (n_q > n_k) included: non-causal, their window may
    reach the first keys (flash-attn's convention), and they see the global keys.
    """
    p = torch.arange(n_q, dtype=torch.int64) + (n_k - n_q)
    g = min(global_tokens, n_k)
    low = (p - window).clamp(min=0)
    high = p.clamp(max=n_k - 1) if causal else (p + window).clamp(max=n_k - 1)
    band = (high - low + 1).clamp(min=0)
    globals_seen = (p + 1).clamp(0, g) if causal else torch.full_like(p, g)  # keys j < g (and j <= p)
    overlap = (torch.minimum(high, globals_seen - 1) - low + 1).clamp(min=0)  # counted in both
    row = band + globals_seen - overlap
    global_row = (p >= 0) & (p < g)  # global queries see every key (every earlier one if causal)
    row = torch.where(global_row, p + 1 if causal else torch.full_like(p, n_k), row)
    return int(row.sum())


def block_pairs(layout: torch.Tensor, block_size: int, n_q: int, n_k: int, causal: bool) -> int:
    """Pairs of a block layout (layout[qb, kb]: query block qb may see key block kb), causal or not; a
    (heads, qb, kb) layout counts every head."""
    if layout.dim() == 3:
        return sum(block_pairs(head, block_size, n_q, n_k, causal) for head in layout)
    n_blocks = layout.shape[0]
    keys_in_block = (n_k - torch.arange(n_blocks, dtype=torch.int64) * block_size).clamp(0, block_size)
    weights = layout.to(torch.int64)
    if causal:  # blocks left of the diagonal are whole; the diagonal block is cut per query row
        visible = (weights.tril(-1) * keys_in_block).sum(1)
    else:
        visible = (weights * keys_in_block).sum(1)
    p = query_positions(n_q, n_k)
    q_block = p // block_size
    row = visible[q_block]
    if causal:
        row = row + weights.diagonal()[q_block] * (p - q_block * block_size + 1)
    return int(row.sum())


def strided_pairs(n_q: int, n_k: int, causal: bool, stride: int) -> int:
    """Pairs of the Sparse Transformer's strided pattern: |p - j| < stride, or (p - j) % stride == 0."""
    p = query_positions(n_q, n_k)
    if causal:  # the band p - stride < j <= p, then one key every stride before it
        row = (p + 1).clamp(max=stride) + p // stride
    else:  # the band both ways, then every stride-th key before and after it
        band = (p + stride - 1).clamp(max=n_k - 1) - (p - stride + 1).clamp(min=0) + 1
        row = band + p // stride + (n_k - 1 - p) // stride
    return int(row.sum())


def fixed_pairs(n_q: int, n_k: int, causal: bool, stride: int, summary: int) -> int:
    """Pairs of the Sparse Transformer's fixed pattern: the query's own block of `stride` positions, plus
    the last `summary` positions of every block."""
    p = query_positions(n_q, n_k)
    start = p // stride * stride
    if causal:  # own block up to p; the summary columns of every earlier (whole) block
        row = p - start + 1 + p // stride * summary
    else:
        own = (start + stride).clamp(max=n_k) - start
        summaries = n_k // stride * summary + max(0, n_k % stride - (stride - summary))
        row = own + summaries - (own - (stride - summary)).clamp(min=0)  # own summaries counted once
    return int(row.sum())


PairCounter = Callable[..., int]  # (n_q, n_k, causal, **params) -> visible pairs


@dataclass(frozen=True)
class SoftmaxFlops:
    """The FLOPs of softmax attention under a pattern whose visible pairs `pairs` counts exactly.

    `per_head`: the pattern differs per head, and `pairs(..., n_heads=h)` counts every head's pairs."""

    pairs: PairCounter
    per_head: bool = False

    def __call__(self, mode: str, batch: int, n_heads: int, head_dim: int, n_q: int, n_k: int, causal: bool,
                 **params: Any) -> int:
        if self.per_head:
            pairs = self.pairs(n_q, n_k, causal, n_heads=n_heads, **params)
        else:
            pairs = n_heads * self.pairs(n_q, n_k, causal, **params)
        return round(4 * batch * head_dim * pairs * MODE_FACTOR[mode])


def softmax(pairs: PairCounter | None = None, per_head: bool = False) -> SoftmaxFlops:
    """A variant's `flops` field: softmax attention over the pairs `pairs` counts (default: dense)."""
    return SoftmaxFlops(pairs or (lambda n_q, n_k, causal, **_: dense_pairs(n_q, n_k, causal)), per_head)


def matmul_precision(device: str, dtype: str, tf32: bool = False) -> str:
    """What a case's FLOPs run at, so its TF/s is set against the matmul peak of the same precision: its
    dtype, plus '+tf32' for float32 on CUDA with TF32 matmuls allowed (about 8x the IEEE fp32 rate)."""
    return f"{dtype}+tf32" if device == "cuda" and dtype == "float32" and tf32 else dtype


def percent_of_peak(tflops: float | None, peak_tflops: float | None) -> float | None:
    return 100 * tflops / peak_tflops if tflops and peak_tflops else None


def projection_flops(mode: str, tokens: int, d_model: int, kv_dim: int | None = None) -> int:
    """FLOPs of the attention layer's projections: QKV (d -> d + 2 kv_dim) and output (d -> d), 8 tokens d^2
    when kv_dim = d (None); grouped KV heads project to kv_dim = kv_heads * head_dim."""
    kv_dim = d_model if kv_dim is None else kv_dim
    return round(4 * tokens * d_model * (d_model + kv_dim) * PROJECTION_MODE_FACTOR[mode])
