// Which head dims the library's stock forward kernels are built for. Only macros, so that the
// per-head-dim files can test them before including anything (an unlisted head dim's file then
// costs nvcc nothing).
//
// Head dims come from CMake (option FLEXATTN_CUDA_HEAD_DIMS, a list): it defines
// FLEXATTN_CUDA_HEAD_DIMS_SET and FLEXATTN_CUDA_HDIM_<D> for each listed D. Without them the
// default is {64, 128}, which keeps the library build inside CI's budget (each head dim costs
// 8 variants x 2 dtypes x 2 architectures kernels). A user's own .cu gets every head dim.
#pragma once

#if !defined(FLEXATTN_CUDA_HEAD_DIMS_SET)
#define FLEXATTN_CUDA_HDIM_64 1
#define FLEXATTN_CUDA_HDIM_128 1
#endif
