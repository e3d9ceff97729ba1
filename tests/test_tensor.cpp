// Tensor: construction, shape queries, views, fill, and the f32 <-> f16/bf16 conversions, checked
// bit for bit against the independent rounding of reference/helpers.h (itself checked here on
// hand-picked values: ties to even, overflow, subnormals).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <flexattn/flexattn.h>

#include "reference/helpers.h"

namespace flexattn {
namespace {

using reference::round_to;
constexpr float kInf = std::numeric_limits<float>::infinity();

uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

TEST(Rounding, HelperOnKnownValues) {
  // f16: 10 mantissa bits, max 65504, smallest subnormal 2^-24.
  EXPECT_EQ(round_to(DType::f16, 1.0f / 3.0f), 0.333251953125f);
  EXPECT_EQ(round_to(DType::f16, 1.0f + std::ldexp(1.0f, -11)), 1.0f);  // tie -> even
  EXPECT_EQ(round_to(DType::f16, 1.0f + 3 * std::ldexp(1.0f, -11)), 1.0f + std::ldexp(1.0f, -9));
  EXPECT_EQ(round_to(DType::f16, 65504.0f), 65504.0f);
  EXPECT_EQ(round_to(DType::f16, 65519.0f), 65504.0f);
  EXPECT_EQ(round_to(DType::f16, 65520.0f), kInf);
  EXPECT_EQ(round_to(DType::f16, -70000.0f), -kInf);
  EXPECT_EQ(round_to(DType::f16, std::ldexp(1.0f, -24)), std::ldexp(1.0f, -24));
  EXPECT_EQ(round_to(DType::f16, std::ldexp(1.0f, -25)), 0.0f);  // tie -> even (0)
  EXPECT_EQ(round_to(DType::f16, 3 * std::ldexp(1.0f, -25)), std::ldexp(1.0f, -23));
  EXPECT_EQ(round_to(DType::f16, std::ldexp(1.0f, -14) * 1.5f), std::ldexp(1.0f, -14) * 1.5f);
  EXPECT_EQ(bits(round_to(DType::f16, -std::ldexp(1.0f, -30))), bits(-0.0f));  // sign kept
  // bf16: 7 mantissa bits, float's exponent range.
  EXPECT_EQ(round_to(DType::bf16, 1.0f / 3.0f), 0.333984375f);
  EXPECT_EQ(round_to(DType::bf16, 1.0f + std::ldexp(1.0f, -8)), 1.0f);
  EXPECT_EQ(round_to(DType::bf16, 1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_EQ(round_to(DType::bf16, std::ldexp(255.0f, 120)), std::ldexp(255.0f, 120));
  EXPECT_EQ(round_to(DType::bf16, std::numeric_limits<float>::max()), kInf);
  EXPECT_EQ(round_to(DType::bf16, std::ldexp(1.0f, -133)), std::ldexp(1.0f, -133));
  EXPECT_EQ(round_to(DType::bf16, std::ldexp(1.0f, -134)), 0.0f);
  EXPECT_EQ(round_to(DType::bf16, 300.5f), 300.0f);
  // f32 is the identity, specials pass through.
  EXPECT_EQ(round_to(DType::f32, 0.1f), 0.1f);
  EXPECT_TRUE(std::isnan(round_to(DType::f16, std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(round_to(DType::bf16, -kInf), -kInf);
}

// Values over the whole range of each format: normals, subnormals, overflow, ties, specials.
std::vector<float> conversion_probe(std::mt19937_64& rng) {
  std::vector<float> x = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          kInf,
                          -kInf,
                          65504.0f,
                          65520.0f,
                          -65536.0f,
                          std::ldexp(1.0f, -24),
                          std::ldexp(1.0f, -25),
                          3 * std::ldexp(1.0f, -25),
                          1.0f + std::ldexp(1.0f, -11),
                          1.0f + std::ldexp(1.0f, -8),
                          1.0f + 3 * std::ldexp(1.0f, -8),
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::denorm_min(),
                          std::ldexp(1.0f, -133)};
  std::uniform_real_distribution<float> exponent(-140.0f, 128.0f), mant(1.0f, 2.0f);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 20000; ++i) {
    const float sign = (i & 1) ? -1.0f : 1.0f;
    x.push_back(sign * std::ldexp(mant(rng), int(exponent(rng))));
    x.push_back(sign * std::ldexp(mant(rng), -30 + i % 48));  // f16's range, densely
    uint32_t u = any_bits(rng);
    float f;
    std::memcpy(&f, &u, 4);
    if (!std::isnan(f)) x.push_back(f);
  }
  return x;
}

TEST(Tensor, ConversionsMatchIndependentRounding) {
  const uint64_t seed = reference::fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::vector<float> x = conversion_probe(rng);
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    SCOPED_TRACE(to_string(dt));
    const Tensor t = Tensor::from_host(x.data(), {int64_t(x.size())}, dt);
    const std::vector<float> back = t.to_host();
    int64_t wrong = 0;
    size_t first = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      if (bits(back[i]) != bits(round_to(dt, x[i])) && wrong++ == 0) first = i;
    }
    EXPECT_EQ(wrong, 0) << "first: " << x[first] << " -> " << back[first] << ", expected "
                        << round_to(dt, x[first]);
    // A stored value converts back exactly.
    const std::vector<float> again =
        Tensor::from_host(back.data(), {int64_t(back.size())}, dt).to_host();
    EXPECT_EQ(std::memcmp(again.data(), back.data(), back.size() * 4), 0);
  }
}

TEST(Tensor, NaNSurvivesEveryDtype) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    Tensor t = Tensor::empty({3, 5}, dt);
    t.fill(nan);
    for (float v : t.to_host()) EXPECT_TRUE(std::isnan(v)) << to_string(dt);
    const float src[2] = {nan, -nan};
    for (float v : Tensor::from_host(src, {2}, dt).to_host()) EXPECT_TRUE(std::isnan(v));
  }
}

TEST(Tensor, ShapeQueriesAndView) {
  const Tensor t = Tensor::empty({2, 3, 5, 7}, DType::bf16);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.shape(), (std::vector<int64_t>{2, 3, 5, 7}));
  EXPECT_EQ(t.rank(), 4);
  EXPECT_EQ(t.numel(), 210);
  EXPECT_EQ(t.size(0), 2);
  EXPECT_EQ(t.size(3), 7);
  EXPECT_EQ(t.size(-1), 7);
  EXPECT_THROW(t.size(4), Error);
  EXPECT_EQ(t.dtype(), DType::bf16);
  EXPECT_EQ(t.device(), Device::cpu);
  const TensorView v = t.view();
  EXPECT_EQ(v.data, t.data());
  EXPECT_EQ(v.rank, 4);
  EXPECT_EQ(v.dtype, DType::bf16);
  EXPECT_EQ(v.device, Device::cpu);
  const int64_t shape[4] = {2, 3, 5, 7}, stride[4] = {105, 35, 7, 1};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(v.shape[i], shape[i]);
    EXPECT_EQ(v.stride[i], stride[i]);
  }
  EXPECT_EQ(v.numel(), 210);
  EXPECT_FALSE(Tensor().defined());
  EXPECT_EQ(Tensor().numel(), 0);
}

TEST(Tensor, DtypeInfo) {
  EXPECT_EQ(dtype_size(DType::f32), 4u);
  EXPECT_EQ(dtype_size(DType::f16), 2u);
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
  EXPECT_EQ(dtype_size(DType::i32), 4u);
  EXPECT_STREQ(to_string(DType::i32), "i32");
  EXPECT_STREQ(to_string(DType::f16), "f16");
  EXPECT_STREQ(to_string(DType::bf16), "bf16");
  EXPECT_STREQ(to_string(DType::f32), "f32");
  EXPECT_STREQ(to_string(Device::cpu), "cpu");
  EXPECT_STREQ(to_string(Device::cuda), "cuda");
}

TEST(Tensor, FillAndCopyToHost) {
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    Tensor t = Tensor::empty({4, 6}, dt);
    t.fill(-2.5f);
    std::vector<float> host(24, 0.0f);
    t.copy_to_host(host.data());
    for (float v : host) EXPECT_EQ(v, -2.5f);
    t.fill(0.1f);  // rounded like from_host
    for (float v : t.to_host()) EXPECT_EQ(bits(v), bits(round_to(dt, 0.1f)));
  }
}

TEST(Tensor, CopiesShareStorage) {
  Tensor a = Tensor::empty({8}, DType::f32);
  a.fill(1.0f);
  Tensor b = a;
  b.fill(3.0f);
  EXPECT_EQ(a.data(), b.data());
  for (float v : a.to_host()) EXPECT_EQ(v, 3.0f);
}

TEST(Tensor, BadShapesThrow) {
  EXPECT_THROW(Tensor::empty({}, DType::f32), Error);
  EXPECT_THROW(Tensor::empty({1, 2, 3, 4, 5}, DType::f32), Error);
  EXPECT_THROW(Tensor::empty({2, -1}, DType::f32), Error);
  const float x[4] = {1, 2, 3, 4};
  EXPECT_THROW(Tensor::from_host(x, {}, DType::f16), Error);
  EXPECT_THROW(Tensor::from_host(x, {-4}, DType::f16), Error);
  // Zero-sized dims are legal tensors (with zero elements).
  const Tensor z = Tensor::empty({3, 0}, DType::f32);
  EXPECT_EQ(z.numel(), 0);
  EXPECT_TRUE(z.defined());
}

TEST(Tensor, ZeroSizedTensors) {
  // No elements: from_host may be given a null pointer (an empty vector's data()), and copies
  // and fill touch nothing. (memcpy with a null pointer is undefined even for 0 bytes: UBSan.)
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    Tensor t = Tensor::from_host(nullptr, {3, 0}, dt);
    EXPECT_EQ(t.numel(), 0);
    t.fill(1.0f);
    EXPECT_TRUE(t.to_host().empty());
    t.copy_to_host(static_cast<float*>(nullptr));
  }
  Tensor i = Tensor::from_host(static_cast<const int32_t*>(nullptr), {0});
  EXPECT_EQ(i.numel(), 0);
  i.copy_to_host(static_cast<int32_t*>(nullptr));
}

// i32 (index tensors: page tables, lengths): int32 copies both ways, bit for bit, and every
// float-based call refuses it by name.
TEST(Tensor, Int32TensorsAreCopiedNotConverted) {
  std::mt19937 rng(std::random_device{}());
  std::vector<int32_t> src(37);
  for (int32_t& x : src) x = int32_t(rng());  // the full range: not representable as float
  src[0] = std::numeric_limits<int32_t>::min();
  src[1] = std::numeric_limits<int32_t>::max();
  const Tensor t = Tensor::from_host(src.data(), {37});
  EXPECT_EQ(t.dtype(), DType::i32);
  EXPECT_EQ(t.device(), Device::cpu);
  std::vector<int32_t> back(37, 0);
  t.copy_to_host(back.data());
  EXPECT_EQ(back, src);
  const Tensor m = Tensor::from_host(src.data() + 1, {3, 12});
  EXPECT_EQ(m.shape(), (std::vector<int64_t>{3, 12}));
  EXPECT_EQ(std::memcmp(m.data(), src.data() + 1, 36 * sizeof(int32_t)), 0);
  EXPECT_EQ(Tensor::empty({5}, DType::i32).view().dtype, DType::i32);

  std::vector<float> f(37);
  Tensor w = Tensor::empty({37}, DType::i32);
  auto refused = [](auto call, const char* what) {
    try {
      call();
      ADD_FAILURE() << what << " accepted an i32 tensor";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr("i32")) << what;
      EXPECT_THAT(e.what(), ::testing::HasSubstr(what)) << e.what();
    }
  };
  refused([&] { t.copy_to_host(f.data()); }, "copy_to_host");
  refused([&] { (void)t.to_host(); }, "to_host");
  refused([&] { w.fill(1.0f); }, "fill");
  refused([&] { Tensor::from_host(f.data(), {37}, DType::i32); }, "from_host");
  // ... and the int32 copy refuses the float dtypes.
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    const Tensor x = Tensor::empty({4}, dt);
    try {
      x.copy_to_host(back.data());
      ADD_FAILURE() << "copy_to_host(int32_t*) accepted " << to_string(dt);
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr(std::string("dtype is ") + to_string(dt)));
      EXPECT_THAT(e.what(), ::testing::HasSubstr("expected i32"));
    }
  }
}

// from_blob wraps foreign memory: reads and writes go to it, nothing is freed but the owner.
TEST(Tensor, FromBlobSharesMemoryAndReleasesOnlyItsOwner) {
  std::vector<float> storage = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -1.0f};
  auto released = std::make_shared<int>(0);
  {
    std::shared_ptr<void> owner(nullptr, [released](void*) { ++*released; });
    Tensor t = Tensor::from_blob(storage.data(), {2, 3}, DType::f32, Device::cpu, owner);
    owner.reset();
    const Tensor copy = t;  // copies share the blob and its owner
    EXPECT_EQ(t.data(), storage.data());
    EXPECT_EQ(copy.shape(), (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(t.view().stride[0], 3);
    EXPECT_EQ(copy.to_host(), storage);
    t.fill(0.5f);  // writes land in the caller's memory
    EXPECT_EQ(storage[4], 0.5f);
    EXPECT_EQ(*released, 0);
  }
  EXPECT_EQ(*released, 1);
  int32_t ids[3] = {4, 5, 6};
  const Tensor i = Tensor::from_blob(ids, {3}, DType::i32, Device::cpu);
  int32_t back[3] = {};
  i.copy_to_host(back);
  EXPECT_EQ(back[2], 6);
  EXPECT_TRUE(Tensor::from_blob(nullptr, {0, 4}, DType::bf16, Device::cpu).defined());
  EXPECT_THROW(Tensor::from_blob(nullptr, {2}, DType::f32, Device::cpu), Error);
  EXPECT_THROW(Tensor::from_blob(storage.data(), {-1}, DType::f32, Device::cpu), Error);
}

TEST(Tensor, CudaWithoutCudaThrows) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_THROW(Tensor::empty({4}, DType::f32, Device::cuda), Error);
  const float x[4] = {1, 2, 3, 4};
  EXPECT_THROW(Tensor::from_host(x, {4}, DType::bf16, Device::cuda), Error);
}

}  // namespace
}  // namespace flexattn
