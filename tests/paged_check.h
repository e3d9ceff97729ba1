// Random paged KV caches and their checks, shared by the CPU suite (test_paged.cpp) and the GPU
// one: a cache whose pages sit in shuffled order with NaN / inf garbage in every row no token
// owns, the same values in float64 for the oracle (reference/paged.h), and the tolerance rule of
// attn_check.h (error vs float64 <= kFactor x the naive low-precision error + atol) applied per
// sequence on the gathered keys.
#pragma once

#include <flexattn/flexattn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "attn_check.h"
#include "reference/paged.h"

namespace flexattn::testing {

struct PagedShape {
  int64_t B = 1, Hq = 1, Hkv = 1, Lq = 1, D = 16, Dv = 16, page_size = 16;
  std::vector<int> kv_len;  // B lengths, ragged
  // Page-table slots past the longest sequence's pages (room for append_kv).
  int64_t spare_pages = 1;
};

inline std::string describe(const PagedShape& s, DType dt) {
  std::ostringstream o;
  o << "B=" << s.B << " Hq=" << s.Hq << " Hkv=" << s.Hkv << " Lq=" << s.Lq << " D=" << s.D
    << " Dv=" << s.Dv << " page_size=" << s.page_size << " dtype=" << to_string(dt) << " kv_len={";
  for (size_t b = 0; b < s.kv_len.size(); ++b) o << (b ? "," : "") << s.kv_len[b];
  o << "}";
  return o.str();
}

struct PagedInputs {
  reference::PagedCase ref;  // the same values in float64 (garbage included)
  PagedKV kv;
  Tensor q;
};

// Values no token owns: the kernels must never let them reach an output.
inline float garbage(std::mt19937_64& rng) {
  constexpr float kinds[] = {kNaN, kInf, -kInf, 3e38f};
  return kinds[rng() % 4];
}

// max_pages = the longest sequence's pages + spare_pages; num_pages = B * max_pages + 2 (two
// pages no sequence lists). Every table slot holds a distinct page, in shuffled order. Values are
// rounded to the dtype before both sides see them.
inline PagedInputs make_paged_inputs(std::mt19937_64& rng, const PagedShape& s, DType dtype,
                                     Device device = Device::cpu) {
  if (int64_t(s.kv_len.size()) != s.B) {
    throw std::invalid_argument("make_paged_inputs: kv_len must hold B lengths");
  }
  const int64_t ps = s.page_size;
  const int64_t longest = *std::max_element(s.kv_len.begin(), s.kv_len.end());
  reference::PagedCase c;
  c.B = s.B;
  c.Hq = s.Hq;
  c.Hkv = s.Hkv;
  c.Lq = s.Lq;
  c.D = s.D;
  c.Dv = s.Dv;
  c.page_size = ps;
  c.max_pages = (longest + ps - 1) / ps + s.spare_pages;
  c.num_pages = s.B * c.max_pages + 2;

  std::vector<int32_t> perm(size_t(c.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  c.page_table.assign(perm.begin(), perm.begin() + ptrdiff_t(s.B * c.max_pages));
  c.kv_len.assign(s.kv_len.begin(), s.kv_len.end());

  // Which token each page row holds (-1: none).
  std::vector<int64_t> token(size_t(c.num_pages * ps), -1);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t = 0; t < s.kv_len[size_t(b)]; ++t)
      token[size_t(c.page_table[size_t(b * c.max_pages + t / ps)] * ps + t % ps)] = t;
  auto pages = [&](int64_t width) {
    std::vector<float> x(size_t(c.num_pages * s.Hkv * ps * width));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t p = 0; p < c.num_pages; ++p)
      for (int64_t h = 0; h < s.Hkv; ++h)
        for (int64_t r = 0; r < ps; ++r)
          for (int64_t e = 0; e < width; ++e)
            x[size_t(((p * s.Hkv + h) * ps + r) * width + e)] = reference::round_to(
                dtype, token[size_t(p * ps + r)] >= 0 ? normal(rng) : garbage(rng));
    return x;
  };
  const std::vector<float> k = pages(s.D), v = pages(s.Dv);
  const std::vector<float> q = random_input(s.B * s.Hq * s.Lq * s.D, dtype, rng);
  c.k_pages = reference::to_double(k);
  c.v_pages = reference::to_double(v);
  c.q = reference::to_double(q);

  PagedInputs in;
  in.kv.k_pages = Tensor::from_host(k.data(), {c.num_pages, s.Hkv, ps, s.D}, dtype, device);
  in.kv.v_pages = Tensor::from_host(v.data(), {c.num_pages, s.Hkv, ps, s.Dv}, dtype, device);
  in.kv.page_table = Tensor::from_host(c.page_table.data(), {s.B, c.max_pages}, device);
  in.kv.kv_len = Tensor::from_host(c.kv_len.data(), {s.B}, device);
  in.q = Tensor::from_host(q.data(), {s.B, s.Hq, s.Lq, s.D}, dtype, device);
  in.ref = std::move(c);
  return in;
}

// The naive low-precision algorithm of attn_check.h per sequence, on the gathered keys, with the
// paged indices (reference/paged.h): the baseline of the tolerance.
template <class S, class M>
LowpForward naive_paged_lowp(const reference::PagedCase& c, DType dt, float scale,
                             const S& score_mod, const M& mask_mod) {
  LowpForward r{std::vector<float>(size_t(c.B * c.Hq * c.Lq * c.Dv), 0.0f),
                std::vector<float>(size_t(c.B * c.Hq * c.Lq), -kInf)};
  for (int64_t b = 0; b < c.B; ++b) {
    const int64_t len = c.kv_len[size_t(b)];
    if (len == 0) continue;
    const int bi = int(b), q_off = int(len - c.Lq);
    const auto score = [&](auto s, int, int h, int i, int j) {
      return score_mod(s, bi, h, q_off + i, j);
    };
    const auto mask = [&](int, int h, int i, int j) {
      return q_off + i >= 0 && bool(mask_mod(bi, h, q_off + i, j));
    };
    const size_t rows = size_t(c.Hq * c.Lq);
    auto floats = [](const std::vector<double>& x) {
      return std::vector<float>(x.begin(), x.end());
    };
    const std::vector<float> q(c.q.begin() + ptrdiff_t(b * rows * c.D),
                               c.q.begin() + ptrdiff_t((b + 1) * rows * c.D));
    const LowpForward one = naive_forward_lowp(Shape{1, c.Hq, c.Hkv, c.Lq, len, c.D, c.Dv}, dt,
                                               scale, q, floats(reference::gather(c, b, false)),
                                               floats(reference::gather(c, b, true)), score, mask);
    std::copy(one.out.begin(), one.out.end(), r.out.begin() + ptrdiff_t(b * rows * c.Dv));
    std::copy(one.lse.begin(), one.lse.end(), r.lse.begin() + ptrdiff_t(b * rows));
  }
  return r;
}

// out [B, Hq, Lq, Dv] and lse [B, Hq, Lq] (logical row-major, read back from the device) against
// the oracle: the tolerance rule, and rows the oracle finds fully masked (q_idx < 0, kv_len 0,
// every key masked) exactly out 0, lse -inf.
inline void expect_paged_matches(const PagedInputs& in, const std::vector<float>& out,
                                 const std::vector<float>& lse, const reference::ForwardResult& ref,
                                 const LowpForward& naive, DType dt) {
  const reference::PagedCase& c = in.ref;
  expect_close("out", out, ref.out, naive.out, dt);
  expect_close("lse", lse, ref.lse, naive.lse, DType::f32);
  const Shape rows{.B = c.B, .Hq = c.Hq, .Hkv = c.Hkv, .Lq = c.Lq, .Lkv = 1, .D = c.D, .Dv = c.Dv};
  expect_masked_rows_exact(rows, out, lse, ref.lse);
}
inline void expect_paged_matches(const PagedInputs& in, const AttentionOutput& got,
                                 const reference::ForwardResult& ref, const LowpForward& naive,
                                 DType dt) {
  expect_paged_matches(in, got.out.to_host(), got.lse.to_host(), ref, naive, dt);
}

// The oracle and the baseline for these functors, then expect_paged_matches. scale is resolved
// (AttentionOptions.scale, or 1/sqrt(D) for 0).
template <class S, class M>
void check_paged(const PagedInputs& in, const std::vector<float>& out,
                 const std::vector<float>& lse, DType dt, float scale, const S& score_mod,
                 const M& mask_mod) {
  const reference::ForwardResult ref =
      reference::paged_forward(in.ref, double(scale), score_mod, mask_mod);
  const LowpForward naive = naive_paged_lowp(in.ref, dt, scale, score_mod, mask_mod);
  expect_paged_matches(in, out, lse, ref, naive, dt);
}

// The options a paged case runs with: GQA on when the heads differ, `scale` (0: 1/sqrt(D)).
inline AttentionOptions options_for(const PagedShape& s, float scale = 0.0f) {
  AttentionOptions opts;
  opts.enable_gqa = s.Hq != s.Hkv;
  opts.scale = scale;
  return opts;
}

inline float resolved_scale(const AttentionOptions& opts, int64_t D) {
  return opts.scale != 0.0f ? opts.scale : 1.0f / std::sqrt(float(D));
}

}  // namespace flexattn::testing
