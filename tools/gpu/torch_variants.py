"""The stock variants as PyTorch flex_attention functors, shared by the PyTorch cross-check
(tools/gpu/check_vs_torch.py) and the peer benchmark (bench/gpu_peers.py). The names and default
parameters are read from the C++ table, tools/stock_variants.h, so both sides mean the same thing
by each name; importing this module fails when a C++ variant has no functors here."""
import os
import re

import torch

_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "stock_variants.h")


def _read_table(path=_TABLE):
    text = open(path, encoding="utf-8").read()

    def names(array):
        m = re.search(array + r"\[\]\s*=\s*\{(.*?)\};", text, re.S)
        return re.findall(r'"(\w+)"', m.group(1))

    def number(name):
        return float(re.search(name + r"\s*=\s*([0-9.]+)f?;", text).group(1))

    return (names("kStockVariantNames"), names("kBenchVariantNames"), int(number("kDefaultWindow")),
            int(number("kDefaultPrefix")), number("kDefaultCap"))


VARIANTS, BENCH_VARIANTS, WINDOW, PREFIX, CAP = _read_table()


def mods(variant, H, doc):
    """(score_mod, mask_mod) in flex_attention's calling convention. The same functions also run
    on broadcast index tensors for the dense float64 oracle."""
    slopes = torch.exp2(-8.0 * torch.arange(1, H + 1, device="cuda", dtype=torch.float32) / H)

    def causal(b, h, q, kv):
        return q >= kv

    def window(b, h, q, kv):
        return (q >= kv) & (q - kv <= WINDOW)

    def prefix_lm(b, h, q, kv):
        return (kv < PREFIX) | (q >= kv)

    def document(b, h, q, kv):
        return doc[q] == doc[kv]

    def causal_document(b, h, q, kv):
        return (q >= kv) & (doc[q] == doc[kv])

    def alibi(score, b, h, q, kv):
        return score + slopes[h] * (kv - q)

    def softcap(score, b, h, q, kv):
        return CAP * torch.tanh(score / CAP)

    table = {
        "noop": (None, None),
        "causal": (None, causal),
        "sliding_window": (None, window),
        "prefix_lm": (None, prefix_lm),
        "document": (None, document),
        "causal_document": (None, causal_document),
        "alibi_causal": (alibi, causal),
        "softcap": (softcap, None),
    }
    if sorted(table) != sorted(VARIANTS):
        raise RuntimeError(f"torch_variants.py covers {sorted(table)}, but {_TABLE} lists "
                           f"{sorted(VARIANTS)}")
    return table[variant]
