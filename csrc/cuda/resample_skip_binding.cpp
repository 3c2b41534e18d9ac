// ATen side of the CUDA resample-skip kernels (resample_skip_cuda and its backward, called by
// csrc/ops/resample_skip.cpp): checks, device guard, current stream, allocation, dtype map;
// the kernels themselves are in resample_skip.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops/resample_skip.h"
#include "cuda_utils.h"
#include "resample_skip.cuh"

namespace fcn_fast {
namespace {

ResampleGeometry geometry(int64_t N, int64_t C, int64_t in_h, int64_t in_w, int64_t out_h,
                          int64_t out_w, const Resampling& r) {
  return ResampleGeometry{N,         C,        in_h,      in_w,     out_h,  out_w,
                          r.scale_h, r.bias_h, r.scale_w, r.bias_w, r.clamp};
}

}  // namespace

at::Tensor resample_skip_cuda(const at::Tensor& x, const std::optional<at::Tensor>& skip,
                              const Resampling& resampling, int64_t out_h, int64_t out_w,
                              int64_t skip_y, int64_t skip_x) {
  check_resample_skip_args(x, skip, out_h, out_w, skip_y, skip_x);
  check_device(x, at::kCUDA, "x", "resample_skip_cuda");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({x.size(0), x.size(1), out_h, out_w},
                             x.options().memory_format(output_memory_format(x)));
  if (out.numel() == 0) return out;
  check_int32_sizes({x.size(0) * x.size(1), x.size(2), x.size(3), out_h, out_w * x.size(1)},
                    "resample_skip_cuda");
  const ResampleGeometry g =
      geometry(x.size(0), x.size(1), x.size(2), x.size(3), out_h, out_w, resampling);
  const DType dtype = cuda_dtype(x);
  at::Tensor workspace =
      at::empty({resample_skip_workspace_bytes(dtype, g, false)}, x.options().dtype(at::kByte));
  const Strides4 no_strides{0, 0, 0, 0};
  check_cuda(launch_resample_skip(
      dtype, g, x.const_data_ptr(), strides4(x),
      skip.has_value() ? skip->const_data_ptr() : nullptr,
      skip.has_value() ? strides4(*skip) : no_strides, skip.has_value() ? skip->size(2) : 0,
      skip.has_value() ? skip->size(3) : 0, skip_y, skip_x, out.mutable_data_ptr(), strides4(out),
      workspace.mutable_data_ptr(), force_index64(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor resample_skip_backward_cuda(const at::Tensor& grad_out, int64_t in_h, int64_t in_w,
                                       const Resampling& resampling) {
  check_resample_skip_backward_args(grad_out, in_h, in_w);
  check_device(grad_out, at::kCUDA, "grad_out", "resample_skip_backward_cuda");
  const c10::cuda::CUDAGuard guard(grad_out.device());
  at::Tensor grad_x =
      at::empty({grad_out.size(0), grad_out.size(1), in_h, in_w}, grad_out.options());
  if (grad_x.numel() == 0) return grad_x;
  if (grad_out.size(2) == 0 || grad_out.size(3) == 0) return grad_x.zero_();
  check_int32_sizes({grad_out.size(0) * grad_out.size(1), in_h, in_w, grad_out.size(2),
                     grad_out.size(3) * grad_out.size(1)},
                    "resample_skip_backward_cuda");
  const ResampleGeometry g = geometry(grad_out.size(0), grad_out.size(1), in_h, in_w,
                                      grad_out.size(2), grad_out.size(3), resampling);
  const DType dtype = cuda_dtype(grad_out);
  at::Tensor workspace = at::empty({resample_skip_workspace_bytes(dtype, g, true)},
                                   grad_out.options().dtype(at::kByte));
  check_cuda(launch_resample_skip_backward(dtype, g, grad_out.const_data_ptr(), strides4(grad_out),
                                           grad_x.mutable_data_ptr(), strides4(grad_x),
                                           workspace.mutable_data_ptr(), force_index64(),
                                           c10::cuda::getCurrentCUDAStream()));
  return grad_x;
}

}  // namespace fcn_fast
