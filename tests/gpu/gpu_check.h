// Shared machinery of the GPU tests: fresh random inputs on the GPU, poisoned outputs, the float64
// oracle, and FlashAttention's tolerance rule.
//
// check_attention() runs one case through the public *_into API on Device::cuda (outputs and
// gradients poisoned with NaN first, so an element the kernel never wrote shows up), then compares
// with the float64 oracle (reference/reference.h, the same functors):
//     max|gpu - exact| <= k * max|naive - exact| + atol
// where `naive` is the straightforward low-precision algorithm, the one oracle the CPU tests use
// too (tests/attn_check.h: naive_forward_lowp, naive_backward_lowp). Rows whose every key is
// masked must come back exactly as out = 0, lse = -inf, dQ = 0.
#pragma once

#include <cuda_runtime.h>
#include <flexattn/detail/cuda/launch_record.h>
#include <flexattn/flexattn.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <future>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tests/attn_check.h"

namespace flexattn::gpu_test {

// Skips every test of a fixture when the build or the machine has no CUDA device, so that CI on a
// GPU-less machine builds and runs this binary.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  }
};

// The main kernel the launchers must pick, as launch_record.h names it ("fwd" or "bwd" + "_sm90" or
// "_sm80"): the Hopper kernels for head dims 64 and 128 on a compute-capability 9.0 GPU (the GPU
// tests are built with sm_90a code: tools/gpu/run_all.sh), unless FLEXATTN_CUDA_SM80=1 forces the
// sm80 kernels; the sm80 kernels everywhere else.
inline std::string expected_kernel(const std::string& dir, int64_t D) {
  int dev = 0, major = 0, minor = 0;
  EXPECT_EQ(cudaGetDevice(&dev), cudaSuccess);
  EXPECT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), cudaSuccess);
  EXPECT_EQ(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), cudaSuccess);
  const char* forced = std::getenv("FLEXATTN_CUDA_SM80");
  const bool sm90 = major == 9 && minor == 0 && !(forced != nullptr && forced[0] == '1') &&
                    (D == 64 || D == 128);
  return dir + (sm90 ? "_sm90" : "_sm80");
}

// A fresh seed per case (printed on failure); FLEXATTN_TEST_SEED pins it to reproduce a failure.
inline uint64_t fresh_seed() {
  if (const char* env = std::getenv("FLEXATTN_TEST_SEED")) return std::strtoull(env, nullptr, 0);
  return reference::fresh_seed();
}

// A GPU tensor of random values plus its host copy as the GPU holds it (rounded to the dtype).
struct Input {
  Tensor t;
  std::vector<float> host;
};
inline Input random_input(std::vector<int64_t> shape, DType dt, std::mt19937_64& rng,
                          float stddev = 1.0f) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const std::vector<float> x = reference::random_normal(n, rng, stddev);
  Input in{Tensor::from_host(x.data(), std::move(shape), dt, Device::cuda), {}};
  in.host = in.t.to_host();
  return in;
}

inline Tensor poisoned(std::vector<int64_t> shape, DType dt) {
  Tensor t = Tensor::empty(std::move(shape), dt, Device::cuda);
  t.fill(std::nanf(""));
  return t;
}

// A shape with Dv == D (the GPU kernels' case).
inline reference::Shape shape(int64_t B, int64_t Hq, int64_t Hkv, int64_t Lq, int64_t Lkv,
                              int64_t D) {
  return reference::Shape{B, Hq, Hkv, Lq, Lkv, D, D};
}

struct CaseOptions {
  DType dtype = DType::bf16;
  reference::Shape shape;
  int64_t mask_B = 1, mask_H = 1;  // BlockMask batch / heads (1 broadcasts)
  int block_q = 128, block_kv = 128;  // BlockMask tile
  bool backward = true;
  float scale = 0.0f;  // 0: 1/sqrt(D)
  std::string name;    // printed on failure
};

struct Tolerance {
  double k_fwd = 2.0, k_bwd = 3.0;
};

// Machine epsilon of the storage type: the scale of the absolute slack.
inline double dtype_eps(DType dt) {
  return dt == DType::bf16 ? 0.0078125 : dt == DType::f16 ? 0.0009765625 : 1.2e-7;
}

struct ErrStats {
  double max_err = 0.0, naive_err = 0.0, max_ref = 0.0, rel_l2 = 0.0;
  int64_t nonfinite = 0, first_nonfinite = -1;
};

inline ErrStats compare(const std::vector<float>& got, const std::vector<double>& exact,
                        const std::vector<float>& naive) {
  ErrStats e;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double ref = exact[i];
    if (std::isinf(ref)) {  // -inf lse of a fully masked row: must match exactly
      if (double(got[i]) != ref) {
        ++e.nonfinite;
        if (e.first_nonfinite < 0) e.first_nonfinite = int64_t(i);
      }
      continue;
    }
    if (!std::isfinite(got[i])) {
      ++e.nonfinite;
      if (e.first_nonfinite < 0) e.first_nonfinite = int64_t(i);
      continue;
    }
    const double d = std::fabs(double(got[i]) - ref);
    e.max_err = std::max(e.max_err, d);
    e.naive_err = std::max(e.naive_err, std::fabs(double(naive[i]) - ref));
    e.max_ref = std::max(e.max_ref, std::fabs(ref));
    num += d * d;
    den += ref * ref;
  }
  e.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return e;
}

// EXPECTs `got` within FlashAttention's bound of `exact`; `k` the multiple of the naive error.
inline void expect_close(const char* what, const std::vector<float>& got,
                         const std::vector<double>& exact, const std::vector<float>& naive,
                         double k, double atol_scale, const std::string& ctx) {
  ASSERT_EQ(got.size(), exact.size()) << what << " size, " << ctx;
  const ErrStats e = compare(got, exact, naive);
  EXPECT_EQ(e.nonfinite, 0) << what << ": " << e.nonfinite
                            << " elements NaN/inf (or not -inf where they must be), first at flat "
                            << "index " << e.first_nonfinite << " value "
                            << (e.first_nonfinite >= 0 ? got[size_t(e.first_nonfinite)] : 0.0f)
                            << " ref "
                            << (e.first_nonfinite >= 0 ? exact[size_t(e.first_nonfinite)] : 0.0)
                            << "; " << ctx;
  const double atol = atol_scale * std::max(e.max_ref, 0.3);
  const double bound = k * e.naive_err + atol;
  EXPECT_LE(e.max_err, bound) << what << ": max|gpu-f64| " << e.max_err << " > " << k
                              << " x naive " << e.naive_err << " + atol " << atol
                              << " (rel L2 " << e.rel_l2 << ", max|ref| " << e.max_ref << "); "
                              << ctx;
}

// Fully masked rows (lse == -inf in the reference) must hold exact zeros in out and dq.
inline void expect_masked_rows_zero(const std::vector<double>& ref_lse,
                                    const std::vector<float>& out, const std::vector<float>& dq,
                                    int64_t D, const std::string& ctx) {
  int64_t bad = 0, rows = 0;
  for (size_t r = 0; r < ref_lse.size(); ++r) {
    if (!std::isinf(ref_lse[r])) continue;
    ++rows;
    for (int64_t d = 0; d < D; ++d) {
      if (out[r * size_t(D) + size_t(d)] != 0.0f) ++bad;
      if (!dq.empty() && dq[r * size_t(D) + size_t(d)] != 0.0f) ++bad;
    }
  }
  EXPECT_EQ(bad, 0) << bad << " non-zero out/dq elements in " << rows << " fully masked rows; "
                    << ctx;
}

// One case end to end. score/mask run on the GPU; ref_score/ref_mask are the same functions for
// the host (they differ only where a functor holds a device pointer, e.g. document's ids).
template <class ScoreMod, class MaskMod, class RefScore, class RefMask>
void check_attention(const CaseOptions& c, ScoreMod score, MaskMod mask, RefScore ref_score,
                     RefMask ref_mask, Tolerance tol = {}) {
  const reference::Shape& s = c.shape;
  const uint64_t seed = fresh_seed();
  std::mt19937_64 rng(seed);
  std::ostringstream os;
  os << c.name << " dtype=" << to_string(c.dtype) << " B=" << s.B << " Hq=" << s.Hq
     << " Hkv=" << s.Hkv << " Lq=" << s.Lq << " Lkv=" << s.Lkv << " D=" << s.D
     << " block=" << c.block_q << "x" << c.block_kv << " seed=" << seed
     << " (FLEXATTN_TEST_SEED reproduces)";
  const std::string ctx = os.str();
  SCOPED_TRACE(ctx);

  Input q = random_input({s.B, s.Hq, s.Lq, s.D}, c.dtype, rng);
  Input k = random_input({s.B, s.Hkv, s.Lkv, s.D}, c.dtype, rng);
  Input v = random_input({s.B, s.Hkv, s.Lkv, s.D}, c.dtype, rng);
  AttentionOptions opts;
  opts.scale = c.scale;
  opts.enable_gqa = s.Hq != s.Hkv;
  const float scale = c.scale != 0.0f ? c.scale : 1.0f / std::sqrt(float(s.D));

  BlockMaskOptions bo;
  bo.device = Device::cuda;
  bo.block_q = c.block_q;
  bo.block_kv = c.block_kv;
  const auto bm = create_block_mask(mask, c.mask_B, c.mask_H, s.Lq, s.Lkv, bo);

  Tensor out = poisoned({s.B, s.Hq, s.Lq, s.D}, c.dtype);
  Tensor lse = poisoned({s.B, s.Hq, s.Lq}, DType::f32);
  flex_attention_into(q.t.view(), k.t.view(), v.t.view(), out.view(), lse.view(), score, bm, opts);
  const std::vector<float> out_h = out.to_host(), lse_h = lse.to_host();

  Input dout;
  if (c.backward) dout = random_input({s.B, s.Hq, s.Lq, s.D}, c.dtype, rng);
  // The oracles are single-threaded: the float64 forward and backward run beside the naive ones.
  auto exact_fwd = std::async(std::launch::async, [&] {
    return reference::forward(s, reference::to_double(q.host), reference::to_double(k.host),
                              reference::to_double(v.host), double(scale), ref_score, ref_mask);
  });
  auto exact_bwd = std::async(std::launch::async, [&] {
    if (!c.backward) return reference::Grads{};
    return reference::backward(s, reference::to_double(q.host), reference::to_double(k.host),
                               reference::to_double(v.host), reference::to_double(dout.host),
                               double(scale), ref_score, ref_mask);
  });
  const testing::LowpForward nv = testing::naive_forward_lowp(s, c.dtype, scale, q.host, k.host,
                                                              v.host, ref_score, ref_mask);
  auto naive_bwd = std::async(std::launch::async, [&] {
    if (!c.backward) return testing::LowpGrads{};
    // Given the out / lse the tested backward was given (tests/attn_check.h says why).
    return testing::naive_backward_lowp(s, c.dtype, scale, q.host, k.host, v.host, dout.host,
                                        testing::LowpForward{out_h, lse_h}, ref_score, ref_mask);
  });
  const reference::ForwardResult ex = exact_fwd.get();
  const reference::Grads exg = exact_bwd.get();
  const double eps = dtype_eps(c.dtype);
  expect_close("out", out_h, ex.out, nv.out, tol.k_fwd, eps, ctx);
  // lse is f32 from f32 accumulators: judged against the naive lse plus f32-level slack.
  expect_close("lse", lse_h, ex.lse, nv.lse, tol.k_fwd, 1e-5, ctx);
  if (!c.backward) {
    expect_masked_rows_zero(ex.lse, out_h, {}, s.D, ctx);
    return;
  }

  Tensor dq = poisoned({s.B, s.Hq, s.Lq, s.D}, c.dtype);
  Tensor dk = poisoned({s.B, s.Hkv, s.Lkv, s.D}, c.dtype);
  Tensor dv = poisoned({s.B, s.Hkv, s.Lkv, s.D}, c.dtype);
  flex_attention_backward_into(q.t.view(), k.t.view(), v.t.view(), out.view(), lse.view(),
                               dout.t.view(), dq.view(), dk.view(), dv.view(), score, bm, opts);
  const std::vector<float> dq_h = dq.to_host(), dk_h = dk.to_host(), dv_h = dv.to_host();
  const testing::LowpGrads ng = naive_bwd.get();
  expect_close("dq", dq_h, exg.dq, ng.dq, tol.k_bwd, eps, ctx);
  expect_close("dk", dk_h, exg.dk, ng.dk, tol.k_bwd, eps, ctx);
  expect_close("dv", dv_h, exg.dv, ng.dv, tol.k_bwd, eps, ctx);
  expect_masked_rows_zero(ex.lse, out_h, dq_h, s.D, ctx);
}

// Same functor on host and device.
template <class ScoreMod, class MaskMod>
void check_attention(const CaseOptions& c, ScoreMod score, MaskMod mask, Tolerance tol = {}) {
  check_attention(c, score, mask, score, mask, tol);
}

}  // namespace flexattn::gpu_test
