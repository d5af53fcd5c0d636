// Function multi-versioning for the shim's vectorised loops: on x86-64 Linux (GCC and Clang) a
// function marked VECTOR_CLONES is compiled for AVX-512, AVX2 and the baseline, and the dynamic
// loader picks the build the CPU runs; elsewhere it is compiled once, for the baseline.
#pragma once

#if defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif
