// Host-side CUDA runtime calls the core library needs (allocation, copies, device presence).
// Implemented in src/cuda/runtime.cpp when built with CUDA, else in src/cuda_unavailable.cpp,
// where every call throws an Error that says the build has no CUDA.
#pragma once

#include <cstddef>
#include <memory>

namespace flexattn::detail {

bool cuda_device_present();
// `bytes` on the current device, ordered on `stream` (a cudaStream_t), from the allocator of
// set_cuda_allocator or the library's pool. The returned pointer's deleter hands the memory back
// on the same stream, to the allocator that made it. Throws Error when CUDA fails.
std::shared_ptr<void> cuda_allocate(size_t bytes, void* stream);
// Copies ordered on `stream` that return once the copy has completed.
void cuda_copy_to_device(void* dst, const void* src, size_t bytes, void* stream);
void cuda_copy_to_host(void* dst, const void* src, size_t bytes, void* stream);
void cuda_synchronize();
int cuda_current_device();
// An event recorded on `stream` now (never destroyed: for objects that live as long as the
// process), and a wait of `stream` for such an event; neither blocks the host.
void* cuda_record_event(void* stream);
void cuda_stream_wait(void* stream, void* event);

}  // namespace flexattn::detail
