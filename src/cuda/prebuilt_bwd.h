// Shared by src/cuda/prebuilt_bwd*.cu: which head dims the library's stock backward kernels are
// built for, and the explicit instantiations of launch_bwd_kernel per head dim.
//
// Head dims: prebuilt_head_dims.h, shared with the forward.
// Each head dim costs 8 variants x 2 dtypes x 2 architectures backward kernels (~2-4 s of nvcc
// each), so every head dim is its own translation unit (prebuilt_bwd_d<D>.cu): they compile in
// parallel. A user's own .cu gets every head dim.
#pragma once

#include "flexattn/attention.h"
#include "prebuilt_head_dims.h"

// `extern template` (declare: compiled elsewhere) or `template` (instantiate here) of one head
// dim's backward for every prebuilt variant and both dtypes.
#define FLEXATTN_BWD_ONE(PREFIX, D, T, S, M)                                                      \
  PREFIX void ::flexattn::detail::cuda::launch_bwd_kernel<D, T, S, M,                              \
                                                          ::flexattn::detail::cuda::LibraryUnit>(  \
      const ::flexattn::detail::BwdArgs&, const ::flexattn::detail::cuda::BwdParams&, const S&,    \
      const M&);
#define FLEXATTN_BWD_BOTH_DTYPES(PREFIX, D, S, M) \
  FLEXATTN_BWD_ONE(PREFIX, D, __nv_bfloat16, S, M) FLEXATTN_BWD_ONE(PREFIX, D, __half, S, M)
#define FLEXATTN_BWD_EXTERN_D(D, ...) FLEXATTN_BWD_BOTH_DTYPES(extern template, D, __VA_ARGS__)
#define FLEXATTN_BWD_INSTANTIATE_D(D, ...) FLEXATTN_BWD_BOTH_DTYPES(template, D, __VA_ARGS__)
