"""Pieces the attention families share, below the registry: the softmax reference, the KV cache, rotary
embeddings and the projection block that makes an attention function a sequence mixer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness import masks


def softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Materialized softmax(Q K^T / sqrt(d)) V; `mask` is bool, True = may attend, (n_q, n_k) or
    (heads, n_q, n_k) for a pattern that differs per head.

    Softmax runs in at least float32. A query that may attend to nothing gets a zero output
    (FlashAttention's convention), never NaN, in the forward and the backward pass.
    """
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


class AttentionMixer(nn.Module):
    """(batch, seq, d_model) -> same: fused QKV projection, a registered attention, output projection."""

    def __init__(self, d_model: int, n_heads: int, *, variant, causal: bool = True, rope: bool = False,
                 **params):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.variant, self.n_heads, self.causal, self.rope = variant, n_heads, causal, rope
        self.params = params
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: torch.Tensor, offset: int = 0):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
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
        return f"variant={self.variant.name}, heads={self.n_heads}, causal={self.causal}, rope={self.rope}"
