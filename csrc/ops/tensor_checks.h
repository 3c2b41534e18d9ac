#pragma once
// ATen-side helpers shared by the CPU kernels and the CUDA bindings.
#include <ATen/ATen.h>

namespace fcn_fast {

// Same rule as fcn_fast.ops._checks.output_memory_format, so every backend and the
// fake kernel agree on output strides.
inline at::MemoryFormat output_memory_format(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous()
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

inline void check_plane_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "fcn_fast: ", name, " must be 4-D (N, C, H, W), got ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fcn_fast: ", name,
              " must be floating point, got ", t.scalar_type());
}

}  // namespace fcn_fast
