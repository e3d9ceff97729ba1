// flex_attention: forward and backward, on the CPU or a CUDA GPU, for any score_mod and mask_mod.
//
//   s = scale * q.k ; s = score_mod(s, b, h, q_idx, kv_idx) ; s = -inf where mask_mod is false
//   p = softmax over kv ; out = p.v ; lse = log(sum_kv exp(s))        (natural log, f32)
// A row whose every key is masked gets out = 0, lse = -inf, zero gradients.
#pragma once

#include "block_mask.h"
#include "detail/args.h"
#include "detail/cpu/attention_bwd.h"
#include "detail/cpu/attention_paged.h"
#include "detail/cuda/dispatch.h"
#include "detail/runtime/dispatch.h"
#include "mods.h"
#include "param.h"
#include "tensor.h"

namespace flexattn {

struct AttentionOptions {
  float scale = 0.0f;        // 0 means 1/sqrt(head_dim)
  bool enable_gqa = false;   // Hq a multiple of Hkv; query head h reads kv head h / (Hq / Hkv)
  // cudaStream_t for Device::cuda; nullptr is the legacy default stream. Everything a GPU call
  // does - the front door's outputs, the dense mask of the overloads without a block mask, the
  // backward's workspaces, the kernels - is enqueued on this stream, and no call synchronises the
  // host or the device: results are ready once the stream's work is (cudaStreamSynchronize, or
  // the outputs' copy_to_host, which waits for it). Inputs written on another stream must be
  // ordered before the call by the caller, as must a BlockMask built on another stream.
  void* stream = nullptr;
  // Backward only. true: dQ is reduced in a fixed order, bit-identical run to run (the default on
  // every backend). false: a backend may use atomics where that is faster.
  bool deterministic = true;
};

struct AttentionOutput {
  Tensor out;  // [B, Hq, Lq, Dv] in q's dtype
  Tensor lse;  // [B, Hq, Lq] f32, natural log
};
struct AttentionGrads {
  Tensor dq, dk, dv;
};

// ---- lower layer: caller-owned strided views ----------------------------------------------------
template <class ScoreMod, class MaskMod, class Unit = detail::CompilerUnit>
void flex_attention_into(const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& out, const TensorView& lse, ScoreMod score_mod,
                         const BlockMask<MaskMod>& block_mask, AttentionOptions opts = {}) {
  detail::check_score_mod<ScoreMod>();
  detail::check_mask_mod<MaskMod>();
  const detail::FwdArgs args =
      detail::make_forward_args(q, k, v, out, lse, block_mask.data(), opts);
  detail::check_params(score_mod, args.q.device, "flex_attention", false);
  if constexpr (detail::runtime::involves_runtime<ScoreMod, MaskMod>) {
    detail::runtime::check_pair<ScoreMod, MaskMod>();
    detail::runtime::forward(args, detail::runtime::spec_of(score_mod),
                             detail::runtime::spec_of(block_mask.mask_mod()));
  } else if (args.q.device == Device::cpu) {
    detail::cpu::forward_any_lq(args, score_mod, block_mask.mask_mod());
  } else {
    detail::cuda::forward(args, score_mod, block_mask.mask_mod());
  }
}

template <class ScoreMod, class MaskMod, class Unit = detail::CompilerUnit>
void flex_attention_backward_into(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const TensorView& out, const TensorView& lse,
                                  const TensorView& dout, const TensorView& dq,
                                  const TensorView& dk, const TensorView& dv, ScoreMod score_mod,
                                  const BlockMask<MaskMod>& block_mask,
                                  AttentionOptions opts = {}) {
  detail::check_differentiable_score_mod<ScoreMod>();
  detail::check_mask_mod<MaskMod>();
  const detail::BwdArgs args = detail::make_backward_args(q, k, v, out, lse, dout, dq, dk, dv,
                                                          block_mask.data(), opts);
  detail::check_params(score_mod, args.q.device, "flex_attention_backward", true);
  if constexpr (detail::runtime::involves_runtime<ScoreMod, MaskMod>) {
    detail::runtime::check_pair<ScoreMod, MaskMod>();
    detail::runtime::backward(args, detail::runtime::spec_of(score_mod),
                              detail::runtime::spec_of(block_mask.mask_mod()));
  } else if (args.q.device == Device::cpu) {
    detail::cpu::backward(args, score_mod, block_mask.mask_mod());
  } else {
    detail::cuda::backward(args, score_mod, block_mask.mask_mod());
  }
}

// ---- front door: owning tensors -------------------------------------------------------------------
template <class ScoreMod, class MaskMod, class Unit = detail::CompilerUnit>
AttentionOutput flex_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                               ScoreMod score_mod, const BlockMask<MaskMod>& block_mask,
                               AttentionOptions opts = {}) {
  detail::check_score_mod<ScoreMod>();
  const detail::AttnDims d = detail::check_attention_inputs("flex_attention", q.view(), k.view(),
                                                            v.view(), block_mask.data(), opts);
  // Stream-ordered on opts.stream: no allocation synchronises (tensor.h, GPU memory).
  AttentionOutput r{Tensor::empty({d.B, d.Hq, d.Lq, d.Dv}, q.dtype(), q.device(), opts.stream),
                    Tensor::empty({d.B, d.Hq, d.Lq}, DType::f32, q.device(), opts.stream)};
  flex_attention_into(q.view(), k.view(), v.view(), r.out.view(), r.lse.view(), score_mod,
                      block_mask, opts);
  return r;
}

namespace detail {
// The block mask the overloads without one use: every tile full, on q's device. On the GPU it is
// built once per (device, Lq, Lkv) and kept; a call on `stream` is ordered after its build.
BlockMask<NoopMask> dense_block_mask(const Tensor& q, const Tensor& k, void* stream);
}  // namespace detail

template <class MaskMod, class Unit = detail::CompilerUnit>
AttentionOutput flex_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                               const BlockMask<MaskMod>& block_mask, AttentionOptions opts = {}) {
  return flex_attention(q, k, v, NoopScore{}, block_mask, opts);
}
template <class ScoreMod, class Unit = detail::CompilerUnit>
  requires(!std::same_as<ScoreMod, AttentionOptions>)
AttentionOutput flex_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                               ScoreMod score_mod, AttentionOptions opts = {}) {
  detail::check_front_door_inputs("flex_attention", q.view(), k.view(), v.view(), opts);
  return flex_attention(q, k, v, score_mod, detail::dense_block_mask(q, k, opts.stream), opts);
}
// Templates (never called with explicit arguments) rather than inline functions so that a .cu
// file including this header does not compile the dense kernels unless it calls them. Every
// public template here ends in `Unit` (detail::CompilerUnit): leave it defaulted.
template <class Unit = detail::CompilerUnit>
AttentionOutput flex_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                               AttentionOptions opts = {}) {
  detail::check_front_door_inputs("flex_attention", q.view(), k.view(), v.view(), opts);
  return flex_attention(q, k, v, NoopScore{}, detail::dense_block_mask(q, k, opts.stream), opts);
}

template <class ScoreMod, class MaskMod, class Unit = detail::CompilerUnit>
AttentionGrads flex_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse, const Tensor& dout,
                                       ScoreMod score_mod, const BlockMask<MaskMod>& block_mask,
                                       AttentionOptions opts = {}) {
  detail::check_differentiable_score_mod<ScoreMod>();
  detail::check_backward_inputs(q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(),
                                &block_mask.data(), opts);
  AttentionGrads g{Tensor::empty(q.shape(), q.dtype(), q.device(), opts.stream),
                   Tensor::empty(k.shape(), k.dtype(), k.device(), opts.stream),
                   Tensor::empty(v.shape(), v.dtype(), v.device(), opts.stream)};
  flex_attention_backward_into(q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(),
                               g.dq.view(), g.dk.view(), g.dv.view(), score_mod, block_mask, opts);
  return g;
}
template <class MaskMod, class Unit = detail::CompilerUnit>
AttentionGrads flex_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse, const Tensor& dout,
                                       const BlockMask<MaskMod>& block_mask,
                                       AttentionOptions opts = {}) {
  return flex_attention_backward(q, k, v, out, lse, dout, NoopScore{}, block_mask, opts);
}
template <class ScoreMod, class Unit = detail::CompilerUnit>
  requires(!std::same_as<ScoreMod, AttentionOptions>)
AttentionGrads flex_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse, const Tensor& dout,
                                       ScoreMod score_mod, AttentionOptions opts = {}) {
  detail::check_backward_inputs(q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(),
                                nullptr, opts);
  return flex_attention_backward(q, k, v, out, lse, dout, score_mod,
                                 detail::dense_block_mask(q, k, opts.stream), opts);
}
template <class Unit = detail::CompilerUnit>
AttentionGrads flex_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse, const Tensor& dout,
                                       AttentionOptions opts = {}) {
  detail::check_backward_inputs(q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(),
                                nullptr, opts);
  return flex_attention_backward(q, k, v, out, lse, dout, NoopScore{},
                                 detail::dense_block_mask(q, k, opts.stream), opts);
}

}  // namespace flexattn
