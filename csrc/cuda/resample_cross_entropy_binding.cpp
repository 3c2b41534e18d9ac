// ATen side of the CUDA fused heads (resample_cross_entropy_cuda, its backward and
// resample_argmax_cuda, called by csrc/ops/resample_cross_entropy.cpp): checks, device
// guard, current stream, allocation, dtype map, and the async target check. The kernels are
// in resample_cross_entropy.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops/pixel_cross_entropy.h"
#include "../ops/resample_cross_entropy.h"
#include "../ops/resample_skip.h"
#include "cuda_utils.h"
#include "fcn_fast/pixel_cross_entropy_math.h"
#include "resample_cross_entropy.cuh"

namespace fcn_fast {
namespace {

FusedGeometry geometry(const at::Tensor& x, int64_t out_h, int64_t out_w, const Resampling& r) {
  return FusedGeometry{x.size(0), x.size(1), x.size(2), x.size(3), out_h,  out_w,
                       r.scale_h, r.bias_h,  r.scale_w, r.bias_w,  r.clamp};
}

Strides3 strides3(const at::Tensor& t) { return Strides3{t.stride(0), t.stride(1), t.stride(2)}; }

void check_sizes(const FusedGeometry& g, const char* op) {
  check_int32_sizes({g.N, g.C, g.in_h, g.in_w, g.out_h, g.out_w, g.out_h * g.out_w}, op);
}

}  // namespace

LossOutputs resample_cross_entropy_cuda(const at::Tensor& x, const at::Tensor& target,
                                        const std::optional<at::Tensor>& weight,
                                        const Resampling& resampling,
                                        const CrossEntropyOptions& options) {
  check_resample_cross_entropy_args(x, target, weight, options);
  check_device(x, at::kCUDA, "x", "resample_cross_entropy_cuda");
  const c10::cuda::CUDAGuard guard(x.device());
  const FusedGeometry g = geometry(x, target.size(1), target.size(2), resampling);
  check_sizes(g, "resample_cross_entropy_cuda");
  const DType dtype = cuda_dtype(x);
  auto [loss, lse, weight_sum] =
      empty_loss_outputs(x, {g.N, g.out_h, g.out_w}, options.reduction == kReductionNone);
  // flags[0]: a bad target; flags[1]: the ticket of the last-block reduction.
  at::Tensor flags = at::zeros({2}, x.options().dtype(at::kInt));
  at::Tensor workspace =
      at::empty({resample_cross_entropy_workspace_bytes(dtype, g, strides4(x), strides3(target),
                                                        FusedPass::Forward, force_index64())},
                x.options().dtype(at::kByte));
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  check_cuda(launch_resample_cross_entropy(
      dtype, g, x.const_data_ptr(), strides4(x), labels_of(target), strides3(target),
      w.defined() ? w.const_data_ptr() : nullptr, loss.mutable_data_ptr(), lse.mutable_data_ptr(),
      weight_sum.mutable_data_ptr(), workspace.mutable_data_ptr(), flags.mutable_data_ptr<int>(),
      options.ignore_index, options.reduction, options.label_smoothing, force_index64(),
      c10::cuda::getCurrentCUDAStream()));
  // No host sync: a bad target fails as a device-side assert at the next sync.
  at::_assert_async(flags.narrow(0, 0, 1).eq(0),
                    "resample_cross_entropy: target outside [0, C) that is not ignore_index");
  return {loss, lse, weight_sum};
}

at::Tensor resample_cross_entropy_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                const at::Tensor& target,
                                                const std::optional<at::Tensor>& weight,
                                                const at::Tensor& lse, const at::Tensor& weight_sum,
                                                const Resampling& resampling,
                                                const CrossEntropyOptions& options) {
  check_resample_cross_entropy_args(x, target, weight, options);
  check_resample_cross_entropy_backward_args(grad, target, lse, options.reduction);
  check_device(x, at::kCUDA, "x", "resample_cross_entropy_backward_cuda");
  const c10::cuda::CUDAGuard guard(x.device());
  const FusedGeometry g = geometry(x, target.size(1), target.size(2), resampling);
  check_sizes(g, "resample_cross_entropy_backward_cuda");
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(output_memory_format(x)));
  if (grad_x.numel() == 0) return grad_x;
  if (g.out_h * g.out_w == 0) return grad_x.zero_();
  const DType dtype = cuda_dtype(x);
  if (!resample_cross_entropy_backward_fits(dtype, g, strides4(x), options.label_smoothing)) {
    // The same gradient unfused, through the full-resolution logits (N x C x H x W), with the
    // resampler's and the loss's own kernels: slower and larger, but correct.
    const at::Tensor z = resample_skip_cuda(x, std::nullopt, resampling, g.out_h, g.out_w, 0, 0);
    const int64_t N = g.N, C = g.C, S = g.out_h * g.out_w;
    const at::Tensor grad_z = pixel_cross_entropy_backward_cuda(
        options.reduction == kReductionNone ? grad.reshape({N, S}) : grad, z.view({N, C, S}),
        target.reshape({N, S}), weight, lse.reshape({N, S}), weight_sum, options);
    return resample_skip_backward_cuda(grad_z.view(z.sizes()), g.in_h, g.in_w, resampling);
  }
  const auto acc_dtype = accumulation_type(x.scalar_type());
  // The upstream gradient in the accumulation dtype (a GradScaler's 65536 overflows fp16).
  const at::Tensor gradc = grad.to(acc_dtype);  // keeps strides (0 included)
  const at::Tensor lsec = lse.to(acc_dtype).contiguous();
  const at::Tensor wsum = weight_sum.to(acc_dtype).contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const Strides3 grad_strides =
      options.reduction == kReductionNone ? strides3(gradc) : Strides3{0, 0, 0};
  at::Tensor workspace =
      at::empty({resample_cross_entropy_workspace_bytes(dtype, g, strides4(x), strides3(target),
                                                        FusedPass::Backward, force_index64())},
                x.options().dtype(at::kByte));
  check_cuda(launch_resample_cross_entropy_backward(
      dtype, g, gradc.const_data_ptr(), grad_strides, x.const_data_ptr(), strides4(x),
      labels_of(target), strides3(target), w.defined() ? w.const_data_ptr() : nullptr,
      lsec.const_data_ptr(), wsum.const_data_ptr(), grad_x.mutable_data_ptr(), strides4(grad_x),
      workspace.mutable_data_ptr(), options.ignore_index, options.reduction,
      options.label_smoothing, force_index64(), c10::cuda::getCurrentCUDAStream()));
  return grad_x;
}

std::tuple<at::Tensor, at::Tensor> resample_argmax_cuda(const at::Tensor& x,
                                                        const Resampling& resampling, int64_t out_h,
                                                        int64_t out_w, at::ScalarType out_dtype,
                                                        bool return_confidence) {
  check_resample_argmax_args(x, out_h, out_w, out_dtype);
  check_device(x, at::kCUDA, "x", "resample_argmax_cuda");
  const c10::cuda::CUDAGuard guard(x.device());
  const FusedGeometry g = geometry(x, out_h, out_w, resampling);
  at::Tensor labels = at::empty({g.N, out_h, out_w}, x.options().dtype(out_dtype));
  // Not asked for: an empty (0, out_h, out_w) tensor, as every backend and the fake kernel.
  at::Tensor confidence =
      at::empty({return_confidence ? g.N : 0, out_h, out_w}, x.options().dtype(at::kFloat));
  if (labels.numel() == 0) return {labels, confidence};
  check_sizes(g, "resample_argmax_cuda");
  const DType dtype = cuda_dtype(x);
  at::Tensor workspace =
      at::empty({resample_cross_entropy_workspace_bytes(dtype, g, strides4(x), Strides3{0, 0, 0},
                                                        FusedPass::Argmax, force_index64())},
                x.options().dtype(at::kByte));
  check_cuda(launch_resample_argmax(
      dtype, g, x.const_data_ptr(), strides4(x), labels.mutable_data_ptr(), out_dtype == at::kByte,
      return_confidence ? confidence.mutable_data_ptr<float>() : nullptr,
      workspace.mutable_data_ptr(), force_index64(), c10::cuda::getCurrentCUDAStream()));
  return {labels, confidence};
}

}  // namespace fcn_fast
