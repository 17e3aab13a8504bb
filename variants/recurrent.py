"""Pieces shared by the recurrent mixers (mamba2, deltanet, gla, retnet); registers no variant.

Every recurrent mixer here has the same life cycle: project x into per-head inputs of a core op
(optionally through causal short convolutions), run the core over the sequence (chunked in PyTorch, or a
field library's kernel on CUDA), then gate/normalize and project back. Decoding carries a constant-size
state: the short convolutions' last inputs, the core's recurrent state and the position.

`RecurrentMixer` is their common base: forward, prefill and one-token decoding with a constant-size state
(`RecurrentState`) around the family's two core ops (`sequence_op`, `step_op`). `chunk_loop_cost` is the cost
hook of the chunked ones (harness.costs), `triton_autotune` the compiles hook of the library kernels (fla's,
mamba-ssm's, linear attention's too).

Layout convention of the cores: (batch, heads, seq, dim); the recurrent state is (batch, heads, K, V)
with o_t = scale * S_t^T q_t (fla's [K, V] layout). The fast-path call sites transpose to the libraries'
[B, T, H, ...] layout.
"""

from __future__ import annotations

import functools
import importlib.machinery
import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness import costs
from harness.registry import cuda_available, package_available

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton kernels take


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half inputs accumulate in float32; float32 and float64 keep their own precision."""
    return torch.promote_types(dtype, torch.float32)


@functools.cache
def fla_installed() -> bool:
    return cuda_available() and package_available("fla")


@functools.cache
def mamba_ssm_installed() -> bool:
    return cuda_available() and package_available("mamba_ssm")


# mamba-ssm's CUDA extension, a top-level module. mamba_ssm 2.3.x imports it unguarded
# (ops/selective_scan_interface.py, reached from the package's __init__), so a build without it
# (MAMBA_SKIP_CUDA_BUILD=TRUE) cannot import even the Triton kernels that do not use it.
MAMBA_EXTENSION = "selective_scan_cuda"


class MissingExtension(types.ModuleType):
    """Stands in for an extension that was not built: the package imports, and anything that reaches
    for the extension gets an AttributeError that says why."""

    def __getattr__(self, name: str):
        raise AttributeError(f"{self.__name__}.{name}: mamba-ssm is installed without its CUDA extension "
                             f"({self.__name__}); only its Triton kernels run")


def import_mamba_ssm_triton() -> None:
    """Make `import mamba_ssm...` work for the Triton kernels (Mamba-2's SSD, selective_state_update)
    where the extension was not built: a MissingExtension takes its place in sys.modules. Where the
    extension is on the path, nothing changes. variants.mamba looks the extension up on the path, so
    Mamba-1's fused kernels stay unsupported."""
    if MAMBA_EXTENSION in sys.modules or importlib.machinery.PathFinder.find_spec(MAMBA_EXTENSION):
        return
    stand_in = MissingExtension(MAMBA_EXTENSION)
    stand_in.__spec__ = importlib.machinery.ModuleSpec(MAMBA_EXTENSION, None, origin="not built")
    sys.modules[MAMBA_EXTENSION] = stand_in


def use_library(flag: bool | None, installed: bool, x: torch.Tensor, dtypes=KERNEL_DTYPES) -> bool:
    """flag None: the library's kernel where it can run (CUDA tensor, installed, a kernel dtype)."""
    if flag is not None:
        return flag
    return installed and x.is_cuda and x.dtype in dtypes


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


def heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(batch, seq, heads * dim) -> (batch, heads, seq, dim)."""
    return x.unflatten(-1, (n_heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, dim) -> (batch, seq, heads * dim)."""
    return x.transpose(1, 2).flatten(2)


def chunks(x: torch.Tensor, chunk_size: int, dim: int = 2) -> torch.Tensor:
    """Pad the sequence dim with zeros to a multiple of chunk_size and split it: (..., n_chunks, C, ...).

    Zero padding at the end is harmless for every core here: padded tokens come after the real ones."""
    pad = -x.shape[dim] % chunk_size
    if pad:
        widths = [0, 0] * (x.dim() - 1 - dim) + [0, pad]
        x = F.pad(x, widths)
    return x.unflatten(dim, (-1, chunk_size))


class ShortConv(nn.Conv1d):
    """Depthwise causal convolution over the sequence, then SiLU: (batch, seq, channels) -> same.

    An nn.Conv1d, so its state_dict keys are the libraries' (`conv1d.weight`, `q_conv1d.weight`). The
    decode state is the last kernel_size - 1 inputs (zero-padded for a shorter context), copied out of the
    sequence: a slice would keep the whole (batch, channels, N) input alive for as long as the state."""

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = False, **factory):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias, padding=kernel_size - 1,
                         **factory)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        """x (batch, seq, channels); state None or (batch, channels, kernel_size - 1) of earlier inputs.
        Returns (y, new state)."""
        x = x.transpose(1, 2)
        length, width = x.shape[-1], self.kernel_size[0] - 1
        history = F.pad(x, (width, 0)) if state is None else torch.cat([state.to(x.dtype), x], dim=-1)
        new_state = history[..., history.shape[-1] - width:].clone()
        if length == 0:
            return x.transpose(1, 2), new_state
        y = F.silu(F.conv1d(history, self.weight, self.bias, groups=self.groups))
        return y.transpose(1, 2), new_state


class GatedRMSNorm(nn.Module):
    """RMS norm over groups of the last dim (default: all of it), with an optional SiLU gate.

    norm_before_gate: rmsnorm(x) * silu(z) (fla's FusedRMSNormGated), else rmsnorm(x * silu(z))
    (mamba_ssm's Mamba2 default). Computed in float32 or wider."""

    def __init__(self, dim: int, eps: float = 1e-5, norm_before_gate: bool = True,
                 group_size: int | None = None, **factory):
        super().__init__()
        self.eps, self.norm_before_gate, self.group_size = eps, norm_before_gate, group_size or dim
        self.weight = nn.Parameter(torch.ones(dim, **factory))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        dtype, acc = x.dtype, accumulation_dtype(x.dtype)
        x = x.to(acc)
        if gate is not None and not self.norm_before_gate:
            x = x * F.silu(gate.to(acc))
        grouped = x.unflatten(-1, (-1, self.group_size))
        grouped = grouped * torch.rsqrt(grouped.square().mean(-1, keepdim=True) + self.eps)
        x = grouped.flatten(-2) * self.weight.to(acc)
        if gate is not None and self.norm_before_gate:
            x = x * F.silu(gate.to(acc))
        return x.to(dtype)


@dataclass
class RecurrentState:
    """Decode state of a recurrent mixer: constant size whatever the context length."""

    convs: tuple[torch.Tensor, ...]  # each (batch, channels, kernel_size - 1)
    core: torch.Tensor  # (batch, heads, K, V), in the accumulation dtype
    position: int  # tokens seen (rotary offsets)


class RecurrentMixer(nn.Module):
    """forward / prefill / step around a core op. Subclasses set `d_model` and `chunk_size`, and define:

    - `features(x, conv_states, position) -> (inputs, context, new conv states)`: the core's inputs per
      head, and what `output` needs besides the core's result (gates, skip inputs);
    - `sequence_op(**inputs, chunk_size, initial_state, output_final_state) -> (o, state)`: the core over
      the whole sequence (chunked; a library's kernel where it runs), as a staticmethod;
    - `step_op(**inputs, state) -> (o, state)`: one token of the recurrence, as a staticmethod;
    - `output(o, context) -> y`: gate, norm and output projection.
    """

    causal_only_message = "is causal only: its recurrence runs left to right (causal=False)"
    sequence_op: Callable[..., tuple]
    step_op: Callable[..., tuple]

    def core(self, inputs: dict, initial_state, output_final_state: bool):
        """The whole sequence from `initial_state` (None: zeros): (o, final state or None)."""
        return self.sequence_op(**inputs, chunk_size=self.chunk_size, initial_state=initial_state,
                                output_final_state=output_final_state)

    def core_step(self, inputs: dict, state):
        """One token after `state`: (o, new state)."""
        return self.step_op(**inputs, state=state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs, context, _ = self.features(x, None, 0)
        o, _ = self.core(inputs, None, False)
        return self.output(o, context)

    def prefill(self, x: torch.Tensor, capacity: int | None = None):
        """Run a context; returns (output, state). `capacity` is not needed: the state has a fixed size."""
        inputs, context, convs = self.features(x, None, 0)
        o, core = self.core(inputs, None, True)
        return self.output(o, context), RecurrentState(convs, core, x.shape[1])

    def step(self, x: torch.Tensor, state: RecurrentState):
        """One new token x (batch, 1, d_model) after the context: returns (output, new state)."""
        if x.shape[1] != 1:
            raise ValueError(f"step() decodes one token at a time, got {x.shape[1]}")
        inputs, context, convs = self.features(x, state.convs, state.position)
        o, core = self.core_step(inputs, state.core)
        return self.output(o, context), RecurrentState(convs, core, state.position + 1)

    def empty_state(self, batch: int) -> RecurrentState:
        """The state before any token (decoding from scratch): a prefill of an empty context."""
        weight = next(self.parameters())
        return self.prefill(torch.zeros(batch, 0, self.d_model, device=weight.device, dtype=weight.dtype))[1]


def run_convs(pairs: list[tuple[ShortConv, torch.Tensor]], states) -> tuple[list[torch.Tensor], tuple]:
    """Short convolutions over their inputs, from `states` (None: a fresh context); returns the outputs
    and the tuple of new states, in order."""
    results = [conv(x, None if states is None else states[i]) for i, (conv, x) in enumerate(pairs)]
    return [y for y, _ in results], tuple(s for _, s in results)


def dt_bias_init(n: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4, **factory):
    """softplus(dt_bias) log-uniform in [dt_min, dt_max] (Mamba-2's and Gated DeltaNet's init)."""
    log_min, log_max = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand(n, **factory) * (log_max - log_min) + log_min).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


# The chunked mixers launch many small kernels per layer and step, a cost the FLOPs miss: their training step
# minus vanilla's at MQAR's shapes (d_model 64, 2 layers, batch 32, N = 32 and 64, one CPU thread), about
# constant in N, per layer. Unmeasured families (retnet) and CUDA get none. On an idle machine
# `scripts/bench_training.py` reads about half (mamba2 15 ms per layer); the committed run's mamba2 MQAR
# trainings, one process per core, still took 171-306 s against the 138 s this charges.
# Triton's autotuner, first call of a kernel for a new key (its `key` arguments and the tensors' dtypes):
# each config compiled and timed. Assumption: 0.5 s per config, about 0.4 s to compile a small Triton
# kernel and 0.125 s for the autotuner's do_bench (25 ms warm-up, 100 ms of repetitions); not measured
# (no GPU has run these paths). The kernels' keys are block sizes, heads and head dimensions, never the
# length or batch, and fla (FLA_CACHE_RESULTS, on by default) keeps the results on disk with triton >= 3.4:
# so each key is paid once per plan, not per length, nor again when the runner restarts its worker.
TRITON_SECONDS_PER_CONFIG = 0.5


def triton_autotune(kernel: str, forward_configs: int, backward_configs: int
                    ) -> Callable[[str], costs.CompileCost | None]:
    """The compiles hook of a library's Triton kernels on CUDA: autotuning their configs (counted in the
    library's pinned source, before pruning) once per dtype, heads and head dimension; decoding's recurrent
    kernels hold a config or two and are not charged. Elsewhere the PyTorch path compiles nothing."""
    cost = costs.CompileCost(
        what=f"Triton autotune ({kernel})", forward_s=forward_configs * TRITON_SECONDS_PER_CONFIG,
        backward_s=backward_configs * TRITON_SECONDS_PER_CONFIG, keyed_by=("dtype", "heads", "head_dim"),
        basis=f"assumption: {forward_configs} forward and {backward_configs} backward autotune configs in "
              f"{kernel}'s source x {TRITON_SECONDS_PER_CONFIG:g} s per config")
    return lambda device: cost if device == "cuda" else None


# fla-core 0.6.0's chunk_simple_gla (which chunk_retention and chunk_linear_attn call): common/chunk_h.py's
# chunk_fwd_h and common/chunk_o.py's chunk_fwd_o forward; chunk_bwd_dh, chunk_bwd_dqkwg and chunk_bwd_dv
# backward: (forward, backward) configs.
SIMPLE_GLA_CONFIGS = (51, 60)


def chunk_loop_cost(cpu_s: float) -> Callable[..., costs.MixerCost]:
    """The cost hook of a chunked recurrent mixer: nothing beyond its block's projections but `cpu_s` seconds
    per layer and training step on the CPU."""
    def cost(d_model: int, n_layers: int, n_heads: int, seq_len: int, **params) -> costs.MixerCost:
        return costs.MixerCost(loop_s={"cpu": cpu_s})

    return cost
