// Schemas of the fused per-pixel log-softmax + NLL kernels (DESIGN.md 2.4). The
// public, autograd-aware op fcn_fast::pixel_cross_entropy is defined in Python
// (fcn_fast/ops/pixel_cross_entropy.py) and calls these for the cpu/cuda backends.
//
// logits (N, C, S) with any strides, target (N, S) int64, weight (C,) or None;
// reduction: 0 none, 1 mean, 2 sum.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fcn_fast, m) {
  // -> (loss, lse, weight_sum): loss is (N, S) in the logits dtype for none, else 0-dim in
  // the accumulation dtype, float32 (float64 for float64 logits), rounded once by the
  // caller to the dtype PyTorch would return; lse (N, S, accumulation dtype) is all
  // backward keeps; weight_sum (0-dim, accumulation dtype) = sum of w[target] over
  // non-ignored pixels, the mean's divisor. weight (C,) is in the accumulation dtype.
  m.def(
      "pixel_cross_entropy_fwd(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "int reduction, float label_smoothing) -> (Tensor, Tensor, Tensor)");
  // grad_logits = grad * (softmax - onehot) with weight and smoothing, recomputed from lse.
  // grad is (N, S) (any strides, stride 0 allowed) for none, else 0-dim.
  m.def(
      "pixel_cross_entropy_bwd(Tensor grad, Tensor logits, Tensor target, Tensor? weight, "
      "Tensor lse, Tensor weight_sum, int ignore_index, int reduction, float label_smoothing) "
      "-> Tensor");
}
