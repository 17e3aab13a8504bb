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

The compiled series (`Case.compiled`): the function the timed call runs (the attention call, a mixer-only
family's kernel, the mixer, a decode step) is wrapped in harness.compiling.Compiled, kept as the
workload's `compiled`; measuring makes its compiling call before anything is timed. A variant that
declares it cannot compile (Support.torch_compile) is unsupported with its reason.

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

from harness import compiling, flops, memory, ragged, registry
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
    compiled: compiling.Compiled | None = None  # the compiled series: the function `call` runs compiled
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
    """Unsupported where the case's level, grouping or compilation does not apply to its variant."""
    v = registry.get(case.variant)
    if case.compiled and v.support.compile_reason():
        raise Unsupported(f"torch.compile: {v.support.compile_reason()}")
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


def compiled_if(case: Case, fn: Callable) -> Callable:
    """`fn`, or for the compiled series `fn` under torch.compile (harness.compiling.Compiled)."""
    return compiling.Compiled(fn) if case.compiled else fn


def _compiled_of(fn: Callable) -> compiling.Compiled | None:
    return fn if isinstance(fn, compiling.Compiled) else None


def _training_or_inference(case: Case, forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor],
                           tokens: int, flops_: int | None, compiled: compiling.Compiled | None) -> Workload:
    """fwd: the forward without autograd; fwd_bwd: forward + backward of a random output gradient, the
    gradients of `leaves` reset in each round's setup. `compiled`: what `forward` calls compiled."""
    if case.mode == "fwd_bwd":
        return Workload(_training_call(forward), _clear_grads(leaves), leaves, tokens, flops_,
                        compiled=compiled)
    return Workload(_inference(forward), _no_reset, [], tokens, flops_, compiled=compiled)


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
    kernel = compiled_if(case, v.kernel)
    return _training_or_inference(case, lambda: kernel(**inputs), leaves, case.batch * case.seq_len, None,
                                  _compiled_of(kernel))


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
        step = compiled_if(case, lambda q, k, vv, state: v.decode(q, k, vv, state, **case.params)[0])
        # The returned state is dropped: every round decodes token N + 1 against the same context.
        call = _inference(lambda: step(q, k, vv, state))
        return Workload(call, _no_reset, [], b, count(1, n + 1), memory.tensor_bytes(state),
                        v.decode_state_kind, _compiled_of(step))
    grad = case.mode == "fwd_bwd"
    q, k, vv = make(n, grad), make_kv(n, grad), make_kv(n, grad)
    attention = compiled_if(case, lambda q, k, vv: v.attention(q, k, vv, causal=case.causal, **case.params))
    return _training_or_inference(case, lambda: attention(q, k, vv), [q, k, vv], b * n, count(n, n),
                                  _compiled_of(attention))


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
        step = compiled_if(case, mixer.step)
        # As at kernel level; a state updated in place (mamba's) moves on, at the same cost per step.
        call = _inference(lambda: step(x_new, state)[0])
        return Workload(call, _no_reset, [], b, count(1, n + 1, b), memory.tensor_bytes(state),
                        v.decode_state_kind, _compiled_of(step))
    x.requires_grad_(case.mode == "fwd_bwd")
    layer = compiled_if(case, mixer)
    return _training_or_inference(case, lambda: layer(x), [x, *mixer.parameters()], b * n,
                                  count(n, n, b * n), _compiled_of(layer))


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
    work = _training_or_inference(case, forward, leaves, batch.real_tokens, useful, None)  # eager
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
