"""Block-sparse patterns: layout properties checked independently of kernels, exactness, the Flex path."""

import pytest
import torch

from harness import registry
from harness.attention import softmax_attention
from tests.conftest import TOLERANCE, assert_same_output_and_grads, qkv
from variants.sparse import (
    bigbird_layout,
    bigbird_mask,
    bigbird_predicate,
    flex_masked_attention,
    strided_layout,
    strided_mask,
    strided_predicate,
)

BIGBIRD = dict(window_blocks=1, global_blocks=2, random_blocks=2, seed=0)
SMALL = {  # block size 8 so that a 100-token test sees a real pattern
    "sparse-bigbird": dict(block_size=8, **BIGBIRD),
    "sparse-strided": dict(block_size=8, stride=3),
}
PREDICATES = {"sparse-bigbird": bigbird_predicate, "sparse-strided": strided_predicate}
SHAPES = [(100, 100), (37, 100), (100, 37), (64, 64)]
SHAPE_IDS = ["square", "short-q", "long-q", "block-multiple"]
# Eager FlexAttention is slow on CPU: a few (shape, causal) cases covering both alignments.
FLEX_CASES = [((100, 100), False), ((100, 100), True), ((37, 100), True), ((100, 37), False)]


def window_and_globals(n, window_blocks, global_blocks):
    """The non-random part of BigBird, from its definition, as sets of key blocks per query block."""
    return [
        set(range(n)) if i < global_blocks
        else {j for j in range(n) if abs(i - j) <= window_blocks or j < global_blocks}
        for i in range(n)
    ]


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_layout_adds_exactly_the_random_blocks_it_can(causal):
    n = 20
    layout = bigbird_layout(n, causal, **BIGBIRD)
    for i, fixed in enumerate(window_and_globals(n, BIGBIRD["window_blocks"], BIGBIRD["global_blocks"])):
        row = set(torch.nonzero(layout[i]).flatten().tolist())
        assert fixed <= row
        drawn = row - fixed
        pool = {j for j in range(n) if j not in fixed and (j < i or not causal)}
        assert drawn <= pool
        assert len(drawn) == min(BIGBIRD["random_blocks"], len(pool))


def test_bigbird_density_is_its_expected_fraction():
    n_blocks, block = 16, 8
    fixed = window_and_globals(n_blocks, BIGBIRD["window_blocks"], BIGBIRD["global_blocks"])
    expected_blocks = sum(len(f) + min(BIGBIRD["random_blocks"], n_blocks - len(f)) for f in fixed)
    mask = bigbird_mask(n_blocks * block, n_blocks * block, block_size=block, **BIGBIRD)
    assert mask.float().mean().item() == pytest.approx(expected_blocks / n_blocks**2)


def test_bigbird_random_blocks_are_deterministic_by_seed():
    params = dict(BIGBIRD, random_blocks=3)
    first, again, other = (bigbird_layout(32, **dict(params, seed=s)) for s in (7, 7, 8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_causal_bigbird_layout_of_a_prefix_is_the_prefix_of_the_layout():
    params = dict(BIGBIRD, global_blocks=1, random_blocks=3)
    long = bigbird_layout(40, True, **params)
    assert torch.equal(bigbird_layout(23, True, **params), long[:23, :23])
    assert not torch.equal(bigbird_layout(23, False, **params), bigbird_layout(40, False, **params)[:23, :23])


@pytest.mark.parametrize("name", list(SMALL))
def test_causal_attention_over_a_prefix_and_decoding_agree_with_the_full_pass(name):
    v, params = registry.get(name), SMALL[name]
    q, k, val = qkv(n_q=100)
    full = v.attention(q, k, val, causal=True, **params)
    prefix = v.attention(q[..., :61, :], k[..., :61, :], val[..., :61, :], causal=True, **params)
    torch.testing.assert_close(prefix, full[..., :61, :])
    last = v.attention(q[..., -1:, :], k, val, causal=True, **params)
    torch.testing.assert_close(last, full[..., -1:, :])


def test_bigbird_token_mask_globals_window_and_partial_last_block():
    n, block, g = 100, 8, BIGBIRD["global_blocks"]  # 13 blocks, the last one 4 tokens long
    mask = bigbird_mask(n, n, block_size=block, **BIGBIRD)
    assert mask.shape == (n, n)
    assert mask[: g * block].all() and mask[:, : g * block].all()
    i = torch.arange(n)
    near = ((i[:, None] // block) - (i[None, :] // block)).abs() <= BIGBIRD["window_blocks"]
    assert mask[near].all()
    assert not mask.all()  # the pattern is actually sparse


def test_causal_masks_are_their_layout_under_tril():
    n, block = 100, 8
    tril = torch.ones(n, n, dtype=torch.bool).tril()
    causal = bigbird_mask(n, n, causal=True, block_size=block, **BIGBIRD)
    layout = bigbird_layout(13, True, **BIGBIRD)
    token_layout = layout.repeat_interleave(block, 0).repeat_interleave(block, 1)[:n, :n]
    assert torch.equal(causal, token_layout & tril)
    strided = strided_mask(n, n, block_size=block, stride=3)
    assert torch.equal(strided_mask(n, n, causal=True, block_size=block, stride=3), strided & tril)


def test_strided_layout_is_local_plus_summary_blocks():
    n, stride = 17, 4
    want = torch.tensor([[abs(i - j) < stride or j % stride == stride - 1 for j in range(n)]
                         for i in range(n)])
    assert torch.equal(strided_layout(n, stride=stride), want)


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matches_float64_reference_under_its_mask(name, causal, shape):
    v, params = registry.get(name), SMALL[name]
    q, k, val = qkv(n_q=shape[0], n_k=shape[1])
    mask = v.mask(*shape, causal=causal, **params)
    assert not mask.all()
    want = softmax_attention(q.double(), k.double(), val.double(), mask)
    torch.testing.assert_close(v.attention(q, k, val, causal=causal, **params).double(), want,
                               **TOLERANCE[torch.float32])


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize(("shape", "causal"), FLEX_CASES, ids=str)
def test_flex_block_mask_matches_mask_reference_on_cpu(name, shape, causal):
    v, params = registry.get(name), SMALL[name]
    q, k, val = qkv(n_q=shape[0], n_k=shape[1])
    out = flex_masked_attention(q, k, val, PREDICATES[name], causal, params, compiled=False)
    want = softmax_attention(q, k, val, v.mask(*shape, causal=causal, **params))
    torch.testing.assert_close(out, want, **TOLERANCE[torch.float32])


def test_block_masks_are_cached_by_shape_and_params():
    from variants.sparse import _block_mask

    key = (bigbird_predicate, 40, 40, True, tuple(sorted(dict(block_size=8, **BIGBIRD).items())), "cpu")
    assert _block_mask(*key) is _block_mask(*key)
    assert _block_mask(*key) is not _block_mask(*key[:3], False, *key[4:])


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(300, 300), (100, 300), (300, 100)], ids=["square", "short-q", "long-q"])
def test_cuda_flex_matches_dense_reference(name, dtype, causal, shape):
    v = registry.get(name)
    params = dict(v.defaults, block_size=32)
    q, k, val = qkv(n_q=shape[0], n_k=shape[1], d=64, dtype=dtype, device="cuda", requires_grad=True)
    out = v.attention(q, k, val, causal=causal, **params)
    mask = v.mask(*shape, causal=causal, **params).cuda()
    want = softmax_attention(q.float(), k.float(), val.float(), mask)
    assert_same_output_and_grads(out, want, (q, k, val), TOLERANCE[dtype], dict(atol=5e-2, rtol=5e-2))
