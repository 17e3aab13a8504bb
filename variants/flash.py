"""Exact fused attention kernels: PyTorch SDPA pinned to one backend each, and xformers.

Causal masking is bottom-right aligned (the harness.masks convention): query i sits at key position
i + (n_k - n_q). Queries aligned before the first key (n_q > n_k) see nothing and output zeros; they
are cut off before the kernel runs, because backends disagree on fully masked rows (NaN or zero).

Grouped KV heads (harness.attention): SDPA takes them with `enable_gqa=True` (torch >= 2.5; passed only
when grouped). Which SDPA backends accept it depends on torch's build and version (its sdp_utils: flash
does; mem-efficient only in later releases; never on ROCm): a backend that refuses says "No available
kernel", recorded unsupported. xformers takes them in its 5-D [B, M, G, H, K] layout (G groups of H query
heads; the keys and values expanded to H with stride 0, a view, never a copy), in the forward pass only
(its backward operators do not support BMGHK: xformers 0.0.35, fmha/flash.py and cutlass.py).

Ragged batches (harness.ragged) run packed: the SDPA variants one call per document, xformers in one call
under its BlockDiagonal(Causal)Mask built from the lengths (`xformers_packed`; its varlen path). None takes
a padding mask here (Support.padded says why).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness import costs, flops
from harness.attention import kv_group
from harness.ragged import NO_PADDED_FUSED
from harness.registry import ALL_FLOAT, HALF, Support, Unsupported, attention_variant

CUDA_FLOAT = (torch.float32, *HALF)
# How SDPA says that the pinned backend cannot take these inputs (CUDA and CPU wording).
_NO_KERNEL_MESSAGES = ("No available kernel", "No viable backend")
# Every kernel here is fused: charged as causal attention by the estimate, modelled as its inputs, output and
# per-row statistics by the frontier.
# A ragged batch runs packed, one SDPA (or xformers) call per document (harness.ragged); no padding mask.
RAGGED = dict(padded=NO_PADDED_FUSED, packed=True)
COST_HOOKS = dict(cost=costs.causal_attention_cost, peak_bytes=costs.fused_attention_bytes)


def _sm_at_least(major: int, minor: int) -> bool:
    return torch.cuda.get_device_capability() >= (major, minor)


def zero_blind_queries(attend, q, k, v, reach: int = 0):
    """`attend(q, k, v)` for the queries that see a key; zeros for the ones before.

    A query at position p sees keys up to p + reach (causal: reach 0), so the queries at p < -reach see
    none. Cutting them off keeps the others bottom-right aligned."""
    n_blind = max(q.shape[-2] - k.shape[-2] - reach, 0)
    if n_blind == 0:
        return attend(q, k, v)
    out = attend(q[..., n_blind:, :], k, v)
    return torch.cat([out.new_zeros(*out.shape[:-2], n_blind, out.shape[-1]), out], dim=-2)


def sdpa(q, k, v, causal: bool, backend: SDPBackend) -> torch.Tensor:
    """F.scaled_dot_product_attention restricted to one backend, bottom-right causal."""
    from torch.nn.attention.bias import causal_lower_right  # late: importing it loads torch._dynamo (~2 s)

    def attend(q, k, v):
        n_q, n_k = q.shape[-2], k.shape[-2]
        # One query sits at the last position and sees every key: decoding needs no mask at all.
        masked = causal and n_q > 1
        mask = causal_lower_right(n_q, n_k) if masked and n_q != n_k else None
        grouped = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}  # torch >= 2.5
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=masked and n_q == n_k,
                                                  **grouped)

    try:
        return zero_blind_queries(attend, q, k, v) if causal else attend(q, k, v)
    except RuntimeError as e:
        if any(m in str(e) for m in _NO_KERNEL_MESSAGES):
            raise Unsupported(f"SDPA {backend.name} cannot run these inputs: {str(e).splitlines()[0]}") from e
        raise


def _flash_check(device, dtype, head_dim, causal):
    if device != "cuda":
        return None  # the CPU flash kernel takes any head_dim
    if not _sm_at_least(8, 0):
        return "FlashAttention needs sm80 or newer"
    if head_dim > 256:
        return f"head_dim {head_dim} > 256 (FlashAttention on CUDA)"
    return None


def _sm80_check(device, dtype, head_dim, causal):
    return None if _sm_at_least(8, 0) else "needs sm80 or newer"


def _efficient_check(device, dtype, head_dim, causal):
    if dtype == torch.bfloat16 and not _sm_at_least(8, 0):
        return "bfloat16 needs sm80 or newer"
    return None


@attention_variant(
    "flash-sdpa", family="flash", exact=True, flops=flops.softmax(), **COST_HOOKS,
    support=Support(dtypes={"cpu": ALL_FLOAT, "cuda": HALF}, check=_flash_check, grouped_kv=True, **RAGGED),
    backend=lambda device: f"sdpa-flash-{device}",
    description="torch SDPA pinned to its FlashAttention backend (FA2 on CUDA, fused kernel on CPU)",
)
def flash_sdpa(q, k, v, causal=False):
    return sdpa(q, k, v, causal, SDPBackend.FLASH_ATTENTION)


@attention_variant(
    "flash-cudnn", family="flash", exact=True, flops=flops.softmax(), **COST_HOOKS,
    # 128 is the limit cuDNN has everywhere; sm90/sm100 with a recent cuDNN also take 256.
    support=Support(dtypes={"cuda": HALF}, max_head_dim=128, head_dim_multiple=8, check=_sm80_check,
                    grouped_kv=True, **RAGGED),
    backend=lambda device: "sdpa-cudnn",
    description="torch SDPA pinned to its cuDNN fused attention backend",
)
def flash_cudnn(q, k, v, causal=False):
    return sdpa(q, k, v, causal, SDPBackend.CUDNN_ATTENTION)


@attention_variant(
    "flash-efficient", family="flash", exact=True, flops=flops.softmax(), **COST_HOOKS,
    # Alignment: 8 elements covers fp16/bf16 (8) and fp32 (4) on every architecture.
    support=Support(dtypes={"cuda": CUDA_FLOAT}, head_dim_multiple=8, check=_efficient_check,
                    grouped_kv=True, **RAGGED),
    backend=lambda device: "sdpa-mem-efficient",
    description="torch SDPA pinned to its memory-efficient (CUTLASS, xformers-derived) backend",
)
def flash_efficient(q, k, v, causal=False):
    return sdpa(q, k, v, causal, SDPBackend.EFFICIENT_ATTENTION)


def xformers_ops():
    try:
        import xformers.ops
    except ImportError as e:
        raise Unsupported("xformers not installed") from e
    return xformers.ops


def xformers_layout(q, k, v) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch, heads, seq, dim) -> xformers' [B, M, H, K]; grouped KV heads -> its [B, M, G, H, K] (G = KV
    heads, H = query heads per group; k and v expanded to H with stride 0, a view: xformers does not
    broadcast them itself)."""
    group = kv_group(q, k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if group == 1:
        return q, k, v
    b, m, kv_heads, dim = k.shape
    q = q.unflatten(2, (kv_heads, group))
    k, v = (t.unsqueeze(3).expand(b, m, kv_heads, group, dim) for t in (k, v))
    return q, k, v


def xformers_attention(q, k, v, attn_bias=None) -> torch.Tensor:
    """memory_efficient_attention on (batch, heads, seq, dim) (xformers_layout); grouped KV heads in the
    forward pass only (xformers' backward operators do not take its 5-D layout)."""
    xops = xformers_ops()
    n_heads = q.shape[1]
    if kv_group(q, k) > 1 and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise Unsupported("xformers takes grouped KV heads ([B, M, G, H, K]) in the forward pass only: its "
                          "backward operators do not support that layout")
    try:
        out = xops.memory_efficient_attention(*xformers_layout(q, k, v), attn_bias=attn_bias)
    except NotImplementedError as e:  # raised when no xformers operator accepts the inputs
        raise Unsupported(str(e).splitlines()[0]) from e
    return out.reshape(*out.shape[:2], n_heads, out.shape[-1]).transpose(1, 2)


def xformers_packed(q, k, v, batch, causal=False):
    """Packed documents (harness.ragged) in one call: xformers' varlen path, a block-diagonal bias built from
    the documents' lengths (causal within each block, top-left aligned: equal query and key lengths), on
    q, k, v (1, heads, sum(lengths), dim). Empty documents hold no token and are left out of the bias."""
    seqlens = [n for n in batch.lengths if n]
    if not seqlens:
        return q.new_zeros(*q.shape[:-1], v.shape[-1])
    biases = xformers_ops().fmha.attn_bias
    bias = (biases.BlockDiagonalCausalMask if causal else biases.BlockDiagonalMask).from_seqlens(
        seqlens, device=q.device)
    return xformers_attention(q, k, v, bias)


xformers_packed.path = "xformers-block-diagonal"


@attention_variant(
    "flash-xformers", family="flash", exact=True, flops=flops.softmax(), **COST_HOOKS,
    # Its dispatcher falls back to the CUTLASS kernel, which takes fp32 and head_dim up to 65536.
    support=Support(dtypes={"cuda": CUDA_FLOAT}, requires=("xformers",), grouped_kv=True, **RAGGED),
    backend=lambda device: "xformers-memory-efficient-attention", packed_fn=xformers_packed,
    description="xformers.ops.memory_efficient_attention (dispatches to FlashAttention-2/3 or CUTLASS)",
)
def flash_xformers(q, k, v, causal=False):
    if not causal:
        return xformers_attention(q, k, v)
    bias = xformers_ops().fmha.attn_bias.LowerTriangularFromBottomRightMask()
    return zero_blind_queries(lambda q, k, v: xformers_attention(q, k, v, bias), q, k, v)
