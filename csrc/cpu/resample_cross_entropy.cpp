// CPU kernels of the fused heads (resample_cross_entropy.h): being written.
#include "../ops/resample_cross_entropy.h"

namespace fcn_fast {

LossOutputs resample_cross_entropy_cpu(const at::Tensor&, const at::Tensor&,
                                       const std::optional<at::Tensor>&, const Resampling&,
                                       const CrossEntropyOptions&) {
  TORCH_CHECK(false, "resample_cross_entropy_cpu: not implemented yet");
}

at::Tensor resample_cross_entropy_backward_cpu(const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const std::optional<at::Tensor>&,
                                               const at::Tensor&, const at::Tensor&,
                                               const Resampling&, const CrossEntropyOptions&) {
  TORCH_CHECK(false, "resample_cross_entropy_backward_cpu: not implemented yet");
}

std::tuple<at::Tensor, at::Tensor> resample_argmax_cpu(const at::Tensor&, const Resampling&,
                                                       int64_t, int64_t, at::ScalarType, bool) {
  TORCH_CHECK(false, "resample_argmax_cpu: not implemented yet");
}

}  // namespace fcn_fast
