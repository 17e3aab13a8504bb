"""Mamba (S6): mamba_ssm's parameterization, the PyTorch scan against the plain recurrence, decoding."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from harness import registry
from harness.registry import Unsupported
from tests.conftest import TOLERANCE
from variants import mamba
from variants.mamba import MambaMixer, selective_scan_loop, selective_scan_reference, torch_selective_scan
from variants.recurrent import import_mamba_ssm_triton

MAMBA = registry.get("mamba")


def mamba_ssm_keys(d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto"):
    """The state_dict of mamba_ssm.modules.mamba_simple.Mamba (bias=False, conv_bias=True)."""
    d_inner = expand * d_model
    rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
    return {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


def scan_inputs(batch=2, dim=6, length=13, n=4, groups=None, dtype=torch.float64, seed=0):
    """Random selective-scan inputs with selective_scan_fn's shapes; delta > 0 and A < 0 as in Mamba."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    bc_shape = (batch, n, length) if groups is None else (batch, groups, n, length)
    inputs = dict(
        u=rand(batch, dim, length), delta=0.5 * torch.rand(batch, dim, length, generator=g).double(),
        A=-torch.rand(dim, n, generator=g).double() - 0.5, B=rand(*bc_shape), C=rand(*bc_shape),
        D=rand(dim), z=rand(batch, dim, length), delta_bias=0.3 * rand(dim),
    )
    return {k: t.to(dtype) for k, t in inputs.items()}


def independent_forward(mixer, x):
    """The Mamba block from the mixer's own parameters: explicit causal conv, then the reference scan."""
    p = {k: t.double() for k, t in mixer.state_dict().items()}
    x, length = x.double(), x.shape[1]
    xz = x @ p["in_proj.weight"].T
    u, z = xz[..., : mixer.d_inner], xz[..., mixer.d_inner :]  # (batch, L, d_inner)
    kernel = p["conv1d.weight"][:, 0]  # (d_inner, d_conv): tap j looks back d_conv - 1 - j steps
    conv = torch.zeros_like(u) + p["conv1d.bias"]
    for j in range(mixer.d_conv):
        lag = mixer.d_conv - 1 - j
        conv[:, lag:] += kernel[:, j] * u[:, : length - lag]
    u = F.silu(conv)
    dt, B, C = (u @ p["x_proj.weight"].T).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    y = selective_scan_reference(
        u.transpose(1, 2), (dt @ p["dt_proj.weight"].T).transpose(1, 2), -torch.exp(p["A_log"]),
        B.transpose(1, 2), C.transpose(1, 2), p["D"], z.transpose(1, 2), p["dt_proj.bias"],
        delta_softplus=True,
    )
    return y.transpose(1, 2) @ p["out_proj.weight"].T


@pytest.mark.parametrize("sizes", [
    dict(d_model=64), dict(d_model=48, d_state=8, d_conv=3, expand=3), dict(d_model=40, dt_rank=7),
    dict(d_model=256, d_state=32),
])
def test_state_dict_keys_and_shapes_match_mamba_ssm(sizes):
    state = MAMBA.mixer(n_heads=4, **sizes).state_dict()
    assert {k: tuple(t.shape) for k, t in state.items()} == mamba_ssm_keys(**sizes)


def test_bias_options_add_and_remove_the_documented_keys():
    keys = set(MambaMixer(32, 1, bias=True, conv_bias=False).state_dict())
    assert keys == (set(mamba_ssm_keys(32)) | {"in_proj.bias", "out_proj.bias"}) - {"conv1d.bias"}


def test_a_log_and_d_stay_float32_in_a_half_module():
    mixer = MambaMixer(32, 1, dtype=torch.bfloat16)
    assert mixer.A_log.dtype == mixer.D.dtype == torch.float32
    assert mixer.in_proj.weight.dtype == mixer.dt_proj.bias.dtype == torch.bfloat16


def test_initialization_follows_mamba_ssm():
    d_model, d_state, dt_min, dt_max = 512, 16, 1e-3, 1e-1
    mixer = MambaMixer(d_model, 1, d_state=d_state, dt_min=dt_min, dt_max=dt_max)
    expected_A_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).expand(2 * d_model, -1)
    torch.testing.assert_close(mixer.A_log.detach(), expected_A_log, rtol=0, atol=0)
    assert (mixer.D == 1).all()
    bound = mixer.dt_rank**-0.5
    assert mixer.dt_proj.weight.abs().max() <= bound and mixer.dt_proj.weight.abs().max() > 0.9 * bound
    dt = F.softplus(mixer.dt_proj.bias.detach().double())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    log_dt = (dt.log() - math.log(dt_min)) / (math.log(dt_max) - math.log(dt_min))  # uniform in [0, 1]
    assert abs(log_dt.mean().item() - 0.5) < 0.05 and log_dt.min() < 0.02 and log_dt.max() > 0.98


def test_dt_floor_and_constant_dt_init():
    mixer = MambaMixer(64, 1, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4, dt_init="constant")
    torch.testing.assert_close(F.softplus(mixer.dt_proj.bias.detach()), torch.full((128,), 1e-4))
    assert (mixer.dt_proj.weight == mixer.dt_rank**-0.5).all()


def test_causal_false_is_refused_with_a_reason():
    with pytest.raises(Unsupported, match="causal only"):
        MAMBA.mixer(32, 2, causal=False)
    assert MAMBA.supports("cpu", torch.float32, causal=False) == (False, "causal only")
    assert MAMBA.supports("cpu", torch.bfloat16, causal=True) == (True, "ok")
    assert MAMBA.backend_for("cpu") == "torch-scan"


@pytest.mark.parametrize("sizes", [dict(), dict(d_state=8, d_conv=2, expand=1, dt_rank=3)])
def test_forward_equals_independent_recurrence(sizes):
    mixer = MambaMixer(32, 2, **sizes)
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        expected = independent_forward(mixer, x)
        torch.testing.assert_close(mixer.double()(x.double()), expected, **TOLERANCE[torch.float64])
        torch.testing.assert_close(mixer.float()(x).double(), expected, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("groups", [None, 1, 3], ids=["shared", "one-group", "three-groups"])
@pytest.mark.parametrize("options", [
    dict(), dict(D=True), dict(z=True), dict(delta_bias=True), dict(delta_softplus=True),
    dict(D=True, z=True, delta_bias=True, delta_softplus=True),
], ids=["plain", "D", "z", "bias", "softplus", "all"])
def test_scan_equals_reference(groups, options):
    inputs = scan_inputs(groups=groups)
    for key in ("D", "z", "delta_bias"):
        if not options.get(key):
            inputs[key] = None
    softplus = options.get("delta_softplus", False)
    expected = selective_scan_reference(**inputs, delta_softplus=softplus)
    f32 = {k: None if t is None else t.float() for k, t in inputs.items()}
    out = MAMBA.kernel(**f32, delta_softplus=softplus)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[torch.float32])


def test_scan_mixes_grouped_and_shared_b_c():
    inputs = scan_inputs(groups=2)
    inputs["C"] = inputs["C"][:, 0]  # C shared by all channels, B per group
    torch.testing.assert_close(MAMBA.kernel(**inputs), selective_scan_reference(**inputs),
                               **TOLERANCE[torch.float64])


def test_reference_groups_channels_in_contiguous_blocks():
    """Grouped B/C equal shared B/C when each block of dim // G channels is scanned alone."""
    inputs = scan_inputs(dim=6, groups=3)
    full = selective_scan_reference(**inputs)
    for g in range(3):
        block = slice(2 * g, 2 * g + 2)
        part = selective_scan_reference(
            inputs["u"][:, block], inputs["delta"][:, block], inputs["A"][block], inputs["B"][:, g],
            inputs["C"][:, g], inputs["D"][block], inputs["z"][:, block], inputs["delta_bias"][block],
        )
        torch.testing.assert_close(full[:, block], part, rtol=0, atol=0)


def test_scan_rejects_groups_that_do_not_divide_channels():
    with pytest.raises(ValueError, match="groups do not divide"):
        MAMBA.kernel(**scan_inputs(dim=6, groups=4))


def test_scan_in_bfloat16_accumulates_in_float32():
    inputs = scan_inputs(length=64, groups=2)
    half = {k: t.bfloat16() if k in ("u", "delta", "B", "C", "z") else t.float() for k, t in inputs.items()}
    out = MAMBA.kernel(**half, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    rounded = {k: t.double() for k, t in half.items()}  # the same bf16 inputs, scanned in float64
    torch.testing.assert_close(out.double(), selective_scan_reference(**rounded, delta_softplus=True),
                               **TOLERANCE[torch.bfloat16])


def test_scan_last_state_is_the_final_hidden_state():
    inputs = scan_inputs(groups=2)
    inputs.update(D=None, z=None)
    y, state = torch_selective_scan(**inputs, return_last_state=True)
    # y_L = C_L . h_L, so the returned state must reproduce the last output with every C_L.
    C_last = inputs["C"][:, :, :, -1].repeat_interleave(3, dim=1)  # (batch, dim, N)
    torch.testing.assert_close((state * C_last).sum(-1), y[:, :, -1], **TOLERANCE[torch.float64])
    assert state.shape == (2, 6, 4)


def test_scan_is_causal():
    inputs = scan_inputs(length=20, groups=3)
    out = MAMBA.kernel(**inputs, delta_softplus=True)
    t = 12
    for key in ("u", "delta", "B", "C", "z"):
        perturbed = dict(inputs)
        perturbed[key] = inputs[key].clone()
        perturbed[key][..., t:] += 1.0 + torch.rand_like(perturbed[key][..., t:])
        out2 = MAMBA.kernel(**perturbed, delta_softplus=True)
        torch.testing.assert_close(out2[..., :t], out[..., :t], rtol=0, atol=0)
        assert not torch.allclose(out2[..., t:], out[..., t:]), key


def test_mixer_is_causal_with_a_wide_conv():
    mixer = MambaMixer(32, 1, d_conv=7)
    x = torch.randn(1, 40, 32)
    x2 = x.clone()
    x2[:, 25] += 1.0
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
    torch.testing.assert_close(y2[:, :25], y[:, :25], rtol=0, atol=0)
    assert (y2[:, 25:32] - y[:, 25:32]).abs().amax(-1).min() > 1e-6  # the conv window sees it


@pytest.mark.parametrize("prompt", [0, 2, 9], ids=["from-empty", "prompt-shorter-than-conv", "prompt"])
def test_step_decoding_equals_forward(prompt):
    mixer = MambaMixer(32, 1, d_conv=4).double()
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    with torch.no_grad():
        full = mixer(x)
        if prompt:
            out, state = mixer.prefill(x[:, :prompt])
            torch.testing.assert_close(out, full[:, :prompt], **TOLERANCE[torch.float64])
        else:
            state = mixer.allocate_inference_cache(2)
        for t in range(prompt, x.shape[1]):
            y, state = mixer.step(x[:, t : t + 1], state)
            torch.testing.assert_close(y, full[:, t : t + 1], **TOLERANCE[torch.float64])


def test_step_keeps_float32_state_for_half_modules():
    mixer = MambaMixer(32, 1).bfloat16()
    state = mixer.allocate_inference_cache(2)
    assert state[0].dtype == torch.bfloat16 and state[1].dtype == torch.float32
    x = torch.randn(2, 6, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        full = mixer(x)
        steps = torch.cat([mixer.step(x[:, t : t + 1], state)[0] for t in range(6)], 1)
    assert steps.dtype == torch.bfloat16
    torch.testing.assert_close(steps.float(), full.float(), **TOLERANCE[torch.bfloat16])


def test_step_refuses_more_than_one_token():
    mixer = MambaMixer(16, 1)
    with pytest.raises(ValueError, match="one token"):
        mixer.step(torch.randn(1, 2, 16), mixer.allocate_inference_cache(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_is_finite(dtype):
    mixer = MambaMixer(32, 1).to(dtype)
    x = torch.randn(2, 24, 32, dtype=dtype, requires_grad=True)
    out = mixer(x)
    assert out.dtype == dtype
    out.float().square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("groups", [None, 2])
def test_scan_gradcheck_float64(groups):
    inputs = scan_inputs(batch=1, dim=4, length=5, n=3, groups=groups)
    names, tensors = list(inputs), tuple(t.requires_grad_() for t in inputs.values())
    scan = lambda *args: MAMBA.kernel(**dict(zip(names, args, strict=True)), delta_softplus=True)  # noqa: E731
    assert torch.autograd.gradcheck(scan, tensors)


def _output_and_grads(scan, inputs):
    leaves = {k: t.detach().clone().requires_grad_() for k, t in inputs.items() if t is not None}
    y = scan(**leaves, delta_softplus=True)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * weights).sum().backward()
    return y.detach(), {k: t.grad for k, t in leaves.items()}


def _assert_twins(inputs, tol=1e-5):
    """The chunked scan against the loop: output and every input gradient within tol of their scale."""
    y_loop, g_loop = _output_and_grads(selective_scan_loop, inputs)
    y, g = _output_and_grads(torch_selective_scan, inputs)
    torch.testing.assert_close(y, y_loop, rtol=tol, atol=tol * float(y_loop.abs().max()))
    assert g.keys() == g_loop.keys()
    for name in g:
        scale = float(g_loop[name].abs().max())
        torch.testing.assert_close(g[name], g_loop[name], rtol=tol, atol=tol * scale,
                                   msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("chunk_elements", [1, 96, 10**9], ids=["1-step", "4-steps", "64-steps"])
@pytest.mark.parametrize("length", [1, 7, 64, 131])
@pytest.mark.parametrize("groups", [None, 2])
def test_chunked_scan_matches_the_loop_in_float32(monkeypatch, chunk_elements, length, groups):
    monkeypatch.setattr(mamba, "CHUNK_ELEMENTS", chunk_elements)
    assert mamba.chunk_length(2, 6, 4) == {1: 1, 96: 2, 10**9: 64}[chunk_elements]  # 48 states a step
    _assert_twins({k: t.float() for k, t in scan_inputs(length=length, groups=groups).items()})


def test_chunked_scan_matches_the_loop_at_mamba_sizes():
    """The layer's shapes (dim 128, N 16, batch 3) at a length that does not fill the last chunk."""
    _assert_twins({k: t.float() for k, t in scan_inputs(batch=3, dim=128, n=16, length=300).items()})


@pytest.mark.parametrize("length", [5, 64, 131])
def test_chunked_scan_without_gradient_equals_the_one_with(monkeypatch, length):
    """Without autograd the scan reuses one chunk's buffers: the state carried into the next chunk
    must not be overwritten by it (a 4-step chunk here, so several chunks)."""
    monkeypatch.setattr(mamba, "CHUNK_ELEMENTS", 4 * 2 * 6 * 4)
    inputs = {k: t.float() for k, t in scan_inputs(length=length, groups=2).items()}
    with torch.no_grad():
        y, state = torch_selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    y_grad, state_grad = torch_selective_scan(**{k: t.requires_grad_() for k, t in inputs.items()},
                                              delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, y_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(state, state_grad, rtol=0, atol=0)
    torch.testing.assert_close(y.double(), selective_scan_reference(**inputs, delta_softplus=True).double(),
                               **TOLERANCE[torch.float32])


def test_chunked_scan_with_b_and_c_grouped_differently():
    inputs = scan_inputs(dim=6, groups=2, length=19)
    inputs["C"] = scan_inputs(dim=6, groups=3, length=19)["C"]  # B in 2 groups, C in 3
    torch.testing.assert_close(torch_selective_scan(**inputs), selective_scan_reference(**inputs),
                               **TOLERANCE[torch.float64])
    _assert_twins({k: t.float() for k, t in inputs.items()})


def test_chunked_scan_is_stable_where_decays_underflow():
    """Steps of delta * A down to -1000: decays are exp of non-positive numbers only, so states stay
    finite (a cumulative-product formulation would divide by exp(-1000) here)."""
    inputs = {k: t.float() for k, t in scan_inputs(length=90, groups=2).items()}
    inputs["delta"] = inputs["delta"] * 0 + torch.linspace(-3.0, 60.0, 90)  # softplus up to 60
    inputs["A"] = inputs["A"] * 16
    y, grads = _output_and_grads(torch_selective_scan, inputs)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads.values())
    _assert_twins(inputs)


def test_chunked_scan_last_state_matches_the_loop_and_carries_no_gradient():
    inputs = {k: t.float() for k, t in scan_inputs(length=40, groups=2).items()}
    _, state_loop = selective_scan_loop(**inputs, delta_softplus=True, return_last_state=True)
    y, state = torch_selective_scan(**{k: t.requires_grad_() for k, t in inputs.items()},
                                    delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(state, state_loop.detach(), rtol=1e-5, atol=1e-6)
    assert y.requires_grad and not state.requires_grad  # mamba_ssm's selective_scan_fn does the same


@pytest.mark.parametrize("batch,dim,n", [(1, 1, 1), (1, 128, 16), (4, 128, 16), (64, 256, 16)])
def test_chunk_length_is_a_power_of_two_near_the_cache_target(batch, dim, n):
    steps = mamba.chunk_length(batch, dim, n)
    assert steps in (1, 2, 4, 8, 16, 32, 64)
    assert steps == 64 or steps == 1 or 0.5 <= steps * batch * dim * n / mamba.CHUNK_ELEMENTS <= 2


# --- CUDA parity with mamba_ssm (skipped without a CUDA device; needs mamba-ssm installed) ---

def _mamba_ssm(fused: bool = True):
    """mamba_ssm, through the stand-in for its CUDA extension where that was not built (its Triton kernels
    and modules import then); `fused`: skip, with the reason, unless Mamba-1's fused kernels run here."""
    if fused and (reason := mamba.fused_unavailable_reason()):
        pytest.skip(reason)
    import_mamba_ssm_triton()
    return pytest.importorskip("mamba_ssm", reason="mamba-ssm not installed")


@pytest.mark.cuda
def test_same_seed_gives_the_same_weights_as_mamba_ssm():
    _mamba_ssm(fused=False)
    from mamba_ssm.modules.mamba_simple import Mamba

    torch.manual_seed(7)
    ours = MambaMixer(64, 1, d_state=8).state_dict()
    torch.manual_seed(7)
    theirs = Mamba(64, d_state=8).state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_matches_mamba_ssm_mamba(dtype):
    _mamba_ssm()
    from mamba_ssm.modules.mamba_simple import Mamba

    ours = MambaMixer(64, 1)
    theirs = Mamba(64, use_fast_path=_has_causal_conv1d()).cuda()
    theirs.load_state_dict(ours.state_dict())
    ours, theirs, x = ours.to(dtype), theirs.to(dtype), torch.randn(2, 200, 64, dtype=dtype)
    with torch.no_grad():
        expected = theirs(x.cuda()).float().cpu()
        cpu_path = ours(x).float()  # PyTorch scan
        kernel_path = ours.cuda()(x.cuda()).float().cpu()  # selective_scan_fn
    tol = TOLERANCE[dtype] if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(cpu_path, expected, **tol)
    torch.testing.assert_close(kernel_path, expected, **tol)


def _has_causal_conv1d():
    try:
        import causal_conv1d  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [None, 2])
def test_scan_matches_selective_scan_fn(dtype, groups):
    _mamba_ssm()
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    inputs = scan_inputs(batch=2, dim=8, length=300, n=16, groups=groups)
    cuda = {k: t.cuda().to(dtype if k in ("u", "delta", "B", "C", "z") else torch.float32)
            for k, t in inputs.items()}
    expected = selective_scan_fn(**cuda, delta_softplus=True).float()
    ours = torch_selective_scan(**cuda, delta_softplus=True).float()
    dispatched = MAMBA.kernel(**cuda, delta_softplus=True).float()
    tol = TOLERANCE[torch.float32] if dtype == torch.float32 else TOLERANCE[torch.bfloat16]
    torch.testing.assert_close(ours, expected, **tol)
    torch.testing.assert_close(dispatched, expected, rtol=0, atol=0)


@pytest.mark.cuda
def test_kernel_prefill_then_step_equals_forward_on_cuda():
    _mamba_ssm()
    mixer = MambaMixer(64, 1).cuda()
    x = torch.randn(2, 40, 64, device="cuda")
    with torch.no_grad():
        full = mixer(x)
        _, state = mixer.prefill(x[:, :33])  # the kernel's last state
        steps = torch.cat([mixer.step(x[:, t : t + 1], state)[0] for t in range(33, 40)], dim=1)
    assert state[1].dtype == torch.float32
    torch.testing.assert_close(steps, full[:, 33:], **TOLERANCE[torch.float32])


# --- mamba-ssm's fused block and decode kernels: the call sites, against stand-ins on the CPU ---------
# Signatures as in mamba-ssm 2.x (mamba_ssm/ops/selective_scan_interface.py, ops/triton/
# selective_state_update.py) and causal-conv1d 1.x (causal_conv1d_interface.py). A stand-in binds each
# call to the real signature, checks what the real code asserts, and computes with the reference.

def mamba_inner_fn_signature(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                             out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                             B_proj_bias=None, C_proj_bias=None, delta_softplus=True):
    pass


def selective_state_update_signature(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                                     dt_softplus=False, state_batch_indices=None):
    pass


def causal_conv1d_fn_signature(x, weight, bias=None, seq_idx=None, initial_states=None,
                               return_final_states=False, final_states_out=None, activation=None):
    pass


def causal_conv1d_update_signature(x, conv_state, weight, bias=None, activation=None):
    pass


def conv_reference(x, weight, bias, activation):
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[1] - 1, groups=weight.shape[0])
    out = out[..., : x.shape[-1]]
    return F.silu(out) if activation in ("silu", "swish") else out


class StandIns:
    """mamba-ssm's and causal-conv1d's kernels, written from their documented semantics."""

    def __init__(self, with_conv=True):
        self.calls = []
        self.causal_conv1d_fn = self._conv if with_conv else None
        self.causal_conv1d_update = self._conv_update if with_conv else None
        self.mamba_inner_fn = self._inner if with_conv else None  # it needs causal-conv1d

    def _bind(self, signature, args, kwargs):
        bound = inspect.signature(signature).bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append((signature.__name__.removesuffix("_signature"), bound.arguments))
        return bound.arguments

    def _inner(self, *args, **kwargs):
        a = self._bind(mamba_inner_fn_signature, args, kwargs)
        xz, A, D = a["xz"], a["A"], a["D"]
        d_inner = xz.shape[1] // 2
        assert a["conv1d_weight"].shape == (d_inner, 1, a["conv1d_weight"].shape[-1])
        assert a["B"] is None and a["C"] is None
        assert A.dtype == D.dtype == a["delta_bias"].dtype == torch.float32
        x, z = xz.chunk(2, dim=1)
        x = conv_reference(x, a["conv1d_weight"][:, 0], a["conv1d_bias"], "silu")
        rank, n = a["delta_proj_weight"].shape[1], A.shape[1]
        dt, B, C = (x.transpose(1, 2) @ a["x_proj_weight"].T).split([rank, n, n], dim=-1)
        delta = (dt @ a["delta_proj_weight"].T).transpose(1, 2)
        y = selective_scan_reference(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), D, z, a["delta_bias"],
                                     a["delta_softplus"])
        return F.linear(y.transpose(1, 2).to(xz.dtype), a["out_proj_weight"], a["out_proj_bias"])

    def _conv(self, *args, **kwargs):
        a = self._bind(causal_conv1d_fn_signature, args, kwargs)
        assert a["weight"].dim() == 2 and a["activation"] in (None, "silu", "swish")
        return conv_reference(a["x"], a["weight"], a["bias"], a["activation"])

    def _conv_update(self, *args, **kwargs):
        a = self._bind(causal_conv1d_update_signature, args, kwargs)
        x, state, weight = a["x"], a["conv_state"], a["weight"]
        assert state.shape == (*x.shape, weight.shape[1]) and weight.shape == (x.shape[1], state.shape[2])
        state.copy_(torch.roll(state, shifts=-1, dims=-1))
        state[:, :, -1] = x
        out = (state * weight).sum(-1) + (0 if a["bias"] is None else a["bias"])
        return (F.silu(out) if a["activation"] in ("silu", "swish") else out).to(x.dtype)

    def selective_state_update(self, *args, **kwargs):
        a = self._bind(selective_state_update_signature, args, kwargs)
        state, x, dt, A, B, C = (a[k] for k in ("state", "x", "dt", "A", "B", "C"))
        batch, dim, n = state.shape
        assert x.shape == dt.shape == a["z"].shape == (batch, dim) and A.shape == (dim, n)
        assert B.shape == C.shape == (batch, n) and a["D"].shape == a["dt_bias"].shape == (dim,)
        delta = dt + a["dt_bias"]
        delta = F.softplus(delta) if a["dt_softplus"] else delta
        state.copy_(state * torch.exp(delta[..., None] * A) + (delta * x)[..., None] * B[:, None])
        out = (state.to(C.dtype) * C[:, None]).sum(-1) + x * a["D"]
        return (out * F.silu(a["z"])).to(x.dtype)


def with_stand_ins(monkeypatch, **options):
    import variants.mamba as mamba

    kernels = StandIns(**options)
    monkeypatch.setattr(mamba, "_kernels_for", lambda x: kernels)
    return kernels


def test_forward_runs_mamba_inner_fn_with_the_modules_own_weights(monkeypatch):
    mixer = MambaMixer(32, 1)
    x = torch.randn(2, 19, 32)
    with torch.no_grad():
        twin = mixer(x)
        kernels = with_stand_ins(monkeypatch)
        out = mixer(x)
    assert [name for name, _ in kernels.calls] == ["mamba_inner_fn"]
    args = kernels.calls[0][1]
    assert args["conv1d_weight"] is mixer.conv1d.weight and args["x_proj_weight"] is mixer.x_proj.weight
    assert args["delta_proj_weight"] is mixer.dt_proj.weight
    assert args["out_proj_weight"] is mixer.out_proj.weight
    assert args["delta_softplus"] is True and args["xz"].shape == (2, 2 * mixer.d_inner, 19)
    torch.testing.assert_close(out, twin, **TOLERANCE[torch.float32])


def test_without_causal_conv1d_the_block_is_not_fused(monkeypatch):
    mixer = MambaMixer(32, 1).double()
    x = torch.randn(1, 9, 32, dtype=torch.float64)
    kernels = with_stand_ins(monkeypatch, with_conv=False)
    with torch.no_grad():
        mixer(x)
    assert kernels.calls == []  # mamba_inner_fn needs causal-conv1d; the scan goes its own way


@pytest.mark.parametrize("prompt", [2, 9])
def test_prefill_and_decode_run_causal_conv1d_and_selective_state_update(monkeypatch, prompt):
    mixer = MambaMixer(32, 1, d_conv=4).double()
    x = torch.randn(2, 14, 32, dtype=torch.float64)
    with torch.no_grad():
        full = mixer(x)
        kernels = with_stand_ins(monkeypatch)
        _, state = mixer.prefill(x[:, :prompt])
        assert [name for name, _ in kernels.calls] == ["causal_conv1d_fn"]
        conv_state, ssm_state = state
        for t in range(prompt, x.shape[1]):
            y, state = mixer.step(x[:, t : t + 1], state)
            torch.testing.assert_close(y, full[:, t : t + 1], **TOLERANCE[torch.float64])
    assert state[0] is conv_state and state[1] is ssm_state  # updated in place
    steps = [name for name, _ in kernels.calls[1:]]
    assert steps == ["causal_conv1d_update", "selective_state_update"] * (x.shape[1] - prompt)
    update = kernels.calls[-1][1]
    assert update["state"] is ssm_state and update["dt_softplus"] is True
    assert update["dt_bias"] is mixer.dt_proj.bias and update["D"] is mixer.D


def test_backend_names_the_fused_path(monkeypatch):
    import variants.mamba as mamba

    monkeypatch.setattr(mamba, "_block_kernels", lambda: StandIns())
    assert MAMBA.backend_for("cuda") == "mamba_ssm.mamba_inner_fn"
    monkeypatch.setattr(mamba, "_block_kernels", lambda: StandIns(with_conv=False))
    assert MAMBA.backend_for("cuda") == "mamba_ssm.selective_scan_fn"
    assert MAMBA.backend_for("cpu") == "torch-scan"


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_block_and_decode_match_the_pytorch_twin_on_cuda(dtype):
    _mamba_ssm()
    mixer = MambaMixer(64, 1)
    x = torch.randn(2, 120, 64)
    cpu_out = mixer.to(dtype)(x.to(dtype)).float()
    cuda_mixer = mixer.cuda()
    x_cuda = x.to(dtype).cuda().requires_grad_()
    fused = cuda_mixer(x_cuda)
    tol = TOLERANCE[torch.float32] if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(fused.float().cpu(), cpu_out, **tol)
    fused.float().square().mean().backward()
    assert torch.isfinite(x_cuda.grad).all() and all(torch.isfinite(p.grad).all() for p in mixer.parameters())
    with torch.no_grad():
        _, state = cuda_mixer.prefill(x_cuda[:, :100].detach())
        tokens = x_cuda.detach()
        steps = torch.cat([cuda_mixer.step(tokens[:, t : t + 1], state)[0] for t in range(100, 120)], 1)
    torch.testing.assert_close(steps.float().cpu(), cpu_out[:, 100:], **tol)
