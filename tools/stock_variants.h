// The stock attention variants by name: the ONE table the CLI (tools/flexattn_cli.cpp), the GPU
// tests (tests/gpu), the GPU benchmark (bench/gpu) and the PyTorch cross-check's runner
// (tools/gpu/run_case.cpp) share. The Python side (tools/gpu/torch_variants.py, for
// check_vs_torch.py and bench/gpu_peers.py) reads kStockVariantNames, kBenchVariantNames and the
// kDefault* parameters from this file and refuses to run when its functors do not cover the
// names: keep those declarations plain (string literals in braces, numeric literals).
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
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace flexattn::stock {

inline constexpr const char* kStockVariantNames[] = {
    "noop", "causal", "sliding_window", "prefix_lm", "document", "causal_document", "alibi_causal",
    "softcap"};
// The benchmark's default set (bench/gpu/bench_gpu.cpp, bench/gpu_peers.py).
inline constexpr const char* kBenchVariantNames[] = {
    "noop", "causal", "sliding_window", "document", "alibi_causal", "softcap"};

inline constexpr int kDefaultWindow = 1024;
inline constexpr int kDefaultPrefix = 256;
inline constexpr float kDefaultCap = 30.0f;

struct VariantParams {
  int window = kDefaultWindow;
  int prefix = kDefaultPrefix;
  float cap = kDefaultCap;
  int num_heads = 16;  // query heads, for ALiBi's slopes
  // The document ids (document variants only) on the tensors' device, and the same ids on the
  // host for a host-side reference (may be null when no caller uses the host mask).
  const int32_t* doc_ids = nullptr;
  const int32_t* doc_ids_host = nullptr;
};

inline const std::vector<std::string>& bench_variants() {
  static const std::vector<std::string> v(std::begin(kBenchVariantNames),
                                          std::end(kBenchVariantNames));
  return v;
}

inline bool needs_doc_ids(const std::string& name) {
  return name == "document" || name == "causal_document";
}

// Calls f(score_mod, mask_mod, host_mask_mod) with the functors of the named variant: mask_mod
// reads the document ids on the tensors' device, host_mask_mod the same ids on the host (the two
// differ only for the document variants). Throws std::invalid_argument for an unknown name.
template <class F>
void visit_variant(const std::string& name, const VariantParams& p, F&& f) {
  if (needs_doc_ids(name) && p.doc_ids == nullptr) {
    throw std::invalid_argument("variant " + name + " needs doc_ids");
  }
  // Callers that never evaluate the host mask (the benchmark, run_case) give no host ids.
  const int32_t* host_ids = p.doc_ids_host != nullptr ? p.doc_ids_host : p.doc_ids;
  if (name == "noop") {
    f(NoopScore{}, noop_mask(), noop_mask());
  } else if (name == "causal") {
    f(NoopScore{}, causal(), causal());
  } else if (name == "sliding_window") {
    f(NoopScore{}, sliding_window(p.window), sliding_window(p.window));
  } else if (name == "prefix_lm") {
    f(NoopScore{}, prefix_lm(p.prefix), prefix_lm(p.prefix));
  } else if (name == "document") {
    f(NoopScore{}, document(p.doc_ids), document(host_ids));
  } else if (name == "causal_document") {
    f(NoopScore{}, and_masks(causal(), document(p.doc_ids)),
      and_masks(causal(), document(host_ids)));
  } else if (name == "alibi_causal") {
    f(alibi(p.num_heads), causal(), causal());
  } else if (name == "softcap") {
    f(softcap(p.cap), noop_mask(), noop_mask());
  } else {
    throw std::invalid_argument("unknown variant: " + name);
  }
}

// The same variants as runtime sources (runtime.h), written as a user would: what the benchmark
// times against the compiled-in functors above (issue 11: within 3%). Empty: that mod is absent
// (NoopScore / NoopMask). The variants with captured document ids have none here.
struct RuntimeSources {
  std::string score, mask, tile_kind;
};
inline bool has_runtime_sources(const std::string& name) {
  return name == "causal" || name == "sliding_window" || name == "alibi_causal" ||
         name == "softcap";
}
inline RuntimeSources runtime_sources(const std::string& name, const VariantParams& p) {
  const std::string causal_rule = "q1 - 1 < k0 ? empty : (k1 - 1 <= q0 ? full : partial)";
  if (name == "causal") return {"", "kv_idx <= q_idx", causal_rule};
  if (name == "sliding_window") {
    const std::string w = std::to_string(p.window);
    return {"", "q_idx - kv_idx >= 0 && q_idx - kv_idx <= " + w,
            "long long dmin = (long long)q0 - (k1 - 1), dmax = (long long)(q1 - 1) - k0;\n"
            "if (dmax < 0 || dmin > " + w + ") return empty;\n"
            "return dmin >= 0 && dmax <= " + w + " ? full : partial;"};
  }
  if (name == "alibi_causal") {
    return {"score + exp2(-8.0f * float(h + 1) / " + std::to_string(p.num_heads) +
                ".0f) * float(kv_idx - q_idx)",
            "kv_idx <= q_idx", causal_rule};
  }
  if (name == "softcap") {
    const std::string cap = std::to_string(p.cap) + "f";
    return {cap + " * fast_tanh(score * (1.0f / " + cap + "))", "", ""};
  }
  throw std::invalid_argument("no runtime sources for variant " + name);
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

}  // namespace flexattn::stock
