"""The CUDA path's CPU-checkable parts: Q4_1's d/m mapped onto PyTorch's int4 layout (checked
with its CPU kernel against the GGUF's own weights), the CUDA packing's nibbles and shapes (on
the meta device: PyTorch's shape checks run, no GPU needed), the configuration a CUDA model
resolves to, and the bucketed decode step (padding rows, static buffers) run eagerly. The runs
on a real GPU are tests/gpu/."""

import numpy as np
import pytest
import torch

from generator import Engine, EngineConfig, kernels
from generator.config import EngineConfigError
from generator.kernels.ops import inner_k_tiles, nibble_pairs, scales_zeros
from generator.model.cuda import BucketedDecode, gpu_name, host_ints
from generator.weights.formats import Int4Linear
from generator.weights.gguf import dequantize_q4_1, unpack_q4_1

from conftest import build_tiny_model

GROUP = kernels.GROUP


def batch_ids(engine, prompts, params) -> list[list[int]]:
    """Each prompt's generated ids, the prompts run as rows of one ``BatchGenerator``."""
    batch = engine.batch()
    handles = [batch.add(engine.encode(p), params) for p in prompts]
    out = {h: [] for h in handles}
    while batch.active:
        for h, ev in batch.step():
            assert not isinstance(ev, Exception), ev
            out[h].append(ev.token_id)
    return [out[h] for h in handles]


def _q4_1_blocks(rng, n, k):
    """Random GGUF Q4_1 blocks [N, K/32 * 20]: f16 d, f16 m, 16 bytes of nibbles per 32 values."""
    blocks = np.zeros((n, k // GROUP, 20), dtype=np.uint8)
    blocks[..., 0:2] = rng.uniform(0.001, 0.05, (n, k // GROUP, 1)).astype(np.float16).view(np.uint8)
    blocks[..., 2:4] = rng.uniform(-0.4, 0.0, (n, k // GROUP, 1)).astype(np.float16).view(np.uint8)
    blocks[..., 4:] = rng.integers(0, 256, (n, k // GROUP, 16), dtype=np.uint8)
    return blocks.reshape(n, -1)


def test_q4_1_maps_onto_pytorchs_int4_layout_with_scale_d_and_zero_m_plus_8d():
    """PyTorch's int4 kernels compute ``(q - 8) * scale + zero``; Q4_1 stores ``d * q + m``. With
    ``scale = d``, ``zero = m + 8d`` PyTorch's CPU kernel (aten, not ours) reads back exactly the
    GGUF's codes times the bf16-rounded d and zero, and so the GGUF's weights within that
    rounding. The CUDA packing takes the same scales_zeros (one function) and the same codes."""
    rng = np.random.default_rng(3)
    n, k = 32, 576  # SmolLM2's hidden size: K/32 = 18 groups, inner_k_tiles 4 on CUDA
    blocks = _q4_1_blocks(rng, n, k)
    codes, d, m = unpack_q4_1(blocks, n, k)
    zero = m + 8 * d
    packed, sz = kernels.pack_int4_aten(codes, d, zero)
    eye = torch.eye(k, dtype=torch.bfloat16)
    read = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, GROUP, sz).float().T  # [N, K]
    d16, z16 = d.bfloat16().float(), zero.bfloat16().float()
    expected = ((codes.view(n, k // GROUP, GROUP).float() - 8) * d16[..., None] + z16[..., None]).view(n, k)
    assert torch.equal(read, expected.bfloat16().float())
    ref = dequantize_q4_1(blocks, n, k)  # the GGUF's own float32 weights
    # bf16 keeps 8 significant bits of d and zero (and of the product read back).
    bound = 2 ** -8 * (8 * d.abs() + zero.abs() + ref.abs().view(n, k // GROUP, GROUP).amax(-1)) + 1e-6
    assert ((read - ref).view(n, k // GROUP, GROUP).abs() <= bound[..., None]).all()
    assert torch.equal(sz, scales_zeros(d, zero)) and sz.shape == (k // GROUP, n, 2)
    assert torch.equal(sz[:, :, 0].T.float(), d16) and torch.equal(sz[:, :, 1].T.float(), z16)


def test_cuda_nibbles_put_the_even_input_high():
    codes = torch.randint(0, 16, (8, 64), dtype=torch.int32)
    pairs = nibble_pairs(codes)
    assert pairs.dtype == torch.uint8 and pairs.shape == (8, 32)
    assert torch.equal((pairs >> 4).int(), codes[:, ::2]) and torch.equal((pairs & 15).int(), codes[:, 1::2])


@pytest.mark.parametrize("k,tiles", [(576, 4), (1536, 8), (32, 2), (96, 2), (128, 8)])
def test_inner_k_tiles_is_the_widest_the_input_dimension_allows(k, tiles):
    assert inner_k_tiles(k) == tiles


def test_inner_k_tiles_refuses_an_input_dimension_off_the_group():
    with pytest.raises(ValueError, match="multiple of 32"):
        inner_k_tiles(48)


def test_int4_linear_packs_for_the_cuda_kernel_off_the_cpu():
    """On a non-CPU device Int4Linear takes PyTorch's CUDA layout (tinygemm, 4-d int32) and never
    asks our CPU kernels; on fake meta tensors PyTorch's own checks of both CUDA ops run."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    n, k = 48, 576
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32)
    scale, zero = torch.rand(n, k // GROUP) * 0.05, torch.rand(n, k // GROUP) - 0.5
    with FakeTensorMode(allow_non_fake_inputs=True):
        lin = Int4Linear(codes, scale, zero, device="meta")
        y = lin(torch.empty(5, k, dtype=torch.bfloat16, device="meta"))
    assert lin.codes is None and lin.packed.device.type == "meta"
    assert lin.packed.shape == (n // 8, k // (16 * 4), 32, 2) and lin.packed.dtype == torch.int32
    assert lin.scales_zeros.shape == (k // GROUP, n, 2) and lin.scales_zeros.dtype == torch.bfloat16
    assert y.shape == (5, n) and y.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bf16 inputs"):
        Int4Linear(codes, scale, zero, activations="int8", device="meta")


@pytest.fixture(scope="module")
def tiny_hf():
    return build_tiny_model(320)


def test_a_cuda_model_resolves_to_bf16_weights_and_graphs(tiny_hf):
    """What ``resolve`` makes of a model off the CPU (here the meta device stands in for CUDA):
    quant auto is bf16 until the GPU script measures int4; the head stays dense; int8 (CPU
    kernels only) is refused; CUDA graphs are on unless switched off (with --compile they
    capture the compiled step)."""
    meta = build_tiny_model(320).to("meta")
    cfg = EngineConfig().resolve(meta)
    assert (cfg.quant, cfg.head, cfg.activations, cfg.graphs, cfg.kernels) == ("none", "none", "bf16",
                                                                                     True, "aten")
    assert EngineConfig(quant="int4").resolve(meta).head == "none"
    assert EngineConfig(quant="int4").resolve(meta).dtype == "bfloat16"
    assert not EngineConfig(cuda_graphs="off").resolve(meta).graphs
    compiled = EngineConfig(compile=True).resolve(meta)
    assert compiled.graphs and compiled.compile  # the compiled step, captured
    for bad in ({"quant": "int8"}, {"quant": "int4", "head": "int8"}, {"quant": "int4", "activations": "int8"}):
        with pytest.raises(EngineConfigError):
            EngineConfig(**bad).resolve(meta)
    cpu = EngineConfig().resolve(tiny_hf)
    assert not cpu.graphs and "graphs" not in cpu.summary()
    with pytest.raises(EngineConfigError, match="needs a CUDA device"):
        EngineConfig(cuda_graphs="on").resolve(tiny_hf)


def test_host_ints_and_gpu_name_on_the_cpu():
    t = host_ints([3, 1, 2], torch.device("cpu"))
    assert t.dtype == torch.long and t.tolist() == [3, 1, 2]
    assert gpu_name("cpu") is None


def test_graph_buckets_cover_every_batch_up_to_the_slots(tiny_engine):
    step = BucketedDecode(tiny_engine.runner.model, kv_bucket=64, graphs=False)
    slots = tiny_engine.runner.num_slots
    assert step.buckets[-1] == slots and all(step.bucket(b) >= b for b in range(1, slots + 1))
    assert step.bucket(3) == 4 and step.kv_len(1) == 64 and step.kv_len(65) == 128
    with pytest.raises(ValueError, match="more than"):
        step.bucket(slots + 1)
    with pytest.raises(ValueError, match="CUDA model"):
        BucketedDecode(tiny_engine.runner.model, graphs=True)


def test_the_bucketed_step_generates_what_the_eager_step_does(tiny_model_dir):
    """The graph path's step run eagerly: 3 rows padded to a bucket of 4 (a padding row at
    the scratch position), static buffers reused across steps and a cache bucket crossed;
    greedy ids equal the plain eager loop's."""
    from decoding import SamplingParams

    prompts = ["Once upon a time", "The capital of France", "Emoji travel"]
    params = SamplingParams(strategy="greedy", max_new_tokens=24, ignore_eos=True)
    engine = Engine.load(model=str(tiny_model_dir), device="cpu", dtype="float32", num_slots=6, max_len=96)

    plain = batch_ids(engine, prompts, params)
    engine.runner.graphs = BucketedDecode(engine.runner.model, kv_bucket=16, graphs=False)
    bucketed = batch_ids(engine, prompts, params)
    assert bucketed == plain
    assert (4, 32) in engine.runner.graphs._entries  # 3 rows in the 4-row bucket, a second cache bucket


@pytest.mark.parametrize("quant", ["none", "int4"])
def test_a_model_off_the_cpu_runs_there_and_never_asks_our_cpu_kernels(quant, monkeypatch):
    """The whole CUDA-shaped forward on fake meta tensors (a stand-in for CUDA: fake tensors
    refuse ops that mix devices, so a table or cache left on the CPU fails here): built from the
    config a non-CPU model resolves to, prefilled and stepped through the bucketed decode, with
    our CPU kernels' door shut (asking it at all fails)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from generator.kernels import ops
    from generator.model.llama import FastLlama

    def shut(*args, **kwargs):
        raise AssertionError("a model off the CPU asked tokenflow's CPU kernels")

    for name in ("status", "ours", "int8_activations"):
        monkeypatch.setattr(ops, name, shut)
        monkeypatch.setattr(kernels, name, shut)
    meta = build_tiny_model(320).to("meta")
    config = EngineConfig(quant=quant, num_slots=4, max_len=64).resolve(meta)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = FastLlama.from_hf(meta, config)
        assert model.rope_cos.device.type == "meta" and model.layers[0].k_cache.device.type == "meta"
        assert not model.kernel_attention
        prompt = model(torch.zeros(1, 5, dtype=torch.long, device="meta"), torch.tensor([1], device="meta"),
                       torch.arange(5, device="meta")[None], torch.arange(5, device="meta"), first_slot=1)
        step = BucketedDecode(model, kv_bucket=16, graphs=False)
        logits = step([1, 2, 0], [5, 0, 3], torch.zeros(3, dtype=torch.long, device="meta"))
        # what a graph captures with --compile: the step written for the compiler (run eagerly here)
        fused = BucketedDecode(model, kv_bucket=16, graphs=False, step=model.fused_decode_step)
        fused_logits = fused([1, 2, 0], [5, 0, 3], torch.zeros(3, dtype=torch.long, device="meta"))
    assert prompt.shape == (1, 320) and logits.shape == (3, 320) and logits.dtype == torch.float32
    assert fused_logits.shape == (3, 320) and set(step._entries) == {(4, 16)}


def test_the_bucketed_fused_step_matches_the_eager_one(tiny_engine):
    """The step ``--compile`` captures on CUDA (attention as products and sums), run eagerly at a
    bucket with a padding row: the same logits as the plain step, to float32 rounding."""
    model = tiny_engine.runner.model
    plain = BucketedDecode(model, kv_bucket=16, graphs=False)
    fused = BucketedDecode(model, kv_bucket=16, graphs=False, step=model.fused_decode_step)
    slots = tiny_engine.runner.acquire(3)
    try:
        for s in slots:
            tiny_engine.runner.prefill(s, [5, 9, 14, 3][: 2 + s % 3])
        positions = [tiny_engine.runner.length(s) for s in slots]
        tokens = torch.tensor([7, 8, 9])
        with torch.inference_mode():
            a, b = plain(slots, positions, tokens), fused(slots, positions, tokens)
    finally:
        tiny_engine.runner.release(slots)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_a_resolved_config_feeds_back_into_an_engine_config(tiny_hf):
    """``tokenflow replay --verify`` rebuilds the engine from a recording's resolved config, the
    fields both classes name: their values must be ones EngineConfig takes (the resolved graphs
    flag is ``graphs``, a bool, beside the asked ``cuda_graphs``, a choice)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(EngineConfig)}
    for model in (tiny_hf, build_tiny_model(320).to("meta")):
        resolved = EngineConfig().resolve(model).as_dict()
        again = EngineConfig(**{k: v for k, v in resolved.items() if k in names})
        assert again.cuda_graphs == "auto" and "graphs" in resolved
