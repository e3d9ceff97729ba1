#!/usr/bin/env python3
"""The peers of flexattn's GPU benchmark, timed on the same card in the same run.

  Flex   torch.compile(flex_attention) with its create_block_mask (every variant)
  FA2    SDPA with SDPBackend.FLASH_ATTENTION (no mask and causal only)
  cuDNN  SDPA with SDPBackend.CUDNN_ATTENTION (no mask and causal only)

bf16, H=16, B = tokens / L, D in {128, 64}, L in {16384, 8192, 2048}; forward and backward, each
the median of CUDA-event timings after warm-up. FLOPs as design.md section 4 and
bench/gpu/bench_gpu.cpp: forward 4*B*H*L^2*D*density, backward 2.5x, density = kept fraction of
the score matrix. Variants and parameters come from tools/stock_variants.h. Also times Flex's
(eager) create_block_mask at L=16384 for causal and document.

Writes CSV (impl,variant,D,L,B,H,dir,ms,tflops,density) for bench/merge_gpu.py.
torch.compile costs: one compile per (variant, shape); the forward is timed on the training graph
(inputs requiring grad) so that the backward needs no second compile. Everything is compiled
first; with --go-file the timings wait for that file (tools/gpu/run_all.sh compiles the peers while
flexattn builds, then times them on a quiet machine).
"""
import argparse
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "gpu"))
from torch_variants import BENCH_VARIANTS as VARIANTS, CAP, WINDOW, mods  # noqa: E402
DOCS = 16


def equal_documents(L, docs=DOCS):
    length = -(-L // docs)
    return (torch.arange(L, device="cuda") // length).to(torch.int32)


def kept_fraction(variant, L, doc):
    if variant in ("noop", "softcap"):
        return 1.0
    if variant in ("causal", "alibi_causal"):
        return (L + 1) / (2 * L)
    if variant == "sliding_window":
        kept = sum(min(q + 1, WINDOW + 1) for q in range(L))
        return kept / (L * L)
    if variant == "document":
        counts = torch.bincount(doc.long()).double()
        return (counts * counts).sum().item() / (L * L)
    raise ValueError(variant)


def median_ms(fn, warmup=3, target_ms=300.0, min_reps=5, max_reps=30):
    """Median over reps of the mean time of `inner` back-to-back calls between two CUDA events;
    `inner` makes each sample >= 2 ms so launch overhead hides behind queued work (as in
    bench_gpu.cpp)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    a = torch.cuda.Event(enable_timing=True)
    b = torch.cuda.Event(enable_timing=True)

    def sample(inner):
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / inner

    est = max(sample(1), 1e-3)
    inner = max(1, int(2.0 / est + 0.999))
    reps = min(max(int(target_ms / (est * inner)), min_reps), max_reps)
    return statistics.median(sample(inner) for _ in range(reps))


class Csv:
    def __init__(self, path):
        self.f = open(path, "w") if path else None
        if self.f:
            self.f.write("impl,variant,D,L,B,H,dir,ms,tflops,density\n")

    def comment(self, s):
        if self.f:
            self.f.write(f"# {s}\n")
            self.f.flush()

    def add(self, impl, variant, D, L, B, H, direction, ms, flops, density):
        tf = flops / (ms * 1e-3) / 1e12 if flops else 0.0
        print(f"{impl:6s} {variant:15s} D={D:<3d} L={L:<6d} B={B:<3d} {direction:10s} "
              f"{ms:9.3f} ms {tf:8.1f} TFLOP/s", flush=True)
        if self.f:
            self.f.write(f"{impl},{variant},{D},{L},{B},{H},{direction},{ms:.6f},{tf:.3f},"
                         f"{density:.6f}\n")
            self.f.flush()


def prepare_flex(flex, variant, q, k, v, dout, doc, bwd):
    """Compiles Flex for one (variant, shape) and returns the closures to time."""
    B, H, L, D = q.shape
    score_mod, mask_mod = mods(variant, H, doc)
    bm = create_block_mask(mask_mod, None, None, L, L, device="cuda") if mask_mod else None
    t0 = time.time()
    out = flex(q, k, v, score_mod=score_mod, block_mask=bm)  # compiles (training graph)
    if bwd:
        torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
    torch.cuda.synchronize()
    print(f"flex   {variant:15s} D={D:<3d} L={L:<6d} compile + first call {time.time() - t0:.1f} s",
          flush=True)
    fwd = lambda: flex(q, k, v, score_mod=score_mod, block_mask=bm)
    back = (lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)) if bwd else None
    return fwd, back


def time_flex(csv, variant, q, doc, fwd, back):
    B, H, L, D = q.shape
    density = kept_fraction(variant, L, doc)
    flops = 4.0 * B * H * L * L * D * density
    csv.add("flex", variant, D, L, B, H, "fwd", median_ms(fwd), flops, density)
    if back is not None:
        csv.add("flex", variant, D, L, B, H, "bwd", median_ms(back), 2.5 * flops, density)


def bench_sdpa(csv, impl, backend, variant, q, k, v, dout, bwd):
    B, H, L, D = q.shape
    causal = variant == "causal"
    density = kept_fraction(variant, L, None)
    flops = 4.0 * B * H * L * L * D * density
    with sdpa_kernel([backend]):
        def fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        ms = median_ms(fwd)
        csv.add(impl, variant, D, L, B, H, "fwd", ms, flops, density)
        if bwd:
            out = fwd()
            ms = median_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
            csv.add(impl, variant, D, L, B, H, "bwd", ms, 2.5 * flops, density)


def bench_mask_build(csv):
    L = 16384
    doc = equal_documents(L)
    for variant in ("causal", "document"):
        _, mask_mod = mods(variant, 1, doc)
        t = []
        for i in range(8):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            create_block_mask(mask_mod, None, None, L, L, device="cuda")
            torch.cuda.synchronize()
            if i >= 2:
                t.append((time.perf_counter() - t0) * 1e3)
        ms = statistics.median(t)
        print(f"flex   block mask {variant:10s} L={L} (eager create_block_mask): {ms * 1e3:.1f} us",
              flush=True)
        csv.add("flex", variant, 0, L, 1, 1, "block_mask", ms, 0.0, 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", default="")
    ap.add_argument("--quick", action="store_true", help="D=128, L=16384 only")
    ap.add_argument("--dims", default="128,64")
    ap.add_argument("--lens", default="16384,8192,2048")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-bwd", action="store_true")
    ap.add_argument("--compile-budget-s", type=float, default=300.0,
                    help="compile no further shapes once this much time is spent")
    ap.add_argument("--budget-s", type=float, default=150.0,
                    help="time no further cases once the timing phase has spent this much")
    ap.add_argument("--go-file", default="",
                    help="after compiling, wait until this file exists before timing")
    ap.add_argument("--go-timeout-s", type=float, default=480.0)
    args = ap.parse_args()
    if args.quick:
        args.dims, args.lens = "128", "16384"
    bwd = not args.no_bwd

    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 512)
    warnings.filterwarnings("ignore")
    flex = torch.compile(flex_attention, dynamic=False)

    csv = Csv(args.csv)
    dev = torch.cuda.get_device_name()
    csv.comment(f"device {dev}")
    csv.comment(f"torch {torch.__version__}")
    print(f"gpu_peers on {dev}, torch {torch.__version__}", flush=True)
    start = time.time()
    # Phase 1: compile every (variant, shape). Needs the GPU only lightly, so it may overlap the
    # build of flexattn; timings wait for --go-file (phase 2), when the CPU is quiet again.
    torch.manual_seed(0)
    jobs = []  # (shape tensors, doc, variant, fwd, back)
    for D in (int(x) for x in args.dims.split(",")):
        for L in (int(x) for x in args.lens.split(",")):
            if time.time() - start > args.compile_budget_s:
                print(f"peers  D={D} L={L} skipped: compile budget {args.compile_budget_s:.0f} s "
                      "spent", flush=True)
                continue
            B = max(1, args.tokens // L)
            H = args.heads
            mk = lambda: (torch.rand(B, H, L, D, device="cuda") * 3.4641016 - 1.7320508).to(
                torch.bfloat16).requires_grad_(bwd)
            t = (mk(), mk(), mk(), mk().detach())
            doc = equal_documents(L)
            for variant in args.variants.split(","):
                try:
                    fwd, back = prepare_flex(flex, variant, *t, doc, bwd)
                    jobs.append((t, doc, variant, fwd, back))
                except Exception as e:
                    print(f"flex   {variant:15s} D={D:<3d} L={L:<6d} FAILED: {type(e).__name__}: "
                          f"{str(e)[:300]}", flush=True)
                if variant in ("noop", "causal"):
                    jobs.append((t, doc, variant, None, None))
    print(f"gpu_peers: compiled in {time.time() - start:.1f} s", flush=True)

    if args.go_file:
        waited = time.time()
        while not os.path.exists(args.go_file) and time.time() - waited < args.go_timeout_s:
            time.sleep(0.5)
        print(f"gpu_peers: waited {time.time() - waited:.1f} s for {args.go_file}", flush=True)
    timing_start = time.time()
    try:
        bench_mask_build(csv)
    except Exception as e:
        print(f"flex   block mask build FAILED: {type(e).__name__}: {e}", flush=True)
    for (q, k, v, dout), doc, variant, fwd, back in jobs:
        B, H, L, D = q.shape
        if time.time() - timing_start > args.budget_s:
            print(f"peers  {variant} D={D} L={L} skipped: time budget {args.budget_s:.0f} s spent",
                  flush=True)
            continue
        if fwd is not None:
            try:
                time_flex(csv, variant, q, doc, fwd, back)
            except Exception as e:
                print(f"flex   {variant:15s} D={D:<3d} L={L:<6d} FAILED: {type(e).__name__}: "
                      f"{str(e)[:300]}", flush=True)
            continue
        for impl, backend in (("fa2", SDPBackend.FLASH_ATTENTION),
                              ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                bench_sdpa(csv, impl, backend, variant, q, k, v, dout, bwd)
            except Exception as e:
                print(f"{impl:6s} {variant:15s} D={D:<3d} L={L:<6d} FAILED: "
                      f"{type(e).__name__}: {str(e)[:300]}", flush=True)
    print(f"gpu_peers: done in {time.time() - start:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
