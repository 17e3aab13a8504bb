"""Synthetic task generators: one module per task, each deterministic by seed.

Every task is a frozen dataclass with `seq_len`, `vocab_size` and `sample(n, generator) -> Batch`: token
`inputs` (n, seq_len) and `labels` of the same shape, IGNORE everywhere except at the positions the model
is scored on (the label at position t is what the model must predict after reading inputs[:, :t + 1]).

Train, validation and test data are disjoint by construction: an example belongs to the test split when
a hash of its tokens falls in bucket 0 of HASH_BUCKETS, to the validation split in bucket 1, else to the
training split, so no two splits can share an example, however many are drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator
from typing import NamedTuple, Protocol

import torch

IGNORE = -100  # label of positions without a loss (torch cross_entropy's ignore_index)
HASH_BUCKETS = 8  # an example's split: bucket 0 of its hash is test, 1 validation, the rest training
_HASH_PRIME = 2_147_483_647  # 2^31 - 1
_SPLIT_BUCKET = {"test": 0, "valid": 1}
_SPLIT_SEED = {"train": 0, "test": 1, "valid": 2}


class Batch(NamedTuple):
    inputs: torch.Tensor  # (batch, seq_len) int64 tokens
    labels: torch.Tensor  # (batch, seq_len) int64, IGNORE where there is nothing to predict

    def to(self, device) -> Batch:
        return Batch(self.inputs.to(device, non_blocking=True), self.labels.to(device, non_blocking=True))

    def __len__(self) -> int:
        return self.inputs.shape[0]


class Task(Protocol):
    seq_len: int

    @property
    def vocab_size(self) -> int: ...

    def sample(self, n: int, generator: torch.Generator) -> Batch: ...


@functools.lru_cache(maxsize=32)
def _hash_weights(seq_len: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(20240601)
    return torch.randint(1, _HASH_PRIME, (seq_len,), generator=g, dtype=torch.int64)


def example_hash(inputs: torch.Tensor) -> torch.Tensor:
    """A hash of each row of tokens; equal rows have equal hashes. Exact in int64 (no overflow):
    tokens < 2^15 times weights < 2^31, summed over at most 2^17 positions."""
    if inputs.shape[-1] > 2**17 or int(inputs.max()) >= 2**15:
        raise ValueError("example_hash takes sequences up to 131072 tokens of a vocabulary below 32768")
    return ((inputs.cpu() + 1) * _hash_weights(inputs.shape[-1])).sum(-1) % _HASH_PRIME


def in_split(inputs: torch.Tensor, split: str) -> torch.Tensor:
    """Which examples (rows of tokens) belong to `split`, from their tokens alone."""
    buckets = example_hash(inputs) % HASH_BUCKETS
    if split == "train":
        return buckets >= len(_SPLIT_BUCKET)
    return buckets == _SPLIT_BUCKET[split]


def split_generator(seed: int, split: str) -> torch.Generator:
    """The random stream of one split: the same (seed, split) always yields the same data."""
    if split not in _SPLIT_SEED:
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    return torch.Generator().manual_seed(seed * len(_SPLIT_SEED) + _SPLIT_SEED[split])


def sample_split(task: Task, n: int, generator: torch.Generator, split: str) -> Batch:
    """n examples of the task that belong to `split`, drawn from `generator` (rejecting the others)."""
    kept: list[Batch] = []
    have = 0
    draw = n + n // 4 + 1 if split == "train" else n * HASH_BUCKETS
    while have < n:
        batch = task.sample(draw, generator)
        keep = in_split(batch.inputs, split)
        kept.append(Batch(batch.inputs[keep], batch.labels[keep]))
        have += int(keep.sum())
    return Batch(torch.cat([b.inputs for b in kept])[:n], torch.cat([b.labels for b in kept])[:n])


def held_out_set(task: Task, n: int, seed: int) -> Batch:
    """The test set: reported, never used to choose anything."""
    return sample_split(task, n, split_generator(seed, "test"), "test")


def validation_set(task: Task, n: int, seed: int) -> Batch:
    """The validation set: early stopping and the learning-rate choice look at it, never at the test set."""
    return sample_split(task, n, split_generator(seed, "valid"), "valid")


def train_batches(task: Task, batch_size: int, seed: int, pool: int | None = None) -> Iterator[Batch]:
    """Endless training batches, deterministic by seed, never holding a test example.

    pool=None draws fresh examples for every batch; pool=n draws n examples once (a fixed training
    set, as LRA's ListOps has) and cycles through them in a new random order each epoch.
    """
    generator = split_generator(seed, "train")
    if pool is None:
        return (sample_split(task, batch_size, generator, "train") for _ in itertools.count())
    return _epochs(training_pool(task, pool, seed), batch_size, generator)


@functools.lru_cache(maxsize=2)
def training_pool(task: Task, n: int, seed: int) -> Batch:
    """A fixed training set, drawn once per process (every run of one config shares it)."""
    return sample_split(task, n, torch.Generator().manual_seed(seed * len(_SPLIT_SEED) + 1000), "train")


def _epochs(data: Batch, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    if batch_size > len(data):
        raise ValueError(f"batch_size {batch_size} is larger than the training pool of {len(data)}")
    while True:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data) - batch_size + 1, batch_size):
            rows = order[start:start + batch_size]
            yield Batch(data.inputs[rows], data.labels[rows])


def with_length(task: Task, seq_len: int, **changes) -> Task:
    """The same task at another sequence length (evaluation beyond the training length)."""
    return dataclasses.replace(task, seq_len=seq_len, **changes)


def random_subsets(n: int, size: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(n, k) distinct indices in [0, size) per row, uniformly, in random order."""
    if k > size:
        raise ValueError(f"cannot draw {k} distinct values out of {size}")
    if k * k > size:  # many of few: the top k of random scores
        return torch.rand(n, size, generator=generator).topk(k, dim=-1).indices
    # Few of many: independent draws, redrawing rows with a repeat (about one row in two at most).
    # Keeping only repeat-free rows of i.i.d. draws is exactly sampling without replacement.
    out = torch.randint(0, size, (n, k), generator=generator)
    while True:
        ordered = out.sort(dim=-1).values
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=-1)
        if not repeats.any():
            return out
        out[repeats] = torch.randint(0, size, (int(repeats.sum()), k), generator=generator)
