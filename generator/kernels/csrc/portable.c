/* tokenflow, the portable tier: every op in plain C, for any CPU with a C compiler.
 *
 * No intrinsics: the loops are written so that the compiler vectorizes them for whatever
 * the target has (SSE2 on any x86-64, NEON on aarch64): channels of a block in the
 * innermost loop, integer sums for the int8-activation matmuls (exact in any order, so
 * they vectorize without -ffast-math), lane-wise partial sums where a float reduction is
 * needed. The same packed layouts and the same arithmetic as the avx512 tier (see
 * avx512.c and tier.h); float sums may run in another order, so outputs can differ from
 * the other tiers' by a bf16 unit.
 *
 * Also the readable statement of what each kernel computes: the vector tiers are
 * tested against it (tests/generator/test_kernel_tiers.py).
 */
#include <math.h>
#include <stdlib.h>

#include "tier.h"

#define LANES 16 /* partial sums a float reduction keeps, as a 16-wide vector would */

static float sum_lanes(const float *v) {
    float s = 0.f;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}

/* x [M, K] bf16 -> float32, and the per-(row, group) sums of x. One malloc'd block. */
static float *widen_rows(const uint16_t *x, int64_t M, int64_t K, float **xs_out) {
    const int64_t NG = K / GROUP;
    float *xf = (float *)malloc(sizeof(float) * (M * K + M * NG));
    if (!xf) return NULL;
    float *xs = xf + M * K;
    for (int64_t i = 0; i < M * K; i++) xf[i] = bf16_to_f32(x[i]);
    for (int64_t i = 0; i < M * NG; i++) {
        float part[LANES];
        for (int j = 0; j < LANES; j++) part[j] = xf[i * GROUP + j] + xf[i * GROUP + LANES + j];
        xs[i] = sum_lanes(part);
    }
    *xs_out = xs;
    return xf;
}

/* ---- int4 x bf16 (generator.kernels.pack) ----------------------------------------------
 * Block b of 16 channels, quad q: 32 bytes, byte 2c + i = channel c, low nibble input
 * 4q + i, high nibble input 4q + 2 + i. Per group: s * sum x q + (z - 8 s) * sum x. */
int TF(int4_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes, const uint16_t *sz,
                uint16_t *y) {
    if (M <= 0 || N % 16 || K % GROUP) return -1;
    const int64_t NG = K / GROUP, Q = K / 4;
    float *xs;
    float *xf = widen_rows(x, M, K, &xs);
    if (!xf) return -2;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < N / 16; b++) {
        const uint8_t *cb = codes + b * Q * 32;
        const uint16_t *sb = sz + b * NG * 32;
        for (int64_t m = 0; m < M; m++) {
            float acc[16] = {0};
            for (int64_t g = 0; g < NG; g++) {
                float p[16] = {0};
                for (int64_t q = g * 8; q < g * 8 + 8; q++) {
                    const float *xr = xf + m * K + 4 * q;
                    const uint8_t *c = cb + q * 32;
                    for (int ch = 0; ch < 16; ch++)
                        p[ch] += xr[0] * (float)(c[2 * ch] & 15) + xr[1] * (float)(c[2 * ch + 1] & 15) +
                                 xr[2] * (float)(c[2 * ch] >> 4) + xr[3] * (float)(c[2 * ch + 1] >> 4);
                }
                const float xsum = xs[m * NG + g];
                for (int ch = 0; ch < 16; ch++) {
                    const float s = bf16_to_f32(sb[g * 32 + ch]), z = bf16_to_f32(sb[g * 32 + 16 + ch]);
                    acc[ch] += p[ch] * s + xsum * (z - 8.f * s);
                }
            }
            for (int ch = 0; ch < 16; ch++) y[m * N + b * 16 + ch] = f32_to_bf16(acc[ch]);
        }
    }
    free(xf);
    return 0;
}

/* ---- int8 activations: x rounded per row and group of 32 ---------------------------------
 * Step d = max|x| / 127, codes round(x / d) (nearest even; 0 for an all-zero group), with
 * the exact float32 sum of x and bias times the sum of the codes, as the avx512 tier. */
static void *quantize_rows(const uint16_t *x, int64_t M, int64_t K, int32_t bias, q8_x *out) {
    const int64_t n = M * (K / GROUP);
    void *buf = q8_alloc(M, K, out);
    if (!buf) return NULL;
    for (int64_t i = 0; i < n; i++) {
        float v[GROUP], part[LANES], amax = 0.f;
        for (int j = 0; j < GROUP; j++) {
            v[j] = bf16_to_f32(x[i * GROUP + j]);
            amax = fmaxf(amax, fabsf(v[j]));
        }
        for (int j = 0; j < LANES; j++) part[j] = v[j] + v[j + LANES];
        out->xs[i] = sum_lanes(part);
        const float inv = amax > 0.f ? 127.f / amax : 0.f;
        int32_t total = 0;
        for (int j = 0; j < GROUP; j++) {
            const int32_t q = (int32_t)lrintf(v[j] * inv);
            out->xq[i * GROUP + j] = (int8_t)q;
            total += q;
        }
        out->xd[i] = amax / 127.f;
        out->xb[i] = bias * total;
    }
    return buf;
}

/* int4 x int8 (generator.kernels.pack_q8): block b of 16 channels, octet o: 64 bytes, byte
 * 4c + i = channel c, low nibble input 8o + i, high nibble input 8o + 4 + i. Per group:
 * s d (sum xq q - 8 sum xq) + z sum x, the integer sums exact. */
int TF(int4_q8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes, const uint16_t *sz,
                   uint16_t *y) {
    if (M <= 0 || N % 16 || K % GROUP) return -1;
    const int64_t NG = K / GROUP;
    q8_x qx;
    void *buf = quantize_rows(x, M, K, 8, &qx);
    if (!buf) return -2;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < N / 16; b++) {
        const uint8_t *cb = codes + b * (K / 8) * 64;
        const uint16_t *sb = sz + b * NG * 32;
        for (int64_t m = 0; m < M; m++) {
            float acc[16] = {0};
            for (int64_t g = 0; g < NG; g++) {
                int32_t p[16] = {0};
                for (int64_t o = g * 4; o < g * 4 + 4; o++) {
                    const int8_t *xr = qx.xq + m * K + 8 * o;
                    const uint8_t *c = cb + o * 64;
                    for (int ch = 0; ch < 16; ch++)
                        for (int i = 0; i < 4; i++)
                            p[ch] += (int32_t)(c[4 * ch + i] & 15) * xr[i] + (int32_t)(c[4 * ch + i] >> 4) * xr[4 + i];
                }
                const int64_t i = m * NG + g;
                for (int ch = 0; ch < 16; ch++) {
                    const float s = bf16_to_f32(sb[g * 32 + ch]), z = bf16_to_f32(sb[g * 32 + 16 + ch]);
                    acc[ch] += (float)(p[ch] - qx.xb[i]) * (s * qx.xd[i]) + z * qx.xs[i];
                }
            }
            for (int ch = 0; ch < 16; ch++) y[m * N + b * 16 + ch] = f32_to_bf16(acc[ch]);
        }
    }
    free(buf);
    return 0;
}

/* ---- int8 x bf16, one scale per channel (generator.kernels.pack_int8): the head --------
 * Block b of 32 channels, input pair p: 64 bytes, byte 32h + 2c + i = channel 16h + c,
 * input 2p + i. */
int TF(int8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const int8_t *codes, const uint16_t *scales,
                uint16_t *y) {
    if (M <= 0 || N % 32 || K % 2) return -1;
    const int64_t P = K / 2;
    float *xf = (float *)malloc(sizeof(float) * M * K);
    if (!xf) return -2;
    for (int64_t i = 0; i < M * K; i++) xf[i] = bf16_to_f32(x[i]);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < N / 32; b++) {
        const int8_t *cb = codes + b * P * 64;
        for (int64_t m = 0; m < M; m++) {
            float acc[32] = {0};
            for (int64_t p = 0; p < P; p++) {
                const float x0 = xf[m * K + 2 * p], x1 = xf[m * K + 2 * p + 1];
                const int8_t *c = cb + p * 64;
                for (int ch = 0; ch < 32; ch++) acc[ch] += x0 * (float)c[2 * ch] + x1 * (float)c[2 * ch + 1];
            }
            for (int ch = 0; ch < 32; ch++)
                y[m * N + b * 32 + ch] = f32_to_bf16(acc[ch] * bf16_to_f32(scales[b * 32 + ch]));
        }
    }
    free(xf);
    return 0;
}

/* int8 x int8 (generator.kernels.pack_int8_q8): block b of 16 channels, quad o: 64 bytes,
 * byte 4c + i = channel c, input 4o + i, stored as q + 128. y = s sum_g d_g sum q xq. */
int TF(int8_q8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
                   const uint16_t *scales, uint16_t *y) {
    if (M <= 0 || N % 16 || K % GROUP) return -1;
    const int64_t NG = K / GROUP;
    q8_x qx;
    void *buf = quantize_rows(x, M, K, 0, &qx);
    if (!buf) return -2;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < N / 16; b++) {
        const uint8_t *cb = codes + b * (K / 4) * 64;
        for (int64_t m = 0; m < M; m++) {
            float acc[16] = {0};
            for (int64_t g = 0; g < NG; g++) {
                int32_t p[16] = {0};
                for (int64_t o = g * 8; o < g * 8 + 8; o++) {
                    const int8_t *xr = qx.xq + m * K + 4 * o;
                    const uint8_t *c = cb + o * 64;
                    for (int ch = 0; ch < 16; ch++)
                        for (int i = 0; i < 4; i++) p[ch] += ((int32_t)c[4 * ch + i] - 128) * xr[i];
                }
                const float d = qx.xd[m * NG + g];
                for (int ch = 0; ch < 16; ch++) acc[ch] += (float)p[ch] * d;
            }
            for (int ch = 0; ch < 16; ch++)
                y[m * N + b * 16 + ch] = f32_to_bf16(acc[ch] * bf16_to_f32(scales[b * 16 + ch]));
        }
    }
    free(buf);
    return 0;
}

/* ---- one-token attention over the KV cache --------------------------------------------
 * Row b, query head h (kv head h / G): softmax(q . K[slot, kvh, :n] * scale) . V, float32
 * from bf16, output bf16. q [B, H, D]; caches [S, KVH, L, D]. */
int TF(decode_attention)(const uint16_t *q, const uint16_t *k_cache, const uint16_t *v_cache, const int64_t *slots,
                         const int64_t *lengths, int64_t B, int64_t H, int64_t S, int64_t KVH, int64_t L, int64_t D,
                         float scale, uint16_t *out) {
    if (D % 16 || D > 256 || H % KVH || H / KVH > 16) return -8;
    const int64_t G = H / KVH;
    int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad)
    for (int64_t job = 0; job < B * KVH; job++) {
        const int64_t b = job / KVH, kh = job % KVH, n = lengths[b];
        if (n < 1 || n > L) { bad |= 1; continue; }
        if (slots[b] < 0 || slots[b] >= S) { bad |= 2; continue; }
        const uint16_t *K = k_cache + ((slots[b] * KVH + kh) * L) * D;
        const uint16_t *V = v_cache + ((slots[b] * KVH + kh) * L) * D;
        float *scores = (float *)malloc(sizeof(float) * n);
        if (!scores) { bad |= 4; continue; }
        for (int64_t g = 0; g < G; g++) {
            const uint16_t *qh = q + (b * H + kh * G + g) * D;
            float qs[256], o[256] = {0};
            for (int64_t d = 0; d < D; d++) qs[d] = bf16_to_f32(qh[d]) * scale;
            float mx = -INFINITY;
            for (int64_t j = 0; j < n; j++) {
                float part[LANES] = {0};
                for (int64_t d = 0; d < D; d += LANES)
                    for (int l = 0; l < LANES; l++) part[l] += qs[d + l] * bf16_to_f32(K[j * D + d + l]);
                scores[j] = sum_lanes(part);
                mx = fmaxf(mx, scores[j]);
            }
            float total = 0.f;
            for (int64_t j = 0; j < n; j++) {
                scores[j] = expf(scores[j] - mx);
                total += scores[j];
            }
            for (int64_t j = 0; j < n; j++)
                for (int64_t d = 0; d < D; d++) o[d] += scores[j] * bf16_to_f32(V[j * D + d]);
            const float inv = 1.f / total;
            uint16_t *oh = out + (b * H + kh * G + g) * D;
            for (int64_t d = 0; d < D; d++) oh[d] = f32_to_bf16(o[d] * inv);
        }
        free(scores);
    }
    return -bad;
}

/* ---- RMSNorm as transformers' LlamaRMSNorm in bf16 -------------------------------------
 * y = bf16(w * float(bf16(x * rsqrt(mean(x^2) + eps)))) per row of D values. */
int TF(rms_norm)(const uint16_t *x, const float *w, int64_t R, int64_t D, float eps, uint16_t *y) {
    if (D % 16) return -1;
#pragma omp parallel for schedule(static) if (R > 4)
    for (int64_t r = 0; r < R; r++) {
        const uint16_t *xr = x + r * D;
        float part[LANES] = {0};
        for (int64_t c = 0; c < D; c += LANES)
            for (int l = 0; l < LANES; l++) part[l] += bf16_to_f32(xr[c + l]) * bf16_to_f32(xr[c + l]);
        const float inv = 1.0f / sqrtf(sum_lanes(part) / (float)D + eps);
        for (int64_t c = 0; c < D; c++) y[r * D + c] = f32_to_bf16(w[c] * bf16_round_f32(bf16_to_f32(xr[c]) * inv));
    }
    return 0;
}

/* ---- SiLU(gate) * up: y = bf16(bf16(g / (1 + exp(-g))) * u) for rows [gate | up] -------- */
int TF(silu_mul)(const uint16_t *gu, int64_t R, int64_t I, uint16_t *y) {
    if (I % 16) return -1;
#pragma omp parallel for schedule(static) if (R * I >= 16384)
    for (int64_t r = 0; r < R; r++) {
        const uint16_t *g = gu + r * 2 * I, *u = g + I;
        for (int64_t c = 0; c < I; c++) {
            const float gv = bf16_to_f32(g[c]);
            const float s = bf16_round_f32(gv / (1.0f + expf(-gv)));
            y[r * I + c] = f32_to_bf16(s * bf16_to_f32(u[c]));
        }
    }
    return 0;
}

/* ---- greedy pick: per row, the first index of the maximum (torch.argmax's) and
 * log_softmax at it; a row with a NaN gets NaN, a row of -inf index 0 and NaN. */
int TF(greedy_pick)(const float *logits, int64_t B, int64_t V, int64_t *ids, float *logprobs) {
#pragma omp parallel for schedule(static) if (B > 1)
    for (int64_t b = 0; b < B; b++) {
        const float *x = logits + b * V;
        float mx = -INFINITY;
        int64_t arg = 0;
        int nan = 0;
        for (int64_t j = 0; j < V; j++) {
            if (x[j] != x[j]) nan = 1;
            if (x[j] > mx) { mx = x[j]; arg = j; }
        }
        float part[LANES] = {0};
        int64_t j = 0;
        for (; j + LANES <= V; j += LANES)
            for (int l = 0; l < LANES; l++) part[l] += expf(x[j + l] - mx);
        float total = sum_lanes(part);
        for (; j < V; j++) total += expf(x[j] - mx);
        ids[b] = arg;
        logprobs[b] = nan || mx == -INFINITY ? NAN : -logf(total);
    }
    return 0;
}

/* ---- RoPE and the KV-cache writes of a one-token step ---------------------------------
 * q and k heads: bf16(bf16(x * cos) + bf16(roll(x, D/2) * sin_signed)); k and v written at
 * (slots[b], positions[b]); q returned [B, H, D]. */
int TF(rope_write)(const uint16_t *qkv, const uint16_t *cos_t, const uint16_t *sin_t, int64_t npos,
                   uint16_t *k_cache, uint16_t *v_cache, const int64_t *slots, const int64_t *positions, int64_t B,
                   int64_t H, int64_t KVH, int64_t S, int64_t L, int64_t D, uint16_t *q_out) {
    if (D % 16 || D > 256) return -8;
    const int64_t W = (H + 2 * KVH) * D, half = D / 2;
    int bad = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t pos = positions[b], slot = slots[b];
        if (pos < 0 || pos >= L || pos >= npos) { bad |= 1; continue; }
        if (slot < 0 || slot >= S) { bad |= 2; continue; }
        const uint16_t *c = cos_t + pos * D, *sn = sin_t + pos * D;
        for (int64_t h = 0; h < H + KVH; h++) {
            const uint16_t *xh = qkv + b * W + h * D;
            uint16_t *dst = h < H ? q_out + (b * H + h) * D : k_cache + ((slot * KVH + (h - H)) * L + pos) * D;
            for (int64_t j = 0; j < D; j++) {
                const float a = bf16_round_f32(bf16_to_f32(xh[j]) * bf16_to_f32(c[j]));
                const float r = bf16_round_f32(bf16_to_f32(xh[(j + half) % D]) * bf16_to_f32(sn[j]));
                dst[j] = f32_to_bf16(a + r);
            }
        }
        for (int64_t kh = 0; kh < KVH; kh++)
            memcpy(v_cache + ((slot * KVH + kh) * L + pos) * D, qkv + b * W + (H + KVH + kh) * D, D * sizeof(uint16_t));
    }
    return -bad;
}
