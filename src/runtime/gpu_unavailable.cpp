// Runtime variants on Device::cuda in a build without the CUDA backend: every call says so.
#include "internal.h"

namespace flexattn::detail::runtime {
namespace {
[[noreturn]] void no_cuda(const char* fn) {
  throw Error(std::string("flexattn::") + fn +
              ": this flexattn was built without CUDA; runtime variants run on Device::cpu only");
}
}  // namespace

void gpu_forward(const FwdArgs&, const ModSpec*, const ModSpec*) { no_cuda("flex_attention"); }
void gpu_backward(const BwdArgs&, const ModSpec*, const ModSpec*) {
  no_cuda("flex_attention_backward");
}
void gpu_paged_forward(const PagedArgs&, const ModSpec*, const ModSpec*) {
  no_cuda("flex_attention");
}
void gpu_build_block_mask(const ModSpec&, BlockMaskData&, void*) { no_cuda("create_block_mask"); }
void gpu_forget_modules() {}

}  // namespace flexattn::detail::runtime
