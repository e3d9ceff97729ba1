// The CPU forward over a paged KV cache (paged.h). STUB: being written.
#pragma once

#include "../../mods.h"
#include "../args.h"

namespace flexattn::detail::cpu {

template <class ScoreMod, class MaskMod>
void paged_forward(const PagedArgs&, const ScoreMod&, const MaskMod&) {
  throw Error("flexattn::flex_attention: paged KV on the CPU is not built yet");
}
// append_kv on the CPU (src/cpu/append_kv.cpp).
void append_kv(const AppendArgs& args);

}  // namespace flexattn::detail::cpu
