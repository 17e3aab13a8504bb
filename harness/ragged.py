"""Ragged batches: sequences of different lengths in one batch, drawn from a named length distribution,
and the two layouts that run them.

A batch is a list of lengths, each in [0, N] (`RaggedBatch`), drawn by a distribution config (`Lengths`:
`fixed`, `uniform`, `chat`; `DISTRIBUTIONS` registers each by name, so adding one is one entry) seeded
from its config and the batch's shape, so a case's lengths are reproducible from the case alone. A
distribution is named by a spec string, `NAME` or `NAME:key=value,...` (`parse_lengths`; `spec` writes
the canonical one a row carries).

Layouts (`LAYOUTS`; `square` is today's batch, every sequence N long, no mask):
- `padded`: (batch, heads, N, head_dim) with a padding mask. Padded query rows output exactly zero and get
  zero gradient; no real query sees a padded key.
- `packed`: the real tokens of every sequence back to back, (1, heads, sum(lengths), head_dim), each a
  document that sees only itself (varlen). Recurrent families start every document from a zero state.

A variant declares what it supports (`Support.padded`, `Support.packed`: True, or a string saying why
not) and may bring its own fast path (`Variant.padded_fn`, `Variant.packed_fn`); otherwise `attend` and
`run_kernel` use the generic paths here, each named by `path_of`:
- `masked-softmax` (padded, full softmax attention): the causal pattern composed with the row's padding
  predicate (harness.masks.within), through the softmax reference;
- `zeroed-padding` (padded, causal recurrent forms: linear attention, performer, the mixer-only kernels):
  the whole padded batch, then the padded rows set to zero. A causal output at a real position depends on
  no later position, so the padding cannot reach it; the zeroed rows carry no gradient back;
- `per-document` (packed, every family): each document through the variant alone, outputs concatenated:
  varlen as a loop, the reference twin of cu_seqlens kernels; a recurrent state starts at zero in each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError

from harness import masks
from harness.attention import kv_group, softmax_attention
from harness.registry import Unsupported

LAYOUTS = ("square", "padded", "packed")
RAGGED_LAYOUTS = ("padded", "packed")


# --- length distributions -------------------------------------------------------------------------


class Lengths(BaseModel):
    """A length distribution: `draw(batch, max_len)` gives `batch` lengths in [1, max_len], the same for
    the same config and shape (a numpy generator seeded by (seed, batch, max_len))."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str]
    seed: NonNegativeInt = 0

    def check(self, max_len: int) -> None:
        """ValueError (one line) when this config cannot draw lengths up to max_len."""

    def draw(self, batch: int, max_len: int) -> tuple[int, ...]:
        self.check(max_len)
        rng = np.random.default_rng([self.seed, batch, max_len])
        return tuple(int(n) for n in self._draw(rng, batch, max_len))

    def _draw(self, rng: np.random.Generator, batch: int, max_len: int) -> np.ndarray:
        raise NotImplementedError


class FixedLengths(Lengths):
    """Every sequence `length` long (None: N, today's square batch)."""

    name: ClassVar[str] = "fixed"
    length: PositiveInt | None = None

    def check(self, max_len: int) -> None:
        if self.length is not None and self.length > max_len:
            raise ValueError(f"lengths fixed:length={self.length} is larger than N = {max_len}")

    def _draw(self, rng, batch, max_len):
        return np.full(batch, self.length or max_len)


class UniformLengths(Lengths):
    """Lengths uniform over the integers [floor, N]."""

    name: ClassVar[str] = "uniform"
    floor: PositiveInt = 1

    def check(self, max_len: int) -> None:
        if self.floor > max_len:
            raise ValueError(f"lengths uniform:floor={self.floor} is larger than N = {max_len}")

    def _draw(self, rng, batch, max_len):
        return rng.integers(self.floor, max_len, size=batch, endpoint=True)


class ChatLengths(Lengths):
    """A long-tailed mix like chat traffic: lognormal with its median at `median_fraction` of N and
    log-spread `sigma`, rounded and clipped to [1, N].

    Why these: request lengths of chat services are right-skewed, many short turns and a tail of long
    pasted documents, the shape a lognormal takes (LMSYS-Chat-1M's prompts: a median of tens of tokens, a
    tail past thousands). Scaled to N, so that the same mix applies at every length a grid sweeps: the
    median at N/8 and sigma = 1 put about 2% of the sequences at N (clipped) and leave a padded batch
    about 80% padding, where packing pays most. Not fitted to any trace: a stated stand-in."""

    name: ClassVar[str] = "chat"
    median_fraction: float = Field(0.125, gt=0, le=1)
    sigma: PositiveFloat = 1.0

    def _draw(self, rng, batch, max_len):
        drawn = rng.lognormal(math.log(self.median_fraction * max_len), self.sigma, size=batch)
        return np.clip(np.rint(drawn), 1, max_len)


DISTRIBUTIONS: dict[str, type[Lengths]] = {c.name: c for c in (FixedLengths, UniformLengths, ChatLengths)}
DEFAULT_LENGTHS = "fixed"  # the square batch's


def parse_lengths(text: str) -> Lengths:
    """`NAME` or `NAME:key=value,...` -> the distribution's config; ValueError (one line) for an unknown
    name, key or value."""
    name, _, rest = str(text).partition(":")
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown length distribution {name!r}; known: {', '.join(DISTRIBUTIONS)}")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"lengths {text!r}: {item!r} is not key=value")
        params[key.strip()] = value.strip()
    try:
        return DISTRIBUTIONS[name](**params)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"lengths {text!r}: {where}: {err['msg']}") from None


def spec(config: Lengths) -> str:
    """The canonical spec string of a config: its name, then the parameters off their defaults, sorted."""
    changed = config.model_dump(exclude_defaults=True)
    return config.name + (":" + ",".join(f"{k}={changed[k]}" for k in sorted(changed)) if changed else "")


def canonical(text: str) -> str:
    """A spec string checked and written canonically (ValueError as parse_lengths)."""
    return spec(parse_lengths(text))


# --- the batch ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaggedBatch:
    """Lengths (each in [0, max_len]) of one batch. The sequence dim of a padded tensor is N = max_len;
    of a packed one, sum(lengths). Batch is dim 0 throughout."""

    lengths: tuple[int, ...]
    max_len: int

    def __post_init__(self) -> None:
        if not self.lengths:
            raise ValueError("a ragged batch needs at least one sequence")
        for n in self.lengths:
            if n < 0 or n > self.max_len:
                raise ValueError(f"sequence length {n} is outside [0, N = {self.max_len}]")

    @classmethod
    def drawn(cls, lengths: str, batch: int, max_len: int) -> RaggedBatch:
        return cls(parse_lengths(lengths).draw(batch, max_len), max_len)

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    def tokens(self, layout: str) -> int:
        """Tokens a layout computes on: batch x N padded, the real ones packed."""
        return self.batch * self.max_len if layout == "padded" else self.real_tokens

    def offsets(self) -> list[int]:
        """cu_seqlens: where each document starts in the packed sequence, then its end."""
        return [0, *np.cumsum(self.lengths).tolist()]

    def valid(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(batch, N) bool: True at real positions of the padded layout."""
        return torch.arange(self.max_len, device=device) < torch.tensor(self.lengths, device=device)[:, None]

    def doc_ids(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(sum(lengths),) int64: the document of each packed position."""
        return torch.repeat_interleave(torch.arange(self.batch, device=device),
                                       torch.tensor(self.lengths, device=device))

    def pack(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """A padded tensor (batch first, sequence at `dim`) -> its real positions back to back, batch 1."""
        parts = [x[b:b + 1].narrow(dim, 0, n) for b, n in enumerate(self.lengths)]
        return torch.cat(parts, dim=dim)

    def documents(self, x: torch.Tensor, dim: int) -> list[torch.Tensor]:
        """A packed tensor (batch 1, sequence at `dim`) split into its documents (zero-length ones too)."""
        return list(torch.split(x, list(self.lengths), dim=dim))

    def unpack(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """A packed tensor -> the padded layout, zeros at the padding."""
        dim = dim % x.dim()
        rows = []
        for doc, n in zip(self.documents(x, dim), self.lengths, strict=True):
            pad = [0, 0] * (x.dim() - 1 - dim) + [0, self.max_len - n]
            rows.append(torch.nn.functional.pad(doc, pad))
        return torch.cat(rows, dim=0)

    def zero_padding(self, out: torch.Tensor, dim: int) -> torch.Tensor:
        """A padded output with its padded positions set to exactly zero (and their gradient with them)."""
        dim = dim % out.dim()
        shape = [1] * out.dim()
        shape[0], shape[dim] = self.batch, self.max_len
        return out.masked_fill(~self.valid(out.device).view(shape), 0)


# --- the generic paths ----------------------------------------------------------------------------


def padding_mask(batch: RaggedBatch, causal: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, 1, N, N) bool: each row's padding predicate composed with the causal one (attention-gym
    style), its head dim 1 so that it broadcasts over the heads."""
    n = batch.max_len
    rows = []
    for length in batch.lengths:
        pred = masks.within(length)
        rows.append(masks.dense(masks.all_of(pred, masks.causal()) if causal else pred, n, n, device))
    return torch.stack(rows)[:, None]


def masked_softmax_padded(q, k, v, batch: RaggedBatch, causal: bool) -> torch.Tensor:
    """Softmax attention over a padded batch under its padding mask: a fully masked (padded) query row
    outputs zero with zero gradient (softmax_attention's convention)."""
    mask = padding_mask(batch, causal, q.device)
    if kv_group(q, k) > 1:
        mask = mask[:, :, None]  # (batch, 1, 1, N, N) against the (batch, kv_heads, group, N, N) scores
    return softmax_attention(q, k, v, mask)


def zeroed_padding(run: Callable[[], torch.Tensor], batch: RaggedBatch, out_dim: int) -> torch.Tensor:
    """A causal form over the padded batch, its padded positions zeroed (module docstring)."""
    return batch.zero_padding(run(), out_dim)


def per_document(run: Callable[[int, int], torch.Tensor | None], batch: RaggedBatch, out_dim: int,
                 empty: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`run(start, length)` on each non-empty document, outputs concatenated along `out_dim`; `empty()`:
    the output of a batch with no real token."""
    starts = batch.offsets()
    parts = [run(start, n) for start, n in zip(starts, batch.lengths, strict=False) if n > 0]
    return torch.cat(parts, dim=out_dim) if parts else empty()


def document_reference(q, k, v, batch: RaggedBatch, causal: bool) -> torch.Tensor:
    """Softmax attention over a packed sequence under the document mask (composed with causal): the
    naive twin of every packed softmax path."""
    doc = masks.document(batch.doc_ids(q.device))
    pred = masks.all_of(doc, masks.causal()) if causal else doc
    n = q.shape[-2]
    return softmax_attention(q, k, v, masks.dense(pred, n, n, q.device) if n else None)


# --- dispatch -------------------------------------------------------------------------------------


def layout_reason(variant, layout: str, causal: bool) -> str | None:
    """Why `variant` cannot run this layout (None: it can)."""
    if layout == "square":
        return None
    if layout not in RAGGED_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use {', '.join(LAYOUTS)}")
    declared = getattr(variant.support, layout)
    if declared is not True:
        return declared or f"the {layout} layout is not declared (Support.{layout})"
    if layout == "padded" and not causal and _generic_path(variant, layout) == "zeroed-padding":
        return ("a padded batch runs a recurrent form causally only: without causality the padding would "
                "reach the real positions")
    return None


def checked(variant, layout: str, causal: bool) -> None:
    reason = layout_reason(variant, layout, causal)
    if reason:
        raise Unsupported(f"{variant.name} {layout}: {reason}")


def _generic_path(variant, layout: str) -> str:
    if layout == "packed":
        return "per-document"
    return "masked-softmax" if variant.full_softmax else "zeroed-padding"


def path_of(variant, layout: str, device: torch.device | str = "cpu") -> str:
    """The name of the code path a layout runs for this variant on this device (a row records it)."""
    own = getattr(variant, f"{layout}_fn", None)
    if own is not None:
        name = getattr(own, "path", None)
        return name(torch.device(device).type) if callable(name) else name or f"{variant.name}-{layout}"
    return _generic_path(variant, layout)


def attend(variant, q, k, v, batch: RaggedBatch, layout: str, causal: bool = False, **params):
    """An attention variant over a ragged batch: q, k, v (batch, heads, N, d) padded, (1, heads,
    sum(lengths), d) packed. Unsupported (with the reason) where the variant does not declare the layout."""
    checked(variant, layout, causal)
    own = getattr(variant, f"{layout}_fn")
    if own is not None:
        return own(q, k, v, batch, causal=causal, **{**variant.defaults, **params})
    if layout == "packed":
        def run(start, n):
            return variant.attention(*(t.narrow(-2, start, n) for t in (q, k, v)), causal=causal, **params)

        return per_document(run, batch, -2, lambda: q.new_zeros(*q.shape[:-1], v.shape[-1]))
    if variant.full_softmax:
        return masked_softmax_padded(q, k, v, batch, causal)
    return zeroed_padding(lambda: variant.attention(q, k, v, causal=causal, **params), batch, -2)


def kernel_seq_dims(variant) -> tuple[dict[str, int], int]:
    """Where a mixer-only kernel's inputs and output hold the sequence: ({input: dim}, output dim), found
    by drawing its inputs at two lengths (an input whose shape does not change with the length, a
    parameter, has no entry)."""
    shapes = []
    for n in (2, 3):
        inputs = variant.kernel_inputs(1, 1, n, 4, torch.Generator().manual_seed(0), dtype=torch.float32)
        shapes.append(({k: t.shape for k, t in inputs.items() if torch.is_tensor(t)},
                       variant.kernel(**inputs).shape))
    (ins2, out2), (ins3, out3) = shapes
    dims = {}
    for name, shape in ins2.items():
        changed = [i for i, (a, b) in enumerate(zip(shape, ins3[name], strict=True)) if a != b]
        if changed:
            dims[name] = changed[0]
    out_dim = [i for i, (a, b) in enumerate(zip(out2, out3, strict=True)) if a != b]
    if not out_dim:
        raise ValueError(f"{variant.name}: its kernel's output has no sequence dim")
    return dims, out_dim[0]


def run_kernel(variant, inputs: dict[str, Any], batch: RaggedBatch, layout: str,
               seq_dims: tuple[dict[str, int], int] | None = None) -> torch.Tensor:
    """A mixer-only family's kernel over a ragged batch: inputs with the sequence dim N (padded) or
    sum(lengths) with batch 1 (packed), as `kernel_seq_dims` says (computed when not given). Every kernel
    here is causal (Support.non_causal False)."""
    checked(variant, layout, True)
    dims, out_dim = seq_dims or kernel_seq_dims(variant)
    if layout == "padded":
        return zeroed_padding(lambda: variant.kernel(**inputs), batch, out_dim)

    def run(start, n):
        return variant.kernel(**{name: t.narrow(dims[name], start, n) if name in dims else t
                                 for name, t in inputs.items()})

    def empty():  # no real token: the kernel's output for one token, cut to none
        one = {name: t.new_zeros(*t.shape[:dims[name]], 1, *t.shape[dims[name] + 1:]) if name in dims else t
               for name, t in inputs.items()}
        return variant.kernel(**one).narrow(out_dim, 0, 0)

    return per_document(run, batch, out_dim, empty)


def kernel_reference_documents(variant, inputs: dict[str, Any], batch: RaggedBatch,
                               seq_dims: tuple[dict[str, int], int]) -> list[torch.Tensor]:
    """Each document of packed kernel inputs through the kernel's naive reference alone (tests)."""
    dims, _ = seq_dims
    out = []
    for start, n in zip(batch.offsets(), batch.lengths, strict=False):
        if n:
            out.append(variant.kernel_reference(**{name: t.narrow(dims[name], start, n) if name in dims
                                                   else t for name, t in inputs.items()}))
    return out


# Why a family declares no padded path (Support.padded): its own kernel is not written for a padding mask.
NO_PADDED_PATTERN = ("padding is composed with full softmax attention and the causal recurrent forms only; "
                     "this pattern has no padded path: run it packed")
NO_PADDED_FUSED = ("SDPA's fused backends and xformers take no padding mask here (FlashAttention none at "
                   "all): a ragged batch runs packed")
