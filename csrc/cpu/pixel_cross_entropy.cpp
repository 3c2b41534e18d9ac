// CPU implementation of the fused log-softmax + NLL loss (DESIGN.md 2.4).
//
// Work unit: a chunk of P pixels of one image (P depends only on C, so the
// chunking, and with it every sum, is independent of the thread count: results
// are bitwise identical run to run). For NCHW fp32 a chunk is C rows of P
// contiguous floats read in place; other layouts and dtypes are first packed
// into a float (double for fp64) [C][P] buffer. Each chunk reads its logits
// from memory once; the max pass brings them into L1, the exp pass reuses them.
// Per-chunk partial sums go to a vector and are added in chunk order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fcn_fast/pixel_cross_entropy_math.h"
#include "huge_pages.h"

// The fp32 hot loops are compiled twice, for AVX2+FMA and for the baseline ISA,
// and picked at load time by CPU features (GCC function multiversioning; not
// target_clones("arch=haswell"), which checks the CPU model, not its features).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FCN_MULTIVERSION 1
#endif
#if defined(__GNUC__)
#define FCN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FCN_ALWAYS_INLINE inline
#endif

namespace fcn_fast {
namespace {

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

// ---- branch-free float exp/log that compilers vectorize (libm calls don't) ----

FCN_ALWAYS_INLINE float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
FCN_ALWAYS_INLINE int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, 4);
  return i;
}

// exp(x), ~1 ulp on [-87, 88]; 0 below (incl. -inf); NaN stays NaN.
FCN_ALWAYS_INLINE float exp_vec(float x) {
  float xc = x < -87.0f ? -87.0f : x;  // comparisons are false for NaN: it passes through
  xc = xc > 88.0f ? 88.0f : xc;
  const float t = xc * 1.44269504088896341f + 12582912.0f;  // round(x log2 e) in t's low bits
  const float n = t - 12582912.0f;
  float r = xc - n * 0.693145751953125f;  // Cody-Waite: ln2 = hi + lo
  r = r - n * 1.428606765330187e-06f;
  float p = 1.0f / 5040;  // Taylor to degree 7 on |r| <= ln2/2: error < 1e-8
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t k = float_to_bits(t) - 0x4B400000;  // the integer n
  const float v = p * bits_to_float((k + 127) << 23);
  return x < -87.0f ? 0.0f : v;
}

// log(s) for s >= 0: -inf at 0, inf at inf, NaN stays NaN; normal s only otherwise
// (here s >= 1 or exactly 0: s is a sum of exp(x - max) including exp(0)).
FCN_ALWAYS_INLINE float log_vec(float s) {
  const int32_t bits = float_to_bits(s);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  float f = bits_to_float((bits & 0x007fffff) | 0x3f800000);  // mantissa in [1, 2)
  const bool big = f > 1.41421356f;
  f = big ? f * 0.5f : f;
  e = big ? e + 1 : e;
  const float z = (f - 1.0f) / (f + 1.0f);  // log f = 2 atanh z, |z| <= 0.172
  const float z2 = z * z;
  float q = 1.0f / 11;
  q = q * z2 + 1.0f / 9;
  q = q * z2 + 1.0f / 7;
  q = q * z2 + 1.0f / 5;
  q = q * z2 + 1.0f / 3;
  q = q * z2 + 1.0f;
  const float ef = static_cast<float>(e);
  float v = ef * 0.693359375f + (ef * -2.12194440e-4f + 2.0f * z * q);
  v = s == 0.0f ? -HUGE_VALF : v;
  v = s == HUGE_VALF ? HUGE_VALF : v;
  return s != s ? s : v;
}

template <typename T>
FCN_ALWAYS_INLINE T exp_any(T x) {
  if constexpr (std::is_same<T, float>::value) {
    return exp_vec(x);
  } else {
    return std::exp(x);
  }
}
template <typename T>
FCN_ALWAYS_INLINE T log_any(T x) {
  if constexpr (std::is_same<T, float>::value) {
    return log_vec(x);
  } else {
    return std::log(x);
  }
}

// ---- chunk kernels: rows x[c * ld + p], c < C, p < P ----

// m[p] = max_c x, logs[p] = log sum_c exp(x - m), swx[p] = sum_c w[c] (x - m) (smoothing).
template <typename T>
FCN_ALWAYS_INLINE void lse_rows(const T* x, int64_t ld, int64_t C, int64_t P, const T* w,
                                bool smoothing, T* m, T* logs, T* swx) {
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
      const T wc = w == nullptr ? T(1) : w[c];
      for (int64_t p = 0; p < P; ++p) {
        const T d = row[p] - m[p];
        logs[p] += exp_any(d);
        swx[p] += wc * d;
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const T* row = x + c * ld;
      for (int64_t p = 0; p < P; ++p) logs[p] += exp_any(row[p] - m[p]);
    }
  }
  for (int64_t p = 0; p < P; ++p) logs[p] = log_any(logs[p]);
}

// g[c * gld + p] = exp(x - lse[p]) * a[p] - d[p] * w[c]; the target's -b is added after.
// lse must not be -inf (the caller passes 0 instead: exp(-inf - 0) = 0, as shifted_logit).
template <typename T>
FCN_ALWAYS_INLINE void grad_rows(const T* x, int64_t ld, T* g, int64_t gld, int64_t C, int64_t P,
                                 const T* lse, const T* a, const T* d, const T* w, bool smoothing) {
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

#ifdef FCN_MULTIVERSION
#define FCN_F32_KERNELS(TARGET)                                                                  \
  __attribute__((target(TARGET))) void lse_rows_f32(const float* x, int64_t ld, int64_t C,       \
                                                    int64_t P, const float* w, bool smoothing,   \
                                                    float* m, float* logs, float* swx) {         \
    lse_rows<float>(x, ld, C, P, w, smoothing, m, logs, swx);                                    \
  }                                                                                              \
  __attribute__((target(TARGET))) void grad_rows_f32(                                            \
      const float* x, int64_t ld, float* g, int64_t gld, int64_t C, int64_t P, const float* lse, \
      const float* a, const float* d, const float* w, bool smoothing) {                          \
    grad_rows<float>(x, ld, g, gld, C, P, lse, a, d, w, smoothing);                              \
  }
FCN_F32_KERNELS("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
FCN_F32_KERNELS("avx2,fma")
FCN_F32_KERNELS("default")
#else
void lse_rows_f32(const float* x, int64_t ld, int64_t C, int64_t P, const float* w, bool smoothing,
                  float* m, float* logs, float* swx) {
  lse_rows<float>(x, ld, C, P, w, smoothing, m, logs, swx);
}
void grad_rows_f32(const float* x, int64_t ld, float* g, int64_t gld, int64_t C, int64_t P,
                   const float* lse, const float* a, const float* d, const float* w,
                   bool smoothing) {
  grad_rows<float>(x, ld, g, gld, C, P, lse, a, d, w, smoothing);
}
#endif
void lse_rows_any(const float* x, int64_t ld, int64_t C, int64_t P, const float* w, bool smoothing,
                  float* m, float* logs, float* swx) {
  lse_rows_f32(x, ld, C, P, w, smoothing, m, logs, swx);
}
void lse_rows_any(const double* x, int64_t ld, int64_t C, int64_t P, const double* w,
                  bool smoothing, double* m, double* logs, double* swx) {
  lse_rows<double>(x, ld, C, P, w, smoothing, m, logs, swx);
}
void grad_rows_any(const float* x, int64_t ld, float* g, int64_t gld, int64_t C, int64_t P,
                   const float* lse, const float* a, const float* d, const float* w,
                   bool smoothing) {
  grad_rows_f32(x, ld, g, gld, C, P, lse, a, d, w, smoothing);
}
void grad_rows_any(const double* x, int64_t ld, double* g, int64_t gld, int64_t C, int64_t P,
                   const double* lse, const double* a, const double* d, const double* w,
                   bool smoothing) {
  grad_rows<double>(x, ld, g, gld, C, P, lse, a, d, w, smoothing);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// Pixels per chunk: a [C][P] fp32 block of about 32 KiB (stays in L1 between the
// max and exp passes), a multiple of 16 for the vector loops; depends on C only.
int64_t chunk_pixels(int64_t C) {
  const int64_t p = (8192 / std::max<int64_t>(C, 1)) / 16 * 16;
  return std::min<int64_t>(std::max<int64_t>(p, 16), 1024);
}

struct Geometry {
  int64_t N, C, S, P, chunks_per_image;
  int64_t sN, sC, sS;  // logits strides
  int64_t tN, tS;      // target strides
};

Geometry geometry(const at::Tensor& logits, const at::Tensor& target) {
  Geometry g;
  g.N = logits.size(0);
  g.C = logits.size(1);
  g.S = logits.size(2);
  g.P = std::min(chunk_pixels(g.C), std::max<int64_t>(g.S, 1));
  g.chunks_per_image = (g.S + g.P - 1) / g.P;
  g.sN = logits.stride(0);
  g.sC = logits.stride(1);
  g.sS = logits.stride(2);
  g.tN = target.stride(0);
  g.tS = target.stride(1);
  return g;
}

void check_args(const at::Tensor& logits, const at::Tensor& target,
                const std::optional<at::Tensor>& weight, int64_t reduction, double eps) {
  TORCH_CHECK(logits.dim() == 3, "pixel_cross_entropy: logits must be (N, C, S), got ",
              logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()),
              "pixel_cross_entropy: logits must be floating point, got ", logits.scalar_type());
  TORCH_CHECK(logits.size(1) >= 1, "pixel_cross_entropy: logits need at least one class");
  TORCH_CHECK(
      target.dim() == 2 && target.size(0) == logits.size(0) && target.size(1) == logits.size(2),
      "pixel_cross_entropy: target must be (N, S) = (", logits.size(0), ", ", logits.size(2),
      "), got ", target.sizes());
  TORCH_CHECK(target.scalar_type() == at::kLong, "pixel_cross_entropy: target must be int64, got ",
              target.scalar_type());
  if (weight.has_value()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == logits.size(1),
                "pixel_cross_entropy: weight must be (C,) = (", logits.size(1), ",), got ",
                weight->sizes());
    TORCH_CHECK(
        weight->scalar_type() == (logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
        "pixel_cross_entropy: weight must be float32 (float64 for float64 logits)");
  }
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "pixel_cross_entropy: bad reduction code ",
              reduction);
  TORCH_CHECK(eps >= 0.0 && eps <= 1.0, "pixel_cross_entropy: label_smoothing must be in [0, 1]");
}

template <typename acc_t>
std::vector<acc_t> weight_vector(const std::optional<at::Tensor>& weight, acc_t* total, int64_t C) {
  std::vector<acc_t> w;
  if (!weight.has_value()) {
    *total = static_cast<acc_t>(C);
    return w;
  }
  const at::Tensor wc = weight->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  w.assign(wc.const_data_ptr<acc_t>(), wc.const_data_ptr<acc_t>() + C);
  acc_t sum = acc_t(0);
  for (acc_t v : w) sum += v;
  *total = sum;
  return w;
}

[[noreturn]] void raise_bad_target(int64_t value, int64_t C, int64_t ignore_index) {
  TORCH_CHECK_VALUE(false, "pixel_cross_entropy: target contains ", value,
                    ", outside [0, C) = [0, ", C, ") and not ignore_index (", ignore_index, ")");
  abort();  // unreachable
}

// Logits rows of one chunk as acc_t: in place when possible, else packed into buf.
template <typename scalar_t, typename acc_t>
const acc_t* chunk_rows(const scalar_t* x, const Geometry& g, int64_t n, int64_t s0, int64_t np,
                        acc_t* buf, int64_t* ld) {
  const scalar_t* base = x + n * g.sN + s0 * g.sS;
  if constexpr (std::is_same<scalar_t, acc_t>::value) {
    if (g.sS == 1 || np == 1) {
      *ld = g.sC;
      return base;
    }
  }
  if (g.sC == 1) {  // channels last: each pixel's classes are contiguous
    for (int64_t p = 0; p < np; ++p) {
      const scalar_t* px = base + p * g.sS;
      for (int64_t c = 0; c < g.C; ++c) buf[c * np + p] = static_cast<acc_t>(px[c]);
    }
  } else {
    for (int64_t c = 0; c < g.C; ++c) {
      const scalar_t* row = base + c * g.sC;
      for (int64_t p = 0; p < np; ++p) buf[c * np + p] = static_cast<acc_t>(row[p * g.sS]);
    }
  }
  *ld = np;
  return buf;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_cross_entropy_fwd_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, int64_t reduction, double label_smoothing) {
  check_args(logits, target, weight, reduction, label_smoothing);
  const Geometry g = geometry(logits, target);
  const at::ScalarType acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor lse = at::empty({g.N, g.S}, logits.options().dtype(acc_type));
  at::Tensor loss = reduction == kReductionNone ? at::empty({g.N, g.S}, logits.options())
                                                : at::empty({}, logits.options().dtype(acc_type));
  at::Tensor weight_sum = at::empty({}, logits.options().dtype(acc_type));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "pixel_cross_entropy_fwd", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        acc_t wtotal;
        const std::vector<acc_t> wv = weight_vector<acc_t>(weight, &wtotal, g.C);
        const acc_t* w = weight.has_value() ? wv.data() : nullptr;
        const acc_t eps = static_cast<acc_t>(label_smoothing);
        const acc_t eps_over_c = eps / static_cast<acc_t>(g.C);
        const bool smoothing = label_smoothing > 0.0;
        const int64_t chunks = g.N * g.chunks_per_image;
        std::vector<double> part_loss(chunks, 0.0), part_w(chunks, 0.0);
        std::vector<int64_t> bad_value(chunks, 0);
        std::vector<char> bad(chunks, 0);
        const scalar_t* x = logits.const_data_ptr<scalar_t>();
        const int64_t* t = target.const_data_ptr<int64_t>();
        acc_t* lse_ptr = lse.mutable_data_ptr<acc_t>();
        scalar_t* loss_none =
            reduction == kReductionNone ? loss.mutable_data_ptr<scalar_t>() : nullptr;
        at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(g.C * g.P), m(g.P), logs(g.P), swx(g.P);
          for (int64_t chunk = begin; chunk < end; ++chunk) {
            const int64_t n = chunk / g.chunks_per_image;
            const int64_t s0 = (chunk % g.chunks_per_image) * g.P;
            const int64_t np = std::min(g.P, g.S - s0);
            int64_t ld;
            const acc_t* rows = chunk_rows<scalar_t, acc_t>(x, g, n, s0, np, buf.data(), &ld);
            lse_rows_any(rows, ld, g.C, np, w, smoothing, m.data(), logs.data(), swx.data());
            double sum_loss = 0.0, sum_w = 0.0;
            for (int64_t p = 0; p < np; ++p) {
              const int64_t s = s0 + p;
              lse_ptr[n * g.S + s] = m[p] + logs[p];
              const int64_t tv = t[n * g.tN + s * g.tS];
              acc_t value = acc_t(0);
              if (tv != ignore_index) {
                if (tv < 0 || tv >= g.C) {
                  if (!bad[chunk]) bad_value[chunk] = tv;
                  bad[chunk] = 1;
                } else {
                  const acc_t wt = w == nullptr ? acc_t(1) : w[tv];
                  const acc_t xt_m = shifted_logit(rows[tv * ld + p], m[p]);
                  value = pixel_loss(logs[p], xt_m, wt, smoothing ? swx[p] : acc_t(0), wtotal, eps,
                                     eps_over_c);
                  sum_loss += static_cast<double>(value);
                  sum_w += static_cast<double>(wt);
                }
              }
              if (loss_none != nullptr) loss_none[n * g.S + s] = static_cast<scalar_t>(value);
            }
            part_loss[chunk] = sum_loss;
            part_w[chunk] = sum_w;
          }
        });
        double total_loss = 0.0, total_w = 0.0;
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {  // fixed order: deterministic
          if (bad[chunk]) raise_bad_target(bad_value[chunk], g.C, ignore_index);
          total_loss += part_loss[chunk];
          total_w += part_w[chunk];
        }
        weight_sum.fill_(total_w);
        if (reduction == kReductionMean) {
          loss.fill_(total_loss / total_w);  // 0 / 0 = NaN when every pixel is ignored
        } else if (reduction == kReductionSum) {
          loss.fill_(total_loss);
        }
      });
  return {loss, lse, weight_sum};
}

at::Tensor pixel_cross_entropy_bwd_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                       const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight,
                                       const at::Tensor& lse_in, const at::Tensor& weight_sum,
                                       int64_t ignore_index, int64_t reduction,
                                       double label_smoothing) {
  check_args(logits, target, weight, reduction, label_smoothing);
  const Geometry g = geometry(logits, target);
  const at::ScalarType acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (reduction == kReductionNone) {
    TORCH_CHECK(grad.dim() == 2 && grad.size(0) == g.N && grad.size(1) == g.S,
                "pixel_cross_entropy: grad must be (N, S) for reduction none, got ", grad.sizes());
  } else {
    TORCH_CHECK(grad.numel() == 1, "pixel_cross_entropy: grad must be a scalar, got ",
                grad.sizes());
  }
  TORCH_CHECK(lse_in.dim() == 2 && lse_in.size(0) == g.N && lse_in.size(1) == g.S,
              "pixel_cross_entropy: lse must be (N, S), got ", lse_in.sizes());
  const at::Tensor lse = lse_in.to(acc_type).contiguous();
  const at::Tensor gradc = grad.to(acc_type);  // keeps strides (also stride 0)
  at::Tensor grad_logits = at::empty_like(logits);
  advise_huge_pages(grad_logits);
  if (grad_logits.numel() == 0) return grad_logits;
  const int64_t oN = grad_logits.stride(0), oC = grad_logits.stride(1), oS = grad_logits.stride(2);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "pixel_cross_entropy_bwd", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        acc_t wtotal;
        const std::vector<acc_t> wv = weight_vector<acc_t>(weight, &wtotal, g.C);
        const acc_t* w = weight.has_value() ? wv.data() : nullptr;
        const acc_t eps = static_cast<acc_t>(label_smoothing);
        const acc_t eps_over_c = eps / static_cast<acc_t>(g.C);
        const bool smoothing = label_smoothing > 0.0;
        const acc_t* gptr = gradc.const_data_ptr<acc_t>();
        const int64_t gN = reduction == kReductionNone ? gradc.stride(0) : 0;
        const int64_t gS = reduction == kReductionNone ? gradc.stride(1) : 0;
        acc_t scalar_scale = reduction == kReductionNone ? acc_t(0) : gptr[0];
        if (reduction == kReductionMean) {
          scalar_scale /= weight_sum.to(acc_type).const_data_ptr<acc_t>()[0];
        }
        const int64_t chunks = g.N * g.chunks_per_image;
        std::vector<char> bad(chunks, 0);
        std::vector<int64_t> bad_value(chunks, 0);
        const scalar_t* x = logits.const_data_ptr<scalar_t>();
        const int64_t* t = target.const_data_ptr<int64_t>();
        const acc_t* lse_ptr = lse.const_data_ptr<acc_t>();
        scalar_t* out = grad_logits.mutable_data_ptr<scalar_t>();
        const bool direct_out = std::is_same<scalar_t, acc_t>::value && oS == 1;
        at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(g.C * g.P), gbuf(direct_out ? 0 : g.C * g.P);
          std::vector<acc_t> a(g.P), b(g.P), d(g.P), l(g.P);
          for (int64_t chunk = begin; chunk < end; ++chunk) {
            const int64_t n = chunk / g.chunks_per_image;
            const int64_t s0 = (chunk % g.chunks_per_image) * g.P;
            const int64_t np = std::min(g.P, g.S - s0);
            for (int64_t p = 0; p < np; ++p) {
              const int64_t s = s0 + p;
              const int64_t tv = t[n * g.tN + s * g.tS];
              GradCoef<acc_t> coef{acc_t(0), acc_t(0), acc_t(0)};
              if (tv != ignore_index) {
                if (tv < 0 || tv >= g.C) {
                  if (!bad[chunk]) bad_value[chunk] = tv;
                  bad[chunk] = 1;
                } else {
                  const acc_t scale =
                      reduction == kReductionNone ? gptr[n * gN + s * gS] : scalar_scale;
                  coef = grad_coef(scale, w == nullptr ? acc_t(1) : w[tv], wtotal, eps, eps_over_c);
                }
              }
              a[p] = coef.a;
              b[p] = coef.b;
              d[p] = coef.d;
            }
            const acc_t* lse_chunk = lse_ptr + n * g.S + s0;
            for (int64_t p = 0; p < np; ++p) {
              l[p] = lse_chunk[p] == -static_cast<acc_t>(HUGE_VAL) ? acc_t(0) : lse_chunk[p];
            }
            int64_t ld;
            const acc_t* rows = chunk_rows<scalar_t, acc_t>(x, g, n, s0, np, buf.data(), &ld);
            acc_t* dst;
            int64_t gld;
            if (direct_out) {
              dst = reinterpret_cast<acc_t*>(out + n * oN + s0 * oS);
              gld = oC;
            } else {
              dst = gbuf.data();
              gld = np;
            }
            grad_rows_any(rows, ld, dst, gld, g.C, np, l.data(), a.data(), d.data(), w, smoothing);
            for (int64_t p = 0; p < np; ++p) {
              const int64_t tv = t[n * g.tN + (s0 + p) * g.tS];
              if (tv != ignore_index && tv >= 0 && tv < g.C) dst[tv * gld + p] -= b[p];
            }
            if (!direct_out) {
              scalar_t* o = out + n * oN + s0 * oS;
              for (int64_t c = 0; c < g.C; ++c) {
                for (int64_t p = 0; p < np; ++p) {
                  o[c * oC + p * oS] = static_cast<scalar_t>(gbuf[c * np + p]);
                }
              }
            }
          }
        });
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {
          if (bad[chunk]) raise_bad_target(bad_value[chunk], g.C, ignore_index);
        }
      });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_fast, CPU, m) {
  m.impl("pixel_cross_entropy_fwd", &pixel_cross_entropy_fwd_cpu);
  m.impl("pixel_cross_entropy_bwd", &pixel_cross_entropy_bwd_cpu);
}

}  // namespace fcn_fast
