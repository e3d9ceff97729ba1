// The library functions a runtime variant's CPU module calls, handed to it as pointers.
//
// A module (a shared object the host compiler built from a runtime variant, src/runtime/) holds
// the attention templates instantiated for the generated functors. Those templates call a few
// out-of-line functions of the library (the thread pool, the tile primitives of
// detail/cpu/kernels.h). The module cannot link against them: the library is usually a static
// archive inside the user's executable, whose symbols a dlopen'ed object does not see. So the
// module defines those functions itself as thunks through this table (cpu_entry.h), and is
// linked with -z defs: a primitive added to kernels.h without a thunk fails the module's link -
// the CPU runtime test's first compile - instead of resolving to whatever the process exports.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../args.h"
#include "../cpu/kernels.h"

namespace flexattn {
struct BlockMaskData;
}

namespace flexattn::detail::runtime {

// Bumped whenever this table or the entry's contract changes (an old module is then rebuilt).
inline constexpr uint32_t kHostTableAbi = 1;

struct HostTable {
  uint32_t abi;
  // sizeof of what crosses the boundary, as the library saw them: a module built against other
  // headers refuses to run (and is rebuilt) instead of misreading them.
  uint32_t sizes[5];
  size_t (*dtype_size)(DType);
  int (*num_threads)();
  void (*parallel_for)(int64_t, void (*)(void*, int64_t, int), void*);
  void (*gemm)(cpu::Trans, cpu::Trans, int, int, int, const float*, int64_t, const float*, int64_t,
               float*, int64_t, bool);
  void (*gemm_rescale)(cpu::Trans, cpu::Trans, int, int, int, const float*, int64_t,
                       const float*, int64_t, float*, int64_t, const float*);
  void (*load_row)(const void*, DType, float*, int64_t);
  void (*store_row)(const float*, void*, DType, int64_t);
  float (*exp_sub_sum)(float*, int64_t, float);
  float (*max_of)(const float*, int64_t);
  void (*scale)(float*, int64_t, float);
  void (*online_softmax_t)(float*, int64_t, int, int, float*, float*, float*);
  bool (*rows_finite)(const float*, int64_t, int, int);
  void (*bwd_probs)(float*, int64_t, int, int, const float*, float);
  void (*bwd_dscores)(float*, int64_t, const float*, int64_t, const float*, int64_t, int, int,
                      const float*, float);
  void (*bwd_add)(float*, const float*, int64_t);
};

template <class BlockMaskDataT>
constexpr void abi_sizes(uint32_t (&s)[5]) {
  s[0] = sizeof(FwdArgs);
  s[1] = sizeof(BwdArgs);
  s[2] = sizeof(PagedArgs);
  s[3] = sizeof(BlockMaskDataT);
  s[4] = sizeof(HostTable);
}

// What the module's entry point does.
enum class CpuOp : int { forward = 0, backward = 1, paged_forward = 2, block_mask = 3 };

// The entry point every CPU module exports (extern "C", name kCpuEntrySymbol): runs `op` on
// `args` (a FwdArgs, BwdArgs, PagedArgs or BlockMaskData) with the functors whose states are
// `score` / `mask` (ModState, or null for no mod). Returns 0, or 1 with the Error's message in
// err, or 2 when the module was built against other headers than the caller's.
using CpuEntry = int (*)(int op, void* args, const void* score, const void* mask,
                         const HostTable* table, char* err, size_t err_len);
inline constexpr const char* kCpuEntrySymbol = "flexattn_rt_cpu_entry";
// And its key (a NUL-terminated string): the caller compares it with the key it asked for.
inline constexpr const char* kCpuKeySymbol = "flexattn_rt_key";

}  // namespace flexattn::detail::runtime
