// create_block_mask on the CPU against brute force: every element of every tile evaluated, for the
// stock masks, their combinations, custom functors (opaque and per-head), ragged lengths, Lq !=
// Lkv, several block sizes and B/H broadcast. Plus sparsity, to_string and the argument errors.
#include <gtest/gtest.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "flexattn/flexattn.h"

namespace {

using flexattn::BlockMaskData;
using flexattn::TileKind;

// Kind of every tile of every (b, h) by evaluating every in-range element. (B, H, nqb, nkvb)
template <class M>
std::vector<TileKind> brute_force_kinds(const M& m, int64_t B, int64_t H, int64_t Lq, int64_t Lkv,
                                        int bq, int bkv) {
  const int64_t nqb = (Lq + bq - 1) / bq, nkvb = (Lkv + bkv - 1) / bkv;
  std::vector<TileKind> kinds(static_cast<size_t>(B * H * nqb * nkvb));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t qb = 0; qb < nqb; ++qb)
        for (int64_t kb = 0; kb < nkvb; ++kb) {
          int64_t kept = 0, n = 0;
          for (int64_t q = qb * bq; q < std::min(Lq, (qb + 1) * bq); ++q)
            for (int64_t kv = kb * bkv; kv < std::min(Lkv, (kb + 1) * bkv); ++kv, ++n)
              kept += m(int(b), int(h), int(q), int(kv)) ? 1 : 0;
          kinds[static_cast<size_t>(((b * H + h) * nqb + qb) * nkvb + kb)] =
              kept == 0   ? TileKind::empty
              : kept == n ? TileKind::full
                          : TileKind::partial;
        }
  return kinds;
}

std::vector<int32_t> ints(const flexattn::Buffer& b) {
  std::vector<int32_t> v(b.bytes() / 4);
  b.copy_to_host(v.data(), b.bytes());
  return v;
}

// One list (count + first `count` indices of a row of `width`) against the expected indices.
void expect_list(const std::vector<int32_t>& num, const std::vector<int32_t>& idx, int64_t line,
                 int64_t width, const std::vector<int32_t>& expected, const char* what) {
  ASSERT_EQ(num[line], static_cast<int32_t>(expected.size())) << what << " count, line " << line;
  for (size_t j = 0; j < expected.size(); ++j) {
    ASSERT_EQ(idx[line * width + j], expected[j]) << what << " entry " << j << ", line " << line;
  }
}

// The lists and sparsity of `d` against brute-force tile kinds.
void expect_data_matches(const BlockMaskData& d, const std::vector<TileKind>& kinds) {
  const int64_t nqb = d.nqb, nkvb = d.nkvb;
  ASSERT_EQ(static_cast<int64_t>(kinds.size()), d.B * d.H * nqb * nkvb);
  const auto kv_num = ints(d.kv_num), kv_idx = ints(d.kv_idx);
  const auto fkv_num = ints(d.full_kv_num), fkv_idx = ints(d.full_kv_idx);
  const auto q_num = ints(d.q_num), q_idx = ints(d.q_idx);
  const auto fq_num = ints(d.full_q_num), fq_idx = ints(d.full_q_idx);
  int64_t computed = 0;
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    for (int64_t qb = 0; qb < nqb; ++qb) {
      std::vector<int32_t> partial, full;
      for (int64_t kb = 0; kb < nkvb; ++kb) {
        const TileKind t = kinds[static_cast<size_t>((bh * nqb + qb) * nkvb + kb)];
        if (t == TileKind::partial) partial.push_back(int32_t(kb));
        if (t == TileKind::full) full.push_back(int32_t(kb));
      }
      computed += static_cast<int64_t>(partial.size() + full.size());
      expect_list(kv_num, kv_idx, bh * nqb + qb, nkvb, partial, "partial kv");
      expect_list(fkv_num, fkv_idx, bh * nqb + qb, nkvb, full, "full kv");
    }
    for (int64_t kb = 0; kb < nkvb; ++kb) {
      std::vector<int32_t> partial, full;
      for (int64_t qb = 0; qb < nqb; ++qb) {
        const TileKind t = kinds[static_cast<size_t>((bh * nqb + qb) * nkvb + kb)];
        if (t == TileKind::partial) partial.push_back(int32_t(qb));
        if (t == TileKind::full) full.push_back(int32_t(qb));
      }
      expect_list(q_num, q_idx, bh * nkvb + kb, nqb, partial, "partial q");
      expect_list(fq_num, fq_idx, bh * nkvb + kb, nqb, full, "full q");
    }
  }
  const double expected = 100.0 * (1.0 - double(computed) / double(d.B * d.H * nqb * nkvb));
  EXPECT_NEAR(d.sparsity(), expected, 1e-9);
}

template <class M>
void check_mask(const M& m, int64_t B, int64_t H, int64_t Lq, int64_t Lkv, int bq, int bkv) {
  SCOPED_TRACE(::testing::Message() << "B=" << B << " H=" << H << " Lq=" << Lq << " Lkv=" << Lkv
                                    << " block " << bq << "x" << bkv);
  const auto bm = flexattn::create_block_mask(m, B, H, Lq, Lkv, {bq, bkv});
  ASSERT_EQ(bm.batch(), B);
  ASSERT_EQ(bm.heads(), H);
  ASSERT_EQ(bm.q_len(), Lq);
  ASSERT_EQ(bm.kv_len(), Lkv);
  ASSERT_EQ(bm.data().nqb, (Lq + bq - 1) / bq);
  ASSERT_EQ(bm.data().nkvb, (Lkv + bkv - 1) / bkv);
  expect_data_matches(bm.data(), brute_force_kinds(m, B, H, Lq, Lkv, bq, bkv));
}

// Documents of random lengths (1 .. ~L/3), so boundaries fall anywhere inside tiles.
std::vector<int32_t> random_doc_ids(int64_t n, std::mt19937& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::uniform_int_distribution<int64_t> len(1, std::max<int64_t>(1, n / 3));
  int32_t doc = 0;
  for (int64_t i = 0; i < n;) {
    for (int64_t e = std::min(n, i + len(rng)); i < e; ++i) ids[size_t(i)] = doc;
    ++doc;
  }
  return ids;
}

const std::pair<int64_t, int64_t> kLengths[] = {{1, 1},       {17, 17},   {127, 127}, {129, 129},
                                                {1000, 1000}, {127, 129}, {1000, 17}, {17, 1000},
                                                {129, 1000},  {256, 256}};
const std::pair<int, int> kBlocks[] = {{16, 16},   {32, 32}, {64, 64},
                                       {128, 128}, {16, 64}, {128, 32}};

class BlockMaskStock : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    rng_.seed(seed_);
  }
  unsigned seed_ = 0;
  std::mt19937 rng_;
};

// Every stock mask and combination, at every length pair and block size.
TEST_F(BlockMaskStock, MatchesBruteForce) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed_);
  for (auto [Lq, Lkv] : kLengths) {
    const std::vector<int32_t> ids = random_doc_ids(std::max(Lq, Lkv), rng_);
    const auto doc = flexattn::document(ids.data());
    for (auto [bq, bkv] : kBlocks) {
      check_mask(flexattn::noop_mask(), 1, 1, Lq, Lkv, bq, bkv);
      check_mask(flexattn::causal(), 1, 1, Lq, Lkv, bq, bkv);
      for (int w : {0, 5, 100}) check_mask(flexattn::sliding_window(w), 1, 1, Lq, Lkv, bq, bkv);
      for (int p : {0, 10, 300}) check_mask(flexattn::prefix_lm(p), 1, 1, Lq, Lkv, bq, bkv);
      check_mask(doc, 1, 1, Lq, Lkv, bq, bkv);
      check_mask(flexattn::and_masks(flexattn::causal(), doc), 1, 1, Lq, Lkv, bq, bkv);
      check_mask(flexattn::or_masks(flexattn::sliding_window(20), flexattn::prefix_lm(50)), 1, 1,
                 Lq, Lkv, bq, bkv);
      check_mask(flexattn::not_mask(flexattn::causal()), 1, 1, Lq, Lkv, bq, bkv);
      check_mask(flexattn::and_masks(flexattn::causal(),
                                     flexattn::not_mask(flexattn::sliding_window(30)), doc),
                 1, 1, Lq, Lkv, bq, bkv);
      check_mask(flexattn::or_masks(flexattn::not_mask(doc), flexattn::sliding_window(7)), 1, 1, Lq,
                 Lkv, bq, bkv);
    }
  }
}

// A mask_mod without a tile rule (causal written by hand) goes through the element scan.
TEST(BlockMask, OpaqueLambdaMatchesBruteForce) {
  const auto by_hand = [](int, int, int q, int kv) { return kv <= q; };
  static_assert(!flexattn::HasTileRule<decltype(by_hand)>);
  for (auto [Lq, Lkv] : kLengths)
    for (auto [bq, bkv] : kBlocks) check_mask(by_hand, 1, 1, Lq, Lkv, bq, bkv);
}

// Pseudo-random masks: block-structured at 8 elements (so tiles of 16+ can be empty or full as
// well as partial) and fully random (nearly every tile partial).
TEST_F(BlockMaskStock, RandomMasksMatchBruteForce) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed_);
  const uint32_t salt = static_cast<uint32_t>(rng_());
  auto hash = [salt](uint32_t x) {
    x ^= salt;
    x *= 0x9E3779B1u;
    x ^= x >> 15;
    x *= 0x85EBCA77u;
    return x ^ (x >> 13);
  };
  const auto coarse = [hash](int b, int h, int q, int kv) {
    return hash(uint32_t((q / 8) * 7919 + (kv / 8) * 104729 + b * 31 + h * 17)) % 3 == 0;
  };
  const auto fine = [hash](int, int, int q, int kv) {
    return hash(uint32_t(q * 65537 + kv)) % 2 == 0;
  };
  for (auto [Lq, Lkv] : kLengths)
    for (auto [bq, bkv] : kBlocks) {
      check_mask(coarse, 2, 3, Lq, Lkv, bq, bkv);
      check_mask(fine, 1, 1, Lq, Lkv, bq, bkv);
    }
}

// A per-(b, h) mask with an exact tile rule: a sliding window whose width depends on b and h.
struct PerHeadWindow {
  bool operator()(int b, int h, int q, int kv) const {
    return q - kv >= 0 && q - kv <= width(b, h);
  }
  TileKind tile_kind(int b, int h, int q0, int q1, int k0, int k1) const {
    return flexattn::detail::diagonal_band_tile(q0, q1, k0, k1, 0, width(b, h));
  }
  static int width(int b, int h) { return 3 + 40 * h + 7 * b; }
};

// A per-(b, h) mask with no tile rule: each head keeps a different residue class of columns.
struct PerHeadStripes {
  bool operator()(int b, int h, int q, int kv) const { return (kv + q / 50) % (h + 2) != b; }
};

TEST(BlockMask, PerHeadMasksMatchBruteForce) {
  for (auto [Lq, Lkv] : {std::pair<int64_t, int64_t>{129, 1000}, {1000, 1000}, {17, 17}})
    for (auto [bq, bkv] : kBlocks) {
      check_mask(PerHeadWindow{}, 2, 4, Lq, Lkv, bq, bkv);
      check_mask(PerHeadStripes{}, 3, 2, Lq, Lkv, bq, bkv);
      check_mask(flexattn::and_masks(PerHeadWindow{}, flexattn::not_mask(PerHeadStripes{})), 2, 3,
                 Lq, Lkv, bq, bkv);
    }
}

// B or H of 1 broadcasts: the functor is only ever called with b < B and h < H.
TEST(BlockMask, BroadcastShapesMatchBruteForce) {
  check_mask(PerHeadWindow{}, 1, 5, 300, 300, 64, 64);
  check_mask(PerHeadWindow{}, 4, 1, 300, 300, 64, 64);
  check_mask(flexattn::causal(), 3, 2, 300, 257, 64, 32);
}

// The builder never calls a mask_mod with an index out of range, ragged tiles included.
struct RangeChecked {
  int B, H, Lq, Lkv;
  std::atomic<int>* bad;
  bool operator()(int b, int h, int q, int kv) const {
    if (b < 0 || b >= B || h < 0 || h >= H || q < 0 || q >= Lq || kv < 0 || kv >= Lkv) ++*bad;
    return (q + kv) % 3 != 0;
  }
};

TEST(BlockMask, NeverCallsMaskModOutOfRange) {
  std::atomic<int> bad{0};
  for (auto [Lq, Lkv] : kLengths)
    for (auto [bq, bkv] : kBlocks) {
      const RangeChecked m{2, 3, int(Lq), int(Lkv), &bad};
      flexattn::create_block_mask(m, 2, 3, Lq, Lkv, {bq, bkv});
      flexattn::create_block_mask(flexattn::and_masks(flexattn::causal(), m), 2, 3, Lq, Lkv,
                                  {bq, bkv});
    }
  EXPECT_EQ(bad.load(), 0);
}

// Block sizes larger than the sequence: one ragged tile per side.
TEST(BlockMask, BlockLargerThanSequence) {
  check_mask(flexattn::causal(), 1, 1, 5, 9, 128, 128);
  check_mask(flexattn::sliding_window(2), 1, 1, 9, 5, 64, 16);
}

TEST(BlockMask, SparsityOfKnownMasks) {
  // 8 x 8 tiles of 128: causal keeps the 36 tiles on or below the diagonal.
  const auto causal = flexattn::create_block_mask(flexattn::causal(), 1, 1, 1024, 1024);
  EXPECT_NEAR(causal.sparsity(), 100.0 * (1.0 - 36.0 / 64.0), 1e-12);
  const auto all = flexattn::create_block_mask(flexattn::noop_mask(), 2, 3, 1000, 300);
  EXPECT_EQ(all.sparsity(), 0.0);
  const auto none =
      flexattn::create_block_mask(flexattn::not_mask(flexattn::noop_mask()), 1, 2, 100, 100);
  EXPECT_EQ(none.sparsity(), 100.0);
}

TEST(BlockMask, ToStringPicture) {
  // 4 x 4 tiles, one character pair per tile: the diagonal tiles are partial, which draw as
  // computed (PyTorch draws partial and full alike).
  const auto bm = flexattn::create_block_mask(flexattn::causal(), 1, 1, 512, 512);
  EXPECT_EQ(bm.to_string(),
            "(0, 0)\n"
            "██      \n"
            "████    \n"
            "██████  \n"
            "████████\n");
  // Two tiles per character each way: the diagonal 2x2 groups are mixed.
  EXPECT_EQ(bm.to_string(2, 2),
            "(0, 0)\n"
            "░░  \n"
            "██░░\n");
}

TEST(BlockMask, ToStringHeadsAndLimit) {
  const auto bm = flexattn::create_block_mask(flexattn::causal(), 2, 3, 300, 300);
  const std::string s = bm.to_string(20, 20, 4);
  EXPECT_NE(s.find("(0, 0)\n"), std::string::npos);
  EXPECT_NE(s.find("(1, 0)\n"), std::string::npos);
  EXPECT_EQ(s.find("(1, 1)"), std::string::npos);
  EXPECT_EQ(s.substr(s.size() - 4), "\n...");
  // 3 x 3 tiles, 4 heads shown: a header and 3 grid rows of 3 pairs each.
  size_t rows = 0;
  for (size_t at = 0; (at = s.find("\n", at)) != std::string::npos; ++at) ++rows;
  EXPECT_EQ(rows, 4u * 4u + 3u + 1u);  // 4 blocks of 4 lines, 3 separators, the "..." line break
  // A large grid (128 x 128 tiles) is summarised to at most 20 x 20 character pairs: 7 x 7 tiles
  // each (ceil(128 / 20)), so 19 x 19 pairs, as PyTorch draws it.
  const std::string g =
      flexattn::create_block_mask(flexattn::causal(), 1, 1, 16384, 16384).to_string();
  std::vector<size_t> line_chars{0};  // characters (UTF-8 code points) per line
  for (unsigned char ch : g) {
    if (ch == '\n') {
      line_chars.push_back(0);
    } else if ((ch & 0xC0) != 0x80) {
      ++line_chars.back();
    }
  }
  ASSERT_EQ(line_chars.size(), 1u + 19u + 1u);  // header, 19 rows, empty after the last newline
  for (size_t r = 1; r <= 19; ++r) EXPECT_EQ(line_chars[r], 38u) << "row " << r;
  EXPECT_EQ(flexattn::create_block_mask(flexattn::causal(), 1, 1, 256, 256).to_string(20, 20, 0),
            "...");
}

TEST(BlockMask, ToCpuOnCpuSharesData) {
  const auto bm = flexattn::create_block_mask(flexattn::causal(), 1, 2, 300, 200, {64, 32});
  const BlockMaskData h = bm.data().to_cpu();
  EXPECT_EQ(h.device, flexattn::Device::cpu);
  EXPECT_EQ(h.kv_idx.data(), bm.data().kv_idx.data());
  EXPECT_EQ(h.nqb, 5);
  EXPECT_EQ(h.nkvb, 7);
}

TEST(BlockMask, DenseBlockMaskForAttention) {
  const std::vector<float> x(2 * 3 * 40 * 8, 0.5f);
  const auto q = flexattn::Tensor::from_host(x.data(), {2, 3, 17, 8}, flexattn::DType::f32);
  const auto k = flexattn::Tensor::from_host(x.data(), {2, 3, 40, 8}, flexattn::DType::f32);
  const auto bm = flexattn::detail::dense_block_mask(q, k, nullptr);
  EXPECT_EQ(bm.batch(), 1);
  EXPECT_EQ(bm.heads(), 1);
  EXPECT_EQ(bm.q_len(), 17);
  EXPECT_EQ(bm.kv_len(), 40);
  EXPECT_EQ(bm.sparsity(), 0.0);
  expect_data_matches(bm.data(), brute_force_kinds(flexattn::noop_mask(), 1, 1, 17, 40, 128, 128));
}

// Each bad argument throws flexattn::Error whose message names it.
TEST(BlockMask, BadArgumentsThrow) {
  const auto expect_error = [](auto make, const char* name) {
    try {
      make();
      ADD_FAILURE() << "no Error for bad " << name;
    } catch (const flexattn::Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  };
  const auto c = flexattn::causal();
  expect_error([&] { flexattn::create_block_mask(c, 0, 1, 16, 16); }, "B");
  expect_error([&] { flexattn::create_block_mask(c, 1, -2, 16, 16); }, "H");
  expect_error([&] { flexattn::create_block_mask(c, 1, 1, 0, 16); }, "q_len");
  expect_error([&] { flexattn::create_block_mask(c, 1, 1, 16, -1); }, "kv_len");
  expect_error([&] { flexattn::create_block_mask(c, 1, 1, 16, 16, {0, 128}); }, "block_q");
  expect_error([&] { flexattn::create_block_mask(c, 1, 1, 16, 16, {128, -4}); }, "block_kv");
  expect_error([&] { flexattn::create_block_mask(c, 1, 1, int64_t(INT_MAX) + 1, 16); }, "q_len");
  if (!flexattn::cuda_available()) {
    flexattn::BlockMaskOptions o;
    o.device = flexattn::Device::cuda;
    expect_error([&] { flexattn::create_block_mask(c, 1, 1, 16, 16, o); }, "cuda");
  }
}

}  // namespace
