"""Exact softmax attention written right once and wrong ten ways: every variant here declares `exact=True`,
and each `planted-*` but `planted-correct` carries one classic kernel bug that attnbench's correctness gate
(harness.contract: the doctor, the exactness rows, the report) must catch (tests/test_planted_bugs.py says
which checks catch which bug).

The fast path is FlashAttention's recurrence over blocks of keys (a running maximum and sum), written so
that each bug is one argument away from the correct kernel.
"""

from __future__ import annotations

import torch

from harness import masks
from harness.attention import KVCache
from harness.registry import Support, attention_variant

WINDOW = 16  # the windowed variants' window: smaller than every sequence the checks draw
BLOCK = 32  # keys per block of the recurrence



def visible(n_q: int, n_k: int, causal: bool, window: int | None, device, top_left: bool = False):
    """(n_q, n_k) bool: which keys each query sees. Query i sits at key position i + n_k - n_q (bottom-right),
    or at i with top_left."""
    q_pos = torch.arange(n_q, device=device)[:, None] + (0 if top_left else n_k - n_q)
    k_pos = torch.arange(n_k, device=device)[None, :]
    seen = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if causal:
        seen &= k_pos <= q_pos
    if window is not None:
        seen &= (k_pos >= q_pos - window) & (k_pos <= q_pos + window)
    return seen


def attend(q, k, v, causal=False, *, window=None, scale=True, top_left=False, subtract_max=True,
           compute_dtype=None, empty_rows="zero"):
    """softmax(q k^T / sqrt(d)) v over blocks of keys; every keyword but the first two plants a bug when
    changed from its default."""
    acc = compute_dtype or torch.promote_types(q.dtype, torch.float32)
    qa, ka, va = (t.to(acc) for t in (q, k, v))
    seen = visible(q.shape[-2], k.shape[-2], causal, window, q.device, top_left)
    factor = q.shape[-1] ** -0.5 if scale else 1.0
    running_max = torch.full(q.shape[:-1], -torch.inf, dtype=acc, device=q.device)
    total = torch.zeros(q.shape[:-1], dtype=acc, device=q.device)
    out = torch.zeros_like(qa)
    for start in range(0, k.shape[-2], BLOCK):
        keys = slice(start, start + BLOCK)
        scores = (qa @ ka[..., keys, :].mT * factor).masked_fill(~seen[:, keys], -torch.inf)
        if subtract_max:
            new_max = torch.maximum(running_max, scores.amax(-1))
            shift = torch.where(torch.isinf(new_max), 0.0, new_max)  # a row that has seen no key yet
            weights = torch.exp(scores - shift[..., None])
            rescale = torch.exp(running_max - shift)
            running_max = new_max
        else:
            weights, rescale = torch.exp(scores), torch.ones_like(total)
        total = total * rescale + weights.sum(-1)
        out = out * rescale[..., None] + weights @ va[..., keys, :]
    if empty_rows == "nan":
        result = out / total[..., None]  # 0 / 0 where a query sees no key
    else:
        none = (total == 0)[..., None]
        fill = va.mean(-2, keepdim=True).expand_as(out) if empty_rows == "uniform" else torch.zeros_like(out)
        result = torch.where(none, fill, out / torch.where(none, 1.0, total[..., None]))
    return result.to(q.dtype)


def window_mask(n_q, n_k, causal=False, n_heads=1, window=WINDOW):
    pattern = masks.sliding_window(window)
    return masks.dense(masks.all_of(masks.causal(), pattern) if causal else pattern, n_q, n_k)


def _register(name: str, description: str, **fields):
    return attention_variant(name, family="planted", exact=True, support=Support(), description=description,
                             **fields)


# --- the correct one ------------------------------------------------------------------------------------

@_register("planted-correct", "windowed softmax attention, FlashAttention's recurrence: correct",
           mask_fn=window_mask, defaults={"window": WINDOW})
def correct(q, k, v, causal=False, window=WINDOW):
    return attend(q, k, v, causal, window=window)


# --- ten classic bugs -----------------------------------------------------------------------------------

@_register("planted-missing-scale", "forgets the 1/sqrt(d) scale")
def missing_scale(q, k, v, causal=False):
    return attend(q, k, v, causal, scale=False)


@_register("planted-causal-offset", "aligns the causal mask top-left when Nq != Nk")
def causal_offset(q, k, v, causal=False):
    return attend(q, k, v, causal, top_left=True)


@_register("planted-nan-empty-row", "divides 0 by 0 for a query with no visible key")
def nan_empty_row(q, k, v, causal=False):
    return attend(q, k, v, causal, empty_rows="nan")


@_register("planted-uniform-empty-row", "gives a query with no visible key the mean of all values, not 0")
def uniform_empty_row(q, k, v, causal=False):
    return attend(q, k, v, causal, empty_rows="uniform")


@_register("planted-wrong-axis", "normalizes over the queries instead of the keys")
def wrong_axis(q, k, v, causal=False):
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = q.to(acc) @ k.to(acc).mT * q.shape[-1] ** -0.5
    seen = visible(q.shape[-2], k.shape[-2], causal, None, q.device)
    weights = torch.softmax(scores.masked_fill(~seen, -torch.inf), dim=-2).nan_to_num()
    return (weights @ v.to(acc)).to(q.dtype)


@_register("planted-window-off-by-one", "declares a window of 16 and lets each query see 17 keys on a side",
           mask_fn=window_mask, defaults={"window": WINDOW})
def window_off_by_one(q, k, v, causal=False, window=WINDOW):
    return attend(q, k, v, causal, window=window + 1)


@_register("planted-half-accumulation", "computes in bfloat16 whatever the inputs' dtype")
def half_accumulation(q, k, v, causal=False):
    return attend(q, k, v, causal, compute_dtype=torch.bfloat16)


@_register("planted-no-max-subtraction", "exponentiates the scores without subtracting the row's maximum")
def no_max_subtraction(q, k, v, causal=False):
    return attend(q, k, v, causal, subtract_max=False)


def decode_without_last_key(q, k, v, cache: KVCache):
    """Appends the new key and value to the cache, then attends over the cache without them."""
    n = cache.length + k.shape[-2]
    cache.k[..., cache.length:n, :], cache.v[..., cache.length:n, :] = k, v
    out = attend(q, cache.k[..., :n - 1, :], cache.v[..., :n - 1, :], causal=True)
    return out, KVCache(cache.k, cache.v, n)


@_register("planted-decode-drops-last-key", "decodes against the cache without the token just added",
           decode_fn=decode_without_last_key)
def decode_drops_last_key(q, k, v, causal=False):
    return attend(q, k, v, causal)


@_register("planted-transposed-output", "returns (batch, seq, heads, dim) data as (batch, heads, seq, dim)")
def transposed_output(q, k, v, causal=False):
    out = attend(q, k, v, causal)
    return out.transpose(1, 2).reshape(out.shape)

