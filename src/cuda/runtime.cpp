// The CUDA runtime calls behind Buffer/Tensor on Device::cuda (see src/device_memory.h).
#include <cuda_runtime.h>

#include <string>

#include "../device_memory.h"
#include "flexattn/tensor.h"

namespace flexattn::detail {
namespace {
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    throw Error(std::string("flexattn: CUDA error in ") + what + ": " + cudaGetErrorString(e));
  }
}
}  // namespace

bool cuda_device_present() {
  // Cached: the answer cannot change within a process, and the query costs a driver call.
  static const bool present = [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  }();
  return present;
}

void* cuda_malloc(size_t bytes) {
  if (!cuda_device_present()) {
    throw Error("flexattn: Device::cuda requested, but no CUDA device is visible");
  }
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc");
  return p;
}

void cuda_free(void* p) noexcept { cudaFree(p); }

void cuda_copy_to_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}

void cuda_synchronize() {
  if (cuda_device_present()) check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

void cuda_copy_to_host(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}

}  // namespace flexattn::detail
