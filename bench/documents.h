// Document ids for the document-mask benchmarks: 16 packed documents per sequence.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace flexattn::bench {

// Equal lengths (boundaries on tile edges when L / 16 is a multiple of the block) or random
// lengths (boundaries inside tiles, as packed training batches have them). Short sequences get
// at most L documents.
inline std::vector<int32_t> document_ids(int64_t L, bool aligned, std::mt19937& rng) {
  constexpr int64_t kDocs = 16;
  const int64_t n_cuts = std::min<int64_t>(kDocs - 1, L - 1);
  std::vector<int64_t> cuts;
  if (aligned) {
    for (int64_t i = 1; i <= n_cuts; ++i) cuts.push_back(L * i / kDocs);
  } else {
    std::uniform_int_distribution<int64_t> pos(1, std::max<int64_t>(1, L - 1));
    while (static_cast<int64_t>(cuts.size()) < n_cuts) {
      const int64_t c = pos(rng);
      if (std::find(cuts.begin(), cuts.end(), c) == cuts.end()) cuts.push_back(c);
    }
    std::sort(cuts.begin(), cuts.end());
  }
  std::vector<int32_t> ids(static_cast<size_t>(L));
  int32_t doc = 0;
  for (int64_t i = 0, c = 0; i < L; ++i) {
    while (c < static_cast<int64_t>(cuts.size()) && cuts[static_cast<size_t>(c)] == i) ++doc, ++c;
    ids[static_cast<size_t>(i)] = doc;
  }
  return ids;
}

}  // namespace flexattn::bench
