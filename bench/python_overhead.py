"""What the Python package adds per call over the C++ front door, measured in one process.

For each case the same flex_attention call runs `--calls` times through the C++ front door
(flexattn._C._time_front_door: flex_attention(q, k, v, score_mod, block_mask) with outputs
allocated per call) and through flexattn.flex_attention; prints both means and the difference.
Small shapes by default, where the overhead is what shows (issue 12: <= 20 us per call); at
the GPU benchmark's shapes the ratio column is what counts (issue 12: within 3%).

  python bench/python_overhead.py [--device cpu|cuda] [--L 16] [--D 16] [--heads 2]
                                  [--dtype float32|bfloat16|float16] [--calls 5000]
"""

import argparse
import time

import torch

import flexattn
from flexattn import _api


def shifted(score, b, h, q_idx, kv_idx):  # a traced score_mod
    return score - 0.125 * (q_idx - kv_idx)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--D", type=int, default=16)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
        flexattn_threads = "1 torch thread"
    else:
        flexattn_threads = torch.cuda.get_device_name()
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    q, k, v = (torch.randn(1, args.heads, args.L, args.D, generator=g).to(dev, dtype)
               for _ in range(3))
    causal = flexattn.create_block_mask(flexattn.causal, 1, 1, args.L, args.L, device=dev)
    cases = [("dense, no score_mod", None, None), ("stock causal", None, causal),
             ("traced score_mod + causal", shifted, causal)]
    print(f"flexattn Python overhead per call ({args.device}, {flexattn_threads}, "
          f"q/k/v [1, {args.heads}, {args.L}, {args.D}] {args.dtype}, {args.calls} calls)")
    print(f"{'case':28s} {'C++ us':>10s} {'Python us':>10s} {'added us':>9s} {'C++/Py':>7s}")
    for name, score_mod, bm in cases:
        plan = _api._plan(score_mod, bm, _api._norm_device(dev), None, False, True)
        lists = bm._data if bm is not None else None
        for _ in range(2):  # warm: compile, caches, allocator
            cpp = flexattn._C._time_front_door(q, k, v, plan.score, plan.mask, lists, 200)
            flexattn.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm)
        cpp = flexattn._C._time_front_door(q, k, v, plan.score, plan.mask, lists, args.calls)
        start = time.perf_counter()
        for _ in range(args.calls):
            flexattn.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        py = (time.perf_counter() - start) / args.calls
        print(f"{name:28s} {cpp * 1e6:10.2f} {py * 1e6:10.2f} {(py - cpp) * 1e6:9.2f} "
              f"{cpp / py:7.3f}")


if __name__ == "__main__":
    main()
