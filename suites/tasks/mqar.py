"""Multi-query associative recall (MQAR), as Zoology defines it.

A sequence opens with `kv_pairs` key-value pairs (k1 v1 k2 v2 ...): distinct keys from the first half of
the vocabulary [1, V/2), distinct values from the second half [V/2, V). The rest of the sequence is random
tokens from the whole vocabulary, except that every key is queried once: it reappears at offset 2 * s of
the query region, at slot s drawn without replacement with probability proportional to (s + 1)^(a - 1)
(a power law: most queries come soon after the pairs, a few far away). The model is scored only where a
query key sits: its label is that key's value; every other position is labelled IGNORE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from suites.tasks import IGNORE, Batch, random_subsets


@dataclass(frozen=True)
class MQAR:
    seq_len: int = 64
    kv_pairs: int = 4
    vocab: int = 8192
    power_a: float = 0.01

    def __post_init__(self):
        if self.seq_len % 2:
            raise ValueError(f"MQAR needs an even seq_len, got {self.seq_len}")
        if 4 * self.kv_pairs > self.seq_len:
            raise ValueError(f"MQAR needs 4 * kv_pairs <= seq_len, got {self.kv_pairs} in {self.seq_len}")
        if self.kv_pairs > self.vocab // 2 - 1:
            raise ValueError(f"{self.kv_pairs} distinct keys do not fit in a vocabulary of {self.vocab}")

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess among the values."""
        return 1 / (self.vocab - self.vocab // 2)

    @property
    def context_len(self) -> int:
        return 2 * self.kv_pairs

    @property
    def query_slots(self) -> int:
        return (self.seq_len - self.context_len) // 2

    def slot_probabilities(self) -> torch.Tensor:
        """p(s) proportional to (s + 1)^(a - 1) over the query slots s = 0 .. query_slots - 1."""
        p = torch.arange(1, self.query_slots + 1, dtype=torch.float64) ** (self.power_a - 1)
        return p / p.sum()

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        half, pairs = self.vocab // 2, self.kv_pairs
        keys = random_subsets(n, half - 1, pairs, generator) + 1
        values = random_subsets(n, self.vocab - half, pairs, generator) + half
        slots = torch.multinomial(self.slot_probabilities().expand(n, -1), pairs, replacement=False,
                                  generator=generator)
        inputs = torch.randint(0, self.vocab, (n, self.seq_len), generator=generator)
        inputs[:, 0:self.context_len:2], inputs[:, 1:self.context_len:2] = keys, values
        query_positions = self.context_len + 2 * slots
        inputs.scatter_(1, query_positions, keys)
        labels = torch.full_like(inputs, IGNORE).scatter_(1, query_positions, values)
        return Batch(inputs, labels)
