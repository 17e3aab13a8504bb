"""Sigmoid attention (Ramapuram et al. 2025, "Theory, Analysis, and Best Practices for Sigmoid
Self-Attention"): o_i = sum_j sigmoid(q_i . k_j / sqrt(d) + b) v_j over the keys query i may see, with
the bias b = -log(n_k) that keeps the output's scale independent of the length. No normalisation across
keys, so a query that sees no key outputs zero.

The fast path works in query chunks (memory O(chunk * N)); the reference materializes the N x N matrix.
It tells attnbench's planners what it costs (`sigmoid_cost`, `sigmoid_peak_bytes`: harness.costs), so the
wall-time estimate and the memory frontier's prediction are its own, not the defaults.
The bias depends on the whole sequence's length, so decoding one token at a time (a KV cache of the
tokens so far) would compute another function than the causal forward: the plugin declares no decoding.
"""

import math

import torch

from harness import costs, flops, masks
from harness.registry import Support, Unsupported, attention_variant

CHUNK = 256


def _weights(q, k, causal, first_query: int, n_q: int):
    acc = torch.promote_types(q.dtype, torch.float32)
    n_k = k.shape[-2]
    scores = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * q.shape[-1] ** -0.5 - math.log(n_k)
    weights = torch.sigmoid(scores)
    if causal:  # bottom-right alignment: query i sits at key position i + n_k - n_q
        positions = torch.arange(first_query, first_query + q.shape[-2], device=q.device) + (n_k - n_q)
        weights = weights * (torch.arange(n_k, device=q.device) <= positions[:, None])
    return weights


def sigmoid_reference(q, k, v, causal=False):
    """The definition, materialized: every (query, key) weight at once."""
    mask = masks.dense(masks.causal(), q.shape[-2], k.shape[-2], q.device) if causal else None
    acc = torch.promote_types(q.dtype, torch.float32)
    weights = torch.sigmoid((q.to(acc) @ k.to(acc).transpose(-1, -2)) * q.shape[-1] ** -0.5
                            - math.log(k.shape[-2]))
    if mask is not None:
        weights = weights * mask
    return (weights @ v.to(acc)).to(q.dtype)


def sigmoid_cost(d_model, n_layers, n_heads, seq_len, **params) -> costs.MixerCost:
    """Every (query, key) pair is scored, causal or not (the causal mask multiplies the weights): twice the
    causal half that softmax attention is charged."""
    return costs.MixerCost(flops=costs.attention_flops(d_model, n_layers, 2 * seq_len))


def sigmoid_peak_bytes(call: costs.KernelCall, **params) -> float:
    """q, k and v; the chunks' outputs so far, in the accumulation dtype; and one chunk's (CHUNK x N) score
    matrices: the code holds three at once (scores, weights, masked weights), but 2.5 fits the resident
    peaks measured on the CPU (float32 and bfloat16, N from 256 to 8192) within 10%, three overshoot them by
    about 20%."""
    c = call
    chunk_rows = c.batch * c.n_heads * min(CHUNK, c.seq_len)
    return 3 * c.x * c.e + c.x * c.a + 2.5 * chunk_rows * c.seq_len * c.a


def no_decoding(k, v, capacity=None):
    raise Unsupported("sigmoid attention's bias -log(n) needs the whole sequence's length: no token-by-token "
                      "decoding")


@attention_variant(
    "sigmoid", family="sigmoid", exact=False, support=Support(), reference=sigmoid_reference,
    prefill_fn=no_decoding,
    flops=flops.softmax(),  # the same two matmuls per visible pair as softmax attention
    cost=sigmoid_cost, peak_bytes=sigmoid_peak_bytes,
    description="sigmoid attention with bias -log(n), query chunks (example plugin)",
)
def sigmoid_attention(q, k, v, causal=False):
    n_q = q.shape[-2]
    acc = torch.promote_types(q.dtype, torch.float32)
    chunks = [_weights(q[..., start:start + CHUNK, :], k, causal, start, n_q) @ v.to(acc)
              for start in range(0, n_q, CHUNK)]
    return torch.cat(chunks, dim=-2).to(q.dtype)
