// CPU implementation of the resample-skip kernels (math: resample_skip_math.h).
//
// Both passes are separable so that the per-output-element work is a streaming,
// vectorizable loop: the forward first interpolates the (few) needed input rows
// horizontally to full output width, then blends two such rows per output row;
// the backward first accumulates grad_out rows vertically into input rows, then
// applies the horizontal adjoint as a gather. Each plane is summed in a fixed
// order by one thread, so results are bitwise identical run to run.
#include "../ops/resample_skip.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "fcn_fast/resample_skip_math.h"
#include "huge_pages.h"
#include "resample_rows.h"

namespace fcn_fast {
namespace {

// out[X] = wa * a[X] + wb * b[X] (+ skip[X]): the streaming inner loop.
template <typename scalar_t, typename acc_t>
void blend_rows(scalar_t* out, int64_t out_stride, const scalar_t* skip, int64_t skip_stride,
                const acc_t* a, acc_t wa, const acc_t* b, acc_t wb, int64_t n) {
  if (out_stride == 1 && skip == nullptr) {
    for (int64_t X = 0; X < n; ++X) out[X] = static_cast<scalar_t>(wa * a[X] + wb * b[X]);
  } else if (out_stride == 1 && skip_stride == 1) {
    for (int64_t X = 0; X < n; ++X) {
      out[X] = static_cast<scalar_t>(wa * a[X] + wb * b[X] + static_cast<acc_t>(skip[X]));
    }
  } else {
    for (int64_t X = 0; X < n; ++X) {
      acc_t v = wa * a[X] + wb * b[X];
      if (skip != nullptr) v += static_cast<acc_t>(skip[X * skip_stride]);
      out[X * out_stride] = static_cast<scalar_t>(v);
    }
  }
}

}  // namespace

at::Tensor resample_skip_cpu(const at::Tensor& x, const std::optional<at::Tensor>& skip,
                             const Resampling& r, int64_t out_h, int64_t out_w, int64_t skip_y,
                             int64_t skip_x) {
  const double scale_h = r.scale_h, bias_h = r.bias_h, scale_w = r.scale_w, bias_w = r.bias_w;
  const bool clamp = r.clamp;
  check_resample_skip_args(x, skip, out_h, out_w, skip_y, skip_x);
  check_device(x, at::kCPU, "x", "resample_skip_cpu");
  const int64_t N = x.size(0), C = x.size(1), in_h = x.size(2), in_w = x.size(3);
  at::Tensor out =
      at::empty({N, C, out_h, out_w}, x.options().memory_format(output_memory_format(x)));
  if (out.numel() == 0) return out;
  advise_huge_pages(out);
  const at::Tensor xc = x.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "resample_skip_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const ColumnTaps<acc_t> taps(out_w, in_w, scale_w, bias_w, clamp);
        const scalar_t* x_ptr = xc.const_data_ptr<scalar_t>();
        scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
        const scalar_t* skip_ptr = skip.has_value() ? skip->const_data_ptr<scalar_t>() : nullptr;
        const auto os = out.strides();
        const std::vector<int64_t> ss =
            skip.has_value() ? skip->strides().vec() : std::vector<int64_t>{0, 0, 0, 0};
        at::parallel_for(0, N * C * out_h, parallel_grain(out_w), [&](int64_t begin, int64_t end) {
          // Two horizontally interpolated input rows, reused by the ~factor
          // consecutive output rows that read the same pair; keyed by plane * in_h + row.
          std::vector<acc_t> padded(in_w + 2), rows(2 * out_w), zeros(out_w, acc_t(0));
          int64_t cached[2] = {-1, -1};
          auto row = [&](int64_t key, int64_t keep) -> const acc_t* {
            for (int slot = 0; slot < 2; ++slot) {
              if (cached[slot] == key) return rows.data() + slot * out_w;
            }
            const int slot = cached[0] == keep ? 1 : 0;
            interpolate_row<scalar_t, acc_t>(x_ptr + key * in_w, in_w, clamp, taps, padded.data(),
                                             rows.data() + slot * out_w);
            cached[slot] = key;
            return rows.data() + slot * out_w;
          };
          for (int64_t r = begin; r < end; ++r) {
            const int64_t Y = r % out_h, plane = r / out_h, n = plane / C, c = plane % C;
            const Tap<acc_t> ty = resample_tap<acc_t>(Y, scale_h, bias_h, in_h, clamp);
            const bool has0 = ty.i0 >= 0 && ty.i0 < in_h, has1 = ty.i1 >= 0 && ty.i1 < in_h;
            const int64_t key0 = plane * in_h + ty.i0, key1 = plane * in_h + ty.i1;
            const acc_t* a = has0 ? row(key0, has1 ? key1 : -1) : zeros.data();
            const acc_t* b = has1 ? row(key1, has0 ? key0 : -1) : zeros.data();
            const scalar_t* skip_row =
                skip_ptr == nullptr
                    ? nullptr
                    : skip_ptr + n * ss[0] + c * ss[1] + (Y + skip_y) * ss[2] + skip_x * ss[3];
            blend_rows<scalar_t, acc_t>(out_ptr + n * os[0] + c * os[1] + Y * os[2], os[3],
                                        skip_row, ss[3], a, ty.w0, b, ty.w1, out_w);
          }
        });
      });
  return out;
}

at::Tensor resample_skip_backward_cpu(const at::Tensor& grad_out, int64_t in_h, int64_t in_w,
                                      const Resampling& r) {
  const double scale_h = r.scale_h, bias_h = r.bias_h, scale_w = r.scale_w, bias_w = r.bias_w;
  const bool clamp = r.clamp;
  check_resample_skip_backward_args(grad_out, in_h, in_w);
  check_device(grad_out, at::kCPU, "grad_out", "resample_skip_backward_cpu");
  const int64_t N = grad_out.size(0), C = grad_out.size(1);
  const int64_t out_h = grad_out.size(2), out_w = grad_out.size(3);
  at::Tensor grad_x = at::empty({N, C, in_h, in_w}, grad_out.options());
  if (grad_x.numel() == 0) return grad_x;
  if (out_h == 0 || out_w == 0) return grad_x.zero_();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_out.scalar_type(), "resample_skip_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const AdjointColumns<acc_t> cols(in_w, out_w, scale_w, bias_w, clamp);
        const scalar_t* g_ptr = grad_out.const_data_ptr<scalar_t>();
        scalar_t* gx_ptr = grad_x.mutable_data_ptr<scalar_t>();
        const auto gs = grad_out.strides();
        at::parallel_for(0, N * C, parallel_grain(out_h * out_w), [&](int64_t begin, int64_t end) {
          // vsum[i][X] = sum_Y weight(Y, i) grad_out[Y][X], accumulated in Y order.
          std::vector<acc_t> vsum(in_h * out_w);
          for (int64_t plane = begin; plane < end; ++plane) {
            std::fill(vsum.begin(), vsum.end(), acc_t(0));
            const scalar_t* g_plane = g_ptr + (plane / C) * gs[0] + (plane % C) * gs[1];
            for (int64_t Y = 0; Y < out_h; ++Y) {
              const Tap<acc_t> ty = resample_tap<acc_t>(Y, scale_h, bias_h, in_h, clamp);
              const scalar_t* g = g_plane + Y * gs[2];
              const int64_t taps[2] = {ty.i0, ty.i1};
              const acc_t weights[2] = {ty.w0, ty.w1};
              for (int t = 0; t < 2; ++t) {
                if (taps[t] < 0 || taps[t] >= in_h) continue;
                acc_t* v = vsum.data() + taps[t] * out_w;
                const acc_t w = weights[t];
                if (gs[3] == 1) {
                  for (int64_t X = 0; X < out_w; ++X) v[X] += w * static_cast<acc_t>(g[X]);
                } else {
                  for (int64_t X = 0; X < out_w; ++X) v[X] += w * static_cast<acc_t>(g[X * gs[3]]);
                }
              }
            }
            scalar_t* gx = gx_ptr + plane * in_h * in_w;
            for (int64_t i = 0; i < in_h; ++i) {
              const acc_t* v = vsum.data() + i * out_w;
              for (int64_t j = 0; j < in_w; ++j) {
                gx[i * in_w + j] = static_cast<scalar_t>(cols.gather(j, v));
              }
            }
          }
        });
      });
  return grad_x;
}

}  // namespace fcn_fast
