"""Sparse softmax attention: BigBird (ITC) and the Sparse Transformer's strided and fixed patterns.

Each pattern is a harness.masks predicate over absolute positions. `mask()` materializes it for the
reference; on CUDA the same predicate drives FlexAttention, whose block-sparse kernel skips the blocks
it leaves empty. On CPU the path is the dense masked softmax.

- `sparse-bigbird`, BigBird's ITC form as the paper describes it (Zaheer et al. 2020): query and key
  blocks of `block_size`; each query block sees a window of 2 * window_blocks + 1 blocks around it
  (3, the paper's), the global blocks (the first and the last `global_blocks`, which also see every
  key), and `random_blocks` (r = 3) others drawn per head from `seed`, uniformly among the blocks
  outside its window and the global blocks. google-research/bigbird's code draws them instead from a
  restricted pool that depends on the sequence length (at n = 1024-4096, blocks 1-15, where the global
  last block can be drawn); this variant follows the paper. Causal: random blocks are drawn among
  earlier blocks and only the first blocks are global (the last block moves as a causal sequence
  grows), so a prefix sees what the full pass sees.
- `sparse-strided`, the Sparse Transformer's strided pattern (Child et al. 2019) in one merged head:
  the keys within `stride` positions of the query (the local band of width l) plus every key j with
  (i - j) mod stride == 0 (relative).
- `sparse-fixed`, the Sparse Transformer's fixed pattern, the one LRA's Sparse Transformer uses: the
  keys in the query's own block of `stride` positions, plus the last `summary` positions of every block
  (absolute "summary" columns; c = summary). One pattern serves every head, a simplification:
  openai/sparse_attention moves the summary columns per head (`num_verts`).
The paper's patterns are causal; non-causal, strided's band and stride run both ways, and fixed sees
every block's summary columns. The stride and summary columns touch every FlexAttention block, so those
two save no compute over dense attention there: they are kept for their accuracy, not their speed.
Queries at negative positions (n_q > n_k) see nothing under these patterns.

The FlexAttention path is harness.flex's, shared with longformer and the sinks.
"""

from __future__ import annotations

import torch

from harness import costs, flex, flops, masks
from harness.registry import attention_variant

BIGBIRD_DEFAULTS = dict(block_size=64, window_blocks=1, global_blocks=1, random_blocks=3, seed=0)
STRIDED_DEFAULTS = dict(stride=128)
FIXED_DEFAULTS = dict(stride=128, summary=8)


# --- BigBird --------------------------------------------------------------------------------------

def n_blocks(n_k: int, block_size: int) -> int:
    """Blocks covering key positions 0..n_k-1 (query positions never exceed n_k - 1)."""
    return max(-(-n_k // block_size), 1)


def _random_blocks(candidates: torch.Tensor, causal: bool, count: int, generator: torch.Generator):
    """`count` cells per row drawn uniformly among the candidates: the top scores of i.i.d. draws.

    Scores fill the drawable cells in row-major order, so with causal a row's draws do not depend on
    n: the layout of a prefix is the prefix of the layout, and decoding sees what a full pass sees."""
    n = candidates.shape[0]
    drawable = torch.ones(n, n, dtype=torch.bool).tril(-1) if causal else torch.ones(n, n, dtype=torch.bool)
    scores = torch.full((n, n), -1.0)
    scores[drawable] = torch.rand(int(drawable.sum()), generator=generator)
    top = scores.masked_fill(~candidates, -1.0).topk(min(count, n), dim=1).indices
    return torch.zeros_like(candidates).scatter_(1, top, True) & candidates


def bigbird_layout(n: int, causal: bool = False, *, n_heads: int = 1, window_blocks: int, global_blocks: int,
                   random_blocks: int, seed: int) -> torch.Tensor:
    """(n_heads, n, n) bool block layout: the window and the global blocks, the same in every head, and
    each head's random blocks, drawn from (seed, head) without replacement among the blocks left."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]

    def is_global(b):
        first = b < global_blocks
        return first if causal else first | (b >= n - global_blocks)

    fixed = ((i - j).abs() <= window_blocks) | is_global(i) | is_global(j)
    candidates = ~fixed & ((j < i) if causal else torch.ones_like(fixed))
    heads = [fixed | _random_blocks(candidates, causal, random_blocks,
                                    torch.Generator().manual_seed(seed * 1_000_003 + h))
             for h in range(n_heads)]
    return torch.stack(heads)


def bigbird_predicate(n_q, n_k, causal, n_heads=1, device="cpu", *, block_size, **layout) -> masks.Predicate:
    pred = masks.block_layout(bigbird_layout(n_blocks(n_k, block_size), causal, n_heads=n_heads,
                                             **layout).to(device), block_size)
    return masks.all_of(pred, masks.causal()) if causal else pred


def bigbird_pairs(n_q: int, n_k: int, causal: bool, *, n_heads: int = 1, block_size, **layout) -> int:
    """Visible pairs summed over the heads (each draws its own random blocks)."""
    layout = bigbird_layout(n_blocks(n_k, block_size), causal, n_heads=n_heads, **layout)
    return flops.block_pairs(layout, block_size, n_q, n_k, causal)


def bigbird_mask(n_q: int, n_k: int, causal: bool = False, n_heads: int = 1, **params) -> torch.Tensor:
    """(n_heads, n_q, n_k): BigBird's random blocks differ per head."""
    pred = bigbird_predicate(n_q, n_k, causal, n_heads, **{**BIGBIRD_DEFAULTS, **params})
    return masks.dense(pred, n_q, n_k)


# --- Sparse Transformer ---------------------------------------------------------------------------

def strided_predicate(n_q, n_k, causal, n_heads=1, device="cpu", *, stride) -> masks.Predicate:
    local = masks.sliding_window(stride - 1, 0 if causal else stride - 1)
    strided = masks.any_of(local, lambda q, k: (q - k) % stride == 0)
    return masks.all_of(masks.nonnegative(), strided, *([masks.causal()] if causal else []))


def fixed_predicate(n_q, n_k, causal, n_heads=1, device="cpu", *, stride, summary) -> masks.Predicate:
    if not 0 <= summary <= stride:
        raise ValueError(f"summary must be in 0..stride ({stride}), got {summary}")
    fixed = lambda q, k: (q // stride == k // stride) | (k % stride >= stride - summary)  # noqa: E731
    return masks.all_of(masks.nonnegative(), fixed, *([masks.causal()] if causal else []))


def strided_pairs(n_q: int, n_k: int, causal: bool, *, stride) -> int:
    return flops.strided_pairs(n_q, n_k, causal, stride)


def fixed_pairs(n_q: int, n_k: int, causal: bool, *, stride, summary) -> int:
    return flops.fixed_pairs(n_q, n_k, causal, stride, summary)


def strided_mask(n_q: int, n_k: int, causal: bool = False, n_heads: int = 1, **params) -> torch.Tensor:
    return masks.dense(strided_predicate(n_q, n_k, causal, **{**STRIDED_DEFAULTS, **params}), n_q, n_k)


def fixed_mask(n_q: int, n_k: int, causal: bool = False, n_heads: int = 1, **params) -> torch.Tensor:
    return masks.dense(fixed_predicate(n_q, n_k, causal, **{**FIXED_DEFAULTS, **params}), n_q, n_k)


# --- variants -------------------------------------------------------------------------------------

# The estimate charges the sparse patterns as full causal attention (an upper bound: the FLOPs they skip
# are not modelled there); the frontier models FlexAttention's code paths.
COST_HOOKS = dict(cost=costs.causal_attention_cost, peak_bytes=flex.peak_bytes, compiles=flex.compiles)


@attention_variant(
    "sparse-bigbird", family="sparse", exact=True, support=flex.SUPPORT, defaults=BIGBIRD_DEFAULTS,
    mask_fn=bigbird_mask, flops=flops.softmax(bigbird_pairs, per_head=True), backend=flex.backend,
    **COST_HOOKS, small_params={"block_size": 8},
    description="BigBird ITC block-sparse attention (window 3 + first/last global + 3 random blocks per "
                "head) via FlexAttention",
)
def sparse_bigbird(q, k, v, causal=False, **params):
    return flex.masked_attention(q, k, v, bigbird_predicate, causal, params)


@attention_variant(
    "sparse-strided", family="sparse", exact=True, support=flex.SUPPORT, defaults=STRIDED_DEFAULTS,
    mask_fn=strided_mask, flops=flops.softmax(strided_pairs), packed_fn=flex.packed(strided_predicate),
    backend=flex.backend,
    **COST_HOOKS, small_params={"stride": 4},
    description="Sparse Transformer strided pattern (local band + every stride-th key, relative) via "
                "FlexAttention",
)
def sparse_strided(q, k, v, causal=False, **params):
    return flex.masked_attention(q, k, v, strided_predicate, causal, params)


@attention_variant(
    "sparse-fixed", family="sparse", exact=True, support=flex.SUPPORT, defaults=FIXED_DEFAULTS,
    mask_fn=fixed_mask, flops=flops.softmax(fixed_pairs), packed_fn=flex.packed(fixed_predicate),
    backend=flex.backend,
    **COST_HOOKS, small_params={"stride": 8, "summary": 2},
    description="Sparse Transformer fixed pattern (own block + summary columns of every block; LRA's) via "
                "FlexAttention",
)
def sparse_fixed(q, k, v, causal=False, **params):
    return flex.masked_attention(q, k, v, fixed_predicate, causal, params)
