#pragma once
// Launchers of the CUDA pixel_cross_entropy kernels (docs/design.md 2.3): raw pointers, sizes,
// strides and a stream in, cudaError_t out. No ATen here; the ATen side is
// pixel_cross_entropy_binding.cpp.
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "fcn_fast/kernel_types.h"

namespace fcn_fast {

// logits (N, C, S) with strides (sN, sC, sS); target (N, S) with (tN, tS), any LabelType.
struct LossGeometry {
  int64_t N, C, S;
  int64_t sN, sC, sS;
  int64_t tN, tS;
};

// Bytes of device workspace of the forward: one (loss, weight) partial per block, of the
// accumulation type.
int64_t pixel_cross_entropy_workspace_bytes(DType dtype, const LossGeometry& g, bool force_index64);

// loss: (N, S) contiguous for reduction 0 (none), else one element; lse: (N, S) contiguous;
// weight_sum: one element; all of the accumulation type (float; double for Float64).
// weight: (C,) contiguous of the accumulation type, or nullptr. flags: two zeroed ints,
// flags[0] set to 1 when a target is outside [0, C) and not ignore_index, flags[1] the
// ticket of the last-block reduction. force_index64: take the 64-bit index path anyway.
cudaError_t launch_pixel_cross_entropy(DType dtype, const void* logits, Labels labels,
                                       const void* weight, void* loss, void* lse, void* weight_sum,
                                       void* workspace, int* flags, LossGeometry g,
                                       int64_t ignore_index, int64_t reduction,
                                       double label_smoothing, bool force_index64,
                                       cudaStream_t stream);

// grad: accumulation type; (N, S) with strides (gN, gS) (0 allowed) for none, else one
// element. grad_logits (N, C, S) with strides (oN, oC, oS).
cudaError_t launch_pixel_cross_entropy_backward(
    DType dtype, const void* grad, int64_t gN, int64_t gS, const void* logits, Labels labels,
    const void* weight, const void* lse, const void* weight_sum, void* grad_logits, int64_t oN,
    int64_t oC, int64_t oS, LossGeometry g, int64_t ignore_index, int64_t reduction,
    double label_smoothing, bool force_index64, cudaStream_t stream);

}  // namespace fcn_fast
