// Warp-level pieces the backward kernel needs beyond utils.cuh: shared-memory operand loaders
// for all four orientations of an mma.sync m16n8k16 operand, a warp GEMM over them, and the
// global-memory ordering primitives of the deterministic dQ reduction.
//
// The backward multiplies the same tiles in both orientations (P and P^T, dS and dS^T, K as
// K^T and as K), so every tile lives once in shared memory, row-major with a padded pitch, and
// the transposes come from ldmatrix.trans. Loaders hold one 32-bit shared address per lane;
// every per-fragment offset is a compile-time constant (the pitch is a template argument), so
// the unrolled GEMM issues ldmatrix with immediate offsets and no address arithmetic.
#pragma once

#include "../device_std.h"

#include "../../math.h"
#include "launch_record.h"
#include "mask.cuh"
#include "softmax.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

namespace bwd {

FLEXATTN_DEV int lane_id() { return static_cast<int>(threadIdx.x % 32); }

// A operand, source row-major: A(m, k) = X[m * kLd + k]. The warp's rows start at m0.
// ldmatrix matrices: (rows 0-7, k 0-7) (rows 8-15, k 0-7) (rows 0-7, k 8-15) (rows 8-15, k 8-15).
template <int kLd>
struct FragA {
  uint32_t base;
  FLEXATTN_DEV FragA(const void* x, int m0) {
    const int l = lane_id();
    base = smem_u32(x) + static_cast<uint32_t>(((m0 + l % 16) * kLd + (l / 16) * 8) * 2);
  }
  FLEXATTN_DEV void load(uint32_t (&a)[4], int mi, int ks) const {
    warp::ldmatrix_x4(a, base + static_cast<uint32_t>((mi * 16 * kLd + ks * 16) * 2));
  }
};

// A operand, source transposed: A(m, k) = W[k * kLd + m] (P^T and dS^T from row-major P, dS).
// Same four matrices; with .trans each 8x8 block of W arrives transposed.
template <int kLd>
struct FragAt {
  uint32_t base;
  FLEXATTN_DEV FragAt(const void* w, int m0) {
    const int l = lane_id(), j = l / 8;
    const int row = l % 8 + (j / 2) * 8, col = m0 + (j % 2) * 8;
    base = smem_u32(w) + static_cast<uint32_t>((row * kLd + col) * 2);
  }
  FLEXATTN_DEV void load(uint32_t (&a)[4], int mi, int ks) const {
    warp::ldmatrix_x4_trans(a, base + static_cast<uint32_t>((ks * 16 * kLd + mi * 16) * 2));
  }
};

// B operand from an (n, k) row-major source: B(k, n) = Y[n * kLd + k] (K and V in S = Q K^T,
// dP = dO V^T). One x4 load gives two n8 tiles: regs {0,1} = tile 2nj, {2,3} = tile 2nj+1.
template <int kLd>
struct FragB {
  uint32_t base;
  FLEXATTN_DEV FragB(const void* y, int n0) {
    const int l = lane_id(), j = l / 8;
    const int row = n0 + l % 8 + (j / 2) * 8, col = (j % 2) * 8;
    base = smem_u32(y) + static_cast<uint32_t>((row * kLd + col) * 2);
  }
  FLEXATTN_DEV void load(uint32_t (&b)[4], int nj, int ks) const {
    warp::ldmatrix_x4(b, base + static_cast<uint32_t>((nj * 16 * kLd + ks * 16) * 2));
  }
};

// B operand from a (k, n) row-major source: B(k, n) = Z[k * kLd + n] (dO in P^T dO, Q in
// dS^T Q, K in dS K). Same register order as FragB.
template <int kLd>
struct FragBt {
  uint32_t base;
  FLEXATTN_DEV FragBt(const void* z, int n0) {
    const int l = lane_id(), j = l / 8;
    const int row = l % 8 + (j % 2) * 8, col = n0 + (j / 2) * 8;
    base = smem_u32(z) + static_cast<uint32_t>((row * kLd + col) * 2);
  }
  FLEXATTN_DEV void load(uint32_t (&b)[4], int nj, int ks) const {
    warp::ldmatrix_x4_trans(b, base + static_cast<uint32_t>((ks * 16 * kLd + nj * 16) * 2));
  }
};

// acc (MI m16 x NI n8 tiles) += A (MI*16, KS*16) * B (KS*16, NI*8), operands from shared memory.
// The fragments of k-slice ks+1 are loaded before the MMAs of slice ks are issued, so ldmatrix
// latency hides behind tensor-core work even with only two warps per scheduler.
template <class T, int MI, int NI, int KS, class FA, class FB>
FLEXATTN_DEV void warp_gemm(float (&acc)[MI][NI][4], const FA& fa, const FB& fb) {
  static_assert(NI % 2 == 0, "B fragments come in pairs of n8 tiles");
  uint32_t a[2][MI][4];
  uint32_t b[2][NI / 2][4];
  auto load = [&](int buf, int ks) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) fa.load(a[buf][mi], mi, ks);
#pragma unroll
    for (int nj = 0; nj < NI / 2; ++nj) fb.load(b[buf][nj], nj, ks);
  };
  load(0, 0);
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    if (ks + 1 < KS) load((ks + 1) % 2, ks + 1);
    const int cb = ks % 2;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const uint32_t bb[2] = {b[cb][ni / 2][2 * (ni % 2)], b[cb][ni / 2][2 * (ni % 2) + 1]};
        warp::mma_16816<T>(acc[mi][ni], a[cb][mi], bb);
      }
    }
  }
}

template <int MI, int NI>
FLEXATTN_DEV void zero(float (&acc)[MI][NI][4]) {
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;
}

// One recomputed score x = (Q K^T)[q][kv] -> returns P = exp2(s' log2e - lse2) and leaves
// P * ds'/ds in x (s' = score_mod(scale * x) through flexattn::Dual{s, 1}; no functor call for
// NoopScore). kCheck: evaluate mask_mod (when `partial`) and the bounds q < Lq, kv < Lkv, with
// indices clamped into range before any functor sees them; dropped scores give P = 0 and x = 0.
// kExact (ExactRows says when): P = exp2((s' - lse) log2e) from the natural lse `lse_n`, which is
// exact near the row max at any magnitude, where the folded FFMA's exponent error grows with |lse2|
// (softmax.cuh, the forward's same two forms). s' is bit for bit the forward's: fl(scale * x), or
// the score_mod's value of it, and the forward's lse is fl(natural * max) + log(sum).
template <bool kCheck, bool kExact, class ScoreMod, class MaskMod>
FLEXATTN_DEV float prob_and_grad(float& x, const ScoreMod& score_mod, const MaskMod& mask_mod,
                                 bool partial, int b, int hq, int q, int kv, int Lq, int Lkv,
                                 float scale, float scale_log2, float lse2, float lse_n) {
  const bool q_in = q < Lq, kv_in = kv < Lkv;
  const int qc = (!kCheck || q_in) ? q : Lq - 1;
  const int kc = (!kCheck || kv_in) ? kv : Lkv - 1;
  // Empty rows and padding have lse2 = +inf (bwd_preprocess.cuh): P = 0 in both forms.
  auto exponent = [&](float s_nat, float folded) {
    if constexpr (kExact) {
      return lse2 == __int_as_float(0x7f800000) ? thread::neg_inf() : (s_nat - lse_n) * kLog2e;
    } else {
      return folded;
    }
  };
  // __fmul_rn: the scaled score is rounded, never fused into what follows - the forward forms
  // the same product the same way (mask.cuh, OnlineSoftmax::finalize).
  float p, pg;
  if constexpr (is_noop_score<ScoreMod>) {
    p = thread::exp2_approx(
        exponent(kExact ? __fmul_rn(x, scale) : 0.0f, fmaf(x, scale_log2, -lse2)));
    pg = p;
  } else {
    const Dual r = score_mod(Dual(__fmul_rn(x, scale), 1.0f), b, hq, qc, kc);
    p = thread::exp2_approx(exponent(r.v, fmaf(r.v, kLog2e, -lse2)));
    // A 0 probability carries no gradient, even where g is inf; a NaN one (a NaN row) carries NaN.
    pg = p == 0.0f ? 0.0f : p * r.d;
  }
  if constexpr (kCheck) {
    bool keep = q_in && kv_in;
    if (partial) keep = keep && static_cast<bool>(mask_mod(b, hq, qc, kc));
    p = keep ? p : 0.0f;
    pg = keep ? pg : 0.0f;
  }
  x = pg;
  return p;
}

// Calls f(check, exact) with the flags as fstd::bool_constant: the three forms of a tile's
// probabilities. The exact form is rare, so it has one copy, with the checks (harmless on a
// full tile: its partial flag is false and every index is in range).
template <class F>
FLEXATTN_DEV void with_prob_form(bool check, bool exact, const F& f) {
  if (exact) {
    f(fstd::true_type{}, fstd::true_type{});
  } else if (check) {
    f(fstd::true_type{}, fstd::false_type{});
  } else {
    f(fstd::false_type{}, fstd::false_type{});
  }
}

// Whether a row's lse2 is finite and past the folded exponent's limit (softmax.cuh): a warp with
// such a row forms P exactly (prob_and_grad<kCheck, true>).
FLEXATTN_DEV bool past_fast_limit(float lse2) {
  const float a = fabsf(lse2);
  return a >= kFastExponentLimit && a < __int_as_float(0x7f800000);
}

// The natural lse of row q (the forward's, not lse2's rounded round trip); -inf past Lq, where
// lse2 = +inf gives P = 0 first.
FLEXATTN_DEV float natural_lse(const float* lse, int64_t l_sb, int64_t l_sh, int64_t l_sr, int b,
                               int hq, int q, int Lq) {
  return q < Lq ? __ldg(lse + b * l_sb + hq * l_sh + q * l_sr) : thread::neg_inf();
}

// dS = P g (dP - delta) for one element, given pg = P g: exactly 0 where pg is 0, so that a masked
// key's garbage V (dP = dO V^T is NaN there) or a NaN delta adds nothing (issue 8, item 8).
FLEXATTN_DEV float dscore(float pg, float dp, float delta) {
  return pg == 0.0f ? 0.0f : pg * (dp - delta);
}

// Adds (x, y) to two adjacent f32 in global memory. sm90 has a vector atomic that halves the
// number of L2 atomic transactions; older GPUs issue two scalar reductions.
FLEXATTN_DEV void atomic_add2(float* p, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(x, y));
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

// Relaxed load of a counter written by other CTAs: issued early, it does not hold up the thread's
// later memory operations the way an acquire load does.
FLEXATTN_DEV int load_relaxed(const int* p) {
  int v;
  asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Publishes "this CTA's dQ adds into a q tile are done" (deterministic dQ ordering). Call from ONE
// thread right after a __syncthreads() that follows every thread's adds: the barrier orders the
// other threads' adds before this thread's fence, and the fence (cumulative, as in a grid-wide
// barrier) orders them all before the counter bump. Null: nothing pending.
FLEXATTN_DEV void signal_after_barrier(int* counter) {
  if (counter == nullptr) return;
  __threadfence();
  atomicAdd(counter, 1);
}

// Acquire load of a counter written by other CTAs (deterministic dQ ordering).
FLEXATTN_DEV int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Wall-clock nanoseconds (the GPU's global timer; it ticks every microsecond or so).
FLEXATTN_DEV uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// How long a q tile's dQ-order counter may stand still before wait_dq_turn stops the kernel.
inline constexpr uint64_t kDqStallNs = 60ull * 1000 * 1000 * 1000;

// Deterministic dQ order, one thread: waits until `rank` CTAs have added into this q tile (`seen`
// is the counter's early relaxed read). Once the counter reaches the rank, every earlier CTA's
// adds were performed in L2 (they fenced before bumping it), and ours are issued only after this
// load returned: the order is fixed.
//
// WHY THE WAIT ENDS. The adds into the dQ tile (b, hq, m) come from the CTAs (n, hq / group, b)
// whose kv tile's TRANSPOSED lists (the lists the main kernel walks) hold m's q-block; a CTA's
// rank is the number of those CTAs with a higher kv tile, counted from those same lists
// (bwd_dq_mark_kernel, bwd_dq_rank_kernel; dense walks: every higher kv tile). Each of them bumps
// the counter at least once after its adds, so the counter reaches the rank as soon as they have
// all passed tile m, whatever the lists hold. And they do pass it: in deterministic mode
// bwd_cta_tile maps blockIdx.x = num_n_tiles - 1 - n, so every CTA a CTA waits for has the same
// blockIdx.y, .z and a lower blockIdx.x, i.e. a lower linear block index. NVIDIA GPUs dispatch a
// grid's CTAs in increasing linear index (not a promise of the programming model, but what every
// generation does; FlashAttention's deterministic backward relies on it too), so while a CTA is
// resident, every CTA it may wait for is resident or finished. The lowest-numbered unfinished CTA
// therefore waits only on finished CTAs and finishes; by induction every CTA does: no deadlock.
// WHY IT CAN STILL BE LONG. A CTA waits until every CTA ahead of it in the tile's order has
// reached the tile in its own walk, and those wait in turn: a chain through other tiles, GQA's
// query heads and later waves of the grid. It is normally a wavefront of one hand-off per rank,
// but it can approach the kernel's whole run time, which stretches without bound when the GPU is
// shared, time-sliced, or slowed 10-100x by compute-sanitizer or a debugger. So the wait counts
// no polls (a bound of ~2^22 polls, about a second, used to give up and add unordered: determinism
// silently lost, and on sm90, where rank 0 stores, a wrong dQ).
// WHAT IT DOES INSTEAD. If the counter stands still for kDqStallNs (60 s) - by the argument above
// only a bug, or a GPU that does not dispatch in order - the thread writes what stalled into
// `stall` (pinned host memory, launch_record.h; may be null) and traps: the launch fails, the
// next CUDA call reports it (cudaErrorLaunchFailure, thrown as flexattn::Error with the record's
// sentence) and the CUDA context is unusable afterwards. It never carries on with an unordered add.
FLEXATTN_DEV void wait_dq_turn(int seen, int rank, const int* sem, DqStallRecord* stall) {
  if (seen >= rank) return;
  uint64_t since = global_timer_ns();
  for (;;) {
    __nanosleep(32);
    const int now = load_acquire(sem);
    if (now >= rank) return;
    const uint64_t t = global_timer_ns();
    if (now != seen) {
      seen = now;
      since = t;
    } else if (t - since > kDqStallNs) {
      if (stall != nullptr) {
        volatile DqStallRecord* r = stall;
        r->cta_x = static_cast<int>(blockIdx.x);
        r->cta_y = static_cast<int>(blockIdx.y);
        r->cta_z = static_cast<int>(blockIdx.z);
        r->rank = rank;
        r->counter = now;
        __threadfence_system();
        r->stalled = 1;
        __threadfence_system();
      }
      __trap();
    }
  }
}

// Writes this thread's dV and scale * dK fragments (m16n8 C layout, MI x NI tiles starting at kv
// row `row0`, head-dim column `col0`) in the output dtype; rows at or past Lkv are skipped.
template <class T, int MI, int NI>
FLEXATTN_DEV void store_dk_dv(const float (&dk)[MI][NI][4], const float (&dv)[MI][NI][4], T* dk_bh,
                              int64_t dk_sr, T* dv_bh, int64_t dv_sr, int row0, int col0, int Lkv,
                              float scale) {
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + mi * 16 + g + 8 * half;
      if (row >= Lkv) continue;
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const int col = col0 + ni * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(dv_bh + row * dv_sr + col) =
            thread::pack2<T>(dv[mi][ni][2 * half], dv[mi][ni][2 * half + 1]);
        *reinterpret_cast<uint32_t*>(dk_bh + row * dk_sr + col) =
            thread::pack2<T>(dk[mi][ni][2 * half] * scale, dk[mi][ni][2 * half + 1] * scale);
      }
    }
  }
}

}  // namespace bwd

}  // namespace flexattn::detail::cuda
