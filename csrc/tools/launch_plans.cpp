// Launch plans of the CUDA kernels for the static performance model (fcn_fast/bench/model.py),
// which compiles this file with the host compiler and calls it through ctypes: the same
// host-side plan functions the launchers in csrc/cuda/*.cu call, so the model sees the
// kernels, vector widths, grids and shared memory a GPU run would launch. No CUDA runtime.
//
// Tensors are described by sizes and element strides; their data pointers stand in as one
// 256-byte-aligned address (as the caching allocator's), so the plans' alignment checks see
// what a GPU run sees. Each entry fills out[] in the order its comment lists and returns 0.
#include <stdint.h>

#include "fcn_fast/pixel_cross_entropy_kernels.h"
#include "fcn_fast/resample_cross_entropy_kernels.h"
#include "fcn_fast/resample_skip_kernels.h"

namespace {

const void* const kAligned = reinterpret_cast<const void*>(uintptr_t{1} << 20);

template <int N>
void copy(const int64_t* from, int64_t (&to)[N]) {
  for (int k = 0; k < N; ++k) to[k] = from[k];
}

fcn_fast::AxisGeometry axis(int64_t in, int64_t out, double scale, double bias) {
  return fcn_fast::AxisGeometry{static_cast<int32_t>(in), static_cast<int32_t>(out), scale, bias};
}

}  // namespace

extern "C" {

// out: V, index64, grid_x, grid_y, threads, rows_per_thread, items, groups
int plan_resample_forward_c(const int64_t* x_sizes, const int64_t* x_strides, int has_skip,
                            const int64_t* skip_sizes, const int64_t* skip_strides, int64_t skip_y,
                            int64_t skip_x, int64_t out_h, int64_t out_w,
                            const int64_t* out_strides, int element_size, int64_t* out) {
  int64_t xsz[4], xs[4], ssz[4], ss[4], os[4];
  copy(x_sizes, xsz);
  copy(x_strides, xs);
  copy(skip_sizes, ssz);
  copy(skip_strides, ss);
  copy(out_strides, os);
  const fcn_fast::ResampleForwardPlan p =
      fcn_fast::plan_resample_forward(xsz, xs, has_skip ? kAligned : nullptr, ss, ssz, skip_y,
                                      skip_x, out_h, out_w, kAligned, os, element_size, false);
  const int64_t values[] = {
      p.V, p.index64, p.grid_x, p.grid_y, p.threads, p.args.rows_per_thread, p.items, p.groups};
  for (int k = 0; k < 8; ++k) out[k] = values[k];
  return 0;
}

// out: V, index64, blocks, groups, smem_bytes, threads, classes per block, band rows
int plan_resample_backward_c(const int64_t* grad_sizes, const int64_t* grad_strides, int64_t in_h,
                             int64_t in_w, const int64_t* grad_x_strides, const double* scale_bias,
                             int clamp, int element_size, int acc_size, int64_t* out) {
  int64_t gsz[4], gs[4], gxs[4];
  copy(grad_sizes, gsz);
  copy(grad_strides, gs);
  copy(grad_x_strides, gxs);
  (void)clamp;  // the blocks depend on the geometry only
  const fcn_fast::ResampleBackwardPlan p = fcn_fast::plan_resample_backward(
      gsz, kAligned, gs, in_h, in_w, gxs, axis(in_h, gsz[2], scale_bias[0], scale_bias[1]),
      axis(in_w, gsz[3], scale_bias[2], scale_bias[3]), element_size, acc_size, false);
  const int64_t values[] = {p.V,
                            p.index64,
                            p.blocks,
                            p.groups,
                            p.smem_bytes,
                            fcn_fast::kResampleThreads,
                            p.args.layout.Cg,
                            p.args.layout.band_rows};
  for (int k = 0; k < 8; ++k) out[k] = values[k];
  return 0;
}

// out: P, index64, grid_x, grid_y, threads, smem_bytes, chunk (0: pixel runs), staged_vector
int plan_pixel_cross_entropy_c(int64_t N, int64_t C, int64_t S, const int64_t* x_strides,
                               const int64_t* target_strides, int backward,
                               const int64_t* out_strides, int element_size, int acc_size,
                               int64_t* out) {
  int64_t xs[3], ts[2], os[3];
  copy(x_strides, xs);
  copy(target_strides, ts);
  copy(out_strides, os);
  const fcn_fast::LossPlan p =
      fcn_fast::plan_pixel_cross_entropy(N, C, S, kAligned, xs, ts, backward ? kAligned : nullptr,
                                         os, kAligned, element_size, acc_size, false);
  const int64_t values[] = {
      p.P,          p.index64,    p.grid_x,       p.grid_y, fcn_fast::kLossThreads,
      p.smem_bytes, p.args.chunk, p.staged_vector};
  for (int k = 0; k < 8; ++k) out[k] = values[k];
  return 0;
}

// out: P, index64, grid_x, grid_y, threads, groups, blocks, smem_bytes, pixel_capacity (the last
// four for the backward, pass 1: groups > 0 when its blocks fit; a block recomputes at most
// pixel_capacity output pixels)
int plan_fused_c(const int64_t* x_sizes, const int64_t* x_strides, const int64_t* target_strides,
                 int64_t out_h, int64_t out_w, const double* scale_bias, int clamp, int pass,
                 int acc_size, int smoothing, int64_t* out) {
  int64_t xsz[4], xs[4], ts[3];
  copy(x_sizes, xsz);
  copy(x_strides, xs);
  copy(target_strides, ts);
  (void)clamp;
  fcn_fast::FusedPlan p = fcn_fast::plan_fused(xsz, xs, ts, out_h, out_w, kAligned, acc_size,
                                               kAligned, acc_size, false);
  if (pass == 1) {
    const int64_t gxs[4] = {xsz[1] * xsz[2] * xsz[3], xsz[2] * xsz[3], xsz[3], 1};
    const int64_t gs[3] = {0, 0, 0};
    fcn_fast::plan_fused_backward(
        p, axis(xsz[2], out_h, scale_bias[0], scale_bias[1]),
        axis(xsz[3], out_w, scale_bias[2], scale_bias[3]), acc_size, smoothing != 0, gxs, gs,
        fcn_fast::fused_backward_smem_budget(fcn_fast::kH100SharedPerSM,
                                             fcn_fast::kH100SharedPerBlockOptIn));
  }
  const int64_t values[] = {p.P,
                            p.index64,
                            p.grid_x,
                            p.grid_y,
                            fcn_fast::kFusedThreads,
                            p.groups,
                            p.blocks,
                            p.smem_bytes,
                            p.args.pixel_capacity};
  for (int k = 0; k < 9; ++k) out[k] = values[k];
  return 0;
}

}  // extern "C"
