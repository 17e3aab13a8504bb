"""Sliding-window attention with attention sinks.

Query i sees the keys j <= i with i - j <= window (window + 1 keys, as flash-attn's window_size=(window, 0);
gpt-oss's sliding_window=W keeps i - j < W, which is window = W - 1 here), plus the first `sink_tokens`
positions (StreamingLLM, Xiao et al. 2024: the first tokens soak up attention mass, so keeping them lets a
window stream). A learned per-head sink logit s_h (as in recent open-weight models) adds e^{s_h} to the
softmax denominator without a value: o_i = sum_j e^{z_ij} v_j / (sum_j e^{z_ij} + e^{s_h}).

- `swa-sinks`: window + sink tokens (StreamingLLM), no sink logit: exactly a masked softmax.
- `swa-learned-sinks`: window + a sink logit per head, learned by its mixer (0.0 at the kernel level).
  Not `exact` in the registry's sense (softmax under its mask): the sink takes mass; its `reference` is
  the dense softmax with the sink column.

Code paths: FlexAttention (compiled) on CUDA with the mask predicate below; a learned sink rescales its
output by sigmoid(lse - s_h) = Z / (Z + e^{s_h}), from the log-sum-exp FlexAttention returns. Elsewhere
the dense reference. Decoding keeps a constant-size cache: the sink tokens and the last `window` keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from harness import costs, flex, flops, masks
from harness.attention import (
    AttentionMixer,
    group_mask,
    group_queries,
    kv_group,
    repeat_kv,
    softmax_attention,
)
from harness.registry import Support, Unsupported, attention_variant

WINDOW = 128
SINK_TOKENS = 4
SUPPORT = Support(dtypes=flex.SUPPORT.dtypes, check=flex.SUPPORT.check, non_causal=False, grouped_kv=True,
                  padded=flex.SUPPORT.padded, packed=True)


def sink_predicate(n_q, n_k, causal, n_heads=1, device="cpu", *, window, sink_tokens) -> masks.Predicate:
    """Causal, and within the window or among the first sink_tokens keys."""
    first_keys = lambda q, k: k < sink_tokens  # noqa: E731
    return masks.all_of(masks.causal(), masks.any_of(masks.sliding_window(window), first_keys))


def sink_mask(n_q: int, n_k: int, causal: bool = True, *, window: int = WINDOW,
              sink_tokens: int = SINK_TOKENS, **_params) -> torch.Tensor:
    return masks.dense(sink_predicate(n_q, n_k, True, window=window, sink_tokens=sink_tokens), n_q, n_k)


def _sink_column(sink_logit, like: torch.Tensor) -> torch.Tensor:
    """The sink logit as a (b, heads..., n_q, 1) score column: a float, or one per query head (the head
    dimensions of `like`: (h,), or (kv_heads, group) for grouped KV heads)."""
    heads = like.shape[1:-2]
    if isinstance(sink_logit, torch.Tensor):
        column = sink_logit.to(like.dtype).view(1, *heads, 1, 1)
        return column.expand(*like.shape[:-1], 1)
    return like.new_full((*like.shape[:-1], 1), float(sink_logit))


def attend(q, k, v, mask, sink_logit=None):
    """Dense softmax attention under `mask` (None: every key), with an optional sink logit column. k and v
    may have fewer heads than q (grouped KV heads: harness.attention's group view)."""
    if sink_logit is None:
        return softmax_attention(q, k, v, mask)
    group = kv_group(q, k)
    if group > 1:
        out = attend(group_queries(q, group), k.unsqueeze(2), v.unsqueeze(2),
                     group_mask(mask, q.shape[1], group), sink_logit)
        return out.flatten(1, 2)
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(acc) @ k.to(acc).transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)  # the sink column keeps every row finite
    probs = torch.softmax(torch.cat([scores, _sink_column(sink_logit, scores)], dim=-1), dim=-1)[..., :-1]
    return (probs @ v.to(acc)).to(q.dtype)


def sink_attention_reference(q, k, v, causal=True, *, window, sink_tokens, sink_logit=None):
    """The dense reference: masked softmax over the pattern, plus the sink logit in the denominator; grouped
    KV heads repeated to the query heads."""
    if not causal:
        raise Unsupported("sliding-window attention with sinks is causal only (causal=False)")
    group = kv_group(q, k)
    return dense_sink_attention(q, repeat_kv(k, group), repeat_kv(v, group), window=window,
                                sink_tokens=sink_tokens, sink_logit=sink_logit)


def dense_sink_attention(q, k, v, *, window, sink_tokens, sink_logit=None):
    """The dense masked softmax with the sink column: the CPU path (grouped KV heads by the group view)."""
    return attend(q, k, v, sink_mask(q.shape[-2], k.shape[-2], window=window, sink_tokens=sink_tokens)
                  .to(q.device), sink_logit)


def flex_sink_attention(q, k, v, *, window, sink_tokens, sink_logit=None, compiled=True):
    """FlexAttention under the sink predicate; a sink logit rescales by sigmoid(lse - s)."""
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    params = (("sink_tokens", sink_tokens), ("window", window))
    n_heads, n_q, n_k = q.shape[1], q.shape[-2], k.shape[-2]
    block_mask = flex.block_mask(sink_predicate, n_q, n_k, True, n_heads, params, str(q.device))
    attention = flex.compiled_wrapper(flex_attention) if compiled else flex_attention
    grouped = flex.gqa_flag(q, k)
    if sink_logit is None:
        return attention(q, k, v, block_mask=block_mask, **grouped)
    out, aux = attention(q, k, v, block_mask=block_mask, return_aux=AuxRequest(lse=True), **grouped)
    keep = torch.sigmoid(aux.lse.float() - _sink_column(sink_logit, aux.lse[..., None].float())[..., 0])
    return (out.float() * keep[..., None]).to(q.dtype)


def sink_attention(q, k, v, causal=True, *, window, sink_tokens, sink_logit=None):
    """FlexAttention on CUDA, the dense reference elsewhere."""
    if not causal:
        raise Unsupported("sliding-window attention with sinks is causal only (causal=False)")
    if q.is_cuda:
        return flex_sink_attention(q, k, v, window=window, sink_tokens=sink_tokens, sink_logit=sink_logit)
    return dense_sink_attention(q, k, v, window=window, sink_tokens=sink_tokens, sink_logit=sink_logit)


# --- decoding: a constant-size cache ---------------------------------------------------------------

@dataclass
class SinkCache:
    """The keys a new token can see: the sink tokens, and the last `window` keys after them."""

    sink_k: torch.Tensor  # (b, h, <= sink_tokens, d)
    sink_v: torch.Tensor
    recent_k: torch.Tensor  # (b, h, <= window, d): positions max(sink_tokens, length - window) .. length-1
    recent_v: torch.Tensor
    length: int


def sink_prefill(k, v, capacity=None, *, window, sink_tokens, sink_logit=None) -> SinkCache:
    n = k.shape[-2]
    sinks, start = min(sink_tokens, n), max(min(sink_tokens, n), n - window)
    # Copies: views would keep the whole context's storage alive (and counted as the cache's bytes).
    return SinkCache(*(t.clone() for t in (k[..., :sinks, :], v[..., :sinks, :], k[..., start:, :],
                                           v[..., start:, :])), n)


def sink_decode(q, k, v, cache: SinkCache, *, window, sink_tokens, sink_logit=None):
    """One new token at position cache.length: it sees every cached key and itself."""
    keys = torch.cat([cache.sink_k, cache.recent_k, k], dim=-2)
    values = torch.cat([cache.sink_v, cache.recent_v, v], dim=-2)
    out = attend(q, keys, values, None, sink_logit)
    if cache.length < sink_tokens:
        new = SinkCache(torch.cat([cache.sink_k, k], -2), torch.cat([cache.sink_v, v], -2), cache.recent_k,
                        cache.recent_v, cache.length + 1)
    else:
        start = max(cache.sink_k.shape[-2], keys.shape[-2] - window)  # the last `window` non-sink keys
        new = SinkCache(cache.sink_k, cache.sink_v, keys[..., start:, :], values[..., start:, :],
                        cache.length + 1)
    return out, new


# --- registry hooks -------------------------------------------------------------------------------

def sink_pairs(n_q: int, n_k: int, causal: bool, *, window, sink_tokens, **_params) -> int:
    """Visible pairs, per query row in closed form: the causal window plus the first sink_tokens keys is
    the Longformer count with global tokens, causal (a causal global query sees exactly its prefix, as a
    sink pattern does). The sink logit adds one score per query and no matmul work: not counted."""
    return flops.window_pairs(n_q, n_k, True, window, sink_tokens)


FLOPS = flops.softmax(sink_pairs)
# The estimate charges the sinks no attention work beyond the block's projections (as before the hooks:
# their window's scores are not modelled there); the frontier models FlexAttention's code paths.
COST_HOOKS = dict(cost=costs.projections_only, peak_bytes=flex.peak_bytes, compiles=flex.compiles)


class SinkAttentionMixer(AttentionMixer):
    """The projection block with a learned sink logit per head (zero-initialized), passed to attention."""

    def __init__(self, d_model: int, n_heads: int, *, variant, **kwargs):
        super().__init__(d_model, n_heads, variant=variant, **kwargs)
        self.sink_logits = nn.Parameter(torch.zeros(n_heads))

    # AttentionMixer passes self.params to every attention call; the learned logits join them here.
    @property
    def params(self) -> dict:
        return {**self._static_params, "sink_logit": self.sink_logits}

    @params.setter
    def params(self, value: dict) -> None:
        self._static_params = {k: v for k, v in value.items() if k != "sink_logit"}


TOKENS_DEFAULTS = dict(window=WINDOW, sink_tokens=SINK_TOKENS, sink_logit=None)
LEARNED_DEFAULTS = dict(window=WINDOW, sink_tokens=0, sink_logit=0.0)


@attention_variant(
    "swa-sinks", family="sinks", exact=True, support=SUPPORT, defaults=TOKENS_DEFAULTS, mask_fn=sink_mask,
    backend=flex.backend, prefill_fn=sink_prefill, decode_fn=sink_decode, decode_state="kv_cache",
    flops=FLOPS, **COST_HOOKS,
    small_params={"window": 8, "sink_tokens": 2},
    description="sliding window + StreamingLLM sink tokens via FlexAttention (dense masked softmax on CPU)",
)
def swa_sinks(q, k, v, causal=True, *, window, sink_tokens, sink_logit=None):
    return sink_attention(q, k, v, causal, window=window, sink_tokens=sink_tokens, sink_logit=sink_logit)


@attention_variant(
    "swa-learned-sinks", family="sinks", exact=False, support=SUPPORT, defaults=LEARNED_DEFAULTS,
    mask_fn=sink_mask, backend=flex.backend, prefill_fn=sink_prefill, decode_fn=sink_decode,
    decode_state="kv_cache", **COST_HOOKS,
    mixer_factory=SinkAttentionMixer, reference=sink_attention_reference, flops=FLOPS,
    small_params={"window": 8},
    description="sliding window + a learned sink logit per head in the softmax denominator; FlexAttention "
                "+ log-sum-exp rescaling on CUDA, dense on CPU",
)
def swa_learned_sinks(q, k, v, causal=True, *, window, sink_tokens, sink_logit=0.0):
    return sink_attention(q, k, v, causal, window=window, sink_tokens=sink_tokens, sink_logit=sink_logit)
