#pragma once
// The kernels of fcn_fast::pixel_cross_entropy (docs/design.md, "The loss"), one pair per
// backend, and the argument checks they share. The Python front door raises the
// user-facing errors; these checks guard direct calls of torch.ops.fcn_fast.*.
//
// logits (N, C, S) with any strides, target (N, S) int64, int32 or uint8, weight (C,) in the
// accumulation dtype (float32; float64 for float64 logits) or None; reduction 0 none, 1 mean,
// 2 sum. Forward -> (loss, lse, weight_sum), all in the accumulation dtype: loss (N, S) for none,
// else 0-dim; lse (N, S) is all backward keeps (but for the CPU one-pass form below);
// weight_sum (0-dim) = sum of w[target] over non-ignored pixels, the mean's divisor.
// Backward -> grad_logits = grad * (softmax - onehot), with weights and smoothing,
// recomputed from lse; grad is (N, S) (any strides, 0 allowed) for none, else 0-dim.
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "op_args.h"
#include "tensor_checks.h"

namespace fcn_fast {

// The public op fcn_fast::pixel_cross_entropy (schema: pixel_cross_entropy.cpp) as C++ calls
// it through the dispatcher.
using PixelCrossEntropySignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, int64_t reduction, double label_smoothing, c10::string_view backend);

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_cross_entropy_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const CrossEntropyOptions& options);
at::Tensor pixel_cross_entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                            const at::Tensor& target,
                                            const std::optional<at::Tensor>& weight,
                                            const at::Tensor& lse, const at::Tensor& weight_sum,
                                            const CrossEntropyOptions& options);
// The CPU one-pass training form (docs/design.md 2.3): the forward's outputs and, from the
// same exps, grad_logits for an upstream gradient of 1 (in the logits' layout); reduction mean
// or sum, float32 or float64 logits.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pixel_cross_entropy_with_grad_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const CrossEntropyOptions& options);
std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_cross_entropy_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const CrossEntropyOptions& options);
at::Tensor pixel_cross_entropy_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                             const at::Tensor& target,
                                             const std::optional<at::Tensor>& weight,
                                             const at::Tensor& lse, const at::Tensor& weight_sum,
                                             const CrossEntropyOptions& options);

// The public op's shapes: logits (N, C, d1..dk), (N, C) or (C,); target without C.
inline void check_logits_and_target(const at::Tensor& logits, const at::Tensor& target) {
  TORCH_CHECK(logits.dim() >= 1 && target.dim() == logits.dim() - 1,
              "pixel_cross_entropy: logits (N, C, d1, ..., dk), (N, C) or (C,) and target of "
              "the logits' shape without C expected, got ",
              logits.sizes(), " and ", target.sizes());
  for (int64_t d = 0; d < target.dim(); ++d) {
    TORCH_CHECK(target.size(d) == logits.size(d < 1 ? d : d + 1),
                "pixel_cross_entropy: target must have the logits' shape without C, got ",
                target.sizes(), " for logits ", logits.sizes());
  }
}

inline void check_pixel_cross_entropy_args(const at::Tensor& logits, const at::Tensor& target,
                                           const std::optional<at::Tensor>& weight,
                                           const CrossEntropyOptions& options) {
  TORCH_CHECK(logits.dim() == 3, "pixel_cross_entropy: logits must be (N, C, S), got ",
              logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()),
              "pixel_cross_entropy: logits must be floating point, got ", logits.scalar_type());
  TORCH_CHECK(logits.size(1) >= 1, "pixel_cross_entropy: logits need at least one class");
  TORCH_CHECK(
      target.dim() == 2 && target.size(0) == logits.size(0) && target.size(1) == logits.size(2),
      "pixel_cross_entropy: target must be (N, S) = (", logits.size(0), ", ", logits.size(2),
      "), got ", target.sizes());
  check_target_dtype(target, "pixel_cross_entropy");
  TORCH_CHECK(target.device() == logits.device(),
              "pixel_cross_entropy: target must be on the logits' device");
  if (weight.has_value()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == logits.size(1),
                "pixel_cross_entropy: weight must be (C,) = (", logits.size(1), ",), got ",
                weight->sizes());
    TORCH_CHECK(weight->scalar_type() == accumulation_type(logits.scalar_type()),
                "pixel_cross_entropy: weight must be float32 (float64 for float64 logits)");
    TORCH_CHECK(weight->device() == logits.device(),
                "pixel_cross_entropy: weight must be on the logits' device");
  }
  TORCH_CHECK(options.reduction >= 0 && options.reduction <= 2,
              "pixel_cross_entropy: bad reduction code ", options.reduction);
  TORCH_CHECK(options.label_smoothing >= 0.0 && options.label_smoothing <= 1.0,
              "pixel_cross_entropy: label_smoothing must be in [0, 1]");
}

inline void check_pixel_cross_entropy_backward_args(const at::Tensor& grad,
                                                    const at::Tensor& logits, const at::Tensor& lse,
                                                    int64_t reduction) {
  const int64_t N = logits.size(0), S = logits.size(2);
  TORCH_CHECK(grad.device() == logits.device() && lse.device() == logits.device(),
              "pixel_cross_entropy: grad and lse must be on the logits' device");
  if (reduction == 0) {
    TORCH_CHECK(grad.dim() == 2 && grad.size(0) == N && grad.size(1) == S,
                "pixel_cross_entropy: grad must be (N, S) for reduction none, got ", grad.sizes());
  } else {
    TORCH_CHECK(grad.numel() == 1, "pixel_cross_entropy: grad must be a scalar, got ",
                grad.sizes());
  }
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == N && lse.size(1) == S,
              "pixel_cross_entropy: lse must be (N, S), got ", lse.sizes());
}

}  // namespace fcn_fast
