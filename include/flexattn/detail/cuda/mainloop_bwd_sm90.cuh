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
//                                           whole 128-row kv tile: both warpgroups' dS^T)
// dK and dV (64 x D each per warpgroup) stay in registers for the whole kernel.
//
// Loads are cp.async by all 256 threads into the 128-byte-swizzled layout of wgmma.cuh; Q, dO and
// their row statistics are double-buffered, the next q tile loading while this one computes.
// HAZARD - proxies: cp.async and ordinary stores write shared memory through the generic proxy,
// wgmma reads it through the async proxy; every writer fences (fence.proxy.async) before the
// barrier that publishes the tile.
#pragma once

#include <cstdint>

#include "bwd_primitives.cuh"
#include "epilogue_fwd.cuh"
#include "kernel_traits_bwd.cuh"
#include "mainloop_bwd_sm80.cuh"
#include "utils.cuh"
#include "wgmma.cuh"

namespace flexattn::detail::cuda {

// Tiles: BLOCK_M = 64 q rows x BLOCK_N = 128 kv rows, the sm80 kernel's D = 128 tiles (so the
// workspaces, the rank kernel and the dQ counters are shared unchanged). Registers per thread:
// dK + dV 128 floats, S^T + dP^T 64, P^T + dS^T as 16-bit A fragments 32: 255 at most, one CTA of
// 8 warps per SM. Shared memory: K, V 32 KB each, Q and dO 2 x 16 KB each, dS^T 16 KB, row
// statistics 1 KB, 1 KB alignment slack: 146 KB.
template <int kHeadDim_>
struct BwdTraitsSm90 {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = 128;
  static constexpr int kNThreads = 256;
  static constexpr int kTileQBytes = kBlockM * kHeadDim * 2;  // one Q or dO stage
  static constexpr int kTileKBytes = kBlockN * kHeadDim * 2;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kTileKBytes;
  static constexpr int kOffQ = kOffV + kTileKBytes;
  static constexpr int kOffDo = kOffQ + 2 * kTileQBytes;
  static constexpr int kOffDs = kOffDo + 2 * kTileQBytes;
  static constexpr int kOffStats = kOffDs + kBlockN * kBlockM * 2;  // 2 stages x (lse2, delta)
  static constexpr int kSmemBytes = 1024 + kOffStats + 2 * 2 * kBlockM * 4;
  static_assert(kHeadDim == 128, "the sm90 backward is tiled for head dim 128");
};

template <int D>
inline constexpr bool kHasBwdSm90 = D == 128;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

namespace bwd90 {

FLEXATTN_DEV void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// cp.async of kRows x D rows (from global row `row0`, zero past `len`) into a swizzled tile.
template <int kRows, int D, class T>
FLEXATTN_DEV void load_rows(unsigned char* s, const T* g, int64_t stride_r, int row0, int len) {
  constexpr int kChunks = D / 8;
  static_assert((kRows * kChunks) % 256 == 0, "tile splits evenly over 256 threads");
#pragma unroll
  for (int i = 0; i < kRows * kChunks / 256; ++i) {
    const int idx = i * 256 + static_cast<int>(threadIdx.x);
    const int r = idx / kChunks, c = idx % kChunks;
    const bool ok = row0 + r < len;
    const T* src = g + (ok ? (row0 + r) * stride_r : 0) + c * 8;
    cta::cp_async_16(smem_u32(s) + Swizzled128<kRows>::offset(r, c * 8) * 2, src, ok);
  }
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

// S^T accumulators -> P^T (returned in pt) and P^T * g (left in s). Accumulator (ni, r) of this
// lane is kv row `kv_row` + 8 (r / 2) and q column 8 ni + 2 t + r % 2 of the tile at m0.
template <bool kCheck, class ScoreMod, class MaskMod>
FLEXATTN_DEV void probs_t(float (&s)[8][4], float (&pt)[8][4], const float* s_lse2,
                          const ScoreMod& score_mod, const MaskMod& mask_mod, bool partial, int b,
                          int hq, int m0, int kv_row, const BwdParams& p) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int ni = 0; ni < 8; ++ni) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int qc = ni * 8 + 2 * t + r % 2;
      pt[ni][r] = bwd::prob_and_grad<kCheck>(s[ni][r], score_mod, mask_mod, partial, b, hq,
                                             m0 + qc, kv_row + 8 * (r / 2), p.Lq, p.Lkv, p.scale,
                                             p.scale_log2, s_lse2[qc]);
    }
  }
}

}  // namespace bwd90

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// `Unit`: see fwd_kernel_sm90 (a type private to the launching translation unit).
template <class Cfg, class T, class ScoreMod, class MaskMod, class Unit>
__global__ void __launch_bounds__(Cfg::kNThreads, 1)
    bwd_kernel_sm90(const __grid_constant__ BwdParams p, const ScoreMod score_mod,
                    const MaskMod mask_mod) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBM = Cfg::kBlockM, kBN = Cfg::kBlockN, kD = Cfg::kHeadDim;
  extern __shared__ unsigned char bwd90_smem_raw[];
  unsigned char* smem = bwd90_smem_raw + ((1024u - (smem_u32(bwd90_smem_raw) & 1023u)) & 1023u);
  unsigned char* sK = smem + Cfg::kOffK;
  unsigned char* sV = smem + Cfg::kOffV;
  unsigned char* sDs = smem + Cfg::kOffDs;  // dS^T: (BLOCK_N kv rows, BLOCK_M q columns)
  float* sStats = reinterpret_cast<float*>(smem + Cfg::kOffStats);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int wg = warp / 4, ww = warp % 4;
  const int kv_w = wg * 64;  // the warpgroup's first kv row in the tile
  const int n_tile = p.deterministic ? p.num_n_tiles - 1 - static_cast<int>(blockIdx.x)
                                     : static_cast<int>(blockIdx.x);
  const int hkv = blockIdx.y, b = blockIdx.z;
  const int n0 = n_tile * kBN;

  const T* k_bh = static_cast<const T*>(p.k) + b * p.k_sb + hkv * p.k_sh;
  const T* v_bh = static_cast<const T*>(p.v) + b * p.v_sb + hkv * p.v_sh;
  bwd90::load_rows<kBN, kD>(sK, k_bh, p.k_sr, n0, p.Lkv);
  bwd90::load_rows<kBN, kD>(sV, v_bh, p.v_sr, n0, p.Lkv);
  cta::cp_async_commit();

  float dk[kD / 8][4], dv[kD / 8][4];
#pragma unroll
  for (int i = 0; i < kD / 8; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) dk[i][r] = dv[i][r] = 0.0f;

  const bool n_edge = n0 + kBN > p.Lkv;
  const int nb = p.sparse ? n0 / p.block_kv : 0;
  const int sub_n = p.sparse ? p.block_kv / kBN : 1;
  const int block_end = (nb + 1) * sub_n < p.num_n_tiles ? (nb + 1) * sub_n : p.num_n_tiles;
  const int rank_in_block = block_end - 1 - n_tile;
  const int m_tiles_pad = p.Lq_pad / kBM;
  int* pending_sem = nullptr;

  // Shared-memory addresses the descriptors start from (K-major tiles step k16 by 32 bytes along
  // a row and jump a column block every 4 steps; transposed reads step k16 by 16 rows).
  const uint32_t k_rows = smem_u32(sK) + kv_w * 128, v_rows = smem_u32(sV) + kv_w * 128;
  constexpr uint32_t kColK = kBN * 128, kColQ = kBM * 128;  // column-block strides

  for (int hi = 0; hi < p.group; ++hi) {
    const int hq = hkv * p.group + hi;
    BwdQTileWalk walk(p, b, hq, n_tile, kBM, kBN);
    const int n_items = walk.n_items;
    if (n_items == 0) continue;
    const int64_t ws_bh = static_cast<int64_t>(b) * p.Hq + hq;
    const T* q_bh = static_cast<const T*>(p.q) + b * p.q_sb + hq * p.q_sh;
    const T* do_bh = static_cast<const T*>(p.dout) + b * p.do_sb + hq * p.do_sh;
    const int64_t rank_row =
        p.sparse ? ((static_cast<int64_t>(p.mask_b == 1 ? 0 : b) * p.mask_h +
                     (p.mask_h == 1 ? 0 : hq)) * p.nqb) * p.nkvb + nb
                 : 0;
    // Q, dO and the row statistics of one q tile into stage st.
    auto load_q_tile = [&](int st, int m0) {
      bwd90::load_rows<kBM, kD>(smem + Cfg::kOffQ + st * Cfg::kTileQBytes, q_bh, p.q_sr, m0, p.Lq);
      bwd90::load_rows<kBM, kD>(smem + Cfg::kOffDo + st * Cfg::kTileQBytes, do_bh, p.do_sr, m0,
                                p.Lq);
      if (tid < 2 * kBM / 4) {  // 16-byte chunks: lse2 then delta (padded rows exist)
        const int which = tid / (kBM / 4), c = tid % (kBM / 4);
        const float* src = (which == 0 ? p.lse2 : p.delta) + ws_bh * p.Lq_pad + m0 + c * 4;
        cta::cp_async_16(smem_u32(sStats + (st * 2 + which) * kBM + c * 4), src, true);
      }
      cta::cp_async_commit();
    };

    BwdQTileWalk::Item cur = walk.next();
    BwdQTileWalk::Item nxt = n_items > 1 ? walk.next() : cur;
    __syncthreads();  // the previous head's last tile may still be reading stage 0
    load_q_tile(0, cur.m_tile * kBM);

    for (int it = 0; it < n_items; ++it) {
      const int m0 = cur.m_tile * kBM;
      const int st = it % 2;
      const bool has_next = it + 1 < n_items;
      const BwdQTileWalk::Item nxt2 = it + 2 < n_items ? walk.next() : nxt;
      int rank = 0;
      if (p.deterministic && tid == 0) {
        rank = p.sparse ? __ldg(p.dq_rank + rank_row + static_cast<int64_t>(cur.qb) * p.nkvb) +
                              rank_in_block
                        : p.num_n_tiles - 1 - n_tile;
      }

      cta::cp_async_wait<0>();
      bwd90::fence_proxy_async();
      // (a) this tile's Q, dO, statistics (and at the start K, V) are visible to both
      // warpgroups; (b) both are done with the previous tile: dS^T and the other stage are free.
      __syncthreads();
      int* const sem = p.dq_sem + ws_bh * m_tiles_pad + cur.m_tile;
      int seen = 0;
      if (p.deterministic && tid == 0) {
        bwd::signal_after_barrier(pending_sem);
        pending_sem = nullptr;
        seen = bwd::load_relaxed(sem);
      }
      if (has_next) load_q_tile(st ^ 1, nxt.m_tile * kBM);

      const uint32_t q_tile = smem_u32(smem + Cfg::kOffQ + st * Cfg::kTileQBytes);
      const uint32_t do_tile = smem_u32(smem + Cfg::kOffDo + st * Cfg::kTileQBytes);
      const float* s_lse2 = sStats + (st * 2) * kBM;
      const float* s_delta = sStats + (st * 2 + 1) * kBM;

      // ---- S^T = K_w Q^T, dP^T = V_w dO^T ------------------------------------------------------
      float s[8][4], dp[8][4];
      warpgroup::fence_operand(s);
      warpgroup::fence_operand(dp);
      warpgroup::fence();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        const uint32_t off = (kk / 4) * kColK + (kk % 4) * 32;
        const uint32_t offq = (kk / 4) * kColQ + (kk % 4) * 32;
        warpgroup::mma_ss<T, 64>(s, warpgroup::smem_desc(k_rows + off, 0),
                                 warpgroup::smem_desc(q_tile + offq, 0), kk > 0);
      }
      warpgroup::commit();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        const uint32_t off = (kk / 4) * kColK + (kk % 4) * 32;
        const uint32_t offq = (kk / 4) * kColQ + (kk % 4) * 32;
        warpgroup::mma_ss<T, 64>(dp, warpgroup::smem_desc(v_rows + off, 0),
                                 warpgroup::smem_desc(do_tile + offq, 0), kk > 0);
      }
      warpgroup::commit();
      warpgroup::wait<1>();
      warpgroup::fence_operand(s);

      // ---- P^T (to A fragments) and P^T * g (left in s) ----------------------------------------
      const bool check = cur.partial || n_edge || m0 + kBM > p.Lq;
      const int kv_row = n0 + kv_w + ww * 16 + g;
      float pt[8][4];
      if (check) {
        bwd90::probs_t<true>(s, pt, s_lse2, score_mod, mask_mod, cur.partial, b, hq, m0, kv_row, p);
      } else {
        bwd90::probs_t<false>(s, pt, s_lse2, score_mod, mask_mod, false, b, hq, m0, kv_row, p);
      }
      uint32_t pa[4][4], dsa[4][4];
      bwd90::to_a_fragments<T>(pt, pa);

      warpgroup::wait<0>();
      warpgroup::fence_operand(dp);
      // ---- dS^T = P^T g (dP^T - delta): A fragments, and stored for the dQ product -----------
#pragma unroll
      for (int ni = 0; ni < 8; ++ni) {
#pragma unroll
        for (int r = 0; r < 4; ++r) s[ni][r] *= dp[ni][r] - s_delta[ni * 8 + 2 * t + r % 2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = kv_w + ww * 16 + g + 8 * half;
          *reinterpret_cast<uint32_t*>(sDs + Swizzled128<kBN>::offset(row, ni * 8 + 2 * t) * 2) =
              thread::pack2<T>(s[ni][2 * half], s[ni][2 * half + 1]);
        }
      }
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

      bwd90::fence_proxy_async();
      __syncthreads();  // dS^T of both warpgroups stored

      // ---- dQ[:, 64 wg ..] = dS K[:, 64 wg ..]: A = dS^T read transposed, B = K read transposed
      float dq[8][4];
      warpgroup::fence_operand(dq);
      warpgroup::fence();
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        warpgroup::mma_ss<T, 64, true, true>(
            dq, warpgroup::smem_desc(smem_u32(sDs) + kk * 16 * 128, 0),
            warpgroup::smem_desc(smem_u32(sK) + wg * kColK + kk * 16 * 128, 0), kk > 0);
      }
      warpgroup::commit();
      warpgroup::wait<0>();
      warpgroup::fence_operand(dq);
      warpgroup::fence_operand(dv);
      warpgroup::fence_operand(dk);

      if (p.deterministic) {
        if (tid == 0) bwd::wait_dq_turn(seen, rank, sem);
        __syncthreads();
        pending_sem = sem;
      }
      float* dqa = p.dq_accum + (ws_bh * p.Lq_pad + m0 + ww * 16 + g) * kD + wg * 64 + 2 * t;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
          bwd::atomic_add2(dqa + 8 * half * kD + ni * 8, dq[ni][2 * half], dq[ni][2 * half + 1]);
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

  // ---- epilogue: dV, scale * dK in the output dtype (this warp's 16 kv rows) -----------------
  using Frags = float[1][kD / 8][4];
  bwd::store_dk_dv(reinterpret_cast<const Frags&>(dk), reinterpret_cast<const Frags&>(dv),
                   static_cast<T*>(p.dk) + b * p.dk_sb + hkv * p.dk_sh, p.dk_sr,
                   static_cast<T*>(p.dv) + b * p.dv_sb + hkv * p.dv_sh, p.dv_sr,
                   n0 + kv_w + ww * 16, 0, p.Lkv, p.scale);
#endif
}

}  // namespace flexattn::detail::cuda
