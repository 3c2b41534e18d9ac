#pragma once
// Branch-free float exp/log that compilers vectorize (libm calls don't), for the CPU loss
// kernels. Accuracy: exp <= 2.6 ulp for x <= 88, log for s >= 1 or s == 0 (see each).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__GNUC__)
#define FCN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FCN_ALWAYS_INLINE inline
#endif

namespace fcn_fast {
namespace vec_math {

// No floating-point traps: lets the compiler vectorize the selects below (the callers'
// loops carry the same pragma).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

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

// exp(x) for x <= 88: <= 2.6 ulp, 0 below -87 (incl. -inf); NaN stays NaN. Undefined above 88:
// the loss kernels only pass x - max and x - lse, both <= 0, so no upper clamp (it cost 14%).
// Written for throughput on 2-wide-FMA cores: the polynomial in Estrin form (depth 3, not
// Horner's 7) and one select, as the clamps of a general exp cost a third of the loop.
FCN_ALWAYS_INLINE float exp_vec(float x) {
  const float t = x * 1.44269504088896341f + 12582912.0f;  // round(x log2 e) in t's low bits
  const float n = t - 12582912.0f;
  float r = x - n * 0.693145751953125f;  // Cody-Waite: ln2 = hi + lo, |r| <= ln2/2
  r = r - n * 1.428606765330187e-06f;
  // exp(r) = 1 + r + r^2 (c2 + c3 r + r^2 (c4 + c5 r)): a minimax fit of the relative
  // error on |r| <= ln2/2 (1.05e-7 before rounding).
  const float r2 = r * r;
  const float low = 0.499992311000824f + 0.16667114198207855f * r;
  const float high = 0.041890114545822144f + 0.008312525227665901f * r;
  const float p = (1.0f + r) + r2 * (low + r2 * high);
  // 2^n from n's bits; garbage below -87 (and NaN at -inf), which the select drops.
  const uint32_t k = static_cast<uint32_t>(float_to_bits(t)) - 0x4B400000u;
  const float v = p * bits_to_float(static_cast<int32_t>((k + 127u) << 23));
  return x < -87.0f ? 0.0f : v;  // false for NaN: v is NaN
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

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

}  // namespace vec_math
}  // namespace fcn_fast
