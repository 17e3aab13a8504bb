"""Mamba-2: chunked SSD against the state-space recurrence written here from the paper, the Mamba2 block's
parameters, and the mamba-ssm call sites (checked on CPU against fake modules). (Gradients and lower
precision against the registered reference: tests/test_references.py.)"""

import pytest
import torch
import torch.nn.functional as F

from harness import registry
from tests import fakes
from tests.conftest import TOLERANCE
from variants import mamba2
from variants.mamba2 import Mamba2Mixer, ssd, ssd_chunked, ssd_kernel_inputs, ssd_step
from variants.recurrent import import_mamba_ssm_triton


def paper_ssm(x, dt, A, B, C, initial_state=None):
    """Mamba-2 (Dao & Gu 2024, eq. 2 with the scalar A of SSD), per head, state h (P x N):
        h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,    y_t = h_t C_t.
    Head i reads B, C of group i // (heads // groups). Returns y and h in our (N x P) layout."""
    b, n_heads, n, p = x.shape
    group = torch.arange(n_heads) // (n_heads // B.shape[1])
    h = torch.zeros(b, n_heads, p, B.shape[-1], dtype=x.dtype) if initial_state is None else initial_state.mT
    ys = []
    for t in range(n):
        Bt, Ct = B[:, group, t], C[:, group, t]  # (b, heads, N)
        drive = dt[:, :, t, None, None] * x[:, :, t, :, None] * Bt[..., None, :]
        h = torch.exp(dt[:, :, t] * A)[..., None, None] * h + drive
        ys.append((h @ Ct[..., None])[..., 0])
    return torch.stack(ys, dim=2), h.mT


def _inputs(b=2, h=4, n=45, p=8, d_state=6, groups=1, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = ssd_kernel_inputs(b, h, n, p, generator, d_state=d_state, groups=groups)
    return {name: t.to(dtype) for name, t in inputs.items()}


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunked_ssd_equals_the_paper_recurrence_float64(groups, chunk_size):
    inputs = _inputs(groups=groups)
    expected, expected_state = paper_ssm(**inputs)
    out, state = ssd_chunked(**inputs, chunk_size=chunk_size, output_final_state=True)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float64])
    torch.testing.assert_close(state, expected_state, **TOLERANCE[torch.float64])


def test_reference_twin_is_the_paper_recurrence():
    inputs = _inputs(groups=2)
    out = registry.get("mamba2").kernel_reference(**inputs)
    torch.testing.assert_close(out, paper_ssm(**inputs)[0], rtol=0, atol=1e-12)


def test_initial_state_continues_a_sequence_and_a_step():
    inputs = _inputs()
    full, full_state = ssd_chunked(**inputs, output_final_state=True)
    split = lambda a, b: {k: t[..., a:b] if k == "dt" else (t if k == "A" else t[:, :, a:b])  # noqa: E731
                          for k, t in inputs.items()}
    _, state = ssd_chunked(**split(0, 20), chunk_size=8, output_final_state=True)
    out, final = ssd_chunked(**split(20, 45), chunk_size=8, initial_state=state, output_final_state=True)
    torch.testing.assert_close(out, full[:, :, 20:], **TOLERANCE[torch.float64])
    torch.testing.assert_close(final, full_state, **TOLERANCE[torch.float64])
    step, _ = ssd_step(**split(20, 21), state=state)
    torch.testing.assert_close(step, full[:, :, 20:21], **TOLERANCE[torch.float64])


def test_mixer_equals_the_block_written_from_its_parameters():
    """in_proj -> [z, xBC, dt]; causal depthwise conv + SiLU on xBC; SSD per head; + D x; RMSNorm(y *
    silu(z)) * weight; out_proj. Written here from mamba_ssm's Mamba2 description, with paper_ssm."""
    mixer = Mamba2Mixer(32, 2, d_state=8, chunk_size=8).double()
    p = {k: t.detach() for k, t in mixer.state_dict().items()}
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    d_inner, nheads, N = 64, 2, 8
    z, xBC, dt = (x @ p["in_proj.weight"].T).split([d_inner, d_inner + 2 * N, nheads], dim=-1)
    conv = F.conv1d(F.pad(xBC.mT, (3, 0)), p["conv1d.weight"], p["conv1d.bias"], groups=xBC.shape[-1])
    xBC = F.silu(conv).mT
    u, B, C = xBC.split([d_inner, N, N], dim=-1)
    dt = F.softplus(dt + p["dt_bias"])
    y, _ = paper_ssm(u.unflatten(-1, (nheads, -1)).transpose(1, 2), dt.mT, -torch.exp(p["A_log"]),
                     B[:, None], C[:, None])
    y = (y + p["D"][:, None, None] * u.unflatten(-1, (nheads, -1)).transpose(1, 2)).transpose(1, 2).flatten(2)
    gated = y * F.silu(z)
    normed = gated * torch.rsqrt(gated.square().mean(-1, keepdim=True) + 1e-5) * p["norm.weight"]
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), normed @ p["out_proj.weight"].T, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("sizes", [dict(d_model=64, n_heads=2), dict(d_model=48, n_heads=3, d_state=16,
                                                                    ngroups=3, d_conv=3)])
def test_parameters_have_mamba_ssm_names_and_shapes(sizes):
    d_model, n_heads = sizes.pop("d_model"), sizes.pop("n_heads")
    mixer = Mamba2Mixer(d_model, n_heads, **sizes)
    d_state, ngroups, d_conv = sizes.get("d_state", 64), sizes.get("ngroups", 1), sizes.get("d_conv", 4)
    d_inner = 2 * d_model
    conv_dim = d_inner + 2 * ngroups * d_state
    expected = {"in_proj.weight": (2 * d_inner + 2 * ngroups * d_state + n_heads, d_model),
                "conv1d.weight": (conv_dim, 1, d_conv), "conv1d.bias": (conv_dim,), "dt_bias": (n_heads,),
                "A_log": (n_heads,), "D": (n_heads,), "norm.weight": (d_inner,),
                "out_proj.weight": (d_model, d_inner)}
    assert {k: tuple(t.shape) for k, t in mixer.state_dict().items()} == expected
    assert mixer.A_log.dtype == torch.float32
    A = mixer.A_log.exp()
    assert (A >= 1).all() and (A <= 16).all()
    dt = F.softplus(mixer.dt_bias.detach())
    assert (dt >= 1e-4 * (1 - 1e-5)).all() and (dt <= 0.1 * (1 + 1e-5)).all()


# --- mamba-ssm call sites, checked on CPU against fakes with mamba-ssm 2.3.2.post1's signatures ----

def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False, return_varlen_states=False):
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    assert dt.shape == (batch, seqlen, nheads) and A.shape == (nheads,) and nheads % ngroups == 0
    assert B.shape == C.shape == (batch, seqlen, ngroups, dstate), "B, C: (batch, seqlen, ngroups, dstate)"
    assert isinstance(chunk_size, int) and D is None and z is None and dt_bias is None and not dt_softplus
    assert dt.dtype == A.dtype == torch.float32 and (dt > 0).all() and (A < 0).all()
    if initial_states is not None:
        assert initial_states.shape == (batch, nheads, headdim, dstate) and initial_states.is_contiguous()
    ours = fakes.bthd_to_ours(x, dt, B, C)
    state = None if initial_states is None else initial_states.double().mT
    y, h = paper_ssm(ours[0], ours[1], A.double(), ours[2], ours[3], initial_state=state)
    y = y.transpose(1, 2).to(x.dtype)
    return (y, h.mT.float()) if return_final_states else y  # its state is (batch, nheads, headdim, dstate)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None):
    batch, nheads, dim, dstate = state.shape
    assert x.shape == dt.shape == (batch, nheads, dim) and A.shape == (nheads, dim, dstate)
    assert B.shape == C.shape and B.shape[0] == batch and B.shape[2] == dstate and nheads % B.shape[1] == 0
    assert dt_bias is not None and dt_bias.shape == (nheads, dim), "the kernel reads dt_bias strides"
    assert not dt_softplus and D is None and z is None
    dt_heads = dt[..., 0].double()
    assert (dt.double() == dt_heads[..., None]).all(), "dt is one value per head"
    y, h = paper_ssm(x[:, :, None].double(), dt_heads[..., None], A[:, 0, 0].double(), B[:, :, None].double(),
                     C[:, :, None].double(), initial_state=state.double().mT)
    state.copy_(h.mT)  # in place, like the kernel
    return y[:, :, 0].to(x.dtype)


@pytest.fixture
def fake_mamba(monkeypatch):
    return fakes.install(monkeypatch, {
        "mamba_ssm.ops.triton.ssd_combined": dict(mamba_chunk_scan_combined=mamba_chunk_scan_combined),
        "mamba_ssm.ops.triton.selective_state_update": dict(selective_state_update=selective_state_update),
    })


@pytest.mark.parametrize("groups", [1, 2])
def test_mamba_call_sites_pass_the_right_layout_and_return_ours(fake_mamba, groups):
    inputs = _inputs(n=30, groups=groups, dtype=torch.float32)
    want, want_state = paper_ssm(**{k: t.double() for k, t in inputs.items()})
    out, state = ssd(**inputs, output_final_state=True, use_mamba=True)
    assert out.dtype == torch.float32 and state.shape == want_state.shape
    torch.testing.assert_close(out.double(), want, **TOLERANCE[torch.float32])
    torch.testing.assert_close(state.double(), want_state, **TOLERANCE[torch.float32])
    token = {k: t if k == "A" else t[:, :, -1:] for k, t in inputs.items()}
    before = state.clone()
    step, new_state = ssd_step(**token, state=state, use_mamba=True)
    torch.testing.assert_close(state, before, rtol=0, atol=0)  # the caller's state is not overwritten
    expected, expected_state = paper_ssm(**{k: t.double() for k, t in token.items()},
                                         initial_state=state.double())
    torch.testing.assert_close(step.double(), expected, **TOLERANCE[torch.float32])
    torch.testing.assert_close(new_state.double(), expected_state, **TOLERANCE[torch.float32])
    assert fake_mamba == ["mamba_chunk_scan_combined", "selective_state_update"]


def test_mixer_on_the_mamba_path_matches_its_torch_path(fake_mamba, monkeypatch):
    mixer = Mamba2Mixer(32, 2, d_state=8)
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        torch_out = mixer(x)
        monkeypatch.setattr(mamba2, "use_library", lambda flag, installed, x, dtypes=None: True)
        out, state = mixer.prefill(x)
        mixer.step(x[:, -1:], state)
    torch.testing.assert_close(out, torch_out, **TOLERANCE[torch.float32])
    assert fake_mamba == ["mamba_chunk_scan_combined", "selective_state_update"]


# --- CUDA parity with mamba-ssm (skipped without a GPU; needs mamba-ssm) ---------------------------

def _mamba_ssm():
    """mamba_ssm's Triton kernels and modules, also where its CUDA extension was not built."""
    import_mamba_ssm_triton()
    return pytest.importorskip("mamba_ssm", reason="mamba-ssm not installed")


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mamba_kernels_match_the_chunked_torch_path(dtype):
    _mamba_ssm()
    inputs = {k: t.cuda() for k, t in _inputs(b=2, h=4, n=300, p=64, d_state=64).items()}
    want, want_state = ssd_chunked(**inputs, output_final_state=True)
    cast = {k: t.to(dtype) if k in ("x", "B", "C") else t.float() for k, t in inputs.items()}
    out, state = ssd(**cast, output_final_state=True, use_mamba=True)
    tol = TOLERANCE[torch.float32] if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out.double(), want, **tol)
    torch.testing.assert_close(state.double(), want_state, **tol)
    token = {k: t if k == "A" else t[:, :, -1:] for k, t in cast.items()}
    step, _ = ssd_step(**token, state=state, use_mamba=True)
    ref, _ = mamba2.ssd_recurrent(**{k: t if k == "A" else t[:, :, -1:] for k, t in inputs.items()},
                                  initial_state=want_state)
    torch.testing.assert_close(step.double(), ref, **tol)


@pytest.mark.cuda
def test_module_matches_mamba_ssm_mamba2():
    _mamba_ssm()
    from mamba_ssm.modules.mamba2 import Mamba2

    ours = Mamba2Mixer(128, 2, d_state=64, chunk_size=64)
    # use_mem_eff_path=False: the fused path calls causal-conv1d's CUDA kernel, which a runner may lack.
    theirs = Mamba2(128, d_state=64, headdim=ours.headdim, chunk_size=64, use_mem_eff_path=False).cuda()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 200, 128)
    with torch.no_grad():
        expected = theirs(x.cuda()).cpu()
        torch.testing.assert_close(ours(x), expected, atol=1e-3, rtol=1e-3)  # PyTorch path
        torch.testing.assert_close(ours.cuda()(x.cuda()).cpu(), expected, atol=1e-3, rtol=1e-3)
