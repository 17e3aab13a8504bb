"""Passkey retrieval on token sequences: find a key hidden at some depth of a long filler.

Layout (seq_len tokens): a filler that repeats a fixed pattern of `filler` tokens (with a random phase),
interrupted at depth d by the key block [PASS k1 .. kK] (K digits); the sequence ends with the answer
region [ASK k1 .. k(K-1)], where the model must predict k1 at ASK and k(i+1) after k(i): labels sit on
the last K positions only. The key block starts at round(d * F), F = seq_len - 2K - 1 the filler length,
so depth 0 puts it first and depth 1 right before ASK. Scored by exact match of all K digits.

Vocabulary: filler 0 .. filler-1, digits filler .. filler+9, then PASS and ASK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from suites.tasks import IGNORE, Batch


@dataclass(frozen=True)
class Passkey:
    seq_len: int = 1024
    key_len: int = 5
    depth: float | None = None  # None: uniform in [0, 1] per example (training)
    filler: int = 8

    def __post_init__(self):
        if self.filler_len < 0:
            raise ValueError(f"a {self.key_len}-digit passkey does not fit in seq_len {self.seq_len}")
        if self.depth is not None and not 0.0 <= self.depth <= 1.0:
            raise ValueError(f"depth is a fraction in [0, 1], got {self.depth}")

    @property
    def vocab_size(self) -> int:
        return self.filler + 12

    @property
    def chance(self) -> float:
        """Exact-match accuracy of a uniform guess of every digit."""
        return 0.1**self.key_len

    @property
    def digit0(self) -> int:
        return self.filler

    @property
    def pass_token(self) -> int:
        return self.filler + 10

    @property
    def ask_token(self) -> int:
        return self.filler + 11

    @property
    def filler_len(self) -> int:
        return self.seq_len - 2 * self.key_len - 1

    @property
    def ask_position(self) -> int:
        return self.seq_len - self.key_len

    def key_start(self, depth: torch.Tensor) -> torch.Tensor:
        """Position of PASS for depths in [0, 1]."""
        return (depth * self.filler_len).round().long()

    def key_distance(self, depth: float) -> int:
        """How far back ASK must look to read the first digit (every later digit is as far)."""
        return self.ask_position - (int(self.key_start(torch.tensor(depth))) + 1)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        k, length = self.key_len, self.seq_len
        phase = torch.randint(0, self.filler, (n, 1), generator=generator)
        inputs = (torch.arange(length)[None, :] + phase) % self.filler
        digits = torch.randint(0, 10, (n, k), generator=generator) + self.digit0
        if self.depth is None:
            depth = torch.rand(n, generator=generator, dtype=torch.float64)
        else:
            depth = torch.full((n,), self.depth, dtype=torch.float64)
        start = self.key_start(depth)[:, None]
        # The key block is inserted: filler after it is pushed right, so none of the pattern is lost.
        position = torch.arange(length)[None, :]
        shifted = (position - (k + 1) + phase) % self.filler
        inputs = torch.where(position > start + k, shifted, inputs)
        inputs.scatter_(1, start, self.pass_token)
        inputs.scatter_(1, start + 1 + torch.arange(k), digits)
        ask = self.ask_position
        inputs[:, ask] = self.ask_token
        inputs[:, ask + 1:] = digits[:, :-1]
        labels = torch.full_like(inputs, IGNORE)
        labels[:, ask:] = digits
        return Batch(inputs, labels)
