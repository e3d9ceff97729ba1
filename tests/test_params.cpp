// Learnable Params (param.h) on the CPU: a score_mod's tables get their gradients from
// flex_attention_backward. Each mod is written once, generic in its tables: with flexattn::Param
// for the library, with a double table for the float64 reference, whose loss sum(out * dout) is
// differentiated by central differences on the table entries (the oracle shares nothing with the
// PDual mechanism it checks). dq / dk / dv go through the usual check_backward_of.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstring>
#include <random>
#include <vector>

#include <flexattn/flexattn.h>

#include "attn_check.h"
#include "reference/reference.h"

namespace flexattn {
namespace {

using testing::Problem;
using testing::check_backward_of;
using testing::check_forward_of;

// A table the reference reads: double values, row-major, perturbed in place by the differences.
struct DTable {
  const std::vector<double>* v;
  int64_t cols = 1;
  double operator()(int i) const { return (*v)[size_t(i)]; }
  double operator()(int i, int j) const { return (*v)[size_t(i * cols + j)]; }
  double operator[](int i) const { return (*v)[size_t(i)]; }
};

FLEXATTN_HD inline int bucket32(int d) { return (d < -15 ? -15 : (d > 16 ? 16 : d)) + 15; }

// T5-style: bias[h][bucket(q - kv)].
template <class Table>
struct RelBias {
  Table table;
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int h, int q, int kv) const {
    return s + table(h, bucket32(q - kv));
  }
  auto params() const
    requires std::same_as<Table, Param>
  {
    return flexattn::params(table);
  }
};

// Learnable ALiBi slopes through exp (a nonlinear read), with a soft cap on top.
template <class Table>
struct SlopeCap {
  Table slopes;
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int h, int q, int kv) const {
    using flexattn::exp, flexattn::tanh;
    return 8.0f * tanh((s - exp(slopes[h]) * float(q > kv ? q - kv : kv - q) * 0.1f) / 8.0f);
  }
  auto params() const
    requires std::same_as<Table, Param>
  {
    return flexattn::params(slopes);
  }
};

// Two params in one mod, one read at a data-dependent index of the key: a per-key gate times a
// per-head table entry.
template <class Table>
struct TwoParams {
  Table table, gate;
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int h, int q, int kv) const {
    return s * gate[kv] + table(h, bucket32(q - kv));
  }
  auto params() const
    requires std::same_as<Table, Param>
  {
    return flexattn::params(table, gate);
  }
};

DTable dtable_of(const std::vector<double>& v, int64_t cols) { return {&v, cols}; }

struct Tables {
  std::vector<float> values;  // as the library stores them (rounded to its dtype)
  std::vector<double> dvalues;
  Tensor tensor, grad;
};
Tables make_table(std::vector<int64_t> shape, DType dt, std::mt19937_64& rng, float stddev) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  Tables t;
  t.values = reference::random_normal(n, rng, stddev);
  reference::round_to(dt, t.values);
  t.dvalues = reference::to_double(t.values);
  t.tensor = Tensor::from_host(t.values.data(), shape, dt);
  t.grad = Tensor::empty(shape, DType::f32);
  t.grad.fill(std::numeric_limits<float>::quiet_NaN());  // poisoned: the backward overwrites it
  return t;
}

// sum(out * dout) of the float64 reference for the mod `make()` builds from the double tables.
template <class Make, class Mask>
double reference_loss(const reference::Shape& sh, const std::vector<double>& q,
                      const std::vector<double>& k, const std::vector<double>& v,
                      const std::vector<double>& dout, double scale, const Make& make,
                      const Mask& mask) {
  const reference::ForwardResult r = reference::forward(sh, q, k, v, scale, make(), mask);
  double loss = 0.0;
  for (size_t i = 0; i < r.out.size(); ++i) loss += r.out[i] * dout[i];
  return loss;
}

// Runs forward + backward through the front door, then compares every entry of each table's
// gradient with the central difference of the reference loss. `lib` is the Param functor, `make`
// builds the double twin over `tables`' dvalues.
template <class Lib, class Make, class Mask>
void check_param_grads(const Problem& p, const Lib& lib, std::vector<Tables*> tables,
                       const Make& make, const Mask& mask) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const reference::Shape& sh = p.shape;
  const std::vector<float> q = testing::random_input(sh.q_numel(), p.dtype, rng);
  const std::vector<float> k = testing::random_input(sh.k_numel(), p.dtype, rng);
  const std::vector<float> v = testing::random_input(sh.v_numel(), p.dtype, rng);
  const std::vector<float> dout = testing::random_input(sh.out_numel(), p.dtype, rng);
  const Tensor qt = Tensor::from_host(q.data(), {sh.B, sh.Hq, sh.Lq, sh.D}, p.dtype);
  const Tensor kt = Tensor::from_host(k.data(), {sh.B, sh.Hkv, sh.Lkv, sh.D}, p.dtype);
  const Tensor vt = Tensor::from_host(v.data(), {sh.B, sh.Hkv, sh.Lkv, sh.Dv}, p.dtype);
  const Tensor dot = Tensor::from_host(dout.data(), {sh.B, sh.Hq, sh.Lq, sh.Dv}, p.dtype);
  AttentionOptions opts;
  opts.enable_gqa = sh.Hq != sh.Hkv;
  const auto bm = create_block_mask(mask, 1, 1, sh.Lq, sh.Lkv, {.block_q = 32, .block_kv = 32});
  const AttentionOutput fwd = flex_attention(qt, kt, vt, lib, bm, opts);
  (void)flex_attention_backward(qt, kt, vt, fwd.out, fwd.lse, dot, lib, bm, opts);

  // The reference differentiates the loss of the inputs the library saw (rounded to its dtype).
  const double scale = 1.0 / std::sqrt(double(sh.D));
  const auto q64 = reference::to_double(q), k64 = reference::to_double(k),
             v64 = reference::to_double(v), do64 = reference::to_double(dout);
  for (size_t ti = 0; ti < tables.size(); ++ti) {
    Tables& t = *tables[ti];
    const std::vector<float> got = t.grad.to_host();
    std::vector<double> want(got.size());
    for (size_t e = 0; e < got.size(); ++e) {
      const double x = t.dvalues[e], step = 1e-4 * std::max(1.0, std::abs(x));
      t.dvalues[e] = x + step;
      const double up = reference_loss(sh, q64, k64, v64, do64, scale, make, mask);
      t.dvalues[e] = x - step;
      const double down = reference_loss(sh, q64, k64, v64, do64, scale, make, mask);
      t.dvalues[e] = x;
      want[e] = (up - down) / (2.0 * step);
    }
    // f32 accumulation over up to Lq * Lkv terms of a low-precision forward's P: the bound is
    // relative to the largest gradient entry, loosened by the dtype's rounding.
    const double top = reference::max_abs(want);
    const double tol = (p.dtype == DType::f32 ? 2e-4 : 8e-3) * std::max(top, 1e-3);
    for (size_t e = 0; e < got.size(); ++e) {
      ASSERT_TRUE(std::isfinite(got[e])) << "table " << ti << " entry " << e;
      EXPECT_NEAR(got[e], want[e], tol) << "table " << ti << " entry " << e << " of "
                                        << got.size();
    }
  }
}

class ParamGrads : public testing::DtypeSuite {};

TEST_P(ParamGrads, RelativeBucketTable) {
  Problem p = problem({.B = 2, .Hq = 4, .Hkv = 4, .Lq = 70, .Lkv = 90, .D = 32, .Dv = 24});
  std::mt19937_64 rng(testing::test_seed());
  Tables t = make_table({4, 32}, p.dtype, rng, 0.5f);
  const RelBias<Param> lib{Param(t.tensor, t.grad)};
  auto make = [&] { return RelBias<DTable>{dtable_of(t.dvalues, 32)}; };
  check_param_grads(p, lib, {&t}, make, causal());
  check_backward_of(p, lib, causal(), make(), causal());  // dq, dk, dv with the table
}

TEST_P(ParamGrads, LearnableSlopesThroughExpAndTanh) {
  Problem p = problem({.B = 1, .Hq = 8, .Hkv = 2, .Lq = 64, .Lkv = 64, .D = 16, .Dv = 16});
  std::mt19937_64 rng(testing::test_seed());
  Tables t = make_table({8}, p.dtype, rng, 0.3f);
  const SlopeCap<Param> lib{Param(t.tensor, t.grad)};
  auto make = [&] { return SlopeCap<DTable>{dtable_of(t.dvalues, 1)}; };
  check_param_grads(p, lib, {&t}, make, noop_mask());  // GQA: 8 query heads on 2 kv heads
}

TEST_P(ParamGrads, TwoParamsMaskedKeysGetZero) {
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 40, .Lkv = 100, .D = 16, .Dv = 16});
  std::mt19937_64 rng(testing::test_seed());
  Tables table = make_table({2, 32}, p.dtype, rng, 0.5f);
  Tables gate = make_table({100}, p.dtype, rng, 0.5f);
  const TwoParams<Param> lib{Param(table.tensor, table.grad), Param(gate.tensor, gate.grad)};
  auto make = [&] {
    return TwoParams<DTable>{dtable_of(table.dvalues, 32), dtable_of(gate.dvalues, 1)};
  };
  check_param_grads(p, lib, {&table, &gate}, make, causal());
  // Causal with 40 queries: keys 40..99 are never attended, so their gate gradient is exactly 0.
  const std::vector<float> g = gate.grad.to_host();
  for (int kv = 40; kv < 100; ++kv) EXPECT_EQ(g[size_t(kv)], 0.0f) << "key " << kv;
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ParamGrads,
                         ::testing::Values(DType::f32, DType::bf16, DType::f16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// Bit-identical gradients for any thread count (the per-item sums are fixed by the problem).
TEST(ParamGradsDeterminism, SameBitsForOneAndManyThreads) {
  std::mt19937_64 rng(testing::test_seed());
  const int64_t B = 2, H = 4, L = 300, D = 32;
  const std::vector<float> q = reference::random_normal(B * H * L * D, rng);
  const std::vector<float> k = reference::random_normal(B * H * L * D, rng);
  const std::vector<float> v = reference::random_normal(B * H * L * D, rng);
  const std::vector<float> dout = reference::random_normal(B * H * L * D, rng);
  const Tensor qt = Tensor::from_host(q.data(), {B, H, L, D}, DType::f32);
  const Tensor kt = Tensor::from_host(k.data(), {B, H, L, D}, DType::f32);
  const Tensor vt = Tensor::from_host(v.data(), {B, H, L, D}, DType::f32);
  const Tensor dt = Tensor::from_host(dout.data(), {B, H, L, D}, DType::f32);
  Tables t = make_table({H, 32}, DType::f32, rng, 0.5f);
  const RelBias<Param> mod{Param(t.tensor, t.grad)};
  const auto bm = create_block_mask(causal(), 1, 1, L, L, {.block_q = 64, .block_kv = 64});
  const int saved = num_threads();
  std::vector<std::vector<float>> runs;
  for (int threads : {1, 2, 4, 1}) {
    set_num_threads(threads);
    const AttentionOutput f = flex_attention(qt, kt, vt, mod, bm);
    (void)flex_attention_backward(qt, kt, vt, f.out, f.lse, dt, mod, bm);
    runs.push_back(t.grad.to_host());
  }
  set_num_threads(saved);
  for (size_t r = 1; r < runs.size(); ++r) {
    EXPECT_EQ(0, std::memcmp(runs[0].data(), runs[r].data(), runs[0].size() * sizeof(float)))
        << "run " << r;
  }
}

// ---- errors ------------------------------------------------------------------------------------
struct ReadsFive {  // five distinct entries for one score
  Param p;
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int, int, int kv) const {
    return s + p[kv % 8] + p[(kv + 1) % 8] + p[(kv + 2) % 8] + p[(kv + 3) % 8] + p[(kv + 4) % 8];
  }
  auto params() const { return flexattn::params(p); }
};
struct ForgetsOne {  // reads `hidden` without listing it
  Param listed, hidden;
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int h, int, int) const {
    return s + listed[h] + hidden[h];
  }
  auto params() const { return flexattn::params(listed); }
};

TEST(ParamErrors, RefusedWithMessages) {
  std::mt19937_64 rng(testing::test_seed());
  Tables a = make_table({8}, DType::f32, rng, 0.5f), b = make_table({8}, DType::f32, rng, 0.5f);
  const std::vector<float> x = reference::random_normal(2 * 16 * 16, rng);
  const Tensor q = Tensor::from_host(x.data(), {1, 2, 16, 16}, DType::f32);
  auto expect_error = [](auto&& f, const char* what) {
    try {
      f();
      ADD_FAILURE() << "no Error; expected one mentioning " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  const AttentionOutput f5 = flex_attention(q, q, q, ReadsFive{Param(a.tensor, a.grad)});
  expect_error([&] { flex_attention_backward(q, q, q, f5.out, f5.lse, q, ReadsFive{Param(a.tensor, a.grad)}); },
               "more than 4 distinct");
  const ForgetsOne forgets{Param(a.tensor, a.grad), Param(b.tensor, b.grad)};
  const AttentionOutput ff = flex_attention(q, q, q, forgets);
  expect_error([&] { flex_attention_backward(q, q, q, ff.out, ff.lse, q, forgets); },
               "does not list");
  const int32_t ids[8] = {};
  const Tensor i32 = Tensor::from_host(ids, {8});
  expect_error([&] { Param(i32, a.grad); }, "i32");
  Tensor bf_grad = Tensor::empty({8}, DType::bf16);
  expect_error([&] { Param(a.tensor, bf_grad); }, "grad is bf16");
  Tensor wrong = Tensor::empty({9}, DType::f32);
  expect_error([&] { Param(a.tensor, wrong); }, "grad.shape[0]");
  const Tables big = make_table({4, 8}, DType::f32, rng, 1.0f);
  TensorView strided = big.grad.view();
  strided.shape[0] = 2;
  strided.stride[0] = 16;
  TensorView val = a.tensor.view();
  val.rank = 2;
  val.shape[0] = 2;
  val.shape[1] = 8;
  val.stride[0] = 0;
  val.stride[1] = 1;
  expect_error([&] { Param(val, strided); }, "contiguous");
}

}  // namespace
}  // namespace flexattn

namespace flexattn {
namespace {

// A runtime variant's learnable capture (runtime.h: Capture::grad) gets the same gradients.
TEST(ParamGradsRuntime, LearnableCaptureOfARuntimeScoreMod) {
  Problem p;
  p.shape = {.B = 1, .Hq = 4, .Hkv = 2, .Lq = 50, .Lkv = 60, .D = 16, .Dv = 16};
  std::mt19937_64 rng(testing::test_seed());
  Tables t = make_table({4, 32}, DType::bf16, rng, 0.5f);
  const RuntimeScoreMod lib(
      "int d = q_idx - kv_idx;\n"
      "d = d < -15 ? -15 : (d > 16 ? 16 : d);\n"
      "return score + table(h, d + 15);",
      {{"table", t.tensor, t.grad}});
  auto make = [&] { return RelBias<DTable>{dtable_of(t.dvalues, 32)}; };
  check_param_grads(p, lib, {&t}, make, noop_mask());
  // Refusals: a mask_mod capture cannot be learnable; the grad must fit the tensor.
  EXPECT_THROW(RuntimeMaskMod("table(h, 0) > 0.0f", {{"table", t.tensor, t.grad}}), Error);
  Tensor small = Tensor::empty({4, 31}, DType::f32);
  try {
    RuntimeScoreMod("score + table(h, 0)", {{"table", t.tensor, small}});
    ADD_FAILURE() << "a grad of the wrong shape was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("capture 'table' cannot be learnable"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace flexattn
