#pragma once
// The CPU loss kernels' shared steps, on a chunk of P pixels whose logits are C rows
// x[c * ld + p] in the accumulation type (pixel_cross_entropy.cpp reads them from the logits,
// resample_cross_entropy.cpp computes them from the low-resolution input). The math per pixel
// is pixel_cross_entropy_math.h, the same the CUDA kernels run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../ops/tensor_checks.h"
#include "fcn_fast/pixel_cross_entropy_math.h"

namespace fcn_fast {

// m[p] = max_c x (0 for an all -inf pixel), logs[p] = log sum_c exp(x - m),
// swx[p] = sum_c w[c] (x - m) when smoothing. Vectorized (loss_rows.cpp).
void lse_rows(const float* x, int64_t ld, int64_t C, int64_t P, const float* w, bool smoothing,
              float* m, float* logs, float* swx);
void lse_rows(const double* x, int64_t ld, int64_t C, int64_t P, const double* w, bool smoothing,
              double* m, double* logs, double* swx);

// lse_rows that also keeps the exps it takes, for a gradient in the same pass:
// e[c * eld + p] = exp(x - s[p]) for a shift s[p] of its choosing (class 0's logit or the max)
// and inv_sum[p] = 1 / sum_c e (0 when every logit is -inf), so softmax = e * inv_sum.
void softmax_rows(const float* x, int64_t ld, int64_t C, int64_t P, const float* w, bool smoothing,
                  float* m, float* logs, float* swx, float* e, int64_t eld, float* inv_sum);
void softmax_rows(const double* x, int64_t ld, int64_t C, int64_t P, const double* w,
                  bool smoothing, double* m, double* logs, double* swx, double* e, int64_t eld,
                  double* inv_sum);

// g[c * gld + p] = exp(x - lse[p]) * a[p] - d[p] * w[c]; the target's -b is added after.
// lse must not be -inf (pass 0 instead: exp(-inf - 0) = 0, as shifted_logit).
void grad_rows(const float* x, int64_t ld, float* g, int64_t gld, int64_t C, int64_t P,
               const float* lse, const float* a, const float* d, const float* w, bool smoothing);
void grad_rows(const double* x, int64_t ld, double* g, int64_t gld, int64_t C, int64_t P,
               const double* lse, const double* a, const double* d, const double* w,
               bool smoothing);
// An output row's gradient from softmax_rows' exps (a[p] already times inv_sum[p]: no exp
// taken): class c's is g = e[c * ld + p] * a[p] - d[p] * w[c] - (counted[p] == c ? b[p] : 0)
// (counted: the target, -1 for a pixel not counted), added into the two input rows its taps
// read, with weights w0 and w1.
template <typename T>
struct ExpGradRow {
  const T* e;
  int64_t ld;
  const T *a, *b, *d;
  const int32_t* counted;
  T w0, w1;
};

// Class c's gradient rows of n_rows (1 or 2) output rows with the same taps, added into v0
// and v1 (distinct rows; either may be null: a row outside the band) in one loop: g is never
// stored, and the target's term is taken in the loop, not scattered afterwards into class
// rows far apart (which cost as much as the rest of the loop: a cache miss per pixel).
void add_grad_from_exps(const ExpGradRow<float>* rows, int64_t n_rows, int32_t c, float wc,
                        bool smoothing, float* v0, float* v1, int64_t P);
void add_grad_from_exps(const ExpGradRow<double>* rows, int64_t n_rows, int32_t c, double wc,
                        bool smoothing, double* v0, double* v1, int64_t P);

// softmax_rows' exps e[c * ld + p] made into the gradient in place (a[p] already times
// inv_sum[p]): g = e * a[p] - d[p] * w[c] - (counted[p] == c ? b[p] : 0), class c's of
// ExpGradRow (pixel_cross_entropy's one-pass form).
void grad_from_exps_rows(float* e, int64_t ld, int64_t C, int64_t P, const float* a, const float* b,
                         const float* d, const int32_t* counted, const float* w, bool smoothing);
void grad_from_exps_rows(double* e, int64_t ld, int64_t C, int64_t P, const double* a,
                         const double* b, const double* d, const int32_t* counted, const double* w,
                         bool smoothing);

// Calls f(scalar_t{}, label_t{}) with the logits' element type (any float type) and the target's
// label type (int64, int32 or uint8): the loss kernels are templates on both, so that each reads
// the labels as stored.
template <typename F>
void dispatch_loss_types(const at::Tensor& logits, const at::Tensor& target, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "fcn_fast loss",
      [&] { dispatch_label(label_type(target), [&](auto label) { f(scalar_t{}, label); }); });
}

// Pixels per chunk of logits packed into a buffer: a [C][P] fp32 block of about 32 KiB (stays in
// L1 from lse_rows to the per-pixel steps), a multiple of 16 for the vector loops. Like
// kInPlaceChunkPixels it does not depend on the thread count, so neither do the chunking and
// every sum.
inline int64_t chunk_pixels(int64_t C) {
  const int64_t p = (8192 / std::max<int64_t>(C, 1)) / 16 * 16;
  return std::min<int64_t>(std::max<int64_t>(p, 16), 1024);
}

// Pixels per chunk of logits read in place (rows of contiguous pixels, C of them S apart): a 4 KiB
// page of each class row. Short runs of many rows far apart defeat the prefetchers and the TLB:
// at the 32 KiB block's 48 pixels, C = 150 (N4 512², 2 threads) took 465 ms forward+backward,
// 290 ms at 1024 pixels; C = 21 gains about 3%.
constexpr int64_t kInPlaceChunkPixels = 1024;

// Everything per pixel that is not a logit: class weights (w == nullptr: all 1) and their sum,
// label smoothing, the target rule.
template <typename acc_t>
struct LossConstants {
  std::vector<acc_t> weights;
  const acc_t* w;
  acc_t wtotal, eps, eps_over_c;
  int64_t C, ignore_index;
  bool smoothing;

  LossConstants(const std::optional<at::Tensor>& weight, int64_t C, int64_t ignore_index,
                double label_smoothing)
      : C(C), ignore_index(ignore_index), smoothing(label_smoothing > 0.0) {
    if (weight.has_value()) {
      const at::Tensor wc = weight->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      const acc_t* values = wc.template const_data_ptr<acc_t>();
      weights.assign(values, values + C);
    }
    w = weight.has_value() ? weights.data() : nullptr;
    wtotal = static_cast<acc_t>(C);
    if (w != nullptr) {
      wtotal = acc_t(0);
      for (acc_t v : weights) wtotal += v;
    }
    eps = static_cast<acc_t>(label_smoothing);
    eps_over_c = eps / static_cast<acc_t>(C);
  }

  // t in [0, C) and not ignore_index; & rather than && so that loops can select on it
  // instead of branching (an ignored pixel every ~20 would mispredict).
  bool valid(int64_t t) const {
    return (static_cast<uint64_t>(t) < static_cast<uint64_t>(C)) & (t != ignore_index);
  }
  acc_t weight_of(int64_t t) const { return w == nullptr ? acc_t(1) : w[t]; }
};

// Loss and weight sums of one chunk, kept in double and added in chunk order; the first
// target outside [0, C) that is not ignore_index.
struct ChunkSums {
  double loss = 0.0, weight = 0.0;
  bool bad = false;
  int64_t bad_value = 0;
};

// A chunk's share of weight_sum, added as chunk_losses adds it (so that the chunks' shares,
// added in chunk order, are the same number as finish_loss's).
template <typename acc_t, typename label_t>
double chunk_weight(const label_t* target, int64_t target_stride, int64_t P,
                    const LossConstants<acc_t>& k) {
  double sum = 0.0;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t t = target[p * target_stride];
    if (k.valid(t)) sum += static_cast<double>(k.weight_of(t));
  }
  return sum;
}

// The per-pixel step after lse_rows: lse_out[p] = m + logs, loss_out[p] (if not null) the
// pixel's loss (0 when ignored); target[p * target_stride].
template <typename acc_t, typename label_t>
ChunkSums chunk_losses(const acc_t* rows, int64_t ld, int64_t P, const acc_t* m, const acc_t* logs,
                       const acc_t* swx, const label_t* target, int64_t target_stride,
                       const LossConstants<acc_t>& k, acc_t* lse_out, acc_t* loss_out) {
  ChunkSums sums;
  for (int64_t p = 0; p < P; ++p) {
    lse_out[p] = m[p] + logs[p];
    const int64_t t = target[p * target_stride];
    acc_t value = acc_t(0);
    if (k.valid(t)) {
      const acc_t wt = k.weight_of(t);
      const acc_t xt_m = shifted_logit(rows[t * ld + p], m[p]);
      value = pixel_loss(logs[p], xt_m, wt, k.smoothing ? swx[p] : acc_t(0), k.wtotal, k.eps,
                         k.eps_over_c);
      sums.loss += static_cast<double>(value);
      sums.weight += static_cast<double>(wt);
    } else if (t != k.ignore_index && !sums.bad) {
      sums.bad = true;
      sums.bad_value = t;
    }
    if (loss_out != nullptr) loss_out[p] = value;
  }
  return sums;
}

// The gradient's per-pixel coefficients (GradCoef: a, b, d; zero for ignored pixels) from the
// upstream gradient: scale[p * scale_stride] for reduction none, else one scalar already
// divided by the weight sum for mean (scale_stride 0). For add_grad_from_exps, given
// counted_class: counted_class[p] the target (-1 if not counted), and a[p] also times
// a_times[p] if given, in the same loop.
template <typename acc_t, typename label_t>
void chunk_grad_coefficients(int64_t P, const label_t* target, int64_t target_stride,
                             const acc_t* scale, int64_t scale_stride,
                             const LossConstants<acc_t>& k, acc_t* a, acc_t* b, acc_t* d,
                             const acc_t* a_times = nullptr, int32_t* counted_class = nullptr) {
  // Every pixel takes the same path, one not counted with class 0 and its coefficients
  // dropped by the selects: a branch on the target would mispredict at each ignored pixel.
  auto step = [&](int64_t p, acc_t a_scale) {
    const int64_t t = target[p * target_stride];
    const bool counted = k.valid(t);
    const GradCoef<acc_t> coef = grad_coef(scale[p * scale_stride], k.weight_of(counted ? t : 0),
                                           k.wtotal, k.eps, k.eps_over_c);
    a[p] = counted ? coef.a * a_scale : acc_t(0);
    b[p] = counted ? coef.b : acc_t(0);
    d[p] = counted ? coef.d : acc_t(0);
    return counted ? static_cast<int32_t>(t) : int32_t(-1);
  };
  if (counted_class == nullptr) {
    for (int64_t p = 0; p < P; ++p) step(p, acc_t(1));
  } else {
    for (int64_t p = 0; p < P; ++p) {
      counted_class[p] = step(p, a_times == nullptr ? acc_t(1) : a_times[p]);
    }
  }
}

// lse for grad_rows: 0 instead of -inf (a pixel whose logits are all -inf).
template <typename acc_t>
void finite_lse(const acc_t* lse, int64_t P, acc_t* out) {
  for (int64_t p = 0; p < P; ++p) {
    out[p] = lse[p] == -static_cast<acc_t>(HUGE_VAL) ? acc_t(0) : lse[p];
  }
}

[[noreturn]] inline void raise_bad_target(const char* op, int64_t value, int64_t C,
                                          int64_t ignore_index) {
  TORCH_CHECK_VALUE(false, op, ": target contains ", value, ", outside [0, C) = [0, ", C,
                    ") and not ignore_index (", ignore_index, ")");
  abort();  // unreachable
}

// Adds the chunks' sums in chunk order (deterministic), raises for a bad target, and stores
// weight_sum and the mean or sum loss (0-dim accumulation-type tensors; reduction none keeps
// the per-pixel loss already written).
template <typename acc_t>
void finish_loss(const char* op, const std::vector<ChunkSums>& chunks, int64_t reduction,
                 const LossConstants<acc_t>& k, at::Tensor& loss, at::Tensor& weight_sum) {
  double total_loss = 0.0, total_weight = 0.0;
  for (const ChunkSums& s : chunks) {
    if (s.bad) raise_bad_target(op, s.bad_value, k.C, k.ignore_index);
    total_loss += s.loss;
    total_weight += s.weight;
  }
  // Plain stores, not fill_: at tiny sizes each dispatcher call costs more than the loss.
  *weight_sum.template mutable_data_ptr<acc_t>() = static_cast<acc_t>(total_weight);
  if (reduction == kReductionMean) {
    // 0 / 0 = NaN when every pixel is ignored, as PyTorch.
    *loss.template mutable_data_ptr<acc_t>() = static_cast<acc_t>(total_loss / total_weight);
  } else if (reduction == kReductionSum) {
    *loss.template mutable_data_ptr<acc_t>() = static_cast<acc_t>(total_loss);
  }
}

// The upstream gradient as acc_t with its strides: per pixel for reduction none, else the
// scalar (divided by the weight sum for mean) with stride 0.
template <typename acc_t>
struct UpstreamGrad {
  at::Tensor values;  // keeps the converted tensor alive
  const acc_t* data;
  acc_t scalar;
  bool per_pixel;

  UpstreamGrad(const at::Tensor& grad, const at::Tensor& weight_sum, int64_t reduction)
      : per_pixel(reduction == kReductionNone) {
    values = grad.to(c10::CppTypeToScalarType<acc_t>::value);  // keeps strides (0 too)
    data = values.template const_data_ptr<acc_t>();
    scalar = per_pixel ? acc_t(0) : data[0];
    if (reduction == kReductionMean) {
      const at::Tensor divisor = weight_sum.to(c10::CppTypeToScalarType<acc_t>::value);
      scalar /= divisor.template const_data_ptr<acc_t>()[0];
    }
  }
};

}  // namespace fcn_fast
