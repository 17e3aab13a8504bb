"""A serving question in a product's terms, answered per variant from the throughput rows: memory per
sequence at the context, how many concurrent users fit, time to first token and the per-user decode rate.

Every figure says where it comes from: `measured` at the context, or `extrapolated` / `interpolated`
along N from the lengths that were measured, with the 95% interval of the scaling exponent
(harness.report.analysis: `fit_tail` picks the lengths, `fit_with_interval` fits log value = k log N + c).
A prediction starts from the fitted length nearest the context and carries the exponent's interval there.

Figures, per sequence and per attention layer of the run's shape (its heads x head_dim, the rows' level):

- prefill: forward latency / batch at N (constant-token sweeps run several prompts at once below their
  cap: per prompt is the latency shared out); time to first token = prefill x layers.
- decode: a decode step's latency / batch at a context of N (the measured time per sequence); a step at
  batch B is taken as B times that (no gain from batching assumed: on a CPU the batch x heads slices are
  what the threads split); tokens/s per user = 1000 / (B x per-sequence ms x layers).
- state: the decode state per sequence after prefill at N, the KV cache for attention, the recurrent
  state for the others: `kv_cache_bytes` + `state_bytes` when the rows have them (GQA runs), else
  `decode_state_bytes_per_seq`; x layers; with --kv-heads, rows measured at those KV heads, else scaled
  by kv_heads / the rows' KV heads (a KV cache and a per-head state are linear in the heads; so is a
  mixer's state in its width). Rows of a model preset's shape (`Product.model`) hold a mixer-only
  family's state at the model's width: it has no KV heads and is not scaled.
- prefill peak: one prompt's peak memory of one layer (forward rows' `mem_peak_bytes` / batch: torch's
  allocator peak on CUDA, its traced CPU allocator peak on a CPU), held once beside the users' states.

Users that fit: floor((memory - prefill peak) / (state per sequence x layers)). Weights and the rest of
the model are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report import analysis, data


@dataclass(frozen=True)
class Figure:
    """A value at the context with its provenance: measured there, or fitted along N (low, high: the
    exponent's 95% interval carried to the context)."""

    value: float
    source: str  # 'measured at N = 16384', 'extrapolated from N = 4096-65536 (k = 1.00 [0.99, 1.01])'
    low: float | None = None
    high: float | None = None

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")

    def scaled(self, factor: float, why: str = "") -> Figure:
        low, high = (None if v is None else v * factor for v in (self.low, self.high))
        return Figure(self.value * factor, self.source + why, low, high)

    def text(self, unit: str) -> str:
        """'748 ms [223, 2,500]': the interval left out where it rounds to the value."""
        value = number(self.value)
        bounds = [number(v) for v in (self.low, self.high) if v is not None]
        interval = f" [{bounds[0]}, {bounds[1]}]" if len(bounds) == 2 and bounds != [value, value] else ""
        return f"{value}{unit}{interval}"


def number(value: float) -> str:
    """Three significant digits, without an exponent: 0.0123, 12.3, 1,230, 1,234,567."""
    if not math.isfinite(value) or abs(value) < 1000:
        return f"{value:.3g}"
    return f"{float(f'{value:.3g}'):,.0f}"


@dataclass(frozen=True)
class Product:
    """The product's numbers: a context, how many sequences are served at once, and its limits."""

    context: int
    users: int | None = None  # concurrent users, each holding a sequence, decoded together
    batch: int | None = None  # the same count named as a decode batch (one or the other)
    memory_gb: float | None = None  # GiB for the users' states and one prompt's prefill
    ttft_ms: float | None = None
    tokens_per_s_per_user: float | None = None
    kv_heads: int | None = None
    layers: int = 1
    model: str | None = None  # a preset whose rows these are (harness.model_presets)

    @property
    def sequences(self) -> int:
        return self.users or self.batch or 1

    def constraints(self) -> list[str]:
        who = "users" if self.users else "batch"
        limits = [(self.memory_gb, f"{self.sequences} {who} in {{:g}} GiB"),
                  (self.ttft_ms, "TTFT <= {:g} ms"),
                  (self.tokens_per_s_per_user, "decode >= {:g} tokens/s per user")]
        return [text.format(value) for value, text in limits if value is not None]


@dataclass
class Serving:
    """One variant's answer: figures (None where the rows cannot give one, with `gaps` saying why)."""

    variant: str
    family: str
    prefill_ms: Figure | None = None  # time to first token: one prompt at the context, x layers
    decode_ms: Figure | None = None  # one decode step at the product's batch, x layers
    state_bytes: Figure | None = None  # per sequence, x layers (KV heads scaled)
    prefill_peak_bytes: Figure | None = None  # one prompt, one layer
    state_kind: str = ""  # 'grows with N' (a KV cache) or 'constant in N' (a recurrent state)
    users_fit: int | None = None
    gaps: tuple[str, ...] = ()

    @property
    def tokens_per_s_per_user(self) -> Figure | None:
        d = self.decode_ms
        if d is None:
            return None
        inverse = (None if v is None or v <= 0 else 1e3 / v for v in (d.high, d.low))
        return Figure(1e3 / d.value, d.source, *inverse)


# The columns an answer reads (the others are left behind: every filter copies what it keeps).
COLUMNS = ("variant", "family", "exact", "status", "reason", "mode", "level", "dtype", "device",
           "device_name", "seq_len", "batch", "n_heads", "kv_heads", "head_dim", "latency_ms", "median_ci",
           "noisy", "mem_peak_bytes", "decode_state_bytes_per_seq", "kv_cache_bytes", "state_bytes", "model")


def rows_for(tp: pd.DataFrame, causal: bool, dtype: str | None) -> tuple[pd.DataFrame, str, str]:
    """Forward and decode sweep rows of one dtype and level: the level where most variants decoded (then
    where most ran forward), so that every figure of the answer is of one level. (rows, dtype, level)."""
    rows = tp[tp["mode"].isin(("fwd", "decode")) & (tp.causal == causal)]
    rows = rows[[c for c in COLUMNS if c in rows.columns]]
    if dtype is not None:
        rows = rows[rows.dtype == dtype]
    if rows.empty:
        return rows, dtype or "", ""
    if dtype is None:  # the dtype decode ran in (a CPU decodes in fp32 only), else the preferred one
        decoding = rows[rows["mode"] == "decode"]
        dtype = data.preferred_dtype((decoding if not decoding.empty else rows).dtype)
    rows = rows[rows.dtype == dtype]
    ok = rows[rows.status == "ok"]
    decoded = ok[ok["mode"] == "decode"].groupby("level").variant.nunique()
    forward = ok[ok["mode"] == "fwd"].groupby("level").variant.nunique()
    cover = pd.DataFrame({"decode": decoded, "fwd": forward}).fillna(0)
    if cover.empty:
        return rows, dtype, str(rows.level.iloc[0])
    level = cover.sort_values(["decode", "fwd"], ascending=False, kind="stable").index[0]
    return rows[rows.level == level], dtype, str(level)


def at_context(values: pd.DataFrame, context: int, fit_lengths=None) -> Figure | None:
    """The value at `context` from (seq_len, value, batch) rows: their median where measured there, else
    from the scaling fit (None with fewer than analysis.MIN_FIT_POINTS lengths)."""
    values = values.dropna(subset=["value"])
    values = values[values.value > 0]
    if values.empty:
        return None
    if (values.seq_len == context).any():
        return Figure(float(values.value[values.seq_len == context].median()), f"measured at N = {context}")
    per_n = values.groupby("seq_len").agg(value=("value", "median"), batch=("batch", "max")).reset_index()
    lengths = fit_lengths(per_n) if fit_lengths else sorted(per_n.seq_len)
    fitted = per_n[per_n.seq_len.isin(lengths)]
    fit = analysis.fit_with_interval(fitted.seq_len, fitted.value)
    if fit is None:
        measured = ", ".join(str(n) for n in sorted(per_n.seq_len))
        return Figure(math.nan, f"not measured at N = {context}; {len(per_n)} length(s) ({measured}), "
                                f"too few to fit")
    k, k_low, k_high, _ = fit
    anchor = fitted.iloc[int(np.argmin(np.abs(np.log(fitted.seq_len / context))))]
    ratio = context / anchor.seq_len
    bounds = sorted(anchor.value * ratio**e for e in (k_low, k_high))
    inside = fitted.seq_len.min() < context < fitted.seq_len.max()
    span = f"{int(fitted.seq_len.min())}-{int(fitted.seq_len.max())}"
    how = (f"{'interpolated' if inside else 'extrapolated'} from N = {span} "
           f"({len(fitted)} lengths; k = {k:.2f} [{k_low:.2f}, {k_high:.2f}])")
    return Figure(float(anchor.value * ratio**k), how, float(bounds[0]), float(bounds[1]))


def _series(rows: pd.DataFrame, value: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({"seq_len": rows.seq_len, "value": value, "batch": rows.batch.fillna(1)})


def _per_batch(rows: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(rows[column], errors="coerce") / rows.batch.fillna(1).clip(lower=1)


def state_per_sequence(decode: pd.DataFrame) -> pd.Series:
    """Bytes one sequence's decode state holds: `kv_cache_bytes` + `state_bytes` (each already per
    sequence: suites.throughput.measuring) where the rows have them, else `decode_state_bytes_per_seq`."""
    state = pd.to_numeric(decode.get("decode_state_bytes_per_seq"), errors="coerce")
    if "kv_cache_bytes" in decode or "state_bytes" in decode:
        parts = [pd.to_numeric(decode[c], errors="coerce") for c in ("kv_cache_bytes", "state_bytes")
                 if c in decode]
        split = sum(p.fillna(0) for p in parts).where(pd.concat(parts, axis=1).notna().any(axis=1))
        state = split.fillna(state) if state is not None else split
    return state if state is not None else pd.Series(np.nan, index=decode.index)


def kv_heads_of(rows: pd.DataFrame) -> pd.Series:
    """The KV heads each row measured: `kv_heads` where recorded (GQA runs), else its heads."""
    heads = pd.to_numeric(rows.n_heads, errors="coerce")
    if "kv_heads" in rows:
        return pd.to_numeric(rows.kv_heads, errors="coerce").fillna(heads)
    return heads


def serve(rows: pd.DataFrame, variant: str, family: str, product: Product) -> Serving:
    """The answer for one variant from its forward and decode rows of one dtype and level."""
    ok = rows[(rows.variant == variant) & (rows.status == "ok")]
    answer = Serving(variant, family)
    gaps = []
    forward, decode = ok[ok["mode"] == "fwd"], ok[ok["mode"] == "decode"]
    if product.kv_heads is not None:
        decode = _at_kv_heads(decode, product.kv_heads)
    n = product.context
    layers = f"; x {product.layers} layers" if product.layers > 1 else ""
    prefill = at_context(_series(forward, _per_batch(forward, "latency_ms")), n, analysis.fit_tail)
    answer.prefill_ms = _usable(prefill, "prefill", gaps)
    if answer.prefill_ms is not None:
        answer.prefill_ms = answer.prefill_ms.scaled(product.layers, layers)
    peak = at_context(_series(forward, _per_batch(forward, "mem_peak_bytes")), n)
    answer.prefill_peak_bytes = _usable(peak, "prefill memory", gaps)
    step = at_context(_series(decode, _per_batch(decode, "latency_ms")), n, analysis.fit_tail)
    answer.decode_ms = _usable(step, "decode", gaps)
    if answer.decode_ms is not None:
        b = product.sequences
        batch = f"; x {b} sequences a step (the time per sequence as measured)" if b > 1 else ""
        answer.decode_ms = answer.decode_ms.scaled(b * product.layers, batch + layers)
    state = at_context(_series(decode, state_per_sequence(decode)), n)
    answer.state_bytes = _usable(state, "decode state", gaps)
    if answer.state_bytes is not None:
        answer.state_kind = _state_kind(decode)
        answer.state_bytes = answer.state_bytes.scaled(product.layers, layers)
        if not (product.model and _without_kv_heads(decode)):
            answer.state_bytes = _scale_kv_heads(answer.state_bytes, decode, product.kv_heads)
    answer.users_fit = users_fit(answer, product.memory_gb)
    answer.gaps = tuple(gaps)
    return answer


def _usable(figure: Figure | None, what: str, gaps: list[str]) -> Figure | None:
    if figure is None:
        gaps.append(f"{what} not measured")
        return None
    if not math.isfinite(figure.value):
        gaps.append(f"{what} {figure.source}")
        return None
    return figure


def _at_kv_heads(decode: pd.DataFrame, kv_heads: int) -> pd.DataFrame:
    """Rows measured at the requested KV heads when there are any, else all (scaled later)."""
    at = decode[kv_heads_of(decode) == kv_heads]
    return at if not at.empty else decode


def _without_kv_heads(decode: pd.DataFrame) -> bool:
    """Rows of a model preset's plan whose recurrent state has no KV heads: the plan gives every attention
    case the model's KV heads and a mixer-only family none (suites.throughput.planning), so a recurrent
    state with a null `kv_heads` there is a mixer's, at the model's width already: not scaled."""
    kv = decode["kv_heads"] if "kv_heads" in decode else pd.Series(np.nan, index=decode.index)
    cache = pd.to_numeric(decode["kv_cache_bytes"], errors="coerce") if "kv_cache_bytes" in decode else None
    recurrent = cache is None or cache.isna().all()
    return bool(kv.isna().all() and recurrent)


def _scale_kv_heads(state: Figure, decode: pd.DataFrame, kv_heads: int | None) -> Figure:
    if kv_heads is None:
        return state
    measured = kv_heads_of(decode).dropna()
    if measured.empty or measured.nunique() > 1 or int(measured.iloc[0]) == kv_heads:
        return state
    heads = int(measured.iloc[0])
    return state.scaled(kv_heads / heads, f"; scaled from {heads} to {kv_heads} KV heads")


def _state_kind(decode: pd.DataFrame) -> str:
    """'grows with N' (a KV cache, or a state that keeps the prompt) or 'constant in N'."""
    state = state_per_sequence(decode)
    per_n = state.groupby(decode.seq_len).median().dropna()
    if len(per_n) < 2:
        return ""
    return "grows with N" if per_n.iloc[-1] > 1.5 * per_n.iloc[0] else "constant in N"


def users_fit(answer: Serving, memory_gb: float | None) -> int | None:
    """How many sequences' states fit beside one prompt's prefill peak (None without the figures)."""
    if memory_gb is None or answer.state_bytes is None or answer.state_bytes.value <= 0:
        return None
    room = memory_gb * data.GIB - (answer.prefill_peak_bytes.value if answer.prefill_peak_bytes else 0.0)
    return max(0, math.floor(room / answer.state_bytes.value * (1 + 1e-9)))  # a fit's rounding: not one less
