"""Block-sparse attention: BigBird and Sparse-Transformer (strided) patterns at block granularity.

A pattern is a bool block layout over absolute-position blocks (harness.masks alignment), made a
token-level predicate by masks.block_layout (and masks.causal). `mask()` materializes that predicate for
the reference; on CUDA the same predicate drives FlexAttention, whose block-sparse kernel skips the
empty blocks. On CPU the path is the dense masked softmax.

The FlexAttention machinery here (`masked_attention`, `flex_masked_attention`) also serves longformer.
"""

from __future__ import annotations

import functools

import torch

from harness import flops, masks
from harness.attention import softmax_attention
from harness.registry import ALL_FLOAT, HALF, Support, attention_variant

BIGBIRD_DEFAULTS = dict(block_size=64, window_blocks=1, global_blocks=1, random_blocks=1, seed=0)
STRIDED_DEFAULTS = dict(block_size=64, stride=4)


def _flex_check(device, dtype, head_dim, causal):
    if device == "cuda" and not 16 <= head_dim <= 256:
        return f"FlexAttention on CUDA needs 16 <= head_dim <= 256 (got {head_dim})"
    return None


FLEX_SUPPORT = Support(dtypes={"cpu": ALL_FLOAT, "cuda": (torch.float32, *HALF)}, check=_flex_check)


def flex_backend(device: str) -> str:
    return "flex-attention-compiled" if device == "cuda" else "dense-masked-softmax"


# --- FlexAttention path ---------------------------------------------------------------------------

@functools.cache
def _compiled(fn):
    return torch.compile(fn)


@functools.lru_cache(maxsize=64)
def _block_mask(make_predicate, n_q: int, n_k: int, causal: bool, params: tuple, device: str):
    from torch.nn.attention.flex_attention import create_block_mask  # late: loads torch._dynamo

    pred = make_predicate(n_q, n_k, causal, device, **dict(params))
    # Eager create_block_mask materializes the predicate's (n_q, n_k) int64 intermediates; compiled (as
    # FlexAttention's docs advise) it fuses them into the block reduction, which long sequences need.
    build = _compiled(create_block_mask) if device.startswith("cuda") else create_block_mask
    return build(masks.flex_mask_mod(pred, n_q, n_k), None, None, n_q, n_k, device=device)


def flex_masked_attention(q, k, v, make_predicate, causal: bool, params: dict, compiled: bool = True):
    """FlexAttention under `make_predicate(n_q, n_k, causal, device, **params)`; block masks are cached.

    compiled=False runs FlexAttention eagerly (CPU tests use it to check the block-mask construction).
    """
    from torch.nn.attention.flex_attention import flex_attention

    n_q, n_k = q.shape[-2], k.shape[-2]
    block_mask = _block_mask(make_predicate, n_q, n_k, causal, tuple(sorted(params.items())), str(q.device))
    attend = _compiled(flex_attention) if compiled else flex_attention
    return attend(q, k, v, block_mask=block_mask)


def masked_attention(q, k, v, make_predicate, causal: bool, params: dict):
    """Compiled FlexAttention on CUDA; the dense masked softmax reference elsewhere."""
    if q.is_cuda:
        return flex_masked_attention(q, k, v, make_predicate, causal, params)
    n_q, n_k = q.shape[-2], k.shape[-2]
    pred = make_predicate(n_q, n_k, causal, q.device, **params)
    return softmax_attention(q, k, v, masks.dense(pred, n_q, n_k, q.device))


# --- layouts --------------------------------------------------------------------------------------

def n_blocks(n_k: int, block_size: int) -> int:
    """Blocks covering key positions 0..n_k-1 (query positions never exceed n_k - 1)."""
    return max(-(-n_k // block_size), 1)


def bigbird_layout(n: int, causal: bool = False, *, window_blocks: int, global_blocks: int,
                   random_blocks: int, seed: int) -> torch.Tensor:
    """(n, n) bool: block i sees blocks within window_blocks of it, the first global_blocks (which see
    everything), and random_blocks others drawn without replacement (among earlier blocks if causal)."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    fixed = ((i - j).abs() <= window_blocks) | (i < global_blocks) | (j < global_blocks)
    drawable = (j < i) if causal else torch.ones_like(fixed)
    # A uniform random subset per row: the top random_blocks of i.i.d. scores among the candidates.
    # Scores fill the drawable cells in row-major order, so with causal a row's draws do not depend on
    # n: the layout of a prefix is the prefix of the layout, and decoding sees what a full pass sees.
    scores = torch.full((n, n), -1.0)
    scores[drawable] = torch.rand(int(drawable.sum()), generator=torch.Generator().manual_seed(seed))
    candidates = ~fixed & drawable
    top = scores.masked_fill(~candidates, -1.0).topk(min(random_blocks, n), dim=1).indices
    drawn = torch.zeros_like(fixed).scatter_(1, top, True) & candidates
    return fixed | drawn


def strided_layout(n: int, *, stride: int) -> torch.Tensor:
    """(n, n) bool: local blocks |i - j| < stride, plus the summary blocks j % stride == stride - 1."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    return ((i - j).abs() < stride) | (j % stride == stride - 1)


def _layout_predicate(layout: torch.Tensor, block_size: int, causal: bool, device) -> masks.Predicate:
    pred = masks.block_layout(layout.to(device), block_size)
    return masks.all_of(pred, masks.causal()) if causal else pred


def bigbird_predicate(n_q, n_k, causal, device="cpu", *, block_size, **layout_params) -> masks.Predicate:
    layout = bigbird_layout(n_blocks(n_k, block_size), causal, **layout_params)
    return _layout_predicate(layout, block_size, causal, device)


def strided_predicate(n_q, n_k, causal, device="cpu", *, block_size, stride) -> masks.Predicate:
    layout = strided_layout(n_blocks(n_k, block_size), stride=stride)
    return _layout_predicate(layout, block_size, causal, device)


def bigbird_pairs(n_q: int, n_k: int, causal: bool, *, block_size, **layout_params) -> int:
    layout = bigbird_layout(n_blocks(n_k, block_size), causal, **layout_params)
    return flops.block_pairs(layout, block_size, n_q, n_k, causal)


def strided_pairs(n_q: int, n_k: int, causal: bool, *, block_size, stride) -> int:
    return flops.block_pairs(strided_layout(n_blocks(n_k, block_size), stride=stride), block_size, n_q, n_k,
                             causal)


def bigbird_mask(n_q: int, n_k: int, causal: bool = False, **params) -> torch.Tensor:
    return masks.dense(bigbird_predicate(n_q, n_k, causal, **{**BIGBIRD_DEFAULTS, **params}), n_q, n_k)


def strided_mask(n_q: int, n_k: int, causal: bool = False, **params) -> torch.Tensor:
    return masks.dense(strided_predicate(n_q, n_k, causal, **{**STRIDED_DEFAULTS, **params}), n_q, n_k)


# --- variants -------------------------------------------------------------------------------------

@attention_variant(
    "sparse-bigbird", family="sparse", exact=True, support=FLEX_SUPPORT, defaults=BIGBIRD_DEFAULTS,
    mask_fn=bigbird_mask, flops=flops.softmax(bigbird_pairs), backend=flex_backend,
    small_params={"block_size": 8},
    description="BigBird block-sparse attention (window + global + seeded random blocks) via FlexAttention",
)
def sparse_bigbird(q, k, v, causal=False, **params):
    return masked_attention(q, k, v, bigbird_predicate, causal, params)


@attention_variant(
    "sparse-strided", family="sparse", exact=True, support=FLEX_SUPPORT, defaults=STRIDED_DEFAULTS,
    mask_fn=strided_mask, flops=flops.softmax(strided_pairs), backend=flex_backend,
    small_params={"block_size": 8, "stride": 2},
    description="Sparse Transformer strided pattern (local + summary blocks) via FlexAttention",
)
def sparse_strided(q, k, v, causal=False, **params):
    return masked_attention(q, k, v, strided_predicate, causal, params)
