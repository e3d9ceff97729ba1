// Only create_block_mask makes lists an attention call accepts (item 6 of the reliability issue):
// a hand-built BlockMaskData, or a built one whose geometry or buffers were edited, is refused with
// an Error naming the field before any output is written - never a SIGFPE, an unwritten output or
// a null dereference.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "flexattn/flexattn.h"

namespace {

using flexattn::BlockMask;
using flexattn::BlockMaskData;
using flexattn::CausalMask;
using flexattn::DType;
using flexattn::Error;
using flexattn::Tensor;
using ::testing::HasSubstr;

struct Problem {
  Tensor q, k, v, out, lse, dout, dq, dk, dv;
  Problem() {
    std::mt19937 rng(1234);
    std::normal_distribution<float> n(0.0f, 1.0f);
    auto random = [&](std::vector<int64_t> shape) {
      int64_t count = 1;
      for (int64_t d : shape) count *= d;
      std::vector<float> x(static_cast<size_t>(count));
      for (float& e : x) e = n(rng);
      return Tensor::from_host(x.data(), shape, DType::f32);
    };
    q = random({1, 2, 40, 8});
    k = random({1, 2, 40, 8});
    v = random({1, 2, 40, 8});
    dout = random({1, 2, 40, 8});
    out = Tensor::empty({1, 2, 40, 8}, DType::f32);
    lse = Tensor::empty({1, 2, 40}, DType::f32);
    dq = Tensor::empty({1, 2, 40, 8}, DType::f32);
    dk = Tensor::empty({1, 2, 40, 8}, DType::f32);
    dv = Tensor::empty({1, 2, 40, 8}, DType::f32);
    for (Tensor* t : {&out, &lse, &dq, &dk, &dv}) t->fill(std::nanf(""));
  }
  bool outputs_untouched() const {
    for (const Tensor* t : {&out, &lse, &dq, &dk, &dv})
      for (float x : t->to_host())
        if (!std::isnan(x)) return false;
    return true;
  }
};

// Every entry point refuses `mask` with an Error containing each of `words`.
void expect_refused(const BlockMask<CausalMask>& mask, std::vector<std::string> words) {
  Problem p;
  const std::vector<std::pair<const char*, std::function<void()>>> calls = {
      {"flex_attention_into",
       [&] {
         flexattn::flex_attention_into(p.q.view(), p.k.view(), p.v.view(), p.out.view(),
                                       p.lse.view(), flexattn::NoopScore{}, mask);
       }},
      {"flex_attention_backward_into",
       [&] {
         flexattn::flex_attention_backward_into(p.q.view(), p.k.view(), p.v.view(), p.out.view(),
                                                p.lse.view(), p.dout.view(), p.dq.view(),
                                                p.dk.view(), p.dv.view(), flexattn::NoopScore{},
                                                mask);
       }},
      {"flex_attention", [&] { (void)flexattn::flex_attention(p.q, p.k, p.v, mask); }},
      {"flex_attention_backward",
       [&] {
         (void)flexattn::flex_attention_backward(p.q, p.k, p.v, p.out, p.lse, p.dout, mask);
       }},
  };
  for (const auto& [name, call] : calls) {
    try {
      call();
      ADD_FAILURE() << name << " accepted the mask";
    } catch (const Error& e) {
      for (const std::string& w : words) EXPECT_THAT(e.what(), HasSubstr(w)) << name;
    }
  }
  EXPECT_TRUE(p.outputs_untouched());
}

BlockMask<CausalMask> built() {
  return flexattn::create_block_mask(flexattn::causal(), 1, 1, 40, 40, {.block_q = 16, .block_kv = 8});
}

TEST(BlockMaskSeal, BuiltMaskIsAccepted) {
  Problem p;
  const auto mask = built();
  flexattn::flex_attention_into(p.q.view(), p.k.view(), p.v.view(), p.out.view(), p.lse.view(),
                                flexattn::NoopScore{}, mask);
  for (float x : p.out.to_host()) ASSERT_FALSE(std::isnan(x));
  // Copies and host copies of a built mask are built masks.
  const BlockMask<CausalMask> copy(flexattn::causal(), mask.data().to_cpu());
  EXPECT_NO_THROW(flexattn::flex_attention(p.q, p.k, p.v, copy));
}

TEST(BlockMaskSeal, HandBuiltIsRefused) {
  expect_refused(BlockMask<CausalMask>(flexattn::causal(), BlockMaskData{}),
                 {"block_mask", "create_block_mask"});
  // Allocated with the right geometry, but never filled by a builder.
  expect_refused(BlockMask<CausalMask>(flexattn::causal(),
                                       BlockMaskData::allocate(1, 1, 40, 40, 16, 8,
                                                               flexattn::Device::cpu)),
                 {"block_mask", "create_block_mask"});
}

TEST(BlockMaskSeal, EditedGeometryIsRefused) {
  const auto edit = [](const std::function<void(BlockMaskData&)>& f) {
    BlockMaskData d = built().data();
    f(d);
    return BlockMask<CausalMask>(flexattn::causal(), d);
  };
  expect_refused(edit([](BlockMaskData& d) { d.block_q = 0; }), {"block_mask.block_q", "16"});
  // block_q = 1 with the old block count: every q-block would cover one row only.
  expect_refused(edit([](BlockMaskData& d) { d.block_q = 1; }), {"block_mask.block_q"});
  expect_refused(edit([](BlockMaskData& d) { d.nkvb = 1000; }), {"block_mask.nkvb"});
  expect_refused(edit([](BlockMaskData& d) { d.kv_idx = flexattn::Buffer{}; }),
                 {"block_mask.kv_idx"});
  expect_refused(edit([](BlockMaskData& d) {
                   d.full_q_idx = flexattn::Buffer::allocate(4, flexattn::Device::cpu);
                 }),
                 {"block_mask.full_q_idx"});
}

TEST(BlockMaskSeal, EditedCopyStaysRefusedThroughToCpu) {
  BlockMaskData d = built().data();
  d.block_kv = 4;
  expect_refused(BlockMask<CausalMask>(flexattn::causal(), d.to_cpu()), {"block_mask.block_kv"});
}

TEST(BlockMaskSeal, AllocatorNeedsBothFunctions) {
  flexattn::CudaAllocator half;
  half.allocate = [](size_t, int, void*, void*) -> void* { return nullptr; };
  try {
    flexattn::set_cuda_allocator(half);
    ADD_FAILURE() << "a CudaAllocator without deallocate was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("set_cuda_allocator"));
    EXPECT_THAT(e.what(), HasSubstr("deallocate"));
  }
  EXPECT_NO_THROW(flexattn::set_cuda_allocator({}));
}

}  // namespace
