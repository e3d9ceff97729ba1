// The forward pass of the stock variants (detail/variants.h) for host-only callers: the dispatch
// lives here, the kernels of each head dim in prebuilt_fwd_d<D>.cu so that they compile in
// parallel (see prebuilt_fwd.h for the head-dim list).
#include "prebuilt_fwd.h"

#define FLEXATTN_X(S, M)                                                                          \
  FLEXATTN_FWD_EXTERN_D(32, S, M)                                                                 \
  FLEXATTN_FWD_EXTERN_D(64, S, M)                                                                 \
  FLEXATTN_FWD_EXTERN_D(96, S, M)                                                                 \
  FLEXATTN_FWD_EXTERN_D(128, S, M)                                                                \
  FLEXATTN_FWD_EXTERN_D(192, S, M)                                                                \
  FLEXATTN_FWD_EXTERN_D(256, S, M)
FLEXATTN_FOR_EACH_PREBUILT_VARIANT(FLEXATTN_X)
#undef FLEXATTN_X

namespace flexattn::detail::cuda {

template <class ScoreMod, class MaskMod>
void forward_prebuilt(const FwdArgs& args, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  launch_forward_for<kPrebuiltHeadDims, LibraryUnit>(args, score_mod, mask_mod);
}

template <class ScoreMod, class MaskMod>
void paged_forward_prebuilt(const PagedArgs& args, const ScoreMod& score_mod,
                            const MaskMod& mask_mod) {
  launch_paged_forward_for<kPrebuiltHeadDims, LibraryUnit>(args, score_mod, mask_mod);
}

#define FLEXATTN_X(S, M)                                                              \
  template void forward_prebuilt<S, M>(const FwdArgs&, const S&, const M&);         \
  template void paged_forward_prebuilt<S, M>(const PagedArgs&, const S&, const M&);
FLEXATTN_FOR_EACH_PREBUILT_VARIANT(FLEXATTN_X)
#undef FLEXATTN_X

}  // namespace flexattn::detail::cuda
