#pragma once
// The kernels of the fused heads (docs/design.md, "Fused head + loss, head + argmax"): the
// resampler of resample_skip.h followed by the loss of pixel_cross_entropy.h, or by an
// argmax over the classes, without ever storing the full-resolution logits.
//
// With z[n,c,Y,X] = the 4 bilinear taps of x (N, C, h, w) at (Y * scale_h + bias_h,
// X * scale_w + bias_w) (zero or clamp boundary, exactly as resample_skip without skip):
//
// resample_cross_entropy(x, target (N, H, W) int64, int32 or uint8, any strides, weight (C,)
//     in the accumulation dtype or None, ...) -> (loss, lse, weight_sum)
//   = pixel_cross_entropy(z, target, ...): loss (N, H, W) for reduction none, else 0-dim;
//   lse (N, H, W), the only per-pixel state kept for backward (4 bytes a pixel); all three in
//   the accumulation dtype (float32; float64 for float64 x).
// resample_cross_entropy_backward(grad, x, target, weight, lse (N, H, W), weight_sum, ...)
//   -> grad_x (N, C, h, w) in x's dtype and memory format (output_memory_format(x)):
//   the resampler's adjoint applied to d loss / d z, gathered per element of x in a fixed
//   order (no atomics). grad: (N, H, W) any strides (0 allowed) for none, else 0-dim, both
//   in the accumulation dtype.
// resample_cross_entropy_with_grad(x, target, weight, ..., reduction mean or sum)
//   -> (loss, lse, weight_sum, grad_sum), CPU only: the forward's outputs, and in the same
//   pass over the logits grad_sum (N, C, h, w) in the accumulation dtype and x's output
//   memory format, the gradient of the summed (unnormalized) loss for an upstream gradient of
//   1. The backward is then grad * grad_sum (divided by weight_sum for mean): the logits and
//   their exps are computed once for forward and backward together.
// resample_argmax(x, ..., out_h, out_w, out_dtype (int64 or uint8), return_confidence)
//   -> (labels (N, out_h, out_w) of out_dtype = z.argmax(1), ties to the lowest class and
//       NaN winning as torch.argmax; confidence (N, out_h, out_w) float32, the winner's
//       softmax probability, or an empty tensor when not asked for).
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "op_args.h"
#include "tensor_checks.h"

namespace fcn_fast {

using LossOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using LossAndGradOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The public ops fcn_fast::resample_cross_entropy and fcn_fast::resample_argmax (schemas:
// resample_cross_entropy.cpp) as C++ calls them through the dispatcher.
using ResampleCrossEntropySignature = LossOutputs(const at::Tensor& x, const at::Tensor& target,
                                                  const std::optional<at::Tensor>& weight,
                                                  double scale_h, double bias_h, double scale_w,
                                                  double bias_w, bool clamp, int64_t ignore_index,
                                                  int64_t reduction, double label_smoothing,
                                                  c10::string_view backend);
using ResampleArgmaxSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& x, double scale_h, double bias_h, double scale_w, double bias_w, bool clamp,
    c10::SymInt out_h, c10::SymInt out_w, at::ScalarType out_dtype, bool return_confidence,
    c10::string_view backend);

LossOutputs resample_cross_entropy_cpu(const at::Tensor& x, const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight,
                                       const Resampling& resampling,
                                       const CrossEntropyOptions& options);
at::Tensor resample_cross_entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                               const at::Tensor& target,
                                               const std::optional<at::Tensor>& weight,
                                               const at::Tensor& lse, const at::Tensor& weight_sum,
                                               const Resampling& resampling,
                                               const CrossEntropyOptions& options);
LossAndGradOutputs resample_cross_entropy_with_grad_cpu(const at::Tensor& x,
                                                        const at::Tensor& target,
                                                        const std::optional<at::Tensor>& weight,
                                                        const Resampling& resampling,
                                                        const CrossEntropyOptions& options);
std::tuple<at::Tensor, at::Tensor> resample_argmax_cpu(const at::Tensor& x,
                                                       const Resampling& resampling, int64_t out_h,
                                                       int64_t out_w, at::ScalarType out_dtype,
                                                       bool return_confidence);
LossOutputs resample_cross_entropy_cuda(const at::Tensor& x, const at::Tensor& target,
                                        const std::optional<at::Tensor>& weight,
                                        const Resampling& resampling,
                                        const CrossEntropyOptions& options);
at::Tensor resample_cross_entropy_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                const at::Tensor& target,
                                                const std::optional<at::Tensor>& weight,
                                                const at::Tensor& lse, const at::Tensor& weight_sum,
                                                const Resampling& resampling,
                                                const CrossEntropyOptions& options);
std::tuple<at::Tensor, at::Tensor> resample_argmax_cuda(const at::Tensor& x,
                                                        const Resampling& resampling, int64_t out_h,
                                                        int64_t out_w, at::ScalarType out_dtype,
                                                        bool return_confidence);

// Checks shared by every backend (the Python front doors raise the user-facing errors).
inline void check_resample_cross_entropy_args(const at::Tensor& x, const at::Tensor& target,
                                              const std::optional<at::Tensor>& weight,
                                              const CrossEntropyOptions& options) {
  check_plane_tensor(x, "x");
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "fcn_fast: x has an empty spatial axis");
  TORCH_CHECK(x.size(1) >= 1, "fcn_fast: x needs at least one class");
  TORCH_CHECK(target.dim() == 3 && target.size(0) == x.size(0),
              "fcn_fast: target must be (N, H, W) with the N of x, got ", target.sizes());
  check_target_dtype(target, "fcn_fast");
  TORCH_CHECK(target.device() == x.device(), "fcn_fast: target must be on x's device");
  if (weight.has_value()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == x.size(1) &&
                    weight->scalar_type() == accumulation_type(x.scalar_type()) &&
                    weight->device() == x.device(),
                "fcn_fast: weight must be (C,) on x's device, in the accumulation dtype");
  }
  TORCH_CHECK(options.reduction >= 0 && options.reduction <= 2, "fcn_fast: bad reduction code ",
              options.reduction);
  TORCH_CHECK(options.label_smoothing >= 0.0 && options.label_smoothing <= 1.0,
              "fcn_fast: label_smoothing must be in [0, 1]");
}

inline void check_resample_cross_entropy_backward_args(const at::Tensor& grad,
                                                       const at::Tensor& target,
                                                       const at::Tensor& lse, int64_t reduction) {
  TORCH_CHECK(lse.sizes() == target.sizes() && lse.device() == target.device(),
              "fcn_fast: lse must have target's shape and device, got ", lse.sizes());
  TORCH_CHECK(grad.device() == target.device(), "fcn_fast: grad must be on target's device");
  if (reduction == 0) {
    TORCH_CHECK(grad.sizes() == target.sizes(),
                "fcn_fast: grad must have target's shape for reduction none, got ", grad.sizes());
  } else {
    TORCH_CHECK(grad.numel() == 1, "fcn_fast: grad must be a scalar, got ", grad.sizes());
  }
}

inline void check_resample_argmax_args(const at::Tensor& x, int64_t out_h, int64_t out_w,
                                       at::ScalarType out_dtype) {
  check_plane_tensor(x, "x");
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "fcn_fast: x has an empty spatial axis");
  TORCH_CHECK(x.size(1) >= 1, "fcn_fast: x needs at least one class");
  TORCH_CHECK(out_h >= 0 && out_w >= 0, "fcn_fast: negative output size");
  TORCH_CHECK(out_dtype == at::kLong || (out_dtype == at::kByte && x.size(1) <= 256),
              "fcn_fast: out_dtype must be int64, or uint8 for at most 256 classes");
}

}  // namespace fcn_fast
