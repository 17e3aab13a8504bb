"""A plan's estimate before it runs: what compiling costs it, and its totals per suite and family.

Compilation and autotuning are paid per plan, not per case: a variant's code path declares what it
compiles (its `compiles` hook, harness.costs.CompileCost: FlexAttention compiles every shape, a library's
Triton kernels autotune once per dtype, heads and head dimension), a suite says which compiled calls a
case makes (`shapes(case)`: dicts of harness.costs.SHAPE_FIELDS and `backward`), and `compile_cost`
charges each distinct key once: the forward's seconds, and the backward's for a differentiated call.
A suite's `estimate(cases)` (harness.suite) adds it to the rest of its model; `attnbench run --estimate`
prints a plan's case count and estimate per suite and per family (`lines`) and runs nothing.

Where the compile figures come from is each CompileCost's `basis`: FlexAttention's are lower bounds
measured on the CPU backend, the Triton autotune figures assumptions (config count x seconds per config).

A case of the compiled series (a `compiled` field that is true: `--compile`) is charged torch.compile's
cost per shape (harness.costs.torch_compile_cost) in place of its variant's hook, nothing where the variant
declares it cannot compile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness import registry
from harness.costs import CompileCost

Shapes = Callable[[Any], Iterable[Mapping[str, Any]]]


@dataclass(frozen=True)
class Estimate:
    """Estimated seconds of a plan, its compilation and autotuning included (`compile_s` of it, over
    `compilations` distinct keys); `bases` names where each kind of compile figure comes from."""

    seconds: float
    compile_s: float = 0.0
    compilations: int = 0
    bases: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CompileBill:
    seconds: float
    compilations: int  # distinct keys charged (a backward counts apart from its forward)
    bases: Mapping[str, str]  # CompileCost.what -> its basis


def under_compile(case) -> bool:
    """Whether a case is of the compiled series (a suite's case without the field is eager)."""
    return bool(getattr(case, "compiled", False))


def compile_keys(variant: str, cost: CompileCost, shape: Mapping[str, Any]) -> list[tuple[tuple, float]]:
    """(key, seconds) of one compiled call: its forward, and its backward where it is differentiated."""
    base = (variant, cost.what, *(shape[f] for f in cost.keyed_by))
    keys = [((*base, "forward"), cost.forward_s)]
    if shape.get("backward"):
        keys.append(((*base, "backward"), cost.backward_s))
    return keys


def compile_cost(cases: Iterable, shapes: Shapes) -> CompileBill:
    """What a plan spends compiling: each distinct key of its cases' compiled calls charged once."""
    charged: dict[tuple, float] = {}
    bases: dict[str, str] = {}
    for case in cases:
        variant = registry.get(case.variant)
        cost = variant.compile_cost(case.device, compiled=under_compile(case))
        if cost is None or case.torch_dtype not in variant.support.dtypes.get(case.device, ()):
            continue  # compiles nothing, or recorded unsupported without running
        bases[cost.what] = cost.basis
        for shape in shapes(case):
            for key, seconds in compile_keys(case.variant, cost, shape):
                charged.setdefault(key, seconds)
    return CompileBill(sum(charged.values()), len(charged), bases)


def shape_compile_seconds(case, shapes: Shapes) -> float:
    """What a case's own shapes cost to compile where its code path compiles per shape (FlexAttention),
    for balancing `--shard` parts; a per-key cost (autotuning) is every part's, not one case's."""
    cost = registry.get(case.variant).compile_cost(case.device, compiled=under_compile(case))
    if cost is None or not cost.per_shape:
        return 0.0
    return sum(s for shape in shapes(case) for _, s in compile_keys(case.variant, cost, shape))


def with_compiles(seconds: float, bill: CompileBill) -> Estimate:
    """A suite's estimate: its own model's seconds plus what the plan compiles."""
    return Estimate(seconds + bill.seconds, bill.seconds, bill.compilations, bill.bases)


def summed(cases: Sequence, case_cost: Callable[[Any], float]) -> Estimate:
    """The estimate of a suite that declares no `estimate`: the sum of its cases' costs."""
    return Estimate(float(sum(case_cost(c) for c in cases)))


def of_suite(suite) -> Callable[[list], Estimate]:
    """A harness.suite.Suite's estimate of a list of its cases: its own, else the sum of its case_cost."""
    if suite.estimate is not None:
        return suite.estimate
    return lambda cases: summed(cases, suite.case_cost)


def by_family(cases: Sequence, estimate: Callable[[list], Estimate]) -> list[tuple[str, int, Estimate]]:
    """(family, cases, estimate of those cases alone) for each family of the plan, by family name."""
    groups: dict[str, list] = defaultdict(list)
    for case in cases:
        groups[registry.get(case.variant).family].append(case)
    return [(family, len(group), estimate(group)) for family, group in sorted(groups.items())]


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def compiling(estimate: Estimate) -> str:
    if not estimate.compilations:
        return "nothing to compile"
    return f"compiling and autotuning {duration(estimate.compile_s)} over {estimate.compilations} keys"


def lines(title: str, cases: Sequence, estimate: Callable[[list], Estimate]) -> list[str]:
    """What `attnbench run --estimate` prints: the plan's total, one line per family (its cases alone:
    a suite's fixed costs, such as starting its worker, are in each), and the compile figures' bases."""
    total = estimate(list(cases))
    out = [f"{title}: {len(cases)} cases, estimated {duration(total.seconds)}; {compiling(total)}"]
    for family, n, part in by_family(cases, estimate):
        out.append(f"  family {family}: {n} cases, {duration(part.seconds)}; {compiling(part)}")
    out += [f"  {what}: {basis}" for what, basis in sorted(total.bases.items())]
    return out
