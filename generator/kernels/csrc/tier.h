/* tokenflow: what every kernel tier defines, and the helpers they share.
 *
 * Each tier's source (avx512.c, avx2.c, portable.c) is compiled with its own ISA flags
 * and -DTF_TIER=<name>, so its functions are tf_<op>_<name>: one library holds every
 * tier the CPU can run and int4_op.cpp dispatches through the table of the chosen one.
 * All tiers read the same packed layouts (generator/kernels/ops.py: pack, pack_q8,
 * pack_int8, pack_int8_q8), so one packed model runs on any of them.
 *
 * Return codes, the same in every tier: 0; -1 shapes the kernel cannot tile; -2 or 4
 * no memory; -3 int8 activations not built; -8 head_dim/heads out of range; and for
 * attention and rope_write -(1: position or length out of range | 2: slot out of range).
 */
#ifndef TOKENFLOW_TIER_H
#define TOKENFLOW_TIER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef TF_TIER
#error "compile with -DTF_TIER=avx512|avx2|portable"
#endif
#define TF_CAT2(a, b) a##_##b
#define TF_CAT(a, b) TF_CAT2(a, b)
#define TF(name) TF_CAT(tf_##name, TF_TIER)

#define GROUP 32  /* inputs per scale/zero group (a GGUF Q4_1 block) and per int8 step */

int TF(int4_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes, const uint16_t *sz,
                uint16_t *y);
int TF(int4_q8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes, const uint16_t *sz,
                   uint16_t *y);
int TF(int8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const int8_t *codes, const uint16_t *scales,
                uint16_t *y);
int TF(int8_q8_mm)(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
                   const uint16_t *scales, uint16_t *y);
int TF(decode_attention)(const uint16_t *q, const uint16_t *k_cache, const uint16_t *v_cache, const int64_t *slots,
                         const int64_t *lengths, int64_t B, int64_t H, int64_t S, int64_t KVH, int64_t L, int64_t D,
                         float scale, uint16_t *out);
int TF(rms_norm)(const uint16_t *x, const float *w, int64_t R, int64_t D, float eps, uint16_t *y);
int TF(silu_mul)(const uint16_t *gu, int64_t R, int64_t I, uint16_t *y);
int TF(greedy_pick)(const float *logits, int64_t B, int64_t V, int64_t *ids, float *logprobs);
int TF(rope_write)(const uint16_t *qkv, const uint16_t *cos_t, const uint16_t *sin_t, int64_t npos,
                   uint16_t *k_cache, uint16_t *v_cache, const int64_t *slots, const int64_t *positions, int64_t B,
                   int64_t H, int64_t KVH, int64_t S, int64_t L, int64_t D, uint16_t *q_out);

/* bf16 <-> float32, one value (the vector tiers do the same per lane). */
static inline float bf16_to_f32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, as PyTorch's conversion; NaN stays a (quiet) NaN. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if (f != f) return (uint16_t)((u | 0x00400000u) >> 16);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float bf16_round_f32(float f) { return bf16_to_f32(f32_to_bf16(f)); }

/* Inputs rounded to int8 per row and group of GROUP (every tier's int8-activation matmuls):
 * the codes [M, K], then per (row, group) the step, the exact float32 sum of x, and the
 * bias times the sum of the codes; one allocation, freed by the caller. */
typedef struct { int8_t *xq; float *xs, *xd; int32_t *xb; } q8_x;

static inline void *q8_alloc(int64_t M, int64_t K, q8_x *out) {
    const int64_t n = M * (K / GROUP);
    char *buf = (char *)malloc(M * K + n * (2 * sizeof(float) + sizeof(int32_t)));
    if (!buf) return NULL;
    out->xq = (int8_t *)buf;
    out->xs = (float *)(buf + M * K);
    out->xd = out->xs + n;
    out->xb = (int32_t *)(out->xd + n);
    return buf;
}

#endif
