// Resolved, validated arguments of one attention call: what every backend's kernels receive.
// Built only by make_forward_args / make_backward_args, which throw flexattn::Error on bad input
// before anything is allocated or written.
#pragma once

#include <cstdint>

#include "../tensor.h"

namespace flexattn {
struct AttentionOptions;
struct BlockMaskData;
}  // namespace flexattn

namespace flexattn::detail {

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

struct BwdArgs {
  TensorView q, k, v, out, lse, dout, dq, dk, dv;
  AttnDims dims;
  const BlockMaskData* mask = nullptr;
  void* stream = nullptr;
  bool deterministic = true;
};

// Checks q, k, v and the block mask against each other and resolves the dimensions.
AttnDims check_attention_inputs(const TensorView& q, const TensorView& k, const TensorView& v,
                                const BlockMaskData& mask, const AttentionOptions& opts);
// Additionally check the caller's output (and, for backward, gradient) views.
FwdArgs make_forward_args(const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& out, const TensorView& lse, const BlockMaskData& mask,
                          const AttentionOptions& opts);
BwdArgs make_backward_args(const TensorView& q, const TensorView& k, const TensorView& v,
                           const TensorView& out, const TensorView& lse, const TensorView& dout,
                           const TensorView& dq, const TensorView& dk, const TensorView& dv,
                           const BlockMaskData& mask, const AttentionOptions& opts);

}  // namespace flexattn::detail
