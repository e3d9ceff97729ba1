// Before the backward main kernel, one pass over the q rows:
//   delta[row] = sum_d dO[row, d] * O[row, d]       (f32; dS = P * (dP - delta) needs it per row)
//   lse2[row]  = lse[row] * log2(e)                  (the kernel's exp2 units)
//   dq_accum[row, :] = 0                             (the f32 dQ accumulator the kernel adds into;
//                                                     not with dq_first_stores)
// for every row of the padded workspaces, Lq_pad >= Lq.
//
// HAZARD - empty rows: lse = -inf where every key of a row is masked. lse2 is then +inf, so the
// kernel's P = exp2(s - lse2) is 0 for every score, masked (-inf) ones included, where
// exp2(-inf - (-inf)) would be NaN. Padding rows past Lq get the same +inf and delta 0.
#pragma once

#include "../device_std.h"

#include "kernel_traits_bwd.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

// 8 lanes per row (an aligned group of a warp), each summing 16-byte chunks j, j+8, ... of the row.
inline constexpr int kPreThreads = 256;
inline constexpr int kPreRowsPerCta = kPreThreads / 8;

// Unit: the launching translation unit's tag (sm90_unit.cuh), as for every kernel here.
template <class T, class Unit>
__global__ void __launch_bounds__(kPreThreads)
    bwd_preprocess_kernel(const BwdParams p) {
  const int b = blockIdx.z, h = blockIdx.y;
  const int row = blockIdx.x * kPreRowsPerCta + static_cast<int>(threadIdx.x) / 8;
  const int j = threadIdx.x % 8;
  const int chunks = p.D / 8;
  const int64_t ws_row = (static_cast<int64_t>(b) * p.Hq + h) * p.Lq_pad + row;
  if (row >= p.Lq_pad) return;  // whole 8-lane groups leave together: shuffles below stay full

  float acc = 0.0f;
  if (row < p.Lq) {
    const T* o = static_cast<const T*>(p.out) + b * p.o_sb + h * p.o_sh + row * p.o_sr;
    const T* d = static_cast<const T*>(p.dout) + b * p.do_sb + h * p.do_sh + row * p.do_sr;
    for (int c = j; c < chunks; c += 8) {
      const uint4 ov = *reinterpret_cast<const uint4*>(o + c * 8);
      const uint4 dv = *reinterpret_cast<const uint4*>(d + c * 8);
      const uint32_t ow[4] = {ov.x, ov.y, ov.z, ov.w};
      const uint32_t dw[4] = {dv.x, dv.y, dv.z, dv.w};
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        float o0, o1, d0, d1;
        thread::unpack2<T>(ow[w], o0, o1);
        thread::unpack2<T>(dw[w], d0, d1);
        acc += o0 * d0 + o1 * d1;
      }
    }
  }
  // Rows are whole 8-lane groups, so the xor-shuffles stay inside a row's lanes.
  const unsigned group_mask = 0xffu << (threadIdx.x % 32 / 8 * 8);
  acc += __shfl_xor_sync(group_mask, acc, 1);
  acc += __shfl_xor_sync(group_mask, acc, 2);
  acc += __shfl_xor_sync(group_mask, acc, 4);

  if (j == 0) {
    float l2 = __int_as_float(0x7f800000);  // +inf: padding row or an empty row (lse = -inf)
    if (row < p.Lq) {
      const float l = p.lse[b * p.l_sb + h * p.l_sh + row * p.l_sr];
      if (l != thread::neg_inf()) l2 = l * 1.4426950408889634f;
    }
    p.lse2[ws_row] = l2;
    p.delta[ws_row] = row < p.Lq ? acc : 0.0f;
  }
  if (p.dq_first_stores) return;
  float4* dqa = reinterpret_cast<float4*>(p.dq_accum + ws_row * p.D);
  for (int c = j; c < p.D / 4; c += 8) dqa[c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

}  // namespace flexattn::detail::cuda

namespace flexattn::detail::cuda {

// Deterministic mode, sparse walk: dq_rank[bm][hm][qb][nb] = the number of kernel kv tiles, in
// mask kv-blocks AFTER nb whose lists hold q-block qb, that add into qb's dQ before any tile of nb
// does (the main kernel orders the adds by descending kv tile). Counted from the TRANSPOSED lists
// (q-blocks per kv-block), the very lists the main kernel walks, so a rank counts exactly the CTAs
// that will bump the q tile's counter, whatever the lists hold (see wait_dq_turn). Two passes over
// the zeroed array: bwd_dq_mark_kernel writes each listed (qb, nb) block's kernel kv tiles, then
// bwd_dq_rank_kernel turns every (bm, hm, qb) row into its exclusive suffix sums over nb.
inline constexpr int kRankThreads = 128;

// Grid (nkvb, mask H, mask B). Indices out of range are skipped (the walk cannot reach them in a
// valid mask, and a mark there would be out of bounds).
template <int kBlockN, class Unit>
__global__ void __launch_bounds__(kRankThreads) bwd_dq_mark_kernel(const BwdParams p) {
  const int nb = blockIdx.x;
  const int64_t bh = static_cast<int64_t>(blockIdx.z) * p.mask_h + blockIdx.y;
  const int64_t row = bh * p.nkvb + nb;
  // Kernel kv tiles of mask kv-block nb: the last block may hold fewer (tiles past Lkv do not exist).
  const int sub_n = p.block_kv / kBlockN;
  const int end = min((nb + 1) * sub_n, p.num_n_tiles);
  const int tiles = max(end - nb * sub_n, 0);
  int* const marks = p.dq_rank + bh * p.nqb * p.nkvb + nb;  // marks[qb * nkvb]
#pragma unroll
  for (int list = 0; list < 2; ++list) {
    const int32_t* idx = (list == 0 ? p.q_idx : p.full_q_idx) + row * p.nqb;
    const int n = min(__ldg((list == 0 ? p.q_num : p.full_q_num) + row), p.nqb);
    for (int i = threadIdx.x; i < n; i += kRankThreads) {
      const int qb = __ldg(idx + i);
      if (qb >= 0 && qb < p.nqb) marks[static_cast<int64_t>(qb) * p.nkvb] = tiles;
    }
  }
}

// Grid (ceil(nqb / 4), mask H, mask B): one warp per (bm, hm, qb) row, in place, 32 kv-blocks at
// a time from the top: rank[nb] = sum of marks[nb'] over nb' > nb.
template <class Unit>
__global__ void __launch_bounds__(kRankThreads) bwd_dq_rank_kernel(const BwdParams p) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int qb = static_cast<int>(blockIdx.x) * (kRankThreads / 32) + warp;
  if (qb >= p.nqb) return;  // whole warps leave: the shuffles below stay full
  int* const r =
      p.dq_rank + ((static_cast<int64_t>(blockIdx.z) * p.mask_h + blockIdx.y) * p.nqb + qb) * p.nkvb;
  int above = 0;  // marks of the kv-blocks above this chunk
  for (int top = p.nkvb; top > 0; top -= 32) {
    const int nb = top - 1 - lane;  // lane 0 takes the chunk's highest block
    const int mark = nb >= 0 ? r[nb] : 0;
    int incl = mark;  // marks of nb and of the chunk's blocks above it
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int up = __shfl_up_sync(0xffffffffu, incl, d);
      if (lane >= d) incl += up;
    }
    if (nb >= 0) r[nb] = above + incl - mark;
    above += __shfl_sync(0xffffffffu, incl, 31);
  }
}

}  // namespace flexattn::detail::cuda
