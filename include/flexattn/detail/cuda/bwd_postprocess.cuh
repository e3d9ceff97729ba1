// After the backward main kernel: dq = scale * dq_accum, converted to q's dtype and written to
// the caller's (strided) dq view. Rows past Lq in the padded accumulator are dropped here.
// The scale is applied once here rather than to every partial sum the main kernel adds.
#pragma once

#include <cstdint>

#include "kernel_traits_bwd.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

inline constexpr int kPostThreads = 256;
inline constexpr int kPostRowsPerCta = kPostThreads / 8;  // 8 lanes per row, 8 elements a lane

template <class T>
__global__ void __launch_bounds__(kPostThreads)
    bwd_postprocess_kernel(const BwdParams p) {
  const int b = blockIdx.z, h = blockIdx.y;
  const int row = blockIdx.x * kPostRowsPerCta + static_cast<int>(threadIdx.x) / 8;
  if (row >= p.Lq) return;
  const float* src = p.dq_accum + ((static_cast<int64_t>(b) * p.Hq + h) * p.Lq_pad + row) * p.D;
  T* dst = static_cast<T*>(p.dq) + b * p.dq_sb + h * p.dq_sh + row * p.dq_sr;
  for (int c = threadIdx.x % 8; c < p.D / 8; c += 8) {
    const float4 x = *reinterpret_cast<const float4*>(src + c * 8);
    const float4 y = *reinterpret_cast<const float4*>(src + c * 8 + 4);
    uint4 w;
    w.x = thread::pack2<T>(x.x * p.scale, x.y * p.scale);
    w.y = thread::pack2<T>(x.z * p.scale, x.w * p.scale);
    w.z = thread::pack2<T>(y.x * p.scale, y.y * p.scale);
    w.w = thread::pack2<T>(y.z * p.scale, y.w * p.scale);
    *reinterpret_cast<uint4*>(dst + c * 8) = w;
  }
}

}  // namespace flexattn::detail::cuda
