"""Sliding window with attention sinks: the dense reference against a softmax written here, the eager
FlexAttention path (with the log-sum-exp sink correction) on CPU, the constant-size decode cache, FLOPs."""

import pytest
import torch

from harness import registry
from tests.conftest import TOLERANCE, qkv
from variants.sinks import FLOPS, flex_sink_attention, sink_attention_reference, sink_mask


def written_softmax(q, k, v, window, sink_tokens, sink_logit=None):
    """Per query i: keys j <= i with i - j <= window or j < sink_tokens (n_q == n_k), scores q.k / sqrt(d),
    and e^{s_h} added to the denominator when a sink logit s_h is given."""
    b, h, n, d = q.shape
    out = torch.zeros_like(v)
    sinks = None if sink_logit is None else torch.as_tensor(sink_logit, dtype=q.dtype).expand(h)
    for i in range(n):
        keys = [j for j in range(i + 1) if i - j <= window or j < sink_tokens]
        scores = torch.einsum("bhd,bhkd->bhk", q[:, :, i], k[:, :, keys]) / d**0.5
        weights = scores.exp()
        denominator = weights.sum(-1, keepdim=True)
        if sinks is not None:
            denominator = denominator + sinks.exp()[None, :, None]
        out[:, :, i] = torch.einsum("bhk,bhkd->bhd", weights / denominator, v[:, :, keys])
    return out


@pytest.mark.parametrize("window,sink_tokens", [(4, 2), (1, 0), (100, 3), (6, 7)])
@pytest.mark.parametrize("sink_logit", [None, 0.5, "per-head"])
def test_reference_equals_the_written_softmax(window, sink_tokens, sink_logit):
    q, k, v = qkv(b=2, h=3, n_q=23, d=8, dtype=torch.float64)
    if sink_logit == "per-head":
        sink_logit = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    out = sink_attention_reference(q, k, v, window=window, sink_tokens=sink_tokens, sink_logit=sink_logit)
    torch.testing.assert_close(out, written_softmax(q, k, v, window, sink_tokens, sink_logit),
                               **TOLERANCE[torch.float64])


@pytest.mark.parametrize("sink_logit", [None, 0.5, "per-head"])
def test_eager_flex_attention_matches_the_reference(sink_logit):
    """The CUDA code path (FlexAttention + sigmoid(lse - s) rescaling), run eagerly on CPU."""
    q, k, v = qkv(b=1, h=3, n_q=40, d=16)
    if sink_logit == "per-head":
        sink_logit = torch.tensor([-1.0, 0.0, 2.0])
    params = dict(window=5, sink_tokens=2, sink_logit=sink_logit)
    out = flex_sink_attention(q, k, v, **params, compiled=False)
    torch.testing.assert_close(out, sink_attention_reference(q, k, v, **params), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("name", ["swa-sinks", "swa-learned-sinks"])
@pytest.mark.parametrize("prompt", [1, 3, 12])
def test_decode_cache_equals_full_attention_and_stays_bounded(name, prompt):
    v = registry.get(name)
    params = dict(window=4, sink_tokens=3)
    q, k, val = qkv(b=2, h=2, n_q=20, d=8, dtype=torch.float64)
    full = v.attention(q, k, val, causal=True, **params)
    state = v.prefill(k[:, :, :prompt], val[:, :, :prompt], **params)
    for t in range(prompt, 20):
        out, state = v.decode(q[:, :, t:t + 1], k[:, :, t:t + 1], val[:, :, t:t + 1], state, **params)
        torch.testing.assert_close(out, full[:, :, t:t + 1], **TOLERANCE[torch.float64])
        assert state.sink_k.shape[-2] <= 3 and state.recent_k.shape[-2] <= 4


def test_learned_sink_mixer_learns_one_logit_per_head_and_decodes():
    mixer = registry.get("swa-learned-sinks").mixer(32, 4, causal=True, rope=True, window=3)
    assert mixer.sink_logits.shape == (4,)
    with torch.no_grad():
        mixer.sink_logits.copy_(torch.tensor([-2.0, 0.0, 1.0, 3.0]))
    x = torch.randn(2, 15, 32)
    full = mixer(x)
    full.square().mean().backward()
    assert mixer.sink_logits.grad.abs().min() > 0
    with torch.no_grad():
        out, state = mixer.prefill(x[:, :6])
        steps = [mixer.step(x[:, t:t + 1], state)[0] for t in range(6, 7)]
    torch.testing.assert_close(out, full[:, :6].detach(), **TOLERANCE[torch.float32])
    torch.testing.assert_close(steps[0], full[:, 6:7].detach(), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("n_q,n_k", [(64, 64), (1, 50), (17, 40), (40, 40)])
@pytest.mark.parametrize("window,sink_tokens", [(8, 4), (0, 0), (100, 2), (3, 10)])
def test_flops_count_the_visible_pairs_of_the_mask(n_q, n_k, window, sink_tokens):
    pairs = int(sink_mask(n_q, n_k, window=window, sink_tokens=sink_tokens).sum())
    params = dict(window=window, sink_tokens=sink_tokens)
    assert FLOPS("fwd", 2, 3, 16, n_q, n_k, True, **params) == 4 * 2 * 3 * 16 * pairs
    assert FLOPS("fwd_bwd", 2, 3, 16, n_q, n_k, True, **params) == round(4 * 2 * 3 * 16 * pairs * 3.5)
    for name in ("swa-sinks", "swa-learned-sinks"):
        v = registry.get(name)
        assert v.attention_flops("fwd", 2, 3, 16, n_q, n_k, True, params) == 4 * 2 * 3 * 16 * pairs


def test_causal_only_and_registered():
    for name in ("swa-sinks", "swa-learned-sinks"):
        v = registry.get(name)
        assert v.family == "sinks" and not v.full_softmax
        assert v.supports("cpu", torch.float32, 32, causal=False) == (False, "causal only")
    q, k, val = qkv(b=1, h=2, n_q=10, d=8, dtype=torch.float64)
    streaming, learned = registry.get("swa-sinks"), registry.get("swa-learned-sinks")
    assert streaming.exact and not learned.exact  # the sink logit takes softmax mass
    mask = streaming.mask(10, 10, causal=True)
    torch.testing.assert_close(streaming.attention_reference(q, k, val, causal=True),
                               written_softmax(q, k, val, 128, 4), **TOLERANCE[torch.float64])
    torch.testing.assert_close(learned.attention_reference(q, k, val, causal=True),
                               written_softmax(q, k, val, 128, 0, 0.0), **TOLERANCE[torch.float64])
    assert mask.equal(torch.ones(10, 10, dtype=torch.bool).tril())  # window 128 > 10: plain causal here


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16)
# With a sink logit it is the learned variant's kernel.
@pytest.mark.parametrize("sink_logit", [None, 0.5], ids=["swa-sinks", "swa-learned-sinks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_flex_attention_on_cuda_matches_the_reference(sink_logit, dtype):
    q, k, v = qkv(b=2, h=4, n_q=1000, d=64, dtype=dtype, device="cuda")
    params = dict(window=128, sink_tokens=4, sink_logit=sink_logit)
    out = flex_sink_attention(q, k, v, **params)
    want = sink_attention_reference(*(t.double() for t in (q, k, v)), **params)
    tol = TOLERANCE[torch.float32] if dtype == torch.float32 else TOLERANCE[torch.bfloat16]
    torch.testing.assert_close(out.double(), want, **tol)
