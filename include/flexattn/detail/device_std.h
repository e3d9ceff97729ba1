// The few standard-library pieces that code compiled for the GPU uses - fixed-width integers in
// the global namespace, numeric limits, type traits and concepts - from the C++ library under a
// host compiler and nvcc, and from CCCL's libcu++ under NVRTC, which has no host headers (issue
// 11: kernels compiled at run time from the same headers). Code that may be compiled by NVRTC
// names them through flexattn::fstd, never std.
#pragma once

#if defined(__CUDACC_RTC__)
#include <cuda/std/concepts>
#include <cuda/std/cstdint>
#include <cuda/std/limits>
#include <cuda/std/type_traits>
namespace flexattn {
namespace fstd = ::cuda::std;
}  // namespace flexattn
#else
#include <concepts>
#include <cstdint>
#include <limits>
#include <type_traits>
namespace flexattn {
namespace fstd = ::std;
}  // namespace flexattn
#endif
