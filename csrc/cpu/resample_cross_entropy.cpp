// CPU kernels of the fused heads (resample_cross_entropy.h): the resampler's rows
// (resample_rows.h) feeding the loss's vectorized chunk steps (loss_rows.h), so the
// full-resolution logits only ever exist one output row at a time, in a thread's buffer.
//
// Forward and argmax: a work unit is one output row (n, Y). Each class's logit row
// z[c][X] is the vertical blend of its two horizontally interpolated input rows, exactly
// as resample_skip_cpu computes it; lse_rows and chunk_losses then give the loss per pixel.
// Backward: a work unit is a band of input rows of one image. For each output row Y that
// reads the band, the gradient rows G[c][X] = d loss / d z_c(Y, X) are recomputed from x
// and the saved lse (as pixel_cross_entropy's backward, on the row's C x W logits), then
// accumulated into the band's input rows among the row's two taps (vsum); the horizontal
// adjoint gathers grad_x from vsum. Every sum runs in a fixed order, whatever the thread
// count: results are bitwise identical run to run.
// Loss and gradient in one pass (training, a reduced loss): the backward's band units, each
// output row's logits computed once; its exps give the lse and loss (of the rows the band
// owns) and, times 1 / their sum, the softmax of the gradient of the summed loss, which the
// adjoint adds into the band as the backward does (docs/design.md 2.4).
#include "../ops/resample_cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "loss_rows.h"
#include "resample_rows.h"

namespace fcn_fast {
namespace {

// The logits of output row Y of image n, z[c * out_w + X] for every class: per class, the
// two input rows the row's taps name, interpolated horizontally, blended vertically. The
// interpolated input rows are cached, two per class: consecutive output rows read the same
// pair (about `factor` of them per pair when upsampling), so each is interpolated once.
template <typename scalar_t, typename acc_t>
class LogitRows {
 public:
  LogitRows(const scalar_t* x, int64_t C, int64_t in_h, int64_t in_w, int64_t out_w,
            const Resampling& r)
      : x_(x),
        C_(C),
        in_h_(in_h),
        in_w_(in_w),
        out_w_(out_w),
        r_(r),
        taps_(out_w, in_w, r.scale_w, r.bias_w, r.clamp),
        padded_(in_w + 2),
        zeros_(out_w, acc_t(0)),
        cache_(2 * C * out_w),
        cached_(2 * C, -1) {}

  // The taps of output row Y; false when it reads no input row (zero boundary, outside).
  bool taps(int64_t Y, Tap<acc_t>* ty) const {
    *ty = resample_tap<acc_t>(Y, r_.scale_h, r_.bias_h, in_h_, r_.clamp);
    return inside(ty->i0) || inside(ty->i1);
  }

  // Class c of the output row with taps ty, of image n, into z[X].
  void compute(int64_t n, const Tap<acc_t>& ty, int64_t c, acc_t* z) {
    const bool has0 = inside(ty.i0), has1 = inside(ty.i1);
    const acc_t* a = has0 ? row(n, c, ty.i0, has1 ? ty.i1 : -1) : zeros_.data();
    const acc_t* b = has1 ? row(n, c, ty.i1, has0 ? ty.i0 : -1) : zeros_.data();
    blend_row(a, ty.w0, b, ty.w1, z, out_w_);
  }

 private:
  bool inside(int64_t i) const { return i >= 0 && i < in_h_; }

  // Input row i of plane (n, c), interpolated horizontally; `keep` is the other row the
  // caller needs now, whose slot must not be overwritten.
  const acc_t* row(int64_t n, int64_t c, int64_t i, int64_t keep) {
    const int64_t key = n * in_h_ + i, keep_key = keep < 0 ? -1 : n * in_h_ + keep;
    int64_t* keys = cached_.data() + 2 * c;
    acc_t* slots = cache_.data() + 2 * c * out_w_;
    for (int slot = 0; slot < 2; ++slot) {
      if (keys[slot] == key) return slots + slot * out_w_;
    }
    const int slot = keys[0] == keep_key ? 1 : 0;
    const scalar_t* src = x_ + ((n * C_ + c) * in_h_ + i) * in_w_;
    interpolate_row<scalar_t, acc_t>(src, in_w_, r_.clamp, taps_, padded_.data(),
                                     slots + slot * out_w_);
    keys[slot] = key;
    return slots + slot * out_w_;
  }

  const scalar_t* x_;
  int64_t C_, in_h_, in_w_, out_w_;
  Resampling r_;
  ColumnTaps<acc_t> taps_;
  std::vector<acc_t> padded_, zeros_, cache_;
  std::vector<int64_t> cached_;  // the input row (n * in_h + i) in each of a class's 2 slots
};

// The backward's work units: each image's input rows in bands, enough units for every
// thread, of at least 8 rows so that the output rows on a band's edge, which two units
// compute, stay few (the result does not depend on the band: each input row's sum runs
// over the same output rows in the same order in any unit).
struct BandSplit {
  int64_t band, bands, grain;

  BandSplit(int64_t N, int64_t C, int64_t in_h, int64_t H, int64_t W) {
    // An empty batch (N = 0) has no units; dividing by it would kill the process (SIGFPE).
    const int64_t images = std::max<int64_t>(N, 1);
    const int64_t bands_wanted = (2 * at::get_num_threads() + images - 1) / images;
    band = std::min(in_h, std::max<int64_t>(8, (in_h + bands_wanted - 1) / bands_wanted));
    bands = (in_h + band - 1) / band;
    grain = parallel_grain(C * H * W / bands);  // a band's logits
  }

  // Unit u: image n, band i, its input rows [i0, i1).
  struct Unit {
    int64_t n, i, i0, i1;
  };
  Unit unit(int64_t u, int64_t in_h) const {
    const int64_t i = u % bands;
    return {u / bands, i, i * band, std::min(in_h, (i + 1) * band)};
  }
};

// The resampler's adjoint into one band [i0, i1) of an image's input rows: output rows are
// added in Y order, class row by class row, into a ring of two rows per class (input row i in
// slot i % 2). A Y's taps are two consecutive input rows that never move back, so row i is
// final once a Y's taps are past it; it is then reduced horizontally into out (N, C, h, w) at
// `strides` and its slot zeroed. (A band of full rows would not fit in L2.)
template <typename out_t, typename acc_t>
class BandAdjoint {
 public:
  BandAdjoint(int64_t C, int64_t in_w, int64_t W, const Resampling& r, out_t* out,
              at::IntArrayRef strides)
      : C_(C),
        W_(W),
        cols_(in_w, W, r.scale_w, r.bias_w, r.clamp),
        out_(out),
        strides_(strides.vec()),
        ring_(C * 2 * W) {}

  void start(int64_t n, int64_t i0, int64_t i1) {
    n_ = n;
    i0_ = i0;
    i1_ = i1;
    done_ = i0;
    std::fill(ring_.begin(), ring_.end(), acc_t(0));
  }

  // Whether output row Y with taps ty adds into the band: through tap 0, tap 1.
  bool reads(const Tap<acc_t>& ty, bool* has0, bool* has1) const {
    *has0 = ty.i0 >= i0_ && ty.i0 < i1_;
    *has1 = ty.i1 >= i0_ && ty.i1 < i1_;
    return *has0 || *has1;
  }

  // Before adding a row with taps ty that reads the band: the rows below its taps are final,
  // and are written out.
  void advance(const Tap<acc_t>& ty, bool has0) { finish_rows_below(has0 ? ty.i0 : ty.i1); }

  // Class c's gradient of n_rows output rows with the same taps ty (add_grad_from_exps), into
  // the band's sums; advance(ty, has0) first.
  void add_grads(const ExpGradRow<acc_t>* rows, int64_t n_rows, int64_t c, acc_t wc, bool smoothing,
                 const Tap<acc_t>& ty, bool has0, bool has1) {
    const int32_t cls = static_cast<int32_t>(c);
    if (ty.i0 == ty.i1) {  // a clamp edge: one row, which one weight carries (the rows differ)
      ExpGradRow<acc_t> one_row[2];
      for (int64_t r = 0; r < n_rows; ++r) {
        one_row[r] = rows[r];
        one_row[r].w0 += one_row[r].w1;
      }
      add_grad_from_exps(one_row, n_rows, cls, wc, smoothing, has0 ? row(c, ty.i0) : nullptr,
                         nullptr, W_);
      return;
    }
    add_grad_from_exps(rows, n_rows, cls, wc, smoothing, has0 ? row(c, ty.i0) : nullptr,
                       has1 ? row(c, ty.i1) : nullptr, W_);
  }

  void finish() { finish_rows_below(i1_); }

 private:
  // Class c's sums for input row i (in the band, not yet final).
  acc_t* row(int64_t c, int64_t i) { return ring_.data() + (c * 2 + i % 2) * W_; }

  void finish_rows_below(int64_t row_end) {
    for (; done_ < row_end; ++done_) {
      for (int64_t c = 0; c < C_; ++c) {
        acc_t* v = ring_.data() + (c * 2 + done_ % 2) * W_;
        out_t* out = out_ + n_ * strides_[0] + c * strides_[1] + done_ * strides_[2];
        for (int64_t j = 0; j < static_cast<int64_t>(cols_.first.size()); ++j) {
          out[j * strides_[3]] = static_cast<out_t>(cols_.gather(j, v));
        }
        std::fill(v, v + W_, acc_t(0));
      }
    }
  }

  int64_t C_, W_;
  const AdjointColumns<acc_t> cols_;  // the horizontal adjoint
  out_t* out_;
  std::vector<int64_t> strides_;
  std::vector<acc_t> ring_;
  int64_t n_ = 0, i0_ = 0, i1_ = 0, done_ = 0;  // rows [i0, done) are written out
};

// The output rows that read any of input rows [i0, i1): [first, end).
std::pair<int64_t, int64_t> output_rows_reading(int64_t i0, int64_t i1, const Resampling& r,
                                                int64_t H) {
  const int64_t window = resample_window(r.scale_h, H);
  return {std::min(H, resample_first_output(i0, r.scale_h, r.bias_h)),
          std::min(H, resample_first_output(i1 - 1, r.scale_h, r.bias_h) + window)};
}

// The one-pass form's gradient of one output row, from its exps (ExpGradRow), kept until it
// is added into the band: rows 2k and 2k + 1 with the same taps (about `factor` rows share
// them when upsampling) are added as a pair, in one pass over the band's sums, which halves
// their loads and stores; other rows alone. Which rows pair depends on Y and the taps only,
// not on where a band starts: the sums, and their rounding, do not depend on the bands.
template <typename acc_t>
struct PendingRows {
  struct Row {
    std::vector<acc_t> e, a, b, d;
    std::vector<int32_t> counted;  // the target, -1 if not counted
    Tap<acc_t> ty;
    bool has0, has1;
    int64_t Y;
  };
  Row rows[2];
  int64_t count = 0;

  PendingRows(int64_t C, int64_t W) {
    for (Row& r : rows) {
      r.e.resize(C * W);
      r.a.resize(W);
      r.b.resize(W);
      r.d.resize(W);
      r.counted.resize(W);
    }
  }

  // Whether output row Y, with taps ty, may be kept beside the rows kept now.
  bool can_join(int64_t Y, const Tap<acc_t>& ty) const {
    return count == 0 || (rows[0].Y % 2 == 0 && rows[0].Y + 1 == Y && rows[0].ty.i0 == ty.i0 &&
                          rows[0].ty.i1 == ty.i1);
  }

  // Adds the pending rows into the band's sums.
  template <typename Constants>
  void flush(BandAdjoint<acc_t, acc_t>& adjoint, const Constants& k, int64_t C, int64_t W) {
    if (count == 0) return;
    ExpGradRow<acc_t> grads[2];
    for (int64_t r = 0; r < count; ++r) {
      const Row& row = rows[r];
      grads[r] = {row.e.data(),       W,         row.a.data(), row.b.data(), row.d.data(),
                  row.counted.data(), row.ty.w0, row.ty.w1};
    }
    const Row& first = rows[0];
    for (int64_t c = 0; c < C; ++c) {
      adjoint.add_grads(grads, count, c, k.weight_of(c), k.smoothing, first.ty, first.has0,
                        first.has1);
    }
    count = 0;
  }
};

}  // namespace

LossOutputs resample_cross_entropy_cpu(const at::Tensor& x, const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight,
                                       const Resampling& resampling,
                                       const CrossEntropyOptions& options) {
  check_resample_cross_entropy_args(x, target, weight, options);
  check_device(x, at::kCPU, "x", "resample_cross_entropy_cpu");
  const int64_t N = x.size(0), C = x.size(1), in_h = x.size(2), in_w = x.size(3);
  const int64_t H = target.size(1), W = target.size(2);
  at::Tensor loss, lse, weight_sum;  // not structured bindings: the kernel lambda captures them
  std::tie(loss, lse, weight_sum) =
      empty_loss_outputs(x, {N, H, W}, options.reduction == kReductionNone);
  const at::Tensor xc = x.contiguous();  // low resolution: a copy costs little

  dispatch_loss_types(x, target, [&](auto scalar, auto label) {
    using scalar_t = decltype(scalar);
    using label_t = decltype(label);
    using acc_t = at::opmath_type<scalar_t>;
    const LossConstants<acc_t> k(weight, C, options.ignore_index, options.label_smoothing);
    std::vector<ChunkSums> sums(N * H);  // one per output row
    const label_t* t = target.const_data_ptr<label_t>();
    const int64_t tN = target.stride(0), tH = target.stride(1), tW = target.stride(2);
    acc_t* lse_ptr = lse.mutable_data_ptr<acc_t>();
    acc_t* loss_none =
        options.reduction == kReductionNone ? loss.mutable_data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, N * H, parallel_grain(C * W), [&](int64_t begin, int64_t end) {
      LogitRows<scalar_t, acc_t> logits(xc.const_data_ptr<scalar_t>(), C, in_h, in_w, W,
                                        resampling);
      std::vector<acc_t> z(C * W), m(W), logs(W), swx(W);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / H, Y = row % H;
        Tap<acc_t> ty;
        logits.taps(Y, &ty);
        for (int64_t c = 0; c < C; ++c) logits.compute(n, ty, c, z.data() + c * W);
        lse_rows(z.data(), W, C, W, k.w, k.smoothing, m.data(), logs.data(), swx.data());
        sums[row] = chunk_losses(z.data(), W, W, m.data(), logs.data(), swx.data(),
                                 t + n * tN + Y * tH, tW, k, lse_ptr + row * W,
                                 loss_none == nullptr ? nullptr : loss_none + row * W);
      }
    });
    // Named for the two front doors that reach this kernel.
    finish_loss("upsample_cross_entropy / interpolate_cross_entropy", sums, options.reduction, k,
                loss, weight_sum);
  });
  return {loss, lse, weight_sum};
}

at::Tensor resample_cross_entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                               const at::Tensor& target,
                                               const std::optional<at::Tensor>& weight,
                                               const at::Tensor& lse, const at::Tensor& weight_sum,
                                               const Resampling& resampling,
                                               const CrossEntropyOptions& options) {
  check_resample_cross_entropy_args(x, target, weight, options);
  check_resample_cross_entropy_backward_args(grad, target, lse, options.reduction);
  check_device(x, at::kCPU, "x", "resample_cross_entropy_backward_cpu");
  const int64_t N = x.size(0), C = x.size(1), in_h = x.size(2), in_w = x.size(3);
  const int64_t H = target.size(1), W = target.size(2);
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(output_memory_format(x)));
  if (grad_x.numel() == 0) return grad_x;
  const at::Tensor xc = x.contiguous();
  const at::Tensor lse_c = lse.to(accumulation_type(x.scalar_type())).contiguous();

  dispatch_loss_types(x, target, [&](auto scalar, auto label) {
    using scalar_t = decltype(scalar);
    using label_t = decltype(label);
    using acc_t = at::opmath_type<scalar_t>;
    const LossConstants<acc_t> k(weight, C, options.ignore_index, options.label_smoothing);
    const UpstreamGrad<acc_t> up(grad, weight_sum, options.reduction);
    const int64_t gN = up.per_pixel ? up.values.stride(0) : 0;
    const int64_t gH = up.per_pixel ? up.values.stride(1) : 0;
    const int64_t gW = up.per_pixel ? up.values.stride(2) : 0;
    const label_t* t = target.const_data_ptr<label_t>();
    const int64_t tN = target.stride(0), tH = target.stride(1), tW = target.stride(2);
    const acc_t* lse_ptr = lse_c.const_data_ptr<acc_t>();
    scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
    const BandSplit split(N, C, in_h, H, W);
    at::parallel_for(0, N * split.bands, split.grain, [&](int64_t begin, int64_t end) {
      LogitRows<scalar_t, acc_t> logits(xc.const_data_ptr<scalar_t>(), C, in_h, in_w, W,
                                        resampling);
      BandAdjoint<scalar_t, acc_t> adjoint(C, in_w, W, resampling, gx, grad_x.strides());
      std::vector<acc_t> z(W), g(W), a(W), b(W), d(W), l(W), ones(W, acc_t(1));
      std::vector<int32_t> counted(W);  // the target, -1 if not counted
      for (int64_t u = begin; u < end; ++u) {
        const auto [n, i, i0, i1] = split.unit(u, in_h);
        adjoint.start(n, i0, i1);
        const auto [y_first, y_end] = output_rows_reading(i0, i1, resampling, H);
        for (int64_t Y = y_first; Y < y_end; ++Y) {
          Tap<acc_t> ty;
          bool has0, has1;
          logits.taps(Y, &ty);
          if (!adjoint.reads(ty, &has0, &has1)) continue;
          adjoint.advance(ty, has0);
          // d loss / d z per pixel, as pixel_cross_entropy's backward.
          const label_t* trow = t + n * tN + Y * tH;
          chunk_grad_coefficients(W, trow, tW,
                                  up.per_pixel ? up.data + n * gN + Y * gH : &up.scalar,
                                  up.per_pixel ? gW : 0, k, a.data(), b.data(), d.data(),
                                  static_cast<const acc_t*>(nullptr), counted.data());
          finite_lse(lse_ptr + (n * H + Y) * W, W, l.data());
          // One class at a time, so that its logits and softmax rows stay in L1: the
          // softmax exp(z - lse), then the gradient added into the band's rows among the
          // two taps (in Y order), as the one-pass form adds it from its exps.
          const ExpGradRow<acc_t> grad{g.data(),       0,     a.data(), b.data(), d.data(),
                                       counted.data(), ty.w0, ty.w1};
          for (int64_t c = 0; c < C; ++c) {
            logits.compute(n, ty, c, z.data());
            grad_rows(z.data(), W, g.data(), W, 1, W, l.data(), ones.data(), d.data(), nullptr,
                      false);
            adjoint.add_grads(&grad, 1, c, k.weight_of(c), k.smoothing, ty, has0, has1);
          }
        }
        adjoint.finish();
      }
    });
  });
  return grad_x;
}

LossAndGradOutputs resample_cross_entropy_with_grad_cpu(const at::Tensor& x,
                                                        const at::Tensor& target,
                                                        const std::optional<at::Tensor>& weight,
                                                        const Resampling& resampling,
                                                        const CrossEntropyOptions& options) {
  check_resample_cross_entropy_args(x, target, weight, options);
  check_device(x, at::kCPU, "x", "resample_cross_entropy_with_grad_cpu");
  TORCH_CHECK(options.reduction != kReductionNone,
              "fcn_fast: resample_cross_entropy_with_grad needs reduction mean or sum");
  TORCH_CHECK(x.size(1) <= INT32_MAX, "fcn_fast: resample_cross_entropy_with_grad takes at most ",
              INT32_MAX, " classes");  // targets are compared as int32
  const int64_t N = x.size(0), C = x.size(1), in_h = x.size(2), in_w = x.size(3);
  const int64_t H = target.size(1), W = target.size(2);
  at::Tensor loss, lse, weight_sum;  // not structured bindings: the kernel lambda captures them
  std::tie(loss, lse, weight_sum) = empty_loss_outputs(x, {N, H, W}, false);
  const at::Tensor grad_sum = at::empty(
      x.sizes(),
      x.options().dtype(accumulation_type(x.scalar_type())).memory_format(output_memory_format(x)));
  const at::Tensor xc = x.contiguous();

  dispatch_loss_types(x, target, [&](auto scalar, auto label) {
    using scalar_t = decltype(scalar);
    using label_t = decltype(label);
    using acc_t = at::opmath_type<scalar_t>;
    const LossConstants<acc_t> k(weight, C, options.ignore_index, options.label_smoothing);
    std::vector<ChunkSums> sums(N * H);  // one per output row, as the forward's
    const label_t* t = target.const_data_ptr<label_t>();
    const int64_t tN = target.stride(0), tH = target.stride(1), tW = target.stride(2);
    acc_t* lse_ptr = lse.mutable_data_ptr<acc_t>();
    acc_t* gx = grad_sum.mutable_data_ptr<acc_t>();
    const BandSplit split(N, C, in_h, H, W);
    at::parallel_for(0, N * split.bands, split.grain, [&](int64_t begin, int64_t end) {
      LogitRows<scalar_t, acc_t> logits(xc.const_data_ptr<scalar_t>(), C, in_h, in_w, W,
                                        resampling);
      BandAdjoint<acc_t, acc_t> adjoint(C, in_w, W, resampling, gx, grad_sum.strides());
      std::vector<acc_t> z(C * W), m(W), logs(W), swx(W), inv_sum(W);
      PendingRows<acc_t> pending(C, W);
      const acc_t one(1);  // the upstream gradient of the summed loss
      for (int64_t u = begin; u < end; ++u) {
        const auto [n, i, i0, i1] = split.unit(u, in_h);
        adjoint.start(n, i0, i1);
        // The unit computes the output rows that read its band, for the gradient, and
        // the loss of the rows it owns: each band owns the output rows from the first
        // that reads it to the first that reads the next band (the first band from
        // row 0, the last to row H), so every row's loss is counted once.
        const auto [y_first, y_end] = output_rows_reading(i0, i1, resampling, H);
        const int64_t own_first = i == 0 ? 0 : y_first;
        const int64_t own_end =
            i == split.bands - 1 ? H : output_rows_reading(i1, i1 + 1, resampling, H).first;
        for (int64_t Y = own_first; Y < std::max(y_end, own_end); ++Y) {
          Tap<acc_t> ty;
          bool has0, has1;
          logits.taps(Y, &ty);
          const bool adds = adjoint.reads(ty, &has0, &has1), owned = Y < own_end;
          if (!adds && !owned) continue;
          if (adds) {
            if (!pending.can_join(Y, ty)) pending.flush(adjoint, k, C, W);
            adjoint.advance(ty, has0);
          }
          auto& row = pending.rows[pending.count];
          for (int64_t c = 0; c < C; ++c) logits.compute(n, ty, c, z.data() + c * W);
          softmax_rows(z.data(), W, C, W, k.w, k.smoothing, m.data(), logs.data(), swx.data(),
                       row.e.data(), W, inv_sum.data());
          const label_t* trow = t + n * tN + Y * tH;
          if (owned) {
            sums[n * H + Y] =
                chunk_losses(z.data(), W, W, m.data(), logs.data(), swx.data(), trow, tW, k,
                             lse_ptr + (n * H + Y) * W, static_cast<acc_t*>(nullptr));
          }
          if (!adds) continue;
          // The backward's steps on this row's logits, from the exps just taken:
          // softmax = e * inv_sum, so a[X] takes inv_sum[X] in.
          chunk_grad_coefficients(W, trow, tW, &one, 0, k, row.a.data(), row.b.data(), row.d.data(),
                                  inv_sum.data(), row.counted.data());
          row.ty = ty;
          row.has0 = has0;
          row.has1 = has1;
          row.Y = Y;
          if (++pending.count == 2) pending.flush(adjoint, k, C, W);
        }
        pending.flush(adjoint, k, C, W);
        adjoint.finish();
      }
    });
    finish_loss("upsample_cross_entropy / interpolate_cross_entropy", sums, options.reduction, k,
                loss, weight_sum);
  });
  return {loss, lse, weight_sum, grad_sum};
}

std::tuple<at::Tensor, at::Tensor> resample_argmax_cpu(const at::Tensor& x,
                                                       const Resampling& resampling, int64_t out_h,
                                                       int64_t out_w, at::ScalarType out_dtype,
                                                       bool return_confidence) {
  check_resample_argmax_args(x, out_h, out_w, out_dtype);
  check_device(x, at::kCPU, "x", "resample_argmax_cpu");
  const int64_t N = x.size(0), C = x.size(1), in_h = x.size(2), in_w = x.size(3);
  at::Tensor labels = at::empty({N, out_h, out_w}, x.options().dtype(out_dtype));
  at::Tensor confidence =
      at::empty({return_confidence ? N : 0, out_h, out_w}, x.options().dtype(at::kFloat));
  if (labels.numel() == 0) return {labels, confidence};
  const at::Tensor xc = x.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "resample_argmax_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        float* conf = return_confidence ? confidence.mutable_data_ptr<float>() : nullptr;
        at::parallel_for(0, N * out_h, parallel_grain(C * out_w), [&](int64_t begin, int64_t end) {
          LogitRows<scalar_t, acc_t> logits(xc.const_data_ptr<scalar_t>(), C, in_h, in_w, out_w,
                                            resampling);
          std::vector<acc_t> z(C * out_w), top(out_w), m(out_w), logs(out_w), swx(out_w);
          std::vector<int32_t> best(out_w);
          for (int64_t row = begin; row < end; ++row) {
            Tap<acc_t> ty;
            logits.taps(row % out_h, &ty);
            for (int64_t c = 0; c < C; ++c) {
              acc_t* zc = z.data() + c * out_w;
              logits.compute(row / out_h, ty, c, zc);
              if (c == 0) {
                std::copy(zc, zc + out_w, top.begin());
                std::fill(best.begin(), best.end(), 0);
              } else {
                argmax_row(zc, static_cast<int32_t>(c), top.data(), best.data(), out_w);
              }
            }
            if (out_dtype == at::kByte) {
              uint8_t* out = labels.mutable_data_ptr<uint8_t>() + row * out_w;
              for (int64_t X = 0; X < out_w; ++X) out[X] = static_cast<uint8_t>(best[X]);
            } else {
              int64_t* out = labels.mutable_data_ptr<int64_t>() + row * out_w;
              for (int64_t X = 0; X < out_w; ++X) out[X] = best[X];
            }
            if (conf != nullptr) {  // the winner's softmax probability, exp(z_best - lse)
              lse_rows(z.data(), out_w, C, out_w, static_cast<const acc_t*>(nullptr), false,
                       m.data(), logs.data(), swx.data());
              for (int64_t X = 0; X < out_w; ++X) {
                conf[row * out_w + X] = static_cast<float>(std::exp(top[X] - (m[X] + logs[X])));
              }
            }
          }
        });
      });
  return {labels, confidence};
}

}  // namespace fcn_fast
