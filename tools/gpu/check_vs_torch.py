#!/usr/bin/env python3
"""Large-shape GPU check of flexattn against PyTorch, on the very same inputs.

Two oracles per case: PyTorch's flex_attention under torch.compile (bf16, the peer), and a plain
PyTorch float64 computation (dense scores, the same score_mod / mask_mod functions, autograd).
flexattn passes a tensor when its relative L2 error against float64 is at most
K x (Flex's error against float64) + ATOL: FlashAttention's rule with the peer as the same-precision
baseline.

  check_vs_torch.py gen DIR [--quick]   inputs + both oracles' results (needs the GPU; may run
                                        while flexattn builds)
  flexattn_gpu_run_case DIR/*/          flexattn's outputs (tools/gpu/run_case.cpp)
  (PAGED_CASES: decode over a paged KV cache, forward only, checked the same way)
  check_vs_torch.py compare DIR         prints the table; exit status 1 on any failure

Variant names and parameters come from tools/stock_variants.h (through torch_variants.py).
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch

K = 2.0
ATOL = 1e-4
from torch_variants import CAP, WINDOW, mods  # noqa: E402  (same folder)

CASES = [
    dict(name="causal", variant="causal", B=1, Hq=16, Hkv=16, L=4096, D=128),
    dict(name="document", variant="document", B=1, Hq=16, Hkv=16, L=4096, D=128),
    dict(name="alibi_causal", variant="alibi_causal", B=1, Hq=16, Hkv=16, L=4096, D=128),
    dict(name="softcap", variant="softcap", B=1, Hq=16, Hkv=16, L=4096, D=128),
    dict(name="sliding_window_gqa_d64", variant="sliding_window", B=2, Hq=16, Hkv=4, L=4096, D=64),
]
# Decode over a paged KV cache (forward only): q holds each sequence's newest Lq tokens, so the
# mods see q_idx = kv_len[b] - Lq + i. run_case builds the cache from k / v in shuffled page
# order (NaN in every unused page row), appends the last Lq tokens with append_kv, and attends.
PAGED_CASES = [
    dict(name="paged_decode_gqa_p16", variant="causal", B=4, Hq=32, Hkv=8, Lq=1, D=128, page=16,
         kv_len=[1000, 4096, 37, 2500]),
    dict(name="paged_spec_window_p128", variant="sliding_window", B=3, Hq=16, Hkv=4, Lq=5, D=64,
         page=128, kv_len=[3000, 700, 5000]),
    dict(name="paged_alibi_p32", variant="alibi_causal", B=2, Hq=8, Hkv=8, Lq=3, D=128, page=32,
         kv_len=[513, 2049]),
]
QUICK = {"causal", "document", "paged_decode_gqa_p16"}
TENSORS = ["out", "lse", "dq", "dk", "dv"]
PAGED_TENSORS = ["out", "lse"]


def dense_f64(q, k, v, dout, score_mod, mask_mod, scale):
    """Float64 attention and its gradients, one (b, query head) at a time to bound memory."""
    B, Hq, L, D = q.shape
    G = Hq // k.shape[1]
    res = {n: [] for n in ("out", "lse", "dq")}
    dk = torch.zeros(k.shape, dtype=torch.float64, device=q.device)
    dv = torch.zeros(v.shape, dtype=torch.float64, device=q.device)
    qi = torch.arange(L, device=q.device)[:, None]
    ki = torch.arange(L, device=q.device)[None, :]
    for b in range(B):
        for h in range(Hq):
            bt = torch.tensor(b, device=q.device)
            ht = torch.tensor(h, device=q.device)
            q64 = q[b, h].double().requires_grad_()
            k64 = k[b, h // G].double().requires_grad_()
            v64 = v[b, h // G].double().requires_grad_()
            s = (q64 @ k64.T) * scale
            if score_mod is not None:
                s = score_mod(s, bt, ht, qi, ki)
            if mask_mod is not None:
                s = s.masked_fill(~mask_mod(bt, ht, qi, ki), float("-inf"))
            lse = torch.logsumexp(s, dim=-1)
            out = torch.softmax(s, dim=-1) @ v64
            gq, gk, gv = torch.autograd.grad(out, (q64, k64, v64), dout[b, h].double())
            res["out"].append(out.detach())
            res["lse"].append(lse.detach())
            res["dq"].append(gq)
            dk[b, h // G] += gk
            dv[b, h // G] += gv
    shape_q = (B, Hq, L, D)
    return {
        "out": torch.stack(res["out"]).reshape(shape_q),
        "lse": torch.stack(res["lse"]).reshape(B, Hq, L),
        "dq": torch.stack(res["dq"]).reshape(shape_q),
        "dk": dk,
        "dv": dv,
    }


def flex_bf16(flex, q, k, v, dout, score_mod, mask_mod, G):
    from torch.nn.attention.flex_attention import create_block_mask

    L = q.shape[2]
    bm = create_block_mask(mask_mod, None, None, L, L, device="cuda") if mask_mod else None
    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, lse = flex(qq, kk, vv, score_mod=score_mod, block_mask=bm, enable_gqa=G > 1,
                        return_lse=True)
    dq, dk, dv = torch.autograd.grad(out, (qq, kk, vv), dout)
    return {"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv}


def gen(args):
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.config.cache_size_limit = 64
    flex = torch.compile(flex_attention, dynamic=False)
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"check_vs_torch gen: seed {seed}, torch {torch.__version__}", flush=True)
    for c in CASES:
        if args.quick and c["name"] not in QUICK:
            continue
        t0 = time.time()
        d = os.path.join(args.dir, c["name"])
        os.makedirs(d, exist_ok=True)
        B, Hq, Hkv, L, D = c["B"], c["Hq"], c["Hkv"], c["L"], c["D"]
        mk = lambda H: torch.randn(B, H, L, D, device="cuda").to(torch.bfloat16)
        q, k, v, dout = mk(Hq), mk(Hkv), mk(Hkv), mk(Hq)
        doc = None
        if c["variant"] == "document":  # 8 documents of random lengths
            cuts = torch.sort(torch.randperm(L - 1)[:7] + 1).values
            doc = torch.zeros(L, dtype=torch.int32)
            for cut in cuts:
                doc[cut:] += 1
            doc.numpy().tofile(os.path.join(d, "doc.bin"))
            doc = doc.cuda()
        for name, t in (("q", q), ("k", k), ("v", v), ("dout", dout)):
            t.float().cpu().numpy().tofile(os.path.join(d, f"{name}.bin"))
        with open(os.path.join(d, "meta.txt"), "w") as f:
            f.write(f"variant={c['variant']} B={B} Hq={Hq} Hkv={Hkv} L={L} D={D} dtype=bf16 "
                    f"window={WINDOW} cap={CAP}\n")
        score_mod, mask_mod = mods(c["variant"], Hq, doc)
        scale = 1.0 / D**0.5
        ref = dense_f64(q, k, v, dout, score_mod, mask_mod, scale)
        torch.save({n: t.float().cpu() for n, t in ref.items()}, os.path.join(d, "f64.pt"))
        try:
            fl = flex_bf16(flex, q, k, v, dout, score_mod, mask_mod, Hq // Hkv)
            torch.save({n: t.float().cpu() for n, t in fl.items()}, os.path.join(d, "flex.pt"))
        except Exception as e:  # the f64 oracle alone still judges flexattn
            print(f"  {c['name']}: torch flex_attention failed: {type(e).__name__}: {e}")
        print(f"  {c['name']}: inputs and oracles written in {time.time() - t0:.1f} s", flush=True)
    for c in PAGED_CASES:
        if not args.quick or c["name"] in QUICK:
            gen_paged(flex, c, os.path.join(args.dir, c["name"]))


def gen_paged(flex, c, d):
    """Inputs and both oracles of one paged decode case, one sequence at a time (its own kv_len)."""
    from torch.nn.attention.flex_attention import create_block_mask

    t0 = time.time()
    os.makedirs(d, exist_ok=True)
    B, Hq, Hkv, Lq, D, lens = c["B"], c["Hq"], c["Hkv"], c["Lq"], c["D"], c["kv_len"]
    Lmax = max(lens)
    q = torch.randn(B, Hq, Lq, D, device="cuda").to(torch.bfloat16)
    k = torch.randn(B, Hkv, Lmax, D, device="cuda").to(torch.bfloat16)
    v = torch.randn(B, Hkv, Lmax, D, device="cuda").to(torch.bfloat16)
    for name, t in (("q", q), ("k", k), ("v", v)):
        t.float().cpu().numpy().tofile(os.path.join(d, f"{name}.bin"))
    with open(os.path.join(d, "meta.txt"), "w") as f:
        f.write(f"kind=paged variant={c['variant']} B={B} Hq={Hq} Hkv={Hkv} Lq={Lq} D={D} "
                f"page={c['page']} kv_len={','.join(map(str, lens))} L={Lmax} dtype=bf16 "
                f"window={WINDOW} cap={CAP}\n")
    score_mod, mask_mod = mods(c["variant"], Hq, None)
    scale = 1.0 / D**0.5
    ref = {"out": [], "lse": []}
    fl = {"out": [], "lse": []}
    for b in range(B):
        L, off = lens[b], lens[b] - Lq
        sm = (lambda s, bb, h, qi, ki: score_mod(s, bb, h, qi + off, ki)) if score_mod else None
        mm = (lambda bb, h, qi, ki: mask_mod(bb, h, qi + off, ki)) if mask_mod else None
        qb, kb, vb = q[b:b + 1], k[b:b + 1, :, :L], v[b:b + 1, :, :L]
        G = Hq // Hkv
        s = (qb.double() @ kb.double().repeat_interleave(G, 1).transpose(-1, -2)) * scale
        qi = torch.arange(Lq, device="cuda")[:, None]
        ki = torch.arange(L, device="cuda")[None, :]
        ht = torch.arange(Hq, device="cuda")[:, None, None]
        bt = torch.tensor(0, device="cuda")
        if sm is not None:
            s = sm(s, bt, ht, qi, ki)
        if mm is not None:
            s = s.masked_fill(~mm(bt, ht, qi, ki), float("-inf"))
        ref["lse"].append(torch.logsumexp(s, dim=-1))
        ref["out"].append(torch.softmax(s, dim=-1) @ vb.double().repeat_interleave(G, 1))
        try:
            bm = create_block_mask(mm, None, None, Lq, L, device="cuda") if mm else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                o, lse = flex(qb, kb, vb, score_mod=sm, block_mask=bm, enable_gqa=G > 1,
                              return_lse=True)
            fl["out"].append(o)
            fl["lse"].append(lse)
        except Exception as e:  # the f64 oracle alone still judges flexattn
            print(f"  {c['name']}: torch flex_attention failed: {type(e).__name__}: {e}")
            fl = None
            break
    torch.save({n: torch.cat(t).float().cpu() for n, t in ref.items()}, os.path.join(d, "f64.pt"))
    if fl is not None:
        torch.save({n: torch.cat(t).float().cpu() for n, t in fl.items()},
                   os.path.join(d, "flex.pt"))
    print(f"  {c['name']}: inputs and oracles written in {time.time() - t0:.1f} s", flush=True)


def rel_err(a, ref):
    a, ref = a.double(), ref.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def compare(args):
    failed = 0
    rows = []
    for c in CASES + PAGED_CASES:
        d = os.path.join(args.dir, c["name"])
        if not os.path.exists(os.path.join(d, "meta.txt")):
            continue
        paged = "kv_len" in c
        B, Hq, Hkv, D = c["B"], c["Hq"], c["Hkv"], c["D"]
        L = c["Lq"] if paged else c["L"]
        shapes = {"out": (B, Hq, L, D), "lse": (B, Hq, L), "dq": (B, Hq, L, D),
                  "dk": (B, Hkv, L, D), "dv": (B, Hkv, L, D)}
        ref = torch.load(os.path.join(d, "f64.pt"))
        fp = os.path.join(d, "flex.pt")
        fl = torch.load(fp) if os.path.exists(fp) else None
        for t in PAGED_TENSORS if paged else TENSORS:
            path = os.path.join(d, f"{t}.bin")
            if not os.path.exists(path):
                rows.append((c["name"], t, None, None, None, "MISSING"))
                failed += 1
                continue
            ours = torch.from_numpy(np.fromfile(path, dtype=np.float32)).reshape(shapes[t])
            e_ours = rel_err(ours, ref[t])
            e_flex = rel_err(fl[t], ref[t]) if fl is not None else None
            e_cross = rel_err(ours, fl[t]) if fl is not None else None
            bound = K * e_flex + ATOL if e_flex is not None else 1e-2
            ok = e_ours <= bound
            failed += not ok
            rows.append((c["name"], t, e_ours, e_flex, e_cross, "ok" if ok else "FAIL"))

    def f(x):
        return "-" if x is None else f"{x:.2e}"

    print(f"\nflexattn vs PyTorch (relative L2 error; pass: ours~f64 <= {K} x flex~f64 + {ATOL})")
    print(f"{'case':24s} {'tensor':6s} {'ours~f64':>9s} {'flex~f64':>9s} {'ours~flex':>9s}  verdict")
    for r in rows:
        print(f"{r[0]:24s} {r[1]:6s} {f(r[2]):>9s} {f(r[3]):>9s} {f(r[4]):>9s}  {r[5]}")
    print(f"check_vs_torch: {len(rows) - failed}/{len(rows)} passed")
    return 1 if failed or not rows else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["gen", "compare"])
    ap.add_argument("dir")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sys.exit(gen(args) or 0 if args.mode == "gen" else compare(args))


if __name__ == "__main__":
    main()
