"""mamba-lti, selective copying's control: Mamba's block with Delta, B and C time-invariant. Its FFT
convolution against the recurrence, decoding, causality, and that it is the selective block minus the
selection."""

import pytest
import torch

from harness import registry
from suites import model as lm
from variants.mamba import (
    MambaLTIMixer,
    MambaMixer,
    selective_scan_reference,
    time_invariant_scan,
    time_invariant_scan_reference,
)

LTI = registry.get("mamba-lti")


def inputs(length, dtype=torch.float64, batch=2, heads=2, head_dim=4, seed=0):
    return LTI.kernel_inputs(batch, heads, length, head_dim, torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("length", [1, 7, 130])
def test_the_convolution_is_the_recurrence_in_float64(length):
    x = inputs(length)
    reference = time_invariant_scan_reference(**x)
    assert torch.allclose(time_invariant_scan(**x), reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_lower_precision_computes_in_float32_and_returns_its_dtype(dtype, tolerance):
    x = inputs(64, dtype)
    out = time_invariant_scan(**x)
    reference = time_invariant_scan_reference(**inputs(64))
    assert out.dtype == dtype
    assert (out.double() - reference).norm() / reference.norm() < tolerance


def test_the_reference_is_the_selective_scan_with_the_selection_held_constant():
    """Selective inputs whose delta, B and C do not change over time give the time-invariant output."""
    x = inputs(20)
    u, batch, dim, length = x["u"], 2, 8, 20
    B_t = x["B"][None, :, :, None].expand(batch, dim, -1, length)  # one group per channel, constant in time
    C_t = x["C"][None, :, :, None].expand(batch, dim, -1, length)
    selective = selective_scan_reference(u, torch.zeros_like(u), x["A"], B_t, C_t, x["D"], x["z"],
                                         delta_bias=x["delta_bias"], delta_softplus=True)
    assert torch.allclose(time_invariant_scan(**x), selective, atol=1e-10)


def test_the_last_state_continues_the_sequence():
    x = inputs(30)
    first = {k: (v[..., :12] if k in ("u", "z") else v) for k, v in x.items()}
    _, state = time_invariant_scan(**first, return_last_state=True)
    assert state.shape == (2, 8, 16) and not state.requires_grad
    # The 13th output from the state alone: C . (exp(delta A) h + delta B u) + D u, gated.
    delta = torch.nn.functional.softplus(x["delta_bias"])[:, None]
    h = torch.exp(delta * x["A"]) * state + delta * x["B"] * x["u"][..., 12, None]
    y = ((h * x["C"]).sum(-1) + x["D"] * x["u"][..., 12]) * torch.nn.functional.silu(x["z"][..., 12])
    assert torch.allclose(time_invariant_scan(**x)[..., 12], y, atol=1e-10)


def mixer(d_model=16, seed=0):
    torch.manual_seed(seed)
    return LTI.mixer(d_model, 1).double()


def test_decoding_token_by_token_equals_the_full_forward():
    m, x = mixer(), torch.randn(2, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        full = m(x)
        out, state = m.prefill(x[:, :4])
        steps = [out] + [m.step(x[:, t:t + 1], state)[0] for t in range(4, 11)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-10)


def test_causal_and_trainable():
    m, x = mixer(), torch.randn(2, 10, 16, dtype=torch.float64, requires_grad=True)
    later = x.detach().clone()
    later[:, 6:] += 1.0
    assert torch.allclose(m(x)[:, :6], m(later)[:, :6], rtol=0, atol=1e-12)  # the FFT's rounding only
    assert not torch.allclose(m(x)[:, 6:], m(later)[:, 6:], rtol=0, atol=1e-3)
    m(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    with pytest.raises(registry.Unsupported, match="causal only"):
        LTI.mixer(16, 1, causal=False)


def test_the_selective_block_minus_the_selection():
    """The same block: every parameter of the selective block but x_proj and dt_proj, which become the
    learned B, C (per channel, S4D's real form) and dt_bias; no weight decay on the SSM's parameters."""
    lti, selective = MambaLTIMixer(64), MambaMixer(64)
    shapes = {k: tuple(v.shape) for k, v in lti.state_dict().items()}
    shared = {k: tuple(v.shape) for k, v in selective.state_dict().items()
              if not k.startswith(("x_proj", "dt_proj"))}
    assert shapes == shared | {"B": (128, 16), "C": (128, 16), "dt_bias": (128,)}
    assert torch.equal(lti.B, torch.ones(128, 16))
    dt = torch.nn.functional.softplus(lti.dt_bias.detach())
    assert 1e-3 * 0.999 <= float(dt.min()) and float(dt.max()) <= 0.1 * 1.001  # mamba_ssm's dt range
    assert all(getattr(p, "_no_weight_decay", False) for p in (lti.A_log, lti.D, lti.B, lti.C))
    assert LTI.family == "mamba" and not LTI.exact and LTI.backend_for("cuda") == "torch-fft-conv"


def test_it_trains_in_the_suites_models_with_matched_parameters():
    """The language model of the selective-copying experiment, with an MLP matched to attention's block."""
    width = lm.mlp_width_for("mamba-lti", 64, 8, {})
    model = lm.LanguageModel("mamba-lti", 16, 64, 2, 8, width, {}, short_conv=4)
    mamba = lm.LanguageModel("mamba", 16, 64, 2, 8, lm.mlp_width_for("mamba", 64, 8, {}), {}, short_conv=4)
    assert abs(lm.count_parameters(model) / lm.count_parameters(mamba) - 1) < 0.05
    tokens = torch.randint(0, 16, (3, 24))
    logits = model.logits(model.hidden(tokens))
    assert logits.shape[:2] == (3, 24) and torch.isfinite(logits).all()


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_the_convolution_on_cuda_matches_the_float64_recurrence(dtype, tolerance):
    x = inputs(300, dtype)
    out = time_invariant_scan(**{name: t.cuda() for name, t in x.items()})
    reference = time_invariant_scan_reference(**inputs(300))
    assert out.is_cuda and out.dtype == dtype
    assert (out.double().cpu() - reference).norm() / reference.norm() < tolerance
