// Host side of the Hopper kernels' tile copies (tma.cuh): the CUtensorMap describing a
// [B, H, L, D] tensor of 16-bit elements, read in boxes of (rows x 64) elements with the 128-byte
// swizzle of wgmma.cuh. Rows past the tensor's end arrive as zeros, so the ragged last tile needs
// no special load. Plain C++ (built by the host compiler in src/cuda/tma.cpp).
#pragma once

#if defined(__CUDACC_RTC__)
// NVRTC has no <cuda.h>: the driver API's opaque type, with its layout (16 x 8 bytes, 64-byte
// aligned), for the kernels' parameters; maps are built on the host only.
typedef struct CUtensorMap_st {
  alignas(64) unsigned long long opaque[16];
} CUtensorMap;
#else
#include <cuda.h>  // CUtensorMap (a type only: nothing from the driver library is linked)

#include <cstdint>

namespace flexattn::detail::cuda {

// Builds the map of a [B, H, L, D] view (strides in elements, the last 1) read in boxes of
// `box_rows` x 64. False when the driver rejects the layout (the caller then takes a kernel that
// needs no map); throws Error when the driver lacks the function.
bool make_tile_map(CUtensorMap& map, const void* base, const int64_t (&shape)[4],
                   const int64_t (&stride)[4], int box_rows);

}  // namespace flexattn::detail::cuda
#endif
