// Which head dims the library's stock forward and backward kernels are built for. The macros come
// first so that the per-head-dim files can test them before including anything heavy (an
// unlisted head dim's file then costs nvcc nothing).
//
// Head dims come from CMake (option FLEXATTN_CUDA_HEAD_DIMS, a list): it defines
// FLEXATTN_CUDA_HEAD_DIMS_SET and FLEXATTN_CUDA_HDIM_<D> for each listed D. Without them the
// default is {64, 128}, which keeps the library build inside CI's budget (each head dim costs
// 8 variants x 2 dtypes x 2 architectures kernels). A user's own .cu gets every head dim.
#pragma once

#if !defined(FLEXATTN_CUDA_HEAD_DIMS_SET)
#define FLEXATTN_CUDA_HDIM_64 1
#define FLEXATTN_CUDA_HDIM_128 1
#endif

#include "flexattn/detail/cuda/head_dims.cuh"

namespace flexattn::detail::cuda {

// The unit tag (detail/cuda/sm90_unit.cuh) of the library's prebuilt kernels and launchers: one
// type with external linkage, so that prebuilt_fwd.cu / prebuilt_bwd.cu reach the instantiations
// of the per-head-dim files (all built with the library's one architecture list), while a user's
// .cu, which tags its own with its private ThisUnit, never shares one with them.
struct LibraryUnit {};

// The same list as a head-dim mask for launch_forward_for / launch_backward_for.
inline constexpr unsigned kPrebuiltHeadDims = 0u
#if defined(FLEXATTN_CUDA_HDIM_32)
                                              | head_dim_bit(32)
#endif
#if defined(FLEXATTN_CUDA_HDIM_64)
                                              | head_dim_bit(64)
#endif
#if defined(FLEXATTN_CUDA_HDIM_96)
                                              | head_dim_bit(96)
#endif
#if defined(FLEXATTN_CUDA_HDIM_128)
                                              | head_dim_bit(128)
#endif
#if defined(FLEXATTN_CUDA_HDIM_192)
                                              | head_dim_bit(192)
#endif
#if defined(FLEXATTN_CUDA_HDIM_256)
                                              | head_dim_bit(256)
#endif
    ;

}  // namespace flexattn::detail::cuda
