// The Hopper forward kernel (sm_90a): warp-specialised, wgmma on tensor cores, tiles moved by the
// tensor-memory-access unit. It shares the block-mask walk, the mask / score_mod path, the online
// softmax and the epilogue with the sm80 kernel (mainloop_fwd_sm80.cuh); only loading and the two
// matrix products differ. Roles and tile sizes: kernel_traits_fwd_sm90.cuh.
//
// Per kv tile j (stage st = j % kStages), math warpgroup view:
//   wait k_full[st] -> S = Q K^T (D / 16 wgmmas, both operands in shared memory) -> release K
//   -> mask / score_mod / online softmax in registers -> P to 16 bits in registers
//   -> wait v_full[st] -> O += P V (BLOCK_N / 16 wgmmas, A = P from registers) -> release V
//   (a partial tile waits for the loader warpgroup's check of its V, v_checked[st]; one whose V
//   holds NaN / inf takes O += P V in exact scalar form, masked_products.cuh)
// The loader refills a stage as soon as all 8 math warps have released it.
#pragma once

#include "epilogue_fwd.cuh"
#include "kernel_traits_fwd_sm90.cuh"
#include "mask.cuh"
#include "masked_products.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"
#include "tma.cuh"
#include "utils.cuh"
#include "wgmma.cuh"

namespace flexattn::detail::cuda {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

template <class Traits>
struct FwdBarriersSm90 {
  uint64_t* base;
  FLEXATTN_DEV uint64_t* q_full() const { return base; }
  FLEXATTN_DEV uint64_t* k_full(int st) const { return base + 1 + st; }
  FLEXATTN_DEV uint64_t* k_empty(int st) const { return base + 1 + Traits::kStages + st; }
  FLEXATTN_DEV uint64_t* v_full(int st) const { return base + 1 + 2 * Traits::kStages + st; }
  FLEXATTN_DEV uint64_t* v_empty(int st) const { return base + 1 + 3 * Traits::kStages + st; }
  FLEXATTN_DEV uint64_t* v_checked(int st) const { return base + 1 + 4 * Traits::kStages + st; }
};

// The phases of the v_checked barriers: they complete once per PARTIAL tile of their stage, so
// the math warps count those uses per stage (bit st: the parity to wait for).
struct CheckedPhases {
  uint32_t bits = 0;
  FLEXATTN_DEV uint32_t parity(int st) const { return (bits >> st) & 1u; }
  FLEXATTN_DEV void advance(int st) { bits ^= 1u << st; }
};

// Warps 1-3 of warpgroup 0 (96 threads): for each partial kv tile, once its V has landed, whether
// it holds a NaN / inf, which the tile's masked pairs must not pick up (masked_products.cuh):
// written to vbad[st], published by v_checked[st]. Off the math warps' path; a full tile keeps
// all its pairs and is not checked. The stage cannot be refilled meanwhile: its v_empty needs the
// math warps, which wait for v_checked first.
template <class Traits, class T>
FLEXATTN_DEV void fwd_check_v_sm90(const FwdParams& p, const FwdBarriersSm90<Traits>& bar,
                                   const unsigned char* smem, int* vbad, int b, int h, int m0) {
  constexpr int kStages = Traits::kStages, kThreads = 96;
  const int part = static_cast<int>(threadIdx.x) - 32;
  KvTileIter<Traits::kBlockN> iter(p, b, h, m0);
  int j = 0;
  for (auto cur = iter.first(); cur.n0 >= 0; cur = iter.next(cur), ++j) {
    if (!cur.partial) continue;
    const int st = j % kStages;
    thread::mbar_wait(bar.v_full(st), (j / kStages) & 1);
    const bool bad = cta::any(tile_has_nonfinite<T>(smem + Traits::kOffV + st * Traits::kKvBytes,
                                                    Traits::kKvBytes, part, kThreads),
                              1, kThreads);
    if (part == 0) {
      vbad[st] = bad ? 1 : 0;
      thread::mbar_arrive(bar.v_checked(st));
    }
  }
}

// Warpgroup 0, one thread: Q once, then K and V of every kv tile the block mask lists.
template <class Traits>
FLEXATTN_DEV void fwd_load_sm90(const FwdParams& p, const FwdTileMaps& maps,
                                const FwdBarriersSm90<Traits>& bar, unsigned char* smem, int b,
                                int h, int m0) {
  constexpr int kStages = Traits::kStages, D = Traits::kHeadDim, kBlockN = Traits::kBlockN;
  const int hk = h / p.group;
  thread::mbar_arrive_expect_bytes(bar.q_full(), Traits::kQBytes);
  thread::tma_load_tile<Traits::kBlockM, D>(smem, &maps.q, m0, h, b, bar.q_full());
  KvTileIter<Traits::kBlockN> iter(p, b, h, m0);
  int j = 0;
  for (auto cur = iter.first(); cur.n0 >= 0; cur = iter.next(cur), ++j) {
    const int st = j % kStages;
    const uint32_t parity = ((j / kStages) & 1) ^ 1;  // first pass: fresh barriers, no wait
    thread::mbar_wait(bar.k_empty(st), parity);
    thread::mbar_arrive_expect_bytes(bar.k_full(st), Traits::kKvBytes);
    thread::tma_load_tile<kBlockN, D>(smem + Traits::kOffK + st * Traits::kKvBytes, &maps.k,
                                      cur.n0, hk, b, bar.k_full(st));
    thread::mbar_wait(bar.v_empty(st), parity);
    thread::mbar_arrive_expect_bytes(bar.v_full(st), Traits::kKvBytes);
    thread::tma_load_tile<kBlockN, D>(smem + Traits::kOffV + st * Traits::kKvBytes, &maps.v,
                                      cur.n0, hk, b, bar.v_full(st));
  }
}

template <class Traits, class T>
struct MainloopFwdSm90 {
  static constexpr int D = Traits::kHeadDim;
  static constexpr int kBlockN = Traits::kBlockN;

  // s (64 x BLOCK_N) = Q (this warpgroup's 64 rows) K^T. Both K-major: a k16 step is 32 bytes
  // along a swizzled row, every 4 steps the next 64-element column block.
  FLEXATTN_DEV static void gemm_qk(float (&s)[kBlockN / 8][4], uint32_t q_rows, uint32_t k_tile) {
    warpgroup::fence_operand(s);
    warpgroup::fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t col = (kk / 4), step = (kk % 4) * 32;
      warpgroup::mma_ss<T, kBlockN>(
          s, warpgroup::smem_desc(q_rows + col * Traits::kBlockM * 128 + step, 0),
          warpgroup::smem_desc(k_tile + col * kBlockN * 128 + step, 0), kk > 0);
    }
    warpgroup::commit();
    warpgroup::wait<0>();
    warpgroup::fence_operand(s);
  }

  // o (64 x D) += P (64 x BLOCK_N, registers) V (BLOCK_N x D, read transposed: MN-major).
  FLEXATTN_DEV static void gemm_pv(float (&o)[D / 8][4], const uint32_t (&pa)[kBlockN / 16][4],
                                   uint32_t v_tile) {
    warpgroup::fence_operand(o);
    warpgroup::fence();
#pragma unroll
    for (int kc = 0; kc < kBlockN / 16; ++kc) {
      warpgroup::mma_rs_bt<T, D>(o, pa[kc],
                                 warpgroup::smem_desc(v_tile + kc * 16 * 128, kBlockN * 128));
    }
    warpgroup::commit();
    warpgroup::wait<0>();
    warpgroup::fence_operand(o);
  }
};

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// `Unit` is a type private to the translation unit that launches the kernel (launch_fwd.cuh): it
// keeps this kernel from being merged across translation units compiled with different
// architectures, where one copy could be the empty body below.
template <class Traits, class T, class ScoreMod, class MaskMod, class Unit>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    fwd_kernel_sm90(const __grid_constant__ FwdParams p, const __grid_constant__ FwdTileMaps maps,
                    const ScoreMod score_mod, const MaskMod mask_mod) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using ML = MainloopFwdSm90<Traits, T>;
  constexpr int D = Traits::kHeadDim, kBlockN = Traits::kBlockN, kStages = Traits::kStages;
  constexpr bool kNoopScore = is_noop_score<ScoreMod>;

  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = cta::swizzle_aligned(smem_raw);
  const FwdBarriersSm90<Traits> bar{reinterpret_cast<uint64_t*>(smem + Traits::kOffBars)};
  int* const vbad = reinterpret_cast<int*>(smem + Traits::kOffVBad);

  const auto tile = FwdTileScheduler::get();
  const int b = tile.b, h = tile.h;
  const int m0 = tile.m_tile * Traits::kBlockM;
  const int warpgroup_id = static_cast<int>(threadIdx.x) / 128;

  if (threadIdx.x == 0) {
    thread::mbar_init(bar.q_full(), 1);
    for (int st = 0; st < kStages; ++st) {
      thread::mbar_init(bar.k_full(st), 1);
      thread::mbar_init(bar.v_full(st), 1);
      thread::mbar_init(bar.k_empty(st), Traits::kMathWarps);
      thread::mbar_init(bar.v_empty(st), Traits::kMathWarps);
      thread::mbar_init(bar.v_checked(st), 1);
    }
    ::cuda::ptx::fence_mbarrier_init(::cuda::ptx::sem_release, ::cuda::ptx::scope_cluster);
  }
  __syncthreads();  // the last CTA-wide barrier: the loader leaves early

  if (warpgroup_id == 0) {
    warpgroup::release_registers<Traits::kLoaderRegs>();
    if (threadIdx.x == 0) fwd_load_sm90<Traits>(p, maps, bar, smem, b, h, m0);
    if (threadIdx.x >= 32) fwd_check_v_sm90<Traits, T>(p, bar, smem, vbad, b, h, m0);
    return;
  }
  warpgroup::claim_registers<Traits::kMathRegs>();

  const int math_warp = static_cast<int>(threadIdx.x) / 32 - 4;  // 0..7
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int wg_row = (math_warp / 4) * Traits::kRowsPerWarpgroup;  // warpgroup's first row
  const int warp_row = wg_row + (math_warp % 4) * 16;              // warp's first row
  const uint32_t q_rows = smem_u32(smem) + wg_row * 128;

  float o[D / 8][4];
#pragma unroll
  for (int nd = 0; nd < D / 8; ++nd)
#pragma unroll
    for (int r = 0; r < 4; ++r) o[nd][r] = 0.0f;
  float s[kBlockN / 8][4];
#pragma unroll
  for (int ni = 0; ni < kBlockN / 8; ++ni)
#pragma unroll
    for (int r = 0; r < 4; ++r) s[ni][r] = 0.0f;
  OnlineSoftmax<1> softmax;
  // The sm80 helpers take [MT][NT][4] fragments; a warp here owns one m16 row tile.
  auto& s1 = reinterpret_cast<float(&)[1][kBlockN / 8][4]>(s);
  auto& o1 = reinterpret_cast<float(&)[1][D / 8][4]>(o);

  const bool q_ragged = m0 + Traits::kBlockM > p.Lq;
  const ScoreUnits<kNoopScore> units(p.scale, p.scale_log2);
  thread::mbar_wait(bar.q_full(), 0);

  KvTileIter<kBlockN> iter(p, b, h, m0);
  CheckedPhases phases;
  int j = 0;
  for (auto cur = iter.first(); cur.n0 >= 0; ++j) {
    const auto nxt = iter.next(cur);
    const int st = j % kStages;
    const uint32_t parity = (j / kStages) & 1;
    const uint32_t k_tile = smem_u32(smem + Traits::kOffK + st * Traits::kKvBytes);
    const uint32_t v_tile = smem_u32(smem + Traits::kOffV + st * Traits::kKvBytes);

    thread::mbar_wait(bar.k_full(st), parity);
    ML::gemm_qk(s, q_rows, k_tile);
    if (lane == 0) thread::mbar_arrive(bar.k_empty(st));

    if (units.prescale) scale_scores(s1, p.scale_log2);
    score_and_mask_tile<kNoopScore>(s1, score_mod, mask_mod, b,
                                    ConsecutiveRows{h, m0 + warp_row, p.Lq}, cur.n0, cur.partial,
                                    q_ragged || cur.n0 + kBlockN > p.Lkv, p.Lkv, p.scale);
    softmax.update(s1, o1, units.mult);

    thread::mbar_wait(bar.v_full(st), parity);
    // A partial tile's masked pairs must not pick up NaN / inf from V: the checker's answer
    // (fwd_check_v_sm90); a V with any takes the exact product (masked_products.cuh).
    bool v_bad = false;
    if (cur.partial) {
      thread::mbar_wait(bar.v_checked(st), phases.parity(st));
      phases.advance(st);
      v_bad = vbad[st] != 0;
    }
    if (__builtin_expect(v_bad, 0)) {
      const T* v_elems = reinterpret_cast<const T*>(smem + Traits::kOffV + st * Traits::kKvBytes);
      add_pv_exact(o1, s1, [&](int kv, int col) {
        return static_cast<float>(v_elems[Swizzled128<kBlockN>::offset(kv, col)]);
      });
    } else {
      uint32_t pa[kBlockN / 16][4];
#pragma unroll
      for (int kc = 0; kc < kBlockN / 16; ++kc) {
        pa[kc][0] = thread::pack2<T>(s[2 * kc][0], s[2 * kc][1]);
        pa[kc][1] = thread::pack2<T>(s[2 * kc][2], s[2 * kc][3]);
        pa[kc][2] = thread::pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]);
        pa[kc][3] = thread::pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3]);
      }
      ML::gemm_pv(o, pa, v_tile);
    }
    if (lane == 0) thread::mbar_arrive(bar.v_empty(st));
    cur = nxt;
  }

  float lse[2];
  softmax.finalize(o1, lse, units.natural);
  // Staged through this warp's own rows of Q: every wgmma that read them has completed.
  T* out = static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh + (m0 + warp_row) * p.o_sr;
  float* lse_rows = p.lse + b * p.l_sb + h * p.l_sh + (m0 + warp_row) * p.l_sr;
  store_out_lse<T, 16, D, Swizzled128<Traits::kBlockM>>(
      o1, lse, reinterpret_cast<T*>(smem) + warp_row * 64, out, p.o_sr, lse_rows, p.l_sr,
      p.Lq - m0 - warp_row);
#endif
}

}  // namespace flexattn::detail::cuda
