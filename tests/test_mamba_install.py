"""mamba-ssm installed without its CUDA extension (MAMBA_SKIP_CUDA_BUILD=TRUE, as the offline wheelhouse
builds it): Mamba-2's Triton kernels still run, Mamba-1's fused path is reported unsupported.

Checked on the CPU against a fake package laid out on disk like mamba_ssm 2.3.1: its __init__ imports
ops/selective_scan_interface.py, which imports the extension `selective_scan_cuda` unguarded, so the real
import machinery runs as on a runner. The fake Triton kernels compute with the reference recurrence.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

import variants.mamba as mamba
import variants.mamba2 as mamba2
import variants.recurrent as recurrent
from harness import registry
from tests.conftest import TOLERANCE

PACKAGE = {
    "mamba_ssm/__init__.py": """
        __version__ = "2.3.1"
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, mamba_inner_fn
    """,
    "mamba_ssm/ops/__init__.py": "",
    "mamba_ssm/ops/selective_scan_interface.py": """
        import selective_scan_cuda

        def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              return_last_state=False):
            return selective_scan_cuda.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

        def mamba_inner_fn(*args, **kwargs):
            return selective_scan_cuda.fwd(*args)
    """,
    "mamba_ssm/ops/triton/__init__.py": "",
    # The Triton kernels in mamba_ssm's layout ([B, T, H, ...]), computing with attnbench's reference.
    "mamba_ssm/ops/triton/ssd_combined.py": """
        CALLS = []

        def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                                      initial_states=None, seq_idx=None, cu_seqlens=None, dt_softplus=False,
                                      dt_limit=(0.0, float("inf")), return_final_states=False,
                                      return_varlen_states=False):
            from variants.mamba2 import ssd_recurrent
            CALLS.append("mamba_chunk_scan_combined")
            t = lambda a: a.transpose(1, 2)
            state = None if initial_states is None else initial_states.transpose(-1, -2)
            y, final = ssd_recurrent(t(x), t(dt), A, t(B), t(C), initial_state=state,
                                     output_final_state=True)
            y = t(y).to(x.dtype)
            return (y, final.transpose(-1, -2)) if return_final_states else y
    """,
    "mamba_ssm/ops/triton/selective_state_update.py": """
        from mamba_ssm.ops.triton.ssd_combined import CALLS

        def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                   state_batch_indices=None):
            import torch
            CALLS.append("selective_state_update")
            decay = torch.exp(dt[..., None] * A)  # (batch, nheads, dim, dstate)
            heads_per_group = x.shape[1] // B.shape[1]
            B, C = (M.repeat_interleave(heads_per_group, dim=1)[:, :, None] for M in (B, C))
            state.copy_(decay * state + (dt * x)[..., None] * B)
            return (state * C).sum(-1).to(x.dtype)
    """,
}


@pytest.fixture
def on_the_path(tmp_path, monkeypatch):
    """Lay the fake package out in tmp_path and put it first on sys.path, as if on a runner with CUDA;
    `with_extension` adds a stand-in built extension too. Everything imported is dropped afterwards."""

    def install(with_extension: bool = False):
        files = dict(PACKAGE, **({"selective_scan_cuda.py": "def fwd(*args): return 'extension ran'"}
                                 if with_extension else {}))
        for name, text in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(textwrap.dedent(text))
        monkeypatch.syspath_prepend(str(tmp_path))

    for name in [m for m in sys.modules if m == mamba.EXTENSION or m.split(".")[0] == "mamba_ssm"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(registry, "cuda_available", lambda: True)
    monkeypatch.setattr(mamba, "cuda_available", lambda: True)
    monkeypatch.setattr(recurrent, "cuda_available", lambda: True)
    caches = (registry.package_available, mamba.fused_unavailable_reason, mamba._fused_scan,
              mamba._block_kernels, recurrent.mamba_ssm_installed)
    for cached in caches:
        cached.cache_clear()
    yield install
    for name in [m for m in sys.modules if m == mamba.EXTENSION or m.split(".")[0] == "mamba_ssm"]:
        del sys.modules[name]
    for cached in caches:
        cached.cache_clear()


def _ssd_inputs(n=20, b=2, h=4, p=8, d_state=6):
    return mamba2.ssd_kernel_inputs(b, h, n, p, torch.Generator().manual_seed(0), dtype=torch.float32,
                                    d_state=d_state)


def test_without_the_extension_mamba2_runs_the_triton_kernels_and_mamba1_is_unsupported(on_the_path):
    on_the_path(with_extension=False)
    with pytest.raises(ModuleNotFoundError, match="selective_scan_cuda"):
        import mamba_ssm  # noqa: F401  (what a plain import does: the stand-in is needed)
    reason = mamba.fused_unavailable_reason()
    assert reason == "mamba-ssm is installed without its CUDA extension (selective_scan_cuda)"
    assert mamba._fused_scan() is None and mamba._block_kernels() is None
    assert registry.get("mamba").backend_for("cuda") == f"torch-scan (fused path unsupported: {reason})"

    inputs = _ssd_inputs()
    want, want_state = mamba2.ssd_recurrent(**inputs, output_final_state=True)
    out, state = mamba2.ssd(**inputs, output_final_state=True, use_mamba=True)
    torch.testing.assert_close(out, want, **TOLERANCE[torch.float32])
    torch.testing.assert_close(state, want_state.float(), **TOLERANCE[torch.float32])
    token = {k: t if k == "A" else t[:, :, -1:] for k, t in inputs.items()}
    step, _ = mamba2.ssd_step(**token, state=state, use_mamba=True)
    expected, _ = mamba2.ssd_recurrent(**token, initial_state=state, output_final_state=True)
    torch.testing.assert_close(step, expected, **TOLERANCE[torch.float32])
    from mamba_ssm.ops.triton.ssd_combined import CALLS

    assert CALLS == ["mamba_chunk_scan_combined", "selective_state_update"]  # the library path ran
    # The stand-in lets the package import, and Mamba-1's kernel fails loudly if anything calls it.
    from mamba_ssm import selective_scan_fn

    with pytest.raises(AttributeError, match="installed without its CUDA extension"):
        selective_scan_fn(*(torch.zeros(1) for _ in range(5)))
    assert mamba.fused_unavailable_reason() == reason  # the stand-in is not taken for the extension


def test_with_the_extension_built_both_paths_are_available_and_nothing_stands_in(on_the_path):
    on_the_path(with_extension=True)
    assert mamba.fused_unavailable_reason() is None
    recurrent.import_mamba_ssm_triton()
    assert mamba.EXTENSION not in sys.modules  # untouched: the real extension imports when needed
    scan = mamba._fused_scan()
    assert scan is not None and scan.__module__ == "mamba_ssm.ops.selective_scan_interface"
    assert scan(*(None,) * 5) == "extension ran"
    assert registry.get("mamba").backend_for("cuda") == "mamba_ssm.selective_scan_fn"  # no causal-conv1d


def test_without_mamba_ssm_the_backend_names_no_unsupported_path(on_the_path):
    assert mamba.fused_unavailable_reason() == "mamba-ssm not installed"
    assert registry.get("mamba").backend_for("cuda") == "torch-scan"
