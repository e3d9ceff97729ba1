// The split-KV merge: the decode kernel's splits each left a part (out_s, lse_s) of every row in
// f32 workspaces [splits, B, Hq, Lq, D] / [splits, B, Hq, Lq]; this kernel merges them with the
// library's one merge (detail/merge.h) and writes out (q's dtype) and lse.
//
// One CTA per row, every load of a row in flight at once: a decode step has few rows (B = 1:
// 32 of them) and many splits (33 on an H200), so a loop over the splits that waits for each
// part in turn would cost a memory latency per split, tens of microseconds per call.
//   1. thread s reads split s's lse into shared memory; one thread merges them there, and each
//      thread turns its split's lse into the split's weight;
//   2. the threads form groups of D / 4 (one float4 column each); group g sums the splits
//      g, g + groups, ... (independent loads, unrolled), and the groups meet in shared memory.
// Launched as a programmatic dependent of the decode kernel where the GPU has it (sm90+): it
// is scheduled while the decode kernel finishes and waits for it in wait_for_prior_grid().
#pragma once

#include "../merge.h"
#include "kernel_traits_decode.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

inline constexpr int kCombineThreads = 128;
inline constexpr int kMaxSplits = 256;  // decode_plan's clamp

template <int D, class T, class Unit>
__global__ void __launch_bounds__(kCombineThreads) decode_combine_kernel(const DecodeParams p) {
  constexpr int kCols = D / 4;                         // float4 columns of a row
  constexpr int kGroups = kCombineThreads / kCols;     // D = 96: 5 groups, 8 threads idle
  static_assert(D % 32 == 0 && kGroups >= 1, "head dims 32..256");
  __shared__ float s_w[kMaxSplits];  // the splits' lse, then their weights
  __shared__ float s_total;
  __shared__ float4 s_acc[kGroups][kCols];
  grid::wait_for_prior_grid();
  grid::allow_dependents();  // the next decode step's kernel may be scheduled (it waits too)

  const int64_t rows = static_cast<int64_t>(p.B) * p.Hq * p.Lq;
  const int64_t row = blockIdx.x;
  const int tid = static_cast<int>(threadIdx.x);
  for (int s = tid; s < p.splits; s += kCombineThreads) s_w[s] = p.part_lse[s * rows + row];
  __syncthreads();
  if (tid == 0) s_total = merge_lse(p.splits, [&](int s) { return s_w[s]; });
  __syncthreads();
  const float total = s_total;
  for (int s = tid; s < p.splits; s += kCombineThreads) s_w[s] = merge_weight(s_w[s], total);
  __syncthreads();

  const int g = tid / kCols, c = tid % kCols;
  if (g < kGroups) {
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // Every split wrote its part (an empty one: zeros), so the load needs no guard; a weight of
    // 0 skips the part (never NaN * 0), a NaN weight makes the row NaN.
#pragma unroll 4
    for (int s = g; s < p.splits; s += kGroups) {
      const float4 x = reinterpret_cast<const float4*>(p.part_out + (s * rows + row) * D)[c];
      const float w = s_w[s];
      if (w != w) {
        acc = make_float4(w, w, w, w);
      } else if (w != 0.0f) {
        acc = make_float4(fmaf(w, x.x, acc.x), fmaf(w, x.y, acc.y), fmaf(w, x.z, acc.z),
                          fmaf(w, x.w, acc.w));
      }
    }
    s_acc[g][c] = acc;
  }
  __syncthreads();
  if (tid >= kCols) return;
  float4 sum = s_acc[0][tid];
#pragma unroll
  for (int j = 1; j < kGroups; ++j) {
    const float4 x = s_acc[j][tid];
    sum = make_float4(sum.x + x.x, sum.y + x.y, sum.z + x.z, sum.w + x.w);
  }
  const int i = static_cast<int>(row % p.Lq);
  const int h = static_cast<int>((row / p.Lq) % p.Hq);
  const int b = static_cast<int>(row / (static_cast<int64_t>(p.Lq) * p.Hq));
  T* out = static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh + i * p.o_sr + 4 * tid;
  out[0] = static_cast<T>(sum.x);
  out[1] = static_cast<T>(sum.y);
  out[2] = static_cast<T>(sum.z);
  out[3] = static_cast<T>(sum.w);
  if (tid == 0) p.lse[b * p.l_sb + h * p.l_sh + i * p.l_sr] = total;
}

}  // namespace flexattn::detail::cuda
