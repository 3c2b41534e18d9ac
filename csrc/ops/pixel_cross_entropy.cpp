// fcn_fast::pixel_cross_entropy, the op behind fcn_fast.pixel_cross_entropy (fcn_fast/ops/
// pixel_cross_entropy.py): its schemas, which kernel runs for each backend, and its autograd.
//
//   pixel_cross_entropy           -> (loss, lse, weight_sum); only loss is differentiable
//   pixel_cross_entropy_backward  grad_logits, recomputed from lse (no saved log-softmax)
//   pixel_cross_entropy_with_grad (loss, lse, weight_sum, grad_logits): the CPU kernel's
//                                 forward and backward in one pass (training, reduced)
//   *_triton                      the same two, in fcn_fast/triton/pixel_cross_entropy.py
//
// logits (N, C, d1, ..., dk), (N, C) or (C,); target: the logits' shape without C. Returns
// loss (target's shape for reduction none, else 0-dim), lse (target's shape) and weight_sum;
// dtypes: pixel_cross_entropy.h, where the kernels' (N, C, S) contract is. Autograd is here in C++,
// so a call from Python costs one dispatcher call, not a Python autograd.Function.
#include "pixel_cross_entropy.h"

#include <torch/autograd.h>
#include <torch/csrc/autograd/graph_task.h>  // get_current_graph_task_keep_graph
#include <torch/library.h>

#include "../cpu/huge_pages.h"
#include "backend.h"
#include "one_pass_grad.h"

namespace fcn_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using LossAndGradOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

using ForwardSignature = Outputs(const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, int64_t, int64_t, double);
using BackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const std::optional<at::Tensor>&, const at::Tensor&,
                                     const at::Tensor&, int64_t, int64_t, double);

// The kernels see logits as (N, C, S) and the rest as (N, S), views without copies:
// (N, C, d1..dk) keeps N; (N, C) becomes one image of N pixels whose classes are contiguous;
// (C,) one pixel.
at::Tensor pixels_of(const at::Tensor& logits) {
  if (logits.dim() == 1) return logits.view({1, -1, 1});
  if (logits.dim() == 2) return logits.t().unsqueeze(0);
  return logits.flatten(2);
}

at::Tensor per_pixel(const at::Tensor& t, int64_t logits_dim) {
  if (logits_dim == 1) return t.view({1, 1});
  if (logits_dim == 2) return t.unsqueeze(0);
  return t.flatten(1);
}

// A gradient from the kernels' (N, C, S) back to the logits' shape (its layout is x's).
at::Tensor logits_shaped(const at::Tensor& grad_x, const at::Tensor& logits) {
  if (logits.dim() == 1) return grad_x.view({-1});
  if (logits.dim() == 2) return grad_x.squeeze(0).t();
  return grad_x.view(logits.sizes());
}

Outputs pixel_cross_entropy_kernel(const at::Tensor& logits, const at::Tensor& target,
                                   const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                   int64_t reduction, double label_smoothing,
                                   c10::string_view backend) {
  check_logits_and_target(logits, target);
  const at::Tensor x = pixels_of(logits), t = per_pixel(target, logits.dim());
  const CrossEntropyOptions options{ignore_index, reduction, label_smoothing};
  Outputs out;
  switch (parse_backend(backend, "pixel_cross_entropy")) {
    case Backend::Cpu:
      out = pixel_cross_entropy_cpu(x, t, weight, options);
      break;
    case Backend::Cuda:
#ifdef FCN_FAST_WITH_CUDA
      out = pixel_cross_entropy_cuda(x, t, weight, options);
      break;
#else
      fail_without_cuda("pixel_cross_entropy");
#endif
    case Backend::Triton: {
      static const auto triton =
          triton_op<ForwardSignature>("fcn_fast::pixel_cross_entropy_triton");
      out = triton.call(x, t, weight, ignore_index, reduction, label_smoothing);
      break;
    }
  }
  auto& [loss, lse, weight_sum] = out;
  if (reduction == 0) loss = loss.view(target.sizes());
  lse = lse.view(target.sizes());
  return out;
}

at::Tensor pixel_cross_entropy_backward_kernel(const at::Tensor& grad, const at::Tensor& logits,
                                               const at::Tensor& target,
                                               const std::optional<at::Tensor>& weight,
                                               const at::Tensor& lse, const at::Tensor& weight_sum,
                                               int64_t ignore_index, int64_t reduction,
                                               double label_smoothing, c10::string_view backend) {
  check_logits_and_target(logits, target);
  const int64_t dim = logits.dim();
  const at::Tensor x = pixels_of(logits), t = per_pixel(target, dim), l = per_pixel(lse, dim);
  const at::Tensor g = reduction == 0 ? per_pixel(grad, dim) : grad;
  const CrossEntropyOptions options{ignore_index, reduction, label_smoothing};
  at::Tensor grad_x;
  switch (parse_backend(backend, "pixel_cross_entropy_backward")) {
    case Backend::Cpu:
      grad_x = pixel_cross_entropy_backward_cpu(g, x, t, weight, l, weight_sum, options);
      break;
    case Backend::Cuda:
#ifdef FCN_FAST_WITH_CUDA
      grad_x = pixel_cross_entropy_backward_cuda(g, x, t, weight, l, weight_sum, options);
      break;
#else
      fail_without_cuda("pixel_cross_entropy_backward");
#endif
    case Backend::Triton: {
      static const auto triton =
          triton_op<BackwardSignature>("fcn_fast::pixel_cross_entropy_backward_triton");
      grad_x =
          triton.call(g, x, t, weight, l, weight_sum, ignore_index, reduction, label_smoothing);
      break;
    }
  }
  return logits_shaped(grad_x, logits);
}

LossAndGradOutputs pixel_cross_entropy_with_grad_kernel(const at::Tensor& logits,
                                                        const at::Tensor& target,
                                                        const std::optional<at::Tensor>& weight,
                                                        int64_t ignore_index, int64_t reduction,
                                                        double label_smoothing) {
  check_logits_and_target(logits, target);
  auto [loss, lse, weight_sum, grad_x] = pixel_cross_entropy_with_grad_cpu(
      pixels_of(logits), per_pixel(target, logits.dim()), weight,
      CrossEntropyOptions{ignore_index, reduction, label_smoothing});
  return {loss, lse.view(target.sizes()), weight_sum, logits_shaped(grad_x, logits)};
}

Outputs call_pixel_cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                 const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                 int64_t reduction, double label_smoothing,
                                 c10::string_view backend) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_fast::pixel_cross_entropy", "")
                             .typed<PixelCrossEntropySignature>();
  return op.call(logits, target, weight, ignore_index, reduction, label_smoothing, backend);
}

at::Tensor call_pixel_cross_entropy_backward(const at::Tensor& grad, const at::Tensor& logits,
                                             const at::Tensor& target,
                                             const std::optional<at::Tensor>& weight,
                                             const at::Tensor& lse, const at::Tensor& weight_sum,
                                             int64_t ignore_index, int64_t reduction,
                                             double label_smoothing, c10::string_view backend) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_fast::pixel_cross_entropy_backward", "")
                             .typed<decltype(pixel_cross_entropy_backward_kernel)>();
  return op.call(grad, logits, target, weight, lse, weight_sum, ignore_index, reduction,
                 label_smoothing, backend);
}

LossAndGradOutputs call_pixel_cross_entropy_with_grad(const at::Tensor& logits,
                                                      const at::Tensor& target,
                                                      const std::optional<at::Tensor>& weight,
                                                      int64_t ignore_index, int64_t reduction,
                                                      double label_smoothing) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_fast::pixel_cross_entropy_with_grad", "")
                             .typed<decltype(pixel_cross_entropy_with_grad_kernel)>();
  return op.call(logits, target, weight, ignore_index, reduction, label_smoothing);
}

// Whether the loss takes its gradient in the forward's pass (pixel_cross_entropy_with_grad): on
// the CPU kernel, for a reduced loss (whose upstream gradient is one number, applied after),
// with float32 or float64 logits (the gradient is kept in the accumulation dtype, so scaling it
// rounds once). Each logit is then read and exponentiated once for forward and backward
// together instead of twice. It keeps a gradient of the logits' size from forward to backward
// instead of the 4-byte lse: what eager keeps too (its log-softmax), and what the backward
// would allocate anyway. GPU backends keep two passes.
bool one_pass(const at::Tensor& logits, int64_t reduction, c10::string_view backend) {
  const at::ScalarType dtype = logits.scalar_type();
  return backend == "cpu" && reduction != kReductionNone &&
         (dtype == at::kFloat || dtype == at::kDouble);
}

class PixelCrossEntropyFunction : public torch::autograd::Function<PixelCrossEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               int64_t ignore_index, int64_t reduction, double label_smoothing,
                               c10::string_view backend) {
    at::AutoDispatchBelowADInplaceOrView guard;
    if (one_pass(logits, reduction, backend)) {
      auto [loss, lse, weight_sum, grad_logits] = call_pixel_cross_entropy_with_grad(
          logits, target, weight, ignore_index, reduction, label_smoothing);
      ctx->save_for_backward({grad_logits, weight_sum, logits});  // logits: for create_graph
      ctx->saved_data["one_pass"] = true;
      ctx->mark_non_differentiable({lse, weight_sum});
      return {loss, lse, weight_sum};
    }
    auto [loss, lse, weight_sum] = call_pixel_cross_entropy(logits, target, weight, ignore_index,
                                                            reduction, label_smoothing, backend);
    // An undefined tensor stands for "no class weights".
    ctx->save_for_backward({logits, target, weight.value_or(at::Tensor()), lse, weight_sum});
    ctx->saved_data["one_pass"] = false;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->saved_data["backend"] = std::string(backend);
    ctx->mark_non_differentiable({lse, weight_sum});
    return {loss, lse, weight_sum};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // One gradient per forward argument: logits only; target, weight and the rest get none.
    variable_list result(7);
    if (!ctx->needs_input_grad(0)) return result;
    const variable_list saved = ctx->get_saved_variables();
    if (ctx->saved_data["one_pass"].toBool()) {
      // The kept gradient is already the mean's (divided by the weight sum): only the upstream
      // gradient multiplies it, and the kept tensor itself is the result where nothing can see
      // the difference. For loss.backward() the upstream gradient is 1: it is handed over as it
      // is (autograd then owns it once the graph is freed). Otherwise it is scaled in place when
      // the graph is freed after this backward and nobody holds it yet, else into a new tensor.
      // A kept tensor modified in place after it was handed over makes a later backward raise
      // (its saved version changed) rather than return a wrong gradient.
      const at::Tensor& kept = saved[0];
      const bool handed_over = ctx->saved_data.count("handed_over") > 0;
      if (at::GradMode::is_enabled()) {  // create_graph
        result[0] = ScaleGradSumFunction::apply(grads[0], kept, saved[1], saved[2], kReductionSum,
                                                "pixel_cross_entropy")[0];
      } else if (is_exactly_one(grads[0])) {
        result[0] = kept;
        ctx->saved_data["handed_over"] = true;
      } else if (!torch::autograd::get_current_graph_task_keep_graph() && !handed_over) {
        result[0] = kept.mul_(grads[0]);
      } else {
        result[0] = at::empty_like(kept);
        advise_huge_pages(result[0]);  // 4 KiB page faults would cost more than the multiply
        at::mul_out(result[0], kept, grads[0]);
      }
      return result;
    }
    const std::optional<at::Tensor> weight =
        saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    result[0] = call_pixel_cross_entropy_backward(
        grads[0], saved[0], saved[1], weight, saved[3], saved[4],
        ctx->saved_data["ignore_index"].toInt(), ctx->saved_data["reduction"].toInt(),
        ctx->saved_data["label_smoothing"].toDouble(), ctx->saved_data["backend"].toStringRef());
    return result;
  }
};

Outputs pixel_cross_entropy_autograd(const at::Tensor& logits, const at::Tensor& target,
                                     const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                     int64_t reduction, double label_smoothing,
                                     c10::string_view backend) {
  if (!(at::GradMode::is_enabled() && logits.requires_grad())) {  // no graph to record
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_pixel_cross_entropy(logits, target, weight, ignore_index, reduction,
                                    label_smoothing, backend);
  }
  const variable_list out = PixelCrossEntropyFunction::apply(logits, target, weight, ignore_index,
                                                             reduction, label_smoothing, backend);
  return {out[0], out[1], out[2]};
}

// The backward kernels are not differentiable themselves (no double backward).
class PixelCrossEntropyBackwardFunction
    : public torch::autograd::Function<PixelCrossEntropyBackwardFunction> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad, const at::Tensor& logits,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               const at::Tensor& lse, const at::Tensor& weight_sum,
                               int64_t ignore_index, int64_t reduction, double label_smoothing,
                               c10::string_view backend) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return {call_pixel_cross_entropy_backward(grad, logits, target, weight, lse, weight_sum,
                                              ignore_index, reduction, label_smoothing, backend)};
  }
  static variable_list backward(AutogradContext*, variable_list) {
    fail_double_backward("pixel_cross_entropy");
  }
};

at::Tensor pixel_cross_entropy_backward_autograd(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& lse, const at::Tensor& weight_sum,
    int64_t ignore_index, int64_t reduction, double label_smoothing, c10::string_view backend) {
  if (!at::GradMode::is_enabled()) {  // a backward pass without create_graph: nothing to record
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_pixel_cross_entropy_backward(grad, logits, target, weight, lse, weight_sum,
                                             ignore_index, reduction, label_smoothing, backend);
  }
  return PixelCrossEntropyBackwardFunction::apply(grad, logits, target, weight, lse, weight_sum,
                                                  ignore_index, reduction, label_smoothing,
                                                  backend)[0];
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fcn_fast, m) {
  m.def(
      "pixel_cross_entropy(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "int reduction, float label_smoothing, str backend) -> (Tensor, Tensor, Tensor)");
  m.def(
      "pixel_cross_entropy_backward(Tensor grad, Tensor logits, Tensor target, Tensor? weight, "
      "Tensor lse, Tensor weight_sum, int ignore_index, int reduction, float label_smoothing, "
      "str backend) -> Tensor");
  // Implemented in Python (fcn_fast/triton/__init__.py); called by the two ops above.
  m.def(
      "pixel_cross_entropy_triton(Tensor logits, Tensor target, Tensor? weight, "
      "int ignore_index, int reduction, float label_smoothing) -> (Tensor, Tensor, Tensor)");
  m.def(
      "pixel_cross_entropy_backward_triton(Tensor grad, Tensor logits, Tensor target, "
      "Tensor? weight, Tensor lse, Tensor weight_sum, int ignore_index, int reduction, "
      "float label_smoothing) -> Tensor");
  // The CPU one-pass training form, chosen by the autograd below (fake kernel in Python).
  m.def(
      "pixel_cross_entropy_with_grad(Tensor logits, Tensor target, Tensor? weight, "
      "int ignore_index, int reduction, float label_smoothing) -> (Tensor, Tensor, Tensor, "
      "Tensor)");
}

TORCH_LIBRARY_IMPL(fcn_fast, CPU, m) {
  m.impl("pixel_cross_entropy", &pixel_cross_entropy_kernel);
  m.impl("pixel_cross_entropy_backward", &pixel_cross_entropy_backward_kernel);
  m.impl("pixel_cross_entropy_with_grad", &pixel_cross_entropy_with_grad_kernel);
}

TORCH_LIBRARY_IMPL(fcn_fast, CUDA, m) {
  m.impl("pixel_cross_entropy", &pixel_cross_entropy_kernel);
  m.impl("pixel_cross_entropy_backward", &pixel_cross_entropy_backward_kernel);
}

TORCH_LIBRARY_IMPL(fcn_fast, Autograd, m) {
  m.impl("pixel_cross_entropy", &pixel_cross_entropy_autograd);
  m.impl("pixel_cross_entropy_backward", &pixel_cross_entropy_backward_autograd);
}

}  // namespace fcn_fast
