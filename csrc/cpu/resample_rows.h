#pragma once
// Row-wise pieces of the CPU resampler (resample_skip_math.h's taps, precomputed per column),
// shared by resample_skip.cpp and resample_cross_entropy.cpp.
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE
#include <stdint.h>

#include <algorithm>
#include <vector>

#include "fcn_fast/resample_skip_math.h"

namespace fcn_fast {

// at::parallel_for's grain for items of `work_per_item` elements each: a task gets at least
// at::internal::GRAIN_SIZE (32K) elements, as ATen's own kernels, because waking a second
// thread costs more than a smaller task saves; a tiny call runs inline instead of forking
// OpenMP threads.
inline int64_t parallel_grain(int64_t work_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

// The vectorized row loops (resample_rows.cpp), n elements each:
// z[X] = wa * a[X] + wb * b[X], the vertical blend of two interpolated input rows;
void blend_row(const float* a, float wa, const float* b, float wb, float* z, int64_t n);
void blend_row(const double* a, double wa, const double* b, double wb, double* z, int64_t n);
// torch.argmax's update by class c's row z: where z[X] beats top[X] (is greater, or is a NaN
// where top is not: a NaN beats every number, the first one wins), top[X] = z[X], best[X] = c.
void argmax_row(const float* z, int32_t c, float* top, int32_t* best, int64_t n);
void argmax_row(const double* z, int32_t c, double* top, int32_t* best, int64_t n);

// Taps of every output column, shared by all rows. Indices point into an input
// row padded by one element on each side (see interpolate_row), so every tap is a valid
// read: H[X] = w0[X] * padded[col[X]] + w1[X] * padded[col[X] + 1]. Consecutive columns
// that read the same two inputs form a run (about `factor` long when upsampling); run r
// ends before column run_end[r].
template <typename acc_t>
struct ColumnTaps {
  std::vector<int64_t> col, run_end;
  std::vector<acc_t> w0, w1;

  ColumnTaps(int64_t out_w, int64_t in_w, double scale, double bias, bool clamp)
      : col(out_w), w0(out_w), w1(out_w) {
    for (int64_t X = 0; X < out_w; ++X) {
      const Tap<acc_t> tap = resample_tap<acc_t>(X, scale, bias, in_w, clamp);
      col[X] = tap.i0 + 1;  // i1 is i0 + 1, or i0 at the clamp edge: the right pad repeats it
      w0[X] = tap.w0;
      w1[X] = tap.w1;
      if (X > 0 && col[X] != col[X - 1]) run_end.push_back(X);
    }
    if (out_w > 0) run_end.push_back(out_w);
  }
};

// padded[0] and padded[in_w + 1] stand for inputs -1 and in_w: zero under the
// zero boundary (those taps have weight 0, and 0 * 0 stays 0 where 0 * inf would
// not), the edge value under the clamp boundary (where i1 == i0 == in_w - 1).
template <typename scalar_t, typename acc_t>
void interpolate_row(const scalar_t* src, int64_t in_w, bool clamp, const ColumnTaps<acc_t>& taps,
                     acc_t* padded, acc_t* out) {
  for (int64_t j = 0; j < in_w; ++j) padded[j + 1] = static_cast<acc_t>(src[j]);
  padded[0] = clamp ? padded[1] : acc_t(0);
  padded[in_w + 1] = clamp ? padded[in_w] : acc_t(0);
  // Run by run, the run's two inputs held in registers: the inner loop reads contiguous
  // weights and vectorizes, where a gather of the two inputs per column did not
  // (upsample_argmax N4 C21 70² ×8 → 500², 2 threads: 8.5-9.0 -> 7.4-7.5 ms; built per ISA
  // level as the blends, no faster). Same arithmetic per column: the same bits.
  int64_t X = 0;
  for (const int64_t end : taps.run_end) {
    const acc_t p0 = padded[taps.col[X]], p1 = padded[taps.col[X] + 1];
    for (; X < end; ++X) out[X] = taps.w0[X] * p0 + taps.w1[X] * p1;
  }
}

// The horizontal adjoint as a gather: input column j is read by output
// columns first[j] + k, k < count[j], with weight weights[j * window + k].
template <typename acc_t>
struct AdjointColumns {
  int64_t window;
  std::vector<int64_t> first, count;
  std::vector<acc_t> weights;

  AdjointColumns(int64_t in_w, int64_t out_w, double scale, double bias, bool clamp)
      : window(resample_window(scale, out_w)),
        first(in_w),
        count(in_w),
        weights(in_w * window, acc_t(0)) {
    for (int64_t j = 0; j < in_w; ++j) {
      first[j] = std::min(resample_first_output(j, scale, bias), out_w);
      count[j] = std::min(window, out_w - first[j]);
      for (int64_t k = 0; k < count[j]; ++k) {
        weights[j * window + k] = resample_weight<acc_t>(first[j] + k, j, scale, bias, in_w, clamp);
      }
    }
  }

  // Input column j's gradient from the vertically reduced output row v. Four partial sums
  // (combined in a fixed order) instead of one dependent chain of `count` additions.
  acc_t gather(int64_t j, const acc_t* v) const {
    const acc_t* w = weights.data() + j * window;
    const acc_t* vj = v + first[j];
    const int64_t n = count[j];
    acc_t s0 = acc_t(0), s1 = acc_t(0), s2 = acc_t(0), s3 = acc_t(0);
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
      s0 += w[k] * vj[k];
      s1 += w[k + 1] * vj[k + 1];
      s2 += w[k + 2] * vj[k + 2];
      s3 += w[k + 3] * vj[k + 3];
    }
    for (; k < n; ++k) s0 += w[k] * vj[k];
    return (s0 + s1) + (s2 + s3);
  }
};

}  // namespace fcn_fast
