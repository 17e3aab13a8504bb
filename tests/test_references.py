"""Every fast path against its naive twin, over the registry: attention against softmax under the
variant's mask (exact variants) or its declared reference, in every dtype it runs on the CPU, with
gradients; the kernels of the mixer-only families against `kernel_reference`. What is particular to a
family (its paper's definition, its library's call sites) stays in tests/test_<family>.py.

Variants run at their `small_params`, so that at these lengths a sparse pattern is not full attention.
"""

import itertools

import pytest
import torch

from harness import registry
from harness.attention import causal_mask, softmax_attention
from harness.registry import ALL_FLOAT, Unsupported, dtype_name
from tests.conftest import TOLERANCE, assert_same_output_and_grads, attention_variants, qkv

ATTENTION = [v.name for v in attention_variants()]
KERNELS = [v.name for v in registry.all_variants() if v.kernel is not None]
HEAD_DIM = 40  # not a power of two
# 100 is a multiple of neither a 64-query chunk nor an 8-token block, 64 of both; (1, 40) is a decode step.
SHAPES = [(100, 100), (37, 100), (100, 37), (64, 64), (1, 40)]
GRAD_SHAPES = [(40, 40), (17, 40), (40, 17), (1, 24)]
CHECK_SHAPES = [(9, 9), (5, 9), (9, 5)]  # gradcheck: two 8-token chunks or blocks, both alignments


def runnable(v, dtype: torch.dtype, causal: bool, head_dim: int = HEAD_DIM) -> bool:
    return v.supports("cpu", dtype, head_dim, causal)[0]


def cases(v, dtype: torch.dtype, shapes):
    """(causal, n_q, n_k) the variant runs on the CPU in this dtype; skips the test where there is none."""
    found = [(causal, n_q, n_k) for causal, (n_q, n_k) in itertools.product((False, True), shapes)
             if runnable(v, dtype, causal)]
    if not found:
        pytest.skip(v.supports("cpu", dtype, HEAD_DIM, True)[1])
    return found


def reference(v, q, k, val, causal: bool) -> torch.Tensor:
    """In float64: an exact variant's definition, softmax under its mask (else plain causal); the
    declared reference of an approximate one."""
    q, k, val = q.double(), k.double(), val.double()
    if not v.exact:
        return v.attention_reference(q, k, val, causal=causal, **v.small_params)
    n_q, n_k = q.shape[-2], k.shape[-2]
    if v.mask is not None:
        mask = v.mask(n_q, n_k, causal=causal, n_heads=q.shape[1], **v.small_params)
    else:
        mask = causal_mask(n_q, n_k, q.device) if causal else None
    return softmax_attention(q, k, val, mask)


def refuses_cross_attention(v, q, k, val, causal) -> bool:
    """A self-attention-only variant asked for n_q != n_k raises Unsupported (checked here)."""
    if q.shape[-2] == k.shape[-2] or v.support.cross:
        return False
    with pytest.raises(Unsupported):
        v.attention(q, k, val, causal=causal, **v.small_params)
    return True


@pytest.mark.parametrize("dtype", ALL_FLOAT, ids=dtype_name)
@pytest.mark.parametrize("name", ATTENTION)
def test_attention_matches_its_reference_in_every_dtype(name, dtype):
    """The output keeps the input dtype and matches the float64 reference on the same (rounded) inputs
    within that dtype's tolerance: causal and not, square, cross and one query. An exact variant is held
    to softmax attention under its mask."""
    v = registry.get(name)
    for causal, n_q, n_k in cases(v, dtype, SHAPES):
        q, k, val = qkv(b=1, h=2, n_q=n_q, n_k=n_k, d=HEAD_DIM, dtype=dtype)
        if refuses_cross_attention(v, q, k, val, causal):
            continue
        if v.mask is not None and n_q == n_k:  # else the check below would be full softmax attention
            assert not v.mask(n_q, n_k, causal=causal, n_heads=q.shape[1], **v.small_params).all()
        out = v.attention(q, k, val, causal=causal, **v.small_params)
        assert out.dtype == dtype
        want = reference(v, q, k, val, causal)
        torch.testing.assert_close(out.double(), want, **TOLERANCE[dtype],
                                   msg=lambda m, c=(causal, n_q, n_k): f"causal, n_q, n_k = {c}: {m}")


@pytest.mark.parametrize("name", ATTENTION)
def test_attention_gradients_match_its_reference_and_finite_differences(name):
    """float32 gradients against the float64 reference's under one output gradient; and in float64,
    autograd against finite differences (gradcheck) on tiny shapes."""
    v = registry.get(name)
    for causal, n_q, n_k in cases(v, torch.float32, GRAD_SHAPES):
        q, k, val = qkv(b=1, h=2, n_q=n_q, n_k=n_k, requires_grad=True)
        if refuses_cross_attention(v, q, k, val, causal):
            continue
        out = v.attention(q, k, val, causal=causal, **v.small_params)
        twins = [t.detach().double().requires_grad_() for t in (q, k, val)]
        want = reference(v, *twins, causal)
        grad_out = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, val), grad_out)
        expected = torch.autograd.grad(want, twins, grad_out.double())
        for g, e in zip(got, expected, strict=True):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g.double(), e, **TOLERANCE[torch.float32],
                                       msg=lambda m, c=(causal, n_q, n_k): f"causal, n_q, n_k = {c}: {m}")
    for causal, n_q, n_k in cases(v, torch.float64, CHECK_SHAPES):
        if n_q != n_k and not v.support.cross:
            continue
        inputs = qkv(b=1, h=2, n_q=n_q, n_k=n_k, d=4, dtype=torch.float64, requires_grad=True)
        attend = lambda *t, causal=causal: v.attention(*t, causal=causal, **v.small_params)  # noqa: E731
        assert torch.autograd.gradcheck(attend, inputs, fast_mode=True), (causal, n_q, n_k)


@pytest.mark.parametrize("name", ATTENTION)
def test_causal_attention_over_a_prefix_and_for_the_last_query_alone_is_the_full_pass(name):
    """Causal attention over the first 61 tokens is the first 61 rows of the full pass, and the last
    query alone against every key is its last row (queries align bottom-right)."""
    v = registry.get(name)
    if not runnable(v, torch.float32, causal=True):
        pytest.skip(v.supports("cpu", torch.float32, HEAD_DIM, True)[1])
    q, k, val = qkv(n_q=100)
    full = v.attention(q, k, val, causal=True, **v.small_params)
    prefix = v.attention(q[..., :61, :], k[..., :61, :], val[..., :61, :], causal=True, **v.small_params)
    torch.testing.assert_close(prefix, full[..., :61, :], **TOLERANCE[torch.float32])
    if v.support.cross:
        last = v.attention(q[..., -1:, :], k, val, causal=True, **v.small_params)
        torch.testing.assert_close(last, full[..., -1:, :], **TOLERANCE[torch.float32])


# --- the kernels of the mixer-only families -------------------------------------------------------------

def kernel_inputs(v, dtype=torch.float64, batch=1, heads=2, seq_len=100, head_dim=4, seed=0) -> dict:
    return v.kernel_inputs(batch, heads, seq_len, head_dim, torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_and_its_gradients_match_its_reference_in_float64(name):
    """Over more than one chunk: the output and the gradient of every input tensor."""
    v = registry.get(name)
    inputs = kernel_inputs(v)
    assert {t.dtype for t in inputs.values() if torch.is_tensor(t)} == {torch.float64}
    leaves = {n: t.requires_grad_() for n, t in inputs.items() if torch.is_tensor(t)}
    assert_same_output_and_grads(v.kernel(**inputs), v.kernel_reference(**inputs), list(leaves.values()),
                                 TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_name)
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_in_lower_precision_is_close_to_its_float64_reference(name, dtype):
    """Inputs drawn in `dtype` (the accumulation dtype for decays and parameters, as the layers keep
    them): the output is in `dtype` and within its tolerance of the float64 reference on those inputs."""
    v = registry.get(name)
    if not runnable(v, dtype, causal=True, head_dim=16):
        pytest.skip(v.supports("cpu", dtype, 16, True)[1])
    inputs = kernel_inputs(v, dtype, batch=2, heads=3, seq_len=150, head_dim=16)
    assert {t.dtype for t in inputs.values() if torch.is_tensor(t)} <= {dtype, torch.float32}
    out = v.kernel(**inputs)
    assert out.dtype == dtype
    want = v.kernel_reference(**{n: t.double() if torch.is_tensor(t) else t for n, t in inputs.items()})
    torch.testing.assert_close(out.double(), want, **TOLERANCE[dtype])
