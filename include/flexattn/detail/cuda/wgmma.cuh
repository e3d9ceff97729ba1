// Hopper (sm_90a) warpgroup building blocks: shared-memory matrix descriptors, wgmma.mma_async
// m64nNk16 (f16 / bf16 in, f32 accumulate) with A from shared memory or from registers, and the
// fence / commit / wait that order them.
//
// Scope is in the names, as in utils.cuh: warpgroup:: functions are called by all 128 threads of
// a warpgroup together (4 consecutive warps, the first at a warp index divisible by 4).
// Everything compiles only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); callers guard their kernels.
//
// Accumulator layout (PTX ISA, "wgmma register fragments"): warp w of the warpgroup owns rows
// 16w..16w+15 and its registers are exactly mma.sync's m16n8 C fragments side by side, so
// d[i][r] here is utils.cuh's c[r] of the n8 tile i. The A operand from registers is the m16n8k16
// A fragment of each warp's 16 rows. Both facts let the sm80 mask, softmax and epilogue code run
// unchanged on wgmma accumulators.
//
// Shared-memory layout every operand here uses: the 128-byte swizzle. A tile of R rows of 64
// 16-bit elements (128 bytes) is stored row after row, 1024-byte aligned, with the 16-byte chunk c
// of row r at chunk position c ^ (r % 8): 8 consecutive rows then hit all 32 banks. Wider rows
// (head dim 128) are split into 64-element column blocks stored one after the other. This is the
// layout the tensor-memory-access unit writes with CU_TENSOR_MAP_SWIZZLE_128B.
#pragma once

#include "utils.cuh"

namespace flexattn::detail::cuda {

#define FLEXATTN_WGMMA_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define FLEXATTN_WGMMA_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

namespace cta {
// The dynamic shared memory rounded up to 1024 bytes: the 128-byte swizzle repeats every 1024
// bytes, so every tile must start on such a boundary (kernels ask for 1 KB of slack).
FLEXATTN_DEV unsigned char* swizzle_aligned(unsigned char* smem_raw) {
  return smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
}
}  // namespace cta

namespace warpgroup {

// Descriptor of a 128-byte-swizzled operand (bits: 0-13 address >> 4, 16-29 leading byte offset
// >> 4, 32-45 stride byte offset >> 4, 62-63 layout 1 = 128-byte swizzle).
//  K-major (rows of the tile along M/N, the 64 contiguous elements along K): the stride byte
//    offset is 1024 (the next group of 8 rows); the leading offset is unused because a k16 step
//    (32 bytes) never leaves a 128-byte row; step k16 slices by adding 32 bytes to the address.
//  MN-major (rows along K, contiguous elements along N - V as the B operand of P V): the stride
//    byte offset is 1024 (the next 8 K rows); the leading offset is the distance between 64-wide
//    column blocks of N; step k16 slices by adding 16 rows = 2048 bytes.
FLEXATTN_DEV uint64_t smem_desc(uint32_t smem_addr, uint32_t leading_bytes) {
  return (static_cast<uint64_t>((smem_addr & 0x3ffffu) >> 4)) |
         (static_cast<uint64_t>((leading_bytes >> 4) & 0x3fffu) << 16) |
         (static_cast<uint64_t>(1024u >> 4) << 32) | (uint64_t{1} << 62);
}

// Before the first wgmma of a batch: orders this warpgroup's earlier register writes (the
// accumulators, the A fragments) before the asynchronous reads.
FLEXATTN_DEV void fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
FLEXATTN_DEV void commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
// Waits until at most N committed batches are in flight.
template <int N>
FLEXATTN_DEV void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// HAZARD - the compiler does not know that wgmma writes its accumulators asynchronously: it could
// move a read of them above wait() or a write below the issue. Passing every accumulator through
// an empty asm with a "+f" constraint on both sides of a batch pins them in place.
template <int NT>
FLEXATTN_DEV void fence_operand(float (&d)[NT][4]) {
#pragma unroll
  for (int i = 0; i < NT; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) asm volatile("" : "+f"(d[i][r])::"memory");
}

#define FLEXATTN_ACC4(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define FLEXATTN_ACC32(d)                                                                         \
  FLEXATTN_ACC4(d, 0), FLEXATTN_ACC4(d, 1), FLEXATTN_ACC4(d, 2), FLEXATTN_ACC4(d, 3),             \
      FLEXATTN_ACC4(d, 4), FLEXATTN_ACC4(d, 5), FLEXATTN_ACC4(d, 6), FLEXATTN_ACC4(d, 7)
#define FLEXATTN_ACC64(d)                                                                         \
  FLEXATTN_ACC32(d), FLEXATTN_ACC4(d, 8), FLEXATTN_ACC4(d, 9), FLEXATTN_ACC4(d, 10),              \
      FLEXATTN_ACC4(d, 11), FLEXATTN_ACC4(d, 12), FLEXATTN_ACC4(d, 13), FLEXATTN_ACC4(d, 14),     \
      FLEXATTN_ACC4(d, 15)

// d (64 x N, f32) = A (64 x 16) * B (16 x N) + (accumulate ? d : 0), both from shared memory,
// K-major unless kTransA / kTransB say MN-major (the transposed read). N is 64 or 128.
template <class T, int N, bool kTransA = false, bool kTransB = false>
FLEXATTN_DEV void mma_ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  static_assert(is_half_type<T>, "wgmma: T is __half or __nv_bfloat16");
  static_assert(N == 64 || N == 128, "wgmma: N is 64 or 128");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  const int acc = accumulate ? 1 : 0;
  constexpr int ta = kTransA ? 1 : 0, tb = kTransB ? 1 : 0;
  if constexpr (N == 64 && is_bf16<T>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FLEXATTN_WGMMA_D32
                 ", %32, %33, p, 1, 1, %35, %36;\n}\n"
                 : FLEXATTN_ACC32(d)
                 : "l"(desc_a), "l"(desc_b), "r"(acc), "n"(ta), "n"(tb));
  } else if constexpr (N == 64) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " FLEXATTN_WGMMA_D32
                 ", %32, %33, p, 1, 1, %35, %36;\n}\n"
                 : FLEXATTN_ACC32(d)
                 : "l"(desc_a), "l"(desc_b), "r"(acc), "n"(ta), "n"(tb));
  } else if constexpr (is_bf16<T>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FLEXATTN_WGMMA_D64
                 ", %64, %65, p, 1, 1, %67, %68;\n}\n"
                 : FLEXATTN_ACC64(d)
                 : "l"(desc_a), "l"(desc_b), "r"(acc), "n"(ta), "n"(tb));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " FLEXATTN_WGMMA_D64
                 ", %64, %65, p, 1, 1, %67, %68;\n}\n"
                 : FLEXATTN_ACC64(d)
                 : "l"(desc_a), "l"(desc_b), "r"(acc), "n"(ta), "n"(tb));
  }
#endif
}

// d (64 x N, f32) += A (64 x 16, registers: each warp's m16n8k16 A fragment) * B (16 x N,
// MN-major in shared memory: the transposed read of a row-major K x N tile). N is 64 or 128.
template <class T, int N>
FLEXATTN_DEV void mma_rs_bt(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  static_assert(is_half_type<T>, "wgmma: T is __half or __nv_bfloat16");
  static_assert(N == 64 || N == 128, "wgmma: N is 64 or 128");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (N == 64 && is_bf16<T>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FLEXATTN_WGMMA_D32
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : FLEXATTN_ACC32(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
  } else if constexpr (N == 64) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " FLEXATTN_WGMMA_D32
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : FLEXATTN_ACC32(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
  } else if constexpr (is_bf16<T>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FLEXATTN_WGMMA_D64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : FLEXATTN_ACC64(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " FLEXATTN_WGMMA_D64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : FLEXATTN_ACC64(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
  }
#endif
}

#undef FLEXATTN_ACC4
#undef FLEXATTN_ACC32
#undef FLEXATTN_ACC64

// Hands registers between the warpgroups of a warp-specialised kernel (sm_90a): the loader gives
// up what it does not need, the math warpgroups take it. Takes effect only under a register cap
// at kernel entry (__launch_bounds__(threads, 1)).
template <int kRegs>
FLEXATTN_DEV void release_registers() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
#endif
}
template <int kRegs>
FLEXATTN_DEV void claim_registers() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
#endif
}

}  // namespace warpgroup
}  // namespace flexattn::detail::cuda
