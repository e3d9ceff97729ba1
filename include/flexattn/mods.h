// score_mods and mask_mods: the stock variants, their combinators, and the concepts a user's own
// functor must satisfy.
//
//   score_mod:  template <class T> T operator()(T score, int b, int h, int q_idx, int kv_idx) const
//   mask_mod:   bool operator()(int b, int h, int q_idx, int kv_idx) const
//
// both marked FLEXATTN_HD. `h` is the QUERY head. Kernels never call a functor with an index past
// the end of the sequence: lanes beyond Lq / Lkv are masked before the functor is reached.
//
// A mask_mod may also carry a tile rule, used by create_block_mask to classify a whole tile without
// evaluating it element by element:
//   TileKind tile_kind(int b, int h, int q0, int q1, int k0, int k1) const   // rows [q0,q1), cols [k0,k1)
// It must be exact when it answers empty, partial or full, and answers `unknown` otherwise (the
// builder then evaluates that tile element by element).
#pragma once

#include "config.h"
#include "detail/device_std.h"
#include "math.h"

#if !defined(__CUDACC_RTC__)
#include <cmath>
#include <string>

#include "tensor.h"  // flexattn::Error, thrown by the stock constructors below
#endif

namespace flexattn {

enum class TileKind : unsigned char { empty = 0, partial = 1, full = 2, unknown = 3 };

// ---- concepts -----------------------------------------------------------------------------------
template <class F>
concept ScoreModFunctor = fstd::copy_constructible<F> && requires(const F& f, float s, int i) {
  { f(s, i, i, i, i) } -> fstd::convertible_to<float>;
};
template <class F>
concept DifferentiableScoreModFunctor = ScoreModFunctor<F> && requires(const F& f, Dual s, int i) {
  { f(s, i, i, i, i) } -> fstd::convertible_to<Dual>;
};
template <class F>
concept MaskModFunctor = fstd::copy_constructible<F> && requires(const F& f, int i) {
  { f(i, i, i, i) } -> fstd::convertible_to<bool>;
};
template <class F>
concept HasTileRule = requires(const F& f, int i) {
  { f.tile_kind(i, i, i, i, i, i) } -> fstd::same_as<TileKind>;
};

// Marks flexattn::RuntimeScoreMod / RuntimeMaskMod (runtime.h): source text compiled at run time,
// which the public templates route to the runtime backend instead of instantiating kernels.
template <class F>
inline constexpr bool is_runtime_mod = requires { requires F::kRuntimeMod; };

#if !defined(__CUDACC_RTC__)
namespace detail {
// (A runtime mod's source is checked by its compiler when it is first used.)
template <class S>
constexpr void check_score_mod() {
  if constexpr (!is_runtime_mod<S>) {
    static_assert(fstd::copy_constructible<S>, "flexattn: a score_mod must be copyable");
    static_assert(ScoreModFunctor<S>,
                  "flexattn: score_mod must be callable as score_mod(float score, int b, int h, "
                  "int q_idx, int kv_idx) const and return the new score; write it as "
                  "`template <class T> FLEXATTN_HD T operator()(T score, int b, int h, int q_idx, "
                  "int kv_idx) const`");
  }
}
template <class S>
constexpr void check_differentiable_score_mod() {
  if constexpr (!is_runtime_mod<S>) {
    check_score_mod<S>();
    static_assert(DifferentiableScoreModFunctor<S>,
                  "flexattn: the backward pass calls score_mod with flexattn::Dual to "
                  "differentiate it; make operator() a template in the score type T (not "
                  "float-only) and use flexattn::exp/tanh/... so it accepts Dual");
  }
}
template <class M>
constexpr void check_mask_mod() {
  if constexpr (!is_runtime_mod<M>) {
    static_assert(fstd::copy_constructible<M>, "flexattn: a mask_mod must be copyable");
    static_assert(MaskModFunctor<M>,
                  "flexattn: mask_mod must be callable as mask_mod(int b, int h, int q_idx, int "
                  "kv_idx) const and return bool (true keeps the score)");
  }
}
}  // namespace detail
#endif

// ---- tile-rule helpers --------------------------------------------------------------------------
namespace detail {
// Keeps (q, kv) iff lo <= q - kv <= hi. Over a tile, q - kv takes every integer in
// [q0 - (k1 - 1), (q1 - 1) - k0], so the band test below is exact.
FLEXATTN_HD inline TileKind diagonal_band_tile(int q0, int q1, int k0, int k1, long long lo,
                                               long long hi) {
  const long long dmin = (long long)q0 - (k1 - 1);
  const long long dmax = (long long)(q1 - 1) - k0;
  if (dmax < lo || dmin > hi) return TileKind::empty;
  if (dmin >= lo && dmax <= hi) return TileKind::full;
  return TileKind::partial;
}
}  // namespace detail

// ---- stock mask_mods ----------------------------------------------------------------------------
struct NoopMask {
  FLEXATTN_HD bool operator()(int, int, int, int) const { return true; }
  FLEXATTN_HD TileKind tile_kind(int, int, int, int, int, int) const { return TileKind::full; }
};

struct CausalMask {
  FLEXATTN_HD bool operator()(int, int, int q, int kv) const { return kv <= q; }
  FLEXATTN_HD TileKind tile_kind(int, int, int q0, int q1, int k0, int k1) const {
    return detail::diagonal_band_tile(q0, q1, k0, k1, 0, 1LL << 40);
  }
};

struct SlidingWindowMask {
  int window;  // keeps 0 <= q - kv <= window: the query and `window` keys before it
  FLEXATTN_HD bool operator()(int, int, int q, int kv) const {
    return q - kv >= 0 && q - kv <= window;
  }
  FLEXATTN_HD TileKind tile_kind(int, int, int q0, int q1, int k0, int k1) const {
    return detail::diagonal_band_tile(q0, q1, k0, k1, 0, window);
  }
};

struct PrefixLMMask {
  int prefix_len;  // keys before prefix_len are seen by every query; the rest causally
  FLEXATTN_HD bool operator()(int, int, int q, int kv) const { return kv < prefix_len || kv <= q; }
  FLEXATTN_HD TileKind tile_kind(int, int, int q0, int q1, int k0, int k1) const {
    if (k1 <= prefix_len) return TileKind::full;
    const TileKind c = detail::diagonal_band_tile(q0, q1, k0, k1, 0, 1LL << 40);
    if (k0 >= prefix_len || c == TileKind::full) return c;
    return TileKind::partial;  // prefix columns kept, some later column dropped (c not full)
  }
};

struct DocumentMask {
  const int32_t* doc_ids;  // one id per position, on the tensors' device, length >= max(Lq, Lkv)
  FLEXATTN_HD bool operator()(int, int, int q, int kv) const { return doc_ids[q] == doc_ids[kv]; }
  // Exact from the id ranges of the tile's rows and columns where they decide it: one document on
  // both sides is full, disjoint id ranges are empty; anything else is left to the element scan.
  FLEXATTN_HD TileKind tile_kind(int, int, int q0, int q1, int k0, int k1) const {
    int32_t qlo = doc_ids[q0], qhi = qlo, klo = doc_ids[k0], khi = klo;
    for (int i = q0 + 1; i < q1; ++i) {
      const int32_t d = doc_ids[i];
      qlo = d < qlo ? d : qlo;
      qhi = d > qhi ? d : qhi;
    }
    for (int i = k0 + 1; i < k1; ++i) {
      const int32_t d = doc_ids[i];
      klo = d < klo ? d : klo;
      khi = d > khi ? d : khi;
    }
    if (qhi < klo || khi < qlo) return TileKind::empty;
    if (qlo == qhi && klo == khi) return qlo == klo ? TileKind::full : TileKind::empty;
    return TileKind::unknown;
  }
};

namespace detail {
template <class M>
FLEXATTN_HD TileKind tile_kind_of(const M& m, int b, int h, int q0, int q1, int k0, int k1) {
  if constexpr (requires { m.tile_kind(b, h, q0, q1, k0, k1); }) {
    return m.tile_kind(b, h, q0, q1, k0, k1);
  } else {
    return TileKind::unknown;
  }
}
}  // namespace detail

template <class A, class B>
struct AndMask {
  A a;
  B b;
  FLEXATTN_HD bool operator()(int bi, int h, int q, int kv) const {
    return a(bi, h, q, kv) && b(bi, h, q, kv);
  }
  FLEXATTN_HD TileKind tile_kind(int bi, int h, int q0, int q1, int k0, int k1) const {
    const TileKind ta = detail::tile_kind_of(a, bi, h, q0, q1, k0, k1);
    if (ta == TileKind::empty) return ta;
    const TileKind tb = detail::tile_kind_of(b, bi, h, q0, q1, k0, k1);
    if (tb == TileKind::empty) return tb;
    if (ta == TileKind::full) return tb;  // a keeps all: the tile is whatever b is
    if (tb == TileKind::full) return ta;
    return TileKind::unknown;             // two partial/unknown tiles may still cancel out
  }
};

template <class A, class B>
struct OrMask {
  A a;
  B b;
  FLEXATTN_HD bool operator()(int bi, int h, int q, int kv) const {
    return a(bi, h, q, kv) || b(bi, h, q, kv);
  }
  FLEXATTN_HD TileKind tile_kind(int bi, int h, int q0, int q1, int k0, int k1) const {
    const TileKind ta = detail::tile_kind_of(a, bi, h, q0, q1, k0, k1);
    if (ta == TileKind::full) return ta;
    const TileKind tb = detail::tile_kind_of(b, bi, h, q0, q1, k0, k1);
    if (tb == TileKind::full) return tb;
    if (ta == TileKind::empty) return tb;
    if (tb == TileKind::empty) return ta;
    return TileKind::unknown;
  }
};

template <class A>
struct NotMask {
  A a;
  FLEXATTN_HD bool operator()(int bi, int h, int q, int kv) const { return !a(bi, h, q, kv); }
  FLEXATTN_HD TileKind tile_kind(int bi, int h, int q0, int q1, int k0, int k1) const {
    const TileKind t = detail::tile_kind_of(a, bi, h, q0, q1, k0, k1);
    if (t == TileKind::empty) return TileKind::full;
    if (t == TileKind::full) return TileKind::empty;
    return t;
  }
};

// The stock constructors check their parameters on the host (they are not FLEXATTN_HD: build the
// functor on the host, then hand it to a kernel). Under NVRTC only the functors are compiled.
#if !defined(__CUDACC_RTC__)
namespace detail {
[[noreturn]] inline void bad_mod_parameter(const char* fn, const std::string& what) {
  throw Error(std::string("flexattn::") + fn + ": " + what);
}
}  // namespace detail

inline CausalMask causal() { return {}; }
inline SlidingWindowMask sliding_window(int w) {
  if (w < 0) {
    detail::bad_mod_parameter("sliding_window", "w is " + std::to_string(w) + "; expected >= 0");
  }
  return {w};
}
inline PrefixLMMask prefix_lm(int prefix_len) {
  if (prefix_len < 0) {
    detail::bad_mod_parameter("prefix_lm",
                              "prefix_len is " + std::to_string(prefix_len) + "; expected >= 0");
  }
  return {prefix_len};
}
// doc_ids must hold max(q_len, kv_len) ids on the tensors' device; a null pointer is refused.
inline DocumentMask document(const int32_t* doc_ids) {
  if (doc_ids == nullptr) {
    detail::bad_mod_parameter("document",
                              "doc_ids is null; expected a pointer to one int32 id per position");
  }
  return {doc_ids};
}
inline NoopMask noop_mask() { return {}; }

template <class M0, class... Ms>
auto and_masks(M0 m0, Ms... ms) {
  if constexpr (sizeof...(Ms) == 0) {
    return m0;
  } else {
    using Rest = decltype(and_masks(ms...));
    return AndMask<M0, Rest>{m0, and_masks(ms...)};
  }
}
template <class M0, class... Ms>
auto or_masks(M0 m0, Ms... ms) {
  if constexpr (sizeof...(Ms) == 0) {
    return m0;
  } else {
    using Rest = decltype(or_masks(ms...));
    return OrMask<M0, Rest>{m0, or_masks(ms...)};
  }
}
template <class M>
NotMask<M> not_mask(M m) {
  return {m};
}
#endif  // !__CUDACC_RTC__

// ---- stock score_mods ---------------------------------------------------------------------------
struct NoopScore {
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int, int, int) const {
    return s;
  }
};

struct RelativePosition {
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int, int q, int kv) const {
    return s + float(q - kv);
  }
};

namespace detail {
// 2^x for x in [-126, 126] from arithmetic alone (rounding to n + f, |f| <= 1/2, then a degree-7
// Taylor polynomial of e^(f ln 2): relative error < 1e-8 before float rounding). A libm call that
// may set errno can be neither hoisted out of a tile loop nor vectorised; this can, so ALiBi's
// per-head slope costs nothing per element.
FLEXATTN_HD inline float exp2_arith(float x) {
  const int n = static_cast<int>(x + (x >= 0.0f ? 0.5f : -0.5f));
  const float f = (x - static_cast<float>(n)) * 0.69314718055994531f;
  float p = 1.0f / 5040.0f;
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  // 2^n by building the float's exponent field directly.
  const unsigned bits = static_cast<unsigned>(n + 127) << 23;
#if defined(__CUDA_ARCH__)
  const float scale = __int_as_float(static_cast<int>(bits));
#else
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
#endif
  return p * scale;
}
}  // namespace detail

struct Alibi {
  int num_heads;
  FLEXATTN_HD float slope(int h) const {
    return detail::exp2_arith(-8.0f * float(h + 1) / float(num_heads));
  }
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int h, int q, int kv) const {
    return s + slope(h) * float(kv - q);
  }
};

struct Softcap {
  float cap;
  // 1/cap is loop-invariant and hoisted by the compiler; fast_tanh is one exp2 (see math.h).
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int, int, int) const {
    return cap * fast_tanh(s * (1.0f / cap));
  }
};

// g(f(score, ...), ...)
template <class F, class G>
struct Composed {
  F f;
  G g;
  template <class T>
  FLEXATTN_HD T operator()(T s, int b, int h, int q, int kv) const {
    return g(f(s, b, h, q, kv), b, h, q, kv);
  }
};

#if !defined(__CUDACC_RTC__)  // the host-side constructors, as for the masks
inline NoopScore noop_score() { return {}; }
inline RelativePosition relative_position() { return {}; }
inline Alibi alibi(int num_heads) {
  if (num_heads < 1) {
    detail::bad_mod_parameter("alibi",
                              "num_heads is " + std::to_string(num_heads) + "; expected >= 1");
  }
  return {num_heads};
}
inline Softcap softcap(float cap) {
  // cap = 0 divides by zero (NaN gradients); a NaN or infinite cap is no cap at all.
  if (!std::isfinite(cap) || !(cap > 0.0f)) {
    detail::bad_mod_parameter("softcap", "cap is " + std::to_string(cap) +
                                             "; expected a finite value > 0");
  }
  return {cap};
}
template <class F, class G>
Composed<F, G> compose(F f, G g) {
  return {f, g};
}
#endif

}  // namespace flexattn
