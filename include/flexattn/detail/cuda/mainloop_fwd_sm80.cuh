// The sm80 forward kernel (A100, RTX 30/40, and H100 through mma.sync): Q resident in shared
// memory, K / V tiles streamed with cp.async, S = Q K^T and O += P V on tensor cores, the online
// softmax in registers. Masks, softmax, epilogue and scheduling live in their own files so that a
// Hopper (wgmma / TMA) mainloop can sit beside this one and share them.
#pragma once

#include "epilogue_fwd.cuh"
#include "kernel_traits_fwd.cuh"
#include "mask.cuh"
#include "masked_products.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

template <class Traits, class T>
struct MainloopFwdSm80 {
  static constexpr int D = Traits::kHeadDim;
  static constexpr int kPitch = Traits::kSmemPitch;
  static constexpr int kMT = Traits::kMTiles;
  static constexpr int kNT = Traits::kNTilesS;
  static constexpr int kNTO = Traits::kNTilesO;

  // Copies `rows` x D of a [*, D] global matrix (row stride `sr`) into a padded shared tile with
  // cp.async; rows at or past `valid` are zero-filled (their source address is clamped to row 0).
  template <int kRows>
  FLEXATTN_DEV static void load_tile(T* smem, const T* gmem, int64_t sr, int valid) {
    constexpr int kChunks = Traits::kChunksPerRow;
    constexpr int kIters = kRows * kChunks / Traits::kNThreads;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int idx = it * Traits::kNThreads + static_cast<int>(threadIdx.x);
      const int r = idx / kChunks, c = idx % kChunks;
      const bool ok = r < valid;
      cta::cp_async_16(smem_u32(smem + r * kPitch + c * 8), gmem + (ok ? r * sr : 0) + c * 8, ok);
    }
  }

  // Whether the chunks this thread copied with load_tile<kRows> hold a NaN / inf (read back after
  // its cp.async group completed; rows past the end were zero-filled).
  template <int kRows>
  FLEXATTN_DEV static bool own_chunks_nonfinite(const T* smem) {
    constexpr int kChunks = Traits::kChunksPerRow;
    bool bad = false;
#pragma unroll
    for (int it = 0; it < kRows * kChunks / Traits::kNThreads; ++it) {
      const int idx = it * Traits::kNThreads + static_cast<int>(threadIdx.x);
      const int r = idx / kChunks, c = idx % kChunks;
      bad = bad || has_nonfinite<T>(*reinterpret_cast<const uint4*>(smem + r * kPitch + c * 8));
    }
    return bad;
  }

  // The fragment loads below are software-pipelined by hand, one step ahead of the mma that uses
  // them: ldmatrix and mma are `asm volatile` (they must not drift across barriers), so nvcc keeps
  // their order, and without this each mma would wait out its own load's shared-memory latency.

  // s (this warp's 16*MT x BLOCK_N) = Q (warp rows, D) K (BLOCK_N, D)^T, s zeroed first.
  FLEXATTN_DEV static void gemm_qk(float (&s)[kMT][kNT][4], uint32_t q_warp, uint32_t k_base) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int mi = 0; mi < kMT; ++mi)
#pragma unroll
      for (int ni = 0; ni < kNT; ++ni)
#pragma unroll
        for (int r = 0; r < 4; ++r) s[mi][ni][r] = 0.0f;
    // ldmatrix row addresses: A (Q) matrices are (rows 0-7 | 8-15) x (cols 0-7 | 8-15) in the
    // order a[0..3]; B (K) matrices are (kv 0-7, d 0-7), (kv 0-7, d 8-15), (kv 8-15, d 0-7),
    // (kv 8-15, d 8-15): b[0..1] for the first n8 tile, b[2..3] for the second.
    const uint32_t a_addr = q_warp + ((lane % 16) * kPitch + (lane / 16) * 8) * 2;
    const uint32_t b_addr =
        k_base + (((lane / 16) * 8 + lane % 8) * kPitch + ((lane / 8) % 2) * 8) * 2;
    constexpr int kNJ = kNT / 2, kKK = D / 16;  // pairs of n8 tiles, k16 slices
    // Only B is double-buffered: a second A buffer (8 more registers) tipped D = 128 into spills.
    uint32_t a[kMT][4], b[2][4];
    warp::ldmatrix_x4(b[0], b_addr);
#pragma unroll
    for (int kk = 0; kk < kKK; ++kk) {
#pragma unroll
      for (int mi = 0; mi < kMT; ++mi) {
        warp::ldmatrix_x4(a[mi], a_addr + (mi * 16 * kPitch + kk * 16) * 2);
      }
#pragma unroll
      for (int nj = 0; nj < kNJ; ++nj) {
        const int i = kk * kNJ + nj;  // step; the next one is loaded before this one's mma
        if (nj + 1 < kNJ) {
          warp::ldmatrix_x4(b[(i + 1) % 2], b_addr + ((nj + 1) * 16 * kPitch + kk * 16) * 2);
        } else if (kk + 1 < kKK) {
          warp::ldmatrix_x4(b[(i + 1) % 2], b_addr + (kk + 1) * 16 * 2);
        }
        const uint32_t b0[2] = {b[i % 2][0], b[i % 2][1]}, b1[2] = {b[i % 2][2], b[i % 2][3]};
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi) {
          warp::mma_16816<T>(s[mi][2 * nj], a[mi], b0);
          warp::mma_16816<T>(s[mi][2 * nj + 1], a[mi], b1);
        }
      }
    }
  }

  // o (warp rows, D) += P (warp rows, BLOCK_N) V (BLOCK_N, D); P taken from the softmax'd S
  // registers (two adjacent C tiles are one A fragment, see utils.cuh).
  FLEXATTN_DEV static void gemm_pv(float (&o)[kMT][kNTO][4], const float (&p)[kMT][kNT][4],
                                   uint32_t v_base) {
    const int lane = threadIdx.x % 32;
    // V matrices (ldmatrix.trans): (kv 0-7, d 0-7), (kv 8-15, d 0-7), (kv 0-7, d 8-15),
    // (kv 8-15, d 8-15): b[0..1] for the first d n8 tile, b[2..3] for the second.
    const uint32_t b_addr =
        v_base + ((((lane / 8) % 2) * 8 + lane % 8) * kPitch + (lane / 16) * 8) * 2;
    constexpr int kDJ = D / 16, kKC = kNT / 2;  // pairs of d n8 tiles, k16 kv slices
    uint32_t a[kMT][4], b[2][4];
    warp::ldmatrix_x4_trans(b[0], b_addr);
#pragma unroll
    for (int kc = 0; kc < kKC; ++kc) {
#pragma unroll
      for (int mi = 0; mi < kMT; ++mi) {
        a[mi][0] = thread::pack2<T>(p[mi][2 * kc][0], p[mi][2 * kc][1]);
        a[mi][1] = thread::pack2<T>(p[mi][2 * kc][2], p[mi][2 * kc][3]);
        a[mi][2] = thread::pack2<T>(p[mi][2 * kc + 1][0], p[mi][2 * kc + 1][1]);
        a[mi][3] = thread::pack2<T>(p[mi][2 * kc + 1][2], p[mi][2 * kc + 1][3]);
      }
#pragma unroll
      for (int dj = 0; dj < kDJ; ++dj) {
        const int i = kc * kDJ + dj;  // step; the next one is loaded before this one's mma
        if (dj + 1 < kDJ) {
          warp::ldmatrix_x4_trans(b[(i + 1) % 2], b_addr + (kc * 16 * kPitch + (dj + 1) * 16) * 2);
        } else if (kc + 1 < kKC) {
          warp::ldmatrix_x4_trans(b[(i + 1) % 2], b_addr + (kc + 1) * 16 * kPitch * 2);
        }
        const uint32_t b0[2] = {b[i % 2][0], b[i % 2][1]}, b1[2] = {b[i % 2][2], b[i % 2][3]};
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi) {
          warp::mma_16816<T>(o[mi][2 * dj], a[mi], b0);
          warp::mma_16816<T>(o[mi][2 * dj + 1], a[mi], b1);
        }
      }
    }
  }
};

// Unit: the launching translation unit's tag (sm90_unit.cuh).
template <class Traits, class T, class ScoreMod, class MaskMod, class Unit>
__global__ void __launch_bounds__(Traits::kNThreads, Traits::kMinBlocksPerSm)
    fwd_kernel_sm80(const FwdParams p, const ScoreMod score_mod, const MaskMod mask_mod) {
  using ML = MainloopFwdSm80<Traits, T>;
  constexpr int kMT = Traits::kMTiles, kNT = Traits::kNTilesS, kNTO = Traits::kNTilesO;
  constexpr int kPitch = Traits::kSmemPitch;
  constexpr bool kNoopScore = is_noop_score<ScoreMod>;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // (BLOCK_M, D), later the output staging tile
  T* sK = sQ + Traits::kSmemQ;             // (BLOCK_N, D)
  T* sV = sK + Traits::kSmemK;             // (BLOCK_N, D)

  const auto tile = FwdTileScheduler::get();
  const int b = tile.b, h = tile.h, hk = h / p.group;
  const int m0 = tile.m_tile * Traits::kBlockM;
  const int warp_id = static_cast<int>(threadIdx.x) / 32;
  const int wrow = warp_id * Traits::kRowsPerWarp;  // warp's first row within the tile

  const T* q = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh + m0 * p.q_sr;
  const T* k = static_cast<const T*>(p.k) + b * p.k_sb + hk * p.k_sh;
  const T* v = static_cast<const T*>(p.v) + b * p.v_sb + hk * p.v_sh;

  KvTileIter<Traits::kBlockN> iter(p, b, h, m0);
  auto cur = iter.first();

  ML::template load_tile<Traits::kBlockM>(sQ, q, p.q_sr, p.Lq - m0);
  cta::cp_async_commit();
  if (cur.n0 >= 0) {
    ML::template load_tile<Traits::kBlockN>(sK, k + cur.n0 * p.k_sr, p.k_sr, p.Lkv - cur.n0);
  }
  cta::cp_async_commit();

  float o[kMT][kNTO][4];
#pragma unroll
  for (int mi = 0; mi < kMT; ++mi)
#pragma unroll
    for (int nd = 0; nd < kNTO; ++nd)
#pragma unroll
      for (int r = 0; r < 4; ++r) o[mi][nd][r] = 0.0f;
  OnlineSoftmax<kMT> softmax;

  const uint32_t q_warp = smem_u32(sQ + wrow * kPitch);
  const uint32_t k_base = smem_u32(sK), v_base = smem_u32(sV);
  // Rows past Lq only occur in the last q tile; kv lanes past Lkv only in the last kv tile.
  const bool q_ragged = m0 + Traits::kBlockM > p.Lq;
  const ScoreUnits<kNoopScore> units(p.scale, p.scale_log2);

  while (cur.n0 >= 0) {
    const auto nxt = iter.next(cur);  // list read now, used after the QK^T product
    cta::cp_async_wait<0>();
    __syncthreads();  // K[cur] visible to all; every warp is done with the previous V
    ML::template load_tile<Traits::kBlockN>(sV, v + cur.n0 * p.v_sr, p.v_sr, p.Lkv - cur.n0);
    cta::cp_async_commit();

    float s[kMT][kNT][4];  // (warp rows, BLOCK_N)
    ML::gemm_qk(s, q_warp, k_base);
    if (units.prescale) scale_scores(s, p.scale_log2);
    const int row0 = m0 + wrow;
    score_and_mask_tile<kNoopScore>(s, score_mod, mask_mod, b, ConsecutiveRows{h, row0, p.Lq},
                                    cur.n0, cur.partial,
                                    q_ragged || cur.n0 + Traits::kBlockN > p.Lkv, p.Lkv, p.scale);

    cta::cp_async_wait<0>();
    // V[cur] visible to all; every warp is done with K[cur]. A partial tile also learns whether
    // V holds NaN / inf, which its masked pairs must not pick up (masked_products.cuh).
    const bool v_bad = __syncthreads_or(cur.partial &&
                                        ML::template own_chunks_nonfinite<Traits::kBlockN>(sV)) != 0;
    if (nxt.n0 >= 0) {
      ML::template load_tile<Traits::kBlockN>(sK, k + nxt.n0 * p.k_sr, p.k_sr, p.Lkv - nxt.n0);
    }
    cta::cp_async_commit();

    softmax.update(s, o, units.mult);
    if (v_bad) {
      add_pv_exact(o, s, [&](int kv, int col) { return static_cast<float>(sV[kv * kPitch + col]); });
    } else {
      ML::gemm_pv(o, s, v_base);
    }
    cur = nxt;
  }
  // With no kv tile at all the Q copy may still be in flight into rows the epilogue reuses.
  cta::cp_async_wait<0>();
  __syncthreads();

  float lse[2 * kMT];
  softmax.finalize(o, lse, units.natural);
  T* out = static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh + (m0 + wrow) * p.o_sr;
  float* lse_rows = p.lse + b * p.l_sb + h * p.l_sh + (m0 + wrow) * p.l_sr;
  store_out_lse<T, Traits::kRowsPerWarp, Traits::kHeadDim, PaddedRows<kPitch>>(
      o, lse, sQ + wrow * kPitch, out, p.o_sr, lse_rows, p.l_sr, p.Lq - m0 - wrow);
}

}  // namespace flexattn::detail::cuda
