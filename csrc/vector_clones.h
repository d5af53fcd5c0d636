// Function multi-versioning for the shim's vectorised loops: on x86-64 Linux a function marked
// VECTOR_CLONES is compiled for AVX-512, AVX2 and the baseline, and the dynamic loader picks the
// build the CPU runs; elsewhere it is compiled once, for the baseline.
//
// With GCC 12 or later the two vector builds are the x86-64-v4 and -v3 levels, which include FMA:
// GCC's "avx512f" and "avx2" targets do not, so every multiply-add there was a multiplication and
// an addition, half the arithmetic rate (LeNet's one-channel convolution ran at a tenth of the
// cores' peak). Older compilers, and Clang, keep the feature names.
#pragma once

//
// VECTOR_CLONES_TEMPLATE marks a function template (a loop over float32 and bfloat16 maps) the
// same way where GCC 12 or later compiles it, which clones each instantiation; Clang does not
// multiversion templates, so there they are compiled once, for the baseline.
#if defined(__x86_64__) && defined(__linux__)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define VECTOR_CLONES_TEMPLATE VECTOR_CLONES
#else
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define VECTOR_CLONES_TEMPLATE
#endif
#else
#define VECTOR_CLONES
#define VECTOR_CLONES_TEMPLATE
#endif
