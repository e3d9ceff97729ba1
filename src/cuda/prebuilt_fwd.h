// Shared by src/cuda/prebuilt_fwd*.cu: the explicit instantiations of launch_fwd_kernel and
// launch_decode_kernel (contiguous and paged decode) per head dim (prebuilt_head_dims.h says which).
#pragma once

#include "flexattn/attention.h"
#include "prebuilt_head_dims.h"

// `extern template` (declare: compiled elsewhere) or `template` (instantiate here) of one head
// dim's kernels for every prebuilt variant and both dtypes.
#define FLEXATTN_FWD_ONE(PREFIX, D, T, S, M)                                                      \
  PREFIX void ::flexattn::detail::cuda::launch_fwd_kernel<D, T, S, M,                              \
                                                          ::flexattn::detail::cuda::LibraryUnit>(  \
      const ::flexattn::detail::FwdArgs&, const ::flexattn::detail::cuda::FwdParams&, const S&,   \
      const M&);                                                                                \
  PREFIX void ::flexattn::detail::cuda::launch_decode_kernel<                                    \
      D, T, S, M, ::flexattn::detail::cuda::LibraryUnit>(::flexattn::detail::cuda::DecodeParams, \
                                                         bool, void*, const S&, const M&);
#define FLEXATTN_FWD_BOTH_DTYPES(PREFIX, D, S, M) \
  FLEXATTN_FWD_ONE(PREFIX, D, __nv_bfloat16, S, M) FLEXATTN_FWD_ONE(PREFIX, D, __half, S, M)
#define FLEXATTN_FWD_EXTERN_D(D, ...) FLEXATTN_FWD_BOTH_DTYPES(extern template, D, __VA_ARGS__)
#define FLEXATTN_FWD_INSTANTIATE_D(D, ...) FLEXATTN_FWD_BOTH_DTYPES(template, D, __VA_ARGS__)
