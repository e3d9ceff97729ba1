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

// Per-thread scratch, carved out of one allocation made once per call. All sizes in floats,
// each region 64-byte aligned.
struct Scratch {
  int64_t ld_q = 0;  // leading dim of qt and st: tile rows padded
  int64_t qt = 0, st = 0, o = 0, rmax = 0, rsum = 0, alpha = 0, kbuf = 0, vbuf = 0, vfix = 0;
  int64_t total = 0;

  Scratch(int tile_q, int chunk_kv, int64_t D, int64_t Dv, bool convert_kv) {
    // An odd multiple of 16 floats: a row stride of 512 bytes (128 floats) would map the rows of
    // a column panel onto a few L1 sets and evict each other.
    ld_q = round_up16(tile_q);
    if (ld_q % 32 == 0) ld_q += 16;
    int64_t off = 0;
    auto take = [&](int64_t n) {
      const int64_t start = off;
      off += round_up16(n);
      return start;
    };
    qt = take(D * ld_q);         // (D, M)   scaled Q, transposed
    st = take(chunk_kv * ld_q);  // (N, M)   scores, then probabilities
    // (M, Dv) unnormalised output; also holds one row of Q (D floats) while Qt is built.
    o = take(std::max<int64_t>(int64_t{tile_q} * Dv, D));
    rmax = take(tile_q);
    rsum = take(tile_q);
    alpha = take(tile_q);
    kbuf = convert_kv ? take(chunk_kv * D) : 0;   // (N, D)  K chunk in f32
    vbuf = convert_kv ? take(chunk_kv * Dv) : 0;  // (N, Dv) V chunk in f32
    vfix = take(chunk_kv * Dv);                   // (N, Dv) V chunk, non-finite rows zeroed
    total = off;
  }
};

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

  // Scores of one chunk (keys [c0, c0 + nc), queries [q0, q0 + m)) through the user's functors.
  // Full tiles of NoopScore never come here. Partial is a template argument
  // so the full-tile loop carries no mask test at all.
  template <bool Partial>
  void apply_mods(float* st, int64_t ld, int b, int h, int q0, int m, int c0, int nc) const {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    for (int n = 0; n < nc; ++n) {
      const int kv = c0 + n;
      float* row = st + n * ld;  // (M,) scores of key kv against every query
      for (int i = 0; i < m; ++i) {
        const int q = q0 + i;
        if (Partial && !static_cast<bool>(mask_mod(b, h, q, kv))) {
          row[i] = kNegInf;
        } else if constexpr (!kNoopScore) {
          row[i] = static_cast<float>(score_mod(row[i], b, h, q, kv));
        }
      }
    }
  }

  // O = alpha * O + P^T . V for a chunk whose V holds inf / NaN (rare: a garbage row of a cache,
  // a user's NaN). The product runs on V with those rows zeroed, then each bad key is added only
  // to the queries whose p is not 0, with IEEE arithmetic: a query that keeps the key gets its
  // NaN / inf, a query that masks it gets exactly nothing.
  static void pv_nonfinite(const float* st, int64_t ld, int nc, int m, const float* vp,
                           int64_t ldv, float* vfix, float* o, int64_t Dv, const float* alpha) {
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
    gemm_rescale(Trans::T, Trans::N, m, static_cast<int>(Dv), nc, st, ld, vfix, Dv, o, Dv, alpha);
    for (int j = 0; j < nbad; ++j) {
      const float* vr = vp + bad[j] * ldv;
      const float* prow = st + bad[j] * ld;  // (M,) p of this key for every query
      for (int i = 0; i < m; ++i) {
        if (prow[i] == 0.0f) continue;
        for (int64_t e = 0; e < Dv; ++e) o[i * Dv + e] += prow[i] * vr[e];
      }
    }
  }

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

    float* base = scratch + tid * layout.total;
    const int64_t ld = layout.ld_q;
    float* qt = base + layout.qt;      // (D, M)
    float* st = base + layout.st;      // (N, M)
    float* o = base + layout.o;        // (M, Dv)
    float* rmax = base + layout.rmax;  // (M,)
    float* rsum = base + layout.rsum;  // (M,)
    float* alpha = base + layout.alpha;

    // Q tile, scaled and transposed (the backward scales Q the same way before its product).
    const float qscale = d.scale;
    float* qrow = o;  // o is free until the first chunk: borrow D floats of it
    for (int i = 0; i < m; ++i) {
      load_row(at(a.q, b, h, q0 + i), a.q.dtype, qrow, D);
      for (int64_t k = 0; k < D; ++k) qt[k * ld + i] = qrow[k] * qscale;
    }
    std::fill(o, o + int64_t{m} * Dv, 0.0f);
    std::fill(rmax, rmax + m, -std::numeric_limits<float>::infinity());
    std::fill(rsum, rsum + m, 0.0f);

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
          float* kb_ = base + layout.kbuf;  // (N, D)
          float* vb_ = base + layout.vbuf;  // (N, Dv)
          for (int n = 0; n < nc; ++n) {
            load_row(at(a.k, b, hk, c0 + n), a.k.dtype, kb_ + n * D, D);
            load_row(at(a.v, b, hk, c0 + n), a.v.dtype, vb_ + n * Dv, Dv);
          }
          kp = kb_;
          vp = vb_;
          ldk = D;
          ldv = Dv;
        }
        // (N, M) = (N, D) . (D, M)
        gemm(Trans::N, Trans::N, nc, m, static_cast<int>(D), kp, ldk, qt, ld, st, ld, false);
        if (partial) {
          apply_mods<true>(st, ld, b, h, static_cast<int>(q0), m, static_cast<int>(c0), nc);
        } else if constexpr (!kNoopScore) {
          apply_mods<false>(st, ld, b, h, static_cast<int>(q0), m, static_cast<int>(c0), nc);
        }
        online_softmax_t(st, ld, nc, m, rmax, rsum, alpha);
        // (M, Dv) = alpha * (M, Dv) + (N, M)^T . (N, Dv). A p of exactly 0 (masked, a -inf
        // score, underflow) must not meet a NaN / inf of V: the check is O(N * Dv), the product
        // O(M * N * Dv), and the V chunk is about to be read anyway.
        if (!rows_finite(vp, ldv, nc, static_cast<int>(Dv))) {
          pv_nonfinite(st, ld, nc, m, vp, ldv, base + layout.vfix, o, Dv, alpha);
        } else {
          gemm_rescale(Trans::T, Trans::N, m, static_cast<int>(Dv), nc, st, ld, vp, ldv, o, Dv,
                       alpha);
        }
      }
    }

    // Epilogue: normalise, convert, store. rsum > 0: some finite score kept; rsum == 0: every
    // key masked (or -inf); rsum NaN: a NaN / +inf score was kept (online_softmax_t).
    for (int i = 0; i < m; ++i) {
      float* orow = o + i * Dv;
      float* lse = reinterpret_cast<float*>(at(a.lse, b, h, q0 + i));
      if (rsum[i] > 0.0f) {
        scale(orow, Dv, 1.0f / rsum[i]);
        *lse = rmax[i] + std::log(rsum[i]);
      } else if (rsum[i] == 0.0f) {  // every key masked
        std::fill(orow, orow + Dv, 0.0f);
        *lse = -std::numeric_limits<float>::infinity();
      } else {  // a non-finite score: the whole row is NaN, as in exact IEEE softmax
        std::fill(orow, orow + Dv, std::numeric_limits<float>::quiet_NaN());
        *lse = std::numeric_limits<float>::quiet_NaN();
      }
      store_row(orow, at(a.out, b, h, q0 + i), a.out.dtype, Dv);
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

  const int threads = num_threads();
  // One allocation per call, sliced per thread, left uninitialised (every region is written before
  // it is read), so a thread that gets no item never touches its pages. +16 floats to align the
  // base to 64 bytes.
  const std::unique_ptr<float[]> storage(
      new float[static_cast<size_t>(threads * layout.total + 16)]);
  float* aligned =
      reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(storage.get()) + 63) & ~uintptr_t{63});

  const fwd::ForwardJob<ScoreMod, MaskMod> job{a,       score_mod, mask_mod,  mask,      layout,
                                               aligned, tile_q,    sub_tiles, d.B * d.Hq};
  parallel_for(d.B * d.Hq * mask.nqb * sub_tiles,
               [&job](int64_t item, int tid) { job.run(item, tid); });
}

}  // namespace flexattn::detail::cpu
