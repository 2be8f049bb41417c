"""Our C/C++ kernels behind one door: each op picks ours or PyTorch's inside (``ops``);
``build`` compiles and loads ours. ``status()`` says which run and why."""

from .ops import (GROUP, KERNEL_CHOICES, decode_attention, decode_layers, greedy_pick, int4_mm, int4_q8_mm,
                  int8_activations, int8_mm, int8_q8_mm, ours, pack, pack_int4_aten, pack_int4_cuda, pack_int8,
                  pack_int8_q8, pack_q8, requested, rms_norm, rope_write, silu_mul, status, use)

__all__ = ["GROUP", "KERNEL_CHOICES", "decode_attention", "decode_layers", "greedy_pick", "int4_mm", "int4_q8_mm",
           "int8_activations", "int8_mm", "int8_q8_mm", "ours", "pack", "pack_int4_aten", "pack_int4_cuda",
           "pack_int8", "pack_int8_q8", "pack_q8", "requested", "rms_norm", "rope_write", "silu_mul", "status",
           "use"]
