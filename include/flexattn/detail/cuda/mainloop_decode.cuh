// The decode kernel: a few query rows per sequence against a long K/V - contiguous or paged - with
// the keys of each sequence split across CTAs (split-KV) and the query heads of a GQA group packed
// into one tile. Tiles and their rationale: kernel_traits_decode.cuh; which CTA does what:
// DecodeTileScheduler / DecodeKvWalk (tile_scheduler.cuh); the split merge: combine_decode.cuh.
//
// One CTA = 4 warps = one m16 tile of packed rows (row r: query row i of head h, i fastest) x the
// keys of its split, streamed through a cp.async ring of kStages tiles of 64 keys. Warp w takes
// keys [16 w, 16 w + 16) of every tile with its own online softmax (softmax.cuh), so the warps meet
// only at the ring's barrier; at the end they merge through shared memory with the same merge as
// the splits (detail/merge.h).
//
// Hazards:
// - Keys at or past kv_len[b] are never loaded: their rows are zero-filled, so a cache's stale
//   rows (NaN / inf included) cannot reach a product; their scores are forced to -inf with
//   clamped indices (mask.cuh's rule: no functor sees an index past the end).
// - Keys inside the sequence that mask_mod drops may hold garbage too: a partial tile checks its
//   V in the ring's barrier and, when it holds NaN / inf, takes the exact product
//   (masked_products.cuh), as the prefill kernels do.
// - A kv_len outside [0, capacity] or a page id outside [0, num_pages) cannot be reported from
//   here: nothing is read through it, and the CTA writes NaN rows instead (paged.h documents it).
#pragma once

#include <type_traits>

#include "../merge.h"
#include "kernel_traits_decode.cuh"
#include "mainloop_fwd_sm80.cuh"
#include "mask.cuh"
#include "masked_products.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

// One packed row of the CTA: query head h, logical query index q. `ok` false for padding rows and
// rows before the sequence start (q < 0); their h and q are clamped to the CTA's first real row so
// that a functor evaluated on them (and then discarded) sees real indices.
struct DecodeRow {
  int h, q;
  bool ok;
};

// score_mod / mask_mod on a warp's 16 x 16 scores (mask.cuh's score_and_mask, with a head and a
// query index per row instead of one head and consecutive rows).
template <bool kNoopScore, bool kPartial, bool kBounds, int NT, class ScoreMod, class MaskMod>
FLEXATTN_DEV void decode_score_and_mask(float (&s)[1][NT][4], const ScoreMod& score_mod,
                                        const MaskMod& mask_mod, int b, const DecodeRow (&rows)[2],
                                        int n0, int kv_end, float scale, bool partial) {
  const int t = static_cast<int>(threadIdx.x % 4);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const DecodeRow row = rows[half];
#pragma unroll
    for (int ni = 0; ni < NT; ++ni) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int kv = n0 + ni * 8 + 2 * t + c;
        const bool kv_in = !kBounds || kv < kv_end;
        const int kc = kv_in ? kv : kv_end - 1;
        float& x = s[0][ni][2 * half + c];
        bool keep = !kBounds || (row.ok && kv_in);
        if constexpr (kPartial) {
          keep = keep && (!partial || static_cast<bool>(mask_mod(b, row.h, row.q, kc)));
        }
        float y = x;
        if constexpr (!kNoopScore) y = static_cast<float>(score_mod(x * scale, b, row.h, row.q, kc));
        x = keep ? y : thread::neg_inf();
      }
    }
  }
}

template <class Traits, class T, class MaskMod>
struct DecodeCta {
  static constexpr int kPitch = Traits::kSmemPitch;
  static constexpr int kChunks = Traits::kChunksPerRow;
  static constexpr int kBlockN = Traits::kBlockN;

  static constexpr int kIters = kBlockN * kChunks / Traits::kNThreads;  // rows per thread
  // Thread `tid` copies 16-byte chunk idx = it * threads + tid of a tile: row idx / kChunks.
  // Where the chunks of a row divide the threads (every head dim but 96 and 192) the thread keeps
  // one chunk column and its rows step by kRowStep, so a row's address is one add from the last.
  static constexpr bool kFixedColumn = Traits::kNThreads % kChunks == 0;
  static constexpr int kRowStep = Traits::kNThreads / kChunks;

  const DecodeParams& p;
  int b, hk, kv_end;
  const T* k;  // contiguous: batch b's k; paged: k_pages (both at kv head hk)
  const T* v;
  bool bad = false;  // this thread met a page id outside [0, num_pages)
  // Page ids of this thread's rows of the NEXT tile to load, read one tile ahead (fetch_pages):
  // a cp.async whose address waited on its page-table load would stall the ring's issue.
  int pages[kIters];

  FLEXATTN_DEV static int row_of(int it) {
    const int tid = static_cast<int>(threadIdx.x);
    if constexpr (kFixedColumn) return it * kRowStep + tid / kChunks;
    return (it * Traits::kNThreads + tid) / kChunks;
  }
  FLEXATTN_DEV static int column_of(int it) {
    const int tid = static_cast<int>(threadIdx.x);
    if constexpr (kFixedColumn) return tid % kChunks;
    return (it * Traits::kNThreads + tid) % kChunks;
  }
  // Page slot and row within the page of key t: shifts for a power-of-two page size (the host
  // sets page_shift), a division otherwise.
  FLEXATTN_DEV int page_slot(int t) const {
    return p.page_shift >= 0 ? t >> p.page_shift : t / p.page_size;
  }
  FLEXATTN_DEV int page_row(int t) const {
    return p.page_shift >= 0 ? t & (p.page_size - 1) : t % p.page_size;
  }

  FLEXATTN_DEV void fetch_pages(int n0) {
    if (p.page_table == nullptr) return;
    const int32_t* table = p.page_table + b * p.pt_sb;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int t = n0 + row_of(it);
      pages[it] = t < kv_end ? __ldg(table + page_slot(t) * p.pt_sp) : 0;
    }
  }

  // K and V rows [n0, n0 + BLOCK_N) into one stage of the ring (fetch_pages(n0) came first); rows
  // past the end are zeros. Nothing here waits on memory: the page ids are in registers.
  FLEXATTN_DEV void load_kv(T* sK, T* sV, int n0) {
    const bool paged = p.page_table != nullptr;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int r = row_of(it), c = column_of(it);
      const int t = n0 + r;
      bool ok = t < kv_end;
      int64_t ko, vo;
      if (!paged) {  // contiguous: k_sb is already in k
        ko = static_cast<int64_t>(t) * p.k_sr;
        vo = static_cast<int64_t>(t) * p.v_sr;
      } else {
        const int page = pages[it], row = page_row(t);
        const bool in = page >= 0 && page < p.num_pages;
        bad = bad || (ok && !in);
        ok = ok && in;
        ko = static_cast<int64_t>(page) * p.k_sb + static_cast<int64_t>(row) * p.k_sr;
        vo = static_cast<int64_t>(page) * p.v_sb + static_cast<int64_t>(row) * p.v_sr;
      }
      cta::cp_async_16_stream(smem_u32(sK + r * kPitch + c * 8), k + (ok ? ko : 0) + c * 8, ok);
      cta::cp_async_16_stream(smem_u32(sV + r * kPitch + c * 8), v + (ok ? vo : 0) + c * 8, ok);
    }
  }
};

// Unit: the launching translation unit's tag (sm90_unit.cuh).
template <class Traits, class T, class ScoreMod, class MaskMod, class Unit>
__global__ void __launch_bounds__(Traits::kNThreads)
    decode_kernel(const DecodeParams p, const ScoreMod score_mod, const MaskMod mask_mod) {
  using ML = MainloopFwdSm80<Traits, T>;
  using Cta = DecodeCta<Traits, T, MaskMod>;
  constexpr int D = Traits::kHeadDim, kPitch = Traits::kSmemPitch, kRows = Traits::kRows;
  constexpr int kBlockN = Traits::kBlockN, kStages = Traits::kStages, kNT = Traits::kNTilesS;
  constexpr int kNTO = Traits::kNTilesO, kThreads = Traits::kNThreads;
  constexpr bool kNoopScore = is_noop_score<ScoreMod>;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // (16, D)
  T* sRing = sQ + Traits::kSmemQ;           // stage s: K (BLOCK_N, D) then V (BLOCK_N, D)
  __shared__ int s_lo, s_hi;

  const auto tile = DecodeTileScheduler::get(p.m_blocks);
  const int b = tile.b, h0 = tile.head_tile * p.heads_per_tile;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;

  // The sequence's length lives on the device for a paged cache; a bad one makes its rows NaN.
  int kv_end = p.Lkv;
  bool seq_bad = false;
  if (p.kv_len != nullptr) {
    kv_end = __ldg(p.kv_len + b * p.kl_s);
    seq_bad = kv_end < 0 || kv_end > p.Lkv;
    kv_end = seq_bad ? 0 : kv_end;
  }
  const int q_off = p.kv_len != nullptr ? kv_end - p.Lq : 0;
  const int rows_total = p.heads_per_tile * p.Lq;
  const int r0 = tile.m_block * kRows;
  auto row_at = [&](int r) {
    const int pr = r0 + r;
    const int h = h0 + pr / p.Lq, q = q_off + pr % p.Lq;
    return DecodeRow{h, q, pr < rows_total && q >= 0};
  };
  // The CTA's real rows: their heads and query range (inclusive), for the tile rule and clamping.
  int h_lo = 0, h_hi = -1, q_lo = 0, q_hi = -1;
  bool some_not_ok = false;  // padding rows, or rows before the sequence start (anywhere)
  for (int r = 0; r < kRows; ++r) {
    const DecodeRow row = row_at(r);
    some_not_ok = some_not_ok || !row.ok;
    if (!row.ok) continue;
    if (h_hi < 0) h_lo = row.h, q_lo = row.q;
    h_hi = row.h;
    q_lo = min(q_lo, row.q);
    q_hi = max(q_hi, row.q);
  }
  const bool any_row = h_hi >= 0 && kv_end > 0;
  const bool rows_ragged = some_not_ok;
  DecodeRow rows[2];
  for (int half = 0; half < 2; ++half) {
    rows[half] = row_at(lane / 4 + 8 * half);
    if (!rows[half].ok) rows[half] = {h_lo, q_lo, false};
  }

  Cta cta{p, b, h0 / p.group, kv_end};
  cta.k = static_cast<const T*>(p.k) + (p.page_table ? 0 : b * p.k_sb) + cta.hk * p.k_sh;
  cta.v = static_cast<const T*>(p.v) + (p.page_table ? 0 : b * p.v_sb) + cta.hk * p.v_sh;

  // ---- the split's share of the keys ----
  DecodeKvWalk<kBlockN, MaskMod> walk{mask_mod, b, h_lo, h_hi, q_lo, q_hi, kv_end};
  walk.lists = p.lists;
  int lo = 0, hi = 0;
  if (any_row && p.lists) {
    const int bm = p.mask_b == 1 ? 0 : b, hm = p.mask_h == 1 ? 0 : h0;
    const int64_t row = (static_cast<int64_t>(bm) * p.mask_h + hm) * p.nqb;  // q-block 0
    walk.n_part = __ldg(p.kv_num + row);
    walk.part = p.kv_idx + row * p.nkvb;
    walk.full = p.full_kv_idx + row * p.nkvb;
    walk.block_kv = p.block_kv;
    walk.subs = p.block_kv / kBlockN;
    hi = (walk.n_part + __ldg(p.full_kv_num + row)) * walk.subs;
  } else if (any_row) {
    const int tiles = (kv_end + kBlockN - 1) / kBlockN;
    hi = tiles;
    if constexpr (HasTileRule<MaskMod> && !std::is_same_v<MaskMod, NoopMask>) {
      // First and last tile the rule keeps, so the splits share out only that span.
      if (threadIdx.x == 0) s_lo = tiles, s_hi = -1;
      __syncthreads();
      int my_lo = tiles, my_hi = -1;
      walk.end = tiles;
      for (int f = static_cast<int>(threadIdx.x); f < tiles; f += kThreads) {
        if (walk.at(f).n0 >= 0) my_lo = min(my_lo, f), my_hi = max(my_hi, f);
      }
      if (my_hi >= 0) atomicMin(&s_lo, my_lo), atomicMax(&s_hi, my_hi);
      __syncthreads();
      lo = s_lo;
      hi = s_hi + 1;
      if (hi <= lo) lo = hi = 0;
    }
  }
  const int per = (hi - lo + p.splits - 1) / p.splits;
  walk.begin = min(hi, lo + tile.split * per);
  walk.end = min(hi, walk.begin + per);

  // ---- Q, then the ring's first kStages - 1 tiles ----
  {
    const T* q = static_cast<const T*>(p.q) + b * p.q_sb;
    for (int idx = static_cast<int>(threadIdx.x); idx < kRows * Traits::kChunksPerRow;
         idx += kThreads) {
      const int r = idx / Traits::kChunksPerRow, c = idx % Traits::kChunksPerRow;
      const int pr = r0 + r;
      const bool ok = pr < rows_total;
      const int64_t off = ok ? (h0 + pr / p.Lq) * p.q_sh + (pr % p.Lq) * p.q_sr : 0;
      cta::cp_async_16(smem_u32(sQ + r * kPitch + c * 8), q + off + c * 8, ok);
    }
  }
  auto stage_k = [&](int st) { return sRing + st * 2 * Traits::kSmemKV; };
  auto stage_v = [&](int st) { return sRing + (st * 2 + 1) * Traits::kSmemKV; };
  auto ld = walk.from(walk.begin);  // the next tile to load
  if (ld.f < walk.end) cta.fetch_pages(ld.n0);
  auto load_next = [&](int st) {
    if (ld.f < walk.end) {
      cta.load_kv(stage_k(st), stage_v(st), ld.n0);
      ld = walk.from(ld.f + 1);
      if (ld.f < walk.end) cta.fetch_pages(ld.n0);
    }
    cta::cp_async_commit();
  };
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) load_next(st);  // Q rides in the first group

  float o[1][kNTO][4];
#pragma unroll
  for (int nd = 0; nd < kNTO; ++nd)
#pragma unroll
    for (int r = 0; r < 4; ++r) o[0][nd][r] = 0.0f;
  OnlineSoftmax<1> softmax;
  const ScoreUnits<kNoopScore> units(p.scale, p.scale_log2);
  const uint32_t q_base = smem_u32(sQ);

  int stage = 0;
  for (auto cur = walk.from(walk.begin); cur.f < walk.end; cur = walk.from(cur.f + 1)) {
    cta::cp_async_wait<kStages - 2>();
    T* sK = stage_k(stage);
    T* sV = stage_v(stage);
    // Tile `cur` visible to all, every warp done with the previous stage. A partial tile also
    // learns whether its V holds NaN / inf (masked_products.cuh).
    const bool v_bad =
        __syncthreads_or(cur.partial && ML::template own_chunks_nonfinite<kBlockN>(sV)) != 0;
    load_next((stage + kStages - 1) % kStages);  // into the stage the previous tile used
    const int n0w = cur.n0 + warp * Traits::kKeysPerWarp;
    if (n0w < kv_end) {  // warp-uniform: a warp past the end has nothing to add
      float s[1][kNT][4];
      ML::gemm_qk(s, q_base, smem_u32(sK + warp * Traits::kKeysPerWarp * kPitch));
      if (units.prescale) scale_scores(s, p.scale_log2);
      const bool ragged = rows_ragged || n0w + Traits::kKeysPerWarp > kv_end;
      if (ragged) {
        decode_score_and_mask<kNoopScore, true, true>(s, score_mod, mask_mod, b, rows, n0w,
                                                      kv_end, p.scale, cur.partial);
      } else if (cur.partial) {
        decode_score_and_mask<kNoopScore, true, false>(s, score_mod, mask_mod, b, rows, n0w,
                                                       kv_end, p.scale, true);
      } else if constexpr (!kNoopScore) {
        decode_score_and_mask<kNoopScore, false, false>(s, score_mod, mask_mod, b, rows, n0w,
                                                        kv_end, p.scale, false);
      }
      softmax.template update<true>(s, o, units.mult);
      const T* sVw = sV + warp * Traits::kKeysPerWarp * kPitch;
      if (v_bad) {
        add_pv_exact(o, s, [&](int kv, int col) { return static_cast<float>(sVw[kv * kPitch + col]); });
      } else {
        ML::gemm_pv(o, s, smem_u32(sVw));
      }
    }
    stage = (stage + 1) % kStages;
  }
  cta::cp_async_wait<0>();
  // Every warp done with the ring (it becomes the merge area); any bad page seen by any thread.
  const bool nan_rows = seq_bad || __syncthreads_or(cta.bad) != 0;

  // ---- merge the warps, then write the CTA's rows (or its split's part) ----
  float lse[2];
  softmax.finalize(o, lse, units.natural);
  constexpr int kMP = D + 4;  // f32 pitch of the merge rows (16-byte aligned)
  float* sO = reinterpret_cast<float*>(sRing);  // (warps, 16, D)
  float* sL = sO + Traits::kNWarps * kRows * kMP;  // (warps, 16) lse, then (16) merged + weights
  {
    const int g = lane / 4, t = lane % 4;
    float* mine = sO + warp * kRows * kMP;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int nd = 0; nd < kNTO; ++nd) {
        mine[(g + 8 * half) * kMP + nd * 8 + 2 * t] = o[0][nd][2 * half];
        mine[(g + 8 * half) * kMP + nd * 8 + 2 * t + 1] = o[0][nd][2 * half + 1];
      }
      if (t == 0) sL[warp * kRows + g + 8 * half] = lse[half];
    }
  }
  __syncthreads();
  float* sW = sL + Traits::kNWarps * kRows;  // (warps, 16) weights, then (16) merged lse
  if (threadIdx.x < kRows) {
    const int r = static_cast<int>(threadIdx.x);
    const float total = nan_rows ? __int_as_float(0x7fc00000) :
        merge_lse(Traits::kNWarps, [&](int w) { return sL[w * kRows + r]; });
    for (int w = 0; w < Traits::kNWarps; ++w) sW[w * kRows + r] = merge_weight(sL[w * kRows + r], total);
    sW[Traits::kNWarps * kRows + r] = total;
  }
  __syncthreads();
  const bool parts = p.splits > 1;
  for (int idx = static_cast<int>(threadIdx.x); idx < kRows * D; idx += kThreads) {
    const int r = idx / D, c = idx % D;
    const int pr = r0 + r;
    if (pr >= rows_total) continue;
    float x = 0.0f;
#pragma unroll
    for (int w = 0; w < Traits::kNWarps; ++w) {
      const float wt = sW[w * kRows + r];
      if (wt != 0.0f) x = fmaf(wt, sO[(w * kRows + r) * kMP + c], x);  // skip empty warps' parts
      else if (wt != wt) x = wt;
    }
    const int h = h0 + pr / p.Lq, i = pr % p.Lq;
    const float total = sW[Traits::kNWarps * kRows + r];
    if (parts) {
      const int64_t row = ((static_cast<int64_t>(tile.split) * p.B + b) * p.Hq + h) * p.Lq + i;
      p.part_out[row * D + c] = x;
      if (c == 0) p.part_lse[row] = total;
    } else {
      T* out = static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh + i * p.o_sr;
      out[c] = static_cast<T>(x);
      if (c == 0) p.lse[b * p.l_sb + h * p.l_sh + i * p.l_sr] = total;
    }
  }
}

}  // namespace flexattn::detail::cuda
