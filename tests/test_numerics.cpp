// Numerics at the edges (issue 8, items 7-10): non-finite scores, garbage in masked keys, the math
// layer's values and derivatives at 0 / inf / NaN, and huge finite scores. The contract:
//  - a row that keeps a NaN or +inf score is a NaN row: out NaN, lse NaN, dq NaN and NaN in dk / dv
//    of every key it keeps; -inf scores are the same as masked; only a row whose kept scores are
//    all -inf (or that keeps nothing) is fully masked: out 0, lse -inf, zero gradients;
//  - a masked (q, kv) pair contributes exactly nothing, whatever q, k, v hold there;
//  - finite inputs whose scores fit float32 give finite, correct gradients.
// Every case compares with the float64 reference (reference/reference.h, which states the same
// contract) on fresh random inputs with poisoned outputs: NaN / inf where the reference has them,
// and elsewhere the tolerance rule of attn_check.h, with the naive low-precision error taken on
// clean inputs (the garbage replaced by finite values) over the elements the reference finds finite.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "attn_check.h"
#include "numerics_check.h"
#include "test_functors.h"

namespace flexattn::testing {
namespace {

// ---- functors -------------------------------------------------------------------------------------
// score_mod returning `value` at one (b, h, q, kv), the score elsewhere.
struct ValueAt {
  int b = 0, h = 0, q = 0, kv = 0;
  float value = kNaN;
  template <class T>
  FLEXATTN_HD T operator()(T s, int bi, int hi, int qi, int kvi) const {
    return (bi == b && hi == h && qi == q && kvi == kv) ? T(value) : s;
  }
};

// Causal within two documents [0, split) and [split, L): keys of one document are masked for the
// rows of the other, so a bad key of document 0 sits in partial tiles of document 1's rows.
struct CausalDocs {
  int split = 40;
  FLEXATTN_HD bool operator()(int, int, int q, int kv) const {
    return kv <= q && (q < split) == (kv < split);
  }
};

// CausalDocs with rows q % 7 == 5 of head 1 keeping nothing: fully masked rows beside NaN rows.
struct CausalDocsKillRows {
  int split = 40;
  FLEXATTN_HD bool operator()(int b, int h, int q, int kv) const {
    return CausalDocs{split}(b, h, q, kv) && !(h == 1 && q % 7 == 5);
  }
};

// Row `only` keeps key `only` alone; every other row is causal.
struct OnlyDiagonalAt {
  int only = 7;
  FLEXATTN_HD bool operator()(int, int, int q, int kv) const {
    return q == only ? kv == only : kv <= q;
  }
};

// The adversarial tester's score_mod: exact forward, and the derivative of pow(max(s, 0), 0.5)
// at s < 0 is 0 (not 0 * inf).
struct SqrtRelu {
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int, int, int) const {
    return flexattn::pow(flexattn::max(s, 0.0f), 0.5f) - s;
  }
};

class Numerics : public DtypeSuite {};

// ---- item 7: non-finite scores --------------------------------------------------------------------
TEST_P(Numerics, NanScoreMakesANanRowNotAMaskedOne) {
  FLEXATTN_SEEDED_RNG(rng);
  // GQA, Lq = Lkv = 77 (ragged tiles), blocks of 16: rows with a NaN or +inf score beside rows
  // that keep nothing (head 1, q % 7 == 5), in partial and in full tiles.
  Problem p = problem({.B = 2, .Hq = 4, .Hkv = 2, .Lq = 77, .Lkv = 77, .D = 32, .Dv = 24});
  p.block_q = p.block_kv = 16;
  const Inputs in = random_inputs(p.shape, p.dtype, rng);
  for (float value : {kNaN, kInf}) {
    SCOPED_TRACE("value " + std::to_string(value));
    // (q 34, kv 3) of head 1: a full tile (rows 32..39 x keys 0..15 are all kept); (q 13, kv 13) of
    // head 1: the diagonal, a partial tile; rows 33 and 12 beside them keep nothing.
    const Counts full = check(p, in, in, ValueAt{1, 1, 34, 3, value}, CausalDocsKillRows{}, true);
    EXPECT_EQ(full.nan_rows, 1);
    EXPECT_GT(full.masked_rows, 0);
    const Counts part = check(p, in, in, ValueAt{0, 1, 13, 13, value}, CausalDocsKillRows{}, true);
    EXPECT_EQ(part.nan_rows, 1);
  }
}

TEST_P(Numerics, NanAsTheOnlyKeptScore) {
  FLEXATTN_SEEDED_RNG(rng);
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 1, .Lq = 19, .Lkv = 19, .D = 16, .Dv = 16});
  p.block_q = p.block_kv = 16;
  const Inputs in = random_inputs(p.shape, p.dtype, rng);
  // Row 7 keeps key 7 alone and its score is NaN: max over the row's kept scores ignoring NaN is
  // -inf, yet the row is NaN, never fully masked.
  const Counts c = check(p, in, in, ValueAt{0, 1, 7, 7, kNaN}, OnlyDiagonalAt{7}, true);
  EXPECT_EQ(c.nan_rows, 1);
  // -inf there instead: the same as masked, so row 7 of head 1 is fully masked.
  const Counts m = check(p, in, in, ValueAt{0, 1, 7, 7, -kInf}, OnlyDiagonalAt{7}, true);
  EXPECT_EQ(m.nan_rows, 0);
  EXPECT_EQ(m.masked_rows, 1);
}

TEST_P(Numerics, MinusInfScoreIsMasked) {
  FLEXATTN_SEEDED_RNG(rng);
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 40, .Lkv = 33, .D = 16, .Dv = 8});
  p.block_q = p.block_kv = 16;
  const Inputs in = random_inputs(p.shape, p.dtype, rng);
  const Counts c = check(p, in, in, ValueAt{0, 0, 20, 5, -kInf}, noop_mask(), true);
  EXPECT_EQ(c.nan_rows, 0);
  EXPECT_EQ(c.masked_rows, 0);
}

// scale = 3e38: scores overflow to +-inf. D = 1 and |q| < 1, so scale * q stays finite and the
// product's sign is exact: the reference (scores as float32 quantities) agrees element by element.
TEST_P(Numerics, OverflowingScale) {
  FLEXATTN_SEEDED_RNG(rng);
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 1, .Lq = 21, .Lkv = 18, .D = 1, .Dv = 4});
  p.scale = 3e38f;
  p.block_q = p.block_kv = 16;
  Inputs in = random_inputs(p.shape, p.dtype, rng);
  for (float& x : in.q) x = reference::round_to(p.dtype, 0.9f * std::tanh(x));
  check(p, in, in, noop_score(), causal(), true);
  check(p, in, in, noop_score(), noop_mask(), false);
  // The tester's shape: D = 16, every key has a positive score (+inf): all rows NaN.
  p.shape.D = 16;
  Inputs big = random_inputs(p.shape, p.dtype, rng);
  for (float& x : big.q) x = 0.5f;
  for (size_t i = 0; i < big.k.size(); ++i) big.k[i] = (i / 16) % 3 == 1 ? -0.5f : 0.5f;
  const Counts c = check(p, big, big, noop_score(), noop_mask(), true);
  EXPECT_EQ(c.nan_rows, p.shape.lse_numel());
}

// ---- item 8: garbage in masked keys ---------------------------------------------------------------
TEST_P(Numerics, TesterReproCausal16) {
  FLEXATTN_SEEDED_RNG(rng);
  // Causal L = 16 with NaN in k[10] (then v[10]): rows 0..9 never see key 10.
  Problem p = problem({.B = 1, .Hq = 1, .Hkv = 1, .Lq = 16, .Lkv = 16, .D = 16, .Dv = 16});
  const Inputs in = random_inputs(p.shape, p.dtype, rng);
  for (int which = 0; which < 2; ++which) {
    const Inputs bad = with_bad_key(in, p.shape, 0, 10, kNaN, which == 0, which == 1);
    const Counts c = check(p, bad, in, noop_score(), causal(), true);
    EXPECT_EQ(c.finite_rows, which == 0 ? 10 : 16);
  }
}

TEST_P(Numerics, NonFiniteMaskedKeysAddNothing) {
  FLEXATTN_SEEDED_RNG(rng);
  // Bad key 10 of document 0 (keys [0, 40)): masked for rows 0..9 (a partial diagonal tile) and
  // for rows 40..76 of document 1 (partial tile rows 32..47, then empty tiles); kept by rows 10..39
  // (full tiles from row 16 on). GQA: kv head 1 only, so query heads 0, 1 stay clean.
  Problem p = problem({.B = 1, .Hq = 4, .Hkv = 2, .Lq = 77, .Lkv = 77, .D = 24, .Dv = 40});
  p.block_q = p.block_kv = 16;
  const Inputs in = random_inputs(p.shape, p.dtype, rng);
  const CausalDocs mask{40};
  for (float value : {kNaN, kInf, -kInf}) {
    for (int which = 0; which < 3; ++which) {  // K, V, both
      SCOPED_TRACE("value " + std::to_string(value) + " in " +
                   (which == 0 ? "k" : which == 1 ? "v" : "k and v"));
      const Inputs bad = with_bad_key(in, p.shape, 1, 10, value, which != 1, which != 0);
      check(p, bad, in, noop_score(), mask, true);
      check(p, bad, in, CustomScore{0.25f}, mask, true);
    }
  }
}

// q / dout copies with garbage in query row `row` of head `h`: element 1 of q, or every third
// element of dout (as with_bad_key does for k and v).
Inputs with_bad_query(const Inputs& in, const Shape& sh, int h, int row, float value, bool in_q) {
  Inputs bad = in;
  for (int64_t b = 0; b < sh.B; ++b) {
    const int64_t r = (b * sh.Hq + h) * sh.Lq + row;
    if (in_q) {
      bad.q[size_t(r * sh.D + 1)] = value;
    } else {
      for (int64_t e = 0; e < sh.Dv; e += 3) bad.dout[size_t(r * sh.Dv + e)] = value;
    }
  }
  return bad;
}

TEST_P(Numerics, NonFiniteQueryRowsAddNothingToMaskedKeys) {
  FLEXATTN_SEEDED_RNG(rng);
  // A bad q or dout row reaches dk / dv only of the keys it keeps: dK += dS^T Q and dV += P^T dO
  // would take 0 * NaN at the keys it masks. Head 3 row 20 masks keys 21..31 of its partial
  // diagonal tile; head 2 row 45 (document 1) masks the document 0 keys of tiles it shares with
  // rows 32..39; head 1 row 47 keeps nothing (fully masked: zero gradients, whatever it holds).
  Problem p = problem({.B = 1, .Hq = 4, .Hkv = 2, .Lq = 77, .Lkv = 77, .D = 24, .Dv = 40});
  p.block_q = p.block_kv = 16;
  const Inputs in = random_inputs(p.shape, p.dtype, rng);
  for (float value : {kNaN, kInf, -kInf}) {
    for (bool in_q : {true, false}) {
      SCOPED_TRACE("value " + std::to_string(value) + " in " + (in_q ? "q" : "dout"));
      Inputs bad = with_bad_query(in, p.shape, 3, 20, value, in_q);
      bad = with_bad_query(bad, p.shape, 2, 45, value, in_q);
      bad = with_bad_query(bad, p.shape, 1, 47, value, in_q);
      const Counts c = check(p, bad, in, noop_score(), CausalDocsKillRows{}, true);
      if (value != value) EXPECT_EQ(c.nan_rows, in_q ? 2 : 0);
      check(p, bad, in, CustomScore{0.25f}, CausalDocsKillRows{}, true);
    }
  }
  // Default 128 x 128 blocks: 128-row q tiles against 128-key pieces, a bad q row and a bad dout
  // row in one call.
  Problem big = problem({.B = 1, .Hq = 2, .Hkv = 1, .Lq = 150, .Lkv = 150, .D = 32, .Dv = 32});
  const Inputs in_big = random_inputs(big.shape, big.dtype, rng);
  Inputs bad = with_bad_query(in_big, big.shape, 0, 100, kNaN, true);
  bad = with_bad_query(bad, big.shape, 1, 30, kInf, false);
  check(big, bad, in_big, noop_score(), causal(), true);
}

TEST_P(Numerics, MaskedKeysInLargeTiles) {
  FLEXATTN_SEEDED_RNG(rng);
  // Default 128 x 128 blocks, ragged: the bad keys sit in a partial tile's 128-key chunk, and the
  // strided layout puts NaN in the padding columns (never read).
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 1, .Lq = 150, .Lkv = 150, .D = 32, .Dv = 32});
  p.strided = true;
  const Inputs in = random_inputs(p.shape, p.dtype, rng);
  Inputs bad = with_bad_key(in, p.shape, 0, 100, kNaN, true, true);
  bad = with_bad_key(bad, p.shape, 0, 140, kInf, false, true);
  check(p, bad, in, noop_score(), causal(), true);
}

TEST_P(Numerics, RowsPastTheEndAreNeverRead) {
  FLEXATTN_SEEDED_RNG(rng);
  // q, k, v are views of the first L rows of tensors with NaN rows after them.
  const Shape sh{.B = 2, .Hq = 2, .Hkv = 1, .Lq = 21, .Lkv = 37, .D = 16, .Dv = 16};
  const DType dt = GetParam();
  const Inputs in = random_inputs(sh, dt, rng);
  auto view_of = [&](const std::vector<float>& x, int64_t H, int64_t L, int64_t D, Tensor& t) {
    const int64_t Lpad = L + 7;
    std::vector<float> host(size_t(sh.B * H * Lpad * D), kNaN);
    for (int64_t bh = 0; bh < sh.B * H; ++bh)
      for (int64_t l = 0; l < L; ++l)
        for (int64_t e = 0; e < D; ++e)
          host[size_t((bh * Lpad + l) * D + e)] = x[size_t((bh * L + l) * D + e)];
    t = Tensor::from_host(host.data(), {sh.B, H, Lpad, D}, dt);
    TensorView v;
    v.data = t.data();
    v.dtype = dt;
    v.device = Device::cpu;
    v.rank = 4;
    v.shape[0] = sh.B, v.shape[1] = H, v.shape[2] = L, v.shape[3] = D;
    v.stride[0] = H * Lpad * D, v.stride[1] = Lpad * D, v.stride[2] = D, v.stride[3] = 1;
    return v;
  };
  Tensor tq, tk, tv;
  const TensorView q = view_of(in.q, sh.Hq, sh.Lq, sh.D, tq);
  const TensorView k = view_of(in.k, sh.Hkv, sh.Lkv, sh.D, tk);
  const TensorView v = view_of(in.v, sh.Hkv, sh.Lkv, sh.Dv, tv);
  const Operand out = Operand::make({sh.B, sh.Hq, sh.Lq, sh.Dv}, dt, false, nullptr);
  const Operand lse = Operand::make({sh.B, sh.Hq, sh.Lq}, DType::f32, false, nullptr);
  const auto mask = create_block_mask(causal(), sh.B, sh.Hq, sh.Lq, sh.Lkv, {.block_q = 16, .block_kv = 16});
  AttentionOptions opts;
  opts.enable_gqa = true;
  flex_attention_into(q, k, v, out.view, lse.view, noop_score(), mask, opts);
  const std::vector<float> got = out.read();
  int64_t nan = 0;
  for (float x : got) nan += std::isnan(x);
  EXPECT_EQ(nan, 0);
  const auto ref = reference::forward(sh, reference::to_double(in.q), reference::to_double(in.k),
                                      reference::to_double(in.v), 0.25, noop_score(), causal());
  const LowpForward naive = naive_forward_lowp(sh, dt, 0.25f, in.q, in.k, in.v, noop_score(), causal());
  expect_close("out", got, ref.out, naive.out, dt);
}

// ---- item 10: huge finite scores --------------------------------------------------------------------
TEST_P(Numerics, HugeFiniteScoresGiveFiniteGradients) {
  if (GetParam() == DType::f16) GTEST_SKIP() << "1e15 is outside the f16 range";
  FLEXATTN_SEEDED_RNG(rng);
  // |q|, |k| ~ 1e15: scores ~ 1e30, finite. p is one-hot (neighbouring scores differ by ~1e29),
  // out picks one v row, and every gradient is finite (dq = dk = 0, dv = the picked dout rows).
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 1, .Lq = 37, .Lkv = 41, .D = 16, .Dv = 16});
  p.block_q = p.block_kv = 16;
  const Inputs in = random_inputs(p.shape, p.dtype, rng, 1e15f);
  const Counts c = check(p, in, in, noop_score(), causal(), true);
  EXPECT_EQ(c.finite_rows, p.shape.lse_numel());
  check(p, in, in, noop_score(), noop_mask(), true);
  check(p, in, in, CustomScore{0.0f}, causal(), true);
  // Large but not one-hot: scores of a few hundred, where a log2-domain max is off by ulps.
  const Inputs mid = random_inputs(p.shape, p.dtype, rng, 6.0f);
  check(p, mid, mid, noop_score(), causal(), true);
  p.scale = -0.125f;  // a negative scale, folded into Q the same way forward and backward
  check(p, mid, mid, noop_score(), causal(), true);
}

// ---- item 9 end to end ------------------------------------------------------------------------------
TEST_P(Numerics, SqrtReluScoreModHasFiniteGradients) {
  FLEXATTN_SEEDED_RNG(rng);
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 33, .Lkv = 29, .D = 16, .Dv = 16});
  p.block_q = p.block_kv = 16;
  const Inputs in = random_inputs(p.shape, p.dtype, rng);
  const Counts c = check(p, in, in, SqrtRelu{}, causal(), true);
  EXPECT_EQ(c.nan_rows, 0);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Numerics, ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// ---- item 9: the math layer at its edges ------------------------------------------------------------
// Same value: both NaN, or equal (zeros of either sign equal), or within 4 float ulps.
::testing::AssertionResult same(double got, double want) {
  if (std::isnan(want) ? std::isnan(got)
                       : (got == want || (std::isfinite(want) &&
                                          std::fabs(got - want) <= 4.8e-7 * std::fabs(want))))
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << ", want " << want;
}

constexpr float kPi = 3.14159265358979f;
const float kNan = std::numeric_limits<float>::quiet_NaN();

struct Case {
  const char* name;
  Dual (*dual)(Dual);
  float (*flt)(float);
  double (*dbl)(double);
  float x;
  double value, deriv;
};

TEST(MathLayer, UnaryFunctionsAtTheirEdges) {
  using flexattn::Dual;
  const double inf = std::numeric_limits<double>::infinity(), nan = kNan;
#define FN(f) \
  [](Dual a) { return flexattn::f(a); }, [](float a) { return flexattn::f(a); }, [](double a) { return flexattn::f(a); }
  const Case cases[] = {
      {"exp", FN(exp), 0.0f, 1.0, 1.0},
      {"exp", FN(exp), -kInf, 0.0, 0.0},
      {"exp", FN(exp), kInf, inf, inf},
      {"exp", FN(exp), 200.0f, inf, inf},
      {"exp", FN(exp), -200.0f, 0.0, 0.0},
      {"exp", FN(exp), kNan, nan, nan},
      {"exp2", FN(exp2), 3.0f, 8.0, 8.0 * std::log(2.0)},
      {"exp2", FN(exp2), -kInf, 0.0, 0.0},
      {"exp2", FN(exp2), kNan, nan, nan},
      {"log", FN(log), 1.0f, 0.0, 1.0},
      {"log", FN(log), 0.0f, -inf, inf},
      {"log", FN(log), -0.0f, -inf, inf},
      {"log", FN(log), kInf, inf, 0.0},
      {"log", FN(log), -1.0f, nan, -1.0},
      {"log", FN(log), kNan, nan, nan},
      {"log2", FN(log2), 8.0f, 3.0, 1.0 / (8.0 * std::log(2.0))},
      {"log2", FN(log2), 0.0f, -inf, inf},
      {"log2", FN(log2), -0.0f, -inf, inf},
      {"tanh", FN(tanh), 0.0f, 0.0, 1.0},
      {"tanh", FN(tanh), 30.0f, 1.0, 0.0},
      {"tanh", FN(tanh), -30.0f, -1.0, 0.0},
      {"tanh", FN(tanh), kInf, 1.0, 0.0},
      {"tanh", FN(tanh), -kInf, -1.0, 0.0},
      {"tanh", FN(tanh), kNan, nan, nan},
      {"sqrt", FN(sqrt), 4.0f, 2.0, 0.25},
      {"sqrt", FN(sqrt), 0.0f, 0.0, inf},
      {"sqrt", FN(sqrt), -0.0f, 0.0, inf},
      {"sqrt", FN(sqrt), kInf, inf, 0.0},
      {"sqrt", FN(sqrt), -1.0f, nan, nan},
      {"sqrt", FN(sqrt), kNan, nan, nan},
      {"sin", FN(sin), 0.0f, 0.0, 1.0},
      {"sin", FN(sin), kPi / 2, 1.0, std::cos(double(kPi / 2))},
      {"sin", FN(sin), kInf, nan, nan},
      {"sin", FN(sin), kNan, nan, nan},
      {"cos", FN(cos), 0.0f, 1.0, 0.0},
      {"cos", FN(cos), kInf, nan, nan},
      {"abs", FN(abs), -2.0f, 2.0, -1.0},
      {"abs", FN(abs), 3.0f, 3.0, 1.0},
      {"abs", FN(abs), 0.0f, 0.0, 0.0},
      {"abs", FN(abs), -0.0f, 0.0, 0.0},
      {"abs", FN(abs), -kInf, inf, -1.0},
      {"abs", FN(abs), kNan, nan, nan},
      {"sigmoid", FN(sigmoid), 0.0f, 0.5, 0.25},
      {"sigmoid", FN(sigmoid), 200.0f, 1.0, 0.0},
      {"sigmoid", FN(sigmoid), -200.0f, 0.0, 0.0},
      {"sigmoid", FN(sigmoid), kInf, 1.0, 0.0},
      {"sigmoid", FN(sigmoid), -kInf, 0.0, 0.0},
      {"sigmoid", FN(sigmoid), kNan, nan, nan},
  };
#undef FN
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.name) + "(" + std::to_string(c.x) + ")");
    const Dual d = c.dual(Dual{c.x, 1.0f});
    EXPECT_TRUE(same(d.v, c.value)) << "Dual value";
    EXPECT_TRUE(same(d.d, c.deriv)) << "Dual derivative";
    EXPECT_TRUE(same(c.flt(c.x), c.value)) << "float";
    if (!(std::fabs(c.x) > 100.0f && std::isfinite(c.x)))  // float overflow / underflow only
      EXPECT_TRUE(same(c.dbl(double(c.x)), c.value)) << "double";
    EXPECT_TRUE(same(d.v, c.flt(c.x))) << "Dual value vs float";
    // A zero derivative in gives a zero derivative out, even where f' is inf or NaN.
    const Dual flat = c.dual(Dual{c.x, 0.0f});
    EXPECT_EQ(flat.d, 0.0f) << "chain rule with d = 0";
  }
  // fast_tanh: absolute error ~1e-7, exact limits.
  for (float x : {0.0f, 0.3f, -2.0f, 20.0f, -20.0f, 100.0f, kInf, -kInf}) {
    SCOPED_TRACE("fast_tanh(" + std::to_string(x) + ")");
    const Dual t = flexattn::fast_tanh(Dual{x, 1.0f});
    EXPECT_NEAR(t.v, std::tanh(double(x)), 3e-7);
    EXPECT_NEAR(t.d, 1.0 - std::tanh(double(x)) * std::tanh(double(x)), 1e-6);
    EXPECT_EQ(flexattn::fast_tanh(x), t.v);
  }
  EXPECT_TRUE(std::isnan(flexattn::fast_tanh(kNan)));
  EXPECT_TRUE(std::isnan(flexattn::fast_tanh(Dual{kNan, 1.0f}).d));
}

TEST(MathLayer, PowAtZero) {
  using flexattn::Dual;
  const double inf = std::numeric_limits<double>::infinity();
  struct P {
    float x, y;
    double value, deriv;
  };
  const P cases[] = {
      {0.0f, 0.5f, 0.0, inf},   {0.0f, 0.0f, 1.0, 0.0},   {0.0f, 1.0f, 0.0, 1.0},
      {0.0f, 2.0f, 0.0, 0.0},   {0.0f, -1.0f, inf, -inf}, {-0.0f, 0.5f, 0.0, inf},
      {4.0f, 0.5f, 2.0, 0.25},  {-2.0f, 2.0f, 4.0, -4.0}, {-2.0f, 3.0f, -8.0, 12.0},
      {2.0f, 0.0f, 1.0, 0.0},   {kNan, 0.0f, 1.0, 0.0},   {kInf, 0.5f, inf, 0.0},
      {-1.0f, 0.5f, kNan, kNan},
  };
  for (const P& c : cases) {
    SCOPED_TRACE("pow(" + std::to_string(c.x) + ", " + std::to_string(c.y) + ")");
    const Dual r = flexattn::pow(Dual{c.x, 1.0f}, c.y);
    EXPECT_TRUE(same(r.v, c.value));
    EXPECT_TRUE(same(r.d, c.deriv));
    EXPECT_TRUE(same(flexattn::pow(c.x, c.y), c.value));
    EXPECT_TRUE(same(flexattn::pow(double(c.x), double(c.y)), c.value));
    EXPECT_EQ(flexattn::pow(Dual{c.x, 0.0f}, c.y).d, 0.0f);
  }
  // The tester's score_mod: pow(max(s, 0), 0.5) - s.
  const SqrtRelu f;
  const Dual neg = f(Dual{-0.7f, 1.0f}, 0, 0, 0, 0);
  EXPECT_EQ(neg.v, 0.7f);
  EXPECT_EQ(neg.d, -1.0f);
  const Dual pos = f(Dual{4.0f, 1.0f}, 0, 0, 0, 0);
  EXPECT_EQ(pos.v, -2.0f);
  EXPECT_FLOAT_EQ(pos.d, -0.75f);
  EXPECT_EQ(f(0.0f, 0, 0, 0, 0), 0.0f);
}

TEST(MathLayer, MaxMinWherePropagateNan) {
  using flexattn::Dual;
  // max / min: NaN in either argument gives NaN; ties take the first argument.
  for (auto mx : {+[](float a, float b) { return flexattn::max(a, b); },
                  +[](float a, float b) { return flexattn::min(a, b); }}) {
    EXPECT_TRUE(std::isnan(mx(kNan, 1.0f)));
    EXPECT_TRUE(std::isnan(mx(1.0f, kNan)));
  }
  EXPECT_EQ(flexattn::max(2.0f, -kInf), 2.0f);
  EXPECT_EQ(flexattn::min(2.0f, -kInf), -kInf);
  EXPECT_TRUE(std::isnan(flexattn::max(kNan, 1.0)));
  EXPECT_TRUE(std::isnan(flexattn::min(1.0, std::nan(""))));
  EXPECT_EQ(flexattn::max(1.0, 2.0), 2.0);
  const Dual a{1.0f, 1.0f}, b{1.0f, 2.0f}, n{kNan, 1.0f};
  EXPECT_EQ(flexattn::max(a, b).d, 1.0f);  // tie: the first argument
  EXPECT_EQ(flexattn::min(b, a).d, 2.0f);
  EXPECT_TRUE(std::isnan(flexattn::max(n, a).v));
  EXPECT_TRUE(std::isnan(flexattn::max(a, n).v));
  EXPECT_TRUE(std::isnan(flexattn::min(a, n).v));
  EXPECT_TRUE(std::isnan(flexattn::max(n, 0.0f).v));
  EXPECT_TRUE(std::isnan(flexattn::max(Dual{1.0f, 1.0f}, kNan).v));
  EXPECT_TRUE(std::isnan(flexattn::max(0.0f, n).v));
  const Dual lo = flexattn::max(Dual{-3.0f, 1.0f}, 0.0f);
  EXPECT_EQ(lo.v, 0.0f);
  EXPECT_EQ(lo.d, 0.0f);
  const Dual hi = flexattn::min(5.0f, Dual{7.0f, 1.0f});
  EXPECT_EQ(hi.v, 5.0f);
  EXPECT_EQ(hi.d, 0.0f);
  EXPECT_EQ(flexattn::where(true, Dual{1.0f, 3.0f}, 2.0f).d, 3.0f);
  EXPECT_EQ(flexattn::where(false, Dual{1.0f, 3.0f}, 2.0f).d, 0.0f);
  EXPECT_TRUE(std::isnan(flexattn::where(false, 1.0f, Dual{kNan, kNan}).v));
}

TEST(MathLayer, DivisionAndProducts) {
  using flexattn::Dual;
  const float inf = kInf;
  // d(a / b) = (a.d - (a / b) b.d) / b, without b * b: no overflow for |b| ~ 1e20.
  const Dual q = Dual{1e20f, 1.0f} / Dual{2e20f, 1.0f};
  EXPECT_FLOAT_EQ(q.v, 0.5f);
  EXPECT_NEAR(q.d, (1.0 - 0.5) / 2e20, 1e-27);
  const Dual r = 3.0f / Dual{1e20f, 1.0f};
  EXPECT_NEAR(r.d, -3.0 / 1e40, 2e-45);  // a float subnormal
  EXPECT_NE(r.d, 0.0f);
  // Division by zero: IEEE infinities; a constant divided by a constant zero keeps derivative 0.
  EXPECT_EQ((Dual{1.0f, 1.0f} / 0.0f).d, inf);
  EXPECT_EQ((Dual{1.0f, 0.0f} / 0.0f).d, 0.0f);
  EXPECT_EQ((Dual{1.0f, 0.0f} / Dual{0.0f, 0.0f}).d, 0.0f);
  EXPECT_EQ((1.0f / Dual{0.0f, 0.0f}).d, 0.0f);
  EXPECT_EQ((1.0f / Dual{0.0f, 0.0f}).v, inf);
  EXPECT_EQ((Dual{2.0f, 1.0f} / Dual{0.0f, 0.0f}).d, inf);
  // Products: a zero derivative times an infinite value adds nothing.
  EXPECT_EQ((Dual{0.0f, 0.0f} * Dual{inf, 1.0f}).d, 0.0f);
  EXPECT_EQ((Dual{2.0f, 1.0f} * Dual{3.0f, 0.0f}).d, 3.0f);
  EXPECT_EQ((Dual{2.0f, 0.0f} * inf).d, 0.0f);
  EXPECT_EQ((Dual{2.0f, 1.0f} * 3.0).d, 3.0f);
  EXPECT_EQ((4 * Dual{2.0f, 1.0f}).d, 4.0f);
  EXPECT_EQ((Dual{2.0f, 1.0f} - Dual{5.0f, 1.0f}).d, 0.0f);
  EXPECT_TRUE(std::isnan((Dual{kNan, 1.0f} * 2.0f).v));
  EXPECT_TRUE(std::isnan((Dual{2.0f, kNan} * 2.0f).d));
}

}  // namespace
}  // namespace flexattn::testing
