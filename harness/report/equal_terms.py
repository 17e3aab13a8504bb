"""Accuracy on equal terms: per task over the conditions every compared variant ran, and a summary over the
tasks every one of them ran, each with its 95% interval (harness.intervals).

A variant that ran a task another lacks is not averaged over more (or fewer) tasks than the other: the
summary reads only the tasks they all ran, and the tasks left out are named per variant (`missing`,
`extra`). Within a task, only the conditions (evaluation length, key-value pairs, width, depth, ...) that
every variant that ran the task has are compared, so a variant trained at one more width is not averaged
over it either.

Intervals (`intervals.contrast`, Welch over the seeds joined with the test examples' interval): a task's
figure is the equal-weight mean over its trained configurations (width, key-value pairs, ...; separate
models), each configuration's models with their evaluations (lengths, depths) pooled, as the findings
do; the summary is the equal-weight mean over tasks (weight 1/T per task). Rows without per-example
scores (written before they were recorded) give the mean without an interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness import intervals
from harness.intervals import Estimate

# What makes two learned-task rows the same question, beyond the task (and the variant that answers it);
# the training keys make them the same trained configuration (the rest, seq_len and depth, are evaluations).
TRAINING_KEYS = ("train_len", "d_model", "n_layers", "n_heads", "kv_pairs", "task_params")
CONDITION_KEYS = (*TRAINING_KEYS, "seq_len", "depth")


@dataclass
class EqualTerms:
    variants: list[str]  # the variants compared
    per_task: dict[tuple[str, str], Estimate | float] = field(default_factory=dict)  # (variant, task)
    conditions: dict[str, int] = field(default_factory=dict)  # task -> conditions every runner has
    disjoint: list[str] = field(default_factory=list)  # tasks its variants ran under no common condition
    common: list[str] = field(default_factory=list)  # tasks every compared variant with accuracy ran
    summary: dict[str, Estimate | float] = field(default_factory=dict)  # variant -> over `common`
    missing: dict[str, list[str]] = field(default_factory=dict)  # variant -> tasks others ran, it did not
    without: list[str] = field(default_factory=list)  # compared variants with no accuracy rows

    def all_tasks(self) -> list[str]:
        return sorted({task for _, task in self.per_task})

    def summary_text(self, variant: str) -> str:
        """'0.731 [0.70, 0.76] over listops, mqar', or why there is none."""
        if variant in self.without:
            return "no accuracy results"
        if not self.common:
            return "no task every compared variant ran"
        return f"{figure_text(self.summary.get(variant))} over {', '.join(self.common)}"


def figure_text(value: Estimate | float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, Estimate):
        return f"{value.mean:.3f} [{value.low:.3f}, {value.high:.3f}]"
    return f"{value:.3f} (no interval)"  # rows written before per-example scores were recorded


def mean_of(value: Estimate | float | None) -> float | None:
    return value.mean if isinstance(value, Estimate) else value


def _key(rows: pd.DataFrame, keys) -> pd.Series:
    keys = [k for k in keys if k in rows.columns]
    return pd.Series(["|".join(map(str, values)) for values in zip(*(rows[k] for k in keys), strict=True)]
                     if keys else "", index=rows.index)


def _models(rows: pd.DataFrame) -> list[np.ndarray] | None:
    """Each trained model's test examples pooled (its evaluations at several lengths or depths are one
    model's); None where rows lack per-example scores."""
    if "example_accuracy" not in rows or rows.example_accuracy.isna().any():
        return None
    model = rows.training_id if "training_id" in rows and rows.training_id.notna().all() else rows.seed
    pooled = [np.concatenate([np.asarray(x, dtype=float) for x in group.example_accuracy])
              for _, group in rows.groupby(model, sort=True)]
    pooled = [x for x in pooled if x.size]
    return pooled or None


def _terms(rows: pd.DataFrame) -> list[tuple[float, list[np.ndarray]]] | None:
    """A task's figure as `intervals.contrast` terms: the equal-weight mean over its trained
    configurations (each a separate set of models), or None without per-example scores."""
    configs = [_models(group) for _, group in rows.groupby(_key(rows, TRAINING_KEYS), sort=True)]
    if not configs or any(c is None for c in configs):
        return None
    return [(1.0 / len(configs), models) for models in configs]


def compare(best: pd.DataFrame, variants: list[str]) -> EqualTerms:
    """`best`: learned-task rows at each model's best learning rate (data.best_lr); `variants`: those to
    compare (the ranked ones). Only their rows are read."""
    variants = sorted(set(variants))
    result = EqualTerms(variants)
    rows = best[best.variant.isin(variants)] if not best.empty else best
    wanted = ("variant", "task", "seed", "accuracy", "example_accuracy", "training_id", *CONDITION_KEYS)
    rows = rows[[c for c in wanted if c in rows.columns]]
    with_rows = sorted(set(rows.variant)) if not rows.empty else []
    result.without = [v for v in variants if v not in with_rows]
    if not with_rows:
        return result
    rows = rows.assign(_condition=_key(rows, CONDITION_KEYS))
    ran = {v: set(group.task) for v, group in rows.groupby("variant")}
    every_task = set.union(*ran.values())
    result.missing = {v: sorted(every_task - tasks) for v, tasks in ran.items() if every_task - tasks}
    terms: dict[tuple[str, str], list | None] = {}
    for task, group in rows.groupby("task", sort=True):
        shared = set.intersection(*(set(g._condition) for _, g in group.groupby("variant")))
        result.conditions[task] = len(shared)
        if not shared:
            result.disjoint.append(task)
        for variant, own in group[group._condition.isin(shared)].groupby("variant"):
            terms[variant, task] = _terms(own)
            result.per_task[variant, task] = (intervals.contrast(terms[variant, task]) if terms[variant, task]
                                              else _plain_mean(own))
    result.common = sorted(set.intersection(*ran.values()) - set(result.disjoint))
    for variant in with_rows:
        result.summary[variant] = _summary(variant, result, terms)
    return result


def _plain_mean(rows: pd.DataFrame) -> float:
    """The equal-weight mean over trained configurations of their mean accuracy (no interval)."""
    return float(rows.groupby(_key(rows, TRAINING_KEYS)).accuracy.mean().mean())


def _summary(variant: str, result: EqualTerms, terms) -> Estimate | float | None:
    """Equal-weight mean over the common tasks, with its interval when every task has one."""
    if not result.common or any((variant, t) not in result.per_task for t in result.common):
        return None
    per_task = [terms.get((variant, t)) for t in result.common]
    if all(per_task):
        share = 1.0 / len(per_task)
        return intervals.contrast([(share * weight, models) for task in per_task for weight, models in task])
    return float(np.mean([mean_of(result.per_task[variant, t]) for t in result.common]))
