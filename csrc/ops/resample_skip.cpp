// fcn_fast::resample_skip, the op behind upsample_skip and interpolate_add (fcn_fast/ops/
// resample_skip.py): its schemas, which kernel runs for each backend, and its autograd.
//
//   resample_skip           out = bilinear resample of x + skip window (the public op)
//   resample_skip_backward  grad_x, the resampler's adjoint as a gather (no atomics)
//   *_triton                the same two, implemented in fcn_fast/triton/resample_skip.py
//
// Autograd is here in C++ (as torchvision's ops do), so a call from Python costs one
// dispatcher call, not a Python autograd.Function.
#include "resample_skip.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include "backend.h"

namespace fcn_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSignature = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double,
                                    double, double, double, bool, int64_t, int64_t, int64_t,
                                    int64_t);
using BackwardSignature = at::Tensor(const at::Tensor&, int64_t, int64_t, double, double, double,
                                     double, bool);

at::Tensor resample_skip_kernel(const at::Tensor& x, const std::optional<at::Tensor>& skip,
                                double scale_h, double bias_h, double scale_w, double bias_w,
                                bool clamp, int64_t out_h, int64_t out_w, int64_t skip_y,
                                int64_t skip_x, c10::string_view backend) {
  const Resampling resampling{scale_h, bias_h, scale_w, bias_w, clamp};
  switch (parse_backend(backend, "resample_skip")) {
    case Backend::Cpu:
      return resample_skip_cpu(x, skip, resampling, out_h, out_w, skip_y, skip_x);
    case Backend::Cuda:
#ifdef FCN_FAST_WITH_CUDA
      return resample_skip_cuda(x, skip, resampling, out_h, out_w, skip_y, skip_x);
#else
      fail_without_cuda("resample_skip");
#endif
    case Backend::Triton: {
      static const auto triton = triton_op<ForwardSignature>("fcn_fast::resample_skip_triton");
      return triton.call(x, skip, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, skip_y,
                         skip_x);
    }
  }
  TORCH_CHECK(false, "unreachable");
}

at::Tensor resample_skip_backward_kernel(const at::Tensor& grad_out, int64_t in_h, int64_t in_w,
                                         double scale_h, double bias_h, double scale_w,
                                         double bias_w, bool clamp, c10::string_view backend) {
  const Resampling resampling{scale_h, bias_h, scale_w, bias_w, clamp};
  switch (parse_backend(backend, "resample_skip_backward")) {
    case Backend::Cpu:
      return resample_skip_backward_cpu(grad_out, in_h, in_w, resampling);
    case Backend::Cuda:
#ifdef FCN_FAST_WITH_CUDA
      return resample_skip_backward_cuda(grad_out, in_h, in_w, resampling);
#else
      fail_without_cuda("resample_skip_backward");
#endif
    case Backend::Triton: {
      static const auto triton =
          triton_op<BackwardSignature>("fcn_fast::resample_skip_backward_triton");
      return triton.call(grad_out, in_h, in_w, scale_h, bias_h, scale_w, bias_w, clamp);
    }
  }
  TORCH_CHECK(false, "unreachable");
}

at::Tensor call_resample_skip(const at::Tensor& x, const std::optional<at::Tensor>& skip,
                              double scale_h, double bias_h, double scale_w, double bias_w,
                              bool clamp, c10::SymInt out_h, c10::SymInt out_w, int64_t skip_y,
                              int64_t skip_x, c10::string_view backend) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_fast::resample_skip", "")
                             .typed<ResampleSkipSignature>();
  return op.call(x, skip, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w, skip_y, skip_x,
                 backend);
}

using BackwardSymSignature = at::Tensor(const at::Tensor&, c10::SymInt, c10::SymInt, double, double,
                                        double, double, bool, c10::string_view);

at::Tensor call_resample_skip_backward(const at::Tensor& grad_out, c10::SymInt in_h,
                                       c10::SymInt in_w, double scale_h, double bias_h,
                                       double scale_w, double bias_w, bool clamp,
                                       c10::string_view backend) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_fast::resample_skip_backward", "")
                             .typed<BackwardSymSignature>();
  return op.call(grad_out, in_h, in_w, scale_h, bias_h, scale_w, bias_w, clamp, backend);
}

// grad_x through resample_skip_backward; grad_skip is grad_out placed in the skip window of
// zeros (a pad), or grad_out itself when the window is all of skip, as an add's backward.
class ResampleSkipFunction : public torch::autograd::Function<ResampleSkipFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const std::optional<at::Tensor>& skip, double scale_h, double bias_h,
                               double scale_w, double bias_w, bool clamp, c10::SymInt out_h,
                               c10::SymInt out_w, int64_t skip_y, int64_t skip_x,
                               c10::string_view backend) {
    // Sizes as SymInts: symbolic when torch.export / torch.compile trace dynamic shapes.
    ctx->saved_data["in_h"] = x.sym_size(2);
    ctx->saved_data["in_w"] = x.sym_size(3);
    ctx->saved_data["scale_bias"] = std::vector<double>{scale_h, bias_h, scale_w, bias_w};
    ctx->saved_data["clamp"] = clamp;
    ctx->saved_data["backend"] = std::string(backend);
    if (skip.has_value()) {
      // Pads (left, right, top, bottom) that put grad_out into skip's shape.
      ctx->saved_data["skip_pad"] =
          std::vector<c10::SymInt>{c10::SymInt(skip_x), skip->sym_size(3) - skip_x - out_w,
                                   c10::SymInt(skip_y), skip->sym_size(2) - skip_y - out_h};
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    return {call_resample_skip(x, skip, scale_h, bias_h, scale_w, bias_w, clamp, std::move(out_h),
                               std::move(out_w), skip_y, skip_x, backend)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_out = grads[0];
    const std::vector<double> p = ctx->saved_data["scale_bias"].toDoubleVector();
    at::Tensor grad_x, grad_skip;
    if (ctx->needs_input_grad(0)) {
      grad_x = call_resample_skip_backward(grad_out, ctx->saved_data["in_h"].toSymInt(),
                                           ctx->saved_data["in_w"].toSymInt(), p[0], p[1], p[2],
                                           p[3], ctx->saved_data["clamp"].toBool(),
                                           ctx->saved_data["backend"].toStringRef());
    }
    if (ctx->saved_data.count("skip_pad") != 0 && ctx->needs_input_grad(1)) {
      const std::vector<c10::SymInt> pad = ctx->saved_data["skip_pad"].toSymIntVector();
      const bool whole =
          std::all_of(pad.begin(), pad.end(), [](const c10::SymInt& v) { return v == 0; });
      grad_skip = whole ? grad_out : at::constant_pad_nd_symint(grad_out, pad);
    }
    // One gradient per forward argument: x, skip, then ten non-tensor arguments.
    variable_list result(12);
    result[0] = grad_x;
    result[1] = grad_skip;
    return result;
  }
};

at::Tensor resample_skip_autograd(const at::Tensor& x, const std::optional<at::Tensor>& skip,
                                  double scale_h, double bias_h, double scale_w, double bias_w,
                                  bool clamp, c10::SymInt out_h, c10::SymInt out_w, int64_t skip_y,
                                  int64_t skip_x, c10::string_view backend) {
  const bool skip_grad = skip.has_value() && skip->requires_grad();
  if (!(at::GradMode::is_enabled() && (x.requires_grad() || skip_grad))) {  // no graph to record
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_resample_skip(x, skip, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w,
                              skip_y, skip_x, backend);
  }
  return ResampleSkipFunction::apply(x, skip, scale_h, bias_h, scale_w, bias_w, clamp, out_h, out_w,
                                     skip_y, skip_x, backend)[0];
}

// The backward kernels are not differentiable themselves (no double backward).
class ResampleSkipBackwardFunction
    : public torch::autograd::Function<ResampleSkipBackwardFunction> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad_out, c10::SymInt in_h,
                               c10::SymInt in_w, double scale_h, double bias_h, double scale_w,
                               double bias_w, bool clamp, c10::string_view backend) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return {call_resample_skip_backward(grad_out, in_h, in_w, scale_h, bias_h, scale_w, bias_w,
                                        clamp, backend)};
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "fcn_fast: double backward of upsample_skip / interpolate_add is not "
                "supported");
  }
};

at::Tensor resample_skip_backward_autograd(const at::Tensor& grad_out, c10::SymInt in_h,
                                           c10::SymInt in_w, double scale_h, double bias_h,
                                           double scale_w, double bias_w, bool clamp,
                                           c10::string_view backend) {
  if (!at::GradMode::is_enabled()) {  // a backward pass without create_graph: nothing to record
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_resample_skip_backward(grad_out, in_h, in_w, scale_h, bias_h, scale_w, bias_w,
                                       clamp, backend);
  }
  return ResampleSkipBackwardFunction::apply(grad_out, in_h, in_w, scale_h, bias_h, scale_w, bias_w,
                                             clamp, backend)[0];
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fcn_fast, m) {
  m.def(
      "resample_skip(Tensor x, Tensor? skip, float scale_h, float bias_h, float scale_w, "
      "float bias_w, bool clamp, SymInt out_h, SymInt out_w, int skip_y, int skip_x, str backend) "
      "-> Tensor");
  m.def(
      "resample_skip_backward(Tensor grad_out, SymInt in_h, SymInt in_w, float scale_h, float "
      "bias_h, "
      "float scale_w, float bias_w, bool clamp, str backend) -> Tensor");
  // Implemented in Python (fcn_fast/triton/__init__.py); called by the two ops above.
  m.def(
      "resample_skip_triton(Tensor x, Tensor? skip, float scale_h, float bias_h, float scale_w, "
      "float bias_w, bool clamp, int out_h, int out_w, int skip_y, int skip_x) -> Tensor");
  m.def(
      "resample_skip_backward_triton(Tensor grad_out, int in_h, int in_w, float scale_h, "
      "float bias_h, float scale_w, float bias_w, bool clamp) -> Tensor");
}

TORCH_LIBRARY_IMPL(fcn_fast, CPU, m) {
  m.impl("resample_skip", &resample_skip_kernel);
  m.impl("resample_skip_backward", &resample_skip_backward_kernel);
}

TORCH_LIBRARY_IMPL(fcn_fast, CUDA, m) {
  m.impl("resample_skip", &resample_skip_kernel);
  m.impl("resample_skip_backward", &resample_skip_backward_kernel);
}

TORCH_LIBRARY_IMPL(fcn_fast, Autograd, m) {
  m.impl("resample_skip", &resample_skip_autograd);
  m.impl("resample_skip_backward", &resample_skip_backward_autograd);
}

}  // namespace fcn_fast
