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
