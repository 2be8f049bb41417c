/* tokenflow: int4 weight-only matmul, AVX-512 with bf16 dot products (AVX512_BF16).
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
 * Layout (cpukernel.pack): channels in blocks of 32. codes[b][p] is 32 bytes for the
 * input pair p = (2p, 2p + 1): byte j of half h is channel 32b + 16h + j, low nibble
 * input 2p, high nibble input 2p + 1. sz[b][g] is 64 bf16: the 32 scales, then the 32
 * zero points of group g (inputs 32g .. 32g + 31) for the block's channels.
 *
 * Threads: OpenMP over channel blocks (a block's row tiles on one thread, so its codes
 * stay in cache). The library links libgomp by its soname, which resolves to the copy
 * PyTorch already loaded: one thread team for both.
 */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GROUP 32

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

/* Arguments every matmul tile reads: x as bf16 pairs, per-group sums of x (int4 only),
 * the packed weight and its scales, and the output. */
typedef struct {
    const uint32_t *xp;
    const float *xs;
    int64_t K, N;
    const void *codes;
    const uint16_t *scales;
    uint16_t *y;
} mm_args;

typedef void (*tile_fn)(const mm_args *a, int64_t b, int64_t r0);

#define DEFINE_DP_TILE(MT)                                                                   \
static void dp_tile_##MT(const mm_args *a, int64_t b, int64_t r0) {                         \
    const uint32_t *xp = a->xp;                                                              \
    const float *xs = a->xs;                                                                 \
    const int64_t K = a->K, N = a->N;                                                        \
    const uint8_t *codes = (const uint8_t *)a->codes;                                        \
    const uint16_t *sz = a->scales;                                                          \
    uint16_t *y = a->y;                                                                      \
    /* bf16 bit patterns of -8 .. 7, indexed by the code q */                              \
    const uint16_t LUT[32] = {0xC100, 0xC0E0, 0xC0C0, 0xC0A0, 0xC080, 0xC040, 0xC000, 0xBF80, \
                              0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0, \
                              0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};               \
    const __m512i lut = _mm512_loadu_si512(LUT);                                             \
    const __m512i lo4 = _mm512_set1_epi32(0x0000000F), hi4 = _mm512_set1_epi32(0x000F0000);  \
    __m512 acc0[MT], acc1[MT];                                                               \
    for (int r = 0; r < MT; r++) { acc0[r] = _mm512_setzero_ps(); acc1[r] = _mm512_setzero_ps(); } \
    const int64_t P = K / 2, NG = K / GROUP;                                                 \
    const uint8_t *cb = codes + b * P * 32;                                                  \
    const uint16_t *sb = sz + b * NG * 64;                                                   \
    for (int64_t g = 0; g < NG; g++) {                                                       \
        __m512 p0[MT], p1[MT];                                                               \
        for (int r = 0; r < MT; r++) { p0[r] = _mm512_setzero_ps(); p1[r] = _mm512_setzero_ps(); } \
        for (int64_t p = g * (GROUP / 2); p < (g + 1) * (GROUP / 2); p++) {                  \
            __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cb + p * 32)));      \
            __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cb + p * 32 + 16))); \
            v0 = _mm512_or_si512(_mm512_and_si512(v0, lo4), _mm512_and_si512(_mm512_slli_epi32(v0, 12), hi4)); \
            v1 = _mm512_or_si512(_mm512_and_si512(v1, lo4), _mm512_and_si512(_mm512_slli_epi32(v1, 12), hi4)); \
            const __m512bh w0 = (__m512bh)_mm512_permutexvar_epi16(v0, lut);                 \
            const __m512bh w1 = (__m512bh)_mm512_permutexvar_epi16(v1, lut);                 \
            for (int r = 0; r < MT; r++) {                                                   \
                const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xp[(r0 + r) * P + p]);  \
                p0[r] = _mm512_dpbf16_ps(p0[r], xv, w0);                                     \
                p1[r] = _mm512_dpbf16_ps(p1[r], xv, w1);                                     \
            }                                                                                \
        }                                                                                    \
        const __m512 s0 = bf16x16_to_ps(sb + g * 64), s1 = bf16x16_to_ps(sb + g * 64 + 16);  \
        const __m512 z0 = bf16x16_to_ps(sb + g * 64 + 32), z1 = bf16x16_to_ps(sb + g * 64 + 48); \
        for (int r = 0; r < MT; r++) {                                                       \
            const __m512 xsum = _mm512_set1_ps(xs[(r0 + r) * NG + g]);                       \
            acc0[r] = _mm512_fmadd_ps(p0[r], s0, _mm512_fmadd_ps(xsum, z0, acc0[r]));        \
            acc1[r] = _mm512_fmadd_ps(p1[r], s1, _mm512_fmadd_ps(xsum, z1, acc1[r]));        \
        }                                                                                    \
    }                                                                                        \
    for (int r = 0; r < MT; r++) {                                                           \
        uint16_t *yr = y + (r0 + r) * N + b * 32;                                            \
        _mm256_storeu_si256((__m256i *)yr, ps_to_bf16x16(acc0[r]));                          \
        _mm256_storeu_si256((__m256i *)(yr + 16), ps_to_bf16x16(acc1[r]));                   \
    }                                                                                        \
}

DEFINE_DP_TILE(1)
DEFINE_DP_TILE(2)
DEFINE_DP_TILE(3)
DEFINE_DP_TILE(4)
DEFINE_DP_TILE(5)
DEFINE_DP_TILE(6)
DEFINE_DP_TILE(7)
DEFINE_DP_TILE(8)

/* Row tiles as even as possible (16 rows -> 8 + 8), OpenMP over channel blocks; a block's
 * tiles run on one thread, so its codes stay in cache. */
static void run_tiles(const mm_args *a, int64_t M, const tile_fn *tiles) {
    const int64_t n_tiles = (M + DP_TILE - 1) / DP_TILE;
    const int64_t blocks = a->N / 32;
#pragma omp parallel for schedule(static)
    for (int64_t job = 0; job < blocks * n_tiles; job++) {
        const int64_t b = job / n_tiles, t = job % n_tiles;
        const int64_t r0 = t * M / n_tiles, r1 = (t + 1) * M / n_tiles;
        tiles[r1 - r0](a, b, r0);
    }
}

static const tile_fn DP_TILES[DP_TILE + 1] = {0, dp_tile_1, dp_tile_2, dp_tile_3, dp_tile_4,
                                              dp_tile_5, dp_tile_6, dp_tile_7, dp_tile_8};

/* x: bf16 [M, K]; codes, sz: as above; y: bf16 [M, N]. N % 32 == 0, K % 32 == 0. */
int tf_int4_mm(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
               const uint16_t *sz, uint16_t *y) {
    if (M <= 0 || N % 32 || K % GROUP) return -1;
    const int64_t NG = K / GROUP;
    float *xs = (float *)malloc(sizeof(float) * M * NG);
    if (!xs) return -2;
    for (int64_t r = 0; r < M; r++)
        for (int64_t g = 0; g < NG; g++) {
            float sum = 0.f;
            for (int64_t k = g * GROUP; k < (g + 1) * GROUP; k++) {
                uint32_t bits = (uint32_t)x[r * K + k] << 16;
                float v;
                memcpy(&v, &bits, 4);
                sum += v;
            }
            xs[r * NG + g] = sum;
        }
    const mm_args a = {(const uint32_t *)x, xs, K, N, codes, sz, y};
    run_tiles(&a, M, DP_TILES);
    free(xs);
    return 0;
}

/* ---- int8, one scale per output channel (the output head) --------------------------
 * y[m, n] = s_n * sum_k x_k q_nk with q in -127..127, exact in bf16. Layout
 * (cpukernel.pack_int8): codes8[b][p] is 64 bytes for input pair p: half h (32 bytes)
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

DEFINE_I8_TILE(1)
DEFINE_I8_TILE(2)
DEFINE_I8_TILE(3)
DEFINE_I8_TILE(4)
DEFINE_I8_TILE(5)
DEFINE_I8_TILE(6)
DEFINE_I8_TILE(7)
DEFINE_I8_TILE(8)

static const tile_fn I8_TILES[DP_TILE + 1] = {0, i8_tile_1, i8_tile_2, i8_tile_3, i8_tile_4,
                                              i8_tile_5, i8_tile_6, i8_tile_7, i8_tile_8};

/* x: bf16 [M, K]; codes as above; scales: bf16 [N]; y: bf16 [M, N]. N % 32 == 0, K even. */
int tf_int8_mm(const uint16_t *x, int64_t M, int64_t K, int64_t N, const int8_t *codes,
               const uint16_t *scales, uint16_t *y) {
    if (M <= 0 || N % 32 || K % 2) return -1;
    const mm_args a = {(const uint32_t *)x, NULL, K, N, codes, scales, y};
    run_tiles(&a, M, I8_TILES);
    return 0;
}

/* ---- one-token attention over the KV cache (the eager batched step) ----------------
 * For row b and query head h (kv head h / group): softmax(q . K[slot, kvh, :n] * scale)
 * . V[slot, kvh, :n] with n = lengths[b], all in float32 from bf16 inputs, output bf16:
 * the arithmetic of the float32 matmul path it replaces, without upcasting the cache or
 * a dozen small ops a layer. q: [B, H, D]; caches: [S, KVH, L, D]; D % 16 == 0, D <= 256.
 * Slots and lengths are checked here, per row, so the caller needs no host read of them.
 */
int tf_decode_attention(const uint16_t *q, const uint16_t *k_cache, const uint16_t *v_cache,
                        const int64_t *slots, const int64_t *lengths, int64_t B, int64_t H, int64_t S,
                        int64_t KVH, int64_t L, int64_t D, float scale, uint16_t *out) {
    if (D % 16 || D > 256 || H % KVH) return -8;
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
        float *scores = (float *)malloc(sizeof(float) * G * n);
        if (!scores) { bad |= 4; continue; }
        for (int64_t g = 0; g < G; g++) {
            const uint16_t *qh = q + (b * H + kh * G + g) * D;
            __m512 qv[16];
            for (int64_t c = 0; c < DV; c++) qv[c] = _mm512_mul_ps(bf16x16_to_ps(qh + 16 * c), _mm512_set1_ps(scale));
            float mx = -FLT_MAX;
            for (int64_t j = 0; j < n; j++) {
                __m512 acc = _mm512_setzero_ps();
                for (int64_t c = 0; c < DV; c++) acc = _mm512_fmadd_ps(qv[c], bf16x16_to_ps(K + j * D + 16 * c), acc);
                const float s = _mm512_reduce_add_ps(acc);
                scores[g * n + j] = s;
                mx = s > mx ? s : mx;
            }
            float sum = 0.f;
            for (int64_t j = 0; j < n; j++) {
                const float e = expf(scores[g * n + j] - mx);
                scores[g * n + j] = e;
                sum += e;
            }
            __m512 o[16];
            for (int64_t c = 0; c < DV; c++) o[c] = _mm512_setzero_ps();
            for (int64_t j = 0; j < n; j++) {
                const __m512 p = _mm512_set1_ps(scores[g * n + j]);
                for (int64_t c = 0; c < DV; c++) o[c] = _mm512_fmadd_ps(p, bf16x16_to_ps(V + j * D + 16 * c), o[c]);
            }
            const __m512 inv = _mm512_set1_ps(1.f / sum);
            uint16_t *oh = out + (b * H + kh * G + g) * D;
            for (int64_t c = 0; c < DV; c++)
                _mm256_storeu_si256((__m256i *)(oh + 16 * c), ps_to_bf16x16(_mm512_mul_ps(o[c], inv)));
        }
        free(scores);
    }
    return -bad;  /* 0, or -(1: a length out of range | 2: a slot out of range | 4: no memory); -8: shapes */
}
/* ---- RMSNorm as transformers' LlamaRMSNorm computes it in bf16 ------------------------
 * y = bf16(w * float(bf16(x * rsqrt(mean(x^2) + eps)))) per row of D values, w float32:
 * one op where the eager forward ran nine. x, y: bf16 [R, D]; D % 16 == 0.
 */
int tf_rms_norm(const uint16_t *x, const float *w, int64_t R, int64_t D, float eps, uint16_t *y) {
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
#endif
