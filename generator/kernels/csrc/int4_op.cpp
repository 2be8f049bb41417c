// tokenflow: the kernels of each tier (avx512.c, avx2.c, portable.c) as PyTorch operators: tokenflow::int4_mm, int4_q8_mm,
// int8_mm, int8_q8_mm, decode_attention, rope_write, rms_norm, silu_mul, greedy_pick, and decode_layers
// (every decoder layer of a one-token step in one op, through the same kernels). As registered C++ ops they are called from eager code and from
// the compiled decode step's generated code alike, at the cost of an ATen op (a Python
// custom op added about 6 us a call, 121 calls a step). Built by generator/kernels/build.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cstring>
#include <string>
#include <tuple>
#include <vector>

// One table of kernels per tier built into this library (-DTF_HAVE_<TIER> from build.py);
// every op calls through the table of the tier chosen with tokenflow::use_tier.
#define TF_DECLARE(T)                                                                                          \
    extern "C" int tf_int4_mm_##T(const uint16_t *, int64_t, int64_t, int64_t, const uint8_t *, const uint16_t *, \
                                  uint16_t *);                                                                 \
    extern "C" int tf_int4_q8_mm_##T(const uint16_t *, int64_t, int64_t, int64_t, const uint8_t *,             \
                                     const uint16_t *, uint16_t *);                                            \
    extern "C" int tf_int8_q8_mm_##T(const uint16_t *, int64_t, int64_t, int64_t, const uint8_t *,             \
                                     const uint16_t *, uint16_t *);                                            \
    extern "C" int tf_int8_mm_##T(const uint16_t *, int64_t, int64_t, int64_t, const int8_t *, const uint16_t *, \
                                  uint16_t *);                                                                 \
    extern "C" int tf_silu_mul_##T(const uint16_t *, int64_t, int64_t, uint16_t *);                            \
    extern "C" int tf_greedy_pick_##T(const float *, int64_t, int64_t, int64_t *, float *);                    \
    extern "C" int tf_rope_write_##T(const uint16_t *, const uint16_t *, const uint16_t *, int64_t, uint16_t *, \
                                     uint16_t *, const int64_t *, const int64_t *, int64_t, int64_t, int64_t,   \
                                     int64_t, int64_t, int64_t, uint16_t *);                                   \
    extern "C" int tf_rms_norm_##T(const uint16_t *, const float *, int64_t, int64_t, float, uint16_t *);       \
    extern "C" int tf_decode_attention_##T(const uint16_t *, const uint16_t *, const uint16_t *, const int64_t *, \
                                           const int64_t *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                           float, uint16_t *);

TF_DECLARE(portable)
#ifdef TF_HAVE_AVX2
TF_DECLARE(avx2)
#endif
#ifdef TF_HAVE_AVX512
TF_DECLARE(avx512)
#endif

struct Tier {
    const char *name;
    decltype(&tf_int4_mm_portable) int4_mm;
    decltype(&tf_int4_q8_mm_portable) int4_q8_mm;
    decltype(&tf_int8_q8_mm_portable) int8_q8_mm;
    decltype(&tf_int8_mm_portable) int8_mm;
    decltype(&tf_silu_mul_portable) silu_mul;
    decltype(&tf_greedy_pick_portable) greedy_pick;
    decltype(&tf_rope_write_portable) rope_write;
    decltype(&tf_rms_norm_portable) rms_norm;
    decltype(&tf_decode_attention_portable) decode_attention;
};

#define TF_TIER_ENTRY(T)                                                                                       \
    Tier{#T, tf_int4_mm_##T, tf_int4_q8_mm_##T, tf_int8_q8_mm_##T, tf_int8_mm_##T, tf_silu_mul_##T,            \
         tf_greedy_pick_##T, tf_rope_write_##T, tf_rms_norm_##T, tf_decode_attention_##T}

namespace {

const Tier kTiers[] = {
#ifdef TF_HAVE_AVX512
    TF_TIER_ENTRY(avx512),
#endif
#ifdef TF_HAVE_AVX2
    TF_TIER_ENTRY(avx2),
#endif
    TF_TIER_ENTRY(portable),
};

// The tier every op runs: the best built, until use_tier picks another. A plain pointer
// read per call; switching while another thread runs an op is not supported.
const Tier *current = &kTiers[0];

// Switch every op to the named tier (one of tiers()); returns the previous one's name.
std::string use_tier(std::string name) {
    const std::string previous = current->name;
    for (const Tier &t : kTiers)
        if (name == t.name) {
            current = &t;
            return previous;
        }
    TORCH_CHECK(false, "tier ", name, " is not built into this library");
}

// The tiers built into this library, best first.
std::vector<std::string> tiers() {
    std::vector<std::string> names;
    for (const Tier &t : kTiers) names.emplace_back(t.name);
    return names;
}

// One weight-only matmul: x [M, K] bf16 times codes packed as [N / block, K / inputs_per_code, ...]
// with their bf16 scales (int4: sz per group; int8: one per output channel) -> y [M, N] bf16.
// The four kernels share this wrapper; they differ in the codes' C type and layout.
template <typename Code>
at::Tensor run_mm(int (*kernel)(const uint16_t *, int64_t, int64_t, int64_t, const Code *, const uint16_t *,
                                uint16_t *),
                  const char *name, int64_t block, int64_t inputs_per_code, bool per_channel,
                  const at::Tensor &x_in, const at::Tensor &codes, const at::Tensor &scales) {
    const at::Tensor x = x_in.contiguous();
    TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16, "x must be a 2-D bf16 tensor");
    TORCH_CHECK(codes.dim() == 3 && codes.is_contiguous(), "codes must be packed by generator.kernels.pack*");
    TORCH_CHECK(codes.size(1) * inputs_per_code == x.size(1), "x has ", x.size(1), " inputs, the weight ",
                codes.size(1) * inputs_per_code);
    at::Tensor y = at::empty({x.size(0), codes.size(0) * block}, x.options());
    TORCH_CHECK(scales.is_contiguous() && scales.scalar_type() == at::kBFloat16 &&
                (!per_channel || scales.numel() == y.size(1)),
                per_channel ? "scales must be bf16, one per output channel" : "sz must be packed by generator.kernels.pack*");
    const int rc = kernel(static_cast<const uint16_t *>(x.data_ptr()), x.size(0), x.size(1), y.size(1),
                          static_cast<const Code *>(codes.data_ptr()), static_cast<const uint16_t *>(scales.data_ptr()),
                          static_cast<uint16_t *>(y.data_ptr()));
    TORCH_CHECK(rc != -3, name, " kernel: int8 activations need AVX512_VNNI, which this build lacks");
    TORCH_CHECK(rc == 0, name, " kernel failed (", rc, ")");
    return y;
}

at::Tensor int4_mm(const at::Tensor &x, const at::Tensor &codes, const at::Tensor &sz) {
    return run_mm<uint8_t>(current->int4_mm, "int4", 16, 4, false, x, codes, sz);
}

at::Tensor int4_q8_mm(const at::Tensor &x, const at::Tensor &codes, const at::Tensor &sz) {
    return run_mm<uint8_t>(current->int4_q8_mm, "int4", 16, 8, false, x, codes, sz);
}

at::Tensor int8_mm(const at::Tensor &x, const at::Tensor &codes, const at::Tensor &scales) {
    return run_mm<int8_t>(current->int8_mm, "int8", 32, 2, true, x, codes, scales);
}

at::Tensor int8_q8_mm(const at::Tensor &x, const at::Tensor &codes, const at::Tensor &scales) {
    return run_mm<uint8_t>(current->int8_q8_mm, "int8", 16, 4, true, x, codes, scales);
}

at::Tensor decode_attention(const at::Tensor &q_in, const at::Tensor &k_cache, const at::Tensor &v_cache,
                            const at::Tensor &slots_in, const at::Tensor &lengths_in, double scale) {
    const at::Tensor q = q_in.contiguous();
    TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kBFloat16, "q must be [rows, heads, head_dim] bf16");
    TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                k_cache.sizes() == v_cache.sizes() && k_cache.scalar_type() == at::kBFloat16 &&
                v_cache.scalar_type() == at::kBFloat16, "caches must be contiguous bf16 [slots, kv_heads, len, head_dim]");
    TORCH_CHECK(k_cache.size(3) == q.size(2), "head_dim differs between q and the cache");
    const at::Tensor slots = slots_in.to(at::kLong).contiguous(), lengths = lengths_in.to(at::kLong).contiguous();
    TORCH_CHECK(slots.numel() == q.size(0) && lengths.numel() == q.size(0), "one slot and one length per row");
    at::Tensor out = at::empty_like(q);
    const int rc = current->decode_attention(
        static_cast<const uint16_t *>(q.data_ptr()), static_cast<const uint16_t *>(k_cache.data_ptr()),
        static_cast<const uint16_t *>(v_cache.data_ptr()), slots.data_ptr<int64_t>(), lengths.data_ptr<int64_t>(),
        q.size(0), q.size(1), k_cache.size(0), k_cache.size(1), k_cache.size(2), q.size(2),
        static_cast<float>(scale), static_cast<uint16_t *>(out.data_ptr()));
    TORCH_CHECK(rc != -8, "attention kernel: head_dim must be a multiple of 16 (at most 256), heads a multiple of kv_heads (at most 16 per kv head)");
    TORCH_CHECK(!(-rc & 1), "attention kernel: lengths must be 1 .. cache length");
    TORCH_CHECK(!(-rc & 2), "attention kernel: slot out of range");
    TORCH_CHECK(rc == 0, "attention kernel failed (", rc, ")");
    return out;
}

at::Tensor rms_norm(const at::Tensor &x_in, const at::Tensor &weight_in, double eps) {
    const at::Tensor x = x_in.contiguous();
    const at::Tensor weight = weight_in.to(at::kFloat).contiguous();
    TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() >= 1, "x must be bf16");
    const int64_t d = x.size(-1);
    TORCH_CHECK(weight.numel() == d, "weight has ", weight.numel(), " values, x rows ", d);
    at::Tensor y = at::empty_like(x);
    const int rc = current->rms_norm(static_cast<const uint16_t *>(x.data_ptr()), weight.data_ptr<float>(),
                               d ? x.numel() / d : 0, d, static_cast<float>(eps),
                               static_cast<uint16_t *>(y.data_ptr()));
    TORCH_CHECK(rc == 0, "rms_norm kernel needs the last dimension a multiple of 16, got ", d);
    return y;
}

at::Tensor silu_mul(const at::Tensor &gu_in) {
    const at::Tensor gu = gu_in.contiguous();
    TORCH_CHECK(gu.scalar_type() == at::kBFloat16 && gu.dim() >= 1 && gu.size(-1) % 32 == 0,
                "silu_mul needs bf16 [..., 2 * I] with I a multiple of 16");
    std::vector<int64_t> shape(gu.sizes().begin(), gu.sizes().end());
    const int64_t width = shape.back() / 2;
    shape.back() = width;
    at::Tensor y = at::empty(shape, gu.options());
    const int rc = current->silu_mul(static_cast<const uint16_t *>(gu.data_ptr()), width ? gu.numel() / (2 * width) : 0,
                               width, static_cast<uint16_t *>(y.data_ptr()));
    TORCH_CHECK(rc == 0, "silu_mul kernel failed (", rc, ")");
    return y;
}

std::tuple<at::Tensor, at::Tensor> greedy_pick(const at::Tensor &logits_in) {
    const at::Tensor logits = logits_in.contiguous();
    TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.size(1) > 0,
                "greedy_pick needs float32 logits [rows, vocab]");
    at::Tensor ids = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
    at::Tensor logprobs = at::empty({logits.size(0)}, logits.options());
    current->greedy_pick(logits.data_ptr<float>(), logits.size(0), logits.size(1), ids.data_ptr<int64_t>(),
                   logprobs.data_ptr<float>());
    return {ids, logprobs};
}

at::Tensor rope_write(const at::Tensor &qkv_in, const at::Tensor &cos, const at::Tensor &sin, at::Tensor k_cache,
                      at::Tensor v_cache, const at::Tensor &slots_in, const at::Tensor &positions_in, int64_t n_head) {
    const at::Tensor qkv = qkv_in.contiguous();
    TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                k_cache.sizes() == v_cache.sizes() && k_cache.scalar_type() == at::kBFloat16 &&
                v_cache.scalar_type() == at::kBFloat16, "caches must be contiguous bf16 [slots, kv_heads, len, head_dim]");
    const int64_t kvh = k_cache.size(1), d = k_cache.size(3);
    TORCH_CHECK(qkv.dim() == 2 && qkv.scalar_type() == at::kBFloat16 && qkv.size(1) == (n_head + 2 * kvh) * d,
                "qkv must be bf16 [rows, (heads + 2 kv_heads) * head_dim]");
    TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == at::kBFloat16 &&
                sin.scalar_type() == at::kBFloat16 && cos.dim() == 2 && cos.size(1) == d && sin.sizes() == cos.sizes(),
                "cos/sin must be contiguous bf16 [positions, head_dim]");
    const at::Tensor slots = slots_in.to(at::kLong).contiguous(), positions = positions_in.to(at::kLong).contiguous();
    TORCH_CHECK(slots.numel() == qkv.size(0) && positions.numel() == qkv.size(0), "one slot and one position per row");
    at::Tensor q = at::empty({qkv.size(0), n_head, d}, qkv.options());
    const int rc = current->rope_write(
        static_cast<const uint16_t *>(qkv.data_ptr()), static_cast<const uint16_t *>(cos.data_ptr()),
        static_cast<const uint16_t *>(sin.data_ptr()), cos.size(0), static_cast<uint16_t *>(k_cache.data_ptr()),
        static_cast<uint16_t *>(v_cache.data_ptr()), slots.data_ptr<int64_t>(), positions.data_ptr<int64_t>(),
        qkv.size(0), n_head, kvh, k_cache.size(0), k_cache.size(2), d, static_cast<uint16_t *>(q.data_ptr()));
    TORCH_CHECK(rc != -8, "rope_write: head_dim must be a multiple of 16 (at most 256)");
    TORCH_CHECK(!(-rc & 1), "rope_write: position out of range");
    TORCH_CHECK(!(-rc & 2), "rope_write: slot out of range");
    return q;
}

// bf16 <-> float32 as tier.h (a C header compiled per tier) does them: the residual adds below.
inline float bf16f(uint16_t h) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline uint16_t f32bf(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if (f != f) return static_cast<uint16_t>((u | 0x00400000u) >> 16);
    return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// x += y in bf16, each sum rounded once from float32: PyTorch's bf16 add, bit for bit.
void add_bf16(uint16_t *x, const uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] = f32bf(bf16f(x[i]) + bf16f(y[i]));
}

constexpr int64_t kLayerWeights = 10;  // attn_norm, qkv codes+sz, o codes+sz, mlp_norm, gate_up codes+sz, down codes+sz

// One int4 projection of the fused step: int8 activations (mode 1) or bf16 (mode 0).
void layer_mm(int64_t mode, const at::Tensor &codes, const at::Tensor &sz, const uint16_t *x, int64_t M, int64_t K,
              int64_t N, uint16_t *y) {
    const int64_t per_code = mode ? 8 : 4;
    TORCH_CHECK(codes.dim() == 3 && codes.is_contiguous() && codes.size(0) * 16 == N &&
                codes.size(1) * per_code == K && sz.is_contiguous() && sz.scalar_type() == at::kBFloat16,
                "decode_layers: a projection's codes do not match its shapes");
    const int rc = (mode ? current->int4_q8_mm : current->int4_mm)(
        x, M, K, N, static_cast<const uint8_t *>(codes.data_ptr()), static_cast<const uint16_t *>(sz.data_ptr()), y);
    TORCH_CHECK(rc != -3, "decode_layers: int8 activations need AVX512_VNNI, which this build lacks");
    TORCH_CHECK(rc == 0, "decode_layers: int4 kernel failed (", rc, ")");
}

// Every decoder layer of a one-token step in one op: x [B, H] bf16 (the embedded tokens) -> x
// after the last layer. The same kernels of the current tier in the same order, on the same
// inputs, as FastLlama.forward's eager path (rms_norm, qkv, rope_write, decode_attention, o,
// residual, rms_norm, gate_up, silu_mul, down, residual), so the same bits; what it saves is
// the ~11 Python calls and ATen dispatches a layer, and their output tensors (scratch here is
// allocated once a step). weights: kLayerWeights a layer (float32 norms, pack/pack_q8 codes);
// modes: 4 a layer (1: the projection takes int8 activations); caches: k, v a layer.
at::Tensor decode_layers(const at::Tensor &x_in, at::TensorList weights, at::IntArrayRef modes, at::TensorList caches,
                         const at::Tensor &cos, const at::Tensor &sin, const at::Tensor &slots_in,
                         const at::Tensor &positions_in, const at::Tensor &lengths_in, int64_t n_head, double eps,
                         double scale) {
    const int64_t n_layers = static_cast<int64_t>(caches.size()) / 2;
    TORCH_CHECK(static_cast<int64_t>(weights.size()) == n_layers * kLayerWeights &&
                static_cast<int64_t>(modes.size()) == n_layers * 4 && static_cast<int64_t>(caches.size()) == 2 * n_layers,
                "decode_layers: ", kLayerWeights, " weights, 4 modes and 2 caches a layer");
    at::Tensor x = x_in.contiguous().clone();
    TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.size(1) % 16 == 0,
                "decode_layers: x must be bf16 [rows, hidden] with hidden a multiple of 16");
    const int64_t B = x.size(0), H = x.size(1);
    TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == at::kBFloat16 &&
                sin.scalar_type() == at::kBFloat16 && cos.dim() == 2 && sin.sizes() == cos.sizes(),
                "decode_layers: cos/sin must be contiguous bf16 [positions, head_dim]");
    const at::Tensor slots = slots_in.to(at::kLong).contiguous(), positions = positions_in.to(at::kLong).contiguous(),
                     lengths = lengths_in.to(at::kLong).contiguous();
    TORCH_CHECK(slots.numel() == B && positions.numel() == B && lengths.numel() == B,
                "decode_layers: one slot, position and length per row");
    if (n_layers == 0) return x;
    const at::Tensor &k0 = caches[0];
    TORCH_CHECK(k0.dim() == 4, "decode_layers: caches must be [slots, kv_heads, len, head_dim]");
    const int64_t S = k0.size(0), KVH = k0.size(1), L = k0.size(2), D = k0.size(3);
    TORCH_CHECK(cos.size(1) == D, "decode_layers: cos/sin rows must be head_dim long");
    const int64_t NQ = n_head * D, NQKV = (n_head + 2 * KVH) * D;
    const int64_t I2 = weights[6].size(0) * 16, I = I2 / 2;
    TORCH_CHECK(I % 16 == 0, "decode_layers: the MLP width must be a multiple of 16");
    // One buffer for every intermediate of a layer, reused by the next.
    at::Tensor scratch = at::empty({B * (2 * H + NQKV + 2 * NQ + I2 + I)}, x.options());
    uint16_t *h = static_cast<uint16_t *>(scratch.data_ptr()), *y = h + B * H, *qkv = y + B * H, *q = qkv + B * NQKV,
             *att = q + B * NQ, *gu = att + B * NQ, *act = gu + B * I2;
    uint16_t *xp = static_cast<uint16_t *>(x.data_ptr());
    const int64_t *sp = slots.data_ptr<int64_t>(), *pp = positions.data_ptr<int64_t>(), *lp = lengths.data_ptr<int64_t>();
    const float feps = static_cast<float>(eps), fscale = static_cast<float>(scale);
    for (int64_t l = 0; l < n_layers; ++l) {
        const at::Tensor *w = &weights[l * kLayerWeights];
        const int64_t *mode = &modes[l * 4];
        const at::Tensor &kc = caches[2 * l], &vc = caches[2 * l + 1];
        TORCH_CHECK(kc.sizes() == k0.sizes() && vc.sizes() == k0.sizes() && kc.is_contiguous() && vc.is_contiguous() &&
                    kc.scalar_type() == at::kBFloat16 && vc.scalar_type() == at::kBFloat16,
                    "decode_layers: caches must be contiguous bf16, all of one shape");
        TORCH_CHECK(w[0].scalar_type() == at::kFloat && w[0].numel() == H && w[0].is_contiguous() &&
                    w[5].scalar_type() == at::kFloat && w[5].numel() == H && w[5].is_contiguous(),
                    "decode_layers: norms must be float32 [hidden]");
        TORCH_CHECK(current->rms_norm(xp, w[0].data_ptr<float>(), B, H, feps, h) == 0, "decode_layers: rms_norm failed");
        layer_mm(mode[0], w[1], w[2], h, B, H, NQKV, qkv);
        int rc = current->rope_write(qkv, static_cast<const uint16_t *>(cos.data_ptr()),
                                     static_cast<const uint16_t *>(sin.data_ptr()), cos.size(0),
                                     static_cast<uint16_t *>(kc.data_ptr()), static_cast<uint16_t *>(vc.data_ptr()), sp,
                                     pp, B, n_head, KVH, S, L, D, q);
        TORCH_CHECK(rc == 0, "decode_layers: rope_write failed (", rc, "): position or slot out of range, or head_dim");
        rc = current->decode_attention(q, static_cast<const uint16_t *>(kc.data_ptr()),
                                       static_cast<const uint16_t *>(vc.data_ptr()), sp, lp, B, n_head, S, KVH, L, D,
                                       fscale, att);
        TORCH_CHECK(rc == 0, "decode_layers: attention failed (", rc, "): length or slot out of range, or head_dim");
        layer_mm(mode[1], w[3], w[4], att, B, NQ, H, y);
        add_bf16(xp, y, B * H);
        TORCH_CHECK(current->rms_norm(xp, w[5].data_ptr<float>(), B, H, feps, h) == 0, "decode_layers: rms_norm failed");
        layer_mm(mode[2], w[6], w[7], h, B, H, I2, gu);
        TORCH_CHECK(current->silu_mul(gu, B, I, act) == 0, "decode_layers: silu_mul failed");
        layer_mm(mode[3], w[8], w[9], act, B, I, H, y);
        add_bf16(xp, y, B * H);
    }
    return x;
}

}  // namespace

TORCH_LIBRARY(tokenflow, m) {
    m.def("int4_mm(Tensor x, Tensor codes, Tensor sz) -> Tensor");
    m.def("int4_q8_mm(Tensor x, Tensor codes, Tensor sz) -> Tensor");
    m.def("int8_q8_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
    m.def("int8_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
    m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
    m.def("silu_mul(Tensor gate_up) -> Tensor");
    m.def("greedy_pick(Tensor logits) -> (Tensor, Tensor)");
    m.def("rope_write(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, "
          "Tensor positions, int n_head) -> Tensor");
    m.def("use_tier(str name) -> str", &use_tier);
    m.def("tiers() -> str[]", &tiers);
    m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor lengths, float scale) -> Tensor");
    m.def("decode_layers(Tensor x, Tensor[] weights, int[] modes, Tensor(a!)[] caches, Tensor cos, Tensor sin, "
          "Tensor slots, Tensor positions, Tensor lengths, int n_head, float eps, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(tokenflow, CPU, m) {
    m.impl("int4_mm", &int4_mm);
    m.impl("int4_q8_mm", &int4_q8_mm);
    m.impl("int8_mm", &int8_mm);
    m.impl("int8_q8_mm", &int8_q8_mm);
    m.impl("decode_attention", &decode_attention);
    m.impl("rms_norm", &rms_norm);
    m.impl("silu_mul", &silu_mul);
    m.impl("greedy_pick", &greedy_pick);
    m.impl("rope_write", &rope_write);
    m.impl("decode_layers", &decode_layers);
}
