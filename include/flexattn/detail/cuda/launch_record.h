// What the host learns about the main attention kernels' launches, kept once in the library
// (src/cuda/launch_record.cpp), so that the prebuilt kernels and a user's own .cu share it.
//
// Which main kernel the launchers ran last on the calling thread, so that a test can assert that
// the kernel it means to test is the one that ran:
//   "fwd_sm90", "fwd_sm80"   launch_fwd_kernel (launch_fwd.cuh)
//   "bwd_sm90", "bwd_sm80"   launch_bwd_kernel (launch_bwd.cuh)
//   "decode", "decode_split" launch_decode_kernel (launch_decode.cuh), without / with split-KV
// Recorded on the host when the launch was enqueued.
//
// The deterministic backward's dQ-order watchdog (wait_dq_turn, bwd_primitives.cuh): before it
// stops a stalled kernel (__trap, which loses the CUDA context), the device writes what stalled
// into a record in pinned, mapped host memory, which the host can still read afterwards; every
// CUDA error the library throws carries it (check.cuh). No printf in the kernel: a call there
// would make ptxas serialise the sm90 kernel's wgmma pipeline.
#pragma once

#if !defined(__CUDACC_RTC__)
#include <string>
#endif

namespace flexattn::detail::cuda {

struct DqStallRecord {
  int stalled;  // 1 once a kernel wrote the fields below
  int cta_x, cta_y, cta_z;
  int rank, counter;  // the turn the CTA waited for, the q tile's counter it saw
};

#if !defined(__CUDACC_RTC__)  // the host side; under NVRTC only the record's layout
// kernel_name must outlive every later last_launch() (a string literal): it is kept, not copied.
void note_launch(const char* kernel_name);

// The name of this thread's last note_launch; "" before the first.
const char* last_launch();

// The record as the device writes it (allocated on the first call, never freed); nullptr when the
// driver refuses the allocation (the watchdog then stops the kernel without a record).
DqStallRecord* dq_stall_record();

// "" until a kernel wrote the record; then "; " and a sentence for an Error message.
std::string dq_stall_message();
#endif

}  // namespace flexattn::detail::cuda
