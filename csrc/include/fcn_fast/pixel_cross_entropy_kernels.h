#pragma once
// Per-thread code of the CUDA pixel_cross_entropy kernels (csrc/cuda/pixel_cross_entropy.cu)
// and the host-side plan of their launches. Plain C++ (no CUDA runtime, no ATen): the
// __global__ kernels wrap these functions, and tests/test_cuda_emulation.py runs the same
// functions over the whole grid on the CPU. The per-pixel math is pixel_cross_entropy_math.h.
//
// Two ways through the logits (N, C, S):
// * pixel runs (S contiguous, NCHW): a thread owns P consecutive pixels (P * element size
//   = 16 bytes) and walks the classes; each class step is one 16-byte load per thread, one
//   contiguous 512-byte piece per warp.
// * staged chunks (classes contiguous, channels_last): a block copies a contiguous chunk of
//   pixels (all their classes) into shared memory with 16-byte accesses, then each thread
//   walks one pixel's classes there; the backward writes its gradient in place and copies
//   the chunk out the same way.
// Reductions: per-thread partials, a fixed-order block sum, one partial per block, summed in
// block order by the last block to finish (an integer ticket, no float atomics, no host
// sync): deterministic.
#include <stdint.h>

#include <type_traits>

#include "fcn_fast/element_access.h"
#include "fcn_fast/pixel_cross_entropy_math.h"

namespace fcn_fast {

constexpr int kLossThreads = 256;

// The GPU kernels take their exps in base 2: exp(x - m) = 2^(x log2e - m log2e), one FFMA with
// m log2e kept per pixel and one MUFU.EX2 (ex2.approx.ftz.f32: relative error below 2^-22,
// far inside float's 1e-5; a result below 2^-126 flushes to 0, nothing in a sum whose largest
// term is 1). Where precise expf would cost ~10 instructions. Host code (the CPU emulation of
// the kernels) takes exp2f; double, exp2.
template <typename T>
FCN_HD constexpr T log2e() {
  return static_cast<T>(1.4426950408889634);
}
FCN_HD float fast_exp2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}
FCN_HD double fast_exp2(double x) { return exp2(x); }

// The softmax statistics of one pixel, K classes at a time (the kernels load K class rows,
// then do their arithmetic): one max over the chunk, one rescale of the running sum per chunk,
// one FFMA + EX2 + FADD per logit. No branch per logit: a logit whose exp would be -inf - -inf
// (every logit so far -inf) is shifted by 0 instead of the -inf max, so -inf logits add 0 and
// the loss stays finite, as in PyTorch; a NaN or +inf logit makes the sum NaN. SMOOTH also
// keeps swx = sum w (x - m), relative to the max (terms of one sign: no cancellation).
template <typename T, bool SMOOTH>
struct ChunkLse {
  T m = neg_inf<T>();  // max so far (NaN logits skipped: they poison s instead)
  T s = T(0);          // sum 2^((x - m) log2e)
  T swx = T(0);        // SMOOTH: sum w (x - m)
  T wsum = T(0);       // SMOOTH: sum w

  // The shift that exps are taken against: m, or 0 while every logit is -inf.
  static FCN_HD T safe(T m) { return m == neg_inf<T>() ? T(0) : m; }

  // classes < K: only the first `classes` are logits (the rest, padding, are -inf).
  template <int K>
  FCN_HD void add(const T (&x)[K], const T (&w)[K], int classes = K) {
    T cm = x[0];
#pragma unroll
    for (int k = 1; k < K; ++k) cm = fmax(cm, x[k]);
    const T m_new = fmax(m, cm);
    const T shift = safe(m_new), shift2 = shift * log2e<T>();
    // The old m, not safe(m): while it is -inf the factor is 2^-inf = 0 (s is 0 anyway),
    // where a shift of 0 could overflow to inf and make 0 * inf.
    s *= fast_exp2(fcn_fma(m, log2e<T>(), -shift2));
    if (SMOOTH) {
      if (wsum != T(0)) swx = fcn_fma(wsum, m - shift, swx);
    }
    m = m_new;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      s += fast_exp2(fcn_fma(x[k], log2e<T>(), -shift2));
      if (SMOOTH && k < classes) {
        swx = fcn_fma(w[k], x[k] - shift, swx);
        wsum += w[k];
      }
    }
  }
};

template <typename acc_t, typename index_t>
struct LossArgs {
  int32_t N, C, S;
  index_t xn, xc, xs;  // logits strides
  index_t tn, ts;      // target strides
  index_t gn, gs;      // backward, reduction none: strides of grad (0 allowed)
  index_t on, oc, os;  // backward: grad_logits strides
  int64_t ignore_index;
  int32_t reduction;
  acc_t eps, eps_over_c;
  bool smoothing;                           // label_smoothing > 0
  bool x_vector, out_vector, pixel_vector;  // logits / grad_logits / lse, loss pixel runs
  int32_t chunk;                            // staged path: pixels per block (0: pixel runs)
};

template <typename acc_t>
struct LossPartial {
  acc_t loss, weight;
};

// Sum of the class weights in class order (C without weights): the smoothing term's W.
template <typename acc_t>
FCN_HD acc_t class_weight_total(const acc_t* weight, int32_t C) {
  if (weight == nullptr) return static_cast<acc_t>(C);
  acc_t total = acc_t(0);
  for (int32_t c = 0; c < C; ++c) total += weight[c];
  return total;
}

// A target the loss counts: not ignore_index and in [0, C). Args: LossArgs or FusedArgs.
template <typename Args>
FCN_HD bool counted_target(const Args& a, int64_t tv) {
  return tv != a.ignore_index && tv >= 0 && tv < a.C;
}

// One pixel's step after its class loop st (ChunkLse or OnlineLse): lse_out, and for a counted
// target tv its loss (added to part); target_logit(tv) reads the target's logit. A target outside
// [0, C) that is not ignore_index sets *error_flag (every writer stores the same value: no atomic
// needed).
template <typename Args, typename State, typename acc_t, typename TargetLogit>
FCN_HD void finish_pixel_loss(const Args& a, const State& st, int64_t tv, const acc_t* weight,
                              TargetLogit target_logit, acc_t& lse_out, acc_t& loss_out,
                              LossPartial<acc_t>& part, int* error_flag) {
  const acc_t logs = fcn_log(st.s);
  lse_out = st.m + logs;
  if (!counted_target(a, tv)) {
    if (tv != a.ignore_index) *error_flag = 1;
    return;
  }
  const acc_t wt = weight == nullptr ? acc_t(1) : weight[tv];
  loss_out =
      pixel_loss(logs, shifted_logit(target_logit(tv), st.m), wt, a.smoothing ? st.swx : acc_t(0),
                 a.smoothing ? st.wsum : acc_t(0), a.eps, a.eps_over_c);
  part.loss += loss_out;
  part.weight += wt;
}

// A pixel's gradient coefficients: zero unless its target is counted (the forward flagged the
// invalid ones). pixel_grad() reads its upstream gradient, used for reduction none; the other
// reductions pass reduced_grad_scale's scale.
template <typename Args, typename acc_t, typename PixelGrad>
FCN_HD GradCoef<acc_t> pixel_grad_coef(const Args& a, int64_t tv, const acc_t* weight, acc_t scale,
                                       acc_t wtotal, PixelGrad pixel_grad) {
  if (!counted_target(a, tv)) return GradCoef<acc_t>{acc_t(0), acc_t(0), acc_t(0)};
  return grad_coef(a.reduction == kReductionNone ? pixel_grad() : scale,
                   weight == nullptr ? acc_t(1) : weight[tv], wtotal, a.eps, a.eps_over_c);
}

// Classes per step of the pixel loops: K class rows of the thread's P pixels are loaded before
// any arithmetic on them, and the next K while these are computed, so up to 2 K loads of 16
// bytes are in flight a thread (32 KB or more a multiprocessor at 512 threads). The last C % K
// classes take one masked step. The element loads (a row's last pixels, misaligned tensors)
// take one class a step: fewer registers for a path the fast one's occupancy should not pay
// for; so do the smoothing sums of 8 pixels of 16 bits, 2 in the forward and 1 in the backward
// (they would spill at 4 and 2).
template <bool VECTOR, bool SMOOTH, bool BACKWARD, typename T>
FCN_HD constexpr int loss_class_step() {
  return !VECTOR ? 1 : (SMOOTH && sizeof(T) == 2 ? (BACKWARD ? 1 : 2) : 4);
}

// K class rows of a thread's P pixels as loaded. VECTOR: each row one aligned 16-byte pack,
// kept in the element type until used (a bf16 pack is 4 registers, not 8 floats); else
// element loads of the first `count` pixels, converted at once. Rows past `classes` (the
// last step's padding) read as -inf: they add nothing.
template <int K, int P, bool VECTOR, typename T>
struct ClassRows;

template <int K, int P, typename T>
struct ClassRows<K, P, true, T> {
  Pack<T, P> row[K];

  template <typename index_t>
  FCN_HD void load(const T* px, index_t sc, index_t, int, int classes) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (k < classes) row[k] = load_pack<P>(px + static_cast<index_t>(k) * sc);
    }
  }
  FCN_HD acc_type<T> at(int k, int p, int classes) const {
    return k < classes ? pack_acc(row[k], p) : neg_inf<acc_type<T>>();
  }
};

template <int K, int P, typename T>
struct ClassRows<K, P, false, T> {
  acc_type<T> row[K][P];

  template <typename index_t>
  FCN_HD void load(const T* px, index_t sc, index_t ss, int count, int classes) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (k < classes) load_run<P>(px + static_cast<index_t>(k) * sc, ss, count, false, row[k]);
    }
  }
  FCN_HD acc_type<T> at(int k, int p, int classes) const {
    return k < classes ? row[k][p] : neg_inf<acc_type<T>>();
  }
};

// Runs step(rows, c0, classes) over classes 0 .. C - 1, K at a time: the next K rows are loaded
// before a step's arithmetic, into two buffers used in turn (no register copies, no branch per
// step; a last full step reloads its own rows, from L1). The last C % K classes take one
// masked step.
template <int K, int P, bool VECTOR, typename T, typename index_t, typename Step>
FCN_HD void for_class_steps(int32_t C, const T* px, index_t sc, index_t ss, int count,
                            Step&& step) {
  const int32_t full = C / K * K;
  ClassRows<K, P, VECTOR, T> a, b;
  int32_t c0 = 0;
  if (full > 0) a.load(px, sc, ss, count, K);
  for (; c0 + 2 * K <= full; c0 += 2 * K) {
    b.load(px + static_cast<index_t>(c0 + K) * sc, sc, ss, count, K);
    step(a, c0, K);
    const int32_t c_next = c0 + 2 * K < full ? c0 + 2 * K : c0;
    a.load(px + static_cast<index_t>(c_next) * sc, sc, ss, count, K);
    step(b, c0 + K, K);
  }
  if (c0 < full) step(a, c0, K);
  if (full < C) {
    a.load(px + static_cast<index_t>(full) * sc, sc, ss, count, C - full);
    step(a, full, C - full);
  }
}

// The class weights of classes c0 .. c0 + K - 1 for the smoothing sums (0 past C).
template <int K, typename acc_t>
FCN_HD void class_weights(const acc_t* weight, int32_t c0, int classes, acc_t (&w)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    w[k] = k < classes ? (weight == nullptr ? acc_t(1) : weight[c0 + k]) : acc_t(0);
  }
}

// The softmax statistics of P pixels over all classes (pixel_cross_entropy_math.h's ChunkLse).
template <int P, bool SMOOTH, bool VECTOR, typename T, typename index_t>
FCN_HD void pixels_lse(int32_t C, const T* px, index_t sc, index_t ss, int count,
                       const acc_type<T>* weight, ChunkLse<acc_type<T>, SMOOTH> (&st)[P]) {
  using acc_t = acc_type<T>;
  constexpr int K = loss_class_step<VECTOR, SMOOTH, false, T>();
  acc_t w[K];
  for_class_steps<K, P, VECTOR>(
      C, px, sc, ss, count, [&](const ClassRows<K, P, VECTOR, T>& rows, int32_t c0, int classes) {
        if (SMOOTH) class_weights<K>(weight, c0, classes, w);
#pragma unroll
        for (int p = 0; p < P; ++p) {
          acc_t x[K];
#pragma unroll
          for (int k = 0; k < K; ++k) x[k] = rows.at(k, p, classes);
          st[p].add(x, w, classes);
        }
      });
}

// Loss of P pixels s0 .. s0 + count - 1 of image n, whose logits start at px (class c of
// pixel p at px[c * sc + p * ss]; in global memory or a staged chunk). Writes lse and, for
// reduction none, the loss; flags a target outside [0, C) that is not ignore_index; returns
// the sums of loss and target weight over the valid pixels. SMOOTH: label smoothing's sums
// (a.smoothing); vector: the P pixels are one aligned 16-byte run in every class row.
template <int P, bool SMOOTH, typename T, typename index_t, typename label_t>
FCN_HD LossPartial<acc_type<T>> loss_forward_pixels(const LossArgs<acc_type<T>, index_t>& a,
                                                    const T* px, index_t sc, index_t ss,
                                                    bool vector, int32_t n, int32_t s0, int count,
                                                    const label_t* target,
                                                    const acc_type<T>* weight, acc_type<T>* lse,
                                                    acc_type<T>* loss_none, int* error_flag) {
  using acc_t = acc_type<T>;
  LossPartial<acc_t> part{acc_t(0), acc_t(0)};
  if (count <= 0) return part;
  ChunkLse<acc_t, SMOOTH> st[P];
  // One loop per way of loading, each without a branch per class (only a thread at the end of
  // an image row, or a misaligned tensor, takes the element loads).
  if (P > 1 && vector && count == P) {
    pixels_lse<P, SMOOTH, true>(a.C, px, sc, ss, count, weight, st);
  } else {
    pixels_lse<P, SMOOTH, false>(a.C, px, sc, ss, count, weight, st);
  }
  acc_t lse_out[P], loss_out[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    lse_out[p] = acc_t(0);
    loss_out[p] = acc_t(0);
    if (p >= count) continue;
    const int64_t tv = target[static_cast<index_t>(n) * a.tn + static_cast<index_t>(s0 + p) * a.ts];
    // The target's logit is read again (one scalar load per pixel) rather than picked out of
    // the class loop with a compare and select per class.
    const auto target_logit = [&](int64_t t) {
      return load_acc(px + static_cast<index_t>(t) * sc + static_cast<index_t>(p) * ss);
    };
    finish_pixel_loss(a, st[p], tv, weight, target_logit, lse_out[p], loss_out[p], part,
                      error_flag);
  }
  const index_t at = static_cast<index_t>(n) * a.S + s0;
  const bool vector_out = a.pixel_vector && count == P;
  store_run<P>(lse + at, index_t(1), count, vector_out, lse_out);
  if (loss_none != nullptr) store_run<P>(loss_none + at, index_t(1), count, vector_out, loss_out);
  return part;
}

// The scale of the loss gradient for reductions mean and sum (none reads grad per pixel).
template <typename acc_t>
FCN_HD acc_t reduced_grad_scale(int32_t reduction, const acc_t* grad, const acc_t* weight_sum) {
  if (reduction == kReductionNone) return acc_t(0);
  return reduction == kReductionMean ? grad[0] / weight_sum[0] : grad[0];
}

// The gradient of every class of P pixels but their targets': p[c] * a - d * w[c], with
// p = 2^(x log2e - lse2) (lse2 = lse log2e per pixel).
template <int P, bool SMOOTH, bool VECTOR, typename T, typename index_t>
FCN_HD void pixels_grad(int32_t C, const T* px, index_t sc, index_t ss, T* po, index_t oc,
                        index_t os, int count, const acc_type<T>* weight,
                        const acc_type<T> (&lse2)[P], const GradCoef<acc_type<T>> (&coef)[P]) {
  using acc_t = acc_type<T>;
  constexpr int K = loss_class_step<VECTOR, SMOOTH, true, T>();
  acc_t w[K];
  for_class_steps<K, P, VECTOR>(
      C, px, sc, ss, count, [&](const ClassRows<K, P, VECTOR, T>& rows, int32_t c0, int classes) {
        if (SMOOTH) class_weights<K>(weight, c0, classes, w);
#pragma unroll
        for (int k = 0; k < K; ++k) {
          if (k >= classes) break;
          acc_t g[P];
#pragma unroll
          for (int p = 0; p < P; ++p) {
            const acc_t prob = fast_exp2(fcn_fma(rows.at(k, p, K), log2e<acc_t>(), -lse2[p]));
            g[p] = SMOOTH ? fcn_fma(prob, coef[p].a, -coef[p].d * w[k]) : prob * coef[p].a;
          }
          store_run<P>(po + static_cast<index_t>(c0 + k) * oc, os, count, VECTOR, g);
        }
      });
}

// d loss / d logits of P pixels: grad_logits[c * oc + p * os] from po, logits as in
// loss_forward_pixels; the softmax is recomputed from the saved lse. wtotal: the class
// weight total (smoothing only); scale: reduced_grad_scale. Every class is written as
// p * a - d * w[c], then each pixel's target element again, less b (the same thread's later
// store: program order), instead of a compare and select per element. The target's value is
// computed before the class loop (the staged kernel writes the gradient over the logits).
template <int P, bool SMOOTH, typename T, typename index_t, typename label_t>
FCN_HD void loss_backward_pixels(const LossArgs<acc_type<T>, index_t>& a, const T* px, index_t sc,
                                 index_t ss, bool vector_in, T* po, index_t oc, index_t os,
                                 bool vector_out, int32_t n, int32_t s0, int count,
                                 const acc_type<T>* grad, acc_type<T> scale, const label_t* target,
                                 const acc_type<T>* weight, const acc_type<T>* lse,
                                 acc_type<T> wtotal) {
  using acc_t = acc_type<T>;
  if (count <= 0) return;
  GradCoef<acc_t> coef[P];
  int32_t tc[P];
  acc_t lse2[P], target_grad[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    coef[p] = GradCoef<acc_t>{acc_t(0), acc_t(0), acc_t(0)};
    tc[p] = -1;
    lse2[p] = acc_t(0);
    target_grad[p] = acc_t(0);
    if (p >= count) continue;
    const index_t s = s0 + p;
    // A pixel whose logits are all -inf has lse -inf: its exps are taken against 0 (each 0,
    // not -inf - -inf), as the forward's.
    lse2[p] = ChunkLse<acc_t, false>::safe(lse[static_cast<index_t>(n) * a.S + s]) * log2e<acc_t>();
    const int64_t tv = target[static_cast<index_t>(n) * a.tn + s * a.ts];
    coef[p] = pixel_grad_coef(a, tv, weight, scale, wtotal,
                              [&] { return grad[static_cast<index_t>(n) * a.gn + s * a.gs]; });
    if (!counted_target(a, tv)) continue;
    tc[p] = static_cast<int32_t>(tv);
    const acc_t xt = load_acc(px + static_cast<index_t>(tv) * sc + static_cast<index_t>(p) * ss);
    const acc_t wt = SMOOTH && weight != nullptr ? weight[tv] : acc_t(1);
    target_grad[p] = grad_element(fast_exp2(fcn_fma(xt, log2e<acc_t>(), -lse2[p])), coef[p],
                                  SMOOTH ? wt : acc_t(0), true);
  }
  if (P > 1 && vector_in && vector_out && count == P) {
    pixels_grad<P, SMOOTH, true>(a.C, px, sc, ss, po, oc, os, count, weight, lse2, coef);
  } else {
    pixels_grad<P, SMOOTH, false>(a.C, px, sc, ss, po, oc, os, count, weight, lse2, coef);
  }
#pragma unroll
  for (int p = 0; p < P; ++p) {
    if (p >= count || tc[p] < 0) continue;
    store_acc(po + static_cast<index_t>(tc[p]) * oc + static_cast<index_t>(p) * os, target_grad[p]);
  }
}

// A staged chunk moved between global and shared memory, `thread` of `threads`: 16-byte
// pieces when both ends are 16-byte aligned (vector), the odd tail element by element.
template <typename T>
FCN_HD void copy_chunk(const T* src, T* dst, int32_t count, bool vector, int32_t thread,
                       int32_t threads) {
  constexpr int V = vector_width(static_cast<int>(sizeof(T)));
  int32_t done = 0;
  if (V > 1 && vector) {
    const int32_t pieces = count / V;
    for (int32_t i = thread; i < pieces; i += threads) {
      store_pack<V>(dst + i * V, load_pack<V>(src + i * V));
    }
    done = pieces * V;
  }
  for (int32_t i = done + thread; i < count; i += threads) dst[i] = src[i];
}

// The order in which csrc/cuda/common.cuh's block_sum adds the per-thread values of a block
// (a shuffle-down tree within each warp of 32, then the warps' sums in warp order), for the
// emulation to reproduce the GPU's rounding. `values` is overwritten.
template <typename acc_t>
acc_t block_sum_in_gpu_order(acc_t* values, int32_t threads) {
  acc_t total = acc_t(0);
  for (int32_t w = 0; w * 32 < threads; ++w) {
    acc_t* lane = values + w * 32;
    const int32_t lanes = threads - w * 32 < 32 ? threads - w * 32 : 32;
    for (int32_t k = lanes; k < 32; ++k) lane[k] = acc_t(0);  // not reached: blocks are full warps
    for (int offset = 16; offset > 0; offset >>= 1) {
      for (int l = 0; l < offset; ++l) lane[l] += lane[l + offset];
    }
    total += lane[0];
  }
  return total;
}

// ---- Host-side plan (shared by the launchers and the CPU emulation) ----

// Calls f(std::true_type) or f(std::false_type): a runtime flag as the template argument of a
// kernel, so that each kernel's code holds one path (smoothing or not).
template <typename F>
auto with_flag(bool flag, F&& f) {
  return flag ? f(std::true_type{}) : f(std::false_type{});
}

struct LossPlan {
  int P;  // pixels per thread on the pixel-run path (1 on the staged path)
  bool index64;
  bool staged_vector;  // staged chunks move as 16-byte pieces
  LossArgs<double, int64_t> args;
  int64_t grid_x, grid_y;
  int64_t smem_bytes;
};

constexpr int64_t kStagedSmemBudget = 32 * 1024;

// logits (N, C, S) strides xs; target (N, S) strides ts; out: grad_logits (backward) or
// nullptr; lse and loss_none are fresh contiguous (N, S) buffers of the accumulation type.
inline LossPlan plan_pixel_cross_entropy(int64_t N, int64_t C, int64_t S, const void* x,
                                         const int64_t (&xs)[3], const int64_t (&ts)[2],
                                         const void* out, const int64_t (&os)[3], const void* lse,
                                         int element_size, int acc_size, bool force_index64,
                                         int forced_pixels = 0) {
  LossPlan p{};
  LossArgs<double, int64_t>& a = p.args;
  a.N = static_cast<int32_t>(N);
  a.C = static_cast<int32_t>(C);
  a.S = static_cast<int32_t>(S);
  a.xn = xs[0];
  a.xc = xs[1];
  a.xs = xs[2];
  a.tn = ts[0];
  a.ts = ts[1];
  a.on = os[0];
  a.oc = os[1];
  a.os = os[2];
  const int64_t x_sizes[4] = {N, C, S, 1}, x_strides[4] = {xs[0], xs[1], xs[2], 1};
  const int64_t t_sizes[4] = {N, S, 1, 1}, t_strides[4] = {ts[0], ts[1], 1, 1};
  const int64_t o_strides[4] = {os[0], os[1], os[2], 1};
  p.index64 = force_index64 || !fits_int32(tensor_extent(x_sizes, x_strides)) ||
              !fits_int32(tensor_extent(t_sizes, t_strides)) || !fits_int32(N * S) ||
              (out != nullptr && !fits_int32(tensor_extent(x_sizes, o_strides)));
  // Staged when each image's pixels are one contiguous run of (S, C) in x and in out, and
  // a chunk of at least a warp of pixels fits the budget.
  const int64_t chunk = kStagedSmemBudget / (C * element_size) / 32 * 32;
  const bool dense =
      C > 1 && xs[1] == 1 && xs[2] == C && (out == nullptr || (os[1] == 1 && os[2] == C));
  if (dense && chunk >= 32 && forced_pixels == 0) {
    a.chunk = static_cast<int32_t>(chunk < kLossThreads ? chunk : kLossThreads);
    p.P = 1;
    p.smem_bytes = a.chunk * C * element_size;
    p.grid_x = (S + a.chunk - 1) / a.chunk;
    // 16-byte pieces: every chunk start (image start + k * chunk * C elements) aligned.
    p.staged_vector =
        vector_rows_ok(x, element_size, vector_width(element_size), {xs[0], a.chunk * C}) &&
        (out == nullptr ||
         vector_rows_ok(out, element_size, vector_width(element_size), {os[0], a.chunk * C}));
  } else {
    a.chunk = 0;
    // Past 2^31 elements: one pixel per thread (the 64-bit kernels are compiled scalar only).
    const int P = forced_pixels > 0 ? forced_pixels : (p.index64 ? 1 : vector_width(element_size));
    p.P = P;
    a.x_vector = xs[2] == 1 && vector_rows_ok(x, element_size, P, {xs[0], xs[1]});
    a.out_vector =
        out != nullptr && os[2] == 1 && vector_rows_ok(out, element_size, P, {os[0], os[1]});
    p.smem_bytes = 0;
    p.grid_x =
        (S + static_cast<int64_t>(P) * kLossThreads - 1) / (static_cast<int64_t>(P) * kLossThreads);
  }
  // lse / loss rows (N, S) of the accumulation type: runs of P start aligned.
  a.pixel_vector = p.P > 1 && vector_rows_ok(lse, acc_size, p.P, {S});
  p.grid_x = p.grid_x < 1 ? 1 : p.grid_x;
  p.grid_y = N < 1 ? 1 : (N < 65535 ? N : 65535);
  return p;
}

template <typename acc_t, typename index_t>
LossArgs<acc_t, index_t> narrow_loss_args(const LossArgs<double, int64_t>& a, int64_t gn,
                                          int64_t gs, int64_t ignore_index, int64_t reduction,
                                          double label_smoothing) {
  LossArgs<acc_t, index_t> r;
  r.N = a.N;
  r.C = a.C;
  r.S = a.S;
  r.xn = static_cast<index_t>(a.xn);
  r.xc = static_cast<index_t>(a.xc);
  r.xs = static_cast<index_t>(a.xs);
  r.tn = static_cast<index_t>(a.tn);
  r.ts = static_cast<index_t>(a.ts);
  r.gn = static_cast<index_t>(gn);
  r.gs = static_cast<index_t>(gs);
  r.on = static_cast<index_t>(a.on);
  r.oc = static_cast<index_t>(a.oc);
  r.os = static_cast<index_t>(a.os);
  r.ignore_index = ignore_index;
  r.reduction = static_cast<int32_t>(reduction);
  // eps / C rounded once on the host in the accumulation type: the kernels never see a double.
  r.eps = static_cast<acc_t>(label_smoothing);
  r.eps_over_c = r.eps / static_cast<acc_t>(a.C);
  r.smoothing = label_smoothing > 0.0;
  r.x_vector = a.x_vector;
  r.out_vector = a.out_vector;
  r.pixel_vector = a.pixel_vector;
  r.chunk = a.chunk;
  return r;
}

}  // namespace fcn_fast
