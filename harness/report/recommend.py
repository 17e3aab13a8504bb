"""Which variant to use at a given length under given limits: a ranking with its reasons.

Every variant in the results is either ranked (fastest first, at the requested length, mode and
causality) or eliminated with each constraint it fails. When the results cannot answer a question at
all (no throughput rows at that length, no accuracy rows for --min-accuracy, no GPU memory figures for
--memory-gb), `MissingData` says which suite to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report import data

MODES = {"train": ("fwd_bwd",), "infer": ("fwd", "decode")}


class MissingData(ValueError):
    """The results lack what the question needs; the message names the suite to run."""


@dataclass(frozen=True)
class Request:
    seq_len: int
    mode: str = "infer"  # train: forward+backward rows; infer: forward (and decode, when measured)
    causal: bool = False
    memory_gb: float | None = None  # GiB of peak memory (the benchmark's batch at this length)
    latency_ms: float | None = None  # one call at this length: forward (infer) or forward+backward (train)
    min_accuracy: float | None = None  # mean best-LR accuracy over the learned tasks, 0..1
    dtype: str | None = None
    results: str = "RESULTS_DIR"  # for the suggested commands

    def constraints(self) -> list[str]:
        limits = [(self.memory_gb, "peak memory <= {:g} GiB"), (self.latency_ms, "latency <= {:g} ms"),
                  (self.min_accuracy, "accuracy >= {:g}")]
        return [text.format(value) for value, text in limits if value is not None]


@dataclass
class Ranked:
    variant: str
    latency_ms: float
    tokens_per_s: float
    memory_gib: float | None
    accuracy: float | None
    tasks: str
    decode_ms: float | None
    exact: bool | None
    noisy: bool = False  # a measurement behind latency_ms kept a median interval wider than +-2%
    interval: float = 0.0  # half-width of that median's 95% interval, relative (0: not measured)

    def figures(self) -> str:
        parts = [f"{self.latency_ms:.3g} ms", f"{_si(self.tokens_per_s)} tokens/s"]
        if self.memory_gib is not None:
            parts.append(f"peak {self.memory_gib:.3g} GiB")
        if self.decode_ms is not None:
            parts.append(f"decode {self.decode_ms:.3g} ms/step")
        if self.accuracy is not None:
            parts.append(f"accuracy {self.accuracy:.3f} ({self.tasks})")
        if self.exact is not None:
            parts.append("exact" if self.exact else "approximate")
        if self.noisy:
            parts.append("noisy")
        return ", ".join(parts)


@dataclass
class Recommendation:
    request: Request
    setting: str  # the measured configuration the figures come from
    ranked: list[Ranked] = field(default_factory=list)
    eliminated: dict[str, list[str]] = field(default_factory=dict)  # variant -> every constraint it fails
    notes: list[str] = field(default_factory=list)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def _suggest(suite: str, request: Request, extra: str = "") -> str:
    return f"attnbench run --suite {suite}{extra} --out {request.results}"


def recommend(rows: pd.DataFrame, request: Request) -> Recommendation:
    if request.mode not in MODES:
        raise ValueError(f"unknown mode {request.mode!r}; use train or infer")
    tp = data.throughput(rows)
    main_mode = MODES[request.mode][0]
    at_n, dtype, level, device = _select(tp, request, main_mode)
    where = (f"N = {request.seq_len}, {data.MODE_NAMES[main_mode]}, "
             f"{'causal' if request.causal else 'non-causal'}, {dtype}, {level} level")
    setting = f"{where}, on {device}"
    batch = at_n.loc[at_n.status == "ok", "batch"].median()
    if np.isfinite(batch):
        setting += f", batch {batch:g}"
    rec = Recommendation(request, setting)
    decode = _decode_latency(tp, request, dtype, level) if request.mode == "infer" else {}
    accuracy = _accuracy(rows, request)
    main = at_n[at_n["mode"] == main_mode]
    memory = _memory(at_n, request)
    for variant in sorted(set(tp.variant) | set(accuracy.index)):
        reasons, figures = _judge(variant, main[main.variant == variant], memory.get(variant), accuracy,
                                  request, where)
        if reasons:
            rec.eliminated[variant] = reasons
        else:
            rec.ranked.append(Ranked(variant, decode_ms=decode.get(variant), **figures))
    rec.ranked.sort(key=lambda r: r.latency_ms)
    rec.notes += noise_notes(rec.ranked)
    if decode:
        rec.notes.append("decode: latency of one generation step with a context of N (KV cache or state)")
    smoke = data.smoke_reasons(rows)
    parts = [f"throughput: {', '.join(smoke['throughput'])}"] if smoke["throughput"] else []
    if smoke["learned"] and not accuracy.empty:
        parts.append(f"learned tasks: {', '.join(smoke['learned'])}")
    if parts:
        rec.notes.append(f"smoke run ({'; '.join(parts)}): these figures show the pipeline works, not which "
                         f"architecture to choose")
    return rec


def noise_notes(ranked: list[Ranked]) -> list[str]:
    """Say when the ranking rests on noisy measurements, or on neighbours within each other's noise."""
    notes = []
    noisy = [r for r in ranked if r.noisy]
    if noisy:
        notes.append("the ranking rests on noisy measurements (median interval wider than +-2% after "
                     "re-measuring): " + ", ".join(f"{r.variant} (+-{r.interval:.0%})" for r in noisy))
    ties = [(a, b) for a, b in zip(ranked, ranked[1:], strict=False) if (a.interval or b.interval)
            and a.latency_ms * (1 + a.interval) >= b.latency_ms * (1 - b.interval)]
    if ties:
        notes.append("within noise of each other, so their order is not established: "
                     + "; ".join(f"{a.variant} and {b.variant}" for a, b in ties))
    return notes


def _select(tp: pd.DataFrame, request: Request, main_mode: str):
    """Rows of the requested length, mode(s), causality and dtype; the level that covers most variants."""
    run = _suggest("throughput", request, f" -n {request.seq_len}")
    if tp.empty:
        raise MissingData(f"no throughput results: run `{run}`")
    if tp.device_name.nunique() > 1:
        raise ValueError(f"results from several devices ({', '.join(sorted(tp.device_name.unique()))}); "
                         "pass the run directory of one")
    rows = tp[tp["mode"].isin(MODES[request.mode]) & (tp.causal == request.causal)]
    what = f"{data.MODE_NAMES[main_mode]} {'causal' if request.causal else 'non-causal'}"
    if not (rows["mode"] == main_mode).any():
        other = tp[(tp["mode"] == main_mode) & (tp.causal != request.causal)]
        hint = f"; the results have {'non-causal' if request.causal else 'causal'} ones: " + (
            "drop --causal" if request.causal else "pass --causal") if not other.empty else ""
        raise MissingData(f"no {what} throughput rows: run `{run}`{hint}")
    if request.dtype is not None:
        rows = rows[rows.dtype == request.dtype]
        if rows.empty:
            raise MissingData(f"no {what} throughput rows in {request.dtype}: "
                              f"run `{run} --dtype {request.dtype}`")
    at_n = rows[rows.seq_len == request.seq_len]
    if not (at_n["mode"] == main_mode).any():
        measured = ", ".join(str(n) for n in sorted(rows.seq_len.unique()))
        raise MissingData(f"no {what} throughput rows at N = {request.seq_len} (measured: {measured}): "
                          f"run `{run}`")
    dtype = request.dtype or data.preferred_dtype(at_n[at_n["mode"] == main_mode].dtype)
    at_n = at_n[at_n.dtype == dtype]
    main = at_n[(at_n["mode"] == main_mode) & (at_n.status == "ok")]
    covered = main.groupby("level").variant.nunique() if not main.empty else at_n.groupby("level").size()
    level = covered[covered == covered.max()].sort_index().index[0]
    at_n = at_n[at_n.level == level]
    return at_n, dtype, level, data.short_device(at_n.device_name.iloc[0])


def _memory(at_n: pd.DataFrame, request: Request) -> dict[str, float]:
    """Peak memory per variant in GiB: the larger of its ok rows (forward and decode for inference).

    Reserved memory when measured (what the allocator holds: closer to what the device must have).
    """
    ok = at_n[at_n.status == "ok"]
    peak = ok.mem_reserved_peak_bytes.fillna(ok.mem_alloc_peak_bytes)
    if request.memory_gb is not None and ok.shape[0] and peak.isna().all():
        raise MissingData("--memory-gb needs peak GPU memory, which these throughput rows lack (a CPU run?): "
                          f"run `{_suggest('throughput', request, f' --device cuda -n {request.seq_len}')}`")
    return (peak / data.GIB).groupby(ok.variant).max().dropna().to_dict()


def _decode_latency(tp: pd.DataFrame, request: Request, dtype: str, level: str) -> dict[str, float]:
    rows = tp[(tp["mode"] == "decode") & (tp.seq_len == request.seq_len) & (tp.status == "ok")
              & (tp.dtype == dtype) & (tp.level == level)]
    return rows.groupby("variant").latency_ms.median().to_dict()


def _accuracy(rows: pd.DataFrame, request: Request) -> pd.DataFrame:
    quality = data.quality(data.best_lr(data.learned(rows))).set_index("variant")
    if request.min_accuracy is not None and quality.empty:
        raise MissingData(f"--min-accuracy needs accuracy results: run `{_suggest('accuracy', request)}`")
    return quality


def _judge(variant, main: pd.DataFrame, memory, accuracy: pd.DataFrame, request: Request, where: str):
    """(every failed constraint, figures when there is none)."""
    ok = main[main.status == "ok"]
    if ok.empty:
        if main.empty:
            return [f"not measured at {where}"], None
        failed = main.iloc[0]
        reason = f": {failed.reason}" if isinstance(failed.reason, str) and failed.reason else ""
        if failed.status == "unsupported":
            return [f"unsupported{reason}"], None
        status = "out of memory" if failed.status == "oom" else failed.status
        return [f"{status} at N = {request.seq_len}{reason}"], None
    latency, tokens = ok.latency_ms.median(), ok.tokens_per_s.median()
    quality = accuracy.accuracy.get(variant)
    reasons = []
    if request.memory_gb is not None:
        if memory is None:
            reasons.append("peak memory not measured")
        elif memory > request.memory_gb:
            reasons.append(f"peak memory {memory:.3g} GiB > {request.memory_gb:g} GiB")
    if request.latency_ms is not None and latency > request.latency_ms:
        reasons.append(f"latency {latency:.3g} ms > {request.latency_ms:g} ms")
    if request.min_accuracy is not None:
        if quality is None:
            reasons.append(f"no accuracy results (run `{_suggest('accuracy', request, f' -v {variant}')}`)")
        elif quality < request.min_accuracy:
            reasons.append(f"accuracy {quality:.3f} < {request.min_accuracy:g} "
                           f"({accuracy.tasks.get(variant)})")
    exact = ok.exact.iloc[0] if "exact" in ok and pd.notna(ok.exact.iloc[0]) else None
    noisy = bool((ok.noisy > 0).any()) if "noisy" in ok else False
    interval = ok.median_ci.max() if "median_ci" in ok else np.nan
    figures = {"latency_ms": float(latency), "tokens_per_s": float(tokens), "memory_gib": memory,
               "accuracy": None if quality is None else float(quality),
               "tasks": accuracy.tasks.get(variant, ""), "exact": None if exact is None else bool(exact),
               "noisy": noisy, "interval": float(interval) if np.isfinite(interval) else 0.0}
    return reasons, figures


def render(rec: Recommendation) -> str:
    """Plain text for the terminal: the ranking with its figures, then why each other variant is out."""
    lines = [f"Recommendation for {rec.setting}"]
    lines.append("Constraints: " + ("; ".join(rec.request.constraints()) or "none (ranked by latency)"))
    if rec.ranked:
        lines.append("Ranked, fastest first:")
        width = max(len(r.variant) for r in rec.ranked)
        lines += [f"  {i}. {r.variant:<{width}}  {r.figures()}" for i, r in enumerate(rec.ranked, 1)]
    else:
        lines.append("No variant meets every constraint.")
    if rec.eliminated:
        lines.append("Eliminated:")
        width = max(len(v) for v in rec.eliminated)
        lines += [f"  {v:<{width}}  {'; '.join(reasons)}" for v, reasons in sorted(rec.eliminated.items())]
    lines += [f"Note: {note}" for note in rec.notes]
    return "\n".join(lines)
