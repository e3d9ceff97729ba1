// The CUDA runtime calls behind Buffer/Tensor on Device::cuda (see src/device_memory.h): the
// stream-ordered allocator (the library's pool, or the host framework's of set_cuda_allocator),
// which also serves the backward's workspaces (detail/cuda/workspace.h), and copies ordered on a
// stream.
#include <cuda_runtime.h>

#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../device_memory.h"
#include "flexattn/detail/cuda/launch_record.h"
#include "flexattn/detail/cuda/workspace.h"
#include "flexattn/tensor.h"

namespace flexattn::detail {
namespace {
// A failed call after the deterministic backward's watchdog stopped a kernel carries its record.
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    throw Error(std::string("flexattn: CUDA error in ") + what + ": " + cudaGetErrorString(e) +
                cuda::dq_stall_message());
  }
}

// Why a pool of our own: the device's default pool hands its memory back to the system at every
// synchronisation (release threshold 0), so a training loop that synchronises once a step would
// map and unmap its outputs and workspaces - for a long sequence hundreds of megabytes - on every
// call. This pool keeps what it has mapped for the life of the process.
cudaMemPool_t library_pool(int dev) {
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

std::mutex allocator_mutex;
CudaAllocator user_allocator;  // both functions null: the library's pool

// Blocks of the library's pool that their last user let go of, kept per (device, stream, size
// class) and handed out again only to allocations on the same stream: whatever that stream still
// has queued on the old block runs before anything queued after the new allocation, so a free
// needs no CUDA call at all. That is what lets a tensor outlive the stream it was made on (a freed
// cudaStream_t must not be passed to cudaFreeAsync: seen as a crash on an H200); the blocks of a
// destroyed stream are then only given back by release_cached_memory(). HAZARD: as with
// PyTorch's caching allocator, another stream's work on a block must be ordered before its
// tensor is destroyed (record_stream's rule).
struct BlockKey {
  int device;
  void* stream;
  size_t bytes;  // the size class
  auto operator<=>(const BlockKey&) const = default;
};
struct BlockCache {
  std::mutex mutex;
  std::map<BlockKey, std::vector<void*>> free_blocks;
};
BlockCache& block_cache() {
  static auto* cache = new BlockCache();  // never destroyed: tensors may die at process exit
  return *cache;
}

// Powers of two up to 1 MiB (at least 512 bytes), then multiples of 2 MiB: reuse across calls of
// the same shapes, at most 2x (small) or 2 MiB (large) unused per block.
size_t size_class(size_t bytes) {
  constexpr size_t kSmall = size_t{1} << 20, kLargeStep = size_t{2} << 20;
  if (bytes > kSmall) return (bytes + kLargeStep - 1) / kLargeStep * kLargeStep;
  size_t c = 512;
  while (c < bytes) c *= 2;
  return c;
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

std::shared_ptr<void> cuda_allocate(size_t bytes, void* stream) {
  if (!cuda_device_present()) {
    throw Error("flexattn: Device::cuda requested, but no CUDA device is visible");
  }
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  CudaAllocator a;
  {
    const std::lock_guard<std::mutex> lock(allocator_mutex);
    a = user_allocator;
  }
  if (a.allocate == nullptr) {
    const BlockKey key{dev, stream, size_class(bytes)};
    const auto give_back = [key](void* q) {
      BlockCache& c = block_cache();
      const std::lock_guard<std::mutex> lock(c.mutex);
      c.free_blocks[key].push_back(q);
    };
    BlockCache& c = block_cache();
    {
      const std::lock_guard<std::mutex> lock(c.mutex);
      if (auto it = c.free_blocks.find(key); it != c.free_blocks.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        return std::shared_ptr<void>(p, give_back);
      }
    }
    void* p = nullptr;
    check(cudaMallocFromPoolAsync(&p, key.bytes, library_pool(dev), static_cast<cudaStream_t>(stream)),
          "cudaMallocFromPoolAsync");
    return std::shared_ptr<void>(p, give_back);
  }
  void* p = a.allocate(bytes, dev, stream, a.ctx);
  if (p == nullptr) {
    throw Error("flexattn: the CudaAllocator set by set_cuda_allocator returned null for " +
                std::to_string(bytes) + " bytes");
  }
  return std::shared_ptr<void>(
      p, [a, bytes, dev, stream](void* q) { a.deallocate(q, bytes, dev, stream, a.ctx); });
}

void cuda_copy_to_device(void* dst, const void* src, size_t bytes, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync to device");
  // The source is the caller's host memory: it must not be released before the copy is done.
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize after a copy to the device");
}

void cuda_copy_to_host(void* dst, const void* src, size_t bytes, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync to host");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize after a copy to the host");
}

void cuda_synchronize() {
  if (cuda_device_present()) check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

int cuda_current_device() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}

void* cuda_record_event(void* stream) {
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  check(cudaEventRecord(e, static_cast<cudaStream_t>(stream)), "cudaEventRecord");
  return e;
}

void cuda_stream_wait(void* stream, void* event) {
  check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event), 0),
        "cudaStreamWaitEvent");
}

}  // namespace flexattn::detail

namespace flexattn {

void release_cached_memory() {
  if (!detail::cuda_device_present()) return;
  detail::BlockCache& c = detail::block_cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  int current = 0;
  detail::check(cudaGetDevice(&current), "cudaGetDevice");
  std::map<int, bool> devices;
  for (const auto& [key, blocks] : c.free_blocks) devices[key.device] |= !blocks.empty();
  for (const auto& [dev, any] : devices) {
    if (!any) continue;
    // Every stream's work on the cached blocks must be done before they leave the cache.
    detail::check(cudaSetDevice(dev), "cudaSetDevice");
    detail::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    for (auto& [key, blocks] : c.free_blocks) {
      if (key.device != dev) continue;
      for (void* p : blocks) detail::check(cudaFreeAsync(p, nullptr), "cudaFreeAsync");
      blocks.clear();
    }
    detail::check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
    detail::check(cudaMemPoolTrimTo(detail::library_pool(dev), 0), "cudaMemPoolTrimTo");
  }
  detail::check(cudaSetDevice(current), "cudaSetDevice");
}

void set_cuda_allocator(const CudaAllocator& a) {
  if ((a.allocate == nullptr) != (a.deallocate == nullptr)) {
    throw Error("flexattn::set_cuda_allocator: CudaAllocator.allocate and .deallocate must be set "
                "together (both null restores the library's pool)");
  }
  const std::lock_guard<std::mutex> lock(detail::allocator_mutex);
  detail::user_allocator = a;
}

}  // namespace flexattn

namespace flexattn::detail::cuda {

std::shared_ptr<void> workspace_alloc(size_t bytes, cudaStream_t stream) {
  return cuda_allocate(bytes, stream);
}

}  // namespace flexattn::detail::cuda
