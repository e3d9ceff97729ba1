// The CUDA runtime calls behind Buffer/Tensor on Device::cuda (see src/device_memory.h), and the
// backward's workspace pool (detail/cuda/workspace.h).
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "../device_memory.h"
#include "flexattn/detail/cuda/workspace.h"
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

namespace flexattn::detail::cuda {
namespace {

cudaMemPool_t workspace_pool() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  static std::mutex mutex;
  static std::map<int, cudaMemPool_t> pools;  // never destroyed: they live as long as the process
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = pools.find(dev);
  if (it != pools.end()) return it->second;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = dev;
  cudaMemPool_t pool = nullptr;
  check(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate");
  uint64_t keep = UINT64_MAX;  // release threshold: never trim at synchronisation
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
        "cudaMemPoolSetAttribute");
  pools.emplace(dev, pool);
  return pool;
}

}  // namespace

void* workspace_alloc(size_t bytes, cudaStream_t stream) {
  void* p = nullptr;
  check(cudaMallocFromPoolAsync(&p, bytes, workspace_pool(), stream), "cudaMallocFromPoolAsync");
  return p;
}

void workspace_free(void* p, cudaStream_t stream) noexcept { cudaFreeAsync(p, stream); }

}  // namespace flexattn::detail::cuda
