"""The variant registry: every attention implementation is one decorated function or class.

A variant declares everything the suites need: its family (an open name), whether it is exact softmax
attention, what it supports (device, dtype, head_dim, causal, cross-attention, grouped KV heads, packages it
needs; the runner asks `supports()` first and records "unsupported" instead of crashing), its FLOPs, its naive
reference and its mixer, and what it costs the planners (training work, the memory of one call, what it
compiles: hooks whose defaults harness.costs states). Variants arrive through the `attnbench.variants`
entry points (harness.plugins), which `names()`, `get()` and `all_variants()` load on first use.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness import attention, costs, dtypes, plugins

_DTYPE_NAMES = {alias: getattr(torch, name) for alias, name in dtypes.ALIASES.items()}
ALL_FLOAT = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
HALF = (torch.float16, torch.bfloat16)


class Unsupported(Exception):
    """Raised by a variant for a combination it cannot run; the runner records it, never crashes."""


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return _DTYPE_NAMES[dtypes.canonical(dtype)]


def dtype_name(dtype: torch.dtype | str) -> str:
    return str(as_dtype(dtype)).removeprefix("torch.")


def device_type(device: torch.device | str) -> str:
    return torch.device(device).type


@functools.cache
def package_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.cache
def cuda_available() -> bool:
    return torch.cuda.is_available()


@dataclass(frozen=True)
class Support:
    """What an implementation can run. `dtypes` maps a device type to the dtypes it accepts there."""

    dtypes: dict[str, tuple[torch.dtype, ...]] = field(
        default_factory=lambda: {"cpu": ALL_FLOAT, "cuda": ALL_FLOAT}
    )
    max_head_dim: int | None = None
    head_dim_multiple: int = 1
    causal: bool = True
    non_causal: bool = True
    cross: bool = True  # Nq != Nk
    requires: tuple[str, ...] = ()  # importable module names
    # Grouped-query attention (GQA, MQA): k and v with fewer heads than q, kv_heads dividing n_heads, query
    # head h reading KV head h // (n_heads // kv_heads) (SDPA's enable_gqa, repeat_interleave). True: the
    # fast path takes them as they are (never repeating them to n_heads); a string: it cannot, and why;
    # False (the default): not declared, so a plugin that never heard of it is not fed grouped KV.
    grouped_kv: bool | str = False
    # torch.compile (the compiled series, `--compile`): True, try it (a failure at compile time is recorded
    # unsupported with the exception's first line); a string: it cannot compile, and why (never tried).
    torch_compile: bool | str = True
    # Ragged batches (harness.ragged): a padded batch under a padding mask, or a packed one (documents back
    # to back, each seeing only itself). True: supported (through the variant's padded_fn / packed_fn, else
    # harness.ragged's generic path); a string: it cannot, and why; False: not declared.
    padded: bool | str = False
    packed: bool | str = False
    # Extra runtime check: (device_type, dtype, head_dim, causal) -> reason or None.
    check: Callable[[str, torch.dtype, int, bool], str | None] | None = None

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.dtypes)

    def grouped_kv_reason(self) -> str | None:
        """Why grouped KV heads cannot run (None: they can)."""
        if self.grouped_kv is True:
            return None
        return self.grouped_kv or "grouped KV heads not declared (Support.grouped_kv)"

    def compile_reason(self) -> str | None:
        """Why it cannot run under torch.compile, as declared (None: it may try)."""
        if self.torch_compile is True:
            return None
        return self.torch_compile or "declared not to run under torch.compile (Support.torch_compile)"

    def unavailable_reason(self, device: str) -> str | None:
        """Why this implementation cannot run on this machine at all (independent of shapes)."""
        if device not in self.dtypes:
            return f"runs on {'/'.join(self.devices)} only"
        reasons = ["no CUDA device"] if device == "cuda" and not cuda_available() else []
        reasons += [f"{m.replace('_', '-')} not installed" for m in self.requires if not package_available(m)]
        return ", ".join(reasons) or None


@dataclass
class Variant:
    """One registered implementation.

    Attention variants have `attention_fn(q, k, v, causal=False, **params)`; mixer-only families (mamba
    and the state-space / recurrent families) have a `mixer_factory` and expose their core operation as
    `kernel(**inputs)`, with `kernel_inputs` to draw inputs and `kernel_reference` to check it.
    """

    name: str
    family: str  # an open name: the families a report groups by
    exact: bool  # computes softmax attention exactly (under its mask, if it has one)
    support: Support
    mixer_factory: Callable[..., torch.nn.Module] | None = None
    attention_fn: Callable[..., torch.Tensor] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    baseline: bool = False
    trainable: bool = True
    description: str = ""
    # Mask-based families: (n_q, n_k, causal, n_heads=1, **params) -> (n_q, n_k), or (n_heads, n_q, n_k)
    # for a pattern that differs per head.
    mask_fn: Callable[..., torch.Tensor] | None = None
    # The naive twin of attention_fn (same signature), run in float64 by the exactness checks. Given grouped
    # k and v (fewer heads than q), it repeats them to the query heads (harness.attention.repeat_kv).
    # None for exact variants: their reference is softmax attention under their mask.
    reference: Callable[..., torch.Tensor] | None = None
    # Mixer-only families: the core operation, its naive twin (same signature), and
    # kernel_inputs(batch, heads, seq_len, head_dim, generator) -> dict of float64 input tensors.
    kernel: Callable[..., torch.Tensor] | None = None
    kernel_reference: Callable[..., torch.Tensor] | None = None
    kernel_inputs: Callable[..., dict[str, torch.Tensor]] | None = None
    # FLOPs of one attention call: flops(mode, batch, n_heads, head_dim, n_q, n_k, causal, **params).
    # Declared by softmax-kind variants (harness.flops.softmax); None: reported as latency and tokens/s only.
    flops: Callable[..., int] | None = None
    # What it costs the planners (harness.costs; None: the default stated there). cost(d_model, n_layers,
    # n_heads, seq_len, **params) -> costs.MixerCost, its mixers' training work per token (suites.estimate);
    # peak_bytes(call: costs.KernelCall, **params) -> the bytes one kernel-level forward call's buffers peak
    # at, None where the code path that runs has no model (suites.frontier).
    cost: Callable[..., costs.MixerCost] | None = None
    peak_bytes: Callable[..., int | float | None] | None = None
    # compiles(device_type) -> costs.CompileCost, what its code path there compiles or autotunes per new
    # shape (FlexAttention per shape, fla's Triton kernels per key), or None: nothing (harness.estimate).
    compiles: Callable[[str], costs.CompileCost | None] | None = None
    # Parameters at toy sizes (a smoke run's short sequences), so that a pattern still differs from full
    # attention there (a window or block smaller than the sequence).
    small_params: dict[str, Any] = field(default_factory=dict)
    backend: Callable[[str], str] | None = None  # device type -> name of the code path that runs there
    # Decoding one token at a time. Default for attention variants: a preallocated KV cache.
    # Recurrent families (linear, performer) register their constant-size state instead.
    prefill_fn: Callable[..., Any] | None = None  # (k, v, capacity, **params) -> state
    decode_fn: Callable[..., Any] | None = None  # (q_t, k_t, v_t, state, **params) -> (o_t, state)
    # What the decoding state is: "kv_cache" (keys and values of the context, at kv_heads; a bounded one
    # for a window) or "recurrent" (a state whose size does not grow with the context). None: a KV cache
    # for an attention variant on the default prefill, a recurrent state otherwise.
    decode_state: str | None = None
    # Ragged batches' own fast paths (harness.ragged.attend): fn(q, k, v, batch: RaggedBatch, causal,
    # **params), its `path` attribute (a string, or device -> string) the name a row records. None: the
    # generic path of harness.ragged, where Support.padded / Support.packed allow it.
    padded_fn: Callable[..., torch.Tensor] | None = None
    packed_fn: Callable[..., torch.Tensor] | None = None
    module: str = ""  # the Python module that registered it (its plugin: `source`)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise TypeError(f"a variant needs a name, got {self.name!r}")
        if not self.family or not isinstance(self.family, str):
            raise TypeError(f"variant {self.name!r} needs a family name, got {self.family!r}")
        if not isinstance(self.exact, bool):
            raise TypeError(f"variant {self.name!r}: exact must be True or False, got {self.exact!r}")
        if not isinstance(self.support, Support):
            raise TypeError(f"variant {self.name!r}: support must be a harness.registry.Support")
        if self.attention_fn is None and self.mixer_factory is None:
            raise TypeError(f"variant {self.name!r} has neither an attention function nor a mixer")
        if (self.kernel is None) != (self.kernel_inputs is None):
            raise TypeError(f"variant {self.name!r}: kernel and kernel_inputs come together")
        if self.decode_state not in (None, "kv_cache", "recurrent"):
            raise TypeError(f"variant {self.name!r}: decode_state must be 'kv_cache', 'recurrent' or None")
        for hook in ("cost", "peak_bytes", "compiles"):
            if not (getattr(self, hook) is None or callable(getattr(self, hook))):
                raise TypeError(f"variant {self.name!r}: {hook} must be a function or None")

    @property
    def decode_state_kind(self) -> str:
        """"kv_cache" or "recurrent": what decoding keeps (the `decode_state` field, else its default)."""
        if self.decode_state is not None:
            return self.decode_state
        return "kv_cache" if self.attention_fn is not None and self.prefill_fn is None else "recurrent"

    @property
    def source(self) -> plugins.Source:
        """The package (and version) that registered this variant."""
        return plugins.source_of_module(self.module)

    @property
    def full_softmax(self) -> bool:
        """Computes full (or causal) softmax attention exactly: the function the others approximate."""
        return self.exact and self.mask_fn is None and self.attention_fn is not None

    def supports(
        self,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        head_dim: int = 64,
        causal: bool = False,
        grouped: bool = False,
    ) -> tuple[bool, str]:
        """(True, "ok"), or (False, why not). `grouped`: k and v have fewer heads than q
        (Support.grouped_kv)."""
        try:
            dev, dt = device_type(device), as_dtype(dtype)
        except (RuntimeError, ValueError) as e:
            return False, str(e).splitlines()[0]
        s = self.support
        reason = s.unavailable_reason(dev)
        if reason is None and dt not in s.dtypes[dev]:
            reason = f"{dtype_name(dt)} not supported on {dev}"
        elif reason is None and s.max_head_dim is not None and head_dim > s.max_head_dim:
            reason = f"head_dim {head_dim} > {s.max_head_dim}"
        elif reason is None and head_dim % s.head_dim_multiple:
            reason = f"head_dim must be a multiple of {s.head_dim_multiple}"
        elif reason is None and causal and not s.causal:
            reason = "causal masking not supported"
        elif reason is None and not causal and not s.non_causal:
            reason = "causal only"
        elif reason is None and grouped and s.grouped_kv_reason():
            reason = s.grouped_kv_reason()
        elif reason is None and s.check is not None:
            reason = s.check(dev, dt, head_dim, causal)
        return (reason is None, reason or "ok")

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, **params):
        if self.attention_fn is None:
            raise Unsupported(f"{self.name} is a sequence mixer with no attention(q, k, v); use mixer()")
        if q.shape[-2] != k.shape[-2] and not self.support.cross:
            raise Unsupported(f"{self.name} needs Nq == Nk (got {q.shape[-2]} and {k.shape[-2]})")
        self._check_grouped(q, k)
        return self.attention_fn(q, k, v, causal=causal, **{**self.defaults, **params})

    def _check_grouped(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """k with fewer heads than q: ValueError unless they divide q's, Unsupported unless declared."""
        if k.dim() == 4 and k.shape[1] != q.shape[1]:
            attention.kv_group(q, k)
            reason = self.support.grouped_kv_reason()
            if reason:
                raise Unsupported(f"{self.name}: {reason}")

    def attention_reference(self, q, k, v, causal: bool = False, **params) -> torch.Tensor:
        """The naive twin of attention(): declared, else softmax attention under the variant's mask, with the
        KV heads of grouped inputs repeated to the query heads (repeat_interleave)."""
        if self.attention_fn is None:
            raise Unsupported(f"{self.name} has no attention(q, k, v); its reference is kernel_reference")
        self._check_grouped(q, k)
        if self.reference is not None:
            return self.reference(q, k, v, causal=causal, **{**self.defaults, **params})
        n_q, n_k = q.shape[-2], k.shape[-2]
        if self.mask is not None:
            mask = self.mask(n_q, n_k, causal=causal, n_heads=q.shape[1], **params).to(q.device)
        else:
            mask = attention.causal_mask(n_q, n_k, q.device) if causal else None
        group = attention.kv_group(q, k)
        k, v = attention.repeat_kv(k, group), attention.repeat_kv(v, group)
        return attention.softmax_attention(q, k, v, mask)

    def attention_flops(self, mode: str, batch: int, n_heads: int, head_dim: int, n_q: int, n_k: int,
                        causal: bool, params: dict[str, Any] | None = None) -> int | None:
        """FLOPs of one attention call, defaults overridden by params (None: this variant is not counted)."""
        if self.flops is None:
            return None
        params = {**self.defaults, **(params or {})}
        return self.flops(mode, batch, n_heads, head_dim, n_q, n_k, causal, **params)

    def mixer_cost(self, d_model: int, n_layers: int, n_heads: int, seq_len: int,
                   params: dict[str, Any] | None = None) -> costs.MixerCost:
        """Training work per token of `n_layers` of its mixers at this width and length, defaults overridden
        by params: its `cost` hook, else harness.costs.default_cost."""
        hook = self.cost or costs.default_cost
        return hook(d_model, n_layers, n_heads, seq_len, **{**self.defaults, **(params or {})})

    def predicted_peak_bytes(self, device: torch.device | str, dtype: torch.dtype | str, batch: int,
                             n_heads: int, seq_len: int, head_dim: int,
                             params: dict[str, Any] | None = None,
                             kv_heads: int | None = None) -> int | float | None:
        """The bytes one kernel-level forward call's buffers peak at, on the code path that runs on this
        device: its `peak_bytes` hook, else harness.costs.default_peak_bytes (None: no model). `kv_heads`:
        k and v's heads (None: n_heads)."""
        call = costs.KernelCall(device_type(device), self.backend_for(device), as_dtype(dtype), batch,
                                n_heads, seq_len, head_dim, kv_heads)
        if self.peak_bytes is None:
            return costs.default_peak_bytes(call, attention=self.attention_fn is not None)
        return self.peak_bytes(call, **{**self.defaults, **(params or {})})

    def compile_cost(self, device: torch.device | str, compiled: bool = False) -> costs.CompileCost | None:
        """What its code path on this device compiles or autotunes per new shape: its `compiles` hook, else
        nothing (harness.costs.default_compiles). It describes the path of a machine with the `gpu` extras
        installed, whatever this one has, so that a GPU plan is estimated alike everywhere. `compiled`:
        the call under torch.compile (the compiled series), which compiles its whole graph per shape
        (harness.costs.torch_compile_cost) in place of what the eager path compiles; nothing where it is
        declared not to compile (Support.torch_compile)."""
        if compiled:
            return None if self.support.compile_reason() else costs.torch_compile_cost(device_type(device))
        return (self.compiles or costs.default_compiles)(device_type(device))

    @property
    def default_models(self) -> tuple[str, ...]:
        """The planners' models it leaves to harness.costs' defaults: 'cost', 'memory' (rows carry them)."""
        return tuple(model for model, hook in (("cost", self.cost), ("memory", self.peak_bytes))
                     if hook is None)

    def prefill(self, k: torch.Tensor, v: torch.Tensor, capacity: int | None = None, **params):
        """The decoding state after a context of k, v (batch, heads, n, head_dim); room for `capacity`."""
        fn = self.prefill_fn or attention.kv_prefill
        return fn(k, v, capacity=capacity, **{**self.defaults, **params})

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state, **params):
        """One new token (batch, heads, 1, head_dim) against the state: returns (output, new state)."""
        if self.attention_fn is None:
            raise Unsupported(f"{self.name} decodes through its mixer's step(), not at the kernel level")
        if self.decode_fn is not None:
            return self.decode_fn(q, k, v, state, **{**self.defaults, **params})
        return attention.kv_decode(self, q, k, v, state, **params)

    @property
    def mask(self) -> Callable[..., torch.Tensor] | None:
        """Mask-based families: `mask(n_q, n_k, causal=False, **params)`, the pattern the fast path computes
        under the variant's defaults overridden by params. None for the other families."""
        if self.mask_fn is None:
            return None
        return lambda n_q, n_k, causal=False, **params: self.mask_fn(
            n_q, n_k, causal=causal, **{**self.defaults, **params})

    def mixer(self, d_model: int, n_heads: int, **params) -> torch.nn.Module:
        """Its sequence mixer; `kv_heads` below n_heads (grouped KV heads) only where declared."""
        kv_heads = params.get("kv_heads")
        if kv_heads is not None and kv_heads != n_heads and self.support.grouped_kv_reason():
            raise Unsupported(f"{self.name}: {self.support.grouped_kv_reason()}")
        return self.mixer_factory(d_model, n_heads, **params)

    def backend_for(self, device: torch.device | str) -> str:
        return self.backend(device_type(device)) if self.backend else self.name


_REGISTRY: dict[str, Variant] = {}
_CONFLICTS: dict[str, list[Variant]] = {}  # a name declared by several packages: usable by none
_PROBLEMS: list[plugins.Problem] = []
_LOADED = False


def _add(variant: Variant) -> Variant:
    if variant.name in _CONFLICTS:
        _CONFLICTS[variant.name].append(variant)
    elif variant.name in _REGISTRY:
        first = _REGISTRY.pop(variant.name)
        if first.source == variant.source and first.module == variant.module:
            raise ValueError(f"variant {variant.name!r} registered twice by {variant.module}")
        _CONFLICTS[variant.name] = [first, variant]
    else:
        _REGISTRY[variant.name] = variant
    return variant


def _load() -> None:
    """Load the variant plugins once per process (entry points; harness.plugins)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        _PROBLEMS.extend(plugins.load_variant_plugins())


def attention_variant(name: str, *, family: str, exact: bool, support: Support | None = None, **fields):
    """Register an attention function `fn(q, k, v, causal=False, **params) -> o`.

    Its mixer is the standard projection block around it (harness.attention.AttentionMixer).
    """

    def register(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        variant = Variant(
            name=name, family=family, exact=exact, support=support or Support(),
            attention_fn=fn, module=fn.__module__, **fields,
        )
        mixer_class = variant.mixer_factory or attention.AttentionMixer  # a subclass may add parameters
        variant.mixer_factory = functools.partial(mixer_class, variant=variant)
        _add(variant)
        return fn

    return register


def mixer_variant(name: str, *, family: str, exact: bool, support: Support | None = None, **fields):
    """Register a module class `cls(d_model, n_heads, **params)` that mixes along the sequence."""

    def register(cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
        _add(Variant(name=name, family=family, exact=exact, support=support or Support(),
                     mixer_factory=cls, module=cls.__module__, **fields))
        return cls

    return register


_FAMILY_COLORS: dict[str, str] = {}


def declare_family_colors(colors: dict[str, str]) -> None:
    """Families' hues in the report's charts, in the legend's order (the first declaration of a family
    holds). attnbench's variants package declares its families'; a plugin may declare its own, and a
    family nobody declares gets a colour derived from its name (harness.report.colors)."""
    for family, color in colors.items():
        _FAMILY_COLORS.setdefault(family, color)


def family_colors() -> dict[str, str]:
    """family -> its declared hue, in the order declared (the variant plugins loaded first)."""
    _load()
    return dict(_FAMILY_COLORS)


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> Variant:
    _load()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _CONFLICTS:
        owners = " and ".join(str(v.source) for v in _CONFLICTS[name])
        raise ValueError(f"variant {name!r} is declared by both {owners}; uninstall one of them")
    broken = "; ".join(p.line() for p in _PROBLEMS)
    hint = f" (plugins that failed to load: {broken})" if broken else ""
    raise ValueError(f"unknown variant {name!r}; valid names: {', '.join(names())}{hint}")


def all_variants() -> list[Variant]:
    return [_REGISTRY[n] for n in names()]


def problems() -> list[plugins.Problem]:
    """Plugins that failed to load and names declared twice: `attnbench list` shows them."""
    _load()
    conflicts = [plugins.Problem(declared[-1].source, declared[-1].module,
                                 "name declared by several packages "
                                 f"({', '.join(str(v.source) for v in declared)}): usable by none",
                                 variant=name)
                 for name, declared in _CONFLICTS.items()]
    return [*_PROBLEMS, *conflicts]
