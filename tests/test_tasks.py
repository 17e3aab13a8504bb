"""The task generators against their definitions: positions, labels, vocabularies, splits, seeds."""

import statistics

import pytest
import torch

from suites.tasks import (
    IGNORE,
    example_hash,
    held_out_set,
    in_split,
    sample_split,
    train_batches,
    validation_set,
)
from suites.tasks.induction import Induction
from suites.tasks.listops import OPERATORS, TOKEN, VOCAB, ListOps
from suites.tasks.mqar import MQAR
from suites.tasks.passkey import Passkey
from suites.tasks.selective_copy import NOISE, SelectiveCopy


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- MQAR -----------------------------------------------------------------------------------------

def test_mqar_pairs_queries_and_labels():
    task = MQAR(seq_len=64, kv_pairs=6, vocab=512)
    batch = task.sample(200, gen())
    half = task.vocab // 2
    for inputs, labels in zip(batch.inputs.tolist(), batch.labels.tolist(), strict=True):
        keys, values = inputs[0:12:2], inputs[1:12:2]
        assert len(set(keys)) == 6 and len(set(values)) == 6  # distinct keys and values
        assert all(1 <= k < half for k in keys) and all(half <= v < task.vocab for v in values)
        answers = {k: v for k, v in zip(keys, values, strict=True)}
        scored = [p for p, y in enumerate(labels) if y != IGNORE]
        assert len(scored) == 6  # loss only at the answer positions
        assert sorted(inputs[p] for p in scored) == sorted(keys)  # each key queried exactly once
        for p in scored:
            assert p >= 12 and (p - 12) % 2 == 0  # in the query region, at even offsets
            assert labels[p] == answers[inputs[p]]  # the label is the queried key's value
    assert (batch.inputs >= 0).all() and (batch.inputs < task.vocab).all()


def test_mqar_query_slots_follow_the_power_law():
    task = MQAR(seq_len=64, kv_pairs=1, vocab=256, power_a=0.01)
    p = task.slot_probabilities()
    slots = torch.arange(1, task.query_slots + 1, dtype=torch.float64)
    assert torch.allclose(p / p[0], slots ** (task.power_a - 1))  # p(s) ~ (s + 1)^(a - 1)
    batch = task.sample(20000, gen())
    positions = (batch.labels != IGNORE).float().argmax(-1)
    observed = torch.bincount((positions - task.context_len) // 2, minlength=task.query_slots).double()
    observed /= observed.sum()
    assert 0.5 * (observed - p).abs().sum() < 0.03  # total variation from the definition
    assert observed[:4].sum() > 2 * observed[-4:].sum()  # near queries far more common than far ones


def test_mqar_rejects_impossible_configs():
    with pytest.raises(ValueError, match="4 \\* kv_pairs"):
        MQAR(seq_len=64, kv_pairs=17)
    with pytest.raises(ValueError, match="even"):
        MQAR(seq_len=63, kv_pairs=4)


# --- selective copying ----------------------------------------------------------------------------

def test_selective_copy_markers_data_and_labels():
    task = SelectiveCopy(seq_len=96, n_memorize=16, vocab=16)
    batch = task.sample(100, gen())
    region = task.seq_len - task.n_memorize
    assert (batch.inputs[:, region:] == task.marker).all()  # markers exactly at the end
    assert not (batch.inputs[:, :region] == task.marker).any()
    for inputs, labels in zip(batch.inputs, batch.labels, strict=True):
        data = inputs[:region][inputs[:region] != NOISE]
        assert len(data) == 16 and ((data >= 1) & (data <= task.vocab - 2)).all()
        assert torch.equal(labels[region:], data)  # the data tokens in order, at the markers
        assert (labels[:region] == IGNORE).all()
    used = (batch.inputs[:, :region] != NOISE).any(0)
    assert used.all()  # data tokens may sit anywhere before the markers


# --- induction heads ------------------------------------------------------------------------------

def test_induction_trigger_answer_and_label():
    task = Induction(seq_len=40, vocab=16)
    batch = task.sample(300, gen())
    for inputs, labels in zip(batch.inputs.tolist(), batch.labels.tolist(), strict=True):
        triggers = [p for p, t in enumerate(inputs) if t == task.trigger]
        assert len(triggers) == 2 and triggers[1] == task.seq_len - 1
        assert labels[-1] == inputs[triggers[0] + 1] != task.trigger
        assert all(y == IGNORE for y in labels[:-1])


# --- passkey --------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_passkey_key_sits_at_its_depth(depth):
    task = Passkey(seq_len=200, key_len=5, depth=depth, filler=8)
    batch = task.sample(50, gen())
    start = round(depth * task.filler_len)
    assert (batch.inputs[:, start] == task.pass_token).all()
    digits = batch.inputs[:, start + 1:start + 6]
    assert ((digits >= task.digit0) & (digits < task.digit0 + 10)).all()
    ask = task.seq_len - task.key_len
    assert (batch.inputs[:, ask] == task.ask_token).all()
    assert torch.equal(batch.labels[:, ask:], digits)  # predict k1 at ASK, then each next digit
    assert torch.equal(batch.inputs[:, ask + 1:], digits[:, :-1])
    assert (batch.labels[:, :ask] == IGNORE).all()
    assert task.key_distance(depth) == ask - (start + 1)
    filler = torch.cat([batch.inputs[:, :start], batch.inputs[:, start + 6:ask]], dim=1)
    assert torch.equal((filler[:, 1:] - filler[:, :-1]) % 8, torch.ones_like(filler[:, 1:]))  # one pattern


def test_passkey_training_depths_cover_the_context():
    task = Passkey(seq_len=100, key_len=3)
    starts = (task.sample(2000, gen()).inputs == task.pass_token).float().argmax(-1)
    assert starts.min() <= 2 and starts.max() >= task.filler_len - 2
    assert abs(starts.float().mean().item() / task.filler_len - 0.5) < 0.05


# --- ListOps --------------------------------------------------------------------------------------

def evaluate_listops(tokens: list[str]) -> tuple[int, int, int]:
    """An independent evaluator: a stack machine over the tokens -> (value, depth, widest argument list)."""
    stack, depth, widest, result = [], 0, 0, None
    for token in tokens:
        if token in OPERATORS:
            stack.append((token, []))
            depth = max(depth, len(stack))
        elif token == "]":
            op, args = stack.pop()
            widest = max(widest, len(args))
            value = {"[MAX": max, "[MIN": min, "[SM": lambda a: sum(a) % 10,
                     "[MED": lambda a: int(statistics.median(a))}[op](args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            (stack[-1][1] if stack else [None]).append(int(token))
    assert not stack
    return result, depth, widest


def test_listops_answers_lengths_and_shape_limits():
    task = ListOps(seq_len=200, min_length=40)
    batch = task.sample(300, gen())
    for inputs, labels in zip(batch.inputs.tolist(), batch.labels.tolist(), strict=True):
        tokens = [VOCAB[t] for t in inputs if t != TOKEN["<pad>"]]
        assert task.min_length < len(tokens) < task.seq_len
        assert inputs[len(tokens):] == [0] * (task.seq_len - len(tokens))  # right padding
        value, depth, widest = evaluate_listops(tokens)
        assert depth <= task.max_depth and widest <= task.max_args
        scored = [p for p, y in enumerate(labels) if y != IGNORE]
        assert scored == [len(tokens) - 1] and labels[scored[0]] == value  # the class, 0-9


def test_listops_labels_spread_over_ten_classes():
    labels = ListOps(seq_len=100, min_length=10).sample(2000, gen()).labels
    answers = labels[labels != IGNORE]
    share = torch.bincount(answers, minlength=10).double() / len(answers)
    assert len(share) == 10 and (share > 0.02).all() and (share < 0.3).all()


# --- seeds and splits -----------------------------------------------------------------------------

TASKS = [MQAR(seq_len=32, kv_pairs=4, vocab=64), SelectiveCopy(seq_len=32, n_memorize=4),
         Induction(seq_len=16), Passkey(seq_len=32, key_len=2), ListOps(seq_len=64, min_length=8)]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: type(t).__name__)
def test_deterministic_by_seed(task):
    a, b, c = held_out_set(task, 16, seed=3), held_out_set(task, 16, seed=3), held_out_set(task, 16, seed=4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)
    first = [next(train_batches(task, 8, seed=3)) for _ in range(2)]
    assert torch.equal(first[0].inputs, first[1].inputs)


def test_train_validation_and_test_are_disjoint_even_where_examples_repeat():
    task = Induction(seq_len=5, vocab=4)  # 3^4 * 3 * ... : few distinct sequences, so draws repeat
    raw_train, raw_test = task.sample(3000, gen(1)), task.sample(3000, gen(2))
    rows = lambda b: {tuple(r) for r in b.inputs.tolist()}  # noqa: E731
    assert rows(raw_train) & rows(raw_test)  # without the split the two would share examples
    stream = train_batches(task, 500, seed=0)
    train = set().union(*(rows(next(stream)) for _ in range(6)))
    test, valid = rows(held_out_set(task, 300, seed=0)), rows(validation_set(task, 300, seed=0))
    assert train and test and valid and not train & test and not train & valid and not valid & test
    assert in_split(held_out_set(task, 300, seed=0).inputs, "test").all()
    assert in_split(validation_set(task, 300, seed=0).inputs, "valid").all()


def test_example_hash_is_a_function_of_the_tokens():
    x = torch.randint(0, 100, (50, 33), generator=gen())
    assert torch.equal(example_hash(x), example_hash(x.clone()))
    assert len(set(example_hash(x).tolist())) == 50
    split = sample_split(Induction(seq_len=12), 40, gen(), "train")
    assert len(split) == 40 and in_split(split.inputs, "train").all()
    assert not (in_split(split.inputs, "test") | in_split(split.inputs, "valid")).any()


def test_fixed_pool_cycles_through_its_examples():
    task = ListOps(seq_len=48, min_length=8)
    stream = train_batches(task, 10, seed=0, pool=30)
    epoch = [tuple(r) for _ in range(3) for r in next(stream).inputs.tolist()]
    again = [tuple(r) for _ in range(3) for r in next(stream).inputs.tolist()]
    assert len(set(epoch)) == 30 and set(epoch) == set(again) and epoch != again  # reshuffled


@pytest.mark.parametrize("size,k", [(1000, 5), (20, 10)])
def test_random_subsets_are_uniform_and_distinct(size, k):
    from suites.tasks import random_subsets

    draws = random_subsets(20000, size, k, gen())
    assert (draws.sort(-1).values.diff(dim=-1) > 0).all()  # distinct within a row
    counts = torch.bincount(draws.flatten(), minlength=size).double()
    assert counts.std() / counts.mean() < 0.15  # every value about equally often (Poisson: 0.1)
    first = torch.bincount(draws[:, 0], minlength=size).double()
    assert first.std() / first.mean() < 0.35  # and in random order
