#pragma once
// Argument types of the CUDA launchers, named without ATen so that .cu files and
// their launcher declarations stay free of torch headers.
#include <stdint.h>

#include "fcn_fast/macros.h"

namespace fcn_fast {

enum class DType : int { Float16, BFloat16, Float32, Float64 };

// Element strides of a 4-D (N, C, H, W) tensor.
struct Strides4 {
  int64_t n, c, h, w;
};

// The dtypes of class-index targets (docs/design.md, "Label dtypes").
enum class LabelType : int32_t { Int64, Int32, UInt8 };

// Class-index targets read in their own dtype, as a pointer is (target[i], target + i): every
// kernel reads the stored bytes (1 a pixel for uint8, not 8), each value widened to int64, so
// that an int64 label outside int32 stays out of range. The type is one value for the whole
// launch: the branch on it costs a few instructions per pixel, outside the class loops.
struct Labels {
  const void* data;
  LabelType type;

  template <typename index_t>
  FCN_HD int64_t operator[](index_t i) const {
    if (type == LabelType::UInt8) return static_cast<const uint8_t*>(data)[i];
    if (type == LabelType::Int32) return static_cast<const int32_t*>(data)[i];
    return static_cast<const int64_t*>(data)[i];
  }

  template <typename index_t>
  FCN_HD Labels operator+(index_t i) const {
    const int64_t bytes = type == LabelType::UInt8 ? 1 : type == LabelType::Int32 ? 4 : 8;
    return Labels{static_cast<const char*>(data) + static_cast<int64_t>(i) * bytes, type};
  }
};

}  // namespace fcn_fast
