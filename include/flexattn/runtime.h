// Variants defined at run time: a score_mod or mask_mod written as C++ source text, compiled on
// first use into the same kernels a compile-time functor gets, and cached.
//
//   flexattn::Tensor slopes = ...;                       // [H] f32, on the call's device
//   flexattn::RuntimeScoreMod alibi("score + slopes[h] * (kv_idx - q_idx)", {{"slopes", slopes}});
//   flexattn::RuntimeMaskMod causal("q_idx >= kv_idx");
//   auto bm = flexattn::create_block_mask(causal, B, H, L, L, {.device = Device::cuda});
//   auto r = flexattn::flex_attention(q, k, v, alibi, bm);
//
// They are accepted wherever a score_mod / mask_mod functor is: create_block_mask,
// flex_attention, flex_attention_backward, the *_into layer and the paged (serving) calls, on
// the CPU and the GPU, from a program compiled by any C++ compiler (no nvcc needed).
//
// Source text. A score_mod source sees `score` (the score after scaling; its type is float in
// the forward and flexattn::Dual in the backward, which differentiates the score_mod through it:
// write arithmetic with operators and the functions of flexattn/math.h - exp, exp2, log, log2,
// tanh, fast_tanh, sqrt, sin, cos, abs, pow, sigmoid, min, max, where), the ints `b`, `h` (the
// query head), `q_idx`, `kv_idx`, and every capture by its name. A mask_mod source sees the same
// without `score` and yields bool (true keeps the score). A source is one C++ expression (the
// result), or - when it contains the word `return` - a function body whose `return` gives it.
// A tile rule (RuntimeMaskMod's tile_kind, optional) is an expression or body over the ints `b`,
// `h`, `q0`, `q1`, `k0`, `k1` (the tile: query rows [q0, q1) x keys [k0, k1)) yielding
// TileKind::empty, TileKind::partial, TileKind::full or TileKind::unknown, with the contract of
// mods.h: exact when it answers empty, partial or full. The names `empty`, `partial`, `full`
// and `unknown` stand for those values there.
//
// Captures. Each capture is a tensor (any rank, 1 to 4) of dtype f32, f16, bf16 or i32, read-only,
// named by a C++ identifier other than the names above, at most 8 per mod. In the source, `t[i]`
// reads a rank-1 capture `t`, `t(i, j, ...)` any rank (one index per dimension), `t.size(d)` is
// the size of dimension d; reads give float (f32, f16, bf16) or int (i32). Indices are not
// checked: an index out of range reads out of range. A capture must be on the device of the call
// that uses it (create_block_mask's options.device, else q's device), or that call throws Error
// naming it. The tensors are bound per object, not compiled in: a new RuntimeScoreMod with other
// tensors of the same dtypes and ranks reuses the compiled code.
//
// Pairing. A runtime score_mod goes with a runtime mask_mod (from any source) or with no mask
// (NoopMask, the overloads without a block mask); a runtime mask_mod with a runtime score_mod or
// none (NoopScore). Mixing one with a compiled functor (CausalMask, a user's struct) does not
// compile: write the other one as source too (the stock masks are one-liners, README).
//
// Compilation. The code is generated and compiled once per (score source, mask source, tile
// rule, capture names, dtypes and ranks), and for the GPU also per (device architecture, dtype,
// head dims, kernel): on the CPU by the C++ compiler the library was built with (or
// $FLEXATTN_CXX) into a shared object that is loaded with dlopen; on the GPU by NVRTC into a
// cubin loaded with the CUDA runtime. A source that does not compile throws Error at the first
// call that needs it, with the compiler's message and line numbers counted in the user's source
// (file names "score_mod", "mask_mod", "tile_kind"). Compiled code is kept in memory for the
// process and on disk in $FLEXATTN_CACHE_DIR (default $XDG_CACHE_HOME/flexattn, else
// ~/.cache/flexattn; set FLEXATTN_CACHE_DIR to an empty string for no disk cache). Entries are
// written under a temporary name and renamed, so processes compiling the same variant at once
// are safe, and each entry carries its full key: an entry that does not match or does not load
// is rebuilt, never trusted.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace flexattn {

// One named tensor a runtime score_mod / mask_mod reads. With `grad` defined the capture is
// learnable (a score_mod's only; param.h): its reads are Param reads, and flex_attention_backward
// overwrites `grad` (f32, contiguous, the tensor's shape and device; the tensor f32, f16 or bf16)
// with the gradient, as for a compiled functor's params(). On the CPU only so far: the GPU
// backward refuses a learnable capture with an Error.
struct Capture {
  std::string name;
  Tensor tensor;
  Tensor grad = {};
};

namespace detail::runtime {
struct ModSpec;  // the validated source, captures and their code key (src/runtime/spec.cpp)
}

// Throws Error for an empty source, a capture name that is not an identifier, is reserved (a
// name in scope above, a C++ keyword, or starting with an underscore) or repeated, more than 8
// captures, or an undefined tensor.
class RuntimeScoreMod {
 public:
  static constexpr bool kRuntimeMod = true;
  explicit RuntimeScoreMod(std::string source, std::vector<Capture> captures = {});
  const std::string& source() const;
  const std::vector<Capture>& captures() const;
  const detail::runtime::ModSpec& spec() const { return *spec_; }

 private:
  std::shared_ptr<const detail::runtime::ModSpec> spec_;
};

// As RuntimeScoreMod; `tile_kind` is the optional tile rule ("" for none: create_block_mask
// then evaluates every element of every tile, as for a compiled mask_mod without a rule).
class RuntimeMaskMod {
 public:
  static constexpr bool kRuntimeMod = true;
  explicit RuntimeMaskMod(std::string source, std::vector<Capture> captures = {},
                          std::string tile_kind = {});
  const std::string& source() const;
  const std::string& tile_kind() const;
  const std::vector<Capture>& captures() const;
  const detail::runtime::ModSpec& spec() const { return *spec_; }

 private:
  std::shared_ptr<const detail::runtime::ModSpec> spec_;
};

// Counters of the runtime compile cache since the process started (or since the last
// clear_runtime_memory_cache): modules built by a compiler, loaded from the disk cache, and
// calls served from memory.
struct RuntimeCacheStats {
  int64_t compiled = 0;
  int64_t loaded_from_disk = 0;
  int64_t memory_hits = 0;
};
RuntimeCacheStats runtime_cache_stats();
// Forgets the in-memory cache and zeroes the counters (the disk cache stays): the next call of
// each variant loads it from disk or compiles it again. Modules already loaded stay mapped.
void clear_runtime_memory_cache();
// The disk cache directory in use ("" when disabled).
std::string runtime_cache_dir();

}  // namespace flexattn
