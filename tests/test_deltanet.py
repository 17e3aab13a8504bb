"""DeltaNet and Gated DeltaNet: the chunked WY form against the delta rule written here from the paper,
gradcheck through the solve, state carry-over, and the fla call sites (checked on CPU against fake fla
modules). (Gradients and lower precision against the registered reference: tests/test_references.py.)"""

import pytest
import torch

from harness import registry
from tests import fakes
from tests.conftest import TOLERANCE
from variants import deltanet
from variants.deltanet import delta_kernel_inputs, delta_rule, delta_rule_chunked, delta_rule_step


def paper_delta_rule(q, k, v, beta, log_decay=None, scale=None, initial_state=None):
    """Gated DeltaNet, eq. (10) of Yang et al. (2025), with S (V x K):
        S_t = S_{t-1} (alpha_t (I - beta_t k_t k_t^T)) + beta_t v_t k_t^T,   o_t = scale * S_t q_t.
    alpha_t = 1 gives DeltaNet. Returns o and the final state in our (K x V) layout."""
    b, h, n, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    S = torch.zeros(b, h, v.shape[-1], dk, dtype=q.dtype) if initial_state is None else initial_state.mT
    eye = torch.eye(dk, dtype=q.dtype)
    outs = []
    for t in range(n):
        kt, vt, bt = k[:, :, t], v[:, :, t], beta[:, :, t, None, None]
        alpha = 1.0 if log_decay is None else log_decay[:, :, t, None, None].exp()
        outer = lambda a, b: a[..., :, None] * b[..., None, :]  # noqa: E731
        S = S @ (alpha * (eye - bt * outer(kt, kt))) + bt * outer(vt, kt)
        outs.append(scale * (S @ q[:, :, t, :, None])[..., 0])
    return torch.stack(outs, dim=2), S.mT


def _inputs(gated, b=2, h=3, n=45, d=8, dtype=torch.float64, seed=0):
    inputs = delta_kernel_inputs(b, h, n, d, torch.Generator().manual_seed(seed), gated=gated)
    return {name: t.to(dtype) for name, t in inputs.items()}


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunked_equals_the_paper_recurrence_float64(gated, chunk_size):
    inputs = _inputs(gated)
    expected, expected_state = paper_delta_rule(**inputs)
    out, state = delta_rule_chunked(**inputs, chunk_size=chunk_size, output_final_state=True)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float64])
    torch.testing.assert_close(state, expected_state, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_reference_twin_is_the_paper_recurrence(gated):
    inputs = _inputs(gated)
    v = registry.get("gated-deltanet" if gated else "deltanet")
    expected = paper_delta_rule(**inputs)[0]
    torch.testing.assert_close(v.kernel_reference(**inputs), expected, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_gradcheck_through_the_triangular_solve():
    inputs = tuple(t.requires_grad_() for t in _inputs(True, b=1, h=1, n=6, d=3).values())
    names = ["q", "k", "v", "beta", "log_decay"]
    f = lambda *args: delta_rule_chunked(**dict(zip(names, args, strict=True)), chunk_size=4)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_initial_state_continues_a_sequence(gated):
    inputs = _inputs(gated)
    full, full_state = delta_rule_chunked(**inputs, output_final_state=True)
    first = {k: t[:, :, :20] for k, t in inputs.items()}
    rest = {k: t[:, :, 20:] for k, t in inputs.items()}
    _, state = delta_rule_chunked(**first, chunk_size=8, output_final_state=True)
    out, final = delta_rule_chunked(**rest, chunk_size=8, initial_state=state, output_final_state=True)
    torch.testing.assert_close(out, full[:, :, 20:], **TOLERANCE[torch.float64])
    torch.testing.assert_close(final, full_state, **TOLERANCE[torch.float64])
    step, step_state = delta_rule_step(**{k: t[:, :, 20:21] for k, t in inputs.items()}, state=state)
    torch.testing.assert_close(step, full[:, :, 20:21], **TOLERANCE[torch.float64])


def test_decay_forgets_and_delta_overwrites():
    """Two writes to one key: the delta rule (beta = 1) recalls the second value, not their sum."""
    k = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(1, 1, 2, 2)
    v = torch.tensor([[3.0], [5.0]], dtype=torch.float64).view(1, 1, 2, 1)
    ones = torch.ones(1, 1, 2, dtype=torch.float64)
    out, _ = delta_rule_chunked(k, k, v, ones, scale=1.0)
    assert out[0, 0, 1, 0].item() == pytest.approx(5.0)
    out, _ = delta_rule_chunked(k, k, v, ones, torch.full_like(ones, -50.0), scale=1.0)  # alpha ~ 0
    assert out[0, 0, 1, 0].item() == pytest.approx(5.0)


# --- fla call sites, checked on CPU against fakes with fla-core 0.6.0's signatures -----------------

def _check_common(q, k, v, beta, scale, initial_state, half_only=False):
    B, T, H, K = q.shape
    assert k.shape == (B, T, H, K) and v.shape[:3] == (B, T, H), "layout must be [B, T, H, K]"
    assert beta.shape == (B, T, H)
    assert q.dtype == k.dtype == v.dtype
    assert not half_only or q.dtype in (torch.float16, torch.bfloat16), "chunk_delta_rule refuses float32"
    assert isinstance(scale, float) and scale == pytest.approx(K**-0.5)
    if initial_state is not None:
        assert initial_state.shape == (B, H, K, v.shape[-1]) and initial_state.dtype == torch.float32


def _fake_result(q, k, v, beta, g, scale, initial_state, output_final_state):
    ours = fakes.bthd_to_ours(q, k, v, beta, *(() if g is None else (g,)))
    state = None if initial_state is None else initial_state.double()
    o, S = paper_delta_rule(*ours, scale=scale, initial_state=state)
    return o.transpose(1, 2).to(v.dtype), S.float() if output_final_state else None


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False,
                           allow_neg_eigval=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None,
                           chunk_indices=None, cp_context=None):
    _check_common(q, k, v, beta, scale, initial_state)
    assert g.shape == beta.shape and g.dtype == torch.float32 and (g <= 0).all(), "g: log decays, float32"
    assert not (use_qk_l2norm_in_kernel or use_beta_sigmoid_in_kernel or state_v_first or cu_seqlens)
    return _fake_result(q, k, v, beta, g, scale, initial_state, output_final_state)


def fused_recurrent_gated_delta_rule(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None,
                                     initial_state=None, output_final_state=False,
                                     use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, A_log=None,
                                     dt_bias=None,
                                     use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                                     state_v_first=False, cu_seqlens=None):
    _check_common(q, k, v, beta, scale, initial_state)
    assert q.shape[1] == 1 and g.dtype == torch.float32 and gk is None and gv is None
    return _fake_result(q, k, v, beta, g, scale, initial_state, output_final_state)


def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None):
    _check_common(q, k, v, beta, scale, initial_state, half_only=True)
    return _fake_result(q, k, v, beta, None, scale, initial_state, output_final_state)


def fused_recurrent_delta_rule(q, k, v, beta=None, scale=None, initial_state=None, output_final_state=False,
                               use_qk_l2norm_in_kernel=False, cu_seqlens=None):
    _check_common(q, k, v, beta, scale, initial_state)
    assert q.shape[1] == 1
    return _fake_result(q, k, v, beta, None, scale, initial_state, output_final_state)


@pytest.fixture
def fake_fla(monkeypatch):
    return fakes.install(monkeypatch, {
        "fla.ops.gated_delta_rule": dict(chunk_gated_delta_rule=chunk_gated_delta_rule,
                                         fused_recurrent_gated_delta_rule=fused_recurrent_gated_delta_rule),
        "fla.ops.delta_rule": dict(chunk_delta_rule=chunk_delta_rule,
                                   fused_recurrent_delta_rule=fused_recurrent_delta_rule),
    })


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_fla_call_sites_pass_the_right_layout_and_return_ours(fake_fla, gated):
    dtype = torch.float32 if gated else torch.bfloat16
    inputs = _inputs(gated, n=30, dtype=dtype)
    if gated:
        inputs["log_decay"] = inputs["log_decay"].float()
    want, want_state = paper_delta_rule(**{k: t.double() for k, t in inputs.items()})
    out, state = delta_rule(**inputs, output_final_state=True, use_fla=True)
    assert out.shape == want.shape and out.dtype == dtype and state.dtype == torch.float32
    tol = TOLERANCE[torch.float32] if gated else TOLERANCE[torch.bfloat16]
    torch.testing.assert_close(out.double(), want, **tol)
    torch.testing.assert_close(state.double(), want_state, **tol)
    # Decoding: the fused recurrent kernel continues from the state.
    token = {k: t[:, :, -1:] for k, t in inputs.items()}
    step, _ = delta_rule_step(**token, state=state, use_fla=True)
    expected, _ = paper_delta_rule(**{k: t.double() for k, t in token.items()}, initial_state=state.double())
    torch.testing.assert_close(step.double(), expected, **tol)
    kernels = ["gated_delta_rule", "delta_rule"][not gated]
    assert fake_fla == [f"chunk_{kernels}", f"fused_recurrent_{kernels}"]


def test_mixer_on_the_fla_path_matches_its_torch_path(fake_fla, monkeypatch):
    """The whole mixer through the (fake) fla kernels computes what it computes in PyTorch."""
    mixer = registry.get("gated-deltanet").mixer(32, 4)
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        torch_out = mixer(x)
        monkeypatch.setattr(deltanet, "fla_installed", lambda: True)
        monkeypatch.setattr(deltanet, "use_library", lambda flag, installed, x, dtypes=None: installed)
        fla_out, state = mixer.prefill(x)
        step, _ = mixer.step(x[:, -1:], state)
    torch.testing.assert_close(fla_out, torch_out, **TOLERANCE[torch.float32])
    assert step.shape == (2, 1, 32)
    assert fake_fla == ["chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"]


def test_plain_deltanet_keeps_float32_off_fla():
    """chunk_delta_rule asserts half precision: a float32 CUDA tensor takes the PyTorch path."""
    assert deltanet._fla_dtypes(None) == (torch.float16, torch.bfloat16)
    assert torch.float32 in deltanet._fla_dtypes(torch.zeros(1))


# --- CUDA parity with fla (skipped without a GPU; needs fla-core) ---------------------------------

@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16)
@pytest.mark.parametrize("gated", [True, False], ids=["gated-deltanet", "deltanet"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_kernels_match_the_chunked_torch_path(gated, dtype):
    pytest.importorskip("fla", reason="fla-core not installed")
    if not gated and dtype == torch.float32:
        pytest.skip("chunk_delta_rule takes fp16/bf16 only")
    inputs = {k: t.cuda() for k, t in _inputs(gated, b=2, h=4, n=300, d=64).items()}
    want, want_state = delta_rule_chunked(**inputs, output_final_state=True)
    cast = {k: t.to(dtype) if k != "log_decay" else t.float() for k, t in inputs.items()}
    out, state = delta_rule(**cast, output_final_state=True, use_fla=True)
    tol = TOLERANCE[torch.float32] if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.double(), want, **tol)
    torch.testing.assert_close(state.double(), want_state, **tol)
    step, _ = delta_rule_step(**{k: t[:, :, -1:] for k, t in cast.items()}, state=state, use_fla=True)
    ref, _ = deltanet.delta_rule_recurrent(**{k: t[:, :, -1:] for k, t in inputs.items()},
                                           initial_state=want_state, output_final_state=True)
    torch.testing.assert_close(step.double(), ref, **tol)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["gated-deltanet", "deltanet"])
def test_mixer_on_cuda_matches_cpu(name):
    pytest.importorskip("fla", reason="fla-core not installed")
    mixer = registry.get(name).mixer(128, 2).bfloat16()
    x = torch.randn(2, 200, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        cpu = mixer(x).float()
        cuda = mixer.cuda()(x.cuda()).float().cpu()
    torch.testing.assert_close(cuda, cpu, atol=5e-2, rtol=5e-2)
