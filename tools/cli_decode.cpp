// `flexattn decode`: serving-style decoding over a paged KV cache (include/flexattn/paged.h).
//
// Builds a cache whose pages are handed to the sequences in a shuffled order, fills each
// sequence's prompt with append_kv in chunks, then runs --steps decode steps: each appends one
// new token per sequence (append_kv) and attends with that token's query, Lq = 1
// (flex_attention(q, cache, score_mod, mask_mod)). It reports the time of the attention call per
// step and the bandwidth of the K/V rows the step attends, and with --check compares the last
// step with the float64 reference (reference/paged.h).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "reference/paged.h"
#include "tools/cli.h"
#include "tools/stock_variants.h"

namespace flexattn::cli {

const char* const kDecodeUsage =
    "       flexattn decode [--variant NAME] [--batch N] [--heads N] [--kv-heads N]\n"
    "                       [--head-dim N] [--page-size N] [--prompt N] [--ragged] [--steps N]\n"
    "                       [--chunk N] [--dtype f32|f16|bf16] [--device cpu|cuda] [--check]\n"
    "                       [--per-step] [--window N] [--prefix N] [--docs N] [--cap X]\n"
    "                       [--seed N]\n"
    "           a paged KV cache (pages in shuffled order) filled with append_kv in chunks of\n"
    "           --chunk tokens, then --steps steps of one appended token per sequence and\n"
    "           flex_attention with Lq = 1: ms per step, GB/s of the K/V rows attended; --check\n"
    "           compares the last step with float64. --ragged: sequence b starts with\n"
    "           prompt * (b + 1) / batch tokens. --dtype defaults to bf16 on cuda.\n";

namespace {

constexpr int64_t kIntMax = 2147483647;

struct DecodeConfig {
  std::string variant = "causal";
  Device device = Device::cpu;
  DType dtype = DType::f32;
  bool dtype_given = false;
  int64_t batch = 4, heads = 8, kv_heads = 2, head_dim = 64, page_size = 16;
  int64_t prompt = 1024, steps = 16, chunk = 256;
  bool ragged = false, check = false, per_step = false;
  int window = 256, prefix = 256, docs = 4;
  float cap = 30.0f;
  uint64_t seed = 0;  // 0: fresh from std::random_device
};

struct DecodeResult {
  double mean_ms = 0.0, min_ms = 0.0, max_ms = 0.0, append_ms = 0.0, gbps = 0.0;
  int64_t min_len = 0, max_len = 0;  // kv lengths at the last step
  bool checked = false, pass = true;
  Err out_err, lse_err;
};

int64_t prompt_len(const DecodeConfig& c, int64_t b) {
  return c.ragged ? c.prompt * (b + 1) / c.batch : c.prompt;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The float64 reference needs every K/V value on the host, in double: past this many K + V
// elements --check is skipped (512 MB of doubles).
constexpr double kMaxReferenceElements = 6.4e7;

// Random rows of the run, and (for --check) a host mirror of every sequence's keys and values as
// the device holds them (rounded to the dtype): mirror[b] is [Hkv, capacity(b), D].
struct Rows {
  const DecodeConfig& c;
  std::vector<int64_t> capacity;  // prompt + steps tokens per sequence
  bool mirrored;
  std::mt19937_64 rng;
  std::normal_distribution<float> dist{0.0f, 1.0f};
  std::vector<std::vector<float>> k_host, v_host;

  Rows(const DecodeConfig& config, std::vector<int64_t> cap, bool mirror)
      : c(config), capacity(std::move(cap)), mirrored(mirror),
        rng(c.seed ? c.seed : std::random_device{}()) {
    for (size_t b = 0; mirrored && b < capacity.size(); ++b) {
      k_host.emplace_back(size_t(c.kv_heads * capacity[b] * c.head_dim));
      v_host.emplace_back(size_t(c.kv_heads * capacity[b] * c.head_dim));
    }
  }

  // Fresh random [seqs.size(), Hkv, T, D] on the run's device; seqs[i] receives them at positions
  // pos[i] .. pos[i] + T - 1.
  Tensor fresh(const std::vector<int64_t>& seqs, const std::vector<int64_t>& pos, int64_t T,
               std::vector<std::vector<float>>& mirror) {
    const int64_t n = int64_t(seqs.size()), H = c.kv_heads, D = c.head_dim;
    std::vector<float> h(size_t(n * H * T * D));
    for (float& e : h) e = dist(rng);
    Tensor t = Tensor::from_host(h.data(), {n, H, T, D}, c.dtype, c.device);
    if (mirrored) {
      const std::vector<float> r = t.to_host();  // the values the device holds
      for (int64_t i = 0; i < n; ++i) {
        const int64_t b = seqs[size_t(i)];
        for (int64_t hh = 0; hh < H; ++hh) {
          std::copy_n(r.begin() + ((i * H + hh) * T) * D, T * D,
                      mirror[size_t(b)].begin() + (hh * capacity[size_t(b)] + pos[size_t(i)]) * D);
        }
      }
    }
    return t;
  }
};

// The last step (o, for queries q_host) against the float64 reference, into r. The pages are
// rebuilt on the host from the mirror and the page table (not read back from the device), so a
// row append_kv put in the wrong place shows.
template <class ScoreMod, class MaskMod>
void check_last_step(const DecodeConfig& c, const Rows& rows, const std::vector<int32_t>& table,
                     int64_t width, int64_t num_pages, const std::vector<int32_t>& lens,
                     const std::vector<float>& q_host, const AttentionOutput& o,
                     const ScoreMod& score_mod, const MaskMod& mask_host, DecodeResult& r) {
  const int64_t H = c.kv_heads, D = c.head_dim, P = c.page_size;
  reference::PagedCase rc;
  rc.B = c.batch;
  rc.Hq = c.heads;
  rc.Hkv = H;
  rc.Lq = 1;
  rc.D = rc.Dv = D;
  rc.page_size = P;
  rc.num_pages = num_pages;
  rc.max_pages = width;
  rc.q.assign(q_host.begin(), q_host.end());
  rc.k_pages.assign(size_t(num_pages * H * P * D), 0.0);
  rc.v_pages.assign(rc.k_pages.size(), 0.0);
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t t = 0; t < lens[size_t(b)]; ++t) {
      const int64_t page = table[size_t(b * width + t / P)];
      for (int64_t hh = 0; hh < H; ++hh) {
        const size_t src = size_t((hh * rows.capacity[size_t(b)] + t) * D);
        const size_t dst = size_t(((page * H + hh) * P + t % P) * D);
        std::copy_n(rows.k_host[size_t(b)].begin() + src, D, rc.k_pages.begin() + dst);
        std::copy_n(rows.v_host[size_t(b)].begin() + src, D, rc.v_pages.begin() + dst);
      }
    }
  }
  rc.page_table = table;
  rc.kv_len = lens;
  const auto ref =
      reference::paged_forward(rc, reference::default_scale(D), score_mod, mask_host);
  r.checked = true;
  r.out_err = rel_err(o.out.to_host(), ref.out);
  r.lse_err = rel_err(o.lse.to_host(), ref.lse);
  const double tol = tolerance(c.dtype, false);
  r.pass = !r.out_err.nan && !r.lse_err.nan && r.out_err.rel <= tol && r.lse_err.rel <= tol;
}

DecodeResult run_decode(const DecodeConfig& c, bool print) {
  const int64_t B = c.batch, H = c.kv_heads, D = c.head_dim, P = c.page_size;
  std::vector<int64_t> capacity(static_cast<size_t>(B));
  int64_t width = 1, num_pages = 0, total_tokens = 0;
  for (int64_t b = 0; b < B; ++b) {
    capacity[size_t(b)] = prompt_len(c, b) + c.steps;
    const int64_t pages = (capacity[size_t(b)] + P - 1) / P;
    width = std::max(width, pages);
    num_pages += pages;
    total_tokens += capacity[size_t(b)];
  }
  check_elements("k_pages", {{"pages", num_pages}, {"--kv-heads", H}, {"--page-size", P},
                             {"--head-dim", D}});
  check_elements("page_table", {{"--batch", B}, {"pages per sequence", width}});
  const bool mirrored =
      c.check && 2.0 * double(total_tokens) * double(H * D) <= kMaxReferenceElements;

  Rows rows(c, capacity, mirrored);
  // Sequence b takes the next `pages(b)` ids of a shuffled list: its pages sit anywhere in the
  // pool, in no order. Table slots past a sequence's pages hold -1: the contract says they are
  // never read.
  std::vector<int32_t> order(static_cast<size_t>(num_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rows.rng);
  std::vector<int32_t> table(size_t(B * width), -1);
  for (int64_t b = 0, next = 0; b < B; ++b) {
    for (int64_t i = 0; i < (capacity[size_t(b)] + P - 1) / P; ++i) {
      table[size_t(b * width + i)] = order[size_t(next++)];
    }
  }
  std::vector<int32_t> lens(static_cast<size_t>(B));  // all 0: the cache starts empty
  PagedKV cache{Tensor::empty({num_pages, H, P, D}, c.dtype, c.device),
                Tensor::empty({num_pages, H, P, D}, c.dtype, c.device),
                Tensor::from_host(table.data(), {B, width}, c.device),
                Tensor::from_host(lens.data(), {B}, c.device)};
  AttentionOptions opts;
  opts.enable_gqa = c.heads != H;
  // The library checks every shape, dtype and device (Hq a multiple of Hkv, the GPU's dtypes and
  // head dims) before the prompts are generated and written: on the empty cache this reads no key.
  flex_attention(Tensor::empty({B, c.heads, 1, D}, c.dtype, c.device), cache, opts);

  // The prompts: the tokens every sequence has are appended to the whole batch at once, a ragged
  // sequence's remaining ones through a one-sequence cache over the same pages (append_kv adds the
  // same T to every sequence of a call).
  int64_t common = kIntMax;
  for (int64_t b = 0; b < B; ++b) common = std::min(common, prompt_len(c, b));
  std::vector<int64_t> all(static_cast<size_t>(B));
  std::iota(all.begin(), all.end(), int64_t(0));
  for (int64_t done = 0; done < common; done += c.chunk) {
    const int64_t T = std::min(c.chunk, common - done);
    const std::vector<int64_t> pos(size_t(B), done);
    const Tensor kn = rows.fresh(all, pos, T, rows.k_host);
    const Tensor vn = rows.fresh(all, pos, T, rows.v_host);
    append_kv(cache, kn, vn);
  }
  for (int64_t b = 0; b < B; ++b) {
    lens[size_t(b)] = int32_t(prompt_len(c, b));
    if (lens[size_t(b)] == common) continue;
    const int32_t start = int32_t(common);
    PagedKV one{cache.k_pages, cache.v_pages,
                Tensor::from_host(table.data() + b * width, {1, width}, c.device),
                Tensor::from_host(&start, {1}, c.device)};
    for (int64_t done = common; done < lens[size_t(b)]; done += c.chunk) {
      const int64_t T = std::min(c.chunk, lens[size_t(b)] - done);
      const Tensor kn = rows.fresh({b}, {done}, T, rows.k_host);
      const Tensor vn = rows.fresh({b}, {done}, T, rows.v_host);
      append_kv(one, kn, vn);
    }
  }
  cache.kv_len = Tensor::from_host(lens.data(), {B}, c.device);

  // Document ids over every position a sequence reaches (uneven lengths, as `flexattn run`).
  const int64_t max_cap = *std::max_element(capacity.begin(), capacity.end());
  std::vector<int32_t> docs_host(static_cast<size_t>(max_cap));
  for (size_t i = 0; i < docs_host.size(); ++i) {
    docs_host[i] = int32_t((i * i / docs_host.size()) * size_t(c.docs) / docs_host.size());
  }
  const Buffer docs_dev =
      Buffer::from_host(docs_host.data(), docs_host.size() * sizeof(int32_t), c.device);
  stock::VariantParams vp;
  vp.window = c.window;
  vp.prefix = c.prefix;
  vp.cap = c.cap;
  vp.num_heads = int(c.heads);
  vp.doc_ids = static_cast<const int32_t*>(docs_dev.data());
  vp.doc_ids_host = docs_host.data();

  DecodeResult result;
  stock::visit_variant(c.variant, vp, [&](auto score_mod, auto mask_dev, auto mask_host) {
    std::vector<float> q_host(size_t(B * c.heads * D));
    auto fresh_q = [&] {
      for (float& e : q_host) e = rows.dist(rows.rng);
      Tensor q = Tensor::from_host(q_host.data(), {B, c.heads, 1, D}, c.dtype, c.device);
      q_host = q.to_host();  // the reference sees the values the device holds
      return q;
    };
    // Warm-up, untimed: thread-pool start, first-touch of scratch, the GPU's first-call queries.
    AttentionOutput o = flex_attention(fresh_q(), cache, score_mod, mask_dev, opts);
    synchronize();

    const size_t row_bytes = size_t(H * 2 * D) * dtype_size(c.dtype);  // K + V of a key, all heads
    double total_ms = 0.0, total_bytes = 0.0, append_ms = 0.0;
    result.min_ms = 1e300;
    for (int64_t s = 0; s < c.steps; ++s) {
      std::vector<int64_t> pos(static_cast<size_t>(B));
      for (int64_t b = 0; b < B; ++b) pos[size_t(b)] = lens[size_t(b)];
      const Tensor kn = rows.fresh(all, pos, 1, rows.k_host);
      const Tensor vn = rows.fresh(all, pos, 1, rows.v_host);
      const Tensor q = fresh_q();
      synchronize();
      const auto t0 = std::chrono::steady_clock::now();
      append_kv(cache, kn, vn);
      synchronize();
      const double a_ms = ms_since(t0);
      const auto t1 = std::chrono::steady_clock::now();
      o = flex_attention(q, cache, score_mod, mask_dev, opts);
      synchronize();
      const double ms = ms_since(t1);
      // Keys the step attends: the mask at q_idx = kv_len - 1 (the stock masks do not depend on
      // the head, so one head counts for all; a sliding window counts only its window).
      double keys = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        const int q_idx = ++lens[size_t(b)] - 1;
        for (int kv = 0; kv <= q_idx; ++kv) keys += mask_host(int(b), 0, q_idx, kv);
      }
      const double bytes = keys * double(row_bytes);
      total_ms += ms;
      total_bytes += bytes;
      append_ms += a_ms;
      result.min_ms = std::min(result.min_ms, ms);
      result.max_ms = std::max(result.max_ms, ms);
      if (print && c.per_step) {
        std::printf("  step %4lld  kv_len %lld..%lld  append %8.3f ms  attention %8.3f ms  "
                    "%8.1f GB/s\n",
                    (long long)s + 1, (long long)*std::min_element(lens.begin(), lens.end()),
                    (long long)*std::max_element(lens.begin(), lens.end()), a_ms, ms,
                    bytes / (ms * 1e6));
      }
    }
    result.mean_ms = total_ms / double(c.steps);
    result.append_ms = append_ms / double(c.steps);
    result.gbps = total_bytes / (total_ms * 1e6);
    result.min_len = *std::min_element(lens.begin(), lens.end());
    result.max_len = *std::max_element(lens.begin(), lens.end());
    if (mirrored) {
      check_last_step(c, rows, table, width, num_pages, lens, q_host, o, score_mod, mask_host,
                      result);
    }
  });
  return result;
}

}  // namespace

int decode(int argc, char** argv) {
  DecodeConfig c;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw Error("missing value after " + a);
      return argv[++i];
    };
    auto size = [&](int64_t lo = 1, int64_t hi = kIntMax) { return parse_int(a, next(), lo, hi); };
    if (a == "--variant") {
      c.variant = next();
      check_variant_name(a, c.variant);
    } else if (a == "--batch") c.batch = size();
    else if (a == "--heads") c.heads = size();
    else if (a == "--kv-heads") c.kv_heads = size();
    else if (a == "--head-dim") c.head_dim = size(1, 256);
    else if (a == "--page-size") c.page_size = size();
    else if (a == "--prompt") c.prompt = size(0);
    else if (a == "--steps") c.steps = size();
    else if (a == "--chunk") c.chunk = size();
    else if (a == "--window") c.window = int(size(0));
    else if (a == "--prefix") c.prefix = int(size(0));
    else if (a == "--docs") c.docs = int(size());
    else if (a == "--cap") c.cap = parse_positive_float(a, next());
    else if (a == "--seed") c.seed = parse_u64(a, next());
    else if (a == "--ragged") c.ragged = true;
    else if (a == "--check") c.check = true;
    else if (a == "--per-step") c.per_step = true;
    else if (a == "--dtype") {
      c.dtype = parse_dtype(a, next());
      c.dtype_given = true;
    } else if (a == "--device") c.device = parse_device(a, next());
    else throw Error("unknown argument " + a);
  }
  if (!c.dtype_given && c.device == Device::cuda) c.dtype = DType::bf16;  // the GPU has no f32
  if (c.prompt > kIntMax - c.steps) {
    throw Error("--prompt + --steps must be <= " + std::to_string(kIntMax) +
                " (positions are int); got " + std::to_string(c.prompt) + " + " +
                std::to_string(c.steps));
  }
  std::printf("decode on %s, %s, %s: B=%lld Hq=%lld Hkv=%lld D=%lld, page %lld (shuffled), "
              "prompt %lld%s, %lld steps\n",
              to_string(c.device), to_string(c.dtype), c.variant.c_str(), (long long)c.batch,
              (long long)c.heads, (long long)c.kv_heads, (long long)c.head_dim,
              (long long)c.page_size, (long long)c.prompt, c.ragged ? " (ragged)" : "",
              (long long)c.steps);
  const DecodeResult r = run_decode(c, true);
  std::printf("  attention %.3f ms/step (min %.3f, max %.3f), %.1f GB/s of K/V attended; "
              "append_kv %.3f ms/step; kv_len %lld..%lld at the end\n",
              r.mean_ms, r.min_ms, r.max_ms, r.gbps, r.append_ms, (long long)r.min_len,
              (long long)r.max_len);
  if (r.checked) {
    std::printf("  last step vs float64: check %s (out %.1e, lse %.1e)\n",
                r.pass ? "ok" : "FAILED", r.out_err.rel, r.lse_err.rel);
  } else if (c.check) {
    std::printf("  check skipped (too large for the float64 reference)\n");
  }
  return r.pass ? 0 : 1;
}

bool decode_demo(Device device) {
  DecodeConfig c;
  c.device = device;
  c.ragged = c.check = true;
  c.seed = 20261209;
  if (device == Device::cpu) {  // well under a second on two cores, the check included
    c.dtype = DType::f32;
    c.batch = 3;
    c.heads = 8;
    c.kv_heads = 2;
    c.head_dim = 64;
    c.prompt = 1000;
    c.steps = 8;
  } else {
    c.dtype = DType::bf16;
    c.batch = 4;
    c.heads = 32;
    c.kv_heads = 8;
    c.head_dim = 128;
    c.prompt = 4000;
    c.steps = 16;
  }
  std::printf("decode: B=%lld Hq=%lld Hkv=%lld D=%lld kv_len %lld..%lld, paged page %lld "
              "(shuffled), %s %s, %lld steps: ",
              (long long)c.batch, (long long)c.heads, (long long)c.kv_heads,
              (long long)c.head_dim, (long long)(prompt_len(c, 0) + c.steps),
              (long long)(c.prompt + c.steps), (long long)c.page_size, to_string(device),
              to_string(c.dtype), (long long)c.steps);
  std::fflush(stdout);  // the line's start shows even if the run crashes
  try {
    const DecodeResult r = run_decode(c, false);
    std::printf("%.3f ms/step, %.1f GB/s, rel err vs float64 %.1e (lse %.1e) %s\n", r.mean_ms,
                r.gbps, r.out_err.rel, r.lse_err.rel, r.pass ? "ok" : "FAILED");
    return r.pass;
  } catch (const Error& e) {
    std::printf("FAILED: %s\n", e.what());
    return false;
  }
}

}  // namespace flexattn::cli
