#pragma once
// What the CPU one-pass training forms of the losses share (docs/design.md 2.3 and 2.4): the
// forward takes the loss's gradient from the exps it has just taken and keeps it, and the
// backward only scales it by the upstream gradient.
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <string>

#include "fcn_fast/pixel_cross_entropy_math.h"  // Reduction

namespace fcn_fast {

// The backward of a backward node: their kernels are not differentiable.
[[noreturn]] inline void fail_double_backward(const std::string& op) {
  TORCH_CHECK(false, "fcn_fast: double backward of ", op, " is not supported");
  abort();  // unreachable
}

// The gradient: the upstream gradient times the kept one, over the weight sum for mean. Every
// pixel ignored: the kept gradient is 0, and so is the result (as PyTorch's), not
// 0 * (grad / 0).
inline at::Tensor scale_grad_sum(const at::Tensor& grad, const at::Tensor& grad_sum,
                                 const at::Tensor& weight_sum, int64_t reduction,
                                 at::ScalarType dtype) {
  at::Tensor scale = grad;
  if (reduction == kReductionMean) scale = at::where(weight_sum != 0, grad / weight_sum, 0);
  return (grad_sum * scale).to(dtype);
}

// scale_grad_sum under create_graph: the kept gradient is a constant, so the graph it would
// record misses d grad_x / d x; x is an input here only so that the result requires grad and
// this node says so if it is differentiated, as the two-pass backward's node does.
class ScaleGradSumFunction : public torch::autograd::Function<ScaleGradSumFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& grad, const at::Tensor& grad_sum,
                                                const at::Tensor& weight_sum, const at::Tensor& x,
                                                int64_t reduction, c10::string_view op) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["op"] = std::string(op);
    return {scale_grad_sum(grad, grad_sum, weight_sum, reduction, x.scalar_type())};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list) {
    fail_double_backward(ctx->saved_data["op"].toStringRef());
  }
};

// Whether the upstream gradient is exactly 1, as loss.backward() passes it: then the kept
// gradient is the answer as it is, with no pass over it. Read only from a plain CPU tensor;
// torch.compile traces the backward with fake tensors, which have no value to read (there
// the multiply is traced instead).
inline bool is_plain_cpu_scalar(const at::Tensor& t) {
  const c10::DispatchKeySet plain_cpu =
      c10::DispatchKeySet({c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                           c10::DispatchKey::AutogradCPU, c10::DispatchKey::AutocastCPU});
  return t.numel() == 1 && plain_cpu.has_all(t.key_set());
}

inline bool is_exactly_one(const at::Tensor& grad) {
  return is_plain_cpu_scalar(grad) && grad.item<double>() == 1.0;
}

// Whether a kept weight sum is exactly 0 (read only where it has a value, as above).
inline bool is_plain_cpu_zero(const at::Tensor& weight_sum) {
  return is_plain_cpu_scalar(weight_sum) && weight_sum.item<double>() == 0.0;
}

}  // namespace fcn_fast
