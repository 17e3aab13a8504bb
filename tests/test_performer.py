"""Performer: the random features, convergence to softmax, stability, decoding, fla parity. (Every dtype and
the gradients against its O(N^2) definition: tests/test_references.py.)"""

import math

import pytest
import torch

from harness import registry
from harness.attention import causal_mask, softmax_attention
from tests.conftest import qkv
from variants import linear
from variants.linear import normalized_linear_attention
from variants.performer import (
    favor_features,
    haar_orthogonal,
    orthogonal_random_features,
    performer,
    performer_attention_reference,
    positive_features,
)


def features(d=16, m=40, seed=0, heads=1):
    """(m, d), or (heads, m, d) for heads > 1."""
    w = orthogonal_random_features(d, m, seed, torch.device("cpu"), torch.float64, heads)
    return w[0] if heads == 1 else w


@pytest.mark.parametrize("causal", [False, True])
def test_stabilised_features_survive_where_plain_exp_underflows(causal):
    # Large-norm inputs: exp(w.x - |x|^2 / 2) is ~e^-100 for d = 256, zero in float32 without the shift.
    q, k, v = (4 * t for t in qkv(b=1, h=2, n_q=50, d=256))
    w = orthogonal_random_features(256, 64, 0, torch.device("cpu"), torch.float32, 2)
    x = q * 256 ** -0.25
    assert (torch.exp(x @ w.mT - x.square().sum(-1, keepdim=True) / 2) == 0).all(-1).any()
    out = performer(q, k, v, causal=causal, nb_features=64)
    expected = performer_attention_reference(q.double(), k.double(), v.double(), causal, nb_features=64)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("per_row", [True, False])
def test_favor_features_are_the_shifted_definition(per_row):
    x, w = torch.randn(2, 30, 16, dtype=torch.float64), features()
    phi, shift = favor_features(x, w, per_row=per_row)
    xs = x * 16 ** -0.25
    plain = torch.exp(xs @ w.T - xs.square().sum(-1, keepdim=True) / 2) / math.sqrt(40)
    torch.testing.assert_close(phi * torch.exp(shift), plain)
    assert shift.shape == ((2, 30, 1) if per_row else (2, 1, 1))
    assert phi.max() == pytest.approx(1 / math.sqrt(40))


def test_features_are_deterministic_by_seed_and_differ_across_seeds():
    orthogonal_random_features.cache_clear()
    first = features(seed=3).clone()
    orthogonal_random_features.cache_clear()
    torch.testing.assert_close(features(seed=3), first, atol=0, rtol=0)
    cached = lambda: orthogonal_random_features(16, 40, 3, torch.device("cpu"), torch.float64)  # noqa: E731
    assert cached() is cached()  # cached per (d, m, seed, device, dtype, heads, draw)
    assert (features(seed=4) - first).abs().max() > 0.1
    q, k, v = qkv(n_q=40)
    torch.testing.assert_close(performer(q, k, v, seed=3), performer(q, k, v, seed=3), atol=0, rtol=0)
    assert not torch.allclose(performer(q, k, v, seed=3), performer(q, k, v, seed=4), atol=1e-3)


def test_feature_blocks_are_orthogonal_with_chi_norms():
    d, m = 16, 4096
    w = features(d, m, seed=1)
    assert w.shape == (m, d)
    directions = (w / w.norm(dim=1, keepdim=True)).view(m // d, d, d)
    identity = torch.eye(d, dtype=torch.float64).expand(m // d, d, d)
    torch.testing.assert_close(directions @ directions.mT, identity)
    # Squared norms are chi-squared with d degrees of freedom: mean d, variance 2d.
    squared = w.norm(dim=1).square()
    assert squared.mean() == pytest.approx(d, rel=0.05)
    assert squared.var() == pytest.approx(2 * d, rel=0.15)


def test_haar_correction_makes_the_diagonal_of_r_positive():
    g = torch.randn(500, 3, 3, dtype=torch.float64)
    q = haar_orthogonal(g)
    torch.testing.assert_close(q @ q.mT, torch.eye(3, dtype=torch.float64).expand(500, 3, 3))
    r = q.mT @ g  # g = q r with r upper triangular and a positive diagonal: the unique such QR
    assert (torch.diagonal(r, dim1=-2, dim2=-1) > 0).all()
    torch.testing.assert_close(r.tril(-1), torch.zeros_like(r), atol=1e-12, rtol=0)


def test_trailing_partial_block_is_orthogonal():
    w = features(d=16, m=40)
    directions = w[32:] / w[32:].norm(dim=1, keepdim=True)
    torch.testing.assert_close(directions @ directions.T, torch.eye(8, dtype=torch.float64))


def test_the_feature_estimate_of_exp_qk_is_unbiased():
    """E[phi(q).phi(k)] = exp(q.k / sqrt(d)) needs Haar-distributed blocks. 20000 independent draws
    (the heads of one call), d = m = 4 (one block, where the orthogonal coupling is strongest): every
    pair's mean lies within 4 standard errors of the truth. Plain QR (no sign correction) misses by
    tens of standard errors on most pairs."""
    d, draws = 4, 20_000
    g = torch.Generator().manual_seed(11)
    q, k = (0.8 * torch.randn(16, d, generator=g, dtype=torch.float64) for _ in range(2))
    w = orthogonal_random_features(d, d, 0, torch.device("cpu"), torch.float64, draws)  # (draws, m, d)
    estimates = (positive_features(q, w) * positive_features(k, w)).sum(-1)  # (draws, pairs)
    truth = torch.exp((q * k).sum(-1) / math.sqrt(d))
    z = (estimates.mean(0) - truth) / (estimates.std(0) / math.sqrt(draws))
    assert z.abs().max() < 4, z


@pytest.mark.slow
def test_error_to_softmax_falls_as_one_over_sqrt_features():
    """Log-log slope of the error against m over 16..16384 features: -1/2 (Monte Carlo). 16 heads
    carry the same inputs and draw 16 independent sets of features. A biased draw levels off (slope
    about -0.1 here)."""
    d, n = 4, 32
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    q, k = 0.3 * q, 0.3 * k
    exact = softmax_attention(q, k, v)
    heads = lambda t: t.expand(1, 16, n, d)  # noqa: E731
    ms = [16, 64, 256, 1024, 4096, 16384]
    errors = [(performer(heads(q), heads(k), heads(v), nb_features=m) - exact).square().mean().sqrt()
              for m in ms]
    x, y = torch.tensor(ms, dtype=torch.float64).log(), torch.stack(errors).log()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum()
    assert -0.6 < slope < -0.4, (slope, errors)


def test_every_head_draws_its_own_features_and_a_redraw_draws_new_ones():
    w = features(heads=3)
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])
    redrawn = orthogonal_random_features(16, 40, 0, torch.device("cpu"), torch.float64, 3, 1)
    assert not torch.allclose(redrawn, w)
    q, k, v = qkv(h=2, n_q=30)
    out = performer(q, k, v)
    single = performer(q[:, :1], k[:, :1], v[:, :1])
    torch.testing.assert_close(out[:, :1], single)  # head 0 of two draws what a single head draws
    assert not torch.allclose(performer(q, k, v, draw=1), out)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_error_to_softmax_shrinks_as_features_grow(causal):
    q, k, v = qkv(b=1, h=2, n_q=64, d=16)
    q, k = 0.6 * q, 0.6 * k  # moderate logits: std about 0.36
    mask = causal_mask(64, 64, "cpu") if causal else None
    exact = softmax_attention(q, k, v, mask)

    def mean_error(m):
        return sum((performer(q, k, v, causal, nb_features=m, seed=s) - exact).abs().mean().item()
                   for s in range(4)) / 4

    errors = [mean_error(m) for m in (16, 256, 4096)]
    assert errors[1] < 0.75 * errors[0] and errors[2] < 0.75 * errors[1], errors
    assert errors[2] < 0.02, errors


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fla_kernel_matches_chunked_pytorch_on_gpu(dtype):
    if not linear.fla_backend_available():
        pytest.skip("fla-core not installed")
    q, k, v = qkv(n_q=300, d=64, dtype=dtype, device="cuda")
    w = orthogonal_random_features(64, 256, 0, q.device, torch.float32, q.shape[1])
    phi_q, shift_q = favor_features(q.float(), w, per_row=True)
    phi_k, shift_k = favor_features(k.float(), w, per_row=False)
    eps = 1e-6 * torch.exp(-shift_q - shift_k)
    fast = normalized_linear_attention(phi_q, phi_k, v, causal=True, eps=eps, use_fla=True)
    slow = normalized_linear_attention(phi_q, phi_k, v, causal=True, eps=eps, use_fla=False)
    tol = dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(fast, slow, **tol)
    torch.testing.assert_close(performer(q, k, v, causal=True).float(), slow, **tol)


def test_decode_state_is_constant_size_and_rescales_when_a_larger_key_arrives():
    v = registry.get("performer")
    g = torch.Generator().manual_seed(5)
    q, k, val = (torch.randn(1, 2, 20, 16, generator=g, dtype=torch.float64) for _ in range(3))
    k[..., 15, :] *= 6.0  # a later key whose exponent dwarfs the context's: the running shift must move
    state = v.prefill(k[..., :10, :], val[..., :10, :])
    sizes = {(state.kv.shape, state.k_sum.shape)}
    outs = []
    for t in range(10, 20):
        o, state = v.decode(q[..., t:t + 1, :], k[..., t:t + 1, :], val[..., t:t + 1, :], state)
        outs.append(o)
        sizes.add((state.kv.shape, state.k_sum.shape))
    assert len(sizes) == 1  # O(1) state: nothing grows with the context
    expected = performer_attention_reference(q, k, val, causal=True)[..., 10:, :]
    torch.testing.assert_close(torch.cat(outs, dim=-2), expected, atol=1e-9, rtol=1e-7)


# --- in a model: a draw per layer, redraws while training --------------------------------------------

def small_model(variant, **params):
    from suites.model import LanguageModel

    return LanguageModel(variant, vocab_size=16, d_model=32, n_layers=3, n_heads=2, mlp_width=64,
                         params=params)


@pytest.mark.parametrize("name", ["performer", "sparse-bigbird"])
def test_each_layer_draws_from_its_own_seed(name):
    seeds = [block.mixer.params["seed"] for block in small_model(name).blocks]
    assert len(set(seeds)) == 3
    assert seeds == [block.mixer.params["seed"] for block in small_model(name).blocks]  # reproducible
    assert seeds != [block.mixer.params["seed"] for block in small_model(name, seed=1).blocks]
    assert "seed" not in small_model("vanilla").blocks[0].mixer.params


@pytest.mark.slow
def test_training_redraws_the_features_every_redraw_every_steps():
    from suites.model import train
    from suites.tasks import Batch

    model = small_model("performer", nb_features=8, redraw_every=2)
    draws = []
    original = model.redraw_features

    def record(step):
        original(step)
        draws.append(model.blocks[0].mixer.params.get("draw"))

    model.redraw_features = record
    tokens = torch.randint(0, 16, (4, 12))
    batches = iter(lambda: Batch(tokens, tokens), None)
    train(model, batches, lr=1e-3, max_steps=5, time_budget_s=60, weight_decay=0.0, device="cpu",
          dtype=torch.float32)
    assert draws == [0, 0, 1, 1, 2]
    assert "draw" not in small_model("performer").blocks[0].mixer.params  # off unless asked for
    x = torch.randn(1, 12, 32)
    mixer = model.blocks[0].mixer
    before = mixer(x)
    mixer.params["draw"] += 1
    assert not torch.allclose(mixer(x), before)  # a new draw is new features
