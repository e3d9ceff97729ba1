// CPU backward pass: FlashAttention-2's backward, recomputing the probabilities from lse.
//
// For every kept (q-tile, kv-tile) pair, with s = (scale * Q) K^T and s' = score_mod(s):
//   P   = exp(s' - lse)                   (rows with lse = -inf: P = 0, so they add nothing)
//   dV += P^T dO        dP = dO V^T       dS = scale * P * (dP - delta) * d(score_mod)/ds
//   dQ += dS K          dK += dS^T Q      where delta = rowsum(dO * O), computed once per row.
// The derivative of score_mod comes from calling it with flexattn::Dual{s, 1}; NoopScore skips it.
// s is formed exactly as the forward forms it (Q scaled first, then the same gemm, whose per-element
// arithmetic is a fixed-order FMA chain over D), and the forward's lse is max + log(sum) in natural
// units: so s - lse is exact near a row's max at any magnitude (|s| ~ 1e30 included), where a
// differently rounded s or a log2-domain lse would be off by ulp(s) and make P 0 or inf.
//
// Non-finite values (README): a row with lse NaN gets P NaN where it keeps a key and exactly 0
// where it does not (bwd_probs); dS is 0 by selection where P is 0 (bwd_dscores), so a NaN in a
// masked key's V (through dP) adds nothing. A NaN / inf in a masked key's K would still reach
// dQ += dS K as 0 * NaN: a kv piece whose K is not finite (checked once per piece, O(N * D)) takes
// that product on K with those rows zeroed and adds the bad keys' terms only where P != 0 (fix_k in
// run_tile). The same holds for a NaN / inf in a query row's q or dout, which would reach the dK /
// dV of the keys the row masks through dK += dS^T Q and dV += P^T dO: each q tile checks Q and dO
// (O(M * (D + Dv))), and a tile that fails runs those two products on copies with the bad rows
// zeroed, then adds the bad rows' terms only where P != 0. Net rule: a (q, kv) pair with P exactly
// 0 contributes nothing; a kept pair follows IEEE arithmetic.
//
// Work decomposition (determinism without atomics). A work item is (b, kv head, subset of the
// query heads of its GQA group, contiguous chunk of kv blocks). The item loops kv tile -> query head
// -> q tile, so it owns the dK/dV tile it accumulates (summed over its heads in a fixed order) and
// adds into a private dQ for its heads (summed over its kv chunk in ascending order). When several
// items share a dQ (kv chunks) or a dK/dV (head subsets), each writes an f32 partial and a final
// pass sums the partials in index order. The split is a function of the shape and the block mask
// only, never of the thread count or of which thread ran what, so the bits are the same run to run
// and on any number of threads. It is chosen to give at least kMinItems items (both cores busy at
// B=1, H=8 with no split at all), preferring the split with the least partial memory: kv chunks cost
// a dQ partial per chunk (O(group * Lq * D)), head subsets a dK/dV partial per subset
// (O(Lkv * (D + Dv))). Chunks are cut where they balance the kept-tile count, and items are handed
// out largest first. dQ accumulates in f32: straight into a.dq when it is f32 and unsplit, else in
// the partials (so f16/bf16 costs one f32 copy of dQ). Per-thread scratch is O(tile), made once.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <optional>
#include <type_traits>
#include <vector>

#include "../../block_mask.h"
#include "../../math.h"
#include "../../mods.h"
#include "../args.h"
#include "kernels.h"
#include "param_grads.h"

namespace flexattn::detail::cpu {
namespace bwd {

inline constexpr int kTileQ = 128;   // most rows of Q in one compute tile
inline constexpr int kTileKV = 128;  // most rows of K/V in one compute tile
inline constexpr int kLdS = kTileKV + 16;  // row stride of score tiles: a 512-byte stride thrashes L1 sets
inline constexpr int64_t kMinItems = 8;    // fewest work items the split aims for

inline const char* row_ptr(const TensorView& t, int64_t b, int64_t h, int64_t l) {
  return static_cast<const char*>(t.data) +
         (b * t.stride[0] + h * t.stride[1] + l * t.stride[2]) * int64_t(dtype_size(t.dtype));
}
inline char* row_ptr_mut(const TensorView& t, int64_t b, int64_t h, int64_t l) {
  return const_cast<char*>(row_ptr(t, b, h, l));
}

// rows x cols of t at (b, h, l0) as float32: the tensor itself when it is f32 (ld = row stride),
// else converted into buf (ld = cols).
inline const float* f32_rows(const TensorView& t, int64_t b, int64_t h, int64_t l0, int rows,
                             int cols, float* buf, int64_t& ld) {
  if (t.dtype == DType::f32) {
    ld = t.stride[2];
    return reinterpret_cast<const float*>(row_ptr(t, b, h, l0));
  }
  for (int r = 0; r < rows; ++r) load_row(row_ptr(t, b, h, l0 + r), t.dtype, buf + int64_t(r) * cols, cols);
  ld = cols;
  return buf;
}

// Splits [0, len) into pieces of at most `most`, as even as possible, rounded up to a multiple of
// 16 (a SIMD width) where that still fits, so the tile products see whole vectors.
inline int piece_len(int len, int most) {
  const int pieces = (len + most - 1) / most;
  int p = (len + pieces - 1) / pieces;
  const int r16 = (p + 15) / 16 * 16;
  return r16 <= most ? r16 : p;
}

// Copies x (rows x cols, stride ld) into fix (stride cols) with its non-finite rows zeroed, their
// indices into bad; returns how many. The whole block is checked first (one FMA per vector), so a
// finite x costs that check alone and leaves fix untouched (and returns 0).
inline int zero_bad_rows(const float* x, int64_t ld, int rows, int cols, float* fix, int* bad) {
  if (rows_finite(x, ld, rows, cols)) return 0;
  int nbad = 0;
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + int64_t(r) * ld;
    float* fr = fix + int64_t(r) * cols;
    if (rows_finite(xr, ld, 1, cols)) {
      std::memcpy(fr, xr, sizeof(float) * size_t(cols));
    } else {
      std::memset(fr, 0, sizeof(float) * size_t(cols));
      bad[nbad++] = r;
    }
  }
  return nbad;
}

struct AlignedFloats {
  struct Free {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  std::unique_ptr<float[], Free> p;
  explicit AlignedFloats(size_t n = 0)
      : p(n ? static_cast<float*>(::operator new[](n * sizeof(float), std::align_val_t{64}))
            : nullptr) {}
  float* get() const { return p.get(); }
};

// Per-thread tiles, allocated once per call.
struct Scratch {
  AlignedFloats mem;
  float *q, *qs, *qfix, *dout, *dofix, *k, *kfix, *v, *s, *dp, *g, *dk, *dv;
  uint8_t partial_row[kTileQ];
  // Keys of the current kv piece whose K row is not finite (kfix holds K with them zeroed), and
  // for each such key the tile rows with P != 0 ([bad][row]).
  int bad[kTileKV];
  int nbad = 0;
  std::vector<uint8_t> keeps;
  // The same for the current q tile's rows whose Q (qfix: Q with them zeroed) or dO (dofix) is not
  // finite, with for each such row the keys it keeps ([bad][key]). Untouched while all is finite.
  int badq[kTileQ], baddo[kTileQ];
  int nbadq = 0, nbaddo = 0;
  std::vector<uint8_t> qkeeps, dokeeps;
  Scratch(int64_t D, int64_t Dv, bool need_g)
      : keeps(size_t(kTileQ) * kTileKV), qkeeps(keeps.size()), dokeeps(keeps.size()) {
    const int64_t st = int64_t(kTileQ) * kLdS;
    const int64_t sizes[] = {kTileQ * D,   kTileQ * D,   kTileQ * D,      kTileQ * Dv, kTileQ * Dv,
                             kTileKV * D,  kTileKV * D,  kTileKV * Dv,    st,          st,
                             need_g ? st : 0, kTileKV * D, kTileKV * Dv};
    constexpr int kSlots = sizeof(sizes) / sizeof(sizes[0]);
    int64_t total = 0;
    for (int64_t n : sizes) total += (n + 15) / 16 * 16;
    mem = AlignedFloats(size_t(total));
    float* cur = mem.get();
    float** slots[kSlots] = {&q, &qs, &qfix, &dout, &dofix, &k, &kfix, &v, &s, &dp, &g, &dk, &dv};
    for (int i = 0; i < kSlots; ++i) {
      *slots[i] = sizes[i] ? cur : nullptr;
      cur += (sizes[i] + 15) / 16 * 16;
    }
  }
};

// One run of query rows [m0, m1) processed as one tile; partial_row marks rows whose q-block is a
// partial tile (mask_mod evaluated per element) against the current kv block.
struct QTile {
  int m0 = 0, m1 = 0;
  bool any_partial = false;
};

struct Plan {
  int64_t B = 0, Hq = 0, Hkv = 0, G = 0;  // G: query heads per kv head
  int64_t subsets = 1, chunks = 1;        // query-head subsets per kv head, kv chunks per subset
  bool dq_direct = false;                 // dQ accumulates straight into a.dq (f32, one chunk)
  std::vector<int> bounds;  // [B][Hkv][subsets][chunks + 1] kv-block boundaries of the chunks
  std::vector<int64_t> order;  // items, largest first
  int64_t items() const { return B * Hkv * subsets * chunks; }
  int64_t head_lo(int64_t s) const { return s * G / subsets; }
};

}  // namespace bwd

template <class ScoreMod, class MaskMod>
void backward(const BwdArgs& a, const ScoreMod& score_mod, const MaskMod& mask_mod) {
  using namespace bwd;
  constexpr bool kNoopScore = std::is_same_v<ScoreMod, NoopScore>;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const AttnDims& d = a.dims;
  const BlockMaskData& bm = *a.mask;
  const int64_t D = d.D, Dv = d.Dv, Lq = d.Lq, Lkv = d.Lkv;
  const float scale = d.scale;
  const int bq = bm.block_q, bkv = bm.block_kv;
  const int64_t nqb = bm.nqb, nkvb = bm.nkvb;
  const auto* q_num = static_cast<const int32_t*>(bm.q_num.data());
  const auto* q_idx = static_cast<const int32_t*>(bm.q_idx.data());
  const auto* fq_num = static_cast<const int32_t*>(bm.full_q_num.data());
  const auto* fq_idx = static_cast<const int32_t*>(bm.full_q_idx.data());
  // Index of the (b, h) list set: a block mask with B or H of 1 broadcasts.
  auto mask_bh = [&](int64_t b, int64_t h) {
    return (bm.B == 1 ? 0 : b) * bm.H + (bm.H == 1 ? 0 : h);
  };
  auto kept_q_blocks = [&](int64_t b, int64_t h, int64_t j) {
    const int64_t i = mask_bh(b, h) * nkvb + j;
    return int64_t(q_num[i]) + fq_num[i];
  };

  // ---- plan the split (see the header comment) ---------------------------------------------------
  Plan plan;
  plan.B = d.B;
  plan.Hq = d.Hq;
  plan.Hkv = d.Hkv;
  plan.G = d.group();
  {
    const int64_t heads = d.B * d.Hkv;
    const int64_t want = (kMinItems + heads - 1) / heads;
    int64_t best_par = 0, best_cost = 0;
    for (int64_t s = 1; s <= plan.G; ++s) {
      const int64_t c = std::clamp<int64_t>((want + s - 1) / s, 1, nkvb);
      const int64_t par = std::min(s * c, want);
      const int64_t cost = (s > 1 ? s * Lkv * (D + Dv) : 0) + (c > 1 ? c * plan.G * Lq * D : 0);
      if (par > best_par || (par == best_par && cost < best_cost)) {
        best_par = par;
        best_cost = cost;
        plan.subsets = s;
        plan.chunks = c;
      }
      if (s >= want) break;
    }
  }
  plan.dq_direct = a.dq.dtype == DType::f32 && plan.chunks == 1;
  const int64_t S = plan.subsets, C = plan.chunks;
  plan.bounds.resize(size_t(d.B * d.Hkv * S * (C + 1)));
  std::vector<int64_t> item_work(size_t(plan.items()));
  {
    std::vector<int64_t> prefix(size_t(nkvb + 1));
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t hk = 0; hk < d.Hkv; ++hk)
        for (int64_t s = 0; s < S; ++s) {
          // Work of kv block j: its kept tiles over the subset's heads, plus one for the K/V load.
          prefix[0] = 0;
          for (int64_t j = 0; j < nkvb; ++j) {
            int64_t w = 1;
            for (int64_t h = hk * plan.G + plan.head_lo(s); h < hk * plan.G + plan.head_lo(s + 1); ++h)
              w += kept_q_blocks(b, h, j);
            prefix[size_t(j + 1)] = prefix[size_t(j)] + w;
          }
          int* bnd = &plan.bounds[size_t(((b * d.Hkv + hk) * S + s) * (C + 1))];
          bnd[0] = 0;
          for (int64_t c = 1; c < C; ++c) {
            // First block where the running work reaches c/C of the total (at least one block per
            // chunk while blocks remain, so no chunk is empty when C <= nkvb).
            const int64_t target = prefix[size_t(nkvb)] * c / C;
            int64_t j = std::lower_bound(prefix.begin(), prefix.end(), target) - prefix.begin();
            j = std::clamp<int64_t>(j, bnd[c - 1] + 1, nkvb - (C - c));
            bnd[c] = int(j);
          }
          bnd[C] = int(nkvb);
          for (int64_t c = 0; c < C; ++c)
            item_work[size_t(((b * d.Hkv + hk) * S + s) * C + c)] = prefix[size_t(bnd[c + 1])] - prefix[size_t(bnd[c])];
        }
    plan.order.resize(item_work.size());
    std::iota(plan.order.begin(), plan.order.end(), int64_t(0));
    std::stable_sort(plan.order.begin(), plan.order.end(),
                     [&](int64_t x, int64_t y) { return item_work[size_t(x)] > item_work[size_t(y)]; });
  }

  // ---- buffers -------------------------------------------------------------------------------------
  const int nthreads = std::max(1, num_threads());
  std::vector<Scratch> scratch;
  scratch.reserve(size_t(nthreads));
  for (int t = 0; t < nthreads; ++t) scratch.emplace_back(D, Dv, !kNoopScore);
  // Gradients of the score_mod's learnable Params (param_grads.h); an empty stand-in otherwise.
  struct NoParams {};
  constexpr bool kParams = HasParams<ScoreMod>;
  using Grads = std::conditional_t<kParams, ParamGrads<ScoreMod>, NoParams>;
  std::optional<Grads> pgrads;
  if constexpr (kParams) pgrads.emplace(score_mod, plan.items(), nthreads, int64_t(kTileQ) * kLdS);
  AlignedFloats delta(size_t(d.B * d.Hq * Lq));
  // dQ partials [B][Hq][C][Lq][D] unless dQ accumulates in place.
  AlignedFloats dq_part(plan.dq_direct ? 0 : size_t(d.B * d.Hq * C * Lq * D));
  // dK/dV partials [B][Hkv][S][Lkv][D or Dv] when head subsets split a GQA group.
  AlignedFloats dk_part(S > 1 ? size_t(d.B * d.Hkv * S * Lkv * D) : 0);
  AlignedFloats dv_part(S > 1 ? size_t(d.B * d.Hkv * S * Lkv * Dv) : 0);

  // ---- pass 1: delta = rowsum(dO * O) --------------------------------------------------------------
  // Through the same gemm (N, T) as dP = dO V^T, one row at a time: its per-element arithmetic does
  // not depend on the matrix size, so where a row has a single key (O == that V row) delta equals
  // dP bit for bit and dS = P (dP - delta) is exactly 0, as in exact arithmetic; a differently
  // ordered dot product would leave ~ulp(|dO.V|) there, which no tolerance of a zero can absorb.
  parallel_for(d.B * d.Hq, [&](int64_t bh, int t) {
    const int64_t b = bh / d.Hq, h = bh % d.Hq;
    Scratch& ws = scratch[size_t(t)];
    float* drow = delta.get() + bh * Lq;
    for (int64_t l = 0; l < Lq; ++l) {
      int64_t ldo, ldg;
      const float* o = f32_rows(a.out, b, h, l, 1, int(Dv), ws.dout, ldo);   // (1, Dv)
      const float* g = f32_rows(a.dout, b, h, l, 1, int(Dv), ws.v, ldg);     // (1, Dv)
      gemm(Trans::N, Trans::T, 1, 1, int(Dv), g, ldg, o, ldo, drow + l, 1, false);
    }
  });

  // ---- pass 2: the tiles ---------------------------------------------------------------------------
  parallel_for(plan.items(), [&](int64_t ord, int t) {
    const int64_t item = plan.order[size_t(ord)];
    const int64_t c = item % C, s = (item / C) % S, hk = (item / (C * S)) % d.Hkv,
                  b = item / (C * S * d.Hkv);
    const int64_t h0 = hk * plan.G + plan.head_lo(s), h1 = hk * plan.G + plan.head_lo(s + 1);
    const int* bnd = &plan.bounds[size_t(((b * d.Hkv + hk) * S + s) * (C + 1))];
    Scratch& ws = scratch[size_t(t)];

    // This item's dQ target for head h: rows of a.dq (f32, whole kv range) or its partial.
    auto dq_target = [&](int64_t h, int64_t& ld) -> float* {
      if (plan.dq_direct) {
        ld = a.dq.stride[2];
        return reinterpret_cast<float*>(row_ptr_mut(a.dq, b, h, 0));
      }
      ld = D;
      return dq_part.get() + ((b * d.Hq + h) * C + c) * Lq * D;
    };
    for (int64_t h = h0; h < h1; ++h) {
      int64_t ld;
      float* dq = dq_target(h, ld);
      for (int64_t l = 0; l < Lq; ++l) std::memset(dq + l * ld, 0, sizeof(float) * size_t(D));
    }

    for (int64_t j = bnd[c]; j < bnd[c + 1]; ++j) {
      const int jb0 = int(j * bkv), jb1 = int(std::min<int64_t>(Lkv, (j + 1) * bkv));
      const int kv_piece = piece_len(jb1 - jb0, kTileKV);
      for (int n0 = jb0; n0 < jb1; n0 += kv_piece) {
        const int N = std::min(kv_piece, jb1 - n0);
        int64_t ldk, ldv;
        const float* K = f32_rows(a.k, b, hk, n0, N, int(D), ws.k, ldk);    // (N, D)
        const float* V = f32_rows(a.v, b, hk, n0, N, int(Dv), ws.v, ldv);   // (N, Dv)
        ws.nbad = zero_bad_rows(K, ldk, N, int(D), ws.kfix, ws.bad);  // rare: see the header
        std::memset(ws.dk, 0, sizeof(float) * size_t(N * D));              // (N, D)
        std::memset(ws.dv, 0, sizeof(float) * size_t(N * Dv));             // (N, Dv)

        for (int64_t h = h0; h < h1; ++h) {
          const int64_t lists = mask_bh(b, h) * nkvb + j;
          const int32_t* pl = q_idx + lists * nqb;  // partial q-blocks, ascending
          const int32_t* fl = fq_idx + lists * nqb;  // full q-blocks, ascending
          const int np = q_num[lists], nf = fq_num[lists];
          int64_t lddq;
          float* dq_head = dq_target(h, lddq);
          const float* lse_head = reinterpret_cast<const float*>(row_ptr(a.lse, b, h, 0));
          const float* delta_head = delta.get() + (b * d.Hq + h) * Lq;

          // One compute tile: rows [tile.m0, tile.m1) of head h against kv rows [n0, n0 + N).
          auto run_tile = [&](const QTile& tile) {
            const int m0 = tile.m0, M = tile.m1 - tile.m0;
            int64_t ldq, lddo;
            const float* Q = f32_rows(a.q, b, h, m0, M, int(D), ws.q, ldq);          // (M, D)
            const float* dO = f32_rows(a.dout, b, h, m0, M, int(Dv), ws.dout, lddo);  // (M, Dv)
            // Rows with a non-finite q or dout (rare: see the header comment).
            ws.nbadq = zero_bad_rows(Q, ldq, M, int(D), ws.qfix, ws.badq);
            ws.nbaddo = zero_bad_rows(dO, lddo, M, int(Dv), ws.dofix, ws.baddo);
            // (M, D) scale * Q, rounded as the forward rounds its Qt: s is the forward's s.
            if (ldq == D) {
              std::memcpy(ws.qs, Q, sizeof(float) * size_t(M * D));
            } else {
              for (int r = 0; r < M; ++r)
                std::memcpy(ws.qs + int64_t(r) * D, Q + int64_t(r) * ldq, sizeof(float) * size_t(D));
            }
            cpu::scale(ws.qs, M * D, scale);  // SIMD: this runs once per (kv piece, q tile)
            float* Sm = ws.s;  // (M, N): scores, then P, then dS
            gemm(Trans::N, Trans::T, M, N, int(D), ws.qs, D, K, ldk, Sm, kLdS, false);
            const float* Gm = nullptr;
            if constexpr (kNoopScore) {
              if (tile.any_partial) {
                for (int r = 0; r < M; ++r) {
                  if (!ws.partial_row[r]) continue;
                  float* row = Sm + int64_t(r) * kLdS;
                  for (int col = 0; col < N; ++col)
                    if (!mask_mod(int(b), int(h), m0 + r, n0 + col)) row[col] = kNegInf;
                }
              }
            } else {
              // One dual call gives s' and ds'/ds. Masked scores never reach score_mod.
              [[maybe_unused]] const auto rec = [&] {
                if constexpr (kParams) return pgrads->recorder(t);
                else return 0;
              }();
              for (int r = 0; r < M; ++r) {
                float* row = Sm + int64_t(r) * kLdS;
                float* grow = ws.g + int64_t(r) * kLdS;
                const bool part = ws.partial_row[r];
                for (int col = 0; col < N; ++col) {
                  if (part && !mask_mod(int(b), int(h), m0 + r, n0 + col)) {
                    row[col] = kNegInf;
                    grow[col] = 0.0f;
                    if constexpr (kParams) rec.skip(int64_t(r) * kLdS + col);
                  } else if constexpr (kParams) {  // PDual: the Params' derivatives too
                    const PDual sd =
                        score_mod(PDual(row[col], 1.0f), int(b), int(h), m0 + r, n0 + col);
                    row[col] = sd.v;
                    grow[col] = sd.d;
                    rec.record(int64_t(r) * kLdS + col, sd);
                  } else {
                    const Dual sd = score_mod(Dual{row[col], 1.0f}, int(b), int(h), m0 + r, n0 + col);
                    row[col] = sd.v;
                    grow[col] = sd.d;
                  }
                }
              }
              Gm = ws.g;
            }
            bwd_probs(Sm, kLdS, M, N, lse_head + m0, 1.0f);                           // P (M, N)
            // Keys with a non-finite K: remember which rows keep them (P != 0). Full tiles too: a
            // -inf score (score_mod, or -inf in K) has P = 0 there as well.
            const bool fix_k = ws.nbad > 0;
            if (fix_k) {
              for (int j = 0; j < ws.nbad; ++j)
                for (int r = 0; r < M; ++r)
                  ws.keeps[size_t(j) * kTileQ + size_t(r)] = Sm[int64_t(r) * kLdS + ws.bad[j]] != 0.0f;
            }
            // Likewise the keys kept by the rows with a bad Q / dO, recorded before Sm becomes dS.
            auto keys_kept = [&](const int* rows, int nrows, std::vector<uint8_t>& out) {
              for (int i = 0; i < nrows; ++i) {
                const float* pr = Sm + int64_t(rows[i]) * kLdS;
                uint8_t* o = out.data() + size_t(i) * kTileKV;
                for (int col = 0; col < N; ++col) o[col] = pr[col] != 0.0f;
              }
            };
            keys_kept(ws.badq, ws.nbadq, ws.qkeeps);
            keys_kept(ws.baddo, ws.nbaddo, ws.dokeeps);
            // y[key] += Sm[row][key] * x[row] for those rows and the keys they keep, in IEEE
            // arithmetic, after the product on the zeroed copy: a kept pair's NaN / inf reaches y.
            // Hazard: that product still takes a bad row's Sm entries times 0, so a +-inf there
            // gives NaN where IEEE gives +-inf. P is never inf; a +-inf dS at a key that a bad-q
            // row keeps needs a score_mod mapping an inf score to a finite one (fix_k: the same).
            auto add_kept_rows = [&](const int* rows, int nrows, const std::vector<uint8_t>& kept,
                                     const float* x, int64_t ldx, int64_t cols, float* y) {
              for (int i = 0; i < nrows; ++i) {
                const float* sr = Sm + int64_t(rows[i]) * kLdS;
                const float* xr = x + int64_t(rows[i]) * ldx;
                for (int col = 0; col < N; ++col) {
                  if (!kept[size_t(i) * kTileKV + size_t(col)]) continue;
                  for (int64_t e = 0; e < cols; ++e) y[col * cols + e] += sr[col] * xr[e];
                }
              }
            };
            const bool fix_do = ws.nbaddo > 0, fix_q = ws.nbadq > 0;
            gemm(Trans::T, Trans::N, N, int(Dv), M, Sm, kLdS, fix_do ? ws.dofix : dO,
                 fix_do ? Dv : lddo, ws.dv, Dv, true);                                  // dV += P^T dO
            if (fix_do) add_kept_rows(ws.baddo, ws.nbaddo, ws.dokeeps, dO, lddo, Dv, ws.dv);
            gemm(Trans::N, Trans::T, M, N, int(Dv), dO, lddo, V, ldv, ws.dp, kLdS, false);  // dP (M, N)
            if constexpr (kParams) {
              pgrads->add_tile(item, t, Sm, ws.dp, kLdS, delta_head + m0, M, N);
            }
            bwd_dscores(Sm, kLdS, ws.dp, kLdS, Gm, kLdS, M, N, delta_head + m0, scale);  // dS (M, N)
            float* dq_rows = dq_head + m0 * lddq;
            gemm(Trans::N, Trans::N, M, int(D), N, Sm, kLdS, fix_k ? ws.kfix : K, fix_k ? D : ldk,
                 dq_rows, lddq, true);                                                   // dQ += dS K
            if (fix_k) {  // the bad keys' terms, IEEE, only for the rows that keep them
              for (int j = 0; j < ws.nbad; ++j) {
                const float* kr = K + int64_t(ws.bad[j]) * ldk;
                for (int r = 0; r < M; ++r) {
                  if (!ws.keeps[size_t(j) * kTileQ + size_t(r)]) continue;
                  const float ds = Sm[int64_t(r) * kLdS + ws.bad[j]];
                  for (int64_t e = 0; e < D; ++e) dq_rows[r * lddq + e] += ds * kr[e];
                }
              }
            }
            gemm(Trans::T, Trans::N, N, int(D), M, Sm, kLdS, fix_q ? ws.qfix : Q, fix_q ? D : ldq,
                 ws.dk, D, true);                                                       // dK += dS^T Q
            if (fix_q) add_kept_rows(ws.badq, ws.nbadq, ws.qkeeps, Q, ldq, D, ws.dk);
          };

          // Walk the kept q-blocks in ascending order, gluing adjacent ones into tiles of up to
          // kTileQ rows (small block_q) and cutting large blocks into even pieces.
          QTile cur;
          auto flush = [&] {
            if (cur.m1 > cur.m0) run_tile(cur);
            cur = QTile{};
          };
          int ip = 0, jf = 0;
          while (ip < np || jf < nf) {
            const bool take_partial = jf >= nf || (ip < np && pl[ip] < fl[jf]);
            const int64_t qb = take_partial ? pl[ip++] : fl[jf++];
            const int r0 = int(qb * bq), r1 = int(std::min<int64_t>(Lq, (qb + 1) * bq));
            const int piece = piece_len(r1 - r0, kTileQ);
            for (int p0 = r0; p0 < r1; p0 += piece) {
              const int p1 = std::min(r1, p0 + piece);
              if (cur.m1 != p0 || cur.m1 - cur.m0 + (p1 - p0) > kTileQ) {
                flush();
                cur.m0 = cur.m1 = p0;
              }
              std::memset(ws.partial_row + (cur.m1 - cur.m0), take_partial ? 1 : 0, size_t(p1 - p0));
              cur.any_partial |= take_partial;
              cur.m1 = p1;
            }
          }
          flush();
        }

        // The kv tile is complete for this item's heads: store it or its partial.
        for (int r = 0; r < N; ++r) {
          const float* dkr = ws.dk + int64_t(r) * D;
          const float* dvr = ws.dv + int64_t(r) * Dv;
          if (S == 1) {
            store_row(dkr, row_ptr_mut(a.dk, b, hk, n0 + r), a.dk.dtype, D);
            store_row(dvr, row_ptr_mut(a.dv, b, hk, n0 + r), a.dv.dtype, Dv);
          } else {
            const int64_t part = (b * d.Hkv + hk) * S + s;
            std::memcpy(dk_part.get() + (part * Lkv + n0 + r) * D, dkr, sizeof(float) * size_t(D));
            std::memcpy(dv_part.get() + (part * Lkv + n0 + r) * Dv, dvr, sizeof(float) * size_t(Dv));
          }
        }
      }
    }
  });

  if constexpr (kParams) pgrads->finish();

  // ---- pass 3: sum the partials in index order ----------------------------------------------------
  constexpr int64_t kRowsPerItem = 64;
  if (!plan.dq_direct) {
    const int64_t row_blocks = (Lq + kRowsPerItem - 1) / kRowsPerItem;
    parallel_for(d.B * d.Hq * row_blocks, [&](int64_t i, int t) {
      const int64_t bh = i / row_blocks, l0 = (i % row_blocks) * kRowsPerItem;
      const int64_t b = bh / d.Hq, h = bh % d.Hq;
      float* acc = scratch[size_t(t)].s;  // (1, D): the score tile holds any row of <= 256
      for (int64_t l = l0; l < std::min(Lq, l0 + kRowsPerItem); ++l) {
        const float* p0 = dq_part.get() + (bh * C * Lq + l) * D;
        std::memcpy(acc, p0, sizeof(float) * size_t(D));
        for (int64_t cc = 1; cc < C; ++cc) bwd_add(acc, p0 + cc * Lq * D, D);
        store_row(acc, row_ptr_mut(a.dq, b, h, l), a.dq.dtype, D);
      }
    });
  }
  if (S > 1) {
    const int64_t row_blocks = (Lkv + kRowsPerItem - 1) / kRowsPerItem;
    parallel_for(d.B * d.Hkv * row_blocks, [&](int64_t i, int t) {
      const int64_t bh = i / row_blocks, l0 = (i % row_blocks) * kRowsPerItem;
      const int64_t b = bh / d.Hkv, hk = bh % d.Hkv;
      float* acc = scratch[size_t(t)].s;  // (1, max(D, Dv))
      for (int64_t l = l0; l < std::min(Lkv, l0 + kRowsPerItem); ++l) {
        const float* pk = dk_part.get() + (bh * S * Lkv + l) * D;
        std::memcpy(acc, pk, sizeof(float) * size_t(D));
        for (int64_t ss = 1; ss < S; ++ss) bwd_add(acc, pk + ss * Lkv * D, D);
        store_row(acc, row_ptr_mut(a.dk, b, hk, l), a.dk.dtype, D);
        const float* pv = dv_part.get() + (bh * S * Lkv + l) * Dv;
        std::memcpy(acc, pv, sizeof(float) * size_t(Dv));
        for (int64_t ss = 1; ss < S; ++ss) bwd_add(acc, pv + ss * Lkv * Dv, Dv);
        store_row(acc, row_ptr_mut(a.dv, b, hk, l), a.dv.dtype, Dv);
      }
    });
  }
}

}  // namespace flexattn::detail::cpu
