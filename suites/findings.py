"""The published findings the learned-task suites reproduce, decided from result rows with intervals.

Each finding reads the rows of its own experiment (the `experiment` column, set by suites.grids) and
states checks, each decided by 95% intervals (suites.intervals: a bootstrap over seeds and test
examples): a check holds when its interval lies on the claimed side of its threshold, fails when it
lies on the other side, and is undecided otherwise. A finding is "reproduced" when every check holds,
"not reproduced" when one fails, "inconclusive" when none fails but one is undecided, and "no data"
without rows. Learning rates are chosen on validation accuracy alone (`suites.learning_rate.choose_lr`).

`check_claims(rows)` returns the findings; `summarize(out_dir, console)` prints them after a run and
writes FINDINGS_FILE into the run directory, where the report reads verdicts, figures and the data of
each evidence chart (the report does not import the suites).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from suites import intervals
from suites.intervals import Estimate
from suites.learning_rate import SWEEP_SEED, choose_lr

FINDINGS_FILE = "findings.json"
SOLVED = 0.9  # MQAR: softmax attention "solves" a configuration at or above this
HIGH = 0.95  # selective copying, induction, passkey: the accuracy the papers report reaching
NEAR_CHANCE = 0.1  # "near chance": at most this far above a uniform guess
FEW_POINTS = 0.05  # ListOps: "within a few points" of one another
EXTRAPOLATION = 4  # induction: softmax judged from this multiple of the training length on
SOFTMAX_VARIANTS = ("vanilla", "flash-sdpa", "flash-cudnn", "flash-efficient", "flash-xformers")
# Long Range Arena (Tay et al. 2021), ListOps test accuracy (%), printed beside the CPU figures.
LRA_LISTOPS = {"Transformer": 36.37, "Local attention": 15.82, "Sparse Transformer": 17.07,
               "Longformer": 35.63, "BigBird": 36.05, "Linear Transformer": 16.13, "Performer": 18.01}
LRA_NAMES = {"vanilla": "Transformer", "flash-sdpa": "Transformer", "longformer": "Longformer",
             "longformer-banded": "Longformer", "sparse-bigbird": "BigBird",
             "sparse-fixed": "Sparse Transformer", "linear": "Linear Transformer", "performer": "Performer"}
VERDICTS = {True: "reproduced", False: "not reproduced", None: "inconclusive"}
# Finding name -> the experiment (suites.grids) whose rows decide it.
EXPERIMENTS = {"mqar": "mqar_capacity", "selective_copying": "selective_copying",
               "induction": "induction_extrapolation", "passkey": "passkey_window", "listops": "listops_lra"}


@dataclass
class Check:
    text: str
    holds: bool | None
    figures: str = ""


@dataclass
class Chart:
    """Data of an evidence chart, drawn by harness.report: `kind` lines (x against mean with an interval
    band per series), bars (one interval per series), heatmap (mean over x and y) or curves (validation
    accuracy against steps, the band spanning the seeds)."""

    kind: str
    title: str
    x: str
    y: str
    series: list[dict]
    log_x: bool = False
    reference: dict = field(default_factory=dict)  # horizontal lines: label -> y
    published: dict = field(default_factory=dict)  # series -> [label, value]: a published figure beside it


@dataclass
class Finding:
    name: str
    claim: str
    experiment: str
    verdict: str
    summary: str
    checks: list[Check] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)  # the figures, each with its interval
    charts: list[Chart] = field(default_factory=list)

    @property
    def reproduced(self) -> bool | None:
        return {"reproduced": True, "not reproduced": False}.get(self.verdict)


def _above_zero(e: Estimate) -> bool | None:
    """A difference whose interval lies above zero: True; at or below it: False; across it: None."""
    return True if e.low > 0 else False if e.high <= 0 else None


def _decide(checks: list[Check]) -> str:
    holds = intervals.all_of([c.holds for c in checks])
    return VERDICTS[holds]


# --- rows -----------------------------------------------------------------------------------------

CONFIG_COLUMNS = ("experiment", "variant", "params", "task", "train_seq_len", "kv_pairs", "d_model",
                  "n_layers", "n_heads", "task_params")


def _chosen(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of each configuration at its chosen learning rate: the sweep seed's row at the rate its
    validation accuracy chose, and the other seeds (trained at that rate). A configuration with one rate
    keeps all its rows."""
    if rows.empty:
        return rows
    keys = [c for c in CONFIG_COLUMNS if c in rows.columns]
    kept = []
    for _, group in rows.groupby(keys, dropna=False, sort=False):
        sweep = group[group.lr.notna() & (group.seed == SWEEP_SEED)]
        if sweep.lr.nunique() > 1:
            runs = sweep.drop_duplicates("training_id")
            lr = choose_lr([(float(r.lr), float(r.valid_accuracy),
                             None if pd.isna(r.steps_to_criterion) else int(r.steps_to_criterion))
                            for r in runs.itertuples()])
            group = group[(group.seed != SWEEP_SEED) | (group.lr == lr)]
        kept.append(group)
    return pd.concat(kept, ignore_index=True)


# Columns a finding may read; the store leaves out columns that are empty in every row of a run.
COLUMNS = (*CONFIG_COLUMNS, "seq_len", "seed", "lr", "lr_used", "training_id", "valid_accuracy",
           "steps_to_criterion", "tokens_to_criterion", "valid_steps", "valid_curve", "example_accuracy",
           "chance", "depth", "window", "global_tokens", "key_distance", "key_position", "key_len",
           "short_conv")


def experiment_rows(rows: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The ok rows of an experiment at each configuration's chosen learning rate."""
    if rows.empty or "experiment" not in rows.columns:
        return pd.DataFrame()
    ok = rows[(rows.experiment == experiment) & (rows.status == "ok")].copy()
    for column in COLUMNS:
        if column not in ok.columns:
            ok[column] = None
    return _chosen(ok)


def _estimate(rows: pd.DataFrame) -> Estimate | None:
    """The interval of rows that are the seeds of one configuration and evaluation."""
    per_seed = [np.asarray(x, dtype=float) for x in rows.example_accuracy if x is not None and len(x)]
    return intervals.estimate(per_seed) if per_seed else None


def _per_seed(rows: pd.DataFrame) -> list[np.ndarray]:
    return [np.asarray(x, dtype=float) for x in rows.example_accuracy]


def _points(rows: pd.DataFrame, x: str, label: Callable[[pd.Series], str]) -> list[dict]:
    """Chart series: per label, per x, the estimate over seeds."""
    series: dict[str, list[dict]] = {}
    for (name, value), group in rows.groupby([rows.apply(label, axis=1), x], sort=True):
        e = _estimate(group)
        if e is not None:
            series.setdefault(name, []).append({"x": _plain(value), **e.as_dict()})
    return [{"name": k, "points": v} for k, v in series.items()]


def _curves(rows: pd.DataFrame, label: Callable[[pd.Series], str]) -> list[dict]:
    """Validation curves per label: the mean over seeds at each step, with the seeds' range. A run that
    stopped at its criterion keeps its last value afterwards (it would not have unlearned)."""
    series = []
    for name, group in rows.drop_duplicates("training_id").groupby(rows.apply(label, axis=1)):
        steps = sorted({int(s) for run in group.valid_steps for s in run})
        if not steps:
            continue
        values = np.array([np.interp(steps, np.asarray(s, float), np.asarray(v, float), right=v[-1])
                           for s, v in zip(group.valid_steps, group.valid_curve, strict=True)])
        series.append({"name": name, "points": [
            {"x": s, "mean": round(float(column.mean()), 4), "low": round(float(column.min()), 4),
             "high": round(float(column.max()), 4), "n_seeds": len(values)}
            for s, column in zip(steps, values.T, strict=True)]})
    return series


def _plain(value):
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    return value.item() if isinstance(value, np.generic) else value


def _steps_to_criterion(rows: pd.DataFrame) -> str:
    runs = rows.drop_duplicates("training_id")
    reached = runs.steps_to_criterion.dropna()
    if reached.empty:
        return f"criterion not reached in {len(runs)} run(s)"
    return (f"steps to criterion {int(reached.median())} (median of {len(reached)} of {len(runs)} runs; "
            f"tokens {int(runs.tokens_to_criterion.dropna().median())})")


def _row(rows: pd.DataFrame, **labels) -> dict:
    e = _estimate(rows)
    runs = rows.drop_duplicates("training_id")
    reached = runs.steps_to_criterion.dropna()
    return {**labels, **(e.as_dict() if e else {}),
            "steps_to_criterion": int(reached.median()) if len(reached) else None,
            "reached": f"{len(reached)}/{len(runs)}", "lr": _lr_text(runs)}


def _lr_text(runs: pd.DataFrame) -> str:
    used = runs.lr_used.dropna().unique() if "lr_used" in runs else []
    return ", ".join(f"{x:g}" for x in sorted(used))


def _is_softmax(rows: pd.DataFrame) -> pd.Series:
    return rows.variant.isin(SOFTMAX_VARIANTS)


def _no_data(name: str, claim: str, experiment: str) -> Finding:
    return Finding(name, claim, experiment, "no data", f"no ok rows of experiment {experiment!r}")


# --- the findings ---------------------------------------------------------------------------------

def mqar_capacity(rows: pd.DataFrame) -> Finding:
    name, experiment = "mqar", "mqar_capacity"
    claim = ("MQAR (Zoology): at a fixed small width softmax attention solves every number of key-value "
             "pairs tested; linear attention and Performer fall behind as the pairs grow; Mamba needs width "
             "that grows with the pairs.")
    rows = experiment_rows(rows, experiment)
    if rows.empty:
        return _no_data(name, claim, experiment)
    width = int(rows.d_model.min())
    base = rows[rows.d_model == width]
    kvs = sorted(int(k) for k in base.kv_pairs.unique())
    softmax = base[_is_softmax(base)]
    checks, table = [], []
    for (variant, d, kv), group in rows.groupby(["variant", "d_model", "kv_pairs"]):
        table.append(_row(group, variant=variant, d_model=int(d), kv_pairs=int(kv)))
    solved = [(kv, _estimate(softmax[softmax.kv_pairs == kv])) for kv in kvs]
    solved = [(kv, e) for kv, e in solved if e is not None]
    checks.append(Check(f"softmax attention (d_model {width}) >= {SOLVED} at every kv_pairs",
                        intervals.all_of([intervals.at_least(e, SOLVED) for _, e in solved]),
                        ", ".join(f"kv={kv}: {e.text()}" for kv, e in solved)))
    largest, smallest = kvs[-1], kvs[0]
    for family in ("linear", "performer"):
        other = base[base.variant == family]
        if other.empty or softmax.empty:
            continue
        margins = {kv: intervals.difference(_per_seed(softmax[softmax.kv_pairs == kv]),
                                            _per_seed(other[other.kv_pairs == kv]))
                   for kv in (smallest, largest)}
        grows = margins[largest].mean > margins[smallest].mean
        behind = _above_zero(margins[largest])
        checks.append(Check(f"{family} falls behind softmax as pairs grow: the margin at kv={largest} "
                            f"excludes zero and exceeds the margin at kv={smallest}",
                             intervals.all_of([behind, grows]),
                             f"margin kv={smallest}: {margins[smallest].text()}, kv={largest}: "
                             f"{margins[largest].text()}"))
    mamba = rows[(rows.variant == "mamba") & (rows.kv_pairs == largest)]
    widths = sorted(int(d) for d in mamba.d_model.unique())
    if len(widths) > 1 and not softmax.empty:
        narrow, wide = mamba[mamba.d_model == widths[0]], mamba[mamba.d_model == widths[-1]]
        gap = intervals.difference(_per_seed(softmax[softmax.kv_pairs == largest]), _per_seed(narrow))
        gain = intervals.difference(_per_seed(wide), _per_seed(narrow))
        checks.append(Check(f"mamba needs width: at kv={largest} d_model {widths[0]} is behind softmax and "
                            f"d_model {widths[-1]} does better",
                            intervals.all_of([_above_zero(gap), _above_zero(gain)]),
                            f"softmax - mamba(d={widths[0]}): {gap.text()}; mamba d={widths[-1]} - "
                            f"d={widths[0]}: {gain.text()}"))
    label = lambda r: f"{r.variant} d={int(r.d_model)}"  # noqa: E731
    charts = [Chart("lines", "MQAR: accuracy against key-value pairs", "key-value pairs", "test accuracy",
                    _points(rows, "kv_pairs", label), log_x=True),
              Chart("curves", f"MQAR learning curves at kv={largest}", "training step", "validation accuracy",
                    _curves(rows[rows.kv_pairs == largest], label))]
    verdict = _decide(checks)
    return Finding(name, claim, experiment, verdict, _summary(checks), checks, table, charts)


def selective_copying(rows: pd.DataFrame) -> Finding:
    name, experiment = "selective_copying", "selective_copying"
    claim = f"Selective copying (Mamba): Mamba solves it (at least {HIGH} at the CPU length)."
    rows = experiment_rows(rows, experiment)
    if rows.empty:
        return _no_data(name, claim, experiment)
    rows = rows[rows.seq_len == rows.train_seq_len]
    table = [_row(g, variant=v, seq_len=int(n)) for (v, n), g in rows.groupby(["variant", "seq_len"])]
    mamba = rows[rows.variant == "mamba"]
    checks = []
    if not mamba.empty:
        longest = int(mamba.seq_len.max())
        e = _estimate(mamba[mamba.seq_len == longest])
        checks.append(Check(f"mamba >= {HIGH} at N={longest}", intervals.at_least(e, HIGH),
                            f"{e.text()}; {_steps_to_criterion(mamba)}"))
    label = lambda r: r.variant  # noqa: E731
    charts = [Chart("bars", "Selective copying: test accuracy", "variant", "test accuracy",
                    _points(rows, "seq_len", label), reference={f"{HIGH}": HIGH}),
              Chart("curves", "Selective copying learning curves", "training step", "validation accuracy",
                    _curves(rows, label))]
    return Finding(name, claim, experiment, _decide(checks), _summary(checks), checks, table, charts)


def induction_extrapolation(rows: pd.DataFrame) -> Finding:
    name, experiment = "induction", "induction_extrapolation"
    claim = (f"Induction heads (Mamba): trained at length L and tested up to 16L, Mamba keeps at least "
             f"{HIGH}; softmax attention with RoPE falls to near chance beyond a few times L.")
    rows = experiment_rows(rows, experiment)
    if rows.empty:
        return _no_data(name, claim, experiment)
    rows = rows.assign(ratio=rows.seq_len / rows.train_seq_len)
    table = [_row(g, variant=v, seq_len=int(n), times_L=round(float(n) / float(g.train_seq_len.iloc[0]), 3))
             for (v, n), g in rows.groupby(["variant", "seq_len"])]
    mamba, softmax = rows[rows.variant == "mamba"], rows[_is_softmax(rows)]
    checks = []
    if not mamba.empty:
        tested = [(int(n), _estimate(g)) for n, g in mamba[mamba.ratio >= 1].groupby("seq_len")]
        checks.append(Check(f"mamba >= {HIGH} at every length from L to {int(mamba.ratio.max())}L",
                            intervals.all_of([intervals.at_least(e, HIGH) for _, e in tested]),
                            ", ".join(f"N={n}: {e.text()}" for n, e in tested)))
    if not softmax.empty:
        chance = float(softmax.chance.iloc[0])
        at_l = _estimate(softmax[softmax.ratio == 1])
        far = [(int(n), _estimate(g)) for n, g in softmax[softmax.ratio >= EXTRAPOLATION].groupby("seq_len")]
        checks.append(Check(f"softmax learns the task at L (>= {HIGH})", intervals.at_least(at_l, HIGH),
                            at_l.text()))
        checks.append(Check(f"softmax near chance (<= {chance:.3f} + {NEAR_CHANCE}) from {EXTRAPOLATION}L on",
                            intervals.all_of([intervals.at_most(e, chance + NEAR_CHANCE) for _, e in far]),
                            ", ".join(f"N={n}: {e.text()}" for n, e in far)))
    charts = [Chart("lines", "Induction heads: accuracy against test length (trained at L)", "test length",
                    "test accuracy", _points(rows, "seq_len", lambda r: r.variant), log_x=True,
                    reference=_chance_reference(rows))]
    return Finding(name, claim, experiment, _decide(checks), _summary(checks), checks, table, charts)


def _chance_reference(rows: pd.DataFrame) -> dict:
    return {"chance": float(rows.chance.iloc[0])} if "chance" in rows and rows.chance.notna().any() else {}


def passkey_reach(rows: pd.Series) -> pd.Series:
    """Every digit "inside" the window (or among the global tokens, which all positions see), some digit
    "outside" the reach of the n_layers stacked windows, else "between". Each digit is read from
    key_distance tokens back; the last one sits at key_position + key_len - 1. A short convolution of k
    taps before each mixer reaches k - 1 tokens further per layer. Full attention: always "inside"."""
    window = rows.window.astype(float).fillna(np.inf)
    globals_ = rows.global_tokens.fillna(0).astype(float)
    distance = rows.key_distance.astype(float)
    last = rows.key_position.astype(float) + rows.key_len.astype(float) - 1
    conv = (rows.short_conv.fillna(0).astype(float) - 1).clip(lower=0)
    inside = (distance <= window) | (last < globals_)
    outside = (distance > rows.n_layers.astype(float) * (window + conv)) & (last >= globals_)
    labels = ["inside" if i else "outside" if o else "between" for i, o in zip(inside, outside, strict=True)]
    return pd.Series(labels, index=rows.index)


def passkey_window(rows: pd.DataFrame) -> Finding:
    name, experiment = "passkey", "passkey_window"
    claim = (f"Passkey with a sliding window: Longformer retrieves keys inside its window (at least {HIGH}) "
             "and fails outside its reach (near chance); full attention retrieves at every depth.")
    rows = experiment_rows(rows, experiment)
    if rows.empty:
        return _no_data(name, claim, experiment)
    rows = rows.assign(reach=passkey_reach(rows))
    table = [_row(g, variant=v, seq_len=int(n), depth=float(d), reach=r)
             for (v, n, d, r), g in rows.groupby(["variant", "seq_len", "depth", "reach"])]
    windowed, full = rows[rows.variant.str.startswith("longformer")], rows[_is_softmax(rows)]
    checks = []
    if not windowed.empty:
        chance = float(windowed.chance.iloc[0])
        for reach, test, text in (("inside", lambda e: intervals.at_least(e, HIGH), f">= {HIGH}"),
                                  ("outside", lambda e: intervals.at_most(e, chance + NEAR_CHANCE),
                                   f"near chance (<= {chance:.3g} + {NEAR_CHANCE})")):
            cells = [((int(n), float(d)), _estimate(g))
                     for (n, d), g in windowed[windowed.reach == reach].groupby(["seq_len", "depth"])]
            checks.append(Check(f"longformer {text} where the key is {reach} its reach",
                                intervals.all_of([test(e) for _, e in cells]) if cells else None,
                                ", ".join(f"N={n} depth={d:g}: {e.text()}" for (n, d), e in cells)))
    if not full.empty:
        cells = [((int(n), float(d)), _estimate(g)) for (n, d), g in full.groupby(["seq_len", "depth"])]
        checks.append(Check(f"full attention >= {HIGH} at every depth and length",
                            intervals.all_of([intervals.at_least(e, HIGH) for _, e in cells]),
                            ", ".join(f"N={n} depth={d:g}: {e.text()}" for (n, d), e in cells)))
    series = [{"name": variant, "points": [{"x": _plain(n), "y": _plain(d), **_estimate(g).as_dict()}
                                           for (n, d), g in group.groupby(["seq_len", "depth"])]}
              for variant, group in rows.groupby("variant")]
    charts = [Chart("heatmap", "Passkey: exact-match accuracy by context length and depth of the key",
                    "context length", "depth of the key (0 = start)", series)]
    return Finding(name, claim, experiment, _decide(checks), _summary(checks), checks, table, charts)


def listops_lra(rows: pd.DataFrame) -> Finding:
    name, experiment = "listops", "listops_lra"
    claim = (f"ListOps posed as LRA poses it (a bidirectional encoder, 10 classes): the families land within "
             f"{FEW_POINTS * 100:.0f} points of one another at this scale.")
    rows = experiment_rows(rows, experiment)
    if rows.empty:
        return _no_data(name, claim, experiment)
    estimates = {v: _estimate(g) for v, g in rows.groupby("variant")}
    table = [_row(g, variant=v) for v, g in rows.groupby("variant")]
    checks = []
    names = sorted(estimates)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    spreads = []
    for a, b in pairs:
        d = intervals.difference(_per_seed(rows[rows.variant == a]), _per_seed(rows[rows.variant == b]))
        within = True if -FEW_POINTS <= d.low and d.high <= FEW_POINTS else (
            False if d.low > FEW_POINTS or d.high < -FEW_POINTS else None)
        spreads.append((a, b, d, within))
    if spreads:
        checks.append(Check(f"every pair of families within {FEW_POINTS * 100:.0f} points (the interval of "
                            f"each difference inside +-{FEW_POINTS})",
                            intervals.all_of([w for *_, w in spreads]),
                            "; ".join(f"{a} - {b}: {d.text()}" for a, b, d, _ in spreads)))
    published = {v: [f"LRA {LRA_NAMES[v]}", LRA_LISTOPS[LRA_NAMES[v]] / 100]
                 for v in estimates if v in LRA_NAMES}
    charts = [Chart("bars", "ListOps (LRA posing): test accuracy, LRA's published figure beside", "variant",
                    "test accuracy", _points(rows, "train_seq_len", lambda r: r.variant),
                    reference=_chance_reference(rows), published=published),
              Chart("curves", "ListOps learning curves", "training step", "validation accuracy",
                    _curves(rows, lambda r: r.variant))]
    return Finding(name, claim, experiment, _decide(checks), _summary(checks), checks, table, charts)


def _summary(checks: list[Check]) -> str:
    if not checks:
        return "no check could be made from these rows"
    return "; ".join(f"{c.text}: {VERDICTS[c.holds] if c.holds is not None else 'undecided'}" for c in checks)


FINDINGS = (mqar_capacity, selective_copying, induction_extrapolation, passkey_window, listops_lra)


def check_claims(rows: pd.DataFrame) -> dict[str, Finding]:
    """Every finding, decided from a results frame (`harness.store.load`)."""
    return {f.name: f for f in (decide(rows) for decide in FINDINGS)}


def as_json(found: dict[str, Finding]) -> str:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps({k: clean(asdict(f)) for k, f in found.items()}, indent=1, default=str)


def summarize(out_dir, console) -> None:
    """After a run: print each finding this run's rows decide and write them for the report."""
    from harness import store

    found = check_claims(store.load(out_dir))
    Path(out_dir, FINDINGS_FILE).write_text(as_json(found))
    for f in found.values():
        if f.verdict != "no data":
            console.print(f"{f.verdict}: {f.claim} ({f.summary})")
