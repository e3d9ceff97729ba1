// The decode kernel: a few query rows per sequence against a long K/V - contiguous or paged - with
// the keys of each sequence split across CTAs (split-KV) and the query heads of a GQA group packed
// into one tile. Tiles and their rationale: kernel_traits_decode.cuh; which CTA does what:
// DecodeTileScheduler / DecodeKvWalk (tile_scheduler.cuh); the split merge: combine_decode.cuh.
//
// One CTA = 4 warps = one m16 tile of packed rows (row r: query row i of head h, i fastest) x the
// keys of its split, streamed through a cp.async ring of kStages tiles of 64 keys. Warp w takes
// keys [16 w, 16 w + 16) of every tile with its own online softmax (softmax.cuh) and loads those
// rows itself, so each warp runs its own slice of the ring (cp.async groups, __syncwarp) and no
// warp waits on another inside the loop; at the end they merge through shared memory with the same
// merge as the splits (detail/merge.h).
//
// Hazards:
// - Keys at or past kv_len[b] are never loaded: their rows are zero-filled, so a cache's stale
//   rows (NaN / inf included) cannot reach a product; their scores are forced to -inf with
//   clamped indices (mask.cuh's rule: no functor sees an index past the end).
// - Keys inside the sequence that mask_mod drops may hold garbage too: a partial tile checks its
//   V (each warp its own rows) and, when they hold NaN / inf, takes the exact product
//   (masked_products.cuh), as the prefill kernels do.
// - A kv_len outside [0, capacity] or a page id outside [0, num_pages) cannot be reported from
//   here: nothing is read through it, and the CTA writes NaN rows instead (paged.h documents it).
#pragma once

#include "../device_std.h"

#include "../merge.h"
#include "kernel_traits_decode.cuh"
#include "mainloop_fwd_sm80.cuh"
#include "mask.cuh"
#include "masked_products.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

template <class Traits, class T, class MaskMod>
struct DecodeCta {
  static constexpr int kPitch = Traits::kSmemPitch;
  static constexpr int kChunks = Traits::kChunksPerRow;
  static constexpr int kWarpRows = Traits::kKeysPerWarp;  // the keys of a tile one warp uses

  // Each warp loads the rows it multiplies, rows [16 w, 16 w + 16) of every stage, and nothing
  // else: the ring is one private ring per warp, and no warp waits on another inside the loop.
  static constexpr int kIters = kWarpRows * kChunks / 32;  // 16-byte copies per lane per tile
  // Copy `it` of lane l moves one 16-byte chunk of the warp's rows. In general that is chunk
  // idx = it * 32 + l (row idx / kChunks). Where a row's chunks divide the warp (every head dim
  // but 96 and 192) the lane keeps one chunk column of a run of kIters consecutive rows starting
  // at a multiple of kIters: row r of the run is one add from row r - 1, and where the page size
  // is a multiple of kIters (page 16 at every such head dim) the run lies in one page.
  static constexpr bool kFixedColumn = 32 % kChunks == 0;
  const DecodeParams& p;
  int b, hk, kv_end;
  const T* k;  // contiguous: batch b's k; paged: k_pages (both at kv head hk)
  const T* v;
  bool bad = false;  // this thread met a page id outside [0, num_pages)
  // Page ids of the warp's rows of the NEXT tile to load, read one tile ahead (fetch_pages): a
  // cp.async whose address waited on its page-table load would stall the ring's issue. Lane l
  // holds the id of page slot first_slot + l (16 rows span at most 16 pages), and load_kv hands
  // each lane its rows' ids by warp shuffles: one table read per lane and tile, not per row.
  int id = 0;
  int first_slot = 0;

  FLEXATTN_DEV static int lane() { return static_cast<int>(threadIdx.x % 32); }
  // Row (within the warp's 16) and chunk column of copy `it` of this lane.
  FLEXATTN_DEV static int row_of(int it) {
    if constexpr (kFixedColumn) return lane() / kChunks * kIters + it;
    return (it * 32 + lane()) / kChunks;
  }
  FLEXATTN_DEV static int column_of(int it) {
    if constexpr (kFixedColumn) return lane() % kChunks;
    return (it * 32 + lane()) % kChunks;
  }
  // Page slot and row within the page of key t: shifts for a power-of-two page size (the host
  // sets page_shift), a division otherwise.
  FLEXATTN_DEV int page_slot(int t) const {
    return p.page_shift >= 0 ? t >> p.page_shift : t / p.page_size;
  }
  FLEXATTN_DEV int page_row(int t) const {
    return p.page_shift >= 0 ? t & (p.page_size - 1) : t % p.page_size;
  }

  // The ids of the pages keys [n0, n0 + 16) touch (n0 < kv_end: the warp loads only then).
  FLEXATTN_DEV void fetch_pages(int n0) {
    if (p.page_table == nullptr) return;
    first_slot = page_slot(n0);
    const int slot = first_slot + lane();
    id = slot <= page_slot(min(n0 + kWarpRows, kv_end) - 1)
             ? __ldg(p.page_table + b * p.pt_sb + slot * p.pt_sp)
             : 0;
  }
  // The id of the page holding key t of the rows fetch_pages last read (all lanes call it).
  FLEXATTN_DEV int page_of(int t) const {
    return __shfl_sync(0xffffffffu, id, (page_slot(t) - first_slot) & 31);
  }

  // Whether the chunks this lane copied into `smem` (the warp's V rows of one stage) hold a NaN
  // / inf: read back after its own cp.async group completed (rows past the end were zeroed).
  FLEXATTN_DEV static bool own_chunks_nonfinite(const T* smem) {
    bool bad_chunk = false;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const T* chunk = smem + row_of(it) * kPitch + column_of(it) * 8;
      bad_chunk = bad_chunk || has_nonfinite<T>(*reinterpret_cast<const uint4*>(chunk));
    }
    return bad_chunk;
  }

  // K and V rows [n0, n0 + 16) into the warp's rows of one stage (sK, sV point at them;
  // fetch_pages(n0) came first); rows past the end are zeros. Nothing here waits on memory: the
  // page ids are in registers.
  FLEXATTN_DEV void load_kv(T* sK, T* sV, int n0) {
    // One run: contiguous K/V, or a page size that keeps this lane's run of rows in one page
    // (runs start at multiples of their length). Row r is then base + r * row stride with one
    // page id for the run; otherwise every row looks its page up.
    const bool paged = p.page_table != nullptr;
    const bool one_run = !paged || (kFixedColumn && p.page_size % kIters == 0);
    int64_t kbase = 0, vbase = 0;  // element offsets of row 0 of the rows (a run: of the run)
    bool in = true;
    if (!paged) {  // contiguous: k_sb is already in k
      kbase = static_cast<int64_t>(n0) * p.k_sr;
      vbase = static_cast<int64_t>(n0) * p.v_sr;
    } else if (one_run) {
      const int t0 = n0 + row_of(0);
      const int page = page_of(t0);
      in = page >= 0 && page < p.num_pages;
      const int64_t row0 = page_row(t0) - row_of(0);  // so that row r sits at base + r * stride
      kbase = static_cast<int64_t>(page) * p.k_sb + row0 * p.k_sr;
      vbase = static_cast<int64_t>(page) * p.v_sb + row0 * p.v_sr;
    }
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int r = row_of(it), c = column_of(it);
      const int t = n0 + r;
      bool ok = t < kv_end;
      int64_t ko, vo;
      if (one_run) {
        ko = kbase + static_cast<int64_t>(r) * p.k_sr;
        vo = vbase + static_cast<int64_t>(r) * p.v_sr;
      } else {
        const int page = page_of(t), row = page_row(t);
        in = page >= 0 && page < p.num_pages;
        ko = static_cast<int64_t>(page) * p.k_sb + static_cast<int64_t>(row) * p.k_sr;
        vo = static_cast<int64_t>(page) * p.v_sb + static_cast<int64_t>(row) * p.v_sr;
      }
      bad = bad || (ok && !in);
      ok = ok && in;
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
  __shared__ int s_span[4];  // DecodeKvWalk::rule_span's scratch

  // sm90+: launched as a programmatic dependent of the work before it on the stream (which may
  // write q, K/V, kv_len or the page table): nothing is read, and nothing written, before this
  // wait, which returns once that work has finished and its writes are visible. The split merge
  // (combine_decode.cuh) may then be scheduled: it waits for this grid's end in turn.
  grid::wait_for_prior_grid();
  grid::allow_dependents();
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
    return ScoreRow{h, q, pr < rows_total && q >= 0};
  };
  // The CTA's real rows: their heads and query range (inclusive), for the tile rule and clamping.
  int h_lo = 0, h_hi = -1, q_lo = 0, q_hi = -1;
  bool some_not_ok = false;  // padding rows, or rows before the sequence start (anywhere)
  for (int r = 0; r < kRows; ++r) {
    const ScoreRow row = row_at(r);
    some_not_ok = some_not_ok || !row.ok;
    if (!row.ok) continue;
    if (h_hi < 0) h_lo = row.h, q_lo = row.q;
    h_hi = row.h;
    q_lo = min(q_lo, row.q);
    q_hi = max(q_hi, row.q);
  }
  const bool any_row = h_hi >= 0 && kv_end > 0;
  const bool rows_ragged = some_not_ok;
  // This thread's rows g and g + 8; rows that do not exist stand in as the first real row.
  PackedRows rows;
  for (int half = 0; half < 2; ++half) {
    rows.rows[half] = row_at(lane / 4 + 8 * half);
    if (!rows.rows[half].ok) rows.rows[half] = {h_lo, q_lo, false};
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
    if constexpr (HasTileRule<MaskMod> && !fstd::is_same_v<MaskMod, NoopMask>) {
      walk.template rule_span<kThreads>(tiles, s_span, lo, hi);  // the splits share only that
    }
  }
  // Split s takes tiles [lo + s n / S, lo + (s + 1) n / S): shares differ by one tile at most. (A
  // ceil(n / S) share left the last split of 2048 tiles in 33 splits 32 tiles against the others'
  // 63, and its SMs idle for the second half of a B = 1 step.)
  const int64_t n = hi - lo;
  walk.begin = lo + static_cast<int>(n * tile.split / p.splits);
  walk.end = lo + static_cast<int>(n * (tile.split + 1) / p.splits);

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
  // The warp's rows of stage st: K (16, D) then, kSmemKV further, V.
  const int wrow = warp * Traits::kKeysPerWarp;
  auto stage_k = [&](int st) { return sRing + st * 2 * Traits::kSmemKV + wrow * kPitch; };
  auto stage_v = [&](int st) { return sRing + (st * 2 + 1) * Traits::kSmemKV + wrow * kPitch; };
  // A warp whose keys of a tile start at or past the end loads (and adds) nothing there.
  auto ld = walk.from(walk.begin);  // the next tile to load
  if (ld.f < walk.end && ld.n0 + wrow < kv_end) cta.fetch_pages(ld.n0 + wrow);
  auto load_next = [&](int st) {
    if (ld.f < walk.end) {
      if (ld.n0 + wrow < kv_end) cta.load_kv(stage_k(st), stage_v(st), ld.n0 + wrow);
      ld = walk.from(ld.f + 1);
      if (ld.f < walk.end && ld.n0 + wrow < kv_end) cta.fetch_pages(ld.n0 + wrow);
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
  // Q is the only thing the warps share: once visible to all (it came with the first tile,
  // which the loop's first wait would wait for anyway), the warps run on their own.
  cta::cp_async_wait<kStages - 2>();
  __syncthreads();

  int stage = 0;
  for (auto cur = walk.from(walk.begin); cur.f < walk.end; cur = walk.from(cur.f + 1)) {
    cta::cp_async_wait<kStages - 2>();
    T* sK = stage_k(stage);
    T* sV = stage_v(stage);
    const int n0w = cur.n0 + wrow;
    // The warp's rows of tile `cur` visible to all its lanes, every lane done with the previous
    // stage. A partial tile also learns whether its V holds NaN / inf (masked_products.cuh).
    const bool v_bad = __any_sync(0xffffffffu, cur.partial && n0w < kv_end &&
                                                   Cta::own_chunks_nonfinite(sV));
    __syncwarp();
    load_next((stage + kStages - 1) % kStages);  // into the stage the previous tile used
    if (n0w < kv_end) {  // warp-uniform: a warp past the end has nothing to add
      float s[1][kNT][4];
      ML::gemm_qk(s, q_base, smem_u32(sK));
      if (units.prescale) scale_scores(s, p.scale_log2);
      score_and_mask_tile<kNoopScore>(s, score_mod, mask_mod, b, rows, n0w, cur.partial,
                                      rows_ragged || n0w + Traits::kKeysPerWarp > kv_end, kv_end,
                                      p.scale);
      softmax.template update<true>(s, o, units.mult);
      if (v_bad) {
        add_pv_exact(o, s, [&](int kv, int col) { return static_cast<float>(sV[kv * kPitch + col]); });
      } else {
        ML::gemm_pv(o, s, smem_u32(sV));
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
