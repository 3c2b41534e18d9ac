// CUDA kernels of the fused log-softmax + NLL loss (DESIGN.md 2.4).
//
// One thread per pixel, consecutive threads on consecutive pixels: for NCHW
// every class step is one coalesced warp load. Each thread walks the C classes
// with the online softmax of pixel_cross_entropy_math.h (any C, one read of each
// logit). Block partial sums are reduced in a fixed tree order and added by a
// one-block kernel in a fixed order: deterministic, no atomics, no host sync.
// Out-of-range targets set an error flag that the binding turns into an async
// device assert.
#include "common.cuh"
#include "fcn_fast/pixel_cross_entropy_math.h"
#include "pixel_cross_entropy.cuh"

namespace fcn_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;

// Sum of v over the block in a fixed order (shuffle tree, then warps in order);
// the result is valid in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  acc_t total = acc_t(0);
  if (threadIdx.x == 0) {
    for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) total += shared[i];
  }
  return total;
}

// workspace[0] = sum_c w[c] (C without weights), in a fixed order.
template <typename acc_t>
__global__ void weight_total_kernel(const acc_t* weight, int64_t C, acc_t* out) {
  __shared__ acc_t shared[kThreads / 32];
  acc_t v = acc_t(0);
  if (weight == nullptr) {
    v = threadIdx.x == 0 ? static_cast<acc_t>(C) : acc_t(0);
  } else {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) v += weight[c];
  }
  v = block_sum(v, shared);
  if (threadIdx.x == 0) out[0] = v;
}

template <typename scalar_t, typename acc_t, bool kSmooth>
__global__ void __launch_bounds__(kThreads)
    loss_forward_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ target,
                        const acc_t* __restrict__ weight, acc_t* __restrict__ loss_none,
                        acc_t* __restrict__ lse, acc_t* __restrict__ partials,
                        const acc_t* __restrict__ wtotal_ptr, int* __restrict__ error_flag,
                        LossGeometry g, int64_t ignore_index, acc_t eps, acc_t eps_over_c) {
  __shared__ acc_t shared[kThreads / 32];
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const acc_t wtotal = *wtotal_ptr;
  acc_t sum_loss = acc_t(0), sum_w = acc_t(0);
  for (int64_t n = blockIdx.y; n < g.N; n += gridDim.y) {
    if (s >= g.S) break;
    const scalar_t* px = x + n * g.sN + s * g.sS;
    OnlineLse<acc_t> st;
#pragma unroll 4
    for (int64_t c = 0; c < g.C; ++c) {
      const acc_t wc = (kSmooth && weight != nullptr) ? weight[c] : acc_t(1);
      st.add(to_acc(px[c * g.sC]), wc, kSmooth);
    }
    const acc_t logs = fcn_log(st.s);
    lse[n * g.S + s] = st.m + logs;
    const int64_t tv = target[n * g.tN + s * g.tS];
    acc_t value = acc_t(0);
    if (tv != ignore_index) {
      if (tv < 0 || tv >= g.C) {
        *error_flag = 1;  // every writer stores the same value: no atomic needed
      } else {
        const acc_t wt = weight == nullptr ? acc_t(1) : weight[tv];
        const acc_t xt_m = shifted_logit(to_acc(px[tv * g.sC]), st.m);
        value = pixel_loss(logs, xt_m, wt, kSmooth ? st.swx : acc_t(0), wtotal, eps, eps_over_c);
        sum_loss += value;
        sum_w += wt;
      }
    }
    if (loss_none != nullptr) loss_none[n * g.S + s] = value;
  }
  sum_loss = block_sum(sum_loss, shared);
  sum_w = block_sum(sum_w, shared);
  if (threadIdx.x == 0) {
    const int64_t b = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
    partials[2 * b] = sum_loss;
    partials[2 * b + 1] = sum_w;
  }
}

// Adds the block partials in a fixed order; writes weight_sum and the mean/sum loss.
template <typename acc_t>
__global__ void loss_finish_kernel(const acc_t* partials, int64_t count, acc_t* loss,
                                   acc_t* weight_sum, int64_t reduction) {
  __shared__ acc_t shared[kThreads / 32];
  acc_t l = acc_t(0), w = acc_t(0);
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    l += partials[2 * i];
    w += partials[2 * i + 1];
  }
  l = block_sum(l, shared);
  w = block_sum(w, shared);
  if (threadIdx.x == 0) {
    weight_sum[0] = w;
    if (reduction == kReductionMean) loss[0] = l / w;  // 0/0: NaN
    if (reduction == kReductionSum) loss[0] = l;
  }
}

template <typename scalar_t, typename acc_t, bool kSmooth>
__global__ void __launch_bounds__(kThreads)
    loss_backward_kernel(const acc_t* __restrict__ grad, int64_t gN, int64_t gS,
                         const scalar_t* __restrict__ x, const int64_t* __restrict__ target,
                         const acc_t* __restrict__ weight, const acc_t* __restrict__ lse,
                         const acc_t* __restrict__ weight_sum, const acc_t* __restrict__ wtotal_ptr,
                         scalar_t* __restrict__ out, int64_t oN, int64_t oC, int64_t oS,
                         LossGeometry g, int64_t ignore_index, int64_t reduction, acc_t eps,
                         acc_t eps_over_c) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= g.S) return;
  const acc_t wtotal = *wtotal_ptr;
  for (int64_t n = blockIdx.y; n < g.N; n += gridDim.y) {
    const int64_t tv = target[n * g.tN + s * g.tS];
    const bool valid = tv != ignore_index && tv >= 0 && tv < g.C;
    GradCoef<acc_t> coef{acc_t(0), acc_t(0), acc_t(0)};
    if (valid) {
      acc_t scale;
      if (reduction == kReductionNone) {
        scale = grad[n * gN + s * gS];
      } else {
        scale = grad[0];
        if (reduction == kReductionMean) scale /= weight_sum[0];
      }
      const acc_t wt = weight == nullptr ? acc_t(1) : weight[tv];
      coef = grad_coef(scale, wt, wtotal, eps, eps_over_c);
    }
    const acc_t l = lse[n * g.S + s];
    const scalar_t* px = x + n * g.sN + s * g.sS;
    scalar_t* po = out + n * oN + s * oS;
#pragma unroll 4
    for (int64_t c = 0; c < g.C; ++c) {
      const acc_t p = fcn_exp(shifted_logit(to_acc(px[c * g.sC]), l));
      const acc_t wc = (kSmooth && weight != nullptr) ? weight[c] : acc_t(1);
      po[c * oC] = from_acc<scalar_t>(grad_element(p, coef, wc, c == tv));
    }
  }
}

dim3 pixel_grid(const LossGeometry& g) {
  const int64_t gx = (g.S + kThreads - 1) / kThreads;
  const int64_t gy = g.N < kMaxGridY ? g.N : kMaxGridY;
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), 1);
}

template <typename scalar_t, typename acc_t>
cudaError_t forward_typed(const scalar_t* x, const int64_t* target, const acc_t* weight, void* loss,
                          acc_t* lse, acc_t* weight_sum, acc_t* workspace, int* error_flag,
                          const LossGeometry& g, int64_t ignore_index, int64_t reduction,
                          double label_smoothing, cudaStream_t stream) {
  acc_t* wtotal = workspace;
  acc_t* partials = workspace + 1;
  weight_total_kernel<acc_t><<<1, kThreads, 0, stream>>>(weight, g.C, wtotal);
  const dim3 grid = pixel_grid(g);
  const int64_t blocks = static_cast<int64_t>(grid.x) * grid.y;
  const acc_t eps = static_cast<acc_t>(label_smoothing);
  const acc_t eps_over_c = eps / static_cast<acc_t>(g.C);
  // loss: (N, S) for reduction none, else one element; both in acc_t.
  acc_t* loss_none = reduction == kReductionNone ? static_cast<acc_t*>(loss) : nullptr;
  acc_t* loss_reduced = reduction == kReductionNone ? nullptr : static_cast<acc_t*>(loss);
  if (blocks > 0) {
    if (label_smoothing > 0.0) {
      loss_forward_kernel<scalar_t, acc_t, true>
          <<<grid, kThreads, 0, stream>>>(x, target, weight, loss_none, lse, partials, wtotal,
                                          error_flag, g, ignore_index, eps, eps_over_c);
    } else {
      loss_forward_kernel<scalar_t, acc_t, false>
          <<<grid, kThreads, 0, stream>>>(x, target, weight, loss_none, lse, partials, wtotal,
                                          error_flag, g, ignore_index, eps, eps_over_c);
    }
  }
  loss_finish_kernel<acc_t>
      <<<1, kThreads, 0, stream>>>(partials, blocks, loss_reduced, weight_sum, reduction);
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t backward_typed(const acc_t* grad, int64_t gN, int64_t gS, const scalar_t* x,
                           const int64_t* target, const acc_t* weight, const acc_t* lse,
                           const acc_t* weight_sum, scalar_t* out, int64_t oN, int64_t oC,
                           int64_t oS, acc_t* workspace, const LossGeometry& g,
                           int64_t ignore_index, int64_t reduction, double label_smoothing,
                           cudaStream_t stream) {
  weight_total_kernel<acc_t><<<1, kThreads, 0, stream>>>(weight, g.C, workspace);
  const dim3 grid = pixel_grid(g);
  if (static_cast<int64_t>(grid.x) * grid.y == 0) return cudaGetLastError();
  const acc_t eps = static_cast<acc_t>(label_smoothing);
  const acc_t eps_over_c = eps / static_cast<acc_t>(g.C);
  if (label_smoothing > 0.0) {
    loss_backward_kernel<scalar_t, acc_t, true><<<grid, kThreads, 0, stream>>>(
        grad, gN, gS, x, target, weight, lse, weight_sum, workspace, out, oN, oC, oS, g,
        ignore_index, reduction, eps, eps_over_c);
  } else {
    loss_backward_kernel<scalar_t, acc_t, false><<<grid, kThreads, 0, stream>>>(
        grad, gN, gS, x, target, weight, lse, weight_sum, workspace, out, oN, oC, oS, g,
        ignore_index, reduction, eps, eps_over_c);
  }
  return cudaGetLastError();
}

}  // namespace

int64_t pixel_cross_entropy_workspace(const LossGeometry& g) {
  const dim3 grid = pixel_grid(g);
  return 1 + 2 * static_cast<int64_t>(grid.x) * grid.y;
}

cudaError_t launch_pixel_cross_entropy(DType dtype, const void* logits, const int64_t* target,
                                       const void* weight, void* loss, void* lse, void* weight_sum,
                                       void* workspace, int* error_flag, LossGeometry g,
                                       int64_t ignore_index, int64_t reduction,
                                       double label_smoothing, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    return forward_typed<T, A>(static_cast<const T*>(logits), target, static_cast<const A*>(weight),
                               loss, static_cast<A*>(lse), static_cast<A*>(weight_sum),
                               static_cast<A*>(workspace), error_flag, g, ignore_index, reduction,
                               label_smoothing, stream);
  });
}

cudaError_t launch_pixel_cross_entropy_backward(
    DType dtype, const void* grad, int64_t gN, int64_t gS, const void* logits,
    const int64_t* target, const void* weight, const void* lse, const void* weight_sum,
    void* grad_logits, int64_t oN, int64_t oC, int64_t oS, void* workspace, LossGeometry g,
    int64_t ignore_index, int64_t reduction, double label_smoothing, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    return backward_typed<T, A>(static_cast<const A*>(grad), gN, gS, static_cast<const T*>(logits),
                                target, static_cast<const A*>(weight), static_cast<const A*>(lse),
                                static_cast<const A*>(weight_sum), static_cast<T*>(grad_logits), oN,
                                oC, oS, static_cast<A*>(workspace), g, ignore_index, reduction,
                                label_smoothing, stream);
  });
}

}  // namespace fcn_fast
