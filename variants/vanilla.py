"""Vanilla softmax attention: the O(N^2)-memory reference every other variant is compared with."""

from harness import costs, flops
from harness.attention import causal_mask, softmax_attention
from harness.registry import Support, attention_variant


@attention_variant(
    "vanilla", family="vanilla", exact=True, baseline=True,
    support=Support(grouped_kv=True, padded=True, packed=True),
    flops=flops.softmax(),
    cost=costs.causal_attention_cost, peak_bytes=costs.dense_softmax_bytes,
    description="materialized softmax(QK^T/sqrt(d))V in plain PyTorch (grouped KV heads by a group view)",
)
def vanilla(q, k, v, causal=False):
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return softmax_attention(q, k, v, mask)
