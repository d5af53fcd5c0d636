// The CPU's float32 multiply-add peak on a given number of threads, the ceiling any convolution
// or matrix product can reach: independent chains of vector multiply-adds, enough of them to
// cover the instruction's latency on every port, and nothing else. bench/roofline.py compiles
// and runs it with -march=native: 512-bit vectors where the build has AVX-512, 256-bit AVX2
// ones otherwise.
//
//   cc -O2 -march=native -fopenmp bench/fma_peak.c -o fma_peak && ./fma_peak THREADS
//
// Prints one line: `fma_peak_gflops <best of 7 repetitions> threads <n> lanes <floats per vector>`.
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
static float first_lane(vec v) { return _mm512_cvtss_f32(v); }
#elif defined(__FMA__)
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float first_lane(vec v) { return _mm256_cvtss_f32(v); }
#else
#error "needs FMA (AVX2) or AVX-512: compile with -march=native on such a CPU"
#endif

// Chains per thread: a multiply-add's latency (4 cycles on current x86 cores) times the ports
// that issue it (2) is 8; 12 leaves slack and still fits the 16 AVX2 registers with the two
// operands.
#define CHAINS 12
#define ITERATIONS 20000000L

// Twelve named accumulators, not an array: an array indexed in a loop may live in memory, and
// each multiply-add would then wait on a store and a load.
static float run_chains(float seed) {
    vec c0 = SET1(seed), c1 = SET1(seed + 1), c2 = SET1(seed + 2), c3 = SET1(seed + 3);
    vec c4 = SET1(seed + 4), c5 = SET1(seed + 5), c6 = SET1(seed + 6), c7 = SET1(seed + 7);
    vec c8 = SET1(seed + 8), c9 = SET1(seed + 9), c10 = SET1(seed + 10), c11 = SET1(seed + 11);
    // x * a + b with |a| < 1 converges instead of overflowing.
    const vec a = SET1(0.999999f), b = SET1(1e-7f);
    for (long it = 0; it < ITERATIONS; ++it) {
        c0 = FMA(c0, a, b), c1 = FMA(c1, a, b), c2 = FMA(c2, a, b), c3 = FMA(c3, a, b);
        c4 = FMA(c4, a, b), c5 = FMA(c5, a, b), c6 = FMA(c6, a, b), c7 = FMA(c7, a, b);
        c8 = FMA(c8, a, b), c9 = FMA(c9, a, b), c10 = FMA(c10, a, b), c11 = FMA(c11, a, b);
    }
    const vec sum = ADD(ADD(ADD(ADD(c0, c1), ADD(c2, c3)), ADD(ADD(c4, c5), ADD(c6, c7))),
                        ADD(ADD(c8, c9), ADD(c10, c11)));
    return first_lane(sum);
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : omp_get_max_threads();
    if (threads < 1) {
        fprintf(stderr, "fma_peak: threads must be a positive number, got %s\n", argv[1]);
        return 2;
    }
    double best = 0.0;
    float sink = 0.0f;
    for (int rep = 0; rep < 7; ++rep) {
        const double start = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += run_chains((float)omp_get_thread_num());
        const double seconds = omp_get_wtime() - start;
        const double gflops = 2.0 * LANES * CHAINS * (double)ITERATIONS * threads / seconds / 1e9;
        if (gflops > best) best = gflops;
    }
    // Printing the sums keeps the compiler from dropping the chains.
    printf("fma_peak_gflops %.1f threads %d lanes %d (checksum %g)\n", best, threads, LANES, sink);
    return 0;
}
