"""What a variant costs, as the planners model it: the work of training its mixers (suites.estimate), the
peak memory of one kernel-level forward call (suites.frontier's memory model), and what its code path
compiles or autotunes before it runs a new shape (harness.estimate charges it once per distinct key).

A variant declares both as hooks in the registry, beside its FLOPs; the arithmetic lives in the variant's
own module, the one place that knows its code paths:

    cost(d_model, n_layers, n_heads, seq_len, **params) -> MixerCost
    peak_bytes(call: KernelCall, **params) -> bytes (int or float), or None: no model of this code path
    compiles(device_type) -> CompileCost, or None: its code path there compiles nothing

`params` are the variant's defaults overridden by the case's. The models several code paths share are
here (`causal_attention_cost`, `dense_softmax_bytes`, `fused_attention_bytes`, ...). A variant that declares
no hook gets the stated default:

- cost (`default_cost`): charged as causal softmax attention, scores and weighted values over every key
  (`attention_flops` with N keys), and no per-layer loop time;
- memory (`default_peak_bytes`): an attention function (`attention_fn`) is modelled as materialized softmax
  attention (`dense_softmax_bytes`: q, k, v, the output and three N x N score matrices per head); a mixer's
  kernel has no model (None: its frontier is measured, not predicted);
- compiles: nothing (eager PyTorch, or kernels that ship compiled: cuBLAS, SDPA's, xformers' CUTLASS and
  FlashAttention).

A case of the compiled series (`--compile`, docs/compile.md) runs its call under torch.compile, which
compiles the whole call per shape whatever the variant's eager path does: the planners charge it
`torch_compile_cost` in place of the variant's hook (Variant.compile_cost).

Rows carry the hooks a variant left to these defaults (`default_models`), and the report names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class MixerCost:
    """Work of training `n_layers` of a variant's mixers, per token (forward and backward), beyond the
    parameter matmuls suites.estimate charges every block alike (an attention block with a 4x MLP)."""

    flops: int | float = 0  # matmul FLOPs
    scan_elements: int | float = 0  # elementwise work of a scan over its state, in elements touched
    # Fixed time per layer and training step (many small kernel launches the FLOPs miss): device type ->
    # seconds. A device type not named costs none.
    loop_s: Mapping[str, float] = field(default_factory=dict)


def attention_flops(d_model: int, n_layers: int, keys: int) -> int:
    """Training FLOPs per token of attention's scores and weighted values when a query sees `keys` keys, as
    the estimate charges them: 6 * layers * 2 * d_model * keys (a causal half of 4 N d)."""
    return 6 * n_layers * 2 * d_model * keys


def causal_attention_cost(d_model: int, n_layers: int, n_heads: int, seq_len: int, **params) -> MixerCost:
    """Softmax attention over every key: the scores and weighted values, nothing else."""
    return MixerCost(flops=attention_flops(d_model, n_layers, seq_len))


def projections_only(d_model: int, n_layers: int, n_heads: int, seq_len: int, **params) -> MixerCost:
    """A mixer charged nothing beyond its block's parameter matmuls."""
    return MixerCost()


default_cost = causal_attention_cost  # a variant that declares no cost hook


@dataclass(frozen=True)
class KernelCall:
    """One kernel-level forward call, as a memory model sees it, and the quantities the models are written
    in: e the dtype's size, a the accumulation dtype's (float32 or wider), rows = batch * heads * N (query
    rows), x = rows * head_dim (the elements of q or the output), kv_x = the elements of one of k, v
    (kv_heads of them: grouped-query attention), qkv_x = the elements of q, k and v together."""

    device: str  # device type
    backend: str  # the code path that runs there (Variant.backend_for)
    dtype: torch.dtype
    batch: int
    n_heads: int
    seq_len: int
    head_dim: int
    kv_heads: int | None = None  # the heads of k and v (None: n_heads)

    @property
    def e(self) -> int:
        return self.dtype.itemsize

    @property
    def a(self) -> int:
        return max(self.e, 4)

    @property
    def rows(self) -> int:
        return self.batch * self.n_heads * self.seq_len

    @property
    def x(self) -> int:
        return self.rows * self.head_dim

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads if self.kv_heads is None else self.kv_heads

    @property
    def kv_rows(self) -> int:
        return self.batch * self.n_kv_heads * self.seq_len

    @property
    def kv_x(self) -> int:
        return self.kv_rows * self.head_dim

    @property
    def qkv_x(self) -> int:
        return self.x + 2 * self.kv_x

    @property
    def upcast(self) -> int:
        """q, k, v converted to the accumulation dtype (none when they are in it already)."""
        return self.qkv_x * self.a if self.e < self.a else 0


def dense_softmax_bytes(call: KernelCall, **params) -> int:
    """Materialized softmax attention (PyTorch, a mask or none): q, k, v (k and v at kv_heads) and the
    output, the upcast inputs, 3 score matrices alive at once (scores, masked scores, probabilities; one
    per query head, whatever the KV heads) and two N x N boolean masks."""
    c = call
    return (c.qkv_x + c.x) * c.e + c.upcast + 3 * c.rows * c.seq_len * c.a + 2 * c.seq_len**2


def fused_attention_bytes(call: KernelCall, **params) -> int:
    """A fused kernel that never materializes the scores: q, k, v (k and v at kv_heads), the output and
    per-row statistics."""
    return (call.qkv_x + call.x) * call.e + 4 * call.rows


def not_modelled(call: KernelCall, **params) -> None:
    """No model of this code path: its frontier is measured, not predicted."""
    return None


def default_peak_bytes(call: KernelCall, *, attention: bool) -> int | None:
    """The memory model of a variant that declares none: materialized softmax attention for an attention
    function, no model for a mixer's kernel."""
    return dense_softmax_bytes(call) if attention else not_modelled(call)


# The fields of a compiled call's shape, as the suites describe a case's calls (harness.estimate): the
# graph (the suite's name for what runs: fwd, fwd_bwd, decode, train, eval), the dtype, batch, heads, the
# sequence length, the head dimension and the mask; `backward` says whether the call is differentiated.
SHAPE_FIELDS = ("graph", "dtype", "batch", "heads", "seq_len", "head_dim", "causal")


@dataclass(frozen=True)
class CompileCost:
    """What a code path compiles or autotunes before it runs a shape it has not run: the planners charge
    each distinct key (the variant and the shape's `keyed_by` fields) once per plan, `forward_s` for it,
    and `backward_s` more for its backward where a call is differentiated."""

    what: str  # how estimates name it: "FlexAttention compile", "fla Triton autotune"
    forward_s: float
    backward_s: float
    keyed_by: tuple[str, ...]  # SHAPE_FIELDS a compiled kernel is specific to (e.g. every one; or no length)
    basis: str  # where the figures come from: a measurement (and what it bounds), or an assumption and why

    def __post_init__(self) -> None:
        unknown = set(self.keyed_by) - set(SHAPE_FIELDS)
        if unknown:
            raise ValueError(f"CompileCost keyed by unknown fields {sorted(unknown)}; use {SHAPE_FIELDS}")
        if not (self.forward_s >= 0 and self.backward_s >= 0):
            raise ValueError("CompileCost seconds must be >= 0")

    @property
    def per_shape(self) -> bool:
        """Compiles again for every sequence length (torch.compile's static shapes), not once per key."""
        return "seq_len" in self.keyed_by


def compiles_nothing(device: str) -> None:
    """The default: eager PyTorch or kernels that ship compiled."""
    return None


default_compiles = compiles_nothing  # a variant that declares no compiles hook


# torch.compile (inductor, static shapes) of one call of the compiled series, per device type: (forward
# seconds, backward seconds more). CPU: the first calls of kernel-level forwards at N = 64 measured on the
# repository's 2-core machine while two training runs held both cores: vanilla 136 s (the process's first
# compile, inductor's start-up in it), linear 50 s, flash-sdpa 3 s (one library call, no C++ to build);
# charged 30 s, the backward as long again (AOT autograd compiles a second graph). CUDA: assumed alike.
TORCH_COMPILE_S = {"cpu": (30.0, 30.0), "cuda": (30.0, 30.0)}


def torch_compile_cost(device: str) -> CompileCost:
    """What torch.compile costs one call of the compiled series on a device type: a graph per shape."""
    forward_s, backward_s = TORCH_COMPILE_S.get(device, TORCH_COMPILE_S["cuda"])
    basis = ("measured: first calls of small kernel-level forwards, 3-136 s on a loaded 2-core CPU "
             "(harness.costs)" if device == "cpu"
             else "assumed: as the CPU's, Triton's builds in place of the C++ compiler's")
    return CompileCost("torch.compile (inductor)", forward_s, backward_s, SHAPE_FIELDS, basis)
