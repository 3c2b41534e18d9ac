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

// The 4 taps of one fine pixel: offsets (relative to class 0 of the image) and weights.
template <typename acc_t, typename index_t>
struct PixelTaps {
  index_t o00, o01, o10, o11;  // (row tap, column tap)
  acc_t wy0, wy1, wx0, wx1;
};

template <typename acc_t, typename index_t>
FCN_HD PixelTaps<acc_t, index_t> pixel_taps(const TapEntry<acc_t>& ty, const TapEntry<acc_t>& tx,
                                            const Strides<index_t>& s) {
  PixelTaps<acc_t, index_t> p;
  const index_t r0 = static_cast<index_t>(ty.i0) * s.h, r1 = static_cast<index_t>(ty.i1) * s.h;
  const index_t c0 = static_cast<index_t>(tx.i0) * s.w, c1 = static_cast<index_t>(tx.i1) * s.w;
  p.o00 = r0 + c0;
  p.o01 = r0 + c1;
  p.o10 = r1 + c0;
  p.o11 = r1 + c1;
  p.wy0 = ty.w0;
  p.wy1 = ty.w1;
  p.wx0 = tx.w0;
  p.wx1 = tx.w1;
  return p;
}

// z at one fine pixel for the class whose plane starts at xc. The backward's RowPair forms
// the same two horizontal blends and the same vertical one: both see identical z.
template <typename T, typename index_t>
FCN_HD acc_type<T> pixel_logit(const PixelTaps<acc_type<T>, index_t>& p, const T* xc) {
  const acc_type<T> top = tap_blend(p.wx0, load_acc(xc + p.o00), p.wx1, load_acc(xc + p.o01));
  const acc_type<T> bottom = tap_blend(p.wx0, load_acc(xc + p.o10), p.wx1, load_acc(xc + p.o11));
  return tap_blend(p.wy0, top, p.wy1, bottom);
}

// Taps of pixels q0 .. q0 + P - 1 (those past `count` repeat the first: read, never used).
template <int P, typename acc_t, typename index_t>
FCN_HD void run_taps(const FusedArgs<acc_t, index_t>& a, const ResampleTables<acc_t>& t, int32_t q0,
                     int count, PixelTaps<acc_t, index_t> (&taps)[P]) {
  int32_t Y = q0 / a.out_w, X = q0 - Y * a.out_w;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    if (p < count) {
      taps[p] = pixel_taps<acc_t, index_t>(t.rows[Y], t.cols[X], a.x);
    } else {
      taps[p] = taps[0];
    }
    if (++X == a.out_w) {
      X = 0;
      ++Y;
    }
  }
}

// ---- Forward: loss of P fine pixels q0 .. of image n ----

template <int P, typename T, typename index_t>
FCN_HD LossPartial<acc_type<T>> fused_forward_pixels(const FusedArgs<acc_type<T>, index_t>& a,
                                                     const ResampleTables<acc_type<T>>& t,
                                                     const T* x, const int64_t* target,
                                                     const acc_type<T>* weight, acc_type<T>* lse,
                                                     acc_type<T>* loss_none, int* error_flag,
                                                     int32_t n, int32_t q0) {
  using acc_t = acc_type<T>;
  LossPartial<acc_t> part{acc_t(0), acc_t(0)};
  const int count = a.pixels - q0 < P ? a.pixels - q0 : P;
  if (count <= 0) return part;
  PixelTaps<acc_t, index_t> taps[P];
  run_taps<P>(a, t, q0, count, taps);
  const T* image = x + static_cast<index_t>(n) * a.x.n;
  OnlineLse<acc_t> st[P];
  for (int32_t c = 0; c < a.C; ++c) {
    const T* xc = image + static_cast<index_t>(c) * a.x.c;
    const acc_t wc = (a.smoothing && weight != nullptr) ? weight[c] : acc_t(1);
#pragma unroll
    for (int p = 0; p < P; ++p) st[p].add(pixel_logit(taps[p], xc), wc, a.smoothing);
  }
  acc_t lse_out[P], loss_out[P];
  int32_t Y = q0 / a.out_w, X = q0 - Y * a.out_w;  // of pixel p, stepped below
#pragma unroll
  for (int p = 0; p < P; ++p, ++X) {
    if (X == a.out_w) {
      X = 0;
      ++Y;
    }
    lse_out[p] = acc_t(0);
    loss_out[p] = acc_t(0);
    if (p >= count) continue;
    const int64_t tv = target[static_cast<index_t>(n) * a.tn + static_cast<index_t>(Y) * a.th +
                              static_cast<index_t>(X) * a.tw];
    const auto target_logit = [&](int64_t t) {
      return pixel_logit(taps[p], image + static_cast<index_t>(t) * a.x.c);
    };
    finish_pixel_loss(a, st[p], tv, weight, target_logit, lse_out[p], loss_out[p], part,
                      error_flag);
  }
  const index_t at = static_cast<index_t>(n) * a.pixels + q0;
  const bool vector = a.pixel_vector && count == P;
  store_run<P>(lse + at, index_t(1), count, vector, lse_out);
  if (loss_none != nullptr) store_run<P>(loss_none + at, index_t(1), count, vector, loss_out);
  return part;
}

// ---- Argmax: labels (and the winner's softmax probability) of P fine pixels ----

// torch.argmax over classes: the first NaN wins; otherwise the largest, ties to the lowest
// class (a later equal value does not replace the winner).
template <typename acc_t>
FCN_HD bool takes_lead(acc_t candidate, acc_t best) {
  return best == best && (candidate != candidate || candidate > best);
}

template <int P, typename T, typename label_t, typename index_t>
FCN_HD void fused_argmax_pixels(const FusedArgs<acc_type<T>, index_t>& a,
                                const ResampleTables<acc_type<T>>& t, const T* x, label_t* labels,
                                float* confidence, int32_t n, int32_t q0) {
  using acc_t = acc_type<T>;
  const int count = a.pixels - q0 < P ? a.pixels - q0 : P;
  if (count <= 0) return;
  PixelTaps<acc_t, index_t> taps[P];
  run_taps<P>(a, t, q0, count, taps);
  const T* image = x + static_cast<index_t>(n) * a.x.n;
  acc_t best[P];
  int32_t winner[P];
  OnlineLse<acc_t> st[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    best[p] = pixel_logit(taps[p], image);
    winner[p] = 0;
    if (confidence != nullptr) st[p].add(best[p], acc_t(1), false);
  }
  for (int32_t c = 1; c < a.C; ++c) {
    const T* xc = image + static_cast<index_t>(c) * a.x.c;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const acc_t z = pixel_logit(taps[p], xc);
      if (takes_lead(z, best[p])) {
        best[p] = z;
        winner[p] = c;
      }
      if (confidence != nullptr) st[p].add(z, acc_t(1), false);
    }
  }
  const index_t at = static_cast<index_t>(n) * a.pixels + q0;
  const bool vector = a.pixel_vector && count == P;
  Pack<label_t, P> out_labels;
  Pack<float, P> out_confidence;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    out_labels.v[p] = static_cast<label_t>(winner[p]);
    // exp(z_winner - max) / sum exp(z - max): 1 / sum normally, NaN when a logit is NaN.
    out_confidence.v[p] = static_cast<float>(fcn_exp(shifted_logit(best[p], st[p].m)) / st[p].s);
  }
  if (vector) {
    store_pack<P>(labels + at, out_labels);
    if (confidence != nullptr) store_pack<P>(confidence + at, out_confidence);
  } else {
#pragma unroll
    for (int p = 0; p < P; ++p) {
      if (p >= count) continue;
      labels[at + p] = out_labels.v[p];
      if (confidence != nullptr) confidence[at + p] = out_confidence.v[p];
    }
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

// Phase P, pixel `thread` of `threads` onwards.
template <typename acc_t, typename index_t>
FCN_HD void fused_backward_stage(const FusedArgs<acc_t, index_t>& a, const BackwardBlock& b,
                                 const acc_t* lse, const int64_t* target, const acc_t* weight,
                                 const acc_t* grad, acc_t scale, acc_t wtotal,
                                 const PixelCoefs<acc_t>& s, int32_t thread, int32_t threads) {
  const int32_t nx = b.xs.end - b.xs.begin, count = (b.ys.end - b.ys.begin) * nx;
  for (int32_t k = thread; k < count; k += threads) {
    const int32_t yy = k / nx;
    const int32_t Y = b.ys.begin + yy, X = b.xs.begin + (k - yy * nx);
    const int64_t tv = target[static_cast<index_t>(b.n) * a.tn + static_cast<index_t>(Y) * a.th +
                              static_cast<index_t>(X) * a.tw];
    const GradCoef<acc_t> coef = pixel_grad_coef(a, tv, weight, scale, wtotal, [&] {
      return grad[static_cast<index_t>(b.n) * a.gn + static_cast<index_t>(Y) * a.gh +
                  static_cast<index_t>(X) * a.gw];
    });
    s.lse[k] = lse[static_cast<index_t>(b.n) * a.pixels + static_cast<index_t>(Y) * a.out_w + X];
    s.a[k] = coef.a;
    if (a.smoothing) {
      s.b[k] = coef.b;
      s.d[k] = coef.d;
    }
    s.target[k] = counted_target(a, tv) ? static_cast<int32_t>(tv) : -1;
  }
}

// Phase A, item (one fine column of one class) `thread` of `threads` onwards.
template <typename T, typename index_t>
FCN_HD void fused_backward_rows(const FusedArgs<acc_type<T>, index_t>& a, const BackwardBlock& b,
                                const ResampleTables<acc_type<T>>& t, const T* x,
                                const acc_type<T>* weight, const PixelCoefs<acc_type<T>>& s,
                                acc_type<T>* vsum, int32_t thread, int32_t threads) {
  using acc_t = acc_type<T>;
  const int32_t items = backward_items(a.layout, b, 1);
  const int32_t nx = b.xs.end - b.xs.begin;
  const T* image = x + static_cast<index_t>(b.n) * a.x.n;
  for (int32_t item = thread; item < items; item += threads) {
    int32_t X[1], c[1], column;
    const int count = backward_item<1>(a.layout, b, a.out_w, item, X, c, &column);
    zero_item_columns<acc_t, 1>(vsum, a.layout, b, column);
    if (count == 0) continue;
    const int32_t cls = b.c0 + c[0];
    const TapEntry<acc_t> tx = t.cols[X[0]];
    const index_t plane = static_cast<index_t>(cls) * a.x.c;
    const index_t col0 = static_cast<index_t>(tx.i0) * a.x.w + plane;
    const index_t col1 = static_cast<index_t>(tx.i1) * a.x.w + plane;
    const acc_t wc = (a.smoothing && weight != nullptr) ? weight[cls] : acc_t(1);
    const auto fill = [&](int32_t row, acc_t(&h)[1]) {
      const T* r = image + static_cast<index_t>(row) * a.x.h;
      h[0] = tap_blend(tx.w0, load_acc(r + col0), tx.w1, load_acc(r + col1));
    };
    const auto flush = [&](int32_t row, const acc_t(&acc)[1]) {
      flush_item_row<acc_t, 1>(vsum, a.layout, b, column, row, acc);
    };
    RowPair<acc_t, 1> pair;
    RollingRows<acc_t, 1> rolling;
    int32_t k = X[0] - b.xs.begin;
    for (int32_t Y = b.ys.begin; Y < b.ys.end; ++Y, k += nx) {
      const TapEntry<acc_t> ty = t.rows[Y];
      pair.update(tap_row(ty.i0, ty.w0), tap_row(ty.i1, ty.w1), fill);
      const acc_t z = tap_blend(ty.w0, pair.h0[0], ty.w1, pair.h1[0]);
      // Without smoothing b == a and d == 0 (grad_coef leaves a = b + 0 exactly).
      const acc_t ak = s.a[k];
      const GradCoef<acc_t> coef{ak, a.smoothing ? s.b[k] : ak, a.smoothing ? s.d[k] : acc_t(0)};
      acc_t g[1];
      g[0] = grad_element(fcn_exp(shifted_logit(z, s.lse[k])), coef, wc, cls == s.target[k]);
      rolling.add(ty, g, flush);
    }
    rolling.finish(flush);
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
};

constexpr int64_t kFusedSmemBudget = 46 * 1024;

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

// The backward's blocks: classes per block, band rows and tile columns chosen so that the
// staged pixels and the accumulators fit, the fine region each block recomputes (halos
// included) is smallest, and per-pixel data is not re-staged for too many class groups.
inline void plan_fused_backward(FusedPlan& p, const AxisGeometry& h, const AxisGeometry& w,
                                int acc_size, bool smoothing, const int64_t (&gxs)[4],
                                const int64_t (&gs)[3]) {
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
    const BackwardShape shape = choose_backward_shape(
        h, w, interleaved, Cg, 1, acc_size, kFusedSmemBudget - 64, pixel_bytes, 0x7fffffff);
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
