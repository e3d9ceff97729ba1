// Scratch memory of the backward (its f32 dQ accumulator and row statistics): stream-ordered
// allocations from the same allocator as every other Device::cuda buffer (the library's pool, or
// the one of set_cuda_allocator; see tensor.h). Implemented in src/cuda/runtime.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

namespace flexattn::detail::cuda {

// On the current device, ordered on `stream`; handed back on `stream` when the pointer is
// released (after the last kernel using it has been enqueued). Throws Error when CUDA fails.
std::shared_ptr<void> workspace_alloc(size_t bytes, cudaStream_t stream);

}  // namespace flexattn::detail::cuda
