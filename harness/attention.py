"""Pieces the attention families share, below the registry: the softmax reference, grouped KV heads, the KV
cache, rotary embeddings and the projection block that makes an attention function a sequence mixer.

Grouped-query attention (GQA; MQA when there is one KV head): k and v (batch, kv_heads, n, head_dim) with
kv_heads dividing q's n_heads; query head h reads KV head h // group, group = n_heads // kv_heads (the
repeat_interleave convention of SDPA's enable_gqa, flash-attn and xformers' [B, M, G, H, K] layout). The
fast paths view the queries as (batch, kv_heads, group, n, head_dim) against (batch, kv_heads, 1, n,
head_dim) keys and values, so a group shares one copy; `repeat_kv` makes the references' copies."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness import masks


def kv_group(q: torch.Tensor, k: torch.Tensor) -> int:
    """Query heads per KV head of (batch, heads, n, head_dim) inputs: 1 unless k has fewer heads than q;
    ValueError when its heads do not divide q's."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[1] == k.shape[1]:
        return 1
    n_heads, kv_heads = q.shape[1], k.shape[1]
    if kv_heads < 1 or kv_heads > n_heads or n_heads % kv_heads:
        raise ValueError(f"{kv_heads} KV heads do not divide {n_heads} query heads")
    return n_heads // kv_heads


def repeat_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    """(batch, kv_heads, n, d) -> (batch, kv_heads * group, n, d), each KV head repeated for its group: the
    references' copy (the fast paths never make it)."""
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def group_queries(q: torch.Tensor, group: int) -> torch.Tensor:
    """(batch, n_heads, n, d) -> (batch, kv_heads, group, n, d): the queries that share a KV head together."""
    return q.unflatten(1, (q.shape[1] // group, group))


def group_mask(mask: torch.Tensor | None, n_heads: int, group: int) -> torch.Tensor | None:
    """A per-head mask (n_heads, n_q, n_k) viewed as (kv_heads, group, n_q, n_k), as group_queries; a mask
    shared by every head stays as it is."""
    if mask is None or mask.dim() < 3 or mask.shape[-3] != n_heads:
        return mask
    return mask.unflatten(-3, (n_heads // group, group))


def softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Materialized softmax(Q K^T / sqrt(d)) V; `mask` is bool, True = may attend, (n_q, n_k) or
    (heads, n_q, n_k) for a pattern that differs per head (query heads). k and v may have fewer heads than
    q (grouped KV, module docstring): a group's queries attend to one copy of its keys.

    Softmax runs in at least float32. A query that may attend to nothing gets a zero output
    (FlashAttention's convention), never NaN, in the forward and the backward pass.
    """
    group = kv_group(q, k)
    if group > 1:
        out = softmax_attention(group_queries(q, group), k.unsqueeze(2), v.unsqueeze(2),
                                group_mask(mask, q.shape[1], group))
        return out.flatten(1, 2)
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(acc) @ k.to(acc).transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(acc).min)
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = probs * mask.any(-1, keepdim=True)
    return (probs @ v.to(acc)).to(q.dtype)


def causal_mask(n_q: int, n_k: int, device) -> torch.Tensor:
    return masks.dense(masks.causal(), n_q, n_k, device)


@dataclass
class KVCache:
    """Keys and values of the context in preallocated buffers (batch, heads, capacity, head_dim)."""

    k: torch.Tensor
    v: torch.Tensor
    length: int


def kv_prefill(k: torch.Tensor, v: torch.Tensor, capacity: int | None = None, **_params) -> KVCache:
    n = k.shape[-2]
    capacity = max(capacity or n + 1, n)
    kb = k.new_empty(*k.shape[:-2], capacity, k.shape[-1])
    vb = v.new_empty(*v.shape[:-2], capacity, v.shape[-1])
    kb[..., :n, :], vb[..., :n, :] = k, v
    return KVCache(kb, vb, n)


def kv_decode(variant, q, k, v, cache: KVCache, **params):
    """Write the new key and value in place, then attend over the whole cache (bottom-right causal)."""
    n = cache.length + k.shape[-2]
    if n > cache.k.shape[-2]:
        raise ValueError(f"KV cache full: capacity {cache.k.shape[-2]}, need {n}; prefill with more capacity")
    cache.k[..., cache.length:n, :], cache.v[..., cache.length:n, :] = k, v
    out = variant.attention(q, cache.k[..., :n, :], cache.v[..., :n, :], causal=True, **params)
    return out, KVCache(cache.k, cache.v, n)


def rotary(x: torch.Tensor, base: float = 10000.0, offset: int = 0) -> torch.Tensor:
    """Rotary position embedding on (batch, heads, seq, head_dim), rotating pairs (i, i + d/2).

    `offset` is the position of the first token (decoding continues a context)."""
    n, d = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d // 2, device=x.device, dtype=torch.float32) / (d // 2))
    positions = torch.arange(offset, offset + n, device=x.device, dtype=torch.float32)
    angles = positions[:, None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def checked_kv_heads(n_heads: int, kv_heads: int | None) -> int:
    """kv_heads (None: n_heads), else ValueError: it must be at least 1 and divide n_heads."""
    if kv_heads is None:
        return n_heads
    if kv_heads < 1 or n_heads % kv_heads:
        raise ValueError(f"kv_heads {kv_heads} must be at least 1 and divide n_heads {n_heads}")
    return kv_heads


class AttentionMixer(nn.Module):
    """(batch, seq, d_model) -> same: fused QKV projection, a registered attention, output projection.

    `kv_heads` (None: n_heads) projects keys and values to that many heads (grouped-query attention): the
    fused projection is d_model -> d_model + 2 * kv_heads * head_dim, and the decoding state holds
    kv_heads."""

    def __init__(self, d_model: int, n_heads: int, *, variant, causal: bool = True, rope: bool = False,
                 kv_heads: int | None = None, **params):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.variant, self.n_heads, self.causal, self.rope = variant, n_heads, causal, rope
        self.kv_heads = checked_kv_heads(n_heads, kv_heads)  # Variant.mixer refuses undeclared grouping
        self.params = params
        head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, d_model + 2 * self.kv_heads * head_dim, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: torch.Tensor, offset: int = 0):
        b, n, d = x.shape
        head_dim = d // self.n_heads
        heads = self.qkv(x).view(b, n, self.n_heads + 2 * self.kv_heads, head_dim).transpose(1, 2)
        q, k, v = heads.split([self.n_heads, self.kv_heads, self.kv_heads], dim=1)
        if self.rope:
            q, k = rotary(q, offset=offset), rotary(k, offset=offset)
        return q, k, v

    def _merge(self, o: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = o.shape
        return self.out(o.transpose(1, 2).reshape(b, n, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        return self._merge(self.variant.attention(q, k, v, causal=self.causal, **self.params))

    def prefill(self, x: torch.Tensor, capacity: int | None = None):
        """Run the context x (batch, n, d_model); return (output, decoding state)."""
        q, k, v = self._heads(x)
        out = self._merge(self.variant.attention(q, k, v, causal=True, **self.params))
        return out, (self.variant.prefill(k, v, capacity=capacity, **self.params), x.shape[1])

    def step(self, x: torch.Tensor, state):
        """One new token x (batch, 1, d_model) after the context: returns (output, new state)."""
        inner, position = state
        q, k, v = self._heads(x, offset=position)
        o, inner = self.variant.decode(q, k, v, inner, **self.params)
        return self._merge(o), (inner, position + x.shape[1])

    def extra_repr(self) -> str:
        kv = "" if self.kv_heads == self.n_heads else f", kv_heads={self.kv_heads}"
        return (f"variant={self.variant.name}, heads={self.n_heads}{kv}, causal={self.causal}, "
                f"rope={self.rope}")
