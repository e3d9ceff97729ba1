// The mods layer: dual-number derivatives of every math function and operator against central
// differences in double, the stock score_mods' values and derivatives, the stock mask_mods'
// semantics, their tile rules against brute force on small grids, and the functor concepts.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <functional>
#include <sstream>
#include <vector>

#include <flexattn/flexattn.h>

#include "reference/reference.h"
#include "test_functors.h"

namespace flexattn::testing {
namespace {

// d f / dx at x by central difference in double.
double central_difference(const std::function<double(double)>& f, double x) {
  const double h = 1e-6 * std::max(1.0, std::fabs(x));
  return (f(x + h) - f(x - h)) / (2.0 * h);
}

// Dual evaluation of `fd` at x (seed derivative `seed`) against the double function f64.
void expect_derivative(const char* name, const std::function<Dual(Dual)>& fd,
                       const std::function<double(double)>& f64, double x, float seed = 1.0f) {
  const Dual y = fd(Dual{float(x), seed});
  const double want_v = f64(double(float(x)));
  const double want_d = seed * central_difference(f64, double(float(x)));
  EXPECT_NEAR(y.v, want_v, 4e-7 * std::max(1.0, std::fabs(want_v))) << name << " value at " << x;
  EXPECT_NEAR(y.d, want_d, 2e-5 * std::max(1.0, std::fabs(want_d)))
      << name << " derivative at " << x;
}

TEST(Dual, ElementaryFunctions) {
  struct Case {
    const char* name;
    std::function<Dual(Dual)> fd;
    std::function<double(double)> f64;
    std::vector<double> xs;
  };
  const std::vector<double> any = {-2.7, -0.45, 0.3, 1.9};
  const std::vector<double> pos = {0.07, 0.8, 3.5, 40.0};
  const Case cases[] = {
      {"exp", [](Dual x) { return exp(x); }, [](double x) { return std::exp(x); }, any},
      {"exp2", [](Dual x) { return exp2(x); }, [](double x) { return std::exp2(x); }, any},
      {"log", [](Dual x) { return log(x); }, [](double x) { return std::log(x); }, pos},
      {"log2", [](Dual x) { return log2(x); }, [](double x) { return std::log2(x); }, pos},
      {"tanh", [](Dual x) { return tanh(x); }, [](double x) { return std::tanh(x); }, any},
      // fast_tanh's error is absolute (~1e-7), within the value tolerance below.
      {"fast_tanh", [](Dual x) { return fast_tanh(x); }, [](double x) { return std::tanh(x); },
       any},
      {"sqrt", [](Dual x) { return sqrt(x); }, [](double x) { return std::sqrt(x); }, pos},
      {"sin", [](Dual x) { return sin(x); }, [](double x) { return std::sin(x); }, any},
      {"cos", [](Dual x) { return cos(x); }, [](double x) { return std::cos(x); }, any},
      {"abs", [](Dual x) { return abs(x); }, [](double x) { return std::fabs(x); }, any},
      {"sigmoid", [](Dual x) { return sigmoid(x); },
       [](double x) { return 1.0 / (1.0 + std::exp(-x)); }, any},
      {"pow 2.5", [](Dual x) { return pow(x, 2.5f); }, [](double x) { return std::pow(x, 2.5); },
       pos},
      {"pow -1.5", [](Dual x) { return pow(x, -1.5f); }, [](double x) { return std::pow(x, -1.5); },
       pos},
      {"pow 3", [](Dual x) { return pow(x, 3.0f); }, [](double x) { return x * x * x; }, any},
      {"max", [](Dual x) { return max(x, Dual(0.5f)); }, [](double x) { return std::max(x, 0.5); },
       any},
      {"min", [](Dual x) { return min(x, Dual(0.5f)); }, [](double x) { return std::min(x, 0.5); },
       any},
      {"max float", [](Dual x) { return max(x, -1.0f); },
       [](double x) { return std::max(x, -1.0); }, any},
      {"min float", [](Dual x) { return min(x, -1.0f); },
       [](double x) { return std::min(x, -1.0); }, any},
      {"where", [](Dual x) { return where(x > 0.0f, x * x, -x); },
       [](double x) { return x > 0 ? x * x : -x; }, any},
      {"where float", [](Dual x) { return where(x < 1.0f, 2.0f, x); },
       [](double x) { return x < 1 ? 2.0 : x; }, any},
      {"where float 2", [](Dual x) { return where(x < 1.0f, x, 2.0f); },
       [](double x) { return x < 1 ? x : 2.0; }, any},
  };
  for (const Case& c : cases) {
    for (double x : c.xs) {
      expect_derivative(c.name, c.fd, c.f64, x);
      expect_derivative(c.name, c.fd, c.f64, x, -2.5f);  // forward mode is linear in the seed
    }
  }
}

TEST(Dual, ArithmeticAndMixedScalars) {
  // Every operator with Dual on either side, against float, double and int constants.
  const auto fd = [](Dual x) {
    Dual y = (x * x + 3.0f) / (x - 5) - 2.0 / x + 2.5 * x - (1 - x) * 0.5f + x / 4 + (+x) * (-x);
    y += x;
    y -= 0.5f * x;
    y *= x + 1.0;
    y /= 2 + x * x;
    return y + 7 - x / (x + x) + (3 + x) - (x - 1.0);
  };
  const auto f64 = [](double x) {
    double y = (x * x + 3.0) / (x - 5) - 2.0 / x + 2.5 * x - (1 - x) * 0.5 + x / 4 + x * (-x);
    y += x;
    y -= 0.5 * x;
    y *= x + 1.0;
    y /= 2 + x * x;
    return y + 7 - x / (x + x) + (3 + x) - (x - 1.0);
  };
  for (double x : {-2.3, -0.7, 0.4, 1.3, 3.1}) expect_derivative("arithmetic", fd, f64, x);
  // Comparisons look at the value only.
  const Dual a{1.0f, 5.0f}, b{2.0f, -3.0f};
  EXPECT_TRUE(a < b && b > a && a <= b && b >= a && a < 1.5f && a > 0.5 && a <= 1 && a >= 1);
  EXPECT_TRUE(0.5f < a && 2 > a);
  EXPECT_EQ(value_of(a), 1.0f);
  EXPECT_EQ(value_of(3.0f), 3.0f);
}

// ---- stock score_mods
// -------------------------------------------------------------------------------
template <class S>
void expect_score_mod_derivative(const char* name, const S& mod) {
  for (double s : {-3.1, -0.2, 0.6, 2.4})
    for (auto [b, h, q, kv] : {std::array{0, 0, 5, 3}, {1, 2, 0, 9}, {0, 3, 17, 17}}) {
      const Dual y = mod(Dual{float(s), 1.0f}, b, h, q, kv);
      const float yf = mod(float(s), b, h, q, kv);
      EXPECT_FLOAT_EQ(y.v, yf) << name << ": Dual value differs from the float call";
      const double want = reference::score_mod_derivative(mod, double(float(s)), b, h, q, kv);
      EXPECT_NEAR(y.d, want, 2e-5 * std::max(1.0, std::fabs(want))) << name << " at s=" << s;
    }
}

TEST(ScoreMods, Values) {
  EXPECT_EQ(noop_score()(1.25f, 1, 2, 3, 4), 1.25f);
  EXPECT_EQ(relative_position()(1.25f, 0, 0, 10, 3), 1.25f + 7.0f);
  EXPECT_EQ(relative_position()(1.25f, 0, 0, 3, 10), 1.25f - 7.0f);
  const Alibi a = alibi(8);
  for (int h = 0; h < 8; ++h) {
    EXPECT_FLOAT_EQ(a.slope(h), float(std::exp2(-8.0 * (h + 1) / 8.0)));  // 2^-(h+1)
    EXPECT_FLOAT_EQ(a(0.5f, 0, h, 10, 4), 0.5f + a.slope(h) * float(4 - 10));
  }
  EXPECT_FLOAT_EQ(alibi(12).slope(5), float(std::exp2(-8.0 * 6 / 12.0)));
  EXPECT_FLOAT_EQ(softcap(30.0f)(45.0f, 0, 0, 0, 0), float(30.0 * std::tanh(1.5)));
  EXPECT_LT(softcap(2.0f)(1000.0f, 0, 0, 0, 0), 2.0f + 1e-6f);
  // compose(f, g) = g(f(...)): softcap after relative_position.
  const auto c = compose(relative_position(), softcap(4.0f));
  EXPECT_FLOAT_EQ(c(1.0f, 0, 0, 6, 2), softcap(4.0f)(5.0f, 0, 0, 6, 2));
  // The double path (reference) agrees with the float path.
  EXPECT_NEAR(c(1.0, 0, 0, 6, 2), double(c(1.0f, 0, 0, 6, 2)), 1e-6);
}

TEST(ScoreMods, AlibiSlopesAccurate) {
  // Every slope 2^(-8 (h+1) / H) within 2 float ulps of the double value, for H up to 128.
  for (int heads = 1; heads <= 128; ++heads) {
    const Alibi a = alibi(heads);
    for (int h = 0; h < heads; ++h) {
      const double want = std::exp2(-8.0 * (h + 1) / heads);
      EXPECT_NEAR(a.slope(h), want, 2.0 * std::ldexp(want, -23)) << "heads=" << heads << " h=" << h;
    }
  }
}

TEST(ScoreMods, DualDerivatives) {
  expect_score_mod_derivative("noop", noop_score());
  expect_score_mod_derivative("relative_position", relative_position());
  expect_score_mod_derivative("alibi", alibi(4));
  expect_score_mod_derivative("softcap", softcap(2.0f));
  expect_score_mod_derivative("softcap 30", softcap(30.0f));
  expect_score_mod_derivative("compose", compose(alibi(4), softcap(3.0f)));
  expect_score_mod_derivative("compose nested",
                              compose(softcap(5.0f), compose(relative_position(), CustomScore{})));
  expect_score_mod_derivative("custom", CustomScore{0.3f});
  expect_score_mod_derivative("lambda", lambda_score());
}

// ---- stock mask_mods
// ----------------------------------------------------------------------------------
TEST(MaskMods, Semantics) {
  const std::vector<int32_t> ids = {0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 4,
                                    4, 4, 5, 5, 6, 6, 6, 6, 6, 7, 7, 7};
  const auto doc = document(ids.data());
  for (int q = 0; q < 20; ++q)
    for (int kv = 0; kv < 25; ++kv) {
      SCOPED_TRACE("q=" + std::to_string(q) + " kv=" + std::to_string(kv));
      EXPECT_TRUE(noop_mask()(1, 2, q, kv));
      EXPECT_EQ(causal()(0, 0, q, kv), kv <= q);
      for (int w : {0, 1, 4}) EXPECT_EQ(sliding_window(w)(0, 0, q, kv), q - kv >= 0 && q - kv <= w);
      for (int p : {0, 3, 30}) EXPECT_EQ(prefix_lm(p)(0, 0, q, kv), kv < p || kv <= q);
      EXPECT_EQ(doc(0, 0, q, kv), ids[q] == ids[kv]);
      EXPECT_EQ(and_masks(causal(), doc)(0, 0, q, kv), kv <= q && ids[q] == ids[kv]);
      EXPECT_EQ(or_masks(sliding_window(2), prefix_lm(3), doc)(0, 0, q, kv),
                (q - kv >= 0 && q - kv <= 2) || kv < 3 || kv <= q || ids[q] == ids[kv]);
      EXPECT_EQ(not_mask(causal())(0, 0, q, kv), kv > q);
      EXPECT_EQ(and_masks(causal())(0, 0, q, kv), kv <= q);  // one mask: itself
    }
}

// tile_kind must be exact whenever it answers; `decisive` masks must always answer.
template <class M>
void expect_tile_rule(const char* name, const M& m, int Lq, int Lkv, bool decisive) {
  SCOPED_TRACE(name);
  int64_t wrong = 0, undecided = 0, tiles = 0;
  std::ostringstream first;
  for (int q0 = 0; q0 < Lq; ++q0)
    for (int q1 = q0 + 1; q1 <= Lq; ++q1)
      for (int k0 = 0; k0 < Lkv; ++k0)
        for (int k1 = k0 + 1; k1 <= Lkv; ++k1) {
          ++tiles;
          const TileKind t = m.tile_kind(0, 0, q0, q1, k0, k1);
          if (t == TileKind::unknown) {
            undecided += 1;
            continue;
          }
          bool kept = false, dropped = false;
          for (int q = q0; q < q1; ++q)
            for (int kv = k0; kv < k1; ++kv) (m(0, 0, q, kv) ? kept : dropped) = true;
          const TileKind want = kept && dropped ? TileKind::partial
                                : kept          ? TileKind::full
                                                : TileKind::empty;
          if (t != want && wrong++ == 0)
            first << "rows [" << q0 << "," << q1 << ") cols [" << k0 << "," << k1 << "): got "
                  << int(t) << ", expected " << int(want);
        }
  EXPECT_EQ(wrong, 0) << wrong << " of " << tiles << " tiles misclassified; first: " << first.str();
  if (decisive) EXPECT_EQ(undecided, 0) << "a band-shaped mask left tiles unknown";
}

TEST(MaskMods, TileRulesMatchBruteForce) {
  const int Lq = 11, Lkv = 13;
  const std::vector<int32_t> sorted = {0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 4, 5, 5};
  const std::vector<int32_t> unsorted = {2, 0, 0, 1, 2, 2, 0, 3, 3, 1, 1, 5, 0};
  expect_tile_rule("noop", noop_mask(), Lq, Lkv, true);
  expect_tile_rule("causal", causal(), Lq, Lkv, true);
  for (int w : {0, 1, 4, 30}) expect_tile_rule("sliding_window", sliding_window(w), Lq, Lkv, true);
  for (int p : {0, 3, 7, 20}) expect_tile_rule("prefix_lm", prefix_lm(p), Lq, Lkv, true);
  expect_tile_rule("not causal", not_mask(causal()), Lq, Lkv, true);
  expect_tile_rule("not sliding_window", not_mask(sliding_window(3)), Lq, Lkv, true);
  expect_tile_rule("document sorted", document(sorted.data()), Lq, Lkv, false);
  expect_tile_rule("document unsorted", document(unsorted.data()), Lq, Lkv, false);
  expect_tile_rule("causal & document", and_masks(causal(), document(sorted.data())), Lq, Lkv,
                   false);
  expect_tile_rule("window | prefix", or_masks(sliding_window(2), prefix_lm(4)), Lq, Lkv, false);
  expect_tile_rule("causal & !window", and_masks(causal(), not_mask(sliding_window(3))), Lq, Lkv,
                   false);
  expect_tile_rule("!(causal & document)", not_mask(and_masks(causal(), document(unsorted.data()))),
                   Lq, Lkv, false);
  expect_tile_rule("window | document | prefix",
                   or_masks(sliding_window(1), document(unsorted.data()), prefix_lm(2)), Lq, Lkv,
                   false);
}

// ---- concepts
// ------------------------------------------------------------------------------------------
struct FloatOnlyScore {
  float operator()(float s, int, int, int, int) const { return s; }
};
struct WrongArityScore {
  template <class T>
  T operator()(T s, int, int) const {
    return s;
  }
};
struct NonConstScore {
  template <class T>
  T operator()(T s, int, int, int, int) {
    return s;
  }
};
struct NonCopyableScore {
  NonCopyableScore() = default;
  NonCopyableScore(const NonCopyableScore&) = delete;
  template <class T>
  T operator()(T s, int, int, int, int) const {
    return s;
  }
};
struct VoidMask {
  void operator()(int, int, int, int) const {}
};
struct WrongArityMask {
  bool operator()(int, int) const { return true; }
};

static_assert(ScoreModFunctor<NoopScore> && DifferentiableScoreModFunctor<NoopScore>);
static_assert(DifferentiableScoreModFunctor<RelativePosition>);
static_assert(DifferentiableScoreModFunctor<Alibi>);
static_assert(DifferentiableScoreModFunctor<Softcap>);
static_assert(DifferentiableScoreModFunctor<Composed<Alibi, Softcap>>);
static_assert(DifferentiableScoreModFunctor<CustomScore>);
static_assert(DifferentiableScoreModFunctor<decltype(lambda_score())>);
static_assert(ScoreModFunctor<FloatOnlyScore> && !DifferentiableScoreModFunctor<FloatOnlyScore>);
static_assert(!ScoreModFunctor<WrongArityScore>);
static_assert(!ScoreModFunctor<NonConstScore>);
static_assert(!ScoreModFunctor<NonCopyableScore>);
static_assert(!ScoreModFunctor<int>);
static_assert(!ScoreModFunctor<CausalMask>);

static_assert(MaskModFunctor<NoopMask> && MaskModFunctor<CausalMask> &&
              MaskModFunctor<DocumentMask>);
static_assert(MaskModFunctor<AndMask<CausalMask, NotMask<SlidingWindowMask>>>);
static_assert(MaskModFunctor<OrMask<PrefixLMMask, DocumentMask>>);
static_assert(MaskModFunctor<decltype(lambda_mask())> && MaskModFunctor<PerBatchHeadMask>);
static_assert(!MaskModFunctor<VoidMask>);
static_assert(!MaskModFunctor<WrongArityMask>);
static_assert(!MaskModFunctor<Softcap>);

static_assert(HasTileRule<NoopMask> && HasTileRule<CausalMask> && HasTileRule<SlidingWindowMask>);
static_assert(HasTileRule<PrefixLMMask> && HasTileRule<DocumentMask>);
static_assert(HasTileRule<AndMask<CausalMask, DocumentMask>> && HasTileRule<NotMask<CausalMask>>);
static_assert(!HasTileRule<decltype(lambda_mask())> && !HasTileRule<PerBatchHeadMask>);

TEST(Concepts, CheckedAtCompileTime) { SUCCEED() << "the static_asserts above compiled"; }

}  // namespace
}  // namespace flexattn::testing
