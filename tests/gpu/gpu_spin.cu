// See gpu_spin.h.
#include "gpu_spin.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace flexattn::gpu_test {

namespace {

__device__ uint64_t spin_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void spin_kernel(uint64_t ns) {
  const uint64_t t0 = spin_timer_ns();
  while (spin_timer_ns() - t0 < ns) __nanosleep(1000);
}

}  // namespace

void spin_on_stream(cudaStream_t stream, double ms) {
  spin_kernel<<<1, 1, 0, stream>>>(static_cast<uint64_t>(ms * 1e6));
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << "spin kernel launch";
}

}  // namespace flexattn::gpu_test
