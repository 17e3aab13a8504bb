"""Induction heads, as in the H3 and Mamba papers: recall the token that followed a trigger.

Tokens are uniform over 0 .. vocab - 2; the trigger vocab - 1 appears exactly twice: once at a random
position p <= seq_len - 3, followed by the answer token, and again at the last position, whose label is
the answer. Trained at one length and tested at others, it measures length extrapolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from suites.tasks import IGNORE, Batch


@dataclass(frozen=True)
class Induction:
    seq_len: int = 256
    vocab: int = 16

    def __post_init__(self):
        if self.seq_len < 3 or self.vocab < 3:
            raise ValueError("induction heads needs seq_len >= 3 and a vocabulary of at least 3")

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess among the ordinary tokens."""
        return 1 / (self.vocab - 1)

    @property
    def trigger(self) -> int:
        return self.vocab - 1

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        inputs = torch.randint(0, self.trigger, (n, self.seq_len), generator=generator)
        first = torch.randint(0, self.seq_len - 2, (n, 1), generator=generator)
        rows = torch.arange(n)[:, None]
        inputs[rows, first] = self.trigger
        answers = inputs[rows, first + 1]
        inputs[:, -1] = self.trigger
        labels = torch.full_like(inputs, IGNORE)
        labels[:, -1:] = answers
        return Batch(inputs, labels)
