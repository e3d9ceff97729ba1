// Built only when flexattn is configured without CUDA (FLEXATTN_CUDA=OFF): every CUDA entry
// point exists, so programs link the same way, and throws an Error that says why.
#include <string>

#include "device_memory.h"
#include "flexattn/block_mask.h"
#include "flexattn/detail/cuda/dispatch.h"
#include "flexattn/tensor.h"

namespace flexattn::detail {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(std::string("flexattn: ") + what +
              " needs Device::cuda, but this build of flexattn has no CUDA backend "
              "(configure with -DFLEXATTN_CUDA=ON)");
}
}  // namespace

bool cuda_device_present() { return false; }
std::shared_ptr<void> cuda_allocate(size_t, void*) { no_cuda("allocating a tensor"); }
void cuda_copy_to_device(void*, const void*, size_t, void*) { no_cuda("copying to the GPU"); }
void cuda_copy_to_host(void*, const void*, size_t, void*) { no_cuda("copying from the GPU"); }
void cuda_synchronize() {}
int cuda_current_device() { no_cuda("querying the current GPU"); }
void* cuda_record_event(void*) { no_cuda("recording a CUDA event"); }
void cuda_stream_wait(void*, void*) { no_cuda("waiting for a CUDA event"); }

}  // namespace flexattn::detail

namespace flexattn {
// Without CUDA there is no GPU memory to route; the allocator is still checked, so a program
// behaves the same in both builds.
void release_cached_memory() {}

void set_cuda_allocator(const CudaAllocator& a) {
  if ((a.allocate == nullptr) != (a.deallocate == nullptr)) {
    throw Error("flexattn::set_cuda_allocator: CudaAllocator.allocate and .deallocate must be set "
                "together (both null restores the library's pool)");
  }
}
}  // namespace flexattn

namespace flexattn::detail {
namespace cuda {
template <class MaskMod>
void build_block_mask_prebuilt(const MaskMod&, BlockMaskData&, void*) {
  no_cuda("create_block_mask");
}
template <class ScoreMod, class MaskMod>
void forward_prebuilt(const FwdArgs&, const ScoreMod&, const MaskMod&) {
  no_cuda("flex_attention");
}
template <class ScoreMod, class MaskMod>
void backward_prebuilt(const BwdArgs&, const ScoreMod&, const MaskMod&) {
  no_cuda("flex_attention_backward");
}
template <class ScoreMod, class MaskMod>
void paged_forward_prebuilt(const PagedArgs&, const ScoreMod&, const MaskMod&) {
  no_cuda("flex_attention over a PagedKV");
}
void append_kv(const AppendArgs&) { no_cuda("append_kv"); }

#define FLEXATTN_INSTANTIATE_MASK(M) \
  template void build_block_mask_prebuilt<M>(const M&, BlockMaskData&, void*);
#define FLEXATTN_INSTANTIATE_VARIANT(S, M)                                        \
  template void forward_prebuilt<S, M>(const FwdArgs&, const S&, const M&); \
  template void backward_prebuilt<S, M>(const BwdArgs&, const S&, const M&);     \
  template void paged_forward_prebuilt<S, M>(const PagedArgs&, const S&, const M&);
FLEXATTN_FOR_EACH_PREBUILT_MASK(FLEXATTN_INSTANTIATE_MASK)
FLEXATTN_FOR_EACH_PREBUILT_VARIANT(FLEXATTN_INSTANTIATE_VARIANT)
#undef FLEXATTN_INSTANTIATE_MASK
#undef FLEXATTN_INSTANTIATE_VARIANT
}  // namespace cuda

}  // namespace flexattn::detail
