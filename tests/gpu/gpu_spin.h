// A kernel that keeps a stream busy for a while, so that a test can tell whether later work was
// ordered after it: anything run on another stream, or without waiting for this one, runs while
// the spin does and sees the data the stream has not written yet.
#pragma once

#include <cuda_runtime.h>

namespace flexattn::gpu_test {

// Enqueues on `stream` one thread that spins for `ms` milliseconds of wall-clock time.
void spin_on_stream(cudaStream_t stream, double ms);

}  // namespace flexattn::gpu_test
