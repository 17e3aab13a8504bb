"""RetNet retention: the chunked form against the recurrence written here from the paper, the decays fla's
kernels use, and the fla call sites (checked on CPU against fake fla modules). (Gradients and lower
precision against the registered reference: tests/test_references.py.)"""

import math

import pytest
import torch

from harness import registry
from tests import fakes
from tests.conftest import TOLERANCE
from variants import retnet
from variants.retnet import retention, retention_chunked, retention_kernel_inputs, retention_step


def paper_retention(q, k, v, scale=None, initial_state=None):
    """Sun et al. (2023), eq. (1)-(2) per head h: S_n = gamma_h S_{n-1} + k_n^T v_n, o_n = q_n S_n,
    gamma_h = 1 - 2^(-5 - h) (section 2.2), queries scaled by 1/sqrt(K)."""
    b, h, n, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    gamma = torch.tensor([1 - 2 ** (-5 - i) for i in range(h)], dtype=q.dtype)[:, None, None]
    S = torch.zeros(b, h, dk, v.shape[-1], dtype=q.dtype) if initial_state is None else initial_state
    outs = []
    for t in range(n):
        S = gamma * S + k[:, :, t, :, None] @ v[:, :, t, None, :]
        outs.append((scale * q[:, :, t, None, :] @ S)[..., 0, :])
    return torch.stack(outs, dim=2), S


def _inputs(b=2, h=4, n=45, d=8, dtype=torch.float64, seed=0):
    inputs = retention_kernel_inputs(b, h, n, d, torch.Generator().manual_seed(seed))
    return {name: t.to(dtype) for name, t in inputs.items()}


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunked_equals_the_paper_recurrence_float64(chunk_size):
    inputs = _inputs()
    expected, expected_state = paper_retention(**inputs)
    out, state = retention_chunked(**inputs, chunk_size=chunk_size, output_final_state=True)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float64])
    torch.testing.assert_close(state, expected_state, **TOLERANCE[torch.float64])


def test_decays_are_fla_chunk_retention_s():
    """fla-core 0.6.0 computes g_gamma = log(1 - 2^(-5 - arange(H))) from the head count."""
    assert retnet.log_gammas(3).tolist() == pytest.approx([math.log(1 - 2 ** (-5 - h)) for h in range(3)])


def test_reference_twin_is_the_paper_recurrence():
    inputs = _inputs()
    torch.testing.assert_close(registry.get("retnet").kernel_reference(**inputs),
                               paper_retention(**inputs)[0], rtol=0, atol=1e-12)


def test_initial_state_continues_a_sequence_and_a_step():
    inputs = _inputs()
    full, full_state = retention_chunked(**inputs, output_final_state=True)
    _, state = retention_chunked(**{k: t[:, :, :20] for k, t in inputs.items()}, output_final_state=True)
    out, final = retention_chunked(**{k: t[:, :, 20:] for k, t in inputs.items()}, initial_state=state,
                                   output_final_state=True)
    torch.testing.assert_close(out, full[:, :, 20:], **TOLERANCE[torch.float64])
    torch.testing.assert_close(final, full_state, **TOLERANCE[torch.float64])
    step, _ = retention_step(**{k: t[:, :, 20:21] for k, t in inputs.items()}, state=state)
    torch.testing.assert_close(step, full[:, :, 20:21], **TOLERANCE[torch.float64])


# --- fla call sites (fla-core 0.6.0 signatures) ------------------------------------------------------

def _result(q, k, v, scale, initial_state, output_final_state):
    B, T, H, K = q.shape
    assert k.shape == (B, T, H, K) and v.shape[:3] == (B, T, H) and isinstance(scale, float)
    if initial_state is not None:
        assert initial_state.dtype == torch.float32 and initial_state.shape == (B, H, K, v.shape[-1])
    o, S = paper_retention(*fakes.bthd_to_ours(q, k, v), scale=scale,
                           initial_state=None if initial_state is None else initial_state.double())
    return o.transpose(1, 2).to(v.dtype), S.float() if output_final_state else None


def chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    return _result(q, k, v, scale, initial_state, output_final_state)


def fused_recurrent_retention(q, k, v, scale=None, initial_state=None, output_final_state=False,
                              reverse=False, state_v_first=False, cu_seqlens=None):
    assert q.shape[1] == 1 and not reverse
    return _result(q, k, v, scale, initial_state, output_final_state)


def test_fla_call_sites_pass_the_right_layout_and_return_ours(monkeypatch):
    calls = fakes.install(monkeypatch, {"fla.ops.retention": dict(
        chunk_retention=chunk_retention, fused_recurrent_retention=fused_recurrent_retention)})
    inputs = _inputs(n=30, dtype=torch.float32)
    want, want_state = paper_retention(**{k: t.double() for k, t in inputs.items()})
    out, state = retention(**inputs, output_final_state=True, use_fla=True)
    torch.testing.assert_close(out.double(), want, **TOLERANCE[torch.float32])
    torch.testing.assert_close(state.double(), want_state, **TOLERANCE[torch.float32])
    token = {k: t[:, :, -1:] for k, t in inputs.items()}
    step, _ = retention_step(**token, state=state, use_fla=True)
    expected, _ = paper_retention(**{k: t.double() for k, t in token.items()}, initial_state=state.double())
    torch.testing.assert_close(step.double(), expected, **TOLERANCE[torch.float32])
    assert calls == ["chunk_retention", "fused_recurrent_retention"]


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_kernels_match_the_chunked_torch_path(dtype):
    pytest.importorskip("fla", reason="fla-core not installed")
    inputs = {k: t.cuda() for k, t in _inputs(b=2, h=4, n=300, d=64).items()}
    want, want_state = retention_chunked(**inputs, output_final_state=True)
    cast = {k: t.to(dtype) for k, t in inputs.items()}
    out, state = retention(**cast, output_final_state=True, use_fla=True)
    tol = TOLERANCE[torch.float32] if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out.double(), want, **tol)
    torch.testing.assert_close(state.double(), want_state, **tol)
