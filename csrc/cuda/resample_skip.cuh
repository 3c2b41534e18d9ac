#pragma once
// Launchers of the resample-skip CUDA kernels (resample_skip.cu). Raw pointers,
// sizes and element strides in, cudaError_t out: the ATen side lives in
// resample_skip_binding.cpp.
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "fcn_fast/kernel_types.h"

namespace fcn_fast {

struct ResampleGeometry {
  int64_t N, C, in_h, in_w, out_h, out_w;
  double scale_h, bias_h, scale_w, bias_w;
  bool clamp;
};

// out[n,c,Y,X] = 4-tap resample of x at (Y, X) + skip[n,c,Y+skip_y,X+skip_x] (skip may be null).
cudaError_t launch_resample_skip(DType dtype, const ResampleGeometry& g, const void* x,
                                 Strides4 x_strides, const void* skip, Strides4 skip_strides,
                                 int64_t skip_y, int64_t skip_x, void* out, Strides4 out_strides,
                                 cudaStream_t stream);

// Elements of the accumulation type (float; double for Float64) the backward needs
// as workspace: the vertically reduced grad_out, (N, C, in_h, out_w).
int64_t resample_skip_backward_workspace(const ResampleGeometry& g);

// grad_x (contiguous N, C, in_h, in_w) = adjoint of the resampler applied to grad_out.
cudaError_t launch_resample_skip_backward(DType dtype, const ResampleGeometry& g,
                                          const void* grad_out, Strides4 grad_out_strides,
                                          void* grad_x, void* workspace, cudaStream_t stream);

}  // namespace fcn_fast
