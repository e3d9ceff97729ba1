"""The stock variants as PyTorch flex_attention functors, shared by the PyTorch cross-check
(tools/gpu/check_vs_torch.py) and the peer benchmark (bench/gpu_peers.py). Names and parameters
match tools/gpu/stock_variants.h."""
import torch

WINDOW = 1024
CAP = 30.0


def mods(variant, H, doc):
    """(score_mod, mask_mod) in flex_attention's calling convention. The same functions also run
    on broadcast index tensors for the dense float64 oracle."""
    slopes = torch.exp2(-8.0 * torch.arange(1, H + 1, device="cuda", dtype=torch.float32) / H)

    def causal(b, h, q, kv):
        return q >= kv

    def window(b, h, q, kv):
        return (q >= kv) & (q - kv <= WINDOW)

    def document(b, h, q, kv):
        return doc[q] == doc[kv]

    def alibi(score, b, h, q, kv):
        return score + slopes[h] * (kv - q)

    def softcap(score, b, h, q, kv):
        return CAP * torch.tanh(score / CAP)

    return {
        "noop": (None, None),
        "causal": (None, causal),
        "sliding_window": (None, window),
        "document": (None, document),
        "alibi_causal": (alibi, causal),
        "softcap": (softcap, None),
    }[variant]
