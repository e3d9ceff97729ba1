// Learnable tensors a score_mod reads: flex_attention_backward fills their gradients.
//
//   struct RelBias {                                   // T5-style bias[h][bucket(q - kv)]
//     flexattn::Param table;                           // [H, buckets], its grad beside it
//     template <class T>
//     FLEXATTN_HD T operator()(T s, int b, int h, int q, int kv) const {
//       return s + table(h, bucket(q - kv));
//     }
//     auto params() const { return flexattn::params(table); }   // what the backward fills
//   };
//   flexattn::Tensor bias = ..., bias_grad = flexattn::Tensor::empty(bias.shape(), DType::f32);
//   RelBias mod{flexattn::Param(bias, bias_grad)};
//   auto g = flexattn::flex_attention_backward(q, k, v, out, lse, dout, mod, mask);
//   // g.dq, g.dk, g.dv as always; bias_grad now holds d(loss)/d(bias)
//
// The user writes no derivative. A read `p(i, j, ...)` returns a ParamValue; arithmetic and the
// math functions (math.h) on it give a PDual, a value that carries, besides the derivative with
// respect to the score that Dual carries, the derivatives with respect to up to kMaxParamReads
// distinct parameter entries read for one score. It converts back to float, Dual or double at the
// functor's `return`, so the same generic functor runs in the forward (float), the backward
// (Dual, then PDual) and the float64 reference (double).
//
// Contract (the backward, CPU; the GPU backward refuses a score_mod with params for now):
//  - A score_mod with params lists every Param it reads in `params()` (flexattn::params(...)).
//    flex_attention_backward overwrites each listed Param's grad with d(loss)/d(value):
//    sum over the kept scores of dL/d(score_mod output) * d(output)/d(entry), accumulated in f32;
//    masked scores and scores with probability 0 contribute nothing. Deterministic: summed in a
//    fixed order whatever the thread count's scheduling (bit-identical for a given thread count).
//  - Errors (flexattn::Error, before any output is written): a Param on another device than the
//    call, one score reading more than kMaxParamReads distinct entries, a read of a Param that
//    params() does not list (checked in the backward, which then throws after the call with the
//    gradients unset), and a table too large for the CPU backward's per-item buffers
//    (items x entries > 2^26 floats).
//  - Indices are not checked: a read outside the tensor reads outside it.
#pragma once

#include "config.h"
#include "detail/device_std.h"
#include "detail/runtime/captures.h"
#include "math.h"
#if !defined(__CUDACC_RTC__)
#include <string>

#include "tensor.h"
#endif

namespace flexattn {

inline constexpr int kMaxParamReads = 4;

// One read of a Param: the value and the address of its gradient entry (its identity).
struct ParamValue {
  float v;
  float* g;
  // A functor returning a read as it is (the score replaced by a table entry).
  FLEXATTN_HD operator float() const { return v; }
  FLEXATTN_HD operator double() const { return v; }
  FLEXATTN_HD operator Dual() const { return {v, 0.0f}; }
};

// A value with derivatives: `d` with respect to the score (as Dual), `t[i]` with respect to the
// parameter entry whose gradient lives at `g[i]`, for i < n. n > kMaxParamReads marks an overflow.
struct PDual {
  float v = 0.0f;
  float d = 0.0f;
  int n = 0;
  float t[kMaxParamReads] = {};
  float* g[kMaxParamReads] = {};

  PDual() = default;
  FLEXATTN_HD constexpr PDual(float value, float deriv = 0.0f) : v(value), d(deriv) {}
  FLEXATTN_HD PDual(const ParamValue& p) : v(p.v), n(1) {
    t[0] = 1.0f;
    g[0] = p.g;
  }
  FLEXATTN_HD operator float() const { return v; }
  FLEXATTN_HD operator double() const { return v; }
  FLEXATTN_HD operator Dual() const { return {v, d}; }
};

namespace param_detail {

template <class T>
inline constexpr bool tracked = fstd::is_same_v<T, ParamValue> || fstd::is_same_v<T, PDual>;
template <class T>
inline constexpr bool liftable = tracked<T> || fstd::is_same_v<T, Dual> ||
                                 fstd::is_same_v<T, float> || fstd::is_same_v<T, int> ||
                                 fstd::is_same_v<T, double>;
// An operation with a tracked operand: a PDual, except next to a double (the float64 reference),
// where only the value matters and the result is double.
template <class A, class B>
inline constexpr bool mixed = (tracked<A> || tracked<B>) && liftable<A> && liftable<B>;
template <class A, class B>
inline constexpr bool with_double = fstd::is_same_v<A, double> || fstd::is_same_v<B, double>;

FLEXATTN_HD inline PDual lift(const PDual& x) { return x; }
FLEXATTN_HD inline PDual lift(const ParamValue& x) { return PDual(x); }
FLEXATTN_HD inline PDual lift(Dual x) { return PDual(x.v, x.d); }
FLEXATTN_HD inline PDual lift(float x) { return PDual(x); }
FLEXATTN_HD inline PDual lift(int x) { return PDual(float(x)); }
FLEXATTN_HD inline PDual lift(double x) { return PDual(float(x)); }

FLEXATTN_HD inline double value(const PDual& x) { return x.v; }
FLEXATTN_HD inline double value(const ParamValue& x) { return x.v; }
FLEXATTN_HD inline double value(Dual x) { return x.v; }
FLEXATTN_HD inline double value(double x) { return x; }
FLEXATTN_HD inline double value(float x) { return x; }
FLEXATTN_HD inline double value(int x) { return x; }

// r.t[g] += t, merging reads of the same entry; zero terms are dropped (the chain rule's zero).
// Every loop here has the constant trip count kMaxParamReads: unrolled, the arrays become
// registers, and where only the value is used (the forward, the Dual pass of the backward) the
// compiler deletes the tangent arithmetic altogether.
FLEXATTN_HD inline void add_tangent(PDual& r, float* g, float t) {
  if (t == 0.0f || r.n > kMaxParamReads) return;
  bool merged = false;
FLEXATTN_UNROLL
  for (int i = 0; i < kMaxParamReads; ++i) {
    if (!merged && i < r.n && r.g[i] == g) {
      r.t[i] += t;
      merged = true;
    }
  }
  if (merged) return;
FLEXATTN_UNROLL
  for (int i = 0; i < kMaxParamReads; ++i) {
    if (i == r.n) {
      r.g[i] = g;
      r.t[i] = t;
    }
  }
  ++r.n;  // past kMaxParamReads: the overflow mark
}

// value with derivative slope_a through a and slope_b through b (b may be absent).
FLEXATTN_HD inline PDual combine(float v, const PDual& a, float slope_a, const PDual* b = nullptr,
                                 float slope_b = 0.0f) {
  PDual r(v, math_detail::chain(a.d, slope_a) + (b ? math_detail::chain(b->d, slope_b) : 0.0f));
  if (a.n > kMaxParamReads || (b != nullptr && b->n > kMaxParamReads)) {
    r.n = kMaxParamReads + 1;  // an operand overflowed: so does the result
    return r;
  }
FLEXATTN_UNROLL
  for (int i = 0; i < kMaxParamReads; ++i) {
    if (i < a.n) add_tangent(r, a.g[i], math_detail::chain(a.t[i], slope_a));
  }
  if (b != nullptr) {
FLEXATTN_UNROLL
    for (int i = 0; i < kMaxParamReads; ++i) {
      if (i < b->n) add_tangent(r, b->g[i], math_detail::chain(b->t[i], slope_b));
    }
  }
  return r;
}

// f(x) through Dual's own f, so every edge convention of math.h holds for PDual too.
template <class F>
FLEXATTN_HD inline PDual unary(const PDual& a, F f) {
  const Dual r = f(Dual{a.v, 1.0f});
  return combine(r.v, a, r.d);
}
template <class F>
FLEXATTN_HD inline PDual binary(const PDual& a, const PDual& b, F f) {
  const Dual ra = f(Dual{a.v, 1.0f}, Dual{b.v, 0.0f});
  const Dual rb = f(Dual{a.v, 0.0f}, Dual{b.v, 1.0f});
  return combine(ra.v, a, ra.d, &b, rb.d);
}

}  // namespace param_detail

// ---- arithmetic and comparisons with a tracked operand --------------------------------------------
#define FLEXATTN_PARAM_BINARY(OP)                                                            \
  template <class A, class B>                                                                \
    requires param_detail::mixed<A, B>                                                       \
  FLEXATTN_HD inline auto operator OP(const A& a, const B& b) {                              \
    if constexpr (param_detail::with_double<A, B>) {                                         \
      return param_detail::value(a) OP param_detail::value(b);                               \
    } else {                                                                                 \
      return param_detail::binary(param_detail::lift(a), param_detail::lift(b),              \
                                  [](Dual x, Dual y) { return x OP y; });                    \
    }                                                                                        \
  }
FLEXATTN_PARAM_BINARY(+)
FLEXATTN_PARAM_BINARY(-)
FLEXATTN_PARAM_BINARY(*)
FLEXATTN_PARAM_BINARY(/)
#undef FLEXATTN_PARAM_BINARY

#define FLEXATTN_PARAM_COMPARE(OP)                                                 \
  template <class A, class B>                                                      \
    requires param_detail::mixed<A, B>                                             \
  FLEXATTN_HD inline bool operator OP(const A& a, const B& b) {                    \
    return param_detail::value(a) OP param_detail::value(b);                       \
  }
FLEXATTN_PARAM_COMPARE(<)
FLEXATTN_PARAM_COMPARE(>)
FLEXATTN_PARAM_COMPARE(<=)
FLEXATTN_PARAM_COMPARE(>=)
FLEXATTN_PARAM_COMPARE(==)
FLEXATTN_PARAM_COMPARE(!=)
#undef FLEXATTN_PARAM_COMPARE

template <class A>
  requires param_detail::tracked<A>
FLEXATTN_HD inline PDual operator-(const A& a) {
  return param_detail::combine(-param_detail::lift(a).v, param_detail::lift(a), -1.0f);
}

// ---- math.h's functions ---------------------------------------------------------------------------
#define FLEXATTN_PARAM_UNARY(FN)                                                          \
  template <class A>                                                                      \
    requires param_detail::tracked<A>                                                     \
  FLEXATTN_HD inline PDual FN(const A& a) {                                               \
    return param_detail::unary(param_detail::lift(a), [](Dual x) { return FN(x); });      \
  }
FLEXATTN_PARAM_UNARY(exp)
FLEXATTN_PARAM_UNARY(exp2)
FLEXATTN_PARAM_UNARY(log)
FLEXATTN_PARAM_UNARY(log2)
FLEXATTN_PARAM_UNARY(tanh)
FLEXATTN_PARAM_UNARY(fast_tanh)
FLEXATTN_PARAM_UNARY(sqrt)
FLEXATTN_PARAM_UNARY(sin)
FLEXATTN_PARAM_UNARY(cos)
FLEXATTN_PARAM_UNARY(abs)
FLEXATTN_PARAM_UNARY(sigmoid)
#undef FLEXATTN_PARAM_UNARY

template <class A>
  requires param_detail::tracked<A>
FLEXATTN_HD inline PDual pow(const A& a, float y) {
  return param_detail::unary(param_detail::lift(a), [y](Dual x) { return pow(x, y); });
}
// max / min / where choose one operand, derivatives and all (NaN-propagating, first at a tie, as
// math.h's).
template <class A, class B>
  requires param_detail::mixed<A, B>
FLEXATTN_HD inline PDual max(const A& a, const B& b) {
  const PDual x = param_detail::lift(a), y = param_detail::lift(b);
  return (x.v >= y.v || x.v != x.v) ? x : y;
}
template <class A, class B>
  requires param_detail::mixed<A, B>
FLEXATTN_HD inline PDual min(const A& a, const B& b) {
  const PDual x = param_detail::lift(a), y = param_detail::lift(b);
  return (x.v <= y.v || x.v != x.v) ? x : y;
}
template <class A, class B>
  requires param_detail::mixed<A, B>
FLEXATTN_HD inline PDual where(bool c, const A& a, const B& b) {
  return c ? param_detail::lift(a) : param_detail::lift(b);
}
FLEXATTN_HD inline float value_of(const PDual& x) { return x.v; }

// ---- Param -----------------------------------------------------------------------------------------
// A view of a learnable tensor and its gradient. Trivially copyable: a functor holds it by value
// on the host and the device alike.
class Param {
 public:
  Param() = default;
#if !defined(__CUDACC_RTC__)
  // value: f32, f16 or bf16, rank 1 to 4, any element strides; grad: f32, contiguous, the same
  // shape, on the same device. Both are views: the memory must outlive every call using them.
  // Throws Error naming what is wrong otherwise (i32 values, a rank, a shape, a device, null).
  Param(const TensorView& value, const TensorView& grad);
  Param(const Tensor& value, Tensor& grad) : Param(value.view(), grad.view()) {}
#endif

  // A runtime variant's learnable capture (runtime.h): the slot's value of storage Tag (a
  // detail::runtime tag: F32, F16 or Bf16) and rank, with the slot's contiguous gradient.
  template <class Tag>
  FLEXATTN_HD static Param of_slot(const detail::runtime::Slot& s, int rank) {
    Param p;
    p.data_ = s.data;
    p.grad_ = s.grad;
    p.storage_ = fstd::is_same_v<Tag, detail::runtime::F16>
                     ? kF16
                     : (fstd::is_same_v<Tag, detail::runtime::Bf16> ? kBf16 : kF32);
    p.rank_ = rank;
    int64_t n = 1;
    for (int d = rank - 1; d >= 0; --d) {
      p.size_[d] = s.size[d];
      p.stride_[d] = s.stride[d];
      p.gstride_[d] = n;
      n *= s.size[d];
    }
    p.numel_ = n;
    return p;
  }

  template <class... I>
  FLEXATTN_HD ParamValue operator()(I... idx) const {
    int64_t off = 0, goff = 0;
    int dim = 0;
    ((off += static_cast<int64_t>(idx) * stride_[dim], goff += static_cast<int64_t>(idx) * gstride_[dim],
      ++dim),
     ...);
    return {load(off), grad_ + goff};
  }
  FLEXATTN_HD ParamValue operator[](int i) const { return (*this)(i); }

  FLEXATTN_HD int rank() const { return rank_; }
  FLEXATTN_HD int64_t size(int d) const { return size_[d]; }
  FLEXATTN_HD int64_t numel() const { return numel_; }
  FLEXATTN_HD float* grad() const { return grad_; }
#if !defined(__CUDACC_RTC__)
  Device device() const { return on_cuda_ ? Device::cuda : Device::cpu; }
#endif

 private:
  enum Storage : uint8_t { kF32, kF16, kBf16 };
  FLEXATTN_HD float load(int64_t off) const {
    using namespace detail::runtime;
    switch (storage_) {
      case kF16: return load_element<F16>(data_, off);
      case kBf16: return load_element<Bf16>(data_, off);
      default: return load_element<F32>(data_, off);
    }
  }
  const void* data_ = nullptr;
  float* grad_ = nullptr;
  Storage storage_ = kF32;
  bool on_cuda_ = false;
  int rank_ = 0;
  int64_t numel_ = 0;
  int64_t size_[4] = {1, 1, 1, 1};
  int64_t stride_[4] = {0, 0, 0, 0};
  int64_t gstride_[4] = {0, 0, 0, 0};
};

// What a score_mod's params() returns: flexattn::params(a, b, ...).
template <int N>
struct ParamList {
  Param p[N];
};
template <class... P>
  requires(sizeof...(P) >= 1 && (fstd::is_same_v<P, Param> && ...))
ParamList<int(sizeof...(P))> params(const P&... p) {
  return {{p...}};
}

template <class F>
concept HasParams = requires(const F& f) { f.params().p[0]; };

#if !defined(__CUDACC_RTC__)
namespace detail {
// The Params of a score_mod must live on the call's device (a read elsewhere is a wild read);
// the GPU backward does not compute their gradients yet, so it refuses them.
template <class ScoreMod>
void check_params(const ScoreMod& score_mod, Device device, const char* fn, bool backward) {
  if constexpr (HasParams<ScoreMod>) {
    const auto list = score_mod.params();
    for (const Param& p : list.p) {
      if (p.device() != device) {
        throw Error(std::string("flexattn::") + fn + ": a Param of the score_mod is on " +
                    to_string(p.device()) + "; expected " + to_string(device) +
                    " (the call's device)");
      }
    }
    if (backward && device == Device::cuda) {
      throw Error(std::string("flexattn::") + fn + ": gradients of a score_mod's Params are "
                  "computed on the CPU only so far; run this backward on Device::cpu");
    }
  }
}
}  // namespace detail
#endif

}  // namespace flexattn
