"""Attention masks as small composable predicates over absolute positions.

A predicate takes broadcastable integer tensors `(q_pos, k_pos)` and returns a bool tensor,
True = the query may attend to the key. A pattern that differs per head (BigBird's random blocks) is a
predicate `(q_pos, k_pos, head)` marked by `per_head(fn, n_heads)`; combinators accept both kinds. The
same predicate builds a dense mask for the reference path ((n_q, n_k), or (n_heads, n_q, n_k) per head)
and a FlexAttention `mask_mod` for the fast path, so both compute one pattern.

Alignment: with n_q queries against n_k keys, query i sits at position i + (n_k - n_q)
("bottom-right", as in FlashAttention and KV-cache decoding). For n_q == n_k that is position i.
With n_q > n_k the first queries sit at negative positions. They take part like any other query (as in
flash-attn's local windows: a non-causal window reaching key 0 sees it); each predicate says what such
a query sees: nothing under `causal`, `block_layout` and `document`, which have no place for it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predicate = Callable[..., torch.Tensor]  # (q_pos, k_pos), or (q_pos, k_pos, head) when marked per_head


def per_head(fn: Callable[..., torch.Tensor], n_heads: int) -> Predicate:
    """Mark `fn(q_pos, k_pos, head)` as a pattern defined for heads 0..n_heads-1."""
    fn.n_heads = n_heads
    return fn


def heads_of(pred: Predicate) -> int | None:
    """The number of heads of a per-head predicate; None when every head sees one pattern."""
    return getattr(pred, "n_heads", None)


def evaluate(pred: Predicate, q: torch.Tensor, k: torch.Tensor, head: torch.Tensor | None = None):
    return pred(q, k, head) if heads_of(pred) else pred(q, k)


def causal() -> Predicate:
    return lambda q, k: k <= q


def sliding_window(left: int, right: int | None = None) -> Predicate:
    """Keys within [q - left, q + right] (right defaults to left): flash-attn's window_size=(left, right)."""
    right = left if right is None else right
    return lambda q, k: (k >= q - left) & (k <= q + right)


def global_tokens(n: int) -> Predicate:
    """The first n positions attend to, and are attended by, every position."""
    return lambda q, k: ((q >= 0) & (q < n)) | (k < n)


def document(doc_ids: torch.Tensor) -> Predicate:
    """Attend only within the same document; doc_ids[p] is the document of position p."""
    return lambda q, k: (q >= 0) & (doc_ids[q.clamp(min=0)] == doc_ids[k])


def within(length: int) -> Predicate:
    """Padding: the first `length` positions of a padded sequence, queries and keys alike (a padded query
    sees nothing, so its output is zero; no query sees a padded key)."""
    return lambda q, k: (q >= 0) & (q < length) & (k < length)


def block_layout(layout: torch.Tensor, block_size: int) -> Predicate:
    """layout[qb, kb] says whether query block qb may attend key block kb; a (heads, qb, kb) layout gives
    each head its own pattern."""
    if layout.dim() == 3:
        return per_head(lambda q, k, h: (q >= 0) & layout[h, q.clamp(min=0) // block_size, k // block_size],
                        layout.shape[0])
    return lambda q, k: (q >= 0) & layout[q.clamp(min=0) // block_size, k // block_size]


def _combine(preds: tuple[Predicate, ...], join) -> Predicate:
    heads = {heads_of(p) for p in preds} - {None}
    if len(heads) > 1:
        raise ValueError(f"cannot combine per-head patterns of {sorted(heads)} heads")

    def pred(q, k, head=None):
        out = evaluate(preds[0], q, k, head)
        for p in preds[1:]:
            out = join(out, evaluate(p, q, k, head))
        return out

    return per_head(pred, heads.pop()) if heads else lambda q, k: pred(q, k)


def all_of(*preds: Predicate) -> Predicate:
    return _combine(preds, torch.logical_and)


def any_of(*preds: Predicate) -> Predicate:
    return _combine(preds, torch.logical_or)


def nonnegative() -> Predicate:
    """Queries aligned to negative positions (n_q > n_k) see nothing."""
    return lambda q, k: q >= 0


def dense(pred: Predicate, n_q: int, n_k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Materialize a predicate: (n_q, n_k) bool, or (n_heads, n_q, n_k) for a per-head predicate."""
    q_pos = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)
    k_pos = torch.arange(n_k, device=device)[None, :]
    heads = heads_of(pred)
    if heads is None:
        return pred(q_pos, k_pos).expand(n_q, n_k)
    head = torch.arange(heads, device=device)[:, None, None]
    return pred(q_pos[None], k_pos[None], head).expand(heads, n_q, n_k)


def flex_mask_mod(pred: Predicate, n_q: int, n_k: int):
    """The predicate as FlexAttention's mask_mod(b, h, q_idx, kv_idx), with the same alignment."""
    offset = n_k - n_q

    def mask_mod(b, h, q_idx, kv_idx):
        return evaluate(pred, q_idx + offset, kv_idx, h)

    return mask_mod


def visible_pairs(mask: torch.Tensor) -> int:
    """Number of (query, key) pairs a mask lets through, summed over its heads: the basis of exact FLOP
    counts."""
    return int(mask.sum().item())
