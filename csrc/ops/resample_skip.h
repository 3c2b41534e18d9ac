#pragma once
// The kernels of fcn_fast::resample_skip (docs/design.md, "The resampler"), one pair per
// backend, and the argument checks they share. The Python front doors (upsample_skip,
// interpolate_add) raise the user-facing errors; these checks guard direct calls of
// torch.ops.fcn_fast.* (a bad call gets an error, never a crash).
//
// out[n,c,Y,X] = sum of the 4 bilinear taps of x at (Y * scale_h + bias_h, X * scale_w + bias_w)
//                + skip[n,c,Y+skip_y,X+skip_x]
// grad_x = the adjoint of the resampling applied to grad_out, gathered per input element.
#include <ATen/ATen.h>

#include <optional>

#include "op_args.h"
#include "tensor_checks.h"

namespace fcn_fast {

// The public op fcn_fast::resample_skip (schema: resample_skip.cpp) as C++ calls it through
// the dispatcher. The output size is a SymInt, so that torch.export and torch.compile trace it
// with dynamic shapes (the Autograd kernel takes SymInts; the kernels below it, concrete ints).
using ResampleSkipSignature = at::Tensor(const at::Tensor& x, const std::optional<at::Tensor>& skip,
                                         double scale_h, double bias_h, double scale_w,
                                         double bias_w, bool clamp, c10::SymInt out_h,
                                         c10::SymInt out_w, int64_t skip_y, int64_t skip_x,
                                         c10::string_view backend);

at::Tensor resample_skip_cpu(const at::Tensor& x, const std::optional<at::Tensor>& skip,
                             const Resampling& resampling, int64_t out_h, int64_t out_w,
                             int64_t skip_y, int64_t skip_x);
at::Tensor resample_skip_backward_cpu(const at::Tensor& grad_out, int64_t in_h, int64_t in_w,
                                      const Resampling& resampling);
at::Tensor resample_skip_cuda(const at::Tensor& x, const std::optional<at::Tensor>& skip,
                              const Resampling& resampling, int64_t out_h, int64_t out_w,
                              int64_t skip_y, int64_t skip_x);
at::Tensor resample_skip_backward_cuda(const at::Tensor& grad_out, int64_t in_h, int64_t in_w,
                                       const Resampling& resampling);

inline void check_resample_skip_args(const at::Tensor& x, const std::optional<at::Tensor>& skip,
                                     int64_t out_h, int64_t out_w, int64_t skip_y, int64_t skip_x) {
  check_plane_tensor(x, "x");
  TORCH_CHECK(out_h >= 0 && out_w >= 0, "fcn_fast: negative output size");
  // An empty input plane has nothing to sample: only an empty output is defined.
  TORCH_CHECK((x.size(2) > 0 && x.size(3) > 0) || x.size(0) * x.size(1) * out_h * out_w == 0,
              "fcn_fast: x has an empty spatial axis");
  if (!skip.has_value()) return;
  check_plane_tensor(*skip, "skip");
  TORCH_CHECK(skip->scalar_type() == x.scalar_type(), "fcn_fast: skip dtype differs from x");
  TORCH_CHECK(skip->device() == x.device(), "fcn_fast: skip is on another device than x");
  TORCH_CHECK(skip->size(0) == x.size(0) && skip->size(1) == x.size(1) && skip_y >= 0 &&
                  skip_x >= 0 && skip_y + out_h <= skip->size(2) && skip_x + out_w <= skip->size(3),
              "fcn_fast: skip window out of range");
}

inline void check_resample_skip_backward_args(const at::Tensor& grad_out, int64_t in_h,
                                              int64_t in_w) {
  check_plane_tensor(grad_out, "grad_out");
  TORCH_CHECK(in_h > 0 && in_w > 0, "fcn_fast: input size must be positive");
}

}  // namespace fcn_fast
