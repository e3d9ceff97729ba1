"""Ready-made score_mods and mask_mods, and PyTorch's mask combinators.

Each is a plain Python function with PyTorch's signature, so it works with flexattn and with
torch.nn.attention.flex_attention alike. The ones the library has prebuilt kernels for carry a
`_flexattn_stock` tag: flexattn then runs its compiled-in kernels (no compiler at run time)
when the (score_mod, mask_mod) pair is one of the prebuilt pairs (`PREBUILT_PAIRS`); any other
pair is traced into a runtime variant like a user's function.
"""

from __future__ import annotations

import torch

# (score stock name, mask stock name) pairs with kernels in the library (C++
# include/flexattn/detail/variants.h): the only pairs that run without a compiler at run time.
PREBUILT_PAIRS = frozenset({
    ("noop", "noop"), ("noop", "causal"), ("noop", "sliding_window"), ("noop", "prefix_lm"),
    ("noop", "document"), ("noop", "causal_document"), ("alibi", "causal"), ("softcap", "noop"),
})


def _tag(fn, name, param=None):
    fn._flexattn_stock = (name, param)
    return fn


def noop_mask(b, h, q_idx, kv_idx):
    """Keeps every score (as torch.nn.attention.flex_attention.noop_mask)."""
    return q_idx >= 0  # true everywhere, with the index tensors' shape when called on tensors


_tag(noop_mask, "noop")


def causal(b, h, q_idx, kv_idx):
    """mask_mod: a query sees itself and the keys before it (kv_idx <= q_idx)."""
    return q_idx >= kv_idx


_tag(causal, "causal")


def _int_param(fn, name, value, lo):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"flexattn.{fn}: {name} is {value!r}; expected an int >= {lo}")
    return value


def sliding_window(window: int):
    """mask_mod: the query and the `window` keys before it (0 <= q_idx - kv_idx <= window)."""
    window = _int_param("sliding_window", "window", window, 0)

    def sliding_window_mask(b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        return (d >= 0) & (d <= window)

    return _tag(sliding_window_mask, "sliding_window", window)


def prefix_lm(prefix_len: int):
    """mask_mod: keys before prefix_len are seen by every query, later keys causally."""
    prefix_len = _int_param("prefix_lm", "prefix_len", prefix_len, 0)

    def prefix_lm_mask(b, h, q_idx, kv_idx):
        return (kv_idx < prefix_len) | (kv_idx <= q_idx)

    return _tag(prefix_lm_mask, "prefix_lm", prefix_len)


def document(doc_ids: torch.Tensor):
    """mask_mod: a query sees the keys of its own document (doc_ids[q_idx] == doc_ids[kv_idx]).

    doc_ids: one integer id per position, a 1-D tensor on the attention's device, at least as
    long as the longer of the query and key sequences.
    """
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.dim() != 1 or doc_ids.is_floating_point():
        raise ValueError("flexattn.document: doc_ids must be a 1-D integer tensor")

    def document_mask(b, h, q_idx, kv_idx):
        return doc_ids[q_idx] == doc_ids[kv_idx]

    return _tag(document_mask, "document", doc_ids)


def and_masks(*mask_mods):
    """mask_mod true where every one of mask_mods is (as PyTorch's and_masks)."""
    if not all(callable(m) for m in mask_mods):
        raise ValueError("flexattn.and_masks: every argument must be a mask_mod")

    def and_mask(b, h, q_idx, kv_idx):
        result = b.new_ones(()).bool() if isinstance(b, torch.Tensor) else True
        for m in mask_mods:
            result = result & m(b, h, q_idx, kv_idx)
        return result

    tags = [getattr(m, "_flexattn_stock", None) for m in mask_mods]
    names = sorted(t[0] for t in tags if t is not None) if None not in tags else None
    if names == ["causal", "document"]:
        _tag(and_mask, "causal_document", next(t[1] for t in tags if t[0] == "document"))
    return and_mask


def or_masks(*mask_mods):
    """mask_mod true where any one of mask_mods is (as PyTorch's or_masks)."""
    if not all(callable(m) for m in mask_mods):
        raise ValueError("flexattn.or_masks: every argument must be a mask_mod")

    def or_mask(b, h, q_idx, kv_idx):
        result = b.new_zeros(()).bool() if isinstance(b, torch.Tensor) else False
        for m in mask_mods:
            result = result | m(b, h, q_idx, kv_idx)
        return result

    return or_mask


def noop_score(score, b, h, q_idx, kv_idx):
    """score_mod that leaves the score as it is."""
    return score


_tag(noop_score, "noop")


def alibi(num_heads: int):
    """score_mod: score + slope(h) * (kv_idx - q_idx), slope(h) = 2^(-8 (h + 1) / num_heads)."""
    num_heads = _int_param("alibi", "num_heads", num_heads, 1)

    def alibi_score(score, b, h, q_idx, kv_idx):
        slope = torch.exp2(-8.0 * (h + 1) / num_heads)
        return score + slope * (kv_idx - q_idx)

    return _tag(alibi_score, "alibi", num_heads)


def softcap(cap: float):
    """score_mod: cap * tanh(score / cap)."""
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not (0 < cap < float("inf")):
        raise ValueError(f"flexattn.softcap: cap is {cap!r}; expected a finite number > 0")
    cap = float(cap)

    def softcap_score(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    return _tag(softcap_score, "softcap", cap)


def relative_position(score, b, h, q_idx, kv_idx):
    """score_mod: score + (q_idx - kv_idx)."""
    return score + (q_idx - kv_idx)
