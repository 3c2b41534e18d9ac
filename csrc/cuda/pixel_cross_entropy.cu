// CUDA kernels of the fused log-softmax + NLL loss (docs/design.md 2.3): thin __global__ wrappers
// around the per-thread code of fcn_fast/pixel_cross_entropy_kernels.h (which the CPU
// emulation test runs as well), plus their launchers.
//
// Pixel runs (NCHW): a thread owns P pixels (16 bytes of each class row) and walks the
// classes with the online softmax; the forward reads each logit once and writes lse (and the
// loss for reduction none) as 16-byte runs; the backward reads each logit once and writes
// each gradient once. Staged chunks (channels_last): a block moves a contiguous chunk of
// pixels through shared memory with 16-byte accesses. One kernel per pass: the class-weight
// total is summed per thread where needed, and the reduction ends in its last block.
#include "common.cuh"
#include "fcn_fast/pixel_cross_entropy_kernels.h"
#include "pixel_cross_entropy.cuh"

namespace fcn_fast {
namespace {

// Blocks of 256 threads per multiprocessor the registers must allow. The class loops keep up
// to 2 x 4 rows of 16 bytes in flight a thread, so 512 threads already have 64 KB of reads in
// flight a multiprocessor (32 KB is the target): 2 blocks (128 registers) where the state per
// thread needs them (the backward's coefficients, 8 pixels of 16 bits), 3 (85) for the float32
// forward.
template <typename T>
constexpr int loss_min_blocks(bool backward) {
  return !backward && sizeof(T) == 4 ? 3 : 2;
}

template <int P, typename T, typename label_t, typename index_t, bool SMOOTH>
__global__ void __launch_bounds__(kLossThreads, loss_min_blocks<T>(false))
    loss_forward_runs_kernel(LossArgs<acc_type<T>, index_t> a, const T* __restrict__ x,
                             const label_t* __restrict__ target,
                             const acc_type<T>* __restrict__ weight, LossOutputs<acc_type<T>> o) {
  using acc_t = acc_type<T>;
  const int32_t s0 = (static_cast<int32_t>(blockIdx.x) * kLossThreads + threadIdx.x) * P;
  acc_t loss = acc_t(0), wsum = acc_t(0);
  for (int32_t n = blockIdx.y; n < a.N; n += gridDim.y) {
    const int count = a.S - s0 < P ? a.S - s0 : P;
    const LossPartial<acc_t> part = loss_forward_pixels<P, SMOOTH>(
        a, x + static_cast<index_t>(n) * a.xn + static_cast<index_t>(s0) * a.xs, a.xc, a.xs,
        a.x_vector, n, s0, count, target, weight, o.lse, o.loss_none, o.error_flag);
    loss += part.loss;
    wsum += part.weight;
  }
  finish_loss_reduction(loss, wsum, o.partials, o.ticket, o.loss_reduced, o.weight_sum,
                        a.reduction);
}

template <typename T, typename label_t, typename index_t, bool SMOOTH>
__global__ void __launch_bounds__(kLossThreads, loss_min_blocks<T>(false))
    loss_forward_staged_kernel(LossArgs<acc_type<T>, index_t> a, bool vector,
                               const T* __restrict__ x, const label_t* __restrict__ target,
                               const acc_type<T>* __restrict__ weight, LossOutputs<acc_type<T>> o) {
  using acc_t = acc_type<T>;
  extern __shared__ __align__(16) unsigned char shared[];
  T* chunk = reinterpret_cast<T*>(shared);
  const int32_t s0 = static_cast<int32_t>(blockIdx.x) * a.chunk;
  const int32_t pixels = a.S - s0 < a.chunk ? a.S - s0 : a.chunk;
  acc_t loss = acc_t(0), wsum = acc_t(0);
  for (int32_t n = blockIdx.y; n < a.N; n += gridDim.y) {
    if (pixels <= 0) break;
    __syncthreads();  // the previous image's chunk is no longer read
    copy_chunk(x + static_cast<index_t>(n) * a.xn + static_cast<index_t>(s0) * a.xs, chunk,
               pixels * a.C, vector, threadIdx.x, kLossThreads);
    __syncthreads();
    const int p = threadIdx.x;
    const LossPartial<acc_t> part = loss_forward_pixels<1, SMOOTH>(
        a, chunk + p * a.C, index_t(1), static_cast<index_t>(a.C), false, n, s0 + p,
        p < pixels ? 1 : 0, target, weight, o.lse, o.loss_none, o.error_flag);
    loss += part.loss;
    wsum += part.weight;
  }
  finish_loss_reduction(loss, wsum, o.partials, o.ticket, o.loss_reduced, o.weight_sum,
                        a.reduction);
}

template <int P, typename T, typename label_t, typename index_t, bool SMOOTH>
__global__ void __launch_bounds__(kLossThreads, loss_min_blocks<T>(true))
    loss_backward_runs_kernel(LossArgs<acc_type<T>, index_t> a,
                              const acc_type<T>* __restrict__ grad,
                              const acc_type<T>* __restrict__ weight_sum, const T* __restrict__ x,
                              const label_t* __restrict__ target,
                              const acc_type<T>* __restrict__ weight,
                              const acc_type<T>* __restrict__ lse, T* __restrict__ out) {
  using acc_t = acc_type<T>;
  const int32_t s0 = (static_cast<int32_t>(blockIdx.x) * kLossThreads + threadIdx.x) * P;
  if (s0 >= a.S) return;
  const acc_t scale = reduced_grad_scale(a.reduction, grad, weight_sum);
  const acc_t wtotal = a.smoothing ? class_weight_total(weight, a.C) : acc_t(0);
  const int count = a.S - s0 < P ? a.S - s0 : P;
  for (int32_t n = blockIdx.y; n < a.N; n += gridDim.y) {
    loss_backward_pixels<P, SMOOTH>(
        a, x + static_cast<index_t>(n) * a.xn + static_cast<index_t>(s0) * a.xs, a.xc, a.xs,
        a.x_vector, out + static_cast<index_t>(n) * a.on + static_cast<index_t>(s0) * a.os, a.oc,
        a.os, a.out_vector, n, s0, count, grad, scale, target, weight, lse, wtotal);
  }
}

template <typename T, typename label_t, typename index_t, bool SMOOTH>
__global__ void __launch_bounds__(kLossThreads, loss_min_blocks<T>(true))
    loss_backward_staged_kernel(LossArgs<acc_type<T>, index_t> a, bool vector,
                                const acc_type<T>* __restrict__ grad,
                                const acc_type<T>* __restrict__ weight_sum, const T* __restrict__ x,
                                const label_t* __restrict__ target,
                                const acc_type<T>* __restrict__ weight,
                                const acc_type<T>* __restrict__ lse, T* __restrict__ out) {
  using acc_t = acc_type<T>;
  extern __shared__ __align__(16) unsigned char shared[];
  T* chunk = reinterpret_cast<T*>(shared);
  const int32_t s0 = static_cast<int32_t>(blockIdx.x) * a.chunk;
  const int32_t pixels = a.S - s0 < a.chunk ? a.S - s0 : a.chunk;
  if (pixels <= 0) return;
  const acc_t scale = reduced_grad_scale(a.reduction, grad, weight_sum);
  const acc_t wtotal = a.smoothing ? class_weight_total(weight, a.C) : acc_t(0);
  for (int32_t n = blockIdx.y; n < a.N; n += gridDim.y) {
    copy_chunk(x + static_cast<index_t>(n) * a.xn + static_cast<index_t>(s0) * a.xs, chunk,
               pixels * a.C, vector, threadIdx.x, kLossThreads);
    __syncthreads();
    const int p = threadIdx.x;
    T* pixel = chunk + p * a.C;  // the gradient overwrites the pixel's logits in place
    loss_backward_pixels<1, SMOOTH>(a, pixel, index_t(1), static_cast<index_t>(a.C), false, pixel,
                                    index_t(1), static_cast<index_t>(a.C), false, n, s0 + p,
                                    p < pixels ? 1 : 0, grad, scale, target, weight, lse, wtotal);
    __syncthreads();
    copy_chunk(static_cast<const T*>(chunk),
               out + static_cast<index_t>(n) * a.on + static_cast<index_t>(s0) * a.os, pixels * a.C,
               vector, threadIdx.x, kLossThreads);
    __syncthreads();  // the next image's copy overwrites the chunk
  }
}

// The plan picks P among {16 bytes of pixels, 1}; the 64-bit index kernels are scalar only.
template <typename T, typename index_t, typename F>
cudaError_t with_pixels(int P, F&& f) {
  constexpr int kWide = sizeof(index_t) == 8 ? 1 : vector_width(sizeof(T));
  if (P == kWide) return f(std::integral_constant<int, kWide>{});
  return f(std::integral_constant<int, 1>{});
}

LossPlan plan(const LossGeometry& g, const void* x, const void* out, const int64_t (&os)[3],
              const void* lse, DType dtype, bool force_index64) {
  const int64_t xs[3] = {g.sN, g.sC, g.sS};
  const int64_t ts[2] = {g.tN, g.tS};
  return plan_pixel_cross_entropy(g.N, g.C, g.S, x, xs, ts, out, os, lse,
                                  static_cast<int>(element_size(dtype)),
                                  static_cast<int>(acc_size(dtype)), force_index64);
}

}  // namespace

int64_t pixel_cross_entropy_workspace_bytes(DType dtype, const LossGeometry& g,
                                            bool force_index64) {
  const int64_t os[3] = {0, 0, 0};
  const LossPlan p = plan(g, nullptr, nullptr, os, nullptr, dtype, force_index64);
  return 2 * p.grid_x * p.grid_y * acc_size(dtype);
}

cudaError_t launch_pixel_cross_entropy(DType dtype, const void* logits, Labels labels,
                                       const void* weight, void* loss, void* lse, void* weight_sum,
                                       void* workspace, int* flags, LossGeometry g,
                                       int64_t ignore_index, int64_t reduction,
                                       double label_smoothing, bool force_index64,
                                       cudaStream_t stream) {
  const int64_t no_out[3] = {0, 0, 0};
  const LossPlan p = plan(g, logits, nullptr, no_out, lse, dtype, force_index64);
  const dim3 grid(static_cast<unsigned int>(p.grid_x), static_cast<unsigned int>(p.grid_y));
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type<T>;
    const LossOutputs<acc_t> o =
        loss_outputs<acc_t>(reduction, loss, lse, weight_sum, workspace, flags);
    const T* x = static_cast<const T*>(logits);
    const acc_t* w = static_cast<const acc_t*>(weight);
    return dispatch_index(p.index64, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto a =
          narrow_loss_args<acc_t, index_t>(p.args, 0, 0, ignore_index, reduction, label_smoothing);
      return with_target_and_flag(labels, a.smoothing, [&](auto target, auto smooth) {
        using label_t = label_of<decltype(target)>;
        constexpr bool SMOOTH = decltype(smooth)::value;
        if (a.chunk > 0) {
          loss_forward_staged_kernel<T, label_t, index_t, SMOOTH>
              <<<grid, kLossThreads, p.smem_bytes, stream>>>(a, p.staged_vector, x, target, w, o);
          return cudaGetLastError();
        }
        return with_pixels<T, index_t>(p.P, [&](auto pixels) {
          loss_forward_runs_kernel<decltype(pixels)::value, T, label_t, index_t, SMOOTH>
              <<<grid, kLossThreads, 0, stream>>>(a, x, target, w, o);
          return cudaGetLastError();
        });
      });
    });
  });
}

cudaError_t launch_pixel_cross_entropy_backward(
    DType dtype, const void* grad, int64_t gN, int64_t gS, const void* logits, Labels labels,
    const void* weight, const void* lse, const void* weight_sum, void* grad_logits, int64_t oN,
    int64_t oC, int64_t oS, LossGeometry g, int64_t ignore_index, int64_t reduction,
    double label_smoothing, bool force_index64, cudaStream_t stream) {
  if (g.N * g.C * g.S == 0) return cudaSuccess;
  const int64_t os[3] = {oN, oC, oS};
  const LossPlan p = plan(g, logits, grad_logits, os, lse, dtype, force_index64);
  const dim3 grid(static_cast<unsigned int>(p.grid_x), static_cast<unsigned int>(p.grid_y));
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type<T>;
    const acc_t* gr = static_cast<const acc_t*>(grad);
    const acc_t* wsum = static_cast<const acc_t*>(weight_sum);
    const T* x = static_cast<const T*>(logits);
    const acc_t* w = static_cast<const acc_t*>(weight);
    const acc_t* l = static_cast<const acc_t*>(lse);
    T* out = static_cast<T*>(grad_logits);
    return dispatch_index(p.index64, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto a = narrow_loss_args<acc_t, index_t>(p.args, gN, gS, ignore_index, reduction,
                                                      label_smoothing);
      return with_target_and_flag(labels, a.smoothing, [&](auto target, auto smooth) {
        using label_t = label_of<decltype(target)>;
        constexpr bool SMOOTH = decltype(smooth)::value;
        if (a.chunk > 0) {
          loss_backward_staged_kernel<T, label_t, index_t, SMOOTH>
              <<<grid, kLossThreads, p.smem_bytes, stream>>>(a, p.staged_vector, gr, wsum, x,
                                                             target, w, l, out);
          return cudaGetLastError();
        }
        return with_pixels<T, index_t>(p.P, [&](auto pixels) {
          loss_backward_runs_kernel<decltype(pixels)::value, T, label_t, index_t, SMOOTH>
              <<<grid, kLossThreads, 0, stream>>>(a, gr, wsum, x, target, w, l, out);
          return cudaGetLastError();
        });
      });
    });
  });
}

}  // namespace fcn_fast
