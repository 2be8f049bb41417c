"""Our int4/int8 CPU kernels (generator/kernels/csrc/int4_gemm.c) against PyTorch's own weight-only
kernels (the reference: the same weights and scales) and a float32 matmul, at row counts
on and across the kernel's tile edges; and the linears and the model using them."""

import os
import subprocess
import sys

import pytest
import torch

from generator import kernels
from generator.kernels import GROUP
from generator.model.runner import FastRunner
from generator.weights.formats import Int4Linear, Int8Linear

from conftest import build_fast_llama, build_tiny_model

needs_kernel = pytest.mark.skipif(not kernels.ours(), reason="our kernels are off: no C compiler, or TOKENFLOW_KERNELS=aten")
ROWS = [1, 3, 8, 9, 16]


def _needs_int8_activations():
    if not kernels.int8_activations():
        pytest.skip("the avx512 tier runs int8 activations only with AVX512_VNNI")


def _bf16_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # Sums in another order, each rounded once to bf16: within a couple of bf16 units.
    scale = expected.float().abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), atol=scale * 2 ** -7, rtol=2 ** -7)


def _int4_weight(n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
    scale = torch.rand(n, k // GROUP, generator=g) * 0.02 + 1e-3
    zero = torch.randn(n, k // GROUP, generator=g) * 0.05
    return codes, scale, zero


@pytest.mark.parametrize("m", ROWS)
def test_int4_kernel_matches_pytorch_kernel(tier, m):
    n, k = 80, 128  # 5 blocks of 16 channels
    codes, scale, zero = _int4_weight(n, k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).bfloat16()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
    sz = torch.stack((scale, zero), dim=-1).transpose(0, 1).bfloat16().contiguous()
    ref = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, sz)
    ours = kernels.int4_mm(x, *kernels.pack(codes, scale, zero))
    assert ours.shape == (m, n) and ours.dtype == torch.bfloat16
    _bf16_close(ours, ref)
    # And the float32 truth of the same (bf16-rounded) scales and zero points.
    s, z = scale.bfloat16().float(), zero.bfloat16().float()
    w = ((codes.float() - 8).view(n, k // GROUP, GROUP) * s[..., None] + z[..., None]).view(n, k)
    _bf16_close(ours, x.float() @ w.T)


@pytest.mark.parametrize("m", ROWS)
def test_int4_kernel_with_int8_activations(tier, m):
    """int4_q8_mm = x rounded to int8 per row and group of 32 (step max|x| / 127), times
    the codes, plus the zero points times the exact sums of x: as that formula in float32."""
    _needs_int8_activations()
    n, k = 80, 160
    codes, scale, zero = _int4_weight(n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(100 + m)).bfloat16()
    x[0, :32] = 0  # an all-zero group: step 0, no division by it
    ours = kernels.int4_q8_mm(x, *kernels.pack_q8(codes, scale, zero))
    assert ours.shape == (m, n) and ours.dtype == torch.bfloat16
    s, z = scale.bfloat16().float(), zero.bfloat16().float()
    xg = x.float().view(m, k // GROUP, GROUP)
    step = xg.abs().amax(-1, keepdim=True) / 127
    xq = torch.where(step > 0, torch.round(xg / step), torch.zeros_like(xg))
    assert xq.abs().max() <= 127
    w_codes = ((codes.float() - 8).view(n, k // GROUP, GROUP) * s[..., None]).view(n, k)
    expected = (xq * step).view(m, k) @ w_codes.T + xg.sum(-1) @ z.T
    _bf16_close(ours, expected)
    # ... and near the float32 truth: int8 inputs err by up to half a step each.
    w = ((codes.float() - 8).view(n, k // GROUP, GROUP) * s[..., None] + z[..., None]).view(n, k)
    truth = x.float() @ w.T
    assert (ours.float() - truth).abs().max() < 0.02 * truth.abs().max()
    # Rows are independent: the same row alone gives the same bits.
    assert torch.equal(kernels.int4_q8_mm(x[-1:], *kernels.pack_q8(codes, scale, zero)), ours[-1:])


@pytest.mark.parametrize("m", ROWS)
def test_int8_kernel_with_int8_activations(tier, m):
    """int8_q8_mm (the output head's VNNI kernel) = scale x sum over groups of the step
    times the int8 products, exactly as that formula in float32."""
    _needs_int8_activations()
    n, k = 48, 96
    g = torch.Generator().manual_seed(m)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    scales = (torch.rand(n, generator=g) * 0.01 + 1e-3).bfloat16()
    x = torch.randn(m, k, generator=g).bfloat16()
    ours = kernels.int8_q8_mm(x, kernels.pack_int8_q8(q), scales)
    xg = x.float().view(m, k // GROUP, GROUP)
    step = xg.abs().amax(-1, keepdim=True) / 127
    xq = torch.where(step > 0, torch.round(xg / step), torch.zeros_like(xg))
    expected = ((xq * step).view(m, k) @ q.float().T) * scales.float()
    _bf16_close(ours, expected)
    truth = x.float() @ (q.float() * scales.float()[:, None]).T
    assert (ours.float() - truth).abs().max() < 0.02 * truth.abs().max()
    with pytest.raises(ValueError, match="N a multiple of 16"):
        kernels.pack_int8_q8(torch.zeros(40, 64, dtype=torch.int8))


@pytest.mark.parametrize("m", ROWS)
def test_int8_kernel_matches_pytorch_kernel(tier, m):
    n, k = 64, 96
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    scales = (torch.rand(n, generator=g) * 0.01 + 1e-3).bfloat16()
    x = torch.randn(m, k, generator=g).bfloat16()
    ref = torch.ops.aten._weight_int8pack_mm(x, q, scales)
    ours = kernels.int8_mm(x, kernels.pack_int8(q), scales)
    _bf16_close(ours, ref)
    _bf16_close(ours, x.float() @ (q.float() * scales.float()[:, None]).T)


def test_pack_rejects_shapes_the_kernel_cannot_tile():
    with pytest.raises(ValueError, match="N a multiple of 16"):
        kernels.pack(*_int4_weight(40, 64))
    with pytest.raises(ValueError, match="N a multiple of 16"):
        kernels.pack_q8(*_int4_weight(40, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        kernels.pack_int8(torch.zeros(40, 64, dtype=torch.int8))


def _on_pytorchs_kernels(make):
    """``make()`` with our kernels switched off while it packs (PyTorch's layouts)."""
    previous = kernels.use("aten")
    try:
        return make()
    finally:
        kernels.use(previous)


def test_linears_use_the_kernel_in_eager_and_pytorchs_otherwise(tier):
    """Each linear keeps ONE packing: ours where our kernel runs, PyTorch's otherwise; both
    compute the same weights (and read them back alike)."""
    codes, scale, zero = _int4_weight(64, 64)
    w8 = torch.randn(64, 64)
    lin4, lin8 = Int4Linear(codes, scale, zero), Int8Linear(w8)
    ref4, ref8 = _on_pytorchs_kernels(lambda: (Int4Linear(codes, scale, zero), Int8Linear(w8)))
    x = torch.randn(5, 64).bfloat16()
    for lin, ref in ((lin4, ref4), (lin8, ref8)):
        assert lin.codes is not None and ref.codes is None
        assert {n for n, b in lin.named_buffers() if b is not None} & {"packed", "scales_zeros", "qweight"} == set()
        y = lin(x)
        expected = (kernels.int4_mm(x, lin.codes, lin.sz) if lin is lin4
                    else kernels.int8_mm(x, lin.codes, lin.scales))
        assert torch.equal(y, expected)  # the kernel's own output, not PyTorch's
        _bf16_close(y, ref(x))
        _bf16_close(lin.dequantized(), ref.dequantized())
    assert torch.equal(ref4(x), torch.ops.aten._weight_int4pack_mm_for_cpu(x, ref4.packed, GROUP, ref4.scales_zeros))
    assert torch.equal(ref8(x), torch.ops.aten._weight_int8pack_mm(x, ref8.qweight, ref8.scales))


def test_switch_turns_the_kernel_off():
    env = {k: v for k, v in os.environ.items() if k != "TOKENFLOW_KERNELS"}  # the newer switch would win
    env["TOKENFLOW_INT4_KERNEL"] = "aten"
    out = subprocess.run([sys.executable, "-c", "from generator import kernels; print(kernels.ours())"],
                         env=env, capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_model_on_our_kernels_matches_pytorchs_kernels(tier, quant):
    """The whole tiny model: prefill and a batched decode step on our kernels give the
    logits of PyTorch's kernels up to float rounding, and the same greedy tokens."""
    tiny = build_tiny_model(320)
    ours = build_fast_llama(tiny, quant=quant, num_slots=4, max_len=64, activations="bf16")
    ref = _on_pytorchs_kernels(lambda: build_fast_llama(tiny, quant=quant, num_slots=4, max_len=64,
                                                         activations="bf16"))
    assert all(m.codes is None for m in ref.modules() if isinstance(m, (Int4Linear, Int8Linear)))
    assert any(isinstance(m, (Int4Linear, Int8Linear)) and m.codes is not None for m in ours.modules())
    a, b = FastRunner(ours, compile=False), FastRunner(ref, compile=False)
    prompts = [[5, 9, 14, 200, 31], [7, 7, 8], [100, 3, 54, 2, 9, 11, 250], [1]]
    for slot, ids in enumerate(prompts):
        la, lb = a.prefill(slot, ids), b.prefill(slot, ids)
        assert torch.nn.functional.cosine_similarity(la, lb).item() > 0.9999
    tokens = torch.tensor([3, 4, 5, 6])
    for _ in range(3):
        with torch.profiler.profile() as prof:
            la = a.decode([0, 1, 2, 3], tokens)
        # our attention, RoPE + cache writes, SiLU*mul and RMSNorm too: for int4 inside the
        # fused step (every layer in one op of ours: tests/generator/test_fused_step.py)
        names = {e.name for e in prof.events()}
        if quant == "int4":
            assert "tokenflow::decode_layers" in names
        else:
            assert {"tokenflow::decode_attention", "tokenflow::rope_write", "tokenflow::silu_mul",
                    "tokenflow::rms_norm"} <= names
        lb = b.decode([0, 1, 2, 3], tokens)
        assert torch.nn.functional.cosine_similarity(la, lb).min().item() > 0.9999
        tokens = lb.argmax(-1)
        assert torch.equal(la.argmax(-1), tokens)


@needs_kernel
def test_compiled_step_calls_our_ops():
    """The compiled decode step runs our kernels as registered ops (not PyTorch's int4/int8
    kernels, not a graph break) and gives the eager step's logits."""
    tiny = build_tiny_model(320)
    compiled = FastRunner(build_fast_llama(tiny, quant="int4", num_slots=2, max_len=64), compile=True)
    eager = FastRunner(build_fast_llama(tiny, quant="int4", num_slots=2, max_len=64), compile=False)
    for r in (compiled, eager):
        r.prefill(0, [5, 9, 14, 200, 31])
    compiled.decode([0], torch.tensor([7]))  # compiles
    eager.decode([0], torch.tensor([7]))
    with torch.profiler.profile() as prof:
        a = compiled.decode([0], torch.tensor([8]))
    names = {e.name for e in prof.events()}
    q8 = compiled.model.activations == "int8"
    ops = {"tokenflow::int4_q8_mm", "tokenflow::int8_q8_mm"} if q8 else {"tokenflow::int4_mm", "tokenflow::int8_mm"}
    assert ops <= names, sorted(n for n in names if "mm" in n)
    assert not any("_weight_int4pack_mm" in n or "_weight_int8pack_mm" in n for n in names)
    b = eager.decode([0], torch.tensor([8]))
    if compiled.model.activations == "int8":
        # Inductor's fused norms/attention round a few values differently, and int8
        # rounding of the inputs turns one-unit differences into whole steps now and then.
        assert torch.nn.functional.cosine_similarity(a, b).item() > 0.998
    else:
        # Inductor fuses the float32 attention and the norms its own way (no bit-equality is
        # promised for --compile): a few logits move by one bf16 step (0.055 seen on portable).
        torch.testing.assert_close(a, b, atol=0.08, rtol=0)
    assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("rows,heads,kv_heads,d", [(1, 6, 2, 32), (5, 6, 2, 32), (16, 6, 2, 32), (6, 9, 3, 64)])
def test_decode_attention_matches_float32_attention(tier, rows, heads, kv_heads, d):
    """One-token attention straight from cache slots (any order, each row its own length)
    equals softmax(q K^T * scale) V computed in float32 with PyTorch, rounded to bf16.
    Lengths around the kernel's blocks of 16 positions included."""
    g = torch.Generator().manual_seed(rows)
    num_slots, cache_len = 20, 50
    k_cache = torch.randn(num_slots, kv_heads, cache_len, d, generator=g).bfloat16()
    v_cache = torch.randn(num_slots, kv_heads, cache_len, d, generator=g).bfloat16()
    q = torch.randn(rows, heads, d, generator=g).bfloat16()
    slots = torch.randperm(num_slots, generator=g)[:rows]
    lengths = torch.randint(1, cache_len + 1, (rows,), generator=g)
    edges = torch.tensor([16, 17, 1, 32, 50, 15])
    lengths[: min(rows, 6)] = edges[: min(rows, 6)] if rows > 1 else lengths[:1]
    out = kernels.decode_attention(q, k_cache, v_cache, slots, lengths, 0.2)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    group = heads // kv_heads
    for r in range(rows):
        n = int(lengths[r])
        keys = k_cache[slots[r], :, :n].float().repeat_interleave(group, dim=0)  # (heads, n, d)
        values = v_cache[slots[r], :, :n].float().repeat_interleave(group, dim=0)
        probs = torch.softmax((keys @ q[r].float()[:, :, None]).squeeze(-1) * 0.2, dim=-1)
        expected = (probs[:, None, :] @ values).squeeze(1)
        torch.testing.assert_close(out[r].float(), expected, atol=2e-2, rtol=2 ** -7)


def test_decode_attention_rejects_bad_lengths(tier):
    k = torch.zeros(2, 1, 8, 16).bfloat16()
    q = torch.zeros(1, 2, 16).bfloat16()
    with pytest.raises(RuntimeError, match="lengths"):
        kernels.decode_attention(q, k, k, torch.tensor([0]), torch.tensor([9]), 1.0)
    with pytest.raises(RuntimeError, match="slot"):
        kernels.decode_attention(q, k, k, torch.tensor([2]), torch.tensor([1]), 1.0)


@pytest.mark.parametrize("rows", [1, 7, 40])
def test_rms_norm_matches_the_eager_formula(tier, rows):
    """Our RMSNorm op equals transformers' LlamaRMSNorm arithmetic in bf16 bit for bit on
    these rows (it sums the squares in another order, so about 1 row in 3000 of random
    data rounds its scale one unit apart)."""
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, 3, 64, generator=g) * 4).bfloat16()
    w = torch.rand(64, generator=g) * 2
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    expected = (w * h.to(x.dtype)).to(x.dtype)
    assert torch.equal(kernels.rms_norm(x, w, 1e-5), expected)
    with pytest.raises(RuntimeError, match="multiple of 16"):  # the kernel's contract ...
        torch.ops.tokenflow.rms_norm(torch.zeros(2, 24).bfloat16(), torch.ones(24), 1e-5)
    odd = torch.randn(2, 24).bfloat16()  # ... which the op keeps by taking PyTorch's ops there
    assert torch.equal(kernels.rms_norm(odd, torch.ones(24), 1e-5),
                       (torch.ones(24) * (odd.float() * torch.rsqrt(odd.float().pow(2).mean(-1, keepdim=True)
                                                                     + 1e-5)).bfloat16()).bfloat16())


def test_silu_mul_matches_the_eager_ops(tier):
    """silu(gate) * up of [gate | up] rows, bit for bit as the eager bf16 ops (its own exp
    is within a float32 unit of libm's, which bf16 rounding hides), extremes included."""
    g = torch.Generator().manual_seed(0)
    for scale in (1, 8, 200):
        gate_up = (torch.randn(3, 5, 2 * 48, generator=g) * scale).bfloat16()
        gate, up = gate_up.chunk(2, dim=-1)
        expected = torch.nn.functional.silu(gate) * up
        out = kernels.silu_mul(gate_up)
        assert out.shape == (3, 5, 48)
        assert torch.equal(out, expected)
    special = torch.tensor([-100.0, -88.0, 0.0, -0.0, 1e-30, 100.0, float("inf"), float("-inf")] * 2)
    gate_up = torch.cat((special, torch.full((16,), 1.5))).bfloat16()
    torch.testing.assert_close(kernels.silu_mul(gate_up), torch.nn.functional.silu(gate_up[:16]) * gate_up[16:],
                               atol=0, rtol=0, equal_nan=True)
    with pytest.raises(RuntimeError, match="multiple of 16"):  # the kernel's contract ...
        torch.ops.tokenflow.silu_mul(torch.zeros(2, 40).bfloat16())
    odd = torch.randn(2, 40).bfloat16()  # ... which the op keeps by taking PyTorch's ops there
    assert torch.equal(kernels.silu_mul(odd), torch.nn.functional.silu(odd[:, :20]) * odd[:, 20:])


def test_without_our_kernels_the_fallbacks_take_over(pytorchs_kernels):
    """With the kernels off: the int linears keep PyTorch's kernels, an int8 head multiplies
    every batch by its bf16 copy (one kernel for every batch size), and a batched one-token
    step (float32 matmul attention) gives each row the bits it gets alone."""
    model = build_fast_llama(build_tiny_model(320), quant="int4", num_slots=8, max_len=64)
    head = model.lm_head
    assert isinstance(head, Int8Linear) and head.codes is None and head.dense is not None
    x = torch.randn(9, 64).bfloat16()
    for rows in (1, 8, 9):
        assert torch.equal(head(x[:rows]), torch.nn.functional.linear(x[:rows], head.dense))
    runner = FastRunner(model, compile=False)
    prompts = [[5 + i, 9, 14 + i] for i in range(8)]
    for slot, ids in enumerate(prompts):
        runner.prefill(slot, ids)
    tokens = torch.arange(3, 11)
    with torch.profiler.profile() as prof:
        batched = runner.decode(list(range(8)), tokens)
    names = {e.name for e in prof.events()}
    assert not any(n.startswith("tokenflow::") for n in names)
    assert "aten::_weight_int4pack_mm_for_cpu" in names
    alone = FastRunner(build_fast_llama(build_tiny_model(320), quant="int4", num_slots=1, max_len=64), compile=False)
    for slot, ids in enumerate(prompts):
        alone.prefill(0, ids)
        ref = alone.decode([0], tokens[slot: slot + 1])
        assert torch.equal(batched[slot: slot + 1], ref)


def test_int8_activations_model_follows_bf16_and_runs_the_int8_kernels(tier):
    """The tiny model with int8 activations stays within rounding of the bf16-activation
    model, greedy tokens alike, and runs int4_q8_mm and int8_q8_mm."""
    _needs_int8_activations()
    tiny = build_tiny_model(320)
    q8 = build_fast_llama(tiny, quant="int4", num_slots=4, max_len=64, activations="int8")
    bf = build_fast_llama(tiny, quant="int4", num_slots=4, max_len=64, activations="bf16")
    assert q8.activations == "int8" and bf.activations == "bf16"
    auto = build_fast_llama(tiny, quant="int4", num_slots=1, max_len=8).activations
    assert auto == kernels.status()["activations"]  # the tier's faster one
    a, b = FastRunner(q8, compile=False), FastRunner(bf, compile=False)
    for slot, ids in enumerate([[5, 9, 14, 200, 31], [7, 7, 8], [100, 3, 54, 2, 9, 11, 250], [1]]):
        assert torch.nn.functional.cosine_similarity(a.prefill(slot, ids), b.prefill(slot, ids)).item() > 0.998
    # The fused step (every layer in one op) multiplies each projection as its mode says;
    # the per-op loop (the same bits: test_fused_step.py) shows the ops by name.
    assert all(q8.fused_layers(4)[1]) and not any(bf.fused_layers(4)[1])
    q8.fuse_layers = False
    tokens = torch.tensor([3, 4, 5, 6])
    for _ in range(3):
        with torch.profiler.profile() as prof:
            la = a.decode([0, 1, 2, 3], tokens)
        names = {e.name for e in prof.events()}
        assert {"tokenflow::int4_q8_mm", "tokenflow::int8_q8_mm"} <= names  # the int8 head too
        assert not {"tokenflow::int4_mm", "tokenflow::int8_mm"} & names
        lb = b.decode([0, 1, 2, 3], tokens)
        assert torch.nn.functional.cosine_similarity(la, lb).min().item() > 0.998
        tokens = lb.argmax(-1)
        assert torch.equal(la.argmax(-1), tokens)


def test_activations_setting(monkeypatch):
    from generator.config import resolve_activations

    monkeypatch.setenv("TOKENFLOW_ACTIVATIONS", "bf16")
    assert resolve_activations("auto") == "bf16"
    assert resolve_activations("BF16") == "bf16"
    monkeypatch.delenv("TOKENFLOW_ACTIVATIONS")
    assert resolve_activations("auto") == kernels.status()["activations"]
    with pytest.raises(ValueError, match="unknown activations 'fp8'"):
        resolve_activations("fp8")
    monkeypatch.setenv("TOKENFLOW_ACTIVATIONS", "fp8")
    with pytest.raises(ValueError, match="unknown TOKENFLOW_ACTIVATIONS 'fp8'"):
        resolve_activations("auto")
    assert resolve_activations("bf16") == "bf16"  # an explicit choice wins over the variable
    monkeypatch.delenv("TOKENFLOW_ACTIVATIONS")
    # A linear reports what its forwards multiply by: int8 only where the VNNI kernel takes
    # its shape (48 inputs are not groups of 32), and only resolved names.
    vnni = kernels.int8_activations()
    assert Int4Linear(*_int4_weight(64, 64), activations="int8").activations == ("int8" if vnni else "bf16")
    assert Int8Linear(torch.randn(64, 64), activations="int8").activations == ("int8" if vnni else "bf16")
    assert Int8Linear(torch.randn(64, 48), activations="int8").activations == "bf16"
    with pytest.raises(ValueError, match="resolve_activations"):
        Int8Linear(torch.randn(48, 64), activations="auto")
    monkeypatch.setattr(kernels, "int8_activations", lambda: False)
    assert resolve_activations("auto") == "bf16"
    with pytest.raises(ValueError, match="AVX512_VNNI"):
        resolve_activations("int8")


@pytest.mark.parametrize("vocab", [7, 16, 33, 49152])
def test_greedy_pick_is_argmax_and_its_log_softmax(tier, vocab):
    """The fused greedy pick: torch.argmax's id (the first of equal maxima, 0 for a row of
    -inf) and log_softmax at it, for vocabularies around the 16-wide vectors."""
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(6, vocab, generator=g) * 5
    logits[1] = logits[1].max()  # every value tied
    logits[2] = float("-inf")
    logits[3, vocab // 2] = logits[3, vocab - 1] = 1e9  # a tie between two far apart
    logits[4, -1] = 50.0  # the maximum in the scalar tail
    ids, logprobs = kernels.greedy_pick(logits)
    expected = logits.argmax(-1)
    assert torch.equal(ids, expected)
    ref = logits.log_softmax(-1).gather(-1, expected[:, None]).squeeze(-1)
    torch.testing.assert_close(logprobs, ref, atol=1e-5, rtol=1e-5, equal_nan=True)


@needs_kernel
def test_all_greedy_batches_sample_with_the_fused_pick(tiny_engine):
    from decoding import BatchSampler, SamplingParams

    # Where the kernel runs, the engine's batches hand its fused pick to their samplers.
    batch = tiny_engine.batch()
    handle = batch.add([1, 2, 3], SamplingParams(strategy="greedy", max_new_tokens=3))
    while handle in batch.rows and batch._sampler is None:
        batch.step()
    assert batch._sampler.greedy_pick is kernels.greedy_pick
    assert batch._sampler.subset([0]).greedy_pick is kernels.greedy_pick
    while batch.active:
        batch.step()
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0))
    greedy = BatchSampler([SamplingParams(strategy="greedy")] * 4, greedy_pick=kernels.greedy_pick)
    with torch.profiler.profile() as prof:
        out = greedy(logits)
    assert "tokenflow::greedy_pick" in {e.name for e in prof.events()}
    assert torch.equal(out.token_ids, logits.argmax(-1))
    torch.testing.assert_close(out.logprobs, logits.log_softmax(-1).gather(-1, out.token_ids[:, None]).squeeze(-1))
    # Alternatives asked for, or a penalty: PyTorch's ops, the same choice.
    with torch.profiler.profile() as prof:
        out2 = BatchSampler([SamplingParams(strategy="greedy", logprobs=2)] * 4,
                            greedy_pick=kernels.greedy_pick)(logits)
    assert "tokenflow::greedy_pick" not in {e.name for e in prof.events()}
    assert torch.equal(out2.token_ids, out.token_ids) and out2.top_ids is not None


def test_rope_write_equals_the_eager_rope_and_cache_writes(tier):
    """The fused one-token RoPE + cache writes: the rotated queries, keys and the values
    land where the eager ops put them, bit for bit; bad slots and positions are refused."""
    model = build_fast_llama(build_tiny_model(320), quant="int4", num_slots=4, max_len=32)
    nh, nkv, d = model.n_head, model.n_kv, model.head_dim
    g = torch.Generator().manual_seed(3)
    rows = 3
    qkv = (torch.randn(rows, (nh + 2 * nkv) * d, generator=g) * 3).bfloat16()
    slots, positions = torch.tensor([2, 0, 3]), torch.tensor([5, 31, 32])  # 32: the scratch cell
    k_cache, v_cache = torch.zeros_like(model.layers[0].k_cache), torch.zeros_like(model.layers[0].v_cache)
    q = kernels.rope_write(qkv, model.rope_cos, model.rope_sin, k_cache, v_cache, slots, positions, nh)
    cos, sin = model.rope_cos[positions][:, None, :], model.rope_sin[positions][:, None, :]
    qk = model._rope(qkv[:, : (nh + nkv) * d].view(rows, nh + nkv, d), cos, sin)
    assert torch.equal(q, qk[:, :nh])
    for r in range(rows):
        assert torch.equal(k_cache[slots[r], :, positions[r]], qk[r, nh:])
        assert torch.equal(v_cache[slots[r], :, positions[r]], qkv[r, (nh + nkv) * d:].view(nkv, d))
    assert int((k_cache != 0).any(-1).sum()) == rows * nkv  # nothing else written
    with pytest.raises(RuntimeError, match="position out of range"):
        kernels.rope_write(qkv, model.rope_cos, model.rope_sin, k_cache, v_cache, slots, positions + 1, nh)
    with pytest.raises(RuntimeError, match="slot out of range"):
        kernels.rope_write(qkv, model.rope_cos, model.rope_sin, k_cache, v_cache, slots + 2, positions, nh)


@needs_kernel
def test_prompts_are_written_as_one_token_rows():
    """Prompts (one continuing at start > 0) go in as one-token rows, no padding,
    ``prefill_chunk`` rows a forward: each gets the logits and cache of its own prefill,
    bit for bit, and then decodes alike."""
    tiny = build_tiny_model(320)
    flat = FastRunner(build_fast_llama(tiny, quant="int4", num_slots=4, max_len=128), compile=False,
                      prefill_chunk=16)
    ref = FastRunner(build_fast_llama(tiny, quant="int4", num_slots=4, max_len=128), compile=False)
    used = []
    real = flat.forward_rows
    flat.forward_rows = lambda *args: used.append(len(args[0])) or real(*args)
    a, b, c = list(range(3, 16)), list(range(40, 43)), list(range(60, 70))
    for r in (flat, ref):
        r.prefill(2, c[:4])
    assert used == [4]
    many = flat.prefill_many([0, 1, 2], [a, b, c[4:]], [0, 0, 4])
    assert used == [4, 16, 6]  # 22 rows in forwards of at most 16
    each = torch.cat([ref.prefill(0, a), ref.prefill(1, b), ref.prefill(2, c[4:], start=4)])
    assert torch.equal(many, each)
    assert [flat.length(s) for s in (0, 1, 2)] == [13, 3, 10]
    toks = torch.tensor([5, 6, 7])
    assert torch.equal(flat.decode([0, 1, 2], toks), ref.decode([0, 1, 2], toks))
