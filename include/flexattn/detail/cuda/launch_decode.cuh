// Decode dispatch and launch: when a call takes the decode kernel, how it is split (the ONE
// heuristic, decode_plan), and its launch with the split merge.
//
//   decode_unsupported_reason()  what the decode kernel cannot take (the Error of a paged call)
//   decode_takes()               whether a contiguous forward goes through it (small Lq)
//   launch_decode_kernel<D, T>   one head dim, one dtype; explicitly instantiated by the library
//   launch_paged_forward()       the paged flex_attention (every head dim in a user's .cu)
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "../../tensor.h"
#include "../args.h"
#include "check.cuh"
#include "combine_decode.cuh"
#include "head_dims.cuh"
#include "kernel_ref.cuh"
#include "kernel_traits_decode.cuh"
#include "launch_record.h"
#include "mainloop_decode.cuh"
#include "sm90_unit.cuh"

namespace flexattn::detail::cuda {

// Contiguous calls with at most this many query rows take the decode kernel (its tile is 16
// packed rows; past that the prefill kernel's 128-row tiles use the tensor cores far better).
inline constexpr int64_t kDecodeMaxLq = 16;

inline std::string decode_unsupported_reason(DType dtype, int64_t D, int64_t Dv) {
  const std::string pre = "flexattn::flex_attention: over a PagedKV on Device::cuda, the kernel ";
  if (dtype != DType::f16 && dtype != DType::bf16) {
    return pre + "takes f16 or bf16; got " + to_string(dtype);
  }
  if (head_dim_bit(static_cast<int>(D)) == 0) {
    return pre + "does not support head dim " + std::to_string(D) +
           "; supported head dims: 32, 64, 96, 128, 192, 256";
  }
  if (Dv != D) {
    return pre + "needs v's head dim equal to q's (got D = " + std::to_string(D) + ", Dv = " +
           std::to_string(Dv) + ")";
  }
  return {};
}

// How a decode call is cut: packed heads, m-blocks and key splits. THE heuristic, in one place.
struct DecodePlan {
  int heads_per_tile, m_blocks, splits;
};
// base CTAs = m-blocks x head tiles x batch. Splitting the keys fills the GPU: as many splits as
// make one full wave of CTAs (slots = SMs x CTAs per SM), never a partial second wave, and no
// split shorter than two tiles (128 keys), where the merge would cost more than it saves.
inline DecodePlan decode_plan(int64_t B, int64_t Hq, int64_t group, int64_t Lq, int64_t Lkv,
                              bool pack_heads, int kRows, int kBlockN, int slots) {
  DecodePlan plan{};
  plan.heads_per_tile = pack_heads ? static_cast<int>(group) : 1;
  plan.m_blocks = static_cast<int>((plan.heads_per_tile * Lq + kRows - 1) / kRows);
  const int64_t base = static_cast<int64_t>(plan.m_blocks) * (Hq / plan.heads_per_tile) * B;
  const int64_t tiles = (Lkv + kBlockN - 1) / kBlockN;
  int64_t splits = base >= slots ? 1 : slots / base;
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, tiles / 2));
  plan.splits = static_cast<int>(std::clamp<int64_t>(splits, 1, 256));
  return plan;
}

namespace decode_launch_detail {

// The decode kernels of Unit: compiled in, or Unit's run-time ones (kernel_ref.cuh). Both are
// launched as programmatic dependents of the work before them where the GPU has it (sm90+; they
// call grid::wait_for_prior_grid before touching memory): a decode step of a few microseconds
// feels the kernel boundary.
template <class Traits, class T, class ScoreMod, class MaskMod, class Unit>
KernelRef<DecodeParams, ScoreMod, MaskMod> main_kernel() {
  using Ref = KernelRef<DecodeParams, ScoreMod, MaskMod>;
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<Ref, Unit>(rt_type_id<Traits, T, ScoreMod, MaskMod, Unit>(
        "flexattn::detail::cuda::decode_kernel"));
  } else {
    return static_kernel<Ref>(&decode_kernel<Traits, T, ScoreMod, MaskMod, Unit>);
  }
}
template <int D, class T, class Unit>
KernelRef<DecodeParams> combine_kernel() {
  using Ref = KernelRef<DecodeParams>;
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<Ref, Unit>(rt_template_id(
        "flexattn::detail::cuda::decode_combine_kernel",
        {std::to_string(D), rt_name<T>(), rt_name<Unit>()}));
  } else {
    return static_kernel<Ref>(&decode_combine_kernel<D, T, Unit>);
  }
}

inline void set_out(DecodeParams& p, const TensorView& q, const TensorView& out,
                    const TensorView& lse, const AttnDims& d) {
  p.q = q.data;
  p.out = out.data;
  p.lse = static_cast<float*>(lse.data);
  p.q_sb = q.stride[0], p.q_sh = q.stride[1], p.q_sr = q.stride[2];
  p.o_sb = out.stride[0], p.o_sh = out.stride[1], p.o_sr = out.stride[2];
  p.l_sb = lse.stride[0], p.l_sh = lse.stride[1], p.l_sr = lse.stride[2];
  p.Lq = static_cast<int>(d.Lq);
  p.Lkv = static_cast<int>(d.Lkv);
  p.group = static_cast<int>(d.group());
  p.scale = d.scale;
  p.scale_log2 = d.scale * kLog2e;
  p.B = static_cast<int>(d.B);
  p.Hq = static_cast<int>(d.Hq);
}

// CTA slots of the decode kernel `kernel` on device `dev` (SMs x resident CTAs), after the
// shared-memory opt-in it needs; `combine` is its split merge.
inline int query_slots(const void* kernel, const void* combine, int threads, int smem_bytes,
                       int dev) {
  FLEXATTN_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  // The merge kernel asks for the same shared-memory carve-out as the decode kernel: an SM that
  // switches carve-outs between two kernels drains first, and the two alternate every step.
  FLEXATTN_CUDA_CHECK(cudaFuncSetAttribute(combine, cudaFuncAttributePreferredSharedMemoryCarveout,
                                           cudaSharedmemCarveoutMaxShared));
  int per_sm = 0, sms = 0;
  FLEXATTN_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes));
  FLEXATTN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms * std::max(per_sm, 1);
}

// CTA slots of one decode kernel on the current device, asked once per device: the driver queries
// (and the shared-memory opt-in) cost microseconds that a decode step of a few tens of
// microseconds would feel.
// HAZARD: the cache must be one per kernel. Compiled in: keyed by every template argument of
// decode_kernel (its function type alone would be shared by every head dim and dtype, and the
// first one's shared-memory opt-in would stand in for all of them). A runtime unit hands out a
// different kernel per variant under the same template arguments (its functors are proxies), so
// there the cache is keyed by the kernels themselves.
template <class Traits, class T, class ScoreMod, class MaskMod, class Unit>
int kernel_slots(const void* kernel, const void* combine) {
  constexpr int smem_bytes = Traits::kSmemBytes, threads = Traits::kNThreads;
  int dev = 0;
  FLEXATTN_CUDA_CHECK(cudaGetDevice(&dev));
  if constexpr (RuntimeKernelUnit<Unit>) {
    static std::mutex mu;
    static std::map<std::tuple<const void*, const void*, int>, int> cached;
    const auto key = std::make_tuple(kernel, combine, dev);
    {
      const std::lock_guard<std::mutex> lock(mu);
      if (const auto it = cached.find(key); it != cached.end()) return it->second;
    }
    // Outside the lock: two threads may both ask the driver once, with the same answer.
    const int v = query_slots(kernel, combine, threads, smem_bytes, dev);
    const std::lock_guard<std::mutex> lock(mu);
    cached.emplace(key, v);
    return v;
  } else {
    constexpr int kMaxDevices = 64;
    static std::atomic<int> cached[kMaxDevices] = {};
    if (dev < kMaxDevices) {
      if (const int v = cached[dev].load(std::memory_order_relaxed)) return v;
    }
    const int v = query_slots(kernel, combine, threads, smem_bytes, dev);
    if (dev < kMaxDevices) cached[dev].store(v, std::memory_order_relaxed);
    return v;
  }
}

}  // namespace decode_launch_detail

// One head dim, one dtype: plans the splits for this GPU, launches the decode kernel and, when it
// split the keys, the merge. p arrives with everything but the plan.
template <int D, class T, class ScoreMod, class MaskMod, class Unit>
void launch_decode_kernel(DecodeParams p, bool pack_heads, void* stream_ptr,
                          const ScoreMod& score_mod, const MaskMod& mask_mod) {
  using Traits = DecodeConfig<D>;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  prefetch_kernels<Unit>([] {
    (void)decode_launch_detail::main_kernel<Traits, T, ScoreMod, MaskMod, Unit>();
    (void)decode_launch_detail::combine_kernel<D, T, Unit>();
  });
  const auto kernel = decode_launch_detail::main_kernel<Traits, T, ScoreMod, MaskMod, Unit>();
  const auto combine = decode_launch_detail::combine_kernel<D, T, Unit>();
  const int slots =
      decode_launch_detail::kernel_slots<Traits, T, ScoreMod, MaskMod, Unit>(kernel.fn, combine.fn);
  const DecodePlan plan = decode_plan(p.B, p.Hq, p.group, p.Lq, p.Lkv, pack_heads, Traits::kRows,
                                      Traits::kBlockN, slots);
  p.heads_per_tile = plan.heads_per_tile;
  p.m_blocks = plan.m_blocks;
  p.splits = plan.splits;
  const int head_tiles = p.Hq / plan.heads_per_tile;
  if (static_cast<int64_t>(plan.m_blocks) * plan.splits > INT32_MAX || head_tiles > 65535 ||
      p.B > 65535) {
    throw Error("flexattn::flex_attention: on Device::cuda the decode kernel takes at most 65535 "
                "batches and kv head groups");
  }
  const int64_t rows = static_cast<int64_t>(p.B) * p.Hq * p.Lq;  // the merge's grid
  if (plan.splits > 1 && rows > INT32_MAX) {
    throw Error("flexattn::flex_attention: on Device::cuda the decode kernel takes at most "
                "2^31 - 1 query rows (B x Hq x Lq)");
  }
  Buffer parts;  // the splits' (out, lse), freed in stream order once the merge is enqueued
  if (plan.splits > 1) {
    parts = Buffer::allocate(static_cast<size_t>(plan.splits * rows * (D + 1)) * sizeof(float),
                             Device::cuda, stream_ptr);
    p.part_out = static_cast<float*>(parts.data());
    p.part_lse = p.part_out + plan.splits * rows * D;
  }
  // Programmatic dependents where the GPU has them (decode_launch_detail::main_kernel).
  const bool pdl = check_device_arch() >= 9;
  FLEXATTN_CUDA_CHECK(launch_kernel(
      kernel, DecodeTileScheduler::grid(plan.m_blocks, plan.splits, head_tiles, p.B),
      Traits::kNThreads, Traits::kSmemBytes, stream, pdl, p, score_mod, mask_mod));
  note_launch(plan.splits > 1 ? "decode_split" : "decode");
  if (plan.splits > 1) {
    // One CTA per row, scheduled while the decode kernel finishes (combine_decode.cuh).
    FLEXATTN_CUDA_CHECK(launch_kernel(combine, dim3(static_cast<unsigned>(rows)), kCombineThreads,
                                      0, stream, pdl, p));
  }
}

// Turns the head dim and dtype into template arguments (kDims: the head dims instantiated).
template <unsigned kDims, class Unit, class ScoreMod, class MaskMod>
bool launch_decode_for(const DecodeParams& p, DType dtype, int64_t D, bool pack_heads,
                       void* stream, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  return with_head_dim<kDims>(static_cast<int>(D), [&]<int kD>() {
    if (dtype == DType::bf16) {
      launch_decode_kernel<kD, __nv_bfloat16, ScoreMod, MaskMod, Unit>(p, pack_heads, stream,
                                                                       score_mod, mask_mod);
    } else {
      launch_decode_kernel<kD, __half, ScoreMod, MaskMod, Unit>(p, pack_heads, stream, score_mod,
                                                                mask_mod);
    }
  });
}

// Whether a contiguous forward takes the decode kernel: few query rows, one q-block of the mask,
// mask blocks the kernel's 64-key tiles divide, and what the kernel supports.
template <class MaskData>
bool decode_takes(const FwdArgs& a, const MaskData& m) {
  return a.dims.Lq <= kDecodeMaxLq && a.dims.Lq <= m.block_q && m.block_kv % 64 == 0 &&
         decode_unsupported_reason(a.q.dtype, a.dims.D, a.dims.Dv).empty();
}

// The contiguous forward through the decode kernel (decode_takes() was true). A mask_mod with a
// tile rule is walked by its rule, as the paged calls and the CPU's contiguous decode are (the
// BlockMask's lists were derived from the same mask_mod by create_block_mask), and the query
// heads of a group always share a tile; otherwise the kernel walks the block mask's lists, and
// heads share a tile only when the mask is the same for all of them.
template <unsigned kDims, class Unit, class ScoreMod, class MaskMod, class MaskData>
bool launch_decode_contiguous(const FwdArgs& a, const MaskData& m, const ScoreMod& score_mod,
                              const MaskMod& mask_mod) {
  using namespace decode_launch_detail;
  DecodeParams p{};  // the views' layout was checked by the forward's make_params
  set_out(p, a.q, a.out, a.lse, a.dims);
  p.k = a.k.data;
  p.v = a.v.data;
  p.k_sb = a.k.stride[0], p.k_sh = a.k.stride[1], p.k_sr = a.k.stride[2];
  p.v_sb = a.v.stride[0], p.v_sh = a.v.stride[1], p.v_sr = a.v.stride[2];
  p.lists = !HasTileRule<MaskMod>;
  if (p.lists) static_cast<MaskLists&>(p) = mask_lists(m);
  return launch_decode_for<kDims, Unit>(p, a.q.dtype, a.dims.D, !p.lists || m.H == 1, a.stream,
                                        score_mod, mask_mod);
}

template <unsigned kDims, class Unit, class ScoreMod, class MaskMod>
void launch_paged_forward_for(const PagedArgs& a, const ScoreMod& score_mod,
                              const MaskMod& mask_mod) {
  using namespace decode_launch_detail;
  const std::string why = decode_unsupported_reason(a.q.dtype, a.dims.D, a.dims.Dv);
  if (!why.empty()) throw Error(why);
  for (const auto& [t, name] :
       {std::pair{a.q, "q"}, {a.k_pages, "k_pages"}, {a.v_pages, "v_pages"}, {a.out, "out"}}) {
    check_vector_layout(t, "flexattn::flex_attention", name);
  }
  check_device_arch();
  DecodeParams p{};
  set_out(p, a.q, a.out, a.lse, a.dims);
  p.k = a.k_pages.data;
  p.v = a.v_pages.data;
  p.k_sb = a.k_pages.stride[0], p.k_sh = a.k_pages.stride[1], p.k_sr = a.k_pages.stride[2];
  p.v_sb = a.v_pages.stride[0], p.v_sh = a.v_pages.stride[1], p.v_sr = a.v_pages.stride[2];
  p.page_table = static_cast<const int32_t*>(a.page_table.data);
  p.pt_sb = a.page_table.stride[0];
  p.pt_sp = a.page_table.stride[1];
  p.page_size = static_cast<int>(a.page_size);
  p.page_shift = -1;
  for (int sh = 0; sh < 31; ++sh) {
    if ((int64_t{1} << sh) == a.page_size) p.page_shift = sh;
  }
  p.num_pages = static_cast<int>(a.num_pages);
  p.kv_len = static_cast<const int32_t*>(a.kv_len.data);
  p.kl_s = a.kv_len.stride[0];
  p.lists = false;
  if (!launch_decode_for<kDims, Unit>(p, a.q.dtype, a.dims.D, true, a.stream, score_mod,
                                      mask_mod)) {
    throw Error("flexattn::flex_attention: over a PagedKV on Device::cuda, head dim " +
                std::to_string(a.dims.D) +
                " is not among the head dims this library was built with for the stock variants "
                "(CMake option FLEXATTN_CUDA_HEAD_DIMS); rebuild with it, or call flex_attention "
                "from a .cu file compiled by nvcc, which instantiates every head dim");
  }
}

template <class Unit, class ScoreMod, class MaskMod>
void launch_paged_forward(const PagedArgs& a, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  launch_paged_forward_for<kAllHeadDims, Unit>(a, score_mod, mask_mod);
}

}  // namespace flexattn::detail::cuda
