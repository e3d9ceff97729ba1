// Runtime variants on Device::cuda where this library cannot run them: every call says why.
#include "internal.h"

namespace flexattn::detail::runtime {
namespace {
[[noreturn]] void no_cuda(const char* fn) {
#if defined(FLEXATTN_WITH_CUDA)
  throw Error(std::string("flexattn::") + fn +
              ": runtime variants (RuntimeScoreMod / RuntimeMaskMod) run on Device::cpu only in "
              "this version; on Device::cuda compile the variant as a functor in a .cu file");
#else
  throw Error(std::string("flexattn::") + fn +
              ": this flexattn was built without CUDA; runtime variants run on Device::cpu only");
#endif
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
