// CUDA kernels of the fused heads (csrc/ops/resample_cross_entropy.h): thin __global__
// wrappers around the per-thread code of fcn_fast/resample_cross_entropy_kernels.h (which the
// CPU emulation test runs as well), plus their launchers. CUDA headers and ours only.
//
// Each pass is the tap-table kernel (fp64, out_h + out_w entries; the backward adds the
// adjoint ranges) and one element kernel:
// * forward: P fine pixels per thread, classes walked with the online softmax; reads the
//   coarse x (L1/L2) and target once, writes lse (4 bytes a pixel, 16-byte stores) and the
//   loss; the reduction ends in the last block.
// * argmax: the same walk with a running argmax; labels and confidence as vector stores.
// * backward: blocks of (band of coarse rows, tile of coarse columns, class group); the
//   per-pixel coefficients are staged in shared memory once per block, z is recomputed per
//   (pixel, class) and the resampler's adjoint gathered in a fixed order.
#include "common.cuh"
#include "fcn_fast/resample_cross_entropy_kernels.h"
#include "resample_cross_entropy.cuh"

namespace fcn_fast {
namespace {

// A thread per coarse pixel of an image, for every image (grid y strides the images).
template <typename T, typename index_t>
__global__ void __launch_bounds__(kFusedThreads)
    coarse_max_kernel(FusedArgs<acc_type<T>, index_t> a, const T* __restrict__ x,
                      acc_type<T>* __restrict__ cmax) {
  const int32_t rest = static_cast<int32_t>(blockIdx.x) * kFusedThreads + threadIdx.x;
  if (rest >= a.in_h * a.in_w) return;
  for (int32_t n = blockIdx.y; n < a.N; n += gridDim.y) coarse_max_entry(a, x, n, rest, cmax);
}

// Blocks per SM the forward asks for: 3 (80 registers) where its class loop takes 4 classes
// a trip (fused_unroll4), which at 2 blocks took 96 registers and half the warps, keeping no
// more bytes in flight; else 2.
template <typename T, bool SMOOTH>
constexpr int fused_forward_min_blocks() {
  return fused_unroll4<T, SMOOTH>() ? 3 : 2;
}

// A block per (tile of kFusedThreads fine columns, fine row): the row's threads do the strip
// that starts there, for every image; a row inside a strip leaves its block idle (its threads
// only join the reduction).
template <typename T, typename label_t, typename index_t, int R, bool SMOOTH>
__global__ void __launch_bounds__(kFusedThreads, fused_forward_min_blocks<T, SMOOTH>())
    fused_forward_kernel(FusedArgs<acc_type<T>, index_t> a, ResampleTables<acc_type<T>> t,
                         const T* __restrict__ x, const acc_type<T>* __restrict__ cmax,
                         const label_t* __restrict__ target, const acc_type<T>* __restrict__ weight,
                         LossOutputs<acc_type<T>> o) {
  using acc_t = acc_type<T>;
  const int32_t X = static_cast<int32_t>(blockIdx.x) * kFusedThreads + threadIdx.x;
  acc_t loss = acc_t(0), wsum = acc_t(0);
  for (int32_t Y = blockIdx.y; Y < a.out_h; Y += gridDim.y) {
    if (!starts_strip<R>(t, Y)) continue;
    for (int32_t n = 0; n < a.N; ++n) {
      const LossPartial<acc_t> part = fused_forward_strip<R, SMOOTH>(
          a, t, x, cmax, target, weight, o.lse, o.loss_none, o.error_flag, n, Y, X);
      loss += part.loss;
      wsum += part.weight;
    }
  }
  finish_loss_reduction(loss, wsum, o.partials, o.ticket, o.loss_reduced, o.weight_sum,
                        a.reduction);
}

// As the forward: a block per (tile of fine columns, fine row), each thread the strip that
// starts there, for every image.
template <typename T, typename label_t, typename index_t, int R, bool CONF>
__global__ void __launch_bounds__(kFusedThreads, 2)
    fused_argmax_kernel(FusedArgs<acc_type<T>, index_t> a, ResampleTables<acc_type<T>> t,
                        const T* __restrict__ x, const acc_type<T>* __restrict__ cmax,
                        label_t* __restrict__ labels, float* __restrict__ confidence) {
  const int32_t X = static_cast<int32_t>(blockIdx.x) * kFusedThreads + threadIdx.x;
  for (int32_t Y = blockIdx.y; Y < a.out_h; Y += gridDim.y) {
    if (!starts_strip<R>(t, Y)) continue;
    for (int32_t n = 0; n < a.N; ++n) {
      fused_argmax_strip<R, CONF>(a, t, x, cmax, labels, confidence, n, Y, X);
    }
  }
}

template <typename T, typename label_t, typename index_t, bool SMOOTH>
__global__ void __launch_bounds__(kFusedThreads, 2)
    fused_backward_kernel(FusedArgs<acc_type<T>, index_t> a, ResampleTables<acc_type<T>> t,
                          const acc_type<T>* __restrict__ grad,
                          const acc_type<T>* __restrict__ weight_sum, const T* __restrict__ x,
                          const label_t* __restrict__ target,
                          const acc_type<T>* __restrict__ weight,
                          const acc_type<T>* __restrict__ lse, T* __restrict__ grad_x,
                          int32_t groups) {
  using acc_t = acc_type<T>;
  extern __shared__ __align__(16) unsigned char shared[];
  const PixelCoefs<acc_t> coefs = pixel_coefs_in<acc_t>(shared, a.pixel_capacity, a.smoothing);
  acc_t* vsum = reinterpret_cast<acc_t*>(
      shared + fused_backward_vsum_offset<acc_t>(a.pixel_capacity, a.smoothing));
  const acc_t scale = reduced_grad_scale(a.reduction, grad, weight_sum);
  const acc_t wtotal = a.smoothing ? class_weight_total(weight, a.C) : acc_t(0);
  for (int32_t group = blockIdx.y; group < groups; group += gridDim.y) {
    const BackwardBlock b = backward_block(a.layout, a.C, a.in_h, a.in_w, 1, blockIdx.x, group, t);
    fused_backward_stage(a, b, lse, target, weight, grad, scale, wtotal, coefs, threadIdx.x,
                         kFusedThreads);
    __syncthreads();  // phase A reads every pixel's coefficients
    fused_backward_rows<SMOOTH, T>(a, b, t, x, weight, coefs, vsum, threadIdx.x, kFusedThreads);
    __syncthreads();  // phase B reads every item's vertical sums
    backward_columns<T, index_t>(a.layout, b, t, vsum, grad_x, a.grad_x, threadIdx.x,
                                 kFusedThreads);
    __syncthreads();  // the next group overwrites the shared memory
  }
}

// fused_backward_smem_budget on the current device.
int64_t device_smem_budget() {
  int device = 0, per_sm = 0, per_block = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) !=
          cudaSuccess ||
      cudaDeviceGetAttribute(&per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess) {
    return 48 * 1024 - 1024;  // every device's default
  }
  return fused_backward_smem_budget(per_sm, per_block);
}

TableGeometry table_geometry(const FusedGeometry& g, FusedPass pass) {
  return TableGeometry{AxisGeometry{static_cast<int32_t>(g.in_h), static_cast<int32_t>(g.out_h),
                                    g.scale_h, g.bias_h},
                       AxisGeometry{static_cast<int32_t>(g.in_w), static_cast<int32_t>(g.out_w),
                                    g.scale_w, g.bias_w},
                       g.clamp, pass == FusedPass::Backward, true};
}

int64_t tap_bytes(DType dtype) {
  return dtype == DType::Float64 ? sizeof(TapEntry<double>) : sizeof(TapEntry<float>);
}

FusedPlan plan(const FusedGeometry& g, Strides4 x_strides, Strides3 target_strides,
               const void* first_out, int first_size, const void* second_out, int second_size,
               bool force_index64) {
  const int64_t x_sizes[4] = {g.N, g.C, g.in_h, g.in_w};
  const int64_t xs[4] = {x_strides.n, x_strides.c, x_strides.h, x_strides.w};
  const int64_t ts[3] = {target_strides.n, target_strides.h, target_strides.w};
  return plan_fused(x_sizes, xs, ts, g.out_h, g.out_w, first_out, first_size, second_out,
                    second_size, force_index64);
}

// The strip rows fused_strip_rows picks: 8 or 2.
template <typename F>
cudaError_t with_strip_rows(int rows, F&& f) {
  return rows == 8 ? f(std::integral_constant<int, 8>{}) : f(std::integral_constant<int, 2>{});
}

// The coarse-max pass: a thread per coarse pixel of an image, grid y striding the images.
template <typename T, typename index_t>
cudaError_t launch_coarse_max(const FusedArgs<acc_type<T>, index_t>& a, const FusedGeometry& g,
                              const void* x, acc_type<T>* cmax, cudaStream_t stream) {
  const int64_t plane = static_cast<int64_t>(g.in_h) * g.in_w;
  if (plane == 0 || g.N == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>((plane + kFusedThreads - 1) / kFusedThreads),
                  grid_dim(g.N, 65535));
  coarse_max_kernel<T, index_t>
      <<<grid, kFusedThreads, 0, stream>>>(a, static_cast<const T*>(x), cmax);
  return cudaGetLastError();
}

}  // namespace

int64_t resample_cross_entropy_workspace_bytes(DType dtype, const FusedGeometry& g,
                                               Strides4 x_strides, Strides3 target_strides,
                                               FusedPass pass, bool force_index64) {
  const int64_t tables = table_layout(table_geometry(g, pass), tap_bytes(dtype)).bytes;
  if (pass == FusedPass::Backward) return tables;
  FusedPlan p = plan(g, x_strides, target_strides, nullptr, 4, nullptr, 4, force_index64);
  plan_fused_forward(p);
  // The forward: the tables, a (loss, weight) partial per block, the coarse maxima; the
  // argmax: the tables and the coarse maxima (for the confidence).
  const int64_t partials = pass == FusedPass::Forward ? 2 * p.grid_x * p.grid_y : 0;
  return tables + (partials + p.coarse_entries) * acc_size(dtype);
}

bool resample_cross_entropy_backward_fits(DType dtype, const FusedGeometry& g, Strides4 x_strides,
                                          double label_smoothing) {
  const TableGeometry tg = table_geometry(g, FusedPass::Backward);
  const int64_t unused[4] = {0, 0, 0, 0}, unused3[3] = {0, 0, 0};
  FusedPlan p = plan(g, x_strides, Strides3{0, 0, 0}, nullptr, 4, nullptr, 4, false);
  plan_fused_backward(p, tg.h, tg.w, static_cast<int>(acc_size(dtype)), label_smoothing > 0.0,
                      unused, unused3, device_smem_budget());
  return p.groups > 0;
}

cudaError_t launch_resample_cross_entropy(DType dtype, const FusedGeometry& g, const void* x,
                                          Strides4 x_strides, Labels labels,
                                          Strides3 target_strides, const void* weight, void* loss,
                                          void* lse, void* weight_sum, void* workspace, int* flags,
                                          int64_t ignore_index, int64_t reduction,
                                          double label_smoothing, bool force_index64,
                                          cudaStream_t stream) {
  const TableGeometry tg = table_geometry(g, FusedPass::Forward);
  const int asize = static_cast<int>(acc_size(dtype));
  FusedPlan p = plan(g, x_strides, target_strides, lse, asize,
                     reduction == kReductionNone ? loss : nullptr, asize, force_index64);
  plan_fused_forward(p);
  const dim3 grid(static_cast<unsigned int>(p.grid_x), static_cast<unsigned int>(p.grid_y));
  // Workspace: the tables, a (loss, weight) partial per block, the coarse maxima.
  char* partials = static_cast<char*>(workspace) + table_layout(tg, tap_bytes(dtype)).bytes;
  void* cmax = partials + 2 * p.grid_x * p.grid_y * asize;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type<T>;
    cudaError_t err = launch_resample_tables<acc_t>(tg, workspace, stream);
    if (err != cudaSuccess) return err;
    const ResampleTables<acc_t> t = bind_tables<acc_t>(workspace, tg);
    const LossOutputs<acc_t> o =
        loss_outputs<acc_t>(reduction, loss, lse, weight_sum, partials, flags);
    return dispatch_index(p.index64, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto a =
          narrow_fused_args<acc_t, index_t>(p.args, ignore_index, reduction, label_smoothing);
      err = launch_coarse_max<T>(a, g, x, static_cast<acc_t*>(cmax), stream);
      if (err != cudaSuccess) return err;
      return with_strip_rows(fused_strip_rows(g.scale_h), [&](auto rows) {
        return with_target_and_flag(labels, a.smoothing, [&](auto target, auto smooth) {
          using label_t = label_of<decltype(target)>;
          fused_forward_kernel<T, label_t, index_t, decltype(rows)::value, decltype(smooth)::value>
              <<<grid, kFusedThreads, 0, stream>>>(a, t, static_cast<const T*>(x),
                                                   static_cast<const acc_t*>(cmax), target,
                                                   static_cast<const acc_t*>(weight), o);
          return cudaGetLastError();
        });
      });
    });
  });
}

cudaError_t launch_resample_cross_entropy_backward(
    DType dtype, const FusedGeometry& g, const void* grad, Strides3 grad_strides, const void* x,
    Strides4 x_strides, Labels labels, Strides3 target_strides, const void* weight, const void* lse,
    const void* weight_sum, void* grad_x, Strides4 grad_x_strides, void* workspace,
    int64_t ignore_index, int64_t reduction, double label_smoothing, bool force_index64,
    cudaStream_t stream) {
  if (g.N * g.C * g.in_h * g.in_w == 0 || g.out_h * g.out_w == 0) return cudaSuccess;
  const TableGeometry tg = table_geometry(g, FusedPass::Backward);
  const int64_t gxs[4] = {grad_x_strides.n, grad_x_strides.c, grad_x_strides.h, grad_x_strides.w};
  const int64_t gs[3] = {grad_strides.n, grad_strides.h, grad_strides.w};
  FusedPlan p = plan(g, x_strides, target_strides, nullptr, 4, nullptr, 4, force_index64);
  plan_fused_backward(p, tg.h, tg.w, static_cast<int>(acc_size(dtype)), label_smoothing > 0.0, gxs,
                      gs, device_smem_budget());
  if (p.groups == 0) return cudaErrorInvalidConfiguration;  // a factor beyond ~1000
  const dim3 grid(static_cast<unsigned int>(p.blocks), grid_dim(p.groups, 65535));
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type<T>;
    cudaError_t err = launch_resample_tables<acc_t>(tg, workspace, stream);
    if (err != cudaSuccess) return err;
    const ResampleTables<acc_t> t = bind_tables<acc_t>(workspace, tg);
    return dispatch_index(p.index64, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto a =
          narrow_fused_args<acc_t, index_t>(p.args, ignore_index, reduction, label_smoothing);
      return with_target_and_flag(labels, a.smoothing, [&](auto target, auto smooth) {
        using label_t = label_of<decltype(target)>;
        const auto kernel = fused_backward_kernel<T, label_t, index_t, decltype(smooth)::value>;
        // Past 48 KB a block's dynamic shared memory must be opted in to, per kernel.
        const cudaError_t opt_in = cudaFuncSetAttribute(
            kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.smem_bytes));
        if (opt_in != cudaSuccess) return opt_in;
        kernel<<<grid, kFusedThreads, p.smem_bytes, stream>>>(
            a, t, static_cast<const acc_t*>(grad), static_cast<const acc_t*>(weight_sum),
            static_cast<const T*>(x), target, static_cast<const acc_t*>(weight),
            static_cast<const acc_t*>(lse), static_cast<T*>(grad_x), p.groups);
        return cudaGetLastError();
      });
    });
  });
}

cudaError_t launch_resample_argmax(DType dtype, const FusedGeometry& g, const void* x,
                                   Strides4 x_strides, void* labels, bool labels_uint8,
                                   float* confidence, void* workspace, bool force_index64,
                                   cudaStream_t stream) {
  if (g.N * g.out_h * g.out_w == 0) return cudaSuccess;
  const TableGeometry tg = table_geometry(g, FusedPass::Argmax);
  FusedPlan p = plan(g, x_strides, Strides3{0, 0, 0}, labels, labels_uint8 ? 1 : 8, confidence, 4,
                     force_index64);
  plan_fused_forward(p);
  const dim3 grid(static_cast<unsigned int>(p.grid_x), static_cast<unsigned int>(p.grid_y));
  void* cmax = static_cast<char*>(workspace) + table_layout(tg, tap_bytes(dtype)).bytes;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type<T>;
    cudaError_t err = launch_resample_tables<acc_t>(tg, workspace, stream);
    if (err != cudaSuccess) return err;
    const ResampleTables<acc_t> t = bind_tables<acc_t>(workspace, tg);
    return dispatch_index(p.index64, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto a = narrow_fused_args<acc_t, index_t>(p.args, 0, 0, 0.0);
      if (confidence != nullptr) {
        err = launch_coarse_max<T>(a, g, x, static_cast<acc_t*>(cmax), stream);
        if (err != cudaSuccess) return err;
      }
      return with_strip_rows(fused_strip_rows(g.scale_h), [&](auto rows) {
        return with_flag(confidence != nullptr, [&](auto conf) {
          constexpr int R = decltype(rows)::value;
          constexpr bool CONF = decltype(conf)::value;
          const auto* xt = static_cast<const T*>(x);
          const auto* cm = static_cast<const acc_t*>(cmax);
          if (labels_uint8) {
            fused_argmax_kernel<T, uint8_t, index_t, R, CONF><<<grid, kFusedThreads, 0, stream>>>(
                a, t, xt, cm, static_cast<uint8_t*>(labels), confidence);
          } else {
            fused_argmax_kernel<T, int64_t, index_t, R, CONF><<<grid, kFusedThreads, 0, stream>>>(
                a, t, xt, cm, static_cast<int64_t*>(labels), confidence);
          }
          return cudaGetLastError();
        });
      });
    });
  });
}

}  // namespace fcn_fast
