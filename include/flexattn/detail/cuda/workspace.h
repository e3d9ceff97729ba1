// Scratch memory of the backward (its f32 dQ accumulator and row statistics): stream-ordered
// allocations from a memory pool the library keeps per device. Implemented in src/cuda/runtime.cpp.
//
// Why a pool of our own: the device's default pool hands its memory back to the system at every
// synchronisation (release threshold 0), so a training loop that synchronises once a step would
// map and unmap the whole workspace - for a long sequence hundreds of megabytes - on every
// backward call. This pool keeps what it has mapped for the life of the process (as a caching
// allocator does); the memory is reused by every later call on the device.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace flexattn::detail::cuda {

// On the current device, ordered on `stream`; throws Error when CUDA fails.
void* workspace_alloc(size_t bytes, cudaStream_t stream);
void workspace_free(void* p, cudaStream_t stream) noexcept;

}  // namespace flexattn::detail::cuda
