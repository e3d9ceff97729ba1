// User-style functors shared by the forward and backward tests: what a researcher would write,
// not library code. None has a tile rule unless stated, so create_block_mask classifies their
// tiles element by element.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include <flexattn/flexattn.h>

namespace flexattn::testing {

// A custom score_mod struct: per-(b, h) temperature, a squared-distance penalty and a smooth
// nonlinearity, generic in T so the backward differentiates it through Dual.
struct CustomScore {
  float alpha = 0.5f;
  template <class T>
  FLEXATTN_HD T operator()(T s, int b, int h, int q, int kv) const {
    const float temperature = 1.0f + 0.25f * float(h) - 0.125f * float(b);
    const float dist = float(q - kv);
    return s * temperature - alpha * dist * dist / 1024.0f + 0.5f * flexattn::sin(s);
  }
};

// A generic lambda score_mod: a tanh bump, halved on a pattern of (q, kv, h).
inline auto lambda_score() {
  return [](auto s, int, int h, int q, int kv) {
    const auto t = s + 0.3f * flexattn::tanh(s);
    return flexattn::where((q + kv + h) % 3 == 0, t * 0.5f, t);
  };
}

// A lambda mask_mod: a pattern that leaves every tile partial.
inline auto lambda_mask() {
  return [](int, int, int q, int kv) { return ((q ^ kv) & 3) != 0 || kv == q; };
}

// Depends on b and h: a different band per (b, h), so one BlockMask per (b, h) is required.
struct PerBatchHeadMask {
  FLEXATTN_HD bool operator()(int b, int h, int q, int kv) const {
    return kv <= q + 3 * h + 7 * b && (q + 2 * kv + h + b) % 5 != 0;
  }
};
// Depends on b only: a BlockMask with H = 1 broadcasts it over heads.
struct PerBatchMask {
  FLEXATTN_HD bool operator()(int b, int, int q, int kv) const { return kv <= q + 9 * b; }
};
// Depends on h only: a BlockMask with B = 1 broadcasts it over the batch.
struct PerHeadMask {
  FLEXATTN_HD bool operator()(int, int h, int q, int kv) const { return kv <= q - 4 * h; }
};

// Causal, with every row q % 5 == 3 of head h % 2 == 0 fully masked: rows that see no key.
struct KillRowsMask {
  FLEXATTN_HD bool operator()(int, int h, int q, int kv) const {
    return kv <= q && !(q % 5 == 3 && h % 2 == 0);
  }
};

// Masks everything: no tile is visited, yet every row must come out 0 / -inf.
struct NothingMask {
  FLEXATTN_HD bool operator()(int, int, int, int) const { return false; }
};

// An opaque random mask read from a table (density ~40%).
struct TableMask {
  const unsigned char* keep;
  int kv_len;
  FLEXATTN_HD bool operator()(int, int, int q, int kv) const { return keep[q * kv_len + kv] != 0; }
};
inline std::vector<unsigned char> random_table(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution keep(0.4);
  std::vector<unsigned char> t(size_t(rows * cols));
  for (auto& e : t) e = keep(rng);
  return t;
}

// Document ids for packed sequences: runs of random length in [1, max_len], ascending ids.
inline std::vector<int32_t> random_documents(int64_t n, int max_len, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> len(1, max_len);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  int32_t doc = 0;
  for (int64_t i = 0; i < n;) {
    for (int l = len(rng); l > 0 && i < n; --l) ids[size_t(i++)] = doc;
    ++doc;
  }
  return ids;
}

}  // namespace flexattn::testing
