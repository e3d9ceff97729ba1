// The float64 oracle: naive attention that takes the SAME score_mod / mask_mod functors as the
// library, computed in double with no tiling, no online softmax and no block mask. Every test and
// the CLI's --check compare against it. Keep it small and obviously right: it is the definition.
//
//   x = scale * q.k ; s = score_mod(x, b, h, q_idx, kv_idx) ; s = -inf where mask_mod is false
//   p = softmax over kv ; out = p.v ; lse = log(sum_kv exp(s))   (natural log)
//   A row with every key masked: out = 0, lse = -inf, zero gradients.
//
// Non-finite scores (the library's contract, README): scores are float32 quantities, so a score
// beyond the float range (before or after score_mod) is +-inf here too. A score of -inf is the
// same as a masked one: that (q, kv) pair contributes nothing, whatever q, k, v, dout hold. A row
// that keeps any NaN or +inf score is a NaN row: out NaN, lse NaN, dq NaN, and NaN in dk / dv of
// every key it keeps (score != -inf). Only rows whose kept scores are all -inf are fully masked.
//
// Layout: contiguous row-major q [B,Hq,Lq,D], k [B,Hkv,Lkv,D], v [B,Hkv,Lkv,Dv], out/dout
// [B,Hq,Lq,Dv], lse [B,Hq,Lq]. Query head h reads kv head h / (Hq / Hkv) (GQA; Hq == Hkv is the
// plain case).
//
// score_mod is called with double (math.h has double overloads of exp/tanh/...), so a generic
// functor is evaluated in float64 here. Its derivative d(score_mod)/dx for the backward pass is a
// central difference in double, NOT the library's Dual: the oracle must not share the mechanism
// it checks. Step h = 1e-6 * max(1, |x|): truncation ~h^2 |f'''| and rounding ~1e-16 |f| / h,
// both near 1e-10 for scores of order 1. Hazard: a score_mod with a kink (max, where, abs) exactly
// at x gets the mean of the one-sided slopes; random inputs hit a kink with probability ~0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace flexattn::reference {

struct Shape {
  int64_t B = 1, Hq = 1, Hkv = 1, Lq = 1, Lkv = 1, D = 1, Dv = 1;

  int64_t q_numel() const { return B * Hq * Lq * D; }
  int64_t k_numel() const { return B * Hkv * Lkv * D; }
  int64_t v_numel() const { return B * Hkv * Lkv * Dv; }
  int64_t out_numel() const { return B * Hq * Lq * Dv; }
  int64_t lse_numel() const { return B * Hq * Lq; }
};

struct ForwardResult {
  std::vector<double> out;  // [B,Hq,Lq,Dv]
  std::vector<double> lse;  // [B,Hq,Lq]
};

struct Grads {
  std::vector<double> dq, dk, dv;  // shapes of q, k, v
};

// The scale the library uses when AttentionOptions::scale is 0.
inline double default_scale(int64_t head_dim) { return 1.0 / std::sqrt(double(head_dim)); }

namespace detail {

inline void check_shape(const Shape& s) {
  if (s.B < 1 || s.Hq < 1 || s.Hkv < 1 || s.Lq < 1 || s.Lkv < 1 || s.D < 1 || s.Dv < 1 ||
      s.Hq % s.Hkv != 0) {
    throw std::invalid_argument("reference: bad shape (all sizes >= 1, Hq a multiple of Hkv)");
  }
}

inline double dot(const double* a, const double* b, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// x, or +-inf where x is finite but overflows float32 (scores are float32 quantities).
inline double float_range(double x) {
  return std::isfinite(x) && std::isinf(static_cast<float>(x)) ? double(static_cast<float>(x)) : x;
}

// A row that keeps a NaN or +inf score (s[j] != -inf where kept): out, lse and gradients NaN.
inline bool nan_row(const std::vector<double>& s) {
  for (double e : s)
    if (std::isnan(e) || e == std::numeric_limits<double>::infinity()) return true;
  return false;
}

// Scores of one query row: x[j] = scale * q.k_j (pre-score_mod), s[j] = score_mod(x[j]) or -inf
// where masked. Returns the row max (-inf when every key is masked).
template <class ScoreMod, class MaskMod>
double row_scores(const Shape& sh, const double* q, const double* k, double scale,
                  const ScoreMod& score_mod, const MaskMod& mask_mod, int64_t b, int64_t h,
                  int64_t i, std::vector<double>& x, std::vector<double>& s) {
  const int64_t hk = h / (sh.Hq / sh.Hkv);
  const double* qi = q + ((b * sh.Hq + h) * sh.Lq + i) * sh.D;
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < sh.Lkv; ++j) {
    const double* kj = k + ((b * sh.Hkv + hk) * sh.Lkv + j) * sh.D;
    x[j] = float_range(scale * dot(qi, kj, sh.D));
    if (mask_mod(int(b), int(h), int(i), int(j))) {
      s[j] = float_range(double(score_mod(x[j], int(b), int(h), int(i), int(j))));
      m = std::max(m, s[j]);  // ignores NaN: nan_row() looks for those
    } else {
      s[j] = -std::numeric_limits<double>::infinity();
    }
  }
  return m;
}

}  // namespace detail

template <class ScoreMod, class MaskMod>
ForwardResult forward(const Shape& sh, const std::vector<double>& q, const std::vector<double>& k,
                      const std::vector<double>& v, double scale, const ScoreMod& score_mod,
                      const MaskMod& mask_mod) {
  detail::check_shape(sh);
  ForwardResult r{std::vector<double>(sh.out_numel(), 0.0), std::vector<double>(sh.lse_numel())};
  std::vector<double> x(sh.Lkv), s(sh.Lkv);
  for (int64_t b = 0; b < sh.B; ++b) {
    for (int64_t h = 0; h < sh.Hq; ++h) {
      const int64_t hk = h / (sh.Hq / sh.Hkv);
      for (int64_t i = 0; i < sh.Lq; ++i) {
        const int64_t row = (b * sh.Hq + h) * sh.Lq + i;
        const double m =
            detail::row_scores(sh, q.data(), k.data(), scale, score_mod, mask_mod, b, h, i, x, s);
        double* o = r.out.data() + row * sh.Dv;
        if (detail::nan_row(s)) {
          r.lse[row] = std::numeric_limits<double>::quiet_NaN();
          std::fill(o, o + sh.Dv, std::numeric_limits<double>::quiet_NaN());
          continue;
        }
        if (m == -std::numeric_limits<double>::infinity()) {  // every key masked
          r.lse[row] = m;
          continue;  // out row stays 0
        }
        double sum = 0.0;
        for (int64_t j = 0; j < sh.Lkv; ++j) sum += std::exp(s[j] - m);  // exp(-inf) = 0
        const double lse = m + std::log(sum);
        r.lse[row] = lse;
        for (int64_t j = 0; j < sh.Lkv; ++j) {
          if (s[j] == -std::numeric_limits<double>::infinity()) continue;  // adds nothing
          const double p = std::exp(s[j] - lse);
          const double* vj = v.data() + ((b * sh.Hkv + hk) * sh.Lkv + j) * sh.Dv;
          for (int64_t e = 0; e < sh.Dv; ++e) o[e] += p * vj[e];
        }
      }
    }
  }
  return r;
}

// d score_mod(x, ...) / dx by central difference in double (see the file comment).
template <class ScoreMod>
double score_mod_derivative(const ScoreMod& f, double x, int b, int h, int i, int j) {
  static_assert(std::is_same_v<decltype(f(0.0, 0, 0, 0, 0)), double>,
                "reference: the backward needs a score_mod generic in T (called with double)");
  const double step = 1e-6 * std::max(1.0, std::abs(x));
  return (f(x + step, b, h, i, j) - f(x - step, b, h, i, j)) / (2.0 * step);
}

// Gradients of sum(out * dout) with respect to q, k, v. Recomputes the forward in double.
template <class ScoreMod, class MaskMod>
Grads backward(const Shape& sh, const std::vector<double>& q, const std::vector<double>& k,
               const std::vector<double>& v, const std::vector<double>& dout, double scale,
               const ScoreMod& score_mod, const MaskMod& mask_mod) {
  detail::check_shape(sh);
  Grads g{std::vector<double>(sh.q_numel(), 0.0), std::vector<double>(sh.k_numel(), 0.0),
          std::vector<double>(sh.v_numel(), 0.0)};
  std::vector<double> x(sh.Lkv), s(sh.Lkv), p(sh.Lkv), dp(sh.Lkv);
  for (int64_t b = 0; b < sh.B; ++b) {
    for (int64_t h = 0; h < sh.Hq; ++h) {
      const int64_t hk = h / (sh.Hq / sh.Hkv);
      for (int64_t i = 0; i < sh.Lq; ++i) {
        const double m =
            detail::row_scores(sh, q.data(), k.data(), scale, score_mod, mask_mod, b, h, i, x, s);
        if (detail::nan_row(s)) {  // NaN into dq of the row and dk / dv of every key it keeps
          const double nan = std::numeric_limits<double>::quiet_NaN();
          const int64_t row = (b * sh.Hq + h) * sh.Lq + i;
          std::fill(g.dq.begin() + row * sh.D, g.dq.begin() + (row + 1) * sh.D, nan);
          for (int64_t j = 0; j < sh.Lkv; ++j) {
            if (s[j] == -std::numeric_limits<double>::infinity()) continue;
            const int64_t kv_off = (b * sh.Hkv + hk) * sh.Lkv + j;
            std::fill(g.dk.begin() + kv_off * sh.D, g.dk.begin() + (kv_off + 1) * sh.D, nan);
            std::fill(g.dv.begin() + kv_off * sh.Dv, g.dv.begin() + (kv_off + 1) * sh.Dv, nan);
          }
          continue;
        }
        if (m == -std::numeric_limits<double>::infinity()) continue;  // zero gradients
        double sum = 0.0;
        for (int64_t j = 0; j < sh.Lkv; ++j) sum += std::exp(s[j] - m);
        const double lse = m + std::log(sum);

        const int64_t row = (b * sh.Hq + h) * sh.Lq + i;
        const double* qi = q.data() + row * sh.D;
        const double* doi = dout.data() + row * sh.Dv;
        // dL/dp_j = dout_i . v_j ; softmax backward: ds_j = p_j (dp_j - sum_l p_l dp_l)
        double p_dot_dp = 0.0;
        for (int64_t j = 0; j < sh.Lkv; ++j) {
          p[j] = 0.0;
          dp[j] = 0.0;
          if (s[j] == -std::numeric_limits<double>::infinity()) continue;  // adds nothing
          p[j] = std::exp(s[j] - lse);
          const double* vj = v.data() + ((b * sh.Hkv + hk) * sh.Lkv + j) * sh.Dv;
          dp[j] = detail::dot(doi, vj, sh.Dv);
          p_dot_dp += p[j] * dp[j];
        }
        double* dqi = g.dq.data() + row * sh.D;
        for (int64_t j = 0; j < sh.Lkv; ++j) {
          if (s[j] == -std::numeric_limits<double>::infinity()) continue;  // masked: no gradient
          const int64_t kv_off = (b * sh.Hkv + hk) * sh.Lkv + j;
          double* dvj = g.dv.data() + kv_off * sh.Dv;
          for (int64_t e = 0; e < sh.Dv; ++e) dvj[e] += p[j] * doi[e];
          const double ds = p[j] * (dp[j] - p_dot_dp);
          // chain rule through score_mod and the scale: dL/dx = ds * f'(x), x = scale * q.k
          // (a zero ds gives zero whatever the derivative: math.h's chain-rule convention)
          const double dx =
              ds == 0.0 ? 0.0
                        : ds * score_mod_derivative(score_mod, x[j], int(b), int(h), int(i), int(j));
          const double* kj = k.data() + kv_off * sh.D;
          double* dkj = g.dk.data() + kv_off * sh.D;
          for (int64_t e = 0; e < sh.D; ++e) {
            dqi[e] += dx * scale * kj[e];
            dkj[e] += dx * scale * qi[e];
          }
        }
      }
    }
  }
  return g;
}

}  // namespace flexattn::reference
