// Tensor maps for the Hopper kernels' tile copies (detail/cuda/tensor_map.h). cuTensorMapEncodeTiled is
// a driver function; it is looked up through the runtime, so the library links libcudart only.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include "flexattn/detail/cuda/tensor_map.h"
#include "flexattn/tensor.h"

namespace flexattn::detail::cuda {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t e =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found);
    if (e != cudaSuccess || found != cudaDriverEntryPointSuccess || f == nullptr) {
      throw Error("flexattn: the CUDA driver has no cuTensorMapEncodeTiled (needs CUDA 12+)");
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

bool make_tile_map(CUtensorMap& map, const void* base, const int64_t (&shape)[4],
                   const int64_t (&stride)[4], int box_rows) {
  // The driver lists dimensions innermost first: (D, L, H, B). Strides of the outer three in bytes,
  // each a multiple of 16; a dimension of extent 1 may carry any stride in a view, so it gets a
  // harmless one here.
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(shape[3]), static_cast<cuuint64_t>(shape[2]),
                              static_cast<cuuint64_t>(shape[1]), static_cast<cuuint64_t>(shape[0])};
  cuuint64_t strides[3];
  const int outer[3] = {2, 1, 0};
  for (int i = 0; i < 3; ++i) {
    const int d = outer[i];
    const int64_t s = shape[d] == 1 ? shape[3] : stride[d];
    strides[i] = static_cast<cuuint64_t>(s) * 2;
  }
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  map = CUtensorMap{};
  // The element type only matters for out-of-bounds fill, and zero is all-zero bits in bf16 and
  // f16 alike: one map type serves both.
  const CUresult r = encode_fn()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<void*>(base),
                                 dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                 CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

}  // namespace flexattn::detail::cuda
