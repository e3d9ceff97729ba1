// Shared by src/cuda/prebuilt_bwd*.cu: which head dims the library's stock backward kernels are
// built for, and the explicit instantiations of launch_bwd_sm80 per head dim.
//
// Head dims come from the same CMake defines as the forward's (prebuilt_fwd.h):
// FLEXATTN_CUDA_HEAD_DIMS_SET and FLEXATTN_CUDA_HDIM_<D> for each listed D, default {64, 128}.
// Each head dim costs 8 variants x 2 dtypes x 2 architectures backward kernels (~2-4 s of nvcc
// each), so every head dim is its own translation unit (prebuilt_bwd_d<D>.cu): they compile in
// parallel. A user's own .cu gets every head dim.
#pragma once

#include "flexattn/attention.h"

#if !defined(FLEXATTN_CUDA_HEAD_DIMS_SET)
#define FLEXATTN_CUDA_HDIM_64 1
#define FLEXATTN_CUDA_HDIM_128 1
#endif

namespace flexattn::detail::cuda {

inline constexpr unsigned kPrebuiltBwdHeadDims = 0u
#if defined(FLEXATTN_CUDA_HDIM_32)
                                                 | bwd_head_dim_bit(32)
#endif
#if defined(FLEXATTN_CUDA_HDIM_64)
                                                 | bwd_head_dim_bit(64)
#endif
#if defined(FLEXATTN_CUDA_HDIM_96)
                                                 | bwd_head_dim_bit(96)
#endif
#if defined(FLEXATTN_CUDA_HDIM_128)
                                                 | bwd_head_dim_bit(128)
#endif
#if defined(FLEXATTN_CUDA_HDIM_192)
                                                 | bwd_head_dim_bit(192)
#endif
#if defined(FLEXATTN_CUDA_HDIM_256)
                                                 | bwd_head_dim_bit(256)
#endif
    ;

}  // namespace flexattn::detail::cuda

// `extern template` (declare: compiled elsewhere) or `template` (instantiate here) of one head
// dim's backward for every prebuilt variant and both dtypes.
#define FLEXATTN_BWD_ONE(PREFIX, D, T, S, M)                                                      \
  PREFIX void ::flexattn::detail::cuda::launch_bwd_sm80<D, T, S, M>(                              \
      const ::flexattn::detail::cuda::BwdParams&, const S&, const M&, void*);
#define FLEXATTN_BWD_BOTH_DTYPES(PREFIX, D, S, M) \
  FLEXATTN_BWD_ONE(PREFIX, D, __nv_bfloat16, S, M) FLEXATTN_BWD_ONE(PREFIX, D, __half, S, M)
#define FLEXATTN_BWD_EXTERN_D(D, ...) FLEXATTN_BWD_BOTH_DTYPES(extern template, D, __VA_ARGS__)
#define FLEXATTN_BWD_INSTANTIATE_D(D, ...) FLEXATTN_BWD_BOTH_DTYPES(template, D, __VA_ARGS__)
