#pragma once
// Launchers of the CUDA fused heads (resample_cross_entropy.cu): the resampler followed by
// the loss or by an argmax, without storing the full-resolution logits. Raw pointers, sizes,
// strides and a stream in, cudaError_t out; the ATen side is
// resample_cross_entropy_binding.cpp.
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "fcn_fast/kernel_types.h"

namespace fcn_fast {

// x (N, C, in_h, in_w) resampled to (out_h, out_w) as in resample_skip.cuh.
struct FusedGeometry {
  int64_t N, C, in_h, in_w, out_h, out_w;
  double scale_h, bias_h, scale_w, bias_w;
  bool clamp;
};

// Element strides of a 3-D (N, H, W) tensor: target, grad.
struct Strides3 {
  int64_t n, h, w;
};

enum class FusedPass { Forward, Backward, Argmax };

// Bytes of device workspace a pass needs: the tap tables (the backward's with the adjoint
// ranges), and for the forward one (loss, weight) partial per block.
int64_t resample_cross_entropy_workspace_bytes(DType dtype, const FusedGeometry& g,
                                               Strides4 x_strides, Strides3 target_strides,
                                               FusedPass pass, bool force_index64);

// loss: (N, out_h, out_w) contiguous for reduction none, else one element; lse (N, out_h,
// out_w) contiguous; weight_sum one element; all of the accumulation type. weight: (C,)
// contiguous of the accumulation type or nullptr. flags: two zeroed ints (flags[0]: a target
// outside [0, C) that is not ignore_index; flags[1]: the reduction's ticket).
cudaError_t launch_resample_cross_entropy(DType dtype, const FusedGeometry& g, const void* x,
                                          Strides4 x_strides, Labels labels,
                                          Strides3 target_strides, const void* weight, void* loss,
                                          void* lse, void* weight_sum, void* workspace, int* flags,
                                          int64_t ignore_index, int64_t reduction,
                                          double label_smoothing, bool force_index64,
                                          cudaStream_t stream);

// Whether the backward's blocks fit in shared memory: false for an upsampling by about 32 or
// more (FCN-32s), whose block would cover too many output pixels of one input pixel.
bool resample_cross_entropy_backward_fits(DType dtype, const FusedGeometry& g, Strides4 x_strides,
                                          double label_smoothing);

// grad_x (N, C, in_h, in_w) with grad_x_strides = the resampler's adjoint of d loss / d z.
// grad: accumulation type, (N, out_h, out_w) with grad_strides (0 allowed) for reduction
// none, else one element.
cudaError_t launch_resample_cross_entropy_backward(
    DType dtype, const FusedGeometry& g, const void* grad, Strides3 grad_strides, const void* x,
    Strides4 x_strides, Labels labels, Strides3 target_strides, const void* weight, const void* lse,
    const void* weight_sum, void* grad_x, Strides4 grad_x_strides, void* workspace,
    int64_t ignore_index, int64_t reduction, double label_smoothing, bool force_index64,
    cudaStream_t stream);

// labels (N, out_h, out_w) contiguous, int64 (labels_uint8 false) or uint8: z.argmax(1);
// confidence (N, out_h, out_w) float32 contiguous or nullptr: the winner's probability.
cudaError_t launch_resample_argmax(DType dtype, const FusedGeometry& g, const void* x,
                                   Strides4 x_strides, void* labels, bool labels_uint8,
                                   float* confidence, void* workspace, bool force_index64,
                                   cudaStream_t stream);

}  // namespace fcn_fast
