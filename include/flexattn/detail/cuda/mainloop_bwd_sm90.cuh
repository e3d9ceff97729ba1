// The Hopper backward main kernel (sm_90a): the sm80 kernel's scheme (mainloop_bwd_sm80.cuh: one
// CTA per kv tile, the transposed block-mask walk, deterministic or atomic dQ, the pre- and
// postprocess kernels of launch_bwd.cuh) with its five products on wgmma.
//
// Two warpgroups; warpgroup w owns kv rows [64w, 64w + 64) of the CTA's 128-row kv tile and
// computes everything in the transposed orientation, so that P^T and dS^T come out of the
// accumulators already in the register layout of a wgmma A operand:
//   S^T  = K_w Q^T,  dP^T = V_w dO^T       (64 kv x 64 q, both operands K-major in shared memory)
//   P^T, dS^T = P^T * g * (dP^T - delta)   in registers (per-column lse2 / delta from shared)
//   dV_w += P^T dO,  dK_w += dS^T Q        (A from registers, B = dO / Q read transposed)
//   dQ[:, 64w..] = dS K[:, 64w..]          (A = dS^T from shared memory read transposed, the
//                                           whole 128-row kv tile: both warpgroups' dS^T;
//                                           D = 64: see the traits)
// dK and dV (64 x D each per warpgroup) stay in registers for the whole kernel.
//
// Copies: thread 0 loads K and V once, then Q, dO and their rows' statistics of each q tile into
// one of two stages (TMA and bulk copies completing on an mbarrier per stage), one tile ahead.
// dQ leaves through shared memory: both warpgroups store their dQ accumulators as an f32 tile,
// and thread 0 adds the whole tile into dq_accum with one bulk reduction (cp.reduce.async.bulk)
// instead of 8192 f32 atomics from the math threads (which measured as the largest stall of the
// kernel). Deterministic mode: thread 0 waits for the tile's turn before that reduction and
// announces it once complete, while the next tile's first products run.
// Two CTA barriers per q tile: dS^T stored (the dQ product reads both warpgroups' rows), and
// the dQ tile stored (which also frees this stage, dS^T and the staging tile for the next one);
// D = 64 takes a third between the warpgroups' two partial dQ tiles (see the traits).
// Masked pairs add nothing whatever K and V hold there: dS is selected to 0 (bwd::dscore), and a
// partial tile whose dQ comes out non-finite is redone exactly (masked_products.cuh).
// HAZARD - proxies: ordinary stores write shared memory through the generic proxy, wgmma and the
// bulk reduction read it through the async proxy; every writer fences (fence.proxy.async) before
// the barrier that publishes the tile.
#pragma once

#include "../device_std.h"

#include "bwd_primitives.cuh"
#include "epilogue_fwd.cuh"
#include "kernel_traits_bwd.cuh"
#include "masked_products.cuh"
#include "mainloop_bwd_sm80.cuh"
#include "tma.cuh"
#include "utils.cuh"
#include "wgmma.cuh"

namespace flexattn::detail::cuda {

// Tiles: BLOCK_M = 64 q rows x BLOCK_N = 128 kv rows for head dims 64 and 128. Registers per
// thread at D = 128: dK + dV 128 floats, S^T + dP^T 64, P^T + dS^T as 16-bit A fragments 32, dQ 32
// (while dK and dV are in flight): 255 at most, one CTA of 8 warps per SM. Shared memory at
// D = 128: K, V 32 KB each, Q and dO 2 x 16 KB each, dS^T 16 KB, the dQ tile in f32 32 KB, row
// statistics 1 KB, the walk's state, three mbarriers, 1 KB alignment slack: 178 KB (D = 64: 98 KB).
// dQ's split between the warpgroups: at D = 128 each takes 64 of the head-dim columns over the
// whole kv tile (N = 64); at D = 64 a 32-column split would need N = 32, which the 128-byte
// swizzle of the transposed K read does not allow, so each warpgroup takes all 64 columns over
// its own 64 kv rows, and warpgroup 1 adds its partial tile onto warpgroup 0's in shared memory.
template <int kHeadDim_>
struct BwdTraitsSm90 {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = 128;
  static constexpr int kNThreads = 256;
  static constexpr int kTileQBytes = kBlockM * kHeadDim * 2;  // one Q or dO stage
  static constexpr int kTileKBytes = kBlockN * kHeadDim * 2;
  static constexpr int kStatBytes = kBlockM * 4;              // lse2 or delta of one q tile
  static constexpr int kDqBytes = kBlockM * kHeadDim * 4;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kTileKBytes;
  static constexpr int kOffQ = kOffV + kTileKBytes;
  static constexpr int kOffDo = kOffQ + 2 * kTileQBytes;
  static constexpr int kOffDs = kOffDo + 2 * kTileQBytes;
  static constexpr int kOffDq = kOffDs + kBlockN * kBlockM * 2;
  static constexpr int kOffStats = kOffDq + kDqBytes;  // per stage: lse2, then delta
  static constexpr int kOffInfo = kOffStats + 2 * 2 * kStatBytes;  // per stage: its q tile
  static constexpr int kOffWalk = kOffInfo + 2 * 16;                 // thread 0's walk
  static constexpr int kOffBars = kOffWalk + 64;
  static constexpr int kSmemBytes = 1024 + kOffBars + 3 * 8;
  static constexpr uint32_t kQStageBytes = 2 * kTileQBytes + 2 * kStatBytes;  // one stage's copies
  using DqLayout = DqTileSm90<kHeadDim>;
  static constexpr bool kDqFirstStores = true;  // see BwdParams::dq_first_stores
  static_assert(kHeadDim == 64 || kHeadDim == 128,
                "the sm90 backward is tiled for head dims 64 and 128");
  static_assert(kBlockM == DqLayout::kTileRows, "dq_accum tiles are the q tiles");
};

template <int D>
inline constexpr bool kHasBwdSm90 = D == 64 || D == 128;

// The copies' descriptions (tensor_map.h): Q and dO in boxes of BLOCK_M rows, K and V of BLOCK_N.
struct BwdTileMaps {
  CUtensorMap q, k, v, dout;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

namespace bwd90 {

// The CTA's mbarriers: K and V (completed once), and one per Q / dO stage.
struct Barriers {
  uint64_t* base;
  FLEXATTN_DEV uint64_t* kv_full() const { return base; }
  FLEXATTN_DEV uint64_t* q_full(int st) const { return base + 1 + st; }
};

// What a stage holds: the walk's item, written by thread 0 before the stage's copies are issued
// (the mbarrier's release / acquire publishes it with them); `seen`: thread 0's early read of the
// tile's dQ-order counter (deterministic mode), parked here rather than in a register.
struct StageInfo {
  int m_tile, qb, partial, seen;
};

// One thread: takes the next item of the walk (kept in shared memory: in registers its state
// would be live across the whole loop in every thread) and loads Q and dO of that q tile (TMA,
// zeros past Lq) and its rows' lse2 and delta (bulk copies; the workspaces are padded to whole
// tiles) into stage st.
template <class Cfg>
FLEXATTN_DEV void load_next_q_tile(const BwdParams& p, const BwdTileMaps& maps,
                                   unsigned char* smem, Barriers bar, int st, int hq, int b) {
  static_assert(sizeof(BwdQTileWalk) <= 64 && Cfg::kOffWalk % alignof(BwdQTileWalk) == 0,
                "the walk's slot in shared memory");
  auto* s_walk = reinterpret_cast<BwdQTileWalk*>(smem + Cfg::kOffWalk);
  BwdQTileWalk walk = *s_walk;
  const BwdQTileWalk::Item item = walk.next();
  *s_walk = walk;
  reinterpret_cast<StageInfo*>(smem + Cfg::kOffInfo)[st] =
      StageInfo{item.m_tile, item.qb, item.partial ? 1 : 0, 0};
  const int m0 = item.m_tile * Cfg::kBlockM;
  const int64_t ws_bh = static_cast<int64_t>(b) * p.Hq + hq;
  uint64_t* full = bar.q_full(st);
  thread::mbar_arrive_expect_bytes(full, Cfg::kQStageBytes);
  unsigned char* q = smem + Cfg::kOffQ + st * Cfg::kTileQBytes;
  unsigned char* dout = smem + Cfg::kOffDo + st * Cfg::kTileQBytes;
  thread::tma_load_tile<Cfg::kBlockM, Cfg::kHeadDim>(q, &maps.q, m0, hq, b, full);
  thread::tma_load_tile<Cfg::kBlockM, Cfg::kHeadDim>(dout, &maps.dout, m0, hq, b, full);
  float* stats = reinterpret_cast<float*>(smem + Cfg::kOffStats) + st * 2 * Cfg::kBlockM;
  const int64_t row = ws_bh * p.Lq_pad + m0;
  thread::bulk_load(stats, p.lse2 + row, Cfg::kStatBytes, full);
  thread::bulk_load(stats + Cfg::kBlockM, p.delta + row, Cfg::kStatBytes, full);
}

// Deterministic dQ order, the thread that issued the reductions: once they are complete, tells the
// CTA next in line for that q tile (`counter`; null: nothing pending). The hand-off latency is
// paid once per rank in a chain of CTAs, so it is kept short: a release reduction rather than a
// full fence and an atomic.
FLEXATTN_DEV void signal_reduced(int*& counter) {
  if (counter == nullptr) return;
  thread::bulk_wait<0>();
  thread::fence_proxy_async_global();  // the copy unit's adds before the flag below
  asm volatile("red.release.gpu.global.add.s32 [%0], 1;" ::"l"(counter) : "memory");
  counter = nullptr;
}

// Issues acc (64 x 64) = X_w Y^T as one wgmma group: X_w the warpgroup's 64 rows of a kv tile
// (K or V, kBN rows), Y a q tile (Q or dO, kBM rows), both K-major along the head dim (a k16 step
// is 32 bytes along a swizzled row, every 4 steps the next 64-element column block).
template <class T, int kD, int kBN, int kBM>
FLEXATTN_DEV void gemm_rows_qt(float (&acc)[8][4], uint32_t x_rows, uint32_t y_tile) {
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    const uint32_t step = (kk % 4) * 32;
    warpgroup::mma_ss<T, 64>(acc, warpgroup::smem_desc(x_rows + (kk / 4) * kBN * 128 + step, 0),
                             warpgroup::smem_desc(y_tile + (kk / 4) * kBM * 128 + step, 0),
                             kk > 0);
  }
  warpgroup::commit();
}

// Packs an accumulator tile (64 rows x 64 columns, f32) into the four k16 A fragments of a
// wgmma whose K runs along those columns.
template <class T>
FLEXATTN_DEV void to_a_fragments(const float (&x)[8][4], uint32_t (&a)[4][4]) {
#pragma unroll
  for (int kc = 0; kc < 4; ++kc) {
    a[kc][0] = thread::pack2<T>(x[2 * kc][0], x[2 * kc][1]);
    a[kc][1] = thread::pack2<T>(x[2 * kc][2], x[2 * kc][3]);
    a[kc][2] = thread::pack2<T>(x[2 * kc + 1][0], x[2 * kc + 1][1]);
    a[kc][3] = thread::pack2<T>(x[2 * kc + 1][2], x[2 * kc + 1][3]);
  }
}

// S^T accumulators -> P^T as the k16 A fragments of dV's product (pa) and P^T * g (left in s).
// Accumulator (ni, r) of this lane is kv row `kv_row` + 8 (r / 2) and q column 8 ni + 2 t + r % 2
// of the tile at m0. Each pair is packed as soon as it is computed: P^T never exists in f32.
// kExact: P from the natural lse (prob_and_grad), read from global memory only in that form.
template <class T, bool kCheck, bool kExact, class ScoreMod, class MaskMod>
FLEXATTN_DEV void probs_t(float (&s)[8][4], uint32_t (&pa)[4][4], const float* s_lse2,
                          const ScoreMod& score_mod, const MaskMod& mask_mod, bool partial, int b,
                          int hq, int m0, int kv_row, const BwdParams& p) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int ni = 0; ni < 8; ++ni) {
    float lse_n[2];
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      lse_n[c] = kExact ? bwd::natural_lse(p.lse, p.l_sb, p.l_sh, p.l_sr, b, hq,
                                           m0 + ni * 8 + 2 * t + c, p.Lq)
                        : 0.0f;
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float pr[2];
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int qc = ni * 8 + 2 * t + c;
        pr[c] = bwd::prob_and_grad<kCheck, kExact>(
            s[ni][2 * half + c], score_mod, mask_mod, partial, b, hq, m0 + qc, kv_row + 8 * half,
            p.Lq, p.Lkv, p.scale, p.scale_log2, s_lse2[qc], lse_n[c]);
      }
      pa[ni / 2][2 * (ni % 2) + half] = thread::pack2<T>(pr[0], pr[1]);
    }
  }
}

}  // namespace bwd90

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// `Unit`: see fwd_kernel_sm90 (a type private to the launching translation unit).
template <class Cfg, class T, class ScoreMod, class MaskMod, class Unit>
__global__ void __launch_bounds__(Cfg::kNThreads, 1)
    bwd_kernel_sm90(const __grid_constant__ BwdParams p, const __grid_constant__ BwdTileMaps maps,
                    const ScoreMod score_mod, const MaskMod mask_mod) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBM = Cfg::kBlockM, kBN = Cfg::kBlockN, kD = Cfg::kHeadDim;
  extern __shared__ unsigned char bwd90_smem_raw[];
  unsigned char* smem = cta::swizzle_aligned(bwd90_smem_raw);
  unsigned char* sK = smem + Cfg::kOffK;
  unsigned char* sDs = smem + Cfg::kOffDs;  // dS^T: (BLOCK_N kv rows, BLOCK_M q columns)
  float* sDq = reinterpret_cast<float*>(smem + Cfg::kOffDq);
  const float* sStats = reinterpret_cast<const float*>(smem + Cfg::kOffStats);
  auto* const s_info = reinterpret_cast<bwd90::StageInfo*>(smem + Cfg::kOffInfo);
  const bwd90::Barriers bar{reinterpret_cast<uint64_t*>(smem + Cfg::kOffBars)};

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int wg = warp / 4, ww = warp % 4;
  const int kv_w = wg * 64;  // the warpgroup's first kv row in the tile
  const auto [n_tile, hkv, b] = bwd_cta_tile(p);
  const int n0 = n_tile * kBN;

  if (tid == 0) {
    thread::mbar_init(bar.kv_full(), 1);
    thread::mbar_init(bar.q_full(0), 1);
    thread::mbar_init(bar.q_full(1), 1);
    ::cuda::ptx::fence_mbarrier_init(::cuda::ptx::sem_release, ::cuda::ptx::scope_cluster);
  }
  __syncthreads();
  if (tid == 0) {
    thread::mbar_arrive_expect_bytes(bar.kv_full(), 2 * Cfg::kTileKBytes);
    thread::tma_load_tile<kBN, kD>(sK, &maps.k, n0, hkv, b, bar.kv_full());
    thread::tma_load_tile<kBN, kD>(smem + Cfg::kOffV, &maps.v, n0, hkv, b, bar.kv_full());
  }

  float dk[kD / 8][4], dv[kD / 8][4];
#pragma unroll
  for (int i = 0; i < kD / 8; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) dk[i][r] = dv[i][r] = 0.0f;

  const bool n_edge = n0 + kBN > p.Lkv;
  const BwdDqRank dq_rank(p, n_tile, kBN);
  const int m_tiles_pad = p.Lq_pad / kBM;
  int* pending_sem = nullptr;  // thread 0, deterministic: the q tile whose reduction to announce
  bool kv_ready = false;
  int uses = 0;  // q tiles loaded so far (every head): stage uses % 2, phase parity (uses / 2) % 2

  // Shared-memory addresses the descriptors start from (transposed reads step k16 by 16 rows).
  const uint32_t k_rows = smem_u32(sK) + kv_w * 128;
  const uint32_t v_rows = smem_u32(smem + Cfg::kOffV) + kv_w * 128;
  constexpr uint32_t kColK = kBN * 128, kColQ = kBM * 128;  // column-block strides

  for (int hi = 0; hi < p.group; ++hi) {
    const int hq = hkv * p.group + hi;
    const int n_items = BwdQTileWalk::count(p, b, hq, n_tile, kBM, kBN);
    if (n_items == 0) continue;
    const int64_t ws_bh = static_cast<int64_t>(b) * p.Hq + hq;
    // The stage is free: every thread passed the end-of-tile barrier of its last use.
    if (tid == 0) {
      *reinterpret_cast<BwdQTileWalk*>(smem + Cfg::kOffWalk) =
          BwdQTileWalk(p, b, hq, n_tile, kBM, kBN);
      bwd90::load_next_q_tile<Cfg>(p, maps, smem, bar, uses % 2, hq, b);
    }

    for (int it = 0; it < n_items; ++it, ++uses) {
      const int st = uses % 2;
      // The next tile into the other stage, free since the last end-of-tile barrier.
      if (tid == 0 && it + 1 < n_items) {
        bwd90::load_next_q_tile<Cfg>(p, maps, smem, bar, st ^ 1, hq, b);
      }
      if (!kv_ready) {
        thread::mbar_wait(bar.kv_full(), 0);
        kv_ready = true;
      }
      thread::mbar_wait(bar.q_full(st), (uses / 2) & 1);
      // Field by field: thread 0 writes `seen` of this stage while the others read the rest.
      const int m_tile = s_info[st].m_tile;
      const bool partial = s_info[st].partial != 0;
      const int m0 = m_tile * kBM;
      const uint32_t q_tile = smem_u32(smem + Cfg::kOffQ + st * Cfg::kTileQBytes);
      const uint32_t do_tile = smem_u32(smem + Cfg::kOffDo + st * Cfg::kTileQBytes);
      const float* s_lse2 = sStats + (st * 2) * kBM;
      const float* s_delta = sStats + (st * 2 + 1) * kBM;

      // ---- S^T = K_w Q^T, dP^T = V_w dO^T ------------------------------------------------------
      float s[8][4], dp[8][4];
      warpgroup::fence_operand(s);
      warpgroup::fence_operand(dp);
      warpgroup::fence();
      bwd90::gemm_rows_qt<T, kD, kBN, kBM>(s, k_rows, q_tile);
      bwd90::gemm_rows_qt<T, kD, kBN, kBM>(dp, v_rows, do_tile);
      // While the products run: the last tile's reduction is done by now, or nearly.
      int seen = 0;
      if (tid == 0) {
        bwd90::signal_reduced(pending_sem);
        // Read early, so that at the end of the tile the turn is often known without a round trip.
        if (p.deterministic) seen = bwd::load_relaxed(p.dq_sem + ws_bh * m_tiles_pad + m_tile);
      }
      warpgroup::wait<1>();
      warpgroup::fence_operand(s);

      // ---- P^T (to A fragments) and P^T * g (left in s) ----------------------------------------
      const bool check = partial || n_edge || m0 + kBM > p.Lq;
      const int kv_row = n0 + kv_w + ww * 16 + g;
      uint32_t pa[4][4], dsa[4][4];
      // Over the 16 q columns of this lane's fragments, folded as they are read (an array of them
      // would be 16 more registers live across the products: measured as spills).
      bool big = false;
#pragma unroll
      for (int i = 0; i < 16; ++i) big = big || bwd::past_fast_limit(s_lse2[(i / 2) * 8 + 2 * t + i % 2]);
      const bool exact = __any_sync(0xffffffffu, big);
      auto probs = [&](auto check_c, auto exact_c) {
        bwd90::probs_t<T, decltype(check_c)::value, decltype(exact_c)::value>(
            s, pa, s_lse2, score_mod, mask_mod, check_c ? partial : false, b, hq, m0, kv_row, p);
      };
      bwd::with_prob_form(check, exact, probs);

      warpgroup::wait<0>();
      warpgroup::fence_operand(dp);
      // ---- dS^T = P^T g (dP^T - delta): A fragments, and stored for the dQ product -----------
      // Only a tile with masked pairs can meet garbage V there: it selects (bwd::dscore).
      auto form_ds = [&](auto select) {
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const float delta = s_delta[ni * 8 + 2 * t + r % 2];
            s[ni][r] = decltype(select)::value ? bwd::dscore(s[ni][r], dp[ni][r], delta)
                                               : s[ni][r] * (dp[ni][r] - delta);
          }
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int row = kv_w + ww * 16 + g + 8 * half;
            *reinterpret_cast<uint32_t*>(sDs + Swizzled128<kBN>::offset(row, ni * 8 + 2 * t) * 2) =
                thread::pack2<T>(s[ni][2 * half], s[ni][2 * half + 1]);
          }
        }
      };
      check ? form_ds(fstd::true_type{}) : form_ds(fstd::false_type{});
      bwd90::to_a_fragments<T>(s, dsa);

      // ---- dV_w += P^T dO, dK_w += dS^T Q (in flight across the barrier and the dQ product) --
      warpgroup::fence_operand(dv);
      warpgroup::fence_operand(dk);
      warpgroup::fence();
#pragma unroll
      for (int kc = 0; kc < kBM / 16; ++kc) {
        warpgroup::mma_rs_bt<T, kD>(dv, pa[kc],
                                    warpgroup::smem_desc(do_tile + kc * 16 * 128, kColQ));
      }
#pragma unroll
      for (int kc = 0; kc < kBM / 16; ++kc) {
        warpgroup::mma_rs_bt<T, kD>(dk, dsa[kc],
                                    warpgroup::smem_desc(q_tile + kc * 16 * 128, kColQ));
      }
      warpgroup::commit();

      thread::fence_proxy_async_shared();
      if (tid == 0) {
        thread::bulk_wait_read<0>();  // the last reduction has read the dQ tile
        if (p.deterministic) s_info[st].seen = seen;
      }
      __syncthreads();  // dS^T of both warpgroups stored; the dQ staging tile free

      // ---- dQ = dS K, A = dS^T read transposed, B = K read transposed. D = 128: columns
      // [64 wg, 64 wg + 64) over all kv rows; D = 64: all columns over this warpgroup's kv rows.
      constexpr int kDqSteps = kD == 128 ? kBN / 16 : 64 / 16;
      const uint32_t dq_a = smem_u32(sDs) + (kD == 128 ? 0 : kv_w * 128);
      const uint32_t dq_b = smem_u32(sK) + (kD == 128 ? wg * kColK : kv_w * 128);
      float dq[8][4];
      warpgroup::fence_operand(dq);
      warpgroup::fence();
#pragma unroll
      for (int kk = 0; kk < kDqSteps; ++kk) {
        warpgroup::mma_ss<T, 64, true, true>(dq, warpgroup::smem_desc(dq_a + kk * 16 * 128, 0),
                                             warpgroup::smem_desc(dq_b + kk * 16 * 128, 0),
                                             kk > 0);
      }
      warpgroup::commit();
      warpgroup::wait<0>();
      warpgroup::fence_operand(dq);
      warpgroup::fence_operand(dv);
      warpgroup::fence_operand(dk);
      // A masked key's garbage K (NaN / inf) meets dS = 0 in that product: such a warp's tile is
      // recomputed element by element, skipping the zeros of dS (masked_products.cuh), straight
      // into the staging tile - no registers held beside dK and dV. Only tiles with masked pairs.
      const bool dq_exact = check && any_nonfinite(reinterpret_cast<float(&)[1][8][4]>(dq));
      auto exact_dq = [&](int ni, int r) {
        const T* ds_t = reinterpret_cast<const T*>(sDs);
        const T* k_elems = reinterpret_cast<const T*>(sK);
        const int kv0 = kD == 128 ? 0 : kv_w;
        const int q = ww * 16 + g + 8 * (r / 2), col = (kD == 128 ? wg * 64 : 0) + ni * 8 + 2 * t + r % 2;
        return exact_dot(
            kDqSteps * 16,
            [&](int j) { return static_cast<float>(ds_t[Swizzled128<kBN>::offset(kv0 + j, q)]); },
            [&](int j) {
              return static_cast<float>(k_elems[Swizzled128<kBN>::offset(kv0 + j, col)]);
            });
      };

      // ---- dQ tile to shared memory (DqTileSm90 order), one bulk reduction into dq_accum ------
      if constexpr (kD == 128) {
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
          *reinterpret_cast<float4*>(sDq + (ni * Cfg::kNThreads + tid) * 4) =
              make_float4(dq[ni][0], dq[ni][1], dq[ni][2], dq[ni][3]);
        }
        if (__builtin_expect(dq_exact, 0)) {
#pragma unroll 1
          for (int e = 0; e < 32; ++e) sDq[((e / 4) * Cfg::kNThreads + tid) * 4 + e % 4] = exact_dq(e / 4, e % 4);
        }
      } else {
        // Warpgroup 0 stores its partial tile; after a CTA barrier warpgroup 1 adds its own onto
        // it, element by element in the same positions. (A named barrier that warpgroup 0 only
        // arrives at would let it run on, but to the end-of-tile barrier just below: no gain,
        // and compute-sanitizer's racecheck does not take arrive -> sync as an ordering.)
        float4* mine = reinterpret_cast<float4*>(sDq) + (tid % 128);
        float* mine_f = reinterpret_cast<float*>(mine);
        if (wg == 0) {
#pragma unroll
          for (int ni = 0; ni < 8; ++ni) {
            mine[ni * 128] = make_float4(dq[ni][0], dq[ni][1], dq[ni][2], dq[ni][3]);
          }
          if (__builtin_expect(dq_exact, 0)) {
#pragma unroll 1
            for (int e = 0; e < 32; ++e) mine_f[(e / 4) * 512 + e % 4] = exact_dq(e / 4, e % 4);
          }
        }
        __syncthreads();
        if (wg == 1) {
          if (__builtin_expect(dq_exact, 0)) {
#pragma unroll 1
            for (int e = 0; e < 32; ++e) mine_f[(e / 4) * 512 + e % 4] += exact_dq(e / 4, e % 4);
          } else {
#pragma unroll
            for (int ni = 0; ni < 8; ++ni) {
              const float4 o = mine[ni * 128];
              mine[ni * 128] = make_float4(o.x + dq[ni][0], o.y + dq[ni][1], o.z + dq[ni][2],
                                           o.w + dq[ni][3]);
            }
          }
        }
      }
      thread::fence_proxy_async_shared();
      // The dQ tile stored; every read of this stage (Q, dO, statistics), of dS^T and of K by
      // this tile's products is complete.
      __syncthreads();
      if (tid == 0) {
        float* const dst = p.dq_accum + (ws_bh * p.Lq_pad + m0) * kD;
        if (p.deterministic) {
          int* const sem = p.dq_sem + ws_bh * m_tiles_pad + m_tile;
          const int rank = dq_rank.of(p, b, hq, s_info[st].qb, n_tile);
          bwd::wait_dq_turn(s_info[st].seen, rank, sem, p.dq_stall);
          thread::fence_proxy_async_global();  // the acquire above before the copy unit's adds
          pending_sem = sem;
          // The first in the tile's order stores (dq_accum is not zeroed in this mode).
          // HAZARD: correct only because the order is total: wait_dq_turn never gives up and
          // lets an add through early (it traps instead), so this store lands before every add.
          if (rank == 0) {
            thread::bulk_store(dst, sDq, Cfg::kDqBytes);
          } else {
            thread::bulk_reduce_add(dst, sDq, Cfg::kDqBytes);
          }
        } else {
          thread::bulk_reduce_add(dst, sDq, Cfg::kDqBytes);
        }
      }
    }
  }
  // A CTA whose heads listed no q tile still waits for its K and V copies before it exits.
  if (!kv_ready) thread::mbar_wait(bar.kv_full(), 0);
  if (tid == 0) {
    thread::bulk_wait_read<0>();  // shared memory must outlive the last reduction's reads
    bwd90::signal_reduced(pending_sem);
  }

  // ---- epilogue: scale * dK and dV in the output dtype, through shared memory ----------------
  // K and V are free: every product that read them completed before the last end-of-tile
  // barrier. Fragments go to the swizzled layout (conflict-free, as the dS^T stores); rows then
  // leave in 16-byte chunks, consecutive threads along a row (coalesced, where 4-byte stores
  // straight from the fragments touched 8 rows per instruction).
  T* s_out = reinterpret_cast<T*>(sK);  // dK tile, then dV tile: (BLOCK_N, D) each
  constexpr int kTile = kBN * kD;
#pragma unroll
  for (int ni = 0; ni < kD / 8; ++ni) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int off = Swizzled128<kBN>::offset(kv_w + ww * 16 + g + 8 * half, ni * 8 + 2 * t);
      *reinterpret_cast<uint32_t*>(s_out + off) =
          thread::pack2<T>(dk[ni][2 * half] * p.scale, dk[ni][2 * half + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(s_out + kTile + off) =
          thread::pack2<T>(dv[ni][2 * half], dv[ni][2 * half + 1]);
    }
  }
  __syncthreads();
  T* const dk_bh = static_cast<T*>(p.dk) + b * p.dk_sb + hkv * p.dk_sh;
  T* const dv_bh = static_cast<T*>(p.dv) + b * p.dv_sb + hkv * p.dv_sh;
  constexpr int kChunksPerRow = kD / 8;
#pragma unroll 4
  for (int i = tid; i < 2 * kBN * kChunksPerRow; i += Cfg::kNThreads) {
    const int which = i / (kBN * kChunksPerRow), j = i % (kBN * kChunksPerRow);
    const int r = j / kChunksPerRow, c = j % kChunksPerRow;
    if (n0 + r >= p.Lkv) continue;
    const uint4 x =
        *reinterpret_cast<const uint4*>(s_out + which * kTile + Swizzled128<kBN>::offset(r, c * 8));
    T* dst = which == 0 ? dk_bh + (n0 + r) * p.dk_sr : dv_bh + (n0 + r) * p.dv_sr;
    *reinterpret_cast<uint4*>(dst + c * 8) = x;
  }
#endif
}

}  // namespace flexattn::detail::cuda
