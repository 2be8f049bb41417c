/* tokenflow, the avx2 tier: every op in AVX2 + FMA (+ F16C), 8 float lanes.
 *
 * The packed layouts are the avx512 tier's (tier.h); a job here is 8 output channels (half
 * a block of 16, a quarter of the int8 head's 32) and a tile of up to 4 rows, so a tile's
 * accumulators and codes fit in the 16 vector registers.
 *
 * int8 activations (the default on this tier): x rounded per row and group of 32 as the
 * avx512 tier does, then vpmaddubsw (unsigned x signed bytes, adjacent pairs summed into
 * int16) and vpmaddwd by ones (pairs of those into int32): the products of four inputs a
 * 32-bit lane, exact, as vpdpbusd would. The int4 codes (0..15) times int8 inputs stay
 * below 2 x 15 x 127 a pair, so a whole group of 32 inputs sums in int16 (8 x 3810 <
 * 32767) and is widened once. The int8 head's codes (stored q + 128) are turned back into
 * signed q and multiplied as |q| x (x with q's sign) (vpsignb), which cannot saturate.
 *
 * bf16 activations: the codes are widened to float32 and multiplied by the float32 inputs
 * with FMA (no bf16 dot product in AVX2).
 */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

#include "tier.h"

#define TILE 4 /* rows a matmul tile holds */

static inline __m256 bf16x8_to_ps(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* float32 -> bf16, round to nearest even (as PyTorch's conversion; NaN stays NaN). */
static inline __m128i ps_to_bf16x8(__m256 v) {
    const __m256i i = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(i, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(i, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r),
                                             _mm256_castsi256_ps(_mm256_or_si256(i, _mm256_set1_epi32(0x00400000))), nan));
    const __m256i packed = _mm256_packus_epi32(_mm256_srli_epi32(r, 16), _mm256_setzero_si256());
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));  /* lane 0's and lane 1's low halves */
}

static inline __m256 bf16_round(__m256 v) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(ps_to_bf16x8(v)), 16));
}

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline float hmax_ps(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

/* exp(x): the avx512 tier's polynomial on the reduced argument; 2^n made as two halves
 * (2^(n/2) 2^(n - n/2)) so that overflow gives inf and underflow 0 without a scalef.
 * NaN stays NaN (min/max return their second operand when it is NaN). */
static inline __m256 exp_ps(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-104.f), _mm256_min_ps(_mm256_set1_ps(104.f), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

/* ---- matmuls: shared plumbing ------------------------------------------------------------ */
typedef struct {
    const void *x;       /* float32 rows (bf16 activations) or int8 codes (int8 activations) */
    const float *xs;     /* per (row, group): the float32 sum of x */
    const float *xd;     /* int8 x: each (row, group)'s step */
    const int32_t *xb;   /* int8 x: bias times each (row, group)'s sum of codes */
    int64_t K, N;
    const void *codes;
    const uint16_t *scales;
    uint16_t *y;
} mm_args;

typedef void (*tile_fn)(const mm_args *a, int64_t u, int64_t r0);

#define TILES(DEFINE, prefix)                                                                        \
    DEFINE(1) DEFINE(2) DEFINE(3) DEFINE(4)                                                          \
    static const tile_fn prefix##_tiles[TILE + 1] = {0, prefix##_tile_1, prefix##_tile_2, prefix##_tile_3, \
                                                     prefix##_tile_4};

/* Row tiles as even as possible, OpenMP over units of 8 channels; a unit's tiles on one
 * thread, so its codes stay in cache. */
static void run_tiles(const mm_args *a, int64_t M, const tile_fn *tiles) {
    const int64_t n_tiles = (M + TILE - 1) / TILE, units = a->N / 8;
#pragma omp parallel for schedule(static)
    for (int64_t job = 0; job < units * n_tiles; job++) {
        const int64_t u = job / n_tiles, t = job % n_tiles;
        const int64_t r0 = t * M / n_tiles, r1 = (t + 1) * M / n_tiles;
        tiles[r1 - r0](a, u, r0);
    }
}

/* x [M, K] bf16 -> float32 rows and per-group sums (one malloc'd block; NULL: no memory). */
static float *widen_rows(const uint16_t *x, int64_t M, int64_t K, float **xs_out) {
    const int64_t NG = K / GROUP;
    float *xf = (float *)malloc(sizeof(float) * (M * K + M * NG));
    if (!xf) return NULL;
    for (int64_t i = 0; i < M * K; i += 8) _mm256_storeu_ps(xf + i, bf16x8_to_ps(x + i));
    float *xs = xf + M * K;
    for (int64_t i = 0; i < M * NG; i++) {
        const float *v = xf + i * GROUP;
        xs[i] = hsum_ps(_mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(v), _mm256_loadu_ps(v + 8)),
                                      _mm256_add_ps(_mm256_loadu_ps(v + 16), _mm256_loadu_ps(v + 24))));
    }
    *xs_out = xs;
    return xf;
}

/* ---- int4 x bf16 (generator.kernels.pack) ------------------------------------------------
 * Unit u: channels 8u .. 8u + 7, the 16 bytes (u % 2) of each quad's 32 in block u / 2:
 * byte 2c + i, low nibble input 4q + i, high nibble 4q + 2 + i. A byte shuffle puts the
 * i = 0 bytes of the 8 channels first, so each input's 8 codes widen with one vpmovzxbd. */
#define DEFINE_F_TILE(MT)                                                                           \
static void f_tile_##MT(const mm_args *a, int64_t u, int64_t r0) {                                  \
    const float *xf = (const float *)a->x, *xs = a->xs;                                             \
    const int64_t K = a->K, N = a->N, NG = K / GROUP, Q = K / 4;                                    \
    const uint8_t *cb = (const uint8_t *)a->codes + (u >> 1) * Q * 32 + (u & 1) * 16;              \
    const uint16_t *sb = a->scales + (u >> 1) * NG * 32 + (u & 1) * 8;                              \
    const __m128i shuf = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);       \
    const __m128i lo4 = _mm_set1_epi8(0x0F);                                                        \
    __m256 acc[MT];                                                                                 \
    for (int r = 0; r < MT; r++) acc[r] = _mm256_setzero_ps();                                      \
    for (int64_t g = 0; g < NG; g++) {                                                              \
        __m256 p0[MT], p1[MT];                                                                      \
        for (int r = 0; r < MT; r++) p0[r] = p1[r] = _mm256_setzero_ps();                           \
        for (int64_t q = g * 8; q < g * 8 + 8; q++) {                                               \
            const __m128i c = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(cb + q * 32)), shuf); \
            const __m128i lo = _mm_and_si128(c, lo4), hi = _mm_and_si128(_mm_srli_epi16(c, 4), lo4); \
            const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));                          \
            const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));       \
            const __m256 w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));                          \
            const __m256 w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));       \
            for (int r = 0; r < MT; r++) {                                                          \
                const float *xr = xf + (r0 + r) * K + 4 * q;                                        \
                p0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(xr), w0, p0[r]);                        \
                p1[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 1), w1, p1[r]);                    \
                p0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 2), w2, p0[r]);                    \
                p1[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 3), w3, p1[r]);                    \
            }                                                                                       \
        }                                                                                           \
        const __m256 s = bf16x8_to_ps(sb + g * 32);                                                 \
        const __m256 zb = _mm256_fnmadd_ps(_mm256_set1_ps(8.f), s, bf16x8_to_ps(sb + g * 32 + 16)); \
        for (int r = 0; r < MT; r++)                                                                \
            acc[r] = _mm256_fmadd_ps(_mm256_add_ps(p0[r], p1[r]), s,                                \
                                     _mm256_fmadd_ps(_mm256_set1_ps(xs[(r0 + r) * NG + g]), zb, acc[r])); \
    }                                                                                               \
    for (int r = 0; r < MT; r++)                                                                    \
        _mm_storeu_si128((__m128i *)(a->y + (r0 + r) * N + u * 8), ps_to_bf16x8(acc[r]));            \
}

TILES(DEFINE_F_TILE, f)

int TF(int4_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes, const uint16_t *sz,
                uint16_t *y) {
    if (M <= 0 || N % 16 || K % GROUP) return -1;
    float *xs;
    float *xf = widen_rows(x, M, K, &xs);
    if (!xf) return -2;
    const mm_args a = {xf, xs, NULL, NULL, K, N, codes, sz, y};
    run_tiles(&a, M, f_tiles);
    free(xf);
    return 0;
}

/* ---- int8 x bf16, one scale per channel (generator.kernels.pack_int8): the head ----------
 * Unit u: channels 8u .. 8u + 7 = bytes 16 (u % 4) .. of each input pair's 64 in block u / 4,
 * as (input 2p, input 2p + 1) per channel. */
#define DEFINE_I8_TILE(MT)                                                                          \
static void i8_tile_##MT(const mm_args *a, int64_t u, int64_t r0) {                                 \
    const float *xf = (const float *)a->x;                                                          \
    const int64_t K = a->K, N = a->N, P = K / 2;                                                    \
    const int8_t *cb = (const int8_t *)a->codes + (u >> 2) * P * 64 + (u & 3) * 16;                \
    const __m128i shuf = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);       \
    __m256 acc0[MT], acc1[MT];                                                                      \
    for (int r = 0; r < MT; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();                           \
    for (int64_t p = 0; p < P; p++) {                                                               \
        const __m128i c = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(cb + p * 64)), shuf);  \
        const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));                               \
        const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c, 8)));            \
        for (int r = 0; r < MT; r++) {                                                              \
            const float *xr = xf + (r0 + r) * K + 2 * p;                                            \
            acc0[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(xr), w0, acc0[r]);                        \
            acc1[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 1), w1, acc1[r]);                    \
        }                                                                                           \
    }                                                                                               \
    const __m256 s = bf16x8_to_ps(a->scales + u * 8);                                               \
    for (int r = 0; r < MT; r++)                                                                    \
        _mm_storeu_si128((__m128i *)(a->y + (r0 + r) * N + u * 8),                                  \
                         ps_to_bf16x8(_mm256_mul_ps(_mm256_add_ps(acc0[r], acc1[r]), s)));          \
}

TILES(DEFINE_I8_TILE, i8)

int TF(int8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const int8_t *codes, const uint16_t *scales,
                uint16_t *y) {
    if (M <= 0 || N % 32 || K % 2) return -1;
    float *xf = (float *)malloc(sizeof(float) * M * K);
    if (!xf) return -2;
    for (int64_t i = 0; i < M * K; i++) xf[i] = bf16_to_f32(x[i]);
    const mm_args a = {xf, NULL, NULL, NULL, K, N, codes, scales, y};
    run_tiles(&a, M, i8_tiles);
    free(xf);
    return 0;
}

/* ---- int8 activations --------------------------------------------------------------------
 * x rounded per row and group of 32 (step max|x| / 127, nearest even), with per (row, group)
 * the step, the exact float32 sum of x and bias times the sum of the codes. */
static void *quantize_rows(const uint16_t *x, int64_t M, int64_t K, int32_t bias, q8_x *out) {
    const int64_t n = M * (K / GROUP);
    void *buf = q8_alloc(M, K, out);
    if (!buf) return NULL;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n; i++) {
        __m256 v[4];
        for (int j = 0; j < 4; j++) v[j] = bf16x8_to_ps(x + i * GROUP + 8 * j);
        out->xs[i] = hsum_ps(_mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3])));
        const float amax = hmax_ps(_mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                                 _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]))));
        const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        __m256i q[4];
        for (int j = 0; j < 4; j++) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));
        /* int32 -> int8 with the 128-bit lanes' order undone: packs interleave lanes */
        const __m256i w16 = _mm256_packs_epi32(q[0], q[1]), w16b = _mm256_packs_epi32(q[2], q[3]);
        const __m256i b8 = _mm256_packs_epi16(w16, w16b);
        const __m256i ordered = _mm256_permutevar8x32_epi32(b8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(out->xq + i * GROUP), ordered);
        const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
        out->xd[i] = amax / 127.f;
        out->xb[i] = bias * _mm_cvtsi128_si32(t);
    }
    return buf;
}

static inline __m256i bcast32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* int4 x int8 (generator.kernels.pack_q8): unit u = the 32 bytes (u % 2) of each octet's 64
 * in block u / 2: byte 4c + i is channel c, low nibble input 8o + i, high nibble 8o + 4 + i. */
#define DEFINE_Q8_TILE(MT)                                                                          \
static void q8_tile_##MT(const mm_args *a, int64_t u, int64_t r0) {                                 \
    const int8_t *xq = (const int8_t *)a->x;                                                        \
    const float *xs = a->xs, *xd = a->xd;                                                           \
    const int32_t *xb = a->xb;                                                                      \
    const int64_t K = a->K, N = a->N, NG = K / GROUP;                                               \
    const uint8_t *cb = (const uint8_t *)a->codes + (u >> 1) * (K / 8) * 64 + (u & 1) * 32;        \
    const uint16_t *sb = a->scales + (u >> 1) * NG * 32 + (u & 1) * 8;                              \
    const __m256i lo4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);                        \
    __m256 acc[MT];                                                                                 \
    for (int r = 0; r < MT; r++) acc[r] = _mm256_setzero_ps();                                      \
    for (int64_t g = 0; g < NG; g++) {                                                              \
        __m256i p[MT];                                                                              \
        for (int r = 0; r < MT; r++) p[r] = _mm256_setzero_si256();                                 \
        for (int64_t o = g * 4; o < g * 4 + 4; o++) {                                               \
            const __m256i c = _mm256_loadu_si256((const __m256i *)(cb + o * 64));                    \
            const __m256i w0 = _mm256_and_si256(c, lo4), w1 = _mm256_and_si256(_mm256_srli_epi16(c, 4), lo4); \
            for (int r = 0; r < MT; r++) {                                                          \
                const int8_t *xr = xq + (r0 + r) * K + 8 * o;                                       \
                p[r] = _mm256_add_epi16(p[r], _mm256_maddubs_epi16(w0, bcast32(xr)));               \
                p[r] = _mm256_add_epi16(p[r], _mm256_maddubs_epi16(w1, bcast32(xr + 4)));           \
            }                                                                                       \
        }                                                                                           \
        const __m256 s = bf16x8_to_ps(sb + g * 32), z = bf16x8_to_ps(sb + g * 32 + 16);             \
        for (int r = 0; r < MT; r++) {                                                              \
            const int64_t i = (r0 + r) * NG + g;                                                    \
            const __m256 t = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_madd_epi16(p[r], ones),     \
                                                                 _mm256_set1_epi32(xb[i])));         \
            acc[r] = _mm256_fmadd_ps(t, _mm256_mul_ps(s, _mm256_set1_ps(xd[i])),                    \
                                     _mm256_fmadd_ps(z, _mm256_set1_ps(xs[i]), acc[r]));            \
        }                                                                                           \
    }                                                                                               \
    for (int r = 0; r < MT; r++)                                                                    \
        _mm_storeu_si128((__m128i *)(a->y + (r0 + r) * N + u * 8), ps_to_bf16x8(acc[r]));            \
}

TILES(DEFINE_Q8_TILE, q8)

/* int8 x int8 (generator.kernels.pack_int8_q8): unit u = the 32 bytes (u % 2) of each quad's
 * 64 in block u / 2: byte 4c + i is channel c, input 4o + i, stored q + 128. */
#define DEFINE_Q8H_TILE(MT)                                                                         \
static void q8h_tile_##MT(const mm_args *a, int64_t u, int64_t r0) {                                \
    const int8_t *xq = (const int8_t *)a->x;                                                        \
    const float *xd = a->xd;                                                                        \
    const int64_t K = a->K, N = a->N, NG = K / GROUP;                                               \
    const uint8_t *cb = (const uint8_t *)a->codes + (u >> 1) * (K / 4) * 64 + (u & 1) * 32;        \
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);                 \
    __m256 acc[MT];                                                                                 \
    for (int r = 0; r < MT; r++) acc[r] = _mm256_setzero_ps();                                      \
    for (int64_t g = 0; g < NG; g++) {                                                              \
        __m256i p[MT];                                                                              \
        for (int r = 0; r < MT; r++) p[r] = _mm256_setzero_si256();                                 \
        for (int64_t o = g * 8; o < g * 8 + 8; o++) {                                               \
            const __m256i w = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(cb + o * 64)), flip); \
            const __m256i aw = _mm256_abs_epi8(w);                                                  \
            for (int r = 0; r < MT; r++) {                                                          \
                const __m256i sx = _mm256_sign_epi8(bcast32(xq + (r0 + r) * K + 4 * o), w);          \
                p[r] = _mm256_add_epi32(p[r], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones)); \
            }                                                                                       \
        }                                                                                           \
        for (int r = 0; r < MT; r++)                                                                \
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[r]), _mm256_set1_ps(xd[(r0 + r) * NG + g]), acc[r]); \
    }                                                                                               \
    const __m256 s = bf16x8_to_ps(a->scales + u * 8);                                               \
    for (int r = 0; r < MT; r++)                                                                    \
        _mm_storeu_si128((__m128i *)(a->y + (r0 + r) * N + u * 8), ps_to_bf16x8(_mm256_mul_ps(acc[r], s))); \
}

TILES(DEFINE_Q8H_TILE, q8h)

static int run_q8(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes, const uint16_t *scales,
                  uint16_t *y, int32_t bias, const tile_fn *tiles) {
    if (M <= 0 || N % 16 || K % GROUP) return -1;
    q8_x q;
    void *buf = quantize_rows(x, M, K, bias, &q);
    if (!buf) return -2;
    const mm_args a = {q.xq, q.xs, q.xd, q.xb, K, N, codes, scales, y};
    run_tiles(&a, M, tiles);
    free(buf);
    return 0;
}

int TF(int4_q8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes, const uint16_t *sz,
                   uint16_t *y) {
    return run_q8(x, M, K, N, codes, sz, y, 8, q8_tiles);
}

int TF(int8_q8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
                   const uint16_t *scales, uint16_t *y) {
    return run_q8(x, M, K, N, codes, scales, y, 0, q8h_tiles);  /* signed products: no bias to take out */
}

/* ---- one-token attention over the KV cache (see avx512.c) --------------------------------
 * A job is one (row, kv head); each key and value row is widened once for the G query heads
 * of its group. Inlined with constant G and DV (D / 8) for SmolLM2's shape. */
static inline __attribute__((always_inline)) int attention_job(
        const uint16_t *qh, const uint16_t *K, const uint16_t *V, int64_t n, const int64_t G, const int64_t DV,
        float scale, uint16_t *oh) {
    const int64_t D = DV * 8;
    float *scores = (float *)malloc(sizeof(float) * G * n);  /* [G][n] */
    if (!scores) return 4;
    __m256 qs[16 * 32], o[16 * 32];  /* [G][DV] */
    for (int64_t g = 0; g < G; g++)
        for (int64_t c = 0; c < DV; c++) {
            qs[g * DV + c] = _mm256_mul_ps(bf16x8_to_ps(qh + g * D + 8 * c), _mm256_set1_ps(scale));
            o[g * DV + c] = _mm256_setzero_ps();
        }
    for (int64_t j = 0; j < n; j++) {
        __m256 kv[32];
        for (int64_t c = 0; c < DV; c++) kv[c] = bf16x8_to_ps(K + j * D + 8 * c);
        for (int64_t g = 0; g < G; g++) {
            __m256 acc = _mm256_mul_ps(qs[g * DV], kv[0]);
            for (int64_t c = 1; c < DV; c++) acc = _mm256_fmadd_ps(qs[g * DV + c], kv[c], acc);
            scores[g * n + j] = hsum_ps(acc);
        }
    }
    float inv[16];
    for (int64_t g = 0; g < G; g++) {
        float *sg = scores + g * n, mx = -FLT_MAX;
        for (int64_t j = 0; j < n; j++) mx = sg[j] > mx ? sg[j] : mx;
        const __m256 mv = _mm256_set1_ps(mx);
        __m256 sum = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) {
            const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(sg + j), mv));
            _mm256_storeu_ps(sg + j, e);
            sum = _mm256_add_ps(sum, e);
        }
        float total = hsum_ps(sum);
        if (j < n) {  /* the tail through a zero-padded vector */
            float tail[8] = {0};
            memcpy(tail, sg + j, sizeof(float) * (n - j));
            _mm256_storeu_ps(tail, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(tail), mv)));
            for (int64_t t = 0; t < n - j; t++) total += sg[j + t] = tail[t];
        }
        inv[g] = 1.f / total;
    }
    for (int64_t j = 0; j < n; j++) {
        __m256 vv[32];
        for (int64_t c = 0; c < DV; c++) vv[c] = bf16x8_to_ps(V + j * D + 8 * c);
        for (int64_t g = 0; g < G; g++) {
            const __m256 p = _mm256_set1_ps(scores[g * n + j]);
            for (int64_t c = 0; c < DV; c++) o[g * DV + c] = _mm256_fmadd_ps(p, vv[c], o[g * DV + c]);
        }
    }
    for (int64_t g = 0; g < G; g++)
        for (int64_t c = 0; c < DV; c++)
            _mm_storeu_si128((__m128i *)(oh + g * D + 8 * c), ps_to_bf16x8(_mm256_mul_ps(o[g * DV + c], _mm256_set1_ps(inv[g]))));
    free(scores);
    return 0;
}

static int attention_job_3x8(const uint16_t *qh, const uint16_t *K, const uint16_t *V, int64_t n, float scale,
                             uint16_t *oh) {
    return attention_job(qh, K, V, n, 3, 8, scale, oh);  /* SmolLM2: 3 query heads a kv head, D = 64 */
}

static int attention_job_any(const uint16_t *qh, const uint16_t *K, const uint16_t *V, int64_t n, int64_t G,
                             int64_t DV, float scale, uint16_t *oh) {
    return attention_job(qh, K, V, n, G, DV, scale, oh);
}

int TF(decode_attention)(const uint16_t *q, const uint16_t *k_cache, const uint16_t *v_cache, const int64_t *slots,
                         const int64_t *lengths, int64_t B, int64_t H, int64_t S, int64_t KVH, int64_t L, int64_t D,
                         float scale, uint16_t *out) {
    if (D % 16 || D > 256 || H % KVH || H / KVH > 16) return -8;
    const int64_t G = H / KVH, DV = D / 8;
    int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad)
    for (int64_t job = 0; job < B * KVH; job++) {
        const int64_t b = job / KVH, kh = job % KVH, n = lengths[b];
        if (n < 1 || n > L) { bad |= 1; continue; }
        if (slots[b] < 0 || slots[b] >= S) { bad |= 2; continue; }
        const uint16_t *K = k_cache + ((slots[b] * KVH + kh) * L) * D;
        const uint16_t *V = v_cache + ((slots[b] * KVH + kh) * L) * D;
        const uint16_t *qh = q + (b * H + kh * G) * D;
        uint16_t *oh = out + (b * H + kh * G) * D;
        bad |= G == 3 && DV == 8 ? attention_job_3x8(qh, K, V, n, scale, oh)
                                 : attention_job_any(qh, K, V, n, G, DV, scale, oh);
    }
    return -bad;
}

/* ---- RMSNorm as transformers' LlamaRMSNorm in bf16 (see avx512.c) ------------------------- */
int TF(rms_norm)(const uint16_t *x, const float *w, int64_t R, int64_t D, float eps, uint16_t *y) {
    if (D % 16) return -1;
#pragma omp parallel for schedule(static) if (R > 4)
    for (int64_t r = 0; r < R; r++) {
        const uint16_t *xr = x + r * D;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        for (int64_t c = 0; c < D; c += 16) {
            const __m256 v0 = bf16x8_to_ps(xr + c), v1 = bf16x8_to_ps(xr + c + 8);
            acc0 = _mm256_fmadd_ps(v0, v0, acc0);
            acc1 = _mm256_fmadd_ps(v1, v1, acc1);
        }
        const __m256 s = _mm256_set1_ps(1.0f / sqrtf(hsum_ps(_mm256_add_ps(acc0, acc1)) / (float)D + eps));
        for (int64_t c = 0; c < D; c += 8) {
            const __m256 h = bf16_round(_mm256_mul_ps(bf16x8_to_ps(xr + c), s));
            _mm_storeu_si128((__m128i *)(y + r * D + c), ps_to_bf16x8(_mm256_mul_ps(_mm256_loadu_ps(w + c), h)));
        }
    }
    return 0;
}

/* ---- SiLU(gate) * up (see avx512.c) --------------------------------------------------------- */
int TF(silu_mul)(const uint16_t *gu, int64_t R, int64_t I, uint16_t *y) {
    if (I % 16) return -1;
#pragma omp parallel for schedule(static) if (R * I >= 16384)
    for (int64_t r = 0; r < R; r++) {
        const uint16_t *g = gu + r * 2 * I, *u = g + I;
        for (int64_t c = 0; c < I; c += 8) {
            const __m256 gv = bf16x8_to_ps(g + c);
            const __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), gv));
            const __m256 s = bf16_round(_mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
            _mm_storeu_si128((__m128i *)(y + r * I + c), ps_to_bf16x8(_mm256_mul_ps(s, bf16x8_to_ps(u + c))));
        }
    }
    return 0;
}

/* ---- greedy pick: argmax (the first of equal maxima) and log_softmax at it ------------------ */
int TF(greedy_pick)(const float *logits, int64_t B, int64_t V, int64_t *ids, float *logprobs) {
#pragma omp parallel for schedule(static) if (B > 1)
    for (int64_t b = 0; b < B; b++) {
        const float *x = logits + b * V;
        __m256 best = _mm256_set1_ps(-INFINITY), nanv = _mm256_setzero_ps();
        __m256i at = _mm256_set1_epi32(0x7FFFFFFF), idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        int64_t j = 0;
        for (; j + 8 <= V; j += 8) {
            const __m256 v = _mm256_loadu_ps(x + j);
            nanv = _mm256_or_ps(nanv, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            const __m256 gt = _mm256_cmp_ps(v, best, _CMP_GT_OQ);  /* strictly: keeps the first */
            best = _mm256_blendv_ps(best, v, gt);
            at = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(at), _mm256_castsi256_ps(idx), gt));
            idx = _mm256_add_epi32(idx, _mm256_set1_epi32(8));
        }
        int nan = _mm256_movemask_ps(nanv) != 0;
        float mx = hmax_ps(best);
        int64_t arg = -1;
        if (j > 0) {  /* the lowest index among the lanes holding the maximum; all -inf: 0 */
            float bv[8];
            int32_t bi[8];
            _mm256_storeu_ps(bv, best);
            _mm256_storeu_si256((__m256i *)bi, at);
            arg = 0;
            if (mx > -INFINITY) {
                int32_t lowest = 0x7FFFFFFF;
                for (int l = 0; l < 8; l++)
                    if (bv[l] == mx && bi[l] < lowest) lowest = bi[l];
                arg = lowest;
            }
        }
        for (; j < V; j++) {
            if (x[j] != x[j]) nan = 1;
            if (arg < 0 || x[j] > mx) { mx = x[j]; arg = j; }
        }
        __m256 sum = _mm256_setzero_ps();
        const __m256 m = _mm256_set1_ps(mx);
        for (j = 0; j + 8 <= V; j += 8) sum = _mm256_add_ps(sum, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), m)));
        float total = hsum_ps(sum);
        for (; j < V; j++) total += expf(x[j] - mx);
        ids[b] = arg;
        logprobs[b] = nan ? NAN : (mx == -INFINITY ? NAN : -logf(total));
    }
    return 0;
}

/* ---- RoPE and the KV-cache writes of a one-token step (see avx512.c) ------------------------ */
int TF(rope_write)(const uint16_t *qkv, const uint16_t *cos_t, const uint16_t *sin_t, int64_t npos,
                   uint16_t *k_cache, uint16_t *v_cache, const int64_t *slots, const int64_t *positions, int64_t B,
                   int64_t H, int64_t KVH, int64_t S, int64_t L, int64_t D, uint16_t *q_out) {
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
            const uint16_t *xh = qkv + b * W + h * D;
            uint16_t *dst = h < H ? q_out + (b * H + h) * D : k_cache + ((slot * KVH + (h - H)) * L + pos) * D;
            uint16_t rolled[256];  /* roll(x, D/2), when half a head is not whole vectors */
            if (half % 8)
                for (int64_t j = 0; j < D; j++) rolled[j] = xh[(j + half) % D];
            for (int64_t j = 0; j < D; j += 8) {
                const uint16_t *xr = half % 8 ? rolled + j : xh + (j + half) % D;
                const __m256 a = bf16_round(_mm256_mul_ps(bf16x8_to_ps(xh + j), bf16x8_to_ps(c + j)));
                const __m256 r = bf16_round(_mm256_mul_ps(bf16x8_to_ps(xr), bf16x8_to_ps(sn + j)));
                _mm_storeu_si128((__m128i *)(dst + j), ps_to_bf16x8(_mm256_add_ps(a, r)));
            }
        }
        for (int64_t kh = 0; kh < KVH; kh++)
            memcpy(v_cache + ((slot * KVH + kh) * L + pos) * D, qkv + b * W + (H + KVH + kh) * D, D * sizeof(uint16_t));
    }
    return -bad;
}
