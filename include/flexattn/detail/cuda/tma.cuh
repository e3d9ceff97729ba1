// Hopper (sm_90) asynchronous copies: the tensor-memory-access unit (cp.async.bulk.tensor) that
// moves a whole tile from global to shared memory, plain bulk copies and bulk reductions, and
// the mbarriers copies complete on. Thin wrappers
// over CCCL's cuda::ptx, named by scope like utils.cuh (thread:: = any one thread).
// A copy is described by a CUtensorMap built on the host (tensor_map.h).
#pragma once

#include "../device_std.h"

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

// A whole tile: kRows rows starting at `row`, every 64-element column block of a kHeadDim-wide
// row, one box each, stored kRows x 128 bytes apart (the column-block layout of wgmma.cuh).
template <int kRows, int kHeadDim>
FLEXATTN_DEV void tma_load_tile(void* dst, const CUtensorMap* map, int row, int h, int b,
                                uint64_t* bar) {
#pragma unroll
  for (int c = 0; c < kHeadDim / 64; ++c) {
    tma_load(static_cast<unsigned char*>(dst) + c * kRows * 128, map, c * 64, row, h, b, bar);
  }
}

// Copies `bytes` contiguous bytes (16-byte aligned, a multiple of 16) from global to shared
// memory; completion is counted on `bar` in bytes.
FLEXATTN_DEV void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  ::cuda::ptx::cp_async_bulk(::cuda::ptx::space_cluster, ::cuda::ptx::space_global, dst, src,
                             bytes, bar);
}

// Adds `bytes` of f32 in shared memory element-wise into global memory (each element one atomic
// add in L2), as one bulk operation of the copy unit, then closes a bulk group so that
// bulk_wait / bulk_wait_read can wait for it. HAZARD: the source was written through the
// generic proxy; the writers fence (fence_proxy_async_shared) before the barrier that precedes
// this call.
FLEXATTN_DEV void bulk_reduce_add(float* dst, const float* src, uint32_t bytes) {
  ::cuda::ptx::cp_reduce_async_bulk(::cuda::ptx::space_global, ::cuda::ptx::space_shared,
                                    ::cuda::ptx::op_add, dst, src, bytes);
  ::cuda::ptx::cp_async_bulk_commit_group();
}
// Copies `bytes` from shared to global memory as one bulk operation and closes a bulk group (the
// same hazard as bulk_reduce_add).
FLEXATTN_DEV void bulk_store(void* dst, const void* src, uint32_t bytes) {
  ::cuda::ptx::cp_async_bulk(::cuda::ptx::space_global, ::cuda::ptx::space_shared, dst, src, bytes);
  ::cuda::ptx::cp_async_bulk_commit_group();
}
// At most N of this thread's bulk groups still reading their shared-memory source.
template <int N>
FLEXATTN_DEV void bulk_wait_read() {
  ::cuda::ptx::cp_async_bulk_wait_group_read(::cuda::ptx::n32_t<N>{});
}
// At most N of this thread's bulk groups not yet complete (their writes performed).
template <int N>
FLEXATTN_DEV void bulk_wait() {
  ::cuda::ptx::cp_async_bulk_wait_group(::cuda::ptx::n32_t<N>{});
}

// Orders this thread's generic-proxy accesses to shared memory before later async-proxy ones
// (wgmma operands, bulk copies) once a barrier publishes them.
FLEXATTN_DEV void fence_proxy_async_shared() {
  ::cuda::ptx::fence_proxy_async(::cuda::ptx::space_shared);
}
// The same for global memory: between an async-proxy write and a generic flag that publishes
// it, or a generic acquire and an async-proxy access that must follow it.
FLEXATTN_DEV void fence_proxy_async_global() {
  ::cuda::ptx::fence_proxy_async(::cuda::ptx::space_global);
}
#endif

}  // namespace thread
}  // namespace flexattn::detail::cuda
