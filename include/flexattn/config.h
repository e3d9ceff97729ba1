// Portability macros shared by every public header.
#pragma once

// FLEXATTN_HD marks code that runs on the host and on the GPU: every score_mod and mask_mod must
// carry it so the same functor object can be passed to the CPU and the CUDA backends.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FLEXATTN_HD __host__ __device__
#define FLEXATTN_DEVICE_COMPILE 1
#else
#define FLEXATTN_HD
#endif

#if defined(__CUDA_ARCH__)
#define FLEXATTN_ON_DEVICE 1
#endif

#if defined(_MSC_VER)
#define FLEXATTN_FORCEINLINE __forceinline
#else
#define FLEXATTN_FORCEINLINE inline __attribute__((always_inline))
#endif

// Full unrolling of a loop with a small constant trip count, for every compiler that builds the
// headers (GCC ignores `#pragma unroll`): unrolled, small local arrays become registers.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__) || defined(__clang__)
#define FLEXATTN_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define FLEXATTN_UNROLL _Pragma("GCC unroll 8")
#else
#define FLEXATTN_UNROLL
#endif

namespace flexattn::detail {
// Which kind of compiler built the including translation unit. The public templates that can
// reach the CUDA backend take it as a defaulted last template parameter (and the dispatch seam,
// detail/cuda/dispatch.h, sits in a namespace of the same kind): a .cpp file's instantiation
// (stock variants through the library's kernels, other functors throw) and a .cu file's (kernels
// compiled right there) are then different functions that the linker never merges, even for the
// same functors. Never name it.
#if defined(__CUDACC__)
struct NvccUnit {};
using CompilerUnit = NvccUnit;
#else
struct HostUnit {};
using CompilerUnit = HostUnit;
#endif
}  // namespace flexattn::detail
