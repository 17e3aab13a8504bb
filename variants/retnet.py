"""RetNet's multi-scale retention (Sun et al. 2023): linear attention with a fixed decay per head.

    S_t = gamma_h S_{t-1} + k_t v_t^T,    o_t = scale * S_t^T q_t,    gamma_h = 1 - 2^(-5 - h)

for head h = 0..H-1 (the paper's decays, which fla's kernels compute from the head count). Queries and
keys carry rotary position embeddings. Code paths:
- CUDA with fla-core: `fla.ops.retention.chunk_retention`, and `fused_recurrent_retention` for decoding.
- elsewhere: the chunked scalar-decay form shared with Mamba-2's SSD (`variants.mamba2`);
  `retention_recurrent` is its step-by-step twin.

The mixer follows fla's MultiScaleRetention layer: key dim d_model (expand_k 1), value dim 2 d_model
(expand_v 2), a per-head RMS norm gated by SiLU(W_g x), and an output projection.
"""

from __future__ import annotations

import torch
from torch import nn

from harness import costs
from harness.attention import rotary
from harness.registry import ALL_FLOAT, Support, Unsupported, mixer_variant
from variants.mamba2 import scalar_decay_chunked
from variants.recurrent import (
    SIMPLE_GLA_CONFIGS,
    GatedRMSNorm,
    RecurrentMixer,
    accumulation_dtype,
    fla_installed,
    heads,
    merge_heads,
    triton_autotune,
    use_library,
)

CHUNK_SIZE = 64


def log_gammas(n_heads: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """log(1 - 2^(-5 - h)) for h = 0..n_heads-1."""
    return torch.log1p(-(2.0 ** (-5.0 - torch.arange(n_heads, dtype=torch.float64)))).to(dtype=dtype,
                                                                                         device=device)


def retention_chunked(q, k, v, *, scale=None, chunk_size=CHUNK_SIZE, initial_state=None,
                      output_final_state=False):
    """q, k (b, h, n, K); v (b, h, n, V). Returns (o in v's dtype, final state (b, h, K, V) or None)."""
    b, h, n, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    acc = accumulation_dtype(torch.promote_types(q.dtype, v.dtype))
    log_decay = log_gammas(h, acc, q.device)[:, None].expand(b, h, n)
    return scalar_decay_chunked(q.to(acc) * scale, k, v, log_decay, chunk_size=chunk_size,
                                initial_state=initial_state, output_final_state=output_final_state)


def retention_recurrent(q, k, v, *, scale=None, initial_state=None, output_final_state=False):
    """The recurrence one token at a time (the reference twin, and the CPU decode step)."""
    out_dtype = v.dtype
    acc = accumulation_dtype(torch.promote_types(q.dtype, v.dtype))
    b, h, n, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    q, k, v = (t.to(acc) for t in (q, k, v))
    gamma = log_gammas(h, acc, q.device).exp()[:, None, None]
    state = q.new_zeros(b, h, dk, v.shape[-1]) if initial_state is None else initial_state.to(acc)
    outs = []
    for t in range(n):
        state = gamma * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append((q[:, :, t, :, None] * state).sum(-2) * scale)
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(b, h, 0, v.shape[-1], dtype=acc)
    return o.to(out_dtype), state if output_final_state else None


def _bthd(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2)


def _fla_retention(q, k, v, scale, initial_state, output_final_state, recurrent: bool):
    """fla's kernels ([B, T, H, K]); they derive the same gammas from H = q.shape[2]."""
    from fla.ops.retention import chunk_retention, fused_recurrent_retention

    kernel = fused_recurrent_retention if recurrent else chunk_retention
    state = None if initial_state is None else initial_state.float()
    o, final = kernel(_bthd(q), _bthd(k), _bthd(v), scale=scale, initial_state=state,
                      output_final_state=output_final_state)
    return _bthd(o), final


def retention(q, k, v, *, scale=None, chunk_size=CHUNK_SIZE, initial_state=None, output_final_state=False,
              use_fla=None):
    """The whole sequence: fla's chunk_retention where it runs (use_fla None), else chunked PyTorch."""
    if use_library(use_fla, fla_installed(), v):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return _fla_retention(q, k, v, scale, initial_state, output_final_state, False)
    return retention_chunked(q, k, v, scale=scale, chunk_size=chunk_size, initial_state=initial_state,
                             output_final_state=output_final_state)


def retention_step(q, k, v, state, *, scale=None, use_fla=None):
    """One token: fla's fused_recurrent_retention where it runs, else the recurrence."""
    if use_library(use_fla, fla_installed(), v):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return _fla_retention(q, k, v, scale, state, True, True)
    return retention_recurrent(q, k, v, scale=scale, initial_state=state, output_final_state=True)


def retention_kernel_inputs(batch, n_heads, seq_len, head_dim, generator, dtype=torch.float64):
    shape = (batch, n_heads, seq_len, head_dim)
    return {name: torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype) for name in "qkv"}


def retention_kernel(q, k, v):
    return retention(q, k, v)[0]


def retention_reference(q, k, v):
    return retention_recurrent(q, k, v)[0]


def _backend(device: str) -> str:
    return "fla.chunk_retention" if device == "cuda" and fla_installed() else "torch-chunked"


@mixer_variant(
    "retnet", family="retnet", exact=False, backend=_backend, cost=costs.projections_only,  # loop unmeasured
    peak_bytes=costs.not_modelled, compiles=triton_autotune("fla chunk_simple_gla", *SIMPLE_GLA_CONFIGS),
    support=Support(dtypes={"cpu": ALL_FLOAT, "cuda": ALL_FLOAT}, non_causal=False, cross=False,
                    padded=True, packed=True),
    defaults=dict(expand_k=1.0, expand_v=2.0, chunk_size=CHUNK_SIZE),
    kernel=retention_kernel, kernel_reference=retention_reference, kernel_inputs=retention_kernel_inputs,
    small_params={"chunk_size": 8},
    description="RetNet multi-scale retention (fixed decay per head, rotary q/k); fla chunk_retention on "
                "CUDA, chunked PyTorch elsewhere",
)
class RetNetMixer(RecurrentMixer):
    """(batch, seq, d_model) -> same: fla's MultiScaleRetention layer."""

    sequence_op, step_op = staticmethod(retention), staticmethod(retention_step)

    def __init__(self, d_model: int, n_heads: int, expand_k: float = 1.0, expand_v: float = 2.0,
                 chunk_size: int = CHUNK_SIZE, norm_eps: float = 1e-5, causal: bool = True, device=None,
                 dtype=None):
        super().__init__()
        if not causal:
            raise Unsupported(f"retnet {self.causal_only_message}")
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if key_dim % n_heads or value_dim % n_heads or key_dim // n_heads % 2:
            raise ValueError(f"key dim {key_dim} and value dim {value_dim} must split into {n_heads} heads "
                             f"(with an even key head dim, for rotary embeddings)")
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.n_heads, self.chunk_size = d_model, n_heads, chunk_size
        self.q_proj = nn.Linear(d_model, key_dim, bias=False, **factory)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False, **factory)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False, **factory)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False, **factory)
        self.g_norm = GatedRMSNorm(value_dim // n_heads, eps=norm_eps, **factory)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False, **factory)

    def features(self, x, conv_state, position):
        q, k = (rotary(heads(proj(x), self.n_heads), offset=position) for proj in (self.q_proj, self.k_proj))
        inputs = dict(q=q, k=k, v=heads(self.v_proj(x), self.n_heads))
        return inputs, heads(self.g_proj(x), self.n_heads), ()

    def output(self, o, gate):
        return self.o_proj(merge_heads(self.g_norm(o, gate)))
