"""Which variant to use under given limits: a ranking with its reasons.

Every variant in the results is either ranked (fastest first) or eliminated with each constraint it fails.

- To serve (`mode="infer"`), the question is a product's (harness.report.serving): a context, users or a
  batch, memory, time to first token, tokens/s per user, KV heads. Each figure is measured at the context
  or extrapolated along N (the answer names the lengths and the exponent's interval).
- A model preset (`model`: harness.model_presets) answers at that model's shape: the rows measured at its
  per-layer attention (`attnbench run --suite throughput --model NAME`), its layers and KV heads (an
  explicit `layers` or `kv_heads` overrides them). Every figure that is one layer's measurement times the
  layers is stated so in the answer. Without a preset, rows of a preset's shape are not mixed with the
  grid's.
- To train, the figures are forward+backward at the requested length, as measured there.

Accuracy is compared on equal terms (harness.report.equal_terms): per task over the conditions every
ranked variant ran, and a summary over the tasks every one of them ran; a variant missing a task is
marked, never averaged over fewer. When the results cannot answer a question at all (no throughput rows,
no accuracy rows for --min-accuracy, no common task), `MissingData` says which suite to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness import model_presets
from harness.report import data, equal_terms, serving
from harness.report.equal_terms import EqualTerms
from harness.report.serving import Product, Serving

MODES = {"train": ("fwd_bwd",), "infer": ("fwd", "decode")}
# The columns a recommendation reads (data.Results.load(..., columns=COLUMNS)); the store adds the
# ones every row has (suite, variant, device, dtype, status, ...).
COLUMNS = (*data.THROUGHPUT_COLUMNS, "kind", "reason", "profile", "kv_heads", "kv_cache_bytes", "state_bytes",
           "model", "model_layers",
           *data.LEARNED_COLUMNS, *data.TRAINING_KEYS, *equal_terms.CONDITION_KEYS, "task_params",
           "example_accuracy", "training_id", "valid_accuracy", "lr_used", "train_seq_len", "exact")


class MissingData(ValueError):
    """The results lack what the question needs; the message names the suite to run."""


@dataclass(frozen=True)
class Request:
    seq_len: int  # the context to serve (infer) or the length to train at
    mode: str = "infer"  # train: forward+backward rows; infer: forward and decode rows (a serving question)
    causal: bool = False
    memory_gb: float | None = None  # infer: GiB for the users' states; train: peak memory of one call
    latency_ms: float | None = None  # train: one forward+backward call at this length
    min_accuracy: float | None = None  # summary accuracy over the tasks every ranked variant ran, 0..1
    dtype: str | None = None
    results: str = "RESULTS_DIR"  # for the suggested commands
    users: int | None = None
    batch: int | None = None
    ttft_ms: float | None = None
    tokens_per_s_per_user: float | None = None
    kv_heads: int | None = None  # None: the model's, else the rows'
    layers: int | None = None  # None: the model's, else 1 (the answer is per layer)
    model: str | None = None  # a preset name (harness.model_presets)

    def __post_init__(self):
        if self.users is not None and self.batch is not None:
            raise ValueError("give --users or --batch, not both (each is the number of sequences served "
                             "at once)")
        if self.model is not None:
            model_presets.preset(self.model)  # ValueError naming the presets
        serving_only = {"--users": self.users, "--batch": self.batch, "--ttft-ms": self.ttft_ms,
                        "--tokens-per-s-per-user": self.tokens_per_s_per_user, "--kv-heads": self.kv_heads,
                        "--model": self.model}
        given = [name for name, value in serving_only.items() if value is not None]
        if self.mode == "train" and given:
            raise ValueError(f"{given[0]} is a serving figure: drop --mode train")
        if self.mode == "infer" and self.latency_ms is not None:
            raise ValueError("--latency-ms limits one training call (--mode train); to serve, use --ttft-ms")

    @property
    def shape(self) -> model_presets.ModelShape | None:
        return None if self.model is None else model_presets.preset(self.model)

    @property
    def n_layers(self) -> int:
        """The layers the per-layer figures are multiplied by: --layers, else the model's, else 1."""
        return self.layers or (self.shape.n_layers if self.shape else 1)

    @property
    def n_kv_heads(self) -> int | None:
        """The KV heads the states are read at: --kv-heads, else the model's, else the rows' (None)."""
        return self.kv_heads or (self.shape.kv_heads if self.shape else None)

    def product(self) -> Product:
        return Product(self.seq_len, self.users, self.batch, self.memory_gb, self.ttft_ms,
                       self.tokens_per_s_per_user, self.n_kv_heads, self.n_layers, self.model)

    def layers_statement(self) -> str | None:
        """Which figures are one layer's measurement x the layers, and where the layers come from."""
        if self.n_layers == 1:
            return None
        if self.layers:
            overridden = self.shape is not None and self.shape.n_layers != self.layers
            origin = f"--layers {self.layers}" + (f", over model {self.model}'s {self.shape.n_layers}"
                                                   if overridden else "")
        else:
            origin = f"model {self.shape.describe()}"
        return (f"TTFT, decode time per token (so tokens/s per user) and state per sequence are one "
                f"attention layer's measured figure x {self.n_layers} layers ({origin}); users that fit "
                f"divide the memory by that {self.n_layers}-layer state; the model's MLPs, embeddings "
                f"and weights are not counted")

    def constraints(self) -> list[str]:
        if self.mode == "infer":
            limits = self.product().constraints()
        else:
            limits = [text.format(value) for value, text in (
                (self.memory_gb, "peak memory <= {:g} GiB"), (self.latency_ms, "latency <= {:g} ms"))
                if value is not None]
        return limits + ([f"accuracy >= {self.min_accuracy:g}"] if self.min_accuracy is not None else [])


@dataclass
class Ranked:
    variant: str
    latency_ms: float  # train: one forward+backward call; infer: time to first token
    tokens_per_s: float
    memory_gib: float | None
    accuracy: float | None  # the summary over the tasks every ranked variant ran
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
    serving: dict[str, Serving] = field(default_factory=dict)  # infer: every variant with forward rows
    accuracy: EqualTerms | None = None  # over the variants the other constraints leave


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
    _one_device(tp, request)
    rec = _serve(rows, tp, request) if request.mode == "infer" else _train(rows, tp, request)
    smoke = data.smoke_reasons(rows)
    parts = [f"throughput: {', '.join(smoke['throughput'])}"] if smoke["throughput"] else []
    if smoke["learned"] and rec.accuracy is not None and rec.accuracy.summary:
        parts.append(f"learned tasks: {', '.join(smoke['learned'])}")
    if parts:
        rec.notes.append(f"smoke run ({'; '.join(parts)}): these figures show the pipeline works, not which "
                         f"architecture to choose")
    return rec


def _one_device(tp: pd.DataFrame, request: Request) -> None:
    if tp.empty:
        run = _suggest("throughput", request, f" -n {request.seq_len}")
        raise MissingData(f"no throughput results: run `{run}`")
    if tp.device_name.nunique() > 1:
        raise ValueError(f"results from several devices ({', '.join(sorted(tp.device_name.unique()))}); "
                         "pass the run directory of one")


# --- serving: a product's question ------------------------------------------------------------------------

def _serve(rows: pd.DataFrame, tp: pd.DataFrame, request: Request) -> Recommendation:
    tp = model_rows(tp, request)
    chosen, dtype, level = serving.rows_for(tp, request.causal, request.dtype)
    forward = chosen[chosen["mode"] == "fwd"] if not chosen.empty else chosen
    what = f"forward {'causal' if request.causal else 'non-causal'}"
    run = _suggest("throughput", request, f" -n {request.seq_len}")
    if forward.empty:
        other = tp[(tp["mode"] == "fwd") & (tp.causal != request.causal)]
        hint = (f"; the results have {'non-causal' if request.causal else 'causal'} ones: "
                + ("drop --causal" if request.causal else "pass --causal")) if not other.empty else ""
        where = f" in {request.dtype}" if request.dtype else ""
        raise MissingData(f"no {what} throughput rows{where}: run `{run}"
                          f"{f' --dtype {request.dtype}' if request.dtype else ''}`{hint}")
    product = request.product()
    rec = Recommendation(request, _setting(forward, dtype, level, request))
    families = tp.groupby("variant").family.first()
    passing = []
    for variant in sorted(set(tp.variant)):
        own = forward[forward.variant == variant]
        if not (own.status == "ok").any():
            rec.eliminated[variant] = [_failure(own, request, f"{level} level, {dtype}")]
            continue
        answer = serving.serve(chosen, variant, str(families.get(variant, "")), product)
        rec.serving[variant] = answer
        reasons = _product_reasons(answer, product)
        if reasons:
            rec.eliminated[variant] = reasons
        else:
            passing.append(variant)
    rec.accuracy = _judge_accuracy(rows, passing, request, rec.eliminated)
    for variant in [v for v in passing if v not in rec.eliminated]:
        rec.ranked.append(_ranked(variant, rec.serving[variant], forward, rec.accuracy, request))
    rec.ranked.sort(key=lambda r: r.latency_ms)
    statement = request.layers_statement()
    rec.notes[:0] = [statement] if statement else []
    rec.notes += noise_notes(rec.ranked) + _serving_notes(forward, rec, product)
    return rec


def model_rows(tp: pd.DataFrame, request: Request) -> pd.DataFrame:
    """The throughput rows a serving answer reads: those measured at the request's model preset (none:
    MissingData naming the run to make); without a preset, the rows of no preset, else those of the one
    preset the run measured (several: ValueError, pass --model)."""
    model = tp["model"] if "model" in tp else pd.Series(None, index=tp.index, dtype=object)
    if request.model is not None:
        name = request.shape.name
        if not (model == name).any():
            measured = sorted(set(model.dropna()))
            also = f" (this run measured model {', '.join(measured)})" if measured else ""
            raise MissingData(f"no throughput rows at model {name}'s shape{also}: run "
                              f"`{_suggest('throughput', request, f' --model {name}')}`")
        return tp[model == name]
    if model.isna().any():
        return tp[model.isna()]
    presets = sorted(set(model.dropna()))
    if len(presets) > 1:
        raise ValueError(f"rows of several model presets ({', '.join(presets)}): pass --model")
    return tp


def _setting(forward: pd.DataFrame, dtype: str, level: str, request: Request) -> str:
    heads, head_dim = (int(forward[c].median()) for c in ("n_heads", "head_dim"))
    layers = f" x {request.n_layers} layers" if request.n_layers > 1 else ""
    presets = sorted(set(forward["model"].dropna())) if "model" in forward else []
    model = f" (model {presets[0]})" if len(presets) == 1 else ""
    return (f"context N = {request.seq_len}, {'causal' if request.causal else 'non-causal'}, {dtype}, "
            f"{level} level, per attention layer of {heads} head{'s' * (heads != 1)} x {head_dim}{model}"
            f"{layers}, on {data.short_device(forward.device_name.iloc[0])}")


def _failure(own: pd.DataFrame, request: Request, where: str) -> str:
    """Why a variant has no forward figure: unsupported, out of memory, or not measured at all."""
    if own.empty:
        return f"not measured ({where})"
    failed = own.sort_values("seq_len").iloc[0]
    reason = f": {failed.reason}" if isinstance(failed.reason, str) and failed.reason else ""
    if failed.status == "unsupported":
        return f"unsupported{reason}"
    status = "out of memory" if failed.status == "oom" else failed.status
    return f"{status} at N = {failed.seq_len}{reason}"


def _product_reasons(answer: Serving, product: Product) -> list[str]:
    reasons = []
    if answer.prefill_ms is None:
        reasons.append(next((g for g in answer.gaps if g.startswith("prefill")), "prefill not measured"))
    if product.memory_gb is not None:
        if answer.users_fit is None:
            reasons.append("decode state " + next((g.removeprefix("decode state ") for g in answer.gaps
                                                   if g.startswith("decode state")), "not measured"))
        elif answer.users_fit < product.sequences:
            reasons.append(f"memory: {answer.users_fit} sequences fit in {product.memory_gb:g} GiB "
                           f"(needs {product.sequences})")
    ttft = answer.prefill_ms
    if product.ttft_ms is not None and ttft is not None and ttft.value > product.ttft_ms:
        reasons.append(f"TTFT {serving.number(ttft.value)} ms > {product.ttft_ms:g} ms")
    rate = answer.tokens_per_s_per_user
    if product.tokens_per_s_per_user is not None:
        if rate is None:
            reasons.append(next((g for g in answer.gaps if g.startswith("decode ") and "state" not in g),
                                "decode not measured"))
        elif rate.value < product.tokens_per_s_per_user:
            reasons.append(f"decode {serving.number(rate.value)} tokens/s per user < "
                           f"{product.tokens_per_s_per_user:g}")
    return reasons


def _judge_accuracy(rows, passing: list[str], request: Request, eliminated) -> EqualTerms:
    """Accuracy on equal terms over the variants the other constraints leave; --min-accuracy judges the
    summary over the tasks every one of them (with accuracy rows) ran."""
    best = data.best_lr(data.learned(rows))
    terms = equal_terms.compare(best, passing)
    if request.min_accuracy is None:
        return terms
    if best.empty:
        raise MissingData(f"--min-accuracy needs accuracy results: run `{_suggest('accuracy', request)}`")
    if passing and not terms.common and len(terms.without) < len(passing):
        ran = "; ".join(f"{v}: {', '.join(sorted(set(best.task[best.variant == v])))}"
                        for v in passing if v not in terms.without)
        raise MissingData(f"--min-accuracy: the ranked variants share no learned task ({ran}), so no "
                          f"summary compares them on equal terms: run `{_suggest('accuracy', request)}` "
                          f"for the tasks they lack")
    for variant in passing:
        value = equal_terms.mean_of(terms.summary.get(variant))
        if variant in terms.without:
            eliminated[variant] = [f"no accuracy results (run "
                                   f"`{_suggest('accuracy', request, f' -v {variant}')}`)"]
        elif value is not None and value < request.min_accuracy:
            eliminated[variant] = [f"accuracy {value:.3f} < {request.min_accuracy:g} "
                                   f"(over {', '.join(terms.common)})"]
    return terms


def _ranked(variant: str, answer: Serving, forward: pd.DataFrame, terms: EqualTerms,
            request: Request) -> Ranked:
    own = forward[(forward.variant == variant) & (forward.status == "ok")]
    at_n = own[own.seq_len == request.seq_len]
    noisy = bool((at_n.noisy > 0).any()) if not at_n.empty else False
    interval = at_n.median_ci.max() if not at_n.empty else np.nan
    exact = forward.exact[forward.variant == variant].dropna()
    memory = answer.state_bytes.value / data.GIB if answer.state_bytes is not None else None
    return Ranked(variant, latency_ms=answer.prefill_ms.value,
                  tokens_per_s=request.seq_len / (answer.prefill_ms.value / 1e3), memory_gib=memory,
                  accuracy=equal_terms.mean_of(terms.summary.get(variant)), tasks=", ".join(terms.common),
                  decode_ms=answer.decode_ms.value if answer.decode_ms is not None else None,
                  exact=bool(exact.iloc[0]) if len(exact) else None, noisy=noisy,
                  interval=float(interval) if np.isfinite(interval) else 0.0)


def _serving_notes(forward: pd.DataFrame, rec: Recommendation, product: Product) -> list[str]:
    notes = []
    if (forward.device.astype(str) == "cpu").all():
        notes.append("a CPU run: the memory figures are CPU-resident memory (the decode state's tensors; "
                     "the prefill peak torch's CPU allocator held, traced), not a GPU's")
    if product.memory_gb is not None:
        notes.append("users that fit: (memory - one prompt's prefill peak) / decode state per sequence; "
                     "the model's weights and activations of other layers are not counted")
    answers = list(rec.serving.values())
    if product.kv_heads is not None and any("KV heads" in a.state_bytes.source for a in answers
                                            if a.state_bytes is not None):
        notes.append(f"no rows at {product.kv_heads} KV heads: decode states scaled linearly in the KV heads "
                     f"from the rows' (a KV cache, and a per-head recurrent state, are linear in them)")
    if product.sequences > 1:
        notes.append(f"decode at batch {product.sequences}: {product.sequences} x the measured time per "
                     f"sequence (no batching gain assumed)")
    unpeaked = [v for v, a in rec.serving.items() if a.state_bytes is not None and not a.prefill_peak_bytes]
    if unpeaked and product.memory_gb is not None:
        notes.append(f"no prefill memory at the context for {', '.join(unpeaked)} (not measured, or too few "
                     f"lengths to fit): their users that fit count the decode states only")
    return notes


# --- training: forward+backward at the requested length ---------------------------------------------------

def _train(rows: pd.DataFrame, tp: pd.DataFrame, request: Request) -> Recommendation:
    main_mode = MODES[request.mode][0]
    at_n, dtype, level, device = _select(tp, request, main_mode)
    where = (f"N = {request.seq_len}, {data.MODE_NAMES[main_mode]}, "
             f"{'causal' if request.causal else 'non-causal'}, {dtype}, {level} level")
    setting = f"{where}, on {device}"
    batch = at_n.loc[at_n.status == "ok", "batch"].median()
    if np.isfinite(batch):
        setting += f", batch {batch:g}"
    rec = Recommendation(request, setting)
    main = at_n[at_n["mode"] == main_mode]
    memory = _memory(at_n, request)
    judged = {}
    for variant in sorted(set(tp.variant)):
        reasons, figures = _judge(variant, main[main.variant == variant], memory.get(variant), request, where)
        if reasons:
            rec.eliminated[variant] = reasons
        else:
            judged[variant] = figures
    rec.accuracy = _judge_accuracy(rows, list(judged), request, rec.eliminated)
    for variant, figures in judged.items():
        if variant not in rec.eliminated:
            rec.ranked.append(Ranked(variant, decode_ms=None, tasks=", ".join(rec.accuracy.common),
                                     accuracy=equal_terms.mean_of(rec.accuracy.summary.get(variant)),
                                     **figures))
    rec.ranked.sort(key=lambda r: r.latency_ms)
    rec.notes += noise_notes(rec.ranked)
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
    """Peak memory per variant in GiB: the larger of its ok rows.

    Reserved memory when measured (what the allocator holds: closer to what the device must have).
    """
    ok = at_n[at_n.status == "ok"]
    peak = ok.mem_reserved_peak_bytes.fillna(ok.mem_alloc_peak_bytes)
    if request.memory_gb is not None and ok.shape[0] and peak.isna().all():
        raise MissingData("--memory-gb needs peak GPU memory, which these throughput rows lack (a CPU run?): "
                          f"run `{_suggest('throughput', request, f' --device cuda -n {request.seq_len}')}`")
    return (peak / data.GIB).groupby(ok.variant).max().dropna().to_dict()


def _judge(variant, main: pd.DataFrame, memory, request: Request, where: str):
    """(every failed constraint but accuracy, figures when there is none)."""
    ok = main[main.status == "ok"]
    if ok.empty:
        if main.empty:
            return [f"not measured at {where}"], None
        return [_failure(main, request, where)], None
    latency, tokens = ok.latency_ms.median(), ok.tokens_per_s.median()
    reasons = []
    if request.memory_gb is not None:
        if memory is None:
            reasons.append("peak memory not measured")
        elif memory > request.memory_gb:
            reasons.append(f"peak memory {memory:.3g} GiB > {request.memory_gb:g} GiB")
    if request.latency_ms is not None and latency > request.latency_ms:
        reasons.append(f"latency {latency:.3g} ms > {request.latency_ms:g} ms")
    exact = ok.exact.iloc[0] if "exact" in ok and pd.notna(ok.exact.iloc[0]) else None
    noisy = bool((ok.noisy > 0).any()) if "noisy" in ok else False
    interval = ok.median_ci.max() if "median_ci" in ok else np.nan
    figures = {"latency_ms": float(latency), "tokens_per_s": float(tokens), "memory_gib": memory,
               "exact": None if exact is None else bool(exact),
               "noisy": noisy, "interval": float(interval) if np.isfinite(interval) else 0.0}
    return reasons, figures


# --- the answer as tables: the terminal's (rich) and the report's (HTML) ---------------------------------

KIND_MARKS = {"measured": "m", "interpolated": "i", "extrapolated": "x"}


def _cell(figure: serving.Figure | None, unit: str, scale: float = 1.0) -> str:
    if figure is None:
        return "n/a"
    scaled = figure.scaled(scale)
    return f"{scaled.text(unit)} ({KIND_MARKS.get(figure.source.split()[0], '?')})"


def _bytes(figure: serving.Figure | None) -> str:
    if figure is None:
        return "n/a"
    for unit, scale in ((" GiB", data.GIB), (" MiB", 2**20), (" KiB", 2**10)):
        if figure.value >= scale:
            return _cell(figure, unit, 1 / scale)
    return _cell(figure, " B")


def answer_table(rec: Recommendation) -> pd.DataFrame:
    """One row per variant, the ranked first (in order), then the eliminated with every reason."""
    order = [r.variant for r in rec.ranked] + sorted(rec.eliminated)
    rank = {r.variant: i for i, r in enumerate(rec.ranked, 1)}
    terms = rec.accuracy
    rows = []
    for variant in order:
        row = {"rank": rank.get(variant, ""), "variant": variant}
        answer = rec.serving.get(variant)
        if rec.request.mode == "infer":
            row |= {"TTFT (ms)": _cell(answer.prefill_ms, "") if answer else "n/a",
                    "decode (tokens/s per user)": (_cell(answer.tokens_per_s_per_user, "") if answer
                                                   else "n/a"),
                    "state per sequence": (_bytes(answer.state_bytes) + (f", {answer.state_kind}"
                                                                         if answer.state_kind else ""))
                    if answer else "n/a"}
            if rec.request.memory_gb is not None:
                fit = None if answer is None else answer.users_fit
                row["users that fit"] = "n/a" if fit is None else fit
        else:
            ranked = next((r for r in rec.ranked if r.variant == variant), None)
            row |= {"latency (ms)": f"{ranked.latency_ms:.3g}" if ranked else "n/a",
                    "tokens/s": _si(ranked.tokens_per_s) if ranked else "n/a",
                    "peak GiB": (f"{ranked.memory_gib:.3g}" if ranked and ranked.memory_gib is not None
                                 else "n/a")}
        row["accuracy"] = _accuracy_cell(terms, variant)
        row["out because"] = "; ".join(rec.eliminated.get(variant, []))
        rows.append(row)
    return pd.DataFrame(rows)


def _accuracy_cell(terms: EqualTerms | None, variant: str) -> str:
    if terms is None or variant not in terms.variants:
        return ""
    if variant in terms.without:
        return "no accuracy results"
    if not terms.common:
        return "per task below"
    return equal_terms.figure_text(terms.summary.get(variant))


def accuracy_table(terms: EqualTerms | None) -> pd.DataFrame:
    """Per task (columns) and variant: the accuracy over the conditions every variant that ran the task
    shares, with its interval; 'not run' where the variant lacks the task."""
    if terms is None or not terms.per_task:
        return pd.DataFrame()
    tasks = terms.all_tasks()
    ran = sorted({v for v, _ in terms.per_task})
    table = []
    for variant in ran:
        row = {"variant": variant}
        for task in tasks:
            value = terms.per_task.get((variant, task))
            row[f"{task} ({terms.conditions.get(task, 0)} cond.)"] = (
                equal_terms.figure_text(value) if value is not None else
                "no shared condition" if task in terms.disjoint else "not run")
        table.append(row)
    return pd.DataFrame(table)


def sources(rec: Recommendation) -> list[str]:
    """Where each figure not measured at the context comes from."""
    lines = []
    for variant, answer in sorted(rec.serving.items()):
        for name, figure in (("TTFT", answer.prefill_ms), ("decode", answer.decode_ms),
                             ("state", answer.state_bytes), ("prefill peak", answer.prefill_peak_bytes)):
            if figure is not None and not figure.measured:
                lines.append(f"{variant} {name}: {figure.source}")
    return lines


def accuracy_notes(terms: EqualTerms | None) -> list[str]:
    if terms is None or not terms.per_task:
        return []
    notes = ["accuracy on equal terms: per task over the conditions every variant that ran it shares "
             "(count in the header), 95% intervals over the trained models (harness.intervals); "
             + (f"the summary is the mean over {', '.join(terms.common)}, the tasks every ranked variant ran"
                if terms.common else "no task was run by every ranked variant, so there is no summary")]
    if any(not isinstance(v, equal_terms.Estimate) for v in terms.per_task.values()):
        notes.append("no interval: rows without per-example test scores (written before they were recorded)")
    notes += [f"{variant} lacks {', '.join(tasks)}: left out of every summary, not averaged over fewer tasks"
              for variant, tasks in sorted(terms.missing.items())]
    return notes


def render(rec: Recommendation, width: int = 200) -> str:
    """The answer for the terminal: the ranking as a table, per-task accuracy, where each extrapolated
    figure comes from, and the notes."""
    import io

    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False, markup=False)
    console.print(f"Recommendation for {rec.setting}")
    console.print("Constraints: " + ("; ".join(rec.request.constraints()) or "none (ranked by latency)"))
    if not rec.ranked:
        console.print("No variant meets every constraint.")
    for title, frame in (("Ranked, fastest first; then eliminated", answer_table(rec)),
                         ("Accuracy per task", accuracy_table(rec.accuracy))):
        if frame.empty:
            continue
        table = Table(title=title, title_justify="left")
        for column in frame.columns:
            table.add_column(str(column), overflow="fold")
        for values in frame.itertuples(index=False):
            table.add_row(*(str(v) for v in values))
        console.print(table)
    if rec.request.mode == "infer":
        console.print("(m) measured at the context, (i) interpolated, (x) extrapolated along N; [low, high]: "
                      "the scaling exponent's 95% interval carried to the context")
    lines = sources(rec)
    if lines:
        console.print("Sources:")
        for line in lines:
            console.print(f"  {line}")
    for note in accuracy_notes(rec.accuracy) + rec.notes:
        console.print(f"Note: {note}")
    return out.getvalue().rstrip()
