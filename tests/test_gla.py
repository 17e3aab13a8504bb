"""GLA: the chunked form against the recurrence written here from the paper, state carry-over, and the
fla call sites (checked on CPU against fake fla modules). (Gradients and lower precision against the
registered reference: tests/test_references.py.)"""

import pytest
import torch

from harness import registry
from tests import fakes
from tests.conftest import TOLERANCE
from variants import gla as gla_module
from variants.gla import gla, gla_chunked, gla_kernel_inputs, gla_step


def paper_gla(q, k, v, log_decay, scale=None, initial_state=None):
    """Yang et al. (2024), eq. (3): S_t = (alpha_t^T 1) * S_{t-1} + k_t^T v_t, o_t = q_t S_t (row vectors),
    alpha_t = exp(log_decay_t); queries scaled by 1/sqrt(K). S is (K x V)."""
    b, h, n, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    S = torch.zeros(b, h, dk, v.shape[-1], dtype=q.dtype) if initial_state is None else initial_state
    outs = []
    for t in range(n):
        S = log_decay[:, :, t].exp()[..., :, None] * S + k[:, :, t, :, None] @ v[:, :, t, None, :]
        outs.append((scale * q[:, :, t, None, :] @ S)[..., 0, :])
    return torch.stack(outs, dim=2), S


def _inputs(b=2, h=3, n=45, d=8, dtype=torch.float64, seed=0):
    inputs = gla_kernel_inputs(b, h, n, d, torch.Generator().manual_seed(seed))
    return {name: t.to(dtype) for name, t in inputs.items()}


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunked_equals_the_paper_recurrence_float64(chunk_size):
    inputs = _inputs()
    expected, expected_state = paper_gla(**inputs)
    out, state = gla_chunked(**inputs, chunk_size=chunk_size, output_final_state=True)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float64])
    torch.testing.assert_close(state, expected_state, **TOLERANCE[torch.float64])


def test_chunked_float32_is_close_to_float64_with_strong_decays():
    inputs = _inputs(n=200)
    inputs["log_decay"] = inputs["log_decay"] * 16  # alpha down to ~0: no overflow in the pairwise form
    expected, _ = paper_gla(**inputs)
    out, _ = gla_chunked(**{k: t.float() for k, t in inputs.items()}, chunk_size=64)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)


def test_reference_twin_is_the_paper_recurrence():
    inputs = _inputs()
    torch.testing.assert_close(registry.get("gla").kernel_reference(**inputs), paper_gla(**inputs)[0],
                               rtol=0, atol=1e-12)


def test_initial_state_continues_a_sequence_and_a_step():
    inputs = _inputs()
    full, full_state = gla_chunked(**inputs, output_final_state=True)
    _, state = gla_chunked(**{k: t[:, :, :20] for k, t in inputs.items()}, output_final_state=True)
    out, final = gla_chunked(**{k: t[:, :, 20:] for k, t in inputs.items()}, initial_state=state,
                             output_final_state=True)
    torch.testing.assert_close(out, full[:, :, 20:], **TOLERANCE[torch.float64])
    torch.testing.assert_close(final, full_state, **TOLERANCE[torch.float64])
    step, _ = gla_step(**{k: t[:, :, 20:21] for k, t in inputs.items()}, state=state)
    torch.testing.assert_close(step, full[:, :, 20:21], **TOLERANCE[torch.float64])


# --- fla call sites (fla-core 0.6.0 signatures) ------------------------------------------------------

def _check(q, k, v, g, scale, initial_state):
    B, T, H, K = q.shape
    assert k.shape == g.shape == (B, T, H, K) and v.shape[:3] == (B, T, H), "layout must be [B, T, H, K]"
    assert g.dtype == torch.float32 and (g <= 0).all() and isinstance(scale, float)
    if initial_state is not None:
        assert initial_state.dtype == torch.float32 and initial_state.shape == (B, H, K, v.shape[-1])


def _result(q, k, v, g, scale, initial_state, output_final_state):
    o, S = paper_gla(*fakes.bthd_to_ours(q, k, v, g), scale=scale,
                     initial_state=None if initial_state is None else initial_state.double())
    return o.transpose(1, 2).to(v.dtype), S.float() if output_final_state else None


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, state_v_first=False,
              cu_seqlens=None, cu_seqlens_cpu=None):
    _check(q, k, v, g, scale, initial_state)
    return _result(q, k, v, g, scale, initial_state, output_final_state)


def fused_recurrent_gla(q, k, v, gk=None, gv=None, scale=None, initial_state=None, output_final_state=False,
                        reverse=False, state_v_first=False, cu_seqlens=None):
    _check(q, k, v, gk, scale, initial_state)
    assert gv is None and not reverse and q.shape[1] == 1
    return _result(q, k, v, gk, scale, initial_state, output_final_state)


def test_fla_call_sites_pass_the_right_layout_and_return_ours(monkeypatch):
    calls = fakes.install(monkeypatch, {"fla.ops.gla": dict(chunk_gla=chunk_gla,
                                                             fused_recurrent_gla=fused_recurrent_gla)})
    inputs = _inputs(n=30, dtype=torch.float32)
    want, want_state = paper_gla(**{k: t.double() for k, t in inputs.items()})
    out, state = gla(**inputs, output_final_state=True, use_fla=True)
    torch.testing.assert_close(out.double(), want, **TOLERANCE[torch.float32])
    torch.testing.assert_close(state.double(), want_state, **TOLERANCE[torch.float32])
    token = {k: t[:, :, -1:] for k, t in inputs.items()}
    step, _ = gla_step(**token, state=state, use_fla=True)
    expected, _ = paper_gla(**{k: t.double() for k, t in token.items()}, initial_state=state.double())
    torch.testing.assert_close(step.double(), expected, **TOLERANCE[torch.float32])
    assert calls == ["chunk_gla", "fused_recurrent_gla"]
    mixer = registry.get("gla").mixer(32, 4)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch_out = mixer(x)
        monkeypatch.setattr(gla_module, "use_library", lambda flag, installed, x, dtypes=None: True)
        torch.testing.assert_close(mixer(x), torch_out, **TOLERANCE[torch.float32])
    assert calls[-1] == "chunk_gla"


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_kernels_match_the_chunked_torch_path(dtype):
    pytest.importorskip("fla", reason="fla-core not installed")
    inputs = {k: t.cuda() for k, t in _inputs(b=2, h=4, n=300, d=64).items()}
    want, want_state = gla_chunked(**inputs, output_final_state=True)
    cast = {k: t.to(dtype) if k != "log_decay" else t.float() for k, t in inputs.items()}
    out, state = gla(**cast, output_final_state=True, use_fla=True)
    tol = TOLERANCE[torch.float32] if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out.double(), want, **tol)
    torch.testing.assert_close(state.double(), want_state, **tol)
    step, _ = gla_step(**{k: t[:, :, -1:] for k, t in cast.items()}, state=state, use_fla=True)
    last = {k: t[:, :, -1:] for k, t in inputs.items()}
    ref, _ = gla_module.gla_recurrent(**last, initial_state=want_state)
    torch.testing.assert_close(step.double(), ref, **tol)
