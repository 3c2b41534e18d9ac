#pragma once
// Huge pages for large fresh CPU outputs.
#include <ATen/ATen.h>

#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fcn_fast {

// A large fresh tensor (glibc mmaps anything over 32 MB) is otherwise first touched
// in 4 KiB pages, one page fault each: for an 84 MB FCN-8s output or logits gradient
// the faults cost more than the kernel itself. Asking for transparent huge pages
// before the first write cuts them 512-fold (what PyTorch's THP_MEM_ALLOC_ENABLE=1
// does for every allocation). Only a hint, on the 2 MiB-aligned interior of the
// tensor's memory: where the kernel declines, nothing changes.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + t.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first + 4 * kHuge)
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

}  // namespace fcn_fast
