// After the backward main kernel: dq = scale * dq_accum, converted to q's dtype and written to
// the caller's (strided) dq view. Rows past Lq in the padded accumulator are dropped here.
// The scale is applied once here rather than to every partial sum the main kernel adds.
#pragma once

#include "../device_std.h"

#include "kernel_traits_bwd.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

inline constexpr int kPostThreads = 256;
inline constexpr int kPostRowsPerCta = kPostThreads / 8;  // 8 lanes per row, 8 elements a lane

// DqLayout: how the main kernel laid out dq_accum (kernel_traits_bwd.cuh). Unit: the launching
// translation unit's tag (sm90_unit.cuh).
template <class T, class DqLayout, class Unit>
__global__ void __launch_bounds__(kPostThreads)
    bwd_postprocess_kernel(const BwdParams p) {
  const int b = blockIdx.z, h = blockIdx.y;
  const int row = blockIdx.x * kPostRowsPerCta + static_cast<int>(threadIdx.x) / 8;
  if (row >= p.Lq) return;
  const int r = row % DqLayout::kTileRows;
  const float* src =
      p.dq_accum + ((static_cast<int64_t>(b) * p.Hq + h) * p.Lq_pad + row - r) * p.D;
  T* dst = static_cast<T*>(p.dq) + b * p.dq_sb + h * p.dq_sh + row * p.dq_sr;
  if (p.dq_first_stores) {
    // No CTA came to this q tile (its counter is 0): nothing was stored there, dQ is 0.
    constexpr int kRows = DqLayout::kTileRows;
    const int64_t tile = (static_cast<int64_t>(b) * p.Hq + h) * (p.Lq_pad / kRows) + row / kRows;
    if (__ldg(p.dq_sem + tile) == 0) {
      for (int c = (threadIdx.x % 8) * 8; c < p.D; c += 64) {
        *reinterpret_cast<uint4*>(dst + c) = make_uint4(0u, 0u, 0u, 0u);
      }
      return;
    }
  }
  for (int c = (threadIdx.x % 8) * 8; c < p.D; c += 64) {
    uint32_t w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 x = *reinterpret_cast<const float2*>(src + DqLayout::index(r, c + 2 * j, p.D));
      w[j] = thread::pack2<T>(x.x * p.scale, x.y * p.scale);
    }
    *reinterpret_cast<uint4*>(dst + c) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

}  // namespace flexattn::detail::cuda
