// The split-KV merge: the decode kernel's splits each left a part (out_s, lse_s) of every row in
// f32 workspaces [splits, B, Hq, Lq, D] / [splits, B, Hq, Lq]; this kernel merges them with the
// library's one merge (detail/merge.h) and writes out (q's dtype) and lse.
//
// One warp per row: every lane reads the parts' lse (splits is small: at most a few dozen) and
// merges them itself, then owns D / 32 columns of out, read coalesced across the warp.
#pragma once

#include "../merge.h"
#include "kernel_traits_decode.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

inline constexpr int kCombineWarps = 4;

template <int D, class T, class Unit>
__global__ void __launch_bounds__(kCombineWarps * 32) decode_combine_kernel(const DecodeParams p) {
  const int64_t rows = static_cast<int64_t>(p.B) * p.Hq * p.Lq;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const float total = merge_lse(p.splits, [&](int s) { return p.part_lse[s * rows + row]; });
  constexpr int kCols = (D + 31) / 32;
  float acc[kCols];
#pragma unroll
  for (int j = 0; j < kCols; ++j) acc[j] = 0.0f;
  for (int s = 0; s < p.splits; ++s) {
    const float w = merge_weight(p.part_lse[s * rows + row], total);
    if (w == 0.0f) continue;  // an empty part: its out is 0, and never NaN * 0
    const float* part = p.part_out + (s * rows + row) * D;
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const int c = lane + 32 * j;
      if (c < D) acc[j] = w != w ? w : fmaf(w, part[c], acc[j]);
    }
  }
  const int i = static_cast<int>(row % p.Lq);
  const int h = static_cast<int>((row / p.Lq) % p.Hq);
  const int b = static_cast<int>(row / (static_cast<int64_t>(p.Lq) * p.Hq));
  T* out = static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh + i * p.o_sr;
#pragma unroll
  for (int j = 0; j < kCols; ++j) {
    const int c = lane + 32 * j;
    if (c < D) out[c] = static_cast<T>(acc[j]);
  }
  if (lane == 0) p.lse[b * p.l_sb + h * p.l_sh + i * p.l_sr] = total;
}

}  // namespace flexattn::detail::cuda
