#pragma once
// Per-axis tap tables of the resampler (docs/design.md 2.1) and the per-thread building blocks
// that every resampling CUDA kernel shares: resample_skip forward and backward and the fused
// heads (resample_cross_entropy). Plain C++: nvcc compiles it into the kernels, g++ into
// their CPU emulation (tests/test_cuda_emulation.py).
//
// Why tables: the tap of output index Y, (i0, i1, w0, w1), needs floor() of Y * scale + bias
// in double precision (a float loses ~1e-5 of lambda at s ~ 200). One small kernel
// evaluates it once per output row and column (out_h + out_w doubles, not one per output
// element) and the element kernels read the result: they never touch fp64.
#include <stdint.h>

#include "fcn_fast/element_access.h"
#include "fcn_fast/resample_skip_math.h"

namespace fcn_fast {

// The two taps of one output index along one axis. Both indices lie inside [0, in_size):
// a tap outside the input (zero boundary) is clamped to the edge and given the weight -0.0,
// which marks it skipped (tap_skipped): it is safe to read and never multiplied. A weight of
// +0.0 inside the input (the clamp boundary at an exact grid position) is multiplied, as
// F.interpolate does (so 0 * inf is NaN there, as in PyTorch). i1 is i0 or i0 + 1, and i0
// never decreases with the output index: the row cache and the rolling accumulators below
// rely on both.
template <typename acc_t>
struct alignas(16) TapEntry {
  int32_t i0, i1;
  acc_t w0, w1;
};

// The outputs [begin, end) that read input index i (with a tap that is not skipped); begin >
// end (kEmptyBegin, kEmptyEnd) when none do (a downsampling axis skips inputs).
struct AdjointRange {
  int32_t begin, end;
};
constexpr int32_t kEmptyBegin = 0x7fffffff;
constexpr int32_t kEmptyEnd = -0x7fffffff - 1;

struct AxisGeometry {
  int32_t in_size, out_size;
  double scale, bias;
};

struct TableGeometry {
  AxisGeometry h, w;
  bool clamp;
  bool with_ranges;        // the backward kernels also need the adjoint ranges
  bool with_runs = false;  // the fused forward and backward also need the row runs

  FCN_HD int32_t entries() const {
    return h.out_size + w.out_size + (with_ranges ? h.in_size + w.in_size : 0) +
           (with_runs ? h.out_size : 0);
  }
};

template <typename acc_t>
struct ResampleTables {
  TapEntry<acc_t>* rows;     // out_h entries
  TapEntry<acc_t>* cols;     // out_w entries
  AdjointRange* row_ranges;  // in_h entries (backward only)
  AdjointRange* col_ranges;  // in_w entries (backward only)
  AdjointRange* row_runs;    // out_h entries (fused heads only): row_run
};

FCN_HD int32_t clamp_index(int64_t i, int32_t size) {
  return static_cast<int32_t>(i < 0 ? 0 : (i >= size ? size - 1 : i));
}

template <typename acc_t>
FCN_HD bool tap_skipped(acc_t w) {
#ifdef __CUDA_ARCH__
  return signbit(w);
#else
  return std::signbit(w);
#endif
}

// The table entry of output index `out_index` (fp64 inside resample_tap: table kernel only).
template <typename acc_t>
FCN_HD TapEntry<acc_t> make_tap_entry(int32_t out_index, const AxisGeometry& axis, bool clamp) {
  const Tap<acc_t> tap = resample_tap<acc_t>(out_index, axis.scale, axis.bias, axis.in_size, clamp);
  const auto inside = [&](int64_t i) { return i >= 0 && i < axis.in_size; };
  TapEntry<acc_t> e;
  e.i0 = clamp_index(tap.i0, axis.in_size);
  e.i1 = clamp_index(tap.i1, axis.in_size);
  e.w0 = inside(tap.i0) ? tap.w0 : -acc_t(0);
  e.w1 = inside(tap.i1) ? tap.w1 : -acc_t(0);
  return e;
}

// Scans the window of resample_first_output / resample_window (which contains every output
// that reads in_index) with the same entries the forward uses.
template <typename acc_t>
FCN_HD AdjointRange make_adjoint_range(int32_t in_index, const AxisGeometry& axis, bool clamp) {
  const int64_t first = resample_first_output(in_index, axis.scale, axis.bias);
  const int64_t window = resample_window(axis.scale, axis.out_size);
  const int64_t last = first + window < axis.out_size ? first + window : axis.out_size;
  AdjointRange r{kEmptyBegin, kEmptyEnd};
  for (int64_t Y = first; Y < last; ++Y) {
    const TapEntry<acc_t> e = make_tap_entry<acc_t>(static_cast<int32_t>(Y), axis, clamp);
    if ((e.i0 == in_index && !tap_skipped(e.w0)) || (e.i1 == in_index && !tap_skipped(e.w1))) {
      if (r.begin == kEmptyBegin) r.begin = static_cast<int32_t>(Y);
      r.end = static_cast<int32_t>(Y) + 1;
    }
  }
  return r;
}

// The same two input rows, both read or both skipped alike.
template <typename acc_t>
FCN_HD bool same_taps(const TapEntry<acc_t>& a, const TapEntry<acc_t>& b) {
  return a.i0 == b.i0 && a.i1 == b.i1 && tap_skipped(a.w0) == tap_skipped(b.w0) &&
         tap_skipped(a.w1) == tap_skipped(b.w1);
}

// The run of output rows [begin, end) that read the same input rows as row Y (an upsampling
// by f has runs of about f rows; fp64 inside make_tap_entry: table kernel only).
template <typename acc_t>
FCN_HD AdjointRange row_run(int32_t Y, const AxisGeometry& axis, bool clamp) {
  const TapEntry<acc_t> e = make_tap_entry<acc_t>(Y, axis, clamp);
  AdjointRange run{Y, Y + 1};
  while (run.begin > 0 && same_taps(make_tap_entry<acc_t>(run.begin - 1, axis, clamp), e)) {
    --run.begin;
  }
  while (run.end < axis.out_size && same_taps(make_tap_entry<acc_t>(run.end, axis, clamp), e)) {
    ++run.end;
  }
  return run;
}

// Entry k of the tables, k < geometry.entries(): rows, then columns, then the ranges, then
// the runs.
template <typename acc_t>
FCN_HD void build_table_entry(const TableGeometry& g, int32_t k, const ResampleTables<acc_t>& t) {
  if (k < g.h.out_size) {
    t.rows[k] = make_tap_entry<acc_t>(k, g.h, g.clamp);
    return;
  }
  k -= g.h.out_size;
  if (k < g.w.out_size) {
    t.cols[k] = make_tap_entry<acc_t>(k, g.w, g.clamp);
    return;
  }
  k -= g.w.out_size;
  if (g.with_ranges) {
    if (k < g.h.in_size) {
      t.row_ranges[k] = make_adjoint_range<acc_t>(k, g.h, g.clamp);
      return;
    }
    k -= g.h.in_size;
    if (k < g.w.in_size) {
      t.col_ranges[k] = make_adjoint_range<acc_t>(k, g.w, g.clamp);
      return;
    }
    k -= g.w.in_size;
  }
  t.row_runs[k] = row_run<acc_t>(k, g.h, g.clamp);
}

// Byte layout of the tables inside one workspace buffer (16-byte aligned pieces).
struct TableLayout {
  int64_t rows, cols, row_ranges, col_ranges, row_runs, bytes;
};

inline int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

inline TableLayout table_layout(const TableGeometry& g, int64_t tap_bytes) {
  TableLayout l;
  l.rows = 0;
  l.cols = l.rows + align16(g.h.out_size * tap_bytes);
  l.row_ranges = l.cols + align16(g.w.out_size * tap_bytes);
  const int64_t range_bytes = static_cast<int64_t>(sizeof(AdjointRange));
  l.col_ranges = l.row_ranges + (g.with_ranges ? align16(g.h.in_size * range_bytes) : 0);
  l.row_runs = l.col_ranges + (g.with_ranges ? align16(g.w.in_size * range_bytes) : 0);
  l.bytes = l.row_runs + (g.with_runs ? align16(g.h.out_size * range_bytes) : 0);
  return l;
}

template <typename acc_t>
ResampleTables<acc_t> bind_tables(void* base, const TableGeometry& g) {
  const TableLayout l = table_layout(g, sizeof(TapEntry<acc_t>));
  char* b = static_cast<char*>(base);
  return ResampleTables<acc_t>{
      reinterpret_cast<TapEntry<acc_t>*>(b + l.rows),
      reinterpret_cast<TapEntry<acc_t>*>(b + l.cols),
      g.with_ranges ? reinterpret_cast<AdjointRange*>(b + l.row_ranges) : nullptr,
      g.with_ranges ? reinterpret_cast<AdjointRange*>(b + l.col_ranges) : nullptr,
      g.with_runs ? reinterpret_cast<AdjointRange*>(b + l.row_runs) : nullptr};
}

// w0 * a + w1 * b where a skipped tap contributes exactly 0 (it is not multiplied: a tap
// outside the input must not turn an inf neighbour into NaN). The same expression, in the
// same order, everywhere a resampled value is formed: the fused forward and backward then
// agree bit for bit on the logits they recompute.
template <typename acc_t>
FCN_HD acc_t tap_blend(acc_t w0, acc_t a, acc_t w1, acc_t b) {
  const acc_t first = tap_skipped(w0) ? acc_t(0) : w0 * a;
  return tap_skipped(w1) ? first : fcn_fma(w1, b, first);
}

// The input row a row cache must hold for a tap, -1 when the tap is skipped.
template <typename acc_t>
FCN_HD int32_t tap_row(int32_t i, acc_t w) {
  return tap_skipped(w) ? -1 : i;
}

// Element strides of a 4-D (N, C, H, W) tensor in the kernels' index type.
template <typename index_t>
struct Strides {
  index_t n, c, h, w;
};

// The same strides in a narrower index type (the launcher checked that offsets fit).
template <typename index_t>
Strides<index_t> narrow(const Strides<int64_t>& s) {
  return Strides<index_t>{static_cast<index_t>(s.n), static_cast<index_t>(s.c),
                          static_cast<index_t>(s.h), static_cast<index_t>(s.w)};
}

// A thread's elements along a row, e = X * Cg + c_local: Cg = 1 walks one channel's X
// (NCHW rows), Cg = C interleaves the classes of each X (channels_last rows). Stepping
// instead of dividing per element keeps integer division out of the loops.
struct ElementCursor {
  int32_t X, c;  // output column and class within the group
  int32_t Cg;
  FCN_HD ElementCursor(int32_t e, int32_t classes_per_group)
      : X(classes_per_group == 1 ? e : e / classes_per_group),
        c(classes_per_group == 1 ? 0 : e - X * classes_per_group),
        Cg(classes_per_group) {}
  FCN_HD void next() {
    if (++c == Cg) {
      c = 0;
      ++X;
    }
  }
};

// Two horizontally interpolated input rows, h0 (input row key0) and h1 (key1), for V output
// columns of one thread. Consecutive output rows mostly read the same pair (factor f reuses
// it f times), so update() recomputes a row only when the pair moves: an upsampling kernel
// loads each input value about once per thread instead of four times per output.
template <typename acc_t, int V>
struct RowPair {
  int32_t key0 = -1, key1 = -1;
  acc_t h0[V] = {}, h1[V] = {};

  // want0 / want1: the input rows the next output row needs, -1 for a skipped tap (the row is
  // then not read, and tap_blend never uses the stale h).
  // fill(row, h) computes row `row` into h.
  template <typename Fill>
  FCN_HD void update(int32_t want0, int32_t want1, const Fill& fill) {
    if (want0 >= 0 && want0 != key0) {
      if (want0 == key1) {
#pragma unroll
        for (int k = 0; k < V; ++k) h0[k] = h1[k];
      } else {
        fill(want0, h0);
      }
      key0 = want0;
    }
    if (want1 >= 0 && want1 != key1) {
      if (want1 == key0) {
#pragma unroll
        for (int k = 0; k < V; ++k) h1[k] = h0[k];
      } else {
        fill(want1, h1);
      }
      key1 = want1;
    }
  }
};

// The vertical adjoint of one thread's V columns, streamed over output rows Y in increasing
// order: row Y adds w0 * g to input row i0(Y) and w1 * g to i1(Y) in {i0, i0 + 1}. Two
// accumulators (rows r and r + 1) suffice because i0 never decreases; a row is handed to
// flush(row, acc) exactly once, when no later Y can reach it. Each input row sums its
// outputs in Y order: fixed order, no atomics, bitwise deterministic.
template <typename acc_t, int V>
struct RollingRows {
  int32_t r = -1;
  acc_t acc0[V], acc1[V];

  template <typename Flush>
  FCN_HD void add(const TapEntry<acc_t>& t, const acc_t (&g)[V], const Flush& flush) {
    if (r < 0) {
      r = t.i0;
      zero(acc0);
      zero(acc1);
    } else if (t.i0 != r) {
      flush(r, acc0);
      if (t.i0 == r + 1) {
#pragma unroll
        for (int k = 0; k < V; ++k) acc0[k] = acc1[k];
      } else {
        flush(r + 1, acc1);
        zero(acc0);
      }
      zero(acc1);
      r = t.i0;
    }
    if (!tap_skipped(t.w0)) {
#pragma unroll
      for (int k = 0; k < V; ++k) acc0[k] = fcn_fma(t.w0, g[k], acc0[k]);
    }
    if (!tap_skipped(t.w1)) {
      if (t.i1 == r) {
#pragma unroll
        for (int k = 0; k < V; ++k) acc0[k] = fcn_fma(t.w1, g[k], acc0[k]);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) acc1[k] = fcn_fma(t.w1, g[k], acc1[k]);
      }
    }
  }

  template <typename Flush>
  FCN_HD void finish(const Flush& flush) {
    if (r < 0) return;
    flush(r, acc0);
    flush(r + 1, acc1);
  }

  static FCN_HD void zero(acc_t (&a)[V]) {
#pragma unroll
    for (int k = 0; k < V; ++k) a[k] = acc_t(0);
  }
};

// The union of the adjoint ranges of inputs [lo, hi): the outputs a band of input rows (or a
// tile of input columns) gathers from. Empty when begin >= end.
FCN_HD AdjointRange union_of_ranges(const AdjointRange* ranges, int32_t lo, int32_t hi) {
  AdjointRange u{kEmptyBegin, kEmptyEnd};
  for (int32_t i = lo; i < hi; ++i) {
    const AdjointRange r = ranges[i];
    if (r.begin < r.end) {
      u.begin = r.begin < u.begin ? r.begin : u.begin;
      u.end = r.end > u.end ? r.end : u.end;
    }
  }
  if (u.begin > u.end) u.begin = u.end = 0;
  return u;
}

// Host-side bound of the union above for any run of `count` consecutive inputs, from the
// same guard windows the table kernel scans: sizes the shared memory of the backward blocks.
inline int32_t max_outputs_of_inputs(const AxisGeometry& axis, int32_t count) {
  const int64_t window = resample_window(axis.scale, axis.out_size);
  int64_t most = 0;
  for (int32_t lo = 0; lo < axis.in_size; lo += count) {
    const int32_t hi = lo + count < axis.in_size ? lo + count : axis.in_size;
    int64_t begin = resample_first_output(lo, axis.scale, axis.bias);
    int64_t end = resample_first_output(hi - 1, axis.scale, axis.bias) + window;
    begin = begin < axis.out_size ? begin : axis.out_size;
    end = end < axis.out_size ? end : axis.out_size;
    most = end - begin > most ? end - begin : most;
  }
  return static_cast<int32_t>(most);
}

// The horizontal adjoint of one input element: sum over the outputs X of column j's range
// of weight(X, j) * v(X), in X order. v(X) reads the block's vertical sums.
template <typename acc_t, typename Value>
FCN_HD acc_t column_adjoint(const TapEntry<acc_t>* cols, AdjointRange range, int32_t j,
                            const Value& v) {
  acc_t acc = acc_t(0);
  for (int32_t X = range.begin; X < range.end; ++X) {
    const TapEntry<acc_t> t = cols[X];
    // Both taps may be j (clamp boundary at the edge): their weights add, as in
    // resample_weight.
    const bool first = t.i0 == j && !tap_skipped(t.w0);
    const bool second = t.i1 == j && !tap_skipped(t.w1);
    const acc_t w = (first ? t.w0 : acc_t(0)) + (second ? t.w1 : acc_t(0));
    if (first || second) acc = fcn_fma(w, v(X), acc);
  }
  return acc;
}

// ---- The backward blocks (resample_skip_backward and the fused heads' backward) ----
//
// A block owns a band of input rows [i_lo, i_hi) x a tile of input columns [j_lo, j_hi) of
// `classes` consecutive classes of one image. Phase A (per thread, an "item" of V
// consecutive output elements at a time) streams the output rows Y the band gathers from,
// in increasing order, and leaves the vertical adjoint of its columns in shared memory,
// vsum[band row][column]; phase B (after a barrier) applies the horizontal adjoint, one
// input element per thread. Every element of grad_x is summed by one thread in a fixed
// order: no atomics, bitwise deterministic.

// How a block's classes sit in its shared accumulators (one row of smem_row per band row).
struct GroupLayout {
  int32_t Cg;        // classes per block (the last group of an image may have fewer)
  bool interleaved;  // column of (X, c): X * Cg + c - base (interleaved: channels_last
                     // rows) or c * span_pad + X - base (class-major: NCHW rows)
  int32_t span_pad;  // class-major: columns per class
  int32_t smem_row;  // accumulators per band row
  int32_t band_rows, bands, tile_cols, tiles;
};

struct BackwardBlock {
  int32_t n, c0, classes;  // image, first class, classes in this block
  int32_t i_lo, i_hi, j_lo, j_hi;
  AdjointRange ys, xs;  // output rows / columns the band / tile gathers from
  int32_t base;         // interleaved: element of column 0; class-major: X of column 0
};

// The block `block` (band fastest, so that neighbouring bands, which share a few output
// rows, run together and meet in L2) of class group `group`.
template <typename acc_t>
FCN_HD BackwardBlock backward_block(const GroupLayout& l, int32_t C, int32_t in_h, int32_t in_w,
                                    int V, int32_t block, int32_t group,
                                    const ResampleTables<acc_t>& t) {
  BackwardBlock b;
  const int32_t groups_per_n = (C + l.Cg - 1) / l.Cg;
  b.n = group / groups_per_n;
  b.c0 = (group - b.n * groups_per_n) * l.Cg;
  b.classes = C - b.c0 < l.Cg ? C - b.c0 : l.Cg;
  const int32_t tile = block / l.bands, band = block - tile * l.bands;
  b.i_lo = band * l.band_rows;
  b.i_hi = b.i_lo + l.band_rows < in_h ? b.i_lo + l.band_rows : in_h;
  b.j_lo = tile * l.tile_cols;
  b.j_hi = b.j_lo + l.tile_cols < in_w ? b.j_lo + l.tile_cols : in_w;
  b.ys = union_of_ranges(t.row_ranges, b.i_lo, b.i_hi);
  b.xs = union_of_ranges(t.col_ranges, b.j_lo, b.j_hi);
  b.base = l.interleaved ? b.xs.begin * l.Cg / V * V : b.xs.begin / V * V;
  return b;
}

// Phase A work items of a block: V consecutive row-space elements each.
FCN_HD int32_t backward_items(const GroupLayout& l, const BackwardBlock& b, int V) {
  if (b.xs.end <= b.xs.begin || b.ys.end <= b.ys.begin) return 0;
  if (l.interleaved) return (b.xs.end * l.Cg - b.base + V - 1) / V;
  return b.classes * ((b.xs.end - b.base + V - 1) / V);
}

// Item `item`: its elements' output columns X[k] and classes c[k] (within the group), and
// the shared column of its first element (the others follow consecutively). Returns how
// many leading elements exist (the rest lie past the row's end).
template <int V>
FCN_HD int backward_item(const GroupLayout& l, const BackwardBlock& b, int32_t out_w, int32_t item,
                         int32_t (&X)[V], int32_t (&c)[V], int32_t* column) {
  int count = 0;
  if (l.interleaved) {
    const int32_t e0 = b.base + item * V;
    *column = e0 - b.base;
    ElementCursor cur(e0, l.Cg);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const bool valid = cur.X < out_w && cur.c < b.classes;
      X[k] = valid ? cur.X : 0;
      c[k] = valid ? cur.c : 0;
      count += valid && count == k ? 1 : 0;
      cur.next();
    }
  } else {
    const int32_t per_class = (b.xs.end - b.base + V - 1) / V;
    const int32_t cls = item / per_class;
    const int32_t X0 = b.base + (item - cls * per_class) * V;
    *column = cls * l.span_pad + X0 - b.base;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const bool valid = X0 + k < out_w;
      X[k] = valid ? X0 + k : 0;
      c[k] = cls;
      count += valid ? 1 : 0;
    }
  }
  return count;
}

// The shared column holding output column X of class c (within the group).
FCN_HD int32_t backward_column(const GroupLayout& l, const BackwardBlock& b, int32_t X, int32_t c) {
  return l.interleaved ? X * l.Cg + c - b.base : c * l.span_pad + X - b.base;
}

// Phase A's shared-memory side for one item: zero its columns in every band row (a row no
// output reaches stays 0), and the flush of a finished input row (rows outside the band
// belong to the neighbouring block).
template <typename acc_t, int V>
FCN_HD void zero_item_columns(acc_t* vsum, const GroupLayout& l, const BackwardBlock& b,
                              int32_t column) {
  for (int32_t r = 0; r < b.i_hi - b.i_lo; ++r) {
#pragma unroll
    for (int k = 0; k < V; ++k) vsum[r * l.smem_row + column + k] = acc_t(0);
  }
}

template <typename acc_t, int V>
FCN_HD void flush_item_row(acc_t* vsum, const GroupLayout& l, const BackwardBlock& b,
                           int32_t column, int32_t row, const acc_t (&acc)[V]) {
  if (row < b.i_lo || row >= b.i_hi) return;
  acc_t* dst = vsum + (row - b.i_lo) * l.smem_row + column;
#pragma unroll
  for (int k = 0; k < V; ++k) dst[k] = acc[k];
}

// Phase B: grad_x[n, c0 + c, i, j] for the block's input elements, output `thread` of
// `threads` onwards (j fastest: coalesced for NCHW grad_x).
template <typename T, typename index_t>
FCN_HD void backward_columns(const GroupLayout& l, const BackwardBlock& b,
                             const ResampleTables<acc_type<T>>& t, const acc_type<T>* vsum,
                             T* grad_x, const Strides<index_t>& gx, int32_t thread,
                             int32_t threads) {
  using acc_t = acc_type<T>;
  const int32_t rows = b.i_hi - b.i_lo, cols = b.j_hi - b.j_lo;
  const int32_t outputs = b.classes * rows * cols;
  // A band that no output row reads (downsampling by more than the band height) had no
  // phase-A items, so its accumulators were never zeroed: its gradient is 0, not vsum's
  // stale contents.
  const bool gathers = b.ys.begin < b.ys.end;
  T* image = grad_x + static_cast<index_t>(b.n) * gx.n;
  for (int32_t o = thread; o < outputs; o += threads) {
    const int32_t rest = o / cols, j = b.j_lo + (o - rest * cols);
    const int32_t c = rest / rows, i = b.i_lo + (rest - c * rows);
    const acc_t* row = vsum + (i - b.i_lo) * l.smem_row;
    const acc_t value =
        gathers ? column_adjoint(t.cols, t.col_ranges[j], j,
                                 [&](int32_t X) { return row[backward_column(l, b, X, c)]; })
                : acc_t(0);
    store_acc(image + static_cast<index_t>(b.c0 + c) * gx.c + static_cast<index_t>(i) * gx.h +
                  static_cast<index_t>(j) * gx.w,
              value);
  }
}

// ---- Host-side choice of a backward block shape ----

struct BackwardShape {
  GroupLayout layout;
  int64_t smem_bytes;
  int32_t max_rows, max_cols;  // bounds of a block's output region (ys, xs)
  double cost;                 // output elements read per class, halos included
};

// Picks classes per block, band rows and tile columns so that the block's accumulators fit
// `smem_budget` bytes (plus `extra_bytes_per_pixel` for each output pixel a block covers,
// the fused backward's staged per-pixel data) and the total output region the blocks read,
// halos included, is smallest; `min_items`: enough phase-A items to keep a block busy.
inline BackwardShape choose_backward_shape(const AxisGeometry& h, const AxisGeometry& w,
                                           bool interleaved, int32_t max_classes, int V,
                                           int acc_size, int64_t smem_budget,
                                           int64_t extra_bytes_per_pixel, int32_t min_items) {
  BackwardShape best{};
  double best_cost = -1.0;
  for (int32_t tile = w.in_size;; tile = (tile + 1) / 2) {
    const int32_t xspan = max_outputs_of_inputs(w, tile);
    const int32_t tiles = (w.in_size + tile - 1) / tile;
    const int32_t vectors = (xspan + 2 * V - 1) / V;  // per class, with the alignment slack
    int32_t Cg = interleaved ? max_classes : 1;
    if (!interleaved) {  // class-major: stack classes until the block has work enough
      while (Cg < max_classes && Cg * vectors < min_items) ++Cg;
    }
    const int32_t span_pad = vectors * V;
    const int32_t smem_row = interleaved ? ((xspan + 1) * Cg + 2 * V - 1) / V * V : Cg * span_pad;
    for (int32_t rows = h.in_size < 32 ? h.in_size : 32; rows >= 1; --rows) {
      const int32_t yspan = max_outputs_of_inputs(h, rows);
      const int64_t bytes = static_cast<int64_t>(rows) * smem_row * acc_size +
                            extra_bytes_per_pixel * static_cast<int64_t>(yspan) * xspan;
      if (bytes > smem_budget) continue;
      const int32_t bands = (h.in_size + rows - 1) / rows;
      // Output elements read per class (halos counted again), plus a per-block overhead
      // worth ~1000 elements shared by the block's Cg classes.
      const double cost = (static_cast<double>(bands) * tiles) *
                          (static_cast<double>(yspan) * (xspan + 1) + 1000.0 / Cg);
      if (best_cost < 0.0 || cost < best_cost) {
        best_cost = cost;
        best.layout = GroupLayout{Cg, interleaved, span_pad, smem_row, rows, bands, tile, tiles};
        best.smem_bytes = bytes;
        best.max_rows = yspan;
        best.max_cols = xspan;
        best.cost = cost;
      }
      break;  // the most rows that fit is the best band for this tile
    }
    if (tile == 1) break;
  }
  return best;  // best_cost < 0: nothing fits (layout.Cg == 0)
}

}  // namespace fcn_fast
