// Backward dispatch and launch: the ONE place where runtime values (dtype, head dim, mask block
// sizes, determinism) become template arguments and launch geometry of the backward kernels, and
// where unsupported values throw.
//
//   backward_unsupported_reason()  what the backward cannot take (the Error message)
//   launch_bwd_kernel<D, T>()      one head dim, one dtype: the main kernel's config, then
//                                  launch_bwd_cfg: workspaces and the launches; records which
//                                  main kernel ran (launch_record.h)
//   launch_backward_for<mask>()    a chosen set of head dims (the library's prebuilt variants,
//                                  src/cuda/prebuilt_bwd*.cu, FLEXATTN_CUDA_HEAD_DIMS)
//   launch_backward()              every head dim (a user's .cu file: compile-time fusion)
// Every launcher takes the unit tag `Unit` (sm90_unit.cuh), as in launch_fwd.cuh; every kernel,
// the mod-independent ones too, comes from the kernel helpers below (kernel_ref.cuh).
//
// Launch sequence on args.stream, all asynchronous:
//   1. bwd_preprocess_kernel  delta = rowsum(dO * O), lse2 = lse * log2(e), dq_accum = 0 (unless
//                             the main kernel's first adder stores: dq_first_stores)
//   2. deterministic only:    dQ-order counters = 0; sparse walks: ranks = 0, bwd_dq_mark_kernel,
//                             bwd_dq_rank_kernel (bwd_preprocess.cuh)
//   3. bwd_kernel_sm90 / _sm80 dK, dV written; dS K added into dq_accum
//   4. bwd_postprocess_kernel dq = scale * dq_accum in q's dtype (read in the main kernel's
//                             DqLayout)
// One workspace block from the library's allocator (workspace.h), allocated and handed back on the
// stream (stream-ordered: no synchronisation, and reused by the pool on the next call).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../../tensor.h"
#include "../args.h"
#include "bwd_postprocess.cuh"
#include "bwd_preprocess.cuh"
#include "check.cuh"
#include "head_dims.cuh"
#include "kernel_ref.cuh"
#include "kernel_traits_bwd.cuh"
#include "launch_record.h"
#include "mainloop_bwd_sm80.cuh"
#include "mainloop_bwd_sm90.cuh"
#include "sm90_unit.cuh"
#include "tensor_map.h"
#include "workspace.h"

namespace flexattn::detail::cuda {

// Empty when the backward kernels take these arguments, else the Error message.
inline std::string backward_unsupported_reason(DType dtype, int64_t D, int64_t Dv) {
  const std::string pre = "flex_attention_backward on Device::cuda ";
  if (dtype != DType::f16 && dtype != DType::bf16) {
    return pre + "takes f16 or bf16 tensors; got " + to_string(dtype);
  }
  if (D != 32 && D != 64 && D != 96 && D != 128 && D != 192 && D != 256) {
    return pre + "does not support head dim " + std::to_string(D) +
           "; supported head dims: 32, 64, 96, 128, 192, 256";
  }
  if (Dv != D) {
    return pre + "needs v's head dim equal to q's (got D = " + std::to_string(D) +
           ", Dv = " + std::to_string(Dv) + ")";
  }
  return {};
}

namespace bwd_launch_detail {

// MaskData is BlockMaskData, a template parameter only so that this header needs no complete type
// (block_mask.h includes dispatch.h, which includes this file).
template <class MaskData>
BwdParams make_params(const BwdArgs& a, const MaskData& m) {
  const char* names[] = {"q", "k", "v", "out", "dout", "dq", "dk", "dv"};
  const TensorView* views[] = {&a.q, &a.k, &a.v, &a.out, &a.dout, &a.dq, &a.dk, &a.dv};
  for (int i = 0; i < 8; ++i) {
    check_vector_layout(*views[i], "flex_attention_backward", names[i]);
  }
  if (a.dims.Lq >= (int64_t{1} << 30) || a.dims.Lkv >= (int64_t{1} << 30)) {
    throw Error("flex_attention_backward on Device::cuda takes sequence lengths below 2^30");
  }
  if (a.dims.B > 65535 || a.dims.Hq > 65535) {  // grid dimensions y and z
    throw Error("flex_attention_backward on Device::cuda takes at most 65535 batches and heads");
  }
  BwdParams p{};
  p.q = a.q.data, p.k = a.k.data, p.v = a.v.data, p.out = a.out.data, p.dout = a.dout.data;
  p.lse = static_cast<const float*>(a.lse.data);
  p.dq = a.dq.data, p.dk = a.dk.data, p.dv = a.dv.data;
  p.q_sb = a.q.stride[0], p.q_sh = a.q.stride[1], p.q_sr = a.q.stride[2];
  p.k_sb = a.k.stride[0], p.k_sh = a.k.stride[1], p.k_sr = a.k.stride[2];
  p.v_sb = a.v.stride[0], p.v_sh = a.v.stride[1], p.v_sr = a.v.stride[2];
  p.o_sb = a.out.stride[0], p.o_sh = a.out.stride[1], p.o_sr = a.out.stride[2];
  p.do_sb = a.dout.stride[0], p.do_sh = a.dout.stride[1], p.do_sr = a.dout.stride[2];
  p.l_sb = a.lse.stride[0], p.l_sh = a.lse.stride[1], p.l_sr = a.lse.stride[2];
  p.dq_sb = a.dq.stride[0], p.dq_sh = a.dq.stride[1], p.dq_sr = a.dq.stride[2];
  p.dk_sb = a.dk.stride[0], p.dk_sh = a.dk.stride[1], p.dk_sr = a.dk.stride[2];
  p.dv_sb = a.dv.stride[0], p.dv_sh = a.dv.stride[1], p.dv_sr = a.dv.stride[2];
  p.B = static_cast<int>(a.dims.B);
  p.Hq = static_cast<int>(a.dims.Hq);
  p.Hkv = static_cast<int>(a.dims.Hkv);
  p.group = static_cast<int>(a.dims.group());
  p.Lq = static_cast<int>(a.dims.Lq);
  p.Lkv = static_cast<int>(a.dims.Lkv);
  p.D = static_cast<int>(a.dims.D);
  p.scale = a.dims.scale;
  p.scale_log2 = a.dims.scale * kLog2e;
  static_cast<MaskLists&>(p) = mask_lists(m);
  p.deterministic = a.deterministic;
  p.dq_stall = a.deterministic ? dq_stall_record() : nullptr;
  return p;
}

inline size_t round_up(size_t x) { return (x + 255) / 256 * 256; }

// The backward kernels of Unit: compiled in, or Unit's run-time ones (kernel_ref.cuh).
inline std::string rt_kernel(const char* name, std::initializer_list<std::string> args) {
  return rt_template_id(std::string("flexattn::detail::cuda::") + name, args);
}
using StatsKernel = KernelRef<BwdParams>;  // the pre- and postprocess, dQ mark and rank kernels

template <class T, class Unit>
StatsKernel preprocess_kernel() {
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<StatsKernel, Unit>(
        rt_kernel("bwd_preprocess_kernel", {rt_name<T>(), rt_name<Unit>()}));
  } else {
    return static_kernel<StatsKernel>(&bwd_preprocess_kernel<T, Unit>);
  }
}
template <int kBlockN, class Unit>
StatsKernel dq_mark_kernel() {
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<StatsKernel, Unit>(
        rt_kernel("bwd_dq_mark_kernel", {std::to_string(kBlockN), rt_name<Unit>()}));
  } else {
    return static_kernel<StatsKernel>(&bwd_dq_mark_kernel<kBlockN, Unit>);
  }
}
template <class Unit>
StatsKernel dq_rank_kernel() {
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<StatsKernel, Unit>(rt_kernel("bwd_dq_rank_kernel", {rt_name<Unit>()}));
  } else {
    return static_kernel<StatsKernel>(&bwd_dq_rank_kernel<Unit>);
  }
}
template <class T, class DqLayout, class Unit>
StatsKernel postprocess_kernel() {
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<StatsKernel, Unit>(rt_kernel(
        "bwd_postprocess_kernel", {rt_name<T>(), rt_name<DqLayout>(), rt_name<Unit>()}));
  } else {
    return static_kernel<StatsKernel>(&bwd_postprocess_kernel<T, DqLayout, Unit>);
  }
}
template <class Cfg, class T, class ScoreMod, class MaskMod, class Unit>
KernelRef<BwdParams, BwdTileMaps, ScoreMod, MaskMod> sm90_kernel() {
  using Ref = KernelRef<BwdParams, BwdTileMaps, ScoreMod, MaskMod>;
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<Ref, Unit>(
        rt_type_id<Cfg, T, ScoreMod, MaskMod, Unit>("flexattn::detail::cuda::bwd_kernel_sm90"));
  } else {
    return static_kernel<Ref>(&bwd_kernel_sm90<Cfg, T, ScoreMod, MaskMod, Unit>);
  }
}
template <class Cfg, class T, class ScoreMod, class MaskMod, class Unit>
KernelRef<BwdParams, ScoreMod, MaskMod> sm80_kernel() {
  using Ref = KernelRef<BwdParams, ScoreMod, MaskMod>;
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<Ref, Unit>(
        rt_type_id<Cfg, T, ScoreMod, MaskMod, Unit>("flexattn::detail::cuda::bwd_kernel_sm80"));
  } else {
    return static_kernel<Ref>(&bwd_kernel_sm80<Cfg, T, ScoreMod, MaskMod, Unit>);
  }
}

}  // namespace bwd_launch_detail

// One tile config (BwdTraits / BwdTraitsSm90), one dtype, one main kernel: launch_main(p, grid,
// stream) launches it with the workspaces filled in. name_main() asks for the main kernel (a
// runtime unit compiles it with the others at once: prefetch_kernels).
template <class Cfg, class T, class Unit, class NameMain, class LaunchMain>
void launch_bwd_cfg(BwdParams p, void* stream_ptr, const NameMain& name_main,
                    const LaunchMain& launch_main) {
  prefetch_kernels<Unit>([&] {
    (void)name_main();
    (void)bwd_launch_detail::preprocess_kernel<T, Unit>();
    (void)bwd_launch_detail::dq_mark_kernel<Cfg::kBlockN, Unit>();
    (void)bwd_launch_detail::dq_rank_kernel<Unit>();
    (void)bwd_launch_detail::postprocess_kernel<T, typename Cfg::DqLayout, Unit>();
  });
  constexpr int D = Cfg::kHeadDim;
  using bwd_launch_detail::round_up;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);

  // The block mask is walked tile by tile when its blocks are whole multiples of the kernel's
  // tiles; otherwise every q tile is visited with mask_mod per element (slower, still exact).
  p.sparse = p.block_q % Cfg::kBlockM == 0 && p.block_kv % Cfg::kBlockN == 0;
  p.Lq_pad = p.sparse ? p.nqb * p.block_q
                      : (p.Lq + Cfg::kBlockM - 1) / Cfg::kBlockM * Cfg::kBlockM;
  p.num_n_tiles = (p.Lkv + Cfg::kBlockN - 1) / Cfg::kBlockN;
  p.dq_first_stores = p.deterministic && Cfg::kDqFirstStores;

  int dev = 0, major = 0, smem_optin = 0;
  FLEXATTN_CUDA_CHECK(cudaGetDevice(&dev));
  FLEXATTN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  FLEXATTN_CUDA_CHECK(
      cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (major < 8) {
    throw Error("flex_attention_backward on Device::cuda needs an sm80 or newer GPU; this one has "
                "compute capability " + std::to_string(major) + ".x");
  }
  if (smem_optin < Cfg::kSmemBytes) {
    throw Error("flex_attention_backward on Device::cuda with head dim " + std::to_string(D) +
                " needs " + std::to_string(Cfg::kSmemBytes / 1024) +
                " KB of shared memory per block; this GPU allows " +
                std::to_string(smem_optin / 1024) + " KB");
  }

  const size_t rows = static_cast<size_t>(p.B) * p.Hq * p.Lq_pad;
  const size_t m_tiles = rows / Cfg::kBlockM;
  const bool ranks = p.deterministic && p.sparse;
  const size_t rank_elems = ranks ? static_cast<size_t>(p.mask_b) * p.mask_h * p.nqb * p.nkvb : 0;
  const size_t off_lse2 = round_up(rows * D * sizeof(float));
  const size_t off_delta = off_lse2 + round_up(rows * sizeof(float));
  const size_t off_sem = off_delta + round_up(rows * sizeof(float));
  const size_t off_rank = off_sem + (p.deterministic ? round_up(m_tiles * sizeof(int)) : 0);
  const size_t bytes = off_rank + round_up(rank_elems * sizeof(int));

  const std::shared_ptr<void> ws_block = workspace_alloc(bytes, stream);  // handed back on `stream`
  char* ws = static_cast<char*>(ws_block.get());
  p.dq_accum = reinterpret_cast<float*>(ws);
  p.lse2 = reinterpret_cast<float*>(ws + off_lse2);
  p.delta = reinterpret_cast<float*>(ws + off_delta);
  p.dq_sem = p.deterministic ? reinterpret_cast<int*>(ws + off_sem) : nullptr;
  p.dq_rank = ranks ? reinterpret_cast<int*>(ws + off_rank) : nullptr;

  // Launch errors are the thread's last error too, which each FLEXATTN_CUDA_CHECK_LAUNCH reads
  // (kernel_ref.cuh).
  using bwd_launch_detail::dq_mark_kernel, bwd_launch_detail::dq_rank_kernel,
      bwd_launch_detail::postprocess_kernel, bwd_launch_detail::preprocess_kernel;
  const unsigned Hq = static_cast<unsigned>(p.Hq), B = static_cast<unsigned>(p.B);
  (void)launch_kernel(preprocess_kernel<T, Unit>(),
                      dim3((p.Lq_pad + kPreRowsPerCta - 1) / kPreRowsPerCta, Hq, B), kPreThreads,
                      0, stream, false, p);
  FLEXATTN_CUDA_CHECK_LAUNCH("flex_attention_backward preprocess kernel");
  if (p.deterministic) {
    FLEXATTN_CUDA_CHECK(cudaMemsetAsync(p.dq_sem, 0, m_tiles * sizeof(int), stream));
  }
  if (ranks) {
    FLEXATTN_CUDA_CHECK(cudaMemsetAsync(p.dq_rank, 0, rank_elems * sizeof(int), stream));
    const unsigned mh = static_cast<unsigned>(p.mask_h), mb = static_cast<unsigned>(p.mask_b);
    (void)launch_kernel(dq_mark_kernel<Cfg::kBlockN, Unit>(), dim3(p.nkvb, mh, mb), kRankThreads,
                        0, stream, false, p);
    FLEXATTN_CUDA_CHECK_LAUNCH("flex_attention_backward dQ mark kernel");
    constexpr unsigned kRowsPerCta = kRankThreads / 32;
    (void)launch_kernel(dq_rank_kernel<Unit>(),
                        dim3((p.nqb + kRowsPerCta - 1) / kRowsPerCta, mh, mb), kRankThreads, 0,
                        stream, false, p);
    FLEXATTN_CUDA_CHECK_LAUNCH("flex_attention_backward dQ rank kernel");
  }

  launch_main(p, dim3(p.num_n_tiles, p.Hkv, B), stream);

  (void)launch_kernel(postprocess_kernel<T, typename Cfg::DqLayout, Unit>(),
                      dim3((p.Lq + kPostRowsPerCta - 1) / kPostRowsPerCta, Hq, B), kPostThreads,
                      0, stream, false, p);
  FLEXATTN_CUDA_CHECK_LAUNCH("flex_attention_backward postprocess kernel");
}

// One head dim, one dtype: the Hopper kernel (mainloop_bwd_sm90.cuh) where it has tiles for the
// head dim, the calling translation unit carries sm_90a code (sm90_unit.cuh) and the driver takes
// the tensors' layouts for its copies; else the sm80 config of kernel_traits_bwd.cuh. Explicitly
// instantiated per head dim by the prebuilt files.
template <int D, class T, class ScoreMod, class MaskMod, class Unit>
void launch_bwd_kernel(const BwdArgs& a, const BwdParams& p, const ScoreMod& score_mod,
                       const MaskMod& mask_mod) {
  if constexpr (kHasBwdSm90<D>) {
    using Cfg = BwdTraitsSm90<D>;
    BwdTileMaps maps;
    if (unit_has_sm90a<Unit>() &&
        make_tile_map(maps.q, a.q.data, a.q.shape, a.q.stride, Cfg::kBlockM) &&
        make_tile_map(maps.k, a.k.data, a.k.shape, a.k.stride, Cfg::kBlockN) &&
        make_tile_map(maps.v, a.v.data, a.v.shape, a.v.stride, Cfg::kBlockN) &&
        make_tile_map(maps.dout, a.dout.data, a.dout.shape, a.dout.stride, Cfg::kBlockM)) {
      const auto main = [] { return bwd_launch_detail::sm90_kernel<Cfg, T, ScoreMod, MaskMod, Unit>(); };
      launch_bwd_cfg<Cfg, T, Unit>(p, a.stream, main, [&](const BwdParams& pw, dim3 grid,
                                                          cudaStream_t st) {
        const auto kernel = main();
        FLEXATTN_CUDA_CHECK(cudaFuncSetAttribute(
            kernel.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
        (void)launch_kernel(kernel, grid, Cfg::kNThreads, Cfg::kSmemBytes, st, false, pw, maps,
                            score_mod, mask_mod);
        FLEXATTN_CUDA_CHECK_LAUNCH("flex_attention_backward main kernel (sm90)");
        note_launch("bwd_sm90");
      });
      return;
    }
  }
  using Cfg = BwdConfig<D>;
  const auto main = [] { return bwd_launch_detail::sm80_kernel<Cfg, T, ScoreMod, MaskMod, Unit>(); };
  launch_bwd_cfg<Cfg, T, Unit>(p, a.stream, main, [&](const BwdParams& pw, dim3 grid,
                                                      cudaStream_t st) {
    const auto kernel = main();
    FLEXATTN_CUDA_CHECK(cudaFuncSetAttribute(
        kernel.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
    (void)launch_kernel(kernel, grid, Cfg::kNThreads, Cfg::kSmemBytes, st, false, pw, score_mod,
                        mask_mod);
    FLEXATTN_CUDA_CHECK_LAUNCH("flex_attention_backward main kernel (sm80)");
    note_launch("bwd_sm80");
  });
}

template <unsigned kDims, class Unit, class ScoreMod, class MaskMod>
void launch_backward_for(const BwdArgs& args, const ScoreMod& score_mod,
                         const MaskMod& mask_mod) {
  if (args.mask == nullptr) throw Error("flex_attention_backward: internal error, no block mask");
  const std::string why = backward_unsupported_reason(args.q.dtype, args.dims.D, args.dims.Dv);
  if (!why.empty()) throw Error(why);
  const BwdParams p = bwd_launch_detail::make_params(args, *args.mask);
  if (args.dims.B == 0 || args.dims.Hq == 0 || args.dims.Lq == 0 || args.dims.Lkv == 0) return;
  const bool bf16 = args.q.dtype == DType::bf16;
  const bool launched = with_head_dim<kDims>(static_cast<int>(args.dims.D), [&]<int D>() {
    if (bf16) {
      launch_bwd_kernel<D, __nv_bfloat16, ScoreMod, MaskMod, Unit>(args, p, score_mod, mask_mod);
    } else {
      launch_bwd_kernel<D, __half, ScoreMod, MaskMod, Unit>(args, p, score_mod, mask_mod);
    }
  });
  if (!launched) {
    throw Error("flex_attention_backward on Device::cuda: head dim " +
                std::to_string(args.dims.D) +
                " is not among the head dims this library was built with for the stock variants "
                "(CMake option FLEXATTN_CUDA_HEAD_DIMS); rebuild with it, or call "
                "flex_attention_backward from a .cu file compiled by nvcc, which instantiates "
                "every head dim");
  }
}

template <class Unit, class ScoreMod, class MaskMod>
void launch_backward(const BwdArgs& args, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  launch_backward_for<kAllHeadDims, Unit>(args, score_mod, mask_mod);
}

}  // namespace flexattn::detail::cuda
