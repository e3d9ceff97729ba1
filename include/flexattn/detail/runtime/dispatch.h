// The seam between the public templates and the runtime-variant backend (runtime.h): when a
// RuntimeScoreMod or RuntimeMaskMod is involved, the templates hand the validated arguments and
// the mods' specs to these library functions instead of instantiating kernels.
#pragma once

#include <concepts>
#include <string>
#include <vector>

#include "../../mods.h"
#include "captures.h"
#include "../../runtime.h"
#include "../args.h"

namespace flexattn {
struct BlockMaskData;
}

namespace flexattn::detail::runtime {

enum class ModKind { score, mask };

struct ModSpec {
  ModKind kind;
  std::string source;     // as given
  std::string tile_kind;  // mask_mod only; "" for none
  std::vector<Capture> captures;
  // What the generated code depends on: the kind, the sources, and each capture's name, dtype
  // and rank (not its data, shape or device, which are bound per call).
  std::string code_key;
};

template <class S, class M>
inline constexpr bool involves_runtime = is_runtime_mod<S> || is_runtime_mod<M>;

// The pairs a runtime mod can be in (runtime.h, "Pairing").
template <class S, class M>
constexpr void check_pair() {
  static_assert((is_runtime_mod<S> || std::same_as<S, NoopScore>) &&
                    (is_runtime_mod<M> || std::same_as<M, NoopMask>),
                "flexattn: a RuntimeScoreMod / RuntimeMaskMod pairs only with another runtime mod "
                "or with no mod (NoopScore / NoopMask); write the other mod as source too");
  static_assert(!is_runtime_mod<S> || std::same_as<S, RuntimeScoreMod>,
                "flexattn: a RuntimeMaskMod was passed where the score_mod goes");
  static_assert(!is_runtime_mod<M> || std::same_as<M, RuntimeMaskMod>,
                "flexattn: a RuntimeScoreMod was passed where the mask_mod goes");
}

template <class F>
const ModSpec* spec_of(const F& f) {
  if constexpr (is_runtime_mod<F>) {
    return &f.spec();
  } else {
    return nullptr;
  }
}

// score / mask: null for no mod. Every one checks the captures' devices first (Error naming the
// capture), then compiles or finds the code and runs it on args' device.
void forward(const FwdArgs& args, const ModSpec* score, const ModSpec* mask);
void backward(const BwdArgs& args, const ModSpec* score, const ModSpec* mask);
void paged_forward(const PagedArgs& args, const ModSpec* score, const ModSpec* mask);
void build_block_mask(const ModSpec& mask, BlockMaskData& data, void* stream);

// The pair's functors evaluated in double on the host through its CPU module (compiled or found
// as for a CPU call), for oracles such as the CLI's check. The captures must be Device::cpu
// tensors; a null spec evaluates as no mod.
struct HostEval {
  double (*score_fn)(const void* state, double score, int b, int h, int q_idx, int kv_idx);
  int (*mask_fn)(const void* state, int b, int h, int q_idx, int kv_idx);
  ModState score_state, mask_state;
  double score(double s, int b, int h, int q, int kv) const {
    return score_fn(&score_state, s, b, h, q, kv);
  }
  bool mask(int b, int h, int q, int kv) const { return mask_fn(&mask_state, b, h, q, kv) != 0; }
};
HostEval host_eval(const ModSpec* score, const ModSpec* mask);

}  // namespace flexattn::detail::runtime
