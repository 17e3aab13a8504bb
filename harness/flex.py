"""FlexAttention under a mask predicate (harness.masks), for any variant: compiled on CUDA, the dense masked
softmax elsewhere.

`block_mask` builds (and caches) the BlockMask of a pattern at one size; `compiled_wrapper` holds one
static-shape compiled wrapper per function (harness.compiling); `flex_masked_attention` runs FlexAttention
under a pattern and `masked_attention` picks the code path by device. `SUPPORT`, `backend`, `peak_bytes`
and `compiles` are the registry fields a FlexAttention variant declares (what it runs on, the name of its
code path, its memory model, what it compiles per shape).

Packed documents (harness.ragged): `documents(make_predicate)` is attention-gym's document mask around a
pattern, the pattern read at each document's own positions; `packed(make_predicate)` makes it a
variant's packed_fn, one FlexAttention call on CUDA (its block mask skips the blocks across documents),
the dense masked softmax under the same predicate elsewhere. Only for a pattern of positions (a window,
global tokens, strides): one whose layout depends on the sequence's length (BigBird's random blocks)
would see another pattern than its documents alone.

Grouped KV heads (harness.attention) run on both paths: FlexAttention with `enable_gqa=True` (torch >= 2.5;
its block mask indexed by query head), the dense path through softmax_attention's group view.
"""

from __future__ import annotations

import functools

import torch

from harness import compiling, costs, masks, ragged
from harness.attention import softmax_attention
from harness.registry import ALL_FLOAT, HALF, Support

COMPILED_BACKEND = "flex-attention-compiled"
DENSE_BACKEND = "dense-masked-softmax"


def _check(device, dtype, head_dim, causal):
    if device == "cuda" and not 16 <= head_dim <= 256:
        return f"FlexAttention on CUDA needs 16 <= head_dim <= 256 (got {head_dim})"
    return None


SUPPORT = Support(dtypes={"cpu": ALL_FLOAT, "cuda": (torch.float32, *HALF)}, check=_check, grouped_kv=True,
                  padded=ragged.NO_PADDED_PATTERN, packed=True)


def gqa_flag(q: torch.Tensor, k: torch.Tensor) -> dict:
    """FlexAttention's keyword for grouped KV heads (torch >= 2.5), given only when they are grouped."""
    return {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}


def backend(device: str) -> str:
    return COMPILED_BACKEND if device == "cuda" else DENSE_BACKEND


# One torch.compile of FlexAttention (dynamic=False: every shape and graph compiles) as the planners charge
# it. Measured on the CPU backend of the repository's loaded 2-core machine, the main process's CPU time
# (dynamo, AOTAutograd, inductor's code generation): 4.4 CPU-s for the first shape (N = 1024), 1.3 s for
# N = 2048 and 7.8 s for N = 4096 (mean 4.5 s), the dynamo front end about 1.1 s of it; re-measured once
# on torch 2.13 (N = 1024, 4 heads of 64, float32, causal): 2.2 CPU-s, plus 21 CPU-s of C++ compilation
# in inductor's worker processes (38 s wall at nice 10 under load), a part a GPU replaces with Triton's.
# A GPU compile does at least the main process's work: the figure is a lower bound, not a GPU
# measurement. The backward graph (fwd_bwd, training) is assumed to cost as much again.
COMPILE_COST = costs.CompileCost(
    what="FlexAttention compile", forward_s=4.5, backward_s=4.5, keyed_by=costs.SHAPE_FIELDS,
    basis="lower bound: the CPU backend's compile on a loaded 2-core machine (4.4, 1.3, 7.8 CPU-s at "
          "N = 1K, 2K, 4K); backward assumed equal")


def compiles(device: str) -> costs.CompileCost | None:
    """On CUDA, a compile per shape (harness.compiling: static shapes); elsewhere the dense masked softmax,
    which compiles nothing."""
    return COMPILE_COST if device == "cuda" else None


def peak_bytes(call: costs.KernelCall, **params) -> int:
    """FlexAttention's fused kernel on CUDA; on the CPU the dense masked softmax, which materializes its
    scores as full attention does."""
    if call.backend == COMPILED_BACKEND:
        return costs.fused_attention_bytes(call)
    return costs.dense_softmax_bytes(call)


@functools.cache
def compiled_wrapper(fn) -> compiling.Compiled:
    """One compiled wrapper per function (static shapes; knows whether its graph ran)."""
    return compiling.Compiled(fn)


@functools.lru_cache(maxsize=64)
def block_mask(make_predicate, n_q: int, n_k: int, causal: bool, n_heads: int, params: tuple, device: str):
    """The BlockMask of a pattern at one size, built once per (pattern, params, sizes, heads, device)."""
    from torch.nn.attention.flex_attention import create_block_mask  # late: loads torch._dynamo

    pred = make_predicate(n_q, n_k, causal, n_heads, device, **dict(params))
    # Eager create_block_mask materializes the predicate's (n_q, n_k) int64 intermediates; compiled (as
    # FlexAttention's docs advise) it fuses them into the block reduction, which long sequences need.
    build = compiled_wrapper(create_block_mask) if device.startswith("cuda") else create_block_mask
    return build(masks.flex_mask_mod(pred, n_q, n_k), None, masks.heads_of(pred), n_q, n_k, device=device)


def flex_masked_attention(q, k, v, make_predicate, causal: bool, params: dict, compiled: bool = True):
    """FlexAttention under `make_predicate(n_q, n_k, causal, n_heads, device, **params)`.

    compiled=False runs FlexAttention eagerly (CPU tests use it to check the block-mask construction).
    """
    from torch.nn.attention.flex_attention import flex_attention

    n_heads, n_q, n_k = q.shape[1], q.shape[-2], k.shape[-2]
    mask = block_mask(make_predicate, n_q, n_k, causal, n_heads, tuple(sorted(params.items())), str(q.device))
    attend = compiled_wrapper(flex_attention) if compiled else flex_attention
    return attend(q, k, v, block_mask=mask, **gqa_flag(q, k))


@functools.cache
def documents(make_predicate):
    """The document mask around `make_predicate`'s pattern, as a make_predicate taking `lengths` (the
    documents', back to back): a query sees a key of its own document where the pattern, built for the
    longest document and read at positions counted from each document's start, lets it."""

    def make(n_q, n_k, causal, n_heads=1, device="cpu", *, lengths, **params):
        longest = max(lengths)
        inner = make_predicate(longest, longest, causal, n_heads, device, **params)
        sizes = torch.tensor(lengths, device=device)
        ids = torch.repeat_interleave(torch.arange(len(lengths), device=device), sizes)
        starts = torch.cumsum(sizes, 0) - sizes

        def pred(q, k, head=None):
            qc = q.clamp(min=0)
            within = masks.evaluate(inner, qc - starts[ids[qc]], k - starts[ids[k]], head)
            return (q >= 0) & (ids[qc] == ids[k]) & within

        heads = masks.heads_of(inner)
        return masks.per_head(pred, heads) if heads else (lambda q, k: pred(q, k))

    return make


def packed(make_predicate):
    """A FlexAttention variant's packed_fn (harness.ragged): its pattern under the document mask, in one
    call (masked_attention: compiled FlexAttention on CUDA, the dense masked softmax elsewhere)."""

    def packed_fn(q, k, v, batch, causal=False, **params):
        if not batch.real_tokens:
            return q.new_zeros(*q.shape[:-1], v.shape[-1])
        return masked_attention(q, k, v, documents(make_predicate), causal,
                                {**params, "lengths": tuple(batch.lengths)})

    packed_fn.path = lambda device: "flex-document-mask" if device == "cuda" else "dense-document-mask"
    return packed_fn


def masked_attention(q, k, v, make_predicate, causal: bool, params: dict):
    """Compiled FlexAttention on CUDA; the dense masked softmax reference elsewhere."""
    if q.is_cuda:
        return flex_masked_attention(q, k, v, make_predicate, causal, params)
    n_q, n_k = q.shape[-2], k.shape[-2]
    pred = make_predicate(n_q, n_k, causal, q.shape[1], q.device, **params)
    return softmax_attention(q, k, v, masks.dense(pred, n_q, n_k, q.device))
