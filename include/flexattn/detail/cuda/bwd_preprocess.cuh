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

#include <cstdint>

#include "kernel_traits_bwd.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

// 8 lanes per row (an aligned group of a warp), each summing 16-byte chunks j, j+8, ... of the row.
inline constexpr int kPreThreads = 256;
inline constexpr int kPreRowsPerCta = kPreThreads / 8;

template <class T>
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
// mask kv-blocks listed for q-block qb (partial or full) AFTER block nb, that add into qb's dQ
// before any tile of nb does (the main kernel orders the adds by descending kv tile).
// From the FORWARD lists (kv-blocks per q-block, ascending), by binary search.
// Grid (nqb, mask H, mask B). A template (on the kernel's BLOCK_N) so that every translation unit
// may instantiate it without clashing host stubs.
inline constexpr int kRankThreads = 128;

FLEXATTN_DEV int count_greater(const int32_t* list, int n, int x) {
  int lo = 0, hi = n;  // first index with list[i] > x
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (__ldg(list + mid) > x) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return n - lo;
}

template <int kBlockN>
__global__ void __launch_bounds__(kRankThreads) bwd_dq_rank_kernel(const BwdParams p) {
  const int64_t row =
      (static_cast<int64_t>(blockIdx.z) * p.mask_h + blockIdx.y) * p.nqb + blockIdx.x;
  const int32_t* part = p.kv_idx + row * p.nkvb;
  const int32_t* full = p.full_kv_idx + row * p.nkvb;
  const int n_part = __ldg(p.kv_num + row), n_full = __ldg(p.full_kv_num + row);
  const int sub_n = p.block_kv / kBlockN;  // kernel tiles per mask kv-block
  const int last = p.nkvb - 1;
  // The last mask kv-block may hold fewer kernel tiles (those starting past Lkv do not exist).
  const int last_short = sub_n * p.nkvb - p.num_n_tiles;
  const bool last_listed = (n_part > 0 && __ldg(part + n_part - 1) == last) ||
                           (n_full > 0 && __ldg(full + n_full - 1) == last);
  for (int nb = threadIdx.x; nb < p.nkvb; nb += kRankThreads) {
    const int blocks_after = count_greater(part, n_part, nb) + count_greater(full, n_full, nb);
    p.dq_rank[row * p.nkvb + nb] =
        blocks_after * sub_n - (last_listed && nb < last ? last_short : 0);
  }
}

}  // namespace flexattn::detail::cuda
