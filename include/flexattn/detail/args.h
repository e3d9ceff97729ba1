// Resolved, validated arguments of one attention call: what every backend's kernels receive.
// Built only by make_forward_args / make_backward_args, which throw flexattn::Error on bad input
// before anything is allocated or written.
#pragma once

#include <climits>
#include <cstdint>

#include "../tensor.h"

namespace flexattn {
struct AttentionOptions;
struct BlockMaskData;
}  // namespace flexattn

namespace flexattn::detail {

// ---- limits the attention calls and create_block_mask enforce (Error otherwise) ---------------
// B, Hq, Hkv, Lq, Lkv (and create_block_mask's B, H, q_len, kv_len): score_mods and mask_mods
// take int indices.
inline constexpr int64_t kMaxIndexDim = INT_MAX;
// Elements of one view (product of its shape): the CPU backward's partial buffers hold up to 8
// times as many floats as q or k, and their byte counts must fit int64.
inline constexpr int64_t kMaxViewElements = int64_t{1} << 56;
// A BlockMask's block_q and block_kv: 1 .. 2^20 (the CPU kernels cut blocks into sub-tiles of at
// most 128 rows; their index arithmetic stays far from int overflow).
inline constexpr int kMaxBlockSize = 1 << 20;
// Tiles of a BlockMask, B * H * ceil(q_len / block_q) * ceil(kv_len / block_kv): the lists are
// int32 and the GPU builder and kernels index them with int.
inline constexpr int64_t kMaxBlockMaskTiles = INT_MAX;

struct AttnDims {
  int64_t B = 0, Hq = 0, Hkv = 0, Lq = 0, Lkv = 0, D = 0, Dv = 0;
  float scale = 0.0f;  // resolved: never 0
  int64_t group() const { return Hq / Hkv; }  // query heads per kv head
};

// Views are rank 4 in the logical order [B, H, L, D] with a unit stride on the last dim;
// lse is [B, Hq, Lq] (rank 3) in float32.
struct FwdArgs {
  TensorView q, k, v, out, lse;
  AttnDims dims;
  const BlockMaskData* mask = nullptr;
  void* stream = nullptr;
};

// A paged forward (paged.h). dims.Lkv is the cache's capacity, max_pages * page_size; the real
// lengths are kv_len's values, read only by the kernels.
struct PagedArgs {
  TensorView q, k_pages, v_pages, page_table, kv_len, out, lse;
  AttnDims dims;
  int64_t num_pages = 0, page_size = 0, max_pages = 0;
  // false (paged calls): q holds each sequence's newest Lq tokens, q_idx = kv_len[b] - Lq + i.
  // true (a contiguous call the CPU runs through the paged path): q_idx = i, every row real.
  bool q_from_start = false;
  void* stream = nullptr;
};

// An append_kv call (paged.h), validated except for the kv lengths and page ids.
struct AppendArgs {
  TensorView k_pages, v_pages, page_table, kv_len, k_new, v_new;
  int64_t B = 0, Hkv = 0, T = 0, D = 0, Dv = 0;
  int64_t num_pages = 0, page_size = 0, max_pages = 0;
  void* stream = nullptr;
};

struct BwdArgs {
  TensorView q, k, v, out, lse, dout, dq, dk, dv;
  AttnDims dims;
  const BlockMaskData* mask = nullptr;
  void* stream = nullptr;
  bool deterministic = true;
};

// Checks q, k, v and the block mask against each other and resolves the dimensions. `fn` is the
// function the user called ("flex_attention", "flex_attention_backward"); it prefixes every
// message as "flexattn::<fn>: ".
AttnDims check_attention_inputs(const char* fn, const TensorView& q, const TensorView& k,
                                const TensorView& v, const BlockMaskData& mask,
                                const AttentionOptions& opts);
// q, k, v and the options without a block mask: what the overloads without one call before they
// build the dense mask, so a bad q/k/v is reported under the user's function name.
AttnDims check_front_door_inputs(const char* fn, const TensorView& q, const TensorView& k,
                                 const TensorView& v, const AttentionOptions& opts);
// Everything flex_attention_backward reads - q, k, v, out, lse, dout and the block mask (when not
// null) - checked before the gradients are allocated; messages say flex_attention_backward.
AttnDims check_backward_inputs(const TensorView& q, const TensorView& k, const TensorView& v,
                               const TensorView& out, const TensorView& lse,
                               const TensorView& dout, const BlockMaskData* mask,
                               const AttentionOptions& opts);
// Additionally check the caller's output (and, for backward, gradient) views.
FwdArgs make_forward_args(const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& out, const TensorView& lse, const BlockMaskData& mask,
                          const AttentionOptions& opts);
BwdArgs make_backward_args(const TensorView& q, const TensorView& k, const TensorView& v,
                           const TensorView& out, const TensorView& lse, const TensorView& dout,
                           const TensorView& dq, const TensorView& dk, const TensorView& dv,
                           const BlockMaskData& mask, const AttentionOptions& opts);

}  // namespace flexattn::detail
