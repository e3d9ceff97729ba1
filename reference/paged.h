// The float64 oracle for attention over a paged KV cache (flexattn/paged.h), with the SAME
// functors as the library. It is the contiguous oracle (reference.h) run once per sequence on the
// sequence's tokens gathered out of the pages, with the indices the paged contract gives the
// functors:
//
//   sequence b holds kv_len[b] tokens; token t is row t % page_size of page
//       page_table[b][t / page_size]
//   query row i of q [B, Hq, Lq, D] is the token q_idx = kv_len[b] - Lq + i; kv_idx = t
//   rows with q_idx < 0 and every row of a kv_len 0 sequence: out 0, lse -inf, no functor call
//
// Only tokens below kv_len[b] are gathered, so whatever the other page rows hold (NaN, inf) never
// enters the computation. Layout: q [B, Hq, Lq, D], k_pages [num_pages, Hkv, page_size, D],
// v_pages [num_pages, Hkv, page_size, Dv], page_table [B, max_pages], kv_len [B], all row-major.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "reference.h"

namespace flexattn::reference {

struct PagedCase {
  int64_t B = 1, Hq = 1, Hkv = 1, Lq = 1, D = 1, Dv = 1, num_pages = 1, page_size = 1,
          max_pages = 1;
  std::vector<double> q;            // [B, Hq, Lq, D]
  std::vector<double> k_pages;      // [num_pages, Hkv, page_size, D]
  std::vector<double> v_pages;      // [num_pages, Hkv, page_size, Dv]
  std::vector<int32_t> page_table;  // [B, max_pages]
  std::vector<int32_t> kv_len;      // [B]
};

// Sequence b's keys (values = false) or values (true) as contiguous [Hkv, kv_len[b], D or Dv].
inline std::vector<double> gather(const PagedCase& c, int64_t b, bool values) {
  const int64_t len = c.kv_len[size_t(b)], width = values ? c.Dv : c.D;
  const std::vector<double>& pages = values ? c.v_pages : c.k_pages;
  if (len < 0 || len > c.max_pages * c.page_size) {
    throw std::invalid_argument("reference::gather: kv_len outside the sequence's pages");
  }
  std::vector<double> out(size_t(c.Hkv * len * width));
  for (int64_t h = 0; h < c.Hkv; ++h) {
    for (int64_t t = 0; t < len; ++t) {
      const int64_t page = c.page_table[size_t(b * c.max_pages + t / c.page_size)];
      if (page < 0 || page >= c.num_pages) {
        throw std::invalid_argument("reference::gather: page id outside [0, num_pages)");
      }
      const double* src =
          &pages[size_t(((page * c.Hkv + h) * c.page_size + t % c.page_size) * width)];
      std::copy(src, src + width, &out[size_t((h * len + t) * width)]);
    }
  }
  return out;
}

template <class S, class M>
ForwardResult paged_forward(const PagedCase& c, double scale, const S& score_mod,
                            const M& mask_mod) {
  ForwardResult r{
      std::vector<double>(size_t(c.B * c.Hq * c.Lq * c.Dv), 0.0),
      std::vector<double>(size_t(c.B * c.Hq * c.Lq), -std::numeric_limits<double>::infinity())};
  for (int64_t b = 0; b < c.B; ++b) {
    const int64_t len = c.kv_len[size_t(b)];
    if (len == 0) continue;                          // no keys: out 0, lse -inf
    const int bi = int(b), q_off = int(len - c.Lq);  // q_idx of query row i is q_off + i
    // Sequence b alone, as a batch of one: the wrappers hand the functors the real b and the
    // logical positions; rows with q_idx < 0 are masked here, before the user's mask is asked.
    const auto score = [&](auto s, int, int h, int i, int j) {
      return score_mod(s, bi, h, q_off + i, j);
    };
    const auto mask = [&](int, int h, int i, int j) {
      return q_off + i >= 0 && bool(mask_mod(bi, h, q_off + i, j));
    };
    const Shape sh{1, c.Hq, c.Hkv, c.Lq, len, c.D, c.Dv};
    const size_t q_rows = size_t(c.Hq * c.Lq);
    const std::vector<double> q(c.q.begin() + ptrdiff_t(b * q_rows * c.D),
                                c.q.begin() + ptrdiff_t((b + 1) * q_rows * c.D));
    const ForwardResult one =
        forward(sh, q, gather(c, b, false), gather(c, b, true), scale, score, mask);
    std::copy(one.out.begin(), one.out.end(), r.out.begin() + ptrdiff_t(b * q_rows * c.Dv));
    std::copy(one.lse.begin(), one.lse.end(), r.lse.begin() + ptrdiff_t(b * q_rows));
  }
  return r;
}

}  // namespace flexattn::reference
