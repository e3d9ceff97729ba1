// The records of launch_record.h.
#include "flexattn/detail/cuda/launch_record.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cstring>

namespace flexattn::detail::cuda {

namespace {
thread_local const char* last_kernel = "";
std::atomic<DqStallRecord*> stall_record{nullptr};
}  // namespace

void note_launch(const char* kernel_name) { last_kernel = kernel_name; }

const char* last_launch() { return last_kernel; }

DqStallRecord* dq_stall_record() {
  static DqStallRecord* const record = [] {
    void* p = nullptr;
    // Mapped and portable: with unified addressing the host pointer is the device pointer, on
    // every device.
    if (cudaHostAlloc(&p, sizeof(DqStallRecord), cudaHostAllocMapped | cudaHostAllocPortable) !=
        cudaSuccess) {
      (void)cudaGetLastError();  // not sticky; the watchdog works without a record
      return static_cast<DqStallRecord*>(nullptr);
    }
    std::memset(p, 0, sizeof(DqStallRecord));
    return static_cast<DqStallRecord*>(p);
  }();
  stall_record.store(record, std::memory_order_release);
  return record;
}

std::string dq_stall_message() {
  const volatile DqStallRecord* r = stall_record.load(std::memory_order_acquire);
  if (r == nullptr || r->stalled != 1) return {};
  return "; the deterministic flex_attention_backward stopped its kernel: CTA (" +
         std::to_string(r->cta_x) + ", " + std::to_string(r->cta_y) + ", " +
         std::to_string(r->cta_z) + ") waited 60 s for its turn " + std::to_string(r->rank) +
         " in a q tile's dQ order, whose counter stood at " + std::to_string(r->counter) +
         " (a flexattn bug: please report it; the CUDA context is lost, restart the process)";
}

}  // namespace flexattn::detail::cuda
