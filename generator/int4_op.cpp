// tokenflow: the kernels of int4_gemm.c as PyTorch operators, tokenflow::int4_mm and
// tokenflow::int8_mm. As registered C++ ops they are called from eager code and from
// the compiled decode step's generated code alike, at the cost of an ATen op (a Python
// custom op added about 6 us a call, 121 calls a step). Built by cpukernel.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

extern "C" int tf_int4_mm(const uint16_t *x, int64_t M, int64_t K, int64_t N, const uint8_t *codes,
                          const uint16_t *sz, uint16_t *y);
extern "C" int tf_int8_mm(const uint16_t *x, int64_t M, int64_t K, int64_t N, const int8_t *codes,
                          const uint16_t *scales, uint16_t *y);

namespace {

at::Tensor prepare(const at::Tensor &x, const at::Tensor &codes, int64_t rows_per_code) {
    TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16, "x must be a 2-D bf16 tensor");
    TORCH_CHECK(codes.dim() == 3 && codes.is_contiguous(), "codes must be packed by cpukernel");
    TORCH_CHECK(codes.size(1) * rows_per_code == x.size(1), "x has ", x.size(1), " inputs, the weight ",
                codes.size(1) * rows_per_code);
    return at::empty({x.size(0), codes.size(0) * 32}, x.options());
}

at::Tensor int4_mm(const at::Tensor &x_in, const at::Tensor &codes, const at::Tensor &sz) {
    const at::Tensor x = x_in.contiguous();
    at::Tensor y = prepare(x, codes, 2);
    TORCH_CHECK(sz.is_contiguous() && sz.scalar_type() == at::kBFloat16, "sz must be packed by cpukernel");
    const int rc = tf_int4_mm(static_cast<const uint16_t *>(x.data_ptr()), x.size(0), x.size(1), y.size(1),
                              static_cast<const uint8_t *>(codes.data_ptr()),
                              static_cast<const uint16_t *>(sz.data_ptr()), static_cast<uint16_t *>(y.data_ptr()));
    TORCH_CHECK(rc == 0, "int4 kernel failed (", rc, ")");
    return y;
}

at::Tensor int8_mm(const at::Tensor &x_in, const at::Tensor &codes, const at::Tensor &scales) {
    const at::Tensor x = x_in.contiguous();
    at::Tensor y = prepare(x, codes, 2);
    TORCH_CHECK(scales.is_contiguous() && scales.scalar_type() == at::kBFloat16 && scales.numel() == y.size(1),
                "scales must be bf16, one per output channel");
    const int rc = tf_int8_mm(static_cast<const uint16_t *>(x.data_ptr()), x.size(0), x.size(1), y.size(1),
                              static_cast<const int8_t *>(codes.data_ptr()),
                              static_cast<const uint16_t *>(scales.data_ptr()), static_cast<uint16_t *>(y.data_ptr()));
    TORCH_CHECK(rc == 0, "int8 kernel failed (", rc, ")");
    return y;
}

}  // namespace

TORCH_LIBRARY(tokenflow, m) {
    m.def("int4_mm(Tensor x, Tensor codes, Tensor sz) -> Tensor");
    m.def("int8_mm(Tensor x, Tensor codes, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(tokenflow, CPU, m) {
    m.impl("int4_mm", &int4_mm);
    m.impl("int8_mm", &int8_mm);
}
