// The stock variants the library instantiates for Device::cuda, so that host-only translation
// units (a .cpp compiled by g++) and the CLI can run them on the GPU. A user's own functors are
// instantiated in the user's .cu file instead (compile-time fusion through the public headers).
//
// X-macros: each entry is one (score_mod type, mask_mod type). Keep this list short: every entry
// costs every head dim x dtype x {forward, backward} kernels of nvcc time in the library build.
#pragma once

#include "../mods.h"

namespace flexattn::detail {
// An alias, because a template-id with a comma cannot be a macro argument.
using CausalDocumentMask = AndMask<CausalMask, DocumentMask>;
}  // namespace flexattn::detail

#define FLEXATTN_FOR_EACH_PREBUILT_MASK(X) \
  X(::flexattn::NoopMask)                  \
  X(::flexattn::CausalMask)                \
  X(::flexattn::SlidingWindowMask)         \
  X(::flexattn::PrefixLMMask)              \
  X(::flexattn::DocumentMask)              \
  X(::flexattn::detail::CausalDocumentMask)

#define FLEXATTN_FOR_EACH_PREBUILT_VARIANT(X)                                              \
  X(::flexattn::NoopScore, ::flexattn::NoopMask)                                           \
  X(::flexattn::NoopScore, ::flexattn::CausalMask)                                         \
  X(::flexattn::NoopScore, ::flexattn::SlidingWindowMask)                                  \
  X(::flexattn::NoopScore, ::flexattn::PrefixLMMask)                                       \
  X(::flexattn::NoopScore, ::flexattn::DocumentMask)                                       \
  X(::flexattn::NoopScore, ::flexattn::detail::CausalDocumentMask)                          \
  X(::flexattn::Alibi, ::flexattn::CausalMask)                                             \
  X(::flexattn::Softcap, ::flexattn::NoopMask)

namespace flexattn::detail {

template <class M>
inline constexpr bool is_prebuilt_mask = false;
template <class S, class M>
inline constexpr bool is_prebuilt_variant = false;

#define FLEXATTN_MARK_MASK(M) \
  template <>                 \
  inline constexpr bool is_prebuilt_mask<M> = true;
#define FLEXATTN_MARK_VARIANT(S, M) \
  template <>                       \
  inline constexpr bool is_prebuilt_variant<S, M> = true;
FLEXATTN_FOR_EACH_PREBUILT_MASK(FLEXATTN_MARK_MASK)
FLEXATTN_FOR_EACH_PREBUILT_VARIANT(FLEXATTN_MARK_VARIANT)
#undef FLEXATTN_MARK_MASK
#undef FLEXATTN_MARK_VARIANT

}  // namespace flexattn::detail
