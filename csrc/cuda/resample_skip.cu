// CUDA kernels of the resample-skip op (math: resample_skip_math.h). CUDA
// headers and ours only, so CI compiles this file with nvcc on a CPU machine.
//
// Forward: one thread per output element, blocks of 32 x 8 over (X, Y), planes
// on grid z: no integer division per element, coalesced along X for NCHW.
// Backward: two gathers, vertical then horizontal, through an fp32 workspace
// 1/factor the size of grad_out: no atomics, bitwise deterministic.
#include "common.cuh"
#include "fcn_fast/resample_skip_math.h"
#include "resample_skip.cuh"

namespace fcn_fast {
namespace {

constexpr int kBlockX = 32, kBlockY = 8;
constexpr int64_t kMaxGridYZ = 65535;

__device__ __forceinline__ bool inside(int64_t i, int64_t n) { return i >= 0 && i < n; }

template <typename T>
__global__ void resample_skip_fwd_kernel(ResampleGeometry g, const T* __restrict__ x, Strides4 xs,
                                         const T* __restrict__ skip, Strides4 ss, int64_t skip_y,
                                         int64_t skip_x, T* __restrict__ out, Strides4 os) {
  using acc_t = typename Acc<T>::type;
  const int64_t X = static_cast<int64_t>(blockIdx.x) * kBlockX + threadIdx.x;
  if (X >= g.out_w) return;
  const Tap<acc_t> tx = resample_tap<acc_t>(X, g.scale_w, g.bias_w, g.in_w, g.clamp);
  const bool col0 = inside(tx.i0, g.in_w), col1 = inside(tx.i1, g.in_w);
  const int64_t planes = g.N * g.C;
  for (int64_t Y = static_cast<int64_t>(blockIdx.y) * kBlockY + threadIdx.y; Y < g.out_h;
       Y += static_cast<int64_t>(gridDim.y) * kBlockY) {
    const Tap<acc_t> ty = resample_tap<acc_t>(Y, g.scale_h, g.bias_h, g.in_h, g.clamp);
    const bool row0 = inside(ty.i0, g.in_h), row1 = inside(ty.i1, g.in_h);
    for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
      const int64_t n = plane / g.C, c = plane % g.C;
      const T* xp = x + n * xs.n + c * xs.c;
      // A tap outside the input is not read (not multiplied by 0: 0 * inf = NaN).
      auto blend_row = [&](int64_t i) {
        const T* r = xp + i * xs.h;
        acc_t v = acc_t(0);
        if (col0) v += tx.w0 * to_acc(r[tx.i0 * xs.w]);
        if (col1) v += tx.w1 * to_acc(r[tx.i1 * xs.w]);
        return v;
      };
      acc_t v = acc_t(0);
      if (row0) v += ty.w0 * blend_row(ty.i0);
      if (row1) v += ty.w1 * blend_row(ty.i1);
      if (skip != nullptr) {
        v += to_acc(skip[n * ss.n + c * ss.c + (Y + skip_y) * ss.h + (X + skip_x) * ss.w]);
      }
      out[n * os.n + c * os.c + Y * os.h + X * os.w] = from_acc<T>(v);
    }
  }
}

// Backward, pass 1 (vertical adjoint): vsum[plane, i, X] = sum over the outputs Y that
// read input row i of weight(Y, i) * grad_out[plane, Y, X]. One thread per (i, X):
// coalesced along X; grad_out rows are shared by neighbouring i through L2.
template <typename T, typename acc_t>
__global__ void resample_bwd_rows_kernel(ResampleGeometry g, const T* __restrict__ grad,
                                         Strides4 gs, acc_t* __restrict__ vsum) {
  const int64_t X = static_cast<int64_t>(blockIdx.x) * kBlockX + threadIdx.x;
  if (X >= g.out_w) return;
  const int64_t y_window = resample_window(g.scale_h, g.out_h);
  const int64_t planes = g.N * g.C;
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * kBlockY + threadIdx.y; i < g.in_h;
       i += static_cast<int64_t>(gridDim.y) * kBlockY) {
    const int64_t y_first = resample_first_output(i, g.scale_h, g.bias_h);
    const int64_t y_end = min(y_first + y_window, g.out_h);
    for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
      const T* column = grad + (plane / g.C) * gs.n + (plane % g.C) * gs.c + X * gs.w;
      acc_t acc = acc_t(0);
      for (int64_t Y = y_first; Y < y_end; ++Y) {
        const acc_t w = resample_weight<acc_t>(Y, i, g.scale_h, g.bias_h, g.in_h, g.clamp);
        if (w != acc_t(0)) acc += w * to_acc(column[Y * gs.h]);
      }
      vsum[(plane * g.in_h + i) * g.out_w + X] = acc;
    }
  }
}

// Backward, pass 2 (horizontal adjoint): grad_x[plane, i, j] = sum over the outputs X
// that read input column j of weight(X, j) * vsum[plane, i, X]. Both passes gather in a
// fixed order: no atomics, bitwise deterministic, the summation order of the CPU kernel.
template <typename T, typename acc_t>
__global__ void resample_bwd_cols_kernel(ResampleGeometry g, const acc_t* __restrict__ vsum,
                                         T* __restrict__ grad_x) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kBlockX + threadIdx.x;
  if (j >= g.in_w) return;
  const int64_t x_first = resample_first_output(j, g.scale_w, g.bias_w);
  const int64_t x_end = min(x_first + resample_window(g.scale_w, g.out_w), g.out_w);
  const int64_t planes = g.N * g.C;
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * kBlockY + threadIdx.y; i < g.in_h;
       i += static_cast<int64_t>(gridDim.y) * kBlockY) {
    for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
      const acc_t* row = vsum + (plane * g.in_h + i) * g.out_w;
      acc_t acc = acc_t(0);
      for (int64_t X = x_first; X < x_end; ++X) {
        const acc_t w = resample_weight<acc_t>(X, j, g.scale_w, g.bias_w, g.in_w, g.clamp);
        if (w != acc_t(0)) acc += w * row[X];
      }
      grad_x[(plane * g.in_h + i) * g.in_w + j] = from_acc<T>(acc);
    }
  }
}

dim3 plane_grid(int64_t width, int64_t height, int64_t planes) {
  return dim3(static_cast<unsigned int>((width + kBlockX - 1) / kBlockX),
              grid_dim((height + kBlockY - 1) / kBlockY, kMaxGridYZ), grid_dim(planes, kMaxGridYZ));
}

}  // namespace

cudaError_t launch_resample_skip(DType dtype, const ResampleGeometry& g, const void* x,
                                 Strides4 x_strides, const void* skip, Strides4 skip_strides,
                                 int64_t skip_y, int64_t skip_x, void* out, Strides4 out_strides,
                                 cudaStream_t stream) {
  if (g.N * g.C * g.out_h * g.out_w == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    resample_skip_fwd_kernel<T>
        <<<plane_grid(g.out_w, g.out_h, g.N * g.C), dim3(kBlockX, kBlockY), 0, stream>>>(
            g, static_cast<const T*>(x), x_strides, static_cast<const T*>(skip), skip_strides,
            skip_y, skip_x, static_cast<T*>(out), out_strides);
    return cudaGetLastError();
  });
}

int64_t resample_skip_backward_workspace(const ResampleGeometry& g) {
  return g.N * g.C * g.in_h * g.out_w;
}

cudaError_t launch_resample_skip_backward(DType dtype, const ResampleGeometry& g,
                                          const void* grad_out, Strides4 grad_out_strides,
                                          void* grad_x, void* workspace, cudaStream_t stream) {
  if (g.N * g.C * g.in_h * g.in_w == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    acc_t* vsum = static_cast<acc_t*>(workspace);
    resample_bwd_rows_kernel<T, acc_t>
        <<<plane_grid(g.out_w, g.in_h, g.N * g.C), dim3(kBlockX, kBlockY), 0, stream>>>(
            g, static_cast<const T*>(grad_out), grad_out_strides, vsum);
    resample_bwd_cols_kernel<T, acc_t>
        <<<plane_grid(g.in_w, g.in_h, g.N * g.C), dim3(kBlockX, kBlockY), 0, stream>>>(
            g, vsum, static_cast<T*>(grad_x));
    return cudaGetLastError();
  });
}

}  // namespace fcn_fast
