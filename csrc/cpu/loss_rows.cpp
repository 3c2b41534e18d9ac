// The vectorized loops of the CPU loss kernels (loss_rows.h), shared by pixel_cross_entropy.cpp
// and resample_cross_entropy.cpp.
#include "loss_rows.h"

#include <cmath>
#include <type_traits>

#include "multiversion.h"
#include "vec_math.h"

namespace fcn_fast {
namespace {

using vec_math::exp_any;
using vec_math::log_any;

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

// ---- chunk kernels: rows x[c * ld + p], c < C, p < P ----

// lse_rows in one pass over the logits, shifted by class 0's logit x0 instead of the max:
// sum_c exp(x - x0) and the max are gathered together, so the logits stream from memory
// under the exps (the two-pass form below waits for memory in its max pass). The sums are
// then rescaled to the max: logs = log(sum * exp(x0 - m)), swx += (x0 - m) sum_c w[c], the
// two-pass outputs up to rounding. Returns false, with the outputs unspecified, if a pixel
// needs the two-pass form: a logit more than 80 above x0 (exp(x - x0) would overflow, or
// exp(x0 - m) underflow), a sum that overflowed, or a NaN or infinite x0 or max.
//
// With kKeepExps, also e[c * eld + p] = exp(x - x0) and inv_sum[p] = 1 / sum_c e, so that
// the softmax is e * inv_sum without taking the exps again (the fused heads' one pass).
template <bool kKeepExps, typename T>
FCN_ALWAYS_INLINE bool lse_rows_one_pass(const T* x, int64_t ld, int64_t C, int64_t P, const T* w,
                                         bool smoothing, T* m, T* logs, T* swx, T* e, int64_t eld,
                                         T* inv_sum) {
  const T* x0 = x;
  for (int64_t p = 0; p < P; ++p) m[p] = x0[p];
  for (int64_t p = 0; p < P; ++p) logs[p] = T(1);  // exp(x0 - x0)
  if (kKeepExps) {
    for (int64_t p = 0; p < P; ++p) e[p] = T(1);
  }
  T wsum = T(0);
  if (smoothing) {
    for (int64_t p = 0; p < P; ++p) swx[p] = T(0);
    for (int64_t c = 0; c < C; ++c) wsum += w == nullptr ? T(1) : w[c];
  }
  // Blocks of 16 pixels keep their sums and maxima in registers across the classes; the
  // loop below does the rest (and the smoothing sums). A block reads one cache line of every
  // class row in turn. That suits rows in a buffer (the fused heads' logits, packed logits:
  // L2-resident), and up to 32 rows in memory; with more rows far apart in memory (logits read
  // in place) the prefetchers and the TLB no longer keep up, so there each row is read whole
  // before the next (pixel_cross_entropy N4 C150 512² forward, 2 threads, 1024-pixel chunks:
  // 271-288 ms blocked, 114 ms row by row).
  constexpr int64_t kBlock = 16, kRowsInMemory = 32, kBufferBytes = 1 << 20;
  const bool blocks_pay =
      C <= kRowsInMemory || C * ld * static_cast<int64_t>(sizeof(T)) <= kBufferBytes;
  const int64_t blocked = smoothing || !blocks_pay ? 0 : P / kBlock * kBlock;
  if (kKeepExps && blocked > 0) {
    // The exps are kept: the loop below stores them and tracks the max, and their sums are
    // taken after, row by row from the stored exps (in L1), so that the loop keeps no sums in
    // registers (with them it spilled: 16 AVX2 registers hold the exp's constants and little
    // more).
    for (int64_t c = 1; c < C; ++c) {
      const T* row = x + c * ld;
      T* e_row = e + c * eld;
      for (int64_t p = 0; p < blocked; ++p) {
        e_row[p] = exp_any(row[p] - x0[p]);
        m[p] = row[p] > m[p] ? row[p] : m[p];
      }
    }
    for (int64_t p0 = 0; p0 < blocked; p0 += kBlock) {  // the sums in registers, not in logs
      T sum[kBlock];
      for (int64_t j = 0; j < kBlock; ++j) sum[j] = T(1);
      for (int64_t c = 1; c < C; ++c) {
        for (int64_t j = 0; j < kBlock; ++j) sum[j] += e[c * eld + p0 + j];
      }
      for (int64_t j = 0; j < kBlock; ++j) logs[p0 + j] = sum[j];
    }
  }
  for (int64_t p0 = 0; p0 < (kKeepExps ? 0 : blocked); p0 += kBlock) {  // lse only
    T shift_by[kBlock], sum[kBlock], max[kBlock];
    for (int64_t j = 0; j < kBlock; ++j) {
      shift_by[j] = max[j] = x0[p0 + j];
      sum[j] = T(1);
    }
    for (int64_t c = 1; c < C; ++c) {
      const T* row = x + c * ld + p0;
      for (int64_t j = 0; j < kBlock; ++j) {
        sum[j] += exp_any(row[j] - shift_by[j]);
        max[j] = row[j] > max[j] ? row[j] : max[j];
      }
    }
    for (int64_t j = 0; j < kBlock; ++j) {
      logs[p0 + j] = sum[j];
      m[p0 + j] = max[j];
    }
  }
  for (int64_t c = 1; c < C; ++c) {
    const T* row = x + c * ld;
    T* e_row = kKeepExps ? e + c * eld : nullptr;
    if (smoothing) {
      const T wc = w == nullptr ? T(1) : w[c];
      for (int64_t p = 0; p < P; ++p) {
        const T d = row[p] - x0[p], v = exp_any(d);
        if (kKeepExps) e_row[p] = v;
        logs[p] += v;
        swx[p] += wc * d;
        m[p] = row[p] > m[p] ? row[p] : m[p];
      }
    } else {
      for (int64_t p = blocked; p < P; ++p) {
        const T v = exp_any(row[p] - x0[p]);
        if (kKeepExps) e_row[p] = v;
        logs[p] += v;
        m[p] = row[p] > m[p] ? row[p] : m[p];
      }
    }
  }
  int bad = 0;
  for (int64_t p = 0; p < P; ++p) {
    const T shift = x0[p] - m[p];  // <= 0; NaN for infinite x0 and m
    bad |= !(shift >= T(-80) && logs[p] < static_cast<T>(HUGE_VAL));
    if (kKeepExps) inv_sum[p] = T(1) / logs[p];  // the sum is >= 1 (class 0's term)
    logs[p] = log_any(logs[p] * exp_any(shift));
    if (smoothing) swx[p] += shift * wsum;
  }
  return bad == 0;
}

// m[p] = max_c x, logs[p] = log sum_c exp(x - m), swx[p] = sum_c w[c] (x - m) (smoothing);
// with kKeepExps also the exps and inv_sum, as lse_rows_one_pass (here shifted by m).
template <bool kKeepExps, typename T>
FCN_ALWAYS_INLINE void lse_rows_impl(const T* x, int64_t ld, int64_t C, int64_t P, const T* w,
                                     bool smoothing, T* m, T* logs, T* swx, T* e = nullptr,
                                     int64_t eld = 0, T* inv_sum = nullptr) {
  if constexpr (std::is_same<T, float>::value) {  // double's std::exp is not worth hiding under
    if (lse_rows_one_pass<kKeepExps>(x, ld, C, P, w, smoothing, m, logs, swx, e, eld, inv_sum)) {
      return;
    }
  }
  for (int64_t p = 0; p < P; ++p) m[p] = x[p];
  for (int64_t c = 1; c < C; ++c) {
    const T* row = x + c * ld;
    for (int64_t p = 0; p < P; ++p) m[p] = row[p] > m[p] ? row[p] : m[p];
  }
  // A pixel whose logits are all -inf: shift by 0 instead, so that x - m below is
  // exactly shifted_logit(x, m) without a select per element (-inf - 0 = -inf).
  for (int64_t p = 0; p < P; ++p) m[p] = m[p] == -static_cast<T>(HUGE_VAL) ? T(0) : m[p];
  for (int64_t p = 0; p < P; ++p) logs[p] = T(0);  // the sum of exps, until the log below
  if (smoothing) {
    for (int64_t p = 0; p < P; ++p) swx[p] = T(0);
    for (int64_t c = 0; c < C; ++c) {
      const T* row = x + c * ld;
      T* e_row = kKeepExps ? e + c * eld : nullptr;
      const T wc = w == nullptr ? T(1) : w[c];
      for (int64_t p = 0; p < P; ++p) {
        const T d = row[p] - m[p], v = exp_any(d);
        if (kKeepExps) e_row[p] = v;
        logs[p] += v;
        swx[p] += wc * d;
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const T* row = x + c * ld;
      T* e_row = kKeepExps ? e + c * eld : nullptr;
      for (int64_t p = 0; p < P; ++p) {
        const T v = exp_any(row[p] - m[p]);
        if (kKeepExps) e_row[p] = v;
        logs[p] += v;
      }
    }
  }
  if (kKeepExps) {  // every logit -inf: a sum of 0, and a softmax of 0 (as exp(x - 0) in grad_rows)
    for (int64_t p = 0; p < P; ++p) inv_sum[p] = logs[p] > T(0) ? T(1) / logs[p] : T(0);
  }
  for (int64_t p = 0; p < P; ++p) logs[p] = log_any(logs[p]);
}

// g[c * gld + p] = exp(x - lse[p]) * a[p] - d[p] * w[c]; the target's -b is added after.
// lse must not be -inf (the caller passes 0 instead: exp(-inf - 0) = 0, as shifted_logit).
template <typename T>
FCN_ALWAYS_INLINE void grad_rows_impl(const T* x, int64_t ld, T* g, int64_t gld, int64_t C,
                                      int64_t P, const T* lse, const T* a, const T* d, const T* w,
                                      bool smoothing) {
  for (int64_t c = 0; c < C; ++c) {
    const T* row = x + c * ld;
    T* out = g + c * gld;
    if (smoothing) {
      const T wc = w == nullptr ? T(1) : w[c];
      for (int64_t p = 0; p < P; ++p) {
        out[p] = exp_any(row[p] - lse[p]) * a[p] - d[p] * wc;
      }
    } else {
      for (int64_t p = 0; p < P; ++p) out[p] = exp_any(row[p] - lse[p]) * a[p];
    }
  }
}

// Class c's gradient of one output row at p (add_grad_from_exps), from plain pointers: with
// the row's fields read through a struct in the loop, GCC did not vectorize the pair's loop.
template <bool kSmoothing, typename T>
FCN_ALWAYS_INLINE T class_grad(const T* e, const T* a, const T* b, const T* d,
                               const int32_t* counted, int32_t c, T wc, int64_t p) {
  const T shared = kSmoothing ? e[p] * a[p] - d[p] * wc : e[p] * a[p];
  // A product, not a select (which GCC made a masked load): b is finite where the upstream
  // gradient and the weights are, and then 0 * b = 0; where they are not, neither is a.
  return shared - static_cast<T>(counted[p] == c) * b[p];
}

// add_grad_from_exps (loss_rows.h), smoothing or not as a template argument (a test inside the
// pair's loop kept it from vectorizing too). v0 and v1 are __restrict: the pair's loop reads
// ten rows, more than the overlap checks GCC will add at run time instead.
template <bool kSmoothing, typename T>
FCN_ALWAYS_INLINE void add_grad_from_exps_impl(const ExpGradRow<T>* rows, int64_t n_rows, int32_t c,
                                               T wc, T* __restrict v0, T* __restrict v1,
                                               int64_t P) {
  if (n_rows == 2) {
    const ExpGradRow<T>&r0 = rows[0], &r1 = rows[1];
    const T *e0 = r0.e + c * r0.ld, *a0 = r0.a, *b0 = r0.b, *d0 = r0.d;
    const T *e1 = r1.e + c * r1.ld, *a1 = r1.a, *b1 = r1.b, *d1 = r1.d;
    const int32_t *t0 = r0.counted, *t1 = r1.counted;
    const T w00 = r0.w0, w01 = r0.w1, w10 = r1.w0, w11 = r1.w1;  // not re-read after each store
    // With one tap in the band, its sum takes the same expression as in the two-tap loop: an
    // input row's sums then round alike whether the band ends next to it or not.
    if (v0 != nullptr && v1 != nullptr) {
      for (int64_t p = 0; p < P; ++p) {
        const T x0 = class_grad<kSmoothing>(e0, a0, b0, d0, t0, c, wc, p);
        const T x1 = class_grad<kSmoothing>(e1, a1, b1, d1, t1, c, wc, p);
        v0[p] += w00 * x0 + w10 * x1;
        v1[p] += w01 * x0 + w11 * x1;
      }
    } else if (v0 != nullptr || v1 != nullptr) {
      T* __restrict v = v0 == nullptr ? v1 : v0;
      const T wa = v0 == nullptr ? w01 : w00, wb = v0 == nullptr ? w11 : w10;
      for (int64_t p = 0; p < P; ++p) {
        const T x0 = class_grad<kSmoothing>(e0, a0, b0, d0, t0, c, wc, p);
        const T x1 = class_grad<kSmoothing>(e1, a1, b1, d1, t1, c, wc, p);
        v[p] += wa * x0 + wb * x1;
      }
    }
    return;
  }
  const ExpGradRow<T>& row = rows[0];  // one row
  const T *e = row.e + c * row.ld, *a = row.a, *b = row.b, *d = row.d;
  const int32_t* t = row.counted;
  const T w0 = row.w0, w1 = row.w1;
  if (v0 != nullptr && v1 != nullptr) {
    for (int64_t p = 0; p < P; ++p) {
      const T x = class_grad<kSmoothing>(e, a, b, d, t, c, wc, p);
      v0[p] += w0 * x;
      v1[p] += w1 * x;
    }
  } else if (v0 != nullptr || v1 != nullptr) {
    T* __restrict v = v0 == nullptr ? v1 : v0;
    const T w = v0 == nullptr ? w1 : w0;
    for (int64_t p = 0; p < P; ++p) v[p] += w * class_grad<kSmoothing>(e, a, b, d, t, c, wc, p);
  }
}

template <bool kSmoothing, typename T>
FCN_ALWAYS_INLINE void grad_from_exps_rows_impl(T* __restrict e, int64_t ld, int64_t C, int64_t P,
                                                const T* a, const T* b, const T* d,
                                                const int32_t* counted, const T* w) {
  for (int64_t c = 0; c < C; ++c) {
    T* __restrict row = e + c * ld;
    const T wc = w == nullptr ? T(1) : w[c];
    const int32_t cls = static_cast<int32_t>(c);
    for (int64_t p = 0; p < P; ++p)
      row[p] = class_grad<kSmoothing>(row, a, b, d, counted, cls, wc, p);
  }
}

template <typename T>
FCN_ALWAYS_INLINE void grad_from_exps_rows_any(T* e, int64_t ld, int64_t C, int64_t P, const T* a,
                                               const T* b, const T* d, const int32_t* counted,
                                               const T* w, bool smoothing) {
  if (smoothing) {
    grad_from_exps_rows_impl<true>(e, ld, C, P, a, b, d, counted, w);
  } else {
    grad_from_exps_rows_impl<false>(e, ld, C, P, a, b, d, counted, w);
  }
}

template <typename T>
FCN_ALWAYS_INLINE void add_grad_from_exps_any(const ExpGradRow<T>* rows, int64_t n_rows, int32_t c,
                                              T wc, bool smoothing, T* v0, T* v1, int64_t P) {
  if (smoothing) {
    add_grad_from_exps_impl<true>(rows, n_rows, c, wc, v0, v1, P);
  } else {
    add_grad_from_exps_impl<false>(rows, n_rows, c, wc, v0, v1, P);
  }
}

// The fp32 entry points, one per ISA level (multiversion.h).
#define FCN_LOSS_ROW_KERNELS(TARGET)                                                              \
  TARGET void lse_rows_f32(const float* x, int64_t ld, int64_t C, int64_t P, const float* w,      \
                           bool smoothing, float* m, float* logs, float* swx) {                   \
    lse_rows_impl<false>(x, ld, C, P, w, smoothing, m, logs, swx);                                \
  }                                                                                               \
  TARGET void softmax_rows_f32(const float* x, int64_t ld, int64_t C, int64_t P, const float* w,  \
                               bool smoothing, float* m, float* logs, float* swx, float* e,       \
                               int64_t eld, float* inv_sum) {                                     \
    lse_rows_impl<true>(x, ld, C, P, w, smoothing, m, logs, swx, e, eld, inv_sum);                \
  }                                                                                               \
  TARGET void grad_rows_f32(const float* x, int64_t ld, float* g, int64_t gld, int64_t C,         \
                            int64_t P, const float* lse, const float* a, const float* d,          \
                            const float* w, bool smoothing) {                                     \
    grad_rows_impl<float>(x, ld, g, gld, C, P, lse, a, d, w, smoothing);                          \
  }                                                                                               \
  TARGET void add_grad_from_exps_f32(const ExpGradRow<float>* rows, int64_t n_rows, int32_t c,    \
                                     float wc, bool smoothing, float* v0, float* v1, int64_t P) { \
    add_grad_from_exps_any<float>(rows, n_rows, c, wc, smoothing, v0, v1, P);                     \
  }                                                                                               \
  TARGET void grad_from_exps_rows_f32(float* e, int64_t ld, int64_t C, int64_t P, const float* a, \
                                      const float* b, const float* d, const int32_t* counted,     \
                                      const float* w, bool smoothing) {                           \
    grad_from_exps_rows_any<float>(e, ld, C, P, a, b, d, counted, w, smoothing);                  \
  }
FCN_FOR_EACH_ISA(FCN_LOSS_ROW_KERNELS)
}  // namespace

void lse_rows(const float* x, int64_t ld, int64_t C, int64_t P, const float* w, bool smoothing,
              float* m, float* logs, float* swx) {
  lse_rows_f32(x, ld, C, P, w, smoothing, m, logs, swx);
}
void lse_rows(const double* x, int64_t ld, int64_t C, int64_t P, const double* w, bool smoothing,
              double* m, double* logs, double* swx) {
  lse_rows_impl<false>(x, ld, C, P, w, smoothing, m, logs, swx);
}
void softmax_rows(const float* x, int64_t ld, int64_t C, int64_t P, const float* w, bool smoothing,
                  float* m, float* logs, float* swx, float* e, int64_t eld, float* inv_sum) {
  softmax_rows_f32(x, ld, C, P, w, smoothing, m, logs, swx, e, eld, inv_sum);
}
void softmax_rows(const double* x, int64_t ld, int64_t C, int64_t P, const double* w,
                  bool smoothing, double* m, double* logs, double* swx, double* e, int64_t eld,
                  double* inv_sum) {
  lse_rows_impl<true>(x, ld, C, P, w, smoothing, m, logs, swx, e, eld, inv_sum);
}
void grad_rows(const float* x, int64_t ld, float* g, int64_t gld, int64_t C, int64_t P,
               const float* lse, const float* a, const float* d, const float* w, bool smoothing) {
  grad_rows_f32(x, ld, g, gld, C, P, lse, a, d, w, smoothing);
}
void grad_rows(const double* x, int64_t ld, double* g, int64_t gld, int64_t C, int64_t P,
               const double* lse, const double* a, const double* d, const double* w,
               bool smoothing) {
  grad_rows_impl<double>(x, ld, g, gld, C, P, lse, a, d, w, smoothing);
}
void add_grad_from_exps(const ExpGradRow<float>* rows, int64_t n_rows, int32_t c, float wc,
                        bool smoothing, float* v0, float* v1, int64_t P) {
  add_grad_from_exps_f32(rows, n_rows, c, wc, smoothing, v0, v1, P);
}
void add_grad_from_exps(const ExpGradRow<double>* rows, int64_t n_rows, int32_t c, double wc,
                        bool smoothing, double* v0, double* v1, int64_t P) {
  add_grad_from_exps_any<double>(rows, n_rows, c, wc, smoothing, v0, v1, P);
}

void grad_from_exps_rows(float* e, int64_t ld, int64_t C, int64_t P, const float* a, const float* b,
                         const float* d, const int32_t* counted, const float* w, bool smoothing) {
  grad_from_exps_rows_f32(e, ld, C, P, a, b, d, counted, w, smoothing);
}
void grad_from_exps_rows(double* e, int64_t ld, int64_t C, int64_t P, const double* a,
                         const double* b, const double* d, const int32_t* counted, const double* w,
                         bool smoothing) {
  grad_from_exps_rows_any<double>(e, ld, C, P, a, b, d, counted, w, smoothing);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

}  // namespace fcn_fast
