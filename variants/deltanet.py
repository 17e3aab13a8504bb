"""DeltaNet (Schlag et al. 2021; Yang et al. 2024) and Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025).

The delta rule writes each value over what the state already recalls for its key:

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = scale * S_t^T q_t

with S (K x V), ||k_t|| = 1, beta_t in (0, 1), and alpha_t = exp(g_t) in (0, 1] (Gated DeltaNet; DeltaNet
is alpha = 1). Code paths:
- CUDA with fla-core: `fla.ops.gated_delta_rule.chunk_gated_delta_rule` and
  `fla.ops.delta_rule.chunk_delta_rule` (DeltaNet's kernel takes fp16/bf16 only), and their
  `fused_recurrent_*` kernels for decoding.
- elsewhere: `delta_rule_chunked`, the chunkwise WY form in PyTorch (a triangular solve per chunk, then
  one state pass over the chunks); `delta_rule_recurrent` is its step-by-step twin.

The mixers follow fla's DeltaNet / GatedDeltaNet layers: q, k, v projections through causal short
convolutions (SiLU), L2-normalized q and k, beta = sigmoid(W_b x), Gated DeltaNet's decay
g = -exp(A_log) * softplus(W_a x + dt_bias), a per-head RMS norm on the output (gated by SiLU(W_g x) in
Gated DeltaNet) and an output projection. Head key dim = d_model / n_heads; value dim = expand_v times it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from harness import costs
from harness.registry import ALL_FLOAT, HALF, Support, Unsupported, mixer_variant
from variants.recurrent import (
    KERNEL_DTYPES,
    GatedRMSNorm,
    RecurrentMixer,
    ShortConv,
    accumulation_dtype,
    chunk_loop_cost,
    chunks,
    dt_bias_init,
    fla_installed,
    heads,
    l2norm,
    merge_heads,
    run_convs,
    triton_autotune,
    use_library,
)

CHUNK_SIZE = 64
FLA_MAX_HEAD_DIM = 256  # fla's delta-rule kernels assert K <= 256


# --- the core: chunked WY form, its recurrent twin, the fla call sites -----------------------------

def delta_rule_chunked(q, k, v, beta, log_decay=None, *, scale=None, chunk_size=CHUNK_SIZE,
                       initial_state=None, output_final_state=False):
    """The (gated) delta rule chunk by chunk. q, k (b, h, n, K); v (b, h, n, V); beta, log_decay (b, h, n).

    Within a chunk with cumulative log decay G_i and start state S0, S_i = e^{G_i} S0 + sum_{j<=i}
    e^{G_i - G_j} k_j u_j^T, where the pseudo-values u solve the unit lower-triangular system
    u_i + beta_i sum_{j<i} e^{G_i - G_j} (k_i.k_j) u_j = beta_i (v_i - e^{G_i} S0^T k_i) (the WY form):
    u = U - W S0 with U, W from one triangular solve per chunk, independent of S0.
    Returns (o in v's dtype, final state (b, h, K, V) in the accumulation dtype or None).
    """
    if q.shape[-2] == 0:  # an empty context: nothing to chunk
        return delta_rule_recurrent(q, k, v, beta, log_decay, scale=scale, initial_state=initial_state,
                                    output_final_state=output_final_state)
    out_dtype = v.dtype
    acc = accumulation_dtype(torch.promote_types(q.dtype, v.dtype))
    n, dk = q.shape[-2], q.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    g = torch.zeros_like(beta, dtype=acc) if log_decay is None else log_decay.to(acc)
    qc, kc, vc = (chunks(t.to(acc), chunk_size) for t in (q, k, v))  # (b, h, c, C, d)
    bc, G = chunks(beta.to(acc), chunk_size), chunks(g, chunk_size).cumsum(-1)  # (b, h, c, C)
    size = qc.shape[-2]
    causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    # Decay from j to i, zero above the diagonal (masked before exp: G_i - G_j > 0 there).
    decay = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~causal, -torch.inf))
    interactions = (bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * decay).tril(-1)
    solve = lambda rhs: torch.linalg.solve_triangular(  # noqa: E731
        interactions, rhs, upper=False, unitriangular=True)
    W = solve((bc * G.exp())[..., None] * kc)
    U = solve(bc[..., None] * vc)
    scores = (qc @ kc.transpose(-1, -2)) * decay
    q_decayed = qc * G.exp()[..., None]
    k_to_end = kc * torch.exp(G[..., -1:] - G)[..., None]
    chunk_decay = G[..., -1].exp()[..., None, None]  # (b, h, c, 1, 1)
    b, h = q.shape[:2]
    state = q.new_zeros(b, h, dk, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    outs = []
    # unbind, not indexing: indexing's backward would write a full-size gradient per chunk.
    for W_c, U_c, s_c, q_c, k_c, d_c in zip(*(t.unbind(2) for t in (W, U, scores, q_decayed, k_to_end,
                                                                     chunk_decay)), strict=True):
        u = U_c - W_c @ state
        outs.append(q_c @ state + s_c @ u)
        state = d_c * state + k_c.transpose(-1, -2) @ u
    o = torch.stack(outs, dim=2).flatten(2, 3)[..., :n, :] * scale
    return o.to(out_dtype), state if output_final_state else None


def delta_rule_recurrent(q, k, v, beta, log_decay=None, *, scale=None, initial_state=None,
                         output_final_state=False):
    """The same recurrence one token at a time (the reference twin, and the CPU decode step)."""
    out_dtype = v.dtype
    acc = accumulation_dtype(torch.promote_types(q.dtype, v.dtype))
    b, h, n, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    q, k, v, beta = (t.to(acc) for t in (q, k, v, beta))
    g = torch.zeros_like(beta) if log_decay is None else log_decay.to(acc)
    state = q.new_zeros(b, h, dk, v.shape[-1]) if initial_state is None else initial_state.to(acc)
    outs = []
    for t in range(n):
        state = g[:, :, t, None, None].exp() * state
        recalled = (k[:, :, t, :, None] * state).sum(-2)  # S^T k
        state = state + k[:, :, t, :, None] * (beta[:, :, t, None] * (v[:, :, t] - recalled))[..., None, :]
        outs.append((q[:, :, t, :, None] * state).sum(-2) * scale)
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(b, h, 0, v.shape[-1], dtype=acc)
    return o.to(out_dtype), state if output_final_state else None


def _bthd(x: torch.Tensor) -> torch.Tensor:
    """Ours (b, h, n, ...) <-> fla's [B, T, H, ...]."""
    return x.transpose(1, 2)


def _fla_delta_rule(q, k, v, beta, log_decay, scale, initial_state, output_final_state, recurrent: bool):
    """fla's chunked (or fused recurrent, for decoding) kernels; fla's layout is [B, T, H, K]."""
    state = None if initial_state is None else initial_state.float()  # fla keeps states in float32
    common = dict(scale=scale, initial_state=state, output_final_state=output_final_state)
    if log_decay is None:
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule

        kernel = fused_recurrent_delta_rule if recurrent else chunk_delta_rule
        o, final = kernel(_bthd(q), _bthd(k), _bthd(v), beta=_bthd(beta), **common)
    else:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

        kernel = fused_recurrent_gated_delta_rule if recurrent else chunk_gated_delta_rule
        g = _bthd(log_decay).float()  # log-space decays, in float32 as fla's layer makes them
        o, final = kernel(_bthd(q), _bthd(k), _bthd(v), g=g, beta=_bthd(beta), **common)
    return _bthd(o), final


def _fla_dtypes(log_decay) -> tuple[torch.dtype, ...]:
    return KERNEL_DTYPES if log_decay is not None else HALF  # chunk_delta_rule refuses float32


def delta_rule(q, k, v, beta, log_decay=None, *, scale=None, chunk_size=CHUNK_SIZE, initial_state=None,
               output_final_state=False, use_fla=None):
    """The whole sequence: fla's chunk kernel where it runs (use_fla None), else the chunked WY form."""
    if use_library(use_fla, fla_installed(), v, _fla_dtypes(log_decay)) and q.shape[-1] <= FLA_MAX_HEAD_DIM:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return _fla_delta_rule(q, k, v, beta, log_decay, scale, initial_state, output_final_state, False)
    return delta_rule_chunked(q, k, v, beta, log_decay, scale=scale, chunk_size=chunk_size,
                              initial_state=initial_state, output_final_state=output_final_state)


def delta_rule_step(q, k, v, beta, log_decay=None, *, state, scale=None, use_fla=None):
    """One token (n = 1) from `state`: fla's fused recurrent kernel where it runs, else the recurrence."""
    if use_library(use_fla, fla_installed(), v, _fla_dtypes(log_decay)) and q.shape[-1] <= FLA_MAX_HEAD_DIM:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return _fla_delta_rule(q, k, v, beta, log_decay, scale, state, True, True)
    return delta_rule_recurrent(q, k, v, beta, log_decay, scale=scale, initial_state=state,
                                output_final_state=True)


# --- registry hooks: the kernel, its reference, realistic inputs ----------------------------------

def delta_kernel_inputs(batch, n_heads, seq_len, head_dim, generator, dtype=torch.float64,
                        gated: bool = True):
    """Inputs drawn in float64: unit-norm keys, beta in (0, 1), decays alpha = exp(g) mostly in (0.5, 1).
    Activations (q, k, v, beta) in `dtype`; log decays in the accumulation dtype, as the layer makes them."""
    randn = lambda *s: torch.randn(*s, generator=generator, dtype=torch.float64)  # noqa: E731
    shape = (batch, n_heads, seq_len, head_dim)
    inputs = dict(q=randn(*shape), k=l2norm(randn(*shape)), v=randn(*shape),
                  beta=torch.sigmoid(randn(*shape[:3])))
    inputs = {name: t.to(dtype) for name, t in inputs.items()}
    if gated:
        inputs["log_decay"] = F.logsigmoid(2.0 + randn(*shape[:3])).to(accumulation_dtype(dtype))
    return inputs


def gated_delta_kernel(q, k, v, beta, log_decay):
    return delta_rule(q, k, v, beta, log_decay)[0]


def gated_delta_reference(q, k, v, beta, log_decay):
    return delta_rule_recurrent(q, k, v, beta, log_decay)[0]


def delta_kernel(q, k, v, beta):
    return delta_rule(q, k, v, beta)[0]


def delta_reference(q, k, v, beta):
    return delta_rule_recurrent(q, k, v, beta)[0]


def _backend(gated: bool):
    kernel = "chunk_gated_delta_rule" if gated else "chunk_delta_rule (fp16/bf16)"
    return lambda device: f"fla.{kernel}" if device == "cuda" and fla_installed() else "torch-chunked-wy"


# --- the mixers -----------------------------------------------------------------------------------

class DeltaRuleMixer(RecurrentMixer):
    """(batch, seq, d_model) -> same: fla's DeltaNet layer (gated=False) or GatedDeltaNet layer."""

    gated: bool = False
    sequence_op, step_op = staticmethod(delta_rule), staticmethod(delta_rule_step)

    def __init__(self, d_model: int, n_heads: int, *, expand_v: float, use_output_gate: bool,
                 conv_size: int = 4, chunk_size: int = CHUNK_SIZE, norm_eps: float = 1e-5,
                 causal: bool = True, device=None, dtype=None):
        super().__init__()
        if not causal:
            raise Unsupported(f"{type(self).__name__} {self.causal_only_message}")
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.n_heads, self.chunk_size = d_model, n_heads, chunk_size
        self.head_k = d_model // n_heads
        self.head_v = int(self.head_k * expand_v)
        key_dim, value_dim = n_heads * self.head_k, n_heads * self.head_v
        self.q_proj = nn.Linear(d_model, key_dim, bias=False, **factory)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False, **factory)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False, **factory)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False, **factory)
        if self.gated:
            self.a_proj = nn.Linear(d_model, n_heads, bias=False, **factory)
            # A in (0, 16) as in the Gated DeltaNet layer; A_log and dt_bias stay float32.
            self.A_log = nn.Parameter(torch.empty(n_heads, device=device).uniform_(0, 16).log())
            self.dt_bias = nn.Parameter(dt_bias_init(n_heads, device=device))
            self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
            self.dt_bias._no_reinit = True
        self.q_conv1d = ShortConv(key_dim, conv_size, **factory)
        self.k_conv1d = ShortConv(key_dim, conv_size, **factory)
        self.v_conv1d = ShortConv(value_dim, conv_size, **factory)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False, **factory) if use_output_gate else None
        self.o_norm = GatedRMSNorm(self.head_v, eps=norm_eps, **factory)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False, **factory)

    def features(self, x, conv_state, position):
        (q, k, v), new_state = run_convs([(self.q_conv1d, self.q_proj(x)), (self.k_conv1d, self.k_proj(x)),
                                          (self.v_conv1d, self.v_proj(x))], conv_state)
        inputs = dict(q=l2norm(heads(q, self.n_heads)), k=l2norm(heads(k, self.n_heads)),
                      v=heads(v, self.n_heads), beta=torch.sigmoid(self.b_proj(x)).transpose(1, 2))
        if self.gated:
            acc = accumulation_dtype(x.dtype)
            step = F.softplus(self.a_proj(x).to(acc) + self.dt_bias.to(acc))
            inputs["log_decay"] = (-self.A_log.to(acc).exp() * step).transpose(1, 2)
        gate = None if self.g_proj is None else heads(self.g_proj(x), self.n_heads)
        return inputs, gate, new_state

    def output(self, o, gate):
        return self.o_proj(merge_heads(self.o_norm(o, gate)))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, heads={self.n_heads}, head_k={self.head_k}, head_v={self.head_v}"


SUPPORT = Support(dtypes={"cpu": ALL_FLOAT, "cuda": ALL_FLOAT}, non_causal=False, cross=False,
                  padded=True, packed=True)


# fla-core 0.6.0's autotune configs, (forward, backward): chunk_gated_delta_rule's fused kkt-solve,
# recompute_w_u, chunk_fwd_h, chunk_fwd_o and gate kernels, then their backward kernels; chunk_delta_rule's
# scaled_dot_kkt, solve_tril, recompute_w_u, chunk_fwd_h and chunk_fwd_o, then its backward kernels.
@mixer_variant(
    "gated-deltanet", family="deltanet", exact=False, support=SUPPORT, backend=_backend(True),
    cost=chunk_loop_cost(0.040), peak_bytes=costs.not_modelled,
    compiles=triton_autotune("fla chunk_gated_delta_rule", 21, 22),
    defaults=dict(expand_v=2, use_output_gate=True, conv_size=4, chunk_size=CHUNK_SIZE),
    kernel=gated_delta_kernel, kernel_reference=gated_delta_reference, kernel_inputs=delta_kernel_inputs,
    small_params={"chunk_size": 8},
    description="Gated DeltaNet (gated delta rule); fla chunk_gated_delta_rule on CUDA, chunked WY form "
                "in PyTorch elsewhere",
)
class GatedDeltaNetMixer(DeltaRuleMixer):
    gated = True

    def __init__(self, d_model: int, n_heads: int, expand_v: float = 2, use_output_gate: bool = True,
                 **kwargs):
        super().__init__(d_model, n_heads, expand_v=expand_v, use_output_gate=use_output_gate, **kwargs)


@mixer_variant(
    "deltanet", family="deltanet", exact=False, support=SUPPORT, backend=_backend(False),
    cost=chunk_loop_cost(0.028), peak_bytes=costs.not_modelled,
    compiles=triton_autotune("fla chunk_delta_rule", 113, 20),
    defaults=dict(expand_v=1, use_output_gate=False, conv_size=4, chunk_size=CHUNK_SIZE),
    kernel=delta_kernel, kernel_reference=delta_reference,
    kernel_inputs=functools.partial(delta_kernel_inputs, gated=False), small_params={"chunk_size": 8},
    description="DeltaNet (delta rule); fla chunk_delta_rule on CUDA (fp16/bf16), chunked WY form in "
                "PyTorch elsewhere",
)
class DeltaNetMixer(DeltaRuleMixer):
    gated = False

    def __init__(self, d_model: int, n_heads: int, expand_v: float = 1, use_output_gate: bool = False,
                 **kwargs):
        super().__init__(d_model, n_heads, expand_v=expand_v, use_output_gate=use_output_gate, **kwargs)
