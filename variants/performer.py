"""Performer (Choromanski et al. 2021): FAVOR+ positive orthogonal random features.

phi(x) = exp(w.x - |x|^2 / 2) / sqrt(m) on x scaled by d^(-1/4), so that E[phi(q).phi(k)] = exp(q.k / sqrt(d))
and the normalised linear attention over these features estimates softmax attention. The rows of w
come in Haar-distributed orthogonal blocks of d with chi(d) norms (the estimate is unbiased only with
Haar blocks); the error falls as m^(-1/2). As in the paper, every head draws its own features, every
layer too (suites.model seeds each layer), and training may redraw them every `redraw_every` steps.
Causal attention reuses the prefix-sum core of linear.py.

Grouped KV heads (harness.attention): the features are drawn per KV head and shared by its group of query
heads (head j of the keys draws what head j draws without grouping), so phi(k) and the states are kept per
KV head; the reference repeats the keys, the values and the group's features to every query head.
"""

from __future__ import annotations

import functools
import math

import torch

from harness import costs
from harness.attention import group_queries, kv_group, repeat_kv
from harness.registry import Support, attention_variant
from variants.linear import (
    FLA_BACKEND,
    FLA_COMPILES,
    RecurrentState,
    accumulation_dtype,
    backend_name,
    chunked_peak_bytes,
    normalized_linear_attention,
    quadratic_linear_attention,
)

# exp(-shift) is clamped below this: beyond it eps dominates the denominator anyway and exp would overflow.
# float64 keeps its own range (exp overflows past 709 there): clamped at 60, its fast path was 2.9e-8 off its
# own float64 reference on logits past 88 (harness.contract's large_logits check; 5.9e-11 on peaked inputs
# with 32 features), where the reference's eps is not clamped.
_MAX_EPS_EXPONENT = 60.0
_MAX_EPS_EXPONENT_FLOAT64 = 700.0


def draw_seed(*parts: int) -> int:
    """One generator seed from several integers (seed, layer, redraw): stable across runs and processes."""
    return hash(tuple(parts)) & (2**63 - 1)


def haar_orthogonal(gaussian: torch.Tensor) -> torch.Tensor:
    """Haar-distributed orthogonal matrices from i.i.d. Gaussian ones (..., d, d).

    QR alone is not Haar: its sign convention ties Q to R. Multiplying Q's columns by sign(diag(R))
    (Mezzadri 2007) makes Q uniform, which E[phi(q).phi(k)] = exp(q.k / sqrt(d)) needs."""
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


@functools.lru_cache(maxsize=64)
def orthogonal_random_features(
    head_dim: int, nb_features: int, seed: int, device: torch.device, dtype: torch.dtype, n_heads: int = 1,
    draw: int = 0,
) -> torch.Tensor:
    """(n_heads, nb_features, head_dim): per head, stacked Haar-orthogonal blocks of rows with
    chi(head_dim)-distributed norms, each head its own draw.

    Drawn in float64 on the CPU from (seed, draw, head), so a seed gives the same features on every device;
    `draw` counts the redraws of training (`redraw_every`)."""
    n_blocks = -(-nb_features // head_dim)
    gaussian, norms = [], []
    for head in range(n_heads):  # a generator per head: head h draws the same whatever n_heads is
        g = torch.Generator().manual_seed(draw_seed(seed, draw, head))
        gaussian.append(torch.randn(n_blocks, head_dim, head_dim, generator=g, dtype=torch.float64))
        norms.append(torch.randn(nb_features, head_dim, generator=g, dtype=torch.float64).norm(dim=-1))
    directions = haar_orthogonal(torch.stack(gaussian)).mT.flatten(1, 2)[:, :nb_features]  # rows per block
    norms = torch.stack(norms)
    return (norms.unsqueeze(-1) * directions).to(device=device, dtype=dtype)


def _features(k: torch.Tensor, nb_features: int, seed: int, draw: int, dtype: torch.dtype) -> torch.Tensor:
    """The projection of (batch, kv_heads, n, head_dim) keys: (kv_heads, m, head_dim), one draw per KV head,
    shared by the query heads of its group."""
    return orthogonal_random_features(k.shape[-1], nb_features, seed, k.device, dtype, k.shape[1], draw)


def _grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor):
    """The group view (harness.attention): q (batch, kv_heads, group, n, d), k and v (batch, kv_heads, 1,
    n, d), the features (kv_heads, 1, m, d)."""
    group = kv_group(q, k)
    return group_queries(q, group), k.unsqueeze(2), v.unsqueeze(2), w.unsqueeze(1)


def positive_features(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """phi(x) = exp(w.x' - |x'|^2 / 2) / sqrt(m), x' = x / d^(1/4): the unstabilised definition."""
    x = x * x.shape[-1] ** -0.25
    return torch.exp(x @ w.mT - x.square().sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[-2])


def favor_features(x: torch.Tensor, w: torch.Tensor, *, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stabilised positive features: returns (phi(x) * exp(-shift), shift).

    The shift is the largest exponent, per row for queries and over the whole sequence for keys (a
    per-key shift would reweight the keys). It cancels in the normalisation once eps is rescaled by it
    too, so the output does not depend on it: detached.
    """
    x = x * x.shape[-1] ** -0.25
    exponent = x @ w.mT - x.square().sum(-1, keepdim=True) / 2
    dims = (-1,) if per_row else (-2, -1)
    shift = exponent.detach().amax(dim=dims, keepdim=True)
    return torch.exp(exponent - shift) / math.sqrt(w.shape[-2]), shift


def performer_attention_reference(q, k, v, causal=False, nb_features=256, seed=0, eps=1e-6, draw=0,
                                  redraw_every=None) -> torch.Tensor:
    """The O(N^2) definition with unstabilised features, in q's dtype (use float64 inputs for a reference)."""
    acc, group = accumulation_dtype(q.dtype), kv_group(q, k)
    w = _features(k, nb_features, seed, draw, acc)
    k, v, w = repeat_kv(k, group), repeat_kv(v, group), w.repeat_interleave(group, dim=0)
    phi_q, phi_k = positive_features(q.to(acc), w), positive_features(k.to(acc), w)
    return quadratic_linear_attention(phi_q, phi_k, v, causal=causal, eps=eps).to(q.dtype)


def _scaled_eps(eps: float, shift_q: torch.Tensor, shift_k: torch.Tensor) -> torch.Tensor:
    """eps belongs to the unstabilised denominator: scale it like the features were scaled."""
    limit = _MAX_EPS_EXPONENT_FLOAT64 if shift_q.dtype == torch.float64 else _MAX_EPS_EXPONENT
    return eps * torch.exp((-shift_q - shift_k).clamp(max=limit))


def performer_prefill(k, v, capacity=None, nb_features=256, seed=0, eps=1e-6, draw=0, redraw_every=None):
    acc = accumulation_dtype(k.dtype)
    phi_k, shift_k = favor_features(k.to(acc), _features(k, nb_features, seed, draw, acc), per_row=False)
    return RecurrentState.of_context(phi_k, v, shift_k)


def performer_decode(q, k, v, state: RecurrentState, nb_features=256, seed=0, eps=1e-6, draw=0,
                     redraw_every=None):
    acc = accumulation_dtype(q.dtype)
    w = _features(k, nb_features, seed, draw, acc)
    phi_k, shift_k = favor_features(k.to(acc), w, per_row=False)
    state = state.add(phi_k, v, shift_k)
    q5, _, _, w5 = _grouped(q, k, v, w)
    phi_q, shift_q = favor_features(q5.to(acc), w5, per_row=True)
    out = state.read(phi_q, _scaled_eps(eps, shift_q, state.shift.unsqueeze(2)))
    return out.flatten(1, 2).to(q.dtype), state


# --- what it costs the planners ---------------------------------------------------------------------

def performer_cost(d_model, n_layers, n_heads, seq_len, *, nb_features=256, **params) -> costs.MixerCost:
    """The feature projections: 4 d_model nb_features / n_heads per layer and token, 6 times for training."""
    return costs.MixerCost(flops=6 * n_layers * 4 * d_model * nb_features // n_heads)


def performer_peak_bytes(call: costs.KernelCall, *, nb_features, **params) -> int:
    """fla's fused chunk kernel on CUDA; elsewhere linear's chunked path on nb_features features, with the
    feature computation's temporaries."""
    if call.backend == FLA_BACKEND:
        return costs.fused_attention_bytes(call)
    return chunked_peak_bytes(call, nb_features, True)


@attention_variant(
    "performer", family="performer", exact=False,
    support=Support(cross=True, grouped_kv=True, padded=True, packed=True),
    defaults={"nb_features": 256, "seed": 0, "eps": 1e-6}, backend=backend_name,
    cost=performer_cost, peak_bytes=performer_peak_bytes, compiles=FLA_COMPILES,
    prefill_fn=performer_prefill, decode_fn=performer_decode, reference=performer_attention_reference,
    small_params={"nb_features": 32},
    description="FAVOR+ positive orthogonal random features, drawn per head; causal via linear's chunked "
                "prefix sums",
)
def performer(q, k, v, causal=False, nb_features=256, seed=0, eps=1e-6, draw=0, redraw_every=None):
    """`draw`: which redraw of the features (training advances it every `redraw_every` steps through
    suites.model; the kernel itself never redraws)."""
    acc = accumulation_dtype(q.dtype)
    w = _features(k, nb_features, seed, draw, acc)
    if kv_group(q, k) == 1:
        phi_q, shift_q = favor_features(q.to(acc), w, per_row=True)
        phi_k, shift_k = favor_features(k.to(acc), w, per_row=False)
        return normalized_linear_attention(phi_q, phi_k, v, causal=causal,
                                           eps=_scaled_eps(eps, shift_q, shift_k)).to(q.dtype)
    q, k, v, w = _grouped(q, k, v, w)
    phi_q, shift_q = favor_features(q.to(acc), w, per_row=True)
    phi_k, shift_k = favor_features(k.to(acc), w, per_row=False)
    return normalized_linear_attention(phi_q, phi_k, v, causal=causal,
                                       eps=_scaled_eps(eps, shift_q, shift_k)).flatten(1, 2).to(q.dtype)
