"""The registry's contract as checks: what every variant, plugins included, must honour.

`attnbench doctor`, the accuracy suite's exactness rows (suites.exactness) and tests/test_contract.py run
these same checks, so a variant meets one bar wherever it is tested. `run(variant, check, setting)` returns
an `Outcome`: pass, fail or unsupported, with the error, the tolerance and one line saying what was
compared and how far off it was.

The checks (`CHECKS`), on q, k, v drawn in float64 from a seed and rounded to the dtype under test:
- `random`, `peaked`, `large_logits`, `near_duplicate`, `long`: the output against a float64 reference on
  the same rounded inputs (rounding the inputs is the dtype's doing, not the kernel's). `peaked`: q and k
  x 4, logits with a standard deviation of 16; `large_logits`: q and k x 6, logits past 88, where exp
  overflows float32 and bfloat16, so a softmax that does not subtract the row's maximum fails;
  `near_duplicate`: keys are 4 vectors plus 1e-3 noise; `long`: random inputs at a long N.
- `cross`: fewer queries than keys and more, aligned bottom-right (harness.masks).
- `no_visible_key`: causal, twice as many queries as keys: the first half see no key and must give 0.
- `causality`: changing the keys and values from position t on leaves every output before t as it was
  (and changes one after it: else the check saw nothing).
- `decode`: a prefill, then one token at a time: the outputs equal the full causal forward's last rows.
- `mixer` (mixer-only families): the whole block in the dtype against itself in float64.

Grouped KV heads: a setting with `kv_heads` (dividing n_heads) draws k and v with that many heads; the
variant gets them as they are, and the reference gets them repeated to the query heads (repeat_interleave:
harness.attention.repeat_kv), softmax's or the approximation's own (which repeats them itself). A variant
that does not declare grouped KV heads (Support.grouped_kv) gets `unsupported` with its reason, and so does
a mixer-only family (no KV heads): never a silent repeat.

The reference. An exact variant (`exact=True`) is held to softmax attention under its own mask, never to
a reference it declares: a plugin cannot vouch for itself. An approximation is held to its declared naive
`reference` (how far that is from softmax is the method's approximation error, measured apart by the
exactness suite, not judged here). A mixer-only family has no q, k, v: its `kernel` is held to its
`kernel_reference`, and its block (mixer, causality, decode) to the same block in float64.

The tolerance. The error is ||out - ref|| / ||ref|| (Frobenius), the reference's norm floored where the
output is zero to the dtype: every value at its smallest normal number (so an output that underflows in
float16 is not 100% off), or for attention rows the size of the values' rounding, u x ||v|| (so two
outputs of 1e-22 and 1e-48 from values of size 1 do not differ by 10^26). A kernel that stores its output
in the dtype and accumulates in at least float32 commits about
    u(dtype) + u(acc) * (L + sqrt(N)),
with u the unit roundoff (half the machine epsilon), acc the accumulation dtype (float32 for half
inputs), L = max|q| max|k| / sqrt(d), at least 1 (the rounding error of a dot product is relative to
|q||k|, not to q.k, and an error in a logit moves exp() by as much), and sqrt(N) for sums over N keys
whose rounding errors add up like a random walk. The tolerance is FACTOR times that. An fp32 call that
computes in bfloat16 is off by about u(bf16) = 2^-9, hundreds of times the float32 tolerance; the
built-in variants on the committed grids stay within a quarter of it, but for one finding
(results/README.md, "The correctness gate").
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.attention import causal_mask, checked_kv_heads, kv_group, repeat_kv, softmax_attention
from harness.registry import Unsupported, Variant, dtype_name

REFERENCE_KINDS = ("random", "peaked", "large_logits", "near_duplicate", "long")
CHECKS = (*REFERENCE_KINDS, "cross", "no_visible_key", "causality", "decode", "mixer")
ATTENTION_CHECKS = CHECKS[:-1]  # "mixer" is the block check of the mixer-only families
MIXER_CHECKS = ("random", "long", "mixer", "causality", "decode")  # a scan has no keys to peak or cross
CAUSAL_CHECKS = ("no_visible_key", "causality", "decode")  # causal whatever the setting says

FACTOR = 8.0
PEAK_SCALE = 4.0  # "peaked": logits with a standard deviation of about 16
LARGE_LOGIT_SCALE = 6.0  # "large_logits": standard deviation 36, the largest past 88 from N = 8 on
DUPLICATE_KEYS, DUPLICATE_NOISE = 4, 1e-3
DECODE_STEPS = 4
CAUSALITY_SPLIT = 0.7  # keys and values change from this fraction of the sequence on


@dataclass(frozen=True)
class Setting:
    """Where and how a check runs: N (the number of keys), the dtype, device, mask and shapes."""

    n: int
    dtype: torch.dtype
    device: str = "cpu"
    causal: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch: int = 1
    n_heads: int = 2
    head_dim: int = 64
    kv_heads: int | None = None  # k and v's heads (grouped-query attention); None: n_heads

    @property
    def grouped(self) -> bool:
        return self.kv_heads is not None and self.kv_heads != self.n_heads


@dataclass
class Outcome:
    """One check's verdict. `output` and `reference` (float64, on the device) are kept for callers that
    measure more."""

    check: str
    status: str  # "pass", "fail" or "unsupported"
    detail: str  # what was compared and how far off, or why the check could not run
    error: float | None = None
    tolerance: float | None = None
    nonfinite: bool = False
    output: torch.Tensor | None = field(default=None, repr=False)
    reference: torch.Tensor | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def line(self) -> str:
        """The verdict in one line, naming the check."""
        return f"{self.check}: {self.detail}"

    @property
    def finite_error(self) -> float | None:
        """The error, None where there is none or it is NaN (strict JSON has no NaN)."""
        return self.error if self.error is not None and math.isfinite(self.error) else None

    def summary(self) -> dict[str, Any]:
        """The verdict without its tensors (JSON-able)."""
        return {"check": self.check, "status": self.status, "detail": self.detail, "error": self.finite_error,
                "tolerance": self.tolerance}


# --- the tolerance and the error ------------------------------------------------------------------------

def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def tolerance(dtype: torch.dtype, n: int, bound: float = 1.0) -> float:
    """The largest relative error an honest kernel in `dtype` commits over `n` keys whose logits are at
    most `bound` in size (module docstring)."""
    accumulate = torch.promote_types(dtype, torch.float32)
    growth = max(bound, 1.0) + math.sqrt(n)
    return FACTOR * (unit_roundoff(dtype) + unit_roundoff(accumulate) * growth)


def relative_error(out: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """||out - ref|| / max(||ref||, floor) in float64 (NaN when out holds NaN or Inf)."""
    out, ref = out.detach().double(), ref.detach().double().to(out.device)
    return float((out - ref).norm()) / max(float(ref.norm()), floor)


def zero_norm(dtype: torch.dtype, ref: torch.Tensor, values: torch.Tensor | None = None) -> float:
    """The norm below which an output is zero to the dtype: every value at its smallest normal number, and
    for attention, whose output rows mix value rows, rows the size of the values' rounding (u x ||v||)."""
    floor = torch.finfo(dtype).tiny * math.sqrt(ref.numel())
    if values is not None:
        rows = ref.shape[-2] / values.shape[-2]
        floor = max(floor, unit_roundoff(dtype) * float(values.detach().double().norm()) * math.sqrt(rows))
    return floor


def logit_bound(q: torch.Tensor, k: torch.Tensor) -> float:
    """max|q| max|k| / sqrt(d): the largest a logit could be, and the scale of its rounding error."""
    return float(q.norm(dim=-1).max() * k.norm(dim=-1).max()) * q.shape[-1] ** -0.5


# --- inputs and references ------------------------------------------------------------------------------

def qkv(kind: str, n_q: int, n_k: int, seed: int = 0, batch: int = 1, n_heads: int = 2, head_dim: int = 64,
        kv_heads: int | None = None):
    """q (n_q), k and v (n_k) in float64 on the CPU, deterministic by seed: (batch, heads, seq, head_dim),
    k and v with kv_heads heads (None: n_heads)."""
    g = torch.Generator().manual_seed(seed)
    kv_heads = checked_kv_heads(n_heads, kv_heads)
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=g, dtype=torch.float64)
               for n, heads in ((n_q, n_heads), (n_k, kv_heads), (n_k, kv_heads)))
    if kind == "peaked":
        q, k = q * PEAK_SCALE, k * PEAK_SCALE
    elif kind == "large_logits":
        q, k = q * LARGE_LOGIT_SCALE, k * LARGE_LOGIT_SCALE
    elif kind == "near_duplicate":
        base = torch.randn(batch, kv_heads, DUPLICATE_KEYS, head_dim, generator=g, dtype=torch.float64)
        k = base[..., torch.arange(n_k) % DUPLICATE_KEYS, :] + DUPLICATE_NOISE * k
    return q, k, v


def _draw(kind: str, n_q: int, n_k: int, s: Setting):
    """The setting's q, k, v (qkv)."""
    return qkv(kind, n_q, n_k, s.seed, s.batch, s.n_heads, s.head_dim, s.kv_heads)


def visible(v: Variant, n_q: int, n_k: int, causal: bool, n_heads: int, params: dict,
            device="cpu") -> torch.Tensor | None:
    """Which keys each query may see: the variant's own mask, else the causal one (None: every key)."""
    if v.mask is not None:
        return v.mask(n_q, n_k, causal=causal, n_heads=n_heads, **params).to(device)
    return causal_mask(n_q, n_k, device) if causal else None


def reference(v: Variant, q, k, val, causal: bool, params: dict) -> torch.Tensor:
    """In float64 on q's device: softmax under the variant's mask if it is exact, else its declared
    reference; grouped KV heads repeated to the query heads (the declared reference repeats them itself)."""
    q, k, val = (t.detach().double() for t in (q, k, val))
    if not v.exact:
        return v.attention_reference(q, k, val, causal=causal, **params)
    group = kv_group(q, k)
    mask = visible(v, q.shape[-2], k.shape[-2], causal, q.shape[1], params, q.device)
    return softmax_attention(q, repeat_kv(k, group), repeat_kv(val, group), mask)


def _rounded(tensors, s: Setting):
    """The float64 inputs as the dtype holds them, on the device: for the fast path, and in float64 for the
    reference."""
    fast = tuple(t.to(device=s.device, dtype=s.dtype) for t in tensors)
    return fast, tuple(t.double() for t in fast)


# --- verdicts -------------------------------------------------------------------------------------------

def _verdict(check: str, what: str, out: torch.Tensor, ref: torch.Tensor, tol: float, dtype: torch.dtype,
             values: torch.Tensor | None = None, note: str = "") -> Outcome:
    out = out.detach()
    finite = torch.isfinite(out)
    if not finite.all():
        bad = int((~finite).sum())
        return Outcome(check, "fail", f"{what}: NaN or Inf in {bad} of {out.numel()} output values{note}",
                       math.nan, tol, nonfinite=True, output=out.double(), reference=ref)
    error = relative_error(out, ref, zero_norm(dtype, ref, values))
    passed = error <= tol
    detail = (f"{what}: error {error:.1e} {'<=' if passed else '>'} tolerance {tol:.1e} "
              f"({dtype_name(dtype)}){note}")
    status = "pass" if passed else "fail"
    return Outcome(check, status, detail, error, tol, output=out.double(), reference=ref)


def _against(v: Variant) -> str:
    return "its reference" if not v.exact else "softmax under its mask" if v.mask is not None else "softmax"


def _grouping(s: Setting | None) -> str:
    return f" kv_heads={s.kv_heads} of {s.n_heads}" if s is not None and s.grouped else ""


def _shape(n_q: int, n_k: int, causal: bool, s: Setting | None = None) -> str:
    shape = f"N={n_k}" if n_q == n_k else f"Nq={n_q} Nk={n_k}"
    return shape + (" causal" if causal else "") + _grouping(s)


# --- attention checks -----------------------------------------------------------------------------------

@dataclass
class _Run:
    """One attention call and what judges it: the float64 reference, the tolerance, the rounded values."""

    out: torch.Tensor
    ref: torch.Tensor
    tol: float
    values: torch.Tensor


def _attention_run(v: Variant, kind: str, n_q: int, n_k: int, causal: bool, s: Setting) -> _Run:
    (q, k, val), rounded = _rounded(_draw(kind, n_q, n_k, s), s)
    out = v.attention(q, k, val, causal=causal, **s.params)
    tol = tolerance(s.dtype, n_k, logit_bound(*rounded[:2]))
    return _Run(out, reference(v, *rounded, causal, s.params), tol, rounded[2])


def _judge(check: str, what: str, r: _Run, s: Setting, note: str = "") -> Outcome:
    return _verdict(check, what, r.out, r.ref, r.tol, s.dtype, r.values, note)


def _reference_kind(v: Variant, check: str, s: Setting) -> Outcome:
    r = _attention_run(v, check, s.n, s.n, s.causal, s)
    return _judge(check, f"{check} {_shape(s.n, s.n, s.causal, s)} against {_against(v)}", r, s)


def cross_shapes(n: int) -> tuple[tuple[int, int], ...]:
    """(Nq, Nk) of the cross check: fewer queries than keys, then more."""
    return (n // 2 + 1, n), (n, n // 2 + 1)


def _cross(v: Variant, s: Setting) -> Outcome:
    if not v.support.cross:
        raise Unsupported(f"{v.name} needs Nq == Nk (Support.cross is False)")
    outcomes = [_judge("cross", f"{_shape(n_q, n_k, s.causal, s)} (bottom-right) against {_against(v)}",
                       _attention_run(v, "random", n_q, n_k, s.causal, s), s)
                for n_q, n_k in cross_shapes(s.n)]
    failed = [o for o in outcomes if not o.passed]
    return failed[0] if failed else max(outcomes, key=lambda o: o.error / o.tolerance)


def _no_visible_key(v: Variant, s: Setting) -> Outcome:
    if not v.support.cross:
        raise Unsupported(f"{v.name} needs Nq == Nk: no query without a visible key to test")
    n_q, n_k = s.n, s.n // 2
    r = _attention_run(v, "random", n_q, n_k, True, s)
    seen = visible(v, n_q, n_k, True, s.n_heads, s.params, r.out.device)
    empty = ~seen.any(-1) if seen is not None else torch.zeros(n_q, dtype=torch.bool, device=r.out.device)
    n_empty = int(empty.sum(-1).max())  # per head where the pattern differs per head
    empty = empty.expand(r.out.shape[:-1])  # (n_q,) or (heads, n_q) -> (batch, heads, n_q)
    note, blind = "", r.out[empty]
    if n_empty and torch.isfinite(blind).all() and blind.abs().max() > 0:
        note = f"; queries with no visible key give |o| up to {float(blind.abs().max()):.2g}, not 0"
    what = f"{_shape(n_q, n_k, True, s)}, {n_empty} queries with no visible key, against {_against(v)}"
    return _judge("no_visible_key", what, r, s, note)


def _attention_causality(v: Variant, s: Setting) -> Outcome:
    t = int(CAUSALITY_SPLIT * s.n)
    q, k, val = _draw("random", s.n, s.n, s)
    g = torch.Generator().manual_seed(s.seed + 1)
    k2, v2 = k.clone(), val.clone()
    k2[..., t:, :] += 3.0 * torch.randn(k2[..., t:, :].shape, generator=g, dtype=torch.float64)
    v2[..., t:, :] += 3.0 * torch.randn(v2[..., t:, :].shape, generator=g, dtype=torch.float64)
    (qd, kd, vd, k2d, v2d), rounded = _rounded((q, k, val, k2, v2), s)
    before = v.attention(qd, kd, vd, causal=True, **s.params)
    after = v.attention(qd, k2d, v2d, causal=True, **s.params)
    what = f"keys and values from position {t} of {s.n} changed"
    return _causality(before, after, t, s, what, logit_bound(*rounded[:2]), rounded[2])


def _causality(before, after, t: int, s: Setting, what: str, logit: float = 1.0, values=None) -> Outcome:
    """Outputs before t must stay as they were (within the tolerance), and some after t must move."""
    seq = -2 if before.dim() == 4 else 1  # attention (b, h, n, d) or a mixer's (b, n, d)
    head, tail = (lambda x: x.narrow(seq, 0, t)), (lambda x: x.narrow(seq, t, s.n - t))
    tol = tolerance(s.dtype, s.n, logit)
    unchanged = head(before).double()
    outcome = _verdict("causality", f"{what}: outputs before", head(after), unchanged, tol, s.dtype, values)
    if outcome.passed and relative_error(tail(after), tail(before)) <= tol:
        return Outcome("causality", "fail", f"{what}: no output from position {t} on changed either, so the "
                       "check saw nothing (are those keys ignored?)", outcome.error, tol)
    return outcome


def _attention_decode(v: Variant, s: Setting) -> Outcome:
    context = s.n - DECODE_STEPS
    (q, k, val), rounded = _rounded(_draw("random", s.n, s.n, s), s)
    state = v.prefill(k[..., :context, :], val[..., :context, :], capacity=s.n, **s.params)
    steps = []
    for t in range(context, s.n):
        o, state = v.decode(q[..., t:t + 1, :], k[..., t:t + 1, :], val[..., t:t + 1, :], state, **s.params)
        steps.append(o)
    ref = reference(v, *rounded, True, s.params)[..., context:, :]
    tol = tolerance(s.dtype, s.n, logit_bound(*rounded[:2]))
    what = (f"{DECODE_STEPS} tokens decoded after {context} of context{_grouping(s)}, "
            f"against {_against(v)} (full forward)")
    return _judge("decode", what, _Run(torch.cat(steps, dim=-2), ref, tol, rounded[2]), s)


# --- mixer-only families --------------------------------------------------------------------------------

def _kernel(v: Variant, check: str, s: Setting) -> Outcome:
    g = torch.Generator().manual_seed(s.seed)
    inputs = v.kernel_inputs(s.batch, s.n_heads, s.n, s.head_dim, g, dtype=s.dtype)
    on_device = {k: t.to(s.device) if torch.is_tensor(t) else t for k, t in inputs.items()}
    as64 = {k: t.double() if torch.is_tensor(t) else t for k, t in on_device.items()}
    return _verdict(check, f"{check} N={s.n}: kernel against kernel_reference", v.kernel(**on_device),
                    v.kernel_reference(**as64), tolerance(s.dtype, s.n), s.dtype)


def _mixers(v: Variant, s: Setting):
    """The block in the dtype, and its float64 twin (the same rounded weights), on the device."""
    d_model = s.n_heads * s.head_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        block = v.mixer(d_model, s.n_heads, causal=True, **s.params).eval()
    block = block.to(device=s.device, dtype=s.dtype)
    return block, copy.deepcopy(block).double()


def _sequence(s: Setting, seed_offset: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(s.seed + seed_offset)
    return torch.randn(s.batch, s.n, s.n_heads * s.head_dim, generator=g, dtype=torch.float64)


def _mixer_block(v: Variant, s: Setting) -> Outcome:
    block, twin = _mixers(v, s)
    (x,), (x64,) = _rounded((_sequence(s),), s)
    what = f"mixer N={s.n} causal: the block against itself in float64"
    return _verdict("mixer", what, block(x), twin(x64), tolerance(s.dtype, s.n), s.dtype)


def _mixer_causality(v: Variant, s: Setting) -> Outcome:
    block, _ = _mixers(v, s)
    t = int(CAUSALITY_SPLIT * s.n)
    x = _sequence(s)
    x2 = x.clone()
    x2[:, t:] += _sequence(s, 1)[:, t:]
    (xd, x2d), _ = _rounded((x, x2), s)
    return _causality(block(xd), block(x2d), t, s, f"inputs from position {t} of {s.n} changed")


def _mixer_decode(v: Variant, s: Setting) -> Outcome:
    block, twin = _mixers(v, s)
    if not hasattr(block, "prefill"):
        raise Unsupported(f"{v.name}'s mixer has no prefill/step")
    context = s.n - DECODE_STEPS
    (x,), (x64,) = _rounded((_sequence(s),), s)
    _, state = block.prefill(x[:, :context], capacity=s.n)
    steps = []
    for t in range(context, s.n):
        y, state = block.step(x[:, t:t + 1], state)
        steps.append(y)
    what = f"{DECODE_STEPS} tokens stepped after {context} of context, against the block's forward in float64"
    return _verdict("decode", what, torch.cat(steps, dim=1), twin(x64)[:, context:], tolerance(s.dtype, s.n),
                    s.dtype)


# --- dispatch -------------------------------------------------------------------------------------------

def applicable(v: Variant) -> tuple[str, ...]:
    """The checks that concern this kind of variant: attention's, or a mixer-only family's."""
    return ATTENTION_CHECKS if v.attention_fn is not None else MIXER_CHECKS


def _dispatch(v: Variant, check: str, s: Setting) -> Outcome:
    if v.attention_fn is None:
        if check in ("random", "long"):
            return _kernel(v, check, s)
        return {"mixer": _mixer_block, "causality": _mixer_causality, "decode": _mixer_decode}[check](v, s)
    if check in REFERENCE_KINDS:
        return _reference_kind(v, check, s)
    return {"cross": _cross, "no_visible_key": _no_visible_key, "causality": _attention_causality,
            "decode": _attention_decode}[check](v, s)


def run(v: Variant, check: str, s: Setting) -> Outcome:
    """Put variant `v` through one check. Unsupported (with the reason) where its declaration rules the
    check out; an exception from the variant propagates (the caller records it)."""
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; choose one of: {', '.join(CHECKS)}")
    if check not in applicable(v):
        kind = "a sequence mixer with no q, k, v" if v.attention_fn is None else "not a mixer-only family"
        return Outcome(check, "unsupported", f"does not apply: {v.name} is {kind}")
    causal = s.causal or check in CAUSAL_CHECKS
    if s.grouped and v.attention_fn is None:
        return Outcome(check, "unsupported", f"grouped KV heads (kv_heads={s.kv_heads}): {v.name} is a "
                       "sequence mixer with no KV heads")
    checked_kv_heads(s.n_heads, s.kv_heads)  # ValueError: a setting that cannot exist
    ok, reason = v.supports(s.device, s.dtype, s.head_dim, causal, grouped=s.grouped)
    if not ok:
        return Outcome(check, "unsupported", reason if not s.grouped else f"kv_heads={s.kv_heads}: {reason}")
    try:
        with torch.no_grad():
            return _dispatch(v, check, dataclasses.replace(s, causal=causal))
    except Unsupported as e:
        return Outcome(check, "unsupported", str(e))
