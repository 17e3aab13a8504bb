"""`attnbench doctor`: is this machine ready to benchmark, and does every variant honour its contract?

One table, in the first minutes of a run. It lists the optional packages and their versions, the device,
driver and CUDA, then puts every registered variant, plugins included, through the checks of
harness.contract on the device, small: the float64 reference on random, peaked, large-logit,
near-duplicate and long inputs (softmax under its mask for an exact variant, its declared reference for an
approximation), Nq != Nk alignment, zeros for a query with no visible key, causality, decode against the
full forward, and for a mixer-only family its kernel and its whole block. Every check runs in the first
dtype of the device the variant takes (bfloat16 on CUDA, float32 on the CPU); the reference check also in
the others, so that an fp32 call computing in half precision fails. Each variant passes, fails (the first
failed check in one line) or is unsupported (with the reason). A failure is a wrong kernel, a broken
library or a wrong call into one: `nox -s bench` runs the doctor first and keeps its result in the run's
environment.json, the report lists its failures in its Correctness section, and
`attnbench report --fail-on-incorrect` exits 1 on them.
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from harness import compiling, contract, env, registry, store

BATCH, HEADS, SEQ_LEN, HEAD_DIM = 1, 2, 128, 64
LENGTHS = {"long": 1024}  # N of the checks that do not run at SEQ_LEN
DEVICE_DTYPES = {"cuda": (torch.bfloat16, torch.float16, torch.float32), "cpu": (torch.float32,)}


@dataclass
class Check:
    """One variant's verdict: its status, one line (the first failed check, or a summary), and every check."""

    variant: str
    status: str  # "pass", "fail" or "unsupported"
    detail: str
    backend: str
    dtype: str | None = None  # the dtype every check ran in (or the failed check's)
    error: float | None = None  # the failed check's error (else the worst), relative to the float64 reference
    tolerance: float | None = None  # ... and its tolerance
    checks: list[dict[str, Any]] = field(default_factory=list)  # contract.Outcome.summary() and dtype


def packages() -> dict[str, str | None]:
    return {"torch": torch.__version__, **{p: env.package_version(p) for p in env.OPTIONAL_PACKAGES}}


def machine(device: str) -> dict[str, Any]:
    cuda = device == "cuda" and torch.cuda.is_available()
    return {"device": device, "device_name": env.device_name(device),
            "driver": env.nvidia_driver() if cuda else None, "cuda": torch.version.cuda}


def _outcome(v, check: str, dtype: torch.dtype, device: str, causal: bool) -> contract.Outcome:
    """One contract check; an exception is its failure (a broken kernel or a wrong call into a library)."""
    setting = contract.Setting(n=LENGTHS.get(check, SEQ_LEN), dtype=dtype, device=device, causal=causal,
                               batch=BATCH, n_heads=HEADS, head_dim=HEAD_DIM)
    try:
        return contract.run(v, check, setting)
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        text = (str(e).strip().splitlines() or [""])[0]
        line = f"{type(e).__name__}: {text} (at {where.filename}:{where.lineno})"
        return contract.Outcome(check, "fail", line[:500])


Ran = tuple[torch.dtype, contract.Outcome]  # a check's outcome and the dtype it ran in


def _summary(outcomes: list[Ran]) -> tuple[str, str, Ran]:
    """(status, one line, the outcome the line is about) of a variant's checks."""
    failed = [(d, o) for d, o in outcomes if o.status == "fail"]
    ran = [(d, o) for d, o in outcomes if o.status == "pass"]
    if failed:
        others = [o.check for _, o in failed[1:]]
        more = f"; {len(others)} more failed ({', '.join(others)})" if others else ""
        return "fail", failed[0][1].line() + more, failed[0]
    if not ran:
        return "unsupported", outcomes[0][1].detail, outcomes[0]
    worst = max(ran, key=lambda pair: pair[1].error / pair[1].tolerance)
    skipped = [o.check for _, o in outcomes if o.status == "unsupported"]
    line = (f"{len(ran)} checks within tolerance (worst {worst[1].check}: error {worst[1].error:.1e} of "
            f"{worst[1].tolerance:.1e})" + (f"; not run: {', '.join(skipped)}" if skipped else ""))
    return "pass", line, worst


def check(v, device: str) -> Check:
    """One variant through the contract's checks on `device` (module docstring)."""
    backend = v.backend_for(device)
    causal = v.support.causal
    dtypes = [d for d in DEVICE_DTYPES[device] if v.supports(device, d, HEAD_DIM, causal)[0]]
    if not dtypes:
        return Check(v.name, "unsupported", v.supports(device, DEVICE_DTYPES[device][0], HEAD_DIM, causal)[1],
                     backend)
    plan = [(name, dtypes[0]) for name in contract.applicable(v)] + [("random", d) for d in dtypes[1:]]
    outcomes = [(dtype, _outcome(v, name, dtype, device, causal)) for name, dtype in plan]
    status, detail, (dtype, about) = _summary(outcomes)
    checks = [{**o.summary(), "dtype": registry.dtype_name(d)} for d, o in outcomes]
    return Check(v.name, status, detail, backend, registry.dtype_name(dtype), about.finite_error,
                 about.tolerance, checks)


def run(device: str, names: list[str] | None = None) -> dict[str, Any]:
    """The doctor's findings as one JSON-able dict; `ok` is False when a supported variant failed.
    `names`: only these variants (default: every registered one)."""
    variants = [registry.get(n) for n in names] if names else registry.all_variants()
    compiling.allow_recompiles(device)  # the checks' shapes (Nq != Nk, each decoded token) are many
    checks = [check(v, device) for v in variants]
    return {**machine(device), "packages": packages(), "variants": [asdict(c) for c in checks],
            "ok": all(c.status != "fail" for c in checks)}


def table(result: dict[str, Any]):
    """The findings as one rich Table: the machine and packages, then a row per variant."""
    from rich.table import Table

    t = Table(title=f"attnbench doctor: {result['device']} ({result['device_name']})")
    for column in ("item", "status", "detail"):
        t.add_column(column, overflow="fold")
    t.add_row("driver / CUDA", "", f"{result['driver'] or '-'} / {result['cuda'] or '-'}")
    for name, version in result["packages"].items():
        t.add_row(name, version or "not installed", "")
    t.add_section()
    style = {"pass": "green", "fail": "bold red", "unsupported": "yellow"}
    for c in result["variants"]:
        detail = f"{c['backend']}{' ' + c['dtype'] if c['dtype'] else ''}: {c['detail']}"
        t.add_row(c["variant"], f"[{style[c['status']]}]{c['status']}[/]", detail)
    return t


def save(result: dict[str, Any], out) -> None:
    """Keep the findings in run directory `out`'s environment.json (creating the run if need be)."""
    run = store.RunStore(out)
    with run.lock("attnbench doctor"):
        run.open(env.describe(result["device"]))
        run.update_environment(doctor=result)
