#pragma once
// Argument types of the CUDA launchers, named without ATen so that .cu files and
// their launcher declarations stay free of torch headers.
#include <stdint.h>

namespace fcn_fast {

enum class DType : int { Float16, BFloat16, Float32, Float64 };

// Element strides of a 4-D (N, C, H, W) tensor.
struct Strides4 {
  int64_t n, c, h, w;
};

}  // namespace fcn_fast
