/* tokenflow, the avx512 tier: int4 weight-only matmul with bf16 dot products (AVX512_BF16).
 *
 * y[M, N] (bf16) = x[M, K] (bf16) @ W.T, W[N, K] stored as 4-bit codes q in groups of
 * 32 along K with a scale s and a zero point z per (group, channel): w = (q - 8) * s + z,
 * the weights of PyTorch's _weight_int4pack_mm_for_cpu (and of a GGUF's Q4_1 blocks).
 *
 *   sum_k x_k w_k = sum_g ( s_g * sum_{k in g} x_k (q_k - 8) + z_g * sum_{k in g} x_k )
 *
 * (q - 8) is a small integer, exact in bf16, so vdpbf16ps multiplies x by the codes
 * exactly (32 products an instruction, float32 sums) and the scale and zero point are
 * applied once per group: the same weights, no extra rounding, but the sums run in
 * another order than PyTorch's kernel (float32 either way; outputs differ by at most
 * about one bf16 unit). PyTorch's kernel dequantizes every weight to float32 once per
 * tile of 4 rows and then does one FMA per weight and row; here one expansion of the
 * codes serves a tile of up to 8 rows, and each instruction does twice the work.
 * Measured on this 2-core AVX-512 machine (cold caches): 3072x576 at 1 row 40 vs 56 us,
 * at 16 rows 183 vs 352 us.
 *
 * Layout (generator.kernels.pack): channels in blocks of 16. codes[b][q] is 32 bytes for the
 * inputs 4q .. 4q + 3: byte 2c + i is channel 16b + c, low nibble input 4q + i, high nibble
 * input 4q + 2 + i (i = 0, 1). sz[b][g] is 32 bf16: the 16 scales, then the 16 zero points
 * of group g (inputs 32g .. 32g + 31) for the block's channels.
 *
 * Threads: OpenMP over channel blocks (a block's row tiles on one thread, so its codes
 * stay in cache). The library links libgomp by its soname, which resolves to the copy
 * PyTorch already loaded: one thread team for both.
 */
#include <float.h>
#include <immintrin.h>
#include "tier.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* How far ahead (bytes) the VNNI kernels prefetch their codes: the hardware's own
 * prefetch leaves a 16-row tile waiting on memory (30 layers' int4 weights, cold, 16 rows:
 * 8.1 -> 6.8 ms with it; 1 row, bound by the stream itself, unchanged). */
#define PREFETCH_AHEAD 4096

static inline __m512 bf16x16_to_ps(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* float32 -> bf16, round to nearest even (as PyTorch's conversion; NaN stays NaN). */
static inline __m256i ps_to_bf16x16(__m512 v) {
    __m512i i = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(i, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(i, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(i, _mm512_set1_epi32(0x00400000)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

#ifdef __AVX512BF16__
#define DP_TILE 8

/* acc += x * w with the bf16 pair at x broadcast to every lane by the instruction itself
 * (an embedded {1to16} broadcast). Written as a separate vpbroadcastd, as compilers do for
 * _mm512_set1_epi32, it cost this CPU (AMD Zen 4) a quarter of the kernel's time: 8 rows
 * x 3072 x 576 on one thread, 150 vs 160-196 us. */
static inline __m512 dp_bcast(__m512 acc, const uint32_t *x, __m512bh w) {
    __asm__("vdpbf16ps %1%{1to16%}, %2, %0" : "+v"(acc) : "m"(*x), "v"(w));
    return acc;
}

/* Arguments every matmul tile reads: x as bf16 pairs, per-group sums of x (int4 only),
 * the packed weight and its scales, and the output. */
typedef struct {
    const uint32_t *xp;
    const float *xs;
    int64_t K, N;
    const void *codes;
    const uint16_t *scales;
    uint16_t *y;
    const float *xd;     /* int8 x: each (row, group)'s step */
    const int32_t *xb;   /* int8 x: 8 x each (row, group)'s sum of codes */
} mm_args;

typedef void (*tile_fn)(const mm_args *a, int64_t b, int64_t r0);

/* A tile macro instantiated for 1 .. DP_TILE rows, and the table run_tiles picks from. */
#define TILES(DEFINE, prefix)                                                                \
    DEFINE(1) DEFINE(2) DEFINE(3) DEFINE(4) DEFINE(5) DEFINE(6) DEFINE(7) DEFINE(8)          \
    static const tile_fn prefix##_tiles[DP_TILE + 1] = {0, prefix##_tile_1, prefix##_tile_2, \
        prefix##_tile_3, prefix##_tile_4, prefix##_tile_5, prefix##_tile_6, prefix##_tile_7,  \
        prefix##_tile_8};

/* Codes to bf16 without a lookup: a 4-bit code q in the low bits of a bf16 whose high
 * bits are 0x4300 (128.0) is exactly 128 + q, so one OR makes the dot product's operand;
 * the bias is taken out once per group with the per-group sums of x:
 *   sum x (q - 8) = sum x (128 + q) - 136 sum x.
 * (The biased float32 sums are ~20x the size of the unbiased ones: a rounding error of a
 * few 1e-6 relative, far below the bf16 output's 4e-3.) */
#define DEFINE_DP_TILE(MT)                                                                   \
static void dp_tile_##MT(const mm_args *a, int64_t b, int64_t r0) {                         \
    const uint32_t *xp = a->xp;                                                              \
    const float *xs = a->xs;                                                                 \
    const int64_t K = a->K, N = a->N;                                                        \
    const uint8_t *codes = (const uint8_t *)a->codes;                                        \
    const uint16_t *sz = a->scales;                                                          \
    uint16_t *y = a->y;                                                                      \
    const __m512i lo4 = _mm512_set1_epi16(0x000F), bias = _mm512_set1_epi16(0x4300);         \
    const __m512 c136 = _mm512_set1_ps(136.0f);                                              \
    /* Two partial sums a row when few rows give few independent chains. */                 \
    enum { TWO = (MT) <= 4 };                                                                \
    __m512 acc[MT];                                                                          \
    for (int r = 0; r < MT; r++) acc[r] = _mm512_setzero_ps();                               \
    const int64_t P = K / 2, Q = K / 4, NG = K / GROUP;                                      \
    const uint8_t *cb = codes + b * Q * 32;                                                  \
    const uint16_t *sb = sz + b * NG * 32;                                                   \
    for (int64_t g = 0; g < NG; g++) {                                                       \
        __m512 p0[MT], p1[MT];                                                               \
        for (int r = 0; r < MT; r++) { p0[r] = _mm512_setzero_ps(); if (TWO) p1[r] = _mm512_setzero_ps(); } \
        for (int64_t k = g * (GROUP / 4); k < (g + 1) * (GROUP / 4); k++) {                  \
            const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(cb + k * 32))); \
            const __m512bh w0 = (__m512bh)_mm512_ternarylogic_epi32(w, lo4, bias, 0xEA);    \
            const __m512bh w1 = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(w, 4), bias);   \
            for (int r = 0; r < MT; r++) {                                                   \
                const uint32_t *xr = xp + (r0 + r) * P + 2 * k;                              \
                p0[r] = dp_bcast(p0[r], xr, w0);                                             \
                if (TWO) p1[r] = dp_bcast(p1[r], xr + 1, w1);                                \
                else p0[r] = dp_bcast(p0[r], xr + 1, w1);                                    \
            }                                                                                \
        }                                                                                    \
        const __m512 s = bf16x16_to_ps(sb + g * 32);                                         \
        const __m512 zb = _mm512_fnmadd_ps(c136, s, bf16x16_to_ps(sb + g * 32 + 16));        \
        for (int r = 0; r < MT; r++) {                                                       \
            const __m512 part = TWO ? _mm512_add_ps(p0[r], p1[r]) : p0[r];                   \
            const __m512 xsum = _mm512_set1_ps(xs[(r0 + r) * NG + g]);                       \
            acc[r] = _mm512_fmadd_ps(part, s, _mm512_fmadd_ps(xsum, zb, acc[r]));            \
        }                                                                                    \
    }                                                                                        \
    for (int r = 0; r < MT; r++)                                                             \
        _mm256_storeu_si256((__m256i *)(y + (r0 + r) * N + b * 16), ps_to_bf16x16(acc[r]));  \
}

TILES(DEFINE_DP_TILE, dp)

/* Row tiles as even as possible (16 rows -> 8 + 8), OpenMP over channel blocks of
 * ``width``; a block's tiles run on one thread, so its codes stay in cache. */
static void run_tiles(const mm_args *a, int64_t M, int64_t width, const tile_fn *tiles) {
    const int64_t n_tiles = (M + DP_TILE - 1) / DP_TILE;
    const int64_t blocks = a->N / width;
#pragma omp parallel for schedule(static)
    for (int64_t job = 0; job < blocks * n_tiles; job++) {
        const int64_t b = job / n_tiles, t = job % n_tiles;
        const int64_t r0 = t * M / n_tiles, r1 = (t + 1) * M / n_tiles;
        tiles[r1 - r0](a, b, r0);
    }
}

/* x: bf16 [M, K]; codes, sz: as above; y: bf16 [M, N]. N % 16 == 0, K % 32 == 0. */
int TF(int4_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
               const uint16_t *sz, uint16_t *y) {
    if (M <= 0 || N % 16 || K % GROUP) return -1;
    const int64_t NG = K / GROUP;
    float *xs = (float *)malloc(sizeof(float) * M * NG);
    if (!xs) return -2;
    for (int64_t i = 0; i < M * NG; i++)  /* per-group sums of x, float32 */
        xs[i] = _mm512_reduce_add_ps(_mm512_add_ps(bf16x16_to_ps(x + i * GROUP), bf16x16_to_ps(x + i * GROUP + 16)));
    const mm_args a = {(const uint32_t *)x, xs, K, N, codes, sz, y, NULL, NULL};
    run_tiles(&a, M, 16, dp_tiles);
    free(xs);
    return 0;
}


/* ---- int4 weights x int8 activations (AVX512_VNNI) --------------------------------
 * x quantized per row and group of 32 to int8 (step d = max|x| / 127, codes xq), as
 * llama.cpp does for a Q4_1 matmul; vpdpbusd multiplies the unsigned 4-bit codes by
 * xq, four products a lane, 64 an instruction, summed exactly in int32:
 *   sum x (q - 8) s + z sum x  ~=  s d (sum xq q - 8 sum xq) + z sum x
 * (the zero point's term uses the exact float32 sum of x). Layout (generator.kernels.pack_q8):
 * channels in blocks of 16; codes[b][o] is 64 bytes for the inputs 8o .. 8o + 7: byte i
 * is channel 16b + i / 4, low nibble input 8o + i % 4, high nibble input 8o + 4 + i % 4.
 * sz as the bf16 kernel's. */
#ifdef __AVX512VNNI__
static inline __m512i dpbusd_bcast(__m512i acc, __m512i w, const uint32_t *x) {
    __asm__("vpdpbusd %1%{1to16%}, %2, %0" : "+v"(acc) : "m"(*x), "v"(w));
    return acc;
}

#define DEFINE_Q8_TILE(MT)                                                                   \
static void q8_tile_##MT(const mm_args *a, int64_t b, int64_t r0) {                         \
    const uint32_t *xq = a->xp;                                                              \
    const float *xs = a->xs, *xd = a->xd;                                                    \
    const int32_t *xb = a->xb;                                                               \
    const int64_t K = a->K, N = a->N, W = K / 4, NG = K / GROUP;                             \
    const uint8_t *cb = (const uint8_t *)a->codes + b * (K / 8) * 64;                        \
    const uint16_t *sb = a->scales + b * NG * 32;                                            \
    const __m512i lo4 = _mm512_set1_epi8(0x0F);                                              \
    enum { TWO = (MT) <= 4 };                                                                \
    __m512 acc[MT];                                                                          \
    for (int r = 0; r < MT; r++) acc[r] = _mm512_setzero_ps();                               \
    for (int64_t g = 0; g < NG; g++) {                                                       \
        __m512i p0[MT], p1[MT];                                                              \
        for (int r = 0; r < MT; r++) { p0[r] = _mm512_setzero_si512(); if (TWO) p1[r] = _mm512_setzero_si512(); } \
        for (int64_t o = g * (GROUP / 8); o < (g + 1) * (GROUP / 8); o++) {                  \
            _mm_prefetch((const char *)(cb + o * 64 + PREFETCH_AHEAD), _MM_HINT_T0);           \
            const __m512i c = _mm512_loadu_si512(cb + o * 64);                               \
            const __m512i w0 = _mm512_and_si512(c, lo4);                                     \
            const __m512i w1 = _mm512_and_si512(_mm512_srli_epi16(c, 4), lo4);              \
            for (int r = 0; r < MT; r++) {                                                   \
                const uint32_t *xr = xq + (r0 + r) * W + 2 * o;                              \
                p0[r] = dpbusd_bcast(p0[r], w0, xr);                                         \
                if (TWO) p1[r] = dpbusd_bcast(p1[r], w1, xr + 1);                            \
                else p0[r] = dpbusd_bcast(p0[r], w1, xr + 1);                                \
            }                                                                                \
        }                                                                                    \
        const __m512 s = bf16x16_to_ps(sb + g * 32), z = bf16x16_to_ps(sb + g * 32 + 16);   \
        for (int r = 0; r < MT; r++) {                                                       \
            const int64_t i = (r0 + r) * NG + g;                                             \
            const __m512i p = TWO ? _mm512_add_epi32(p0[r], p1[r]) : p0[r];                  \
            const __m512 t = _mm512_cvtepi32_ps(_mm512_sub_epi32(p, _mm512_set1_epi32(xb[i]))); \
            acc[r] = _mm512_fmadd_ps(t, _mm512_mul_ps(s, _mm512_set1_ps(xd[i])),             \
                                     _mm512_fmadd_ps(z, _mm512_set1_ps(xs[i]), acc[r]));     \
        }                                                                                    \
    }                                                                                        \
    for (int r = 0; r < MT; r++)                                                             \
        _mm256_storeu_si256((__m256i *)(a->y + (r0 + r) * N + b * 16), ps_to_bf16x16(acc[r])); \
}

TILES(DEFINE_Q8_TILE, q8)

/* Rounds x [M, K] to int8 per row and group of 32 (step max|x| / 127, nearest even), with
 * per (row, group) the step, the exact float32 sum of x and bias times the sum of the
 * int8 codes, in one malloc'd block the caller frees (NULL: no memory). */
static void *quantize_rows(const uint16_t *x, int64_t M, int64_t K, int32_t bias, q8_x *out) {
    const int64_t n = M * (K / GROUP);
    void *buf = q8_alloc(M, K, out);
    if (!buf) return NULL;
    for (int64_t i = 0; i < n; i++) {
        const __m512 v0 = bf16x16_to_ps(x + i * GROUP), v1 = bf16x16_to_ps(x + i * GROUP + 16);
        out->xs[i] = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float inv = amax > 0.f ? 127.f / amax : 0.f;
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(inv)));
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv)));
        _mm_storeu_si128((__m128i *)(out->xq + i * GROUP), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(out->xq + i * GROUP + 16), _mm512_cvtepi32_epi8(q1));
        out->xd[i] = amax / 127.f;
        out->xb[i] = bias * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
    return buf;
}

/* x rounded to int8 (codes minus bias x the sum of the codes, per group), then tiles of
 * 16 channels over codes and scales. N % 16 == 0, K % 32 == 0. */
static int run_q8(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
                  const uint16_t *scales, uint16_t *y, int32_t bias, const tile_fn *tiles) {
    if (M <= 0 || N % 16 || K % GROUP) return -1;
    q8_x q;
    void *buf = quantize_rows(x, M, K, bias, &q);
    if (!buf) return -2;
    mm_args a = {(const uint32_t *)q.xq, q.xs, K, N, codes, scales, y, q.xd, q.xb};
    run_tiles(&a, M, 16, tiles);
    free(buf);
    return 0;
}

/* x: bf16 [M, K]; codes (pack_q8), sz: as above; y: bf16 [M, N]. */
int TF(int4_q8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
                  const uint16_t *sz, uint16_t *y) {
    return run_q8(x, M, K, N, codes, sz, y, 8, q8_tiles);
}

/* ---- int8 weights x int8 activations (AVX512_VNNI): the output head ---------------
 * One scale s per output channel, codes q in -127..127 stored as q + 128 (unsigned, for
 * vpdpbusd's unsigned operand), x rounded to int8 per row and group of 32 as above:
 *   y = s sum_g d_g (sum (q + 128) xq - 128 sum xq)
 * Layout (generator.kernels.pack_int8_q8): channels in blocks of 16; codes[b][o] is 64 bytes for
 * the inputs 4o .. 4o + 3: byte i is channel 16b + i / 4, input 4o + i % 4. */
#define DEFINE_Q8H_TILE(MT)                                                                  \
static void q8h_tile_##MT(const mm_args *a, int64_t b, int64_t r0) {                        \
    const uint32_t *xq = a->xp;                                                              \
    const float *xd = a->xd;                                                                 \
    const int32_t *xb = a->xb;                                                               \
    const int64_t K = a->K, N = a->N, W = K / 4, NG = K / GROUP;                             \
    const uint8_t *cb = (const uint8_t *)a->codes + b * W * 64;                              \
    enum { TWO = (MT) <= 4 };                                                                \
    __m512 acc[MT];                                                                          \
    for (int r = 0; r < MT; r++) acc[r] = _mm512_setzero_ps();                               \
    for (int64_t g = 0; g < NG; g++) {                                                       \
        __m512i p0[MT], p1[MT];                                                              \
        for (int r = 0; r < MT; r++) { p0[r] = _mm512_setzero_si512(); if (TWO) p1[r] = _mm512_setzero_si512(); } \
        for (int64_t o = g * (GROUP / 4); o < (g + 1) * (GROUP / 4); o += 2) {               \
            _mm_prefetch((const char *)(cb + o * 64 + PREFETCH_AHEAD), _MM_HINT_T0);           \
            _mm_prefetch((const char *)(cb + o * 64 + 64 + PREFETCH_AHEAD), _MM_HINT_T0);      \
            const __m512i w0 = _mm512_loadu_si512(cb + o * 64), w1 = _mm512_loadu_si512(cb + o * 64 + 64); \
            for (int r = 0; r < MT; r++) {                                                   \
                const uint32_t *xr = xq + (r0 + r) * W + o;                                  \
                p0[r] = dpbusd_bcast(p0[r], w0, xr);                                         \
                if (TWO) p1[r] = dpbusd_bcast(p1[r], w1, xr + 1);                            \
                else p0[r] = dpbusd_bcast(p0[r], w1, xr + 1);                                \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < MT; r++) {                                                       \
            const int64_t i = (r0 + r) * NG + g;                                             \
            const __m512i p = TWO ? _mm512_add_epi32(p0[r], p1[r]) : p0[r];                  \
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(p, _mm512_set1_epi32(xb[i]))), \
                                     _mm512_set1_ps(xd[i]), acc[r]);                         \
        }                                                                                    \
    }                                                                                        \
    const __m512 s = bf16x16_to_ps(a->scales + b * 16);                                      \
    for (int r = 0; r < MT; r++)                                                             \
        _mm256_storeu_si256((__m256i *)(a->y + (r0 + r) * N + b * 16), ps_to_bf16x16(_mm512_mul_ps(acc[r], s))); \
}

TILES(DEFINE_Q8H_TILE, q8h)

/* x: bf16 [M, K]; codes (pack_int8_q8); scales: bf16 [N]; y: bf16 [M, N]. */
int TF(int8_q8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
                  const uint16_t *scales, uint16_t *y) {
    return run_q8(x, M, K, N, codes, scales, y, 128, q8h_tiles);
}
#else
int TF(int4_q8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
                  const uint16_t *sz, uint16_t *y) {
    return -3;  /* built for a CPU without AVX512_VNNI */
}
int TF(int8_q8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
                  const uint16_t *scales, uint16_t *y) {
    return -3;
}
#endif

/* ---- int8, one scale per output channel (the output head) --------------------------
 * y[m, n] = s_n * sum_k x_k q_nk with q in -127..127, exact in bf16. Layout
 * (generator.kernels.pack_int8): codes8[b][p] is 64 bytes for input pair p: half h (32 bytes)
 * holds channels 32b + 16h + j as the int8 pair (input 2p, input 2p + 1) at bytes 2j, 2j + 1.
 */
static inline __m512bh int8x32_to_bf16(const int8_t *p) {
    __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
    __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16))));
    return _mm512_cvtne2ps_pbh(hi, lo);  /* exact: small integers */
}

#define DEFINE_I8_TILE(MT)                                                                   \
static void i8_tile_##MT(const mm_args *a, int64_t b, int64_t r0) {                         \
    const uint32_t *xp = a->xp;                                                              \
    const int64_t K = a->K, N = a->N;                                                        \
    const int8_t *codes = (const int8_t *)a->codes;                                          \
    const uint16_t *scales = a->scales;                                                      \
    uint16_t *y = a->y;                                                                      \
    __m512 acc0[MT], acc1[MT];                                                               \
    for (int r = 0; r < MT; r++) { acc0[r] = _mm512_setzero_ps(); acc1[r] = _mm512_setzero_ps(); } \
    const int64_t P = K / 2;                                                                 \
    const int8_t *cb = codes + b * P * 64;                                                   \
    for (int64_t p = 0; p < P; p++) {                                                        \
        const __m512bh w0 = int8x32_to_bf16(cb + p * 64), w1 = int8x32_to_bf16(cb + p * 64 + 32); \
        for (int r = 0; r < MT; r++) {                                                       \
            const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xp[(r0 + r) * P + p]);      \
            acc0[r] = _mm512_dpbf16_ps(acc0[r], xv, w0);                                     \
            acc1[r] = _mm512_dpbf16_ps(acc1[r], xv, w1);                                     \
        }                                                                                    \
    }                                                                                        \
    const __m512 s0 = bf16x16_to_ps(scales + b * 32), s1 = bf16x16_to_ps(scales + b * 32 + 16); \
    for (int r = 0; r < MT; r++) {                                                           \
        uint16_t *yr = y + (r0 + r) * N + b * 32;                                            \
        _mm256_storeu_si256((__m256i *)yr, ps_to_bf16x16(_mm512_mul_ps(acc0[r], s0)));       \
        _mm256_storeu_si256((__m256i *)(yr + 16), ps_to_bf16x16(_mm512_mul_ps(acc1[r], s1))); \
    }                                                                                        \
}

TILES(DEFINE_I8_TILE, i8)

/* x: bf16 [M, K]; codes as above; scales: bf16 [N]; y: bf16 [M, N]. N % 32 == 0, K even. */
int TF(int8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const int8_t *codes,
               const uint16_t *scales, uint16_t *y) {
    if (M <= 0 || N % 32 || K % 2) return -1;
    const mm_args a = {(const uint32_t *)x, NULL, K, N, codes, scales, y, NULL, NULL};
    run_tiles(&a, M, 32, i8_tiles);
    return 0;
}

/* exp(x) for float32: a degree-6 polynomial on the reduced argument, scaled by 2^n
 * (within about 1 float32 unit of libm's; overflow gives inf, underflow 0). */
static inline __m512 exp_ps(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 bf16_round(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(ps_to_bf16x16(v)), 16));
}

/* The 16 lane sums of v[0..15], in order: out[m] = sum of v[m]'s lanes (45 shuffles and
 * adds where 16 separate reductions take about three times as many). */
static inline __m512 hsum16(const __m512 *v) {
    __m512 a[8], b[4];
    for (int i = 0; i < 8; i++)  /* per 128-bit block: [x0+x2, y0+y2, x1+x3, y1+y3] */
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)  /* per block k: the block's sums of v[4i .. 4i + 3] */
        b[i] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0xEE));
    const __m512 c0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x88), _mm512_shuffle_f32x4(b[0], b[1], 0xDD));
    const __m512 c1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], 0x88), _mm512_shuffle_f32x4(b[2], b[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, 0x88), _mm512_shuffle_f32x4(c0, c1, 0xDD));
}

/* ---- one-token attention over the KV cache (the eager batched step) ----------------
 * For row b and query head h (kv head h / group): softmax(q . K[slot, kvh, :n] * scale)
 * . V[slot, kvh, :n] with n = lengths[b], all in float32 from bf16 inputs, output bf16:
 * the arithmetic of the float32 matmul path it replaces, without upcasting the cache or
 * a dozen small ops a layer. q: [B, H, D]; caches: [S, KVH, L, D]; D % 16 == 0, D <= 256,
 * at most 16 query heads a kv head. A job is one (row, kv head): each key and value row
 * is converted once for all the query heads of its group, and the scores of 16
 * positions are reduced together. Slots and lengths are checked here, per row, so the
 * caller needs no host read of them.
 */
/* One (row, kv head): G query heads of D = 16 DV values over the n positions at K, V.
 * Inlined with constant G and DV for the common shapes, so the queries and the outputs
 * stay in registers. Returns 0, or 4: no memory. */
static inline __attribute__((always_inline)) int attention_job(
        const uint16_t *qh, const uint16_t *K, const uint16_t *V, int64_t n, const int64_t G,
        const int64_t DV, float scale, uint16_t *oh) {
    const int64_t D = DV * 16, nb = (n + 15) / 16 * 16;
    float *scores = (float *)malloc(sizeof(float) * G * nb);  /* [G][nb] */
    if (!scores) return 4;
    __m512 qs[16 * 16];  /* [G][DV] scaled queries */
    for (int64_t g = 0; g < G; g++)
        for (int64_t c = 0; c < DV; c++)
            qs[g * DV + c] = _mm512_mul_ps(bf16x16_to_ps(qh + g * D + 16 * c), _mm512_set1_ps(scale));
    __m512 part[16 * 16];  /* [G][16]: per query head, 16 positions' products */
    for (int64_t j0 = 0; j0 < n; j0 += 16) {
        const int64_t m = n - j0 < 16 ? n - j0 : 16;
        for (int64_t jj = 0; jj < 16; jj++) {
            if (jj >= m) {  /* past the row's end: zeros, dropped below */
                for (int64_t g = 0; g < G; g++) part[g * 16 + jj] = _mm512_setzero_ps();
                continue;
            }
            __m512 kv[16];
            for (int64_t c = 0; c < DV; c++) kv[c] = bf16x16_to_ps(K + (j0 + jj) * D + 16 * c);
            for (int64_t g = 0; g < G; g++) {
                __m512 acc = _mm512_mul_ps(qs[g * DV], kv[0]);
                for (int64_t c = 1; c < DV; c++) acc = _mm512_fmadd_ps(qs[g * DV + c], kv[c], acc);
                part[g * 16 + jj] = acc;
            }
        }
        for (int64_t g = 0; g < G; g++) _mm512_storeu_ps(scores + g * nb + j0, hsum16(part + g * 16));
    }
    float inv[16];
    const __mmask16 tail = (__mmask16)((1u << (n % 16 ? n % 16 : 16)) - 1);
    for (int64_t g = 0; g < G; g++) {
        float *sg = scores + g * nb;
        __m512 mx = _mm512_set1_ps(-FLT_MAX);
        for (int64_t j = 0; j < nb; j += 16)
            mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-FLT_MAX), j + 16 < nb ? 0xFFFF : tail, sg + j));
        const __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < nb; j += 16) {
            const __m512 e = _mm512_maskz_mov_ps(j + 16 < nb ? 0xFFFF : tail, exp_ps(_mm512_sub_ps(_mm512_loadu_ps(sg + j), mv)));
            _mm512_storeu_ps(sg + j, e);
            sum = _mm512_add_ps(sum, e);
        }
        inv[g] = 1.f / _mm512_reduce_add_ps(sum);
    }
    __m512 o[16 * 16];  /* [G][DV] */
    for (int64_t i = 0; i < G * DV; i++) o[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j++) {
        __m512 vv[16];
        for (int64_t c = 0; c < DV; c++) vv[c] = bf16x16_to_ps(V + j * D + 16 * c);
        for (int64_t g = 0; g < G; g++) {
            const __m512 p = _mm512_set1_ps(scores[g * nb + j]);
            for (int64_t c = 0; c < DV; c++) o[g * DV + c] = _mm512_fmadd_ps(p, vv[c], o[g * DV + c]);
        }
    }
    for (int64_t g = 0; g < G; g++)
        for (int64_t c = 0; c < DV; c++)
            _mm256_storeu_si256((__m256i *)(oh + g * D + 16 * c), ps_to_bf16x16(_mm512_mul_ps(o[g * DV + c], _mm512_set1_ps(inv[g]))));
    free(scores);
    return 0;
}

static int attention_job_3x4(const uint16_t *qh, const uint16_t *K, const uint16_t *V, int64_t n, float scale,
                             uint16_t *oh) {
    return attention_job(qh, K, V, n, 3, 4, scale, oh);  /* SmolLM2: 3 query heads a kv head, D = 64 */
}

static int attention_job_any(const uint16_t *qh, const uint16_t *K, const uint16_t *V, int64_t n, int64_t G,
                             int64_t DV, float scale, uint16_t *oh) {
    return attention_job(qh, K, V, n, G, DV, scale, oh);
}

int TF(decode_attention)(const uint16_t *q, const uint16_t *k_cache, const uint16_t *v_cache,
                        const int64_t *slots, const int64_t *lengths, int64_t B, int64_t H, int64_t S,
                        int64_t KVH, int64_t L, int64_t D, float scale, uint16_t *out) {
    if (D % 16 || D > 256 || H % KVH || H / KVH > 16) return -8;
    const int64_t G = H / KVH, DV = D / 16;
    int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad)
    for (int64_t job = 0; job < B * KVH; job++) {
        const int64_t b = job / KVH, kh = job % KVH;
        const int64_t n = lengths[b];
        if (n < 1 || n > L) { bad |= 1; continue; }
        if (slots[b] < 0 || slots[b] >= S) { bad |= 2; continue; }
        const uint16_t *K = k_cache + ((slots[b] * KVH + kh) * L) * D;
        const uint16_t *V = v_cache + ((slots[b] * KVH + kh) * L) * D;
        const uint16_t *qh = q + (b * H + kh * G) * D;
        uint16_t *oh = out + (b * H + kh * G) * D;
        bad |= G == 3 && DV == 4 ? attention_job_3x4(qh, K, V, n, scale, oh)
                                 : attention_job_any(qh, K, V, n, G, DV, scale, oh);
    }
    return -bad;  /* 0, or -(1: a length out of range | 2: a slot out of range | 4: no memory); -8: shapes */
}
/* ---- RMSNorm as transformers' LlamaRMSNorm computes it in bf16 ------------------------
 * y = bf16(w * float(bf16(x * rsqrt(mean(x^2) + eps)))) per row of D values, w float32:
 * one op where the eager forward ran nine. x, y: bf16 [R, D]; D % 16 == 0.
 */
int TF(rms_norm)(const uint16_t *x, const float *w, int64_t R, int64_t D, float eps, uint16_t *y) {
    if (D % 16) return -1;
#pragma omp parallel for schedule(static) if (R > 4)
    for (int64_t r = 0; r < R; r++) {
        const uint16_t *xr = x + r * D;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t c = 0; c < D; c += 16) {
            const __m512 v = bf16x16_to_ps(xr + c);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        const float inv = 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)D + eps);
        const __m512 s = _mm512_set1_ps(inv);
        for (int64_t c = 0; c < D; c += 16) {
            const __m512 h = _mm512_mul_ps(bf16x16_to_ps(xr + c), s);
            /* round h to bf16 and back, as h.to(x.dtype) does, then times the float32 weight */
            const __m256i hb = ps_to_bf16x16(h);
            const __m512 hr = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(hb), 16));
            _mm256_storeu_si256((__m256i *)(y + r * D + c), ps_to_bf16x16(_mm512_mul_ps(_mm512_loadu_ps(w + c), hr)));
        }
    }
    return 0;
}

/* ---- SiLU(gate) * up, as the eager bf16 forward computes it --------------------------
 * y = bf16(bf16(g / (1 + exp(-g))) * u) for gu = [gate | up] rows of 2I bf16 values:
 * one op where the eager forward ran chunk, silu and mul. exp is a degree-6 polynomial on
 * the reduced argument, scaled by 2^n (within about 1 float32 unit of libm's, far below
 * the bf16 rounding that follows; overflow gives inf and g / inf = -0, as PyTorch's). */
int TF(silu_mul)(const uint16_t *gu, int64_t R, int64_t I, uint16_t *y) {
    if (I % 16) return -1;
#pragma omp parallel for schedule(static) if (R * I >= 16384)
    for (int64_t r = 0; r < R; r++) {
        const uint16_t *g = gu + r * 2 * I, *u = g + I;
        for (int64_t c = 0; c < I; c += 16) {
            const __m512 gv = bf16x16_to_ps(g + c);
            const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), gv));
            const __m512 s = bf16_round(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
            _mm256_storeu_si256((__m256i *)(y + r * I + c), ps_to_bf16x16(_mm512_mul_ps(s, bf16x16_to_ps(u + c))));
        }
    }
    return 0;
}

/* ---- greedy pick: argmax and its log-probability, one pass for each -------------------
 * For each row of float32 logits [B, V]: the first index of the largest value (as
 * torch.argmax) and log_softmax at it, -log(sum exp(x - max)). Where PyTorch ran a
 * log_softmax over the whole row (writing it) and an argmax that is not vectorized
 * (16 x 49152: 250 + 365 us), two vector passes. A row with a NaN gets NaN. */
int TF(greedy_pick)(const float *logits, int64_t B, int64_t V, int64_t *ids, float *logprobs) {
#pragma omp parallel for schedule(static) if (B > 1)
    for (int64_t b = 0; b < B; b++) {
        const float *x = logits + b * V;
        __m512 best = _mm512_set1_ps(-INFINITY);
        __m512i at = _mm512_set1_epi32(0x7FFFFFFF);
        __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i sixteen = _mm512_set1_epi32(16);
        __mmask16 nan = 0;
        int64_t j = 0;
        for (; j + 16 <= V; j += 16) {
            const __m512 v = _mm512_loadu_ps(x + j);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            const __mmask16 gt = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);  /* strictly: keeps the first */
            best = _mm512_mask_mov_ps(best, gt, v);
            at = _mm512_mask_mov_epi32(at, gt, idx);
            idx = _mm512_add_epi32(idx, sixteen);
        }
        float mx = _mm512_reduce_max_ps(best);
        int64_t arg = -1;
        if (j > 0) {  /* the lowest index among the lanes holding the maximum; all -inf: 0 */
            const __mmask16 hit = _mm512_cmp_ps_mask(best, _mm512_set1_ps(mx), _CMP_EQ_OQ);
            arg = mx > -INFINITY ? _mm512_mask_reduce_min_epi32(hit, at) : 0;
        }
        for (; j < V; j++) {
            if (x[j] != x[j]) nan = 1;
            if (arg < 0 || x[j] > mx) { mx = x[j]; arg = j; }
        }
        __m512 sum = _mm512_setzero_ps();
        const __m512 m = _mm512_set1_ps(mx);
        for (j = 0; j + 16 <= V; j += 16) sum = _mm512_add_ps(sum, exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), m)));
        float total = _mm512_reduce_add_ps(sum);
        for (; j < V; j++) total += expf(x[j] - mx);
        ids[b] = arg;
        logprobs[b] = nan ? NAN : (mx == -INFINITY ? NAN : -logf(total));
    }
    return 0;
}

/* ---- RoPE and the KV-cache writes of a one-token step ----------------------------------
 * qkv [B, (H + 2 KVH) D] bf16 (one token a row): q and k heads rotated as the eager
 * forward does, x * cos + roll(x, D/2) * sin_signed with each product and the sum rounded
 * to bf16 (the tables hold bf16 values per position), k and v written into cache row
 * slots[b] at positions[b], q returned [B, H, D]. One op where the eager forward ran a
 * dozen (index, mul, roll, add, two index_put) a layer. D % 16 == 0. */
int TF(rope_write)(const uint16_t *qkv, const uint16_t *cos_t, const uint16_t *sin_t, int64_t npos,
                  uint16_t *k_cache, uint16_t *v_cache, const int64_t *slots, const int64_t *positions,
                  int64_t B, int64_t H, int64_t KVH, int64_t S, int64_t L, int64_t D, uint16_t *q_out) {
    if (D % 16 || D > 256) return -8;
    const int64_t W = (H + 2 * KVH) * D, half = D / 2;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (B >= 8)
    for (int64_t b = 0; b < B; b++) {
        const int64_t pos = positions[b], slot = slots[b];
        if (pos < 0 || pos >= L || pos >= npos) { bad |= 1; continue; }
        if (slot < 0 || slot >= S) { bad |= 2; continue; }
        const uint16_t *c = cos_t + pos * D, *sn = sin_t + pos * D;
        for (int64_t h = 0; h < H + KVH; h++) {
            const uint16_t *x = qkv + b * W + h * D;
            uint16_t *dst = h < H ? q_out + (b * H + h) * D : k_cache + ((slot * KVH + (h - H)) * L + pos) * D;
            uint16_t rolled[256];  /* roll(x, D/2), when half a head is not whole vectors */
            if (half % 16)
                for (int64_t j = 0; j < D; j++) rolled[j] = x[(j + half) % D];
            for (int64_t j = 0; j < D; j += 16) {
                const uint16_t *xr = half % 16 ? rolled + j : x + (j + half) % D;
                const __m512 a = bf16_round(_mm512_mul_ps(bf16x16_to_ps(x + j), bf16x16_to_ps(c + j)));
                const __m512 r = bf16_round(_mm512_mul_ps(bf16x16_to_ps(xr), bf16x16_to_ps(sn + j)));
                _mm256_storeu_si256((__m256i *)(dst + j), ps_to_bf16x16(_mm512_add_ps(a, r)));
            }
        }
        for (int64_t kh = 0; kh < KVH; kh++)
            memcpy(v_cache + ((slot * KVH + kh) * L + pos) * D, qkv + b * W + (H + KVH + kh) * D, D * sizeof(uint16_t));
    }
    return -bad;  /* 0, or -(1: a position out of range | 2: a slot out of range); -8: head_dim */
}
#endif
