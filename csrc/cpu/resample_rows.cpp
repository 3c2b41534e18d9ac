// The vectorized row loops of the CPU fused heads (resample_rows.h), the fp32 ones built per ISA
// level (multiversion.h) as the loss rows are. The blends and sums stream through L1 and L2 at
// about the baseline build's speed on the 2-core Zen 1; the argmax gains most from keeping the
// running maximum in a row (no per-pixel gather of the leader's logit).
#include "resample_rows.h"

#include "multiversion.h"

namespace fcn_fast {
namespace {

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")  // lets the argmax's compares and selects vectorize
#endif

template <typename T>
inline void blend_row_impl(const T* a, T wa, const T* b, T wb, T* z, int64_t n) {
  for (int64_t X = 0; X < n; ++X) z[X] = wa * a[X] + wb * b[X];
}

template <typename T>
inline void argmax_row_impl(const T* z, int32_t c, T* top, int32_t* best, int64_t n) {
  for (int64_t X = 0; X < n; ++X) {
    const T v = z[X], t = top[X];
    const bool wins = v > t || (v != v && t == t);  // torch.argmax: a NaN beats every number
    top[X] = wins ? v : t;
    best[X] = wins ? c : best[X];
  }
}

#define FCN_RESAMPLE_ROW_KERNELS(TARGET)                                                        \
  TARGET void blend_row_f32(const float* a, float wa, const float* b, float wb, float* z,       \
                            int64_t n) {                                                        \
    blend_row_impl<float>(a, wa, b, wb, z, n);                                                  \
  }                                                                                             \
  TARGET void argmax_row_f32(const float* z, int32_t c, float* top, int32_t* best, int64_t n) { \
    argmax_row_impl<float>(z, c, top, best, n);                                                 \
  }
FCN_FOR_EACH_ISA(FCN_RESAMPLE_ROW_KERNELS)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

}  // namespace

void blend_row(const float* a, float wa, const float* b, float wb, float* z, int64_t n) {
  blend_row_f32(a, wa, b, wb, z, n);
}
void blend_row(const double* a, double wa, const double* b, double wb, double* z, int64_t n) {
  blend_row_impl<double>(a, wa, b, wb, z, n);
}
void argmax_row(const float* z, int32_t c, float* top, int32_t* best, int64_t n) {
  argmax_row_f32(z, c, top, best, n);
}
void argmax_row(const double* z, int32_t c, double* top, int32_t* best, int64_t n) {
  argmax_row_impl<double>(z, c, top, best, n);
}

}  // namespace fcn_fast
