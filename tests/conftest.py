import os
import shutil
import tempfile

import pytest
import torch

from harness import registry

CUDA = torch.cuda.is_available()

# Tolerances against a float64 reference, by the dtype the variant computes in.
TOLERANCE = {
    torch.float64: dict(atol=1e-9, rtol=1e-7),
    torch.float32: dict(atol=2e-5, rtol=2e-4),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


# tests/test_report_fixtures.py builds its runs and report once per session in this directory, whichever
# pytest-xdist worker asks first: the controller (or plain pytest) makes it before any worker starts (the
# workers inherit the environment) and removes it at the end.
SCRATCH_ENV = "ATTNBENCH_TEST_SCRATCH"


def pytest_configure(config):
    if not hasattr(config, "workerinput") and SCRATCH_ENV not in os.environ:
        os.environ[SCRATCH_ENV] = tempfile.mkdtemp(prefix="attnbench-tests-")
        config.add_cleanup(lambda: shutil.rmtree(os.environ.pop(SCRATCH_ENV), ignore_errors=True))


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: smoke_if's marks must be there by then
def pytest_collection_modifyitems(config, items):
    for item in items:
        mark_smoke(item)
    distribute(config, items)
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def distribute(config, items) -> None:
    """In a pytest-xdist worker (`nox -s tests` runs `--dist worksteal`): the tests marked `slow` first.

    worksteal hands each worker a contiguous share of the tests in this order, and a worker that runs out
    takes the second half of what another has left. With the slow tests first, the longest ones start
    early and the short ones are what is left to share at the end, so the workers finish together: the
    wall time is about the total over the number of workers rather than the longest file (which bounded
    `--dist loadfile`). A file's tests stay next to each other, so a module fixture is built at most
    once per worker that runs them. (`--dist loadgroup` would keep marked groups whole, but pytest-xdist
    3.8 marks a group in an attribute that pytest 9.2 no longer reads.) Every worker sorts alike; the
    scheduler checks that their collections agree.
    """
    if not hasattr(config, "workerinput"):  # the controller and plain pytest: collection order
        return
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order within each


def mark_smoke(item) -> None:
    """`@pytest.mark.smoke_if(dtype=torch.bfloat16, causal=True)`: the parametrizations with all those
    values are marked `smoke` (the first CUDA tests nox -s gpu-smoke runs: one per fast path)."""
    wanted = item.get_closest_marker("smoke_if")
    params = getattr(getattr(item, "callspec", None), "params", {})
    if wanted is not None and all(params.get(k, object()) == v for k, v in wanted.kwargs.items()):
        item.add_marker(pytest.mark.smoke)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def qkv(b=2, h=3, n_q=100, n_k=None, d=32, dtype=torch.float32, device="cpu", requires_grad=False):
    n_k = n_q if n_k is None else n_k
    g = torch.Generator().manual_seed(1234)
    make = lambda n: torch.randn(b, h, n, d, generator=g, dtype=torch.float64)  # noqa: E731
    return tuple(t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
                 for t in (make(n_q), make(n_k), make(n_k)))


def cpu_runnable(v, dtype=torch.float32, head_dim=32, causal=False):
    return v.supports("cpu", dtype, head_dim, causal)[0]


def skip_unless_cpu_runnable(v, dtype=torch.float32, head_dim=32, causal=False):
    """Skip a test of a variant this machine cannot run, with the variant's own reason."""
    ok, reason = v.supports("cpu", dtype, head_dim, causal)
    if not ok:
        pytest.skip(reason)


def attention_variants():
    return [v for v in registry.all_variants() if v.attention_fn is not None]


def assert_same_output_and_grads(out, want, inputs, tolerance, grad_tolerance=None):
    """out == want, and so are their gradients with respect to `inputs` under one random output grad."""
    torch.testing.assert_close(out.double(), want.double(), **tolerance)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, grad_out)
    expected = torch.autograd.grad(want, inputs, grad_out.to(want.dtype))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g.double(), e.double(), **(grad_tolerance or tolerance))
