// The fused heads behind upsample_cross_entropy / interpolate_cross_entropy and
// upsample_argmax / interpolate_argmax (fcn_fast/ops/resample_cross_entropy.py): their
// schemas, which kernel runs for each backend, and the loss's autograd.
//
//   resample_cross_entropy           -> (loss, lse, weight_sum); only loss is differentiable
//   resample_cross_entropy_backward  grad_x, recomputing the logits from x and lse
//   resample_cross_entropy_with_grad (loss, lse, weight_sum, grad_sum): the CPU kernel's
//                                    forward and backward in one pass (training, reduced)
//   resample_argmax                  -> (labels, confidence); not differentiable
//   *_triton                         the same three, in fcn_fast/triton/resample_cross_entropy.py
//
// Shapes, dtypes and the math: resample_cross_entropy.h.
#include "resample_cross_entropy.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include "backend.h"
#include "fcn_fast/pixel_cross_entropy_math.h"  // Reduction
#include "one_pass_grad.h"

namespace fcn_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using ArgmaxOutputs = std::tuple<at::Tensor, at::Tensor>;

constexpr const char* kHeads = "the fused cross-entropy heads";  // in errors

using ForwardSignature = LossOutputs(const at::Tensor&, const at::Tensor&,
                                     const std::optional<at::Tensor>&, double, double, double,
                                     double, bool, int64_t, int64_t, double);
using BackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const std::optional<at::Tensor>&, const at::Tensor&,
                                     const at::Tensor&, double, double, double, double, bool,
                                     int64_t, int64_t, double);
using ArgmaxSignature = ArgmaxOutputs(const at::Tensor&, double, double, double, double, bool,
                                      int64_t, int64_t, at::ScalarType, bool);

LossOutputs resample_cross_entropy_kernel(const at::Tensor& x, const at::Tensor& target,
                                          const std::optional<at::Tensor>& weight, double scale_h,
                                          double bias_h, double scale_w, double bias_w, bool clamp,
                                          int64_t ignore_index, int64_t reduction,
                                          double label_smoothing, c10::string_view backend) {
  const Resampling resampling{scale_h, bias_h, scale_w, bias_w, clamp};
  const CrossEntropyOptions options{ignore_index, reduction, label_smoothing};
  switch (parse_backend(backend, "resample_cross_entropy")) {
    case Backend::Cpu:
      return resample_cross_entropy_cpu(x, target, weight, resampling, options);
    case Backend::Cuda:
#ifdef FCN_FAST_WITH_CUDA
      return resample_cross_entropy_cuda(x, target, weight, resampling, options);
#else
      fail_without_cuda("resample_cross_entropy");
#endif
    case Backend::Triton: {
      static const auto triton =
          triton_op<ForwardSignature>("fcn_fast::resample_cross_entropy_triton");
      return triton.call(x, target, weight, scale_h, bias_h, scale_w, bias_w, clamp, ignore_index,
                         reduction, label_smoothing);
    }
  }
  TORCH_CHECK(false, "unreachable");
}

at::Tensor resample_cross_entropy_backward_kernel(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& lse, const at::Tensor& weight_sum,
    double scale_h, double bias_h, double scale_w, double bias_w, bool clamp, int64_t ignore_index,
    int64_t reduction, double label_smoothing, c10::string_view backend) {
  const Resampling resampling{scale_h, bias_h, scale_w, bias_w, clamp};
  const CrossEntropyOptions options{ignore_index, reduction, label_smoothing};
  switch (parse_backend(backend, "resample_cross_entropy_backward")) {
    case Backend::Cpu:
      return resample_cross_entropy_backward_cpu(grad, x, target, weight, lse, weight_sum,
                                                 resampling, options);
    case Backend::Cuda:
#ifdef FCN_FAST_WITH_CUDA
      return resample_cross_entropy_backward_cuda(grad, x, target, weight, lse, weight_sum,
                                                  resampling, options);
#else
      fail_without_cuda("resample_cross_entropy_backward");
#endif
    case Backend::Triton: {
      static const auto triton =
          triton_op<BackwardSignature>("fcn_fast::resample_cross_entropy_backward_triton");
      return triton.call(grad, x, target, weight, lse, weight_sum, scale_h, bias_h, scale_w, bias_w,
                         clamp, ignore_index, reduction, label_smoothing);
    }
  }
  TORCH_CHECK(false, "unreachable");
}

LossAndGradOutputs resample_cross_entropy_with_grad_kernel(
    const at::Tensor& x, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double scale_h, double bias_h, double scale_w, double bias_w, bool clamp, int64_t ignore_index,
    int64_t reduction, double label_smoothing) {
  return resample_cross_entropy_with_grad_cpu(x, target, weight,
                                              {scale_h, bias_h, scale_w, bias_w, clamp},
                                              {ignore_index, reduction, label_smoothing});
}

ArgmaxOutputs resample_argmax_kernel(const at::Tensor& x, double scale_h, double bias_h,
                                     double scale_w, double bias_w, bool clamp, int64_t out_h,
                                     int64_t out_w, at::ScalarType out_dtype,
                                     bool return_confidence, c10::string_view backend) {
  const Resampling resampling{scale_h, bias_h, scale_w, bias_w, clamp};
  switch (parse_backend(backend, "resample_argmax")) {
    case Backend::Cpu:
      return resample_argmax_cpu(x, resampling, out_h, out_w, out_dtype, return_confidence);
    case Backend::Cuda:
#ifdef FCN_FAST_WITH_CUDA
      return resample_argmax_cuda(x, resampling, out_h, out_w, out_dtype, return_confidence);
#else
      fail_without_cuda("resample_argmax");
#endif
    case Backend::Triton: {
      static const auto triton = triton_op<ArgmaxSignature>("fcn_fast::resample_argmax_triton");
      return triton.call(x, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, out_dtype,
                         return_confidence);
    }
  }
  TORCH_CHECK(false, "unreachable");
}

LossOutputs call_resample_cross_entropy(const at::Tensor& x, const at::Tensor& target,
                                        const std::optional<at::Tensor>& weight, double scale_h,
                                        double bias_h, double scale_w, double bias_w, bool clamp,
                                        int64_t ignore_index, int64_t reduction,
                                        double label_smoothing, c10::string_view backend) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_fast::resample_cross_entropy", "")
                             .typed<ResampleCrossEntropySignature>();
  return op.call(x, target, weight, scale_h, bias_h, scale_w, bias_w, clamp, ignore_index,
                 reduction, label_smoothing, backend);
}

at::Tensor call_resample_cross_entropy_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& lse, const at::Tensor& weight_sum,
    double scale_h, double bias_h, double scale_w, double bias_w, bool clamp, int64_t ignore_index,
    int64_t reduction, double label_smoothing, c10::string_view backend) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_fast::resample_cross_entropy_backward", "")
                             .typed<decltype(resample_cross_entropy_backward_kernel)>();
  return op.call(grad, x, target, weight, lse, weight_sum, scale_h, bias_h, scale_w, bias_w, clamp,
                 ignore_index, reduction, label_smoothing, backend);
}

LossAndGradOutputs call_resample_cross_entropy_with_grad(
    const at::Tensor& x, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    double scale_h, double bias_h, double scale_w, double bias_w, bool clamp, int64_t ignore_index,
    int64_t reduction, double label_smoothing) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_fast::resample_cross_entropy_with_grad", "")
                             .typed<decltype(resample_cross_entropy_with_grad_kernel)>();
  return op.call(x, target, weight, scale_h, bias_h, scale_w, bias_w, clamp, ignore_index,
                 reduction, label_smoothing);
}

ArgmaxOutputs call_resample_argmax(const at::Tensor& x, double scale_h, double bias_h,
                                   double scale_w, double bias_w, bool clamp, c10::SymInt out_h,
                                   c10::SymInt out_w, at::ScalarType out_dtype,
                                   bool return_confidence, c10::string_view backend) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_fast::resample_argmax", "")
                             .typed<ResampleArgmaxSignature>();
  return op.call(x, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, out_dtype,
                 return_confidence, backend);
}

// Whether the loss takes its gradient in the forward's pass (resample_cross_entropy_with_grad):
// on the CPU kernel, for a reduced loss (whose upstream gradient is one number, applied after),
// when the gradient it keeps from forward to backward is no larger than the lse the two-pass
// form keeps (C * h * w <= H * W, both in the accumulation dtype: C = 21 at x8 keeps a third).
// The logits and their exps are then computed once instead of twice: upsample_cross_entropy
// N4 C21 70^2 x8 -> 500^2 forward+backward, 2 threads: 46 -> 34 ms (28-29 ms with the
// kernel's later steps, csrc/cpu/resample_cross_entropy.cpp). GPU backends keep two passes.
bool one_pass(const at::Tensor& x, const at::Tensor& target, int64_t reduction,
              c10::string_view backend) {
  if (backend != "cpu" || reduction == kReductionNone) return false;
  // Symbolic sizes (torch.export / torch.compile tracing dynamic shapes): decided without a
  // guard, two passes where the sizes do not settle it (tracing runs no kernel).
  const c10::SymInt low = x.sym_size(1) * x.sym_size(2) * x.sym_size(3);
  return low.sym_le(target.sym_size(1) * target.sym_size(2)).guard_or_false(__FILE__, __LINE__);
}

class ResampleCrossEntropyFunction
    : public torch::autograd::Function<ResampleCrossEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight, double scale_h,
                               double bias_h, double scale_w, double bias_w, bool clamp,
                               int64_t ignore_index, int64_t reduction, double label_smoothing,
                               c10::string_view backend) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["scale_bias"] = std::vector<double>{scale_h, bias_h, scale_w, bias_w};
    ctx->saved_data["clamp"] = clamp;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->saved_data["backend"] = std::string(backend);
    // An undefined tensor stands for "no class weights".
    const at::Tensor weight_or_none = weight.value_or(at::Tensor());
    if (one_pass(x, target, reduction, backend)) {
      auto [loss, lse, weight_sum, grad_sum] =
          call_resample_cross_entropy_with_grad(x, target, weight, scale_h, bias_h, scale_w, bias_w,
                                                clamp, ignore_index, reduction, label_smoothing);
      // x: its dtype, create_graph, and with target and weight the two-pass backward of a
      // mean over a weight sum of 0 (see backward).
      ctx->save_for_backward({x, target, weight_or_none, grad_sum, weight_sum});
      ctx->saved_data["one_pass"] = true;
      ctx->mark_non_differentiable({lse, weight_sum});
      return {loss, lse, weight_sum};
    }
    auto [loss, lse, weight_sum] =
        call_resample_cross_entropy(x, target, weight, scale_h, bias_h, scale_w, bias_w, clamp,
                                    ignore_index, reduction, label_smoothing, backend);
    // x and lse are all the backward needs to recompute the logits.
    ctx->save_for_backward({x, target, weight_or_none, lse, weight_sum});
    ctx->saved_data["one_pass"] = false;
    ctx->mark_non_differentiable({lse, weight_sum});
    return {loss, lse, weight_sum};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // One gradient per forward argument: x only; target, weight and the rest get none.
    variable_list result(12);
    if (!ctx->needs_input_grad(0)) return result;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &target = saved[1], &weight_sum = saved[4];
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const std::optional<at::Tensor> weight =
        saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    const std::vector<double> p = ctx->saved_data["scale_bias"].toDoubleVector();
    const bool clamp = ctx->saved_data["clamp"].toBool();
    const int64_t ignore_index = ctx->saved_data["ignore_index"].toInt();
    const double label_smoothing = ctx->saved_data["label_smoothing"].toDouble();
    at::Tensor lse = saved[3];
    if (ctx->saved_data["one_pass"].toBool()) {
      // A mean over a weight sum of exactly 0 is PyTorch's 0 gradient when every pixel is
      // ignored but its NaN or inf at the pixels counted with weights that cancel (a class
      // weighted 0, say): the kept sum cannot tell the two apart, so the two-pass backward
      // runs, from a recomputed lse. (Not under torch.compile, whose tensors have no value.)
      if (!(reduction == kReductionMean && is_plain_cpu_zero(weight_sum))) {
        const at::Tensor& grad_sum = saved[3];
        result[0] =
            at::GradMode::is_enabled()  // create_graph
                ? ScaleGradSumFunction::apply(grads[0], grad_sum, weight_sum, x, reduction,
                                              kHeads)[0]
                : scale_grad_sum(grads[0], grad_sum, weight_sum, reduction, x.scalar_type());
        return result;
      }
      at::AutoDispatchBelowADInplaceOrView no_graph;  // lse only: nothing to differentiate
      lse =
          std::get<1>(call_resample_cross_entropy(x, target, weight, p[0], p[1], p[2], p[3], clamp,
                                                  ignore_index, reduction, label_smoothing, "cpu"));
    }
    result[0] = call_resample_cross_entropy_backward(
        grads[0], x, target, weight, lse, weight_sum, p[0], p[1], p[2], p[3], clamp, ignore_index,
        reduction, label_smoothing, ctx->saved_data["backend"].toStringRef());
    return result;
  }
};

LossOutputs resample_cross_entropy_autograd(const at::Tensor& x, const at::Tensor& target,
                                            const std::optional<at::Tensor>& weight, double scale_h,
                                            double bias_h, double scale_w, double bias_w,
                                            bool clamp, int64_t ignore_index, int64_t reduction,
                                            double label_smoothing, c10::string_view backend) {
  if (!(at::GradMode::is_enabled() && x.requires_grad())) {  // no graph to record
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_resample_cross_entropy(x, target, weight, scale_h, bias_h, scale_w, bias_w, clamp,
                                       ignore_index, reduction, label_smoothing, backend);
  }
  const variable_list out =
      ResampleCrossEntropyFunction::apply(x, target, weight, scale_h, bias_h, scale_w, bias_w,
                                          clamp, ignore_index, reduction, label_smoothing, backend);
  return {out[0], out[1], out[2]};
}

// The backward kernels are not differentiable themselves (no double backward).
class ResampleCrossEntropyBackwardFunction
    : public torch::autograd::Function<ResampleCrossEntropyBackwardFunction> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad, const at::Tensor& x,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               const at::Tensor& lse, const at::Tensor& weight_sum, double scale_h,
                               double bias_h, double scale_w, double bias_w, bool clamp,
                               int64_t ignore_index, int64_t reduction, double label_smoothing,
                               c10::string_view backend) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return {call_resample_cross_entropy_backward(grad, x, target, weight, lse, weight_sum, scale_h,
                                                 bias_h, scale_w, bias_w, clamp, ignore_index,
                                                 reduction, label_smoothing, backend)};
  }
  static variable_list backward(AutogradContext*, variable_list) { fail_double_backward(kHeads); }
};

at::Tensor resample_cross_entropy_backward_autograd(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& lse, const at::Tensor& weight_sum,
    double scale_h, double bias_h, double scale_w, double bias_w, bool clamp, int64_t ignore_index,
    int64_t reduction, double label_smoothing, c10::string_view backend) {
  if (!at::GradMode::is_enabled()) {  // a backward pass without create_graph: nothing to record
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_resample_cross_entropy_backward(grad, x, target, weight, lse, weight_sum, scale_h,
                                                bias_h, scale_w, bias_w, clamp, ignore_index,
                                                reduction, label_smoothing, backend);
  }
  return ResampleCrossEntropyBackwardFunction::apply(
      grad, x, target, weight, lse, weight_sum, scale_h, bias_h, scale_w, bias_w, clamp,
      ignore_index, reduction, label_smoothing, backend)[0];
}

// Labels are not differentiable, and the confidence is not differentiated (it is returned
// detached): the argmax runs below autograd.
ArgmaxOutputs resample_argmax_autograd(const at::Tensor& x, double scale_h, double bias_h,
                                       double scale_w, double bias_w, bool clamp, c10::SymInt out_h,
                                       c10::SymInt out_w, at::ScalarType out_dtype,
                                       bool return_confidence, c10::string_view backend) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_resample_argmax(x, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, out_dtype,
                              return_confidence, backend);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fcn_fast, m) {
  m.def(
      "resample_cross_entropy(Tensor x, Tensor target, Tensor? weight, float scale_h, "
      "float bias_h, float scale_w, float bias_w, bool clamp, int ignore_index, int reduction, "
      "float label_smoothing, str backend) -> (Tensor, Tensor, Tensor)");
  m.def(
      "resample_cross_entropy_backward(Tensor grad, Tensor x, Tensor target, Tensor? weight, "
      "Tensor lse, Tensor weight_sum, float scale_h, float bias_h, float scale_w, float bias_w, "
      "bool clamp, int ignore_index, int reduction, float label_smoothing, str backend) "
      "-> Tensor");
  m.def(
      "resample_cross_entropy_with_grad(Tensor x, Tensor target, Tensor? weight, "
      "float scale_h, float bias_h, float scale_w, float bias_w, bool clamp, int ignore_index, "
      "int reduction, float label_smoothing) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "resample_argmax(Tensor x, float scale_h, float bias_h, float scale_w, float bias_w, "
      "bool clamp, SymInt out_h, SymInt out_w, ScalarType out_dtype, bool return_confidence, "
      "str backend) -> (Tensor, Tensor)");
  // Implemented in Python (fcn_fast/triton/__init__.py); called by the three ops above.
  m.def(
      "resample_cross_entropy_triton(Tensor x, Tensor target, Tensor? weight, float scale_h, "
      "float bias_h, float scale_w, float bias_w, bool clamp, int ignore_index, int reduction, "
      "float label_smoothing) -> (Tensor, Tensor, Tensor)");
  m.def(
      "resample_cross_entropy_backward_triton(Tensor grad, Tensor x, Tensor target, "
      "Tensor? weight, Tensor lse, Tensor weight_sum, float scale_h, float bias_h, "
      "float scale_w, float bias_w, bool clamp, int ignore_index, int reduction, "
      "float label_smoothing) -> Tensor");
  m.def(
      "resample_argmax_triton(Tensor x, float scale_h, float bias_h, float scale_w, "
      "float bias_w, bool clamp, int out_h, int out_w, ScalarType out_dtype, "
      "bool return_confidence) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fcn_fast, CPU, m) {
  m.impl("resample_cross_entropy", &resample_cross_entropy_kernel);
  m.impl("resample_cross_entropy_backward", &resample_cross_entropy_backward_kernel);
  m.impl("resample_cross_entropy_with_grad", &resample_cross_entropy_with_grad_kernel);
  m.impl("resample_argmax", &resample_argmax_kernel);
}

TORCH_LIBRARY_IMPL(fcn_fast, CUDA, m) {
  m.impl("resample_cross_entropy", &resample_cross_entropy_kernel);
  m.impl("resample_cross_entropy_backward", &resample_cross_entropy_backward_kernel);
  m.impl("resample_argmax", &resample_argmax_kernel);
}

TORCH_LIBRARY_IMPL(fcn_fast, Autograd, m) {
  m.impl("resample_cross_entropy", &resample_cross_entropy_autograd);
  m.impl("resample_cross_entropy_backward", &resample_cross_entropy_backward_autograd);
  m.impl("resample_argmax", &resample_argmax_autograd);
}

}  // namespace fcn_fast
