// Every bad input of design.md §2 throws flexattn::Error whose message names the argument (as a
// whole word, not just a letter somewhere) and the expected value, and leaves the caller's output
// buffers untouched (they stay NaN-poisoned).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <functional>
#include <string>

#include "attn_check.h"
#include "error_match.h"

namespace flexattn::testing {
namespace {

using ::testing::HasSubstr;

bool all_nan(const Operand& o) {
  for (float x : o.storage.to_host())
    if (!std::isnan(x)) return false;
  return true;
}

// A valid GQA problem: q [2,4,9,8], k [2,2,11,8], v [2,2,11,6]; every output poisoned.
struct Args {
  Shape s{.B = 2, .Hq = 4, .Hkv = 2, .Lq = 9, .Lkv = 11, .D = 8, .Dv = 6};
  DType dt = DType::f32;
  Operand q, k, v, dout, out, lse, dq, dk, dv;
  BlockMask<CausalMask> mask = create_block_mask(causal(), 1, 1, 9, 11);
  AttentionOptions opts;

  Args() {
    std::mt19937_64 rng(test_seed());
    auto in = [&](std::vector<int64_t> shape, DType t) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      const std::vector<float> x = random_input(n, t, rng);
      return Operand::make(shape, t, false, &x);
    };
    q = in({s.B, s.Hq, s.Lq, s.D}, dt);
    k = in({s.B, s.Hkv, s.Lkv, s.D}, dt);
    v = in({s.B, s.Hkv, s.Lkv, s.Dv}, dt);
    dout = in({s.B, s.Hq, s.Lq, s.Dv}, dt);
    out = Operand::make({s.B, s.Hq, s.Lq, s.Dv}, dt, false, nullptr);
    lse = Operand::make({s.B, s.Hq, s.Lq}, DType::f32, false, nullptr);
    dq = Operand::make({s.B, s.Hq, s.Lq, s.D}, dt, false, nullptr);
    dk = Operand::make({s.B, s.Hkv, s.Lkv, s.D}, dt, false, nullptr);
    dv = Operand::make({s.B, s.Hkv, s.Lkv, s.Dv}, dt, false, nullptr);
    opts.enable_gqa = true;
  }
  // A fresh operand of another shape / dtype / device, valid contents.
  static Operand other(std::vector<int64_t> shape, DType t = DType::f32) {
    std::mt19937_64 rng(test_seed());
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const std::vector<float> x = random_input(n, t, rng);
    return Operand::make(shape, t, false, &x);
  }
  void forward() const {
    flex_attention_into(q.view, k.view, v.view, out.view, lse.view, noop_score(), mask, opts);
  }
  // Backward with valid out/lse views (poisoned: the call must throw before reading them).
  void backward() const {
    flex_attention_backward_into(q.view, k.view, v.view, out.view, lse.view, dout.view, dq.view,
                                 dk.view, dv.view, noop_score(), mask, opts);
  }
};

// Runs `call`, expects flexattn::Error naming every word, and all outputs still poisoned.
void expect_error(const Args& a, const std::function<void()>& call,
                  std::initializer_list<const char*> words) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected flexattn::Error naming " << *words.begin();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* w : words)
      EXPECT_TRUE(mentions(msg, w)) << "\"" << msg << "\" does not name " << w;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a std::exception that is not flexattn::Error: " << e.what();
  }
  EXPECT_TRUE(all_nan(a.out)) << "out written by a call that threw";
  EXPECT_TRUE(all_nan(a.lse)) << "lse written by a call that threw";
  EXPECT_TRUE(all_nan(a.dq) && all_nan(a.dk) && all_nan(a.dv))
      << "gradients written by a call that threw";
}

// Both directions get the same bad input.
void expect_error_both(Args& a, std::initializer_list<const char*> words) {
  {
    SCOPED_TRACE("forward");
    expect_error(
        a, [&] { a.forward(); }, words);
  }
  {
    SCOPED_TRACE("backward");
    expect_error(
        a, [&] { a.backward(); }, words);
  }
}

TEST(Errors, ValidArgumentsDoNotThrow) {
  Args a;
  EXPECT_NO_THROW(a.forward());
  EXPECT_NO_THROW(a.backward());
}

TEST(Errors, WrongRank) {
  {
    Args a;
    a.q = Args::other({2, 4, 72});
    expect_error_both(a, {"q", "4"});
  }
  {
    Args a;
    a.k = Args::other({2, 2, 11, 8});
    a.k.view.rank = 3;  // same data seen as rank 3
    expect_error_both(a, {"k"});
  }
  {
    Args a;
    a.v = Args::other({4, 11, 6});
    expect_error_both(a, {"v"});
  }
  {
    Args a;
    a.out = Operand::make({2, 4, 54}, DType::f32, false, nullptr);
    expect_error(a, [&] { a.forward(); }, {"out"});
  }
  {
    Args a;
    a.lse = Operand::make({2, 4, 9, 1}, DType::f32, false, nullptr);
    expect_error(a, [&] { a.forward(); }, {"lse"});
  }
  {
    Args a;
    a.dout = Args::other({2, 4, 54});
    expect_error(a, [&] { a.backward(); }, {"dout"});
  }
}

// Inputs whose q/k/v shapes disagree: both directions must reject them.
TEST(Errors, ShapeMismatch) {
  auto check = [](const char* what, void (*edit)(Args&), std::initializer_list<const char*> words) {
    SCOPED_TRACE(what);
    Args a;
    edit(a);
    expect_error_both(a, words);
  };
  check("k batch", [](Args& a) { a.k = Args::other({3, 2, 11, 8}); }, {"k", "2"});
  check("k head dim", [](Args& a) { a.k = Args::other({2, 2, 11, 7}); }, {"k", "8"});
  check("v batch", [](Args& a) { a.v = Args::other({1, 2, 11, 6}); }, {"v", "2"});
  check("v heads", [](Args& a) { a.v = Args::other({2, 1, 11, 6}); }, {"v", "2"});
  check("v length", [](Args& a) { a.v = Args::other({2, 2, 10, 6}); }, {"v", "11"});
}

// Outputs (and backward inputs) whose shapes disagree with q/k/v.
TEST(Errors, OutputShapeMismatch) {
  {
    Args a;
    a.out = Operand::make({2, 4, 9, 5}, DType::f32, false, nullptr);
    expect_error(a, [&] { a.forward(); }, {"out", "6"});
  }
  {
    Args a;
    a.lse = Operand::make({2, 4, 8}, DType::f32, false, nullptr);
    expect_error(a, [&] { a.forward(); }, {"lse", "9"});
  }
  {
    Args a;
    a.dout = Args::other({2, 4, 9, 7});
    expect_error(a, [&] { a.backward(); }, {"dout", "6"});
  }
  {
    Args a;
    a.dq = Operand::make({2, 4, 9, 7}, DType::f32, false, nullptr);
    expect_error(a, [&] { a.backward(); }, {"dq", "8"});
  }
  {
    Args a;  // Hq heads instead of Hkv
    a.dk = Operand::make({2, 4, 11, 8}, DType::f32, false, nullptr);
    expect_error(a, [&] { a.backward(); }, {"dk", "2"});
  }
  {
    Args a;
    a.dv = Operand::make({2, 2, 12, 6}, DType::f32, false, nullptr);
    expect_error(a, [&] { a.backward(); }, {"dv", "11"});
  }
  {
    Args a;  // out/lse given to the backward must match too
    a.lse = Operand::make({2, 4, 10}, DType::f32, false, nullptr);
    expect_error(a, [&] { a.backward(); }, {"lse"});
  }
}

// Zero-length sequences are rejected (Lq, Lkv >= 1). Kept apart from ShapeMismatch: building a
// zero-element operand goes through Tensor::from_host with no elements (see
// Tensor.ZeroSizedTensors), and a sanitizer report there must not hide the other cases.
TEST(Errors, ZeroLengths) {
  {
    Args a;
    a.q = Args::other({2, 4, 0, 8});
    expect_error_both(a, {"q"});
  }
  {
    Args a;
    a.k = Args::other({2, 2, 0, 8});
    a.v = Args::other({2, 2, 0, 6});
    expect_error_both(a, {"k"});
  }
}

TEST(Errors, DtypeMismatch) {
  {
    Args a;
    a.k = Args::other({2, 2, 11, 8}, DType::f16);
    expect_error_both(a, {"k", "f32"});
  }
  {
    Args a;
    a.v = Args::other({2, 2, 11, 6}, DType::bf16);
    expect_error_both(a, {"v", "f32"});
  }
  {
    Args a;
    a.out = Operand::make({2, 4, 9, 6}, DType::f16, false, nullptr);
    expect_error(a, [&] { a.forward(); }, {"out", "f32"});
  }
  {
    Args a;  // lse is always f32, even for a f32 call it must not be f16
    a.lse = Operand::make({2, 4, 9}, DType::f16, false, nullptr);
    expect_error(a, [&] { a.forward(); }, {"lse", "f32"});
  }
  {
    Args a;
    a.dout = Args::other({2, 4, 9, 6}, DType::bf16);
    expect_error(a, [&] { a.backward(); }, {"dout", "f32"});
  }
  {
    Args a;
    a.dk = Operand::make({2, 2, 11, 8}, DType::f16, false, nullptr);
    expect_error(a, [&] { a.backward(); }, {"dk", "f32"});
  }
}

TEST(Errors, MixedDevices) {
  // A view that claims Device::cuda: the check must reject it before anything dereferences it.
  {
    Args a;
    a.k.view.device = Device::cuda;
    expect_error_both(a, {"k", "cpu"});
  }
  {
    Args a;
    a.v.view.device = Device::cuda;
    expect_error_both(a, {"v", "cpu"});
  }
  {
    Args a;
    a.out.view.device = Device::cuda;
    expect_error(a, [&] { a.forward(); }, {"out", "cpu"});
  }
  {
    Args a;
    a.dq.view.device = Device::cuda;
    expect_error(a, [&] { a.backward(); }, {"dq", "cpu"});
  }
  {
    Args a;  // the BlockMask is an argument too
    BlockMaskData data = a.mask.data();
    data.device = Device::cuda;
    a.mask = BlockMask<CausalMask>(causal(), data);
    expect_error_both(a, {"block_mask", "cpu"});
  }
}

TEST(Errors, CudaWithoutCuda) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  Args a;
  for (Operand* o : {&a.q, &a.k, &a.v, &a.out, &a.lse, &a.dout, &a.dq, &a.dk, &a.dv})
    o->view.device = Device::cuda;
  BlockMaskData data = a.mask.data();
  data.device = Device::cuda;
  a.mask = BlockMask<CausalMask>(causal(), data);
  expect_error_both(a, {"cuda"});
  EXPECT_THROW(create_block_mask(causal(), 1, 1, 9, 11, {.device = Device::cuda}), Error);
  EXPECT_THROW(Tensor::empty({2, 3}, DType::f32, Device::cuda), Error);
  const float x[2] = {1.0f, 2.0f};
  EXPECT_THROW(Tensor::from_host(x, {2}, DType::f16, Device::cuda), Error);
}

TEST(Errors, HeadGrouping) {
  {
    Args a;  // Hq = 4 is not a multiple of Hkv = 3
    a.k = Args::other({2, 3, 11, 8});
    a.v = Args::other({2, 3, 11, 6});
    a.dk = Operand::make({2, 3, 11, 8}, DType::f32, false, nullptr);
    a.dv = Operand::make({2, 3, 11, 6}, DType::f32, false, nullptr);
    expect_error_both(a, {"Hq", "Hkv", "3"});
  }
  {
    Args a;  // Hq != Hkv needs enable_gqa
    a.opts.enable_gqa = false;
    expect_error_both(a, {"enable_gqa"});
  }
}

TEST(Errors, BlockMaskMismatch) {
  {
    Args a;
    a.mask = create_block_mask(causal(), 1, 1, 10, 11);
    expect_error_both(a, {"block_mask", "9"});
  }
  {
    Args a;
    a.mask = create_block_mask(causal(), 1, 1, 9, 12);
    expect_error_both(a, {"block_mask", "11"});
  }
  {
    Args a;  // B of 3 is neither 1 nor the batch 2
    a.mask = create_block_mask(causal(), 3, 1, 9, 11);
    expect_error_both(a, {"block_mask", "2"});
  }
  {
    Args a;  // H must be 1 or Hq = 4 (query heads), not Hkv = 2
    a.mask = create_block_mask(causal(), 1, 2, 9, 11);
    expect_error_both(a, {"block_mask", "4"});
  }
}

TEST(Errors, CreateBlockMaskArguments) {
  auto expect = [](const std::function<void()>& call, const char* word) {
    try {
      call();
      ADD_FAILURE() << "no exception; expected flexattn::Error naming " << word;
    } catch (const Error& e) {
      EXPECT_TRUE(mentions(e.what(), word)) << "\"" << e.what() << "\" does not name " << word;
    }
  };
  expect([] { create_block_mask(causal(), 1, 1, 9, 11, {.block_q = 0}); }, "block_q");
  expect([] { create_block_mask(causal(), 1, 1, 9, 11, {.block_q = 64, .block_kv = -3}); },
         "block_kv");
  expect([] { create_block_mask(causal(), 0, 1, 9, 11); }, "B");
  expect([] { create_block_mask(causal(), 1, 0, 9, 11); }, "H");
  expect([] { create_block_mask(causal(), 1, 1, 0, 11); }, "q_len");
  expect([] { create_block_mask(causal(), 1, 1, 9, -1); }, "kv_len");
}

TEST(Errors, UnsupportedHeadDims) {
  {
    Args a;  // D = 257
    a.q = Args::other({2, 4, 9, 257});
    a.k = Args::other({2, 2, 11, 257});
    a.dq = Operand::make({2, 4, 9, 257}, DType::f32, false, nullptr);
    a.dk = Operand::make({2, 2, 11, 257}, DType::f32, false, nullptr);
    expect_error_both(a, {"D", "256"});
  }
  {
    Args a;  // Dv = 300
    a.v = Args::other({2, 2, 11, 300});
    a.out = Operand::make({2, 4, 9, 300}, DType::f32, false, nullptr);
    a.dout = Args::other({2, 4, 9, 300});
    a.dv = Operand::make({2, 2, 11, 300}, DType::f32, false, nullptr);
    expect_error_both(a, {"Dv", "256"});
  }
}

// Head dims of 0 (zero-element operands: kept apart for the reason given at ZeroLengths).
TEST(Errors, ZeroHeadDims) {
  {
    Args a;  // D = 0
    a.q = Args::other({2, 4, 9, 0});
    a.k = Args::other({2, 2, 11, 0});
    a.dq = Operand::make({2, 4, 9, 0}, DType::f32, false, nullptr);
    a.dk = Operand::make({2, 2, 11, 0}, DType::f32, false, nullptr);
    expect_error_both(a, {"D"});
  }
  {
    Args a;  // Dv = 0
    a.v = Args::other({2, 2, 11, 0});
    a.out = Operand::make({2, 4, 9, 0}, DType::f32, false, nullptr);
    a.dout = Args::other({2, 4, 9, 0});
    a.dv = Operand::make({2, 2, 11, 0}, DType::f32, false, nullptr);
    expect_error_both(a, {"Dv"});
  }
}

TEST(Errors, LayoutAndOptions) {
  {
    Args a;  // last dim not contiguous
    a.q.view.stride[3] = 2;
    a.q.view.shape[2] = 4;  // keep the view inside the storage
    expect_error_both(a, {"q"});
  }
  {
    Args a;
    a.opts.scale = std::numeric_limits<float>::quiet_NaN();
    expect_error_both(a, {"scale"});
  }
  {
    Args a;
    a.opts.scale = std::numeric_limits<float>::infinity();
    expect_error_both(a, {"scale"});
  }
}

TEST(Errors, FrontDoorThrowsToo) {
  std::mt19937_64 rng(test_seed());
  const std::vector<float> x = random_input(2 * 4 * 9 * 8, DType::f16, rng);
  const Tensor q = Tensor::from_host(x.data(), {2, 4, 9, 8}, DType::f32);
  const Tensor k = Tensor::from_host(x.data(), {2, 2, 9, 8}, DType::f32);
  const Tensor kh = Tensor::from_host(x.data(), {2, 2, 9, 8}, DType::f16);
  try {
    flex_attention(q, k, k);  // Hq != Hkv without enable_gqa
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("enable_gqa"));
  }
  AttentionOptions gqa;
  gqa.enable_gqa = true;
  try {
    flex_attention(q, kh, k, gqa);
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_TRUE(mentions(e.what(), "k")) << e.what();
  }
  const auto out = flex_attention(q, k, k, gqa);
  try {
    flex_attention_backward(q, k, k, out.out, out.lse, out.lse, gqa);  // dout of the wrong rank
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_TRUE(mentions(e.what(), "dout")) << e.what();
  }
}

// Every message starts with "flexattn::<the function the user called>:" - the lower layer and
// the front door alike, forward and backward.
TEST(Errors, MessagesNameTheCalledFunction) {
  {
    Args a;
    a.k = Args::other({2, 2, 11, 7});
    expect_error_from("flex_attention", [&] { a.forward(); }, {"k"});
    expect_error_from("flex_attention_backward", [&] { a.backward(); }, {"k"});
  }
  Args a;
  const Tensor& q = a.q.storage;
  const Tensor& k = a.k.storage;
  const Tensor& v = a.v.storage;
  const Tensor bad_k = Args::other({2, 2, 11, 7}).storage;
  expect_error_from("flex_attention", [&] { flex_attention(q, bad_k, v, a.mask, a.opts); }, {"k"});
  // The backward's out / lse / dout are checked under the backward's name.
  const AttentionOutput f = flex_attention(q, k, v, a.mask, a.opts);
  const Tensor lse16 = Args::other({2, 4, 9}, DType::f16).storage;
  expect_error_from("flex_attention_backward",
                    [&] { flex_attention_backward(q, k, v, f.out, lse16, a.dout.storage, a.mask,
                                                  a.opts); },
                    {"lse", "f32"});
}

// The front doors' own checks (item 17 of issue 8): the backward front door reports q/k/v errors
// as flex_attention_backward, and the overloads without a block mask check q/k/v before they build
// the dense mask, so Lq = 0 is reported for the function the user called, not create_block_mask.
TEST(Errors, FrontDoorsNameTheCalledFunction) {
  Args a;
  const Tensor& q = a.q.storage;
  const Tensor& v = a.v.storage;
  const Tensor bad_k = Args::other({2, 2, 11, 7}).storage;
  const Tensor out = Args::other({2, 4, 9, 6}).storage;
  const Tensor lse = Args::other({2, 4, 9}).storage;
  expect_error_from("flex_attention_backward",
                    [&] { flex_attention_backward(q, bad_k, v, out, lse, a.dout.storage, a.mask,
                                                  a.opts); },
                    {"k", "8"});
  expect_error_from("flex_attention_backward",
                    [&] { flex_attention_backward(q, bad_k, v, out, lse, a.dout.storage, a.opts); },
                    {"k", "8"});
  // Lq = 0 without a block mask: the overload builds a dense mask, but the user called
  // flex_attention and must hear about q.
  const Tensor q0 = Args::other({2, 4, 0, 8}).storage;
  const std::string msg = expect_error_from(
      "flex_attention", [&] { flex_attention(q0, a.k.storage, v, a.opts); }, {"q", "Lq"});
  EXPECT_EQ(msg.find("create_block_mask"), std::string::npos) << msg;
  expect_error_from("flex_attention",
                    [&] { flex_attention(q0, a.k.storage, v, softcap(2.0f), a.opts); }, {"Lq"});
  const Tensor out0 = Args::other({2, 4, 0, 6}).storage;
  const Tensor lse0 = Args::other({2, 4, 0}).storage;
  expect_error_from("flex_attention_backward",
                    [&] { flex_attention_backward(q0, a.k.storage, v, out0, lse0, out0, a.opts); },
                    {"Lq"});
}

}  // namespace
}  // namespace flexattn::testing
