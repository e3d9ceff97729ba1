// The sm80 backward main kernel (FlashAttention-2's scheme, mma.sync + ldmatrix + cp.async).
//
// CTA (kv tile n, kv head, batch): K, V tiles resident in shared memory; dK, dV accumulate in
// registers over every query head of the kv head's GQA group and every q tile the block mask's
// TRANSPOSED lists give for this kv block. Per q tile (BLOCK_M rows):
//   S  = Q K^T                     recomputed scores
//   s' = score_mod(scale * S) with its derivative g = ds'/ds from flexattn::Dual{s, 1}
//        (no functor call and g = 1 for NoopScore); mask_mod only on partial tiles
//   P  = exp2(s' log2e - lse2)     the forward's probabilities, exactly, from its lse
//   dP = dO V^T ;  dS = P * g * (dP - delta), exactly 0 where P g is 0 (bwd::dscore)
//   dV += P^T dO ;  dK += dS^T Q   (dK scaled once at the end)
//   dQ partial = dS K              added into the f32 dq_accum workspace (scaled in postprocess);
//                                  redone exactly where a masked key's K is NaN / inf
//                                  (masked_products.cuh)
//
// dQ reduction: several CTAs (one per kv tile) add into the same q tile of dq_accum.
//   deterministic (the default, AttentionOptions::deterministic = true): the adds into one q tile
//     happen one CTA at a time in a fixed order - descending kv tile - so every element sees the
//     same sequence of f32 additions on every run. A per-(b, h, q tile) counter says how many
//     CTAs have added; a CTA waits for its rank (the number of kv tiles above it whose transposed
//     lists hold the q tile, from bwd_dq_mark_kernel / bwd_dq_rank_kernel) and bumps the counter
//     once its adds are fenced. CTAs launch in descending kv-tile order, so a CTA only ever waits
//     for CTAs launched before it (no deadlock: the argument is at wait_dq_turn), and as they walk
//     their q tiles in ascending order, under causal and sliding-window masks the order is the
//     order in which the tiles are reached anyway (little waiting). The wait never gives up: a
//     counter that stands still for a minute stops the kernel with an error (wait_dq_turn).
//   non-deterministic: plain f32 atomics, CTAs in ascending kv-tile order (longest lists first
//     under causal masks, the better schedule). Measured 4-8% faster at L = 16k on an H100.
//   Launch order (bwd_cta_tile): kv tiles vary fastest, then kv heads, then batches. Heads
//     fastest (fewer ranks of one head in flight at once) measured worse on an H100 at L = 16k:
//     deterministic causal 247 vs 346 TFLOP/s, no mask 360 vs 381 (document 258 vs 239).
// Per q tile the dQ GEMM and its adds come before the dK GEMM, so the adds drain behind it.
//
// HAZARDS
//  - lanes past Lq / Lkv: Q, dO, K, V rows past the end are zero-filled (never garbage, which
//    could be NaN and survive a multiplication by zero), P and dS are forced to 0 there, and the
//    functors only ever see clamped, in-range indices.
//  - empty rows (lse = -inf): lse2 = +inf (bwd_preprocess.cuh) makes P = 0, never NaN.
#pragma once

#include "../device_std.h"

#include "../../math.h"
#include "../../mods.h"
#include "bwd_primitives.cuh"
#include "kernel_traits_bwd.cuh"
#include "mask.cuh"
#include "masked_products.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

// The q tiles one kv tile visits for one query head: the partial and full q-blocks of the
// transposed lists MERGED in ascending order (the deterministic dQ order relies on every CTA
// reaching its q tiles in ascending order, see the header), each cut into `sub` kernel q tiles.
// Dense walks every q tile, as partial.
//
// next() hands out one item; the list loads it issues are consumed only by a later next(), so a
// caller that runs two items ahead never waits on them.
struct BwdQTileWalk {
  struct Item {
    int m_tile;    // kernel q tile
    int qb;        // its mask q-block (the deterministic rank is per q-block)
    bool partial;  // mask_mod evaluated per element
  };
  static constexpr int kEnd = 0x7fffffff;

  const int32_t* part;
  const int32_t* full;
  int n_part, n_full;
  int n_items;  // kernel q tiles to visit
  int sub;      // kernel q tiles per mask q-block
  bool dense;
  int ip = 0, jf = 0;  // next unconsumed entry of each list
  int vp, vf;          // their values, kEnd once a list is exhausted
  int r, blk = 0;
  bool blk_partial = true;

  FLEXATTN_DEV BwdQTileWalk(const BwdParams& p, int b, int hq, int n_tile, int block_m,
                            int block_n) {
    if (!p.sparse) {
      part = full = nullptr;
      sub = 1;
      dense = true;
      n_part = n_items = p.Lq_pad / block_m;
      n_full = 0;
    } else {
      const int64_t row = list_row(p, b, hq, n_tile, block_n);
      dense = false;
      sub = p.block_q / block_m;
      n_part = __ldg(p.q_num + row);
      n_full = __ldg(p.full_q_num + row);
      n_items = (n_part + n_full) * sub;
      part = p.q_idx + row * p.nqb;
      full = p.full_q_idx + row * p.nqb;
    }
    vp = load_part(0);
    vf = load_full(0);
    r = sub - 1;  // the first next() takes a new block
  }
  // The row of the transposed lists for this kv tile and head.
  FLEXATTN_DEV static int64_t list_row(const BwdParams& p, int b, int hq, int n_tile,
                                       int block_n) {
    const int bm = p.mask_b == 1 ? 0 : b;
    const int hm = p.mask_h == 1 ? 0 : hq;
    return (static_cast<int64_t>(bm) * p.mask_h + hm) * p.nkvb + n_tile * block_n / p.block_kv;
  }
  // n_items without building the walk.
  FLEXATTN_DEV static int count(const BwdParams& p, int b, int hq, int n_tile, int block_m,
                                int block_n) {
    if (!p.sparse) return p.Lq_pad / block_m;
    const int64_t row = list_row(p, b, hq, n_tile, block_n);
    return (__ldg(p.q_num + row) + __ldg(p.full_q_num + row)) * (p.block_q / block_m);
  }
  FLEXATTN_DEV int load_part(int i) const {
    return i < n_part ? (dense ? i : __ldg(part + i)) : kEnd;
  }
  FLEXATTN_DEV int load_full(int i) const { return i < n_full ? __ldg(full + i) : kEnd; }
  // Call at most n_items times.
  FLEXATTN_DEV Item next() {
    if (++r == sub) {
      r = 0;
      blk_partial = vp < vf;  // a block is never in both lists
      if (blk_partial) {
        blk = vp;
        vp = load_part(++ip);
      } else {
        blk = vf;
        vf = load_full(++jf);
      }
    }
    return {blk * sub + r, blk, blk_partial};
  }
};

// This CTA's kv tile, kv head and batch (grid: num_n_tiles, Hkv, B; see the launch order in the
// header). Lower deterministic ranks launch first: descending kv tiles there.
struct BwdCtaTile {
  int n_tile, hkv, b;
};
FLEXATTN_DEV BwdCtaTile bwd_cta_tile(const BwdParams& p) {
  const int n_idx = static_cast<int>(blockIdx.x);
  return {p.deterministic ? p.num_n_tiles - 1 - n_idx : n_idx, static_cast<int>(blockIdx.y),
          static_cast<int>(blockIdx.z)};
}

// Deterministic dQ order: how many CTAs add into a q tile before this one. Sparse walks: the rank
// kernel's count of listed kv-blocks after this CTA's (dq_rank[bm, hm, qb, nb]) plus the kernel
// kv tiles after this one inside its own mask kv-block; dense walks: every kv tile after it.
struct BwdDqRank {
  int nb = 0;             // this CTA's mask kv-block
  int rank_in_block = 0;  // kernel kv tiles after this one inside it
  FLEXATTN_DEV BwdDqRank(const BwdParams& p, int n_tile, int block_n) {
    if (!p.sparse) return;
    nb = n_tile * block_n / p.block_kv;
    const int sub_n = p.block_kv / block_n;
    const int block_end = (nb + 1) * sub_n < p.num_n_tiles ? (nb + 1) * sub_n : p.num_n_tiles;
    rank_in_block = block_end - 1 - n_tile;
  }
  FLEXATTN_DEV int of(const BwdParams& p, int b, int hq, int qb, int n_tile) const {
    if (!p.sparse) return p.num_n_tiles - 1 - n_tile;
    const int64_t at = ((static_cast<int64_t>(p.mask_b == 1 ? 0 : b) * p.mask_h +
                         (p.mask_h == 1 ? 0 : hq)) * p.nqb + qb) * p.nkvb + nb;
    return __ldg(p.dq_rank + at) + rank_in_block;
  }
};

// cp.async of kRows rows of one (b, h) into a padded tile; rows at or past `len` are zero-filled.
template <class Cfg, int kRows, class T>
FLEXATTN_DEV void bwd_load_rows(T* s, const T* g, int64_t stride_r, int row0, int len) {
  constexpr int kC = Cfg::kChunksPerRow;
  static_assert((kRows * kC) % Cfg::kNThreads == 0, "tile splits evenly over threads");
#pragma unroll
  for (int i = 0; i < kRows * kC / Cfg::kNThreads; ++i) {
    const int idx = i * Cfg::kNThreads + static_cast<int>(threadIdx.x);
    const int r = idx / kC, c = idx % kC;
    const bool ok = row0 + r < len;
    // Past the end nothing is read, but the address must stay valid: row 0 exists (len >= 1).
    const T* src = g + (ok ? (row0 + r) * stride_r : 0) + c * 8;
    cta::cp_async_16(smem_u32(s + r * Cfg::kPitch + c * 8), src, ok);
  }
}

// S fragments -> P (stored to shared memory as T) and P * ds'/ds (returned in place).
// kCheck: the tile is partial (mask_mod per element) or crosses Lq / Lkv (bounds per element).
// kExact: P from the natural lse (prob_and_grad), read here only in that form.
template <bool kCheck, bool kExact, class Cfg, class T, class ScoreMod, class MaskMod>
FLEXATTN_DEV void bwd_probs(float (&s)[Cfg::kSdpMI][Cfg::kSdpNI][4], T* sP,
                            const float (&lse2)[Cfg::kSdpMI][2], const BwdParams& p,
                            const ScoreMod& score_mod,
                            const MaskMod& mask_mod, bool partial, int b, int hq, int q0, int k0,
                            int row_l0, int col_l0, int Lq, int Lkv, float scale,
                            float scale_log2) {
  const int lane = bwd::lane_id(), g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < Cfg::kSdpMI; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int rl = mi * 16 + g + 8 * half;
      const float lse_n =
          kExact ? bwd::natural_lse(p.lse, p.l_sb, p.l_sh, p.l_sr, b, hq, q0 + rl, Lq) : 0.0f;
#pragma unroll
      for (int ni = 0; ni < Cfg::kSdpNI; ++ni) {
        float pv[2];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          float& x = s[mi][ni][2 * half + c];
          pv[c] = bwd::prob_and_grad<kCheck, kExact>(x, score_mod, mask_mod, partial, b, hq,
                                                     q0 + rl, k0 + ni * 8 + 2 * t + c, Lq, Lkv,
                                                     scale, scale_log2, lse2[mi][half], lse_n);
        }
        const int cl = col_l0 + ni * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(sP + (row_l0 + rl) * Cfg::kPitchS + cl) =
            thread::pack2<T>(pv[0], pv[1]);
      }
    }
  }
}

// Unit: the launching translation unit's tag (sm90_unit.cuh).
template <class Cfg, class T, class ScoreMod, class MaskMod, class Unit>
__global__ void __launch_bounds__(Cfg::kNThreads, Cfg::kMinBlocksPerSm)
    bwd_kernel_sm80(const BwdParams p, const ScoreMod score_mod, const MaskMod mask_mod) {
  constexpr int kBM = Cfg::kBlockM, kBN = Cfg::kBlockN, kD = Cfg::kHeadDim;
  constexpr int kPitch = Cfg::kPitch, kPitchS = Cfg::kPitchS;
  extern __shared__ __align__(16) unsigned char bwd_smem[];
  T* smem = reinterpret_cast<T*>(bwd_smem);
  T* sK = smem + Cfg::kOffK;  // (BLOCK_N, D)
  T* sV = smem + Cfg::kOffV;  // (BLOCK_N, D)
  T* sQ = smem + Cfg::kOffQ;  // kStagesQ x (BLOCK_M, D)
  T* sDo = smem + Cfg::kOffDo;  // kStagesDo x (BLOCK_M, D)
  T* sP = smem + Cfg::kOffP;    // (BLOCK_M, BLOCK_N)
  T* sDs = smem + Cfg::kOffDs;  // (BLOCK_M, BLOCK_N)

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const auto [n_tile, hkv, b] = bwd_cta_tile(p);
  const int n0 = n_tile * kBN;

  const T* k_bh = static_cast<const T*>(p.k) + b * p.k_sb + hkv * p.k_sh;
  const T* v_bh = static_cast<const T*>(p.v) + b * p.v_sb + hkv * p.v_sh;
  bwd_load_rows<Cfg, kBN>(sK, k_bh, p.k_sr, n0, p.Lkv);
  bwd_load_rows<Cfg, kBN>(sV, v_bh, p.v_sr, n0, p.Lkv);
  cta::cp_async_commit();

  // Warp tile origins of the three GEMM shapes.
  const int sdp_m0 = (warp % Cfg::kSdpWarpsM) * Cfg::kSdpRows;
  const int sdp_n0 = (warp / Cfg::kSdpWarpsM) * Cfg::kSdpCols;
  const int dkv_n0 = (warp % Cfg::kDkvWarpsN) * Cfg::kDkvRows;
  const int dkv_d0 = (warp / Cfg::kDkvWarpsN) * Cfg::kDkvCols;
  const int dq_m0 = (warp % Cfg::kDqWarpsM) * Cfg::kDqRows;
  const int dq_d0 = (warp / Cfg::kDqWarpsM) * Cfg::kDqCols;

  const bwd::FragB<kPitch> fb_k(sK, sdp_n0);     // S  = Q K^T:  B(d, kv) = K[kv][d]
  const bwd::FragB<kPitch> fb_v(sV, sdp_n0);     // dP = dO V^T: B(d, kv) = V[kv][d]
  const bwd::FragAt<kPitchS> fa_pt(sP, dkv_n0);  // dV += P^T dO: A(kv, q) = P[q][kv]
  const bwd::FragAt<kPitchS> fa_dst(sDs, dkv_n0);  // dK += dS^T Q
  const bwd::FragA<kPitchS> fa_ds(sDs, dq_m0);     // dQ = dS K: A(q, kv) = dS[q][kv]
  const bwd::FragBt<kPitch> fb_kt(sK, dq_d0);      //            B(kv, d) = K[kv][d]

  float acc_dk[Cfg::kDkvMI][Cfg::kDkvNI][4];  // (BLOCK_N, D) split over warps
  float acc_dv[Cfg::kDkvMI][Cfg::kDkvNI][4];
  bwd::zero(acc_dk);
  bwd::zero(acc_dv);

  const bool n_edge = n0 + kBN > p.Lkv;
  const BwdDqRank dq_rank(p, n_tile, kBN);
  const int m_tiles_pad = p.Lq_pad / kBM;

  // Deterministic mode: the counter of the q tile whose dQ adds this CTA made last. Thread 0 bumps
  // it after the next barrier (the next tile's first one), by then the adds have long drained, so
  // its fence is short, and only warp 0 pays it.
  int* pending_sem = nullptr;

  for (int hi = 0; hi < p.group; ++hi) {
    const int hq = hkv * p.group + hi;
    BwdQTileWalk walk(p, b, hq, n_tile, kBM, kBN);
    const int n_items = walk.n_items;
    if (n_items == 0) continue;
    const int64_t ws_bh = static_cast<int64_t>(b) * p.Hq + hq;
    const T* q_bh = static_cast<const T*>(p.q) + b * p.q_sb + hq * p.q_sh;
    const T* do_bh = static_cast<const T*>(p.dout) + b * p.do_sb + hq * p.do_sh;

    BwdQTileWalk::Item cur = walk.next();
    BwdQTileWalk::Item nxt = n_items > 1 ? walk.next() : cur;
    __syncthreads();  // the previous head's last tile may still be reading Q / dO stage 0
    bwd_load_rows<Cfg, kBM>(sQ, q_bh, p.q_sr, cur.m_tile * kBM, p.Lq);
    bwd_load_rows<Cfg, kBM>(sDo, do_bh, p.do_sr, cur.m_tile * kBM, p.Lq);
    cta::cp_async_commit();

    for (int it = 0; it < n_items; ++it) {
      const int m0 = cur.m_tile * kBM;
      const bool has_next = it + 1 < n_items;
      const int m0_next = nxt.m_tile * kBM;
      T* sQc = sQ + (Cfg::kStagesQ == 2 ? it % 2 : 0) * kBM * kPitch;
      T* sDoc = sDo + (Cfg::kStagesDo == 2 ? it % 2 : 0) * kBM * kPitch;

      // Loads whose latency this iteration hides: the walk two items ahead, the deterministic
      // rank, this tile's row statistics.
      const BwdQTileWalk::Item nxt2 = it + 2 < n_items ? walk.next() : nxt;
      int rank = 0;
      if (p.deterministic && tid == 0) rank = dq_rank.of(p, b, hq, cur.qb, n_tile);
      float lse2[Cfg::kSdpMI][2], delta[Cfg::kSdpMI][2];
#pragma unroll
      for (int mi = 0; mi < Cfg::kSdpMI; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t row = ws_bh * p.Lq_pad + m0 + sdp_m0 + mi * 16 + g + 8 * half;
          lse2[mi][half] = __ldg(p.lse2 + row);
          delta[mi][half] = __ldg(p.delta + row);
        }
      }

      cta::cp_async_wait<0>();
      // (a) this tile's Q, dO (and at the start K, V) are visible to every warp; (b) every warp
      // is done with the previous tile, so its P, dS and Q / dO stage may be overwritten.
      __syncthreads();
      int* const sem = p.dq_sem + ws_bh * m_tiles_pad + cur.m_tile;
      int seen = 0;  // deterministic: this tile's counter, read early (waited on before the adds)
      if (p.deterministic && tid == 0) {
        bwd::signal_after_barrier(pending_sem);
        pending_sem = nullptr;
        seen = bwd::load_relaxed(sem);
      }
      if (has_next && (Cfg::kStagesQ == 2 || Cfg::kStagesDo == 2)) {
        if constexpr (Cfg::kStagesQ == 2) {
          bwd_load_rows<Cfg, kBM>(sQ + ((it + 1) % 2) * kBM * kPitch, q_bh, p.q_sr, m0_next, p.Lq);
        }
        if constexpr (Cfg::kStagesDo == 2) {
          bwd_load_rows<Cfg, kBM>(sDo + ((it + 1) % 2) * kBM * kPitch, do_bh, p.do_sr, m0_next,
                                  p.Lq);
        }
        cta::cp_async_commit();
      }

      // ---- S = Q K^T, P, dP = dO V^T, dS ----------------------------------------------------
      float acc_s[Cfg::kSdpMI][Cfg::kSdpNI][4];  // (BLOCK_M, BLOCK_N) split over warps
      bwd::zero(acc_s);
      bwd::warp_gemm<T, Cfg::kSdpMI, Cfg::kSdpNI, kD / 16>(
          acc_s, bwd::FragA<kPitch>(sQc, sdp_m0), fb_k);
      const bool check = cur.partial || n_edge || m0 + kBM > p.Lq;
      bool big = false;
#pragma unroll
      for (int mi = 0; mi < Cfg::kSdpMI; ++mi)
        big = big || bwd::past_fast_limit(lse2[mi][0]) || bwd::past_fast_limit(lse2[mi][1]);
      const bool exact = __any_sync(0xffffffffu, big);
      auto probs = [&](auto check_c, auto exact_c) {
        bwd_probs<decltype(check_c)::value, decltype(exact_c)::value, Cfg>(
            acc_s, sP, lse2, p, score_mod, mask_mod, check_c ? cur.partial : false, b, hq,
            m0 + sdp_m0, n0 + sdp_n0, sdp_m0, sdp_n0, p.Lq, p.Lkv, p.scale, p.scale_log2);
      };
      bwd::with_prob_form(check, exact, probs);
      float acc_dp[Cfg::kSdpMI][Cfg::kSdpNI][4];  // (BLOCK_M, BLOCK_N)
      bwd::zero(acc_dp);
      bwd::warp_gemm<T, Cfg::kSdpMI, Cfg::kSdpNI, kD / 16>(
          acc_dp, bwd::FragA<kPitch>(sDoc, sdp_m0), fb_v);
      // Only a tile with masked pairs can meet garbage V in dP: it selects (bwd::dscore).
      auto form_ds = [&](auto select) {
#pragma unroll
        for (int mi = 0; mi < Cfg::kSdpMI; ++mi) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int rl = sdp_m0 + mi * 16 + g + 8 * half;
#pragma unroll
            for (int ni = 0; ni < Cfg::kSdpNI; ++ni) {
              float d[2];
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const float pg = acc_s[mi][ni][2 * half + c], dp = acc_dp[mi][ni][2 * half + c];
                d[c] = decltype(select)::value ? bwd::dscore(pg, dp, delta[mi][half])
                                               : pg * (dp - delta[mi][half]);
              }
              *reinterpret_cast<uint32_t*>(sDs + rl * kPitchS + sdp_n0 + ni * 8 + 2 * t) =
                  thread::pack2<T>(d[0], d[1]);
            }
          }
        }
      };
      check ? form_ds(fstd::true_type{}) : form_ds(fstd::false_type{});
      __syncthreads();  // P and dS complete

      // ---- dV += P^T dO ---------------------------------------------------------------------
      bwd::warp_gemm<T, Cfg::kDkvMI, Cfg::kDkvNI, kBM / 16>(
          acc_dv, fa_pt, bwd::FragBt<kPitch>(sDoc, dkv_d0));
      if constexpr (Cfg::kStagesDo == 1) {
        if (has_next) {  // dO's last reader is done: load the next tile behind dQ and dK
          __syncthreads();
          bwd_load_rows<Cfg, kBM>(sDo, do_bh, p.do_sr, m0_next, p.Lq);
          cta::cp_async_commit();
        }
      }

      // ---- dQ partial = dS K, added into dq_accum (before dK, so the adds drain behind it) ----
      {
        float acc_dq[Cfg::kDqMI][Cfg::kDqNI][4];  // (BLOCK_M, D)
        bwd::zero(acc_dq);
        bwd::warp_gemm<T, Cfg::kDqMI, Cfg::kDqNI, kBN / 16>(acc_dq, fa_ds, fb_kt);
        // A masked key's garbage K (NaN / inf) meets dS = 0 in that product: redo such a tile
        // exactly, skipping the zeros of dS (masked_products.cuh). Only tiles with masked pairs.
        if (__builtin_expect(check && any_nonfinite(acc_dq), 0)) {
#pragma unroll
          for (int mi = 0; mi < Cfg::kDqMI; ++mi)
#pragma unroll
            for (int ni = 0; ni < Cfg::kDqNI; ++ni)
#pragma unroll
              for (int r = 0; r < 4; ++r) {
                const int q = dq_m0 + mi * 16 + g + 8 * (r / 2), col = dq_d0 + ni * 8 + 2 * t + r % 2;
                acc_dq[mi][ni][r] = exact_dot(
                    kBN, [&](int j) { return static_cast<float>(sDs[q * kPitchS + j]); },
                    [&](int j) { return static_cast<float>(sK[j * kPitch + col]); });
              }
        }
        if (p.deterministic) {
          if (tid == 0) bwd::wait_dq_turn(seen, rank, sem, p.dq_stall);
          __syncthreads();
          pending_sem = sem;
        }
        float* dqa = p.dq_accum + (ws_bh * p.Lq_pad + m0 + dq_m0) * kD + dq_d0;
#pragma unroll
        for (int mi = 0; mi < Cfg::kDqMI; ++mi) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
#pragma unroll
            for (int ni = 0; ni < Cfg::kDqNI; ++ni) {
              bwd::atomic_add2(dqa + (mi * 16 + g + 8 * half) * kD + ni * 8 + 2 * t,
                               acc_dq[mi][ni][2 * half], acc_dq[mi][ni][2 * half + 1]);
            }
          }
        }
      }

      // ---- dK += dS^T Q ---------------------------------------------------------------------
      bwd::warp_gemm<T, Cfg::kDkvMI, Cfg::kDkvNI, kBM / 16>(
          acc_dk, fa_dst, bwd::FragBt<kPitch>(sQc, dkv_d0));
      if constexpr (Cfg::kStagesQ == 1) {
        if (has_next) {  // Q's last reader is done: load the next tile
          __syncthreads();
          bwd_load_rows<Cfg, kBM>(sQ, q_bh, p.q_sr, m0_next, p.Lq);
          cta::cp_async_commit();
        }
      }

      cur = nxt;
      nxt = nxt2;
    }
  }
  if (p.deterministic) {
    __syncthreads();
    if (tid == 0) bwd::signal_after_barrier(pending_sem);
  }

  cta::cp_async_wait<0>();  // K, V still in flight when no head listed a q tile

  // ---- epilogue: dV, scale * dK in the output dtype --------------------------------------------
  bwd::store_dk_dv(acc_dk, acc_dv, static_cast<T*>(p.dk) + b * p.dk_sb + hkv * p.dk_sh, p.dk_sr,
                   static_cast<T*>(p.dv) + b * p.dv_sb + hkv * p.dv_sh, p.dv_sr, n0 + dkv_n0,
                   dkv_d0, p.Lkv, p.scale);
}

}  // namespace flexattn::detail::cuda
