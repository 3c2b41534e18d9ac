#pragma once
// Argument groups the op routers (csrc/ops/*.cpp) pass to every backend's kernels.
#include <stdint.h>

namespace fcn_fast {

// The resampler (docs/design.md, "The resampler"): output index Y samples the input at
// s = Y * scale + bias along each axis, 2 taps each; clamp picks F.interpolate's boundary
// rule, else taps outside the input count as zero (FCN's deconvolution).
struct Resampling {
  double scale_h, bias_h, scale_w, bias_w;
  bool clamp;
};

// F.cross_entropy's options; reduction: 0 none, 1 mean, 2 sum.
struct CrossEntropyOptions {
  int64_t ignore_index;
  int64_t reduction;
  double label_smoothing;
};

}  // namespace fcn_fast
