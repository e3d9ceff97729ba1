"""The tests' float64 oracle: PyTorch evaluates the same score_mod / mask_mod functions the
package traces, on broadcast index grids, in float64 (the one Python oracle; the C++ tests have
their own in reference/)."""

import math

import torch


def index_grids(B, H, L, S, device="cpu"):
    ar = lambda n: torch.arange(n, device=device, dtype=torch.int64)  # noqa: E731
    return (ar(B).view(B, 1, 1, 1), ar(H).view(1, H, 1, 1), ar(L).view(1, 1, L, 1),
            ar(S).view(1, 1, 1, S))


def reference(q, k, v, score_mod=None, mask_mod=None, scale=None, enable_gqa=False):
    """(out, lse) in float64; differentiable in q, k, v when they require grad."""
    q, k, v = q.double(), k.double(), v.double()
    B, Hq, L, E = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if enable_gqa and Hq != Hkv:
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    b, h, qi, ki = index_grids(B, Hq, L, S, q.device)
    if score_mod is not None:
        s = score_mod(s, b, h, qi, ki).double().expand(B, Hq, L, S)
    if mask_mod is not None:
        keep = torch.as_tensor(mask_mod(b, h, qi, ki), device=q.device).bool()
        s = s.masked_fill(~keep.expand(B, Hq, L, S), -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    dead = torch.isneginf(lse)
    p = torch.exp(s - torch.where(dead, 0.0, lse).unsqueeze(-1))
    out = p @ v
    return out, lse


def rand(*shape, dtype=torch.float32, device="cpu", requires_grad=False, generator=None):
    t = torch.randn(*shape, dtype=torch.float32, generator=generator).to(device=device,
                                                                        dtype=dtype)
    return t.requires_grad_(requires_grad)


def devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out
