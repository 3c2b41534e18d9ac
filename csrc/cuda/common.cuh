#pragma once
// Device-side helpers shared by the CUDA kernels: the half / bfloat16 element conversions
// the per-thread headers (csrc/include/fcn_fast/*_kernels.h) need, dispatch from DType to an
// element type, the tap-table kernel, and the block-level pieces that cannot live in the
// per-thread headers (a fixed-order block sum and the last-block finish of a reduction).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "fcn_fast/element_access.h"
#include "fcn_fast/kernel_types.h"
#include "fcn_fast/pixel_cross_entropy_math.h"
#include "fcn_fast/resample_tables.h"

namespace fcn_fast {

template <>
struct ElementOps<__half> {
  using acc = float;
  static FCN_HD float to_acc(__half v) { return __half2float(v); }
  static FCN_HD __half from_acc(float v) { return __float2half_rn(v); }
};

template <>
struct ElementOps<__nv_bfloat16> {
  using acc = float;
  static FCN_HD float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  static FCN_HD __nv_bfloat16 from_acc(float v) { return __float2bfloat16_rn(v); }
};

// A bfloat16 is the top half of a float: element k of a pack is its 32-bit word shifted or
// masked, one instruction.
template <int V>
__device__ __forceinline__ float pack_acc(const Pack<__nv_bfloat16, V>& pack, int k) {
  const uint32_t word = reinterpret_cast<const uint32_t*>(&pack)[k / 2];
  return __uint_as_float(k % 2 == 0 ? word << 16 : word & 0xffff0000u);
}

// Calls f(T{}) with the element type of `dtype`.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float16:
      return f(__half{});
    case DType::BFloat16:
      return f(__nv_bfloat16{});
    case DType::Float32:
      return f(float{});
    case DType::Float64:
      return f(double{});
  }
  return cudaErrorInvalidValue;
}

// Calls f(target, smooth): the loss launchers' target as a pointer to its label type
// (kernel_types.h's dispatch_label; label_of<decltype(target)> names it) and their smoothing
// flag as std::true_type or std::false_type, both template arguments of the kernels.
template <typename Pointer>
using label_of = std::remove_const_t<std::remove_pointer_t<Pointer>>;

template <typename F>
cudaError_t with_target_and_flag(Labels labels, bool flag, F&& f) {
  return dispatch_label(labels.type, [&](auto label) {
    const auto* target = static_cast<const decltype(label)*>(labels.data);
    return flag ? f(target, std::true_type{}) : f(target, std::false_type{});
  });
}

// Calls f(int32_t{}) or f(int64_t{}): the index type of the element kernels.
template <typename F>
cudaError_t dispatch_index(bool index64, F&& f) {
  return index64 ? f(int64_t{}) : f(int32_t{});
}

inline int64_t element_size(DType dtype) {
  switch (dtype) {
    case DType::Float16:
    case DType::BFloat16:
      return 2;
    case DType::Float32:
      return 4;
    case DType::Float64:
      return 8;
  }
  return 0;
}

inline int64_t acc_size(DType dtype) { return dtype == DType::Float64 ? 8 : 4; }

// Grid dimensions y and z are limited to 65535: larger counts are covered by striding loops
// in the kernels.
inline unsigned int grid_dim(int64_t blocks, int64_t limit) {
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks < limit ? blocks : limit));
}

// ---- The tap tables (resample_tables.h): the only kernel with fp64 arithmetic ----

constexpr int kTableThreads = 128;

template <typename acc_t>
__global__ void __launch_bounds__(kTableThreads)
    resample_tables_kernel(TableGeometry g, ResampleTables<acc_t> t) {
  const int32_t k = static_cast<int32_t>(blockIdx.x) * kTableThreads + threadIdx.x;
  if (k < g.entries()) build_table_entry(g, k, t);
}

template <typename acc_t>
cudaError_t launch_resample_tables(const TableGeometry& g, void* workspace, cudaStream_t stream) {
  const int32_t entries = g.entries();
  if (entries == 0) return cudaSuccess;
  resample_tables_kernel<acc_t>
      <<<(entries + kTableThreads - 1) / kTableThreads, kTableThreads, 0, stream>>>(
          g, bind_tables<acc_t>(workspace, g));
  return cudaGetLastError();
}

// ---- Block-level reduction ----

// Sum of v over the block in a fixed order (a shuffle-down tree within each warp, then the
// warps in order; pixel_cross_entropy_kernels.h's block_sum_in_gpu_order is the same order
// on the CPU). The result is valid in thread 0. blockDim.x must be a multiple of 32.
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

// Where a loss kernel (pixel_cross_entropy, resample_cross_entropy) writes.
template <typename acc_t>
struct LossOutputs {
  acc_t* loss_none;     // per pixel for reduction none, else nullptr
  acc_t* loss_reduced;  // one element for mean / sum, else nullptr
  acc_t* lse;
  acc_t* weight_sum;
  acc_t* partials;  // one (loss, weight) pair per block
  int* error_flag;
  unsigned int* ticket;
};

template <typename acc_t>
LossOutputs<acc_t> loss_outputs(int64_t reduction, void* loss, void* lse, void* weight_sum,
                                void* partials, int* flags) {
  LossOutputs<acc_t> o;
  o.loss_none = reduction == kReductionNone ? static_cast<acc_t*>(loss) : nullptr;
  o.loss_reduced = reduction == kReductionNone ? nullptr : static_cast<acc_t*>(loss);
  o.lse = static_cast<acc_t*>(lse);
  o.weight_sum = static_cast<acc_t*>(weight_sum);
  o.partials = static_cast<acc_t*>(partials);
  o.error_flag = flags;
  o.ticket = reinterpret_cast<unsigned int*>(flags + 1);
  return o;
}

// The end of a deterministic grid-wide reduction of (loss, weight): each block stores its
// partial, the last block to finish (an integer ticket: no float atomics) adds all partials
// in block order and writes weight_sum and, for mean or sum, the loss. `ticket` is zeroed
// by the caller before the launch.
template <typename acc_t>
__device__ void finish_loss_reduction(acc_t loss, acc_t weight, acc_t* partials,
                                      unsigned int* ticket, acc_t* loss_out, acc_t* weight_sum,
                                      int32_t reduction) {
  __shared__ acc_t shared[32];
  __shared__ bool last;
  loss = block_sum(loss, shared);
  weight = block_sum(weight, shared);
  const unsigned int blocks = gridDim.x * gridDim.y;
  const unsigned int block = blockIdx.y * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) {
    partials[2 * block] = loss;
    partials[2 * block + 1] = weight;
    __threadfence();  // the partial is visible before the ticket is
    last = atomicAdd(ticket, 1u) == blocks - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  acc_t l = acc_t(0), w = acc_t(0);
  for (unsigned int i = threadIdx.x; i < blocks; i += blockDim.x) {
    l += __ldcg(partials + 2 * i);  // L2, not a stale L1 line
    w += __ldcg(partials + 2 * i + 1);
  }
  l = block_sum(l, shared);
  w = block_sum(w, shared);
  if (threadIdx.x == 0) {
    weight_sum[0] = w;
    if (reduction == kReductionMean) loss_out[0] = l / w;  // 0 / 0: NaN, as PyTorch
    if (reduction == kReductionSum) loss_out[0] = l;
  }
}

}  // namespace fcn_fast
