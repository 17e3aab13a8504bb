"""Throughput workloads: the timed call of a case, built from its variant, and what that call does.

Modes: `fwd` (inference forward), `fwd_bwd` (forward + backward), `decode` (one new token against a
context of N: a KV cache for attention families, the recurrent state for the others, through the
registry's prefill/decode and the mixers' prefill/step). Levels: `kernel` (attention(q, k, v), or a
mixer-only family's kernel: mamba's selective scan over n_heads * head_dim channels) and `layer` (the
mixer with its projections). No variant is captured in a CUDA graph: launch overhead counts alike for
every one.

Grouped-query attention (`Case.kv_heads`): the kernel gets k and v with kv_heads heads, the layer projects
keys and values to kv_heads heads (harness.attention.AttentionMixer); a variant that does not declare
grouped KV heads, or a mixer-only family (no KV heads), is unsupported with the reason. A decode workload
reports what its state holds (`state_kind`: the variant's decode_state_kind) beside its bytes.

Ragged batches (`Case.layout` padded or packed; harness.ragged): the kernel gets the case's batch of
lengths drawn from its distribution, padded (batch, heads, N, head_dim) or packed (1, heads,
sum(lengths), head_dim); a variant that does not declare the layout is unsupported with its reason. The
call counts real tokens only (tokens/s over real tokens), and FLOPs of the real documents alone; the
workload records the real and the computed (padded) token counts and the code path that ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness import flops, memory, ragged, registry
from harness.registry import Unsupported
from suites.throughput.planning import Case


@dataclass
class Workload:
    """One timed call and what it does: `reset` runs in each round's setup (untimed)."""

    call: Callable[[], torch.Tensor]
    reset: Callable[[], None]
    leaves: list[torch.Tensor]  # inputs whose gradients a fwd_bwd call produces
    tokens: int  # tokens processed per call (new tokens in decode)
    flops: int | None
    state_bytes: int | None = None  # decode: the bytes of the state after the context (KV cache or recurrent)
    state_kind: str | None = None  # decode: "kv_cache" or "recurrent" (Variant.decode_state_kind)
    padded_tokens: int | None = None  # tokens the call computes on, padding included (fwd, fwd_bwd)
    ragged_path: str | None = None  # a ragged case: the code path of its layout (harness.ragged.path_of)


def _no_reset() -> None:
    pass


def _training_call(forward: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Forward, then backward of a random output gradient (drawn in the first call, which no timed round
    is: the warm-up or the sizing call)."""
    grad_out: list[torch.Tensor] = []

    def call() -> torch.Tensor:
        out = forward()
        if not grad_out:
            grad_out.append(torch.randn_like(out))
        out.backward(grad_out[0])
        return out

    return call


def _clear_grads(tensors: list[torch.Tensor]) -> Callable[[], None]:
    def reset() -> None:
        for t in tensors:
            t.grad = None

    return reset


def _inference(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    return torch.no_grad()(fn)


def check_level(case: Case) -> None:
    """Unsupported where the case's level or grouping does not apply to its variant."""
    v = registry.get(case.variant)
    if case.grouped:
        if v.attention_fn is None:
            raise Unsupported(f"grouped KV heads (kv_heads={case.kv_heads}): {case.variant} is a sequence "
                              "mixer with no KV heads")
        reason = v.support.grouped_kv_reason()
        if reason:
            raise Unsupported(f"kv_heads={case.kv_heads}: {reason}")
    if case.layout != "square":
        ragged.checked(v, case.layout, case.causal)
    if case.level != "kernel" or v.attention_fn is not None:
        return
    if v.kernel is None:
        raise Unsupported(f"{case.variant} has no attention(q, k, v) kernel; it competes at the layer level")
    if case.mode == "decode":
        raise Unsupported(f"{case.variant} decodes through its mixer's step(): decode is measured at the "
                          "layer level")


def _training_or_inference(case: Case, forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor],
                           tokens: int, flops_: int | None) -> Workload:
    """fwd: the forward without autograd; fwd_bwd: forward + backward of a random output gradient, the
    gradients of `leaves` reset in each round's setup."""
    if case.mode == "fwd_bwd":
        return Workload(_training_call(forward), _clear_grads(leaves), leaves, tokens, flops_)
    return Workload(_inference(forward), _no_reset, [], tokens, flops_)


def mixer_kernel_workload(case: Case) -> Workload:
    """A mixer-only family's kernel (`v.kernel`: mamba's selective scan, the SSD, delta-rule, GLA or
    retention core) on the inputs its `kernel_inputs` draws for (batch, heads, N, head_dim) in the
    case's dtype; fwd_bwd differentiates the inputs of that dtype (the activations)."""
    v = registry.get(case.variant)
    inputs = v.kernel_inputs(case.batch, case.n_heads, case.seq_len, case.head_dim,
                             torch.Generator().manual_seed(0), dtype=case.torch_dtype)
    inputs = {k: t.to(case.device) if torch.is_tensor(t) else t for k, t in inputs.items()}
    leaves = [t.requires_grad_(case.mode == "fwd_bwd") for t in inputs.values()
              if torch.is_tensor(t) and t.dtype == case.torch_dtype]
    return _training_or_inference(case, lambda: v.kernel(**inputs), leaves, case.batch * case.seq_len, None)


def kernel_workload(case: Case) -> Workload:
    v = registry.get(case.variant)
    if v.attention_fn is None:
        return mixer_kernel_workload(case)
    b, h, n, d = case.batch, case.n_heads, case.seq_len, case.head_dim

    def make(length: int, grad: bool = False, heads: int = h) -> torch.Tensor:
        t = torch.randn(b, heads, length, d, device=case.device, dtype=case.torch_dtype)
        return t.requires_grad_(grad)

    def make_kv(length: int, grad: bool = False) -> torch.Tensor:
        return make(length, grad, case.n_kv_heads)

    def count(n_q: int, n_k: int) -> int | None:
        return v.attention_flops(case.mode, b, h, d, n_q, n_k, case.causal, case.params)

    if case.mode == "decode":
        with torch.no_grad():
            state = v.prefill(make_kv(n), make_kv(n), capacity=n + 1, **case.params)
        q, k, vv = make(1), make_kv(1), make_kv(1)
        # The returned state is dropped: every round decodes token N + 1 against the same context.
        call = _inference(lambda: v.decode(q, k, vv, state, **case.params)[0])
        return Workload(call, _no_reset, [], b, count(1, n + 1), memory.tensor_bytes(state),
                        v.decode_state_kind)
    grad = case.mode == "fwd_bwd"
    q, k, vv = make(n, grad), make_kv(n, grad), make_kv(n, grad)
    forward = lambda: v.attention(q, k, vv, causal=case.causal, **case.params)  # noqa: E731
    return _training_or_inference(case, forward, [q, k, vv], b * n, count(n, n))


def layer_workload(case: Case) -> Workload:
    v = registry.get(case.variant)
    b, n, d_model = case.batch, case.seq_len, case.d_model
    grouped = {"kv_heads": case.kv_heads} if case.grouped else {}  # mixer-only families take no kv_heads
    mixer = v.mixer(d_model, case.n_heads, causal=case.causal, **grouped, **case.params)
    mixer = mixer.to(device=case.device, dtype=case.torch_dtype)
    x = torch.randn(b, n, d_model, device=case.device, dtype=case.torch_dtype)

    def count(n_q: int, n_k: int, tokens: int) -> int | None:
        attention = v.attention_flops(case.mode, b, case.n_heads, case.head_dim, n_q, n_k, case.causal,
                                          case.params)
        projections = flops.projection_flops(case.mode, tokens, d_model, case.n_kv_heads * case.head_dim)
        return None if attention is None else attention + projections

    if case.mode == "decode":
        with torch.no_grad():
            _, state = mixer.prefill(x, capacity=n + 1)
        x_new = torch.randn(b, 1, d_model, device=case.device, dtype=case.torch_dtype)
        # As at kernel level; a state updated in place (mamba's) moves on, at the same cost per step.
        call = _inference(lambda: mixer.step(x_new, state)[0])
        return Workload(call, _no_reset, [], b, count(1, n + 1, b), memory.tensor_bytes(state),
                        v.decode_state_kind)
    x.requires_grad_(case.mode == "fwd_bwd")
    return _training_or_inference(case, lambda: mixer(x), [x, *mixer.parameters()], b * n, count(n, n, b * n))


def ragged_workload(case: Case) -> Workload:
    """A ragged batch at kernel level (module docstring): attention variants through harness.ragged.attend,
    mixer-only kernels through harness.ragged.run_kernel, on inputs of the layout's shape."""
    v, batch = registry.get(case.variant), case.ragged_batch
    n = batch.max_len if case.layout == "padded" else batch.real_tokens
    rows = batch.batch if case.layout == "padded" else 1
    grad = case.mode == "fwd_bwd"
    if v.attention_fn is None:
        inputs = v.kernel_inputs(rows, case.n_heads, n, case.head_dim, torch.Generator().manual_seed(0),
                                 dtype=case.torch_dtype)
        inputs = {k: t.to(case.device) if torch.is_tensor(t) else t for k, t in inputs.items()}
        leaves = [t.requires_grad_(grad) for t in inputs.values()
                  if torch.is_tensor(t) and t.dtype == case.torch_dtype]
        dims = ragged.kernel_seq_dims(v)
        forward = lambda: ragged.run_kernel(v, inputs, batch, case.layout, dims)  # noqa: E731
        useful = None
    else:
        q, k, vv = (torch.randn(rows, case.n_heads, n, case.head_dim, device=case.device,
                                dtype=case.torch_dtype).requires_grad_(grad) for _ in range(3))
        leaves = [q, k, vv]
        forward = lambda: ragged.attend(v, q, k, vv, batch, case.layout, causal=case.causal,  # noqa: E731
                                        **case.params)
        counts = [v.attention_flops(case.mode, 1, case.n_heads, case.head_dim, m, m, case.causal, case.params)
                  for m in batch.lengths if m]
        useful = None if None in counts else sum(counts)
    work = _training_or_inference(case, forward, leaves, batch.real_tokens, useful)
    work.padded_tokens = batch.tokens(case.layout)
    work.ragged_path = ragged.path_of(v, case.layout, case.device)
    return work


def build_workload(case: Case) -> Workload:
    """The case's call; measure_case has already checked its level (check_level)."""
    if case.layout != "square":
        return ragged_workload(case)
    work = kernel_workload(case) if case.level == "kernel" else layer_workload(case)
    if case.mode != "decode":
        work.padded_tokens = work.tokens  # a square batch computes on its real tokens alone
    return work
