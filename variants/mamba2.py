"""Mamba-2 (Dao & Gu 2024): the SSD layer, a state-space model whose transition is a scalar per head.

Per head, with state h (N x P), input x_t (P), dt_t > 0, A < 0 and B_t, C_t (N) shared by a group of heads:

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T,    y_t = h_t^T C_t (+ D x_t)

That is linear attention with a scalar decay: q = C, k = B, v = dt x, log decay dt A. Code paths:
- CUDA with mamba-ssm: `mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined` (and
  `selective_state_update` for decoding), Triton kernels that also run where mamba-ssm was installed
  without its CUDA extension (variants.recurrent.import_mamba_ssm_triton).
- elsewhere: `ssd_chunked`, the paper's chunkwise SSD in PyTorch (quadratic inside a chunk, a state pass
  between chunks); `ssd_recurrent` is its step-by-step twin.

The mixer is mamba_ssm's `Mamba2` block (ngroups=1, rmsnorm after the SiLU(z) gate, D per head), with the
same parameter names and shapes, so a state_dict loads into either. Defaults chosen for the small widths of
the learned tasks (docs/variants.md): d_state 64 (the library's 128 leaves no MLP to match
parameters with below d_model 48) and headdim = expand * d_model / n_heads (the harness's head count; 64 at
d_model 64 with 2 heads, the library's default there).
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
    ShortConv,
    accumulation_dtype,
    chunk_loop_cost,
    chunks,
    dt_bias_init,
    import_mamba_ssm_triton,
    mamba_ssm_installed,
    run_convs,
    triton_autotune,
    use_library,
)

CHUNK_SIZE = 64
D_STATE = 64


# --- scalar-decay linear attention, chunked (SSD); RetNet uses it too ------------------------------

def scalar_decay_chunked(q, k, v, log_decay, *, chunk_size=CHUNK_SIZE, initial_state=None,
                         output_final_state=False):
    """o_i = sum_{j<=i} e^{G_i - G_j} (q_i.k_j) v_j + e^{G_i} q_i^T S0, G the cumulative log decay.

    q, k (b, h, n, K); v (b, h, n, V); log_decay (b, h, n) <= 0. Inside a chunk the decayed scores are one
    masked matmul; between chunks the (K x V) state is carried forward. Returns (o in v's dtype, final
    state in the accumulation dtype or None).
    """
    out_dtype = v.dtype
    acc = accumulation_dtype(torch.promote_types(q.dtype, v.dtype))
    b, h, n, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    if n == 0:
        return v.new_zeros(b, h, 0, v.shape[-1]), state if output_final_state else None
    qc, kc, vc = (chunks(t.to(acc), chunk_size) for t in (q, k, v))
    G = chunks(log_decay.to(acc), chunk_size).cumsum(-1)  # (b, h, c, C); padding adds no decay
    size = qc.shape[-2]
    causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~causal, -torch.inf))
    intra = ((qc @ kc.transpose(-1, -2)) * decay) @ vc
    q_decayed = qc * G.exp()[..., None]
    kv_to_end = (kc * torch.exp(G[..., -1:] - G)[..., None]).transpose(-1, -2) @ vc  # chunk's own state
    chunk_decay = G[..., -1].exp()[..., None, None]
    outs = []
    for q_c, kv_c, d_c in zip(q_decayed.unbind(2), kv_to_end.unbind(2), chunk_decay.unbind(2), strict=True):
        outs.append(q_c @ state)
        state = d_c * state + kv_c
    o = (torch.stack(outs, dim=2) + intra).flatten(2, 3)[..., :n, :]
    return o.to(out_dtype), state if output_final_state else None


def _heads_of_groups(M: torch.Tensor, n_heads: int) -> torch.Tensor:
    """B or C (b, groups, n, N) -> (b, heads, n, N): head i reads group i // (heads // groups)."""
    if n_heads % M.shape[1]:
        raise ValueError(f"{M.shape[1]} groups do not divide {n_heads} heads")
    return M.repeat_interleave(n_heads // M.shape[1], dim=1)


def ssd_chunked(x, dt, A, B, C, *, chunk_size=CHUNK_SIZE, initial_state=None, output_final_state=False):
    """SSD in PyTorch. x (b, h, n, P); dt (b, h, n) > 0; A (h,) < 0; B, C (b, g, n, N).
    Returns (y (b, h, n, P) in x's dtype, final state (b, h, N, P) or None). No D, no gate."""
    acc, n_heads = accumulation_dtype(x.dtype), x.shape[1]
    dt = dt.to(acc)
    y, state = scalar_decay_chunked(
        _heads_of_groups(C, n_heads), _heads_of_groups(B, n_heads), x.to(acc) * dt[..., None],
        dt * A.to(acc)[:, None], chunk_size=chunk_size, initial_state=initial_state,
        output_final_state=output_final_state)
    return y.to(x.dtype), state


def ssd_recurrent(x, dt, A, B, C, *, initial_state=None, output_final_state=False):
    """The SSM one step at a time (the reference twin, and the CPU decode step)."""
    acc, (b, h, n, p) = accumulation_dtype(x.dtype), x.shape
    x64, dt, A = x.to(acc), dt.to(acc), A.to(acc)
    B, C = _heads_of_groups(B, h).to(acc), _heads_of_groups(C, h).to(acc)
    state = x.new_zeros(b, h, B.shape[-1], p, dtype=acc) if initial_state is None else initial_state.to(acc)
    ys = []
    for t in range(n):
        decay = torch.exp(dt[:, :, t] * A)[..., None, None]
        state = decay * state + (dt[:, :, t, None] * B[:, :, t])[..., None] * x64[:, :, t, None, :]
        ys.append((C[:, :, t, :, None] * state).sum(-2))
    y = torch.stack(ys, dim=2) if ys else x64.new_zeros(b, h, 0, p)
    return y.to(x.dtype), state if output_final_state else None


def _bthd(t: torch.Tensor) -> torch.Tensor:
    """Ours (b, h, n, ...) <-> mamba_ssm's (batch, seqlen, nheads, ...)."""
    return t.transpose(1, 2)


def _mamba_chunk_scan(x, dt, A, B, C, chunk_size, initial_state, output_final_state):
    """mamba_ssm's fused SSD. Its state is (batch, nheads, headdim, dstate), ours (b, h, N, P)."""
    import_mamba_ssm_triton()
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    initial = None if initial_state is None else initial_state.transpose(-1, -2).float().contiguous()
    out = mamba_chunk_scan_combined(_bthd(x), _bthd(dt).float(), A.float(), _bthd(B), _bthd(C),
                                    chunk_size=chunk_size, initial_states=initial,
                                    return_final_states=output_final_state)
    y, final = out if output_final_state else (out, None)
    return _bthd(y), None if final is None else final.transpose(-1, -2).float()


def _mamba_state_update(x, dt, A, B, C, state):
    """mamba_ssm's one-token kernel; it updates a (batch, nheads, headdim, dstate) state in place, so it
    gets a copy (decode steps here return a new state, like every other path)."""
    import_mamba_ssm_triton()
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    new_state = state.float().clone()
    p, n = x.shape[-1], B.shape[-1]
    y = selective_state_update(
        new_state.transpose(-1, -2), x[:, :, 0], dt[:, :, 0, None].float().expand(-1, -1, p),
        A.float()[:, None, None].expand(-1, p, n), B[:, :, 0], C[:, :, 0],
        dt_bias=torch.zeros_like(A, dtype=torch.float32)[:, None].expand(-1, p), dt_softplus=False)
    return y[:, :, None], new_state


def ssd(x, dt, A, B, C, *, chunk_size=CHUNK_SIZE, initial_state=None, output_final_state=False,
        use_mamba=None):
    """The whole sequence: mamba_ssm's kernel where it runs (use_mamba None), else chunked SSD in PyTorch."""
    if use_library(use_mamba, mamba_ssm_installed(), x):
        return _mamba_chunk_scan(x, dt, A, B, C, chunk_size, initial_state, output_final_state)
    return ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, initial_state=initial_state,
                       output_final_state=output_final_state)


def ssd_step(x, dt, A, B, C, state, *, use_mamba=None):
    """One token (n = 1): mamba_ssm's selective_state_update where it runs, else the recurrence."""
    if use_library(use_mamba, mamba_ssm_installed(), x):
        return _mamba_state_update(x, dt, A, B, C, state)
    return ssd_recurrent(x, dt, A, B, C, initial_state=state, output_final_state=True)


# --- registry hooks -------------------------------------------------------------------------------

def ssd_kernel_inputs(batch, n_heads, seq_len, head_dim, generator, dtype=torch.float64,
                      d_state: int = D_STATE, groups: int = 1):
    """Inputs drawn in float64 in the ranges of a trained block: dt = softplus(N(-3, 1)), A in [-16, -1].
    x, B, C in `dtype`; dt and A in the accumulation dtype, as the block computes them."""
    randn = lambda *s: torch.randn(*s, generator=generator, dtype=torch.float64)  # noqa: E731
    uniform = torch.rand(n_heads, generator=generator, dtype=torch.float64)
    acc = accumulation_dtype(dtype)
    return dict(x=randn(batch, n_heads, seq_len, head_dim).to(dtype),
                dt=F.softplus(randn(batch, n_heads, seq_len) - 3).to(acc), A=(-(1 + 15 * uniform)).to(acc),
                B=randn(batch, groups, seq_len, d_state).to(dtype),
                C=randn(batch, groups, seq_len, d_state).to(dtype))


def ssd_kernel(x, dt, A, B, C):
    return ssd(x, dt, A, B, C)[0]


def ssd_reference(x, dt, A, B, C):
    return ssd_recurrent(x, dt, A, B, C)[0]


# mamba-ssm 2.3.1's SSD Triton kernels (ops/triton/ssd_*.py): mamba_chunk_scan_combined's forward calls
# five autotuned kernels (chunk cumsum, chunk state, state passing, bmm, chunk scan); its backward is
# charged every backward kernel's configs there but the two superseded ones.
MAMBA_SSD_AUTOTUNE = triton_autotune("mamba-ssm mamba_chunk_scan_combined", 42, 124)


def _backend(device: str) -> str:
    fast = device == "cuda" and mamba_ssm_installed()
    return "mamba_ssm.mamba_chunk_scan_combined" if fast else "torch-chunked-ssd"


# --- the mixer ------------------------------------------------------------------------------------

@mixer_variant(
    "mamba2", family="mamba2", exact=False, backend=_backend, cost=chunk_loop_cost(0.031),
    peak_bytes=costs.not_modelled, compiles=MAMBA_SSD_AUTOTUNE,
    support=Support(dtypes={"cpu": ALL_FLOAT, "cuda": ALL_FLOAT}, non_causal=False, cross=False,
                    padded=True, packed=True),
    defaults=dict(d_state=D_STATE, d_conv=4, expand=2, ngroups=1, chunk_size=CHUNK_SIZE),
    kernel=ssd_kernel, kernel_reference=ssd_reference, kernel_inputs=ssd_kernel_inputs,
    small_params={"chunk_size": 8},
    description="Mamba-2 (SSD) block; mamba_ssm's mamba_chunk_scan_combined on CUDA, chunked SSD in "
                "PyTorch elsewhere",
)
class Mamba2Mixer(RecurrentMixer):
    """(batch, seq, d_model) -> same: mamba_ssm's Mamba2 block (in_proj -> conv on x,B,C -> SSD -> D skip ->
    RMSNorm(y * silu(z)) -> out_proj)."""

    sequence_op, step_op = staticmethod(ssd), staticmethod(ssd_step)

    def __init__(self, d_model: int, n_heads: int = 1, d_state: int = D_STATE, d_conv: int = 4,
                 expand: int = 2, headdim: int | None = None, ngroups: int = 1,
                 A_init_range: tuple[float, float] = (1, 16),
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, bias: bool = False,
                 conv_bias: bool = True, chunk_size: int = CHUNK_SIZE, norm_eps: float = 1e-5,
                 causal: bool = True, device=None, dtype=None):
        super().__init__()
        if not causal:
            raise Unsupported(f"mamba2 {self.causal_only_message}")
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.ngroups, self.chunk_size = d_model, d_state, ngroups, chunk_size
        self.d_inner = expand * d_model
        self.headdim = headdim or self.d_inner // n_heads
        if self.d_inner % self.headdim or self.d_inner // self.headdim % ngroups:
            raise ValueError(f"d_inner {self.d_inner} must split into heads of {self.headdim} "
                             f"in {ngroups} groups")
        self.nheads = self.d_inner // self.headdim
        # Parameters in mamba_ssm's creation order and names. in_proj packs [z, x, B, C, dt].
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=bias,
                                 **factory)
        self.conv1d = ShortConv(self.d_inner + 2 * ngroups * d_state, d_conv, bias=conv_bias, **factory)
        self.dt_bias = nn.Parameter(dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor, **factory))
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))  # float32, as in mamba_ssm (A = -exp(A_log))
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))
        self.dt_bias._no_weight_decay = self.A_log._no_weight_decay = self.D._no_weight_decay = True
        self.dt_bias._no_reinit = True
        self.norm = GatedRMSNorm(self.d_inner, eps=norm_eps, norm_before_gate=False,
                                 group_size=self.d_inner // ngroups, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def features(self, x, conv_state, position):
        z, xBC, dt = self.in_proj(x).split(
            [self.d_inner, self.d_inner + 2 * self.ngroups * self.d_state, self.nheads], dim=-1)
        (xBC,), new_state = run_convs([(self.conv1d, xBC)], conv_state)
        u, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        acc = accumulation_dtype(x.dtype)
        group = lambda M: M.unflatten(-1, (self.ngroups, -1)).transpose(1, 2)  # noqa: E731
        inputs = dict(x=u.unflatten(-1, (self.nheads, -1)).transpose(1, 2), B=group(B), C=group(C),
                      dt=F.softplus(dt.to(acc) + self.dt_bias.to(acc)).transpose(1, 2),
                      A=-torch.exp(self.A_log.to(acc)))
        return inputs, (inputs["x"], z), new_state

    def output(self, y, context):
        u, z = context
        y = (y + self.D.to(y.dtype)[:, None, None] * u).transpose(1, 2).flatten(2)
        return self.out_proj(self.norm(y, z))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, heads={self.nheads}, "
                f"headdim={self.headdim}, d_state={self.d_state}, ngroups={self.ngroups}")
