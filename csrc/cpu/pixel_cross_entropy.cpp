// CPU kernels of the fused log-softmax + NLL loss (pixel_cross_entropy.h).
//
// Work unit: a chunk of P pixels of one image (P depends only on C, so the
// chunking, and with it every sum, is independent of the thread count: results
// are bitwise identical run to run). For NCHW fp32 a chunk is C rows of P
// contiguous floats read in place; other layouts and dtypes are first packed
// into a float (double for fp64) [C][P] buffer. Each chunk reads its logits
// from memory once, in the one pass of lse_rows (loss_rows.cpp) that sums the exps.
// Per-chunk partial sums go to a vector and are added in chunk order. The vectorized
// loops and the per-pixel steps are loss_rows.h's, shared with the fused heads.
#include "../ops/pixel_cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "huge_pages.h"
#include "loss_rows.h"

namespace fcn_fast {
namespace {

struct Geometry {
  bool in_place;  // chunks are read from the logits themselves (chunk_rows), not packed
  int64_t N, C, S, P, chunks_per_image;
  int64_t sN, sC, sS;  // logits strides
  int64_t tN, tS;      // target strides

  int64_t chunks() const { return N * chunks_per_image; }
  // Chunk `index`: image n, its pixels [s0, s0 + np).
  struct Chunk {
    int64_t n, s0, np;
  };
  Chunk chunk(int64_t index) const {
    const int64_t s0 = (index % chunks_per_image) * P;
    return {index / chunks_per_image, s0, std::min(P, S - s0)};
  }
};

Geometry geometry(const at::Tensor& logits, const at::Tensor& target) {
  Geometry g;
  g.N = logits.size(0);
  g.C = logits.size(1);
  g.S = logits.size(2);
  const at::ScalarType dtype = logits.scalar_type();
  g.in_place = (dtype == at::kFloat || dtype == at::kDouble) && logits.stride(2) == 1;
  g.P = std::min(g.in_place ? kInPlaceChunkPixels : chunk_pixels(g.C), std::max<int64_t>(g.S, 1));
  g.chunks_per_image = (g.S + g.P - 1) / g.P;
  g.sN = logits.stride(0);
  g.sC = logits.stride(1);
  g.sS = logits.stride(2);
  g.tN = target.stride(0);
  g.tS = target.stride(1);
  return g;
}

// Logits rows of one chunk as acc_t: in place when possible, else packed into buf.
template <typename scalar_t, typename acc_t>
const acc_t* chunk_rows(const scalar_t* x, const Geometry& g, int64_t n, int64_t s0, int64_t np,
                        acc_t* buf, int64_t* ld) {
  const scalar_t* base = x + n * g.sN + s0 * g.sS;
  if constexpr (std::is_same<scalar_t, acc_t>::value) {
    if (g.in_place || np == 1) {
      *ld = g.sC;
      return base;
    }
  }
  if (g.sC == 1) {  // channels last: each pixel's classes are contiguous
    for (int64_t p = 0; p < np; ++p) {
      const scalar_t* px = base + p * g.sS;
      for (int64_t c = 0; c < g.C; ++c) buf[c * np + p] = static_cast<acc_t>(px[c]);
    }
  } else {
    for (int64_t c = 0; c < g.C; ++c) {
      const scalar_t* row = base + c * g.sC;
      for (int64_t p = 0; p < np; ++p) buf[c * np + p] = static_cast<acc_t>(row[p * g.sS]);
    }
  }
  *ld = np;
  return buf;
}

// A chunk's gradient rows g[c * np + p] stored into the gradient tensor at out (strides oC, oS).
template <typename scalar_t, typename acc_t>
void store_chunk_grad(const acc_t* g, int64_t C, int64_t np, scalar_t* out, int64_t oC,
                      int64_t oS) {
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t p = 0; p < np; ++p) out[c * oC + p * oS] = static_cast<scalar_t>(g[c * np + p]);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_cross_entropy_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const CrossEntropyOptions& options) {
  check_pixel_cross_entropy_args(logits, target, weight, options);
  const int64_t ignore_index = options.ignore_index, reduction = options.reduction;
  const double label_smoothing = options.label_smoothing;
  check_device(logits, at::kCPU, "logits", "pixel_cross_entropy_cpu");
  const Geometry g = geometry(logits, target);
  at::Tensor loss, lse, weight_sum;  // not structured bindings: the kernel lambda captures them
  std::tie(loss, lse, weight_sum) =
      empty_loss_outputs(logits, {g.N, g.S}, reduction == kReductionNone);

  dispatch_loss_types(logits, target, [&](auto scalar, auto label) {
    using scalar_t = decltype(scalar);
    using label_t = decltype(label);
    using acc_t = at::opmath_type<scalar_t>;
    const LossConstants<acc_t> k(weight, g.C, ignore_index, label_smoothing);
    std::vector<ChunkSums> sums(g.chunks());
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const label_t* t = target.const_data_ptr<label_t>();
    acc_t* lse_ptr = lse.mutable_data_ptr<acc_t>();
    acc_t* loss_none = reduction == kReductionNone ? loss.mutable_data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, static_cast<int64_t>(sums.size()), 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(g.in_place ? 0 : g.C * g.P), m(g.P), logs(g.P), swx(g.P);
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const auto [n, s0, np] = g.chunk(chunk);
        int64_t ld;
        const acc_t* rows = chunk_rows<scalar_t, acc_t>(x, g, n, s0, np, buf.data(), &ld);
        lse_rows(rows, ld, g.C, np, k.w, k.smoothing, m.data(), logs.data(), swx.data());
        sums[chunk] = chunk_losses(rows, ld, np, m.data(), logs.data(), swx.data(),
                                   t + n * g.tN + s0 * g.tS, g.tS, k, lse_ptr + n * g.S + s0,
                                   loss_none == nullptr ? nullptr : loss_none + n * g.S + s0);
      }
    });
    finish_loss("pixel_cross_entropy", sums, reduction, k, loss, weight_sum);
  });
  return {loss, lse, weight_sum};
}

at::Tensor pixel_cross_entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                            const at::Tensor& target,
                                            const std::optional<at::Tensor>& weight,
                                            const at::Tensor& lse_in, const at::Tensor& weight_sum,
                                            const CrossEntropyOptions& options) {
  check_pixel_cross_entropy_args(logits, target, weight, options);
  const int64_t ignore_index = options.ignore_index, reduction = options.reduction;
  const double label_smoothing = options.label_smoothing;
  check_pixel_cross_entropy_backward_args(grad, logits, lse_in, reduction);
  check_device(logits, at::kCPU, "logits", "pixel_cross_entropy_backward_cpu");
  const Geometry g = geometry(logits, target);
  const at::ScalarType acc_type = accumulation_type(logits.scalar_type());
  const at::Tensor lse = lse_in.to(acc_type).contiguous();
  at::Tensor grad_logits = at::empty_like(logits);
  advise_huge_pages(grad_logits);
  if (grad_logits.numel() == 0) return grad_logits;
  const int64_t oN = grad_logits.stride(0), oC = grad_logits.stride(1), oS = grad_logits.stride(2);

  dispatch_loss_types(logits, target, [&](auto scalar, auto label) {
    using scalar_t = decltype(scalar);
    using label_t = decltype(label);
    using acc_t = at::opmath_type<scalar_t>;
    const LossConstants<acc_t> k(weight, g.C, ignore_index, label_smoothing);
    const UpstreamGrad<acc_t> up(grad, weight_sum, reduction);
    const int64_t gN = up.per_pixel ? up.values.stride(0) : 0;
    const int64_t gS = up.per_pixel ? up.values.stride(1) : 0;
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const label_t* t = target.const_data_ptr<label_t>();
    const acc_t* lse_ptr = lse.const_data_ptr<acc_t>();
    scalar_t* out = grad_logits.mutable_data_ptr<scalar_t>();
    const bool direct_out = std::is_same<scalar_t, acc_t>::value && oS == 1;
    at::parallel_for(0, g.chunks(), 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(g.in_place ? 0 : g.C * g.P), gbuf(direct_out ? 0 : g.C * g.P);
      std::vector<acc_t> a(g.P), b(g.P), d(g.P), l(g.P);
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const auto [n, s0, np] = g.chunk(chunk);
        const label_t* tc = t + n * g.tN + s0 * g.tS;
        // The forward raised for targets outside [0, C): here they get no gradient.
        chunk_grad_coefficients(np, tc, g.tS,
                                up.per_pixel ? up.data + n * gN + s0 * gS : &up.scalar, gS, k,
                                a.data(), b.data(), d.data());
        finite_lse(lse_ptr + n * g.S + s0, np, l.data());
        int64_t ld;
        const acc_t* rows = chunk_rows<scalar_t, acc_t>(x, g, n, s0, np, buf.data(), &ld);
        acc_t* dst = direct_out ? reinterpret_cast<acc_t*>(out + n * oN + s0 * oS) : gbuf.data();
        const int64_t gld = direct_out ? oC : np;
        grad_rows(rows, ld, dst, gld, g.C, np, l.data(), a.data(), d.data(), k.w, k.smoothing);
        for (int64_t p = 0; p < np; ++p) {
          if (k.valid(tc[p * g.tS])) dst[tc[p * g.tS] * gld + p] -= b[p];
        }
        if (!direct_out) store_chunk_grad(gbuf.data(), g.C, np, out + n * oN + s0 * oS, oC, oS);
      }
    });
  });
  return grad_logits;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pixel_cross_entropy_with_grad_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const CrossEntropyOptions& options) {
  check_pixel_cross_entropy_args(logits, target, weight, options);
  const int64_t ignore_index = options.ignore_index, reduction = options.reduction;
  const double label_smoothing = options.label_smoothing;
  TORCH_CHECK(reduction != kReductionNone,
              "pixel_cross_entropy_with_grad: reduction must be mean or sum, got none");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "pixel_cross_entropy_with_grad: logits must be float32 or float64, got ",
              logits.scalar_type());
  check_device(logits, at::kCPU, "logits", "pixel_cross_entropy_with_grad_cpu");
  const Geometry g = geometry(logits, target);
  at::Tensor loss, lse, weight_sum;
  std::tie(loss, lse, weight_sum) = empty_loss_outputs(logits, {g.N, g.S}, false);
  at::Tensor grad_logits = at::empty_like(logits);
  advise_huge_pages(grad_logits);
  const int64_t oN = grad_logits.stride(0), oC = grad_logits.stride(1), oS = grad_logits.stride(2);

  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "pixel_cross_entropy_with_grad_cpu", [&] {
    dispatch_label(label_type(target), [&](auto label) {
      using label_t = decltype(label);
      using acc_t = scalar_t;  // float32 or float64: the gradient is kept in the accumulation dtype
      const LossConstants<acc_t> k(weight, g.C, ignore_index, label_smoothing);
      std::vector<ChunkSums> sums(g.chunks());
      const scalar_t* x = logits.const_data_ptr<scalar_t>();
      const label_t* t = target.const_data_ptr<label_t>();
      acc_t* lse_ptr = lse.mutable_data_ptr<acc_t>();
      scalar_t* out = grad_logits.mutable_data_ptr<scalar_t>();
      // The gradient for an upstream gradient of 1: mean's is divided by the weight sum, so that
      // sum comes first, from the targets alone (1 to 8 bytes a pixel against the logits' 4 C).
      acc_t scale = acc_t(1);
      if (reduction == kReductionMean) {
        at::parallel_for(0, g.chunks(), 1, [&](int64_t begin, int64_t end) {
          for (int64_t chunk = begin; chunk < end; ++chunk) {
            const auto [n, s0, np] = g.chunk(chunk);
            sums[chunk].weight = chunk_weight(t + n * g.tN + s0 * g.tS, g.tS, np, k);
          }
        });
        double total = 0.0;
        for (const ChunkSums& s : sums) total += s.weight;
        // Whatever its sign, as PyTorch divides (class weights may be negative). A sum of 0 gives
        // PyTorch's answers too: every pixel ignored, 0 (uncounted pixels' coefficients are
        // selected to 0, not multiplied by inf); pixels counted with weights that cancel, their
        // gradient non-finite.
        scale = acc_t(1) / static_cast<acc_t>(total);
      }
      const bool direct_out = oS == 1;
      at::parallel_for(0, g.chunks(), 1, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> buf(g.in_place ? 0 : g.C * g.P), gbuf(direct_out ? 0 : g.C * g.P);
        std::vector<acc_t> m(g.P), logs(g.P), swx(g.P), inv_sum(g.P), a(g.P), b(g.P), d(g.P);
        std::vector<int32_t> counted(g.P);
        for (int64_t chunk = begin; chunk < end; ++chunk) {
          const auto [n, s0, np] = g.chunk(chunk);
          const label_t* tc = t + n * g.tN + s0 * g.tS;
          int64_t ld;
          const acc_t* rows = chunk_rows<scalar_t, acc_t>(x, g, n, s0, np, buf.data(), &ld);
          // The exps go where their gradient will be, and become it there.
          acc_t* dst = direct_out ? out + n * oN + s0 * oS : gbuf.data();
          const int64_t gld = direct_out ? oC : np;
          softmax_rows(rows, ld, g.C, np, k.w, k.smoothing, m.data(), logs.data(), swx.data(), dst,
                       gld, inv_sum.data());
          sums[chunk] = chunk_losses(rows, ld, np, m.data(), logs.data(), swx.data(), tc, g.tS, k,
                                     lse_ptr + n * g.S + s0, static_cast<acc_t*>(nullptr));
          chunk_grad_coefficients(np, tc, g.tS, &scale, 0, k, a.data(), b.data(), d.data(),
                                  inv_sum.data(), counted.data());
          grad_from_exps_rows(dst, gld, g.C, np, a.data(), b.data(), d.data(), counted.data(), k.w,
                              k.smoothing);
          if (!direct_out) store_chunk_grad(gbuf.data(), g.C, np, out + n * oN + s0 * oS, oC, oS);
        }
      });
      finish_loss("pixel_cross_entropy", sums, reduction, k, loss, weight_sum);
    });
  });
  return {loss, lse, weight_sum, grad_logits};
}

}  // namespace fcn_fast
