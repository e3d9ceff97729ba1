// The `flexattn` command line.
//
//   flexattn demo                      masks, their tile pictures, forward + backward checked
//                                      against the float64 reference, times (CPU, and the GPU
//                                      when one is present)
//   flexattn run --variant causal --b 1 --hq 8 --lq 4096 --d 64 --dtype f32 --device cpu
//                [--hkv N --lkv N --dv N --check --backward --repeats N --block-q N --block-kv N]
//   flexattn decode --batch 4 --heads 8 --kv-heads 2 --head-dim 64 --page-size 16 --prompt 1024
//                   --steps 16 [--variant NAME --ragged --check ...]   paged KV cache decode
//                                      (tools/cli_decode.cpp)
//   flexattn variants                  lists the variant names
//
// Exit code 0 when every requested check passed, 1 when one failed, 2 on bad arguments.
#include <flexattn/flexattn.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <new>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "flexattn/detail/kept_fraction.h"
#include "reference/reference.h"
#include "tools/cli.h"
#include "tools/stock_variants.h"

namespace fa = flexattn;

// The helpers tools/cli.h shares with the other commands' files.
namespace flexattn::cli {

int64_t parse_int(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || ptr != end || v < lo || v > hi) {
    throw Error(flag + " expects an integer in " + std::to_string(lo) + ".." +
                std::to_string(hi) + "; got '" + text + "'");
  }
  return v;
}

uint64_t parse_u64(const std::string& flag, const std::string& text) {
  uint64_t v = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || ptr != end) {
    throw Error(flag + " expects an integer in 0.." +
                std::to_string(std::numeric_limits<uint64_t>::max()) + "; got '" + text + "'");
  }
  return v;
}

float parse_positive_float(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const float v = text.empty() ? 0.0f : std::strtof(text.c_str(), &end);
  if (text.empty() || errno != 0 || end != text.c_str() + text.size() || !std::isfinite(v) ||
      !(v > 0.0f) || std::isspace(static_cast<unsigned char>(text[0]))) {
    throw Error(flag + " expects a finite number > 0; got '" + text + "'");
  }
  return v;
}

DType parse_dtype(const std::string& flag, const std::string& text) {
  if (text == "f32") return DType::f32;
  if (text == "f16") return DType::f16;
  if (text == "bf16") return DType::bf16;
  throw Error(flag + " must be f32, f16 or bf16; got " + text);
}

Device parse_device(const std::string& flag, const std::string& text) {
  if (text == "cpu") return Device::cpu;
  if (text == "cuda") return Device::cuda;
  throw Error(flag + " must be cpu or cuda; got " + text);
}

void check_variant_name(const std::string& flag, const std::string& name) {
  const auto& names = stock::kStockVariantNames;
  if (std::none_of(std::begin(names), std::end(names),
                   [&](const char* v) { return name == v; })) {
    throw Error(flag + " expects one of the names `flexattn variants` lists; got '" + name + "'");
  }
}

Err rel_err(const std::vector<float>& a, const std::vector<double>& b) {
  double num = 0.0, den = 0.0;
  Err e;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) e.nan = true;
    const double ref = std::isinf(b[i]) ? 0.0 : b[i];
    const double got = std::isinf(b[i]) && a[i] == b[i] ? 0.0 : a[i];
    num += (got - ref) * (got - ref);
    den += ref * ref;
  }
  e.rel = std::sqrt(num / std::max(den, 1e-300));
  return e;
}

// f32 accumulates in f32 throughout; f16/bf16 round inputs, P and outputs to 11 / 8 significant
// bits.
double tolerance(DType t, bool grad) {
  switch (t) {
    case DType::f32: return grad ? 1e-4 : 2e-5;
    case DType::f16: return grad ? 1e-2 : 4e-3;
    case DType::bf16: return grad ? 4e-2 : 2e-2;
    case DType::i32: break;  // never an attention operand
  }
  return 0.0;
}

void check_elements(const char* tensor,
                    std::initializer_list<std::pair<const char*, int64_t>> dims) {
  int64_t n = 1;
  bool overflow = false;
  std::string what;
  for (auto [flag, d] : dims) {
    overflow = overflow || __builtin_mul_overflow(n, d, &n);
    what += (what.empty() ? "" : " x ") + std::string(flag) + " " + std::to_string(d);
  }
  if (overflow || n > std::numeric_limits<int64_t>::max() / 4) {
    throw Error(std::string(tensor) + " would have " + what + " elements: too many; expected " +
                "a product of at most " + std::to_string(std::numeric_limits<int64_t>::max() / 4));
  }
}

}  // namespace flexattn::cli

namespace {

using fa::cli::check_elements;
using fa::cli::Err;
using fa::cli::parse_int;
using fa::cli::rel_err;
using fa::cli::tolerance;

struct Config {
  std::string variant = "causal";
  int64_t b = 1, hq = 4, hkv = 0, lq = 1024, lkv = 0, d = 64, dv = 0;
  fa::DType dtype = fa::DType::f32;
  fa::Device device = fa::Device::cpu;
  bool check = false, backward = false;
  int repeats = 3;
  int block_q = 128, block_kv = 128;
  int window = 256, prefix = 256, docs = 4;
  float cap = 30.0f;
  uint64_t seed = 0;  // 0: fresh from std::random_device
  // --score-mod / --mask-mod / --tile-kind: a runtime variant (runtime.h) instead of --variant.
  std::string score_src, mask_src, tile_src;
  bool runtime() const { return !score_src.empty() || !mask_src.empty(); }
};

// The stock variants' names and functors: tools/stock_variants.h, the one table the GPU tests,
// the benchmarks and the PyTorch cross-check share.
const auto& kVariants = fa::stock::kStockVariantNames;

// A runtime variant's score_mod / mask_mod as the float64 reference calls them: the CPU module's
// own evaluation of the same source in double (detail::runtime::host_eval).
struct EvalScore {
  std::shared_ptr<const fa::detail::runtime::HostEval> e;
  template <class T>
  T operator()(T s, int b, int h, int q, int kv) const {
    return T(e->score(double(s), b, h, q, kv));
  }
};
struct EvalMask {
  std::shared_ptr<const fa::detail::runtime::HostEval> e;
  bool operator()(int b, int h, int q, int kv) const { return e->mask(b, h, q, kv); }
};

// Calls f(score_mod, score_mod_for_host, mask_mod_for_device, mask_mod_for_host). Two mask
// objects because the document mask holds a pointer that must live on the tensors' device for the
// kernel and on the host for the reference; two score_mods for runtime variants, whose source the
// reference evaluates through the CPU module.
template <class F>
void with_variant(const Config& c, const int32_t* docs_dev, const int32_t* docs_host, F&& f) {
  if (c.runtime()) {
    const std::string score = c.score_src.empty() ? "score" : c.score_src;
    const std::string mask = c.mask_src.empty() ? "true" : c.mask_src;
    const fa::RuntimeScoreMod s(score);
    const fa::RuntimeMaskMod m(mask, {}, c.tile_src);
    auto e = std::make_shared<const fa::detail::runtime::HostEval>(
        fa::detail::runtime::host_eval(&s.spec(), &m.spec()));
    f(s, EvalScore{e}, m, EvalMask{e});
    return;
  }
  fa::cli::check_variant_name("--variant", c.variant);
  fa::stock::VariantParams p;
  p.window = c.window;
  p.prefix = c.prefix;
  p.cap = c.cap;
  p.num_heads = int(c.hq);
  p.doc_ids = docs_dev;
  p.doc_ids_host = docs_host;
  fa::stock::visit_variant(c.variant, p, [&](auto score_mod, auto mask_dev, auto mask_host) {
    f(score_mod, score_mod, mask_dev, mask_host);
  });
}

// GPU calls are asynchronous: each timed call ends in synchronize() so the clock sees the kernels.
double median_ms(const std::function<void()>& fn, int repeats) {
  fn();  // warm-up: thread pool start, first-touch of scratch, module load
  fa::synchronize();
  std::vector<double> t;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    fa::synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                    .count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

fa::Tensor random_tensor(std::vector<int64_t> shape, const Config& c, std::mt19937_64& rng,
                         std::vector<double>* rounded) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> h(static_cast<size_t>(n));
  for (float& x : h) x = dist(rng);
  fa::Tensor t = fa::Tensor::from_host(h.data(), shape, c.dtype, c.device);
  if (rounded) {  // the reference sees exactly the values the kernel sees
    const std::vector<float> back = t.to_host();
    rounded->assign(back.begin(), back.end());
  }
  return t;
}

bool small_enough_for_reference(const Config& c) {
  return double(c.b) * c.hq * c.lq * c.lkv * std::max(c.d, c.dv) <= 1.2e9;
}

// One configuration: build the mask, time forward (and backward), check against float64.
bool run_one(const Config& c) {
  std::mt19937_64 rng(c.seed ? c.seed : std::random_device{}());
  std::vector<int32_t> docs_host(static_cast<size_t>(std::max(c.lq, c.lkv)));
  // Documents of uneven lengths, so boundaries fall inside tiles.
  for (size_t i = 0; i < docs_host.size(); ++i) {
    docs_host[i] = int32_t((i * i / docs_host.size()) * c.docs / docs_host.size());
  }
  const fa::Buffer docs_dev =
      fa::Buffer::from_host(docs_host.data(), docs_host.size() * sizeof(int32_t), c.device);

  bool ok = true;
  with_variant(c, static_cast<const int32_t*>(docs_dev.data()), docs_host.data(),
               [&](auto score_mod, auto score_host, auto mask_dev, auto mask_host) {
    const fa::BlockMaskOptions bo{c.block_q, c.block_kv, c.device};
    const auto t_mask0 = std::chrono::steady_clock::now();
    // A stock mask is the same for every (b, h); a runtime one may read b and h.
    const int64_t mb = c.runtime() ? c.b : 1, mh = c.runtime() ? c.hq : 1;
    auto bm = fa::create_block_mask(mask_dev, mb, mh, c.lq, c.lkv, bo);
    fa::synchronize();
    const double mask_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_mask0).count();
    const double density = fa::detail::kept_fraction(bm.data().to_cpu(), mask_host, mb, mh);

    std::vector<double> q64, k64, v64, do64;
    fa::Tensor q = random_tensor({c.b, c.hq, c.lq, c.d}, c, rng, &q64);
    fa::Tensor k = random_tensor({c.b, c.hkv, c.lkv, c.d}, c, rng, &k64);
    fa::Tensor v = random_tensor({c.b, c.hkv, c.lkv, c.dv}, c, rng, &v64);
    fa::AttentionOptions opts;
    opts.enable_gqa = c.hq != c.hkv;

    fa::AttentionOutput o;
    const double fwd_ms =
        median_ms([&] { o = fa::flex_attention(q, k, v, score_mod, bm, opts); }, c.repeats);
    const double fwd_flops = 4.0 * c.b * c.hq * c.lq * c.lkv * c.d * density;
    std::printf("  %-16s %-4s %-4s fwd %9.2f ms %8.1f GFLOP/s  (mask %.2f ms, %.1f%% sparse)",
                c.variant.c_str(), fa::to_string(c.device), fa::to_string(c.dtype), fwd_ms,
                fwd_flops / fwd_ms * 1e-6, mask_ms, bm.sparsity());
    const bool check = c.check && small_enough_for_reference(c);
    const fa::reference::Shape sh{c.b, c.hq, c.hkv, c.lq, c.lkv, c.d, c.dv};
    const double scale = fa::reference::default_scale(c.d);
    if (check) {
      const auto ref = fa::reference::forward(sh, q64, k64, v64, scale, score_host, mask_host);
      const Err eo = rel_err(o.out.to_host(), ref.out), el = rel_err(o.lse.to_host(), ref.lse);
      const bool pass = !eo.nan && !el.nan && eo.rel <= tolerance(c.dtype, false) &&
                        el.rel <= tolerance(c.dtype, false);
      ok = ok && pass;
      std::printf("  check %s (out %.1e, lse %.1e)", pass ? "ok" : "FAILED", eo.rel, el.rel);
    } else if (c.check) {
      std::printf("  check skipped (too large for the float64 reference)");
    }
    std::printf("\n");
    if (!c.backward) return;

    fa::Tensor dout = random_tensor({c.b, c.hq, c.lq, c.dv}, c, rng, &do64);
    fa::AttentionGrads g;
    const double bwd_ms = median_ms(
        [&] { g = fa::flex_attention_backward(q, k, v, o.out, o.lse, dout, score_mod, bm, opts); },
        c.repeats);
    std::printf("  %-16s %-4s %-4s bwd %9.2f ms %8.1f GFLOP/s", c.variant.c_str(),
                fa::to_string(c.device), fa::to_string(c.dtype), bwd_ms,
                2.5 * fwd_flops / bwd_ms * 1e-6);
    if (check) {
      const auto ref =
          fa::reference::backward(sh, q64, k64, v64, do64, scale, score_host, mask_host);
      const Err eq = rel_err(g.dq.to_host(), ref.dq), ek = rel_err(g.dk.to_host(), ref.dk),
                ev = rel_err(g.dv.to_host(), ref.dv);
      const double tol = tolerance(c.dtype, true);
      const bool pass = !eq.nan && !ek.nan && !ev.nan && eq.rel <= tol && ek.rel <= tol &&
                        ev.rel <= tol;
      ok = ok && pass;
      std::printf("  check %s (dq %.1e, dk %.1e, dv %.1e)", pass ? "ok" : "FAILED", eq.rel, ek.rel,
                  ev.rel);
    }
    std::printf("\n");
  });
  return ok;
}

int demo() {
  std::printf("flexattn demo: block masks at L = 2048, 128 x 128 tiles\n\n");
  const int64_t L = 2048;
  std::vector<int32_t> docs(L);
  const int64_t bounds[] = {300, 700, 1500, L};  // 4 documents, boundaries inside tiles
  for (int64_t i = 0, d = 0; i < L; ++i) {
    while (i >= bounds[d]) ++d;
    docs[size_t(i)] = int32_t(d);
  }
  auto show = [&](const char* name, auto mask) {
    const auto bm = fa::create_block_mask(mask, 1, 1, L, L);
    std::printf("%s: %.1f%% of tiles skipped\n%s\n", name, bm.sparsity(), bm.to_string().c_str());
  };
  show("causal", fa::causal());
  show("sliding_window(512)", fa::sliding_window(512));
  show("document (4 docs)", fa::and_masks(fa::causal(), fa::document(docs.data())));
  show("prefix_lm(512)", fa::prefix_lm(512));

  bool ok = true;
  std::vector<fa::Device> devices = {fa::Device::cpu};
  if (fa::cuda_available()) devices.push_back(fa::Device::cuda);
  for (fa::Device dev : devices) {
    Config c;
    c.device = dev;
    c.dtype = dev == fa::Device::cpu ? fa::DType::f32 : fa::DType::bf16;
    c.hq = c.hkv = 4;
    c.lq = c.lkv = 1024;
    c.d = c.dv = dev == fa::Device::cpu ? 64 : 128;
    c.check = c.backward = true;
    std::printf("forward + backward on %s, %s, B=%lld H=%lld L=%lld D=%lld, checked against the "
                "float64 reference:\n",
                fa::to_string(dev), fa::to_string(c.dtype), (long long)c.b, (long long)c.hq,
                (long long)c.lq, (long long)c.d);
    for (const char* v : {"noop", "causal", "sliding_window", "document", "prefix_lm",
                          "alibi_causal", "softcap"}) {
      c.variant = v;
      ok = run_one(c) && ok;
    }
    // A variant written as source and compiled at run time (runtime.h; the first run compiles,
    // later ones load it from the cache): a per-head distance bias with a causal mask.
    Config r = c;
    r.score_src = "score + 0.05f * float(kv_idx - q_idx) / float(h + 1)";
    r.mask_src = "kv_idx <= q_idx";
    r.tile_src = "q1 - 1 < k0 ? empty : (k1 - 1 <= q0 ? full : partial)";
    r.variant = "runtime";
    ok = run_one(r) && ok;
    ok = fa::cli::decode_demo(dev) && ok;
    std::printf("\n");
  }
  if (!fa::cuda_available()) std::printf("(no CUDA GPU visible: GPU part skipped)\n");
  std::printf("%s\n", ok ? "demo: all checks passed" : "demo: SOME CHECKS FAILED");
  return ok ? 0 : 1;
}

// To stdout for --help (exit 0), to stderr after a bad command line (exit 2).
int usage(std::FILE* to, int code) {
  std::fprintf(to,
               "usage: flexattn demo\n"
               "       flexattn run [--variant NAME] [--b N] [--hq N] [--hkv N] [--lq N] [--lkv N]\n"
               "                    [--d N] [--dv N] [--dtype f32|f16|bf16] [--device cpu|cuda]\n"
               "                    [--check] [--backward] [--repeats N] [--block-q N]\n"
               "                    [--block-kv N] [--window N] [--prefix N] [--docs N]\n"
               "                    [--cap X] [--seed N]\n"
               "                    [--score-mod SRC] [--mask-mod SRC] [--tile-kind SRC]\n"
               "                      a variant from source (runtime.h; in scope: score, b, h,\n"
               "                      q_idx, kv_idx), compiled at run time, instead of --variant\n"
               "%s"
               "       flexattn variants\n"
               "       flexattn --help\n",
               fa::cli::kDecodeUsage);
  return code;
}

constexpr int64_t kIntMax = std::numeric_limits<int>::max();

int run(int argc, char** argv) {
  Config c;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw fa::Error("missing value after " + a);
      return argv[++i];
    };
    // Sizes are >= 1 and fit the int indices the mods take.
    auto size = [&](int64_t hi = kIntMax) { return parse_int(a, next(), 1, hi); };
    if (a == "--variant") {
      c.variant = next();
      fa::cli::check_variant_name(a, c.variant);
    } else if (a == "--b") c.b = size();
    else if (a == "--hq") c.hq = size();
    else if (a == "--hkv") c.hkv = size();
    else if (a == "--lq") c.lq = size();
    else if (a == "--lkv") c.lkv = size();
    else if (a == "--d") c.d = size(256);
    else if (a == "--dv") c.dv = size(256);
    else if (a == "--repeats") c.repeats = int(size());
    else if (a == "--block-q") c.block_q = int(size(fa::detail::kMaxBlockSize));
    else if (a == "--block-kv") c.block_kv = int(size(fa::detail::kMaxBlockSize));
    else if (a == "--window") c.window = int(parse_int(a, next(), 0, kIntMax));
    else if (a == "--prefix") c.prefix = int(parse_int(a, next(), 0, kIntMax));
    else if (a == "--docs") c.docs = int(size());
    else if (a == "--cap") c.cap = fa::cli::parse_positive_float(a, next());
    else if (a == "--seed") c.seed = fa::cli::parse_u64(a, next());
    else if (a == "--score-mod") c.score_src = next();
    else if (a == "--mask-mod") c.mask_src = next();
    else if (a == "--tile-kind") c.tile_src = next();
    else if (a == "--check") c.check = true;
    else if (a == "--backward") c.backward = true;
    else if (a == "--dtype") c.dtype = fa::cli::parse_dtype(a, next());
    else if (a == "--device") c.device = fa::cli::parse_device(a, next());
    else {
      throw fa::Error("unknown argument " + a);
    }
  }
  if (c.runtime()) c.variant = "runtime";
  if (c.hkv == 0) c.hkv = c.hq;
  if (c.lkv == 0) c.lkv = c.lq;
  if (c.dv == 0) c.dv = c.d;
  check_elements("q", {{"--b", c.b}, {"--hq", c.hq}, {"--lq", c.lq}, {"--d", c.d}});
  check_elements("k", {{"--b", c.b}, {"--hkv", c.hkv}, {"--lkv", c.lkv}, {"--d", c.d}});
  check_elements("v", {{"--b", c.b}, {"--hkv", c.hkv}, {"--lkv", c.lkv}, {"--dv", c.dv}});
  check_elements("out", {{"--b", c.b}, {"--hq", c.hq}, {"--lq", c.lq}, {"--dv", c.dv}});
  return run_one(c) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr, 2);
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") return usage(stdout, 0);
  try {
    if (cmd == "demo") return demo();
    if (cmd == "run") return run(argc, argv);
    if (cmd == "decode") return fa::cli::decode(argc, argv);
    if (cmd == "variants") {
      for (const char* v : kVariants) std::printf("%s\n", v);
      return 0;
    }
  } catch (const fa::Error& e) {
    // The library's messages already start with "flexattn::<function>:".
    const bool prefixed = std::strncmp(e.what(), "flexattn", 8) == 0;
    std::fprintf(stderr, "%s%s\n", prefixed ? "" : "flexattn: ", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "flexattn: out of host memory for the requested sizes\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flexattn: %s\n", e.what());
    return 2;
  }
  return usage(stderr, 2);
}
