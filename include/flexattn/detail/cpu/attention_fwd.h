// The CPU forward pass: FlashAttention's tiled online softmax, visiting only the tiles the block
// mask keeps, with the user's score_mod and mask_mod fused per element.
//
// Work items are (b, h, q-tile), handed to the library's thread pool; a q-tile is the mask's
// block_q rows, cut into sub-tiles of at most kMaxTileQ rows. Each item walks the kv-blocks listed
// for its q-block (partial and full lists merged in ascending order) in chunks of at most
// kMaxChunkKV keys:
//
//   St = K_chunk . Qt            (N, M)  scores stored TRANSPOSED: key n, query m at St[n * ld + m]
//   St = mods(St)                partial tiles: mask_mod per element; score_mod per element
//   online softmax over n        running max / sum per query, P = exp2((St - max) log2 e) in place
//   O  = alpha * O + P^T . V     (M, Dv)
//
// Keeping the scores transposed lets every product run without packing: Qt is transposed once per
// item, K and V are read in place (f32) or converted per chunk (f16/bf16), and the softmax
// reductions over keys run down columns, one query per SIMD lane. The scale is folded into Qt, so
// a full NoopScore tile goes from the product straight to the softmax. The scores, max and lse are
// in natural units and s = K . (scale * Q) is formed exactly as the backward forms it
// (attention_bwd.h), so the backward's exp(s - lse) is the forward's p at any score magnitude.
//
// Hazards: a query with every key masked (or no kept tile) keeps max = -inf; online_softmax_t
// then gives P = 0 and alpha = 1 instead of exp2(-inf - -inf) = NaN, and the epilogue writes
// out = 0, lse = -inf. A kept NaN / +inf score leaves row_sum NaN: the epilogue writes out = NaN,
// lse = NaN, never the fully masked answer. A key whose p is exactly 0 (masked, -inf score,
// underflow) must add nothing even when its V holds NaN / inf (0 * NaN = NaN in P^T . V): every
// chunk checks V first and a non-finite one takes pv_nonfinite.
// Tiles are clipped to [0, Lq) x [0, Lkv), so no lane past the end of a sequence ever reaches a
// user functor.
//
// The per-chunk step (Tile: product, mods, online softmax, P^T . V with the non-finite V path,
// epilogue) is shared with the paged forward (attention_paged.h), which feeds it K / V chunks
// gathered through a page table and query tiles packing a GQA group's heads; its decode tiles of
// a few rows use the Tile's query-major layout instead (see Tile). This file's tiles are always
// key-major.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>

#include "../../block_mask.h"
#include "../../mods.h"
#include "../args.h"
#include "kernels.h"

namespace flexattn::detail::cpu {

namespace fwd {

inline constexpr int kMaxTileQ = 128;    // query rows per work item
inline constexpr int kMaxChunkKV = 128;  // keys per product / softmax step

inline int64_t round_up16(int64_t n) { return (n + 15) & ~int64_t{15}; }

// Byte pointer to element (i0, i1, i2, 0) of a rank-4 view (or (i0, i1, i2) of a rank-3 one).
inline char* at(const TensorView& v, int64_t i0, int64_t i1, int64_t i2) {
  return static_cast<char*>(v.data) + (i0 * v.stride[0] + i1 * v.stride[1] + i2 * v.stride[2]) *
                                          static_cast<int64_t>(dtype_size(v.dtype));
}

// An odd multiple of 16 floats >= n: a row stride of 512 bytes (128 floats) would map the rows
// of a column panel onto a few L1 sets and evict each other.
inline int64_t odd_ld(int64_t n) {
  const int64_t ld = round_up16(n);
  return ld % 32 == 0 ? ld + 16 : ld;
}

// Per-thread scratch, carved out of one allocation made once per call. All sizes in floats,
// each region 64-byte aligned.
struct Scratch {
  int64_t ld_q = 0;   // leading dim of qt, and of key-major scores: tile rows padded
  int64_t ld_kv = 0;  // leading dim of query-major scores: chunk keys padded
  int64_t qt = 0, st = 0, o = 0, rmax = 0, rsum = 0, alpha = 0, kbuf = 0, vbuf = 0, vfix = 0;
  int64_t total = 0;
  bool kv_buffers = false;  // kbuf / vbuf exist (K and V are converted or gathered per chunk)

  Scratch(int tile_q, int chunk_kv, int64_t D, int64_t Dv, bool convert_kv) {
    ld_q = odd_ld(tile_q);
    ld_kv = odd_ld(chunk_kv);
    int64_t off = 0;
    auto take = [&](int64_t n) {
      const int64_t start = off;
      off += round_up16(n);
      return start;
    };
    qt = take(D * ld_q);  // (D, M)   scaled Q, transposed
    // (N, M) or (M, N) scores, then probabilities
    st = take(std::max<int64_t>(chunk_kv * ld_q, int64_t{tile_q} * ld_kv));
    // (M, Dv) unnormalised output; also holds one row of Q (D floats) while Qt is built.
    o = take(std::max<int64_t>(int64_t{tile_q} * Dv, D));
    rmax = take(tile_q);
    rsum = take(tile_q);
    alpha = take(tile_q);
    kv_buffers = convert_kv;
    kbuf = convert_kv ? take(chunk_kv * D) : 0;   // (N, D)  K chunk in f32
    vbuf = convert_kv ? take(chunk_kv * Dv) : 0;  // (N, Dv) V chunk in f32
    vfix = take(chunk_kv * Dv);                   // (N, Dv) V chunk, non-finite rows zeroed
    total = off;
  }
};

// One allocation per call, sliced per thread by the caller, left uninitialised (every region is
// written before it is read), so a thread that gets no item never touches its pages. +16 floats
// to align the base to 64 bytes.
struct ScratchStorage {
  std::unique_ptr<float[]> storage;
  float* base = nullptr;
  explicit ScratchStorage(int64_t floats)
      : storage(new float[static_cast<size_t>(floats + 16)]),
        base(reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(storage.get()) + 63) &
                                      ~uintptr_t{63})) {}
};

// The pointers of one tile of query rows into a thread's Scratch, and its running state: scaled
// Q transposed, the online softmax's max and sum, the unnormalised output. The contiguous forward
// and the paged one (attention_paged.h) both drive a tile through load_q, reset, step per chunk
// and finish_row.
//
// The scores of a chunk are stored key-major, (N, M) as the file comment says, or query-major,
// (M, N): st[m * ld_kv + n]. Key-major keeps every SIMD lane busy with a query, which needs M of
// 16 or more; a decode tile (a GQA group of 4-8 heads, Lq = 1) would leave most lanes idle in the
// K product and the softmax, so it runs query-major: the K chunk is transposed once into the
// product's panel (gemm's Trans::T on B), the softmax runs along each query's keys (max_of,
// exp_sub_sum), and P . V reads P untransposed.
struct Tile {
  int64_t ld = 0;   // leading dim of qt
  int64_t lds = 0;  // leading dim of st in its layout
  int m = 0;        // query rows (columns of qt)
  int64_t D = 0, Dv = 0;
  bool key_major = true;
  float* qt = nullptr;  // (D, M)
  float* st = nullptr;  // (N, M) key-major, (M, N) query-major
  float* o = nullptr;   // (M, Dv)
  float* rmax = nullptr;
  float* rsum = nullptr;
  float* alpha = nullptr;
  float* kbuf = nullptr;  // (N, D)  converted / gathered K chunk (null unless the layout has one)
  float* vbuf = nullptr;  // (N, Dv) converted / gathered V chunk
  float* vfix = nullptr;  // (N, Dv) V chunk with its non-finite rows zeroed

  Tile(const Scratch& s, float* base, int rows, int64_t D_, int64_t Dv_, bool key_major_ = true)
      : ld(s.ld_q), lds(key_major_ ? s.ld_q : s.ld_kv), m(rows), D(D_), Dv(Dv_),
        key_major(key_major_), qt(base + s.qt), st(base + s.st), o(base + s.o),
        rmax(base + s.rmax), rsum(base + s.rsum), alpha(base + s.alpha),
        kbuf(s.kv_buffers ? base + s.kbuf : nullptr),
        vbuf(s.kv_buffers ? base + s.vbuf : nullptr), vfix(base + s.vfix) {}

  // p (or the score) of key n for query i.
  float& score(int n, int i) const { return key_major ? st[n * lds + i] : st[i * lds + n]; }

  // Query row `src` (D elements of `dtype`) into column `col` of qt, times the scale (the backward
  // scales Q the same way before its product). Borrows D floats of o: call before reset().
  void load_q(int col, const void* src, DType dtype, float qscale) const {
    float* qrow = o;
    load_row(src, dtype, qrow, D);
    for (int64_t k = 0; k < D; ++k) qt[k * ld + col] = qrow[k] * qscale;
  }
  void reset() const {
    std::fill(o, o + int64_t{m} * Dv, 0.0f);
    std::fill(rmax, rmax + m, -std::numeric_limits<float>::infinity());
    std::fill(rsum, rsum + m, 0.0f);
  }

  // online_softmax_t's step (kernels.h, same rules) on query-major scores. A query with nothing
  // kept so far gets p = 0 and alpha = 1, never exp(-inf - -inf); a kept NaN / +inf score makes
  // rsum NaN: exp(NaN - max), exp(inf - inf), or - where the max skipped a NaN among -inf scores -
  // the scan below.
  void softmax_query_major(int nc) const {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < m; ++i) {
      float* row = st + i * lds;  // (N,) scores of query i
      const float mx = std::max(rmax[i], max_of(row, nc));
      if (mx == kNegInf) {
        bool nan = false;
        for (int n = 0; n < nc; ++n) nan = nan || row[n] != row[n];
        if (nan) rsum[i] = std::numeric_limits<float>::quiet_NaN();
        std::fill(row, row + nc, 0.0f);
        alpha[i] = 1.0f;
        continue;
      }
      alpha[i] = std::exp(rmax[i] - mx);  // rmax -inf: 0
      rsum[i] = rsum[i] * alpha[i] + exp_sub_sum(row, nc, mx);
      rmax[i] = mx;
    }
  }

  // O = alpha * O + P^T . V for a chunk whose V holds inf / NaN (rare: a garbage row of a cache,
  // a user's NaN). The product runs on V with those rows zeroed, then each bad key is added only
  // to the queries whose p is not 0, with IEEE arithmetic: a query that keeps the key gets its
  // NaN / inf, a query that masks it gets exactly nothing.
  void pv_nonfinite(int nc, const float* vp, int64_t ldv) const {
    int bad[kMaxChunkKV];
    int nbad = 0;
    for (int n = 0; n < nc; ++n) {
      const float* vr = vp + n * ldv;
      float* fr = vfix + n * Dv;  // (Dv,)
      if (rows_finite(vr, ldv, 1, static_cast<int>(Dv))) {
        std::copy(vr, vr + Dv, fr);
      } else {
        std::fill(fr, fr + Dv, 0.0f);
        bad[nbad++] = n;
      }
    }
    gemm_rescale(key_major ? Trans::T : Trans::N, Trans::N, m, static_cast<int>(Dv), nc, st, lds,
                 vfix, Dv, o, Dv, alpha);
    for (int j = 0; j < nbad; ++j) {
      const float* vr = vp + bad[j] * ldv;
      for (int i = 0; i < m; ++i) {
        const float p = score(bad[j], i);
        if (p == 0.0f) continue;
        for (int64_t e = 0; e < Dv; ++e) o[i * Dv + e] += p * vr[e];
      }
    }
  }

  // One chunk of nc <= kMaxChunkKV keys, K (N, D) and V (N, Dv) as f32 rows of stride ldk / ldv.
  // mods(st) applies the functors to the scores in the tile's layout (or nothing, for a full
  // NoopScore chunk).
  template <class Mods>
  void step(const float* kp, int64_t ldk, const float* vp, int64_t ldv, int nc,
            const Mods& mods) const {
    if (key_major) {
      // (N, M) = (N, D) . (D, M)
      gemm(Trans::N, Trans::N, nc, m, static_cast<int>(D), kp, ldk, qt, ld, st, lds, false);
      mods(st);
      online_softmax_t(st, lds, nc, m, rmax, rsum, alpha);
    } else {
      // (M, N) = (D, M)^T . (N, D)^T
      gemm(Trans::T, Trans::T, m, nc, static_cast<int>(D), qt, ld, kp, ldk, st, lds, false);
      mods(st);
      softmax_query_major(nc);
    }
    // (M, Dv) = alpha * (M, Dv) + P . (N, Dv). A p of exactly 0 (masked, a -inf score,
    // underflow) must not meet a NaN / inf of V: the check is O(N * Dv), the product
    // O(M * N * Dv), and the V chunk is about to be read anyway.
    if (!rows_finite(vp, ldv, nc, static_cast<int>(Dv))) {
      pv_nonfinite(nc, vp, ldv);
    } else {
      gemm_rescale(key_major ? Trans::T : Trans::N, Trans::N, m, static_cast<int>(Dv), nc, st, lds,
                   vp, ldv, o, Dv, alpha);
    }
  }

  // Normalises row i of o in place and returns its lse. rsum > 0: some finite score kept;
  // rsum == 0: every key masked (or -inf): out 0, lse -inf; rsum NaN: a NaN / +inf score was kept
  // (online_softmax_t): out NaN, lse NaN, never the fully masked answer.
  float finish_row(int i) const {
    float* orow = o + i * Dv;
    if (rsum[i] > 0.0f) {
      scale(orow, Dv, 1.0f / rsum[i]);
      return rmax[i] + std::log(rsum[i]);
    }
    if (rsum[i] == 0.0f) {
      std::fill(orow, orow + Dv, 0.0f);
      return -std::numeric_limits<float>::infinity();
    }
    std::fill(orow, orow + Dv, std::numeric_limits<float>::quiet_NaN());
    return std::numeric_limits<float>::quiet_NaN();
  }
};

// Scores of one chunk (keys [c0, c0 + nc)) through the user's functors, for the queries [i0, i1)
// of the tile, all of head h, query i being q_idx q_base + i; st in the tile's layout (KeyMajor,
// leading dim ld). Full tiles of NoopScore never come here. Partial is a template argument so the
// full-tile loop carries no mask test at all.
template <bool Partial, bool KeyMajor, class ScoreMod, class MaskMod>
void apply_mods(const ScoreMod& score_mod, const MaskMod& mask_mod, float* st, int64_t ld, int nc,
                int c0, int i0, int i1, int b, int h, int q_base) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const auto one = [&](float& s, int q, int kv) {
    if (Partial && !static_cast<bool>(mask_mod(b, h, q, kv))) {
      s = kNegInf;
    } else if constexpr (!std::is_same_v<ScoreMod, NoopScore>) {
      s = static_cast<float>(score_mod(s, b, h, q, kv));
    }
  };
  if constexpr (KeyMajor) {
    for (int n = 0; n < nc; ++n) {
      float* row = st + n * ld;  // (M,) scores of key c0 + n against every query
      for (int i = i0; i < i1; ++i) one(row[i], q_base + i, c0 + n);
    }
  } else {
    for (int i = i0; i < i1; ++i) {
      float* row = st + i * ld;  // (N,) scores of query q_base + i against the chunk's keys
      for (int n = 0; n < nc; ++n) one(row[n], q_base + i, c0 + n);
    }
  }
}

template <class ScoreMod, class MaskMod>
struct ForwardJob {
  const FwdArgs& a;
  const ScoreMod& score_mod;
  const MaskMod& mask_mod;
  const BlockMaskData& mask;
  Scratch layout;
  float* scratch = nullptr;       // num_threads() * layout.total floats
  int tile_q = 0, sub_tiles = 0;  // rows per item, items per q-block
  int64_t items_per_row = 0;      // B * Hq

  static constexpr bool kNoopScore = std::is_same_v<ScoreMod, NoopScore>;

  void run(int64_t item, int tid) const {
    const AttnDims& d = a.dims;
    // Heaviest q-blocks first (the last rows of a causal mask see the most keys), heads inner.
    const int64_t bh = item % items_per_row;
    const int64_t tile = mask.nqb * sub_tiles - 1 - item / items_per_row;
    const int64_t qb = tile / sub_tiles;
    const int b = static_cast<int>(bh / d.Hq), h = static_cast<int>(bh % d.Hq);
    const int64_t hk = h / d.group();
    const int64_t qb_begin = qb * mask.block_q;
    const int64_t q0 = qb_begin + (tile % sub_tiles) * tile_q;
    const int64_t qb_end = std::min<int64_t>(qb_begin + mask.block_q, d.Lq);
    if (q0 >= qb_end) return;
    const int m = static_cast<int>(std::min<int64_t>(tile_q, qb_end - q0));
    const int64_t D = d.D, Dv = d.Dv;

    const Tile t(layout, scratch + tid * layout.total, m, D, Dv);
    for (int i = 0; i < m; ++i) t.load_q(i, at(a.q, b, h, q0 + i), a.q.dtype, d.scale);
    t.reset();

    // The kv-block lists of this q-block; a mask of batch or heads 1 broadcasts.
    const int64_t mb = mask.B == d.B ? b : 0, mh = mask.H == d.Hq ? h : 0;
    const int64_t row = (mb * mask.H + mh) * mask.nqb + qb;
    const auto* part_num = static_cast<const int32_t*>(mask.kv_num.data());
    const auto* part_idx = static_cast<const int32_t*>(mask.kv_idx.data()) + row * mask.nkvb;
    const auto* full_num = static_cast<const int32_t*>(mask.full_kv_num.data());
    const auto* full_idx = static_cast<const int32_t*>(mask.full_kv_idx.data()) + row * mask.nkvb;
    const int np = part_num[row], nf = full_num[row];

    const bool convert = a.k.dtype != DType::f32;
    for (int ip = 0, jf = 0; ip < np || jf < nf;) {
      // Merge the two ascending lists so tiles are visited in key order.
      const bool partial = jf >= nf || (ip < np && part_idx[ip] < full_idx[jf]);
      const int64_t kb = partial ? part_idx[ip++] : full_idx[jf++];
      const int64_t k_end = std::min<int64_t>((kb + 1) * mask.block_kv, d.Lkv);
      for (int64_t c0 = kb * mask.block_kv; c0 < k_end; c0 += kMaxChunkKV) {
        const int nc = static_cast<int>(std::min<int64_t>(kMaxChunkKV, k_end - c0));
        const float* kp;
        const float* vp;
        int64_t ldk, ldv;
        if (!convert) {
          kp = reinterpret_cast<const float*>(at(a.k, b, hk, c0));
          vp = reinterpret_cast<const float*>(at(a.v, b, hk, c0));
          ldk = a.k.stride[2];
          ldv = a.v.stride[2];
        } else {
          for (int n = 0; n < nc; ++n) {
            load_row(at(a.k, b, hk, c0 + n), a.k.dtype, t.kbuf + n * D, D);
            load_row(at(a.v, b, hk, c0 + n), a.v.dtype, t.vbuf + n * Dv, Dv);
          }
          kp = t.kbuf;
          vp = t.vbuf;
          ldk = D;
          ldv = Dv;
        }
        const int kv0 = static_cast<int>(c0), qb0 = static_cast<int>(q0);
        t.step(kp, ldk, vp, ldv, nc, [&](float* st) {
          if (partial) {
            apply_mods<true, true>(score_mod, mask_mod, st, t.lds, nc, kv0, 0, m, b, h, qb0);
          } else if constexpr (!kNoopScore) {
            apply_mods<false, true>(score_mod, mask_mod, st, t.lds, nc, kv0, 0, m, b, h, qb0);
          }
        });
      }
    }

    // Epilogue: normalise, convert, store.
    for (int i = 0; i < m; ++i) {
      *reinterpret_cast<float*>(at(a.lse, b, h, q0 + i)) = t.finish_row(i);
      store_row(t.o + i * Dv, at(a.out, b, h, q0 + i), a.out.dtype, Dv);
    }
  }
};

}  // namespace fwd

template <class ScoreMod, class MaskMod>
void forward(const FwdArgs& a, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  const AttnDims& d = a.dims;
  const BlockMaskData& mask = *a.mask;
  // The mask's block_q is the outer tiling; rows beyond kMaxTileQ become separate items, split
  // evenly so the last one is not a sliver.
  const int sub_tiles = (mask.block_q + fwd::kMaxTileQ - 1) / fwd::kMaxTileQ;
  const int tile_q = (mask.block_q + sub_tiles - 1) / sub_tiles;
  const int chunk_kv = std::min(mask.block_kv, fwd::kMaxChunkKV);
  const fwd::Scratch layout(tile_q, chunk_kv, d.D, d.Dv, a.k.dtype != DType::f32);

  const fwd::ScratchStorage scratch(num_threads() * layout.total);
  const fwd::ForwardJob<ScoreMod, MaskMod> job{
      a, score_mod, mask_mod, mask, layout, scratch.base, tile_q, sub_tiles, d.B * d.Hq};
  parallel_for(d.B * d.Hq * mask.nqb * sub_tiles,
               [&job](int64_t item, int tid) { job.run(item, tid); });
}

}  // namespace flexattn::detail::cpu
