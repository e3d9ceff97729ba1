// Hopper (sm_90) asynchronous copies: the tensor-memory-access unit (cp.async.bulk.tensor) that
// moves a whole tile from global to shared memory, and the mbarriers it completes on. Thin wrappers
// over CCCL's cuda::ptx, named by scope like utils.cuh (thread:: = any one thread).
// A copy is described by a CUtensorMap built on the host (tensor_map.h).
#pragma once

#include <cstdint>

#include "tensor_map.h"
#include "utils.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include <cuda/ptx>
#endif

namespace flexattn::detail::cuda {

namespace thread {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
FLEXATTN_DEV void mbar_init(uint64_t* bar, uint32_t count) { ::cuda::ptx::mbarrier_init(bar, count); }

// Blocks until the phase of parity `parity` of `bar` has completed. A fresh barrier counts its
// (never run) phase of parity 1 as completed: a producer's first wait on an `empty` barrier with
// parity 1 passes at once.
FLEXATTN_DEV void mbar_wait(uint64_t* bar, uint32_t parity) {
  while (!::cuda::ptx::mbarrier_try_wait_parity(bar, parity)) {
  }
}
FLEXATTN_DEV void mbar_arrive(uint64_t* bar) { (void)::cuda::ptx::mbarrier_arrive(bar); }
// Arrives and announces `bytes` that copies will deliver before the phase can complete.
FLEXATTN_DEV void mbar_arrive_expect_bytes(uint64_t* bar, uint32_t bytes) {
  (void)::cuda::ptx::mbarrier_arrive_expect_tx(::cuda::ptx::sem_release, ::cuda::ptx::scope_cta,
                                               ::cuda::ptx::space_shared, bar, bytes);
}

// Copies the box at (d0, row, h, b) of `map` into shared memory at `dst` (1024-byte aligned for
// the 128-byte swizzle); completion is counted on `bar` in bytes.
FLEXATTN_DEV void tma_load(void* dst, const CUtensorMap* map, int d0, int row, int h, int b,
                           uint64_t* bar) {
  const int32_t coords[4] = {d0, row, h, b};
  ::cuda::ptx::cp_async_bulk_tensor(::cuda::ptx::space_cluster, ::cuda::ptx::space_global, dst,
                                    map, coords, bar);
}
#endif

}  // namespace thread
}  // namespace flexattn::detail::cuda
