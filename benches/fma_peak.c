/* The CPU's fp32 FMA peak, for the deploy and time-to-accuracy benchmarks.
 *
 * Each thread runs independent chains of fused multiply-adds on vector registers (12 chains,
 * enough to cover the FMA latency of 4 cycles on two ports), with no memory traffic, for a fixed
 * number of iterations; the figure is 2 FLOP per lane per FMA over the wall time of all threads
 * together. Built for AVX-512 when the CPU has it (-mavx512f), else AVX2 + FMA, by
 * benches/deploy.sh. Usage: fma_peak THREADS SECONDS. Prints "fma_peak_gflops <value> <isa>".
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define ISA "avx512"
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define REDUCE(v) _mm512_reduce_add_ps(v)
#else
typedef __m256 vec;
#define LANES 8
#define ISA "avx2"
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float REDUCE(__m256 v) {
    float f[8];
    _mm256_storeu_ps(f, v);
    return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}
#endif

#define CHAINS 12 /* the accumulators in run() */
static long iterations;
static volatile float sink;

static void* run(void* arg) {
    (void)arg;
    vec a = SET1(0.999999f), b = SET1(1e-7f);
    /* Twelve named accumulators, so that they stay in registers. */
    vec c0 = SET1(0), c1 = SET1(1), c2 = SET1(2), c3 = SET1(3), c4 = SET1(4), c5 = SET1(5);
    vec c6 = SET1(6), c7 = SET1(7), c8 = SET1(8), c9 = SET1(9), c10 = SET1(10), c11 = SET1(11);
    for (long i = 0; i < iterations; i++) {
        c0 = FMA(c0, a, b); c1 = FMA(c1, a, b); c2 = FMA(c2, a, b); c3 = FMA(c3, a, b);
        c4 = FMA(c4, a, b); c5 = FMA(c5, a, b); c6 = FMA(c6, a, b); c7 = FMA(c7, a, b);
        c8 = FMA(c8, a, b); c9 = FMA(c9, a, b); c10 = FMA(c10, a, b); c11 = FMA(c11, a, b);
    }
    vec total = ADD(ADD(ADD(c0, c1), ADD(c2, c3)), ADD(ADD(c4, c5), ADD(c6, c7)));
    total = ADD(total, ADD(ADD(c8, c9), ADD(c10, c11)));
    sink = REDUCE(total);
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    double seconds = argc > 2 ? atof(argv[2]) : 1.0;
    if (threads < 1 || threads > 256 || seconds <= 0) {
        fprintf(stderr, "usage: fma_peak THREADS SECONDS\n");
        return 2;
    }
    /* Calibrate on one thread: iterations for about `seconds`. */
    iterations = 1000000;
    double t0 = now();
    run(NULL);
    double dt = now() - t0;
    iterations = (long)(iterations * seconds / (dt > 1e-6 ? dt : 1e-6));
    pthread_t ids[256];
    t0 = now();
    for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, run, NULL);
    for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    dt = now() - t0;
    double flops = 2.0 * LANES * CHAINS * (double)iterations * threads;
    printf("fma_peak_gflops %.1f %s\n", flops / dt / 1e9, ISA);
    return 0;
}
