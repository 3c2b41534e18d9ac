#pragma once
// Per-element math of the 2-tap bilinear resampler (docs/design.md 2.1), shared by
// the CPU and CUDA kernels. No ATen, no CUDA runtime: plain arithmetic.
//
// Along one axis, output index Y samples the input at s = Y * scale + bias,
// i = floor(s), lambda = s - i:  value(Y) = (1 - lambda) x[i] + lambda x[i + 1].
// Index math is done in double whatever the data type: a float s loses ~1e-5
// of lambda at s ~ 200 (Cityscapes widths), which would show in fp32 results.
#include <stdint.h>

#include <cmath>

#include "fcn_fast/macros.h"

namespace fcn_fast {

template <typename acc_t>
struct Tap {
  int64_t i0;  // first tap; -1 or in_size when outside the input (zero boundary)
  int64_t i1;  // second tap; may equal i0 (clamp boundary at the last index)
  acc_t w0;    // weight of i0; 0 when i0 is outside the input
  acc_t w1;    // weight of i1; 0 when i1 is outside the input
};

// Taps of output index `out_index` on an input axis of `in_size` elements.
// clamp = false: taps outside [0, in_size) contribute 0 (FCN deconvolution).
// clamp = true:  F.interpolate(mode="bilinear") rules: negative s clamps to 0,
//                i0 to in_size - 1, and i1 = min(i0 + 1, in_size - 1).
template <typename acc_t>
FCN_HD Tap<acc_t> resample_tap(int64_t out_index, double scale, double bias, int64_t in_size,
                               bool clamp) {
  double s = static_cast<double>(out_index) * scale + bias;
  Tap<acc_t> tap;
  if (clamp) {
    s = s < 0.0 ? 0.0 : s;
    int64_t i0 = static_cast<int64_t>(s);
    i0 = i0 < in_size - 1 ? i0 : in_size - 1;
    double lambda = s - static_cast<double>(i0);
    lambda = lambda < 0.0 ? 0.0 : (lambda > 1.0 ? 1.0 : lambda);
    tap.i0 = i0;
    tap.i1 = i0 < in_size - 1 ? i0 + 1 : i0;
    tap.w0 = static_cast<acc_t>(1.0 - lambda);
    tap.w1 = static_cast<acc_t>(lambda);
    return tap;
  }
  double base = floor(s);
  double lambda = s - base;
  tap.i0 = static_cast<int64_t>(base);
  tap.i1 = tap.i0 + 1;
  tap.w0 = (tap.i0 >= 0 && tap.i0 < in_size) ? static_cast<acc_t>(1.0 - lambda) : acc_t(0);
  tap.w1 = (tap.i1 >= 0 && tap.i1 < in_size) ? static_cast<acc_t>(lambda) : acc_t(0);
  return tap;
}

// Weight with which output `out_index` reads input `in_index`. Built from
// resample_tap itself, so the backward gather is exactly the adjoint of the
// forward as computed (including clamp-boundary taps that coincide).
template <typename acc_t>
FCN_HD acc_t resample_weight(int64_t out_index, int64_t in_index, double scale, double bias,
                             int64_t in_size, bool clamp) {
  Tap<acc_t> tap = resample_tap<acc_t>(out_index, scale, bias, in_size, clamp);
  acc_t w = acc_t(0);
  if (tap.i0 == in_index) w += tap.w0;
  if (tap.i1 == in_index) w += tap.w1;
  return w;
}

// The outputs that read input `in_index` all lie in
// [resample_first_output(...), resample_first_output(...) + resample_window(...)).
// An interior input is read by outputs with s in (in_index - 1, in_index + 1),
// at most 2 / scale + 1 of them; boundary inputs under the clamp rule also
// collect the clamped outputs, at most 1.5 / scale + 1. The first output is
// computed one early as a guard against rounding, hence the + 4.
FCN_HD int64_t resample_window(double scale, int64_t out_size) {
  if (!(scale > 0.0)) return out_size;  // align_corners with one output: scale 0
  double w = floor(2.0 / scale) + 4.0;
  return w < static_cast<double>(out_size) ? static_cast<int64_t>(w) : out_size;
}

FCN_HD int64_t resample_first_output(int64_t in_index, double scale, double bias) {
  if (!(scale > 0.0)) return 0;
  double y = ceil((static_cast<double>(in_index) - 1.0 - bias) / scale) - 1.0;
  return y > 0.0 ? static_cast<int64_t>(y) : 0;
}

}  // namespace fcn_fast
