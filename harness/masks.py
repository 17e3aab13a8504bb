"""Attention masks as small composable predicates over absolute positions.

A predicate takes broadcastable integer tensors `(q_pos, k_pos)` and returns a bool tensor,
True = the query may attend to the key. The same predicate builds a dense (n_q, n_k) mask for the
reference path and a FlexAttention `mask_mod` for the fast path, so both compute one pattern.

Alignment: with n_q queries against n_k keys, query i sits at position i + (n_k - n_q)
("bottom-right", as in FlashAttention and KV-cache decoding). For n_q == n_k that is position i.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predicate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def causal() -> Predicate:
    return lambda q, k: k <= q


def sliding_window(window: int) -> Predicate:
    """|i - j| <= window."""
    return lambda q, k: (q - k).abs() <= window


def global_tokens(n: int) -> Predicate:
    """The first n positions attend to, and are attended by, every position."""
    return lambda q, k: (q < n) | (k < n)


def document(doc_ids: torch.Tensor) -> Predicate:
    """Attend only within the same document; doc_ids[p] is the document of position p."""
    return lambda q, k: doc_ids[q.clamp(min=0)] == doc_ids[k]


def block_layout(layout: torch.Tensor, block_size: int) -> Predicate:
    """layout[qb, kb] says whether query block qb may attend key block kb."""
    return lambda q, k: layout[q.clamp(min=0) // block_size, k // block_size]


def all_of(*preds: Predicate) -> Predicate:
    def pred(q, k):
        out = preds[0](q, k)
        for p in preds[1:]:
            out = out & p(q, k)
        return out

    return pred


def any_of(*preds: Predicate) -> Predicate:
    def pred(q, k):
        out = preds[0](q, k)
        for p in preds[1:]:
            out = out | p(q, k)
        return out

    return pred


def nonnegative() -> Predicate:
    """Queries aligned to negative positions (n_q > n_k) see nothing."""
    return lambda q, k: q >= 0


def dense(pred: Predicate, n_q: int, n_k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Materialize the (n_q, n_k) bool mask of a predicate."""
    q_pos = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)
    k_pos = torch.arange(n_k, device=device)[None, :]
    return (pred(q_pos, k_pos) & (q_pos >= 0)).expand(n_q, n_k)


def flex_mask_mod(pred: Predicate, n_q: int, n_k: int):
    """The predicate as FlexAttention's mask_mod(b, h, q_idx, kv_idx), with the same alignment."""
    offset = n_k - n_q

    def mask_mod(b, h, q_idx, kv_idx):
        q_pos = q_idx + offset
        return pred(q_pos, kv_idx) & (q_pos >= 0)

    return mask_mod


def visible_pairs(mask: torch.Tensor) -> int:
    """Number of (query, key) pairs a mask lets through: the basis of exact FLOP counts."""
    return int(mask.sum().item())
