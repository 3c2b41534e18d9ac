#pragma once
// The hot fp32 row loops are compiled once per x86 ISA level and picked at load time by CPU
// features: GCC function multiversioning, a definition per target attribute (not
// target_clones("arch=haswell"), which checks the CPU model, not its features).
// FCN_FOR_EACH_ISA(DEFINE) expands DEFINE(attribute) once per level; with other compilers and
// CPUs, once with no attribute (the baseline build).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FCN_FOR_EACH_ISA(DEFINE)                                                 \
  DEFINE(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))) \
  DEFINE(__attribute__((target("avx2,fma"))))                                    \
  DEFINE(__attribute__((target("default"))))
#else
#define FCN_FOR_EACH_ISA(DEFINE) DEFINE()
#endif
