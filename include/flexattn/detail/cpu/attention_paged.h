// The CPU forward over a paged KV cache (paged.h): decoding (Lq small) and chunked prefill.
//
// The kv lengths are read on the host first and checked with every page id below them, so a bad
// one throws Error before anything is written. The call is then planned from them (make_plan):
//
//   group  (b, kv head hk): the Hq/Hkv query heads reading hk times the sequence's valid query
//          rows (q_idx = kv_len - Lq + i >= 0), head-major: group row r is query head
//          hk * G + r / nv, query row Lq - nv + r % nv, where nv = min(Lq, kv_len).
//   tile   up to kMaxTileQ (128) rows of a group, in near-equal tiles: one M tile of the shared
//          chunk step (fwd::Tile), so each K / V chunk is read and converted once per tile, not
//          once per query head. A tile of at most kQueryMajorMaxRows rows (a decode step's group)
//          keeps its scores query-major, so the K product and the softmax fill the SIMD lanes.
//   part   a range of the sequence's keys. When the tiles alone cannot keep every thread busy
//          (a few long sequences: B * Hkv * tiles < 2 * threads) each tile's keys are split into
//          parts run by different threads; each writes a partial (out, lse) to a buffer and one
//          merge per row (detail::merge_lse / merge_weight) writes the result.
//
// Chunks of keys: f32 pages of at least kInPlaceMinPage rows are read in place (a chunk never
// crosses a page: at most 128 keys of one page); smaller pages and f16 / bf16 are gathered row by
// row through the page table into the scratch buffer (converted to f32 on the way), 128 keys at
// a time. Reading in place matters: a decode step is a stream over K and V, and a copy would add
// a pass over every byte.
//
// Masks: keys t >= kv_len[b] are never in a chunk, and rows with q_idx < 0 are never in a tile,
// so neither reaches a functor (whatever the unused page rows hold, NaN included). With a tile
// rule (HasTileRule) each head's run of rows in a tile asks tile_kind(b, h, q0, q1, k0, k1) per
// chunk: a chunk empty for every head is skipped unread (a sliding-window decode reads only the
// window), a full head skips the per-element mask, an empty one gets -inf; without a rule every
// chunk is masked per element.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../../mods.h"
#include "../args.h"
#include "../merge.h"
#include "attention_fwd.h"
#include "kernels.h"

namespace flexattn::detail::cpu {

namespace paged {

using fwd::kMaxChunkKV;
using fwd::kMaxTileQ;

// f32 pages of at least this many rows are read in place, page by page. Below it a chunk of one
// page is too short to pay for its per-chunk steps (product calls, softmax, rescale of O) and 128
// keys are gathered into the scratch buffer instead, with the rows kPrefetchRows ahead asked
// for: at page 16 (decode, B=8 Hq=32 Hkv=8 L=32768 D=128 f32, 2 threads of a Zen 4 EPYC) in
// place ran at 0.63-0.66x the contiguous step, gathered 0.69x, gathered with the prefetch
// 0.79-0.88x (same runs; the machine's memcpy varied 16-24 GB/s between runs).
inline constexpr int64_t kInPlaceMinPage = 32;
// How far ahead of the row being gathered its K and V rows are prefetched (16, 32, 64 and 128
// measured at page 16 as above: 64 and 128 best). Pages in random order end the hardware
// prefetchers' streams at every page (8 KB at page 16, f32, D = 128).
inline constexpr int64_t kPrefetchRows = 64;
// No part is shorter than this: each part loads its Q tile, writes a partial row and is merged.
inline constexpr int64_t kMinPartKeys = 512;
// Tiles of at most this many rows keep their scores query-major (fwd::Tile). Measured on AVX-512
// decode tiles: query-major is ~2.5x faster at 4 rows, ~10% faster at 16, slower at 32.
inline constexpr int kQueryMajorMaxRows = 16;

// Rows of a (b, kv head) group that are real tokens, per query head, and the q_idx of query row 0.
inline int64_t valid_rows(const PagedArgs& a, int64_t len) {
  return a.q_from_start ? a.dims.Lq : std::min(a.dims.Lq, len);
}
inline int64_t q_offset(const PagedArgs& a, int64_t len) {
  return a.q_from_start ? 0 : len - a.dims.Lq;
}

// page_table[b][p].
inline int32_t table_at(const TensorView& t, int64_t b, int64_t p) {
  return static_cast<const int32_t*>(t.data)[b * t.stride[0] + p * t.stride[1]];
}

// The kv lengths, each checked with the page ids of its tokens. Throws Error (nothing written).
inline std::vector<int64_t> checked_lengths(const PagedArgs& a) {
  const int64_t capacity = a.max_pages * a.page_size;
  std::vector<int64_t> len(static_cast<size_t>(a.dims.B));
  for (int64_t b = 0; b < a.dims.B; ++b) {
    const int64_t l = static_cast<const int32_t*>(a.kv_len.data)[b * a.kv_len.stride[0]];
    if (l < 0 || l > capacity) {
      throw Error("flexattn::flex_attention: kv_len[" + std::to_string(b) + "] is " +
                  std::to_string(l) + "; expected 0.." + std::to_string(capacity) +
                  " (max_pages_per_seq * page_size = " + std::to_string(a.max_pages) + " * " +
                  std::to_string(a.page_size) + "); nothing was written");
    }
    for (int64_t p = 0; p * a.page_size < l; ++p) {
      const int64_t id = table_at(a.page_table, b, p);
      if (id < 0 || id >= a.num_pages) {
        throw Error("flexattn::flex_attention: page_table[" + std::to_string(b) + "][" +
                    std::to_string(p) + "] is " + std::to_string(id) +
                    "; expected a page id in [0, num_pages = " + std::to_string(a.num_pages) +
                    ") (sequence " + std::to_string(b) + " holds kv_len " + std::to_string(l) +
                    " tokens); nothing was written");
      }
    }
    len[static_cast<size_t>(b)] = l;
  }
  return len;
}

// One work item: rows [row0, row0 + rows) of group (b, hk) over keys [k0, k1).
struct Item {
  int64_t b = 0, hk = 0, row0 = 0;
  int rows = 0;  // <= kMaxTileQ
  int64_t k0 = 0, k1 = 0;
  // Float offset of this part's partial result in Plan's buffer - (rows, Dv) out, normalised,
  // then (rows) lse - or -1: the item is the tile's only part and writes out / lse itself.
  int64_t partial = -1;
  bool clear_invalid = false;  // also writes the group's rows with q_idx < 0: out 0, lse -inf
};
// The parts of one split tile: `parts` consecutive partials of rows * (Dv + 1) floats.
struct Merge {
  int64_t b = 0, hk = 0, row0 = 0;
  int rows = 0, parts = 0;
  int64_t partial = 0;
};
struct Plan {
  std::vector<Item> items;  // heaviest first
  std::vector<Merge> merges;
  int64_t partial_floats = 0;
  int tile_rows = 1;      // the largest tile
  bool in_place = false;  // f32 pages read in place (else gathered / converted per chunk)
  int64_t part_keys = 0;  // keys per part; 0: no tile is split
};

// Keys per part, a multiple of `unit`, or 0 (no split): `tiles` tiles see `tile_keys` keys in all.
// Splitting pays only when the tiles cannot give each thread about two items on their own.
inline int64_t part_keys(int64_t tiles, int64_t tile_keys, int64_t unit, int threads) {
  if (threads < 2 || tiles >= 2 * int64_t{threads} || tile_keys == 0) return 0;
  const int64_t target = (tile_keys + 2 * threads - 1) / (2 * threads);
  const int64_t keys = std::max(target, kMinPartKeys);
  return (keys + unit - 1) / unit * unit;
}

inline Plan make_plan(const PagedArgs& a, const std::vector<int64_t>& len, int threads) {
  const AttnDims& d = a.dims;
  const int64_t G = d.group(), ps = a.page_size;
  Plan plan;
  plan.in_place = a.k_pages.dtype == DType::f32 && ps >= kInPlaceMinPage;
  // Parts start on page boundaries in place (so no chunk crosses a page), every 128 keys else.
  const int64_t unit = !plan.in_place      ? kMaxChunkKV
                       : ps >= kMaxChunkKV ? ps
                                           : ps * ((kMaxChunkKV + ps - 1) / ps);
  auto tiles_of = [&](int64_t l) {  // (tiles, rows per tile) of a group of sequence length l
    const int64_t rows = G * valid_rows(a, l);
    const int64_t tiles = (rows + kMaxTileQ - 1) / kMaxTileQ;
    return std::pair{tiles, tiles ? (rows + tiles - 1) / tiles : 0};
  };
  int64_t tiles = 0, tile_keys = 0;
  for (int64_t l : len) tiles += d.Hkv * tiles_of(l).first;
  if (tiles < 2 * int64_t{threads}) {  // summed only then: it fits int64 for few tiles
    for (int64_t l : len) tile_keys += d.Hkv * tiles_of(l).first * l;
  }
  plan.part_keys = part_keys(tiles, tile_keys, unit, threads);

  for (int64_t b = 0; b < d.B; ++b) {
    const int64_t l = len[static_cast<size_t>(b)];
    const auto [ntiles, trows] = tiles_of(l);
    const int64_t rows = G * valid_rows(a, l);
    const bool invalid = valid_rows(a, l) < d.Lq;  // rows with q_idx < 0 exist
    const int64_t parts =
        plan.part_keys ? std::max<int64_t>(1, (l + plan.part_keys - 1) / plan.part_keys) : 1;
    for (int64_t hk = 0; hk < d.Hkv; ++hk) {
      if (ntiles == 0) {  // kv_len 0: every row is cleared, nothing is computed
        plan.items.push_back(Item{b, hk, 0, 0, 0, 0, -1, true});
        continue;
      }
      for (int64_t t = 0; t < ntiles; ++t) {
        const int64_t row0 = t * trows;
        const int n = static_cast<int>(std::min(trows, rows - row0));
        if (parts == 1) {
          plan.items.push_back(Item{b, hk, row0, n, 0, l, -1, invalid && t == 0});
          continue;
        }
        const int64_t stride = int64_t{n} * (d.Dv + 1);
        plan.merges.push_back(Merge{b, hk, row0, n, static_cast<int>(parts), plan.partial_floats});
        for (int64_t p = 0; p < parts; ++p) {
          plan.items.push_back(Item{b, hk, row0, n, p * plan.part_keys,
                                    std::min(l, (p + 1) * plan.part_keys),
                                    plan.partial_floats + p * stride, invalid && t == 0 && p == 0});
        }
        plan.partial_floats += parts * stride;
      }
      plan.tile_rows = std::max(plan.tile_rows, static_cast<int>(trows));
    }
  }
  // Longest first: items are handed out dynamically, so the short ones fill in at the end.
  std::stable_sort(plan.items.begin(), plan.items.end(), [](const Item& x, const Item& y) {
    return x.k1 - x.k0 != y.k1 - y.k0 ? x.k1 - x.k0 > y.k1 - y.k0 : x.rows > y.rows;
  });
  return plan;
}

// The lse of part p of one merged row, for merge_lse. A named functor, not a lambda: merge_lse is
// host and device code, and nvcc warns when it calls a host-only lambda.
struct PartLse {
  const float* first;  // part 0's lse of the row
  int64_t stride;      // floats between parts
  FLEXATTN_HD float operator()(int p) const { return first[p * stride]; }
};

template <class ScoreMod, class MaskMod>
struct PagedJob {
  const PagedArgs& a;
  const ScoreMod& score_mod;
  const MaskMod& mask_mod;
  const Plan& plan;
  const std::vector<int64_t>& len;
  fwd::Scratch layout;
  float* scratch = nullptr;   // num_threads() * layout.total floats
  float* partials = nullptr;  // plan.partial_floats

  static constexpr bool kNoopScore = std::is_same_v<ScoreMod, NoopScore>;

  // Query head and query row of group row r (head-major, see the file comment).
  struct RowAt {
    int64_t h, i;
  };
  RowAt row_at(int64_t b, int64_t hk, int64_t r) const {
    const int64_t nv = valid_rows(a, len[static_cast<size_t>(b)]);
    return {hk * a.dims.group() + r / nv, a.dims.Lq - nv + r % nv};
  }

  void clear_invalid(int64_t b, int64_t hk) const {
    static constexpr float kZeros[256] = {};  // Dv <= 256 (args.cpp)
    const int64_t nv = valid_rows(a, len[static_cast<size_t>(b)]);
    for (int64_t g = 0; g < a.dims.group(); ++g) {
      const int64_t h = hk * a.dims.group() + g;
      for (int64_t i = 0; i < a.dims.Lq - nv; ++i) {
        store_row(kZeros, fwd::at(a.out, b, h, i), a.out.dtype, a.dims.Dv);
        *reinterpret_cast<float*>(fwd::at(a.lse, b, h, i)) =
            -std::numeric_limits<float>::infinity();
      }
    }
  }

  // The functors over one run's queries, in the tile's layout.
  template <bool Partial, class Run>
  void mods(const fwd::Tile& t, float* st, int nc, int kv0, int b, const Run& u) const {
    if (t.key_major) {
      fwd::apply_mods<Partial, true>(score_mod, mask_mod, st, t.lds, nc, kv0, u.c0, u.c1, b, u.h,
                                     u.q_base);
    } else {
      fwd::apply_mods<Partial, false>(score_mod, mask_mod, st, t.lds, nc, kv0, u.c0, u.c1, b, u.h,
                                      u.q_base);
    }
  }

  void run(const Item& it, int tid) const {
    const AttnDims& d = a.dims;
    if (it.clear_invalid) clear_invalid(it.b, it.hk);
    if (it.rows == 0) return;
    const int b = static_cast<int>(it.b), m = it.rows;
    const int64_t D = d.D, Dv = d.Dv, ps = a.page_size;
    const int64_t q_off = q_offset(a, len[static_cast<size_t>(it.b)]);  // q_idx of row i: q_off + i

    const fwd::Tile t(layout, scratch + tid * layout.total, m, D, Dv, m > kQueryMajorMaxRows);
    // The tile's runs of rows of one head: columns [c0, c1) of head h, column c holding
    // q_idx q_base + c.
    struct Run {
      int c0, c1, h, q_base;
    };
    Run runs[kMaxTileQ];
    int nruns = 0;
    for (int c = 0; c < m; ++c) {
      const RowAt r = row_at(it.b, it.hk, it.row0 + c);
      t.load_q(c, fwd::at(a.q, it.b, r.h, r.i), a.q.dtype, d.scale);
      const int h = static_cast<int>(r.h);
      if (nruns == 0 || runs[nruns - 1].h != h) {
        runs[nruns++] = Run{c, c, h, static_cast<int>(q_off + r.i - c)};
      }
      runs[nruns - 1].c1 = c + 1;
    }
    t.reset();

    // Asks the caches for the K and V rows of token `tok` (below the part's end, so its page id
    // was checked), line by line; the gather below calls it kPrefetchRows ahead.
    const int64_t kbytes = D * static_cast<int64_t>(dtype_size(a.k_pages.dtype));
    const int64_t vbytes = Dv * static_cast<int64_t>(dtype_size(a.v_pages.dtype));
    auto prefetch_row = [&](int64_t tok) {
      const int64_t page = table_at(a.page_table, it.b, tok / ps);
      const char* k = fwd::at(a.k_pages, page, it.hk, tok % ps);
      const char* v = fwd::at(a.v_pages, page, it.hk, tok % ps);
      for (int64_t o = 0; o < kbytes; o += 64) __builtin_prefetch(k + o, 0, 3);
      for (int64_t o = 0; o < vbytes; o += 64) __builtin_prefetch(v + o, 0, 3);
    };

    TileKind kinds[kMaxTileQ];
    for (int64_t c0 = it.k0; c0 < it.k1;) {
      const int64_t c_end = std::min(it.k1, c0 + kMaxChunkKV);
      const int64_t c1 = plan.in_place ? std::min(c_end, (c0 / ps + 1) * ps) : c_end;
      const int nc = static_cast<int>(c1 - c0), kv0 = static_cast<int>(c0);
      bool any = true;
      if constexpr (HasTileRule<MaskMod>) {
        any = false;
        for (int r = 0; r < nruns; ++r) {
          const Run& u = runs[r];
          kinds[r] = mask_mod.tile_kind(b, u.h, u.q_base + u.c0, u.q_base + u.c1, kv0,
                                        static_cast<int>(c1));
          any = any || kinds[r] != TileKind::empty;
        }
      }
      if (!any) {  // no head of the tile keeps a key of this chunk: it is not even read
        c0 = c1;
        continue;
      }

      const float* kp;
      const float* vp;
      int64_t ldk, ldv;
      if (plan.in_place) {
        const int64_t page = table_at(a.page_table, it.b, c0 / ps);
        kp = reinterpret_cast<const float*>(fwd::at(a.k_pages, page, it.hk, c0 % ps));
        vp = reinterpret_cast<const float*>(fwd::at(a.v_pages, page, it.hk, c0 % ps));
        ldk = a.k_pages.stride[2];
        ldv = a.v_pages.stride[2];
      } else {
        for (int n = 0; n < nc; ++n) {
          const int64_t tok = c0 + n, page = table_at(a.page_table, it.b, tok / ps);
          if (tok + kPrefetchRows < it.k1) prefetch_row(tok + kPrefetchRows);
          load_row(fwd::at(a.k_pages, page, it.hk, tok % ps), a.k_pages.dtype, t.kbuf + n * D, D);
          load_row(fwd::at(a.v_pages, page, it.hk, tok % ps), a.v_pages.dtype, t.vbuf + n * Dv, Dv);
        }
        kp = t.kbuf;
        vp = t.vbuf;
        ldk = D;
        ldv = Dv;
      }

      t.step(kp, ldk, vp, ldv, nc, [&](float* st) {
        for (int r = 0; r < nruns; ++r) {
          const Run& u = runs[r];
          TileKind kind = TileKind::partial;
          if constexpr (HasTileRule<MaskMod>) kind = kinds[r];
          if (kind == TileKind::empty) {
            for (int n = 0; n < nc; ++n)
              for (int i = u.c0; i < u.c1; ++i)
                t.score(n, i) = -std::numeric_limits<float>::infinity();
          } else if (kind == TileKind::full) {
            if constexpr (!kNoopScore) mods<false>(t, st, nc, kv0, b, u);
          } else {  // partial or unknown: the mask per element
            mods<true>(t, st, nc, kv0, b, u);
          }
        }
      });
      c0 = c1;
    }

    // Epilogue: the tile's only part writes out / lse; a part of a split tile its partial row.
    for (int c = 0; c < m; ++c) {
      const float lse = t.finish_row(c);
      const float* orow = t.o + c * Dv;
      if (it.partial < 0) {
        const RowAt r = row_at(it.b, it.hk, it.row0 + c);
        *reinterpret_cast<float*>(fwd::at(a.lse, it.b, r.h, r.i)) = lse;
        store_row(orow, fwd::at(a.out, it.b, r.h, r.i), a.out.dtype, Dv);
      } else {
        float* part = partials + it.partial;
        std::copy(orow, orow + Dv, part + c * Dv);
        part[int64_t{m} * Dv + c] = lse;
      }
    }
  }

  // The parts of one split tile into out / lse, row by row.
  void merge(const Merge& mg) const {
    const int64_t Dv = a.dims.Dv, stride = int64_t{mg.rows} * (Dv + 1);
    float acc[256];  // Dv <= 256
    for (int c = 0; c < mg.rows; ++c) {
      const float* base = partials + mg.partial;
      const PartLse lse_at{base + int64_t{mg.rows} * Dv + c, stride};
      const float lse = merge_lse(mg.parts, lse_at);
      std::fill(acc, acc + Dv, 0.0f);
      for (int p = 0; p < mg.parts; ++p) {
        const float w = merge_weight(lse_at(p), lse);
        // A weight of exactly 0 (an empty part, or one that underflows) adds nothing, as a p of 0
        // does in the single-pass step, even where its partial row holds an inf from V.
        if (w == 0.0f) continue;
        const float* o = base + p * stride + c * Dv;
        for (int64_t e = 0; e < Dv; ++e) acc[e] += w * o[e];
      }
      const RowAt r = row_at(mg.b, mg.hk, mg.row0 + c);
      *reinterpret_cast<float*>(fwd::at(a.lse, mg.b, r.h, r.i)) = lse;
      store_row(acc, fwd::at(a.out, mg.b, r.h, r.i), a.out.dtype, Dv);
    }
  }
};

}  // namespace paged

template <class ScoreMod, class MaskMod>
void paged_forward(const PagedArgs& a, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  const std::vector<int64_t> len = paged::checked_lengths(a);  // throws before any write
  const int threads = num_threads();
  const paged::Plan plan = paged::make_plan(a, len, threads);
  const fwd::Scratch layout(plan.tile_rows, paged::kMaxChunkKV, a.dims.D, a.dims.Dv,
                            !plan.in_place);
  const fwd::ScratchStorage scratch(threads * layout.total);
  const fwd::ScratchStorage partials(plan.partial_floats);
  const paged::PagedJob<ScoreMod, MaskMod> job{a,   score_mod, mask_mod,     plan,
                                               len, layout,    scratch.base, partials.base};
  parallel_for(static_cast<int64_t>(plan.items.size()), [&job](int64_t i, int tid) {
    job.run(job.plan.items[static_cast<size_t>(i)], tid);
  });
  if (!plan.merges.empty()) {
    parallel_for(static_cast<int64_t>(plan.merges.size()),
                 [&job](int64_t i, int) { job.merge(job.plan.merges[static_cast<size_t>(i)]); });
  }
}

// Contiguous calls with at most this many query rows take the paged path (GQA packing, split-KV,
// query-major tiles); the GPU routes the same calls to its decode kernel.
inline constexpr int64_t kDecodeMaxLq = 16;

// The contiguous forward. A decode-shaped call (Lq <= kDecodeMaxLq) whose mask_mod has a tile
// rule runs as a paged call over K / V seen as one page per sequence (page_size Lkv, page b of
// sequence b) with q_idx = i; the rule then stands in for the BlockMask's lists, which
// create_block_mask derived from the same mask_mod (a mask without a rule keeps the lists' walk).
template <class ScoreMod, class MaskMod>
void forward_any_lq(const FwdArgs& a, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  if constexpr (HasTileRule<MaskMod>) {
    if (a.dims.Lq <= kDecodeMaxLq) {
      const AttnDims& d = a.dims;
      std::vector<int32_t> table(static_cast<size_t>(d.B)), lens(static_cast<size_t>(d.B));
      for (int64_t b = 0; b < d.B; ++b) {
        table[static_cast<size_t>(b)] = static_cast<int32_t>(b);
        lens[static_cast<size_t>(b)] = static_cast<int32_t>(d.Lkv);
      }
      auto index_view = [&](std::vector<int32_t>& v, int rank) {
        TensorView t;
        t.data = v.data();
        t.dtype = DType::i32;
        t.rank = rank;
        t.shape[0] = d.B;
        t.stride[0] = 1;
        t.stride[1] = 1;
        return t;
      };
      PagedArgs p;
      p.q = a.q;
      p.k_pages = a.k;
      p.v_pages = a.v;
      p.page_table = index_view(table, 2);  // [B, 1]
      p.kv_len = index_view(lens, 1);       // [B]
      p.out = a.out;
      p.lse = a.lse;
      p.dims = d;
      p.num_pages = d.B;
      p.page_size = d.Lkv;
      p.max_pages = 1;
      p.q_from_start = true;
      paged_forward(p, score_mod, mask_mod);
      return;
    }
  }
  forward(a, score_mod, mask_mod);
}

// append_kv on the CPU (src/cpu/append_kv.cpp).
void append_kv(const AppendArgs& args);

}  // namespace flexattn::detail::cpu
