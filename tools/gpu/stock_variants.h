// The named attention variants the GPU benchmark and the PyTorch cross-check share, so that C++ and
// Python (bench/gpu_peers.py, tools/gpu/check_vs_torch.py) mean the same thing by each name:
//
//   noop            no mask, no score_mod
//   causal          kv <= q
//   sliding_window  0 <= q - kv <= window   (window = 1024 in the benchmark: 1025 keys, causal)
//   prefix_lm       kv < prefix || kv <= q
//   document        doc[q] == doc[kv]
//   causal_document kv <= q && doc[q] == doc[kv]
//   alibi_causal    score + slope(h) * (kv - q), causal
//   softcap         cap * tanh(score / cap)    (cap = 30)
//
// Every pair here is one of the library's prebuilt variants (detail/variants.h), so a host-compiled
// caller runs the library's own kernels: the same code a user's .cu would instantiate.
#pragma once

#include <flexattn/flexattn.h>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace flexattn::gpu_tools {

struct VariantParams {
  int window = 1024;
  int prefix = 256;
  float cap = 30.0f;
  int num_heads = 16;                // query heads, for ALiBi's slopes
  const int32_t* doc_ids = nullptr;  // on the tensors' device; document variants only
};

inline const std::vector<std::string>& bench_variants() {
  static const std::vector<std::string> v = {"noop",     "causal",       "sliding_window",
                                             "document", "alibi_causal", "softcap"};
  return v;
}

inline bool needs_doc_ids(const std::string& name) {
  return name == "document" || name == "causal_document";
}

// Calls f(score_mod, mask_mod) with the functors of the named variant.
template <class F>
void visit_variant(const std::string& name, const VariantParams& p, F&& f) {
  if (needs_doc_ids(name) && p.doc_ids == nullptr) {
    throw std::invalid_argument("variant " + name + " needs doc_ids");
  }
  if (name == "noop") {
    f(NoopScore{}, noop_mask());
  } else if (name == "causal") {
    f(NoopScore{}, causal());
  } else if (name == "sliding_window") {
    f(NoopScore{}, sliding_window(p.window));
  } else if (name == "prefix_lm") {
    f(NoopScore{}, prefix_lm(p.prefix));
  } else if (name == "document") {
    f(NoopScore{}, document(p.doc_ids));
  } else if (name == "causal_document") {
    f(NoopScore{}, and_masks(causal(), document(p.doc_ids)));
  } else if (name == "alibi_causal") {
    f(alibi(p.num_heads), causal());
  } else if (name == "softcap") {
    f(softcap(p.cap), noop_mask());
  } else {
    throw std::invalid_argument("unknown variant: " + name);
  }
}

// Kept fraction of the Lq x Lkv score matrix (design.md section 4 counts FLOPs on it).
// doc_ids_host: the document ids on the host (document variants only).
inline double kept_fraction(const std::string& name, int64_t Lq, int64_t Lkv,
                            const VariantParams& p, const int32_t* doc_ids_host = nullptr) {
  double kept = 0.0;
  if (name == "document") {  // sum over documents of (its queries) x (its keys)
    if (doc_ids_host == nullptr) throw std::invalid_argument("kept_fraction: no doc ids");
    std::map<int32_t, double> nq, nk;
    for (int64_t q = 0; q < Lq; ++q) nq[doc_ids_host[q]] += 1.0;
    for (int64_t k = 0; k < Lkv; ++k) nk[doc_ids_host[k]] += 1.0;
    for (const auto& [id, n] : nq) kept += n * (nk.count(id) ? nk[id] : 0.0);
    return kept / (double(Lq) * double(Lkv));
  }
  for (int64_t q = 0; q < Lq; ++q) {
    const int64_t causal_keys = q + 1 < Lkv ? q + 1 : Lkv;
    if (name == "noop" || name == "softcap") {
      kept += double(Lkv);
    } else if (name == "causal" || name == "alibi_causal") {
      kept += double(causal_keys);
    } else if (name == "sliding_window") {
      kept += double(causal_keys < p.window + 1 ? causal_keys : p.window + 1);
    } else if (name == "prefix_lm") {
      const int64_t pre = p.prefix < Lkv ? p.prefix : Lkv;
      kept += double(causal_keys > pre ? causal_keys : pre);
    } else if (name == "causal_document") {
      if (doc_ids_host == nullptr) throw std::invalid_argument("kept_fraction: no doc ids");
      for (int64_t k = 0; k < causal_keys; ++k) kept += doc_ids_host[q] == doc_ids_host[k];
    } else {
      throw std::invalid_argument("unknown variant: " + name);
    }
  }
  return kept / (double(Lq) * double(Lkv));
}

// n positions cut into `docs` documents of equal length (the last takes the remainder).
inline std::vector<int32_t> equal_documents(int64_t n, int docs) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  const int64_t len = (n + docs - 1) / docs;
  for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = int32_t(i / len);
  return ids;
}

}  // namespace flexattn::gpu_tools
