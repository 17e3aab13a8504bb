"""What every suite runs in each profile and on each device: the accuracy and long-range suites' Part A
exactness grids and learned-task configurations (`TaskSpec`), and the throughput suite's sweeps (`Grid`).

The CPU `standard` profile is one dedicated experiment per published finding (`suites.findings`),
scaled to a 2-core machine; the GPU `standard` and `full` profiles run the same recipes at the
published sizes. Every experiment lists its variants here: adding a family to a finding's experiment
is one entry in its `variants`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness import registry

# Learned tasks in the GPU standard profile: the variants of the published findings. Flash computes
# vanilla's function; longformer-banded computes longformer's without FlexAttention's compilation, which
# the 20 minutes cannot afford for every training shape; the sparse family trains in quick and full.
STANDARD_LEARNED = ("vanilla", "longformer-banded", "linear", "performer", "mamba")
# Left out of the standard profile's exactness by default (still run when named, and in quick and full):
# each sinks variant costs about 90 s of FlexAttention compilations there, which the 20 minutes cannot
# afford (issue 14; their GPU parity is `pytest -m cuda` in tests/test_sinks.py).
STANDARD_EXACTNESS_SKIPPED = ("swa-sinks", "swa-learned-sinks")


@dataclass(frozen=True)
class TaskSpec:
    """A learned-task configuration: trained at each train_seq_len, for each d_model, variant and seed,
    then evaluated at each of eval_lens (default: the training length) and passkey depths.

    Learning rates: with one seed every rate in `lrs` trains; with more, the first seed trains at every
    rate (the sweep) and the others at the one its validation accuracy chose. Training stops at
    `max_steps`, at the time budget (a safety net), or once the validation accuracy, measured every
    `validate_every` steps on `n_valid` held-out examples, has reached `criterion` at `criterion_holds`
    validations in a row.
    """

    task: str
    train_seq_lens: tuple[int, ...]
    d_models: tuple[int, ...]
    lrs: tuple[float, ...]
    batch_size: int  # sequences per batch, or with batch_tokens=True tokens per batch (a constant budget)
    max_steps: int
    time_budget_s: float
    kv_pairs: tuple[int, ...] = ()  # mqar: one per train_seq_len
    eval_lens: tuple[int, ...] | None = None
    depths: tuple[float, ...] | None = None
    task_params: dict = field(default_factory=dict)
    n_heads: int | None = None  # None: d_model // 32 (head_dim 32), at least 1
    n_layers: int = 2
    short_conv: int = 0  # taps of a depthwise causal convolution before every mixer (suites.model)
    n_test: int = 256
    train_pool: int | None = None
    batch_tokens: bool = False
    experiment: str | None = None  # the finding this configuration decides (suites.findings reads its rows)
    variants: tuple[str, ...] | None = None  # None: the profile's learned variants
    variant_params: dict[str, dict] = field(default_factory=dict)  # per variant, beyond its defaults
    seeds: int = 1
    criterion: float | None = None
    criterion_holds: int = 1  # validations in a row at or above the criterion that end training
    validate_every: int = 100
    n_valid: int = 256

    def batch_for(self, train_len: int) -> int:
        return max(1, self.batch_size // train_len) if self.batch_tokens else self.batch_size


@dataclass(frozen=True)
class ExactnessGrid:
    """Part A of a profile: (input_kind, seq_len) points at every dtype, causal (and non-causal too for
    random inputs where `non_causal`), plus float32 sweeps over N and performer's nb_features."""

    points: tuple[tuple[str, int], ...]
    n_sweep: tuple[int, ...]
    nb_features_sweep: tuple[int, ...]
    nb_features_len: int
    non_causal: bool = True
    # The compiled series (`--compile`): float32 random inputs at these lengths, causal, each variant's call
    # under torch.compile against its eager call (suites.exactness).
    compiled_lens: tuple[int, ...] = (1024,)


EXACTNESS = {
    "quick": ExactnessGrid((("random", 128), ("peaked", 128), ("near_duplicate", 128), ("long", 1024)),
                           (64, 256), (16, 64, 256), 256, compiled_lens=(128,)),
    # Causal only: each new (dtype, mask) costs FlexAttention compilations on a GPU (see suites.estimate).
    "standard": ExactnessGrid((("random", 1024), ("peaked", 1024), ("near_duplicate", 1024), ("long", 8192)),
                              (256, 4096, 16384), (16, 64, 256, 1024), 1024, non_causal=False),
    "full": ExactnessGrid((("random", 1024), ("peaked", 1024), ("near_duplicate", 1024), ("long", 16384)),
                          (128, 256, 512, 2048, 4096, 8192, 32768),
                          (16, 32, 64, 128, 256, 512, 1024, 2048), 4096),
}
CPU_EXACTNESS = {  # the CPU standard profile: the same kinds, at lengths a 2-core machine takes in seconds
    "standard": ExactnessGrid((("random", 512), ("peaked", 512), ("near_duplicate", 512), ("long", 4096)),
                              (128, 1024, 4096), (16, 64, 256, 1024), 512, non_causal=False,
                              compiled_lens=(512,)),
}


def variant_params(profile: str, name: str) -> dict:
    """The quick profile runs each variant at its small_params (patterns still sparse at short N)."""
    return dict(registry.get(name).small_params) if profile == "quick" else {}


def exactness_grid(profile: str, device: str) -> ExactnessGrid:
    return CPU_EXACTNESS.get(profile, EXACTNESS[profile]) if device == "cpu" else EXACTNESS[profile]


# --- the accuracy suite ---------------------------------------------------------------------------

ACCURACY_QUICK = [
    # The smallest MQAR: 2 of 3 keys, 2 of 4 values, 8 tokens. Vanilla solves it in about 500 steps (some
    # 6 s on one CPU core); the other tasks get a glimpse of training only.
    TaskSpec("mqar", (8,), (32,), (3e-3,), 128, 2000, 10.0, kv_pairs=(2,), task_params={"vocab": 8},
             n_heads=4, criterion=0.99, validate_every=50, n_valid=128),
    TaskSpec("selective_copy", (32,), (32,), (3e-3,), 32, 200, 1.0, task_params={"n_memorize": 4}, n_heads=4),
    TaskSpec("induction", (32,), (32,), (3e-3,), 32, 200, 1.0, n_heads=4),
    TaskSpec("passkey", (32,), (32,), (3e-3,), 32, 200, 1.0, depths=(0.0, 1.0), task_params={"key_len": 2},
             n_test=64, n_heads=4),
    TaskSpec("listops", (64,), (32,), (3e-3,), 32, 200, 1.0, task_params={"min_length": 8}, train_pool=512,
             n_test=128, n_heads=4),
]
# --- the long-range suite -------------------------------------------------------------------------

LONG_RANGE_QUICK = [
    TaskSpec("mqar", (16, 32), (32,), (3e-3,), 64, 300, 1.0, kv_pairs=(2, 4), task_params={"vocab": 64},
             n_heads=4),
    TaskSpec("selective_copy", (32, 128), (32,), (3e-3,), 32, 300, 1.0, task_params={"n_memorize": 4},
             n_heads=4),
    TaskSpec("passkey", (32,), (32,), (3e-3,), 32, 300, 1.0, eval_lens=(32, 128), depths=(0.0, 1.0),
             task_params={"key_len": 2}, n_test=64, n_heads=4),
    TaskSpec("listops", (128,), (32,), (3e-3,), 32, 300, 1.0, task_params={"min_length": 32},
             train_pool=512, n_test=128, n_heads=4),
]
# --- the standard and full profiles: one experiment per published finding -------------------------

@dataclass(frozen=True)
class Sizes:
    """The sizes a profile runs the five experiments at; the recipes (`experiments`) are the same for
    every profile and device. Steps are caps: training stops earlier at the validation criterion."""

    mqar_points: tuple[tuple[int, int], ...]  # (seq_len, kv_pairs)
    mqar_vocab: int
    mqar_width: int  # the fixed small width every family trains at
    mqar_wide: int  # mamba's wider model, at the most pairs
    mqar_batch: int
    mqar_steps: int
    copy_len: int
    copy_tokens: int
    copy_batch: int
    copy_steps: int
    induction_len: int
    induction_tests: tuple[int, ...]
    induction_batch: int
    induction_steps: int
    passkey_len: int
    passkey_tests: tuple[int, ...]
    passkey_window: int
    passkey_batch: int
    passkey_steps: int
    listops_len: int
    listops_min: int
    listops_pool: int
    listops_batch: int
    listops_steps: int
    listops_test: int
    listops_width: int = 64
    listops_layers: int = 2
    listops_seeds: int | None = None  # None: `seeds`
    seeds: int = 3
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    time_budget_s: float = 900.0  # a safety net per training; the step caps decide


# Performer draws as many random features as a head has dimensions, so that its state (features x head
# dimension per head) is linear attention's; linear's chunks match the short sequences.
SMALL_STATE = {"performer": {"nb_features": 8}, "linear": {"chunk_size": 32}}
PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
# Induction and passkey test where validation hardly looks (other lengths; a key right before the question,
# about 1 validation example in 250): a model stopped at its first validation at the criterion has only just
# learned the task (the first CPU run: one passkey seed 0.62 -> 1.0 at 400 steps, then 0.09 at depth 1).
# They stop once the criterion has held at three validations in a row.
HOLDS_BEYOND_VALIDATION = 3
# Recurrent families reported to close much of attention's gap on associative recall (Mamba-2's and Gated
# DeltaNet's papers): they join MQAR and selective copying at the fixed width, beside the findings' own.
RECALL_STATE = ("mamba2", "gated-deltanet")
# Selective copying's control (the Mamba paper's Table 1): Mamba's block with Delta, B and C learned
# parameters instead of projections of x (variants.mamba). The claim is selective against time-invariant.
SELECTION_REMOVED = "mamba-lti"


def experiments(s: Sizes) -> tuple[list[TaskSpec], list[TaskSpec]]:
    """The five experiments at one profile's sizes: (accuracy suite specs, long-range suite specs).

    Attention uses 8-dimensional heads everywhere. MQAR, selective copying and passkey put a 4-tap short
    convolution before every mixer (suites.model; without it softmax attention stays on MQAR's plateau for
    thousands of steps); induction heads does not, as in the Mamba paper (the convolution hands attention
    a position-free previous-token feature, which changes what that experiment measures: extrapolation)."""
    common = dict(seeds=s.seeds, n_heads=8)
    mqar = dict(task_params={"vocab": s.mqar_vocab}, short_conv=4, experiment="mqar_capacity", criterion=0.99,
                validate_every=50, n_valid=256, n_test=512, variant_params=SMALL_STATE, **common)
    lens, kvs = zip(*s.mqar_points, strict=True)
    accuracy = [
        TaskSpec("mqar", lens, (s.mqar_width,), s.lrs, s.mqar_batch, s.mqar_steps, s.time_budget_s,
                 kv_pairs=kvs, variants=("vanilla", "linear", "performer", "mamba", *RECALL_STATE), **mqar),
        TaskSpec("mqar", lens[-1:], (s.mqar_wide,), s.lrs, s.mqar_batch, s.mqar_steps, s.time_budget_s,
                 kv_pairs=kvs[-1:], variants=("mamba",), **mqar),
        TaskSpec("selective_copy", (s.copy_len,), (64,), s.lrs, s.copy_batch, s.copy_steps, s.time_budget_s,
                 task_params={"n_memorize": s.copy_tokens, "vocab": 16}, short_conv=4,
                 experiment="selective_copying", variants=("mamba", SELECTION_REMOVED), criterion=0.99,
                 n_test=512, **common),
        TaskSpec("listops", (s.listops_len,), (s.listops_width,), s.lrs, s.listops_batch, s.listops_steps,
                 s.time_budget_s, task_params={"min_length": s.listops_min}, train_pool=s.listops_pool,
                 n_layers=s.listops_layers, experiment="listops_lra",
                 variants=("vanilla", "linear", "performer"), variant_params=SMALL_STATE, n_valid=512,
                 n_test=s.listops_test, **{**common, "seeds": s.listops_seeds or s.seeds}),
    ]
    long_range = [
        TaskSpec("induction", (s.induction_len,), (64,), s.lrs, s.induction_batch, s.induction_steps,
                 s.time_budget_s, eval_lens=s.induction_tests, task_params={"vocab": 16},
                 experiment="induction_extrapolation", variants=("mamba", "vanilla"), criterion=0.99,
                 criterion_holds=HOLDS_BEYOND_VALIDATION, n_test=512, **common),
        TaskSpec("passkey", (s.passkey_len,), (64,), s.lrs, s.passkey_batch, s.passkey_steps, s.time_budget_s,
                 eval_lens=s.passkey_tests, depths=PASSKEY_DEPTHS, task_params={"key_len": 2}, short_conv=4,
                 experiment="passkey_window", variants=("longformer-banded", "vanilla"),
                 variant_params={"longformer-banded": {"window": s.passkey_window, "global_tokens": 0}},
                 criterion=1.0, criterion_holds=HOLDS_BEYOND_VALIDATION, n_test=128, **common),
    ]
    return accuracy, long_range


CPU_STANDARD = Sizes(
    mqar_points=((32, 2), (32, 4), (32, 8)), mqar_vocab=64, mqar_width=64, mqar_wide=128, mqar_batch=32,
    mqar_steps=1500,
    copy_len=64, copy_tokens=4, copy_batch=32, copy_steps=4000,
    induction_len=64, induction_tests=(64, 128, 256, 512, 1024), induction_batch=64, induction_steps=1500,
    passkey_len=128, passkey_tests=(64, 128), passkey_window=16, passkey_batch=32, passkey_steps=1500,
    listops_len=128, listops_min=32, listops_pool=8192, listops_batch=32, listops_steps=800,
    listops_test=1024,
    seeds=5,  # t-intervals (harness.intervals): t = 2.78 at 5 seeds against 4.30 at 3
)
# The published sizes (Zoology's MQAR grid, the Mamba paper's selective copying and induction heads,
# LRA's ListOps), step caps derived from the CPU steps to criterion (results/README.md). Not yet run.
GPU_STANDARD = Sizes(
    mqar_points=((64, 4), (128, 8), (256, 16), (512, 64)), mqar_vocab=8192, mqar_width=64, mqar_wide=256,
    mqar_batch=64, mqar_steps=6000,
    copy_len=1024, copy_tokens=16, copy_batch=64, copy_steps=8000,
    induction_len=256, induction_tests=(256, 512, 1024, 2048, 4096, 16384), induction_batch=64,
    induction_steps=6000,
    passkey_len=1024, passkey_tests=(256, 512, 1024), passkey_window=128, passkey_batch=32,
    passkey_steps=6000,
    listops_len=1000, listops_min=250, listops_pool=32000, listops_batch=32, listops_steps=5000,
    listops_test=2000, listops_width=128, listops_layers=4,
)
GPU_FULL = dataclasses.replace(
    GPU_STANDARD, mqar_steps=20000, copy_len=4096, copy_steps=40000, induction_steps=20000,
    induction_tests=(256, 512, 1024, 2048, 4096, 16384, 65536), passkey_len=4096,
    passkey_tests=(1024, 2048, 4096), passkey_steps=20000, listops_len=2000, listops_min=500,
    listops_pool=96000, listops_steps=50000, seeds=5, lrs=(3e-4, 1e-3, 3e-3), time_budget_s=3600.0)
ACCURACY_CPU_STANDARD, LONG_RANGE_CPU_STANDARD = experiments(CPU_STANDARD)
ACCURACY_STANDARD, LONG_RANGE_STANDARD = experiments(GPU_STANDARD)
ACCURACY_FULL, LONG_RANGE_FULL = experiments(GPU_FULL)

GRIDS = {
    ("accuracy", "quick"): ACCURACY_QUICK, ("accuracy", "standard"): ACCURACY_STANDARD,
    ("accuracy", "full"): ACCURACY_FULL,
    ("long-range", "quick"): LONG_RANGE_QUICK, ("long-range", "standard"): LONG_RANGE_STANDARD,
    ("long-range", "full"): LONG_RANGE_FULL,
}
CPU_GRIDS = {("accuracy", "standard"): ACCURACY_CPU_STANDARD,
             ("long-range", "standard"): LONG_RANGE_CPU_STANDARD}


def learned_specs(suite: str, profile: str, device: str) -> list[TaskSpec]:
    if device == "cpu" and (suite, profile) in CPU_GRIDS:
        return CPU_GRIDS[suite, profile]
    return GRIDS[suite, profile]


# --- the throughput suite -------------------------------------------------------------------------

MODES = ("fwd", "fwd_bwd", "decode")
LEVELS = ("kernel", "layer")


def powers_of_two(low: int, high: int) -> tuple[int, ...]:
    return tuple(2**e for e in range(low.bit_length() - 1, high.bit_length()))


@dataclass(frozen=True)
class Sweep:
    """The lengths one level sweeps in some modes; `dtypes` None: every dtype of the grid.

    `dense_masks` False leaves out the variants whose code path on the device is the dense masked
    softmax (their reference: vanilla's N x N scores under their mask, e.g. the sparse and sliding-window
    families on the CPU, where FlexAttention does not run): one curve of them is enough to show it.
    `quadratic_memory` False leaves out every code path whose memory model grows as N^2 on the device (it
    holds the N x N scores: vanilla's and the dense masked ones), e.g. at lengths where one such call costs
    seconds: a sweep that stops them at a set length instead of at the time cap's guess stays the same
    plan from run to run.
    """

    level: str
    modes: tuple[str, ...]
    seq_lens: tuple[int, ...]
    dtypes: tuple[str, ...] | None = None
    dense_masks: bool = True
    quadratic_memory: bool = True


def both_levels(kernel: Sequence[int], layer: Sequence[int]) -> tuple[Sweep, ...]:
    """Every mode at both levels: kernel lengths and layer lengths."""
    return Sweep("kernel", MODES, tuple(kernel)), Sweep("layer", MODES, tuple(layer))


@dataclass(frozen=True)
class RaggedSweep:
    """Ragged batches (harness.ragged) a grid measures beside its square sweep: these variants at these
    lengths, padded and packed, lengths drawn from one distribution, causal, kernel level."""

    variants: tuple[str, ...]
    seq_lens: tuple[int, ...]
    lengths: str = "chat"
    modes: tuple[str, ...] = ("fwd",)
    dtypes: tuple[str, ...] | None = ("float32",)


# A few families, one each of: the materialized softmax, a fused exact kernel, linear attention and two
# recurrent families (a selective SSM, a delta rule): what padding costs each, and what packing saves.
RAGGED_FAMILIES = ("vanilla", "flash-sdpa", "linear", "mamba2", "gated-deltanet")


@dataclass(frozen=True)
class FidelityPoint:
    """A sweep point that is also timed by an independent timer (a `fidelity` row)."""

    variant: str
    level: str
    mode: str
    seq_len: int


@dataclass(frozen=True)
class Grid:
    """What a profile sweeps on a device."""

    sweeps: tuple[Sweep, ...]
    dtypes: tuple[str, ...]
    head_dims: tuple[int, ...]
    causal: tuple[bool, ...]
    width: int  # n_heads * head_dim (d_model at layer level)
    total_tokens: int
    budget_ms: float  # timed rounds
    warmup_ms: float
    energy_ms: float  # back-to-back calls under NVML's energy counter (CUDA only)
    time_cap_ms: float | None = None  # a case that takes longer stops the longer lengths of its group
    remeasure_ms: float = 0.0  # extra time a noisy case may spend on more rounds
    fidelity: tuple[FidelityPoint, ...] = ()  # timed by both timers, in the grid's first dtype
    fidelity_budget_ms: float = 0.0  # per timer
    # The compiled series (`--compile`): these sweeps again under torch.compile, each variant a series of
    # its own beside its eager one; None: every sweep of the grid.
    compiled: tuple[Sweep, ...] | None = None
    ragged: tuple[RaggedSweep, ...] = ()  # padded and packed batches beside the square sweep

    def compiled_sweeps(self) -> tuple[Sweep, ...]:
        return self.sweeps if self.compiled is None else self.compiled


# CPU standard: the scaling curves to 128K tokens in about 10 minutes on 2 cores (results/README.md).
# One head of 64; 16K tokens per call up to N = 16K, then batch 1. The forward kernel sweep is the dense
# one (the fits and crossovers read it). Its lengths are set per kind of code path, so that the plan does
# not hang on the time cap's guess from run to run: every variant to 4096; of the N x N score paths, one
# curve (vanilla) to 8192, three lengths from 2048 for its fit; from 16K to 128K the paths whose memory
# grows slower than N^2, four lengths at batch 1 for the linear-time fits. (On 2 cores a case of vanilla's
# forward kernel takes about 7 s at 8192 and 17-21 s at 16K, its layer 23 s at 16K, a masked family's
# dense path 8-12 s at 8192: each of those points alone could decide whether `nox -s bench` keeps to its
# 12 minutes.) bf16, decode, forward+backward and the layer level are sparser and leave out the masked
# families' dense reference paths (the CPU has no FlexAttention: they compute vanilla's scores under a
# mask); their N x N score paths stop where the forward kernel sweep's do. Forward+backward stops at 4096
# (batch 4): at batch 1 SDPA's CPU backward runs on one thread of the two, 20x slower than its forward. A
# case predicted to take more than the time cap is skipped with the reason, as are longer ones.
# The fidelity cases get 4 s per timer: at 600 ms (two turns) flash-sdpa at 8192 (85 ms a call) had about
# three rounds per turn, and its two medians came out 8% apart.
CPU_STANDARD_FIDELITY = tuple(FidelityPoint(v, "kernel", "fwd", n) for v, n in (
    ("flash-sdpa", 1024), ("flash-sdpa", 8192), ("linear", 4096), ("vanilla", 2048)))
CPU_STANDARD_THROUGHPUT = Grid(
    sweeps=(
        Sweep("kernel", ("fwd",), (256, 1024, 2048, 4096), ("float32",)),
        Sweep("kernel", ("fwd",), (8192,), ("float32",), dense_masks=False),
        Sweep("kernel", ("fwd",), (16384, 32768, 65536, 131072), ("float32",), quadratic_memory=False),
        Sweep("kernel", ("fwd",), (1024,), ("bfloat16",), dense_masks=False),
        Sweep("kernel", ("fwd",), (16384, 65536), ("bfloat16",), quadratic_memory=False),
        Sweep("kernel", ("decode",), (256, 4096, 16384, 65536), ("float32",), dense_masks=False),
        Sweep("layer", ("fwd", "decode"), (1024, 4096), ("float32",), dense_masks=False),
        Sweep("layer", ("decode",), (16384,), ("float32",), dense_masks=False),
        Sweep("layer", ("fwd",), (16384,), ("float32",), quadratic_memory=False),
        Sweep("kernel", ("fwd_bwd",), (256, 1024, 4096), ("float32",), dense_masks=False),
    ),
    dtypes=("float32", "bfloat16"), head_dims=(64,), causal=(True,), width=64, total_tokens=16384,
    budget_ms=100, warmup_ms=0, energy_ms=0, time_cap_ms=20000, remeasure_ms=300,
    fidelity=CPU_STANDARD_FIDELITY, fidelity_budget_ms=4000,
    # --compile: three forward kernel lengths in float32 (a compile per variant and length), beside their
    # eager twins: the masked families' dense reference paths left out as in the sparser sweeps, vanilla's
    # scores to 4096.
    compiled=(Sweep("kernel", ("fwd",), (1024, 4096), ("float32",), dense_masks=False),
              Sweep("kernel", ("fwd",), (16384,), ("float32",), quadratic_memory=False)),
    ragged=(RaggedSweep(RAGGED_FAMILIES, (1024, 4096)),),
)

THROUGHPUT_GRIDS = {
    ("cuda", "quick"): Grid(both_levels((1024, 8192), (4096,)), ("bfloat16",), (64,), (True,), 2048, 16384,
                            50, 25, 100, fidelity=(FidelityPoint("flash-sdpa", "kernel", "fwd", 8192),),
                            fidelity_budget_ms=100, compiled=(Sweep("kernel", ("fwd",), (1024, 8192)),)),
    ("cuda", "standard"): Grid(both_levels((512, 2048, 8192, 32768, 131072), (2048, 16384)), ("bfloat16",),
                               (64,), (True,), 2048, 16384, 100, 25, 200, remeasure_ms=500,
                               fidelity=tuple(FidelityPoint(v, "kernel", "fwd", 8192)
                                              for v in ("flash-sdpa", "vanilla", "linear")),
                               fidelity_budget_ms=200,
                               compiled=(Sweep("kernel", ("fwd", "fwd_bwd"), (2048, 8192, 32768)),)),
    ("cuda", "full"): Grid(both_levels(powers_of_two(512, 131072), powers_of_two(512, 131072)),
                           ("bfloat16", "float16"), (64, 128), (True, False), 2048, 16384, 200, 50, 200,
                           remeasure_ms=1000, fidelity=tuple(FidelityPoint(v, "kernel", "fwd", 8192)
                                                             for v in ("flash-sdpa", "vanilla", "linear")),
                           fidelity_budget_ms=200),
    ("cpu", "quick"): Grid(both_levels((128, 512), (128, 512)), ("float32",), (64,), (True,), 256, 1024,
                           30, 0, 0, fidelity=(FidelityPoint("flash-sdpa", "kernel", "fwd", 512),),
                           fidelity_budget_ms=30, compiled=(Sweep("kernel", ("fwd",), (128, 512)),),
                           ragged=(RaggedSweep(RAGGED_FAMILIES, (512,)),)),
    ("cpu", "standard"): CPU_STANDARD_THROUGHPUT,
    ("cpu", "full"): Grid(both_levels(powers_of_two(128, 65536), powers_of_two(128, 65536)),
                          ("float32", "bfloat16"), (64, 128), (True, False), 256, 16384, 200, 0, 0,
                          time_cap_ms=30000, remeasure_ms=1000, fidelity=CPU_STANDARD_FIDELITY,
                          fidelity_budget_ms=500),
}
