// The GPU block-mask builder instantiated for the stock masks of variants.h, so create_block_mask
// with Device::cuda works from host-only translation units (see detail/cuda/dispatch.h).
#include "flexattn/block_mask.h"
#include "prebuilt_head_dims.h"

namespace flexattn::detail::cuda {

template <class MaskMod>
void build_block_mask_prebuilt(const MaskMod& mask_mod, BlockMaskData& data, void* stream) {
  build_block_mask_device<LibraryUnit>(mask_mod, data, stream);
}

#define FLEXATTN_INSTANTIATE_MASK(...) \
  template void build_block_mask_prebuilt<__VA_ARGS__>(const __VA_ARGS__&, BlockMaskData&, void*);
FLEXATTN_FOR_EACH_PREBUILT_MASK(FLEXATTN_INSTANTIATE_MASK)
#undef FLEXATTN_INSTANTIATE_MASK

}  // namespace flexattn::detail::cuda
