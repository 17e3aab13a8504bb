"""Gated Linear Attention (Yang et al. 2024): linear attention with a data-dependent decay per key channel.

    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,    o_t = scale * S_t^T q_t,    alpha_t = exp(g_t) in (0, 1]^K

Code paths:
- CUDA with fla-core: `fla.ops.gla.chunk_gla`, and `fla.ops.gla.fused_recurrent_gla` for decoding.
- elsewhere: `gla_chunked` in PyTorch; inside a chunk the decay between every pair of positions is formed
  explicitly per channel (exp(G_i - G_j) with i >= j is at most 1, so no chunk needs secondary chunking
  for stability), then a state pass between chunks. `gla_recurrent` is its step-by-step twin.

The mixer follows fla's GatedLinearAttention layer at its defaults: key dim d_model / 2 (expand_k 0.5),
value dim d_model, no short convolution, the decay g = logsigmoid(W2 W1 x + b) / 16 through a rank-16
projection, a per-head RMS norm gated by SiLU(W_g x), and an output projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness import costs
from harness.registry import ALL_FLOAT, Support, Unsupported, mixer_variant
from variants.recurrent import (
    GatedRMSNorm,
    RecurrentMixer,
    accumulation_dtype,
    chunk_loop_cost,
    chunks,
    fla_installed,
    heads,
    merge_heads,
    triton_autotune,
    use_library,
)

CHUNK_SIZE = 16  # the pairwise decays cost chunk_size * K floats per token


def gla_chunked(q, k, v, log_decay, *, scale=None, chunk_size=CHUNK_SIZE, initial_state=None,
                output_final_state=False):
    """q, k, log_decay (b, h, n, K), log_decay <= 0; v (b, h, n, V). Returns (o in v's dtype, final
    state (b, h, K, V) in the accumulation dtype or None)."""
    out_dtype = v.dtype
    acc = accumulation_dtype(torch.promote_types(q.dtype, v.dtype))
    b, h, n, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    state = q.new_zeros(b, h, dk, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    if n == 0:
        return v.new_zeros(b, h, 0, v.shape[-1]), state if output_final_state else None
    qc, kc, vc = (chunks(t.to(acc), chunk_size) for t in (q * scale, k, v))
    G = chunks(log_decay.to(acc), chunk_size).cumsum(-2)  # (b, h, c, C, K)
    size = qc.shape[-2]
    above = ~torch.ones(size, size, dtype=torch.bool, device=q.device).tril()[..., None]
    # decay[i, j, :] = exp(G_i - G_j) for j <= i, 0 above the diagonal (masked before exp).
    decay = torch.exp((G[..., :, None, :] - G[..., None, :, :]).masked_fill(above, -torch.inf))
    scores = torch.einsum("...ik,...jk,...ijk->...ij", qc, kc, decay)
    intra = scores @ vc
    q_decayed = qc * G.exp()
    kv_to_end = (kc * torch.exp(G[..., -1:, :] - G)).transpose(-1, -2) @ vc
    chunk_decay = G[..., -1, :].exp()[..., None]  # (b, h, c, K, 1)
    outs = []
    for q_c, kv_c, d_c in zip(q_decayed.unbind(2), kv_to_end.unbind(2), chunk_decay.unbind(2), strict=True):
        outs.append(q_c @ state)
        state = d_c * state + kv_c
    o = (torch.stack(outs, dim=2) + intra).flatten(2, 3)[..., :n, :]
    return o.to(out_dtype), state if output_final_state else None


def gla_recurrent(q, k, v, log_decay, *, scale=None, initial_state=None, output_final_state=False):
    """The recurrence one token at a time (the reference twin, and the CPU decode step)."""
    out_dtype = v.dtype
    acc = accumulation_dtype(torch.promote_types(q.dtype, v.dtype))
    b, h, n, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    q, k, v, g = (t.to(acc) for t in (q, k, v, log_decay))
    state = q.new_zeros(b, h, dk, v.shape[-1]) if initial_state is None else initial_state.to(acc)
    outs = []
    for t in range(n):
        state = g[:, :, t, :, None].exp() * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append((q[:, :, t, :, None] * state).sum(-2) * scale)
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(b, h, 0, v.shape[-1], dtype=acc)
    return o.to(out_dtype), state if output_final_state else None


def _bthd(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2)


def _fla_gla(q, k, v, log_decay, scale, initial_state, output_final_state, recurrent: bool):
    """fla's kernels ([B, T, H, K] layout); chunk_gla asserts a float32 initial state."""
    from fla.ops.gla import chunk_gla, fused_recurrent_gla

    state = None if initial_state is None else initial_state.float()
    g = _bthd(log_decay).float()
    common = dict(scale=scale, initial_state=state, output_final_state=output_final_state)
    if recurrent:
        o, final = fused_recurrent_gla(_bthd(q), _bthd(k), _bthd(v), gk=g, **common)
    else:
        o, final = chunk_gla(_bthd(q), _bthd(k), _bthd(v), g=g, **common)
    return _bthd(o), final


def gla(q, k, v, log_decay, *, scale=None, chunk_size=CHUNK_SIZE, initial_state=None,
        output_final_state=False, use_fla=None):
    """The whole sequence: fla's chunk_gla where it runs (use_fla None), else chunked PyTorch."""
    if use_library(use_fla, fla_installed(), v):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return _fla_gla(q, k, v, log_decay, scale, initial_state, output_final_state, False)
    return gla_chunked(q, k, v, log_decay, scale=scale, chunk_size=chunk_size, initial_state=initial_state,
                       output_final_state=output_final_state)


def gla_step(q, k, v, log_decay, state, *, scale=None, use_fla=None):
    """One token: fla's fused_recurrent_gla where it runs, else the recurrence."""
    if use_library(use_fla, fla_installed(), v):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return _fla_gla(q, k, v, log_decay, scale, state, True, True)
    return gla_recurrent(q, k, v, log_decay, scale=scale, initial_state=state, output_final_state=True)


def gla_kernel_inputs(batch, n_heads, seq_len, head_dim, generator, dtype=torch.float64):
    """Inputs drawn in float64; decays as the layer makes them, logsigmoid(N(0, 1)) / 16 (alpha about
    0.96), in the accumulation dtype; q, k, v in `dtype`."""
    randn = lambda *s: torch.randn(*s, generator=generator, dtype=torch.float64)  # noqa: E731
    shape = (batch, n_heads, seq_len, head_dim)
    q, k, v = (randn(*shape).to(dtype) for _ in range(3))
    return dict(q=q, k=k, v=v, log_decay=(F.logsigmoid(randn(*shape)) / 16).to(accumulation_dtype(dtype)))


def gla_kernel(q, k, v, log_decay):
    return gla(q, k, v, log_decay)[0]


def gla_reference(q, k, v, log_decay):
    return gla_recurrent(q, k, v, log_decay)[0]


def _backend(device: str) -> str:
    return "fla.chunk_gla" if device == "cuda" and fla_installed() else "torch-chunked"


# fla-core 0.6.0's autotune configs: chunk_gla's forward (ops/gla/chunk.py, with common/chunk_h.py's
# chunk_fwd_h) and its backward kernels.
@mixer_variant(
    "gla", family="gla", exact=False, backend=_backend, cost=chunk_loop_cost(0.016),
    peak_bytes=costs.not_modelled, compiles=triton_autotune("fla chunk_gla", 124, 144),
    support=Support(dtypes={"cpu": ALL_FLOAT, "cuda": ALL_FLOAT}, non_causal=False, cross=False,
                    padded=True, packed=True),
    defaults=dict(expand_k=0.5, expand_v=1.0, gate_low_rank_dim=16, gate_logit_normalizer=16,
                  chunk_size=CHUNK_SIZE),
    kernel=gla_kernel, kernel_reference=gla_reference, kernel_inputs=gla_kernel_inputs,
    small_params={"chunk_size": 8},
    description="Gated Linear Attention (per-channel data-dependent decay); fla chunk_gla on CUDA, chunked "
                "PyTorch elsewhere",
)
class GLAMixer(RecurrentMixer):
    """(batch, seq, d_model) -> same: fla's GatedLinearAttention layer."""

    sequence_op, step_op = staticmethod(gla), staticmethod(gla_step)

    def __init__(self, d_model: int, n_heads: int, expand_k: float = 0.5, expand_v: float = 1.0,
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16, chunk_size: int = CHUNK_SIZE,
                 norm_eps: float = 1e-5, causal: bool = True, device=None, dtype=None):
        super().__init__()
        if not causal:
            raise Unsupported(f"gla {self.causal_only_message}")
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if key_dim % n_heads or value_dim % n_heads:
            raise ValueError(f"key dim {key_dim} and value dim {value_dim} must split into {n_heads} heads")
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.n_heads, self.chunk_size = d_model, n_heads, chunk_size
        self.gate_logit_normalizer = gate_logit_normalizer
        self.q_proj = nn.Linear(d_model, key_dim, bias=False, **factory)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False, **factory)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False, **factory)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False, **factory)
        self.gk_proj = nn.Sequential(nn.Linear(d_model, gate_low_rank_dim, bias=False, **factory),
                                     nn.Linear(gate_low_rank_dim, key_dim, bias=True, **factory))
        self.g_norm = GatedRMSNorm(value_dim // n_heads, eps=norm_eps, **factory)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False, **factory)

    def features(self, x, conv_state, position):
        acc = accumulation_dtype(x.dtype)
        log_decay = F.logsigmoid(self.gk_proj(x).to(acc)) / self.gate_logit_normalizer
        inputs = dict(q=heads(self.q_proj(x), self.n_heads), k=heads(self.k_proj(x), self.n_heads),
                      v=heads(self.v_proj(x), self.n_heads), log_decay=heads(log_decay, self.n_heads))
        return inputs, heads(self.g_proj(x), self.n_heads), ()

    def output(self, o, gate):
        return self.o_proj(merge_heads(self.g_norm(o, gate)))
