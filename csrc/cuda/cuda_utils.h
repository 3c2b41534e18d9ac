#pragma once
// ATen-side helpers shared by the CUDA bindings: dtype mapping, strides, errors, and the
// switch that forces the kernels' 64-bit index path.
#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <initializer_list>

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

// The kernels index with 32-bit arithmetic whenever every offset fits; FCN_FAST_CUDA_INDEX64=1
// (read once) makes them take the 64-bit path anyway, so that a GPU test can exercise it
// without allocating 2^31 elements.
inline bool force_index64() {
  static const bool forced = [] {
    const char* value = std::getenv("FCN_FAST_CUDA_INDEX64");
    return value != nullptr && value[0] == '1';
  }();
  return forced;
}

// The kernels keep sizes along one axis, and counts of rows and pixels, in 32 bits.
inline void check_int32_sizes(std::initializer_list<int64_t> sizes, const char* op) {
  for (int64_t size : sizes) {
    TORCH_CHECK(size < (int64_t(1) << 31), op, ": a size of ", size,
                " is beyond the CUDA kernels' 32-bit sizes");
  }
}

}  // namespace fcn_fast
