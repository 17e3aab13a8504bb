"""The report's view of a results set: rows split by suite and shaped for charts and tables.

This is the one module that reads the suites' column contract (results/README.md). Columns a run did
not write (GPU metrics on CPU, a suite not run) are added as empty, so the rest of the report can ask
for any of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness import store

GIB = 2**30
MODE_NAMES = {"fwd": "forward", "fwd_bwd": "forward+backward", "decode": "decode"}
DTYPE_PREFERENCE = ("bfloat16", "float16", "float32", "float64")
FAILURE_ORDER = ("oom", "skipped", "timeout", "nonfinite", "error", "unsupported")

# A throughput configuration: everything but the variant and the length. Two rows that agree on these
# belong on the same axes.
# kv_heads (grouped-query attention): null (n_heads) in every row but a --kv-heads plan's; model: null in
# every row but a --model plan's (the preset whose per-layer shape it measured; its layers: model_layers).
CONFIG_KEYS = ("device_name", "mode", "level", "dtype", "causal", "head_dim", "n_heads", "kv_heads",
               "total_tokens", "model")
THROUGHPUT_METRICS = (
    "batch", "latency_ms", "latency_ms_p20", "latency_ms_p80", "tokens_per_s", "flops", "tflops",
    "pct_of_peak", "peak_matmul_tflops", "mem_alloc_peak_bytes", "mem_reserved_peak_bytes",
    "device_mem_total_bytes", "power_w_mean", "energy_j_per_token", "rounds", "spread_iqr", "median_ci",
    "noisy", "mem_rss_peak_bytes", "mem_peak_bytes", "decode_state_bytes", "decode_state_bytes_per_seq",
    "mem_tracked_peak_bytes", "kv_cache_bytes", "state_bytes", "mem_predicted_bytes", "model_layers",
)
FIDELITY_COLUMNS = ("device_name", "variant", "level", "mode", "dtype", "seq_len", "batch", "latency_ms",
                    "reference_latency_ms", "fidelity_ratio", "reference_timer", "rounds", "threads")
FRONTIER_COLUMNS = ("device_name", "variant", "level", "dtype", "n_heads", "head_dim", "seq_len", "status",
                    "reason", "latency_ms", "mem_rss_peak_bytes", "mem_alloc_peak_bytes",
                    "mem_tracked_peak_bytes", "predicted_peak_bytes", "predicted_max_n", "memory_cap_mb")
THROUGHPUT_COLUMNS = (*CONFIG_KEYS, "seq_len", "params", "family", "exact", "backend", "reason",
                      *THROUGHPUT_METRICS)
LEARNED_COLUMNS = ("task", "seq_len", "train_seq_len", "d_model", "n_layers", "n_heads", "kv_pairs",
                   "depth", "lr", "seed", "accuracy", "params", "family", "device_name", "dtype")
EXACTNESS_COLUMNS = ("task", "input_kind", "seq_len", "head_dim", "causal", "nb_features", "max_abs_err",
                     "rel_err", "impl_err", "checked_err", "full_attention_err", "reference", "family",
                     "exact", "dtype")
# A trained model: the best learning rate is chosen per one of these, over all its evaluations.
TRAINING_KEYS = ("suite", "variant", "device_name", "dtype", "params", "task", "train_len", "d_model",
                 "n_layers", "n_heads", "kv_pairs", "seed")


@dataclass
class Results:
    """Every row of one or more runs, and the environment each run was measured in."""

    rows: pd.DataFrame
    environments: dict[str, dict]

    @classmethod
    def load(cls, *paths: str | Path, columns=None) -> Results:
        """`columns`: read only those and the ones every row has (a command that needs a few of a run's
        columns answers sooner)."""
        dirs = store.run_dirs(paths)  # FileNotFoundError names a missing path
        if columns is not None:
            columns = [*store.REQUIRED.names, *store.TYPED.names, *columns]
        rows = fill_family(store.load(*dirs, columns=columns)) if dirs else store.load()
        environments = {}
        for run in dirs:
            env_file = run / store.ENVIRONMENT
            try:
                environments[str(run)] = store.read_json(env_file) if env_file.exists() else {}
            except store.CorruptFile as e:  # the rows carry the essentials; `attnbench run` rewrites it
                store.log.warning("corrupt %s; the report shows no environment for this run", e)
                environments[str(run)] = {}
        return cls(rows, environments)

    def suites(self) -> set[str]:
        return set(self.rows.suite.dropna())


def with_columns(df: pd.DataFrame, columns) -> pd.DataFrame:
    """A copy of df that has every one of `columns` (missing ones empty)."""
    df = df.copy()
    for column in columns:
        if column not in df.columns:
            df[column] = np.nan
    return df


def fill_family(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of failed cases may lack `family`/`exact`: take them from the variant's other rows."""
    rows = with_columns(rows, ("family", "exact"))
    for column in ("family", "exact"):
        known = rows.dropna(subset=[column]).groupby("variant")[column].first()
        rows[column] = rows[column].fillna(rows.variant.map(known))
    rows["family"] = rows.family.astype(object).fillna(rows.variant.str.split("-").str[0])
    return rows


def baseline_variants(rows: pd.DataFrame) -> set[str]:
    """The variants the registry marks as the reference the others are compared with (rows' `baseline`;
    rows written before it was recorded name none: then the registry's own baseline among the rows'
    variants, a fact of the variant, not of the measurement)."""
    if "baseline" in rows and rows.baseline.notna().any():
        return set(rows.variant[rows.baseline.fillna(False).astype(bool)])
    from harness import registry  # here: the registry imports torch, which `recommend` does without

    present = set(rows.variant) if "variant" in rows else set()
    return {v.name for v in registry.all_variants() if v.baseline and v.name in present}


def default_models(rows: pd.DataFrame) -> dict[str, str]:
    """variant -> the planners' models it leaves to the stated defaults ('cost, memory'), for the variants
    that leave any (rows' `default_models`; harness.costs states the defaults)."""
    if "default_models" not in rows:
        return {}
    named = rows.dropna(subset=["default_models"])
    named = named[named.default_models.astype(str) != ""]
    return dict(sorted(named.groupby("variant").default_models.last().items()))


def short_device(name) -> str:
    if isinstance(name, list):  # a merged run's environment lists the devices of its sources
        return ", ".join(map(short_device, name))
    return str(name).removeprefix("NVIDIA ") if isinstance(name, str) and name else "unknown device"


HARDWARE_KEYS = ("device_name", "driver", "hostname")


def hardware(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows per run and machine (device, driver, host): where each result was measured."""
    if rows.empty:
        return pd.DataFrame(columns=["run_dir", *HARDWARE_KEYS, "suites", "rows"])
    rows = with_columns(rows, HARDWARE_KEYS)
    for key in HARDWARE_KEYS:  # a CPU run has no driver: an empty cell, not NaN (groupby would drop it)
        rows[key] = rows[key].astype(object).where(rows[key].notna(), "")
    grouped = rows.groupby(["run_dir", *HARDWARE_KEYS], sort=True)
    return grouped.agg(suites=("suite", lambda s: ", ".join(sorted(set(s.dropna())))),
                       rows=("case_id", "size")).reset_index()


def mixed_devices(rows: pd.DataFrame) -> dict[str, list[str]]:
    """Runs whose rows were measured on more than one kind of device (shards merged from different GPUs,
    a cluster of mixed nodes): their timings are comparable only per device."""
    if rows.empty or "device_name" not in rows:
        return {}
    names = rows.dropna(subset=["device_name"]).groupby("run_dir").device_name.agg(lambda s: sorted(set(s)))
    return {run: list(devices) for run, devices in names.items() if len(devices) > 1}


def params_label(params) -> str:
    try:
        values = json.loads(params) if isinstance(params, str) else {}
    except ValueError:
        return str(params)
    return " ".join(f"{k}={v}" for k, v in sorted(values.items()))


def series_labels(df: pd.DataFrame) -> pd.Series:
    """A line's name: the variant, plus its parameters when the data holds it under several."""
    params = df.params.fillna("{}")
    several = params.groupby(df.variant).transform("nunique") > 1
    labels = params.map(params_label)
    return df.variant.where(~several | (labels == ""), df.variant + " " + labels)


def _numeric(df: pd.DataFrame, columns) -> pd.DataFrame:
    for column in columns:
        df[column] = pd.to_numeric(df[column], errors="coerce")
    return df


def _describe(row, varying: set[str], with_mode: bool, with_device: bool) -> str:
    parts = [short_device(row.device_name)] if with_device else []
    parts += [str(row.dtype)]
    if with_mode:
        parts.append(MODE_NAMES.get(row.mode, str(row.mode)))
    parts.append("causal" if row.causal else "non-causal")
    if "level" in varying:
        parts.append(f"{row.level} level")
    if "head_dim" in varying:
        parts.append(f"head_dim {row.head_dim:g}")
    if "n_heads" in varying:
        parts.append(f"{row.n_heads:g} heads")
    if "kv_heads" in varying:
        parts.append(f"{row.kv_heads:g} KV heads" if row.kv_heads == row.kv_heads else "all heads KV")
    if "total_tokens" in varying:
        parts.append(f"{row.total_tokens:g} tokens")
    if "model" in varying:
        parts.append(f"model {row.model}" if isinstance(row.model, str) else "no model")
    return ", ".join(parts)


def _throughput_kind(rows: pd.DataFrame, kind: str, layouts=("square",)) -> pd.DataFrame:
    """Throughput rows of one kind: `sweep` (rows written before kinds existed are sweep rows), `fidelity`
    or `frontier`; of the batch `layouts` (harness.ragged; rows written before layouts existed are square:
    the square sweep's analysis never mixes in a ragged batch)."""
    tp = rows[rows.suite == "throughput"]
    kinds = tp["kind"].fillna("sweep") if "kind" in tp else pd.Series("sweep", index=tp.index)
    layout = tp["layout"].fillna("square") if "layout" in tp else pd.Series("square", index=tp.index)
    return tp[(kinds == kind) & layout.isin(layouts)]


RAGGED_COLUMNS = ("device_name", "variant", "family", "mode", "dtype", "seq_len", "batch", "layout",
                  "lengths", "tokens_per_s", "real_tokens", "padded_tokens", "latency_ms", "ragged_path",
                  "reason")


def ragged(rows: pd.DataFrame) -> pd.DataFrame:
    """Ragged-batch sweep rows (harness.ragged), one per (device, dtype, mode, N, lengths, variant, layout):
    the median real-token tokens/s of its ok rows, else its most telling failure (status, reason)."""
    tp = with_columns(_throughput_kind(rows, "sweep", ("padded", "packed")), (*RAGGED_COLUMNS, "status"))
    keys = ["device_name", "mode", "dtype", "seq_len", "lengths", "variant", "family", "layout"]
    if tp.empty:
        return pd.DataFrame(columns=[*RAGGED_COLUMNS, "status"])
    tp = fill_family(tp)
    tp = _numeric(tp, ("seq_len", "batch", "tokens_per_s", "real_tokens", "padded_tokens", "latency_ms"))
    tp["device_name"] = tp.device_name.fillna("unknown device")
    ok = tp[tp.status == "ok"]
    measured = ok.groupby(keys, dropna=False).agg(
        tokens_per_s=("tokens_per_s", "median"), real_tokens=("real_tokens", "median"),
        padded_tokens=("padded_tokens", "median"), latency_ms=("latency_ms", "median"),
        batch=("batch", "median"), ragged_path=("ragged_path", "first")).reset_index()
    measured["status"], measured["reason"] = "ok", ""
    rank = {s: i for i, s in enumerate(FAILURE_ORDER)}
    failed = tp[tp.status != "ok"].assign(_rank=lambda d: d.status.map(rank).fillna(len(rank)))
    failed = failed.sort_values("_rank").drop_duplicates(keys).merge(measured[keys], on=keys, how="left",
                                                                      indicator=True)
    failed = failed[failed._merge == "left_only"]
    columns = [*RAGGED_COLUMNS, "status"]
    order = ["device_name", "mode", "dtype", "seq_len", "lengths", "family", "variant", "layout"]
    return pd.concat([measured[columns], failed[columns]], ignore_index=True).sort_values(order,
                                                                                         ignore_index=True)


def under_compile(rows: pd.DataFrame) -> pd.Series:
    """Which rows are of the compiled series (`compiled` true; rows before the column are eager)."""
    flags = rows["compiled"] if "compiled" in rows else pd.Series(False, index=rows.index)
    return flags.map(lambda v: v is True or v == 1.0)


def throughput(rows: pd.DataFrame) -> pd.DataFrame:
    """Eager sweep rows with a `series` (line), `config` (full description) and panel labels.
    `mem_peak_bytes`: torch's allocated peak, on CUDA from its allocator, on the CPU traced
    (`mem_tracked_peak_bytes`); never the resident peak, which rows before the tracing have unchecked
    (harness.memory). The compiled series' rows are left out (every analysis speaks of eager calls): they
    are drawn against the eager ones apart (`compiled_series`)."""
    sweep = _throughput_kind(rows, "sweep")
    return _prepared(with_columns(sweep[~under_compile(sweep)], THROUGHPUT_COLUMNS))


def _prepared(tp: pd.DataFrame) -> pd.DataFrame:
    """Sweep rows made ready to draw: numbers, defaults, `series`, `config` and panel labels."""
    tp["mem_peak_bytes"] = peak_bytes(tp)
    tp["noisy"] = tp.noisy.astype(float)  # bool, or null in rows written before noise was measured
    if tp.empty:
        return tp.assign(series=[], config=[], panel_row=[], panel_col=[])
    tp = _numeric(tp, ("seq_len", "head_dim", "n_heads", "kv_heads", "total_tokens", *THROUGHPUT_METRICS))
    tp["seq_len"] = tp.seq_len.astype(int)
    tp["causal"] = tp.causal.fillna(False).astype(bool)
    tp["level"] = tp.level.fillna("kernel")
    tp["device_name"] = tp.device_name.fillna("unknown device")
    tp["series"] = series_labels(tp)
    varying = {k for k in CONFIG_KEYS if tp[k].nunique(dropna=False) > 1}
    several_devices = "device_name" in varying
    tp["config"] = [_describe(r, varying, True, True) for r in tp.itertuples()]
    tp["panel_row"] = [_describe(r, varying, False, several_devices) for r in tp.itertuples()]
    tp["panel_col"] = tp["mode"].map(lambda m: MODE_NAMES.get(m, str(m)))
    return tp


COMPILED_COLUMNS = ("config", "family", "variant", "seq_len", "compiled", "status", "reason", "latency_ms",
                    "compile_s")


def compiled_series(rows: pd.DataFrame) -> pd.DataFrame:
    """Eager against compiled (`--compile`): one row per (config, variant, N, compiled) of every variant the
    compiled series ran: the median latency of its ok rows and their median `compile_s` (status ok), else
    its most telling failure (an unsupported compile keeps its reason). Configs as `throughput` names them
    for these rows; empty when no row is compiled."""
    sweep = _throughput_kind(rows, "sweep")
    flags = under_compile(sweep)
    if not flags.any():
        return pd.DataFrame(columns=list(COMPILED_COLUMNS))
    tp = _prepared(with_columns(sweep, (*THROUGHPUT_COLUMNS, "compile_s")).assign(compiled=flags.to_numpy()))
    tp["compile_s"] = pd.to_numeric(tp.compile_s, errors="coerce")
    ran = set(zip(tp.config[tp.compiled], tp.variant[tp.compiled], strict=True))
    tp = tp[[pair in ran for pair in zip(tp.config, tp.variant, strict=True)]]
    keys = ["config", "family", "variant", "seq_len", "compiled"]
    return median_or_failure(tp, keys, ("latency_ms", "compile_s"))[list(COMPILED_COLUMNS)].sort_values(
        ["config", "family", "variant", "compiled", "seq_len"], ignore_index=True)


def peak_bytes(rows: pd.DataFrame) -> pd.Series:
    """torch's allocated peak of each row: CUDA's allocator statistics, else the CPU's traced figure."""
    return pd.to_numeric(rows.mem_alloc_peak_bytes, errors="coerce").fillna(
        pd.to_numeric(rows.mem_tracked_peak_bytes, errors="coerce"))


def points(tp: pd.DataFrame) -> pd.DataFrame:
    """One point per (config, series, N): the median of its ok rows, else its most telling failure."""
    keys = ["config", "panel_row", "panel_col", *CONFIG_KEYS, "series", "variant", "family", "exact",
            "seq_len"]
    if tp.empty:
        return pd.DataFrame(columns=[*keys, "status", "reason", *THROUGHPUT_METRICS])
    return median_or_failure(tp, keys, THROUGHPUT_METRICS).sort_values(["config", "series", "seq_len"],
                                                                        ignore_index=True)


def median_or_failure(rows: pd.DataFrame, keys: list[str], metrics) -> pd.DataFrame:
    """One row per key: the median of its ok rows' metrics (status ok), else its most telling failure
    (FAILURE_ORDER), with its reason. Columns: keys, status, reason, metrics."""
    measured = rows[rows.status == "ok"].groupby(keys, dropna=False)[list(metrics)].median().reset_index()
    measured["status"], measured["reason"] = "ok", ""
    rank = {s: i for i, s in enumerate(FAILURE_ORDER)}
    failed = rows[rows.status != "ok"].assign(_rank=lambda d: d.status.map(rank).fillna(len(rank)))
    failed = failed.sort_values("_rank").drop_duplicates(keys)
    failed = failed.merge(measured[keys], on=keys, how="left", indicator=True)
    failed = failed[failed._merge == "left_only"]
    columns = [*keys, "status", "reason", *metrics]
    return pd.concat([measured[columns], failed[columns]], ignore_index=True)


def fidelity(rows: pd.DataFrame) -> pd.DataFrame:
    """The timer checks: our median beside an independent timer's, per case (ok rows)."""
    df = with_columns(_throughput_kind(rows, "fidelity"), FIDELITY_COLUMNS)
    df = df[df.status == "ok"]
    return _numeric(df, ("seq_len", "batch", "latency_ms", "reference_latency_ms", "fidelity_ratio",
                         "rounds"))[list(FIDELITY_COLUMNS)].sort_values(["device_name", "variant", "seq_len"])


def frontier(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (device, variant, dtype, level, cap): the largest N one call ran at, the first N above it that
    did not (and why), beside the memory model's prediction."""
    df = with_columns(_throughput_kind(rows, "frontier"), FRONTIER_COLUMNS)
    if df.empty:
        return pd.DataFrame(columns=["device_name", "variant", "dtype", "level", "memory_cap_gib",
                                     "largest_n", "peak_gib_at_largest", "predicted_peak_gib",
                                     "predicted_max_n", "next_n", "next_status", "next_reason"])
    df = _numeric(df, ("seq_len", "mem_rss_peak_bytes", "mem_alloc_peak_bytes", "mem_tracked_peak_bytes",
                       "predicted_peak_bytes", "predicted_max_n", "memory_cap_mb"))
    df["mem_peak_bytes"] = peak_bytes(df)
    table = []
    keys = ["device_name", "variant", "dtype", "level", "memory_cap_mb"]
    for key, group in df.groupby(keys, sort=True, dropna=False):
        ok = group[group.status == "ok"].sort_values("seq_len")
        largest = ok.iloc[-1] if len(ok) else None
        above = group[(group.status != "ok") & (group.seq_len > (0 if largest is None else largest.seq_len))]
        first = above.sort_values("seq_len").iloc[0] if len(above) else None
        peak = None if largest is None or pd.isna(largest.mem_peak_bytes) else largest.mem_peak_bytes
        table.append({
            **dict(zip(keys[:-1], key[:-1], strict=True)), "memory_cap_gib": key[-1] * 2**20 / GIB,
            "largest_n": None if largest is None else int(largest.seq_len),
            "peak_gib_at_largest": None if peak is None else peak / GIB,
            "predicted_peak_gib": None if largest is None else largest.predicted_peak_bytes / GIB,
            "predicted_max_n": group.predicted_max_n.dropna().iloc[0] if group.predicted_max_n.notna().any()
            else None,
            "next_n": None if first is None else int(first.seq_len),
            "next_status": "" if first is None else first.status,
            "next_reason": "" if first is None else first.reason,
        })
    return pd.DataFrame(table)


def matmul_peaks(rows: pd.DataFrame) -> pd.DataFrame:
    """The measured matmul peak per device and precision that rows' % of peak refers to."""
    tp = with_columns(_throughput_kind(rows, "sweep"), ("peak_precision", "peak_matmul_tflops"))
    tp = tp[tp.peak_matmul_tflops.notna()]
    if tp.empty:
        return pd.DataFrame(columns=["device_name", "precision", "peak_tflops"])
    tp = tp.assign(precision=tp.peak_precision.astype(object).fillna("unrecorded"))
    peaks = tp.groupby(["device_name", "precision"]).peak_matmul_tflops.median()
    return peaks.rename("peak_tflops").reset_index()


def learned(rows: pd.DataFrame) -> pd.DataFrame:
    """Learned-task rows (accuracy Part B and long-range), with `train_len` (the length trained at)."""
    df = with_columns(rows[rows.suite.isin(("accuracy", "long-range"))], LEARNED_COLUMNS)
    df = df[df.task.notna() & (df.task != "exactness")]
    df = _numeric(df, ("seq_len", "train_seq_len", "d_model", "n_layers", "n_heads", "kv_pairs", "depth",
                       "lr", "seed", "accuracy"))
    return df.assign(train_len=df.train_seq_len.fillna(df.seq_len))


def best_lr(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows of each trained model's best learning rate, judged on its validation accuracy (rows
    written before the suites validated fall back to their mean test accuracy).

    The choice is per trained model, not per evaluation length or passkey depth, so that a long-range
    curve is one model's curve.
    """
    ok = df[(df.status == "ok") & df.accuracy.notna()]
    if ok.empty:
        return ok
    keys = [k for k in TRAINING_KEYS if k in ok.columns]
    judged = ok.valid_accuracy.fillna(ok.accuracy) if "valid_accuracy" in ok.columns else ok.accuracy
    score = ok.assign(score=judged).groupby([*keys, "lr"], dropna=False).score.mean().reset_index()
    best = score.loc[score.groupby(keys, dropna=False).score.idxmax(), [*keys, "lr"]]
    return ok.merge(best, on=[*keys, "lr"])


def task_accuracy(best: pd.DataFrame) -> pd.DataFrame:
    """Mean best-LR accuracy per (variant, task), over the task's evaluations and seeds."""
    if best.empty:
        return pd.DataFrame(columns=["variant", "task", "accuracy"])
    return best.groupby(["variant", "task"]).accuracy.mean().reset_index()


def quality(best: pd.DataFrame) -> pd.DataFrame:
    """Per variant: mean over tasks of its task accuracy, and the tasks it covers."""
    per_task = task_accuracy(best)
    grouped = per_task.groupby("variant")
    return pd.DataFrame({
        "accuracy": grouped.accuracy.mean(),
        "tasks": grouped.task.agg(lambda t: ", ".join(sorted(t))),
    }).reset_index()


def exactness(rows: pd.DataFrame) -> pd.DataFrame:
    """Exactness rows that measured the error against the unrounded inputs (the kinds random, peaked,
    near_duplicate and long; the other checks are judged in the report's Correctness section)."""
    df = with_columns(rows[rows.suite == "accuracy"], EXACTNESS_COLUMNS)
    df = df[(df.task == "exactness") & (df.status == "ok") & df.rel_err.notna()]
    return _numeric(df, ("seq_len", "head_dim", "max_abs_err", "rel_err", "impl_err", "checked_err",
                         "full_attention_err"))


def _approximations(exact: pd.DataFrame) -> pd.Series:
    """Rows of approximations of attention: not exact, and measured against softmax (under a mask or not);
    a mixer-only family's rows measure its kernel against kernel_reference instead."""
    not_exact = exact.exact != True  # noqa: E712  (an object column: True, False or missing)
    return not_exact & exact.reference.isin(("softmax", "masked_softmax"))


def implementation_error(exact: pd.DataFrame) -> pd.DataFrame:
    """Each row's error against its implementation's float64 reference, as `rel_err`: the correctness
    gate's `checked_err` (on the inputs rounded to the dtype); for rows recorded before the gate, `rel_err`,
    or for approximations `impl_err` (against their own reference) in place of their distance from
    softmax."""
    if exact.empty:
        return exact
    before_the_gate = exact.impl_err.where(_approximations(exact), exact.rel_err)
    return exact.assign(rel_err=exact.checked_err.where(exact.checked_err.notna(), before_the_gate))


def approximation_error(exact: pd.DataFrame) -> pd.DataFrame:
    """The approximations' rows: `rel_err` is their distance from softmax attention (the method's error)."""
    return exact[_approximations(exact)] if not exact.empty else exact


def preferred_dtype(dtypes) -> str:
    present = list(dict.fromkeys(dtypes))
    for dtype in DTYPE_PREFERENCE:
        if dtype in present:
            return dtype
    return present[0]


def smoke_reasons(rows: pd.DataFrame) -> dict[str, list[str]]:
    """Why each part of the results (throughput, exactness, learned tasks) is a smoke test of the pipeline
    rather than findings: rows of the quick profile (tiny sizes), learned tasks trained with one seed per
    model (no spread to judge a difference by). An empty list: nothing to say, or no rows."""
    rows = with_columns(rows, ("profile", "task"))
    parts = {"throughput": rows[rows.suite == "throughput"],
             "exactness": rows[(rows.suite == "accuracy") & (rows.task == "exactness")],
             "learned": learned(rows)}
    reasons = {part: ["quick profile"] if (subset.profile == "quick").any() else []
               for part, subset in parts.items()}
    ok = parts["learned"][parts["learned"].status == "ok"]
    if not ok.empty:
        # Seeds of one configuration at one learning rate: a sweep's later seeds train at the rate it chose
        # (their `lr` is empty, `lr_used` names it).
        lr = ok.lr_used.fillna(ok.lr) if "lr_used" in ok.columns else ok.lr
        keys = [k for k in TRAINING_KEYS if k in ok.columns and k != "seed"]
        if ok.assign(lr=lr).groupby([*keys, "lr"], dropna=False).seed.nunique(dropna=False).max() <= 1:
            reasons["learned"].append("one seed per model")
    return reasons


def status_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows per suite and status: the first table a reader needs to trust the rest."""
    if rows.empty:
        return pd.DataFrame()
    return rows.groupby(["suite", "status"]).size().unstack(fill_value=0)
