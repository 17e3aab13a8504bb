"""Linear attention (Katharopoulos et al. 2020) and the normalised linear-attention core it shares.

With a positive feature map phi, o_i = phi(q_i).S_i / (phi(q_i).z_i + eps), where S_i = sum_j phi(k_j) v_j^T
and z_i = sum_j phi(k_j) over the keys query i may see (all of them, or a prefix when causal). The core
works on feature-mapped queries and keys, so every kernelised family (linear, performer) uses it.

Causal code paths: fla-core's chunked Triton kernel for the numerator on CUDA (denominator in PyTorch),
else chunked PyTorch (intra-chunk masked quadratic + exclusive prefix of per-chunk states).
Causal with n_q != n_k uses the bottom-right alignment of harness.masks.

Grouped KV heads (harness.attention): a group of query heads shares its KV head's feature map phi(k), so
the states S and z (and the decoding state) are kept per KV head; the queries of a group read them through
the group view (batch, kv_heads, group, n, m), which the core broadcasts. fla's kernel takes equal head
counts ([B, T, H, K] for q, k and v alike), so grouped calls run the chunked PyTorch path on every device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness import costs, masks
from harness.attention import group_queries, kv_group, repeat_kv
from harness.registry import Support, attention_variant, package_available
from variants.recurrent import SIMPLE_GLA_CONFIGS, triton_autotune

CHUNK_SIZE = 64
FLA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half inputs accumulate in float32; float32 and float64 keep their own precision."""
    return torch.promote_types(dtype, torch.float32)


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1


def fla_backend_available() -> bool:
    return package_available("fla")


FLA_BACKEND = "fla-chunk"
# Causal attention's kernel autotunes on CUDA (chunk_linear_attn calls chunk_simple_gla); performer's too.
FLA_COMPILES = triton_autotune("fla chunk_linear_attn", *SIMPLE_GLA_CONFIGS)


def backend_name(device: str) -> str:
    """The code path of causal attention on a device type (non-causal is two einsums everywhere)."""
    return FLA_BACKEND if device == "cuda" and fla_backend_available() else "torch-chunked"


def _fla_usable(phi: torch.Tensor, v: torch.Tensor) -> bool:
    # fla's half-precision backward asserts even feature and value dims; its kernel takes (batch, heads)
    # alike for queries and keys (no group view).
    return (v.is_cuda and v.dtype in FLA_DTYPES and fla_backend_available() and phi.dim() == 4
            and phi.shape[:-2] == v.shape[:-2] and phi.shape[-1] % 2 == 0 and v.shape[-1] % 2 == 0)


def _to_accumulation(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    acc = functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    return tuple(t.to(acc) for t in tensors)


def _with_ones(v: torch.Tensor) -> torch.Tensor:
    """Append a ones column: the same product then yields the numerator and the denominator."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def _split_numerator(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return out[..., :-1], out[..., -1:]


def _global_sums(phi_q, phi_k, v):
    """Non-causal: every query sees every key, so S and z are one sum over the keys."""
    state = torch.einsum("...nm,...ne->...me", phi_k, _with_ones(v))
    return _split_numerator(torch.einsum("...nm,...me->...ne", phi_q, state))


def _align_bottom_right(phi_q, phi_k, v):
    """Pad the shorter of queries and keys at the front with zero features, making a square problem.

    Zero query features contribute rows we drop; zero key features add nothing to S or z, so query i
    sees keys up to position i + n_k - n_q, and queries before the first key get 0 / eps = 0.
    """
    gap = phi_k.shape[-2] - phi_q.shape[-2]
    if gap > 0:
        phi_q = F.pad(phi_q, (0, 0, gap, 0))
    elif gap < 0:
        phi_k, v = F.pad(phi_k, (0, 0, -gap, 0)), F.pad(v, (0, 0, -gap, 0))
    return phi_q, phi_k, v


SEGMENT_CHUNKS = 64  # chunks per segment of the causal path: its temporaries scale with this, not with N
SEGMENT_TOKENS = SEGMENT_CHUNKS * CHUNK_SIZE  # a segment at the default chunk size (the memory model's)


def _chunked_prefix_sums(phi_q, phi_k, v, chunk_size: int):
    """Causal numerator and denominator, chunk by chunk; stores one (m, e) state per chunk.

    Segments of SEGMENT_CHUNKS chunks run one after another, each starting from the sum of the states
    before it, so the temporaries (padded chunks, chunk states, intra-chunk scores) are a segment's, and
    the memory of a long sequence is its inputs and output.
    """
    n = phi_q.shape[-2]
    span = chunk_size * SEGMENT_CHUNKS
    carry = phi_k.new_zeros(*phi_k.shape[:-2], phi_k.shape[-1], v.shape[-1] + 1)  # states of earlier keys
    # Without autograd each segment is written into the output (no list of parts to concatenate). Its
    # leading dimensions are the queries' and keys' broadcast (a group of queries shares its keys).
    lead = torch.broadcast_shapes(phi_q.shape[:-2], v.shape[:-2])
    out = None if _needs_grad(phi_q, phi_k, v) else v.new_empty(*lead, n, v.shape[-1] + 1)
    parts = []
    for start in range(0, n, span):
        part, carry = _segment(*(t[..., start:start + span, :] for t in (phi_q, phi_k, v)), carry, chunk_size)
        if out is None:
            parts.append(part)
        else:
            out[..., start:start + span, :] = part
    return _split_numerator(torch.cat(parts, dim=-2) if out is None else out)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _segment(phi_q, phi_k, v, carry, chunk_size: int):
    """One segment of the causal sums given the state `carry` of the keys before it: (out, new carry)."""
    n = phi_q.shape[-2]
    pad = -n % chunk_size  # zero tail: padded keys add nothing, padded queries are dropped
    q, k, v1 = (F.pad(t, (0, 0, 0, pad)).unflatten(-2, (-1, chunk_size))
                for t in (phi_q, phi_k, _with_ones(v)))
    states = torch.einsum("...cnm,...cne->...cme", k, v1)
    before = torch.cat([carry.unsqueeze(-3), states[..., :-1, :, :]], dim=-3).cumsum(-3)
    inter = torch.einsum("...cnm,...cme->...cne", q, before)
    intra = (q @ k.transpose(-1, -2)).tril() @ v1
    return (inter + intra).flatten(-3, -2)[..., :n, :], before[..., -1, :, :] + states[..., -1, :, :]


def _fla_prefix_sums(phi_q, phi_k, v):
    """Causal numerator from fla's chunked kernel (layout [B, T, H, K]); denominator in float32 here."""
    from fla.ops.linear_attn import chunk_linear_attn  # CUDA + Triton only: import on this path alone

    q, k = phi_q.to(v.dtype), phi_k.to(v.dtype)
    num, _ = chunk_linear_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                               scale=1.0, normalize=False)
    den = (q.float() * k.float().cumsum(-2)).sum(-1, keepdim=True)
    return num.transpose(1, 2).float(), den


def normalized_linear_attention(
    phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, *, causal: bool,
    eps: float | torch.Tensor, chunk_size: int = CHUNK_SIZE, use_fla: bool | None = None,
) -> torch.Tensor:
    """phi_q (..., n_q, m), phi_k (..., n_k, m), v (..., n_k, e) -> (..., n_q, e) in accumulation dtype.

    The leading dimensions broadcast: a group view (batch, kv_heads, group, n_q, m) of the queries against
    (batch, kv_heads, 1, n_k, m) keys shares each key's features and states across its group.
    `eps` is a float or a tensor broadcastable to (..., n_q, 1). `use_fla` None picks fla's kernel when
    it can run (causal, CUDA, fla installed); False forces the chunked PyTorch path.
    """
    n_q = phi_q.shape[-2]
    if not causal:
        num, den = _global_sums(*_to_accumulation(phi_q, phi_k, v))
    else:
        phi_q, phi_k, v = _align_bottom_right(phi_q, phi_k, v)
        if _fla_usable(phi_q, v) if use_fla is None else use_fla:
            num, den = _fla_prefix_sums(phi_q, phi_k, v)
        else:
            num, den = _chunked_prefix_sums(*_to_accumulation(phi_q, phi_k, v), chunk_size)
    num, den = num[..., -n_q:, :], den[..., -n_q:, :] + eps
    # num is this function's own buffer: without autograd it is divided in place (one output less).
    return num / den if _needs_grad(num) else num.div_(den)


def quadratic_linear_attention(phi_q, phi_k, v, *, causal: bool, eps: float | torch.Tensor) -> torch.Tensor:
    """The O(N^2) definition of normalised linear attention, in accumulation dtype: the reference."""
    phi_q, phi_k, v = _to_accumulation(phi_q, phi_k, v)
    weights = phi_q @ phi_k.transpose(-1, -2)
    if causal:
        weights = weights * masks.dense(masks.causal(), phi_q.shape[-2], phi_k.shape[-2], weights.device)
    return (weights @ v) / (weights.sum(-1, keepdim=True) + eps)


def linear_attention_reference(q, k, v, causal: bool = False, eps: float = 1e-6,
                               chunk_size=None) -> torch.Tensor:
    """Linear attention by its O(N^2) definition (elu + 1 features), returned in q's dtype; grouped KV heads
    repeated to the query heads.

    chunk_size is the fast path's parameter: the definition has no chunks."""
    group = kv_group(q, k)
    k, v = repeat_kv(k, group), repeat_kv(v, group)
    acc = accumulation_dtype(q.dtype)
    phi_q, phi_k = elu_feature_map(q.to(acc)), elu_feature_map(k.to(acc))
    return quadratic_linear_attention(phi_q, phi_k, v, causal=causal, eps=eps).to(q.dtype)


@dataclass
class RecurrentState:
    """Decoding state of normalised linear attention: constant size, whatever the context length.

    kv = sum_j phi(k_j) v_j^T and k_sum = sum_j phi(k_j), both stored scaled by exp(-shift), where shift
    is a running log-scale (performer's stabilising key maximum; zero for elu + 1 features).
    """

    kv: torch.Tensor  # (..., m, e)
    k_sum: torch.Tensor  # (..., m)
    shift: torch.Tensor  # (..., 1, 1)

    @classmethod
    def of_context(cls, phi_k: torch.Tensor, v: torch.Tensor, shift: torch.Tensor) -> RecurrentState:
        phi_k, v = _to_accumulation(phi_k, v)
        return cls(phi_k.transpose(-1, -2) @ v, phi_k.sum(-2), shift)

    def add(self, phi_k: torch.Tensor, v: torch.Tensor, shift: torch.Tensor) -> RecurrentState:
        """Fold in new keys whose features were stabilised by `shift`, rescaling to the larger shift."""
        new_shift = torch.maximum(self.shift, shift)
        old, new = torch.exp(self.shift - new_shift), torch.exp(shift - new_shift)
        step = RecurrentState.of_context(phi_k * new, v, new_shift)
        return RecurrentState(self.kv * old + step.kv, self.k_sum * old[..., 0] + step.k_sum, new_shift)

    def read(self, phi_q: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """phi_q (..., n, m) against the state; a group view of the queries (batch, kv_heads, group, n, m)
        reads a state of (batch, kv_heads) heads, shared by the group."""
        phi_q = phi_q.to(self.kv.dtype)
        kv, k_sum = self.kv, self.k_sum
        if phi_q.dim() == kv.dim() + 1:
            kv, k_sum = kv.unsqueeze(-3), k_sum.unsqueeze(-2)
        return (phi_q @ kv) / (phi_q @ k_sum[..., None] + eps)


def _no_shift(k: torch.Tensor) -> torch.Tensor:
    return k.new_zeros(*k.shape[:-2], 1, 1, dtype=accumulation_dtype(k.dtype))


def linear_prefill(k, v, capacity=None, eps=1e-6, chunk_size=CHUNK_SIZE) -> RecurrentState:
    return RecurrentState.of_context(elu_feature_map(k.to(accumulation_dtype(k.dtype))), v, _no_shift(k))


def linear_decode(q, k, v, state: RecurrentState, eps=1e-6, chunk_size=CHUNK_SIZE):
    acc, group = accumulation_dtype(q.dtype), kv_group(q, k)
    state = state.add(elu_feature_map(k.to(acc)), v, _no_shift(k))
    phi_q = elu_feature_map(q.to(acc))
    if group == 1:
        return state.read(phi_q, eps).to(q.dtype), state
    return state.read(group_queries(phi_q, group), eps).flatten(1, 2).to(q.dtype), state


# --- what it costs the planners ---------------------------------------------------------------------

def chunked_peak_bytes(call: costs.KernelCall, features: int, feature_temporaries: bool) -> int:
    """The chunked causal path on `features` features per head (head_dim for elu + 1): q, k, v (k and v at
    kv_heads) and one of them upcast; the feature maps of q (per query row) and k, v in the accumulation
    dtype (per key row: a group shares them), and the output (per query row); one segment's temporaries (4
    x its padded chunks, chunk states and their prefix, intra-chunk scores, counted per query head); with
    `feature_temporaries`, the feature computation's (performer's projections)."""
    c = call
    segment = c.batch * c.n_heads * min(c.seq_len, SEGMENT_TOKENS) * (features + c.head_dim)
    peak = c.qkv_x * c.e + c.x * (c.a if c.e < c.a else 0)
    peak += c.rows * c.a * (features + c.head_dim) + c.kv_rows * c.a * (features + c.head_dim)
    peak += 4 * segment * c.a + (c.rows * c.a * features if feature_temporaries else 0)
    return peak


def linear_peak_bytes(call: costs.KernelCall, **params) -> int:
    """fla's fused chunk kernel on CUDA; elsewhere the chunked path on head_dim features."""
    if call.backend == FLA_BACKEND:
        return costs.fused_attention_bytes(call)
    return chunked_peak_bytes(call, call.head_dim, False)


@attention_variant(
    "linear", family="linear", exact=False,
    support=Support(cross=True, grouped_kv=True, padded=True, packed=True),
    defaults={"eps": 1e-6, "chunk_size": CHUNK_SIZE}, backend=backend_name,
    cost=costs.projections_only, peak_bytes=linear_peak_bytes,  # the estimate charges no state updates
    compiles=FLA_COMPILES,
    prefill_fn=linear_prefill, decode_fn=linear_decode, reference=linear_attention_reference,
    small_params={"chunk_size": 8},  # chunks no longer than a smoke run's shortest sequence
    description="linear attention, phi = elu + 1; causal via chunked prefix sums (fla kernel on CUDA)",
)
def linear_attention(q, k, v, causal=False, eps=1e-6, chunk_size=CHUNK_SIZE):
    acc, group = accumulation_dtype(q.dtype), kv_group(q, k)
    phi_q, phi_k = elu_feature_map(q.to(acc)), elu_feature_map(k.to(acc))
    if group == 1:
        out = normalized_linear_attention(phi_q, phi_k, v, causal=causal, eps=eps, chunk_size=chunk_size)
        return out.to(q.dtype)
    out = normalized_linear_attention(group_queries(phi_q, group), phi_k.unsqueeze(2), v.unsqueeze(2),
                                      causal=causal, eps=eps, chunk_size=chunk_size)
    return out.flatten(1, 2).to(q.dtype)
