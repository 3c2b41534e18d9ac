#pragma once
// ATen-side helpers shared by the CPU kernels and the CUDA bindings.
#include <ATen/ATen.h>

namespace fcn_fast {

// Same rule as fcn_fast._common.output_memory_format, so every backend and the
// fake kernel agree on output strides.
inline at::MemoryFormat output_memory_format(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous()
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// float32 arithmetic for every float type but float64 (as fcn_fast._common.accumulation_dtype).
inline at::ScalarType accumulation_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_plane_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "fcn_fast: ", name, " must be 4-D (N, C, H, W), got ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fcn_fast: ", name,
              " must be floating point, got ", t.scalar_type());
}

// A kernel of one backend gets tensors of its device only (a CPU kernel reading CUDA
// memory would crash, not raise).
inline void check_device(const at::Tensor& t, at::DeviceType device, const char* name,
                         const char* kernel) {
  TORCH_CHECK(t.device().type() == device, kernel, ": ", name, " must be a ",
              c10::DeviceTypeName(device), " tensor, got one on ", t.device());
}

}  // namespace fcn_fast
