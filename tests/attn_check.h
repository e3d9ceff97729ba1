// Shared machinery of the attention tests: one call runs a configuration through the library on
// fresh random inputs with NaN-poisoned outputs, runs the float64 reference and the naive
// low-precision algorithm on the same (dtype-rounded) inputs, and applies FlashAttention's rule:
//
//   max|ours - ref64| <= kFactor * max|naive_lowp - ref64| + atol
//
// naive_lowp is what a straightforward low-precision kernel computes: f32 accumulation, inputs and
// outputs in the dtype, and P (and dS in the backward) rounded to the dtype before the matmuls
// that consume them. For f32 it is plain naive f32 attention.
//
// The naive backward is given the out and lse the tested backward was given (the library's own
// forward, itself checked against the naive forward), not the naive forward's. Why: the backward
// consumes out (delta = rowsum(dO * O)) and lse (P = exp(s - lse)), and the rounding of those two
// is an independent random sample per forward implementation. It dominates the gradient error
// wherever dS = P (dP - delta) cancels (peaked rows, 1-2 key rows) or |s| is large (f32 with
// |s| ~ 25-50: an s error of a few ulp(50) is a relative P error ~1e-5). Measured (Monte Carlo on
// the two fuzz reproducers' shapes, masks and score_mods, notes/issue8-threads-fuzz.md): our dq
// error / naive dq error has median 1.00 (f32) and 0.84 (bf16), yet exceeds kFactor in 1/300 and
// 77/3000 draws when each side uses its own forward; with the naive fed our out/lse the ratio
// never exceeds 1.0 in 3300 draws. The baseline must see the same inputs as the kernel it judges.
//
// Every check draws a new seed (std::random_device) and prints it on failure through
// SCOPED_TRACE; FLEXATTN_TEST_SEED=<n> in the environment replays one.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <flexattn/flexattn.h>

#include "reference/helpers.h"
#include "reference/reference.h"

namespace flexattn::testing {

using reference::Shape;
inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
inline constexpr float kInf = std::numeric_limits<float>::infinity();
inline constexpr double kFactor = 2.0;

// One attention configuration.
struct Problem {
  Shape shape;
  DType dtype = DType::f32;
  float scale = 0.0f;  // AttentionOptions::scale (0: 1/sqrt(D))
  int block_q = 128, block_kv = 128;
  int64_t mask_B = 0, mask_H = 0;  // BlockMask batch / heads; 0 means the call's B / Hq
  bool strided = false;            // [B, L, H, D] storage with padding (see Operand)
};

// Base of the dtype-parameterised suites: a Problem of the given shape in the suite's dtype.
class DtypeSuite : public ::testing::TestWithParam<DType> {
 protected:
  Problem problem(Shape s) const {
    Problem p;
    p.shape = s;
    p.dtype = GetParam();
    return p;
  }
};

inline std::string describe(const Problem& p) {
  const Shape& s = p.shape;
  std::ostringstream o;
  o << "B=" << s.B << " Hq=" << s.Hq << " Hkv=" << s.Hkv << " Lq=" << s.Lq << " Lkv=" << s.Lkv
    << " D=" << s.D << " Dv=" << s.Dv << " dtype=" << to_string(p.dtype) << " scale=" << p.scale
    << " block=" << p.block_q << "x" << p.block_kv << " mask_BH=" << (p.mask_B ? p.mask_B : s.B)
    << "x" << (p.mask_H ? p.mask_H : s.Hq) << (p.strided ? " strided" : "");
  return o.str();
}

inline uint64_t test_seed() {
  if (const char* env = std::getenv("FLEXATTN_TEST_SEED")) return std::strtoull(env, nullptr, 0);
  return reference::fresh_seed();
}

// A generator for test data other than q/k/v (document layouts, random masks); the seed is
// printed with any failure in the calling scope.
#define FLEXATTN_SEEDED_RNG(name)                                \
  const uint64_t name##_seed = ::flexattn::testing::test_seed(); \
  SCOPED_TRACE(#name " seed=" + std::to_string(name##_seed));    \
  std::mt19937_64 name(name##_seed)

// Random N(0,1) values, rounded to the dtype so library and reference see identical inputs.
inline std::vector<float> random_input(int64_t n, DType dt, std::mt19937_64& rng) {
  std::vector<float> x = reference::random_normal(n, rng);
  reference::round_to(dt, x);
  return x;
}

// ---- operands -----------------------------------------------------------------------------------
// One tensor argument: storage owned by a Tensor, seen through a TensorView of logical shape
// [B, H, L, D] (rank 4) or [B, H, L] (rank 3). `strided` stores rank 4 as [B, L, H, D + 3] (the
// activations layout of a transformer) and rank 3 as [B, H, L + 5]; the padding holds NaN, which
// the kernels must never read (NaN would reach the outputs) nor overwrite (checked).
struct Operand {
  Tensor storage;
  TensorView view;

  // values: logical row-major contents, or nullptr for all-NaN (poisoned outputs); the storage
  // lives on `device`.
  static Operand make(const std::vector<int64_t>& shape, DType dt, bool strided,
                      const std::vector<float>* values, Device device = Device::cpu) {
    const int rank = int(shape.size());
    std::vector<int64_t> storage_shape = shape;
    if (strided && rank == 4) storage_shape = {shape[0], shape[2], shape[1], shape[3] + 3};
    if (strided && rank == 3) storage_shape = {shape[0], shape[1], shape[2] + 5};
    int64_t storage_numel = 1;
    for (int64_t d : storage_shape) storage_numel *= d;

    Operand o;
    o.view.dtype = dt;
    o.view.device = device;
    o.view.rank = rank;
    for (int i = 0; i < rank; ++i) o.view.shape[i] = shape[size_t(i)];
    if (strided && rank == 4) {
      const int64_t row = shape[3] + 3;  // padded D
      o.view.stride[0] = shape[2] * shape[1] * row;
      o.view.stride[1] = row;
      o.view.stride[2] = shape[1] * row;
      o.view.stride[3] = 1;
    } else {
      int64_t st = 1;
      for (int i = rank - 1; i >= 0; --i) {
        o.view.stride[i] = st;
        st *= storage_shape[size_t(i)];
      }
    }
    std::vector<float> host(size_t(storage_numel), kNaN);
    if (values) {
      for_each(o.view, [&](int64_t logical, int64_t off) {
        host[size_t(off)] = (*values)[size_t(logical)];
      });
    }
    o.storage = Tensor::from_host(host.data(), storage_shape, dt, device);
    o.view.data = o.storage.data();
    return o;
  }

  // Logical row-major contents.
  std::vector<float> read() const {
    const std::vector<float> host = storage.to_host();
    std::vector<float> r(size_t(view.numel()));
    for_each(view, [&](int64_t logical, int64_t off) { r[size_t(logical)] = host[size_t(off)]; });
    return r;
  }

  // Padding elements (outside the view) that are no longer NaN: a kernel wrote past the view.
  int64_t clobbered_padding() const {
    const std::vector<float> host = storage.to_host();
    std::vector<char> inside(host.size(), 0);
    for_each(view, [&](int64_t, int64_t off) { inside[size_t(off)] = 1; });
    int64_t n = 0;
    for (size_t i = 0; i < host.size(); ++i) n += !inside[i] && !std::isnan(host[i]);
    return n;
  }

  // Raw storage bytes, for bitwise comparisons.
  std::vector<unsigned char> bytes() const {
    const auto* p = static_cast<const unsigned char*>(storage.data());
    return std::vector<unsigned char>(p,
                                      p + storage.numel() * int64_t(dtype_size(storage.dtype())));
  }

  template <class F>
  static void for_each(const TensorView& v, F f) {
    int64_t logical = 0;
    const int64_t n3 = v.rank == 4 ? v.shape[3] : 1, s3 = v.rank == 4 ? v.stride[3] : 0;
    for (int64_t a = 0; a < v.shape[0]; ++a)
      for (int64_t b = 0; b < v.shape[1]; ++b)
        for (int64_t c = 0; c < v.shape[2]; ++c)
          for (int64_t d = 0; d < n3; ++d)
            f(logical++, a * v.stride[0] + b * v.stride[1] + c * v.stride[2] + d * s3);
  }
};

// ---- naive low-precision attention
// ---------------------------------------------------------------
struct LowpForward {
  std::vector<float> out, lse;
};
struct LowpGrads {
  std::vector<float> dq, dk, dv;
};

inline float dot_f32(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

template <class ScoreMod, class MaskMod>
LowpForward naive_forward_lowp(const Shape& sh, DType dt, float scale, const std::vector<float>& q,
                               const std::vector<float>& k, const std::vector<float>& v,
                               const ScoreMod& score_mod, const MaskMod& mask_mod) {
  LowpForward r{std::vector<float>(size_t(sh.out_numel()), 0.0f),
                std::vector<float>(size_t(sh.lse_numel()))};
  std::vector<float> s(size_t(sh.Lkv)), acc(size_t(sh.Dv));
  for (int64_t b = 0; b < sh.B; ++b)
    for (int64_t h = 0; h < sh.Hq; ++h)
      for (int64_t i = 0; i < sh.Lq; ++i) {
        const int64_t hk = h / (sh.Hq / sh.Hkv), row = (b * sh.Hq + h) * sh.Lq + i;
        float m = -kInf;
        for (int64_t j = 0; j < sh.Lkv; ++j) {
          const int64_t kv = (b * sh.Hkv + hk) * sh.Lkv + j;
          if (!mask_mod(int(b), int(h), int(i), int(j))) {
            s[size_t(j)] = -kInf;
            continue;
          }
          const float x = scale * dot_f32(&q[size_t(row * sh.D)], &k[size_t(kv * sh.D)], sh.D);
          s[size_t(j)] = float(score_mod(x, int(b), int(h), int(i), int(j)));
          m = std::max(m, s[size_t(j)]);
        }
        if (m == -kInf) {
          r.lse[size_t(row)] = -kInf;
          continue;
        }
        float l = 0.0f;
        for (float& e : s) l += (e = std::exp(e - m));
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < sh.Lkv; ++j) {
          const float p = reference::round_to(dt, s[size_t(j)] / l);  // P in the dtype
          const float* vj = &v[size_t(((b * sh.Hkv + hk) * sh.Lkv + j) * sh.Dv)];
          for (int64_t e = 0; e < sh.Dv; ++e) acc[size_t(e)] += p * vj[e];
        }
        for (int64_t e = 0; e < sh.Dv; ++e)
          r.out[size_t(row * sh.Dv + e)] = reference::round_to(dt, acc[size_t(e)]);
        r.lse[size_t(row)] = m + std::log(l);
      }
  return r;
}

// Gradients as a low-precision kernel computes them: f32 math, the score_mod derivative through
// flexattn::Dual, P and dS rounded to the dtype before the matmuls, gradients stored in the dtype.
// `fwd` is the out / lse the tested backward was given (see the header comment): P is recomputed
// from that lse and delta from that out, as any backward must.
template <class ScoreMod, class MaskMod>
LowpGrads naive_backward_lowp(const Shape& sh, DType dt, float scale, const std::vector<float>& q,
                              const std::vector<float>& k, const std::vector<float>& v,
                              const std::vector<float>& dout, const LowpForward& fwd,
                              const ScoreMod& score_mod, const MaskMod& mask_mod) {
  LowpGrads g{std::vector<float>(q.size(), 0.0f), std::vector<float>(k.size(), 0.0f),
              std::vector<float>(v.size(), 0.0f)};
  for (int64_t b = 0; b < sh.B; ++b)
    for (int64_t h = 0; h < sh.Hq; ++h)
      for (int64_t i = 0; i < sh.Lq; ++i) {
        const int64_t hk = h / (sh.Hq / sh.Hkv), row = (b * sh.Hq + h) * sh.Lq + i;
        const float lse = fwd.lse[size_t(row)];
        if (lse == -kInf) continue;
        const float* doi = &dout[size_t(row * sh.Dv)];
        const float delta = dot_f32(doi, &fwd.out[size_t(row * sh.Dv)], sh.Dv);  // rowsum(dO * O)
        for (int64_t j = 0; j < sh.Lkv; ++j) {
          if (!mask_mod(int(b), int(h), int(i), int(j))) continue;
          const int64_t kv = (b * sh.Hkv + hk) * sh.Lkv + j;
          const float x = scale * dot_f32(&q[size_t(row * sh.D)], &k[size_t(kv * sh.D)], sh.D);
          const Dual y = score_mod(Dual{x, 1.0f}, int(b), int(h), int(i), int(j));
          const float p = std::exp(y.v - lse);
          const float p_lowp = reference::round_to(dt, p);
          const float* vj = &v[size_t(kv * sh.Dv)];
          for (int64_t e = 0; e < sh.Dv; ++e) g.dv[size_t(kv * sh.Dv + e)] += p_lowp * doi[e];
          const float dp = dot_f32(doi, vj, sh.Dv);
          const float ds = reference::round_to(dt, p * (dp - delta) * y.d);
          for (int64_t e = 0; e < sh.D; ++e) {
            g.dq[size_t(row * sh.D + e)] += ds * k[size_t(kv * sh.D + e)];
            g.dk[size_t(kv * sh.D + e)] += ds * q[size_t(row * sh.D + e)];
          }
        }
      }
  for (float& e : g.dq) e = reference::round_to(dt, e * scale);
  for (float& e : g.dk) e = reference::round_to(dt, e * scale);
  for (float& e : g.dv) e = reference::round_to(dt, e);
  return g;
}

// ---- comparisons --------------------------------------------------------------------------------
// atol: one ulp of the dtype at the reference's magnitude (the output is stored in the dtype,
// so even a perfect kernel is off by up to half of that), and 1e-5 (relative above 1) for f32,
// whose naive error can be exactly 0 while ours carries a few ulps from a vectorised exp and
// another summation order. Hazard that sets the f32 floor: with Lkv = 1, dS = p (dP - rowsum(dO
// * O)) cancels to exactly 0, so the reference dK is 0, yet any kernel whose p is 1 - ulp leaves
// ~u |dO.v| per row there (measured 2-4e-6 at Lq = 129). Typical f32 errors are ~1e-6; a key
// dropped among 128 changes the output by ~1e-2 and is caught.
inline double atol_for(DType dt, const std::vector<double>& ref) {
  const double mag = reference::max_abs(ref);
  return std::max(2.0 * reference::unit_roundoff(dt) * mag, 1e-5 * std::max(1.0, mag));
}

// Where the largest error is, for the failure message.
inline std::string worst_element(const std::vector<float>& got, const std::vector<double>& ref) {
  size_t at = 0;
  double worst = -1.0;
  for (size_t i = 0; i < got.size() && i < ref.size(); ++i) {
    const double e = std::isnan(got[i]) ? std::numeric_limits<double>::infinity()
                                        : std::fabs(double(got[i]) - ref[i]);
    if (e > worst || (std::isnan(e) && worst >= 0)) {
      worst = e;
      at = i;
    }
  }
  std::ostringstream o;
  o << "worst at flat index " << at << ": got " << got[at] << ", expected " << ref[at];
  return o.str();
}

inline void expect_close(const char* name, const std::vector<float>& got,
                         const std::vector<double>& ref, const std::vector<float>& naive,
                         DType dt) {
  const double err = reference::max_abs_error(got, ref);
  const double naive_err = reference::max_abs_error(naive, ref);
  const double atol = atol_for(dt, ref);
  EXPECT_LE(err, kFactor * naive_err + atol)
      << name << ": max error " << err << " vs naive low-precision " << naive_err << " (atol "
      << atol << "); " << worst_element(got, ref);
}

// Rows the reference finds fully masked must come out exactly: out 0, lse -inf.
inline int64_t expect_masked_rows_exact(const Shape& sh, const std::vector<float>& out,
                                        const std::vector<float>& lse,
                                        const std::vector<double>& ref_lse) {
  int64_t rows = 0, bad = 0;
  for (int64_t r = 0; r < sh.lse_numel(); ++r) {
    if (ref_lse[size_t(r)] != -std::numeric_limits<double>::infinity()) continue;
    ++rows;
    bool ok = lse[size_t(r)] == -kInf;
    for (int64_t e = 0; e < sh.Dv; ++e) ok = ok && out[size_t(r * sh.Dv + e)] == 0.0f;
    bad += !ok;
  }
  EXPECT_EQ(bad, 0) << bad << " of " << rows << " fully masked rows are not out = 0, lse = -inf";
  return rows;
}

// ---- one case's operands -------------------------------------------------------------------------
// Every operand of a case as the Problem lays it out, on `device`: q, k, v (and dout) from the given
// logical values, out and lse poisoned with NaN, and with a dout also dq, dk, dv poisoned.
struct CaseOperands {
  Operand q, k, v, dout, out, lse, dq, dk, dv;

  static CaseOperands make(const Problem& p, const std::vector<float>& q,
                           const std::vector<float>& k, const std::vector<float>& v,
                           const std::vector<float>* dout, Device device = Device::cpu) {
    const Shape& sh = p.shape;
    auto op = [&](const std::vector<int64_t>& shape, DType dt, const std::vector<float>* x) {
      return Operand::make(shape, dt, p.strided, x, device);
    };
    CaseOperands c;
    c.q = op({sh.B, sh.Hq, sh.Lq, sh.D}, p.dtype, &q);
    c.k = op({sh.B, sh.Hkv, sh.Lkv, sh.D}, p.dtype, &k);
    c.v = op({sh.B, sh.Hkv, sh.Lkv, sh.Dv}, p.dtype, &v);
    c.out = op({sh.B, sh.Hq, sh.Lq, sh.Dv}, p.dtype, nullptr);
    c.lse = op({sh.B, sh.Hq, sh.Lq}, DType::f32, nullptr);
    if (dout != nullptr) {
      c.dout = op({sh.B, sh.Hq, sh.Lq, sh.Dv}, p.dtype, dout);
      c.dq = op({sh.B, sh.Hq, sh.Lq, sh.D}, p.dtype, nullptr);
      c.dk = op({sh.B, sh.Hkv, sh.Lkv, sh.D}, p.dtype, nullptr);
      c.dv = op({sh.B, sh.Hkv, sh.Lkv, sh.Dv}, p.dtype, nullptr);
    }
    return c;
  }
  void forward(const auto& score_mod, const auto& mask, const AttentionOptions& opts) const {
    flex_attention_into(q.view, k.view, v.view, out.view, lse.view, score_mod, mask, opts);
  }
  void backward(const auto& score_mod, const auto& mask, const AttentionOptions& opts) const {
    flex_attention_backward_into(q.view, k.view, v.view, out.view, lse.view, dout.view, dq.view,
                                 dk.view, dv.view, score_mod, mask, opts);
  }
};

// The case's block mask (mask_B / mask_H of the Problem; 0: the call's) and options.
template <class MaskMod>
BlockMask<MaskMod> case_block_mask(const Problem& p, const MaskMod& mask_mod,
                                   Device device = Device::cpu) {
  const Shape& sh = p.shape;
  return create_block_mask(mask_mod, p.mask_B ? p.mask_B : sh.B, p.mask_H ? p.mask_H : sh.Hq,
                           sh.Lq, sh.Lkv,
                           {.block_q = p.block_q, .block_kv = p.block_kv, .device = device});
}
inline AttentionOptions case_options(const Problem& p) {
  AttentionOptions opts;
  opts.scale = p.scale;
  opts.enable_gqa = p.shape.Hq != p.shape.Hkv;
  return opts;
}

// ---- one forward check
// ----------------------------------------------------------------------------
struct ForwardReport {
  int64_t masked_rows = 0;  // rows the reference finds fully masked
};

// The library runs lib_score / lib_mask, the oracles score_mod / mask_mod: the same functors,
// except for runtime variants (test_runtime.cpp), whose C++ twin the oracles evaluate.
template <class LibScore, class LibMask, class ScoreMod, class MaskMod>
ForwardReport check_forward_of(const Problem& p, const LibScore& lib_score, const LibMask& lib_mask,
                               const ScoreMod& score_mod, const MaskMod& mask_mod) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(describe(p) + " seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const Shape& sh = p.shape;
  const std::vector<float> q = random_input(sh.q_numel(), p.dtype, rng);
  const std::vector<float> k = random_input(sh.k_numel(), p.dtype, rng);
  const std::vector<float> v = random_input(sh.v_numel(), p.dtype, rng);

  const CaseOperands c = CaseOperands::make(p, q, k, v, nullptr);
  c.forward(lib_score, case_block_mask(p, lib_mask), case_options(p));
  const Operand &out = c.out, &lse = c.lse;

  const float scale = p.scale != 0.0f ? p.scale : 1.0f / std::sqrt(float(sh.D));
  const reference::ForwardResult ref =
      reference::forward(sh, reference::to_double(q), reference::to_double(k),
                         reference::to_double(v), double(scale), score_mod, mask_mod);
  const LowpForward naive = naive_forward_lowp(sh, p.dtype, scale, q, k, v, score_mod, mask_mod);
  const std::vector<float> got_out = out.read(), got_lse = lse.read();
  expect_close("out", got_out, ref.out, naive.out, p.dtype);
  expect_close("lse", got_lse, ref.lse, naive.lse, DType::f32);
  ForwardReport rep;
  rep.masked_rows = expect_masked_rows_exact(sh, got_out, got_lse, ref.lse);
  EXPECT_EQ(out.clobbered_padding() + lse.clobbered_padding(), 0) << "wrote outside the views";
  return rep;
}

template <class ScoreMod, class MaskMod>
ForwardReport check_forward(const Problem& p, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  return check_forward_of(p, score_mod, mask_mod, score_mod, mask_mod);
}

// ---- one backward check -------------------------------------------------------------------------
// The library's own forward provides out and lse for its backward; the reference recomputes.
// lib_score / lib_mask as in check_forward_of.
template <class LibScore, class LibMask, class ScoreMod, class MaskMod>
ForwardReport check_backward_of(const Problem& p, const LibScore& lib_score,
                                const LibMask& lib_mask, const ScoreMod& score_mod,
                                const MaskMod& mask_mod) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(describe(p) + " seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const Shape& sh = p.shape;
  const std::vector<float> q = random_input(sh.q_numel(), p.dtype, rng);
  const std::vector<float> k = random_input(sh.k_numel(), p.dtype, rng);
  const std::vector<float> v = random_input(sh.v_numel(), p.dtype, rng);
  const std::vector<float> dout = random_input(sh.out_numel(), p.dtype, rng);

  const CaseOperands c = CaseOperands::make(p, q, k, v, &dout);
  const auto mask = case_block_mask(p, lib_mask);
  c.forward(lib_score, mask, case_options(p));
  c.backward(lib_score, mask, case_options(p));
  const Operand &out = c.out, &lse = c.lse, &dq = c.dq, &dk = c.dk, &dv = c.dv;

  const float scale = p.scale != 0.0f ? p.scale : 1.0f / std::sqrt(float(sh.D));
  const std::vector<double> q64 = reference::to_double(q), k64 = reference::to_double(k),
                            v64 = reference::to_double(v);
  const reference::ForwardResult ref_fwd =
      reference::forward(sh, q64, k64, v64, double(scale), score_mod, mask_mod);
  const reference::Grads ref = reference::backward(sh, q64, k64, v64, reference::to_double(dout),
                                                   double(scale), score_mod, mask_mod);
  const LowpForward naive_fwd =
      naive_forward_lowp(sh, p.dtype, scale, q, k, v, score_mod, mask_mod);
  // The forward the backward consumed is judged first; then the naive backward gets that same
  // out / lse (header comment), so its error is the error a naive backward adds to them.
  const LowpForward given{out.read(), lse.read()};
  expect_close("out (given to the backward)", given.out, ref_fwd.out, naive_fwd.out, p.dtype);
  expect_close("lse (given to the backward)", given.lse, ref_fwd.lse, naive_fwd.lse, DType::f32);
  const LowpGrads naive =
      naive_backward_lowp(sh, p.dtype, scale, q, k, v, dout, given, score_mod, mask_mod);
  const std::vector<float> got_dq = dq.read(), got_dk = dk.read(), got_dv = dv.read();
  expect_close("dq", got_dq, ref.dq, naive.dq, p.dtype);
  expect_close("dk", got_dk, ref.dk, naive.dk, p.dtype);
  expect_close("dv", got_dv, ref.dv, naive.dv, p.dtype);

  // Fully masked rows: dq exactly 0 there (the reference gives exact zeros).
  ForwardReport rep;
  int64_t bad = 0;
  for (int64_t r = 0; r < sh.lse_numel(); ++r) {
    if (ref_fwd.lse[size_t(r)] != -std::numeric_limits<double>::infinity()) continue;
    ++rep.masked_rows;
    for (int64_t e = 0; e < sh.D; ++e) bad += got_dq[size_t(r * sh.D + e)] != 0.0f;
  }
  EXPECT_EQ(bad, 0) << "dq of fully masked rows must be exactly 0";
  EXPECT_EQ(dq.clobbered_padding() + dk.clobbered_padding() + dv.clobbered_padding(), 0)
      << "wrote outside the gradient views";
  return rep;
}
template <class ScoreMod, class MaskMod>
ForwardReport check_backward(const Problem& p, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  return check_backward_of(p, score_mod, mask_mod, score_mod, mask_mod);
}

}  // namespace flexattn::testing
