// Shared by src/cuda/prebuilt_fwd*.cu: the head-dim set as a mask for launch_forward_for, and the
// explicit instantiations of launch_fwd_sm80 per head dim (prebuilt_fwd_dims.h says which).
#pragma once

#include "flexattn/attention.h"
#include "prebuilt_fwd_dims.h"

namespace flexattn::detail::cuda {

inline constexpr unsigned kPrebuiltFwdHeadDims = 0u
#if defined(FLEXATTN_CUDA_HDIM_32)
                                                 | fwd_head_dim_bit(32)
#endif
#if defined(FLEXATTN_CUDA_HDIM_64)
                                                 | fwd_head_dim_bit(64)
#endif
#if defined(FLEXATTN_CUDA_HDIM_96)
                                                 | fwd_head_dim_bit(96)
#endif
#if defined(FLEXATTN_CUDA_HDIM_128)
                                                 | fwd_head_dim_bit(128)
#endif
#if defined(FLEXATTN_CUDA_HDIM_192)
                                                 | fwd_head_dim_bit(192)
#endif
#if defined(FLEXATTN_CUDA_HDIM_256)
                                                 | fwd_head_dim_bit(256)
#endif
    ;

}  // namespace flexattn::detail::cuda

// `extern template` (declare: compiled elsewhere) or `template` (instantiate here) of one head
// dim's kernels for every prebuilt variant and both dtypes.
#define FLEXATTN_FWD_ONE(PREFIX, D, T, S, M)                                                      \
  PREFIX void ::flexattn::detail::cuda::launch_fwd_sm80<D, T, S, M>(                              \
      const ::flexattn::detail::cuda::FwdParams&, const S&, const M&, int, int, void*);
#define FLEXATTN_FWD_BOTH_DTYPES(PREFIX, D, S, M) \
  FLEXATTN_FWD_ONE(PREFIX, D, __nv_bfloat16, S, M) FLEXATTN_FWD_ONE(PREFIX, D, __half, S, M)
#define FLEXATTN_FWD_EXTERN_D(D, ...) FLEXATTN_FWD_BOTH_DTYPES(extern template, D, __VA_ARGS__)
#define FLEXATTN_FWD_INSTANTIATE_D(D, ...) FLEXATTN_FWD_BOTH_DTYPES(template, D, __VA_ARGS__)
