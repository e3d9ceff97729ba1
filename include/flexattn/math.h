// The math layer score_mods are written in: float functions and a forward-mode dual number.
//
// A score_mod written generically in T (`template <class T> T operator()(T s, ...)`) is called with
// `float` in the forward pass and with `Dual` in the backward pass, where `Dual{s, 1}` carries
// d(score_mod)/d(score) out in `.d`. That is how the backward differentiates any user functor
// without a hand-written gradient. Index arguments are ints: they never carry a derivative.
//
// Device-safe: no host-only header is needed when compiled for the GPU (NVRTC keeps working).
//
// Edge conventions (values are IEEE / libm's; derivatives are chosen where the math has none and
// tested in tests/test_numerics.cpp):
//  - Chain rule with a zero derivative is zero: a Dual whose .d is 0 (a constant, or the flat side
//    of max / min / where) gives .d = 0 through every function, even where the function's own
//    derivative is inf or NaN (pow(max(s, 0), 0.5) for s < 0 has derivative 0, not 0 * inf).
//  - sqrt(+-0): value +-0, derivative +inf. log / log2(+-0): -inf, derivative +inf.
//  - pow(x, y) for a Dual x and a constant y: value pow(x, y); derivative y * pow(x, y - 1), with
//    pow(x, 0) = 1 and derivative 0 for every x (0 and NaN included, as IEEE pow(x, 0) = 1); at
//    x = 0: derivative +inf for 0 < y < 1, 1 for y = 1, 0 for y > 1, -inf for y < 0.
//  - abs(+-0) = +0 with derivative 0 (the mean of the one-sided slopes, as PyTorch's sign(0) = 0).
//  - max / min propagate NaN (either argument NaN gives NaN, as torch.maximum); at a tie they
//    return the first argument (its derivative, for Duals). where(c, a, b) is a plain select.
//  - sigmoid: 0 and 1 at the ends (never NaN), derivative s * (1 - s), 0 at large |x|.
//  - tanh, fast_tanh: +-1 at +-inf and at large |x|, derivative 1 - t * t, exactly 0 there.
//  - exp / exp2: inf above the float range, 0 below, derivatives likewise.
//  - a / b for Duals: derivative (a.d - (a / b) * b.d) / b, each term 0 where its derivative is
//    0; no b * b, so no overflow for |b| > 1e19. Division by +-0 gives IEEE infinities.
//  - NaN in gives NaN out (value and derivative) everywhere except pow(NaN, 0) = 1 and the
//    zero-derivative rule above.
#pragma once

#include "config.h"
#include "detail/device_std.h"

#if !defined(__CUDACC_RTC__)
#include <cmath>
#include <concepts>
#include <type_traits>
#endif

namespace flexattn {

struct Dual {
  float v = 0.0f;  // value
  float d = 0.0f;  // derivative with respect to the raw score
  Dual() = default;
  FLEXATTN_HD constexpr Dual(float value, float deriv = 0.0f) : v(value), d(deriv) {}
};

namespace math_detail {
// d * f', zero where d is zero whatever f' is (the chain-rule convention above).
FLEXATTN_HD inline float chain(float d, float fprime) { return d == 0.0f ? 0.0f : d * fprime; }
FLEXATTN_HD constexpr float inf() { return fstd::numeric_limits<float>::infinity(); }
// 1 / x with +inf at +-0 (the derivative of log at its domain edge; 1 / -0 would be -inf).
FLEXATTN_HD inline float log_slope(float x) { return x == 0.0f ? inf() : 1.0f / x; }
}  // namespace math_detail

// ---- float ------------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__)
FLEXATTN_HD inline float exp(float x) { return ::expf(x); }
FLEXATTN_HD inline float exp2(float x) { return ::exp2f(x); }
FLEXATTN_HD inline float log(float x) { return ::logf(x); }
FLEXATTN_HD inline float log2(float x) { return ::log2f(x); }
FLEXATTN_HD inline float tanh(float x) { return ::tanhf(x); }
FLEXATTN_HD inline float sqrt(float x) { return ::sqrtf(x); }
FLEXATTN_HD inline float sin(float x) { return ::sinf(x); }
FLEXATTN_HD inline float cos(float x) { return ::cosf(x); }
FLEXATTN_HD inline float abs(float x) { return ::fabsf(x); }
FLEXATTN_HD inline float pow(float x, float y) { return ::powf(x, y); }
#else
// Declared const (no side effects): libm's float functions may set errno, which stops the compiler
// from hoisting a call with loop-invariant arguments (ALiBi's per-head slope) out of a tile loop.
// flexattn never reads errno.
#if defined(__GNUC__) || defined(__clang__)
#define FLEXATTN_MATH_CONST __attribute__((const))
#else
#define FLEXATTN_MATH_CONST
#endif
FLEXATTN_HD FLEXATTN_MATH_CONST inline float exp(float x) { return std::exp(x); }
FLEXATTN_HD FLEXATTN_MATH_CONST inline float exp2(float x) { return std::exp2(x); }
FLEXATTN_HD FLEXATTN_MATH_CONST inline float log(float x) { return std::log(x); }
FLEXATTN_HD FLEXATTN_MATH_CONST inline float log2(float x) { return std::log2(x); }
FLEXATTN_HD FLEXATTN_MATH_CONST inline float tanh(float x) { return std::tanh(x); }
FLEXATTN_HD FLEXATTN_MATH_CONST inline float sqrt(float x) { return std::sqrt(x); }
FLEXATTN_HD FLEXATTN_MATH_CONST inline float sin(float x) { return std::sin(x); }
FLEXATTN_HD FLEXATTN_MATH_CONST inline float cos(float x) { return std::cos(x); }
FLEXATTN_HD FLEXATTN_MATH_CONST inline float abs(float x) { return std::fabs(x); }
FLEXATTN_HD FLEXATTN_MATH_CONST inline float pow(float x, float y) { return std::pow(x, y); }
#endif
// double overloads: the float64 reference calls the same generic score_mods with double.
// Constrained templates, not plain overloads: a .cu file with `using namespace flexattn;` would
// otherwise make CUDA's own unqualified math calls ambiguous.
#if !defined(__CUDACC_RTC__)
template <std::same_as<double> D> inline D exp(D x) { return std::exp(x); }
template <std::same_as<double> D> inline D exp2(D x) { return std::exp2(x); }
template <std::same_as<double> D> inline D log(D x) { return std::log(x); }
template <std::same_as<double> D> inline D log2(D x) { return std::log2(x); }
template <std::same_as<double> D> inline D tanh(D x) { return std::tanh(x); }
template <std::same_as<double> D> inline D sqrt(D x) { return std::sqrt(x); }
template <std::same_as<double> D> inline D sin(D x) { return std::sin(x); }
template <std::same_as<double> D> inline D cos(D x) { return std::cos(x); }
template <std::same_as<double> D> inline D abs(D x) { return std::fabs(x); }
template <std::same_as<double> D> inline D pow(D x, D y) { return std::pow(x, y); }
template <std::same_as<double> D> inline D sigmoid(D x) { return 1.0 / (1.0 + std::exp(-x)); }
template <std::same_as<double> D> inline D max(D a, D b) { return (a >= b || a != a) ? a : b; }
template <std::same_as<double> D> inline D min(D a, D b) { return (a <= b || a != a) ? a : b; }
template <std::same_as<double> D> inline D where(bool c, D a, D b) { return c ? a : b; }
template <std::same_as<double> D> inline D fast_tanh(D x) { return std::tanh(x); }
#endif
FLEXATTN_HD inline float sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }
// tanh through one exp2: tanh(x) = 1 - 2 / (2^(2x log2 e) + 1). Several times cheaper than tanhf
// on both backends (one special-function op on the GPU), exact limits at +-inf, but the error is
// absolute (~1e-7), not relative: near 0 prefer tanh when relative accuracy matters.
FLEXATTN_HD inline float fast_tanh(float x) {
#if defined(__CUDA_ARCH__)
  // __fdividef: a reciprocal and a multiply instead of IEEE division's slow path; for a huge
  // denominator (x -> +inf) it gives 0, which is the right limit here.
  return 1.0f - __fdividef(2.0f, exp2(x * 2.8853900817779268f) + 1.0f);
#else
  return 1.0f - 2.0f / (exp2(x * 2.8853900817779268f) + 1.0f);
#endif
}
// NaN-propagating (a NaN score must not be hidden by a clamp), first argument at a tie.
FLEXATTN_HD inline float max(float a, float b) { return (a >= b || a != a) ? a : b; }
FLEXATTN_HD inline float min(float a, float b) { return (a <= b || a != a) ? a : b; }
FLEXATTN_HD inline float where(bool c, float a, float b) { return c ? a : b; }

// ---- Dual arithmetic ----------------------------------------------------------------------------
FLEXATTN_HD inline Dual operator+(Dual a, Dual b) { return {a.v + b.v, a.d + b.d}; }
FLEXATTN_HD inline Dual operator-(Dual a, Dual b) { return {a.v - b.v, a.d - b.d}; }
FLEXATTN_HD inline Dual operator*(Dual a, Dual b) {
  return {a.v * b.v, math_detail::chain(a.d, b.v) + math_detail::chain(b.d, a.v)};
}
FLEXATTN_HD inline Dual operator/(Dual a, Dual b) {
  const float q = a.v / b.v;
  return {q, math_detail::chain(a.d, 1.0f / b.v) - math_detail::chain(b.d, q / b.v)};
}
FLEXATTN_HD inline Dual operator-(Dual a) { return {-a.v, -a.d}; }
FLEXATTN_HD inline Dual operator+(Dual a) { return a; }

// Mixed with plain numbers (float, int, double): the number is a constant.
#define FLEXATTN_DUAL_SCALAR_OPS(S)                                                               \
  FLEXATTN_HD inline Dual operator+(Dual a, S b) { return {a.v + float(b), a.d}; }                \
  FLEXATTN_HD inline Dual operator+(S a, Dual b) { return {float(a) + b.v, b.d}; }                \
  FLEXATTN_HD inline Dual operator-(Dual a, S b) { return {a.v - float(b), a.d}; }                \
  FLEXATTN_HD inline Dual operator-(S a, Dual b) { return {float(a) - b.v, -b.d}; }               \
  FLEXATTN_HD inline Dual operator*(Dual a, S b) {                                                \
    return {a.v * float(b), math_detail::chain(a.d, float(b))};                                   \
  }                                                                                               \
  FLEXATTN_HD inline Dual operator*(S a, Dual b) {                                                \
    return {float(a) * b.v, math_detail::chain(b.d, float(a))};                                   \
  }                                                                                               \
  FLEXATTN_HD inline Dual operator/(Dual a, S b) {                                                \
    return {a.v / float(b), math_detail::chain(a.d, 1.0f / float(b))};                            \
  }                                                                                               \
  FLEXATTN_HD inline Dual operator/(S a, Dual b) {                                                \
    const float q = float(a) / b.v;                                                               \
    return {q, -math_detail::chain(b.d, q / b.v)};                                                \
  }                                                                                               \
  FLEXATTN_HD inline bool operator<(Dual a, S b) { return a.v < float(b); }                       \
  FLEXATTN_HD inline bool operator>(Dual a, S b) { return a.v > float(b); }                       \
  FLEXATTN_HD inline bool operator<=(Dual a, S b) { return a.v <= float(b); }                     \
  FLEXATTN_HD inline bool operator>=(Dual a, S b) { return a.v >= float(b); }                     \
  FLEXATTN_HD inline bool operator<(S a, Dual b) { return float(a) < b.v; }                       \
  FLEXATTN_HD inline bool operator>(S a, Dual b) { return float(a) > b.v; }
FLEXATTN_DUAL_SCALAR_OPS(float)
FLEXATTN_DUAL_SCALAR_OPS(double)
FLEXATTN_DUAL_SCALAR_OPS(int)
#undef FLEXATTN_DUAL_SCALAR_OPS

FLEXATTN_HD inline Dual& operator+=(Dual& a, Dual b) { return a = a + b; }
FLEXATTN_HD inline Dual& operator-=(Dual& a, Dual b) { return a = a - b; }
FLEXATTN_HD inline Dual& operator*=(Dual& a, Dual b) { return a = a * b; }
FLEXATTN_HD inline Dual& operator/=(Dual& a, Dual b) { return a = a / b; }
FLEXATTN_HD inline bool operator<(Dual a, Dual b) { return a.v < b.v; }
FLEXATTN_HD inline bool operator>(Dual a, Dual b) { return a.v > b.v; }
FLEXATTN_HD inline bool operator<=(Dual a, Dual b) { return a.v <= b.v; }
FLEXATTN_HD inline bool operator>=(Dual a, Dual b) { return a.v >= b.v; }

// ---- Dual functions (chain rule; edge conventions at the top of the file) -----------------------
FLEXATTN_HD inline Dual exp(Dual a) {
  const float e = exp(a.v);
  return {e, math_detail::chain(a.d, e)};
}
FLEXATTN_HD inline Dual exp2(Dual a) {
  const float e = exp2(a.v);
  return {e, math_detail::chain(a.d, e * 0.69314718055994531f)};
}
FLEXATTN_HD inline Dual log(Dual a) {
  return {log(a.v), math_detail::chain(a.d, math_detail::log_slope(a.v))};
}
FLEXATTN_HD inline Dual log2(Dual a) {
  return {log2(a.v), math_detail::chain(a.d, math_detail::log_slope(a.v) * 1.4426950408889634f)};
}
FLEXATTN_HD inline Dual tanh(Dual a) {
  const float t = tanh(a.v);
  return {t, math_detail::chain(a.d, 1.0f - t * t)};
}
FLEXATTN_HD inline Dual fast_tanh(Dual a) {
  const float t = fast_tanh(a.v);
  return {t, math_detail::chain(a.d, 1.0f - t * t)};
}
FLEXATTN_HD inline Dual sqrt(Dual a) {
  const float r = sqrt(a.v);
  // 0.5 / r is -inf at -0 (sqrt(-0) = -0): the derivative at the edge is +inf either way.
  return {r, math_detail::chain(a.d, a.v == 0.0f ? math_detail::inf() : 0.5f / r)};
}
FLEXATTN_HD inline Dual sin(Dual a) { return {sin(a.v), math_detail::chain(a.d, cos(a.v))}; }
FLEXATTN_HD inline Dual cos(Dual a) { return {cos(a.v), -math_detail::chain(a.d, sin(a.v))}; }
FLEXATTN_HD inline Dual abs(Dual a) {
  const float sign = a.v > 0.0f ? 1.0f : (a.v < 0.0f ? -1.0f : (a.v == 0.0f ? 0.0f : a.v));
  return {abs(a.v), math_detail::chain(a.d, sign)};
}
// The value is pow(x, y) itself, not pow(x, y - 1) * x (0 * inf = NaN at x = 0 for y < 1, and at
// (0, 0)); y * pow(x, y - 1) is the right slope everywhere except y = 0 (0 * pow(0, -1) = NaN).
FLEXATTN_HD inline Dual pow(Dual a, float y) {
  const float slope = y == 0.0f ? 0.0f : y * pow(a.v, y - 1.0f);
  return {pow(a.v, y), math_detail::chain(a.d, slope)};
}
FLEXATTN_HD inline Dual sigmoid(Dual a) {
  const float s = sigmoid(a.v);
  return {s, math_detail::chain(a.d, s * (1.0f - s))};
}
FLEXATTN_HD inline Dual max(Dual a, Dual b) { return (a.v >= b.v || a.v != a.v) ? a : b; }
FLEXATTN_HD inline Dual min(Dual a, Dual b) { return (a.v <= b.v || a.v != a.v) ? a : b; }
FLEXATTN_HD inline Dual max(Dual a, float b) {
  return (a.v >= b || a.v != a.v) ? a : Dual{b, 0.0f};
}
FLEXATTN_HD inline Dual min(Dual a, float b) {
  return (a.v <= b || a.v != a.v) ? a : Dual{b, 0.0f};
}
FLEXATTN_HD inline Dual max(float a, Dual b) { return max(Dual{a, 0.0f}, b); }
FLEXATTN_HD inline Dual min(float a, Dual b) { return min(Dual{a, 0.0f}, b); }
FLEXATTN_HD inline Dual where(bool c, Dual a, Dual b) { return c ? a : b; }
FLEXATTN_HD inline Dual where(bool c, Dual a, float b) { return c ? a : Dual{b, 0.0f}; }
FLEXATTN_HD inline Dual where(bool c, float a, Dual b) { return c ? Dual{a, 0.0f} : b; }

// Value of a float or a Dual, for code that must branch on it.
FLEXATTN_HD inline float value_of(float x) { return x; }
FLEXATTN_HD inline float value_of(Dual x) { return x.v; }

}  // namespace flexattn
