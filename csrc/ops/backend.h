#pragma once
// How an fcn_fast op picks its kernel. Every public op takes a `backend` string, already
// resolved by Python (fcn_fast/_backend.py: "cpu", "cuda" or "triton"; "reference" never
// reaches C++). Each op file in csrc/ops routes it with a switch over Backend:
//   cpu    -> <op>_cpu     csrc/cpu/<op>.cpp
//   cuda   -> <op>_cuda    csrc/cuda/<op>_binding.cpp (built only with the CUDA kernels)
//   triton -> the op fcn_fast::<op>_triton, whose Python implementation is registered by
//             fcn_fast/triton/__init__.py, and called here through the dispatcher.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/string_view.h>

namespace fcn_fast {

enum class Backend { Cpu, Cuda, Triton };

inline Backend parse_backend(c10::string_view name, const char* op) {
  if (name == "cpu") return Backend::Cpu;
  if (name == "cuda") return Backend::Cuda;
  if (name == "triton") return Backend::Triton;
  TORCH_CHECK_VALUE(false, op, ": backend must be \"cpu\", \"cuda\" or \"triton\" here, got \"",
                    std::string(name), "\"");
}

// The Triton implementation of an op, registered from Python under `name`.
template <typename Signature>
c10::TypedOperatorHandle<Signature> triton_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Without the CUDA kernels (setup.py defines FCN_FAST_WITH_CUDA only when it builds them),
// the routers raise this instead of calling <op>_cuda.
[[noreturn]] inline void fail_without_cuda(const char* op) {
  TORCH_CHECK(false, op,
              ": this build of fcn_fast has no CUDA kernels (rebuild with a CUDA torch and "
              "nvcc, see the README), use backend=\"triton\" or \"reference\"");
}

}  // namespace fcn_fast
