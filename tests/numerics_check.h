// The numerics checks of issue 8 (items 7-10), shared by the CPU suite (tests/test_numerics.cpp)
// and the GPU one (tests/gpu/test_gpu_numerics.cpp): inputs with garbage in chosen keys, a run of
// the library on either device with poisoned outputs, and a comparison with the float64 reference
// that tells NaN / inf / finite apart (the contract is at the top of test_numerics.cpp).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "attn_check.h"

namespace flexattn::testing {

// ---- running the library ------------------------------------------------------------------------
struct Inputs {
  std::vector<float> q, k, v, dout;
};

Inputs random_inputs(const Shape& sh, DType dt, std::mt19937_64& rng, float qk_scale = 1.0f) {
  Inputs in{random_input(sh.q_numel(), DType::f32, rng), random_input(sh.k_numel(), DType::f32, rng),
            random_input(sh.v_numel(), dt, rng), random_input(sh.out_numel(), dt, rng)};
  for (float& x : in.q) x = reference::round_to(dt, x * qk_scale);
  for (float& x : in.k) x = reference::round_to(dt, x * qk_scale);
  return in;
}

struct Got {
  std::vector<float> out, lse, dq, dk, dv;
};

// Forward (and backward) through the *_into API on `device`, outputs poisoned with NaN.
template <class S, class M>
Got run_library(const Problem& p, const Inputs& in, const S& score_mod, const M& mask_mod,
                bool backward, Device device) {
  const CaseOperands c =
      CaseOperands::make(p, in.q, in.k, in.v, backward ? &in.dout : nullptr, device);
  const auto mask = case_block_mask(p, mask_mod, device);
  c.forward(score_mod, mask, case_options(p));
  Got g{c.out.read(), c.lse.read(), {}, {}, {}};
  EXPECT_EQ(c.out.clobbered_padding() + c.lse.clobbered_padding(), 0) << "wrote outside the views";
  if (!backward) return g;
  c.backward(score_mod, mask, case_options(p));
  g.dq = c.dq.read();
  g.dk = c.dk.read();
  g.dv = c.dv.read();
  EXPECT_EQ(c.dq.clobbered_padding() + c.dk.clobbered_padding() + c.dv.clobbered_padding(), 0);
  return g;
}

// ---- comparing with NaN / inf in the answer -----------------------------------------------------
// Where the reference is NaN the library must be NaN, where it is +-inf the same infinity, where
// it is finite finite and within kFactor * (naive error on clean inputs) + atol - except at the
// edge of the float range (below).
// atol_floor raises the absolute tolerance (see check_on).
void expect_matches(const std::string& name, const std::vector<float>& got,
                    const std::vector<double>& ref, const std::vector<float>& naive_clean,
                    const std::vector<double>& ref_clean, DType dt, double atol_floor = 0.0) {
  ASSERT_EQ(got.size(), ref.size()) << name;
  int64_t wrong_class = 0;
  size_t first = got.size(), worst_at = 0;
  double err = 0.0, naive_err = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double r = ref[i], g = got[i];
    // A finite answer past half the float range (|r| >= 2^127, e.g. a gradient of scale * O(1)
    // at scale = 3e38) is the float range's edge: an f32 kernel's partial sums may overflow there
    // (to inf, or inf - inf = NaN), so any value is accepted for it.
    if (std::isfinite(r) && std::fabs(r) >= 0x1p127) continue;
    const bool ok = std::isnan(r) ? std::isnan(g) : std::isinf(r) ? g == r : std::isfinite(g);
    if (!ok) {
      ++wrong_class;
      if (first == got.size()) first = i;
      continue;
    }
    if (std::isfinite(r) && std::fabs(g - r) > err) {
      err = std::fabs(g - r);
      worst_at = i;
    }
    if (std::isfinite(r) && std::isfinite(ref_clean[i]) && std::isfinite(naive_clean[i]))
      naive_err = std::max(naive_err, std::fabs(double(naive_clean[i]) - ref_clean[i]));
  }
  std::ostringstream o;
  if (first < got.size()) o << "first at " << first << ": got " << got[first] << ", expected " << ref[first];
  EXPECT_EQ(wrong_class, 0) << name << ": elements whose NaN / inf / finite class differs; " << o.str();
  const double atol = std::max(atol_for(dt, ref), atol_floor);
  EXPECT_LE(err, kFactor * naive_err + atol)
      << name << ": max error " << err << " at " << worst_at << " vs naive " << naive_err
      << " (atol " << atol << ")";
}

struct Counts {
  int64_t nan_rows = 0, masked_rows = 0, finite_rows = 0;
};

// Runs `bad` through the library on `device` and through the reference, and checks everything;
// `clean` (bad with the garbage replaced by finite values, or bad itself) feeds the naive error of
// the tolerance. mask_mod is the library's, host_mask the same mask on the host (they differ when
// the mask reads device memory, as a document mask on the GPU does). dqk_atol: an absolute
// tolerance floor for dq and dk, for inputs so large that the naive oracle's error (its dP and
// delta are the same sums in the same order, so a one-hot row's dS is exactly 0 there) says
// nothing about a kernel whose two sums round differently.
template <class S, class M, class HM>
Counts check_on(Device device, const Problem& p, const Inputs& bad, const Inputs& clean,
                const S& score_mod, const M& mask_mod, const HM& host_mask, bool backward,
                double dqk_atol = 0.0) {
  SCOPED_TRACE(describe(p));
  const Shape& sh = p.shape;
  const float scale = p.scale != 0.0f ? p.scale : 1.0f / std::sqrt(float(sh.D));
  const Got got = run_library(p, bad, score_mod, mask_mod, backward, device);
  using reference::to_double;
  const auto ref = reference::forward(sh, to_double(bad.q), to_double(bad.k), to_double(bad.v),
                                      double(scale), score_mod, host_mask);
  const auto ref_c = reference::forward(sh, to_double(clean.q), to_double(clean.k),
                                        to_double(clean.v), double(scale), score_mod, host_mask);
  const LowpForward naive =
      naive_forward_lowp(sh, p.dtype, scale, clean.q, clean.k, clean.v, score_mod, host_mask);
  expect_matches("out", got.out, ref.out, naive.out, ref_c.out, p.dtype);
  expect_matches("lse", got.lse, ref.lse, naive.lse, ref_c.lse, DType::f32);
  expect_masked_rows_exact(sh, got.out, got.lse, ref.lse);
  Counts c;
  for (double l : ref.lse) {
    c.nan_rows += std::isnan(l);
    c.masked_rows += l == -kInf;
    c.finite_rows += std::isfinite(l);
  }
  if (!backward) return c;
  const auto g = reference::backward(sh, to_double(bad.q), to_double(bad.k), to_double(bad.v),
                                     to_double(bad.dout), double(scale), score_mod, host_mask);
  const auto g_c = reference::backward(sh, to_double(clean.q), to_double(clean.k),
                                       to_double(clean.v), to_double(clean.dout), double(scale),
                                       score_mod, host_mask);
  const LowpGrads naive_g = naive_backward_lowp(sh, p.dtype, scale, clean.q, clean.k, clean.v,
                                                clean.dout, naive, score_mod, host_mask);
  expect_matches("dq", got.dq, g.dq, naive_g.dq, g_c.dq, p.dtype, dqk_atol);
  expect_matches("dk", got.dk, g.dk, naive_g.dk, g_c.dk, p.dtype, dqk_atol);
  expect_matches("dv", got.dv, g.dv, naive_g.dv, g_c.dv, p.dtype);
  int64_t nonzero = 0;  // fully masked rows: dq exactly 0
  for (int64_t r = 0; r < sh.lse_numel(); ++r)
    if (ref.lse[size_t(r)] == -kInf)
      for (int64_t e = 0; e < sh.D; ++e) nonzero += got.dq[size_t(r * sh.D + e)] != 0.0f;
  EXPECT_EQ(nonzero, 0) << "dq of fully masked rows must be exactly 0";
  return c;
}

template <class S, class M>
Counts check(const Problem& p, const Inputs& bad, const Inputs& clean, const S& score_mod,
             const M& mask_mod, bool backward) {
  return check_on(Device::cpu, p, bad, clean, score_mod, mask_mod, mask_mod, backward);
}


// k / v copies with one key's row replaced by `value` (NaN or +-inf), in kv head `hk`.
Inputs with_bad_key(const Inputs& in, const Shape& sh, int hk, int key, float value, bool in_k,
                    bool in_v) {
  Inputs bad = in;
  for (int64_t b = 0; b < sh.B; ++b) {
    const int64_t row = (b * sh.Hkv + hk) * sh.Lkv + key;
    if (in_k) bad.k[size_t(row * sh.D + 1)] = value;
    if (in_v)
      for (int64_t e = 0; e < sh.Dv; e += 3) bad.v[size_t(row * sh.Dv + e)] = value;
  }
  return bad;
}


}  // namespace flexattn::testing
