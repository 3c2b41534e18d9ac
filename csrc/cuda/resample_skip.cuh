#pragma once
// Launchers of the resample-skip CUDA kernels (resample_skip.cu). Raw pointers, sizes and
// element strides in, cudaError_t out: the ATen side lives in resample_skip_binding.cpp.
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "fcn_fast/kernel_types.h"

namespace fcn_fast {

struct ResampleGeometry {
  int64_t N, C, in_h, in_w, out_h, out_w;
  double scale_h, bias_h, scale_w, bias_w;
  bool clamp;
};

// Bytes of device workspace the forward (backward = false) or the backward needs: the
// per-row and per-column tap tables (and, for the backward, the adjoint ranges).
int64_t resample_skip_workspace_bytes(DType dtype, const ResampleGeometry& g, bool backward);

// out[n,c,Y,X] = 4-tap resample of x at (Y, X) + skip[n,c,Y+skip_y,X+skip_x] (skip may be
// null; skip_h, skip_w: its spatial size). out: (N, C, out_h, out_w), any strides (the
// binding allocates it in x's output memory format). force_index64 takes the 64-bit index
// path even when every offset fits 32 bits (to test that path on small tensors).
cudaError_t launch_resample_skip(DType dtype, const ResampleGeometry& g, const void* x,
                                 Strides4 x_strides, const void* skip, Strides4 skip_strides,
                                 int64_t skip_h, int64_t skip_w, int64_t skip_y, int64_t skip_x,
                                 void* out, Strides4 out_strides, void* workspace,
                                 bool force_index64, cudaStream_t stream);

// grad_x (N, C, in_h, in_w) with grad_x_strides = adjoint of the resampler applied to
// grad_out (N, C, out_h, out_w), gathered per input element in a fixed order.
cudaError_t launch_resample_skip_backward(DType dtype, const ResampleGeometry& g,
                                          const void* grad_out, Strides4 grad_out_strides,
                                          void* grad_x, Strides4 grad_x_strides, void* workspace,
                                          bool force_index64, cudaStream_t stream);

}  // namespace fcn_fast
