"""Sparse patterns against their papers' definitions (written out here), per-head masks, the Flex path.
(Exactness under the mask in every dtype: tests/test_references.py.)"""

import pytest
import torch
from scipy import stats

from harness import flex, masks, registry
from harness.attention import softmax_attention
from harness.flex import flex_masked_attention
from tests.conftest import TOLERANCE, assert_same_output_and_grads, qkv
from variants.sparse import (
    bigbird_layout,
    bigbird_mask,
    bigbird_predicate,
    fixed_mask,
    fixed_predicate,
    strided_mask,
    strided_predicate,
)

BIGBIRD = dict(window_blocks=1, global_blocks=1, random_blocks=3, seed=0)
SMALL = {  # small blocks and strides so that a 100-token test sees a real pattern
    "sparse-bigbird": dict(block_size=8, **BIGBIRD),
    "sparse-strided": dict(stride=6),
    "sparse-fixed": dict(stride=8, summary=2),
}
PREDICATES = {"sparse-bigbird": bigbird_predicate, "sparse-strided": strided_predicate,
              "sparse-fixed": fixed_predicate}
SHAPES = [(100, 100), (37, 100), (100, 37), (64, 64)]
SHAPE_IDS = ["square", "short-q", "long-q", "block-multiple"]
# Eager FlexAttention is slow on CPU: a few (shape, causal) cases covering both alignments.
FLEX_CASES = [((100, 100), False), ((100, 100), True), ((37, 100), True), ((100, 37), False)]


def position_mask(n_q, n_k, rule):
    """The (n_q, n_k) mask of rule(i, j) over absolute positions (query i at i + n_k - n_q), by loops."""
    return torch.tensor([[rule(i + n_k - n_q, j) if i + n_k - n_q >= 0 else False for j in range(n_k)]
                         for i in range(n_q)])


# --- BigBird (ITC) ------------------------------------------------------------------------------------

def test_bigbird_defaults_are_the_papers():
    v = registry.get("sparse-bigbird")
    # window of 3 blocks, the first and the last block global, r = 3 random blocks (BigBird ITC, LRA)
    assert {k: v.defaults[k] for k in BIGBIRD} == dict(window_blocks=1, global_blocks=1, random_blocks=3,
                                                        seed=0)


def window_and_globals(n, causal):
    """BigBird's non-random blocks from the paper: a 3-block window, the first and last blocks global
    (causal: the first only), as sets of key blocks per query block."""
    glob = {0} if causal else {0, n - 1}
    return [set(range(n)) if i in glob else {j for j in range(n) if abs(i - j) <= 1 or j in glob}
            for i in range(n)]


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_layout_is_window_globals_and_three_random_blocks_per_head(causal):
    n, heads = 20, 4
    layout = bigbird_layout(n, causal, n_heads=heads, **BIGBIRD)
    assert layout.shape == (heads, n, n)
    for h in range(heads):
        for i, fixed in enumerate(window_and_globals(n, causal)):
            row = set(torch.nonzero(layout[h, i]).flatten().tolist())
            assert fixed <= row
            drawn = row - fixed
            pool = {j for j in range(n) if j not in fixed and (j < i or not causal)}
            assert drawn <= pool and len(drawn) == min(3, len(pool))
    assert all(not torch.equal(layout[0], layout[h]) for h in range(1, heads))  # drawn per head


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_random_blocks_are_uniform_over_every_block_outside_window_and_globals(causal):
    """The paper's draw, not google-research/bigbird's code, which draws from a pool of low blocks that
    depends on n (blocks 1-15 at n = 1024-4096): across heads, a late query block draws every block of
    its pool, each about equally often."""
    n, heads, row = 32, 600, 28
    layout = bigbird_layout(n, causal, n_heads=heads, **BIGBIRD)
    fixed = window_and_globals(n, causal)[row]
    pool = [j for j in range(n) if j not in fixed and (j < row or not causal)]
    counts = layout[:, row, pool].sum(0)
    assert counts.sum() == 3 * heads and (counts > 0).all()
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3


def test_bigbird_heads_are_seeded_and_do_not_depend_on_the_head_count():
    first, again = (bigbird_layout(32, n_heads=4, **dict(BIGBIRD, seed=7)) for _ in range(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, bigbird_layout(32, n_heads=4, **dict(BIGBIRD, seed=8)))
    assert torch.equal(bigbird_layout(32, n_heads=2, **dict(BIGBIRD, seed=7)), first[:2])


def test_causal_bigbird_layout_of_a_prefix_is_the_prefix_of_the_layout():
    long = bigbird_layout(40, True, n_heads=3, **BIGBIRD)
    assert torch.equal(bigbird_layout(23, True, n_heads=3, **BIGBIRD), long[:, :23, :23])


def test_bigbird_mask_is_per_head_with_global_first_and_last_blocks():
    n, block, heads = 100, 8, 3  # 13 blocks, the last one 4 tokens long
    mask = bigbird_mask(n, n, n_heads=heads, block_size=block, **BIGBIRD)
    assert mask.shape == (heads, n, n)
    last = 12 * block
    assert mask[:, :block].all() and mask[:, :, :block].all()
    assert mask[:, last:].all() and mask[:, :, last:].all()
    i = torch.arange(n)
    near = ((i[:, None] // block) - (i[None, :] // block)).abs() <= 1
    assert mask[:, near].all()
    assert not mask.all() and not torch.equal(mask[0], mask[1])


def test_causal_bigbird_mask_is_its_layout_under_tril():
    n, block = 100, 8
    mask = bigbird_mask(n, n, causal=True, n_heads=2, block_size=block, **BIGBIRD)
    layout = bigbird_layout(13, True, n_heads=2, **BIGBIRD)
    token_layout = layout.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :n, :n]
    assert torch.equal(mask, token_layout & torch.ones(n, n, dtype=torch.bool).tril())


# --- Sparse Transformer -------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("stride", [1, 4, 6])
def test_strided_is_a_local_band_plus_every_stride_th_key(causal, shape, stride):
    def rule(i, j):  # Child et al. 2019: A1 = the previous l positions, A2 = (i - j) mod l == 0
        seen = abs(i - j) < stride or (i - j) % stride == 0
        return seen and (j <= i or not causal)

    assert torch.equal(strided_mask(*shape, causal=causal, stride=stride), position_mask(*shape, rule))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("stride", "summary"), [(8, 2), (5, 1), (4, 4), (6, 0)])
def test_fixed_is_the_own_block_plus_every_blocks_last_summary_positions(causal, shape, stride, summary):
    def rule(i, j):  # A1 = same block of l, A2 = j mod l in {l - c, ..., l - 1} (absolute columns)
        seen = i // stride == j // stride or j % stride >= stride - summary
        return seen and (j <= i or not causal)

    got = fixed_mask(*shape, causal=causal, stride=stride, summary=summary)
    assert torch.equal(got, position_mask(*shape, rule))


def test_fixed_refuses_a_summary_longer_than_its_block():
    with pytest.raises(ValueError, match="summary"):
        fixed_mask(16, 16, stride=4, summary=5)


def test_fixed_is_lras_sparse_transformer_and_both_patterns_are_registered():
    assert registry.get("sparse-fixed").family == registry.get("sparse-strided").family == "sparse"
    assert registry.get("sparse-fixed").defaults == dict(stride=128, summary=8)


# --- every sparse variant -----------------------------------------------------------------------------

def test_bigbird_heads_attend_under_their_own_masks():
    q, k, val = qkv(n_q=64, h=2)
    params = SMALL["sparse-bigbird"]
    out = registry.get("sparse-bigbird").attention(q, k, val, **params)
    mask = bigbird_mask(64, 64, n_heads=2, **params)
    for h in range(2):
        want = softmax_attention(q[:, h], k[:, h], val[:, h], mask[h])
        torch.testing.assert_close(out[:, h], want)
    assert not torch.allclose(out[:, 1], softmax_attention(q[:, 1], k[:, 1], val[:, 1], mask[0]))


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize(("shape", "causal"), FLEX_CASES, ids=str)
def test_flex_block_mask_matches_mask_reference_on_cpu(name, shape, causal):
    v, params = registry.get(name), SMALL[name]
    q, k, val = qkv(n_q=shape[0], n_k=shape[1])
    out = flex_masked_attention(q, k, val, PREDICATES[name], causal, params, compiled=False)
    want = softmax_attention(q, k, val, v.mask(*shape, causal=causal, n_heads=q.shape[1], **params))
    torch.testing.assert_close(out, want, **TOLERANCE[torch.float32])


def test_block_masks_are_cached_by_pattern_size_and_heads():
    params = tuple(sorted(SMALL["sparse-bigbird"].items()))
    key = (bigbird_predicate, 40, 40, True, 3, params, "cpu")
    assert flex.block_mask(*key) is flex.block_mask(*key)
    assert flex.block_mask(*key) is not flex.block_mask(*key[:3], False, *key[4:])
    assert flex.block_mask(*key) is not flex.block_mask(*key[:4], 2, *key[5:])
    assert flex.block_mask(*key).shape[1] == 3  # one block layout per head


def test_cuda_path_builds_block_masks_and_runs_flex_through_the_static_compiled_wrappers(monkeypatch):
    """On CUDA both create_block_mask and flex_attention go through compiling.Compiled (dynamic=False),
    the block mask once per (pattern, size). Here the wrappers are spies that run eagerly on the CPU."""
    calls = []

    def spy(fn):
        def run(*args, **kwargs):
            calls.append(fn.__name__)
            return fn(*args, **{**kwargs, "device": "cpu"} if "device" in kwargs else kwargs)
        return run

    monkeypatch.setattr(flex, "compiled_wrapper", spy)
    flex.block_mask.cache_clear()
    params = tuple(sorted(SMALL["sparse-fixed"].items()))
    for _ in range(2):
        flex.block_mask(fixed_predicate, 48, 48, True, 1, params, "cuda:0")
    assert calls == ["create_block_mask"]
    q, k, val = qkv(n_q=48)
    out = flex_masked_attention(q, k, val, fixed_predicate, True, dict(params))
    assert calls == ["create_block_mask", "flex_attention"]  # a cpu tensor's mask is built eagerly
    torch.testing.assert_close(out, softmax_attention(q, k, val, fixed_mask(48, 48, True, **dict(params))))
    flex.block_mask.cache_clear()


def test_one_compiled_wrapper_per_function():
    from harness import compiling

    assert flex.compiled_wrapper(masks.dense) is flex.compiled_wrapper(masks.dense)
    assert isinstance(flex.compiled_wrapper(masks.dense), compiling.Compiled)
    flex.compiled_wrapper.cache_clear()


@pytest.mark.cuda
@pytest.mark.smoke_if(dtype=torch.bfloat16, causal=True, shape=(300, 300))
@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(300, 300), (100, 300), (300, 100)], ids=["square", "short-q", "long-q"])
def test_cuda_flex_matches_dense_reference(name, dtype, causal, shape):
    from harness import compiling

    v = registry.get(name)
    params = dict(v.defaults, **({"block_size": 32} if name == "sparse-bigbird" else {"stride": 32}))
    q, k, val = qkv(n_q=shape[0], n_k=shape[1], d=64, dtype=dtype, device="cuda", requires_grad=True)
    before = compiling.counts()
    out = v.attention(q, k, val, causal=causal, **params)
    assert compiling.fallback_since(before) is False  # the compiled kernel ran
    mask = v.mask(*shape, causal=causal, n_heads=q.shape[1], **params).cuda()
    want = softmax_attention(q.float(), k.float(), val.float(), mask)
    assert_same_output_and_grads(out, want, (q, k, val), TOLERANCE[dtype], dict(atol=5e-2, rtol=5e-2))
