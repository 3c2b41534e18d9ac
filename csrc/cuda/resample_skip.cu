// CUDA kernels of the resample-skip op: thin __global__ wrappers around the per-thread code
// of fcn_fast/resample_skip_kernels.h (which the CPU emulation test runs as well), plus
// their launchers. CUDA headers and ours only, so CI compiles this file with nvcc on a CPU
// machine.
//
// Every launch is two kernels: the tap tables (out_h + out_w entries, fp64 index math, and
// for the backward the adjoint ranges of in_h + in_w inputs), then the element kernel,
// which only reads the tables: 32-bit (or, past 2^31 elements, 64-bit) integer and fp32
// arithmetic.
// Forward: a thread owns V consecutive outputs (16 bytes) of up to 32 consecutive rows and
// reuses each interpolated input row for the outputs that share it; one 16-byte store per
// row. Bytes: out written once, skip read once, x read about once (L1/L2).
// Backward: a block owns a band of input rows x a tile of input columns; its threads read
// each grad_out row of the band once, coalesced, into a vertical sum in shared memory, and
// then gather the horizontal adjoint from it. No atomics, no workspace round trip.
#include "common.cuh"
#include "fcn_fast/resample_skip_kernels.h"
#include "resample_skip.cuh"

namespace fcn_fast {
namespace {

// Blocks of 128 threads per multiprocessor the register allocation must allow: 4 (up to 128
// registers a thread), 3 for the 8-element (16-byte half / bfloat16) forward, whose
// per-element state (two interpolated rows, taps, skip prefetch) takes ~165 registers
// without spilling.
constexpr int forward_min_blocks(int V) { return V >= 8 ? 3 : 4; }

template <int V, typename T, typename index_t>
__global__ void __launch_bounds__(kResampleForwardThreads, forward_min_blocks(V))
    resample_skip_forward_kernel(ResampleForwardArgs<index_t> a, ResampleTables<acc_type<T>> t,
                                 const T* __restrict__ x, const T* __restrict__ skip,
                                 T* __restrict__ out, int32_t items, int32_t groups) {
  const int32_t item = static_cast<int32_t>(blockIdx.x * blockDim.x + threadIdx.x);
  if (item >= items) return;
  for (int32_t group = blockIdx.y; group < groups; group += gridDim.y) {
    resample_forward_thread<V>(a, t.rows, t.cols, x, skip, out, item, group);
  }
}

template <int V, typename T, typename index_t>
__global__ void __launch_bounds__(kResampleThreads, 2)
    resample_skip_backward_kernel(ResampleBackwardArgs<index_t> a, ResampleTables<acc_type<T>> t,
                                  const T* __restrict__ grad, T* __restrict__ grad_x,
                                  int32_t groups) {
  extern __shared__ __align__(16) unsigned char shared[];
  acc_type<T>* vsum = reinterpret_cast<acc_type<T>*>(shared);
  for (int32_t group = blockIdx.y; group < groups; group += gridDim.y) {
    const BackwardBlock b = backward_block(a.layout, a.C, a.in_h, a.in_w, V, blockIdx.x, group, t);
    resample_backward_rows<V>(a, b, t, grad, vsum, threadIdx.x, kResampleThreads);
    __syncthreads();  // phase B reads every thread's vertical sums
    backward_columns<T, index_t>(a.layout, b, t, vsum, grad_x, a.grad_x, threadIdx.x,
                                 kResampleThreads);
    __syncthreads();  // the next group overwrites vsum
  }
}

TableGeometry table_geometry(const ResampleGeometry& g, bool backward) {
  return TableGeometry{AxisGeometry{static_cast<int32_t>(g.in_h), static_cast<int32_t>(g.out_h),
                                    g.scale_h, g.bias_h},
                       AxisGeometry{static_cast<int32_t>(g.in_w), static_cast<int32_t>(g.out_w),
                                    g.scale_w, g.bias_w},
                       g.clamp, backward};
}

// The plans pick V among {16 bytes, 8 bytes, 1 element}, one kernel each; past 2^31 elements
// (64-bit indices) only the scalar kernel exists.
template <typename T, typename index_t, typename F>
cudaError_t with_vector_width(int V, F&& f) {
  constexpr int kWide = sizeof(index_t) == 8 ? 1 : vector_width(sizeof(T));
  constexpr int kHalf = kWide >= 4 ? kWide / 2 : 1;
  if (V == kWide) return f(std::integral_constant<int, kWide>{});
  if (V == kHalf) return f(std::integral_constant<int, kHalf>{});
  return f(std::integral_constant<int, 1>{});
}

}  // namespace

int64_t resample_skip_workspace_bytes(DType dtype, const ResampleGeometry& g, bool backward) {
  return table_layout(table_geometry(g, backward),
                      dtype == DType::Float64 ? sizeof(TapEntry<double>) : sizeof(TapEntry<float>))
      .bytes;
}

cudaError_t launch_resample_skip(DType dtype, const ResampleGeometry& g, const void* x,
                                 Strides4 x_strides, const void* skip, Strides4 skip_strides,
                                 int64_t skip_h, int64_t skip_w, int64_t skip_y, int64_t skip_x,
                                 void* out, Strides4 out_strides, void* workspace,
                                 bool force_index64, cudaStream_t stream) {
  if (g.N * g.C * g.out_h * g.out_w == 0) return cudaSuccess;
  const TableGeometry tg = table_geometry(g, false);
  const int64_t x_sizes[4] = {g.N, g.C, g.in_h, g.in_w};
  const int64_t skip_sizes[4] = {g.N, g.C, skip_h, skip_w};
  const int64_t xs[4] = {x_strides.n, x_strides.c, x_strides.h, x_strides.w};
  const int64_t ss[4] = {skip_strides.n, skip_strides.c, skip_strides.h, skip_strides.w};
  const int64_t os[4] = {out_strides.n, out_strides.c, out_strides.h, out_strides.w};
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type<T>;
    cudaError_t err = launch_resample_tables<acc_t>(tg, workspace, stream);
    if (err != cudaSuccess) return err;
    const ResampleTables<acc_t> t = bind_tables<acc_t>(workspace, tg);
    const ResampleForwardPlan plan =
        plan_resample_forward(x_sizes, xs, skip, ss, skip_sizes, skip_y, skip_x, g.out_h, g.out_w,
                              out, os, sizeof(T), force_index64);
    const dim3 grid(static_cast<unsigned int>(plan.grid_x), static_cast<unsigned int>(plan.grid_y));
    return dispatch_index(plan.index64, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const ResampleForwardArgs<index_t> args = narrow_args<index_t>(plan.args);
      return with_vector_width<T, index_t>(plan.V, [&](auto width) {
        resample_skip_forward_kernel<decltype(width)::value, T, index_t>
            <<<grid, plan.threads, 0, stream>>>(args, t, static_cast<const T*>(x),
                                                static_cast<const T*>(skip), static_cast<T*>(out),
                                                static_cast<int32_t>(plan.items), plan.groups);
        return cudaGetLastError();
      });
    });
  });
}

cudaError_t launch_resample_skip_backward(DType dtype, const ResampleGeometry& g,
                                          const void* grad_out, Strides4 grad_out_strides,
                                          void* grad_x, Strides4 grad_x_strides, void* workspace,
                                          bool force_index64, cudaStream_t stream) {
  if (g.N * g.C * g.in_h * g.in_w == 0 || g.out_h * g.out_w == 0) return cudaSuccess;
  const TableGeometry tg = table_geometry(g, true);
  const int64_t g_sizes[4] = {g.N, g.C, g.out_h, g.out_w};
  const int64_t gs[4] = {grad_out_strides.n, grad_out_strides.c, grad_out_strides.h,
                         grad_out_strides.w};
  const int64_t gxs[4] = {grad_x_strides.n, grad_x_strides.c, grad_x_strides.h, grad_x_strides.w};
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_type<T>;
    cudaError_t err = launch_resample_tables<acc_t>(tg, workspace, stream);
    if (err != cudaSuccess) return err;
    const ResampleTables<acc_t> t = bind_tables<acc_t>(workspace, tg);
    const ResampleBackwardPlan plan =
        plan_resample_backward(g_sizes, grad_out, gs, g.in_h, g.in_w, gxs, tg.h, tg.w, sizeof(T),
                               sizeof(acc_t), force_index64);
    if (plan.groups == 0) return cudaErrorInvalidConfiguration;  // a factor beyond ~5000
    const dim3 grid(static_cast<unsigned int>(plan.blocks), grid_dim(plan.groups, 65535));
    return dispatch_index(plan.index64, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const ResampleBackwardArgs<index_t> args = narrow_args<index_t>(plan.args);
      return with_vector_width<T, index_t>(plan.V, [&](auto width) {
        resample_skip_backward_kernel<decltype(width)::value, T, index_t>
            <<<grid, kResampleThreads, plan.smem_bytes, stream>>>(
                args, t, static_cast<const T*>(grad_out), static_cast<T*>(grad_x), plan.groups);
        return cudaGetLastError();
      });
    });
  });
}

}  // namespace fcn_fast
