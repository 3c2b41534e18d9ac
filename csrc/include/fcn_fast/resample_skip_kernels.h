#pragma once
// Per-thread code of the CUDA resample_skip kernels (csrc/cuda/resample_skip.cu), and the
// host-side plans that shape their launches. Plain C++ (no CUDA runtime, no ATen): the
// __global__ kernels are thin wrappers around these functions, and
// tests/test_cuda_emulation.py runs the very same functions over the whole grid on the CPU.
//
// Row space: an output row is either one channel's run of X (NCHW, Cg = 1 class per
// group) or all classes of each X in turn (channels_last, Cg = C); both are contiguous in
// memory, so a thread's V consecutive elements are one 16-byte access.
#include <stdint.h>

#include <type_traits>

#include "fcn_fast/element_access.h"
#include "fcn_fast/resample_tables.h"

namespace fcn_fast {

constexpr int kResampleThreads = 256;         // backward blocks
constexpr int kResampleForwardThreads = 128;  // forward: register-bound, finer-grained blocks

// ---- Forward: out = resample(x) + skip window ----

template <typename index_t>
struct ResampleForwardArgs {
  int32_t C, Cg;  // classes; classes per output row (1 or C)
  int32_t L;      // elements per output row: out_w * Cg
  int32_t out_h, rows_per_thread;
  int32_t vectors_per_row;  // ceil(L / V)
  int32_t skip_y, skip_x;
  Strides<index_t> x, skip, out;
  bool has_skip, skip_vector, out_vector;
};

// One thread: V consecutive elements of `rows_per_thread` consecutive output rows of class
// group `group`; `item` numbers (vector, run of rows) pairs, the vector fastest. The column
// taps are looked up once, the two input rows an output row blends are interpolated once
// per thread and reused by the ~factor output rows that share them (RowPair), and each
// output row is one V-element store (16 bytes on the vector path).
template <int V, typename T, typename index_t>
FCN_HD void resample_forward_thread(const ResampleForwardArgs<index_t>& a,
                                    const TapEntry<acc_type<T>>* rows,
                                    const TapEntry<acc_type<T>>* cols, const T* x, const T* skip,
                                    T* out, int32_t item, int32_t group) {
  using acc_t = acc_type<T>;
  const int32_t run = item / a.vectors_per_row;
  const int32_t e0 = (item - run * a.vectors_per_row) * V;
  const int32_t Y0 = run * a.rows_per_thread;
  if (e0 >= a.L || Y0 >= a.out_h) return;
  const int32_t Y1 = Y0 + a.rows_per_thread < a.out_h ? Y0 + a.rows_per_thread : a.out_h;
  const int count = a.L - e0 < V ? a.L - e0 : V;
  const int32_t groups_per_n = a.C / a.Cg;
  const int32_t n = group / groups_per_n;
  const int32_t c0 = (group - n * groups_per_n) * a.Cg;

  // Per element: the input offset of its first column tap (its class plane included), whether
  // the second tap is the next column (bit k of next_column) or the same one, and the two
  // weights. Registers are what limits this kernel's occupancy, hence the bit mask.
  index_t x_col[V];
  uint32_t next_column = 0;
  acc_t wx0[V], wx1[V];
  const ElementCursor first(e0, a.Cg);  // the one division by Cg of this thread
  {
    ElementCursor cursor = first;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const bool valid = k < count;  // past the row's end: read column 0, never store
      const TapEntry<acc_t> t = cols[valid ? cursor.X : 0];
      x_col[k] = static_cast<index_t>(t.i0) * a.x.w +
                 static_cast<index_t>(c0 + (valid ? cursor.c : 0)) * a.x.c;
      next_column |= t.i1 != t.i0 ? (1u << k) : 0u;
      wx0[k] = t.w0;
      wx1[k] = t.w1;
      cursor.next();
    }
  }
  const T* x_image = x + static_cast<index_t>(n) * a.x.n;
  T* out_image = out + static_cast<index_t>(n) * a.out.n;
  const T* skip_image = a.has_skip ? skip + static_cast<index_t>(n) * a.skip.n +
                                         static_cast<index_t>(a.skip_y) * a.skip.h
                                   : nullptr;
  const auto fill = [&](int32_t row, acc_t(&h)[V]) {
    const T* r = x_image + static_cast<index_t>(row) * a.x.h;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const T* tap = r + x_col[k];
      h[k] = tap_blend(wx0[k], load_acc(tap), wx1[k],
                       load_acc(tap + ((next_column >> k) & 1u ? a.x.w : index_t(0))));
    }
  };
  // Offset of element k in a row of a tensor with strides s (skip: shifted by skip_x).
  const auto element_offset = [&](const Strides<index_t>& s, int32_t shift, int k) {
    ElementCursor cursor = first;
    for (int step = 0; step < k; ++step) cursor.next();
    return static_cast<index_t>(cursor.X + shift) * s.w + static_cast<index_t>(c0 + cursor.c) * s.c;
  };

  // The rows, with a loop for each kind of access: on the vector path (kVector) every row is
  // one 16-byte store (and load of skip) at a single offset, and nothing else stays live; the
  // scalar path forms each element's offset. Choosing once, outside the loop, keeps the
  // vector loop's registers free of the scalar path's offsets.
  const auto rows_loop = [&](auto vector_tag) {
    constexpr bool kVector = decltype(vector_tag)::value;
    index_t out_at[kVector ? 1 : V], skip_at[kVector ? 1 : V];
#pragma unroll
    for (int k = 0; k < (kVector ? 1 : V); ++k) {
      out_at[k] = element_offset(a.out, 0, k);
      skip_at[k] = a.has_skip ? element_offset(a.skip, a.skip_x, k) : index_t(0);
    }
    const auto load_skip = [&](int32_t Y, acc_t(&v)[V]) {
      const T* row = skip_image + static_cast<index_t>(Y) * a.skip.h;
      if constexpr (kVector) {
        if (a.skip_vector) {
          const Pack<T, V> pack = load_pack<V>(row + skip_at[0]);
#pragma unroll
          for (int k = 0; k < V; ++k) v[k] = ElementOps<T>::to_acc(pack.v[k]);
          return;
        }
        // skip not vectorizable: its elements are consecutive only in the output
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = load_acc(row + element_offset(a.skip, a.skip_x, k));
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = k < count ? load_acc(row + skip_at[k]) : acc_t(0);
      }
    };
    RowPair<acc_t, V> pair;
    // The skip row of the next output row is loaded before this row is computed: two loads
    // in flight per thread instead of one.
    acc_t skip_next[V] = {};
    if (a.has_skip) load_skip(Y0, skip_next);
    for (int32_t Y = Y0; Y < Y1; ++Y) {
      acc_t value[V] = {};
      if (a.has_skip) {
#pragma unroll
        for (int k = 0; k < V; ++k) value[k] = skip_next[k];
        if (Y + 1 < Y1) load_skip(Y + 1, skip_next);
      }
      const TapEntry<acc_t> ty = rows[Y];
      pair.update(tap_row(ty.i0, ty.w0), tap_row(ty.i1, ty.w1), fill);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const acc_t r = tap_blend(ty.w0, pair.h0[k], ty.w1, pair.h1[k]);
        value[k] = a.has_skip ? value[k] + r : r;
      }
      T* row = out_image + static_cast<index_t>(Y) * a.out.h;
      if constexpr (kVector) {
        Pack<T, V> pack;
#pragma unroll
        for (int k = 0; k < V; ++k) pack.v[k] = ElementOps<T>::from_acc(value[k]);
        store_pack<V>(row + out_at[0], pack);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          if (k < count) store_acc(row + out_at[k], value[k]);
        }
      }
    }
  };
  if (V > 1 && a.out_vector && count == V) {
    rows_loop(std::true_type{});
  } else {
    rows_loop(std::false_type{});
  }
}

// ---- Backward, phase A: the vertical adjoint of grad_out into the block's accumulators ----

template <typename index_t>
struct ResampleBackwardArgs {
  int32_t C, in_h, in_w, out_w;
  GroupLayout layout;
  Strides<index_t> grad, grad_x;
  bool grad_vector;
};

// Items `thread`, `thread + threads`, ...: each reads its V columns of every output row the
// band gathers from exactly once, coalesced (one 16-byte load per row on the vector path,
// the next row's load issued before this row is summed).
template <int V, typename T, typename index_t>
FCN_HD void resample_backward_rows(const ResampleBackwardArgs<index_t>& a, const BackwardBlock& b,
                                   const ResampleTables<acc_type<T>>& t, const T* grad,
                                   acc_type<T>* vsum, int32_t thread, int32_t threads) {
  using acc_t = acc_type<T>;
  const int32_t items = backward_items(a.layout, b, V);
  const T* image = grad + static_cast<index_t>(b.n) * a.grad.n;
  for (int32_t item = thread; item < items; item += threads) {
    int32_t X[V], c[V], column;
    const int count = backward_item<V>(a.layout, b, a.out_w, item, X, c, &column);
    index_t offset[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      offset[k] =
          static_cast<index_t>(X[k]) * a.grad.w + static_cast<index_t>(b.c0 + c[k]) * a.grad.c;
    }
    const bool vector = a.grad_vector && count == V;
    zero_item_columns<acc_t, V>(vsum, a.layout, b, column);
    const auto flush = [&](int32_t row, const acc_t(&acc)[V]) {
      flush_item_row<acc_t, V>(vsum, a.layout, b, column, row, acc);
    };
    RollingRows<acc_t, V> rolling;
    acc_t next[V];
    load_elements<V>(image + static_cast<index_t>(b.ys.begin) * a.grad.h, offset, count, vector,
                     next);
    for (int32_t Y = b.ys.begin; Y < b.ys.end; ++Y) {
      acc_t g[V];
#pragma unroll
      for (int k = 0; k < V; ++k) g[k] = next[k];
      if (Y + 1 < b.ys.end) {
        load_elements<V>(image + static_cast<index_t>(Y + 1) * a.grad.h, offset, count, vector,
                         next);
      }
      rolling.add(t.rows[Y], g, flush);
    }
    rolling.finish(flush);
  }
}

// ---- Host-side plans (shared by the launchers and the CPU emulation) ----

struct ResampleForwardPlan {
  int V;
  bool index64;
  ResampleForwardArgs<int64_t> args;  // strides as int64; the launcher narrows them
  int32_t groups;
  int64_t items;  // (vector, run) pairs per group
  // The launch: grid_x blocks of `threads` over the items (item = block * threads + thread),
  // grid_y over the groups (strided past 65535).
  int64_t grid_x, grid_y;
  int threads;
};

// sizes {N, C, H, W} of x; strides in elements; skip may be null; out: the output (its
// alignment decides the vector stores).
inline ResampleForwardPlan plan_resample_forward(
    const int64_t (&x_sizes)[4], const int64_t (&xs)[4], const void* skip, const int64_t (&ss)[4],
    const int64_t (&skip_sizes)[4], int64_t skip_y, int64_t skip_x, int64_t out_h, int64_t out_w,
    const void* out, const int64_t (&os)[4], int element_size, bool force_index64,
    int forced_vector = 0) {
  ResampleForwardPlan p{};
  const int64_t N = x_sizes[0], C = x_sizes[1];
  ResampleForwardArgs<int64_t>& a = p.args;
  a.C = static_cast<int32_t>(C);
  a.Cg = (C > 1 && os[1] == 1 && os[3] == C) ? a.C : 1;  // channels_last output rows
  a.L = static_cast<int32_t>(out_w * a.Cg);
  a.out_h = static_cast<int32_t>(out_h);
  a.skip_y = static_cast<int32_t>(skip_y);
  a.skip_x = static_cast<int32_t>(skip_x);
  a.x = Strides<int64_t>{xs[0], xs[1], xs[2], xs[3]};
  a.skip = Strides<int64_t>{ss[0], ss[1], ss[2], ss[3]};
  a.out = Strides<int64_t>{os[0], os[1], os[2], os[3]};
  a.has_skip = skip != nullptr;
  const bool out_unit = a.Cg == 1 ? os[3] == 1 : true;
  const bool skip_unit = a.has_skip && (a.Cg == 1 ? ss[3] == 1 : (ss[1] == 1 && ss[3] == C));
  // The widest vector the output rows allow: 16 bytes, else 8 bytes, else scalar (the
  // launcher compiles these three).
  const auto out_ok = [&](int v) {
    return out_unit && vector_rows_ok(out, element_size, v, {os[0], a.Cg == 1 ? os[1] : 0, os[2]});
  };
  const int64_t out_sizes[4] = {N, C, out_h, out_w};
  p.index64 = force_index64 || !fits_int32(tensor_extent(x_sizes, xs)) ||
              !fits_int32(tensor_extent(out_sizes, os)) ||
              (a.has_skip && !fits_int32(tensor_extent(skip_sizes, ss)));
  int V = forced_vector > 0 ? forced_vector : vector_width(element_size);
  if (forced_vector == 0 && !out_ok(V)) V = V >= 4 && out_ok(V / 2) ? V / 2 : 1;
  // Tensors past 2^31 elements take the scalar 64-bit kernel: rare enough not to compile
  // every vector width twice (the emulation still checks them all).
  if (forced_vector == 0 && p.index64) V = 1;
  p.V = V;
  a.out_vector = V > 1 && out_unit &&
                 vector_rows_ok(out, element_size, V, {os[0], a.Cg == 1 ? os[1] : 0, os[2]});
  a.skip_vector = V > 1 && skip_unit &&
                  vector_rows_ok(skip, element_size, V,
                                 {ss[0], a.Cg == 1 ? ss[1] : 0, ss[2], skip_y * ss[2],
                                  skip_x * (a.Cg == 1 ? 1 : C)});
  a.vectors_per_row = (a.L + V - 1) / V;
  p.groups = static_cast<int32_t>(N * (C / a.Cg));
  // Rows per thread: as many as keep ~half a million threads busy (more rows, more reuse of
  // the interpolated input rows), at most 32.
  const int64_t threads_one_row = static_cast<int64_t>(p.groups) * out_h * a.vectors_per_row;
  int64_t rows = threads_one_row / 500000;
  rows = rows < 1 ? 1 : (rows > 32 ? 32 : rows);
  a.rows_per_thread = static_cast<int32_t>(rows);
  p.items = static_cast<int64_t>(a.vectors_per_row) * ((out_h + rows - 1) / rows);
  p.threads = kResampleForwardThreads;
  p.grid_x = (p.items + p.threads - 1) / p.threads;
  p.grid_y = p.groups < 65535 ? (p.groups < 1 ? 1 : p.groups) : 65535;
  return p;
}

struct ResampleBackwardPlan {
  int V;
  bool index64;
  ResampleBackwardArgs<int64_t> args;
  int32_t groups, blocks;
  int64_t smem_bytes;
};

// Shared accumulators per block: at most 46 KB (under the 48 KB any launch may take) so
// that four 256-thread blocks share a multiprocessor; more band rows mean fewer output rows
// read twice at band edges.
constexpr int64_t kBackwardSmemBudget = 46 * 1024;

// grad_out sizes {N, C, out_h, out_w}; grad_x is (N, C, in_h, in_w) with strides gxs.
inline ResampleBackwardPlan plan_resample_backward(
    const int64_t (&g_sizes)[4], const void* grad, const int64_t (&gs)[4], int64_t in_h,
    int64_t in_w, const int64_t (&gxs)[4], const AxisGeometry& axis_h, const AxisGeometry& axis_w,
    int element_size, int acc_size, bool force_index64, int forced_vector = 0) {
  ResampleBackwardPlan p{};
  const int64_t N = g_sizes[0], C = g_sizes[1];
  ResampleBackwardArgs<int64_t>& a = p.args;
  a.C = static_cast<int32_t>(C);
  a.in_h = static_cast<int32_t>(in_h);
  a.in_w = static_cast<int32_t>(in_w);
  a.out_w = static_cast<int32_t>(g_sizes[3]);
  a.grad = Strides<int64_t>{gs[0], gs[1], gs[2], gs[3]};
  a.grad_x = Strides<int64_t>{gxs[0], gxs[1], gxs[2], gxs[3]};
  const bool interleaved = C > 1 && gs[1] == 1 && gs[3] == C;  // channels_last grad_out
  const bool unit = interleaved || gs[3] == 1;
  int V = forced_vector > 0 ? forced_vector : vector_width(element_size);
  const auto vector_ok = [&](int v) {
    return unit && vector_rows_ok(grad, element_size, v, {gs[0], interleaved ? 0 : gs[1], gs[2]});
  };
  const int64_t gx_sizes[4] = {N, C, in_h, in_w};
  p.index64 = force_index64 || !fits_int32(tensor_extent(g_sizes, gs)) ||
              !fits_int32(tensor_extent(gx_sizes, gxs));
  if (forced_vector == 0 && !vector_ok(V)) V = V >= 4 && vector_ok(V / 2) ? V / 2 : 1;
  if (forced_vector == 0 && p.index64) V = 1;  // as the forward
  BackwardShape shape = choose_backward_shape(axis_h, axis_w, interleaved, a.C, V, acc_size,
                                              kBackwardSmemBudget, 0, kResampleThreads);
  if (shape.layout.Cg == 0 && interleaved) {  // all classes of a tile do not fit: class-major
    V = forced_vector > 0 ? forced_vector : 1;
    shape = choose_backward_shape(axis_h, axis_w, false, a.C, V, acc_size, kBackwardSmemBudget, 0,
                                  kResampleThreads);
  }
  a.layout = shape.layout;
  a.grad_vector = V > 1 && (a.layout.interleaved || gs[3] == 1) && vector_ok(V);
  p.V = V;
  p.smem_bytes = shape.smem_bytes;
  p.groups = a.layout.Cg == 0 ? 0 : static_cast<int32_t>(N * ((C + a.layout.Cg - 1) / a.layout.Cg));
  p.blocks = a.layout.bands * a.layout.tiles;
  return p;
}

// The same arguments in the kernel's index type.
template <typename index_t>
ResampleForwardArgs<index_t> narrow_args(const ResampleForwardArgs<int64_t>& a) {
  ResampleForwardArgs<index_t> r;
  r.C = a.C;
  r.Cg = a.Cg;
  r.L = a.L;
  r.out_h = a.out_h;
  r.rows_per_thread = a.rows_per_thread;
  r.vectors_per_row = a.vectors_per_row;
  r.skip_y = a.skip_y;
  r.skip_x = a.skip_x;
  r.x = narrow<index_t>(a.x);
  r.skip = narrow<index_t>(a.skip);
  r.out = narrow<index_t>(a.out);
  r.has_skip = a.has_skip;
  r.skip_vector = a.skip_vector;
  r.out_vector = a.out_vector;
  return r;
}

template <typename index_t>
ResampleBackwardArgs<index_t> narrow_args(const ResampleBackwardArgs<int64_t>& a) {
  ResampleBackwardArgs<index_t> r;
  r.C = a.C;
  r.in_h = a.in_h;
  r.in_w = a.in_w;
  r.out_w = a.out_w;
  r.layout = a.layout;
  r.grad = narrow<index_t>(a.grad);
  r.grad_x = narrow<index_t>(a.grad_x);
  r.grad_vector = a.grad_vector;
  return r;
}

}  // namespace fcn_fast
