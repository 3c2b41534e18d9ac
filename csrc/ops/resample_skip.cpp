// Schemas of the resample-skip kernels (DESIGN.md 2.1-2.3). The public,
// autograd-aware op fcn_fast::resample_skip is defined in Python
// (fcn_fast/ops/resample_skip.py) and calls these for the cpu/cuda backends.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fcn_fast, m) {
  // out[n,c,Y,X] = sum of the 4 taps of x at (Y, X) + skip[n,c,Y+skip_y,X+skip_x]
  m.def(
      "resample_skip_fwd(Tensor x, Tensor? skip, float scale_h, float bias_h, float scale_w, "
      "float bias_w, bool clamp, int out_h, int out_w, int skip_y, int skip_x) -> Tensor");
  // grad_x[n,c,i,j] = sum over (Y, X) of weight(Y,i) weight(X,j) grad_out[n,c,Y,X], a gather.
  m.def(
      "resample_skip_bwd(Tensor grad_out, int in_h, int in_w, float scale_h, float bias_h, "
      "float scale_w, float bias_w, bool clamp) -> Tensor");
}
