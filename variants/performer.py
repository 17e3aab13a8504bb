"""Performer (Choromanski et al. 2021): FAVOR+ positive orthogonal random features.

phi(x) = exp(w.x - |x|^2 / 2) / sqrt(m) on x scaled by d^(-1/4), so that E[phi(q).phi(k)] = exp(q.k / sqrt(d))
and the normalised linear attention over these features estimates softmax attention. The estimate
sharpens as the number of features m grows. Causal attention reuses the prefix-sum core of linear.py.
"""

from __future__ import annotations

import functools
import math

import torch

from harness.registry import Support, attention_variant
from variants.linear import (
    RecurrentState,
    accumulation_dtype,
    backend_name,
    normalized_linear_attention,
    quadratic_linear_attention,
)

# exp(-shift) is clamped below this: beyond it eps dominates the denominator anyway and exp would overflow.
_MAX_EPS_EXPONENT = 60.0


@functools.lru_cache(maxsize=64)
def orthogonal_random_features(
    head_dim: int, nb_features: int, seed: int, device: torch.device, dtype: torch.dtype,
) -> torch.Tensor:
    """(nb_features, head_dim) projection: stacked orthogonal blocks with chi(head_dim)-distributed row norms.

    Drawn in float64 on the CPU from `seed`, so a seed gives the same features on every device.
    """
    g = torch.Generator().manual_seed(seed)
    n_blocks = -(-nb_features // head_dim)
    gaussian = torch.randn(n_blocks, head_dim, head_dim, generator=g, dtype=torch.float64)
    directions = torch.linalg.qr(gaussian).Q.mT.flatten(0, 1)[:nb_features]  # orthonormal rows per block
    norms = torch.randn(nb_features, head_dim, generator=g, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (norms * directions).to(device=device, dtype=dtype)


def favor_features(x: torch.Tensor, w: torch.Tensor, *, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stabilised positive features: returns (phi(x) * exp(-shift), shift).

    The shift is the largest exponent, per row for queries and over the whole sequence for keys (a
    per-key shift would reweight the keys). It cancels in the normalisation once eps is rescaled by it
    too, so the output does not depend on it: detached.
    """
    x = x * x.shape[-1] ** -0.25
    exponent = x @ w.T - x.square().sum(-1, keepdim=True) / 2
    dims = (-1,) if per_row else (-2, -1)
    shift = exponent.detach().amax(dim=dims, keepdim=True)
    return torch.exp(exponent - shift) / math.sqrt(w.shape[0]), shift


def performer_attention_reference(q, k, v, causal=False, nb_features=256, seed=0, eps=1e-6) -> torch.Tensor:
    """The O(N^2) definition with unstabilised features, in q's dtype (use float64 inputs for a reference)."""
    acc = accumulation_dtype(q.dtype)
    w = orthogonal_random_features(q.shape[-1], nb_features, seed, q.device, acc)

    def phi(x):
        x = x.to(acc) * x.shape[-1] ** -0.25
        return torch.exp(x @ w.T - x.square().sum(-1, keepdim=True) / 2) / math.sqrt(nb_features)

    return quadratic_linear_attention(phi(q), phi(k), v, causal=causal, eps=eps).to(q.dtype)


def _scaled_eps(eps: float, shift_q: torch.Tensor, shift_k: torch.Tensor) -> torch.Tensor:
    """eps belongs to the unstabilised denominator: scale it like the features were scaled."""
    return eps * torch.exp((-shift_q - shift_k).clamp(max=_MAX_EPS_EXPONENT))


def performer_prefill(k, v, capacity=None, nb_features=256, seed=0, eps=1e-6) -> RecurrentState:
    acc = accumulation_dtype(k.dtype)
    w = orthogonal_random_features(k.shape[-1], nb_features, seed, k.device, acc)
    phi_k, shift_k = favor_features(k.to(acc), w, per_row=False)
    return RecurrentState.of_context(phi_k, v, shift_k)


def performer_decode(q, k, v, state: RecurrentState, nb_features=256, seed=0, eps=1e-6):
    acc = accumulation_dtype(q.dtype)
    w = orthogonal_random_features(q.shape[-1], nb_features, seed, q.device, acc)
    phi_k, shift_k = favor_features(k.to(acc), w, per_row=False)
    state = state.add(phi_k, v, shift_k)
    phi_q, shift_q = favor_features(q.to(acc), w, per_row=True)
    return state.read(phi_q, _scaled_eps(eps, shift_q, state.shift)).to(q.dtype), state


@attention_variant(
    "performer", family="performer", exact=False, support=Support(cross=True),
    defaults={"nb_features": 256, "seed": 0, "eps": 1e-6}, backend=backend_name,
    prefill_fn=performer_prefill, decode_fn=performer_decode, reference=performer_attention_reference,
    small_params={"nb_features": 32},
    description="FAVOR+ positive orthogonal random features; causal via linear's chunked prefix sums",
)
def performer(q, k, v, causal=False, nb_features=256, seed=0, eps=1e-6):
    acc = accumulation_dtype(q.dtype)
    w = orthogonal_random_features(q.shape[-1], nb_features, seed, q.device, acc)
    phi_q, shift_q = favor_features(q.to(acc), w, per_row=True)
    phi_k, shift_k = favor_features(k.to(acc), w, per_row=False)
    return normalized_linear_attention(phi_q, phi_k, v, causal=causal,
                                       eps=_scaled_eps(eps, shift_q, shift_k)).to(q.dtype)
