// Host-side CUDA runtime calls the core library needs (allocation, copies, device presence).
// Implemented in src/cuda/runtime.cpp when built with CUDA, else in src/cuda_unavailable.cpp,
// where every call throws an Error that says the build has no CUDA.
#pragma once

#include <cstddef>

namespace flexattn::detail {

bool cuda_device_present();
void* cuda_malloc(size_t bytes);
void cuda_free(void* p) noexcept;
void cuda_copy_to_device(void* dst, const void* src, size_t bytes);
void cuda_copy_to_host(void* dst, const void* src, size_t bytes);
void cuda_synchronize();

}  // namespace flexattn::detail
