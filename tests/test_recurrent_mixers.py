"""What every recurrent mixer of issue 14 must do: decode like its forward, stay causal, fit the parameter
budget of the learned tasks, train in half precision, and declare the registry fields the suites use."""

import pytest
import torch

from harness import memory, registry
from suites import model as lm
from tests.conftest import TOLERANCE

RECURRENT = ["mamba2", "gated-deltanet", "deltanet", "gla", "retnet"]


def _mixer(name, d_model=32, n_heads=4, **params):
    return registry.get(name).mixer(d_model, n_heads, causal=True, **params)


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("prompt", [  # 17 and 14 decode steps take over 5 s for the slower mixers
    pytest.param(0, id="from-empty", marks=pytest.mark.slow),
    pytest.param(3, id="short-prompt", marks=pytest.mark.slow),
    pytest.param(11, id="prompt")])
def test_prefill_then_step_equals_forward(name, prompt):
    mixer = _mixer(name, chunk_size=4).double()
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    with torch.no_grad():
        full = mixer(x)
        out, state = mixer.prefill(x[:, :prompt])
        torch.testing.assert_close(out, full[:, :prompt], **TOLERANCE[torch.float64])
        for t in range(prompt, x.shape[1]):
            y, state = mixer.step(x[:, t:t + 1], state)
            torch.testing.assert_close(y, full[:, t:t + 1], **TOLERANCE[torch.float64])
        assert state.position == x.shape[1]


@pytest.mark.parametrize("name", RECURRENT)
def test_decode_state_has_a_constant_size(name):
    """The state's shapes and the bytes it holds (every storage its tensors keep alive, as the throughput
    suite's decode rows count them) are the same after any context: a conv state sliced out of the padded
    sequence had the right shape but kept the whole sequence's storage (N x channels)."""
    mixer = _mixer(name)
    sizes, held = [], []
    with torch.no_grad():
        for n in (1, 9, 40, 400):
            _, state = mixer.prefill(torch.randn(1, n, 32))
            sizes.append([t.shape for t in (*state.convs, state.core)])
            held.append(memory.tensor_bytes(state))
            _, state = mixer.step(torch.randn(1, 1, 32), state)
            held.append(memory.tensor_bytes(state))
    assert all(s == sizes[0] for s in sizes)
    assert held == [held[0]] * len(held), held


@pytest.mark.parametrize("name", RECURRENT)
def test_mixer_is_causal(name):
    mixer = _mixer(name)
    x = torch.randn(1, 30, 32)
    x2 = x.clone()
    x2[:, 20] += 1.0
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
    torch.testing.assert_close(y2[:, :20], y[:, :20], rtol=0, atol=0)
    assert (y2[:, 20] - y[:, 20]).abs().max() > 1e-4


@pytest.mark.parametrize("name", RECURRENT)
def test_chunk_size_does_not_change_the_mixer(name):
    mixer = _mixer(name).double()
    x = torch.randn(2, 37, 32, dtype=torch.float64)
    with torch.no_grad():
        outs = []
        for chunk_size in (1, 8, 64):
            mixer.chunk_size = chunk_size
            outs.append(mixer(x))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], **TOLERANCE[torch.float64])


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_parameter_budget_leaves_an_mlp(name, d_model):
    """The learned tasks match parameters by MLP width; each mixer leaves at least a quarter-width MLP."""
    n_heads = max(1, d_model // 32)
    width = lm.mlp_width_for(name, d_model, n_heads, {})
    assert d_model // 4 <= width <= lm.MLP_RATIO * d_model


@pytest.mark.parametrize("name", RECURRENT)
def test_refuses_non_causal_with_a_reason(name):
    v = registry.get(name)
    assert v.supports("cpu", torch.float32, causal=False) == (False, "causal only")
    with pytest.raises(registry.Unsupported, match="causal only"):
        v.mixer(32, 4, causal=False)


@pytest.mark.parametrize("name", RECURRENT)
def test_bfloat16_forward_and_backward(name):
    mixer = _mixer(name).bfloat16()
    x = torch.randn(2, 24, 32, dtype=torch.bfloat16, requires_grad=True)
    out = mixer(x)
    assert out.dtype == torch.bfloat16
    reference = _mixer(name)
    reference.load_state_dict({k: t.float() for k, t in mixer.state_dict().items()})
    torch.testing.assert_close(out.float(), reference(x.detach().float()), atol=5e-2, rtol=5e-2)
    out.float().square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", RECURRENT)
def test_registry_declares_kernel_reference_and_inputs(name):
    v = registry.get(name)
    inputs = v.kernel_inputs(1, 2, 12, 8, torch.Generator().manual_seed(0))
    assert all(t.dtype == torch.float64 for t in inputs.values())
    torch.testing.assert_close(v.kernel(**inputs), v.kernel_reference(**inputs), **TOLERANCE[torch.float64])
    assert v.flops is None and v.attention_flops("fwd", 1, 2, 8, 12, 12, True) is None
    assert v.backend_for("cpu").startswith("torch-")
    low = v.kernel_inputs(1, 2, 12, 8, torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    assert {t.dtype for t in low.values()} <= {torch.bfloat16, torch.float32}
    torch.testing.assert_close(v.kernel(**low).double(), v.kernel_reference(**{k: t.double() for k, t in
                               low.items()}), **TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("name", RECURRENT)
def test_language_model_trains_a_step(name):
    """The mixer inside the learned tasks' model: a forward and a backward through two layers."""
    width = lm.mlp_width_for(name, 32, 4, {})
    model = lm.LanguageModel(name, vocab_size=16, d_model=32, n_layers=2, n_heads=4, mlp_width=width)
    inputs = torch.randint(0, 16, (2, 20))
    model.logits(model.hidden(inputs)).float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
