#pragma once
// ATen-side helpers shared by the CUDA bindings: dtype mapping, strides, errors.
#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include "fcn_fast/kernel_types.h"

namespace fcn_fast {

inline DType cuda_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    case at::kFloat:
      return DType::Float32;
    case at::kDouble:
      return DType::Float64;
    default:
      TORCH_CHECK(false, "fcn_fast: unsupported dtype ", t.scalar_type(),
                  "; expected float16, bfloat16, float32 or float64");
  }
}

inline Strides4 strides4(const at::Tensor& t) {
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

inline void check_cuda(cudaError_t error) {
  TORCH_CHECK(error == cudaSuccess,
              "fcn_fast: CUDA kernel launch failed: ", cudaGetErrorString(error));
}

}  // namespace fcn_fast
