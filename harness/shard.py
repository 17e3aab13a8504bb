"""`--shard I/N`: one of N parts of a plan, the same on every machine, balanced by estimated cost.

Cases that depend on each other stay in one part: an OOM group (`case.oom_key()[0]`: once a size runs out
of memory the larger ones are skipped, and the cases of one trained model share a group) is split never.
The partition depends only on the plan's cases and their costs, not on the plan's order or the machine,
so N runners that each compute their part run every case exactly once.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness.config import Case

CostFn = Callable[[Case], float]
SHARD_FORMAT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as written on the command line
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'2/4' -> Shard(2, 4); ValueError with a one-line fix for anything else."""
        match = SHARD_FORMAT.fullmatch(text)
        if match is None:
            raise ValueError(f"--shard takes I/N with whole numbers (part I of N, e.g. 1/4), got {text!r}")
        index, count = int(match[1]), int(match[2])
        if count < 1:
            raise ValueError(f"--shard {text}: N must be at least 1 (e.g. 1/4)")
        if not 1 <= index <= count:
            raise ValueError(f"--shard {text}: I must be between 1 and N (1/{count} ... {count}/{count})")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def group_of(case: Case) -> str:
    """The unit a shard takes whole: the case's OOM group where it has one, else the case itself."""
    group = case.oom_key()[0] if hasattr(case, "oom_key") else None
    return case.case_id if group is None else f"{case.suite}\0{group!r}"


def unit_cost(cases: Sequence[Case], cost: CostFn) -> float:
    costs = []
    for case in cases:
        c = float(cost(case))
        if not math.isfinite(c) or c < 0:
            raise ValueError(f"case_cost of {case.describe()} is {c}; a cost is a finite number >= 0")
        costs.append(c)
    return math.fsum(costs)  # exactly rounded: the same in any order, so the parts do not depend on it


def partition(cases: Sequence[Case], count: int, cost: CostFn | None = None) -> list[list[Case]]:
    """The plan in `count` parts: groups dealt largest first to the least loaded part (ties: the group
    with the smaller id, the part with the smaller index). Each part keeps the plan's order."""
    cost = cost or (lambda case: 1.0)
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(group_of(case), []).append(case)
    units = []
    for members in groups.values():
        ident = hashlib.sha1("\n".join(sorted(c.case_id for c in members)).encode()).hexdigest()
        units.append((-unit_cost(members, cost), ident, members))
    load = [0.0] * count
    part_of: dict[str, int] = {}
    for negative_cost, _, members in sorted(units, key=lambda u: (u[0], u[1])):
        part = min(range(count), key=lambda p: (load[p], p))
        load[part] -= negative_cost
        part_of.update((c.case_id, part) for c in members)
    parts: list[list[Case]] = [[] for _ in range(count)]
    for case in cases:
        parts[part_of[case.case_id]].append(case)
    return parts


def select(cases: Sequence[Case], shard: Shard, cost: CostFn | None = None) -> list[Case]:
    """The cases of one shard, in plan order."""
    return partition(cases, shard.count, cost)[shard.index - 1]
