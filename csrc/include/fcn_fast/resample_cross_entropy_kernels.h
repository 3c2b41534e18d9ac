#pragma once
// Per-thread code of the CUDA fused heads (csrc/cuda/resample_cross_entropy.cu): the
// resampler of resample_tables.h followed by the loss of pixel_cross_entropy_math.h, or by
// an argmax, without ever storing the full-resolution logits z = R(x). Plain C++: the
// __global__ kernels wrap these functions and tests/test_cuda_emulation.py runs them on the
// CPU.
//
// Forward and argmax: a thread owns P consecutive fine pixels of one image (flat index
// q = Y * out_w + X), looks up their 4 taps once and walks the classes: per class and pixel
// 4 loads of the small coarse x (L1/L2 hits), 3 blends and one online-softmax step. Only
// lse (4 bytes a pixel) leaves the forward.
// Backward: the blocks of resample_tables.h (a band of coarse rows x a tile of coarse
// columns x a group of classes). Phase P stages the per-pixel gradient coefficients of the
// block's fine region in shared memory (target, lse and grad read once per block); phase A
// recomputes z for each (fine pixel, class) with the forward's own expression, turns it into
// d loss / d z and streams the vertical adjoint into shared accumulators; phase B applies
// the horizontal adjoint. Deterministic, no atomics, no N x C x H x W buffer.
#include <stdint.h>

#include "fcn_fast/element_access.h"
#include "fcn_fast/pixel_cross_entropy_kernels.h"
#include "fcn_fast/pixel_cross_entropy_math.h"
#include "fcn_fast/resample_tables.h"

namespace fcn_fast {

constexpr int kFusedThreads = 256;

template <typename acc_t, typename index_t>
struct FusedArgs {
  int32_t N, C, in_h, in_w, out_h, out_w;
  int32_t pixels;           // out_h * out_w
  Strides<index_t> x;       // coarse logits
  index_t tn, th, tw;       // target (N, H, W)
  index_t gn, gh, gw;       // backward, reduction none: grad (N, H, W) (0 allowed)
  Strides<index_t> grad_x;  // backward output
  int64_t ignore_index;
  int32_t reduction;
  acc_t eps, eps_over_c;
  bool smoothing;          // label_smoothing > 0
  bool pixel_vector;       // lse / loss / labels runs of P pixels are aligned
  GroupLayout layout;      // backward blocks
  int32_t pixel_capacity;  // backward: staged fine pixels per block
};

// ---- Forward in column strips: the loss of up to R fine rows of one fine column ----
//
// Rows that read the same two coarse rows form runs (an upsampling by f has runs of about f
// rows; the tables give each row its run's first row). A strip is R consecutive rows of one
// run (a run is cut into strips from its start); a thread owns one strip of one fine column
// X of image n and walks the classes: per class one pair of horizontal blends of the two
// coarse rows (2 or 4 loads of the small coarse x, L1 hits), and per (pixel, class) the
// vertical blend, one FFMA + EX2 for the exp and one FADD. The exps are taken against a bound
// M of each pixel's logits instead of their running max (no rescale, no max per logit): z is a
// convex combination of its taps (with a tap outside the input, of its taps and 0), so M = the
// largest coarse logit over classes at those taps (the coarse-max pass), and 0 too where a tap
// is outside. If M exceeds the true max by so much that the sum may have lost terms to
// underflow (s < 2^-60: the gap is then over 41), the pixel is done again with the online
// softmax. The launch has a thread per fine pixel; those whose row starts no strip return.

// The coarse-max pass, entry (n, rest = i * in_w + j) at cmax[n * in_h * in_w + rest]: max
// over classes of x[n, :, i, j] (NaN skipped: a NaN logit poisons the sum instead).
template <typename T, typename index_t>
FCN_HD void coarse_max_entry(const FusedArgs<acc_type<T>, index_t>& a, const T* x, int32_t n,
                             int32_t rest, acc_type<T>* cmax) {
  using acc_t = acc_type<T>;
  const int32_t i = rest / a.in_w, j = rest - i * a.in_w;
  const T* p = x + static_cast<index_t>(n) * a.x.n + static_cast<index_t>(i) * a.x.h +
               static_cast<index_t>(j) * a.x.w;
  acc_t m = neg_inf<acc_t>();
  for (int32_t c = 0; c < a.C; ++c) m = fmax(m, load_acc(p + static_cast<index_t>(c) * a.x.c));
  cmax[static_cast<int64_t>(n) * a.in_h * a.in_w + rest] = m;
}

// The bound M of one fine pixel: the coarse maxima at its taps (skipped taps excluded; 0 joins
// when one is skipped).
template <typename acc_t>
FCN_HD acc_t logit_bound(const acc_t* cm, int32_t in_w, const TapEntry<acc_t>& ty,
                         const TapEntry<acc_t>& tx) {
  acc_t m = neg_inf<acc_t>();
  const bool y0 = !tap_skipped(ty.w0), y1 = !tap_skipped(ty.w1);
  const bool x0 = !tap_skipped(tx.w0), x1 = !tap_skipped(tx.w1);
  const acc_t* r0 = cm + ty.i0 * in_w;
  const acc_t* r1 = cm + ty.i1 * in_w;
  if (y0 && x0) m = fmax(m, r0[tx.i0]);
  if (y0 && x1) m = fmax(m, r0[tx.i1]);
  if (y1 && x0) m = fmax(m, r1[tx.i0]);
  if (y1 && x1) m = fmax(m, r1[tx.i1]);
  return y0 && y1 && x0 && x1 ? m : fmax(m, acc_t(0));
}

// Rows per strip: 8 where runs are long (upsampling by 6 or more), else 2; the host picks.
inline int fused_strip_rows(double scale_h) { return scale_h <= 1.0 / 6.0 ? 8 : 2; }

// The blends of a strip. SAFE: a tap is outside the input, so each blend is tap_blend (a
// skipped tap never multiplied). Else h = w0 u + w1 v (FMUL + FFMA) horizontally, and
// vertically z = h0 + w1 (h1 - h0): one FFMA per (pixel, class), the difference taken once per
// class (w0 = 1 - w1 up to the tables' rounding: a few ulp of z). The forward and the backward
// form z alike.
template <bool SAFE>
struct StripBlend {
  template <typename acc_t>
  static FCN_HD acc_t row(const TapEntry<acc_t>& tx, acc_t u, acc_t v) {
    return SAFE ? tap_blend(tx.w0, u, tx.w1, v) : fcn_fma(tx.w1, v, tx.w0 * u);
  }
  // d: h1 - h0 (unused when SAFE).
  template <typename acc_t>
  static FCN_HD acc_t column(const TapEntry<acc_t>& ty, acc_t h0, acc_t h1, acc_t d) {
    return SAFE ? tap_blend(ty.w0, h0, ty.w1, h1) : fcn_fma(ty.w1, d, h0);
  }
};

// Whether the strip's class loop takes 4 classes a trip: for 16-bit x without smoothing, whose
// loads, half as wide, then keep as many bytes in flight as fp32's; elsewhere nvcc's own
// choice (2) is kept (4 raised fp32's registers 64 -> 96, double's into spills).
template <typename T, bool SMOOTH>
FCN_HD constexpr bool fused_unroll4() {
  return sizeof(T) == 2 && !SMOOTH;
}

// The class loop of a strip (R rows sharing their two coarse rows), in base 2: with
// m2 = M log2e per row, the exps' sums s = sum 2^(z log2e - m2) and for smoothing
// swx2 = sum w (z log2e - m2) = log2e sum w (z - M) (one FFMA per term, the exp's argument).
template <int R, bool SAFE, bool SMOOTH, typename T, typename index_t>
FCN_HD void strip_sums(int32_t C, const T* p0, const T* p1, index_t plane, index_t dx,
                       const acc_type<T>* weight, const TapEntry<acc_type<T>>& tx,
                       const TapEntry<acc_type<T>> (&ty)[R], const acc_type<T> (&m2)[R],
                       acc_type<T> (&s)[R], acc_type<T> (&swx2)[R]) {
  using acc_t = acc_type<T>;
  using Blend = StripBlend<SAFE>;
  const auto add_class = [&](int32_t c, const T* q0, const T* q1) {
    const acc_t h0 = Blend::row(tx, load_acc(q0), load_acc(q0 + dx));
    const acc_t h1 = Blend::row(tx, load_acc(q1), load_acc(q1 + dx));
    const acc_t d = h1 - h0;
    const acc_t wc = SMOOTH && weight != nullptr ? weight[c] : acc_t(1);
#pragma unroll
    for (int y = 0; y < R; ++y) {
      const acc_t e = fcn_fma(Blend::column(ty[y], h0, h1, d), log2e<acc_t>(), -m2[y]);
      s[y] += fast_exp2(e);
      if (SMOOTH) swx2[y] = fcn_fma(wc, e, swx2[y]);
    }
  };
  if constexpr (fused_unroll4<T, SMOOTH>()) {
#pragma unroll 4
    for (int32_t c = 0; c < C; ++c, p0 += plane, p1 += plane) add_class(c, p0, p1);
  } else {
    for (int32_t c = 0; c < C; ++c, p0 += plane, p1 += plane) add_class(c, p0, p1);
  }
}

// z of one fine pixel for the class plane at p0 / p1 (the strip's expression).
template <bool SAFE, typename T, typename index_t>
FCN_HD acc_type<T> strip_logit(const T* p0, const T* p1, index_t dx,
                               const TapEntry<acc_type<T>>& ty, const TapEntry<acc_type<T>>& tx) {
  using Blend = StripBlend<SAFE>;
  const acc_type<T> h0 = Blend::row(tx, load_acc(p0), load_acc(p0 + dx));
  const acc_type<T> h1 = Blend::row(tx, load_acc(p1), load_acc(p1 + dx));
  return Blend::column(ty, h0, h1, h1 - h0);
}

// Whether fine row Y starts a strip (the first row of a run, or R rows into one).
template <int R, typename acc_t>
FCN_HD bool starts_strip(const ResampleTables<acc_t>& t, int32_t Y) {
  return (Y - t.row_runs[Y].begin) % R == 0;
}

// The loss of the strip starting at fine row Y (starts_strip), column X of image n.
template <int R, bool SMOOTH, typename T, typename index_t, typename label_t>
FCN_HD LossPartial<acc_type<T>> fused_forward_strip(
    const FusedArgs<acc_type<T>, index_t>& a, const ResampleTables<acc_type<T>>& t, const T* x,
    const acc_type<T>* cmax, const label_t* target, const acc_type<T>* weight, acc_type<T>* lse,
    acc_type<T>* loss_none, int* error_flag, int32_t n, int32_t Y, int32_t X) {
  using acc_t = acc_type<T>;
  LossPartial<acc_t> part{acc_t(0), acc_t(0)};
  if (Y >= a.out_h || X >= a.out_w) return part;
  const int32_t run_end = t.row_runs[Y].end;
  const int rows = run_end - Y < R ? run_end - Y : R;
  const TapEntry<acc_t> tx = t.cols[X];
  TapEntry<acc_t> ty[R];
  acc_t m2[R], s[R], swx2[R];
  bool safe = tap_skipped(tx.w0) || tap_skipped(tx.w1);
  const acc_t* cm = cmax + static_cast<int64_t>(n) * a.in_h * a.in_w;
  // The strip's rows read the same taps (only their weights differ): one bound for all.
  ty[0] = t.rows[Y];
  const acc_t bound2 =
      ChunkLse<acc_t, false>::safe(logit_bound(cm, a.in_w, ty[0], tx)) * log2e<acc_t>();
#pragma unroll
  for (int y = 0; y < R; ++y) {
    ty[y] = t.rows[Y + (y < rows ? y : rows - 1)];  // rows past the strip repeat its last
    m2[y] = bound2;
    s[y] = acc_t(0);
    swx2[y] = acc_t(0);
  }
  safe = safe || tap_skipped(ty[0].w0) || tap_skipped(ty[0].w1);  // the run's rows skip alike
  const T* image = x + static_cast<index_t>(n) * a.x.n;
  const T* p0 =
      image + static_cast<index_t>(ty[0].i0) * a.x.h + static_cast<index_t>(tx.i0) * a.x.w;
  const T* p1 =
      image + static_cast<index_t>(ty[0].i1) * a.x.h + static_cast<index_t>(tx.i0) * a.x.w;
  const index_t dx = static_cast<index_t>(tx.i1 - tx.i0) * a.x.w;
  const auto logit = [&](const T* q0, const T* q1, const TapEntry<acc_t>& row_taps) {
    return safe ? strip_logit<true>(q0, q1, dx, row_taps, tx)
                : strip_logit<false>(q0, q1, dx, row_taps, tx);
  };
  if (safe) {
    strip_sums<R, true, SMOOTH>(a.C, p0, p1, a.x.c, dx, weight, tx, ty, m2, s, swx2);
  } else {
    strip_sums<R, false, SMOOTH>(a.C, p0, p1, a.x.c, dx, weight, tx, ty, m2, s, swx2);
  }
  const acc_t wtotal = SMOOTH ? class_weight_total(weight, a.C) : acc_t(0);
  constexpr acc_t ln2 = static_cast<acc_t>(0.6931471805599453);
#pragma unroll
  for (int y = 0; y < R; ++y) {
    if (y >= rows) continue;
    ChunkLse<acc_t, SMOOTH> st;  // m, s and swx against the bound (its rounding: m2 ln 2)
    st.m = m2[y] * ln2;
    st.s = s[y];
    st.swx = swx2[y] * ln2;
    st.wsum = wtotal;
    if (st.s < acc_t(8.67361737988403547e-19)) {  // 2^-60: the bound was too loose
      st = ChunkLse<acc_t, SMOOTH>();
      for (int32_t c = 0; c < a.C; ++c) {
        const index_t plane = static_cast<index_t>(c) * a.x.c;
        const acc_t z[1] = {logit(p0 + plane, p1 + plane, ty[y])};
        const acc_t w[1] = {SMOOTH && weight != nullptr ? weight[c] : acc_t(1)};
        st.add(z, w);
      }
    }
    const int32_t Yy = Y + y;
    const int64_t tv = target[static_cast<index_t>(n) * a.tn + static_cast<index_t>(Yy) * a.th +
                              static_cast<index_t>(X) * a.tw];
    const auto target_logit = [&](int64_t tc) {
      const index_t plane = static_cast<index_t>(tc) * a.x.c;
      return logit(p0 + plane, p1 + plane, ty[y]);
    };
    acc_t lse_out = acc_t(0), loss_out = acc_t(0);
    finish_pixel_loss(a, st, tv, weight, target_logit, lse_out, loss_out, part, error_flag);
    const index_t at = static_cast<index_t>(n) * a.pixels + static_cast<index_t>(Yy) * a.out_w + X;
    lse[at] = lse_out;
    if (loss_none != nullptr) loss_none[at] = loss_out;
  }
  return part;
}

// ---- Argmax: labels (and the winner's softmax probability) of P fine pixels ----

// torch.argmax over classes: the first NaN wins; otherwise the largest, ties to the lowest
// class (a later equal value does not replace the winner).
template <typename acc_t>
FCN_HD bool takes_lead(acc_t candidate, acc_t best) {
  return best == best && (candidate != candidate || candidate > best);
}

// The labels (and confidences) of the strip starting at fine row Y (starts_strip), column X
// of image n: per class the strip's two horizontal blends, per (pixel, class) the vertical
// blend, a compare and two selects (and with the confidence the exp against the coarse-max
// bound, as the forward's sums). z > best keeps the first of equal maxima; a NaN, which
// torch.argmax lets win, is caught afterwards: a NaN logit makes `check` NaN (a sum of the
// z, or the confidence's sum), and that row is done again exactly with takes_lead and the
// blend of the taps' own weights (also exact where the fast blend met an inf).
template <int R, bool CONF, typename T, typename label_t, typename index_t>
FCN_HD void fused_argmax_strip(const FusedArgs<acc_type<T>, index_t>& a,
                               const ResampleTables<acc_type<T>>& t, const T* x,
                               const acc_type<T>* cmax, label_t* labels, float* confidence,
                               int32_t n, int32_t Y, int32_t X) {
  using acc_t = acc_type<T>;
  if (Y >= a.out_h || X >= a.out_w) return;
  const int32_t run_end = t.row_runs[Y].end;
  const int rows = run_end - Y < R ? run_end - Y : R;
  const TapEntry<acc_t> tx = t.cols[X];
  TapEntry<acc_t> ty[R];
#pragma unroll
  for (int y = 0; y < R; ++y) ty[y] = t.rows[Y + (y < rows ? y : rows - 1)];
  const bool safe = tap_skipped(tx.w0) || tap_skipped(tx.w1) || tap_skipped(ty[0].w0) ||
                    tap_skipped(ty[0].w1);  // the run's rows skip alike
  // (The strip set-up above repeats the forward's: shared as a struct, it cost both kernels
  // registers, 64 -> 69 and 80 -> 92, and the forward a quarter of its occupancy.)
  const T* image = x + static_cast<index_t>(n) * a.x.n;
  const T* p0 =
      image + static_cast<index_t>(ty[0].i0) * a.x.h + static_cast<index_t>(tx.i0) * a.x.w;
  const T* p1 =
      image + static_cast<index_t>(ty[0].i1) * a.x.h + static_cast<index_t>(tx.i0) * a.x.w;
  const index_t dx = static_cast<index_t>(tx.i1 - tx.i0) * a.x.w;
  acc_t bound2 = acc_t(0);
  if (CONF) {
    const acc_t* cm = cmax + static_cast<int64_t>(n) * a.in_h * a.in_w;
    bound2 = ChunkLse<acc_t, false>::safe(logit_bound(cm, a.in_w, ty[0], tx)) * log2e<acc_t>();
  }
  acc_t best[R], check[R];
  int32_t winner[R];
#pragma unroll
  for (int y = 0; y < R; ++y) {
    best[y] = neg_inf<acc_t>();
    check[y] = acc_t(0);
    winner[y] = 0;
  }
  const auto scan = [&](auto safe_tag) {
    using Blend = StripBlend<decltype(safe_tag)::value>;
    const T* q0 = p0;
    const T* q1 = p1;
    for (int32_t c = 0; c < a.C; ++c, q0 += a.x.c, q1 += a.x.c) {
      const acc_t h0 = Blend::row(tx, load_acc(q0), load_acc(q0 + dx));
      const acc_t h1 = Blend::row(tx, load_acc(q1), load_acc(q1 + dx));
      const acc_t d = h1 - h0;
#pragma unroll
      for (int y = 0; y < R; ++y) {
        const acc_t z = Blend::column(ty[y], h0, h1, d);
        const bool lead = z > best[y];
        best[y] = lead ? z : best[y];
        winner[y] = lead ? c : winner[y];
        check[y] += CONF ? fast_exp2(fcn_fma(z, log2e<acc_t>(), -bound2)) : z;
      }
    }
  };
  if (safe) {
    scan(std::true_type{});
  } else {
    scan(std::false_type{});
  }
  const index_t row0 = static_cast<index_t>(n) * a.pixels + static_cast<index_t>(Y) * a.out_w + X;
#pragma unroll
  for (int y = 0; y < R; ++y) {
    if (y >= rows) continue;
    acc_t b = best[y];
    int32_t w = winner[y];
    float conf = 0.0f;
    // The fast path is exact unless a logit was NaN (or the fast blend met an inf), or the
    // bound was so loose that the exps underflowed (2^-60, as the forward).
    const bool exact =
        check[y] == check[y] && (!CONF || check[y] >= acc_t(8.67361737988403547e-19));
    if (exact) {
      if (CONF)
        conf = static_cast<float>(fast_exp2(fcn_fma(b, log2e<acc_t>(), -bound2)) / check[y]);
    } else {
      OnlineLse<acc_t> st;
      const T* q0 = p0;
      const T* q1 = p1;
      for (int32_t c = 0; c < a.C; ++c, q0 += a.x.c, q1 += a.x.c) {
        const acc_t z = strip_logit<true>(q0, q1, dx, ty[y], tx);
        if (c == 0 || takes_lead(z, b)) {
          b = z;
          w = c;
        }
        if (CONF) st.add(z, acc_t(1), false);
      }
      // exp(z_winner - max) / sum exp(z - max): 1 / sum normally, NaN when a logit is NaN.
      if (CONF) conf = static_cast<float>(fcn_exp(shifted_logit(b, st.m)) / st.s);
    }
    const index_t at = row0 + static_cast<index_t>(y) * a.out_w;
    labels[at] = static_cast<label_t>(w);
    if (CONF) confidence[at] = conf;
  }
}

// ---- Backward ----

// Per fine pixel of a block's region (index (Y - ys.begin) * nx + X - xs.begin): lse, the
// gradient coefficients of grad_coef, and the target (-1 for a pixel that contributes
// nothing). Without label smoothing b == a and d == 0: b and d are not staged (12 bytes a
// pixel instead of 20, so a block covers a larger region with less halo).
template <typename acc_t>
struct PixelCoefs {
  acc_t *lse, *a;
  int32_t* target;
  acc_t *b, *d;  // smoothing only, else nullptr
};

// Bytes of staged coefficients per pixel.
FCN_HD int64_t pixel_coef_bytes(int acc_size, bool smoothing) {
  return (smoothing ? 4 : 2) * static_cast<int64_t>(acc_size) + 4;
}

// The coefficient arrays at the start of a block's shared memory (acc_t arrays first: each
// stays aligned to its element), capacity pixels each.
template <typename acc_t>
FCN_HD PixelCoefs<acc_t> pixel_coefs_in(void* shared, int32_t capacity, bool smoothing) {
  acc_t* f = static_cast<acc_t*>(shared);
  const int acc_arrays = smoothing ? 4 : 2;
  PixelCoefs<acc_t> c;
  c.lse = f;
  c.a = f + capacity;
  c.b = smoothing ? f + 2 * capacity : nullptr;
  c.d = smoothing ? f + 3 * capacity : nullptr;
  c.target = reinterpret_cast<int32_t*>(f + acc_arrays * capacity);
  return c;
}

// Shared bytes of a block: the pixel coefficients, then the accumulators (16-byte aligned).
template <typename acc_t>
FCN_HD int64_t fused_backward_vsum_offset(int32_t capacity, bool smoothing) {
  const int64_t bytes = pixel_coef_bytes(sizeof(acc_t), smoothing) * capacity;
  return (bytes + 15) / 16 * 16;
}

// Pixels per thread whose loads phase P issues together: one pixel's 12-20 bytes a thread
// would leave 6-10 KB in flight per SM, and phase P would wait a DRAM latency per pixel.
constexpr int kFusedStagePixels = 4;

// Phase P, pixel `thread` of `threads` onwards: the loads of kFusedStagePixels pixels first,
// then their coefficients into shared memory.
template <typename acc_t, typename index_t, typename label_t>
FCN_HD void fused_backward_stage(const FusedArgs<acc_t, index_t>& a, const BackwardBlock& b,
                                 const acc_t* lse, const label_t* target, const acc_t* weight,
                                 const acc_t* grad, acc_t scale, acc_t wtotal,
                                 const PixelCoefs<acc_t>& s, int32_t thread, int32_t threads) {
  constexpr int U = kFusedStagePixels;
  const int32_t nx = b.xs.end - b.xs.begin, count = (b.ys.end - b.ys.begin) * nx;
  const bool per_pixel_grad = a.reduction == kReductionNone;
  for (int32_t k0 = thread; k0 < count; k0 += threads * U) {
    int64_t tv[U];
    acc_t l[U], g[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int32_t k = k0 + u * threads;
      tv[u] = a.ignore_index;  // a pixel past the region: ignored, never stored
      l[u] = g[u] = acc_t(0);
      if (k < count) {
        const int32_t yy = k / nx;
        const index_t Y = b.ys.begin + yy, X = b.xs.begin + (k - yy * nx), n = b.n;
        tv[u] = target[n * a.tn + Y * a.th + X * a.tw];
        l[u] = lse[n * a.pixels + Y * a.out_w + X];
        if (per_pixel_grad) g[u] = grad[n * a.gn + Y * a.gh + X * a.gw];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int32_t k = k0 + u * threads;
      if (k >= count) break;
      const GradCoef<acc_t> coef =
          pixel_grad_coef(a, tv[u], weight, scale, wtotal, [&] { return g[u]; });
      // lse in base 2 as the exps use it (a pixel of -inf logits: 0, as the forward's shift).
      s.lse[k] = ChunkLse<acc_t, false>::safe(l[u]) * log2e<acc_t>();
      s.a[k] = coef.a;
      if (a.smoothing) {
        s.b[k] = coef.b;
        s.d[k] = coef.d;
      }
      s.target[k] = counted_target(a, tv[u]) ? static_cast<int32_t>(tv[u]) : -1;
    }
  }
}

// Classes per phase-A item: an item walks one fine column for kFusedItemClasses classes at
// once, so a row's staged coefficients, tap weights and loop overhead serve 4 classes.
constexpr int kFusedItemClasses = 4;

// Phase A items of a block: (fine column of the region, group of kFusedItemClasses classes),
// column fastest.
FCN_HD int32_t fused_backward_items(const BackwardBlock& b) {
  if (b.xs.end <= b.xs.begin || b.ys.end <= b.ys.begin) return 0;
  const int32_t groups = (b.classes + kFusedItemClasses - 1) / kFusedItemClasses;
  return groups * (b.xs.end - b.xs.begin);
}

// Phase A, item `thread` of `threads` onwards: for each of the item's classes, z is recomputed
// at every fine row of the block's region with the forward's expression, turned into
// d loss / d z and streamed into the vertical adjoint (two accumulators, input rows r and
// r + 1, handed to the block's shared sums as rows finish). Rows are walked a run at a time
// (the tables' row runs: rows that read the same two input rows): per run and class the two
// horizontal blends; per (row, class) one FFMA for z, FFMA + EX2 for p, the gradient, and two
// FFMAs into the accumulators.
template <bool SMOOTH, typename T, typename index_t>
FCN_HD void fused_backward_rows(const FusedArgs<acc_type<T>, index_t>& a, const BackwardBlock& b,
                                const ResampleTables<acc_type<T>>& t, const T* x,
                                const acc_type<T>* weight, const PixelCoefs<acc_type<T>>& s,
                                acc_type<T>* vsum, int32_t thread, int32_t threads) {
  using acc_t = acc_type<T>;
  constexpr int G = kFusedItemClasses;
  const int32_t items = fused_backward_items(b);
  const int32_t nx = b.xs.end - b.xs.begin;
  const T* image = x + static_cast<index_t>(b.n) * a.x.n;
  for (int32_t item = thread; item < items; item += threads) {
    const int32_t group = item / nx, k0 = item - group * nx, X = b.xs.begin + k0;
    const int32_t c0 = group * G;  // within the block's classes
    const int here = b.classes - c0 < G ? b.classes - c0 : G;
    int32_t column[G];
    acc_t wc[G];
    const T* plane[G];
#pragma unroll
    for (int j = 0; j < G; ++j) {
      const int32_t c = c0 + (j < here ? j : 0);  // past the block's classes: class c0 again
      column[j] = backward_column(a.layout, b, X, c);
      wc[j] = SMOOTH && weight != nullptr ? weight[b.c0 + c] : acc_t(1);
      plane[j] = image + static_cast<index_t>(b.c0 + c) * a.x.c;
      if (j < here) zero_item_columns<acc_t, 1>(vsum, a.layout, b, column[j]);
    }
    const TapEntry<acc_t> tx = t.cols[X];
    const index_t cx0 = static_cast<index_t>(tx.i0) * a.x.w,
                  cx1 = static_cast<index_t>(tx.i1) * a.x.w;
    acc_t v0[G], v1[G];
    int32_t r = -1;  // the input row of v0 (v1: r + 1)
    const auto flush = [&](int32_t row, const acc_t(&v)[G]) {
#pragma unroll
      for (int j = 0; j < G; ++j) {
        const acc_t value[1] = {v[j]};
        if (j < here) flush_item_row<acc_t, 1>(vsum, a.layout, b, column[j], row, value);
      }
    };
    for (int32_t Y = b.ys.begin; Y < b.ys.end;) {
      const int32_t end = t.row_runs[Y].end < b.ys.end ? t.row_runs[Y].end : b.ys.end;
      const TapEntry<acc_t> ty = t.rows[Y];
      // Roll the accumulators to input row ty.i0.
      if (r < 0) {
#pragma unroll
        for (int j = 0; j < G; ++j) v0[j] = v1[j] = acc_t(0);
      } else if (ty.i0 != r) {
        flush(r, v0);
        if (ty.i0 == r + 1) {
#pragma unroll
          for (int j = 0; j < G; ++j) v0[j] = v1[j];
        } else {
          flush(r + 1, v1);
#pragma unroll
          for (int j = 0; j < G; ++j) v0[j] = acc_t(0);
        }
#pragma unroll
        for (int j = 0; j < G; ++j) v1[j] = acc_t(0);
      }
      r = ty.i0;
      acc_t h0[G], h1[G], dh[G];
      const index_t ry0 = static_cast<index_t>(ty.i0) * a.x.h,
                    ry1 = static_cast<index_t>(ty.i1) * a.x.h;
#pragma unroll
      for (int j = 0; j < G; ++j) {
        h0[j] =
            tap_blend(tx.w0, load_acc(plane[j] + ry0 + cx0), tx.w1, load_acc(plane[j] + ry0 + cx1));
        h1[j] =
            tap_blend(tx.w0, load_acc(plane[j] + ry1 + cx0), tx.w1, load_acc(plane[j] + ry1 + cx1));
        dh[j] = h1[j] - h0[j];
      }
      // The run's rows. SAFE: a tap is outside the input (the zero boundary's first or last
      // rows or columns): the blend skips it (StripBlend<true>), and a skipped vertical tap
      // accumulates nothing. Decided per run, so the per-(row, class) code has no branch.
      const auto rows = [&](auto safe_tag) {
        constexpr bool SAFE = decltype(safe_tag)::value;
        int32_t k = (Y - b.ys.begin) * nx + k0;
        for (int32_t Yr = Y; Yr < end; ++Yr, k += nx) {
          const TapEntry<acc_t> tr = t.rows[Yr];
          const acc_t l2 = s.lse[k], ak = s.a[k];
          const acc_t bk = SMOOTH ? s.b[k] : ak, dk = SMOOTH ? s.d[k] : acc_t(0);
          const int32_t tk = s.target[k];
#pragma unroll
          for (int j = 0; j < G; ++j) {
            const acc_t z = StripBlend<SAFE>::column(tr, h0[j], h1[j], dh[j]);
            const acc_t p = fast_exp2(fcn_fma(z, log2e<acc_t>(), -l2));
            acc_t g = SMOOTH ? fcn_fma(p, ak, -dk * wc[j]) : p * ak;
            g = tk == b.c0 + c0 + j ? g - bk : g;
            if (!SAFE || !tap_skipped(tr.w0)) v0[j] = fcn_fma(tr.w0, g, v0[j]);
            if (!SAFE || !tap_skipped(tr.w1)) v1[j] = fcn_fma(tr.w1, g, v1[j]);
          }
        }
      };
      if (tap_skipped(tx.w0) || tap_skipped(tx.w1) || tap_skipped(ty.w0) || tap_skipped(ty.w1)) {
        rows(std::true_type{});
      } else {
        rows(std::false_type{});
      }
      if (ty.i1 == ty.i0) {  // the clamp boundary's last rows read one input row twice
#pragma unroll
        for (int j = 0; j < G; ++j) {
          v0[j] += v1[j];
          v1[j] = acc_t(0);
        }
      }
      Y = end;
    }
    if (r >= 0) {
      flush(r, v0);
      flush(r + 1, v1);
    }
  }
}

// ---- Host-side plans ----

struct FusedPlan {
  int P;
  bool index64;
  FusedArgs<double, int64_t> args;
  int64_t grid_x, grid_y;  // forward / argmax: (runs of P pixels per image / threads, images)
  int32_t groups, blocks;  // backward
  int64_t smem_bytes;      // backward
  int64_t coarse_entries;  // forward: the coarse-max pass's entries (N * in_h * in_w)
};

// Shared bytes a fused backward block may use: half a multiprocessor's (two blocks resident,
// as the launch bounds ask) less the 1 KB the runtime reserves per block, at most what one
// block may opt in to. A larger block recomputes fewer halo rows and columns: on an H100
// (228 KB a multiprocessor) 113 KB, where the default 48 KB recomputed twice the region.
inline int64_t fused_backward_smem_budget(int64_t shared_per_sm, int64_t shared_per_block_optin) {
  const int64_t half = shared_per_sm / 2 - 1024;
  return half < shared_per_block_optin ? half : shared_per_block_optin;
}

// The H100's (and H200's) shared memory: the emulation and the static model plan with it.
constexpr int64_t kH100SharedPerSM = 228 * 1024, kH100SharedPerBlockOptIn = 227 * 1024;

// x (N, C, in_h, in_w) strides xs; target strides ts (N, H, W); out_h, out_w; pixel_out and
// second_out (or nullptr): the contiguous per-pixel outputs (lse and loss, or labels and
// confidence) whose alignment decides vector stores.
inline FusedPlan plan_fused(const int64_t (&x_sizes)[4], const int64_t (&xs)[4],
                            const int64_t (&ts)[3], int64_t out_h, int64_t out_w,
                            const void* pixel_out, int pixel_out_size, const void* second_out,
                            int second_out_size, bool force_index64, int forced_pixels = 0) {
  FusedPlan p{};
  FusedArgs<double, int64_t>& a = p.args;
  const int64_t N = x_sizes[0];
  a.N = static_cast<int32_t>(N);
  a.C = static_cast<int32_t>(x_sizes[1]);
  a.in_h = static_cast<int32_t>(x_sizes[2]);
  a.in_w = static_cast<int32_t>(x_sizes[3]);
  a.out_h = static_cast<int32_t>(out_h);
  a.out_w = static_cast<int32_t>(out_w);
  a.pixels = static_cast<int32_t>(out_h * out_w);
  a.x = Strides<int64_t>{xs[0], xs[1], xs[2], xs[3]};
  a.tn = ts[0];
  a.th = ts[1];
  a.tw = ts[2];
  const int64_t t_sizes[4] = {N, out_h, out_w, 1}, t_strides[4] = {ts[0], ts[1], ts[2], 0};
  p.index64 = force_index64 || !fits_int32(tensor_extent(x_sizes, xs)) ||
              !fits_int32(tensor_extent(t_sizes, t_strides)) || !fits_int32(N * out_h * out_w);
  // 4 pixels a thread: 16-byte lse / confidence stores. Past 2^31 elements one pixel a
  // thread (the 64-bit kernels are compiled for that only).
  p.P = forced_pixels > 0 ? forced_pixels : (p.index64 ? 1 : 4);
  a.pixel_vector =
      p.P > 1 && vector_rows_ok(pixel_out, pixel_out_size, p.P, {a.pixels}) &&
      (second_out == nullptr || vector_rows_ok(second_out, second_out_size, p.P, {a.pixels}));
  const int64_t per_block = static_cast<int64_t>(p.P) * kFusedThreads;
  p.grid_x = (a.pixels + per_block - 1) / per_block;
  p.grid_x = p.grid_x < 1 ? 1 : p.grid_x;
  p.grid_y = N < 1 ? 1 : (N < 65535 ? N : 65535);
  return p;
}

// The forward's launch (fused_forward_kernel): a block per (tile of kFusedThreads fine
// columns, fine row; rows past 65535 strided), each thread its column's strip starting in the
// row, for every image; and the coarse-max pass's entries, one per coarse pixel.
inline void plan_fused_forward(FusedPlan& p) {
  const FusedArgs<double, int64_t>& a = p.args;
  p.grid_x = (static_cast<int64_t>(a.out_w) + kFusedThreads - 1) / kFusedThreads;
  p.grid_x = p.grid_x < 1 ? 1 : p.grid_x;
  p.grid_y = a.out_h < 1 ? 1 : (a.out_h < 65535 ? a.out_h : 65535);
  p.coarse_entries = static_cast<int64_t>(a.N) * a.in_h * a.in_w;
}

// The backward's blocks: classes per block, band rows and tile columns chosen so that the
// staged pixels and the accumulators fit, the fine region each block recomputes (halos
// included) is smallest, and per-pixel data is not re-staged for too many class groups.
inline void plan_fused_backward(FusedPlan& p, const AxisGeometry& h, const AxisGeometry& w,
                                int acc_size, bool smoothing, const int64_t (&gxs)[4],
                                const int64_t (&gs)[3], int64_t smem_budget) {
  FusedArgs<double, int64_t>& a = p.args;
  a.grad_x = Strides<int64_t>{gxs[0], gxs[1], gxs[2], gxs[3]};
  a.gn = gs[0];
  a.gh = gs[1];
  a.gw = gs[2];
  // Interleaved items (all classes of an X in turn) when x keeps classes contiguous: the
  // coarse loads of neighbouring threads then share lines.
  const bool interleaved = a.C > 1 && a.x.c == 1;
  const int64_t pixel_bytes = pixel_coef_bytes(acc_size, smoothing);
  BackwardShape best{};
  double best_cost = -1.0;
  for (int32_t Cg = a.C;; Cg = (Cg + 1) / 2) {
    const BackwardShape shape = choose_backward_shape(h, w, interleaved, Cg, 1, acc_size,
                                                      smem_budget - 64, pixel_bytes, 0x7fffffff);
    if (shape.layout.Cg > 0) {
      // Per class: the recomputed region; per group: staging (~4 class-steps per pixel).
      const int32_t groups_per_n = (a.C + Cg - 1) / Cg;
      const double cost = shape.cost * (a.C + 4.0 * groups_per_n);
      if (best_cost < 0.0 || cost < best_cost) {
        best_cost = cost;
        best = shape;
      }
    }
    if (Cg == 1) break;
  }
  a.layout = best.layout;
  a.pixel_capacity = best.max_rows * best.max_cols;
  p.groups = best.layout.Cg == 0
                 ? 0
                 : static_cast<int32_t>(p.args.N * ((a.C + best.layout.Cg - 1) / best.layout.Cg));
  p.blocks = best.layout.bands * best.layout.tiles;
  const int64_t coef_bytes = acc_size == 8
                                 ? fused_backward_vsum_offset<double>(a.pixel_capacity, smoothing)
                                 : fused_backward_vsum_offset<float>(a.pixel_capacity, smoothing);
  p.smem_bytes = best.layout.Cg == 0 ? 0
                                     : coef_bytes + static_cast<int64_t>(best.layout.band_rows) *
                                                        best.layout.smem_row * acc_size;
  const int64_t gx_sizes[4] = {a.N, a.C, a.in_h, a.in_w};
  p.index64 = p.index64 || !fits_int32(tensor_extent(gx_sizes, gxs));
}

template <typename acc_t, typename index_t>
FusedArgs<acc_t, index_t> narrow_fused_args(const FusedArgs<double, int64_t>& a,
                                            int64_t ignore_index, int64_t reduction,
                                            double label_smoothing) {
  FusedArgs<acc_t, index_t> r;
  r.N = a.N;
  r.C = a.C;
  r.in_h = a.in_h;
  r.in_w = a.in_w;
  r.out_h = a.out_h;
  r.out_w = a.out_w;
  r.pixels = a.pixels;
  r.x = narrow<index_t>(a.x);
  r.tn = static_cast<index_t>(a.tn);
  r.th = static_cast<index_t>(a.th);
  r.tw = static_cast<index_t>(a.tw);
  r.gn = static_cast<index_t>(a.gn);
  r.gh = static_cast<index_t>(a.gh);
  r.gw = static_cast<index_t>(a.gw);
  r.grad_x = narrow<index_t>(a.grad_x);
  r.ignore_index = ignore_index;
  r.reduction = static_cast<int32_t>(reduction);
  r.eps = static_cast<acc_t>(label_smoothing);
  r.eps_over_c = r.eps / static_cast<acc_t>(a.C);
  r.smoothing = label_smoothing > 0.0;
  r.pixel_vector = a.pixel_vector;
  r.layout = a.layout;
  r.pixel_capacity = a.pixel_capacity;
  return r;
}

}  // namespace fcn_fast
