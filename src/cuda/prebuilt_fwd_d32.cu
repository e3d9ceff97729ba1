// Forward kernels of the stock variants for head dim 32 (both dtypes), when the build lists it.
#include "prebuilt_head_dims.h"

#if defined(FLEXATTN_CUDA_HDIM_32)
#include "prebuilt_fwd.h"

#define FLEXATTN_X(S, M) FLEXATTN_FWD_INSTANTIATE_D(32, S, M)
FLEXATTN_FOR_EACH_PREBUILT_VARIANT(FLEXATTN_X)
#undef FLEXATTN_X
#endif
