"""The published findings the learned-task suites test, decided from result rows with intervals.

Each finding quotes its paper's claim (`source`: paper and figure or table) and tests that shape on the
rows of its own experiment (the `experiment` column, set by suites.grids), at each configuration's
learning rate chosen on validation accuracy (`suites.learning_rate.choose_lr`).

**Trained precondition.** A family enters a comparison only if it beats its task's trivial baseline at
the experiment's easiest condition, its 95% interval clear above it. The baseline is measured on the
same test examples its rows were scored on (`suites.tasks.baselines`: MQAR's position rule, which
copies a value from the context without recall and is never below 1/kv; the majority answer
elsewhere). A family that does not is "not testable at this budget", never a margin.

**Intervals** (`harness.intervals`): t-intervals over seed means joined with the test examples'
interval; differences by Welch. A check holds when its interval lies on the claimed side of its
threshold, fails when it lies on the other side, and is undecided otherwise, or with fewer than 3 seeds.

**Verdicts**: "reproduced" (every check holds), "not reproduced" (one fails), "inconclusive" (none fails,
one is undecided; fewer than 3 seeds; a missing arm), "not testable at this budget" (a family the claim
needs did not train), each with its one-line reason; "no data" without rows. A finding whose recipe
changed after results (`suites.recipes`, from the run's environment.json) carries the label and diff.

`check_claims(rows, environment)` returns the findings; `summarize(out_dir, console)` prints them after a
run and writes FINDINGS_FILE, which the report reads (it does not import the suites); `python -m
suites.findings RUN` writes it again from a run's rows.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness import intervals
from harness.intervals import Estimate
from suites import grids, recipes
from suites.learning_rate import SWEEP_SEED, choose_lr
from suites.tasks import baselines, held_out_set
from suites.tasks.factory import make_task

FINDINGS_FILE = "findings.json"
SOLVED = 0.9  # MQAR: softmax attention "solves" a configuration at or above this
HIGH = 0.95  # selective copying, induction, passkey: the accuracy the papers report reaching
NEAR_BASELINE = 0.1  # "fails": at most this far above the trivial baseline
LRA_GAP = 0.10  # ListOps: linear attention and Performer at least 10 points below softmax
EXTRAPOLATION = 4  # induction: softmax judged from this multiple of the training length on
SOFTMAX_VARIANTS = ("vanilla", "flash-sdpa", "flash-cudnn", "flash-efficient", "flash-xformers")
CONTROL = grids.SELECTION_REMOVED  # selective copying: Mamba's block with the selection removed
# Long Range Arena (Tay et al. 2021), ListOps test accuracy (%), printed beside the CPU figures.
LRA_LISTOPS = {"Transformer": 36.37, "Local attention": 15.82, "Sparse Transformer": 17.07,
               "Longformer": 35.63, "BigBird": 36.05, "Linear Transformer": 16.13, "Performer": 18.01}
LRA_NAMES = {"vanilla": "Transformer", "flash-sdpa": "Transformer", "longformer": "Longformer",
             "longformer-banded": "Longformer", "sparse-bigbird": "BigBird",
             "sparse-fixed": "Sparse Transformer", "linear": "Linear Transformer", "performer": "Performer"}

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOT_TESTABLE, NO_DATA = "not testable at this budget", "no data"
VERDICTS = {True: REPRODUCED, False: NOT_REPRODUCED, None: INCONCLUSIVE}
# Finding name -> the experiment (suites.grids) whose rows decide it.
EXPERIMENTS = {"mqar": "mqar_capacity", "selective_copying": "selective_copying",
               "induction": "induction_extrapolation", "passkey": "passkey_window", "listops": "listops_lra"}


@dataclass
class Check:
    text: str
    holds: bool | None
    figures: str = ""
    deciding: str = ""  # the figures that decided it, where it reads many (the reason quotes these)


def cells_check(text: str, cells: list[tuple[str, Estimate | None, bool | None]]) -> Check:
    """A check that holds in every cell (label, estimate, outcome); its deciding figures are the cells
    that fail it, else those left undecided."""
    holds = intervals.all_of([outcome for *_, outcome in cells]) if cells else None
    shown = lambda chosen: ", ".join(f"{label}: {_text(e)}" for label, e, _ in chosen)  # noqa: E731
    deciding = [c for c in cells if c[2] is holds] if holds is not True else []
    return Check(text, holds, shown(cells), shown(deciding))


@dataclass
class Family:
    """A family's trained precondition and its own verdict in the finding."""

    name: str
    condition: str  # the easiest condition, where it must beat the baseline
    accuracy: dict | None  # Estimate.as_dict() there
    baseline: float | None  # the trivial rule's accuracy on the same test examples
    trained: bool | None  # interval clear above the baseline (None: undecided)
    verdict: str = ""
    reason: str = ""


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
    claim: str  # the claim as its paper states it
    source: str  # paper, figure or table
    experiment: str
    verdict: str
    reason: str  # one line
    test: str = ""  # the shape tested here
    checks: list[Check] = field(default_factory=list)
    families: list[Family] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)  # the figures, each with its interval and seeds
    charts: list[Chart] = field(default_factory=list)
    seeds: dict = field(default_factory=dict)  # {"min", "max"} seeds per configuration read
    baseline_rule: str = ""
    recipe: dict | None = None  # recipes.changes(): label and diff, when changed after results

    @property
    def reproduced(self) -> bool | None:
        return {REPRODUCED: True, NOT_REPRODUCED: False}.get(self.verdict)

    @property
    def summary(self) -> str:
        return "; ".join(f"{c.text}: {_holds(c.holds)}" for c in self.checks) or self.reason


def _holds(holds: bool | None) -> str:
    return {True: "holds", False: "fails"}.get(holds, "undecided")


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


def _options(value) -> str:
    """task_params as canonical JSON (rows hold it as JSON text; a dict in hand-made frames)."""
    options = json.loads(value) if isinstance(value, str) else dict(value or {})
    return json.dumps(options, sort_keys=True)


def _int_or_none(value) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _float_or_none(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


@functools.lru_cache(maxsize=1024)
def baseline_examples(task: str, seq_len: int, kv_pairs: int | None, depth: float | None, options: str,
                      n_test: int, seed: int) -> np.ndarray:
    """The trivial rule's score of each example of the test set a row was scored on (deterministic by
    seed: `held_out_set`)."""
    generator = make_task(task, seq_len, kv_pairs, depth, json.loads(options))
    return baselines.per_example(task, held_out_set(generator, n_test, seed), kv_pairs).numpy()


def with_baselines(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds `baseline_example`: the trivial rule's per-example scores on each row's own test set."""
    if rows.empty:
        return rows
    column = [baseline_examples(r.task, int(r.seq_len), _int_or_none(r.kv_pairs), _float_or_none(r.depth),
                                _options(r.task_params), len(r.example_accuracy), int(r.seed))
              for r in rows.itertuples()]
    return rows.assign(baseline_example=column)


def _per_seed(rows: pd.DataFrame, column: str = "example_accuracy") -> list[np.ndarray]:
    """Each trained model's examples (rows of one model, e.g. passkey depths, pooled)."""
    return [np.concatenate([np.asarray(x, dtype=float) for x in group[column]])
            for _, group in rows.groupby("training_id", sort=True)]


def _estimate(rows: pd.DataFrame) -> Estimate | None:
    """The interval of rows that are the seeds of one configuration (several evaluations pooled)."""
    per_seed = [x for x in _per_seed(rows) if x.size] if not rows.empty else []
    return intervals.estimate(per_seed) if per_seed else None


def _baseline(rows: pd.DataFrame) -> float | None:
    if rows.empty:
        return None
    return float(np.mean([x.mean() for x in _per_seed(rows, "baseline_example")]))


def _difference(a: pd.DataFrame, b: pd.DataFrame) -> Estimate | None:
    return intervals.difference(_per_seed(a), _per_seed(b)) if not (a.empty or b.empty) else None


def _text(e: Estimate | None) -> str:
    return e.text() if e is not None else "no rows"


def precondition(name: str, rows: pd.DataFrame, condition: str) -> Family:
    """Whether a family's rows at its easiest condition lie clear above the trivial baseline there."""
    e, base = _estimate(rows), _baseline(rows)
    trained = intervals.above(e, base) if base is not None else None
    family = Family(name, condition, e.as_dict() if e else None, None if base is None else round(base, 6),
                    trained)
    if trained is not True:
        family.verdict = NOT_TESTABLE
        how = "is not clear above" if trained is None else "does not beat"
        family.reason = f"{_text(e)} at {condition} {how} the trivial baseline " + (
            "(no rows)" if base is None else f"{base:.3f}")
    return family


# --- figures: tables and charts ---------------------------------------------------------------------

def _plain(value):
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    return value.item() if isinstance(value, np.generic) else value


def _steps(runs: pd.DataFrame) -> list[int | None]:
    """Steps to the criterion of each seed's training, in seed order (None: not reached)."""
    runs = runs.sort_values("seed")
    return [_int_or_none(s) for s in runs.steps_to_criterion]


def _row(rows: pd.DataFrame, **labels) -> dict:
    e, runs = _estimate(rows), rows.drop_duplicates("training_id")
    base = _baseline(rows) if "baseline_example" in rows else None
    steps = _steps(runs)
    return {**labels, **(e.as_dict() if e else {}),
            "baseline": None if base is None else round(base, 6),
            "steps_to_criterion": steps, "reached": f"{sum(s is not None for s in steps)}/{len(steps)}",
            "lr": _lr_text(runs)}


def _lr_text(runs: pd.DataFrame) -> str:
    used = runs.lr_used.dropna().unique() if "lr_used" in runs else []
    return ", ".join(f"{x:g}" for x in sorted(used))


def _points(rows: pd.DataFrame, x: str, label: Callable[[pd.Series], str]) -> list[dict]:
    """Chart series: per label, per x, the estimate over seeds."""
    series: dict[str, list[dict]] = {}
    for (name, value), group in rows.groupby([rows.apply(label, axis=1), x], sort=True):
        e = _estimate(group)
        if e is not None:
            series.setdefault(name, []).append({"x": _plain(value), **e.as_dict()})
    return [{"name": k, "points": v} for k, v in series.items()]


def _baseline_points(rows: pd.DataFrame, x: str, name: str = "trivial baseline") -> list[dict]:
    """The trivial baseline against x, a series of its own (no interval: a rule, measured)."""
    points = []
    for value, group in rows.groupby(x, sort=True):
        base = _baseline(group)
        points.append({"x": _plain(value), "mean": round(base, 6), "low": round(base, 6),
                       "high": round(base, 6), "n_seeds": group.training_id.nunique()})
    return [{"name": name, "points": points}] if points else []


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


def _seed_counts(rows: pd.DataFrame, keys: list[str]) -> dict:
    counts = rows.groupby(keys, dropna=False).training_id.nunique()
    return {"min": int(counts.min()), "max": int(counts.max())} if len(counts) else {}


def _is_softmax(rows: pd.DataFrame) -> pd.Series:
    return rows.variant.isin(SOFTMAX_VARIANTS)


def _softmax_name(rows: pd.DataFrame) -> str | None:
    return next((v for v in SOFTMAX_VARIANTS if (rows.variant == v).any()), None)


# --- verdicts -------------------------------------------------------------------------------------

def _decide(finding: Finding, required: list[Family] | None = None) -> Finding:
    """The verdict and its reason: too few seeds, a required family that did not train, else the checks."""
    seeds = finding.seeds.get("min")
    untrained = [f for f in (required or []) if f.trained is not True]
    if seeds is not None and seeds < intervals.MIN_SEEDS:
        finding.verdict = INCONCLUSIVE
        finding.reason = (f"{seeds} seed(s) at some configuration: fewer than {intervals.MIN_SEEDS} seeds "
                          "give no verdict")
    elif untrained:
        finding.verdict, finding.reason = NOT_TESTABLE, _untrained_reason(untrained)
    elif not finding.checks:
        finding.verdict, finding.reason = INCONCLUSIVE, "no check could be made from these rows"
    else:
        holds = intervals.all_of([c.holds for c in finding.checks])
        finding.verdict = VERDICTS[holds]
        if holds is True:
            finding.reason = "every check holds: " + "; ".join(c.text for c in finding.checks)
        else:
            c = next(c for c in finding.checks if c.holds is holds)
            finding.reason = f"{c.text}: {_holds(c.holds)} ({c.deciding or c.figures})"
    excluded = [f.name for f in finding.families if f.verdict == NOT_TESTABLE and f not in untrained]
    if excluded and finding.verdict != NOT_TESTABLE:
        finding.reason += f"; not testable at this budget (did not train): {', '.join(excluded)}"
    return finding


def _untrained_reason(families: list[Family]) -> str:
    """One line: which families did not clear their trivial baseline, and where."""
    conditions = {f.condition for f in families}
    where = f" at {conditions.pop()}" if len(conditions) == 1 else ""
    figures = ", ".join(f"{f.name} {_accuracy_text(f.accuracy)} vs {f.baseline:.3f}"
                        + ("" if where else f" at {f.condition}") for f in families)
    return f"did not beat the trivial baseline{where} (interval not clear above it): {figures}"


def _accuracy_text(accuracy: dict | None) -> str:
    if not accuracy:
        return "no rows"
    return f"{accuracy['mean']:.3f} [{accuracy['low']:.3f}, {accuracy['high']:.3f}] (n={accuracy['n_seeds']})"


def _no_data(name: str, claim: str, source: str, experiment: str) -> Finding:
    return Finding(name, claim, source, experiment, NO_DATA, f"no ok rows of experiment {experiment!r}")


# --- the findings ---------------------------------------------------------------------------------

MQAR_CLAIM = ("Attention solves MQAR at every model width tested. Gated convolutions and other small-state "
              "models need a width (state size) that grows with the number of key-value pairs and the "
              "sequence length: they learn the task at small pair counts and then degrade as pairs grow.")
MQAR_SOURCE = "Zoology (Arora et al. 2023), MQAR (its Figure 2 and section 3)"


def mqar_capacity(rows: pd.DataFrame) -> Finding:
    name, experiment = "mqar", "mqar_capacity"
    test = (f"softmax >= {SOLVED} at every pair count; each small-state family that beat its trivial "
            "baseline at the fewest pairs is behind softmax at the most pairs, by a margin that grows from "
            "the fewest; Mamba wider does better at the most pairs, from a trained narrow model")
    rows = experiment_rows(rows, experiment)
    if rows.empty:
        return _no_data(name, MQAR_CLAIM, MQAR_SOURCE, experiment)
    rows = with_baselines(rows)
    width = int(rows.d_model.min())
    base = rows[rows.d_model == width]
    kvs = sorted(int(k) for k in base.kv_pairs.unique())
    fewest, most = kvs[0], kvs[-1]
    table = [_row(g, variant=v, d_model=int(d), kv_pairs=int(kv), one_over_kv=round(1 / kv, 4))
             for (v, d, kv), g in rows.groupby(["variant", "d_model", "kv_pairs"])]
    finding = Finding(name, MQAR_CLAIM, MQAR_SOURCE, experiment, "", "", test, table=table,
                      seeds=_seed_counts(rows, ["variant", "d_model", "kv_pairs"]),
                      baseline_rule=baselines.describe("mqar"))
    at = lambda v, kv, d=width: rows[(rows.variant == v) & (rows.kv_pairs == kv) & (rows.d_model == d)]  # noqa: E731
    softmax_name = _softmax_name(base)
    required = []
    if softmax_name is not None:
        softmax = precondition(softmax_name, at(softmax_name, fewest), f"kv_pairs={fewest}, d_model={width}")
        finding.families.append(softmax)
        required.append(softmax)
        solved = [(f"kv={kv}", e, intervals.at_least(e, SOLVED))
                  for kv, e in ((kv, _estimate(at(softmax_name, kv))) for kv in kvs)]
        finding.checks.append(cells_check(f"{softmax_name} (d_model {width}) >= {SOLVED} at every kv_pairs",
                                          solved))
    small_state = sorted(set(base.variant) - set(SOFTMAX_VARIANTS))
    trained = []
    for family in small_state:
        f = precondition(family, at(family, fewest), f"kv_pairs={fewest}, d_model={width}")
        finding.families.append(f)
        if f.trained is not True or softmax_name is None:
            continue
        trained.append(f)
        behind = _difference(at(softmax_name, most), at(family, most))
        growth = intervals.contrast([(1, _per_seed(at(softmax_name, most))),
                                     (-1, _per_seed(at(family, most))),
                                     (-1, _per_seed(at(softmax_name, fewest))),
                                     (1, _per_seed(at(family, fewest)))])
        check = Check(f"{family} falls behind {softmax_name} as pairs grow: the margin at kv={most} is above "
                      f"zero and above the margin at kv={fewest}",
                      intervals.all_of([intervals.above(behind, 0), intervals.above(growth, 0)]),
                      f"margin at kv={most}: {_text(behind)}; growth from kv={fewest}: {growth.text()}")
        finding.checks.append(check)
        f.verdict, f.reason = VERDICTS[check.holds], f"{check.text}: {_holds(check.holds)} ({check.figures})"
    finding.checks += _mqar_width(rows, finding, softmax_name, width, most)
    if softmax_name is not None and small_state and not trained:  # nothing to compare softmax with
        required += [f for f in finding.families if f.name in small_state]
    _decide(finding, required)
    label = lambda r: f"{r.variant} d={int(r.d_model)}"  # noqa: E731
    finding.charts = [
        Chart("lines", "MQAR: accuracy against key-value pairs", "key-value pairs", "test accuracy",
              _points(rows, "kv_pairs", label) + _baseline_points(base, "kv_pairs", "trivial baseline "
                                                                 "(position rule)"), log_x=True),
        Chart("curves", f"MQAR learning curves at kv={most}", "training step", "validation accuracy",
              _curves(rows[rows.kv_pairs == most], label))]
    return finding


def _mqar_width(rows: pd.DataFrame, finding: Finding, softmax_name: str | None, width: int,
                most: int) -> list[Check]:
    """Mamba's width: a wider model at the most pairs does better than the narrow one, which is behind
    softmax there; both must have trained (the narrow at the fewest pairs, the wide at its own)."""
    mamba = rows[rows.variant == "mamba"]
    wider = sorted(int(d) for d in mamba.d_model.unique() if d > width)
    narrow = next((f for f in finding.families if f.name == "mamba"), None)
    if not wider or narrow is None or softmax_name is None:
        return []
    d = wider[-1]
    wide_rows = mamba[mamba.d_model == d]
    easiest = int(wide_rows.kv_pairs.min())
    wide = precondition(f"mamba d={d}", wide_rows[wide_rows.kv_pairs == easiest],
                        f"kv_pairs={easiest}, d_model={d}")
    finding.families.append(wide)
    if narrow.trained is not True or wide.trained is not True:
        if wide.trained is True:
            wide.verdict, wide.reason = NOT_TESTABLE, f"the narrow mamba did not train: {narrow.reason}"
        return []
    at_most = lambda frame: frame[frame.kv_pairs == most]  # noqa: E731
    narrow_rows = at_most(mamba[mamba.d_model == width])
    gap = _difference(at_most(rows[(rows.variant == softmax_name) & (rows.d_model == width)]), narrow_rows)
    gain = _difference(at_most(wide_rows), narrow_rows)
    check = Check(f"mamba needs width: at kv={most} d_model {width} is behind {softmax_name} and d_model {d} "
                  "does better", intervals.all_of([intervals.above(gap, 0), intervals.above(gain, 0)]),
                  f"{softmax_name} - mamba(d={width}): {_text(gap)}; mamba d={d} - d={width}: {_text(gain)}")
    wide.verdict, wide.reason = VERDICTS[check.holds], f"{check.text}: {_holds(check.holds)}"
    return [check]


COPY_CLAIM = ("Selective copying: the selective SSM (S6: input-dependent Delta, B and C) solves it, 99.8% "
              "for Mamba's block; without selection (time-invariant, S4) the same architecture does not, "
              "about 18% for S4 and 56% in Mamba's block.")
COPY_SOURCE = "Mamba (Gu & Dao 2023), Table 1"


def selective_copying(rows: pd.DataFrame) -> Finding:
    name, experiment = "selective_copying", "selective_copying"
    test = (f"mamba (selective) >= {HIGH} at the trained length, and the same block time-invariant "
            f"({CONTROL}) below {HIGH} there")
    rows = experiment_rows(rows, experiment)
    if rows.empty:
        return _no_data(name, COPY_CLAIM, COPY_SOURCE, experiment)
    rows = with_baselines(rows[rows.seq_len == rows.train_seq_len])
    n = int(rows.seq_len.min())
    rows = rows[rows.seq_len == n]
    table = [_row(g, variant=v, seq_len=int(length))
             for (v, length), g in rows.groupby(["variant", "seq_len"])]
    finding = Finding(name, COPY_CLAIM, COPY_SOURCE, experiment, "", "", test, table=table,
                      seeds=_seed_counts(rows[rows.variant.isin(["mamba", CONTROL])], ["variant"]),
                      baseline_rule=baselines.describe("selective_copy"))
    mamba, control = rows[rows.variant == "mamba"], rows[rows.variant == CONTROL]
    selective = precondition("mamba", mamba, f"N={n}")
    finding.families.append(selective)
    if not control.empty:
        e, base = _estimate(control), _baseline(control)
        finding.families.append(Family(CONTROL, f"N={n}", e.as_dict(), round(base, 6),
                                       intervals.above(e, base), "control",
                                       "the control is expected to fail: no precondition"))
    e = _estimate(mamba)
    finding.checks.append(Check(f"mamba >= {HIGH} at N={n}", intervals.at_least(e, HIGH),
                                f"{_text(e)}; steps to criterion "
                                f"{_steps(mamba.drop_duplicates('training_id'))}"))
    control_text = f"{CONTROL} (the same block time-invariant) below {HIGH} at N={n}"
    if control.empty:
        missing = f"no rows of {CONTROL}: the claim is selective against time-invariant, and it did not run"
        finding.checks.append(Check(control_text, None, missing))
    else:
        c = _estimate(control)
        reaches = intervals.at_least(c, HIGH)
        finding.checks.append(Check(control_text, None if reaches is None else not reaches,
                                    f"{_text(c)}; trivial baseline {_baseline(control):.3f}"))
    _decide(finding, [selective])
    label = lambda r: r.variant  # noqa: E731
    finding.charts = [
        Chart("bars", "Selective copying: test accuracy", "variant", "test accuracy",
              _points(rows, "seq_len", label),
              reference={f"{HIGH}": HIGH, "trivial baseline": _baseline(rows)}),
        Chart("curves", "Selective copying learning curves", "training step", "validation accuracy",
              _curves(rows, label))]
    return finding


INDUCTION_CLAIM = ("Induction heads: trained at length 256 and tested up to 2^20, Mamba stays at 100%; "
                   "attention with RoPE, xPos or ALiBi fails beyond about 2x the training length.")
INDUCTION_SOURCE = "Mamba (Gu & Dao 2023), Table 2"


def induction_extrapolation(rows: pd.DataFrame) -> Finding:
    name, experiment = "induction", "induction_extrapolation"
    test = (f"mamba >= {HIGH} at every test length from L to the longest; softmax with RoPE >= {HIGH} at L "
            f"and within {NEAR_BASELINE} of the trivial baseline from {EXTRAPOLATION}L on")
    rows = experiment_rows(rows, experiment)
    if rows.empty:
        return _no_data(name, INDUCTION_CLAIM, INDUCTION_SOURCE, experiment)
    rows = with_baselines(rows)
    rows = rows.assign(ratio=rows.seq_len / rows.train_seq_len)
    table = [_row(g, variant=v, seq_len=int(n), times_L=round(float(n) / float(g.train_seq_len.iloc[0]), 3))
             for (v, n), g in rows.groupby(["variant", "seq_len"])]
    finding = Finding(name, INDUCTION_CLAIM, INDUCTION_SOURCE, experiment, "", "", test, table=table,
                      seeds=_seed_counts(rows, ["variant", "seq_len"]),
                      baseline_rule=baselines.describe("induction"))
    mamba, softmax_name = rows[rows.variant == "mamba"], _softmax_name(rows)
    required = []
    if not mamba.empty:
        required.append(precondition("mamba", mamba[mamba.ratio == 1], "the training length L"))
        tested = [(f"N={int(n)}", e, intervals.at_least(e, HIGH))
                  for n, e in ((n, _estimate(g)) for n, g in mamba[mamba.ratio >= 1].groupby("seq_len"))]
        finding.checks.append(cells_check(f"mamba >= {HIGH} at every length from L to "
                                          f"{int(mamba.ratio.max())}L", tested))
    if softmax_name is not None:
        softmax = rows[rows.variant == softmax_name]
        required.append(precondition(softmax_name, softmax[softmax.ratio == 1], "the training length L"))
        at_l = _estimate(softmax[softmax.ratio == 1])
        far = [(f"N={int(n)} (baseline {b:.3f})", e, intervals.at_most(e, b + NEAR_BASELINE))
               for n, g in softmax[softmax.ratio >= EXTRAPOLATION].groupby("seq_len")
               for e, b in [(_estimate(g), _baseline(g))]]
        finding.checks.append(Check(f"{softmax_name} learns the task at L (>= {HIGH})",
                                    intervals.at_least(at_l, HIGH), _text(at_l)))
        finding.checks.append(cells_check(f"{softmax_name} within {NEAR_BASELINE} of the trivial baseline "
                                          f"from {EXTRAPOLATION}L on", far))
    finding.families = required
    _decide(finding, required)
    finding.charts = [Chart("lines", "Induction heads: accuracy against test length (trained at L)",
                            "test length", "test accuracy",
                            _points(rows, "seq_len", lambda r: r.variant) + _baseline_points(rows, "seq_len"),
                            log_x=True)]
    return finding


def passkey_reach(rows: pd.DataFrame) -> pd.Series:
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


PASSKEY_CLAIM = ("A sliding window of w tokens over l layers reaches l x w tokens back: a key inside the "
                 "window is retrieved, one beyond the stack's reach is not; full attention retrieves a "
                 "passkey at every depth of its context.")
PASSKEY_SOURCE = ("Longformer (Beltagy et al. 2020), section 3.1 (receptive field l x w); passkey retrieval "
                  "as in Mohtashami & Jaggi 2023")


def passkey_window(rows: pd.DataFrame) -> Finding:
    name, experiment = "passkey", "passkey_window"
    test = (f"longformer >= {HIGH} where the key is inside its window and within {NEAR_BASELINE} of the "
            f"trivial baseline beyond its reach; full attention >= {HIGH} at every depth and length")
    rows = experiment_rows(rows, experiment)
    if rows.empty:
        return _no_data(name, PASSKEY_CLAIM, PASSKEY_SOURCE, experiment)
    rows = with_baselines(rows)
    rows = rows.assign(reach=passkey_reach(rows))
    table = [_row(g, variant=v, seq_len=int(n), depth=float(d), reach=r)
             for (v, n, d, r), g in rows.groupby(["variant", "seq_len", "depth", "reach"])]
    finding = Finding(name, PASSKEY_CLAIM, PASSKEY_SOURCE, experiment, "", "", test, table=table,
                      seeds=_seed_counts(rows, ["variant", "seq_len", "depth"]),
                      baseline_rule=baselines.describe("passkey"))
    windowed, softmax_name = rows[rows.variant.str.startswith("longformer")], _softmax_name(rows)
    trained_len = lambda frame: frame[frame.seq_len == frame.train_seq_len]  # noqa: E731
    required = []
    if not windowed.empty:
        variant = windowed.variant.iloc[0]
        inside = trained_len(windowed[windowed.reach == "inside"])
        required.append(precondition(variant, inside, "the training length, keys inside its window"))
        for reach, test_of, text in (
                ("inside", lambda e, b: intervals.at_least(e, HIGH), f">= {HIGH}"),
                ("outside", lambda e, b: intervals.at_most(e, b + NEAR_BASELINE),
                 f"within {NEAR_BASELINE} of the trivial baseline")):
            cells = [(f"N={int(n)} depth={d:g}", e, test_of(e, _baseline(g)))
                     for (n, d), g in windowed[windowed.reach == reach].groupby(["seq_len", "depth"])
                     for e in [_estimate(g)]]
            finding.checks.append(cells_check(f"{variant} {text} where the key is {reach} its reach", cells))
    if softmax_name is not None:
        full = rows[rows.variant == softmax_name]
        required.append(precondition(softmax_name, trained_len(full), "the training length, every depth"))
        cells = [(f"N={int(n)} depth={d:g}", e, intervals.at_least(e, HIGH))
                 for (n, d), g in full.groupby(["seq_len", "depth"]) for e in [_estimate(g)]]
        finding.checks.append(cells_check(f"{softmax_name} >= {HIGH} at every depth and length", cells))
    finding.families = required
    _decide(finding, required)
    series = [{"name": variant, "points": [{"x": _plain(n), "y": _plain(d), **_estimate(g).as_dict()}
                                           for (n, d), g in group.groupby(["seq_len", "depth"])]}
              for variant, group in rows.groupby("variant")]
    finding.charts = [Chart("heatmap", "Passkey: exact-match accuracy by context length and depth of the key",
                            "context length", "depth of the key (0 = start)", series)]
    return finding


LISTOPS_CLAIM = ("ListOps (N = 2K): Transformer 36.37, Longformer 35.63, BigBird 36.05, Linear Transformer "
                 "16.13, Performer 18.01. The claim is the gap: the linear-time approximations fall about "
                 "20 points below softmax attention.")
LISTOPS_SOURCE = "Long Range Arena (Tay et al. 2021), Table 1"


def listops_lra(rows: pd.DataFrame) -> Finding:
    name, experiment = "listops", "listops_lra"
    test = f"linear attention and Performer each at least {LRA_GAP * 100:.0f} points below softmax"
    rows = experiment_rows(rows, experiment)
    if rows.empty:
        return _no_data(name, LISTOPS_CLAIM, LISTOPS_SOURCE, experiment)
    rows = with_baselines(rows)
    table = [_row(g, variant=v) for v, g in rows.groupby("variant")]
    finding = Finding(name, LISTOPS_CLAIM, LISTOPS_SOURCE, experiment, "", "", test, table=table,
                      seeds=_seed_counts(rows, ["variant"]), baseline_rule=baselines.describe("listops"))
    condition = f"N={int(rows.train_seq_len.iloc[0])}"
    softmax_name = _softmax_name(rows)
    families = {v: precondition(v, g, condition) for v, g in rows.groupby("variant")}
    finding.families = list(families.values())
    approximations = [v for v in ("linear", "performer") if v in families]
    required = [families[softmax_name]] if softmax_name else []
    trained = [v for v in approximations if families[v].trained is True]
    for family in trained:
        d = _difference(rows[rows.variant == softmax_name], rows[rows.variant == family])
        check = Check(f"{family} at least {LRA_GAP * 100:.0f} points below {softmax_name}",
                      intervals.at_least(d, LRA_GAP), f"{softmax_name} - {family}: {_text(d)}")
        finding.checks.append(check)
        families[family].verdict = VERDICTS[check.holds]
        families[family].reason = f"{check.text}: {_holds(check.holds)} ({check.figures})"
    for v, f in families.items():
        if v not in (softmax_name, *approximations) and f.trained is True:
            f.verdict, f.reason = "context", "not part of the claim"
    if approximations and not trained:
        required += [families[v] for v in approximations]
    _decide(finding, required)
    published = {v: [f"LRA {LRA_NAMES[v]}", LRA_LISTOPS[LRA_NAMES[v]] / 100]
                 for v in families if v in LRA_NAMES}
    finding.charts = [
        Chart("bars", "ListOps (LRA posing): test accuracy, LRA's published figure beside", "variant",
              "test accuracy", _points(rows, "train_seq_len", lambda r: r.variant),
              reference={"majority class": _baseline(rows)}, published=published),
        Chart("curves", "ListOps learning curves", "training step", "validation accuracy",
              _curves(rows, lambda r: r.variant))]
    return finding


FINDINGS = (mqar_capacity, selective_copying, induction_extrapolation, passkey_window, listops_lra)


def check_claims(rows: pd.DataFrame, environment: dict | None = None) -> dict[str, Finding]:
    """Every finding, decided from a results frame (`harness.store.load`); `environment` (the run's
    environment.json) labels the findings whose recipe changed after results."""
    found = {f.name: f for f in (decide(rows) for decide in FINDINGS)}
    for f in found.values():
        f.recipe = recipes.changes(environment, f.experiment)
    return found


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


def write(out_dir) -> dict[str, Finding]:
    """Decide every finding from a run's rows and environment, and write FINDINGS_FILE there."""
    from harness import store

    path = Path(out_dir, store.ENVIRONMENT)
    try:
        environment = store.read_json(path) if path.exists() else None
    except store.CorruptFile:
        environment = None  # the run's own check moves it aside; the findings go without recipes
    found = check_claims(store.load(out_dir), environment)
    Path(out_dir, FINDINGS_FILE).write_text(as_json(found))
    return found


def summarize(out_dir, console) -> None:
    """After a run: print each finding this run's rows decide and write them for the report."""
    for f in write(out_dir).values():
        if f.verdict != NO_DATA:
            console.print(f"{f.verdict}: {f.name} ({f.source}): {f.reason}", markup=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suites.findings", description="Decide the findings "
                                     "from a run's rows and write findings.json")
    parser.add_argument("run", help="a run directory (results/<run>)")
    args = parser.parse_args(argv)
    from harness import store

    if not store.is_run_dir(Path(args.run)):
        print(f"error: {args.run} is not a run directory (no records/ or environment.json)", file=sys.stderr)
        return 2
    for f in write(args.run).values():
        print(f"{f.name}: {f.verdict}: {f.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
