// The CPU backward's gradients of a score_mod's learnable Params (param.h).
//
// The backward's score pass calls the functor with a PDual score (instead of a Dual): besides s'
// and ds'/ds it gives d(s')/d(entry) for the entries the score read, which `record` keeps per
// element of the tile (tangent and buffer offset, one plane per read: most scores read one entry
// and touch the first plane only). After dP, per kept score (P != 0):
//   dL/d(score_mod output) = P * (dP - delta)          (dS before the * d(mod)/ds * scale)
//   grad[entry] += dL/d(output) * d(output)/d(entry)
// Each work item of the backward adds into its own f32 buffer (items x all the params' entries);
// the buffers are summed in item order at the end and written over the Params' grads. The items
// are fixed by the problem, not the threads, so the result is bit-identical run to run and for
// any thread count.
//
// HAZARD: rows whose q or dout holds a non-finite value (zeroed copies in the backward's tiles,
// see attention_bwd.h) contribute what those copies give, not NaN.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../../param.h"
#include "kernels.h"

namespace flexattn::detail::cpu {

// The largest items x entries the per-item buffers may hold (256 MiB of floats).
inline constexpr int64_t kMaxParamBufferFloats = int64_t(1) << 26;

template <class ScoreMod>
class ParamGrads {
 public:
  using List = decltype(std::declval<const ScoreMod&>().params());
  static constexpr int kN = int(sizeof(List::p) / sizeof(Param));

  ParamGrads(const ScoreMod& score_mod, int64_t items, int threads, int64_t tile_elems)
      : list_(score_mod.params()), items_(items), tile_(tile_elems) {
    for (int i = 0; i < kN; ++i) {
      base_[i] = total_;
      total_ += list_.p[i].numel();
    }
    if (items_ * total_ > kMaxParamBufferFloats) {
      throw Error("flexattn::flex_attention_backward: the score_mod's params hold " +
                  std::to_string(total_) + " entries; the CPU backward sums them per work item (" +
                  std::to_string(items_) + " items) and supports at most " +
                  std::to_string(kMaxParamBufferFloats) + " floats of such buffers");
    }
    sums_.assign(size_t(items_ * total_), 0.0f);
    per_thread_.resize(size_t(threads));
    for (Tile& t : per_thread_) {
      t.count.assign(size_t(tile_), 0);
      t.tangent.assign(size_t(tile_ * kMaxParamReads), 0.0f);
      t.offset.assign(size_t(tile_ * kMaxParamReads), 0);
    }
  }

  // Thread t's recorder for its current tile, taken once per tile and used as a local: its
  // pointers stay in registers (stores through a member would make the compiler reload them).
  struct Recorder {
    int32_t* count;
    float* tangent;
    int32_t* offset;
    int64_t plane;
    const float* lo[kN];
    int64_t numel[kN], base[kN];
    bool* overflow;
    bool* unlisted;

    // Element e: what the score pass's PDual says about the entries the score read.
    void record(int64_t e, const PDual& o) const {
      if (o.n > kMaxParamReads) {
        *overflow = true;
        count[e] = 0;
        return;
      }
      int32_t kept = 0;
      for (int i = 0; i < o.n; ++i) {
        int64_t at = -1;
        for (int j = 0; j < kN; ++j) {
          if (o.g[i] >= lo[j] && o.g[i] < lo[j] + numel[j]) at = base[j] + (o.g[i] - lo[j]);
        }
        if (at < 0) {
          *unlisted = true;
          continue;
        }
        tangent[kept * plane + e] = o.t[i];
        offset[kept * plane + e] = int32_t(at);
        ++kept;
      }
      count[e] = kept;
    }
    // A masked element: no score, nothing read.
    void skip(int64_t e) const { count[e] = 0; }
  };
  Recorder recorder(int t) {
    Tile& tile = per_thread_[size_t(t)];
    Recorder r{tile.count.data(), tile.tangent.data(), tile.offset.data(), tile_, {}, {}, {},
               &tile.overflow, &tile.unlisted};
    for (int j = 0; j < kN; ++j) {
      r.lo[j] = list_.p[j].grad();
      r.numel[j] = list_.p[j].numel();
      r.base[j] = base_[j];
    }
    return r;
  }

  // One tile of `item` on thread t: P and dP (leading dim lds, the element index of `record`),
  // delta per row.
  void add_tile(int64_t item, int t, const float* P, const float* dP, int64_t lds,
                const float* delta, int M, int N) {
    float* acc = sums_.data() + item * total_;
    const Tile& tile = per_thread_[size_t(t)];
    const int32_t* count = tile.count.data();
    const float* tangent = tile.tangent.data();
    const int32_t* offset = tile.offset.data();
    for (int r = 0; r < M; ++r) {
      // Neighbouring scores often read the same entry (a clamped relative bucket, a per-head
      // slope): their first-plane terms are summed in a register and added once per run, where
      // adding each to memory would chain every add behind the previous store.
      int32_t run_at = -1;
      float run = 0.0f;
      for (int col = 0; col < N; ++col) {
        const int64_t e = int64_t(r) * lds + col;
        const int n = count[e];
        const float p = P[e];
        if (n == 0 || p == 0.0f) continue;  // nothing read, or no weight: nothing flows back
        const float dmod = p * (dP[e] - delta[r]);
        const int32_t at = offset[e];
        if (at != run_at) {
          if (run_at >= 0) acc[run_at] += run;
          run_at = at;
          run = 0.0f;
        }
        run += dmod * tangent[e];
        for (int i = 1; i < n; ++i) acc[offset[i * tile_ + e]] += dmod * tangent[i * tile_ + e];
      }
      if (run_at >= 0) acc[run_at] += run;
    }
  }

  // After every tile: the errors, then the item sums in item order over each Param's grad.
  void finish() {
    bool overflow = false, unlisted = false;
    for (const Tile& t : per_thread_) {
      overflow = overflow || t.overflow;
      unlisted = unlisted || t.unlisted;
    }
    if (overflow) {
      throw Error("flexattn::flex_attention_backward: the score_mod reads more than " +
                  std::to_string(kMaxParamReads) + " distinct Param entries for one score; the "
                  "Params' gradients are not set");
    }
    if (unlisted) {
      throw Error("flexattn::flex_attention_backward: the score_mod reads a Param that its "
                  "params() does not list; the Params' gradients are not set");
    }
    constexpr int64_t kChunk = 4096;
    const int64_t chunks = (total_ + kChunk - 1) / kChunk;
    parallel_for(chunks, [&](int64_t c, int) {
      for (int64_t e = c * kChunk; e < std::min(total_, (c + 1) * kChunk); ++e) {
        float s = 0.0f;
        for (int64_t it = 0; it < items_; ++it) s += sums_[size_t(it * total_ + e)];
        int i = kN - 1;
        while (base_[i] > e) --i;
        list_.p[i].grad()[e - base_[i]] = s;
      }
    });
  }

 private:
  // Per-thread record of the current tile: count per element, then plane k of tangents and
  // buffer offsets (element e of plane k at k * tile_ + e).
  struct Tile {
    std::vector<int32_t> count;  // not a char type: its stores would alias every other object
    std::vector<float> tangent;
    std::vector<int32_t> offset;
    bool overflow = false, unlisted = false;  // this thread's errors, gathered by finish()
  };

  List list_;
  int64_t items_, tile_;
  int64_t base_[kN] = {};
  int64_t total_ = 0;
  std::vector<float> sums_;
  std::vector<Tile> per_thread_;
};

}  // namespace flexattn::detail::cpu
