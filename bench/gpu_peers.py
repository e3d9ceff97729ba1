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

Decode rows (--rows decode; issue 9's H200 shapes, as bench/gpu/bench_gpu.cpp's bench_decode):
bf16, D=128, Hq=32, Hkv=8, Lq=1 against (a) B=8 Lkv=32768 and (b) B=1 Lkv=131072, no mask, for
cuDNN, FA2 and Flex; and a sliding window of 4096 at (b) for Flex (its block mask built for the
one query at position Lkv-1; SDPA has no window). The figure is the K/V read bandwidth: TB/s =
bytes of the K and V rows attended (B * keys * Hkv * 2 * D * 2) / time, the same count for every
implementation (a backend that needs K/V expanded to Hq heads reads more, but is credited with
the same bytes: the ratios are time ratios). A backend that refuses a shape is recorded as
unavailable (a "# decode: ..." comment line in the CSV), never a crash.

Writes CSV (impl,variant,D,L,B,H,dir,ms,tflops,density,hkv,tbps) for bench/merge_gpu.py; hkv and
tbps are the decode rows' (prefill rows: hkv = H, tbps 0).
torch.compile costs: one compile per (variant, shape); the forward is timed on the training graph
(inputs requiring grad) so that the backward needs no second compile. Everything is compiled
first; with --go-file the timings wait for that file (tools/gpu/run_all.sh compiles the peers while
flexattn builds, then times them on a quiet machine).
"""
import argparse
import functools
import itertools
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
# bench_gpu.cpp's kDecodeHq, kDecodeHkv, kDecodeD, kDecodeWindow and shapes: keep them equal.
DECODE_HQ, DECODE_HKV, DECODE_D = 32, 8, 128
DECODE_WINDOW = 4096
DECODE_SHAPES = ((8, 32768), (1, 131072))  # (B, Lkv): the (a) and (b)


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
            self.f.write("impl,variant,D,L,B,H,dir,ms,tflops,density,hkv,tbps\n")

    def comment(self, s):
        if self.f:
            self.f.write(f"# {s}\n")
            self.f.flush()

    def add(self, impl, variant, D, L, B, H, direction, ms, flops, density, hkv=None, nbytes=0.0):
        tf = flops / (ms * 1e-3) / 1e12 if flops else 0.0
        tbps = nbytes / (ms * 1e-3) / 1e12 if nbytes else 0.0
        hkv = H if hkv is None else hkv
        if nbytes:
            print(f"{impl:6s} {variant:15s} D={D:<3d} L={L:<6d} B={B:<3d} Hkv={hkv:<2d} "
                  f"{direction:15s} {ms:9.4f} ms {tbps:6.2f} TB/s", flush=True)
        else:
            print(f"{impl:6s} {variant:15s} D={D:<3d} L={L:<6d} B={B:<3d} {direction:10s} "
                  f"{ms:9.3f} ms {tf:8.1f} TFLOP/s", flush=True)
        if self.f:
            self.f.write(f"{impl},{variant},{D},{L},{B},{H},{direction},{ms:.6f},{tf:.3f},"
                         f"{density:.6f},{hkv},{tbps:.4f}\n")
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


def decode_bytes(B, keys):
    return B * keys * DECODE_HKV * 2 * DECODE_D * 2


def decode_window(off):
    """The window mask of the one query at position off (flex's q index is 0): it keeps keys
    off-WINDOW .. off, the keys sliding_window(4096) keeps at q_idx = kv_len - 1 on our paged
    path."""
    def window(b, h, q, kv):
        return (q + off >= kv) & (q + off - kv <= DECODE_WINDOW)
    return window


def decode_rotation(nbytes):
    """Copies of K/V to take turns over, so that one call's rows are out of L2 when the next call
    reads its own (bench_gpu.cpp rotates page tables for the same row)."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return 1 if nbytes >= l2 else min(8, int(3 * l2 / nbytes) + 1)


def prepare_decode(flex, compile_budget_s):
    """Inputs of every decode row and the Flex closures, compiled (Flex decode: flex_attention
    with Lq=1 and enable_gqa). Returns [(variant, B, L, keys, sets of (q, k, v), flex_fn)]."""
    jobs = []
    start = time.time()
    for B, L in DECODE_SHAPES:
        mk = lambda h, n: (torch.rand(B, h, n, DECODE_D, device="cuda") * 3.4641016
                           - 1.7320508).to(torch.bfloat16)
        variants = ("noop", "sliding_window") if B == 1 else ("noop",)
        for variant in variants:
            keys = DECODE_WINDOW + 1 if variant == "sliding_window" else L
            compile_flex = time.time() - start <= compile_budget_s
            if not compile_flex:
                print(f"flex   decode {variant} B={B} L={L} skipped: decode compile budget "
                      f"{compile_budget_s:.0f} s spent", flush=True)
                if variant != "noop":
                    continue  # only Flex runs this row
            sets = [(mk(DECODE_HQ, 1), mk(DECODE_HKV, L), mk(DECODE_HKV, L))
                    for _ in range(decode_rotation(decode_bytes(B, keys)))]
            fn = None
            if compile_flex:
                t0 = time.time()
                try:
                    bm = (create_block_mask(decode_window(L - 1), None, None, 1, L, device="cuda")
                          if variant == "sliding_window" else None)
                    fn = functools.partial(flex, block_mask=bm, enable_gqa=True)
                    fn(*sets[0])  # compiles
                    torch.cuda.synchronize()
                    print(f"flex   decode {variant:15s} B={B} L={L} compile + first call "
                          f"{time.time() - t0:.1f} s", flush=True)
                except Exception as e:
                    fn = None
                    print(f"flex   decode {variant:15s} B={B} L={L} FAILED: {type(e).__name__}: "
                          f"{str(e)[:300]}", flush=True)
            jobs.append((variant, B, L, keys, sets, fn))
    return jobs


def first_line(e):
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def sdpa_decode_ms(q, k, v):
    """(how, ms or None) of SDPA under the backend the caller selected: with enable_gqa=True, else
    on K/V expanded to Hq heads (freed on return: 2 GB each at B=8), else unavailable."""
    try:
        return "enable_gqa=True", median_ms(
            lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    except Exception as e:  # RuntimeError "No available kernel", or an old torch
        refused = first_line(e)
    group = q.shape[1] // k.shape[1]
    ke, ve = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    try:
        return (f"K/V expanded to {q.shape[1]} heads (enable_gqa refused: {refused})",
                median_ms(lambda: F.scaled_dot_product_attention(q, ke, ve)))
    except Exception as e:
        return f"unavailable (enable_gqa: {refused}; expanded: {first_line(e)})", None


def time_decode(csv, jobs):
    """Times every decode row: Flex where it compiled, and SDPA's cuDNN and FA2 backends on the
    no-mask rows. SDPA is asked for GQA (enable_gqa=True); a backend that refuses it gets K/V
    expanded to Hq heads (repeat_interleave, the layout GQA implies), one that refuses that too
    is recorded as unavailable."""
    D, Hq, Hkv = DECODE_D, DECODE_HQ, DECODE_HKV
    for variant, B, L, keys, sets, fn in jobs:
        nbytes = decode_bytes(B, keys)
        flops = 4.0 * B * Hq * keys * D
        row = lambda impl, ms: csv.add(impl, variant, D, L, B, Hq, "decode", ms, flops, keys / L,
                                       Hkv, nbytes)
        n = len(sets)
        if fn is not None:
            turn = itertools.count()
            try:
                row("flex", median_ms(lambda: fn(*sets[next(turn) % n])))
            except Exception as e:
                print(f"flex   decode {variant} B={B} L={L} FAILED: {type(e).__name__}: "
                      f"{str(e)[:300]}", flush=True)
        if variant != "noop":
            continue
        q, k, v = sets[0]  # the no-mask rows read >= 537 MB per call: one set
        for impl, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("fa2", SDPBackend.FLASH_ATTENTION)):
            with sdpa_kernel([backend]):
                how, ms = sdpa_decode_ms(q, k, v)
            csv.comment(f"decode: {impl} B={B} L={L}: {how}")
            print(f"{impl:6s} decode B={B} L={L}: {how}", flush=True)
            if ms is not None:
                row(impl, ms)


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
    ap.add_argument("--rows", default="prefill,decode",
                    help="prefill (the variants x shapes above), decode (issue 9's rows) or both")
    ap.add_argument("--decode-compile-budget-s", type=float, default=90.0,
                    help="compile no further decode rows once this much of their own time is spent")
    args = ap.parse_args()
    if args.quick:
        args.dims, args.lens = "128", "16384"
    bwd = not args.no_bwd
    rows = set(args.rows.split(","))
    if not rows or not rows <= {"prefill", "decode"}:
        ap.error(f"--rows takes prefill and decode; got {args.rows}")

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
    for D in (int(x) for x in args.dims.split(",")) if "prefill" in rows else ():
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
    # After the prefill rows, on a budget of their own: the prefill compiles keep the time they had.
    decode_jobs = prepare_decode(flex, args.decode_compile_budget_s) if "decode" in rows else []
    print(f"gpu_peers: compiled in {time.time() - start:.1f} s", flush=True)

    if args.go_file:
        waited = time.time()
        while not os.path.exists(args.go_file) and time.time() - waited < args.go_timeout_s:
            time.sleep(0.5)
        print(f"gpu_peers: waited {time.time() - waited:.1f} s for {args.go_file}", flush=True)
    timing_start = time.time()
    # Decode first, as bench_gpu.cpp: few fixed rows the prefill rows' budget never skips.
    try:
        time_decode(csv, decode_jobs)
    except Exception as e:
        print(f"peers  decode FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
    del decode_jobs  # up to ~6 GB of K/V
    try:
        if "prefill" in rows:
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
