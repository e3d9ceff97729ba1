// Helpers around the float64 oracle: fresh random inputs, rounding to a storage dtype, error
// metrics. Used by the tests and the CLI's --check.
//
// The rounding here is written independently of the library's own conversions (src/tensor.cpp)
// so the tests can check one against the other. Inputs are rounded to the dtype FIRST and the
// same rounded values are handed to the library and to the reference, so the comparison measures
// the kernel's error only, not the input quantisation.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <flexattn/tensor.h>

namespace flexattn::reference {

// A seed from std::random_device: every run sees new inputs. Print it on failure.
inline uint64_t fresh_seed() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ uint64_t(rd());
}

// n values ~ N(0, stddev^2). Never zeros: tests must not pass on inputs that hide bugs.
inline std::vector<float> random_normal(int64_t n, std::mt19937_64& rng, float stddev = 1.0f) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& e : x) e = dist(rng);
  return x;
}

// Round-to-nearest-even of x onto a binary format with `mant` stored mantissa bits, smallest
// normal exponent `emin` and largest finite value `maxv`; subnormals keep the quantum 2^(emin -
// mant). Done in double, where every step below is exact (power-of-two scaling, nearbyint of a
// value < 2^53), under the default rounding mode (nearest-even).
inline float round_binary(float x, int mant, int emin, double maxv) {
  if (!std::isfinite(x) || x == 0.0f) return x;
  const double ax = std::fabs(double(x));
  int e;
  std::frexp(ax, &e);  // ax = m * 2^e, m in [0.5, 1): the normalised exponent is e - 1
  const int exp = std::max(e - 1, emin);
  const double quantum = std::ldexp(1.0, exp - mant);
  const double r = std::nearbyint(ax / quantum) * quantum;
  // Rounding past the largest finite value (ties included: they go to the even 2^(emax+1))
  // overflows to infinity, as IEEE round-to-nearest does.
  const double mag = r > maxv ? std::numeric_limits<double>::infinity() : r;
  return float(x < 0 ? -mag : mag);
}

inline float round_to(DType dtype, float x) {
  switch (dtype) {
    case DType::f32:
      return x;
    case DType::f16:
      return round_binary(x, 10, -14, 65504.0);  // 0x1.ffcp15
    case DType::bf16:
      return round_binary(x, 7, -126, std::ldexp(255.0, 120));  // 0x1.fep127
    case DType::i32:  // not a float format: index tensors are never rounded
      break;
  }
  return x;
}

inline void round_to(DType dtype, std::vector<float>& xs) {
  for (float& x : xs) x = round_to(dtype, x);
}

inline std::vector<double> to_double(const std::vector<float>& x) {
  return std::vector<double>(x.begin(), x.end());
}

// Unit roundoff of the dtype (half an ulp at 1).
inline double unit_roundoff(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return std::ldexp(1.0, -24);
    case DType::f16:
      return std::ldexp(1.0, -11);
    case DType::bf16:
      return std::ldexp(1.0, -8);
    case DType::i32:
      break;
  }
  return 0.0;
}

// Largest |got - want|. Infinite when an element of `got` is NaN or when the two disagree on an
// infinity (the -inf lse of a fully masked row must be -inf exactly, and NaN is never right).
inline double max_abs_error(const float* got, const double* want, int64_t n) {
  double worst = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double g = got[i], w = want[i];
    if (std::isnan(g) || std::isnan(w)) return std::numeric_limits<double>::infinity();
    if (std::isinf(g) || std::isinf(w)) {
      if (g != w) return std::numeric_limits<double>::infinity();
      continue;
    }
    worst = std::max(worst, std::fabs(g - w));
  }
  return worst;
}
inline double max_abs_error(const std::vector<float>& got, const std::vector<double>& want) {
  return got.size() == want.size() ? max_abs_error(got.data(), want.data(), int64_t(got.size()))
                                   : std::numeric_limits<double>::infinity();
}

// Largest finite |x|.
inline double max_abs(const std::vector<double>& x) {
  double m = 0.0;
  for (double e : x)
    if (std::isfinite(e)) m = std::max(m, std::fabs(e));
  return m;
}

}  // namespace flexattn::reference
