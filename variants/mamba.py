"""Mamba (S6): a selective state-space sequence mixer, parameterized exactly like mamba_ssm's `Mamba`.

Same parameter names, shapes and initialization as mamba_ssm/modules/mamba_simple.py, so a state_dict
loads into either module. On CUDA with mamba-ssm installed it runs mamba-ssm's own kernels as its
`Mamba` does: the whole block in `mamba_inner_fn` when causal-conv1d is installed too (else the conv in
PyTorch and the scan in `selective_scan_fn`), prefill through `selective_scan_fn` (it returns the last
state), and decoding through causal-conv1d's `causal_conv1d_update` and mamba-ssm's Triton
`selective_state_update`. Everywhere else in PyTorch, with the same state_dict.
`selective_scan_reference` is the plain recurrence the tests hold both to.

`mamba-lti` is the control of the Mamba paper's selective-copying claim (Table 1: selective against
time-invariant): the same block with Delta, B and C learned parameters instead of projections of x, so
its SSM is linear time-invariant, a convolution (`time_invariant_scan`, by FFT, on every device; its twin
is the same recurrence, `selective_scan_reference`, with constant inputs).
"""

from __future__ import annotations

import functools
import importlib.machinery
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from harness import costs
from harness.registry import (
    ALL_FLOAT,
    Support,
    Unsupported,
    cuda_available,
    mixer_variant,
    package_available,
)

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what selective_scan_cuda accepts


# mamba-ssm's compiled CUDA module, top-level beside the package. `MAMBA_SKIP_CUDA_BUILD=TRUE` installs the
# package without it (the offline wheelhouse does): `selective_scan_fn` and `mamba_inner_fn` need it.
EXTENSION = "selective_scan_cuda"


@functools.cache
def fused_unavailable_reason() -> str | None:
    """Why mamba_ssm's fused Mamba-1 kernels cannot run here, None where they can. The extension is
    looked up on the path itself, not through the package (which installs without it), nor through
    sys.modules (where variants.recurrent may have put a stand-in for it)."""
    if not cuda_available():
        return "no CUDA device"
    if not package_available("mamba_ssm"):
        return "mamba-ssm not installed"
    if importlib.machinery.PathFinder.find_spec(EXTENSION) is None:
        return f"mamba-ssm is installed without its CUDA extension ({EXTENSION})"
    return None


@functools.cache
def _fused_scan():
    """mamba_ssm's `selective_scan_fn`, or None where it cannot run (fused_unavailable_reason)."""
    if fused_unavailable_reason() is not None:
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


@functools.cache
def _block_kernels() -> SimpleNamespace | None:
    """mamba_ssm's fused block and decode kernels (None where mamba-ssm cannot run here), with
    causal-conv1d's kernels where that package is installed. Call sites follow mamba_ssm 2.x
    (selective_scan_interface.mamba_inner_fn, ops.triton.selective_state_update.selective_state_update)
    and causal-conv1d 1.x (causal_conv1d_fn, causal_conv1d_update), as mamba_ssm's own `Mamba` calls them."""
    if _fused_scan() is None:
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except ImportError:
        return None
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
    except ImportError:
        causal_conv1d_fn = causal_conv1d_update = None
    # mamba_inner_fn runs causal-conv1d's kernel inside: without the package it cannot run.
    return SimpleNamespace(mamba_inner_fn=mamba_inner_fn if causal_conv1d_fn else None,
                           selective_state_update=selective_state_update,
                           causal_conv1d_fn=causal_conv1d_fn, causal_conv1d_update=causal_conv1d_update)


def _kernels_for(x: torch.Tensor) -> SimpleNamespace | None:
    """The fused kernels for a tensor they can take (CUDA, a kernel dtype), else None."""
    return _block_kernels() if x.is_cuda and x.dtype in KERNEL_DTYPES else None


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The scan runs in float32 for half inputs, float64 for float64 ones."""
    return torch.promote_types(dtype, torch.float32)


def _grouped(M: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as (batch, groups, d_state, L); channel c reads group c // (dim // groups)."""
    M = M.unsqueeze(1) if M.dim() == 3 else M
    if dim % M.shape[1]:
        raise ValueError(f"{M.shape[1]} groups do not divide {dim} channels")
    return M


def _discretization_step(delta, delta_bias, delta_softplus):
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    return F.softplus(delta) if delta_softplus else delta


def _prepared(u, delta, A, B, C, delta_bias, delta_softplus):
    """Inputs in the accumulation dtype, delta discretized, B and C as (batch, groups, N, L)."""
    acc = _accumulation_dtype(u.dtype)
    dim = u.shape[1]
    delta = _discretization_step(delta.to(acc), None if delta_bias is None else delta_bias.to(acc),
                                 delta_softplus)
    return u.to(acc), delta, A.to(acc), _grouped(B.to(acc), dim), _grouped(C.to(acc), dim)


def _gated(y, u, D, z):
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def torch_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """`selective_scan_fn` in PyTorch: a chunked scan with a hand-written backward (`_ChunkedScan`).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or (batch, G, N, L); D, delta_bias:
    (dim,). Returns y (batch, dim, L) in u's dtype, and with `return_last_state` also the final state
    (batch, dim, N) in the accumulation dtype, which (as in mamba_ssm) carries no gradient.
    """
    out_dtype = u.dtype
    u, delta, A, B, C = _prepared(u, delta, A, B, C, delta_bias, delta_softplus)
    groups = math.lcm(B.shape[1], C.shape[1])  # channel d reads group d // (dim // groups) of each
    B, C = (M.repeat_interleave(groups // M.shape[1], dim=1) for M in (B, C))
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (delta, u, A, B, C))
    y, last_state = _ChunkedScan.apply(delta, u, A, B, C, differentiable)
    y = _gated(y, u, D, z).to(out_dtype)
    return (y, last_state) if return_last_state else y


CHUNK_ELEMENTS = 2**17  # states per chunk (batch x dim x N x steps): about 512 KiB in float32, cache-sized


def chunk_length(batch: int, dim: int, d_state: int) -> int:
    """Time steps per chunk: a power of two giving chunks of about CHUNK_ELEMENTS states, 1 to 64."""
    steps = CHUNK_ELEMENTS / (batch * dim * d_state)
    return int(2 ** min(6, max(0, round(math.log2(max(steps, 1.0))))))


class _ChunkedScan(torch.autograd.Function):
    """The scan's core, y_t = C_t . h_t with h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t, chunk by chunk.

    Time-major chunks of a few steps keep each (steps, batch, groups, N, dim / groups) tensor in cache
    (channels innermost, so that broadcasts over N run along contiguous memory): a chunk's decays and
    drives are computed in bulk, then a loop over its steps (no autograd) turns the drives into states,
    starting from the previous chunk's last state. Decays are exp of non-positive numbers only (no
    cumulative products to divide by), so large steps underflow to zero instead of overflowing.

    When a gradient is needed the forward keeps every decay and state (what the loop under autograd keeps
    too); the backward then runs the adjoint recurrence
        lambda_t = C_t dy_t + exp(delta_{t+1} A) lambda_{t+1}
    backwards, chunk by chunk, and the gradients follow from lambda: d(drive_t) = lambda_t and
    d(delta_t A) = lambda_t * exp(delta_t A) * h_{t-1}. Without a gradient only one chunk is held.
    """

    @staticmethod
    def forward(ctx, delta, u, A, B, C, differentiable: bool):
        batch, dim, length = u.shape
        groups, d_state = B.shape[1], B.shape[2]
        steps = chunk_length(batch, dim, d_state)
        delta_t, u_t = (_time_major(x, groups) for x in (delta, u))  # (L, batch, G, P)
        B_t, C_t = (M.permute(3, 0, 1, 2).contiguous() for M in (B, C))  # (L, batch, G, N)
        A_t = A.reshape(groups, -1, d_state).transpose(1, 2).contiguous()  # (G, N, P)
        y = u_t.new_empty(u_t.shape)
        kept = length if differentiable else min(length, steps)
        decay, states = (u_t.new_empty(kept, batch, groups, d_state, dim // groups) for _ in range(2))
        state = torch.zeros_like(states[0])
        for start in range(0, length, steps):
            chunk = slice(start, start + steps)
            into = chunk if differentiable else slice(0, min(steps, length - start))
            _chunk_states(delta_t[chunk], u_t[chunk], B_t[chunk], A_t, state, decay[into], states[into])
            _vecmat(C_t[chunk], states[into], out=y[chunk])
            state = states[into][-1] if differentiable else states[into][-1].clone()  # the buffer is reused
        if differentiable:
            ctx.save_for_backward(delta_t, u_t, B_t, C_t, A_t, decay, states)
            ctx.steps = steps
        last_state = state.transpose(-1, -2).reshape(batch, dim, d_state)  # a copy
        ctx.mark_non_differentiable(last_state)
        return _batch_major(y), last_state

    @staticmethod
    def backward(ctx, dy, _d_last_state):
        delta_t, u_t, B_t, C_t, A_t, decay, states = ctx.saved_tensors
        steps, length, groups = ctx.steps, delta_t.shape[0], A_t.shape[0]
        dy_t = _time_major(dy, groups)
        d_delta, d_u, d_B, d_C = (torch.empty_like(x) for x in (delta_t, u_t, B_t, C_t))
        d_A = torch.zeros_like(A_t)
        carried = torch.zeros_like(states[0])  # exp(delta A) * lambda at the first step of the next chunk
        for start in reversed(range(0, length, steps)):
            chunk = slice(start, start + steps)
            delta_c, u_c, dy_c, decay_c, states_c = delta_t[chunk], u_t[chunk], dy_t[chunk], decay[chunk], \
                states[chunk]
            adjoint = C_t[chunk].unsqueeze(-1) * dy_c.unsqueeze(-2)  # C_t dy_t, then lambda_t
            adjoint[-1] += carried
            adjoints, decays = adjoint.unbind(0), decay_c.unbind(0)  # views: no indexing per step
            for t in range(len(adjoints) - 2, -1, -1):
                adjoints[t].addcmul_(decays[t + 1], adjoints[t + 1])
            carried = decays[0] * adjoints[0]
            _vecmat(dy_c, states_c.transpose(-1, -2), out=d_C[chunk])  # sum over channels of dy h
            _vecmat(delta_c * u_c, adjoint.transpose(-1, -2), out=d_B[chunk])
            d_delta_u = _vecmat(B_t[chunk], adjoint)  # sum over N of B lambda
            adjoint.mul_(decay_c)  # now d(delta A): lambda_t * decay_t * h_{t-1}
            adjoint[1:].mul_(states_c[:-1])
            if start == 0:
                adjoint[0].zero_()  # h_0 = 0
            else:
                adjoint[0].mul_(states[start - 1])
            torch.sum(adjoint * A_t, dim=-2, out=d_delta[chunk])
            d_delta[chunk].addcmul_(d_delta_u, u_c)
            d_A += (adjoint * delta_c.unsqueeze(-2)).sum((0, 1))
            torch.mul(d_delta_u, delta_c, out=d_u[chunk])
        d_B, d_C = (M.permute(1, 2, 3, 0).contiguous() for M in (d_B, d_C))
        return _batch_major(d_delta), _batch_major(d_u), d_A.transpose(1, 2).flatten(0, 1), d_B, d_C, None


def _vecmat(vectors: torch.Tensor, matrices: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """vectors (steps, batch, G, K) times matrices (steps, batch, G, K, M) -> (steps, batch, G, M), as one
    bmm over flattened views (torch.matmul broadcasting 5-d operands copies them first)."""
    into = None if out is None else out.flatten(0, 2).unsqueeze(1)
    result = torch.bmm(vectors.flatten(0, 2).unsqueeze(1), matrices.flatten(0, 2), out=into)
    return result.view(*vectors.shape[:3], -1)


def _time_major(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, dim, L) -> contiguous (L, batch, groups, dim // groups)."""
    return x.permute(2, 0, 1).unflatten(2, (groups, -1)).contiguous()


def _batch_major(x: torch.Tensor) -> torch.Tensor:
    """The inverse of _time_major."""
    return x.flatten(2, 3).permute(1, 2, 0).contiguous()


def _chunk_states(delta, u, B, A, entering, decay, states) -> None:
    """One chunk's decays exp(delta A) and states h, from the state entering it, written into decay and
    states (steps, batch, G, N, P). delta, u: (steps, batch, G, P); B: (steps, batch, G, N); A: (G, N, P);
    entering: (batch, G, N, P)."""
    torch.mul(delta.unsqueeze(-2), A, out=decay).exp_()
    torch.mul(B.unsqueeze(-1), (delta * u).unsqueeze(-2), out=states)  # the drives, turned into states
    steps, decays = states.unbind(0), decay.unbind(0)  # views: no indexing per step
    steps[0].addcmul_(decays[0], entering)
    for t in range(1, len(steps)):
        steps[t].addcmul_(decays[t], steps[t - 1])


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False):
    """`selective_scan_fn` in PyTorch as a plain loop over L under autograd, vectorized over batch,
    channels and state: the twin `torch_selective_scan` is tested against (output and gradients)."""
    out_dtype = u.dtype
    u, delta, A, B, C = _prepared(u, delta, A, B, C, delta_bias, delta_softplus)
    dim = u.shape[1]
    per_group = dim // B.shape[1]
    # Time-major layout: each step reads one contiguous (batch, dim, N) slice.
    decay = torch.exp(torch.einsum("bdl,dn->lbdn", delta, A))
    drive = torch.einsum("bghl,bgnl->lbghn", (delta * u).unflatten(1, (-1, per_group)), B).flatten(2, 3)
    state = torch.zeros_like(drive[0])
    states = []
    # unbind, not decay[t]: indexing backward would write a full-size gradient per step (O(L^2)).
    for decay_t, drive_t in zip(decay.unbind(0), drive.unbind(0), strict=True):
        state = decay_t * state + drive_t
        states.append(state)
    per_group = dim // C.shape[1]
    y = torch.einsum("lbghn,bgnl->bghl", torch.stack(states).unflatten(2, (-1, per_group)), C).flatten(1, 2)
    y = _gated(y, u, D, z).to(out_dtype)
    return (y, state) if return_last_state else y


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """The scan with `selective_scan_fn` semantics: mamba_ssm's kernel on CUDA, else PyTorch."""
    kernel = _fused_scan()
    if kernel is not None and u.is_cuda and u.dtype in KERNEL_DTYPES:
        return kernel(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                      return_last_state=return_last_state)
    return torch_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The S6 recurrence one step at a time, in float64, written for clarity rather than speed.

        delta_t = softplus(delta_t + delta_bias)           (each part optional)
        h_t     = exp(delta_t A) h_{t-1} + delta_t B_t u_t  (h_0 = 0, per channel d: N states)
        y_t     = C_t . h_t + D u_t, then * silu(z_t)
    Channel d of `dim` reads B, C group d // (dim // G) when they are grouped (batch, G, N, L).
    """
    f64 = lambda t: None if t is None else t.double()  # noqa: E731
    u64, delta, A, B, C, D, z, delta_bias = map(f64, (u, delta, A, B, C, D, z, delta_bias))
    batch, dim, length = u64.shape
    group = lambda M: torch.arange(dim) // (dim // M.shape[1]) if M.dim() == 4 else None  # noqa: E731
    group_B, group_C = group(B), group(C)
    h = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64, device=u.device)
    ys = []
    for t in range(length):
        dt = delta[:, :, t] if delta_bias is None else delta[:, :, t] + delta_bias
        dt = F.softplus(dt) if delta_softplus else dt
        B_t = B[:, None, :, t] if group_B is None else B[:, group_B, :, t]  # (batch, 1 or dim, N)
        C_t = C[:, None, :, t] if group_C is None else C[:, group_C, :, t]
        h = torch.exp(dt[..., None] * A) * h + dt[..., None] * B_t * u64[:, :, t, None]
        y_t = (C_t * h).sum(-1)
        if D is not None:
            y_t = y_t + D * u64[:, :, t]
        if z is not None:
            y_t = y_t * F.silu(z[:, :, t])
        ys.append(y_t)
    return torch.stack(ys, dim=-1).to(u.dtype)


SCAN_STATE = 16  # d_state of the scan's exactness inputs (the block's default)


def scan_inputs(batch: int, heads: int, seq_len: int, head_dim: int, generator: torch.Generator,
                dtype: torch.dtype = torch.float64) -> dict:
    """Inputs of the selective scan over heads * head_dim channels, drawn in float64 from `generator`.

    Activations are in `dtype`; A, D and the delta bias stay in the accumulation dtype, as the block
    keeps them (float32 parameters). Softplus'd deltas, as the block computes them.
    """
    randn = functools.partial(torch.randn, generator=generator, dtype=torch.float64)
    dim = heads * head_dim
    acc = _accumulation_dtype(dtype)
    act = dict(u=randn(batch, dim, seq_len), delta=randn(batch, dim, seq_len) * 0.5 - 1.0,
               z=randn(batch, dim, seq_len))
    params = dict(A=-torch.exp(randn(dim, SCAN_STATE)))
    act |= dict(B=randn(batch, SCAN_STATE, seq_len), C=randn(batch, SCAN_STATE, seq_len))
    params |= dict(D=randn(dim), delta_bias=randn(dim) * 0.1)
    return ({k: t.to(dtype) for k, t in act.items()} | {k: t.to(acc) for k, t in params.items()}
            | {"delta_softplus": True})


def _backend(device: str) -> str:
    kernels = _block_kernels() if device == "cuda" else None
    if kernels is None:
        missing = device == "cuda" and package_available("mamba_ssm") and fused_unavailable_reason()
        return f"torch-scan (fused path unsupported: {missing})" if missing else "torch-scan"
    return "mamba_ssm.mamba_inner_fn" if kernels.mamba_inner_fn else "mamba_ssm.selective_scan_fn"


SCAN_PASSES = 30


def scan_cost(d_model, n_layers, n_heads, seq_len, *, expand=2, d_state=16, **params) -> costs.MixerCost:
    """Training the scan: about SCAN_PASSES elementwise passes over d_inner x d_state per token and layer."""
    return costs.MixerCost(scan_elements=SCAN_PASSES * n_layers * expand * d_model * d_state)


def scan_peak_bytes(call: costs.KernelCall, **params) -> int | None:
    """The chunked PyTorch scan without a gradient: its inputs, about 5 accumulation-dtype copies of (batch,
    dim, L) (softplus'd and time-major delta and u, the output and its gating) and one chunk of states
    (cache-sized); mamba_ssm's selective_scan_fn: a fused kernel. No model of mamba_inner_fn."""
    c = call
    if c.backend.startswith("torch-scan"):  # on CUDA too, when the fused path is unsupported
        return 3 * c.x * c.e + 5 * c.x * c.a
    if c.backend == "mamba_ssm.selective_scan_fn":
        return costs.fused_attention_bytes(call)
    return None


def _dt_bias(d_inner: int, dt_min: float, dt_max: float, dt_init_floor: float, factory: dict) -> torch.Tensor:
    """The bias whose softplus is log-uniform in [dt_min, dt_max] per channel (mamba_ssm's dt init)."""
    log_min, log_max = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand(d_inner, **factory) * (log_max - log_min) + log_min)
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


@mixer_variant(
    "mamba", family="mamba", exact=False, backend=_backend, cost=scan_cost, peak_bytes=scan_peak_bytes,
    kernel=selective_scan, kernel_reference=selective_scan_reference, kernel_inputs=scan_inputs,
    support=Support(dtypes={"cpu": ALL_FLOAT, "cuda": KERNEL_DTYPES}, non_causal=False, cross=False,
                    padded=True, packed=True),
    defaults=dict(d_state=16, d_conv=4, expand=2, dt_rank="auto"),
    description="Mamba (S6) selective SSM block; mamba_ssm's selective_scan_fn on CUDA, PyTorch scan "
                "elsewhere",
)
class MambaMixer(nn.Module):
    """(batch, seq, d_model) -> same. mamba_ssm's `Mamba` block; `n_heads` is ignored (no heads)."""

    def __init__(self, d_model: int, n_heads: int | None = None, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, causal: bool = True, device=None, dtype=None):
        super().__init__()
        if not causal:
            raise Unsupported("mamba is causal only: its recurrence runs left to right (causal=False)")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        # Creation order matters: it fixes the random stream, as in mamba_ssm (same seed, same weights).
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self._init_dt(dt_init, dt_scale, dt_min, dt_max, dt_init_floor, factory)
        # S4D-real A = -(1..N) per channel, stored as log; A_log and D stay float32 like mamba_ssm's.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.A_log._no_weight_decay = self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _init_dt(self, dt_init, dt_scale, dt_min, dt_max, dt_init_floor, factory):
        """dt_proj keeps the variance of its input; softplus(bias) is log-uniform in [dt_min, dt_max]."""
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(_dt_bias(self.d_inner, dt_min, dt_max, dt_init_floor, factory))
        self.dt_proj.bias._no_reinit = True  # model-level init must not zero this bias

    def _acc(self) -> torch.dtype:
        return _accumulation_dtype(self.A_log.dtype)

    @property
    def A(self) -> torch.Tensor:
        return -torch.exp(self.A_log.to(self._acc()))

    def _scan_inputs(self, x: torch.Tensor):
        """x (batch, d_inner, L) after the conv -> delta (without bias), B, C; B, C (batch, N, L)."""
        x_dbl = self.x_proj(x.transpose(1, 2))
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # the bias is applied inside the scan
        return delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    def _conv(self, x: torch.Tensor, kernels: SimpleNamespace | None) -> torch.Tensor:
        """silu(causal depthwise conv) of x (batch, d_inner, L): causal-conv1d's kernel where it runs."""
        if kernels is not None and kernels.causal_conv1d_fn is not None:
            return kernels.causal_conv1d_fn(x=x, weight=self.conv1d.weight[:, 0], bias=self.conv1d.bias,
                                            activation="silu")
        return F.silu(self.conv1d(x)[..., : x.shape[-1]])

    def _mix(self, hidden_states: torch.Tensor, return_state: bool):
        length = hidden_states.shape[1]
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (batch, d_inner, L) each
        # The decode state: the last d_conv conv inputs, zero-padded when the context is shorter.
        conv_state = F.pad(x, (self.d_conv - length, 0)) if return_state else None
        x = self._conv(x, _kernels_for(hidden_states))
        y, ssm_state = self._ssm(x, z, return_state)
        return self.out_proj(y.transpose(1, 2)), conv_state, ssm_state

    def _ssm(self, x: torch.Tensor, z: torch.Tensor, return_state: bool):
        """The selective SSM and gate over x, z (batch, d_inner, L): (y, last state or None)."""
        delta, B, C = self._scan_inputs(x)
        acc = self._acc()
        out = selective_scan(x, delta, self.A, B, C, self.D.to(acc), z=z,
                             delta_bias=self.dt_proj.bias.to(acc), delta_softplus=True,
                             return_last_state=return_state)
        return out if return_state else (out, None)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """On CUDA with mamba-ssm and causal-conv1d: mamba_ssm's fused block (mamba_inner_fn: conv,
        projections, scan and gate in one autograd function), called as mamba_ssm's `Mamba` calls it."""
        kernels = _kernels_for(hidden_states)
        if kernels is None or kernels.mamba_inner_fn is None:
            return self._mix(hidden_states, return_state=False)[0]
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (batch, 2 d_inner, L)
        A = -torch.exp(self.A_log.float())  # float32, as the kernel takes it
        return kernels.mamba_inner_fn(
            xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
            self.out_proj.weight, self.out_proj.bias, A, None, None, self.D.float(),
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )

    def prefill(self, hidden_states: torch.Tensor, capacity: int | None = None):
        """Run a context; returns (out, state), state = (conv_state, ssm_state) as in mamba_ssm.

        The state has a constant size, so `capacity` (room for later tokens) is not needed."""
        out, conv_state, ssm_state = self._mix(hidden_states, return_state=True)
        return out, (conv_state, ssm_state)

    def allocate_inference_cache(self, batch_size: int, dtype: torch.dtype | None = None):
        """Zero (conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, d_state)).

        The SSM state is kept in the scan's accumulation dtype (float32 for half modules).
        """
        weight = self.in_proj.weight
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=weight.device,
                                 dtype=dtype or weight.dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=weight.device,
                                dtype=_accumulation_dtype(dtype or weight.dtype))
        return conv_state, ssm_state

    def step(self, hidden_states: torch.Tensor, state):
        """Decode one token (batch, 1, d_model): returns (out, state).

        state = (conv_state, ssm_state), updated in place like mamba_ssm's step (no allocation per token).
        """
        conv_state, ssm_state = state
        if hidden_states.shape[1] != 1:
            raise ValueError(f"step() decodes one token at a time, got {hidden_states.shape[1]}")
        kernels = _kernels_for(hidden_states)
        x, z = self.in_proj(hidden_states[:, 0]).chunk(2, dim=-1)  # (batch, d_inner)
        x = self._conv_step(x, conv_state, kernels)
        y = self._ssm_step(ssm_state, x, z, kernels)
        return self.out_proj(y.to(hidden_states.dtype)).unsqueeze(1), (conv_state, ssm_state)

    def _ssm_step(self, ssm_state, x, z, kernels) -> torch.Tensor:
        """One token (x, z: (batch, d_inner)) through the selective SSM and gate; ssm_state in place."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # the bias is applied in the state update
        if kernels is not None:  # mamba_ssm's Triton kernel: updates ssm_state in place
            return kernels.selective_state_update(ssm_state, x, dt, self.A, B, C, self.D, z=z,
                                                  dt_bias=self.dt_proj.bias, dt_softplus=True)
        return self._state_update(ssm_state, x, dt, B, C, z)

    def _conv_step(self, x: torch.Tensor, conv_state: torch.Tensor, kernels) -> torch.Tensor:
        """Shift x (batch, d_inner) into conv_state in place; silu of the conv over it."""
        if kernels is not None and kernels.causal_conv1d_update is not None:
            return kernels.causal_conv1d_update(x, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias,
                                                "silu")
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x_conv = (conv_state * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            x_conv = x_conv + self.conv1d.bias
        return F.silu(x_conv).to(x.dtype)

    def _state_update(self, ssm_state, x, dt, B, C, z) -> torch.Tensor:
        """One step of the recurrence in PyTorch, in the state's dtype; updates ssm_state in place."""
        acc = ssm_state.dtype
        delta = F.softplus(dt.to(acc) + self.dt_proj.bias.to(acc))
        x, B, C = x.to(acc), B.to(acc), C.to(acc)
        decay = torch.exp(delta[..., None] * self.A.to(acc))
        ssm_state.copy_(decay * ssm_state + (delta * x)[..., None] * B[:, None])
        y = (ssm_state * C[:, None]).sum(-1) + self.D.to(acc) * x
        return y * F.silu(z.to(acc))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"d_conv={self.d_conv}, dt_rank={self.dt_rank}")



# --- the time-invariant control (mamba-lti) ---------------------------------------------------------

def time_invariant_scan(u, delta_bias, A, B, C, D=None, z=None, return_last_state=False):
    """The SSM with Delta, B and C constant in time, as a causal convolution y = K * u (by FFT):

        delta   = softplus(delta_bias)                          (per channel)
        K_d(t)  = sum_n C_dn B_dn delta_d exp(t delta_d A_dn),  t = 0 .. L - 1

    which equals the recurrence h_t = exp(delta A) h_{t-1} + delta B u_t, y_t = C . h_t; then + D u and
    * silu(z), as the selective scan. u, z: (batch, dim, L); A, B, C: (dim, N); D, delta_bias: (dim,).
    Computed in the accumulation dtype (float32 for half inputs); with `return_last_state` also h_L
    (batch, dim, N), which carries no gradient (as the selective scan's).
    """
    out_dtype, acc = u.dtype, _accumulation_dtype(u.dtype)
    u = u.to(acc)
    length = u.shape[-1]
    delta = F.softplus(delta_bias.to(acc))
    lags = torch.arange(length, device=u.device, dtype=acc)
    decay = torch.exp((delta[:, None] * A.to(acc))[..., None] * lags)  # (dim, N, L): exp(t delta A)
    drive = delta[:, None] * B.to(acc)  # (dim, N)
    kernel = torch.einsum("dn,dnl->dl", drive * C.to(acc), decay)
    n_fft = 1 << (2 * length - 1).bit_length()  # no wrap-around: at least 2L - 1
    y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(kernel, n=n_fft), n=n_fft)[..., :length]
    y = _gated(y, u, D, z).to(out_dtype)
    if not return_last_state:
        return y
    last_state = torch.einsum("bdl,dnl->bdn", u, decay.flip(-1)) * drive  # h_L = sum_s exp((L-1-s) dA) dB u_s
    return y, last_state.detach()


def time_invariant_scan_reference(u, delta_bias, A, B, C, D=None, z=None):
    """The same recurrence one step at a time in float64: the selective scan's reference with a zero
    input-dependent delta and B, C held constant over time (one group per channel)."""
    batch, dim, length = u.shape
    constant = lambda M: M[None, :, :, None].expand(batch, dim, M.shape[-1], length)  # noqa: E731
    return selective_scan_reference(u, torch.zeros_like(u), A, constant(B), constant(C), D, z,
                                    delta_bias=delta_bias, delta_softplus=True)


def time_invariant_scan_inputs(batch: int, heads: int, seq_len: int, head_dim: int,
                               generator: torch.Generator, dtype: torch.dtype = torch.float64) -> dict:
    """Inputs of the time-invariant scan over heads * head_dim channels, drawn in float64 from `generator`:
    activations in `dtype`, the SSM's parameters in the accumulation dtype (as the block keeps them)."""
    randn = functools.partial(torch.randn, generator=generator, dtype=torch.float64)
    dim, acc = heads * head_dim, _accumulation_dtype(dtype)
    act = dict(u=randn(batch, dim, seq_len), z=randn(batch, dim, seq_len))
    params = dict(delta_bias=randn(dim) * 0.5 - 1.0, A=-torch.exp(randn(dim, SCAN_STATE)),
                  B=randn(dim, SCAN_STATE), C=randn(dim, SCAN_STATE), D=randn(dim))
    return {k: t.to(dtype) for k, t in act.items()} | {k: t.to(acc) for k, t in params.items()}


@mixer_variant(
    # Cost: charged as the selective scan (its kernel build touches d_inner x d_state per token, as the scan
    # does; the FFTs add O(log L) per element). Memory: not modelled (measured, not predicted).
    "mamba-lti", family="mamba", exact=False, backend=lambda device: "torch-fft-conv", cost=scan_cost,
    peak_bytes=costs.not_modelled,
    kernel=time_invariant_scan, kernel_reference=time_invariant_scan_reference,
    kernel_inputs=time_invariant_scan_inputs,
    support=Support(dtypes={"cpu": ALL_FLOAT, "cuda": ALL_FLOAT}, non_causal=False, cross=False,
                    padded=True, packed=True),
    defaults=dict(d_state=16, d_conv=4, expand=2),
    description="Mamba's block with a time-invariant SSM (Delta, B, C learned, not projections of x): the "
                "selective-copying control; an FFT convolution in PyTorch on every device",
)
class MambaLTIMixer(MambaMixer):
    """Mamba's block (in_proj, conv, SSM, gate, out_proj) with the selection removed: Delta, B and C are
    parameters (per channel, S4D's real form: B ones, C normal, A = -(1..N)) where the selective block
    projects them from x. It runs `time_invariant_scan` everywhere: mamba_ssm's fused block and decode
    kernels take the selective parameters, so on CUDA too the SSM is PyTorch's FFT (the conv uses
    causal-conv1d's kernel where the selective block would)."""

    def __init__(self, d_model: int, n_heads: int | None = None, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, causal: bool = True, device=None, dtype=None):
        nn.Module.__init__(self)
        if not causal:
            raise Unsupported("mamba-lti is causal only: its recurrence runs left to right (causal=False)")
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        # Where the selective block has x_proj and dt_proj: parameters, float32 like A_log and D.
        self.B = nn.Parameter(torch.ones(self.d_inner, d_state, device=device))
        self.C = nn.Parameter(torch.randn(self.d_inner, d_state, device=device))
        dt_bias = _dt_bias(self.d_inner, dt_min, dt_max, dt_init_floor, dict(device=device))
        self.dt_bias = nn.Parameter(dt_bias)
        self.dt_bias._no_reinit = True
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        for p in (self.A_log, self.D, self.B, self.C):
            p._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _ssm(self, x: torch.Tensor, z: torch.Tensor, return_state: bool):
        acc = self._acc()
        out = time_invariant_scan(x, self.dt_bias.to(acc), self.A, self.B.to(acc), self.C.to(acc),
                                  self.D.to(acc), z=z, return_last_state=return_state)
        return out if return_state else (out, None)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._mix(hidden_states, return_state=False)[0]

    def _ssm_step(self, ssm_state, x, z, kernels) -> torch.Tensor:
        """One step of the time-invariant recurrence in the state's dtype; ssm_state in place."""
        acc = ssm_state.dtype
        delta = F.softplus(self.dt_bias.to(acc))[:, None]  # (d_inner, 1)
        x = x.to(acc)
        ssm_state.copy_(torch.exp(delta * self.A.to(acc)) * ssm_state + x[..., None] * delta * self.B.to(acc))
        y = (ssm_state * self.C.to(acc)).sum(-1) + self.D.to(acc) * x
        return y * F.silu(z.to(acc))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"d_conv={self.d_conv}, time-invariant")
