// Serving: attention over a paged KV cache, and the calls that fill it.
//
//   PagedKV cache{k_pages, v_pages, page_table, kv_len};
//   append_kv(cache, k_new, v_new);                          // the step's new keys / values
//   auto [out, lse] = flex_attention(q, cache, score_mod, mask_mod);
//
// Sequence b holds kv_len[b] tokens; its token t lives in row t % page_size of page
// page_table[b][t / page_size] (of every kv head). Pages may sit in any order and be shared
// between sequences for reading. q [B, Hq, Lq, D] holds each sequence's newest Lq tokens: the
// mods see logical positions, q_idx = kv_len[b] - Lq + i for query row i and kv_idx = t, and the
// keys t >= kv_len[b] do not exist (no functor sees them, whatever their rows hold).
//
// A query row whose q_idx is negative (kv_len[b] < Lq: the row is not a token of the sequence)
// and every row of a sequence with kv_len 0 get out = 0, lse = -inf, and no functor sees their
// indices (a kernel may evaluate a functor on such a lane with a real row's indices, then drop
// the result, as for lanes past the end of a contiguous sequence).
//
// Kernels: when Lq is small the GPU splits each sequence's keys across CTAs and merges the parts
// (split-KV), and the query heads of one GQA group share one tile, so each K/V byte is read once
// per group. The mask_mod's tile rule (tile_kind, mods.h) skips whole tiles of keys: a sliding
// window decode reads only the window. The CPU runs the same computation on its thread pool.
// There is no backward through a paged cache.
#pragma once

#include <concepts>

#include "attention.h"
#include "detail/cpu/attention_paged.h"

namespace flexattn {

// All four tensors on one device (the device of q). k_pages / v_pages have q's dtype; on the GPU
// f16 or bf16 with D == Dv (as flex_attention), on the CPU also f32 and any Dv.
struct PagedKV {
  Tensor k_pages;     // [num_pages, Hkv, page_size, D]
  Tensor v_pages;     // [num_pages, Hkv, page_size, Dv]
  Tensor page_table;  // [B, max_pages_per_seq] i32: page ids in [0, num_pages)
  Tensor kv_len;      // [B] i32: 0 <= kv_len[b] <= max_pages_per_seq * page_size
};

// Writes k_new [B, Hkv, T, D] and v_new [B, Hkv, T, Dv] (T >= 0, the pages' dtype and device) at
// positions kv_len[b] .. kv_len[b] + T - 1 of each sequence and adds T to kv_len. It writes only
// rows of the pages listed for those positions; two sequences writing the same page row race.
//
// Refused with an Error, with nothing in the cache changed, when a shape, dtype or device does not
// match, or when some sequence would outgrow its pages: kv_len[b] < 0, kv_len[b] + T >
// max_pages_per_seq * page_size, or a page id for a written position outside [0, num_pages).
// That last check reads kv_len and page_table, which on the GPU live on the device: append_kv on
// Device::cuda runs a check kernel on opts.stream and waits for its one-byte answer (the call's
// only synchronisation: it waits for the work queued on opts.stream before it), then enqueues
// the writes and the kv_len update on opts.stream without waiting for them. On the CPU the call
// runs to completion.
void append_kv(PagedKV& cache, const Tensor& k_new, const Tensor& v_new,
               AttentionOptions opts = {});

namespace detail {
// Shapes, dtypes and devices of q, the cache, out and lse (Errors name "flex_attention"). The
// kv lengths and page ids are read only by the kernels: on the CPU a bad one (kv_len[b] outside
// [0, max_pages * page_size], a page id outside [0, num_pages) for a token below kv_len[b]) throws
// Error before anything is written; on the GPU that sequence's rows come out NaN (out and lse) and
// nothing outside the pages is read.
PagedArgs make_paged_args(const TensorView& q, const PagedKV& kv, const TensorView& out,
                          const TensorView& lse, const AttentionOptions& opts);
AttnDims check_paged_inputs(const TensorView& q, const PagedKV& kv, const AttentionOptions& opts);
// append_kv's arguments, without the kv lengths and page ids (Errors name "append_kv").
AppendArgs make_append_args(const PagedKV& kv, const TensorView& k_new, const TensorView& v_new,
                            const AttentionOptions& opts);
}  // namespace detail

// ---- lower layer: caller-owned out [B, Hq, Lq, Dv] (q's dtype) and lse [B, Hq, Lq] (f32) ------
template <class ScoreMod, class MaskMod, class Unit = detail::CompilerUnit>
void flex_attention_into(const TensorView& q, const PagedKV& kv, const TensorView& out,
                         const TensorView& lse, ScoreMod score_mod, MaskMod mask_mod,
                         AttentionOptions opts = {}) {
  detail::check_score_mod<ScoreMod>();
  detail::check_mask_mod<MaskMod>();
  const detail::PagedArgs args = detail::make_paged_args(q, kv, out, lse, opts);
  if constexpr (detail::runtime::involves_runtime<ScoreMod, MaskMod>) {
    detail::runtime::check_pair<ScoreMod, MaskMod>();
    detail::runtime::paged_forward(args, detail::runtime::spec_of(score_mod),
                                   detail::runtime::spec_of(mask_mod));
  } else if (args.q.device == Device::cpu) {
    detail::cpu::paged_forward(args, score_mod, mask_mod);
  } else {
    detail::cuda::paged_forward(args, score_mod, mask_mod);
  }
}

// ---- front door -----------------------------------------------------------------------------------
template <class ScoreMod, class MaskMod, class Unit = detail::CompilerUnit>
  requires(!std::same_as<MaskMod, AttentionOptions>)
AttentionOutput flex_attention(const Tensor& q, const PagedKV& kv, ScoreMod score_mod,
                               MaskMod mask_mod, AttentionOptions opts = {}) {
  detail::check_score_mod<ScoreMod>();
  detail::check_mask_mod<MaskMod>();
  const detail::AttnDims d = detail::check_paged_inputs(q.view(), kv, opts);
  AttentionOutput r{Tensor::empty({d.B, d.Hq, d.Lq, d.Dv}, q.dtype(), q.device(), opts.stream),
                    Tensor::empty({d.B, d.Hq, d.Lq}, DType::f32, q.device(), opts.stream)};
  flex_attention_into(q.view(), kv, r.out.view(), r.lse.view(), score_mod, mask_mod, opts);
  return r;
}
// One functor: a score_mod (called with 5 arguments) or a mask_mod (4 arguments); which one is
// told apart by how it can be called.
template <class Mod, class Unit = detail::CompilerUnit>
  requires(!std::same_as<Mod, AttentionOptions>)
AttentionOutput flex_attention(const Tensor& q, const PagedKV& kv, Mod mod,
                               AttentionOptions opts = {}) {
  static_assert(ScoreModFunctor<Mod> || MaskModFunctor<Mod> || is_runtime_mod<Mod>,
                "flexattn: flex_attention(q, paged_kv, mod) takes a score_mod (score, b, h, q_idx, "
                "kv_idx) or a mask_mod (b, h, q_idx, kv_idx)");
  if constexpr (std::same_as<Mod, RuntimeMaskMod> ||
                (MaskModFunctor<Mod> && !ScoreModFunctor<Mod>)) {
    return flex_attention<NoopScore, Mod, Unit>(q, kv, NoopScore{}, mod, opts);
  } else {
    return flex_attention<Mod, NoopMask, Unit>(q, kv, mod, NoopMask{}, opts);
  }
}
template <class Unit = detail::CompilerUnit>
AttentionOutput flex_attention(const Tensor& q, const PagedKV& kv, AttentionOptions opts = {}) {
  return flex_attention<NoopScore, NoopMask, Unit>(q, kv, NoopScore{}, NoopMask{}, opts);
}

}  // namespace flexattn
