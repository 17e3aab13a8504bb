"""Pieces shared by the attention families: the float reference and the projection block."""

from __future__ import annotations

import torch
from torch import nn

from harness import masks


def softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Materialized softmax(Q K^T / sqrt(d)) V; `mask` is (n_q, n_k) bool, True = may attend.

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


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding on (batch, heads, seq, head_dim), rotating pairs (i, i + d/2)."""
    n, d = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d // 2, device=x.device, dtype=torch.float32) / (d // 2))
    angles = torch.arange(n, device=x.device, dtype=torch.float32)[:, None] * inv_freq
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.rope:
            q, k = rotary(q), rotary(k)
        o = self.variant.attention(q, k, v, causal=self.causal, **self.params)
        return self.out(o.transpose(1, 2).reshape(b, n, d))

    def extra_repr(self) -> str:
        return f"variant={self.variant.name}, heads={self.n_heads}, causal={self.causal}, rope={self.rope}"
