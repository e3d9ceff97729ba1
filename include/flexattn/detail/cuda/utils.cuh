// Warp- and CTA-level building blocks for the sm80+ attention kernels (forward and backward):
// ldmatrix, mma.sync m16n8k16 (f16 / bf16 in, f32 accumulate), cp.async with commit / wait groups,
// packing f32 pairs into 16-bit pairs, quad reductions and the fast exp2.
//
// Scope is in the names: warp:: functions must be called by all 32 lanes of a warp together
// (convergent), cta:: functions by every thread of the block, thread:: functions by one thread.
// Everything here is inline PTX with no host-only header, so it stays NVRTC-compatible.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), with g = lane / 4, t = lane % 4:
//   A 16x16 (row-major):  a[0] = (row g,   cols 2t..2t+1)   a[1] = (row g+8, cols 2t..2t+1)
//                         a[2] = (row g,   cols 2t+8..+9)   a[3] = (row g+8, cols 2t+8..+9)
//   B 16x8  (k x n):      b[0] = (k 2t..2t+1, col g)        b[1] = (k 2t+8..2t+9, col g)
//   C 16x8  (f32):        c[0], c[1] = (row g, cols 2t, 2t+1)   c[2], c[3] = (row g+8, same cols)
// Two adjacent C tiles (n8 tiles 2c and 2c+1), packed to 16 bits, are exactly the A fragment of
// the k16 slice c: {pack(C0[0..1]), pack(C0[2..3]), pack(C1[0..1]), pack(C1[2..3])}. Attention
// uses that to feed P = softmax(S) from registers into P @ V with no trip through shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../device_std.h"

#define FLEXATTN_DEV __device__ __forceinline__

namespace flexattn::detail::cuda {

// The 16-bit element types the kernels take; the host side maps DType::f16 / bf16 onto them.
template <class T>
inline constexpr bool is_half_type = false;
template <>
inline constexpr bool is_half_type<__half> = true;
template <>
inline constexpr bool is_half_type<__nv_bfloat16> = true;
template <class T>
inline constexpr bool is_bf16 = false;
template <>
inline constexpr bool is_bf16<__nv_bfloat16> = true;

// Shared-memory byte address of a generic pointer into shared memory (what ldmatrix / cp.async
// take). The pointer must point into __shared__ storage.
FLEXATTN_DEV uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

namespace thread {

// Packs two f32 into one 32-bit register of two 16-bit values, `lo` in the low half (the element
// with the smaller column index in every fragment above). Round to nearest even.
template <class T>
FLEXATTN_DEV uint32_t pack2(float lo, float hi) {
  static_assert(is_half_type<T>, "pack2: T is __half or __nv_bfloat16");
  uint32_t r;
  if constexpr (is_bf16<T>) {
    // cvt.rn.bf16x2.f32 d, a, b puts a in the UPPER half.
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
}

// Unpacks a 32-bit pair of 16-bit values into f32 (lo = low half).
template <class T>
FLEXATTN_DEV void unpack2(uint32_t v, float& lo, float& hi) {
  static_assert(is_half_type<T>, "unpack2: T is __half or __nv_bfloat16");
  if constexpr (is_bf16<T>) {
    lo = __uint_as_float(v << 16);
    hi = __uint_as_float(v & 0xffff0000u);
  } else {
    const __half2 h = *reinterpret_cast<const __half2*>(&v);
    const float2 f = __half22float2(h);
    lo = f.x;
    hi = f.y;
  }
}

// -inf without <cmath> (NVRTC has no host math headers).
FLEXATTN_DEV float neg_inf() { return __int_as_float(0xff800000u); }

// 2^x on the special-function unit (ex2.approx, flush-to-zero): exp2(-inf) = 0, exp2(+inf) = +inf,
// relative error ~2^-22. The softmax feeds it score - rowmax <= 0 (or -inf for masked scores).
FLEXATTN_DEV float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace thread

namespace warp {

// ---- ldmatrix: four 8x8 matrices of 16-bit elements from shared memory --------------------------
// Lanes 8i..8i+7 give the row addresses (16 bytes each, 16-byte aligned) of matrix i; register i
// of every lane receives (row lane/4, cols 2*(lane%4)..+1) of matrix i. `_trans`
// delivers the transpose of each 8x8 matrix (row-major V as a B operand).
FLEXATTN_DEV void ldmatrix_x4(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}
FLEXATTN_DEV void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}

// ---- mma.sync m16n8k16: d += a (16x16) * b (16x8), f32 accumulators ----------------------------
template <class T>
FLEXATTN_DEV void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(is_half_type<T>, "mma_16816: T is __half or __nv_bfloat16");
  if constexpr (is_bf16<T>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// ---- reductions over the 4 lanes of a quad (the lanes that share one row of a C fragment) ------
FLEXATTN_DEV float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
FLEXATTN_DEV float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace warp

namespace cta {

// ---- cp.async: asynchronous 16-byte global -> shared copies (sm80+) ----------------------------
// Copies 16 bytes when `valid`, else writes 16 zero bytes (src-size 0: nothing is read, but the
// source address must still be a valid pointer - pass a clamped in-bounds one). Zero-filled rows
// past the sequence end keep garbage (possibly NaN bit patterns) out of the matrix products.
// .cg caches in L2 only: K/V tiles are re-read by other CTAs, never by this one.
FLEXATTN_DEV void cp_async_16(uint32_t smem_addr, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}
// cp_async_16 with an L2 prefetch hint of the whole 128-byte line: for streams read once from
// DRAM (the decode kernel's K / V), fewer, larger DRAM requests.
FLEXATTN_DEV void cp_async_16_stream(uint32_t smem_addr, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;" ::"r"(smem_addr),
               "l"(gmem), "r"(src_bytes)
               : "memory");
}
// Closes the group of cp.async issued by this thread since the last commit.
FLEXATTN_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight. Only the calling
// thread's copies are covered: follow with __syncthreads() before reading what others loaded.
template <int N>
FLEXATTN_DEV void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// OR of `x` over `threads` threads (a multiple of 32) through named barrier `id` (1..15; 0 is
// __syncthreads): each of them calls it with the same id and count, and no other threads use that
// id meanwhile. A barrier, so it also orders their shared-memory accesses before it against
// those after it.
FLEXATTN_DEV bool any(bool x, int id, int threads) {
  uint32_t r;
  asm volatile(
      "{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n bar.red.or.pred q, %2, %3, p;\n"
      " selp.u32 %0, 1, 0, q;\n}"
      : "=r"(r)
      : "r"(static_cast<uint32_t>(x)), "r"(id), "r"(threads)
      : "memory");
  return r != 0;
}

}  // namespace cta

namespace grid {
// Programmatic dependent launch (PTX griddepcontrol, sm90+; nothing to do before): the
// dependent kernel waits here until the grid before it has finished and its writes are visible;
// the earlier kernel lets its dependents be scheduled early with allow_dependents().
FLEXATTN_DEV void wait_for_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
FLEXATTN_DEV void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
}  // namespace grid

}  // namespace flexattn::detail::cuda
