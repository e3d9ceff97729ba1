// Seeded random-configuration fuzzer of the CPU attention paths: a plain executable (no libFuzzer),
// so CI runs it with any compiler. Each iteration draws a configuration from its own seed,
//
//   shapes     B, Hq, Hkv (GQA / MQA), Lq, Lkv (1, odd, ragged), D, Dv (Dv != D) up to 256
//   dtypes     f32, f16, bf16; scale default / random (negative too)
//   blocks     block_q, block_kv from 1 to 256, small odd ones included; broadcast block masks
//   mods       every stock mask and score_mod, and_masks / or_masks / not_mask, compose, custom
//              functors (typed, so the block-mask tile rules run), and a run-time-dispatched mask
//              or score without tile rules
//   views      every operand its own storage order ([B, H, L, D], [B, L, H, D], [H, B, L, D], ...)
//              with padded strides; padding and outputs poisoned with NaN
//   passes     forward, backward (deterministic or not; deterministic ones re-run for bitwise
//              equality), on 1-4 pool threads
//
// and checks the results against the float64 reference with the project's tolerance rule
// (tests/attn_check.h: error <= 2 x the naive low-precision error + atol), fully masked rows
// exactly 0 / -inf, padding and inputs untouched. A quarter of the iterations are INVALID calls
// (one argument broken: shape, rank, dtype, device, stride, scale, block-mask geometry, null data,
// create_block_mask arguments) that must throw flexattn::Error and leave every output byte as it
// was.
//
//   fuzz_attention [--seed S] [--iterations N] [--seconds T] [--replay X] [--verbose]
//                  [--skip-invalid K,K,...]
//
// stops after N iterations or T seconds, whichever comes first; each failure prints its
// configuration and `--replay X`, which re-runs exactly that iteration. Exit status 1 on failure.
// --skip-invalid turns the listed invalid-call kinds (the INVALID#K of a configuration) into
// valid calls, to keep fuzzing past a known gap.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <flexattn/flexattn.h>

#include "attn_check.h"
#include "test_functors.h"

namespace fa = flexattn;
using fa::DType;
using fa::testing::kNaN;
using reference_shape = fa::reference::Shape;

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// ---- configuration ------------------------------------------------------------------------------
constexpr int kMaskKinds = 12;      // typed masks 0..11 (see with_mask); 12 = run-time dispatched
constexpr int kRuntimeMask = 12;
constexpr int kScoreKinds = 7;      // 0 noop .. 6 lambda (see with_score)
constexpr int kInvalidKinds = 29;

struct Layout {
  int order[3] = {0, 1, 2};  // storage order of the leading dims, outermost first
  int pad[4] = {0, 0, 0, 0}; // extra extent per logical dim (the last one: padded rows)
};

struct Config {
  uint64_t seed = 0;
  reference_shape sh;
  DType dtype = DType::f32;
  float scale = 0.0f;
  int block_q = 128, block_kv = 128;
  int64_t mask_B = 1, mask_H = 1;
  int mask_kind = 0, runtime_mask = 0, score_kind = 0;
  int window = 0, prefix = 0, doc_len = 1;
  float cap = 20.0f;
  bool backward = false, deterministic = true, recheck = false;
  int threads = 1;
  Layout lay[9];  // q k v out lse dout dq dk dv
  int invalid = -1;  // >= 0: the broken argument (see run_invalid)
};

const char* kOperandNames[9] = {"q", "k", "v", "out", "lse", "dout", "dq", "dk", "dv"};

const char* mask_name(int k) {
  static const char* names[] = {"noop",           "causal",          "sliding_window",
                                "prefix_lm",      "document",        "causal&document",
                                "window|prefix",  "!causal",         "causal&!window",
                                "PerBatchHead",   "Table",           "KillRows&(document|window)",
                                "runtime"};
  return names[k];
}
const char* score_name(int k) {
  static const char* names[] = {"noop",   "relative_position", "alibi",        "softcap",
                                "compose(relpos,softcap)", "CustomScore", "lambda_score"};
  return names[k];
}

std::string describe(const Config& c) {
  std::ostringstream o;
  const auto& s = c.sh;
  o << "B=" << s.B << " Hq=" << s.Hq << " Hkv=" << s.Hkv << " Lq=" << s.Lq << " Lkv=" << s.Lkv
    << " D=" << s.D << " Dv=" << s.Dv << " dtype=" << fa::to_string(c.dtype) << " scale=" << c.scale
    << " block=" << c.block_q << "x" << c.block_kv << " maskBH=" << c.mask_B << "x" << c.mask_H
    << " mask=" << mask_name(c.mask_kind);
  if (c.mask_kind == kRuntimeMask) o << "(" << mask_name(c.runtime_mask) << ")";
  o << " window=" << c.window << " prefix=" << c.prefix << " doc_len=" << c.doc_len
    << " score=" << score_name(c.score_kind)
    << (c.mask_kind != kRuntimeMask && c.score_kind != 0 ? "(runtime)" : "")
    << " cap=" << c.cap << (c.backward ? " backward" : " forward")
    << (c.deterministic ? " deterministic" : " nondeterministic") << " threads=" << c.threads;
  for (int i = 0; i < 9; ++i) {
    const Layout& l = c.lay[i];
    if (l.order[0] == 0 && l.order[1] == 1 && l.order[2] == 2 && !l.pad[0] && !l.pad[1] &&
        !l.pad[2] && !l.pad[3])
      continue;
    o << " " << kOperandNames[i] << "=order" << l.order[0] << l.order[1] << l.order[2] << "/pad"
      << l.pad[0] << l.pad[1] << l.pad[2] << l.pad[3];
  }
  if (c.invalid >= 0) o << " INVALID#" << c.invalid;
  return o.str();
}

template <class T>
T pick(std::mt19937_64& rng, std::initializer_list<T> xs) {
  std::uniform_int_distribution<size_t> d(0, xs.size() - 1);
  return *(xs.begin() + d(rng));
}
int uniform(std::mt19937_64& rng, int lo, int hi) {
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}
bool coin(std::mt19937_64& rng, double p) { return std::bernoulli_distribution(p)(rng); }

int64_t draw_len(std::mt19937_64& rng) {
  const int r = uniform(rng, 0, 99);
  if (r < 10) return 1;
  if (r < 40) return uniform(rng, 2, 17);
  if (r < 80) return uniform(rng, 18, 130);
  return uniform(rng, 131, 400);
}
int64_t draw_head_dim(std::mt19937_64& rng) {
  if (coin(rng, 0.3)) return uniform(rng, 1, 256);
  return pick<int64_t>(rng, {1, 2, 3, 5, 8, 16, 17, 31, 32, 40, 63, 64, 80, 96, 100, 128, 160,
                             192, 255, 256});
}
int draw_block(std::mt19937_64& rng) {
  if (coin(rng, 0.25)) return uniform(rng, 1, 256);
  return pick<int>(rng, {1, 2, 3, 5, 7, 8, 13, 16, 17, 32, 33, 48, 64, 100, 128, 129, 256});
}

Layout draw_layout(std::mt19937_64& rng, int rank) {
  Layout l;
  static const int orders4[][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                   {2, 0, 1}, {1, 2, 0}, {2, 1, 0}};
  static const int orders3[][3] = {{0, 1, 2}, {1, 0, 2}};  // lse: L stays innermost (stride 1)
  const int(*o)[3] = rank == 4 ? &orders4[uniform(rng, 0, 5)] : &orders3[uniform(rng, 0, 1)];
  std::copy(*o, *o + 3, l.order);
  for (int d = 0; d < 3; ++d) l.pad[d] = coin(rng, 0.2) ? uniform(rng, 1, 2) : 0;
  l.pad[3] = rank == 4 && coin(rng, 0.5) ? uniform(rng, 1, 9) : 0;
  return l;
}

std::vector<int> g_skip_invalid;

Config draw_config(uint64_t seed) {
  std::mt19937_64 rng(seed);
  Config c;
  c.seed = seed;
  auto& s = c.sh;
  const bool invalid = coin(rng, 0.25);
  // Sizes: redraw until the float64 reference stays cheap (B*Hq*Lq*Lkv*(D+Dv) <= 2e7).
  do {
    s.B = uniform(rng, 1, 3);
    s.Hkv = uniform(rng, 1, 4);
    s.Hq = s.Hkv * pick<int64_t>(rng, {1, 1, 2, 3, 4});
    s.Lq = draw_len(rng);
    s.Lkv = coin(rng, 0.4) ? s.Lq : draw_len(rng);
    s.D = draw_head_dim(rng);
    s.Dv = coin(rng, 0.5) ? s.D : draw_head_dim(rng);
  } while (double(s.B * s.Hq) * double(s.Lq * s.Lkv) * double(s.D + s.Dv) >
           (invalid ? 2e6 : 2e7));
  c.dtype = pick<DType>(rng, {DType::f32, DType::f16, DType::bf16});
  const int sc = uniform(rng, 0, 19);
  c.scale = sc < 14 ? 0.0f : sc < 19 ? float(uniform(rng, 5, 150)) / 100.0f
                                     : -float(uniform(rng, 5, 100)) / 100.0f;
  c.block_q = draw_block(rng);
  c.block_kv = draw_block(rng);
  c.mask_kind = uniform(rng, 0, kMaskKinds);
  c.runtime_mask = uniform(rng, 0, kMaskKinds - 1);
  c.score_kind = uniform(rng, 0, kScoreKinds - 1);
  c.window = uniform(rng, 0, int(std::max(s.Lq, s.Lkv)));
  c.prefix = uniform(rng, 0, int(s.Lkv));
  c.doc_len = uniform(rng, 1, int(std::max<int64_t>(1, std::max(s.Lq, s.Lkv) / 2)));
  c.cap = float(uniform(rng, 2, 50));
  // Masks that depend on (b, h) need a block mask per (b, h); the others may broadcast.
  const int mk = c.mask_kind == kRuntimeMask ? c.runtime_mask : c.mask_kind;
  const bool per_bh = mk == 9 || mk == 11;
  c.mask_B = per_bh || coin(rng, 0.5) ? s.B : 1;
  c.mask_H = per_bh || coin(rng, 0.5) ? s.Hq : 1;
  c.backward = coin(rng, 0.5);
  c.deterministic = coin(rng, 0.7);
  c.recheck = c.backward && c.deterministic && coin(rng, 0.3);
  c.threads = pick<int>(rng, {1, 2, 2, 3, 4});
  const bool shared_layout = coin(rng, 0.5);
  const Layout l4 = draw_layout(rng, 4), l3 = draw_layout(rng, 3);
  for (int i = 0; i < 9; ++i) {
    const int rank = i == 4 ? 3 : 4;
    c.lay[i] = shared_layout ? (rank == 4 ? l4 : l3) : draw_layout(rng, rank);
  }
  if (invalid) c.invalid = uniform(rng, 0, kInvalidKinds - 1);
  if (std::find(g_skip_invalid.begin(), g_skip_invalid.end(), c.invalid) != g_skip_invalid.end())
    c.invalid = -1;
#if FLEXATTN_FUZZ_LIGHT
  // Sanitizer builds compile a third fewer kernels: typed masks only with the noop score (the
  // run-time mask still meets every score). Replay such a configuration in a normal build.
  if (c.mask_kind != kRuntimeMask) c.score_kind = 0;
#endif
  return c;
}

// ---- functors -----------------------------------------------------------------------------------
struct MaskParams {
  int window = 0, prefix = 0;
  const int32_t* docs = nullptr;
  const unsigned char* table = nullptr;
  int kv_len = 1;
};

// Calls f with the typed mask of kind k (0..11).
template <class F>
decltype(auto) with_mask(int k, const MaskParams& p, F&& f) {
  switch (k) {
    case 0: return f(fa::noop_mask());
    case 1: return f(fa::causal());
    case 2: return f(fa::sliding_window(p.window));
    case 3: return f(fa::prefix_lm(p.prefix));
    case 4: return f(fa::document(p.docs));
    case 5: return f(fa::and_masks(fa::causal(), fa::document(p.docs)));
    case 6: return f(fa::or_masks(fa::sliding_window(p.window), fa::prefix_lm(p.prefix)));
    case 7: return f(fa::not_mask(fa::causal()));
    case 8: return f(fa::and_masks(fa::causal(), fa::not_mask(fa::sliding_window(p.window))));
    case 9: return f(fa::testing::PerBatchHeadMask{});
    case 10: return f(fa::testing::TableMask{p.table, p.kv_len});
    default:
      return f(fa::and_masks(fa::testing::KillRowsMask{},
                             fa::or_masks(fa::document(p.docs), fa::sliding_window(p.window))));
  }
}

// A mask chosen at run time: a custom functor without a tile rule, so every tile of the stock
// masks it dispatches to is classified element by element.
struct RuntimeMask {
  int kind;
  MaskParams p;
  bool operator()(int b, int h, int q, int kv) const {
    return with_mask(kind, p, [&](const auto& m) -> bool { return m(b, h, q, kv); });
  }
};

struct ScoreParams {
  int heads = 1;
  float cap = 20.0f;
};

template <class F>
decltype(auto) with_score(int k, const ScoreParams& p, F&& f) {
  switch (k) {
    case 0: return f(fa::noop_score());
    case 1: return f(fa::relative_position());
    case 2: return f(fa::alibi(p.heads));
    case 3: return f(fa::softcap(p.cap));
    case 4: return f(fa::compose(fa::relative_position(), fa::softcap(p.cap)));
    case 5: return f(fa::testing::CustomScore{});
    default: return f(fa::testing::lambda_score());
  }
}

// A score_mod chosen at run time (generic in T like any user score_mod).
struct RuntimeScore {
  int kind;
  ScoreParams p;
  template <class T>
  T operator()(T s, int b, int h, int q, int kv) const {
    return with_score(kind, p, [&](const auto& f) -> T { return T(f(s, b, h, q, kv)); });
  }
};

// ---- operands -----------------------------------------------------------------------------------
// A tensor argument in its own storage (a flat Tensor) seen through a strided view; everything
// outside the view is NaN.
struct Operand {
  fa::Tensor storage;
  fa::TensorView view;
  std::vector<int64_t> offsets;  // storage offset of each logical element (row-major order)

  static Operand make(const std::vector<int64_t>& shape, DType dt, const Layout& l,
                      const std::vector<float>* values) {
    const int rank = int(shape.size());
    Operand o;
    o.view.dtype = dt;
    o.view.device = fa::Device::cpu;
    o.view.rank = rank;
    int64_t ext[4] = {1, 1, 1, 1};
    for (int i = 0; i < rank; ++i) {
      o.view.shape[i] = shape[size_t(i)];
      ext[i] = shape[size_t(i)] + l.pad[i];
    }
    int64_t stride = 1;
    if (rank == 4) {
      o.view.stride[3] = 1;
      stride = ext[3];
      for (int j = 2; j >= 0; --j) {
        o.view.stride[l.order[j]] = stride;
        stride *= ext[l.order[j]];
      }
    } else {  // rank 3: order is over (B, H) with L innermost
      o.view.stride[2] = 1;
      stride = ext[2];
      for (int j = 1; j >= 0; --j) {
        o.view.stride[l.order[j]] = stride;
        stride *= ext[l.order[j]];
      }
    }
    const int64_t numel = stride;
    const int64_t n3 = rank == 4 ? shape[3] : 1;
    for (int64_t a = 0; a < shape[0]; ++a)
      for (int64_t b = 0; b < shape[1]; ++b)
        for (int64_t c = 0; c < shape[2]; ++c)
          for (int64_t d = 0; d < n3; ++d)
            o.offsets.push_back(a * o.view.stride[0] + b * o.view.stride[1] +
                                c * o.view.stride[2] + d);
    std::vector<float> host(size_t(numel), kNaN);
    if (values) {
      for (size_t i = 0; i < o.offsets.size(); ++i) host[size_t(o.offsets[i])] = (*values)[i];
    }
    o.storage = fa::Tensor::from_host(host.data(), {numel}, dt);
    o.view.data = o.storage.data();
    return o;
  }

  std::vector<float> read() const {
    const std::vector<float> host = storage.to_host();
    std::vector<float> r(offsets.size());
    for (size_t i = 0; i < offsets.size(); ++i) r[i] = host[size_t(offsets[i])];
    return r;
  }
  int64_t clobbered_padding() const {
    const std::vector<float> host = storage.to_host();
    std::vector<char> inside(host.size(), 0);
    for (int64_t off : offsets) inside[size_t(off)] = 1;
    int64_t n = 0;
    for (size_t i = 0; i < host.size(); ++i) n += !inside[i] && !std::isnan(host[i]);
    return n;
  }
  std::vector<unsigned char> bytes() const {
    const auto* p = static_cast<const unsigned char*>(storage.data());
    return {p, p + storage.numel() * int64_t(fa::dtype_size(storage.dtype()))};
  }
};

// ---- checks -------------------------------------------------------------------------------------
struct Failures {
  std::vector<std::string> msgs;
  void add(const std::string& m) { msgs.push_back(m); }
};

// The tolerance rule of tests/attn_check.h (expect_close), as a result instead of an EXPECT.
void check_close(Failures& f, const char* name, const std::vector<float>& got,
                 const std::vector<double>& ref, const std::vector<float>& naive, DType dt) {
  const double err = fa::reference::max_abs_error(got, ref);
  const double naive_err = fa::reference::max_abs_error(naive, ref);
  const double atol = fa::testing::atol_for(dt, ref);
  if (!(err <= fa::testing::kFactor * naive_err + atol)) {
    std::ostringstream o;
    o << name << ": max error " << err << " vs naive low-precision " << naive_err << " (atol "
      << atol << "); " << fa::testing::worst_element(got, ref);
    f.add(o.str());
  }
}

struct Inputs {
  std::vector<float> q, k, v, dout;
  std::vector<int32_t> docs;
  std::vector<unsigned char> table;
};

template <class ScoreMod, class MaskMod>
void run_valid(const Config& c, const Inputs& in, const ScoreMod& score_mod,
               const MaskMod& mask_mod, Failures& f) {
  const auto& sh = c.sh;
  const DType dt = c.dtype;
  const auto mask = fa::create_block_mask(mask_mod, c.mask_B, c.mask_H, sh.Lq, sh.Lkv,
                                          {.block_q = c.block_q, .block_kv = c.block_kv});
  const Operand qo = Operand::make({sh.B, sh.Hq, sh.Lq, sh.D}, dt, c.lay[0], &in.q);
  const Operand ko = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.D}, dt, c.lay[1], &in.k);
  const Operand vo = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.Dv}, dt, c.lay[2], &in.v);
  const Operand out = Operand::make({sh.B, sh.Hq, sh.Lq, sh.Dv}, dt, c.lay[3], nullptr);
  const Operand lse = Operand::make({sh.B, sh.Hq, sh.Lq}, DType::f32, c.lay[4], nullptr);
  const auto q_bytes = qo.bytes(), k_bytes = ko.bytes(), v_bytes = vo.bytes();
  fa::AttentionOptions opts;
  opts.scale = c.scale;
  opts.enable_gqa = sh.Hq != sh.Hkv;
  opts.deterministic = c.deterministic;
  fa::flex_attention_into(qo.view, ko.view, vo.view, out.view, lse.view, score_mod, mask, opts);

  const float scale = c.scale != 0.0f ? c.scale : 1.0f / std::sqrt(float(sh.D));
  const std::vector<double> q64 = fa::reference::to_double(in.q),
                            k64 = fa::reference::to_double(in.k),
                            v64 = fa::reference::to_double(in.v);
  const auto ref = fa::reference::forward(sh, q64, k64, v64, double(scale), score_mod, mask_mod);
  const auto naive =
      fa::testing::naive_forward_lowp(sh, dt, scale, in.q, in.k, in.v, score_mod, mask_mod);
  const std::vector<float> got_out = out.read(), got_lse = lse.read();
  check_close(f, "out", got_out, ref.out, naive.out, dt);
  check_close(f, "lse", got_lse, ref.lse, naive.lse, DType::f32);
  int64_t bad_rows = 0;
  for (int64_t r = 0; r < sh.lse_numel(); ++r) {
    if (ref.lse[size_t(r)] != -std::numeric_limits<double>::infinity()) continue;
    bool ok = got_lse[size_t(r)] == -fa::testing::kInf;
    for (int64_t e = 0; e < sh.Dv; ++e) ok = ok && got_out[size_t(r * sh.Dv + e)] == 0.0f;
    bad_rows += !ok;
  }
  if (bad_rows) f.add(std::to_string(bad_rows) + " fully masked rows are not out = 0, lse = -inf");
  if (out.clobbered_padding() + lse.clobbered_padding())
    f.add("forward wrote outside the out / lse views");
  if (!c.backward) {
    if (qo.bytes() != q_bytes || ko.bytes() != k_bytes || vo.bytes() != v_bytes)
      f.add("forward modified an input");
    return;
  }

  const Operand doo = Operand::make({sh.B, sh.Hq, sh.Lq, sh.Dv}, dt, c.lay[5], &in.dout);
  auto backward = [&](Operand& dq, Operand& dk, Operand& dv) {
    dq = Operand::make({sh.B, sh.Hq, sh.Lq, sh.D}, dt, c.lay[6], nullptr);
    dk = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.D}, dt, c.lay[7], nullptr);
    dv = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.Dv}, dt, c.lay[8], nullptr);
    fa::flex_attention_backward_into(qo.view, ko.view, vo.view, out.view, lse.view, doo.view,
                                     dq.view, dk.view, dv.view, score_mod, mask, opts);
  };
  const auto out_bytes = out.bytes(), lse_bytes = lse.bytes(), dout_bytes = doo.bytes();
  Operand dq, dk, dv;
  backward(dq, dk, dv);
  const auto grads = fa::reference::backward(sh, q64, k64, v64, fa::reference::to_double(in.dout),
                                             double(scale), score_mod, mask_mod);
  // The naive backward sees the out / lse our backward was given (checked above), not the naive
  // forward's: their rounding is what the backward's error is made of (tests/attn_check.h).
  const fa::testing::LowpForward given{got_out, got_lse};
  const auto naive_g = fa::testing::naive_backward_lowp(sh, dt, scale, in.q, in.k, in.v, in.dout,
                                                        given, score_mod, mask_mod);
  const std::vector<float> got_dq = dq.read(), got_dk = dk.read(), got_dv = dv.read();
  check_close(f, "dq", got_dq, grads.dq, naive_g.dq, dt);
  check_close(f, "dk", got_dk, grads.dk, naive_g.dk, dt);
  check_close(f, "dv", got_dv, grads.dv, naive_g.dv, dt);
  int64_t bad = 0;
  for (int64_t r = 0; r < sh.lse_numel(); ++r) {
    if (ref.lse[size_t(r)] != -std::numeric_limits<double>::infinity()) continue;
    for (int64_t e = 0; e < sh.D; ++e) bad += got_dq[size_t(r * sh.D + e)] != 0.0f;
  }
  if (bad) f.add("dq of fully masked rows is not exactly 0 (" + std::to_string(bad) + " values)");
  if (dq.clobbered_padding() + dk.clobbered_padding() + dv.clobbered_padding())
    f.add("backward wrote outside the gradient views");
  if (qo.bytes() != q_bytes || ko.bytes() != k_bytes || vo.bytes() != v_bytes ||
      out.bytes() != out_bytes || lse.bytes() != lse_bytes || doo.bytes() != dout_bytes)
    f.add("backward modified an input");
  if (c.recheck) {
    Operand dq2, dk2, dv2;
    backward(dq2, dk2, dv2);
    if (dq2.bytes() != dq.bytes() || dk2.bytes() != dk.bytes() || dv2.bytes() != dv.bytes())
      f.add("deterministic backward: a second run differs bitwise");
  }
}

// ---- invalid calls ------------------------------------------------------------------------------
// Breaks one argument of an otherwise valid call; the call must throw flexattn::Error without
// writing any output byte. Returns false when the break does not apply to this configuration.
template <class MaskMod>
bool run_invalid(const Config& c, const Inputs& in, const MaskMod& mask_mod, Failures& f) {
  const auto& sh = c.sh;
  const DType dt = c.dtype;
  const DType other = dt == DType::f32 ? DType::f16 : DType::f32;
  const int kind = c.invalid;
  const fa::BlockMaskOptions bopts{.block_q = c.block_q, .block_kv = c.block_kv};

  if (kind >= 24 && kind <= 26) {  // create_block_mask's own arguments
    try {
      if (kind == 24) {
        fa::create_block_mask(mask_mod, c.mask_B, c.mask_H, sh.Lq, sh.Lkv,
                              {.block_q = -c.block_q, .block_kv = 64});
      } else if (kind == 25) {
        fa::create_block_mask(mask_mod, c.mask_B, c.mask_H, sh.Lq, sh.Lkv,
                              {.block_q = 64, .block_kv = 0});
      } else {
        fa::create_block_mask(mask_mod, 0, c.mask_H, sh.Lq, sh.Lkv, bopts);
      }
      f.add("create_block_mask accepted a bad argument");
    } catch (const fa::Error&) {
    } catch (const std::exception& e) {
      f.add(std::string("create_block_mask threw a non-flexattn::Error: ") + e.what());
    }
    return true;
  }

  // The block mask, possibly for the wrong geometry.
  int64_t mB = c.mask_B, mH = c.mask_H, mLq = sh.Lq, mLkv = sh.Lkv;
  if (kind == 11) mLq = sh.Lq + 1;
  if (kind == 12) mLkv = sh.Lkv + 1;
  if (kind == 13) mB = sh.B + 1;
  if (kind == 14) mH = sh.Hq + 1;
  const auto built = fa::create_block_mask(mask_mod, mB, mH, mLq, mLkv, bopts);
  // A BlockMaskData that create_block_mask would not have made (its lists are shared, not copied).
  fa::BlockMaskData data = built.data();
  if (kind == 27) data.nqb += 1;                    // geometry that disagrees with its lengths
  if (kind == 28) data.kv_idx = fa::Buffer();       // a missing list
  const fa::BlockMask<MaskMod> mask(mask_mod, data);

  Operand qo = Operand::make({sh.B, sh.Hq, sh.Lq, sh.D}, dt, c.lay[0], &in.q);
  Operand ko = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.D}, dt, c.lay[1], &in.k);
  Operand vo = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.Dv}, dt, c.lay[2], &in.v);
  Operand out = Operand::make({sh.B, sh.Hq, sh.Lq, sh.Dv}, dt, c.lay[3], nullptr);
  Operand lse = Operand::make({sh.B, sh.Hq, sh.Lq}, DType::f32, c.lay[4], nullptr);
  Operand doo = Operand::make({sh.B, sh.Hq, sh.Lq, sh.Dv}, dt, c.lay[5], &in.dout);
  Operand dq = Operand::make({sh.B, sh.Hq, sh.Lq, sh.D}, dt, c.lay[6], nullptr);
  Operand dk = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.D}, dt, c.lay[7], nullptr);
  Operand dv = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.Dv}, dt, c.lay[8], nullptr);
  fa::AttentionOptions opts;
  opts.scale = c.scale;
  opts.enable_gqa = sh.Hq != sh.Hkv;
  opts.deterministic = c.deterministic;
  bool backward = c.backward;
  fa::TensorView &q = qo.view, &k = ko.view, &v = vo.view, &o = out.view, &l = lse.view,
                 &d = doo.view, &gq = dq.view, &gk = dk.view, &gv = dv.view;
  switch (kind) {
    case 0: q.rank = 3; break;
    case 1: k.shape[3] += 1; break;
    case 2: v.shape[2] += sh.Lkv > 1 && c.seed % 2 ? -1 : 1; break;
    case 3: k.dtype = other; break;
    case 4: o.dtype = other; break;
    case 5: l.dtype = DType::f16; break;
    case 6: l.shape[2] += 1; break;
    case 7:  // Hq % Hkv != 0: more kv heads than query heads
      k.shape[1] = v.shape[1] = sh.Hq + 1;
      opts.enable_gqa = true;
      break;
    case 8:  // grouped heads without enable_gqa
      if (sh.Hq == sh.Hkv) return false;
      opts.enable_gqa = false;
      break;
    case 9: q.shape[3] = k.shape[3] = 257; break;
    case 10: v.shape[3] = o.shape[3] = d.shape[3] = gv.shape[3] = 300; break;
    case 11: case 12: case 13: case 14: break;  // the block mask above
    case 15: {  // a last-dim stride is meaningless (and accepted) when that dim is 1
      fa::TensorView& t = c.seed % 2 ? q : v;
      if (t.shape[3] == 1) return false;
      t.stride[3] = 2;
      break;
    }
    case 16: opts.scale = c.seed % 2 ? std::numeric_limits<float>::quiet_NaN()
                                     : std::numeric_limits<float>::infinity(); break;
    case 17: o.shape[3] += 1; break;
    case 18: l.rank = 4; break;
    case 19: backward = true; gq.dtype = other; break;
    case 20: backward = true; gk.shape[2] += 1; break;
    case 21: backward = true; d.shape[1] += 1; break;
    case 22: backward = true; o.dtype = other; break;
    case 23: (c.seed % 2 ? q : k).data = nullptr; break;
    case 27: case 28: break;  // the block mask above
    default: return false;
  }
  const auto before_out = out.bytes(), before_lse = lse.bytes(), before_dq = dq.bytes(),
             before_dk = dk.bytes(), before_dv = dv.bytes();
  try {
    if (backward) {
      fa::flex_attention_backward_into(q, k, v, o, l, d, gq, gk, gv, fa::noop_score(), mask,
                                       opts);
    } else {
      fa::flex_attention_into(q, k, v, o, l, fa::noop_score(), mask, opts);
    }
    f.add(std::string(backward ? "backward" : "forward") + " accepted invalid argument #" +
          std::to_string(kind));
  } catch (const fa::Error&) {
  } catch (const std::exception& e) {
    f.add(std::string("threw a non-flexattn::Error: ") + e.what());
  }
  if (out.bytes() != before_out || lse.bytes() != before_lse || dq.bytes() != before_dq ||
      dk.bytes() != before_dk || dv.bytes() != before_dv)
    f.add("a rejected call wrote to an output");
  return true;
}

// ---- one iteration ------------------------------------------------------------------------------
struct Stats {
  int64_t forward = 0, backward = 0, invalid = 0, failed = 0;
};

bool run_iteration(const Config& c, Stats& st, bool verbose) {
  if (verbose) std::printf("config %s\n", describe(c).c_str());
  std::mt19937_64 rng(splitmix64(c.seed ^ 0x5eed));
  const auto& sh = c.sh;
  Inputs in;
  in.q = fa::testing::random_input(sh.q_numel(), c.dtype, rng);
  in.k = fa::testing::random_input(sh.k_numel(), c.dtype, rng);
  in.v = fa::testing::random_input(sh.v_numel(), c.dtype, rng);
  in.dout = fa::testing::random_input(sh.out_numel(), c.dtype, rng);
  // One more row and column than the call needs: the invalid cases build masks one longer.
  in.docs = fa::testing::random_documents(std::max(sh.Lq, sh.Lkv) + 1, c.doc_len, rng);
  in.table = fa::testing::random_table(sh.Lq + 1, sh.Lkv + 1, rng());
  const MaskParams mp{c.window, c.prefix, in.docs.data(), in.table.data(), int(sh.Lkv + 1)};
  const ScoreParams spar{int(sh.Hq), c.cap};
  fa::set_num_threads(c.threads);

  Failures f;
  try {
    if (c.invalid >= 0) {
      ++st.invalid;
      with_mask(c.mask_kind == kRuntimeMask ? c.runtime_mask : c.mask_kind, mp,
                [&](const auto& m) { run_invalid(c, in, m, f); });
    } else {
      ++(c.backward ? st.backward : st.forward);
      if (c.mask_kind == kRuntimeMask) {
        const RuntimeMask m{c.runtime_mask, mp};
        with_score(c.score_kind, spar, [&](const auto& s) { run_valid(c, in, s, m, f); });
      } else {
        with_mask(c.mask_kind, mp, [&](const auto& m) {
#if FLEXATTN_FUZZ_LIGHT
          run_valid(c, in, fa::noop_score(), m, f);
#else
          if (c.score_kind == 0) {
            run_valid(c, in, fa::noop_score(), m, f);
          } else {
            run_valid(c, in, RuntimeScore{c.score_kind, spar}, m, f);
          }
#endif
        });
      }
    }
  } catch (const std::exception& e) {
    f.add(std::string("unexpected exception: ") + e.what());
  }
  if (f.msgs.empty()) return true;
  ++st.failed;
  std::printf("FAILED: replay with `fuzz_attention --replay 0x%016llx`\n  config: %s\n",
              static_cast<unsigned long long>(c.seed), describe(c).c_str());
  for (const auto& m : f.msgs) std::printf("  %s\n", m.c_str());
  std::fflush(stdout);
  return false;
}

int usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--seed S] [--iterations N] [--seconds T] [--replay X] [--verbose]\n"
               "          [--skip-invalid K,K,...]\n"
               "  runs N iterations (default 1000) or T seconds (default: no limit), whichever\n"
               "  ends first, from seed S (default: random, printed); --replay X re-runs the one\n"
               "  iteration a failure printed; --skip-invalid makes those invalid-call kinds valid.\n",
               argv0);
  return 2;
}

bool parse_u64(const char* s, uint64_t& out) {
  char* end = nullptr;
  errno = 0;
  out = std::strtoull(s, &end, 0);
  return end != s && *end == '\0' && errno == 0 && s[0] != '-';
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32);
  uint64_t iterations = 1000, replay = 0;
  double seconds = std::numeric_limits<double>::infinity();
  bool have_replay = false, verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    uint64_t v = 0;
    if (a == "--verbose") {
      verbose = true;
    } else if ((a == "--seed" || a == "--iterations" || a == "--replay") && has_value &&
               parse_u64(argv[i + 1], v)) {
      (a == "--seed" ? seed : a == "--iterations" ? iterations : replay) = v;
      have_replay = have_replay || a == "--replay";
      ++i;
    } else if (a == "--skip-invalid" && has_value) {
      std::stringstream list(argv[++i]);
      for (std::string item; std::getline(list, item, ',');) {
        uint64_t kind = 0;
        if (!parse_u64(item.c_str(), kind) || kind >= uint64_t(kInvalidKinds)) return usage(argv[0]);
        g_skip_invalid.push_back(int(kind));
      }
    } else if (a == "--seconds" && has_value) {
      char* end = nullptr;
      seconds = std::strtod(argv[++i], &end);
      if (*end != '\0' || !(seconds > 0)) return usage(argv[0]);
    } else {
      return usage(argv[0]);
    }
  }

  Stats st;
  if (have_replay) {
    const bool ok = run_iteration(draw_config(replay), st, true);
    std::printf("replay 0x%016llx: %s\n", static_cast<unsigned long long>(replay),
                ok ? "passed" : "FAILED");
    return ok ? 0 : 1;
  }
  std::printf("fuzz_attention --seed %llu (up to %llu iterations, %g s)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(iterations),
              seconds);
  std::fflush(stdout);
  const auto start = std::chrono::steady_clock::now();
  uint64_t done = 0;
  for (; done < iterations; ++done) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (elapsed >= seconds) break;
    run_iteration(draw_config(splitmix64(seed + done)), st, verbose);
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("fuzz_attention --seed %llu: %llu iterations (%lld forward, %lld backward, %lld "
              "invalid) in %.1f s, %lld failed\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(done),
              static_cast<long long>(st.forward), static_cast<long long>(st.backward),
              static_cast<long long>(st.invalid), elapsed, static_cast<long long>(st.failed));
  return st.failed ? 1 : 0;
}
