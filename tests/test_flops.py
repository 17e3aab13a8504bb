"""FLOP counts: exact visible-pair counters against brute-force sums of the dense masks."""

import itertools

import pytest
import torch

from harness import flops, masks, registry

SIZES = [(1, 1), (5, 5), (64, 64), (100, 100), (130, 130), (1, 130), (7, 130), (1, 257), (257, 257)]
LONG_Q = [(9, 3), (12, 11), (130, 7), (40, 1)]  # n_q > n_k: queries at negative positions


def brute_force(pred, n_q, n_k):
    return masks.visible_pairs(masks.dense(pred, n_q, n_k))


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000, 131072])
def test_causal_is_half_of_full_plus_half_the_diagonal(n):
    causal, full = flops.dense_pairs(n, n, True), flops.dense_pairs(n, n, False)
    assert full == n * n
    assert causal == n * (n + 1) // 2
    assert 2 * causal - full == n  # the diagonal: each query also sees its own key


@pytest.mark.parametrize("n_q,n_k", [*SIZES, (9, 3), (12, 11)])
def test_causal_count_matches_the_bottom_right_mask(n_q, n_k):
    assert flops.dense_pairs(n_q, n_k, True) == brute_force(masks.causal(), n_q, n_k)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window,global_tokens",
                         [(0, 0), (3, 0), (0, 5), (16, 2), (500, 3), (3, 500), (4, 2)])
def test_window_and_global_counts_are_exact(window, global_tokens, causal):
    pred = masks.any_of(masks.sliding_window(window), masks.global_tokens(global_tokens))
    pred = masks.all_of(pred, masks.causal()) if causal else pred
    for n_q, n_k in SIZES + LONG_Q:
        got = flops.window_pairs(n_q, n_k, causal, window, global_tokens)
        assert got == brute_force(pred, n_q, n_k), (n_q, n_k)


def test_window_count_at_large_n_matches_the_closed_form():
    n, w = 131072, 128  # non-causal, no global tokens: every row sees 2w + 1 keys but the 2w edge rows
    assert flops.window_pairs(n, n, False, w, 0) == n * (2 * w + 1) - w * (w + 1)
    assert flops.window_pairs(n, n, True, w, 0) == n * (w + 1) - w * (w + 1) // 2


SPARSE_PARAMS = {
    "sparse-bigbird": [{}, {"block_size": 16}, {"block_size": 7}, {"block_size": 8, "global_blocks": 2}],
    "sparse-strided": [{}, {"stride": 16}, {"stride": 7}, {"stride": 1}],
    "sparse-fixed": [{}, {"stride": 16, "summary": 4}, {"stride": 7, "summary": 3},
                     {"stride": 8, "summary": 0}, {"stride": 5, "summary": 5}],
}


@pytest.mark.parametrize("name,params", [(n, p) for n, ps in SPARSE_PARAMS.items() for p in ps], ids=str)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_heads", [1, 3])
def test_sparse_count_equals_the_mask_sum(name, params, causal, n_heads):
    v = registry.get(name)
    for n_q, n_k in SIZES + LONG_Q:
        mask = v.mask(n_q, n_k, causal, n_heads=n_heads, **params)
        expected = masks.visible_pairs(mask) * (1 if mask.dim() == 3 else n_heads)
        assert pairs(v, n_q, n_k, causal, params, n_heads) == expected, (n_q, n_k)


def test_bigbird_flops_count_each_heads_own_random_blocks():
    v, params = registry.get("sparse-bigbird"), {"block_size": 8}
    for causal in (False, True):
        mask = v.mask(256, 256, causal, n_heads=4, **params)
        assert not torch.equal(mask[0], mask[1])  # each head draws its own blocks
        got = v.attention_flops("fwd", 2, 4, 64, 256, 256, causal, params)
        assert got == 4 * 2 * 64 * int(mask.sum())


def pairs(v, n_q, n_k, causal, params=None, n_heads=1) -> int:
    """The visible pairs (over n_heads heads) a variant's declared FLOPs count: batch 1, head_dim 1."""
    return v.attention_flops("fwd", 1, n_heads, 1, n_q, n_k, causal, params) // 4


def softmax_variants_with_masks():
    return [v.name for v in registry.all_variants() if v.flops is not None and v.mask]


def test_every_exact_variant_declares_flops():
    assert [v.name for v in registry.all_variants() if v.exact and v.flops is None] == []


@pytest.mark.parametrize("name", softmax_variants_with_masks())
def test_every_masked_softmax_variant_is_counted_exactly(name):
    v = registry.get(name)
    for (n_q, n_k), causal in itertools.product([(200, 200), (1, 201), (3, 129)], [True, False]):
        # The variant runs with its defaults; pass them, as a mask function may have other defaults.
        mask = v.mask(n_q, n_k, causal, **v.defaults)
        expected = masks.visible_pairs(mask)
        assert pairs(v, n_q, n_k, causal) == expected, (n_q, n_k, causal)


def test_unmasked_variants_count_dense_pairs():
    v = registry.get("vanilla")
    assert pairs(v, 300, 300, True) == 300 * 301 // 2
    assert pairs(v, 1, 301, True) == 301  # one decode step sees the whole cache


def test_flops_follow_the_conventions():
    v = registry.get("vanilla")
    b, h, d, n = 2, 3, 64, 128
    fwd = v.attention_flops("fwd", b, h, d, n, n, False)
    assert fwd == 4 * b * h * d * n * n
    assert v.attention_flops("fwd_bwd", b, h, d, n, n, False) == 3.5 * fwd
    assert v.attention_flops("fwd", b, h, d, n, n, True) == 4 * b * h * d * n * (n + 1) // 2
    assert flops.projection_flops("fwd", 10, 8) == 8 * 10 * 64
    assert flops.projection_flops("fwd_bwd", 10, 8) == 3 * 8 * 10 * 64


@pytest.mark.parametrize("name", ["linear", "performer", "mamba"])
def test_non_softmax_families_get_no_flop_count(name):
    assert registry.get(name).attention_flops("fwd", 1, 1, 64, 8, 8, True) is None
