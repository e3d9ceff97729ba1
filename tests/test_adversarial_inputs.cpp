// Adversarial inputs of issue 8: sizes whose products overflow, hand-built views (bad rank, null
// data, strides whose offsets overflow), degenerate stock parameters, null pointers. Each must
// throw flexattn::Error naming the called function and the argument before anything is allocated
// or written - never crash (the core label also runs under ASan + UBSan), never a std::
// exception, never a silent success.
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "attn_check.h"
#include "error_match.h"

namespace flexattn::testing {
namespace {

constexpr float kNaNf = std::numeric_limits<float>::quiet_NaN();
constexpr float kInff = std::numeric_limits<float>::infinity();

bool all_nan(const Operand& o) {
  for (float x : o.storage.to_host())
    if (!std::isnan(x)) return false;
  return true;
}

// A valid problem seen through views: q [1,2,5,4], k/v [1,2,7,4]; outputs poisoned with NaN.
struct Views {
  Operand q, k, v, dout, out, lse, dq, dk, dv;
  BlockMask<CausalMask> mask = create_block_mask(causal(), 1, 1, 5, 7);
  AttentionOptions opts;

  Views() {
    std::mt19937_64 rng(test_seed());
    auto in = [&](std::vector<int64_t> shape) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      const std::vector<float> x = random_input(n, DType::f32, rng);
      return Operand::make(shape, DType::f32, false, &x);
    };
    q = in({1, 2, 5, 4});
    k = in({1, 2, 7, 4});
    v = in({1, 2, 7, 4});
    dout = in({1, 2, 5, 4});
    out = Operand::make({1, 2, 5, 4}, DType::f32, false, nullptr);
    lse = Operand::make({1, 2, 5}, DType::f32, false, nullptr);
    dq = Operand::make({1, 2, 5, 4}, DType::f32, false, nullptr);
    dk = Operand::make({1, 2, 7, 4}, DType::f32, false, nullptr);
    dv = Operand::make({1, 2, 7, 4}, DType::f32, false, nullptr);
  }
  void forward() const {
    flex_attention_into(q.view, k.view, v.view, out.view, lse.view, noop_score(), mask, opts);
  }
  void backward() const {
    flex_attention_backward_into(q.view, k.view, v.view, out.view, lse.view, dout.view, dq.view,
                                 dk.view, dv.view, noop_score(), mask, opts);
  }
  bool untouched() const {
    return all_nan(out) && all_nan(lse) && all_nan(dq) && all_nan(dk) && all_nan(dv);
  }
};

// The forward and the backward get the same bad views: both must refuse them under their own
// names, outputs untouched.
void expect_both(Views& a, std::initializer_list<const char*> words) {
  expect_error_from("flex_attention", [&] { a.forward(); }, words);
  EXPECT_TRUE(a.untouched()) << "an output was written by a forward that threw";
  expect_error_from("flex_attention_backward", [&] { a.backward(); }, words);
  EXPECT_TRUE(a.untouched()) << "an output was written by a backward that threw";
}

// ---- item 1: Tensor sizes -----------------------------------------------------------------------
TEST(Adversarial, TensorEmptyRefusesOverflowingShapes) {
  // 2^62 elements * 4 bytes wraps to 0 bytes in size_t.
  expect_error_from(
      "Tensor::empty", [] { Tensor::empty({1LL << 31, 1LL << 31, 1, 1}, DType::f32); },
      {"shape", "2147483648", "f32"});
  // 2^64 elements: the element count itself overflows int64.
  expect_error_from(
      "Tensor::empty", [] { Tensor::empty({1LL << 32, 1LL << 32, 1, 1}, DType::f32); },
      {"shape", "4294967296"});
  expect_error_from("Tensor::empty", [] { Tensor::empty({INT64_MAX, 2}, DType::f16); }, {"shape"});
  // The element count fits, the byte count (2^61 * 4) does not.
  expect_error_from("Tensor::empty", [] { Tensor::empty({1LL << 61}, DType::f32); }, {"shape"});
  expect_error_from("Tensor::empty", [] { Tensor::empty({1LL << 62, 2}, DType::bf16); }, {"shape"});
  // A zero dim makes any shape empty: no overflow to report.
  const Tensor z = Tensor::empty({0, 1LL << 62, 1LL << 62}, DType::f32);
  EXPECT_EQ(z.numel(), 0);
  expect_error_from("Tensor::empty", [] { Tensor::empty({2, -1}, DType::f32); }, {"shape", "-1"});
  expect_error_from("Tensor::empty", [] { Tensor::empty({}, DType::f32); }, {"shape"});
  expect_error_from("Tensor::empty", [] { Tensor::empty({1, 1, 1, 1, 1}, DType::f32); },
                    {"shape", "5"});
}

TEST(Adversarial, TensorHostCopiesRefuseNull) {
  expect_error_from("Tensor::from_host", [] { Tensor::from_host(nullptr, {2, 3}, DType::f32); },
                    {"src", "6"});
  expect_error_from("Tensor::from_host",
                    [] { Tensor::from_host(nullptr, {1LL << 31, 1LL << 31, 1, 1}, DType::f32); },
                    {"shape"});
  EXPECT_NO_THROW(Tensor::from_host(nullptr, {0, 3}, DType::f16));  // nothing to read
  const float x[6] = {1, 2, 3, 4, 5, 6};
  const Tensor t = Tensor::from_host(x, {2, 3}, DType::bf16);
  float* const no_floats = nullptr;
  expect_error_from("Tensor::copy_to_host", [&] { t.copy_to_host(no_floats); }, {"dst", "6"});
  const Tensor e = Tensor::empty({3, 0}, DType::f32);
  EXPECT_NO_THROW(e.copy_to_host(no_floats));
  int32_t* const no_ints = nullptr;
  const int32_t ids[6] = {1, 2, 3, 4, 5, 6};
  expect_error_from("Tensor::from_host", [] { Tensor::from_host(static_cast<const int32_t*>(nullptr), {2, 3}); },
                    {"src", "6", "int32"});
  const Tensor ti = Tensor::from_host(ids, {2, 3});
  expect_error_from("Tensor::copy_to_host", [&] { ti.copy_to_host(no_ints); }, {"dst", "6"});
}

// ---- item 4: hand-built views -------------------------------------------------------------------
TEST(Adversarial, ViewNumelNeverReadsPastShape) {
  TensorView v;
  v.shape[0] = 3;
  v.shape[1] = 5;
  for (int rank : {5, 1000, INT_MAX}) {
    v.rank = rank;
    EXPECT_EQ(v.numel(), 15) << "rank " << rank << " is read as rank 4";
  }
  for (int rank : {-1, INT_MIN}) {
    v.rank = rank;
    EXPECT_EQ(v.numel(), 1) << "rank " << rank << " is read as rank 0";
  }
  v.rank = 2;
  EXPECT_EQ(v.numel(), 15);
  v.shape[1] = -5;
  EXPECT_EQ(v.numel(), -1);
  v.shape[1] = 0;
  EXPECT_EQ(v.numel(), 0);
  v.rank = 4;
  v.shape[0] = v.shape[1] = v.shape[2] = v.shape[3] = 1LL << 20;  // 2^80 elements
  EXPECT_EQ(v.numel(), -1);
  v.shape[3] = 0;
  EXPECT_EQ(v.numel(), 0);
}

TEST(Adversarial, BadRanksAreRefusedWithoutOverflow) {
  for (int rank : {5, 1000, -1, -1000, INT_MIN, INT_MAX}) {
    SCOPED_TRACE("rank " + std::to_string(rank));
    {
      Views a;
      a.q.view.rank = rank;
      expect_both(a, {"q", "rank"});
    }
    {
      Views a;
      a.k.view.rank = rank;
      expect_both(a, {"k", "rank"});
    }
    {
      Views a;
      a.lse.view.rank = rank;
      expect_error_from("flex_attention", [&] { a.forward(); }, {"lse", "rank"});
      expect_error_from("flex_attention_backward", [&] { a.backward(); }, {"lse", "rank"});
      EXPECT_TRUE(a.untouched());
    }
    {
      Views a;
      a.dv.view.rank = rank;
      expect_error_from("flex_attention_backward", [&] { a.backward(); }, {"dv", "rank"});
      EXPECT_TRUE(a.untouched());
    }
  }
}

TEST(Adversarial, NullDataIsRefused) {
  {
    Views a;
    a.v.view.data = nullptr;
    expect_both(a, {"v"});
  }
  {
    Views a;
    a.out.view.data = nullptr;
    expect_error_from("flex_attention", [&] { a.forward(); }, {"out"});
    expect_error_from("flex_attention_backward", [&] { a.backward(); }, {"out"});
    EXPECT_TRUE(a.untouched());
  }
  {
    Views a;
    a.dk.view.data = nullptr;
    expect_error_from("flex_attention_backward", [&] { a.backward(); }, {"dk"});
    EXPECT_TRUE(a.untouched());
  }
}

TEST(Adversarial, NegativeDimsAreRefused) {
  Views a;
  a.out.view.shape[2] = -5;
  expect_error_from("flex_attention", [&] { a.forward(); }, {"out", "-5"});
  EXPECT_TRUE(a.untouched());
  Views b;
  b.k.view.shape[0] = -1;
  expect_both(b, {"k", "-1"});
}

// Views whose largest element offset does not fit int64: the kernels' address arithmetic would
// wrap and read or write anywhere.
TEST(Adversarial, OverflowingStridesAreRefused) {
  {
    Views a;
    a.q.view.stride[1] = INT64_MAX / 2;  // (2 - 1) * stride, times 4 bytes, overflows
    expect_both(a, {"q", "strides"});
  }
  {
    Views a;
    a.k.view.stride[2] = INT64_MIN;
    expect_both(a, {"k", "strides"});
  }
  {
    Views a;
    a.out.view.stride[0] = 1LL << 62;  // B = 1: dim 0 is never stepped, so this one is fine
    a.out.view.stride[2] = -(1LL << 61);
    expect_error_from("flex_attention", [&] { a.forward(); }, {"out", "strides"});
    EXPECT_TRUE(a.untouched());
  }
  {
    Views a;
    a.dq.view.stride[3] = 1;
    a.dq.view.stride[2] = INT64_MAX / 3;
    expect_error_from("flex_attention_backward", [&] { a.backward(); }, {"dq", "strides"});
    EXPECT_TRUE(a.untouched());
  }
}

// Views too large for the int indices of the mods, backed by a few elements through stride 0.
TEST(Adversarial, SizesBeyondIntIndicesAreRefused) {
  for (int dim : {0, 1, 2}) {
    SCOPED_TRACE("q dim " + std::to_string(dim));
    Views a;
    TensorView& q = a.q.view;
    q.shape[dim] = int64_t{INT_MAX} + 1;
    for (int i = 0; i < 3; ++i) q.stride[i] = 0;
    const char* names[] = {"B", "Hq", "Lq"};
    expect_both(a, {"q", names[dim], "2147483647"});
  }
  {
    Views a;
    for (TensorView* t : {&a.k.view, &a.v.view}) {
      t->shape[2] = 1LL << 40;
      t->stride[2] = 0;
    }
    expect_both(a, {"Lkv", "2147483647"});
  }
  {
    Views a;  // every dim in range, but 2^31 * 2^31 * 2^10 * 4 elements
    TensorView& q = a.q.view;
    q.shape[0] = q.shape[1] = INT_MAX;
    q.shape[2] = 1 << 10;
    q.stride[0] = q.stride[1] = q.stride[2] = 0;
    expect_both(a, {"q", "2"});
  }
}

TEST(Adversarial, UnknownDtypeOrDeviceIsRefused) {
  {
    Views a;
    a.q.view.dtype = static_cast<DType>(77);
    expect_both(a, {"q", "dtype"});
  }
  {
    Views a;
    a.q.view.device = static_cast<Device>(9);
    expect_both(a, {"q", "device"});
  }
}

TEST(Adversarial, NonFiniteScaleIsRefusedNegativeIsNot) {
  for (float s : {kNaNf, kInff, -kInff}) {
    Views a;
    a.opts.scale = s;
    expect_both(a, {"scale"});
  }
  Views a;
  a.opts.scale = -0.5f;  // legal: a negative temperature
  EXPECT_NO_THROW(a.forward());
  EXPECT_NO_THROW(a.backward());
}

// ---- items 2 and 3: block mask geometry ---------------------------------------------------------
TEST(Adversarial, BlockMaskTileCountOverflowIsRefused) {
  expect_error_from("create_block_mask",
                    [] { create_block_mask(noop_mask(), 1 << 30, 1 << 30, 512, 512); },
                    {"B", "H", "tiles"});
  expect_error_from("create_block_mask",
                    [] { create_block_mask(causal(), INT_MAX, INT_MAX, 1024, 1024, {1024, 1024}); },
                    {"B", "H", "tiles"});
  expect_error_from("create_block_mask",
                    [] { create_block_mask(causal(), 1, 1, INT_MAX, INT_MAX, {1, 1}); },
                    {"q_len", "kv_len", "tiles"});
  // Just over the int32 limit: 2 * 2^15 * 2^15 tiles.
  expect_error_from("create_block_mask",
                    [] { create_block_mask(causal(), 2, 1, 1 << 15, 1 << 15, {1, 1}); },
                    {"tiles", "2147483647"});
  expect_error_from("create_block_mask",
                    [] { create_block_mask(causal(), 1, 1, int64_t{INT_MAX} + 1, 8); },
                    {"q_len", "2147483647"});
  expect_error_from("create_block_mask", [] { create_block_mask(causal(), 1, -1, 8, 8); }, {"H"});
}

TEST(Adversarial, BlockSizesAreBounded) {
  for (int bad : {INT_MAX, (1 << 20) + 1, 0, -1, INT_MIN}) {
    SCOPED_TRACE(bad);
    expect_error_from("create_block_mask",
                      [&] { create_block_mask(causal(), 1, 1, 9, 11, {.block_q = bad}); },
                      {"block_q", "1048576"});
    expect_error_from("create_block_mask",
                      [&] { create_block_mask(causal(), 1, 1, 9, 11, {.block_kv = bad}); },
                      {"block_kv", "1048576"});
  }
}

// The largest block size is usable: one tile covers everything and the result matches the default
// tiling's.
TEST(Adversarial, LargestBlockSizeRuns) {
  Views a;
  a.mask = create_block_mask(causal(), 1, 1, 5, 7, {.block_q = 1 << 20, .block_kv = 1 << 20});
  ASSERT_NO_THROW(a.forward());
  ASSERT_NO_THROW(a.backward());
  Views b;
  b.q = a.q;
  b.k = a.k;
  b.v = a.v;
  b.dout = a.dout;
  b.forward();
  b.backward();
  auto near = [](const Operand& x, const Operand& y) {
    const std::vector<float> u = x.read(), w = y.read();
    for (size_t i = 0; i < u.size(); ++i)
      if (!(std::fabs(u[i] - w[i]) <= 1e-5f)) return false;
    return true;
  };
  EXPECT_TRUE(near(a.out, b.out) && near(a.lse, b.lse));
  EXPECT_TRUE(near(a.dq, b.dq) && near(a.dk, b.dk) && near(a.dv, b.dv));
}

// A BlockMaskData edited by hand (its fields are public) must be refused by the attention calls
// before a kernel sizes anything from it.
TEST(Adversarial, EditedBlockMaskIsRefused) {
  auto edited = [](auto edit) {
    Views a;
    BlockMaskData d = a.mask.data();
    edit(d);
    a.mask = BlockMask<CausalMask>(causal(), d);
    expect_both(a, {"block_mask"});
  };
  edited([](BlockMaskData& d) { d.block_q = INT_MAX; });
  edited([](BlockMaskData& d) { d.block_kv = 0; });
  edited([](BlockMaskData& d) { d.nqb = 1000; });
  edited([](BlockMaskData& d) { d.kv_idx = Buffer(); });
  edited([](BlockMaskData& d) { d.q_num = Buffer::allocate(1, Device::cpu); });
}

// ---- items 5 and 11: stock mods -----------------------------------------------------------------
TEST(Adversarial, StockModParametersAreChecked) {
  expect_error_from("document", [] { document(nullptr); }, {"doc_ids"});
  for (float cap : {0.0f, -0.0f, -3.0f, kNaNf, kInff, -kInff}) {
    SCOPED_TRACE(cap);
    expect_error_from("softcap", [&] { softcap(cap); }, {"cap"});
  }
  for (int n : {0, -1, INT_MIN}) expect_error_from("alibi", [&] { alibi(n); }, {"num_heads"});
  for (int w : {-1, INT_MIN}) {
    expect_error_from("sliding_window", [&] { sliding_window(w); }, {"w"});
  }
  for (int p : {-5, INT_MIN}) {
    expect_error_from("prefix_lm", [&] { prefix_lm(p); }, {"prefix_len"});
  }
  // The edges that are legal.
  EXPECT_NO_THROW(softcap(1e-3f));
  EXPECT_NO_THROW(softcap(std::numeric_limits<float>::max()));
  EXPECT_NO_THROW(alibi(1));
  EXPECT_NO_THROW(sliding_window(0));
  EXPECT_NO_THROW(sliding_window(INT_MAX));
  EXPECT_NO_THROW(prefix_lm(0));
  const int32_t ids[1] = {0};
  EXPECT_NO_THROW(document(ids));
}

// A window or prefix as large as an int: the tile rules and the element tests must not overflow.
TEST(Adversarial, LargestWindowAndPrefixRun) {
  const auto w = create_block_mask(sliding_window(INT_MAX), 1, 1, 300, 300);
  EXPECT_NEAR(w.sparsity(), create_block_mask(causal(), 1, 1, 300, 300).sparsity(), 1e-9);
  const auto p = create_block_mask(prefix_lm(INT_MAX), 1, 1, 300, 300);
  EXPECT_NEAR(p.sparsity(), 0.0, 1e-9);
}

// ---- item 17: the function-name helpers the front doors call ------------------------------------
TEST(Adversarial, FrontDoorChecksUseTheCallersName) {
  Views a;
  Views zero;  // Lq = 0, seen through a view of the same storage
  zero.q.view.shape[2] = 0;
  std::string msg = expect_error_from(
      "flex_attention",
      [&] {
        detail::check_front_door_inputs("flex_attention", zero.q.view, a.k.view, a.v.view, {});
      },
      {"Lq", "1"});
  EXPECT_EQ(msg.find("create_block_mask"), std::string::npos) << msg;
  expect_error_from("flex_attention_backward",
                    [&] {
                      detail::check_front_door_inputs("flex_attention_backward", zero.q.view,
                                                      a.k.view, a.v.view, {});
                    },
                    {"Lq"});
  expect_error_from("flex_attention_backward",
                    [&] {
                      detail::check_attention_inputs("flex_attention_backward", a.q.view,
                                                     zero.q.view, a.v.view, a.mask.data(), {});
                    },
                    {"k"});
  // The backward's front-door check covers out, lse and dout too, with or without a mask.
  Views bad;
  bad.lse.view.dtype = DType::f16;
  for (const BlockMaskData* m : {&bad.mask.data(), static_cast<const BlockMaskData*>(nullptr)}) {
    expect_error_from("flex_attention_backward",
                      [&] {
                        detail::check_backward_inputs(bad.q.view, bad.k.view, bad.v.view,
                                                      bad.out.view, bad.lse.view, bad.dout.view, m,
                                                      {});
                      },
                      {"lse", "f32"});
  }
  EXPECT_NO_THROW(detail::check_backward_inputs(a.q.view, a.k.view, a.v.view, a.out.view,
                                                a.lse.view, a.dout.view, nullptr, {}));
}

}  // namespace
}  // namespace flexattn::testing
