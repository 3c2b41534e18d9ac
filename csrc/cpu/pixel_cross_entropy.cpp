// CPU implementation of the fused log-softmax + NLL loss (DESIGN.md 2.4).
//
// Work unit: a chunk of P pixels of one image (P depends only on C, so the
// chunking, and with it every sum, is independent of the thread count: results
// are bitwise identical run to run). For NCHW fp32 a chunk is C rows of P
// contiguous floats read in place; other layouts and dtypes are first packed
// into a float (double for fp64) [C][P] buffer. Each chunk reads its logits
// from memory once; the max pass brings them into L1, the exp pass reuses them.
// Per-chunk partial sums go to a vector and are added in chunk order.
#include "../ops/pixel_cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fcn_fast/pixel_cross_entropy_math.h"
#include "huge_pages.h"
#include "vec_math.h"

// The fp32 hot loops are compiled twice, for AVX2+FMA and for the baseline ISA,
// and picked at load time by CPU features (GCC function multiversioning; not
// target_clones("arch=haswell"), which checks the CPU model, not its features).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FCN_MULTIVERSION 1
#endif

namespace fcn_fast {
namespace {

using vec_math::exp_any;
using vec_math::log_any;

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

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

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_cross_entropy_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const CrossEntropyOptions& options) {
  check_pixel_cross_entropy_args(logits, target, weight, options);
  const int64_t ignore_index = options.ignore_index, reduction = options.reduction;
  const double label_smoothing = options.label_smoothing;
  check_device(logits, at::kCPU, "logits", "pixel_cross_entropy_cpu");
  const Geometry g = geometry(logits, target);
  const at::ScalarType acc_type = accumulation_type(logits.scalar_type());
  // The loss in the accumulation dtype for every reduction: the caller rounds it once to
  // the dtype PyTorch returns, and its gradient then arrives in float32 too (a GradScaler's
  // 65536 would overflow float16).
  at::Tensor lse = at::empty({g.N, g.S}, logits.options().dtype(acc_type));
  at::Tensor loss = reduction == kReductionNone
                        ? at::empty({g.N, g.S}, logits.options().dtype(acc_type))
                        : at::empty({}, logits.options().dtype(acc_type));
  at::Tensor weight_sum = at::empty({}, logits.options().dtype(acc_type));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "pixel_cross_entropy_cpu", [&] {
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
        acc_t* loss_none = reduction == kReductionNone ? loss.mutable_data_ptr<acc_t>() : nullptr;
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
              if (loss_none != nullptr) loss_none[n * g.S + s] = value;
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
        // Plain stores, not fill_: at tiny sizes each dispatcher call costs more than the loss.
        *weight_sum.mutable_data_ptr<acc_t>() = static_cast<acc_t>(total_w);
        if (reduction == kReductionMean) {
          // 0 / 0 = NaN when every pixel is ignored, as PyTorch.
          *loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(total_loss / total_w);
        } else if (reduction == kReductionSum) {
          *loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(total_loss);
        }
      });
  return {loss, lse, weight_sum};
}

at::Tensor pixel_cross_entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                            const at::Tensor& target,
                                            const std::optional<at::Tensor>& weight,
                                            const at::Tensor& lse_in, const at::Tensor& weight_sum,
                                            const CrossEntropyOptions& options) {
  check_pixel_cross_entropy_args(logits, target, weight, options);
  const int64_t ignore_index = options.ignore_index, reduction = options.reduction;
  const double label_smoothing = options.label_smoothing;
  check_pixel_cross_entropy_backward_args(grad, logits, lse_in, reduction);
  check_device(logits, at::kCPU, "logits", "pixel_cross_entropy_backward_cpu");
  const Geometry g = geometry(logits, target);
  const at::ScalarType acc_type = accumulation_type(logits.scalar_type());
  const at::Tensor lse = lse_in.to(acc_type).contiguous();
  const at::Tensor gradc = grad.to(acc_type);  // keeps strides (also stride 0)
  at::Tensor grad_logits = at::empty_like(logits);
  advise_huge_pages(grad_logits);
  if (grad_logits.numel() == 0) return grad_logits;
  const int64_t oN = grad_logits.stride(0), oC = grad_logits.stride(1), oS = grad_logits.stride(2);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "pixel_cross_entropy_backward_cpu", [&] {
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

}  // namespace fcn_fast
