"""Exactness, the accuracy suite's Part A (task "exactness", no training): is each variant the function it
claims to be in each dtype, and how far is that function from softmax attention?

Every row is one check of harness.contract on one variant, dtype and input kind (`input_kind` names the
check: random, peaked, large_logits, near_duplicate, long, cross, no_visible_key, causality, decode, and
mixer for the mixer-only families). It carries the correctness gate: `checked_err`, the error against
the float64 reference on the same rounded inputs (softmax under its mask for an exact variant, its own
reference for an approximation, `kernel_reference` or the float64 block for a mixer-only family), the
dtype's `tolerance`, `within_tolerance`, and `check_detail`, the check's verdict in one line. A check that
cannot run is an `unsupported` row with the reason; NaN or Inf is a `nonfinite` row naming the check.

The kinds random, peaked, near_duplicate and long also keep the measures of the dtype's and the method's
error against the unrounded float64 inputs: `rel_err` (and `max_abs_err`) against softmax attention, under
the mask of masked families; for approximations `impl_err` against their own reference; for masked
families `full_attention_err`, how far the pattern is from full attention. For linear and performer,
`rel_err` is their approximation error: a measure of the method, which no tolerance judges. Plus float32
sweeps over N (every attention variant) and over performer's nb_features.

Grouped KV heads: every attention variant also runs the checks of GROUPED_KINDS at every dtype with 4
query heads and `kv_heads` 1 (multi-query) and 2 (grouped-query, n_heads / 2), against the reference with
its KV heads repeated (harness.contract); the quick profile runs GROUPED_QUICK's (its time budget). A
variant that does not declare grouped KV heads gets `unsupported` rows that name the setting and the
reason.

The compiled series (`--compile`, `compiled` true; docs/compile.md): every variant's call (attention, or a
mixer-only family's kernel) on float32 random inputs at the grid's `compiled_lens`, causal, under
torch.compile (harness.compiling) against the same call eager, on the same inputs. The row's `checked_err`
is their relative error (Frobenius), `reference` "eager", `tolerance` COMPILED_TOLERANCE and
`within_tolerance` the verdict; `compile_s` the compiling call's seconds. A variant that cannot compile is
an `unsupported` row with the reason (declared, or the exception's first line).
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from harness import compiling, contract, registry
from harness.attention import causal_mask, checked_kv_heads, kv_group, repeat_kv, softmax_attention
from harness.config import ADDED_LATER, Case
from harness.registry import Unsupported
from harness.runner import NonFinite
from suites import grids

DTYPES = ("float64", "float32", "float16", "bfloat16")
# The parameter of a random-feature approximation (FAVOR+'s, or a plugin's of the same name): its error is
# also measured against the number of features.
FEATURE_COUNT = "nb_features"
MEASURED_KINDS = ("random", "peaked", "near_duplicate", "long")  # also measured against unrounded inputs
# Checks without a length of their own in the grid: they run at its random-input length.
CHECK_KINDS = ("large_logits", "cross", "no_visible_key", "causality", "decode", "mixer")
# Grouped KV heads: the checks that exercise them (the group view, bottom-right alignment, empty rows, the
# cache), with GROUPED_N_HEADS query heads and kv_heads 1 and GROUPED_N_HEADS // 2.
GROUPED_KINDS = ("random", "cross", "no_visible_key", "decode")
GROUPED_N_HEADS = 4
GROUPED_QUICK = (("random", "decode"), ("float32",))  # kinds, dtypes: causal random inputs and the cache
# The compiled series: eager and compiled float32 outputs agree to this relative error (the seeds' 1e-5).
COMPILED_TOLERANCE = 1e-5
COMPILED_KIND, COMPILED_DTYPE = "random", "float32"


class ExactnessCase(Case):
    """One variant, dtype and input kind (a check of harness.contract) against the float64 reference."""

    suite: Literal["accuracy", "long-range"] = "accuracy"
    task: Literal["exactness"] = "exactness"
    seed: int = Field(0, ge=0)
    input_kind: Literal["random", "peaked", "large_logits", "near_duplicate", "long", "cross",
                        "no_visible_key", "causality", "decode", "mixer"]
    seq_len: int = Field(gt=0)  # N: the number of keys (the cross checks also vary the queries)
    head_dim: int = Field(64, gt=0)
    n_heads: int = Field(2, gt=0)
    batch: int = Field(1, gt=0)
    causal: bool = True
    # Grouped-query attention: k and v's heads, dividing n_heads (None: n_heads).
    kv_heads: Annotated[int | None, ADDED_LATER] = Field(None, gt=0)
    # The compiled series: torch.compile's output against the eager one; False: against the reference.
    compiled: Annotated[bool, ADDED_LATER] = False

    @model_validator(mode="after")
    def _kv_heads_divide(self) -> ExactnessCase:
        checked_kv_heads(self.n_heads, self.kv_heads)
        return self

    def describe(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in sorted(self.params.items()))
        grouped = f" kv_heads={self.kv_heads}/{self.n_heads}" if self.kv_heads is not None else ""
        compiled = " compiled vs eager" if self.compiled else ""
        return (f"exactness {self.variant} {self.dtype} {self.input_kind} N={self.seq_len}" + grouped + extra
                + compiled)

    def oom_key(self):
        params = json.dumps(self.params, sort_keys=True)
        return (self.variant, self.dtype, self.causal, params, self.kv_heads, self.compiled), self.seq_len

    def setting(self) -> contract.Setting:
        return contract.Setting(n=self.seq_len, dtype=self.torch_dtype, device=self.device,
                                causal=self.causal, params=dict(self.params), seed=self.seed,
                                batch=self.batch, n_heads=self.n_heads, head_dim=self.head_dim,
                                kv_heads=self.kv_heads)


# --- the plan -------------------------------------------------------------------------------------------

def cases(profile: str, device: str, names: list[str], compiled: bool = False) -> list[ExactnessCase]:
    """Every check that concerns each variant, at every dtype, on the profile's grid; `compiled` adds the
    compiled series (compiled_cases)."""
    grid, planned = grids.exactness_grid(profile, device), []
    short = dict(grid.points)["random"]
    for name in names:
        v, params = registry.get(name), grids.variant_params(profile, name)
        kinds = contract.applicable(v)
        points = [p for p in grid.points if p[0] in kinds] + [(k, short) for k in CHECK_KINDS if k in kinds]
        for (kind, n), dtype in ((p, d) for p in points for d in DTYPES):
            both = kind in ("random", "cross") and grid.non_causal and v.support.non_causal
            for causal in (False, True) if both else (True,):
                planned.append(ExactnessCase(variant=name, device=device, dtype=dtype, params=params,
                                             input_kind=kind, seq_len=n, causal=causal))
        if v.attention_fn is None:
            continue
        both = grid.non_causal and v.support.non_causal
        planned += grouped_cases(profile, name, device, params, short, both)
        for n in grid.n_sweep:
            planned.append(ExactnessCase(variant=name, device=device, dtype="float32", params=params,
                                         input_kind="random", seq_len=n, causal=True))
        if FEATURE_COUNT in inspect.signature(v.attention_fn).parameters:  # random features: any family's
            for m in grid.nb_features_sweep:
                for causal in (False, True) if grid.non_causal else (True,):
                    planned.append(ExactnessCase(variant=name, device=device, dtype="float32",
                                                 params={**params, FEATURE_COUNT: m}, input_kind="random",
                                                 seq_len=grid.nb_features_len, causal=causal))
    if compiled:
        planned += [c for name in names for c in compiled_cases(profile, name, device)]
    return list({c.case_id: c for c in planned}.values())  # sweeps may repeat a grid point


def compiled_cases(profile: str, name: str, device: str) -> list[ExactnessCase]:
    """The compiled series of one variant: float32 random inputs, causal, at the grid's compiled_lens."""
    params = grids.variant_params(profile, name)
    return [ExactnessCase(variant=name, device=device, dtype=COMPILED_DTYPE, params=params,
                          input_kind=COMPILED_KIND, seq_len=n, causal=True, compiled=True)
            for n in grids.exactness_grid(profile, device).compiled_lens]


def grouped_cases(profile: str, name: str, device: str, params: dict, n: int,
                  non_causal: bool) -> list[ExactnessCase]:
    """The grouped-KV checks of one attention variant: GROUPED_KINDS at every dtype (quick: GROUPED_QUICK,
    causal), kv_heads 1 and GROUPED_N_HEADS // 2 of GROUPED_N_HEADS query heads, at the grid's random-input
    length."""
    kinds, dtypes = GROUPED_QUICK if profile == "quick" else (GROUPED_KINDS, DTYPES)
    both = non_causal and profile != "quick"
    return [ExactnessCase(variant=name, device=device, dtype=dtype, params=params, input_kind=kind, seq_len=n,
                          causal=causal, n_heads=GROUPED_N_HEADS, kv_heads=kv_heads)
            for kv_heads in (1, GROUPED_N_HEADS // 2) for kind in kinds for dtype in dtypes
            for causal in ((False, True) if kind in ("random", "cross") and both else (True,))]


# --- one case -------------------------------------------------------------------------------------------

def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Frobenius-norm relative error; 0 when both are zero."""
    ref_norm = float(ref.norm())
    diff = float((out - ref).norm())
    return diff / ref_norm if ref_norm > 0 else diff


def error_columns(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out = out.double()
    return {"max_abs_err": float((out - ref).abs().max()), "rel_err": relative_error(out, ref)}


def measured_columns(case: ExactnessCase, v, out: torch.Tensor) -> dict:
    """The output against the unrounded float64 inputs: softmax (under the variant's mask), and for an
    approximation its own reference."""
    if v.attention_fn is None:  # a mixer-only family: its kernel against kernel_reference is the measure
        return {"reference": "kernel_reference", "nb_features": None}
    params = {**v.defaults, **case.params}
    own, against, full_attention_err = _unrounded_references(
        _Same(v), json.dumps(case.params, sort_keys=True), _inputs_key(case), case.causal)
    row = {"reference": "softmax" if v.mask is None else "masked_softmax",
           "full_attention_err": full_attention_err, "nb_features": params.get("nb_features")}
    if own is not None:  # an approximation: also against its own float64 naive twin (rounding, fast path)
        row["impl_err"] = relative_error(out.double(), own)
    return row | error_columns(out, against)


# The float64 references on unrounded inputs depend on neither the dtype nor the output: one variant's
# four dtypes share them, and every variant shares softmax's on the same inputs. At the CPU standard's
# long check (N = 4096) they were half of the exactness suite's time. A few entries suffice (the plan runs
# one variant's checks together); the sizes stay those of the exactness grid's inputs.
REFERENCE_CACHE_SIZE = 8


class _Same:
    """A variant as a cache key, by identity: a name registered again (a test's plugin) is a new key, and
    the key holds the variant, so its id is never reused while cached."""

    __slots__ = ("variant",)

    def __init__(self, variant) -> None:
        self.variant = variant

    def __hash__(self) -> int:
        return id(self.variant)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Same) and other.variant is self.variant


def _inputs_key(case: ExactnessCase) -> tuple:
    return (case.input_kind, case.seq_len, case.seed, case.batch, case.n_heads, case.head_dim, case.kv_heads,
            case.device)


@functools.lru_cache(maxsize=REFERENCE_CACHE_SIZE)
def _unrounded_inputs(key: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, and k and v with their KV heads as drawn (contract.qkv), on the case's device."""
    kind, n, seed, batch, n_heads, head_dim, kv_heads, device = key
    return tuple(t.to(device) for t in contract.qkv(kind, n, n, seed, batch, n_heads, head_dim, kv_heads))


@functools.lru_cache(maxsize=REFERENCE_CACHE_SIZE)
def _softmax_reference(key: tuple, causal: bool) -> torch.Tensor:
    """Softmax attention on the unrounded inputs, its KV heads repeated to the query heads."""
    q, k, val = _unrounded_inputs(key)
    n = q.shape[-2]
    return _grouped_softmax(q, k, val, causal_mask(n, n, q.device) if causal else None)


def _grouped_softmax(q: torch.Tensor, k: torch.Tensor, val: torch.Tensor, mask) -> torch.Tensor:
    """Softmax attention with k's and v's heads repeated to the query heads."""
    group = kv_group(q, k)
    return softmax_attention(q, repeat_kv(k, group), repeat_kv(val, group), mask)


@functools.lru_cache(maxsize=REFERENCE_CACHE_SIZE)
def _unrounded_references(same: _Same, params_json: str, key: tuple, causal: bool):
    """(the approximation's own reference or None, the reference the output is measured against, how far
    the variant's mask is from full attention or None) on the unrounded inputs."""
    v, params = same.variant, json.loads(params_json)
    q, k, val = _unrounded_inputs(key)
    full = _softmax_reference(key, causal)
    own = v.attention_reference(q, k, val, causal=causal, **params) if not v.exact else None
    if v.mask is None:
        return own, full, None
    n = q.shape[-2]
    mask = v.mask(n, n, causal=causal, n_heads=q.shape[1], **params)  # (heads,) n, n
    against = _grouped_softmax(q, k, val, mask.to(q.device))
    return own, against, relative_error(against, full)


def compiled_against_eager(case: ExactnessCase) -> dict:
    """The compiled series' check: the variant's call compiled against the same call eager, on the same
    inputs (an attention variant's random q, k, v; a mixer-only family's kernel inputs)."""
    v = registry.get(case.variant)
    reason = v.support.compile_reason()
    if reason:
        raise Unsupported(f"torch.compile: {reason}")
    s = case.setting()
    if v.attention_fn is not None:
        ok, reason = v.supports(s.device, s.dtype, s.head_dim, s.causal, grouped=s.grouped)
        if not ok:
            raise Unsupported(reason)
        inputs = dict(zip("qkv", (t.to(device=s.device, dtype=s.dtype) for t in contract.qkv(
            case.input_kind, s.n, s.n, s.seed, s.batch, s.n_heads, s.head_dim, s.kv_heads)), strict=True))

        def call(q, k, v_):
            return v.attention(q, k, v_, causal=case.causal, **case.params)

        inputs["v_"] = inputs.pop("v")
    else:
        drawn = v.kernel_inputs(s.batch, s.n_heads, s.n, s.head_dim, torch.Generator().manual_seed(s.seed),
                                dtype=s.dtype)
        inputs = {k: t.to(s.device) if torch.is_tensor(t) else t for k, t in drawn.items()}
        call = v.kernel
    eager = call(**inputs)
    compiled = compiling.Compiled(call)
    out, compile_s = compiling.compiling_call(lambda: compiled(**inputs), compiled)
    if not torch.isfinite(out).all():
        raise NonFinite(f"{case.variant} under torch.compile produced NaN or Inf")
    error = contract.relative_error(out, eager)
    passed = error <= COMPILED_TOLERANCE
    verdict = f"{'<=' if passed else '>'} tolerance {COMPILED_TOLERANCE:.0e}"
    detail = (f"compiled: {case.input_kind} N={s.n}{' causal' if case.causal else ''} under torch.compile "
              f"against eager: error {error:.1e} {verdict} ({case.dtype})")
    return {"reference": "eager", "full_attention_err": None, "impl_err": None, "nb_features": None,
            "max_abs_err": float((out.double() - eager.double()).abs().max()), "rel_err": None,
            "checked_err": error, "tolerance": COMPILED_TOLERANCE, "within_tolerance": passed,
            "check_detail": detail, "compile_s": compile_s}


def run(case: ExactnessCase) -> dict:
    if case.compiled:
        return compiled_against_eager(case)
    v = registry.get(case.variant)
    outcome = contract.run(v, case.input_kind, case.setting())
    if outcome.status == "unsupported":
        raise Unsupported(outcome.line())
    if outcome.nonfinite:
        raise NonFinite(outcome.line())
    row = {"reference": None, "full_attention_err": None, "impl_err": None, "nb_features": None,
           "max_abs_err": None, "rel_err": None}
    if case.input_kind in MEASURED_KINDS:
        row |= measured_columns(case, v, outcome.output)
        if v.attention_fn is None:
            row |= error_columns(outcome.output, outcome.reference)
    return row | {"checked_err": outcome.error, "tolerance": outcome.tolerance,
                  "within_tolerance": outcome.passed, "check_detail": outcome.line()}
