#pragma once
// Per-pixel math of the fused log-softmax + NLL loss (docs/design.md 2.3), shared by
// the CPU and CUDA kernels. No ATen, no CUDA runtime: plain arithmetic.
//
// For one pixel with logits x[c], target t, class weights w[c] (all 1 without a
// weight), label smoothing eps and C classes, F.cross_entropy computes
//   loss = (1 - eps) * w[t] * (lse - x[t]) + eps / C * sum_c w[c] * (lse - x[c])
// with lse = log(sum_c exp(x[c])). We keep lse as m + logs, m = max_c x[c],
// logs = log(sum_c exp(x[c] - m)), and the smoothing sum relative to m,
// swx = sum_c w[c] * (x[c] - m) <= 0: all its terms have one sign, so
// sum_c w[c] * (lse - x[c]) = W * logs - swx (W = sum_c w[c]) has no cancellation.
#include <math.h>
#include <stdint.h>

#include "fcn_fast/macros.h"

namespace fcn_fast {

// exp/log/-inf that work in host and device code alike (std::numeric_limits
// would need nvcc's --expt-relaxed-constexpr).
FCN_HD float fcn_exp(float x) { return expf(x); }
FCN_HD double fcn_exp(double x) { return exp(x); }
FCN_HD float fcn_log(float x) { return logf(x); }
FCN_HD double fcn_log(double x) { return log(x); }
template <typename T>
FCN_HD T neg_inf() {
  return -static_cast<T>(HUGE_VAL);
}

// x - m for the softmax, except that a -inf logit stays -inf when m is -inf too
// (every logit so far -inf): it then adds exp(-inf) = 0 instead of NaN, so -inf
// logits on non-target classes keep the loss finite, as in PyTorch.
template <typename T>
FCN_HD T shifted_logit(T x, T m) {
  return x == neg_inf<T>() ? x : x - m;
}

// Running (online) softmax statistics of one pixel over the classes seen so far.
template <typename T>
struct OnlineLse {
  T m = neg_inf<T>();  // max so far; never NaN
  T s = T(0);          // sum exp(x - m)
  T swx = T(0);        // sum w * (x - m), only with smoothing
  T wsum = T(0);       // sum w so far, only with smoothing

  // Adds one logit x of weight w. smoothing=false skips swx/wsum.
  FCN_HD void add(T x, T w, bool smoothing) {
    if (x > m) {  // a new max rescales; false for NaN x, which then poisons s below
      s *= fcn_exp(m - x);
      if (smoothing && wsum != T(0)) swx += wsum * (m - x);
      m = x;
    }
    const T d = shifted_logit(x, m);
    s += fcn_exp(d);
    if (smoothing) {
      swx += w * d;
      wsum += w;
    }
  }
};

// Per-pixel loss from logs = log(sum exp(x - m)), xt_m = x[t] - m, the target
// weight wt, swx = sum_c w[c] (x[c] - m), wtotal = sum_c w[c]; PyTorch's formula
// (1 - eps) * wt * nll + eps / C * smooth, the smoothing term only when eps > 0.
template <typename T>
FCN_HD T pixel_loss(T logs, T xt_m, T wt, T swx, T wtotal, T eps, T eps_over_c) {
  const T nll = logs - xt_m;  // (lse - x[t]) as log_softmax computes it: no large lse
  T loss = (T(1) - eps) * (wt * nll);
  if (eps > T(0)) loss += eps_over_c * (wtotal * logs - swx);
  return loss;
}

// Backward coefficients of one pixel: d loss / d x[c] = scale * (p[c] * a - [c == t] * b
// - eps / C * w[c]) with p = softmax; `scale` is grad_output (divided by the weight
// sum for mean). a = scale * ((1 - eps) w[t] + eps / C * W), b = scale * (1 - eps) w[t],
// d = scale * eps / C (times w[c] per class).
template <typename T>
struct GradCoef {
  T a, b, d;
};

template <typename T>
FCN_HD GradCoef<T> grad_coef(T scale, T wt, T wtotal, T eps, T eps_over_c) {
  GradCoef<T> g;
  g.b = scale * ((T(1) - eps) * wt);
  g.a = g.b + scale * (eps_over_c * wtotal);
  g.d = scale * eps_over_c;
  return g;
}

// One gradient element from p = exp(x[c] - lse).
template <typename T>
FCN_HD T grad_element(T p, GradCoef<T> g, T wc, bool is_target) {
  T v = p * g.a - g.d * wc;
  return is_target ? v - g.b : v;
}

// Reduction codes shared by the schemas and the kernels (torch's Reduction enum).
enum Reduction : int64_t { kReductionNone = 0, kReductionMean = 1, kReductionSum = 2 };

}  // namespace fcn_fast
