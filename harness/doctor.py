"""`attnbench doctor`: is this machine ready to benchmark? One table, in the first minute of a run.

It lists the optional packages and their versions, the device, driver and CUDA, then runs every
registered variant once on the device, small, and compares its fast path with its reference:
- attention: `attention_reference` in float64 on the CPU (softmax under the variant's own mask for the
  exact ones, the declared naive twin for the others);
- mixers (mamba, the recurrent families): the same module, weights copied, on the CPU in float64, and
  the declared core `kernel` against its `kernel_reference`.
Each variant passes, fails (with the error, or how far off it is) or is unsupported (with the reason).
A failure is a broken library or a wrong call into one: `nox -s bench` runs the doctor first and keeps
its result in the run's environment.json.
"""

from __future__ import annotations

import copy
import traceback
from dataclasses import asdict, dataclass
from typing import Any

import torch

from harness import env, registry, store

BATCH, HEADS, SEQ_LEN, HEAD_DIM = 1, 2, 256, 64
# Largest |fast - reference| / max |reference| a pass allows, by the dtype the fast path runs in.
TOLERANCE = {torch.float32: 5e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float64: 1e-6}
DEVICE_DTYPES = {"cuda": (torch.bfloat16, torch.float16, torch.float32), "cpu": (torch.float32,)}


@dataclass
class Check:
    variant: str
    status: str  # "pass", "fail" or "unsupported"
    detail: str
    backend: str
    dtype: str | None = None
    error: float | None = None  # max |fast - reference| / max |reference|


def packages() -> dict[str, str | None]:
    return {"torch": torch.__version__, **{p: env.package_version(p) for p in env.OPTIONAL_PACKAGES}}


def machine(device: str) -> dict[str, Any]:
    cuda = device == "cuda" and torch.cuda.is_available()
    return {"device": device, "device_name": env.device_name(device),
            "driver": env.nvidia_driver() if cuda else None, "cuda": torch.version.cuda}


def _inputs(device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    make = lambda: torch.randn(BATCH, HEADS, SEQ_LEN, HEAD_DIM, generator=g)  # noqa: E731
    return tuple(make().to(device=device, dtype=dtype) for _ in range(3))


def _attention_pair(v, device: str, dtype: torch.dtype):
    """attention() on the device against attention_reference() on the CPU in float64."""
    q, k, val = _inputs(device, dtype)
    out = v.attention(q, k, val, causal=True)
    return out, v.attention_reference(*(t.cpu().double() for t in (q, k, val)), causal=True)


def _mixer_pair(v, device: str, dtype: torch.dtype):
    """The mixer on the device against the same module (weights copied) on the CPU in float64."""
    d_model = HEADS * HEAD_DIM
    torch.manual_seed(0)
    mixer = v.mixer(d_model, HEADS, causal=True)
    twin = copy.deepcopy(mixer).double()
    x = torch.randn(BATCH, SEQ_LEN, d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return mixer.to(device=device, dtype=dtype)(x.to(device=device, dtype=dtype)), twin(x.double())


def _kernel_pair(v, device: str, dtype: torch.dtype):
    """A mixer family's core kernel against its naive twin in float64, on the same inputs."""
    inputs = v.kernel_inputs(BATCH, HEADS, SEQ_LEN, HEAD_DIM, torch.Generator().manual_seed(0), dtype=dtype)
    on_device = {k: t.to(device) if torch.is_tensor(t) else t for k, t in inputs.items()}
    as64 = {k: t.cpu().double() if torch.is_tensor(t) else t for k, t in inputs.items()}
    return v.kernel(**on_device), v.kernel_reference(**as64)


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.cpu().double() - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


def check(v, device: str) -> Check:
    """One variant's smoke: its fast path on `device` against its reference."""
    backend = v.backend_for(device)
    dtypes = [d for d in DEVICE_DTYPES[device] if v.supports(device, d, HEAD_DIM, True)[0]]
    if not dtypes:
        return Check(v.name, "unsupported", v.supports(device, DEVICE_DTYPES[device][0], HEAD_DIM, True)[1],
                     backend)
    dtype = dtypes[0]
    try:
        with torch.no_grad():
            if v.attention_fn is not None:
                error = _relative_error(*_attention_pair(v, device, dtype))
            else:  # the whole block, and the core kernel where the family declares one
                error = _relative_error(*_mixer_pair(v, device, dtype))
                if v.kernel is not None:
                    error = max(error, _relative_error(*_kernel_pair(v, device, dtype)))
    except registry.Unsupported as e:
        return Check(v.name, "unsupported", str(e), backend, registry.dtype_name(dtype))
    except Exception as e:  # a broken kernel or a wrong call into a library: that is the finding
        where = traceback.extract_tb(e.__traceback__)[-1]
        text = (str(e).strip().splitlines() or [""])[0]
        return Check(v.name, "fail", f"{type(e).__name__}: {text} (at {where.filename}:{where.lineno})"[:500],
                     backend, registry.dtype_name(dtype))
    passed = error <= TOLERANCE[dtype]  # NaN fails
    detail = f"max error {error:.1e} of max |reference| (tolerance {TOLERANCE[dtype]:.0e})"
    return Check(v.name, "pass" if passed else "fail", detail, backend, registry.dtype_name(dtype), error)


def run(device: str) -> dict[str, Any]:
    """The doctor's findings as one JSON-able dict; `ok` is False when a supported variant failed."""
    checks = [check(v, device) for v in registry.all_variants()]
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
