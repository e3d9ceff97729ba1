// append_kv on the GPU (paged.h). The refusal must be all or nothing, and the lengths and page ids
// it depends on live on the device, so the call is three kernels on the caller's stream:
//   check   one thread per sequence: would it outgrow its pages (or write through a page id
//           outside [0, num_pages))? -> a device flag, copied back and waited for: the call's
//           only synchronisation, before anything is written;
//   write   one CTA per (token, kv head, sequence) copies the k and v rows into their pages;
//   bump    kv_len[b] += T, after every write has read the old length.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "flexattn/detail/cuda/check.cuh"
#include "flexattn/paged.h"

namespace flexattn::detail::cuda {

namespace {

struct AppendParams {
  char* k_pages;
  char* v_pages;
  const int32_t* page_table;
  int32_t* kv_len;
  const char* k_new;
  const char* v_new;
  int64_t kp_s[3], vp_s[3], kn_s[3], vn_s[3];  // element strides of the first three dims
  int64_t pt_sb, pt_sp, kl_s;
  int B, Hkv, T, page_size, num_pages, max_pages;
  int k_row_bytes, v_row_bytes, esize;
};

// Bit 0: a sequence would outgrow its pages. Bit 1: a written position's page id is out of range.
__global__ void append_check_kernel(const AppendParams p, int* flag) {
  const int b = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (b >= p.B) return;
  const int64_t len = p.kv_len[b * p.kl_s];
  if (len < 0 || len + p.T > static_cast<int64_t>(p.max_pages) * p.page_size) {
    atomicOr(flag, 1);
    return;
  }
  for (int64_t pg = len / p.page_size; pg <= (len + p.T - 1) / p.page_size; ++pg) {
    const int id = p.page_table[b * p.pt_sb + pg * p.pt_sp];
    if (id < 0 || id >= p.num_pages) atomicOr(flag, 2);
  }
}

// Copies `bytes` (a multiple of the element size) from src to dst by the CTA's threads.
__device__ void copy_row(char* dst, const char* src, int bytes, int esize) {
  if (esize == 4) {
    for (int i = static_cast<int>(threadIdx.x); i < bytes / 4; i += blockDim.x) {
      reinterpret_cast<uint32_t*>(dst)[i] = reinterpret_cast<const uint32_t*>(src)[i];
    }
  } else {
    for (int i = static_cast<int>(threadIdx.x); i < bytes / 2; i += blockDim.x) {
      reinterpret_cast<uint16_t*>(dst)[i] = reinterpret_cast<const uint16_t*>(src)[i];
    }
  }
}

__global__ void append_write_kernel(const AppendParams p) {
  const int t = static_cast<int>(blockIdx.x), h = static_cast<int>(blockIdx.y);
  const int b = static_cast<int>(blockIdx.z);
  const int64_t pos = p.kv_len[b * p.kl_s] + t;
  const int64_t page = p.page_table[b * p.pt_sb + (pos / p.page_size) * p.pt_sp];
  const int64_t row = pos % p.page_size;
  const int64_t e = p.esize;
  copy_row(p.k_pages + (page * p.kp_s[0] + h * p.kp_s[1] + row * p.kp_s[2]) * e,
           p.k_new + (b * p.kn_s[0] + h * p.kn_s[1] + t * p.kn_s[2]) * e, p.k_row_bytes, p.esize);
  copy_row(p.v_pages + (page * p.vp_s[0] + h * p.vp_s[1] + row * p.vp_s[2]) * e,
           p.v_new + (b * p.vn_s[0] + h * p.vn_s[1] + t * p.vn_s[2]) * e, p.v_row_bytes, p.esize);
}

__global__ void append_bump_kernel(const AppendParams p) {
  const int b = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (b < p.B) p.kv_len[b * p.kl_s] += p.T;
}

}  // namespace

void append_kv(const AppendArgs& a) {
  if (a.B > 65535 || a.Hkv > 65535 || a.T > INT32_MAX) {
    throw Error("flexattn::append_kv: on Device::cuda at most 65535 sequences and kv heads");
  }
  AppendParams p{};
  p.k_pages = static_cast<char*>(a.k_pages.data);
  p.v_pages = static_cast<char*>(a.v_pages.data);
  p.page_table = static_cast<const int32_t*>(a.page_table.data);
  p.kv_len = static_cast<int32_t*>(a.kv_len.data);
  p.k_new = static_cast<const char*>(a.k_new.data);
  p.v_new = static_cast<const char*>(a.v_new.data);
  for (int d = 0; d < 3; ++d) {
    p.kp_s[d] = a.k_pages.stride[d];
    p.vp_s[d] = a.v_pages.stride[d];
    p.kn_s[d] = a.k_new.stride[d];
    p.vn_s[d] = a.v_new.stride[d];
  }
  p.pt_sb = a.page_table.stride[0];
  p.pt_sp = a.page_table.stride[1];
  p.kl_s = a.kv_len.stride[0];
  p.B = static_cast<int>(a.B);
  p.Hkv = static_cast<int>(a.Hkv);
  p.T = static_cast<int>(a.T);
  p.page_size = static_cast<int>(a.page_size);
  p.num_pages = static_cast<int>(a.num_pages);
  p.max_pages = static_cast<int>(a.max_pages);
  p.esize = static_cast<int>(dtype_size(a.k_new.dtype));
  p.k_row_bytes = static_cast<int>(a.D) * p.esize;
  p.v_row_bytes = static_cast<int>(a.Dv) * p.esize;

  const auto stream = static_cast<cudaStream_t>(a.stream);
  Buffer flag_buf = Buffer::allocate(sizeof(int), Device::cuda, a.stream);
  int* flag = static_cast<int*>(flag_buf.data());
  FLEXATTN_CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(int), stream));
  const unsigned seq_blocks = static_cast<unsigned>((a.B + 127) / 128);
  append_check_kernel<<<seq_blocks, 128, 0, stream>>>(p, flag);
  FLEXATTN_CUDA_CHECK_LAUNCH("append_kv check kernel");
  int host_flag = 0;
  flag_buf.copy_to_host(&host_flag, sizeof(int));  // waits for the stream: the one sync
  if (host_flag & 1) {
    throw Error("flexattn::append_kv: a sequence would outgrow its pages: kv_len[b] + T (T = " +
                std::to_string(a.T) + ") must stay within max_pages_per_seq * page_size = " +
                std::to_string(a.max_pages * a.page_size) +
                " and kv_len[b] >= 0 (nothing was written)");
  }
  if (host_flag & 2) {
    throw Error("flexattn::append_kv: a page_table entry for a written position is outside [0, "
                "num_pages = " + std::to_string(a.num_pages) + ") (nothing was written)");
  }
  append_write_kernel<<<dim3(static_cast<unsigned>(a.T), static_cast<unsigned>(a.Hkv),
                             static_cast<unsigned>(a.B)),
                        128, 0, stream>>>(p);
  FLEXATTN_CUDA_CHECK_LAUNCH("append_kv write kernel");
  append_bump_kernel<<<seq_blocks, 128, 0, stream>>>(p);
  FLEXATTN_CUDA_CHECK_LAUNCH("append_kv length kernel");
}

}  // namespace flexattn::detail::cuda
