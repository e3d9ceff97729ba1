// Forward dispatch and launch: the ONE place where runtime values (dtype, head dim, mask block
// sizes) become template arguments of the forward kernel, and where unsupported values throw.
//
//   select_forward_kernel()   validates and picks the tile config
//   launch_fwd_kernel<D, T>() one head dim, one dtype: the Hopper kernel where it applies
//                             (sm90_forward_usable), else the sm80 one; records which
//                             (launch_record.h)
//   launch_forward()          every head dim (a user's .cu file: compile-time fusion)
//   launch_forward_for<mask>  a chosen set of head dims (the library's prebuilt variants; see
//                             src/cuda/prebuilt_fwd*.cu and FLEXATTN_CUDA_HEAD_DIMS)
// Every launcher takes the unit tag `Unit` (sm90_unit.cuh: ThisUnit in a user's .cu, LibraryUnit
// in the prebuilt files), so that no instantiation is shared between translation units compiled
// with different architecture lists; a runtime unit (kernel_ref.cuh) supplies its kernels itself.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../../tensor.h"
#include "../args.h"
#include "check.cuh"
#include "head_dims.cuh"
#include "kernel_ref.cuh"
#include "kernel_traits_fwd.cuh"
#include "launch_record.h"
#include "launch_decode.cuh"
#include "mainloop_fwd_sm80.cuh"
#include "mainloop_fwd_sm90.cuh"
#include "sm90_unit.cuh"

namespace flexattn::detail::cuda {

struct FwdKernelChoice {
  int head_dim = 0;
  int block_m = 0, block_n = 0;
};

inline FwdKernelChoice fwd_choice_for(int64_t D) {
  switch (D) {
    case 32: return {32, FwdConfig<32>::kBlockM, FwdConfig<32>::kBlockN};
    case 64: return {64, FwdConfig<64>::kBlockM, FwdConfig<64>::kBlockN};
    case 96: return {96, FwdConfig<96>::kBlockM, FwdConfig<96>::kBlockN};
    case 128: return {128, FwdConfig<128>::kBlockM, FwdConfig<128>::kBlockN};
    case 192: return {192, FwdConfig<192>::kBlockM, FwdConfig<192>::kBlockN};
    case 256: return {256, FwdConfig<256>::kBlockM, FwdConfig<256>::kBlockN};
    default: return {};
  }
}

// Empty string when the forward kernel takes these arguments, else why not (the Error message).
inline std::string forward_unsupported_reason(DType dtype, int64_t D, int64_t Dv, int block_q,
                                              int block_kv) {
  const std::string pre = "flex_attention on Device::cuda ";
  if (dtype == DType::f32) return pre + "takes f16 or bf16; got f32";
  const FwdKernelChoice c = fwd_choice_for(D);
  if (c.head_dim == 0) {
    return pre + "does not support head dim " + std::to_string(D) +
           "; supported head dims: 32, 64, 96, 128, 192, 256";
  }
  if (Dv != D) {
    return pre + "needs v's head dim equal to q's (got D = " + std::to_string(D) +
           ", Dv = " + std::to_string(Dv) + "); D != Dv is not supported on the GPU";
  }
  if (block_q % c.block_m != 0 || block_kv % c.block_n != 0) {
    return pre + "with head dim " + std::to_string(D) + " tiles the scores by " +
           std::to_string(c.block_m) + " x " + std::to_string(c.block_n) +
           ": the BlockMask's block_q (" + std::to_string(block_q) + ") must be a multiple of " +
           std::to_string(c.block_m) + " and its block_kv (" + std::to_string(block_kv) +
           ") a multiple of " + std::to_string(c.block_n) +
           " (the default BlockMaskOptions, 128 x 128, always fit)";
  }
  return {};
}

// The selection function: validates the arguments this kernel depends on and returns its tiles.
template <class MaskData>
FwdKernelChoice select_forward_kernel(const FwdArgs& a, const MaskData& mask) {
  const std::string why = forward_unsupported_reason(a.q.dtype, a.dims.D, a.dims.Dv, mask.block_q,
                                                     mask.block_kv);
  if (!why.empty()) throw Error(why);
  return fwd_choice_for(a.dims.D);
}

namespace fwd_launch_detail {

template <class MaskData>
FwdParams make_params(const FwdArgs& a, const MaskData& m) {
  if (m.device != Device::cuda) {
    throw Error("flex_attention on Device::cuda needs the BlockMask on Device::cuda too "
                "(BlockMaskOptions.device = Device::cuda)");
  }
  check_vector_layout(a.q, "flex_attention", "q");
  check_vector_layout(a.k, "flex_attention", "k");
  check_vector_layout(a.v, "flex_attention", "v");
  check_vector_layout(a.out, "flex_attention", "out");
  if (a.dims.Lq >= (int64_t{1} << 31) || a.dims.Lkv >= (int64_t{1} << 31)) {
    throw Error("flex_attention on Device::cuda takes sequence lengths below 2^31");
  }
  if (a.dims.B > 65535 || a.dims.Hq > 65535) {  // grid dimensions y and z
    throw Error("flex_attention on Device::cuda takes at most 65535 batches and heads");
  }
  FwdParams p{};
  p.q = a.q.data;
  p.k = a.k.data;
  p.v = a.v.data;
  p.out = a.out.data;
  p.lse = static_cast<float*>(a.lse.data);
  p.q_sb = a.q.stride[0], p.q_sh = a.q.stride[1], p.q_sr = a.q.stride[2];
  p.k_sb = a.k.stride[0], p.k_sh = a.k.stride[1], p.k_sr = a.k.stride[2];
  p.v_sb = a.v.stride[0], p.v_sh = a.v.stride[1], p.v_sr = a.v.stride[2];
  p.o_sb = a.out.stride[0], p.o_sh = a.out.stride[1], p.o_sr = a.out.stride[2];
  p.l_sb = a.lse.stride[0], p.l_sh = a.lse.stride[1], p.l_sr = a.lse.stride[2];
  p.Lq = static_cast<int>(a.dims.Lq);
  p.Lkv = static_cast<int>(a.dims.Lkv);
  p.group = static_cast<int>(a.dims.group());
  p.scale = a.dims.scale;
  p.scale_log2 = a.dims.scale * kLog2e;
  static_cast<MaskLists&>(p) = mask_lists(m);
  return p;
}

}  // namespace fwd_launch_detail

namespace fwd_launch_detail {

// The tensor maps of the Hopper kernel; false when the driver rejects a layout.
template <class Traits>
bool make_tile_maps(const FwdArgs& a, FwdTileMaps& maps) {
  return make_tile_map(maps.q, a.q.data, a.q.shape, a.q.stride, Traits::kBlockM) &&
         make_tile_map(maps.k, a.k.data, a.k.shape, a.k.stride, Traits::kBlockN) &&
         make_tile_map(maps.v, a.v.data, a.v.shape, a.v.stride, Traits::kBlockN);
}

// The forward kernels of Unit: compiled in, or Unit's run-time ones (kernel_ref.cuh).
template <class Traits, class T, class ScoreMod, class MaskMod, class Unit>
KernelRef<FwdParams, FwdTileMaps, ScoreMod, MaskMod> sm90_kernel() {
  using Ref = KernelRef<FwdParams, FwdTileMaps, ScoreMod, MaskMod>;
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<Ref, Unit>(rt_type_id<Traits, T, ScoreMod, MaskMod, Unit>(
        "flexattn::detail::cuda::fwd_kernel_sm90"));
  } else {
    return static_kernel<Ref>(&fwd_kernel_sm90<Traits, T, ScoreMod, MaskMod, Unit>);
  }
}
template <class Traits, class T, class ScoreMod, class MaskMod, class Unit>
KernelRef<FwdParams, ScoreMod, MaskMod> sm80_kernel() {
  using Ref = KernelRef<FwdParams, ScoreMod, MaskMod>;
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<Ref, Unit>(rt_type_id<Traits, T, ScoreMod, MaskMod, Unit>(
        "flexattn::detail::cuda::fwd_kernel_sm80"));
  } else {
    return static_kernel<Ref>(&fwd_kernel_sm80<Traits, T, ScoreMod, MaskMod, Unit>);
  }
}

}  // namespace fwd_launch_detail

// Whether the Hopper kernel takes this call: a head dim it has tiles for, mask blocks its tiles
// divide, a Hopper GPU and sm_90a machine code in the calling translation unit (sm90_unit.cuh).
template <int D, class Unit>
bool sm90_forward_usable(const FwdParams& p) {
  if constexpr (!FwdConfigSm90<D>::kAvailable) {
    return false;
  } else {
    using Traits = FwdConfigSm90<D>;
    return p.block_q % Traits::kBlockM == 0 && p.block_kv % Traits::kBlockN == 0 &&
           unit_has_sm90a<Unit>();
  }
}

// One head dim, one dtype. Explicitly instantiated per head dim by the library's prebuilt files.
template <int D, class T, class ScoreMod, class MaskMod, class Unit>
void launch_fwd_kernel(const FwdArgs& a, const FwdParams& p, const ScoreMod& score_mod,
                       const MaskMod& mask_mod) {
  const int batch = static_cast<int>(a.dims.B), heads = static_cast<int>(a.dims.Hq);
  const auto stream = static_cast<cudaStream_t>(a.stream);
  if constexpr (FwdConfigSm90<D>::kAvailable) {
    using Traits = FwdConfigSm90<D>;
    FwdTileMaps maps;
    if (sm90_forward_usable<D, Unit>(p) && fwd_launch_detail::make_tile_maps<Traits>(a, maps)) {
      const auto kernel = fwd_launch_detail::sm90_kernel<Traits, T, ScoreMod, MaskMod, Unit>();
      FLEXATTN_CUDA_CHECK(cudaFuncSetAttribute(
          kernel.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes));
      const int m_tiles = (p.Lq + Traits::kBlockM - 1) / Traits::kBlockM;
      // The error is the thread's last error too, which the check below reads (kernel_ref.cuh).
      (void)launch_kernel(kernel, FwdTileScheduler::grid(m_tiles, heads, batch), Traits::kNThreads,
                          Traits::kSmemBytes, stream, false, p, maps, score_mod, mask_mod);
      FLEXATTN_CUDA_CHECK_LAUNCH("flex_attention forward kernel (sm90)");
      note_launch("fwd_sm90");
      return;
    }
  }
  using Traits = FwdConfig<D>;
  const auto kernel = fwd_launch_detail::sm80_kernel<Traits, T, ScoreMod, MaskMod, Unit>();
  if constexpr (Traits::kSmemBytes > 48 * 1024) {
    FLEXATTN_CUDA_CHECK(cudaFuncSetAttribute(
        kernel.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes));
  }
  const int m_tiles = (p.Lq + Traits::kBlockM - 1) / Traits::kBlockM;
  (void)launch_kernel(kernel, FwdTileScheduler::grid(m_tiles, heads, batch), Traits::kNThreads,
                      Traits::kSmemBytes, stream, false, p, score_mod, mask_mod);
  FLEXATTN_CUDA_CHECK_LAUNCH("flex_attention forward kernel (sm80)");
  note_launch("fwd_sm80");
}

template <unsigned kHeadDimMask, class Unit, class ScoreMod, class MaskMod>
void launch_forward_for(const FwdArgs& args, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  if (args.mask == nullptr) throw Error("flex_attention: internal error, no block mask");
  const auto& mask = *args.mask;
  const FwdKernelChoice choice = select_forward_kernel(args, mask);
  const FwdParams p = fwd_launch_detail::make_params(args, mask);
  if (args.dims.B == 0 || args.dims.Hq == 0) return;
  check_device_arch();
  // Few query rows: the split-KV decode kernel streams K/V across the whole GPU instead.
  if (decode_takes(args, mask) &&
      launch_decode_contiguous<kHeadDimMask, Unit>(args, mask, score_mod, mask_mod)) {
    return;
  }
  const bool bf16 = args.q.dtype == DType::bf16;
  const bool launched = with_head_dim<kHeadDimMask>(choice.head_dim, [&]<int D>() {
    if (bf16) {
      launch_fwd_kernel<D, __nv_bfloat16, ScoreMod, MaskMod, Unit>(args, p, score_mod, mask_mod);
    } else {
      launch_fwd_kernel<D, __half, ScoreMod, MaskMod, Unit>(args, p, score_mod, mask_mod);
    }
  });
  if (!launched) {
    throw Error("flex_attention on Device::cuda: head dim " + std::to_string(choice.head_dim) +
                " is not among the head dims this library was built with for the stock variants "
                "(CMake option FLEXATTN_CUDA_HEAD_DIMS); rebuild with it, or call flex_attention "
                "from a .cu file compiled by nvcc, which instantiates every head dim");
  }
}

template <class Unit, class ScoreMod, class MaskMod>
void launch_forward(const FwdArgs& args, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  launch_forward_for<kAllHeadDims, Unit>(args, score_mod, mask_mod);
}

}  // namespace flexattn::detail::cuda
