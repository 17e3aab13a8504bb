"""Trivial baselines: what a rule that learned no recall scores on a task's own test set.

A finding compares families only once each has shown it trained: its accuracy at the easiest condition
lies above its task's trivial baseline, measured on the same test examples its rows were scored on
(the test sets are deterministic by seed: `held_out_set`). Each baseline is the best rule of its kind
fitted on that test set itself, an upper bound for the kind (the precondition errs towards excluding):

- MQAR, the position rule: answer each query with the value of the key-value pair whose index is the
  one most often queried at that query's position, over the test set. It copies a value from the
  context without matching the query's key to its pair. Never below 1/kv (at each position the most
  frequent pair has at least the average share), and above it: the generator draws the query slots of
  the pairs in pair order from a power law, so the first pair tends to be queried first.
- Every other task, the constant rule: at each scored position the most frequent answer there
  (selective copying: the most frequent token at each marker; induction: at the last position). Passkey
  is scored by exact match, so its rule answers the most frequent whole key; ListOps' one label sits at
  the end of an expression of any length, so its rule is the majority class. About chance for uniform
  answers, above it for skewed ones (ListOps' classes).

`per_example(task, batch)` gives the rule's score per test example, on the scale of the rows'
`example_accuracy` (the fraction of an example's labels right; passkey 1 or 0).
"""

from __future__ import annotations

import torch

from suites.tasks import IGNORE, Batch

RULES = {
    "mqar": "position rule: the value of the pair most often queried at the query's position (>= 1/kv)",
    "passkey": "constant rule: the most frequent whole key (exact match)",
    "listops": "constant rule: the majority class",
}
CONSTANT_RULE = "constant rule: the most frequent answer at each scored position"


def describe(task_name: str) -> str:
    return RULES.get(task_name, CONSTANT_RULE)


def per_example(task_name: str, batch: Batch, kv_pairs: int | None = None) -> torch.Tensor:
    """The trivial rule's score of each example of `batch` (float, in [0, 1])."""
    if task_name == "mqar":
        return _position_rule(batch, kv_pairs)
    if task_name in ("passkey", "listops"):  # passkey: exact match; ListOps: one label, at varying positions
        return _whole_answer_rule(batch)
    return _constant_rule(batch)


def _fraction_right(right: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    return right.sum(1).double() / scored.sum(1).clamp(min=1).double()


def _most_frequent_per_position(values: torch.Tensor, scored: torch.Tensor, n_values: int) -> torch.Tensor:
    """At each position, the most frequent of values (0 .. n_values - 1) where scored (ties: the smallest)."""
    counts = torch.zeros(values.shape[1], n_values, dtype=torch.int64)
    positions = torch.arange(values.shape[1]).expand_as(values)
    counts.index_put_((positions[scored], values[scored]), torch.ones(int(scored.sum()), dtype=torch.int64),
                      accumulate=True)
    return counts.argmax(1)


def _constant_rule(batch: Batch) -> torch.Tensor:
    scored = batch.labels != IGNORE
    labels = batch.labels.clamp(min=0)
    best = _most_frequent_per_position(labels, scored, int(labels.max()) + 1)
    return _fraction_right((labels == best) & scored, scored)


def _whole_answer_rule(batch: Batch) -> torch.Tensor:
    scored = batch.labels != IGNORE
    answers = [tuple(row[mask].tolist()) for row, mask in zip(batch.labels, scored, strict=True)]
    common = max(set(answers), key=lambda a: (answers.count(a), a))
    return torch.tensor([float(a == common) for a in answers], dtype=torch.float64)


def _position_rule(batch: Batch, kv_pairs: int | None) -> torch.Tensor:
    """MQAR: the pairs sit at the start, (key, value) at positions (2i, 2i + 1); a label is a value."""
    if kv_pairs is None:
        raise ValueError("the MQAR baseline needs kv_pairs")
    scored = batch.labels != IGNORE
    values = batch.inputs[:, 1:2 * kv_pairs:2]  # (n, kv): distinct within an example
    pair = (batch.labels[..., None] == values[:, None, :]).int().argmax(-1)  # (n, seq): the answer's pair
    best = _most_frequent_per_position(pair, scored, kv_pairs)
    return _fraction_right((pair == best) & scored, scored)
