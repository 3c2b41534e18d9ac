#pragma once
// FCN_HD marks math shared by the C++ CPU kernels and the CUDA kernels: the
// CPU tests then exercise exactly the arithmetic the GPU runs.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FCN_HD __host__ __device__ __forceinline__
#else
#define FCN_HD inline
#endif
