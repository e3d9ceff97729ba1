// The seam between the public templates and the CUDA backend.
//
// Compiled by nvcc (__CUDACC__): the kernels are templates in this folder and are instantiated
// right here for the caller's own functors - compile-time fusion, no runtime compilation.
// Compiled by a host compiler: only the stock variants of variants.h can run on the GPU, through
// the instantiations inside the library; any other functor throws an Error that says to compile
// the calling file with nvcc. In a build without CUDA those instantiations throw instead.
#pragma once

#include "../../tensor.h"
#include "../args.h"
#include "../variants.h"

namespace flexattn {
struct BlockMaskData;
}

#if defined(__CUDACC__)
#include "block_mask_build.cuh"
#include "launch_bwd.cuh"
#include "launch_decode.cuh"
#include "launch_fwd.cuh"
#endif

namespace flexattn::detail::cuda {

// Defined in the library (src/cuda/prebuilt_*.cu, or src/cuda_unavailable.cpp without CUDA).
template <class MaskMod>
void build_block_mask_prebuilt(const MaskMod& mask_mod, BlockMaskData& data, void* stream);
template <class ScoreMod, class MaskMod>
void forward_prebuilt(const FwdArgs& args, const ScoreMod& score_mod, const MaskMod& mask_mod);
template <class ScoreMod, class MaskMod>
void backward_prebuilt(const BwdArgs& args, const ScoreMod& score_mod, const MaskMod& mask_mod);
template <class ScoreMod, class MaskMod>
void paged_forward_prebuilt(const PagedArgs& args, const ScoreMod& score_mod,
                            const MaskMod& mask_mod);
// append_kv on the GPU (src/cuda/append_kv.cu; it throws without CUDA).
void append_kv(const AppendArgs& args);

[[noreturn]] void throw_needs_nvcc(const char* what);

// One definition per kind of compiler (detail::CompilerUnit says why): the inline namespace puts
// the kind into these templates' symbols.
#if defined(__CUDACC__)
inline namespace nvcc_unit {
#else
inline namespace host_unit {
#endif

template <class MaskMod>
void build_block_mask(const MaskMod& mask_mod, BlockMaskData& data, void* stream) {
#if defined(__CUDACC__)
  build_block_mask_device<ThisUnit>(mask_mod, data, stream);
#else
  if constexpr (is_prebuilt_mask<MaskMod>) {
    build_block_mask_prebuilt(mask_mod, data, stream);
  } else {
    throw_needs_nvcc("create_block_mask with this mask_mod");
  }
#endif
}

template <class ScoreMod, class MaskMod>
void forward(const FwdArgs& args, const ScoreMod& score_mod, const MaskMod& mask_mod) {
#if defined(__CUDACC__)
  launch_forward<ThisUnit>(args, score_mod, mask_mod);
#else
  if constexpr (is_prebuilt_variant<ScoreMod, MaskMod>) {
    forward_prebuilt(args, score_mod, mask_mod);
  } else {
    throw_needs_nvcc("flex_attention with this score_mod / mask_mod");
  }
#endif
}

template <class ScoreMod, class MaskMod>
void paged_forward(const PagedArgs& args, const ScoreMod& score_mod, const MaskMod& mask_mod) {
#if defined(__CUDACC__)
  launch_paged_forward<ThisUnit>(args, score_mod, mask_mod);
#else
  if constexpr (is_prebuilt_variant<ScoreMod, MaskMod>) {
    paged_forward_prebuilt(args, score_mod, mask_mod);
  } else {
    throw_needs_nvcc("flex_attention over a PagedKV with this score_mod / mask_mod");
  }
#endif
}

template <class ScoreMod, class MaskMod>
void backward(const BwdArgs& args, const ScoreMod& score_mod, const MaskMod& mask_mod) {
#if defined(__CUDACC__)
  launch_backward<ThisUnit>(args, score_mod, mask_mod);
#else
  if constexpr (is_prebuilt_variant<ScoreMod, MaskMod>) {
    backward_prebuilt(args, score_mod, mask_mod);
  } else {
    throw_needs_nvcc("flex_attention_backward with this score_mod / mask_mod");
  }
#endif
}

}  // inline namespace nvcc_unit / host_unit

}  // namespace flexattn::detail::cuda
