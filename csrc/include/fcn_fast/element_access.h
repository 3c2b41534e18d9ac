#pragma once
// Element and vector memory access for the per-thread kernel code (the *_kernels.h
// headers): plain C++ that nvcc compiles into the CUDA kernels and g++ into the CPU
// emulation of those kernels (tests/test_cuda_emulation.py). No ATen, no CUDA runtime.
//
// Conversions go through ElementOps<T>; this header defines them for float and double,
// csrc/cuda/common.cuh adds __half and __nv_bfloat16 (device only). A class template
// specialization is found wherever the template that uses it is instantiated, so the
// per-thread code can be written once for all four types.
#include <math.h>
#include <stdint.h>

#include <initializer_list>

#include "fcn_fast/macros.h"

// The CPU emulation defines FCN_FAST_EMULATION and fcn_fast::emulation::check_vector_access:
// every vector access is then checked for alignment, so a kernel that would issue a
// misaligned 16-byte access on the GPU fails the emulation test instead.
#if defined(FCN_FAST_EMULATION) && !defined(__CUDA_ARCH__)
namespace fcn_fast {
namespace emulation {
void check_vector_access(const void* address, int bytes);
}  // namespace emulation
}  // namespace fcn_fast
#define FCN_CHECK_VECTOR_ACCESS(address, bytes) \
  ::fcn_fast::emulation::check_vector_access(address, bytes)
#else
#define FCN_CHECK_VECTOR_ACCESS(address, bytes) ((void)0)
#endif

namespace fcn_fast {

template <typename T>
struct ElementOps;

template <>
struct ElementOps<float> {
  using acc = float;
  static FCN_HD float to_acc(float v) { return v; }
  static FCN_HD float from_acc(float v) { return v; }
};

template <>
struct ElementOps<double> {
  using acc = double;
  static FCN_HD double to_acc(double v) { return v; }
  static FCN_HD double from_acc(double v) { return v; }
};

// The accumulation type of an element type: float for every type but double.
template <typename T>
using acc_type = typename ElementOps<T>::acc;

template <typename T>
FCN_HD acc_type<T> load_acc(const T* p) {
  return ElementOps<T>::to_acc(*p);
}

template <typename T>
FCN_HD void store_acc(T* p, acc_type<T> v) {
  *p = ElementOps<T>::from_acc(v);
}

// Explicit fused multiply-add: the kernels spell out every fma so that the emulation
// (compiled with -ffp-contract=off) rounds exactly as the GPU does.
FCN_HD float fcn_fma(float a, float b, float c) { return fmaf(a, b, c); }
FCN_HD double fcn_fma(double a, double b, double c) { return fma(a, b, c); }

// V consecutive elements moved as one aligned access: 16 bytes (LDG/STG.E.128) when
// V * sizeof(T) == 16. Only for addresses aligned to sizeof(Pack).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename T>
FCN_HD Pack<T, V> load_pack(const T* p) {
  FCN_CHECK_VECTOR_ACCESS(p, static_cast<int>(sizeof(Pack<T, V>)));
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <int V, typename T>
FCN_HD void store_pack(T* p, const Pack<T, V>& pack) {
  FCN_CHECK_VECTOR_ACCESS(p, static_cast<int>(sizeof(Pack<T, V>)));
  *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

// Element k of a pack as the accumulation type (csrc/cuda/common.cuh overloads it for
// bfloat16: one shift or mask of the 32-bit word that holds the element, not an extract and a
// shift).
template <typename T, int V>
FCN_HD acc_type<T> pack_acc(const Pack<T, V>& pack, int k) {
  return ElementOps<T>::to_acc(pack.v[k]);
}

// V elements starting at p as accumulators. vector: one aligned access (the caller has
// checked alignment); else `count` (<= V) scalar reads at p[k * stride], the rest 0.
template <int V, typename T, typename index_t>
FCN_HD void load_run(const T* p, index_t stride, int count, bool vector, acc_type<T> (&out)[V]) {
  if (V > 1 && vector) {
    const Pack<T, V> pack = load_pack<V>(p);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = ElementOps<T>::to_acc(pack.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      out[k] = k < count ? load_acc(p + static_cast<index_t>(k) * stride) : acc_type<T>(0);
    }
  }
}

// The store twin of load_run: V elements from accumulators, or the first `count`.
template <int V, typename T, typename index_t>
FCN_HD void store_run(T* p, index_t stride, int count, bool vector, const acc_type<T> (&in)[V]) {
  if (V > 1 && vector) {
    Pack<T, V> pack;
#pragma unroll
    for (int k = 0; k < V; ++k) pack.v[k] = ElementOps<T>::from_acc(in[k]);
    store_pack<V>(p, pack);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (k < count) store_acc(p + static_cast<index_t>(k) * stride, in[k]);
    }
  }
}

// Gather/scatter twins of load_run/store_run: element k at base[offsets[k]]. vector: the V
// elements are consecutive from base[offsets[0]], which is aligned (checked by the caller).
template <int V, typename T, typename index_t>
FCN_HD void load_elements(const T* base, const index_t (&offsets)[V], int count, bool vector,
                          acc_type<T> (&out)[V]) {
  if (V > 1 && vector) {
    const Pack<T, V> pack = load_pack<V>(base + offsets[0]);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = ElementOps<T>::to_acc(pack.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = k < count ? load_acc(base + offsets[k]) : acc_type<T>(0);
  }
}

template <int V, typename T, typename index_t>
FCN_HD void store_elements(T* base, const index_t (&offsets)[V], int count, bool vector,
                           const acc_type<T> (&in)[V]) {
  if (V > 1 && vector) {
    Pack<T, V> pack;
#pragma unroll
    for (int k = 0; k < V; ++k) pack.v[k] = ElementOps<T>::from_acc(in[k]);
    store_pack<V>(base + offsets[0], pack);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (k < count) store_acc(base + offsets[k], in[k]);
    }
  }
}

// True when `pointer` is aligned to `bytes` (a power of two).
inline bool is_aligned(const void* pointer, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(bytes) == 0;
}

// The vector width (elements) of one 16-byte access for an element of `element_size` bytes.
FCN_HD constexpr int vector_width(int element_size) {
  return element_size >= 16 ? 1 : 16 / element_size;
}

// Largest offset reached by a 4-D tensor of `sizes` with `strides` (elements, >= 0), plus one:
// a tensor whose extent fits in int32 can be walked with 32-bit index arithmetic.
inline int64_t tensor_extent(const int64_t (&sizes)[4], const int64_t (&strides)[4]) {
  int64_t extent = 1;
  for (int d = 0; d < 4; ++d) {
    if (sizes[d] == 0) return 0;
    extent += (sizes[d] - 1) * (strides[d] < 0 ? -strides[d] : strides[d]);
  }
  return extent;
}

constexpr int64_t kInt32Limit = int64_t(1) << 31;

// True when offsets up to `extent` fit the 32-bit index path.
inline bool fits_int32(int64_t extent) { return extent < kInt32Limit; }

// V consecutive elements of a row space can move as one aligned V-element access: the
// base pointer is aligned to V elements and every row / group start offset is a multiple
// of V (so is every element offset a thread starts at: a multiple of V within the row).
inline bool vector_rows_ok(const void* base, int element_size, int V,
                           std::initializer_list<int64_t> start_offsets) {
  if (V <= 1 || base == nullptr || !is_aligned(base, static_cast<int64_t>(V) * element_size)) {
    return false;
  }
  for (int64_t offset : start_offsets) {
    if (offset % V != 0) return false;
  }
  return true;
}

}  // namespace fcn_fast
