// CPU implementation of the resample-skip kernels: at::parallel_for over
// output rows (forward) and over planes (backward), per-element math from
// resample_skip_math.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "fcn_fast/resample_skip_math.h"

namespace fcn_fast {
namespace {

void check_plane_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "fcn_fast: ", name, " must be 4-D (N, C, H, W), got ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fcn_fast: ", name,
              " must be floating point, got ", t.scalar_type());
}

// One output row: out[X] = w0[X] * row[col0[X]] + w1[X] * row[col1[X]] (+ skip[X]).
// `row` holds the vertically blended input row with one zero pad on each side,
// so zero-boundary taps (-1 and in_w) read a 0 without a branch.
template <typename scalar_t, typename acc_t>
void blend_row(scalar_t* out, int64_t out_stride, const scalar_t* skip, int64_t skip_stride,
               const acc_t* row, const int64_t* col0, const int64_t* col1, const acc_t* w0,
               const acc_t* w1, int64_t out_w) {
  if (out_stride == 1 && (skip == nullptr || skip_stride == 1)) {
    if (skip == nullptr) {
      for (int64_t X = 0; X < out_w; ++X) {
        out[X] = static_cast<scalar_t>(w0[X] * row[col0[X]] + w1[X] * row[col1[X]]);
      }
    } else {
      for (int64_t X = 0; X < out_w; ++X) {
        out[X] = static_cast<scalar_t>(w0[X] * row[col0[X]] + w1[X] * row[col1[X]] +
                                       static_cast<acc_t>(skip[X]));
      }
    }
    return;
  }
  for (int64_t X = 0; X < out_w; ++X) {
    acc_t v = w0[X] * row[col0[X]] + w1[X] * row[col1[X]];
    if (skip != nullptr) v += static_cast<acc_t>(skip[X * skip_stride]);
    out[X * out_stride] = static_cast<scalar_t>(v);
  }
}

at::Tensor resample_skip_fwd_cpu(const at::Tensor& x, const std::optional<at::Tensor>& skip,
                                 double scale_h, double bias_h, double scale_w, double bias_w,
                                 bool clamp, int64_t out_h, int64_t out_w, int64_t skip_y,
                                 int64_t skip_x) {
  check_plane_tensor(x, "x");
  const int64_t N = x.size(0), C = x.size(1), in_h = x.size(2), in_w = x.size(3);
  TORCH_CHECK(out_h >= 0 && out_w >= 0, "fcn_fast: negative output size");
  if (skip.has_value()) {
    check_plane_tensor(*skip, "skip");
    TORCH_CHECK(skip->scalar_type() == x.scalar_type(), "fcn_fast: skip dtype differs from x");
    TORCH_CHECK(skip->size(0) == N && skip->size(1) == C && skip_y >= 0 && skip_x >= 0 &&
                    skip_y + out_h <= skip->size(2) && skip_x + out_w <= skip->size(3),
                "fcn_fast: skip window out of range");
  }
  at::Tensor out =
      at::empty({N, C, out_h, out_w}, x.options().memory_format(x.suggest_memory_format()));
  if (out.numel() == 0) return out;
  TORCH_CHECK(in_h > 0 && in_w > 0, "fcn_fast: x has an empty spatial axis");
  const at::Tensor xc = x.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "resample_skip_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<int64_t> col0(out_w), col1(out_w);
    std::vector<acc_t> w0(out_w), w1(out_w);
    for (int64_t X = 0; X < out_w; ++X) {
      Tap<acc_t> tap = resample_tap<acc_t>(X, scale_w, bias_w, in_w, clamp);
      // +1: the row buffer has a zero pad at index 0 (input -1) and in_w + 1 (input in_w).
      col0[X] = tap.i0 + 1;
      col1[X] = tap.i1 + 1;
      w0[X] = tap.w0;
      w1[X] = tap.w1;
    }
    const scalar_t* x_ptr = xc.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    const scalar_t* skip_ptr = skip.has_value() ? skip->const_data_ptr<scalar_t>() : nullptr;
    const auto os = out.strides();
    const std::vector<int64_t> ss = skip.has_value() ? skip->strides().vec()
                                                     : std::vector<int64_t>{0, 0, 0, 0};
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(out_w, 1));
    at::parallel_for(0, N * C * out_h, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(in_w + 2, acc_t(0));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t Y = r % out_h, plane = r / out_h, n = plane / C, c = plane % C;
        const Tap<acc_t> ty = resample_tap<acc_t>(Y, scale_h, bias_h, in_h, clamp);
        const scalar_t* src = x_ptr + plane * in_h * in_w;
        const bool has0 = ty.i0 >= 0 && ty.i0 < in_h, has1 = ty.i1 >= 0 && ty.i1 < in_h;
        const scalar_t* r0 = src + (has0 ? ty.i0 : 0) * in_w;
        const scalar_t* r1 = src + (has1 ? ty.i1 : 0) * in_w;
        // A tap outside the input is skipped, not multiplied by 0: 0 * inf would be NaN.
        for (int64_t j = 0; j < in_w; ++j) {
          acc_t v = acc_t(0);
          if (has0) v += ty.w0 * static_cast<acc_t>(r0[j]);
          if (has1) v += ty.w1 * static_cast<acc_t>(r1[j]);
          row[j + 1] = v;
        }
        const scalar_t* skip_row =
            skip_ptr == nullptr
                ? nullptr
                : skip_ptr + n * ss[0] + c * ss[1] + (Y + skip_y) * ss[2] + skip_x * ss[3];
        blend_row<scalar_t, acc_t>(out_ptr + n * os[0] + c * os[1] + Y * os[2], os[3], skip_row,
                                   ss[3], row.data(), col0.data(), col1.data(), w0.data(),
                                   w1.data(), out_w);
      }
    });
  });
  return out;
}

// Gather tables of the adjoint along one axis: input i is read by outputs
// first[i] + k, k < count[i], with weight weights[i * window + k].
template <typename acc_t>
struct AdjointTable {
  int64_t window;
  std::vector<int64_t> first, count;
  std::vector<acc_t> weights;

  AdjointTable(int64_t in_size, int64_t out_size, double scale, double bias, bool clamp)
      : window(resample_window(scale, out_size)),
        first(in_size),
        count(in_size),
        weights(in_size * window, acc_t(0)) {
    for (int64_t i = 0; i < in_size; ++i) {
      first[i] = std::min(resample_first_output(i, scale, bias), out_size);
      count[i] = std::min(window, out_size - first[i]);
      for (int64_t k = 0; k < count[i]; ++k) {
        weights[i * window + k] =
            resample_weight<acc_t>(first[i] + k, i, scale, bias, in_size, clamp);
      }
    }
  }
};

at::Tensor resample_skip_bwd_cpu(const at::Tensor& grad_out, int64_t in_h, int64_t in_w,
                                 double scale_h, double bias_h, double scale_w, double bias_w,
                                 bool clamp) {
  check_plane_tensor(grad_out, "grad_out");
  const int64_t N = grad_out.size(0), C = grad_out.size(1);
  const int64_t out_h = grad_out.size(2), out_w = grad_out.size(3);
  TORCH_CHECK(in_h > 0 && in_w > 0, "fcn_fast: input size must be positive");
  at::Tensor grad_x = at::empty({N, C, in_h, in_w}, grad_out.options());
  if (grad_x.numel() == 0) return grad_x;
  if (out_h == 0 || out_w == 0) return grad_x.zero_();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "resample_skip_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const AdjointTable<acc_t> rows(in_h, out_h, scale_h, bias_h, clamp);
    const AdjointTable<acc_t> cols(in_w, out_w, scale_w, bias_w, clamp);
    const scalar_t* g_ptr = grad_out.const_data_ptr<scalar_t>();
    scalar_t* gx_ptr = grad_x.mutable_data_ptr<scalar_t>();
    const auto gs = grad_out.strides();
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      // Horizontal pass first: every grad_out row is read once, into
      // hsum[Y][j] = sum_X weight(X, j) grad_out[Y, X]; then the vertical pass.
      std::vector<acc_t> hsum(out_h * in_w);
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* g_plane = g_ptr + (plane / C) * gs[0] + (plane % C) * gs[1];
        for (int64_t Y = 0; Y < out_h; ++Y) {
          const scalar_t* g_row = g_plane + Y * gs[2];
          for (int64_t j = 0; j < in_w; ++j) {
            const acc_t* w = cols.weights.data() + j * cols.window;
            const scalar_t* g = g_row + cols.first[j] * gs[3];
            acc_t acc = acc_t(0);
            for (int64_t k = 0; k < cols.count[j]; ++k) acc += w[k] * static_cast<acc_t>(g[k * gs[3]]);
            hsum[Y * in_w + j] = acc;
          }
        }
        scalar_t* gx_plane = gx_ptr + plane * in_h * in_w;
        for (int64_t i = 0; i < in_h; ++i) {
          const acc_t* w = rows.weights.data() + i * rows.window;
          const acc_t* h = hsum.data() + rows.first[i] * in_w;
          for (int64_t j = 0; j < in_w; ++j) {
            acc_t acc = acc_t(0);
            for (int64_t k = 0; k < rows.count[i]; ++k) acc += w[k] * h[k * in_w + j];
            gx_plane[i * in_w + j] = static_cast<scalar_t>(acc);
          }
        }
      }
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_fast, CPU, m) {
  m.impl("resample_skip_fwd", &resample_skip_fwd_cpu);
  m.impl("resample_skip_bwd", &resample_skip_bwd_cpu);
}

}  // namespace fcn_fast
