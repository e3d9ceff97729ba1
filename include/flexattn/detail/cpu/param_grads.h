// The CPU backward's gradients of a score_mod's learnable Params (param.h).
//
// Per kept score (P != 0) of a tile, after dP and before dS:
//   dL/d(score_mod output) = P * (dP - delta)          (dS before the * d(mod)/ds * scale)
//   grad[entry] += dL/d(output) * d(output)/d(entry)    for every entry the score read
// where d(output)/d(entry) comes from one more call of the functor with a PDual score. Each work
// item of the backward adds into its own f32 buffer (items x all the params' entries); the
// buffers are summed in item order at the end and written over the Params' grads. The items are
// fixed by the problem, not the threads, so the result is bit-identical run to run and for any
// thread count.
//
// HAZARD: rows whose q or dout holds a non-finite value (zeroed copies in the backward's tiles,
// see attention_bwd.h) contribute what those copies give, not NaN.
#pragma once

#include <algorithm>
#include <atomic>
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

  ParamGrads(const ScoreMod& score_mod, int64_t items, int threads, int64_t tile_floats)
      : list_(score_mod.params()), items_(items) {
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
    raw_.resize(size_t(threads));
    for (auto& r : raw_) r.assign(size_t(tile_floats), 0.0f);
  }

  // The pre-score_mod scores of thread t's current tile (the PDual pass needs them after the
  // tile's scores have become probabilities).
  float* raw(int t) { return raw_[size_t(t)].data(); }

  // One tile of `item`: P (ld lds), dP (ld lds), delta per row, the raw scores of thread t.
  void add_tile(const ScoreMod& score_mod, int64_t item, int t, const float* P, const float* dP,
                int64_t lds, const float* delta, int M, int N, int b, int h, int m0, int n0) {
    float* acc = sums_.data() + item * total_;
    const float* raw = raw_[size_t(t)].data();
    for (int r = 0; r < M; ++r) {
      for (int col = 0; col < N; ++col) {
        const float p = P[int64_t(r) * lds + col];
        if (p == 0.0f) continue;  // masked, or no weight: nothing flows back
        const float dmod = p * (dP[int64_t(r) * lds + col] - delta[r]);
        const PDual o = score_mod(PDual(raw[int64_t(r) * lds + col], 1.0f), b, h, m0 + r, n0 + col);
        if (o.n > kMaxParamReads) {
          overflow_.store(true, std::memory_order_relaxed);
          continue;
        }
        for (int i = 0; i < o.n; ++i) {
          const int64_t at = locate(o.g[i]);
          if (at < 0) {
            unlisted_.store(true, std::memory_order_relaxed);
            continue;
          }
          acc[at] += dmod * o.t[i];
        }
      }
    }
  }

  // After every tile: the errors, then the item sums in item order over each Param's grad.
  void finish() {
    if (overflow_.load()) {
      throw Error("flexattn::flex_attention_backward: the score_mod reads more than " +
                  std::to_string(kMaxParamReads) + " distinct Param entries for one score; the "
                  "Params' gradients are not set");
    }
    if (unlisted_.load()) {
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
  // The buffer offset of the grad entry at g, or -1 when no listed Param owns it.
  int64_t locate(const float* g) const {
    for (int i = 0; i < kN; ++i) {
      const float* lo = list_.p[i].grad();
      if (g >= lo && g < lo + list_.p[i].numel()) return base_[i] + (g - lo);
    }
    return -1;
  }

  List list_;
  int64_t items_;
  int64_t base_[kN] = {};
  int64_t total_ = 0;
  std::vector<float> sums_;
  std::vector<std::vector<float>> raw_;
  std::atomic<bool> overflow_{false}, unlisted_{false};
};

}  // namespace flexattn::detail::cpu
