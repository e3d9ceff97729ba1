// The runtime-variant backend's entry points (detail/runtime/dispatch.h): checks the captures'
// devices, then runs the call on the CPU module or the GPU kernels of the pair.
#include "flexattn/block_mask.h"
#include "flexattn/detail/runtime/host_table.h"
#include "internal.h"

namespace flexattn::detail::runtime {

void forward(const FwdArgs& args, const ModSpec* score, const ModSpec* mask) {
  check_capture_devices("flex_attention", args.q.device, score, mask);
  if (args.q.device == Device::cpu) {
    cpu_run(static_cast<int>(CpuOp::forward), const_cast<FwdArgs*>(&args), score, mask);
  } else {
    gpu_forward(args, score, mask);
  }
}

void backward(const BwdArgs& args, const ModSpec* score, const ModSpec* mask) {
  check_capture_devices("flex_attention_backward", args.q.device, score, mask);
  if (args.q.device == Device::cuda && score != nullptr) {
    for (const Capture& c : score->captures) {
      if (c.grad.defined()) {
        throw Error("flexattn::flex_attention_backward: the score_mod's capture '" + c.name +
                    "' is learnable; their gradients are computed on the CPU only so far");
      }
    }
  }
  if (args.q.device == Device::cpu) {
    cpu_run(static_cast<int>(CpuOp::backward), const_cast<BwdArgs*>(&args), score, mask);
  } else {
    gpu_backward(args, score, mask);
  }
}

void paged_forward(const PagedArgs& args, const ModSpec* score, const ModSpec* mask) {
  check_capture_devices("flex_attention", args.q.device, score, mask);
  if (args.q.device == Device::cpu) {
    cpu_run(static_cast<int>(CpuOp::paged_forward), const_cast<PagedArgs*>(&args), score, mask);
  } else {
    gpu_paged_forward(args, score, mask);
  }
}

void build_block_mask(const ModSpec& mask, BlockMaskData& data, void* stream) {
  check_capture_devices("create_block_mask", data.device, nullptr, &mask);
  if (data.device == Device::cpu) {
    cpu_run(static_cast<int>(CpuOp::block_mask), &data, nullptr, &mask);
  } else {
    gpu_build_block_mask(mask, data, stream);
  }
}

}  // namespace flexattn::detail::runtime
