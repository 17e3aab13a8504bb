"""Throughput planning: the `Case` model, the plan of a profile, the dtypes a device is measured in, the
rule that skips the longer lengths of a group, and the plan's estimate (`estimate`, compiling included)
and each case's cost (for `--shard`).

Sequence sweeps keep the total tokens constant: batch = max(1, total_tokens // N) (beyond N =
total_tokens the batch is 1). A case whose whole measurement took longer than the grid's time cap stops
the longer lengths of its group (they are recorded `skipped` with the reason: `Case.skip_reason`). Three
kinds of case: `sweep` (the grid), `fidelity` (a sweep point timed side by side by our loop and an
independent timer) and `frontier` (one call of a `--find-max-n` bisection under a memory cap:
suites.frontier). What each profile sweeps: suites.grids.

Ragged batches (harness.ragged): `layout` (square: today's batch; padded; packed) and `lengths`, the
spec of the distribution the batch's lengths are drawn from (fixed, uniform, chat; seeded by the case's
shape, so reproducible from the case). A grid's `ragged` sweeps add a few ragged cases to its plan;
`--lengths` (the plan option `lengths`) plans instead every kernel-level forward and forward+backward case
of the grid in both ragged layouts under each distribution given. Ragged cases run at kernel level, at
n_heads KV heads.

Grouped-query attention: `kv_heads` (None: n_heads; `--kv-heads`, the plan option `kv_heads`) gives k and v
that many heads, dividing n_heads. A plan with kv_heads repeats every case of the grid at each value; a
value equal to a case's n_heads is that case itself (kv_heads None, the same id).

A model preset (`model`: harness.model_presets; `--model`, the plan option `model`) measures the serving
profile at that model's per-layer attention shape: its n_heads and head_dim (d_model / n_heads) replace
the grid's, its kv_heads are the plan's (unless `kv_heads` names others; a mixer-only family has no KV
heads and runs at n_heads of head_dim alone), and the grid's sweeps run their serving modes only (fwd:
prefill; decode: a step at a context of N, with the state's bytes), causal. The rows carry the preset's
name and its layers (`model_layers`), so that a reader can multiply the per-layer figures by them; no
measurement is multiplied here. The fidelity cases stay at the grid's shape, and are not planned.

The memory model of a case (`predicted_buffer_bytes`): the bytes one kernel-level forward call's buffers
peak at, from its variant's `peak_bytes` hook (harness.costs), written on its row beside the measured
peak (suites.throughput.measuring); suites.frontier adds the runtime a first call maps.

The compiled series (`--compile`, the plan option `compiled`; docs/compile.md): the grid's compiled sweeps
(`Grid.compiled`) planned again with `compiled` true, each case the variant's call under torch.compile, a
series of its own beside the eager one (`compiled` false: every case recorded before the field existed).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from harness import model_presets, ragged, registry
from harness.attention import checked_kv_heads
from harness.config import ADDED_LATER
from harness.config import Case as BaseCase
from harness.estimate import Estimate, compile_cost, shape_compile_seconds, with_compiles
from harness.registry import as_dtype, dtype_name
from suites.grids import THROUGHPUT_GRIDS, Grid

DEVICE_DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("bfloat16", "float16", "float32")}

DENSE_MASK_BACKEND = "dense-masked-softmax"  # the backend name of a masked family's reference path
SERVING_MODES = ("fwd", "decode")  # what a model preset's plan measures: prefill and a decode step


def batch_for(total_tokens: int, seq_len: int) -> int:
    return max(1, total_tokens // seq_len)


class Case(BaseCase):
    suite: str = "throughput"
    mode: Literal["fwd", "fwd_bwd", "decode"]
    level: Literal["kernel", "layer"]
    seq_len: PositiveInt  # N: the context of a decode step
    batch: PositiveInt
    total_tokens: PositiveInt
    n_heads: PositiveInt
    head_dim: PositiveInt
    causal: bool = True
    budget_ms: PositiveFloat = 100.0
    warmup_ms: NonNegativeFloat = 25.0
    energy_ms: NonNegativeFloat = 0.0
    memory_cap_mb: PositiveInt | None = None  # simulate a smaller device (see harness.memory)
    kind: Literal["sweep", "fidelity", "frontier"] = "sweep"
    time_cap_ms: PositiveFloat | None = None  # a case slower than this stops the longer lengths of its group
    remeasure_ms: NonNegativeFloat = 0.0  # extra time to re-measure a case whose rounds spread widely
    # Grouped-query attention: k and v's heads, dividing n_heads; None (and n_heads itself) is n_heads.
    kv_heads: Annotated[PositiveInt | None, ADDED_LATER] = None
    # A model preset (harness.model_presets) whose per-layer attention shape this is; None: the grid's.
    model: Annotated[str | None, ADDED_LATER] = None
    # The compiled series: the call under torch.compile (harness.compiling); False: eager.
    compiled: Annotated[bool, ADDED_LATER] = False
    # Ragged batches (harness.ragged): the layout, and the spec of the distribution its lengths are drawn
    # from (canonical: harness.ragged.spec). The defaults are today's square batch.
    layout: Annotated[Literal["square", "padded", "packed"], ADDED_LATER] = "square"
    lengths: Annotated[str, ADDED_LATER] = ragged.DEFAULT_LENGTHS

    @model_validator(mode="before")
    @classmethod
    def _ungrouped_is_none(cls, data: Any) -> Any:
        """kv_heads == n_heads is the ungrouped case: stored as None, so that it keeps its id."""
        if isinstance(data, dict) and data.get("kv_heads") is not None and data.get("kv_heads") == data.get(
                "n_heads"):
            data = {**data, "kv_heads": None}
        return data

    @property
    def grouped(self) -> bool:
        return self.kv_heads is not None

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads if self.kv_heads is None else self.kv_heads

    @model_validator(mode="after")
    def _consistent(self) -> Case:
        if self.batch != batch_for(self.total_tokens, self.seq_len):
            raise ValueError(f"batch must be max(1, total_tokens // seq_len) = "
                             f"{batch_for(self.total_tokens, self.seq_len)}, got {self.batch}")
        if self.mode == "decode" and not self.causal:
            raise ValueError("decode is causal: a new token attends to the context before it")
        checked_kv_heads(self.n_heads, self.kv_heads)
        if self.model is not None:
            shape = model_presets.preset(self.model)
            if (self.n_heads, self.head_dim) != (shape.n_heads, shape.head_dim):
                raise ValueError(f"model {self.model} has {shape.n_heads} heads of {shape.head_dim}, "
                                 f"not {self.n_heads} of {self.head_dim}")
        self._check_ragged()
        return self

    def flat(self) -> dict[str, Any]:
        """The row's config columns; a model preset's case adds the preset's layers (`model_layers`)."""
        layers = {} if self.model is None else {"model_layers": model_presets.preset(self.model).n_layers}
        return {**super().flat(), **layers}

    def _check_ragged(self) -> None:
        """A square batch has fixed lengths; a ragged one runs at kernel level, forward or forward+backward,
        at n_heads KV heads, with lengths its distribution can draw up to N (ValueError otherwise)."""
        canonical = ragged.canonical(self.lengths)  # ValueError: an unknown distribution or parameter
        if canonical != self.lengths:
            raise ValueError(f"lengths {self.lengths!r} is written {canonical!r}")
        if self.layout == "square":
            if self.lengths != ragged.DEFAULT_LENGTHS:
                raise ValueError(f"lengths {self.lengths!r} needs a ragged layout (padded or packed)")
            return
        ragged.parse_lengths(self.lengths).check(self.seq_len)  # ValueError: lengths larger than N
        if self.level != "kernel" or self.mode == "decode" or self.grouped:
            raise ValueError("a ragged batch runs at kernel level, fwd or fwd_bwd, without kv_heads")
        if self.compiled or self.model is not None:
            raise ValueError("a ragged batch runs eager at the grid's shape (no compiled series, no model)")

    @property
    def ragged_batch(self) -> ragged.RaggedBatch:
        """The lengths of this case's batch (square: every one N)."""
        return ragged.RaggedBatch.drawn(self.lengths, self.batch, self.seq_len)

    @property
    def d_model(self) -> int:
        return self.n_heads * self.head_dim

    def oom_key(self) -> tuple[str, int]:
        """Group: everything but the length (and the batch that follows from it); size: the length."""
        group = self.model_dump(mode="json", exclude={"seq_len", "batch"})
        return json.dumps(group, sort_keys=True), self.seq_len

    def skip_reason(self, history: list[tuple[Case, str, dict[str, Any]]]) -> str | None:
        """Why this case is skipped, from the shorter lengths of its group run before it (the runner asks):
        one timed out; or one took longer than the time cap; or this one is predicted to
        (`predicted_wall_s` from the last two).
        """
        shorter = [(c, status, m) for c, status, m in history if c.seq_len < self.seq_len]
        timed_out = [c.seq_len for c, status, _ in shorter if status == "timeout"]
        if timed_out:
            return f"longer than N = {min(timed_out)}, which timed out"
        done = [(c, measuring_ms(m)) for c, status, m in shorter
                if status == "ok" and m.get("case_wall_ms") is not None]
        if self.time_cap_ms is None or not done:
            return None
        cap_s, (last, metrics) = self.time_cap_ms / 1e3, done[-1]
        took_s = metrics["case_wall_ms"] / 1e3
        if took_s > cap_s:
            return (f"longer than N = {last.seq_len}, whose measurement took {took_s:.1f} s "
                    f"(time cap {cap_s:g} s)")
        if len(done) < 2:
            return None
        predicted_s = predicted_wall_s(done[-2], done[-1], self)
        if predicted_s > cap_s:
            return (f"predicted to take {predicted_s:.0f} s from N = {done[-2][0].seq_len} and "
                    f"{last.seq_len} (time cap {cap_s:g} s)")
        return None

    def describe(self) -> str:
        shape = f"N={self.seq_len} B={self.batch} hd={self.head_dim} {self.dtype}"
        shape += f" kv={self.kv_heads}/{self.n_heads}" if self.grouped else ""
        shape += f" model={self.model}" if self.model else ""
        shape += f" {self.layout} {self.lengths}" if self.layout != "square" else ""
        kind = "" if self.kind == "sweep" else f" [{self.kind}]"
        kind += " compiled" if self.compiled else ""
        return f"{self.variant} {self.level} {self.mode} {shape}" + ("" if self.causal else " full") + kind

    def slug(self) -> str:
        """A test id: variant-level-mode-N-dtype-hd-mask."""
        mask = "causal" if self.causal else "full"
        shape = f"N{self.seq_len}-{self.dtype}-hd{self.head_dim}-{mask}"
        shape += f"-kv{self.kv_heads}" if self.grouped else ""
        shape += f"-{self.model}" if self.model else ""
        if self.layout != "square":
            shape += f"-{self.layout}-{self.lengths.replace(':', '-').replace(',', '-')}"
        kind = "" if self.kind == "sweep" else f"-{self.kind}"
        kind += "-compiled" if self.compiled else ""
        return f"{self.variant}-{self.level}-{self.mode}-{shape}{kind}"


def measuring_ms(metrics: dict[str, Any]) -> dict[str, Any]:
    """A case's metrics with its compile left out of `case_wall_ms`: what the time cap weighs. A compile
    (the compiled series: one per shape) does not grow with N as the calls do, and counted in it stopped a
    series after its first length (deltanet: 18 s of a 20 s case)."""
    compile_s = metrics.get("compile_s")
    compile_ms = compile_s * 1e3 if isinstance(compile_s, (int, float)) and math.isfinite(compile_s) else 0.0
    return {**metrics, "case_wall_ms": metrics["case_wall_ms"] - compile_ms}


def predicted_wall_s(before: tuple[Case, dict], last: tuple[Case, dict], case: Case) -> float:
    """The wall time of `case` from two shorter cases of its group ((case, metrics) each, metrics with
    `case_wall_ms`): time per sequence (wall / batch) ~ N^k, k from the two, at least 1 (a sequence of
    N tokens costs at least N), times this case's batch."""
    (c0, m0), (c1, m1) = before, last
    t0, t1 = m0["case_wall_ms"] / c0.batch, m1["case_wall_ms"] / c1.batch
    k = max(math.log(t1 / t0) / math.log(c1.seq_len / c0.seq_len), 1.0) if t0 > 0 and t1 > 0 else 1.0
    return t1 * (case.seq_len / c1.seq_len) ** k * case.batch / 1e3


def cpu_bf16_supported() -> bool:
    """Whether this CPU has native bf16 matmuls (oneDNN's check: AVX512-BF16 or AMX); without them torch
    emulates bf16, which measures the emulation."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def checked_dtypes(device: str, requested: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """The dtypes to run: those requested (each a throughput dtype of the device, else ValueError), or the
    grid's default less those the device lacks (bf16 without native support)."""
    names = [dtype_name(as_dtype(d)) for d in requested] if requested else list(default)
    for name in names:
        if name not in DEVICE_DTYPES[device]:
            raise ValueError(f"{name} is not a throughput dtype on {device}; "
                             f"use {', '.join(DEVICE_DTYPES[device])}")
    if device == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported(False):
        if requested and "bfloat16" in names:
            raise ValueError(f"bfloat16 is not supported by {torch.cuda.get_device_name()}; use --dtype fp16")
        names = [n for n in names if n != "bfloat16"] or ["float16"]
    if device == "cpu" and not requested and not cpu_bf16_supported():
        names = [n for n in names if n != "bfloat16"] or ["float32"]  # a default grid skips emulated bf16
    return names


def plan(profile: str, device: str, variants: Sequence[str] | None = None,
         seq_lens: Sequence[int] | None = None, dtypes: Sequence[str] | None = None,
         kv_heads: Sequence[int] | None = None, model: str | None = None,
         compiled: bool = False, lengths: Sequence[str] | None = None) -> list[Case]:
    """Every case of a profile on a device, smallest N first within each group (for OOM and time-cap
    skipping), then the grid's fidelity cases.

    `dtypes` runs every sweep of the grid in those dtypes (a grid may sweep its second dtype sparser);
    `seq_lens` replaces every sweep's lengths; `kv_heads` plans every sweep case at each of those KV head
    counts (each must divide every n_heads of the plan, else ValueError) instead of n_heads. `model` (a
    preset name, else ValueError) plans the serving profile at that model's attention shape (module doc);
    `compiled` adds the compiled series: the grid's compiled sweeps again under torch.compile. `lengths`
    (distribution specs, harness.ragged) plans the ragged cases of every kernel-level fwd and fwd_bwd sweep
    case instead of the grid's square sweep; without it (nor kv_heads, model), the grid's own `ragged`
    sweeps join. Ragged batches run eager at the grid's shape: `lengths` with `model` or `compiled` is a
    ValueError.
    """
    if (device, profile) not in THROUGHPUT_GRIDS:
        raise ValueError(f"no throughput profile {profile!r} on {device!r}; "
                         f"profiles: quick, standard, full; devices: cpu, cuda")
    grid = THROUGHPUT_GRIDS[device, profile]
    names = list(variants) if variants else registry.names()
    for name in names:
        registry.get(name)  # ValueError naming the valid variants
    if seq_lens is not None and any(n <= 0 for n in seq_lens):
        raise ValueError(f"sequence lengths must be positive, got {min(seq_lens)}")
    run_dtypes = checked_dtypes(device, dtypes, grid.dtypes)
    shapes = head_shapes(grid, model)
    kv_choices = checked_kv_choices(shapes, kv_heads, model)
    modes, causals = (SERVING_MODES, (True,)) if model else (None, grid.causal)
    series = [(sweep, False) for sweep in grid.sweeps]
    series += [(sweep, True) for sweep in grid.compiled_sweeps()] if compiled else []
    distributions = [ragged.canonical(spec) for spec in lengths or ()]  # ValueError: unknown
    if distributions and kv_heads:
        raise ValueError("--lengths and --kv-heads do not combine: ragged batches run at n_heads KV heads")
    if distributions and (model or compiled):
        raise ValueError("ragged batches (--lengths) run eager at the grid's shape: not with --model or "
                         "--compile")
    cases: dict[str, Case] = {}
    for name in names:
        dense_mask = registry.get(name).backend_for(device) == DENSE_MASK_BACKEND
        quadratic = quadratic_memory(registry.get(name), device)
        # A model's KV heads are its attention's: a mixer-only family (no KV heads) runs at its own shape.
        kvs = [None] if model and registry.get(name).attention_fn is None else kv_choices
        for sweep, under_compile in series:
            if (dense_mask and not sweep.dense_masks) or (quadratic and not sweep.quadratic_memory):
                continue
            own = run_dtypes if dtypes else sweep.dtypes or run_dtypes  # --dtype: every sweep in those
            for dtype in [d for d in own if d in run_dtypes]:
                for n_heads, head_dim in shapes:
                    for mode in (m for m in sweep.modes if modes is None or m in modes):
                        for causal in causals:
                            if mode == "decode" and not causal:
                                continue
                            for n in sorted(set(seq_lens or sweep.seq_lens)):
                                point = (grid, name, device, dtype, head_dim, sweep.level, mode, causal, n)
                                shape = {"n_heads": n_heads, "model": model, "compiled": under_compile}
                                for c in _point_cases(point, kvs, distributions, shape):
                                    cases.setdefault(c.case_id, c)
    if not distributions and not kv_heads and model is None:  # ragged batches: eager, the grid's shape
        for c in _grid_ragged_cases(grid, names, device, run_dtypes, seq_lens):
            cases.setdefault(c.case_id, c)
    for point in () if distributions or model else grid.fidelity:
        if point.variant in names and (seq_lens is None or point.seq_len in seq_lens):
            c = _case(grid, point.variant, device, run_dtypes[0], grid.head_dims[0], point.level, point.mode,
                      True, point.seq_len, kind="fidelity", budget_ms=grid.fidelity_budget_ms)
            cases.setdefault(c.case_id, c)
    return list(cases.values())


def quadratic_memory(variant: registry.Variant, device: str) -> bool:
    """Whether the variant's code path on the device holds N x N scores: its memory model's peak grows
    about 4x from N = 4096 to 8192 (one sequence, one head of 64). A path with no model is not counted
    (the time cap still guards it)."""
    peaks = [variant.predicted_peak_bytes(device, "float32", 1, 1, n, 64) for n in (4096, 8192)]
    return None not in peaks and peaks[1] >= 3 * peaks[0]


def head_shapes(grid: Grid, model: str | None) -> list[tuple[int, int]]:
    """(n_heads, head_dim) of every case of a plan: the grid's width split at each of its head_dims, or a
    model preset's (ValueError in one line for an unknown preset)."""
    if model is None:
        return [(grid.width // head_dim, head_dim) for head_dim in grid.head_dims]
    shape = model_presets.preset(model)
    return [(shape.n_heads, shape.head_dim)]


def _point_cases(point: tuple, kv_choices: list[int | None], distributions: list[str],
                 shape: dict[str, Any]) -> list[Case]:
    """A sweep point's cases: at each KV head count (`shape`: the fields of a model preset's or a compiled
    series' case), or (with distributions) in the ragged layouts, which run at kernel level in fwd and
    fwd_bwd only, eager at the grid's shape."""
    grid, name, device, dtype, head_dim, level, mode, causal, n = point
    if not distributions:
        return [_case(*point, kv_heads=kv, **shape) for kv in kv_choices]
    if level != "kernel" or mode == "decode":
        return []
    return _ragged_cases(grid, name, device, dtype, head_dim, mode, causal, n, distributions)


def _ragged_cases(grid: Grid, name, device, dtype, head_dim, mode, causal, n, distributions) -> list[Case]:
    """A sweep point in both ragged layouts under each distribution (ValueError: lengths larger than N)."""
    return [_case(grid, name, device, dtype, head_dim, "kernel", mode, causal, n, layout=layout, lengths=spec)
            for spec in distributions for layout in ragged.RAGGED_LAYOUTS]


def _grid_ragged_cases(grid: Grid, names, device, run_dtypes, seq_lens) -> list[Case]:
    """The grid's own ragged sweeps: a few variants at a few lengths, both layouts (not the full cross
    product of the square sweep), in the plan's first dtype the sweep allows. `seq_lens` (-n) keeps those
    of its lengths, as it keeps fidelity points."""
    found = []
    for sweep in grid.ragged:
        dtypes = [d for d in run_dtypes if sweep.dtypes is None or d in sweep.dtypes][:1]
        for name in (v for v in sweep.variants if v in names):
            for dtype in dtypes:
                for mode in sweep.modes:
                    for n in (n for n in sweep.seq_lens if seq_lens is None or n in seq_lens):
                        found += _ragged_cases(grid, name, device, dtype, grid.head_dims[0], mode, True, n,
                                               [ragged.canonical(sweep.lengths)])
    return found


def checked_kv_choices(shapes: Sequence[tuple[int, int]], kv_heads: Sequence[int] | None,
                       model: str | None = None) -> list[int | None]:
    """The KV head counts a plan runs at ([None]: n_heads; a model preset's own without `kv_heads`), each
    checked against every n_heads of the plan's shapes: ValueError in one line naming the first that does
    not divide."""
    if not kv_heads:
        return [model_presets.preset(model).kv_heads] if model else [None]
    for kv in kv_heads:
        for n_heads, head_dim in shapes:
            if kv < 1 or n_heads % kv:
                where = (f"model {model}'s query heads" if model
                         else f"the grid's width {n_heads * head_dim} / head_dim {head_dim}")
                raise ValueError(f"--kv-heads {kv} must be at least 1 and divide n_heads {n_heads} ({where})")
    return list(dict.fromkeys(kv_heads))


def _case(grid: Grid, variant, device, dtype, head_dim, level, mode, causal, seq_len, **fields) -> Case:
    return Case(**{
        "variant": variant, "device": device, "dtype": dtype, "mode": mode, "level": level,
        "seq_len": seq_len, "batch": batch_for(grid.total_tokens, seq_len), "total_tokens": grid.total_tokens,
        "n_heads": grid.width // head_dim, "head_dim": head_dim, "causal": causal,
        "budget_ms": grid.budget_ms, "warmup_ms": grid.warmup_ms, "energy_ms": grid.energy_ms,
        "time_cap_ms": grid.time_cap_ms, "remeasure_ms": grid.remeasure_ms, **fields})


def predicted_buffer_bytes(case: Case) -> int | None:
    """The memory model of one kernel-level forward call: the bytes its live buffers peak at (inputs, the
    output and what the code path on the case's device holds between them), from its variant's
    `peak_bytes` hook, or harness.costs' default for a variant that declares none. None for other levels
    and modes, and for code paths with no model (measured, not predicted)."""
    if case.level != "kernel" or case.mode != "fwd":
        return None
    peak = registry.get(case.variant).predicted_peak_bytes(
        case.device, case.torch_dtype, case.batch, case.n_heads, case.seq_len, case.head_dim, case.params,
        kv_heads=case.kv_heads)
    return None if peak is None else int(peak)


# Rough seconds per case beyond its warm-up, timed rounds and energy phase (inputs, the sizing call, cache
# flushes, the row): the CPU figure from the quick profile here (156 cases in 12 s); CUDA a guess.
CASE_OVERHEAD_S = {"cpu": 0.05, "cuda": 0.5}


def measuring_seconds(case: Case) -> float:
    """A case's warm-up, timed rounds, energy phase and overhead: what it costs once compiled."""
    return (case.warmup_ms + case.budget_ms + case.energy_ms) / 1000 + CASE_OVERHEAD_S[case.device]


def compile_shapes(case: Case) -> list[dict]:
    """The compiled call a case makes (harness.estimate): its timed call, at kernel and layer level alike
    (the layer calls the same kernel at the same shape; under torch.compile, the compiled series, the
    layer is a graph of its own); decode's query is one token against N keys."""
    graph = f"{case.level} {case.mode}" if case.compiled else case.mode
    return [{"graph": graph, "dtype": case.dtype, "batch": case.batch, "heads": case.n_heads,
             "seq_len": case.seq_len, "head_dim": case.head_dim, "causal": case.causal,
             "backward": case.mode == "fwd_bwd"}]


# What the measuring figure leaves out, printed with every estimate (`attnbench run --estimate`).
MEASURING_BASIS = ("its budgets only, a lower bound: a call longer than its budget runs about 4 times "
                   "(the sizing call, traced for memory on the CPU, and 3 rounds), unmodelled; the CPU "
                   "standard sweep's float32 cases (`nox -s bench`'s on a CPU) took about 5 min 20 s against "
                   "75 s estimated (2-core AMD EPYC, 2026-12-03)")


def estimate(cases: list[Case]) -> Estimate:
    """The plan's seconds: every case measured, and each distinct compile and autotune key paid once.
    A lower estimate of the measuring (MEASURING_BASIS: the calls' own length is not modelled), and of
    FlexAttention's compiles (their figures are CPU-backend lower bounds: harness.flex)."""
    total = with_compiles(sum(measuring_seconds(c) for c in cases), compile_cost(cases, compile_shapes))
    return dataclasses.replace(total, bases={**total.bases, "timed calls": MEASURING_BASIS})


def case_cost(case: Case) -> float:
    """Estimated seconds of one case, for `attnbench run --shard` to balance its parts: its measuring and
    the compiles of its own shape (FlexAttention's); a library's autotuning, paid once per key by every
    part that holds the key, is left out."""
    return measuring_seconds(case) + shape_compile_seconds(case, compile_shapes)
