// CPU emulation of the CUDA kernels (csrc/cuda/*.cu), for tests/test_cuda_emulation.py.
//
// Each entry point below does what the kernel's launcher and __global__ wrapper do: the
// same host-side plan, the tap-table kernel's per-thread function over every entry, then
// the element kernel's per-thread functions (csrc/include/fcn_fast/*_kernels.h) for every
// (block, thread) of the grid. Block-level code cannot run here as written (shared memory,
// __syncthreads, shuffles); it is kept to phases separated by barriers, which the driver
// runs in order for all threads of a block, and to the fixed-order block sum, whose order
// block_sum_in_gpu_order reproduces. Every vector access is checked for alignment
// (FCN_FAST_EMULATION), shared memory is filled with NaN before each block so that a read
// of an unwritten accumulator shows in the result, and guard bytes past each block's shared
// memory must survive.
//
// A plain C interface over raw pointers (ctypes), so that the test needs only g++.
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "fcn_fast/kernel_types.h"
#include "fcn_fast/pixel_cross_entropy_kernels.h"
#include "fcn_fast/resample_cross_entropy_kernels.h"
#include "fcn_fast/resample_skip_kernels.h"

namespace fcn_fast {
namespace emulation {

void check_vector_access(const void* address, int bytes) {
  if (reinterpret_cast<uintptr_t>(address) % static_cast<uintptr_t>(bytes) != 0) {
    throw std::runtime_error("misaligned " + std::to_string(bytes) + "-byte vector access");
  }
}

}  // namespace emulation

namespace {

// Shared memory of one block: 16-byte aligned, NaN-filled, with guard bytes behind it.
class SharedMemory {
 public:
  explicit SharedMemory(int64_t bytes) : bytes_(bytes), words_((bytes + kGuard) / 16 + 1) {}
  void* fresh() {
    unsigned char* p = data();
    // 0xff bytes: a NaN in float and in double.
    memset(p, 0xff, static_cast<size_t>(bytes_));
    memset(p + bytes_, kGuardByte, kGuard);
    return p;
  }
  void check_guard() {
    const unsigned char* p = data() + bytes_;
    for (int i = 0; i < kGuard; ++i) {
      if (p[i] != kGuardByte) throw std::runtime_error("write past the block's shared memory");
    }
  }

 private:
  struct alignas(16) Word {
    unsigned char b[16];
  };
  static constexpr int kGuard = 256;
  static constexpr unsigned char kGuardByte = 0x5a;
  unsigned char* data() { return reinterpret_cast<unsigned char*>(words_.data()); }
  int64_t bytes_;
  std::vector<Word> words_;
};

template <typename acc_t>
std::vector<unsigned char> build_tables(const TableGeometry& g, ResampleTables<acc_t>* t) {
  const TableLayout l = table_layout(g, sizeof(TapEntry<acc_t>));
  std::vector<unsigned char> buffer(static_cast<size_t>(l.bytes) + 16);
  void* base = buffer.data() + (16 - reinterpret_cast<uintptr_t>(buffer.data()) % 16) % 16;
  *t = bind_tables<acc_t>(base, g);
  for (int32_t k = 0; k < g.entries(); ++k) build_table_entry(g, k, *t);
  return buffer;
}

TableGeometry table_geometry(const int64_t* sizes_in_out, const double* scale_bias, int clamp,
                             bool backward, bool runs = false) {
  // sizes_in_out: in_h, in_w, out_h, out_w
  return TableGeometry{
      AxisGeometry{static_cast<int32_t>(sizes_in_out[0]), static_cast<int32_t>(sizes_in_out[2]),
                   scale_bias[0], scale_bias[1]},
      AxisGeometry{static_cast<int32_t>(sizes_in_out[1]), static_cast<int32_t>(sizes_in_out[3]),
                   scale_bias[2], scale_bias[3]},
      clamp != 0, backward, runs};
}

template <typename F>
void with_vector(int V, F&& f) {
  switch (V) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 8:
      return f(std::integral_constant<int, 8>{});
  }
  throw std::runtime_error("unsupported vector width " + std::to_string(V));
}

template <typename F>
void with_types(int dtype, bool index64, F&& f) {
  const auto with_index = [&](auto tag) {
    if (index64) {
      f(tag, int64_t{});
    } else {
      f(tag, int32_t{});
    }
  };
  if (dtype == 0) {
    with_index(float{});
  } else {
    with_index(double{});
  }
}

// with_types, and the target's label type (kernel_types.h's LabelType code) as a third tag.
template <typename F>
void with_loss_types(int dtype, bool index64, int label_type, F&& f) {
  dispatch_label(static_cast<LabelType>(label_type), [&](auto label) {
    with_types(dtype, index64, [&](auto tag, auto index_tag) { f(tag, index_tag, label); });
  });
}

template <typename F>
int guarded(char* error, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    strncpy(error, e.what(), 255);
    error[255] = 0;
    return 1;
  }
}

// A grid-wide (loss, weight) reduction as the kernels do it: per-thread partials, a
// fixed-order block sum per block, then the last block's strided sums and block sum.
template <typename acc_t>
struct GridReduction {
  std::vector<acc_t> partials;  // 2 per block, in block order

  void block(std::vector<acc_t>& loss, std::vector<acc_t>& weight) {
    partials.push_back(block_sum_in_gpu_order(loss.data(), static_cast<int32_t>(loss.size())));
    partials.push_back(block_sum_in_gpu_order(weight.data(), static_cast<int32_t>(weight.size())));
  }

  void finish(int32_t threads, int64_t reduction, acc_t* loss_out, acc_t* weight_sum) {
    const size_t blocks = partials.size() / 2;
    std::vector<acc_t> l(threads, acc_t(0)), w(threads, acc_t(0));
    for (int32_t t = 0; t < threads; ++t) {
      for (size_t i = t; i < blocks; i += threads) {
        l[t] += partials[2 * i];
        w[t] += partials[2 * i + 1];
      }
    }
    const acc_t total_l = block_sum_in_gpu_order(l.data(), threads);
    const acc_t total_w = block_sum_in_gpu_order(w.data(), threads);
    weight_sum[0] = total_w;
    if (reduction == kReductionMean) loss_out[0] = total_l / total_w;
    if (reduction == kReductionSum) loss_out[0] = total_l;
  }
};

}  // namespace
}  // namespace fcn_fast

using namespace fcn_fast;

extern "C" {

// Sizes and strides arrive as int64 arrays; dtype 0: float32, 1: float64. `vector` (or
// `pixels`) > 0 forces the per-thread vector width, 0 takes the plan's choice. Returns 0, or
// 1 with a message in error[256]. A target arrives as its data and a LabelType code
// (kernel_types.h: 0 int64, 1 int32, 2 uint8).

int emu_resample_skip(int dtype, const int64_t* x_sizes, const void* x, const int64_t* xs,
                      const void* skip, const int64_t* ss, const int64_t* skip_sizes,
                      int64_t skip_y, int64_t skip_x, int64_t out_h, int64_t out_w, void* out,
                      const int64_t* os, const double* scale_bias, int clamp, int force64,
                      int vector, int64_t* chosen, char* error) {
  return guarded(error, [&] {
    const int64_t x4[4] = {x_sizes[0], x_sizes[1], x_sizes[2], x_sizes[3]};
    const int64_t xs4[4] = {xs[0], xs[1], xs[2], xs[3]};
    const int64_t ss4[4] = {ss[0], ss[1], ss[2], ss[3]};
    const int64_t sk4[4] = {skip_sizes[0], skip_sizes[1], skip_sizes[2], skip_sizes[3]};
    const int64_t os4[4] = {os[0], os[1], os[2], os[3]};
    const int64_t io[4] = {x_sizes[2], x_sizes[3], out_h, out_w};
    const TableGeometry tg = table_geometry(io, scale_bias, clamp, false);
    const int esize = dtype == 0 ? 4 : 8;
    const ResampleForwardPlan plan =
        plan_resample_forward(x4, xs4, skip, ss4, sk4, skip_y, skip_x, out_h, out_w, out, os4,
                              esize, force64 != 0, vector);
    chosen[0] = plan.V;
    chosen[1] = plan.index64;
    chosen[2] = plan.args.out_vector;
    chosen[3] = plan.args.skip_vector;
    chosen[4] = plan.args.rows_per_thread;
    if (x_sizes[0] * x_sizes[1] * out_h * out_w == 0) return;
    with_types(dtype, plan.index64, [&](auto tag, auto index_tag) {
      using T = decltype(tag);
      using index_t = decltype(index_tag);
      ResampleTables<T> t;
      const auto tables = build_tables<T>(tg, &t);
      const ResampleForwardArgs<index_t> a = narrow_args<index_t>(plan.args);
      with_vector(plan.V, [&](auto width) {
        constexpr int V = decltype(width)::value;
        // The launch of launch_resample_skip: grid (grid_x, grid_y) of `threads`.
        for (int64_t by = 0; by < plan.grid_y; ++by) {
          for (int64_t bx = 0; bx < plan.grid_x; ++bx) {
            for (int tx = 0; tx < plan.threads; ++tx) {
              const int64_t item = bx * plan.threads + tx;
              if (item >= plan.items) continue;  // the kernel's early return
              for (int64_t group = by; group < plan.groups; group += plan.grid_y) {
                resample_forward_thread<V>(a, t.rows, t.cols, static_cast<const T*>(x),
                                           static_cast<const T*>(skip), static_cast<T*>(out),
                                           static_cast<int32_t>(item), static_cast<int32_t>(group));
              }
            }
          }
        }
      });
    });
  });
}

int emu_resample_skip_backward(int dtype, const int64_t* g_sizes, const void* grad,
                               const int64_t* gs, int64_t in_h, int64_t in_w, void* grad_x,
                               const int64_t* gxs, const double* scale_bias, int clamp, int force64,
                               int vector, int64_t* chosen, char* error) {
  return guarded(error, [&] {
    const int64_t g4[4] = {g_sizes[0], g_sizes[1], g_sizes[2], g_sizes[3]};
    const int64_t gs4[4] = {gs[0], gs[1], gs[2], gs[3]};
    const int64_t gxs4[4] = {gxs[0], gxs[1], gxs[2], gxs[3]};
    const int64_t io[4] = {in_h, in_w, g_sizes[2], g_sizes[3]};
    const TableGeometry tg = table_geometry(io, scale_bias, clamp, true);
    const int esize = dtype == 0 ? 4 : 8;
    const ResampleBackwardPlan plan = plan_resample_backward(
        g4, grad, gs4, in_h, in_w, gxs4, tg.h, tg.w, esize, esize, force64 != 0, vector);
    chosen[0] = plan.V;
    chosen[1] = plan.index64;
    chosen[2] = plan.args.grad_vector;
    chosen[3] = plan.args.layout.Cg;
    chosen[4] = plan.args.layout.interleaved;
    chosen[5] = plan.args.layout.band_rows;
    chosen[6] = plan.args.layout.tile_cols;
    chosen[7] = plan.smem_bytes;
    if (plan.groups == 0) throw std::runtime_error("no block shape fits");
    with_types(dtype, plan.index64, [&](auto tag, auto index_tag) {
      using T = decltype(tag);
      using index_t = decltype(index_tag);
      ResampleTables<T> t;
      const auto tables = build_tables<T>(tg, &t);
      const ResampleBackwardArgs<index_t> a = narrow_args<index_t>(plan.args);
      SharedMemory shared(plan.smem_bytes);
      with_vector(plan.V, [&](auto width) {
        constexpr int V = decltype(width)::value;
        for (int32_t group = 0; group < plan.groups; ++group) {
          for (int32_t block = 0; block < plan.blocks; ++block) {
            T* vsum = static_cast<T*>(shared.fresh());
            const BackwardBlock b =
                backward_block(a.layout, a.C, a.in_h, a.in_w, V, block, group, t);
            for (int32_t thread = 0; thread < kResampleThreads; ++thread) {
              resample_backward_rows<V>(a, b, t, static_cast<const T*>(grad), vsum, thread,
                                        kResampleThreads);
            }
            // __syncthreads()
            for (int32_t thread = 0; thread < kResampleThreads; ++thread) {
              backward_columns<T, index_t>(a.layout, b, t, vsum, static_cast<T*>(grad_x), a.grad_x,
                                           thread, kResampleThreads);
            }
            shared.check_guard();
          }
        }
      });
    });
  });
}

// logits (N, C, S) strides xs, target (N, S) strides ts; loss: (N, S) for none else one
// element; lse (N, S); weight_sum one element; flags[0] the error flag.
int emu_pixel_cross_entropy(int dtype, const int64_t* sizes, const void* logits, const int64_t* xs,
                            const void* target_data, int label_type, const int64_t* ts,
                            const void* weight, void* loss, void* lse, void* weight_sum, int* flags,
                            int64_t ignore_index, int64_t reduction, double label_smoothing,
                            int force64, int pixels, int64_t* chosen, char* error) {
  return guarded(error, [&] {
    const int64_t N = sizes[0], C = sizes[1], S = sizes[2];
    const int64_t xs3[3] = {xs[0], xs[1], xs[2]}, ts2[2] = {ts[0], ts[1]}, os3[3] = {0, 0, 0};
    const int esize = dtype == 0 ? 4 : 8;
    const LossPlan plan = plan_pixel_cross_entropy(N, C, S, logits, xs3, ts2, nullptr, os3, lse,
                                                   esize, esize, force64 != 0, pixels);
    chosen[0] = plan.P;
    chosen[1] = plan.index64;
    chosen[2] = plan.args.chunk;
    chosen[3] = plan.args.x_vector;
    chosen[4] = plan.args.pixel_vector;
    chosen[5] = plan.staged_vector;
    with_loss_types(dtype, plan.index64, label_type, [&](auto tag, auto index_tag, auto label) {
      const auto* target = static_cast<const decltype(label)*>(target_data);
      using T = decltype(tag);
      using index_t = decltype(index_tag);
      const auto a =
          narrow_loss_args<T, index_t>(plan.args, 0, 0, ignore_index, reduction, label_smoothing);
      const T* x = static_cast<const T*>(logits);
      const T* w = static_cast<const T*>(weight);
      T* loss_none = reduction == kReductionNone ? static_cast<T*>(loss) : nullptr;
      GridReduction<T> sums;
      SharedMemory shared(plan.smem_bytes);
      std::vector<T> l(kLossThreads), wt(kLossThreads);
      for (int64_t by = 0; by < plan.grid_y; ++by) {
        for (int64_t bx = 0; bx < plan.grid_x; ++bx) {
          std::fill(l.begin(), l.end(), T(0));
          std::fill(wt.begin(), wt.end(), T(0));
          if (a.chunk > 0) {  // loss_forward_staged_kernel
            T* chunk = static_cast<T*>(shared.fresh());
            const int32_t s0 = static_cast<int32_t>(bx) * a.chunk;
            const int32_t np = a.S - s0 < a.chunk ? a.S - s0 : a.chunk;
            for (int32_t n = static_cast<int32_t>(by); n < a.N;
                 n += static_cast<int32_t>(plan.grid_y)) {
              if (np <= 0) break;
              for (int t = 0; t < kLossThreads; ++t) {
                copy_chunk(x + static_cast<index_t>(n) * a.xn + static_cast<index_t>(s0) * a.xs,
                           chunk, np * a.C, plan.staged_vector, t, kLossThreads);
              }
              for (int t = 0; t < kLossThreads; ++t) {
                const LossPartial<T> part = with_flag(a.smoothing, [&](auto smooth) {
                  return loss_forward_pixels<1, decltype(smooth)::value>(
                      a, chunk + t * a.C, index_t(1), static_cast<index_t>(a.C), false, n, s0 + t,
                      t < np ? 1 : 0, target, w, static_cast<T*>(lse), loss_none, flags);
                });
                l[t] += part.loss;
                wt[t] += part.weight;
              }
            }
            shared.check_guard();
          } else {  // loss_forward_runs_kernel
            with_vector(plan.P, [&](auto width) {
              constexpr int P = decltype(width)::value;
              for (int t = 0; t < kLossThreads; ++t) {
                const int32_t s0 = (static_cast<int32_t>(bx) * kLossThreads + t) * P;
                for (int32_t n = static_cast<int32_t>(by); n < a.N;
                     n += static_cast<int32_t>(plan.grid_y)) {
                  const int count = a.S - s0 < P ? a.S - s0 : P;
                  const LossPartial<T> part = with_flag(a.smoothing, [&](auto smooth) {
                    return loss_forward_pixels<P, decltype(smooth)::value>(
                        a, x + static_cast<index_t>(n) * a.xn + static_cast<index_t>(s0) * a.xs,
                        a.xc, a.xs, a.x_vector, n, s0, count, target, w, static_cast<T*>(lse),
                        loss_none, flags);
                  });
                  l[t] += part.loss;
                  wt[t] += part.weight;
                }
              }
            });
          }
          sums.block(l, wt);
        }
      }
      sums.finish(kLossThreads, reduction, static_cast<T*>(loss), static_cast<T*>(weight_sum));
    });
  });
}

int emu_pixel_cross_entropy_backward(int dtype, const int64_t* sizes, const void* grad,
                                     const int64_t* gstrides, const void* logits, const int64_t* xs,
                                     const void* target_data, int label_type, const int64_t* ts,
                                     const void* weight, const void* lse, const void* weight_sum,
                                     void* out, const int64_t* os, int64_t ignore_index,
                                     int64_t reduction, double label_smoothing, int force64,
                                     int pixels, int64_t* chosen, char* error) {
  return guarded(error, [&] {
    const int64_t N = sizes[0], C = sizes[1], S = sizes[2];
    const int64_t xs3[3] = {xs[0], xs[1], xs[2]}, ts2[2] = {ts[0], ts[1]};
    const int64_t os3[3] = {os[0], os[1], os[2]};
    const int esize = dtype == 0 ? 4 : 8;
    const LossPlan plan = plan_pixel_cross_entropy(N, C, S, logits, xs3, ts2, out, os3, lse, esize,
                                                   esize, force64 != 0, pixels);
    chosen[0] = plan.P;
    chosen[1] = plan.index64;
    chosen[2] = plan.args.chunk;
    chosen[3] = plan.args.x_vector;
    chosen[4] = plan.args.out_vector;
    chosen[5] = plan.staged_vector;
    if (N * C * S == 0) return;
    with_loss_types(dtype, plan.index64, label_type, [&](auto tag, auto index_tag, auto label) {
      const auto* target = static_cast<const decltype(label)*>(target_data);
      using T = decltype(tag);
      using index_t = decltype(index_tag);
      const int64_t gN = reduction == kReductionNone ? gstrides[0] : 0;
      const int64_t gS = reduction == kReductionNone ? gstrides[1] : 0;
      const auto a =
          narrow_loss_args<T, index_t>(plan.args, gN, gS, ignore_index, reduction, label_smoothing);
      const T* x = static_cast<const T*>(logits);
      const T* w = static_cast<const T*>(weight);
      const T* g = static_cast<const T*>(grad);
      T* o = static_cast<T*>(out);
      const T scale = reduced_grad_scale(a.reduction, g, static_cast<const T*>(weight_sum));
      const T wtotal = a.smoothing ? class_weight_total(w, a.C) : T(0);
      SharedMemory shared(plan.smem_bytes);
      for (int64_t by = 0; by < plan.grid_y; ++by) {
        for (int64_t bx = 0; bx < plan.grid_x; ++bx) {
          if (a.chunk > 0) {  // loss_backward_staged_kernel
            T* chunk = static_cast<T*>(shared.fresh());
            const int32_t s0 = static_cast<int32_t>(bx) * a.chunk;
            const int32_t np = a.S - s0 < a.chunk ? a.S - s0 : a.chunk;
            if (np <= 0) continue;
            for (int32_t n = static_cast<int32_t>(by); n < a.N;
                 n += static_cast<int32_t>(plan.grid_y)) {
              for (int t = 0; t < kLossThreads; ++t) {
                copy_chunk(x + static_cast<index_t>(n) * a.xn + static_cast<index_t>(s0) * a.xs,
                           chunk, np * a.C, plan.staged_vector, t, kLossThreads);
              }
              for (int t = 0; t < kLossThreads; ++t) {
                T* pixel = chunk + t * a.C;
                with_flag(a.smoothing, [&](auto smooth) {
                  loss_backward_pixels<1, decltype(smooth)::value>(
                      a, pixel, index_t(1), static_cast<index_t>(a.C), false, pixel, index_t(1),
                      static_cast<index_t>(a.C), false, n, s0 + t, t < np ? 1 : 0, g, scale, target,
                      w, static_cast<const T*>(lse), wtotal);
                });
              }
              for (int t = 0; t < kLossThreads; ++t) {
                copy_chunk(static_cast<const T*>(chunk),
                           o + static_cast<index_t>(n) * a.on + static_cast<index_t>(s0) * a.os,
                           np * a.C, plan.staged_vector, t, kLossThreads);
              }
            }
            shared.check_guard();
          } else {  // loss_backward_runs_kernel
            with_vector(plan.P, [&](auto width) {
              constexpr int P = decltype(width)::value;
              for (int t = 0; t < kLossThreads; ++t) {
                const int32_t s0 = (static_cast<int32_t>(bx) * kLossThreads + t) * P;
                if (s0 >= a.S) continue;
                const int count = a.S - s0 < P ? a.S - s0 : P;
                for (int32_t n = static_cast<int32_t>(by); n < a.N;
                     n += static_cast<int32_t>(plan.grid_y)) {
                  with_flag(a.smoothing, [&](auto smooth) {
                    loss_backward_pixels<P, decltype(smooth)::value>(
                        a, x + static_cast<index_t>(n) * a.xn + static_cast<index_t>(s0) * a.xs,
                        a.xc, a.xs, a.x_vector,
                        o + static_cast<index_t>(n) * a.on + static_cast<index_t>(s0) * a.os, a.oc,
                        a.os, a.out_vector, n, s0, count, g, scale, target, w,
                        static_cast<const T*>(lse), wtotal);
                  });
                }
              }
            });
          }
        }
      }
    });
  });
}

// x (N, C, in_h, in_w) strides xs; target (N, out_h, out_w) strides ts; geometry: in_h,
// in_w, out_h, out_w.
int emu_resample_cross_entropy(int dtype, const int64_t* x_sizes, const void* x, const int64_t* xs,
                               const void* target_data, int label_type, const int64_t* ts,
                               int64_t out_h, int64_t out_w, const double* scale_bias, int clamp,
                               const void* weight, void* loss, void* lse, void* weight_sum,
                               int* flags, int64_t ignore_index, int64_t reduction,
                               double label_smoothing, int force64, int pixels, int64_t* chosen,
                               char* error) {
  return guarded(error, [&] {
    const int64_t x4[4] = {x_sizes[0], x_sizes[1], x_sizes[2], x_sizes[3]};
    const int64_t xs4[4] = {xs[0], xs[1], xs[2], xs[3]}, ts3[3] = {ts[0], ts[1], ts[2]};
    const int64_t io[4] = {x_sizes[2], x_sizes[3], out_h, out_w};
    const TableGeometry tg = table_geometry(io, scale_bias, clamp, false, true);
    const int esize = dtype == 0 ? 4 : 8;
    FusedPlan plan =
        plan_fused(x4, xs4, ts3, out_h, out_w, lse, esize,
                   reduction == kReductionNone ? loss : nullptr, esize, force64 != 0, pixels);
    plan_fused_forward(plan);
    chosen[0] = plan.P;
    chosen[1] = plan.index64;
    chosen[2] = plan.args.pixel_vector;
    with_loss_types(dtype, plan.index64, label_type, [&](auto tag, auto index_tag, auto label) {
      const auto* target = static_cast<const decltype(label)*>(target_data);
      using T = decltype(tag);
      using index_t = decltype(index_tag);
      ResampleTables<T> t;
      const auto tables = build_tables<T>(tg, &t);
      const auto a =
          narrow_fused_args<T, index_t>(plan.args, ignore_index, reduction, label_smoothing);
      T* loss_none = reduction == kReductionNone ? static_cast<T*>(loss) : nullptr;
      // coarse_max_kernel, then fused_forward_kernel
      std::vector<T> cmax(static_cast<size_t>(plan.coarse_entries) + 1,
                          std::numeric_limits<T>::quiet_NaN());
      for (int32_t n = 0; n < a.N; ++n) {
        for (int32_t rest = 0; rest < a.in_h * a.in_w; ++rest) {
          coarse_max_entry(a, static_cast<const T*>(x), n, rest, cmax.data());
        }
      }
      GridReduction<T> sums;
      std::vector<T> l(kFusedThreads), wt(kFusedThreads);
      const bool eight = fused_strip_rows(scale_bias[0]) == 8;
      for (int64_t by = 0; by < plan.grid_y; ++by) {
        for (int64_t bx = 0; bx < plan.grid_x; ++bx) {
          for (int th = 0; th < kFusedThreads; ++th) {
            const int32_t X = static_cast<int32_t>(bx) * kFusedThreads + th;
            l[th] = wt[th] = T(0);
            for (int32_t Y = static_cast<int32_t>(by); Y < a.out_h;
                 Y += static_cast<int32_t>(plan.grid_y)) {
              if (eight ? !starts_strip<8>(t, Y) : !starts_strip<2>(t, Y)) continue;
              for (int32_t n = 0; n < a.N; ++n) {
                const auto strip = [&](auto rows, auto smooth) {
                  return fused_forward_strip<decltype(rows)::value, decltype(smooth)::value>(
                      a, t, static_cast<const T*>(x), cmax.data(), target,
                      static_cast<const T*>(weight), static_cast<T*>(lse), loss_none, flags, n, Y,
                      X);
                };
                const LossPartial<T> part = with_flag(a.smoothing, [&](auto smooth) {
                  return eight ? strip(std::integral_constant<int, 8>{}, smooth)
                               : strip(std::integral_constant<int, 2>{}, smooth);
                });
                l[th] += part.loss;
                wt[th] += part.weight;
              }
            }
          }
          sums.block(l, wt);
        }
      }
      sums.finish(kFusedThreads, reduction, static_cast<T*>(loss), static_cast<T*>(weight_sum));
    });
  });
}

int emu_resample_cross_entropy_backward(
    int dtype, const int64_t* x_sizes, const void* grad, const int64_t* gstrides, const void* x,
    const int64_t* xs, const void* target_data, int label_type, const int64_t* ts, int64_t out_h,
    int64_t out_w, const double* scale_bias, int clamp, const void* weight, const void* lse,
    const void* weight_sum, void* grad_x, const int64_t* gxs, int64_t ignore_index,
    int64_t reduction, double label_smoothing, int force64, int64_t* chosen, char* error) {
  return guarded(error, [&] {
    const int64_t x4[4] = {x_sizes[0], x_sizes[1], x_sizes[2], x_sizes[3]};
    const int64_t xs4[4] = {xs[0], xs[1], xs[2], xs[3]}, ts3[3] = {ts[0], ts[1], ts[2]};
    const int64_t gxs4[4] = {gxs[0], gxs[1], gxs[2], gxs[3]};
    const int64_t gs3[3] = {gstrides[0], gstrides[1], gstrides[2]};
    const int64_t io[4] = {x_sizes[2], x_sizes[3], out_h, out_w};
    const TableGeometry tg = table_geometry(io, scale_bias, clamp, true, true);
    const int esize = dtype == 0 ? 4 : 8;
    FusedPlan plan =
        plan_fused(x4, xs4, ts3, out_h, out_w, nullptr, esize, nullptr, esize, force64 != 0, 0);
    const int64_t no_strides[3] = {0, 0, 0};
    plan_fused_backward(plan, tg.h, tg.w, esize, label_smoothing > 0.0, gxs4,
                        reduction == kReductionNone ? gs3 : no_strides,
                        fused_backward_smem_budget(kH100SharedPerSM, kH100SharedPerBlockOptIn));
    chosen[0] = plan.args.layout.Cg;
    chosen[1] = plan.index64;
    chosen[2] = plan.args.layout.interleaved;
    chosen[3] = plan.args.layout.band_rows;
    chosen[4] = plan.args.layout.tile_cols;
    chosen[5] = plan.smem_bytes;
    if (x_sizes[0] * x_sizes[1] * x_sizes[2] * x_sizes[3] == 0 || out_h * out_w == 0) return;
    if (plan.groups == 0) throw std::runtime_error("no block shape fits");
    with_loss_types(dtype, plan.index64, label_type, [&](auto tag, auto index_tag, auto label) {
      const auto* target = static_cast<const decltype(label)*>(target_data);
      using T = decltype(tag);
      using index_t = decltype(index_tag);
      ResampleTables<T> t;
      const auto tables = build_tables<T>(tg, &t);
      const auto a =
          narrow_fused_args<T, index_t>(plan.args, ignore_index, reduction, label_smoothing);
      const T* g = static_cast<const T*>(grad);
      const T* w = static_cast<const T*>(weight);
      const T scale = reduced_grad_scale(a.reduction, g, static_cast<const T*>(weight_sum));
      const T wtotal = a.smoothing ? class_weight_total(w, a.C) : T(0);
      SharedMemory shared(plan.smem_bytes);
      for (int32_t group = 0; group < plan.groups; ++group) {
        for (int32_t block = 0; block < plan.blocks; ++block) {
          unsigned char* base = static_cast<unsigned char*>(shared.fresh());
          const PixelCoefs<T> coefs = pixel_coefs_in<T>(base, a.pixel_capacity, a.smoothing);
          T* vsum = reinterpret_cast<T*>(
              base + fused_backward_vsum_offset<T>(a.pixel_capacity, a.smoothing));
          const BackwardBlock b = backward_block(a.layout, a.C, a.in_h, a.in_w, 1, block, group, t);
          if ((b.ys.end - b.ys.begin) * (b.xs.end - b.xs.begin) > a.pixel_capacity) {
            throw std::runtime_error("a block's fine region exceeds the planned capacity");
          }
          for (int th = 0; th < kFusedThreads; ++th) {
            fused_backward_stage(a, b, static_cast<const T*>(lse), target, w, g, scale, wtotal,
                                 coefs, th, kFusedThreads);
          }
          for (int th = 0; th < kFusedThreads; ++th) {
            with_flag(a.smoothing, [&](auto smooth) {
              fused_backward_rows<decltype(smooth)::value, T>(a, b, t, static_cast<const T*>(x), w,
                                                              coefs, vsum, th, kFusedThreads);
              return 0;
            });
          }
          for (int th = 0; th < kFusedThreads; ++th) {
            backward_columns<T, index_t>(a.layout, b, t, vsum, static_cast<T*>(grad_x), a.grad_x,
                                         th, kFusedThreads);
          }
          shared.check_guard();
        }
      }
    });
  });
}

int emu_resample_argmax(int dtype, const int64_t* x_sizes, const void* x, const int64_t* xs,
                        int64_t out_h, int64_t out_w, const double* scale_bias, int clamp,
                        void* labels, int labels_uint8, float* confidence, int force64,
                        int64_t* chosen, char* error) {
  return guarded(error, [&] {
    const int64_t x4[4] = {x_sizes[0], x_sizes[1], x_sizes[2], x_sizes[3]};
    const int64_t xs4[4] = {xs[0], xs[1], xs[2], xs[3]}, ts3[3] = {0, 0, 0};
    const int64_t io[4] = {x_sizes[2], x_sizes[3], out_h, out_w};
    const TableGeometry tg = table_geometry(io, scale_bias, clamp, false, true);
    FusedPlan plan = plan_fused(x4, xs4, ts3, out_h, out_w, labels, labels_uint8 ? 1 : 8,
                                confidence, 4, force64 != 0);
    plan_fused_forward(plan);
    chosen[0] = fused_strip_rows(scale_bias[0]);
    chosen[1] = plan.index64;
    with_types(dtype, plan.index64, [&](auto tag, auto index_tag) {
      using T = decltype(tag);
      using index_t = decltype(index_tag);
      ResampleTables<T> t;
      const auto tables = build_tables<T>(tg, &t);
      const auto a = narrow_fused_args<T, index_t>(plan.args, 0, 0, 0.0);
      // coarse_max_kernel (for the confidence), then fused_argmax_kernel
      std::vector<T> cmax(static_cast<size_t>(plan.coarse_entries) + 1,
                          std::numeric_limits<T>::quiet_NaN());
      if (confidence != nullptr) {
        for (int32_t n = 0; n < a.N; ++n) {
          for (int32_t rest = 0; rest < a.in_h * a.in_w; ++rest) {
            coarse_max_entry(a, static_cast<const T*>(x), n, rest, cmax.data());
          }
        }
      }
      const bool eight = chosen[0] == 8;
      for (int64_t by = 0; by < plan.grid_y; ++by) {
        for (int64_t bx = 0; bx < plan.grid_x; ++bx) {
          for (int th = 0; th < kFusedThreads; ++th) {
            const int32_t X = static_cast<int32_t>(bx) * kFusedThreads + th;
            for (int32_t Y = static_cast<int32_t>(by); Y < a.out_h;
                 Y += static_cast<int32_t>(plan.grid_y)) {
              if (eight ? !starts_strip<8>(t, Y) : !starts_strip<2>(t, Y)) continue;
              for (int32_t n = 0; n < a.N; ++n) {
                const auto strip = [&](auto rows, auto conf, auto* out) {
                  fused_argmax_strip<decltype(rows)::value, decltype(conf)::value>(
                      a, t, static_cast<const T*>(x), cmax.data(), out, confidence, n, Y, X);
                  return 0;
                };
                const auto run = [&](auto* out) {
                  return with_flag(confidence != nullptr, [&](auto conf) {
                    return eight ? strip(std::integral_constant<int, 8>{}, conf, out)
                                 : strip(std::integral_constant<int, 2>{}, conf, out);
                  });
                };
                if (labels_uint8) {
                  run(static_cast<uint8_t*>(labels));
                } else {
                  run(static_cast<int64_t*>(labels));
                }
              }
            }
          }
        }
      }
    });
  });
}

}  // extern "C"
