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

// The dtypes of class-index targets (docs/design.md, "Label dtypes").
enum class LabelType : int32_t { Int64, Int32, UInt8 };

// A target as the launchers take it: its data and dtype.
struct Labels {
  const void* data;
  LabelType type;
};

// Calls f(label_t{}) with the element type of `type`: the loss kernels are templates on it, so
// each reads the labels as stored (1 byte a pixel for uint8, not 8), widened to int64 in
// registers (an int64 label outside int32 stays out of range), and the int64 kernels' code is
// what it was.
template <typename F>
auto dispatch_label(LabelType type, F&& f) {
  switch (type) {
    case LabelType::Int32:
      return f(int32_t{});
    case LabelType::UInt8:
      return f(uint8_t{});
    default:
      return f(int64_t{});
  }
}

}  // namespace fcn_fast
