"""The kernel tiers (avx512, avx2, portable) against each other on the same packed tensors,
the tiny model's greedy tokens on each, and how a tier is chosen: the CPU's features,
TOKENFLOW_KERNELS, and the fallbacks when a tier cannot run. Each op's own tests against
the float32 and PyTorch references run on every tier too (test_kernels.py, ``tier``)."""

import os
import subprocess
import sys

import pytest
import torch

from generator import kernels
from generator.kernels import GROUP, build, ops
from generator.model.runner import FastRunner

from conftest import build_fast_llama, build_tiny_model

TIERS = [t for t in kernels.status()["tiers"] if t != "aten"]
# Run under TOKENFLOW_KERNELS=aten (the suite once per forced tier), this process builds
# no tier at all: what the machine builds is then a question for a process without it.
forced_aten = pytest.mark.skipif(kernels.status()["reason"].startswith("forced by TOKENFLOW_KERNELS=aten"),
                                 reason="TOKENFLOW_KERNELS=aten: this process builds no tier")
needs_two_tiers = pytest.mark.skipif(len(TIERS) < 2, reason="one kernel tier on this machine: nothing to compare")
ROWS = [1, 3, 8, 9, 16]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bf16_close(actual: torch.Tensor, expected: torch.Tensor, units: float = 2.0) -> None:
    # Float sums in another order, each output rounded once to bf16: within a unit or two.
    scale = expected.float().abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), atol=scale * units * 2 ** -8, rtol=units * 2 ** -8)


def _on_each_tier(fn):
    """``{tier: fn()}`` with each tier switched on in turn."""
    out = {}
    for t in TIERS:
        previous = kernels.use(t)
        try:
            assert kernels.status()["tier"] == t
            out[t] = fn()
        finally:
            kernels.use(previous)
    return out


@forced_aten
def test_every_tier_the_cpu_runs_is_built():
    runs = build.runnable()
    assert runs[-1] == "portable"  # on any CPU with a C compiler
    assert TIERS == list(runs)  # this machine compiles all it runs
    flags = build.cpu_features()
    if {"avx2", "fma", "f16c"} <= flags:
        assert "avx2" in TIERS  # no kernel test skips on an AVX2 machine
    assert ("avx512" in TIERS) == ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"} <= flags)


@needs_two_tiers
@pytest.mark.parametrize("m", ROWS)
def test_tiers_agree_on_every_matmul(m):
    """One packed weight of each kind, run on every tier: the same result as the portable
    tier's within float rounding, across tile edges (1/3/8/9/16 rows), odd block counts (48
    channels: 3 blocks of 16, 6 units of 8), an all-zero input group and an all-zero weight group."""
    n, k = 48, 96
    g = torch.Generator().manual_seed(m)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
    scale = torch.rand(n, k // GROUP, generator=g) * 0.02 + 1e-3
    zero = torch.randn(n, k // GROUP, generator=g) * 0.05
    codes[5, 32:64], zero[5, 1] = 8, 0.0  # a weight group of zeros: (8 - 8) * s + 0
    q8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    q8[7] = 0
    scales = (torch.rand(n, generator=g) * 0.01 + 1e-3).bfloat16()
    x = torch.randn(m, k, generator=g).bfloat16()
    x[0, 32:64] = 0  # an all-zero input group: int8 step 0
    w4, w4q, w8, w8q = kernels.pack(codes, scale, zero), kernels.pack_q8(codes, scale, zero), kernels.pack_int8(
        torch.cat((q8, q8[:16]))), kernels.pack_int8_q8(q8)  # the bf16 int8 kernel tiles 32 channels

    def run():
        out = {"int4_mm": kernels.int4_mm(x, *w4), "int8_mm": kernels.int8_mm(x, w8, torch.cat((scales, scales[:16])))}
        if kernels.int8_activations():
            out |= {"int4_q8_mm": kernels.int4_q8_mm(x, *w4q), "int8_q8_mm": kernels.int8_q8_mm(x, w8q, scales)}
        return out

    results = _on_each_tier(run)
    ref = results["portable"]
    assert set(ref) == {"int4_mm", "int8_mm", "int4_q8_mm", "int8_q8_mm"}
    for tier, out in results.items():
        for name, y in out.items():
            assert y.shape == ref[name].shape and y.dtype == torch.bfloat16, (tier, name)
            _bf16_close(y, ref[name])
            if name.startswith("int4"):
                assert torch.equal(y[:, 5], ref[name][:, 5]) or (y[:, 5].float() - ref[name][:, 5].float()).abs().max() < 0.05


@needs_two_tiers
def test_tiers_agree_on_the_elementwise_ops():
    """RMSNorm, SiLU*mul and RoPE + cache writes give the same bits on every tier (each
    rounds as the eager bf16 ops do); the greedy pick the same ids; attention within rounding."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(9, 64, generator=g) * 3).bfloat16()
    w = torch.rand(64, generator=g) + 0.5
    gate_up = (torch.randn(9, 96, generator=g) * 4).bfloat16()
    logits = torch.randn(9, 1000, generator=g) * 5
    logits[3] = float("-inf")
    nh, nkv, d, length = 6, 2, 32, 40
    qkv = torch.randn(9, (nh + 2 * nkv) * d, generator=g).bfloat16()
    angles = torch.arange(length).float()[:, None] * torch.rand(d // 2, generator=g)[None]
    angles = torch.cat((angles, angles), -1)
    cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
    slots, positions = torch.arange(9), torch.tensor([0, 1, 15, 16, 17, 31, 32, 38, 39])
    cache = torch.randn(9, nkv, length, d, generator=g).bfloat16()

    def run():
        kc, vc = cache.clone(), cache.clone()
        q = kernels.rope_write(qkv, cos, sin, kc, vc, slots, positions, nh)
        attn = kernels.decode_attention(q, kc, vc, slots, positions + 1, d ** -0.5)
        return kernels.rms_norm(x, w, 1e-5), kernels.silu_mul(gate_up), *kernels.greedy_pick(logits), q, kc, vc, attn

    results = _on_each_tier(run)
    ref = results["portable"]
    for tier, out in results.items():
        for i, name in enumerate(("rms_norm", "silu_mul", "ids", "logprobs", "q", "k_cache", "v_cache")):
            if name == "logprobs":
                torch.testing.assert_close(out[i], ref[i], atol=1e-5, rtol=1e-5, equal_nan=True)
            else:
                assert torch.equal(out[i], ref[i]), (tier, name)
        torch.testing.assert_close(out[-1].float(), ref[-1].float(), atol=1e-2, rtol=2 ** -7)


@needs_two_tiers
@pytest.mark.parametrize("activations", ["bf16", "int8"])
def test_tiny_model_gives_the_same_greedy_tokens_on_every_tier(activations):
    """One packed model (the layouts are the same on every tier) run on each tier: prefill
    and 6 batched one-token steps of 4 rows, each fed the portable tier's greedy tokens, give
    logits within rounding and the same greedy tokens, but where the portable tier's best two
    logits are within two bf16 units (a random tiny model's near-ties: there a one-unit
    difference picks the other; left to run free, the rows would then part)."""
    tiny = build_tiny_model(320)
    model = build_fast_llama(tiny, quant="int4", num_slots=4, max_len=64, activations=activations)
    if activations == "int8" and model.activations != "int8":
        pytest.skip("int8 activations do not run on this machine's best tier")
    prompts = [[5, 9, 14, 200, 31], [7, 7, 8], [100, 3, 54, 2, 9, 11, 250], [1]]
    previous = kernels.use("portable")
    try:
        runner = FastRunner(model, compile=False)
        feed = [torch.cat([runner.prefill(slot, ids) for slot, ids in enumerate(prompts)]).argmax(-1)]
        for _ in range(6):
            feed.append(runner.decode([0, 1, 2, 3], feed[-1]).argmax(-1))
    finally:
        kernels.use(previous)

    def run():
        runner = FastRunner(model, compile=False)
        logits = [torch.cat([runner.prefill(slot, ids) for slot, ids in enumerate(prompts)])]
        logits += [runner.decode([0, 1, 2, 3], tokens) for tokens in feed[:-1]]
        return torch.stack(logits)

    results = _on_each_tier(run)
    expected, ref = torch.stack(feed), results["portable"]
    for tier, logits in results.items():
        cos = torch.nn.functional.cosine_similarity(logits, ref, dim=-1)
        assert cos.min().item() > 0.999, tier
        picked = logits.argmax(-1)
        # The tolerance: the logits are bf16 values, so where the reference's best two are
        # within two bf16 units of each other another tier may pick the other one.
        best = ref.gather(-1, expected[..., None]).squeeze(-1)
        other = ref.gather(-1, picked[..., None]).squeeze(-1)
        near_tie = (best - other) <= 2 * 2 ** -8 * best.abs()
        assert bool((picked == expected).logical_or(near_tie).all()), (tier, picked, expected)
        assert (picked != expected).sum().item() <= 2, tier


# -- choosing a tier -------------------------------------------------------------------------
@pytest.fixture
def door(monkeypatch):
    """The door asked again from scratch, with the environment and CPU the test sets; the
    process's own choice (and the tier its library runs) put back afterwards."""
    saved = ops._status
    monkeypatch.setattr(ops, "_choice", None)
    monkeypatch.setattr(ops, "_status", None)
    for var in ("TOKENFLOW_KERNELS", "TOKENFLOW_INT4_KERNEL"):
        monkeypatch.delenv(var, raising=False)
    yield monkeypatch
    ops._status = None
    if saved is not None and saved["tier"] != "aten":
        torch.ops.tokenflow.use_tier(saved["tier"])


def _fake_cpu(monkeypatch, *features):
    monkeypatch.setattr(build, "cpu_features", lambda: frozenset(features))


@pytest.mark.skipif("avx2" not in TIERS, reason="needs an x86-64 CPU with AVX2 to stand in for the others")
def test_a_tier_above_the_cpu_is_refused_or_lowered_with_the_reason(door):
    _fake_cpu(door, "avx2", "fma", "f16c")  # an AVX2-only CPU
    assert build.runnable() == ("avx2", "portable")
    with pytest.raises(ValueError, match=r"'avx512' cannot run here: no AVX512F, .*AVX512_BF16 \(this CPU runs avx2, portable\)"):
        kernels.use("avx512")
    status = kernels.status()  # auto: the best it runs, and why not the one above
    assert status["tier"] == "avx2" and status["tiers"] == ["avx2", "portable", "aten"]
    assert status["reason"].startswith("the best tier this CPU runs (avx512: no AVX512F")
    assert status["int8_activations"]  # vpmaddubsw: every AVX2 CPU
    door.setenv("TOKENFLOW_KERNELS", "avx512")  # asked by the variable: a logged fallback
    ops._choice = ops._status = None
    status = kernels.status()
    assert status["tier"] == "avx2" and status["reason"].startswith("TOKENFLOW_KERNELS=avx512 asked, but no AVX512F")
    assert status["reason"].endswith("running avx2")
    _fake_cpu(door)  # a CPU with nothing we know (or no way to read its features)
    ops._choice = ops._status = None
    door.delenv("TOKENFLOW_KERNELS")
    status = kernels.status()
    assert status["tier"] == "portable" and "avx2: no AVX2, FMA, F16C" in status["reason"]


@pytest.mark.parametrize("env,expected,reason", [
    ({"TOKENFLOW_KERNELS": "portable"}, "portable", "forced by TOKENFLOW_KERNELS=portable"),
    ({"TOKENFLOW_KERNELS": "aten"}, "aten", "forced by TOKENFLOW_KERNELS=aten"),
    ({"TOKENFLOW_INT4_KERNEL": "aten"}, "aten", "forced by TOKENFLOW_INT4_KERNEL=aten"),
    ({"TOKENFLOW_KERNELS": "AVX2 "}, "avx2", "forced by TOKENFLOW_KERNELS=avx2"),
    ({"TOKENFLOW_KERNELS": "fast"}, None, "TOKENFLOW_KERNELS=fast asked, but not one of auto, avx512, avx2, "
                                          "portable, aten: running "),
])
def test_tokenflow_kernels_forces_a_tier(door, env, expected, reason):
    if expected is None and not TIERS:
        pytest.skip("TOKENFLOW_KERNELS=aten: this process builds no tier to fall back to")
    if expected not in (None, "aten", *TIERS):
        pytest.skip(f"this CPU does not run {expected}")
    for var, value in env.items():
        door.setenv(var, value)
    status = kernels.status()
    assert status["tier"] == (expected or TIERS[0]) and status["reason"].startswith(reason)
    assert kernels.ours() == (status["tier"] != "aten")


@forced_aten
def test_the_variable_reaches_a_new_process():
    env = dict(os.environ, TOKENFLOW_KERNELS="portable")
    out = subprocess.run([sys.executable, "-c", "from generator import kernels; s = kernels.status(); "
                          "print(s['tier'], s['int8_activations'])"],
                         env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == (["portable", "True"] if TIERS else ["aten", "False"])


def test_cpu_features_and_what_each_tier_needs(monkeypatch):
    _fake_cpu(monkeypatch, "avx2", "fma")
    monkeypatch.setattr(build.platform, "machine", lambda: "x86_64")
    assert build.missing("avx2") == "no F16C" and build.missing("portable") is None
    assert build.missing("neon") == "'neon' is not a tier"
    monkeypatch.setattr(build.platform, "machine", lambda: "aarch64")
    _fake_cpu(monkeypatch, "asimd", "asimddp")
    assert build.missing("avx2") == "not an x86-64 CPU (aarch64)" and build.runnable() == ("portable",)


def test_without_a_c_compiler_pytorchs_ops_run(monkeypatch):
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    assert build.load.__wrapped__() == ((), "no C compiler")


@forced_aten  # it fakes the load, so the real library must be in the process already
def test_a_tier_the_compiler_cannot_build_is_left_out(monkeypatch):
    """An older compiler without a tier's flags: that tier is dropped (and named as the
    reason), the others still build."""
    calls = []

    def fake_build(tiers):
        calls.append(tiers)
        if "avx2" in tiers:
            exc = subprocess.CalledProcessError(1, ["cc"], stderr=b"cc: error: unrecognized option '-mf16c'")
            exc.tier = "avx2"
            raise exc
        return "unused.so"

    monkeypatch.setattr(build, "runnable", lambda: ("avx2", "portable"))
    monkeypatch.setattr(build, "_build", fake_build)
    monkeypatch.setattr(build.torch.ops, "load_library", lambda path: None)
    monkeypatch.setattr(build, "_register_fakes", lambda: None)
    monkeypatch.setattr(build, "_unbuilt", {})
    build.load.__wrapped__()
    assert calls == [("avx2", "portable"), ("portable",)]
    assert build._unbuilt == {"avx2": "the C compiler could not build it"}
