#pragma once
// Device-side helpers shared by the CUDA kernels: element <-> accumulator
// conversion and dispatch from DType to a C++ element type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fcn_fast/kernel_types.h"

namespace fcn_fast {

// Accumulator type: fp32 for every type but fp64.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <typename T>
__device__ __forceinline__ T from_acc(double v) {
  return v;
}

// Calls f(T{}) with the element type of `dtype`.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float16:
      return f(__half{});
    case DType::BFloat16:
      return f(__nv_bfloat16{});
    case DType::Float32:
      return f(float{});
    case DType::Float64:
      return f(double{});
  }
  return cudaErrorInvalidValue;
}

// Grid dimensions y and z are limited to 65535: larger counts are covered by
// striding loops in the kernels.
inline unsigned int grid_dim(int64_t blocks, int64_t limit) {
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks < limit ? blocks : limit));
}

}  // namespace fcn_fast
