"""Selective copying, as the Mamba paper defines it (Gu & Dao 2023, section 3.1 and appendix E.1).

The first seq_len - n_memorize positions are noise (token 0) except for n_memorize data tokens, drawn
from 1 .. vocab - 2, at random positions. The last n_memorize positions are the marker token vocab - 1;
at the j-th marker the model must output the j-th data token (in order of position). Only the marker
positions carry labels. The data tokens' positions vary, so the task needs content-aware selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from suites.tasks import IGNORE, Batch, random_subsets

NOISE = 0


@dataclass(frozen=True)
class SelectiveCopy:
    seq_len: int = 4096
    n_memorize: int = 16
    vocab: int = 16

    def __post_init__(self):
        if self.vocab < 3:
            raise ValueError("selective copying needs a vocabulary of at least 3 (noise, data, marker)")
        if 2 * self.n_memorize > self.seq_len:
            raise ValueError(f"{self.n_memorize} tokens to copy do not fit in seq_len {self.seq_len}")

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess among the data tokens."""
        return 1 / (self.vocab - 2)

    @property
    def marker(self) -> int:
        return self.vocab - 1

    @property
    def region_len(self) -> int:
        """Positions where data tokens may sit (everything before the markers)."""
        return self.seq_len - self.n_memorize

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        m = self.n_memorize
        data = torch.randint(1, self.vocab - 1, (n, m), generator=generator)
        positions = random_subsets(n, self.region_len, m, generator).sort(dim=-1).values
        inputs = torch.full((n, self.seq_len), NOISE, dtype=torch.int64)
        inputs.scatter_(1, positions, data)
        inputs[:, self.region_len:] = self.marker
        labels = torch.full_like(inputs, IGNORE)
        labels[:, self.region_len:] = data
        return Batch(inputs, labels)
