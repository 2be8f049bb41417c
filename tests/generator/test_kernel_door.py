"""The door to our kernels: which runs and why (``kernels.status``), the process switch
(``kernels.use`` / ``TOKENFLOW_KERNELS``; the tiers and their fallbacks are in
test_kernel_tiers.py), and each op's PyTorch side giving what ours gives."""

import pytest
import torch

from generator import kernels

needs_kernel = pytest.mark.skipif(not kernels.ours(), reason="our kernels are off here")


def test_status_says_which_runs_and_why(pytorchs_kernels):
    off = kernels.status()
    assert off["tier"] == "aten" and off["reason"] == "forced by kernels.use('aten')" and not off["int8_activations"]
    assert not kernels.ours() and not kernels.int8_activations()
    with pytest.raises(ValueError, match="unknown kernels 'avx3'"):
        kernels.use("avx3")


def test_status_when_ours_run():
    status = kernels.status()
    assert set(status) == {"tier", "reason", "int8_activations", "activations", "tiers"}
    assert status["activations"] in (("int8", "bf16") if status["int8_activations"] else ("bf16",))
    assert kernels.ours() == (status["tier"] != "aten")
    assert status["tier"] in status["tiers"] and status["tiers"][-1] == "aten" and status["reason"]


def _greedy_case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 77, generator=g) * 4
    logits[1] = logits[1].max()  # every value tied: the first wins
    logits[2, 10] = logits[2, 60] = 1e9
    return logits


def test_greedy_pick_is_always_there(pytorchs_kernels):
    logits = _greedy_case()
    ids, logprobs = kernels.greedy_pick(logits)
    assert torch.equal(ids, logits.argmax(-1))
    torch.testing.assert_close(logprobs, logits.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1))


@needs_kernel
def test_each_op_gives_ours_result_on_pytorchs_side():
    """rms_norm, silu_mul, greedy_pick and rope_write: bit for bit; decode_attention within
    bf16 rounding (both float32 inside)."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 64, generator=g) * 3).bfloat16()
    w = torch.rand(64, generator=g) + 0.5
    gate_up = (torch.randn(3, 64, generator=g) * 3).bfloat16()
    logits = _greedy_case()
    nh, nkv, d, slots_n, length = 4, 2, 16, 5, 12
    qkv = torch.randn(2, (nh + 2 * nkv) * d, generator=g).bfloat16()
    angles = torch.arange(length + 1).float()[:, None] * torch.rand(d // 2, generator=g)[None]
    angles = torch.cat((angles, angles), -1)
    cos, sin = angles.cos().bfloat16(), torch.cat((-angles.sin()[:, : d // 2], angles.sin()[:, d // 2:]), -1).bfloat16()
    k_cache = torch.randn(slots_n, nkv, length + 1, d, generator=g).bfloat16()
    v_cache = torch.randn(slots_n, nkv, length + 1, d, generator=g).bfloat16()
    slots, positions = torch.tensor([3, 1]), torch.tensor([4, 11])

    def run():
        kc, vc = k_cache.clone(), v_cache.clone()
        q = kernels.rope_write(qkv, cos, sin, kc, vc, slots, positions, nh)
        attn = kernels.decode_attention(q, kc, vc, slots, positions + 1, d ** -0.5)
        return (kernels.rms_norm(x, w, 1e-5), kernels.silu_mul(gate_up), *kernels.greedy_pick(logits), q, kc, vc,
                attn)

    with torch.profiler.profile() as prof:
        ours = run()
    assert "tokenflow::decode_attention" in {e.name for e in prof.events()}
    previous = kernels.use("aten")
    try:
        with torch.profiler.profile() as prof:
            theirs = run()
        assert not any(e.name.startswith("tokenflow::") for e in prof.events())
    finally:
        kernels.use(previous)
    for a, b in zip(ours[:-1], theirs[:-1]):
        if a.dtype == torch.float32:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(a, b)
    torch.testing.assert_close(ours[-1].float(), theirs[-1].float(), atol=2e-2, rtol=2 ** -7)
