"""ListOps with the generator semantics of the Long Range Arena (Tay et al. 2021; Nangia & Bowman 2018).

A tree is generated top-down from depth 1: below max_depth a node is an operator with probability 0.25
(else a digit 0-9); an operator takes 2 .. max_args arguments and is one of MAX, MIN, MED (int of the
median: the mean of the middle two, truncated, for an even count) and SM (sum modulo 10). Trees whose
token count (operators, digits and closing brackets; no parentheses) is not strictly between
min_length and max_length are rejected. The answer, 0-9, is one of 10 classes.

Tokens: PAD 0, digits 1..10, then [MAX [MIN [MED [SM and ]. Sequences are right-padded to seq_len
(= max_length). Posed as LRA poses it, a classification of the whole sequence: the label is the
answer's class (0-9), carried on the last token of the expression (a classifier reads it from there
whatever position it pools).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from suites.tasks import IGNORE, Batch

PAD = 0
OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
END = "]"
VOCAB = ("<pad>", *map(str, range(10)), *OPERATORS, END)
TOKEN = {name: i for i, name in enumerate(VOCAB)}
VALUE_P = 0.25  # LRA: a node below max_depth is an operator with this probability


class _TooLong(Exception):
    pass


def apply(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        ordered, mid = sorted(args), len(args) // 2
        return ordered[mid] if len(args) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown operator {op!r}")


def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int, budget: int):
    """(tokens, value) of a random tree; raises _TooLong once it exceeds `budget` tokens (it would be
    rejected anyway, so stopping early does not change which trees are kept)."""
    if depth >= max_depth or rng.random() > VALUE_P:
        value = rng.randrange(10)
        return [str(value)], value
    op = rng.choice(OPERATORS)
    tokens, args = [op], []
    for _ in range(rng.randint(2, max_args)):
        sub_tokens, sub_value = generate_tree(rng, depth + 1, max_depth, max_args, budget - len(tokens) - 1)
        tokens += sub_tokens
        args.append(sub_value)
        if len(tokens) + 1 > budget:
            raise _TooLong
    return tokens + [END], apply(op, args)


@dataclass(frozen=True)
class ListOps:
    seq_len: int = 2000  # = LRA's max_length: expressions have fewer tokens than this
    min_length: int = 500
    max_depth: int = 10
    max_args: int = 10

    def __post_init__(self):
        if not 1 <= self.min_length < self.seq_len - 1:
            raise ValueError(f"need 1 <= min_length < seq_len - 1, got {self.min_length}, {self.seq_len}")
        if self.max_args < 2 or self.max_depth < 2:
            raise ValueError("ListOps needs max_args >= 2 and max_depth >= 2")

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    @property
    def n_classes(self) -> int:
        return 10

    @property
    def pad_token(self) -> int:
        return PAD

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess (the classes are not balanced: see LRA's majority baseline)."""
        return 1 / self.n_classes

    def expression(self, rng: random.Random) -> tuple[list[str], int]:
        """One accepted expression (tokens, answer), by rejection as in LRA."""
        while True:
            try:
                tokens, value = generate_tree(rng, 1, self.max_depth, self.max_args, self.seq_len - 1)
            except _TooLong:
                continue
            if self.min_length < len(tokens) < self.seq_len:
                return tokens, value

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        inputs = torch.full((n, self.seq_len), PAD, dtype=torch.int64)
        labels = torch.full_like(inputs, IGNORE)
        for row in range(n):
            tokens, value = self.expression(rng)
            inputs[row, :len(tokens)] = torch.tensor([TOKEN[t] for t in tokens])
            labels[row, len(tokens) - 1] = value
        return Batch(inputs, labels)

