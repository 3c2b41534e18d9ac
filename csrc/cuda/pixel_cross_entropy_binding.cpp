// ATen side of the CUDA pixel_cross_entropy kernels (pixel_cross_entropy_cuda and its
// backward, called by csrc/ops/pixel_cross_entropy.cpp): checks, device guard, current
// stream, allocation, dtype map, and the async target check. Compiled only with the CUDA
// kernels (setup.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops/pixel_cross_entropy.h"
#include "cuda_utils.h"
#include "fcn_fast/pixel_cross_entropy_math.h"
#include "pixel_cross_entropy.cuh"

namespace fcn_fast {
namespace {

LossGeometry geometry(const at::Tensor& logits, const at::Tensor& target) {
  return LossGeometry{logits.size(0),   logits.size(1),   logits.size(2),   logits.stride(0),
                      logits.stride(1), logits.stride(2), target.stride(0), target.stride(1)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_cross_entropy_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const CrossEntropyOptions& options) {
  check_pixel_cross_entropy_args(logits, target, weight, options);
  check_device(logits, at::kCUDA, "logits", "pixel_cross_entropy_cuda");
  const c10::cuda::CUDAGuard guard(logits.device());
  const LossGeometry g = geometry(logits, target);
  check_int32_sizes({g.N, g.C, g.S}, "pixel_cross_entropy_cuda");
  const DType dtype = cuda_dtype(logits);
  auto [loss, lse, weight_sum] =
      empty_loss_outputs(logits, {g.N, g.S}, options.reduction == kReductionNone);
  // flags[0]: a bad target; flags[1]: the ticket of the last-block reduction.
  at::Tensor flags = at::zeros({2}, logits.options().dtype(at::kInt));
  at::Tensor workspace = at::empty({pixel_cross_entropy_workspace_bytes(dtype, g, force_index64())},
                                   logits.options().dtype(at::kByte));
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  check_cuda(launch_pixel_cross_entropy(
      dtype, logits.const_data_ptr(), labels_of(target), w.defined() ? w.const_data_ptr() : nullptr,
      loss.mutable_data_ptr(), lse.mutable_data_ptr(), weight_sum.mutable_data_ptr(),
      workspace.mutable_data_ptr(), flags.mutable_data_ptr<int>(), g, options.ignore_index,
      options.reduction, options.label_smoothing, force_index64(),
      c10::cuda::getCurrentCUDAStream()));
  // No host sync: a bad target fails as a device-side assert at the next sync.
  at::_assert_async(flags.narrow(0, 0, 1).eq(0),
                    "pixel_cross_entropy: target outside [0, C) that is not ignore_index");
  return {loss, lse, weight_sum};
}

at::Tensor pixel_cross_entropy_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                             const at::Tensor& target,
                                             const std::optional<at::Tensor>& weight,
                                             const at::Tensor& lse, const at::Tensor& weight_sum,
                                             const CrossEntropyOptions& options) {
  check_pixel_cross_entropy_args(logits, target, weight, options);
  const int64_t reduction = options.reduction;
  check_pixel_cross_entropy_backward_args(grad, logits, lse, reduction);
  check_device(logits, at::kCUDA, "logits", "pixel_cross_entropy_backward_cuda");
  const c10::cuda::CUDAGuard guard(logits.device());
  const LossGeometry g = geometry(logits, target);
  check_int32_sizes({g.N, g.C, g.S}, "pixel_cross_entropy_backward_cuda");
  const auto acc = logits.options().dtype(accumulation_type(logits.scalar_type()));
  // The upstream gradient is read in the accumulation dtype: a GradScaler's 65536 is
  // above float16's largest value.
  const at::Tensor gradc = grad.to(acc.dtype());  // keeps strides (0 included)
  const at::Tensor lsec = lse.to(acc.dtype()).contiguous();
  const at::Tensor wsum = weight_sum.to(acc.dtype()).contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(logits);
  const int64_t gN = reduction == kReductionNone ? gradc.stride(0) : 0;
  const int64_t gS = reduction == kReductionNone ? gradc.stride(1) : 0;
  check_cuda(launch_pixel_cross_entropy_backward(
      cuda_dtype(logits), gradc.const_data_ptr(), gN, gS, logits.const_data_ptr(),
      labels_of(target), w.defined() ? w.const_data_ptr() : nullptr, lsec.const_data_ptr(),
      wsum.const_data_ptr(), out.mutable_data_ptr(), out.stride(0), out.stride(1), out.stride(2), g,
      options.ignore_index, reduction, options.label_smoothing, force_index64(),
      c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace fcn_fast
