#pragma once
// ATen-side helpers shared by the CPU kernels and the CUDA bindings.
#include <ATen/ATen.h>

#include <tuple>

#include "fcn_fast/kernel_types.h"

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

// Class-index targets: int64, int32 or uint8, read by every kernel in their own dtype
// (kernel_types.h's dispatch_label). `op` names the caller in the error.
inline void check_target_dtype(const at::Tensor& target, const char* op) {
  const at::ScalarType type = target.scalar_type();
  TORCH_CHECK_TYPE(type == at::kLong || type == at::kInt || type == at::kByte, op,
                   ": target must be int64, int32 or uint8 class indices, got ", type);
}

inline LabelType label_type(const at::Tensor& target) {
  const at::ScalarType type = target.scalar_type();
  return type == at::kByte  ? LabelType::UInt8
         : type == at::kInt ? LabelType::Int32
                            : LabelType::Int64;
}

inline Labels labels_of(const at::Tensor& target) {
  return Labels{target.const_data_ptr(), label_type(target)};
}

inline void check_plane_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "fcn_fast: ", name, " must be 4-D (N, C, H, W), got ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fcn_fast: ", name,
              " must be floating point, got ", t.scalar_type());
}

// The loss kernels' forward outputs (loss, lse, weight_sum), all in x's accumulation dtype:
// lse per pixel, shaped `pixels`; the loss per pixel for reduction none, else a scalar (the
// caller rounds it once to PyTorch's dtype, so its gradient arrives in float32 too: a
// GradScaler's 65536 would overflow float16); the weight sum, the mean's divisor.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_loss_outputs(const at::Tensor& x,
                                                                         at::IntArrayRef pixels,
                                                                         bool per_pixel_loss) {
  const auto acc = x.options().dtype(accumulation_type(x.scalar_type()));
  return {at::empty(per_pixel_loss ? pixels : at::IntArrayRef{}, acc), at::empty(pixels, acc),
          at::empty({}, acc)};
}

// A kernel of one backend gets tensors of its device only (a CPU kernel reading CUDA
// memory would crash, not raise).
inline void check_device(const at::Tensor& t, at::DeviceType device, const char* name,
                         const char* kernel) {
  TORCH_CHECK(t.device().type() == device, kernel, ": ", name, " must be a ",
              c10::DeviceTypeName(device), " tensor, got one on ", t.device());
}

}  // namespace fcn_fast
