// ATen side of the CUDA pixel_cross_entropy kernels: checks, device guard,
// current stream, dtype map, and the async target check. Compiled only when
// torch is a CUDA build (setup.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda_utils.h"
#include "fcn_fast/pixel_cross_entropy_math.h"
#include "pixel_cross_entropy.cuh"

namespace fcn_fast {
namespace {

using cuda::PceGeometry;

at::ScalarType acc_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_inputs(const at::Tensor& logits, const at::Tensor& target,
                  const std::optional<at::Tensor>& weight, int64_t reduction, double eps) {
  TORCH_CHECK(logits.is_cuda(), "pixel_cross_entropy (cuda): logits must be a CUDA tensor");
  TORCH_CHECK(logits.dim() == 3 && logits.size(1) >= 1,
              "pixel_cross_entropy: logits must be (N, C, S) with C >= 1, got ", logits.sizes());
  TORCH_CHECK(target.device() == logits.device(),
              "pixel_cross_entropy: target must be on the logits device");
  TORCH_CHECK(target.scalar_type() == at::kLong, "pixel_cross_entropy: target must be int64");
  TORCH_CHECK(
      target.dim() == 2 && target.size(0) == logits.size(0) && target.size(1) == logits.size(2),
      "pixel_cross_entropy: target must be (N, S), got ", target.sizes());
  if (weight.has_value()) {
    TORCH_CHECK(weight->device() == logits.device() && weight->scalar_type() == acc_type(logits) &&
                    weight->dim() == 1 && weight->size(0) == logits.size(1),
                "pixel_cross_entropy: weight must be (C,) on the logits device, float32 "
                "(float64 for float64 logits)");
  }
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "pixel_cross_entropy: bad reduction code");
  TORCH_CHECK(eps >= 0.0 && eps <= 1.0, "pixel_cross_entropy: label_smoothing must be in [0, 1]");
}

PceGeometry geometry(const at::Tensor& logits, const at::Tensor& target) {
  return PceGeometry{logits.size(0),   logits.size(1),   logits.size(2),   logits.stride(0),
                     logits.stride(1), logits.stride(2), target.stride(0), target.stride(1)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_cross_entropy_fwd_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, int64_t reduction, double label_smoothing) {
  check_inputs(logits, target, weight, reduction, label_smoothing);
  const c10::cuda::CUDAGuard guard(logits.device());
  const PceGeometry g = geometry(logits, target);
  const auto acc = logits.options().dtype(acc_type(logits));
  at::Tensor lse = at::empty({g.N, g.S}, acc);
  at::Tensor loss =
      reduction == kReductionNone ? at::empty({g.N, g.S}, logits.options()) : at::empty({}, acc);
  at::Tensor weight_sum = at::empty({}, acc);
  at::Tensor workspace = at::empty({cuda::pce_forward_workspace(g)}, acc);
  at::Tensor error_flag = at::zeros({1}, logits.options().dtype(at::kInt));
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const cudaError_t err = cuda::pce_forward(
      cuda_dtype(logits), logits.const_data_ptr(), target.const_data_ptr<int64_t>(),
      w.defined() ? w.const_data_ptr() : nullptr, loss.mutable_data_ptr(), lse.mutable_data_ptr(),
      weight_sum.mutable_data_ptr(), workspace.mutable_data_ptr(),
      error_flag.mutable_data_ptr<int>(), g, ignore_index, reduction, label_smoothing,
      c10::cuda::getCurrentCUDAStream());
  check_cuda(err);
  // No host sync: a bad target fails as a device-side assert at the next sync.
  at::_assert_async(error_flag.eq(0),
                    "pixel_cross_entropy: target outside [0, C) that is not ignore_index");
  return {loss, lse, weight_sum};
}

at::Tensor pixel_cross_entropy_bwd_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                        const at::Tensor& target,
                                        const std::optional<at::Tensor>& weight,
                                        const at::Tensor& lse, const at::Tensor& weight_sum,
                                        int64_t ignore_index, int64_t reduction,
                                        double label_smoothing) {
  check_inputs(logits, target, weight, reduction, label_smoothing);
  const c10::cuda::CUDAGuard guard(logits.device());
  const PceGeometry g = geometry(logits, target);
  const auto acc = logits.options().dtype(acc_type(logits));
  TORCH_CHECK(grad.device() == logits.device(), "pixel_cross_entropy: grad device");
  if (reduction == kReductionNone) {
    TORCH_CHECK(grad.dim() == 2 && grad.size(0) == g.N && grad.size(1) == g.S,
                "pixel_cross_entropy: grad must be (N, S) for reduction none");
  } else {
    TORCH_CHECK(grad.numel() == 1, "pixel_cross_entropy: grad must have one element");
  }
  const at::Tensor gradc = grad.to(logits.scalar_type());  // keeps strides (0 included)
  const at::Tensor lsec = lse.to(acc.dtype()).contiguous();
  const at::Tensor wsum = weight_sum.to(acc.dtype()).contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(logits);
  at::Tensor workspace = at::empty({1}, acc);
  const int64_t gN = reduction == kReductionNone ? gradc.stride(0) : 0;
  const int64_t gS = reduction == kReductionNone ? gradc.stride(1) : 0;
  const cudaError_t err = cuda::pce_backward(
      cuda_dtype(logits), gradc.const_data_ptr(), gN, gS, logits.const_data_ptr(),
      target.const_data_ptr<int64_t>(), w.defined() ? w.const_data_ptr() : nullptr,
      lsec.const_data_ptr(), wsum.const_data_ptr(), out.mutable_data_ptr(), out.stride(0),
      out.stride(1), out.stride(2), workspace.mutable_data_ptr(), g, ignore_index, reduction,
      label_smoothing, c10::cuda::getCurrentCUDAStream());
  check_cuda(err);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_fast, CUDA, m) {
  m.impl("pixel_cross_entropy_fwd", &pixel_cross_entropy_fwd_cuda);
  m.impl("pixel_cross_entropy_bwd", &pixel_cross_entropy_bwd_cuda);
}

}  // namespace fcn_fast
