"""The slot runner on the tiny random Llama: our forward against transformers', the
static cache's slots (ragged rows, chunked prefill, copies), the weight formats and
the compiled step."""

import numpy as np
import pytest
import torch

from decoding import ParamError, SamplingParams
from generator.model.hf import HFRunner
from generator.model.llama import linear_kinds
from generator.model.runner import FastRunner, SlotsExhausted
from generator.weights.formats import Int4Linear, Int8Linear
from generator.weights.gguf import dequantize_q4_1

from conftest import build_fast_llama, build_tiny_model

VOCAB = 320


@pytest.fixture(scope="module")
def tiny_hf():
    return build_tiny_model(VOCAB)


def _runner(model, quant="none", compile=False, chunk=256, slots=4):
    return FastRunner(build_fast_llama(model, quant=quant, num_slots=slots, max_len=64), compile=compile,
                      prefill_chunk=chunk)


def test_prefill_and_decode_match_transformers(tiny_hf):
    ours, ref = _runner(tiny_hf, chunk=5), HFRunner(tiny_hf)  # 13 tokens: chunks of 5, 5, 3
    ids = torch.randint(0, VOCAB, (13,), generator=torch.Generator().manual_seed(0)).tolist()
    a, b = ours.prefill(0, ids), ref.prefill(0, ids)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for _ in range(4):
        tok = b.argmax(-1)
        a, b = ours.decode([0], tok), ref.decode([0], tok)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert ours.length(0) == 17


def test_rows_at_different_positions_and_copies(tiny_hf):
    """One decode over slots of different lengths equals each row on its own; a copied
    slot continues exactly like its source."""
    ours, ref = _runner(tiny_hf), HFRunner(tiny_hf)
    long, short = list(range(3, 20)), list(range(40, 45))
    for r in (ours, ref):
        r.prefill(2, long)
        r.prefill(0, short)
    both = ours.decode([2, 0], torch.tensor([7, 9]))
    torch.testing.assert_close(both, ref.decode([2, 0], torch.tensor([7, 9])), atol=1e-4, rtol=1e-4)
    assert (ours.length(2), ours.length(0)) == (18, 6)
    ours.copy_slots([0], [3])
    ref.copy_slots([0], [3])
    a = ours.decode([3, 0], torch.tensor([11, 12]))
    b = ref.decode([3, 0], torch.tensor([11, 12]))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # A permutation in place (what a beam reorder does) swaps the rows' continuations.
    ours.copy_slots(torch.tensor([0, 3]), [3, 0], length=ours.length(0))
    swapped = ours.decode([3, 0], torch.tensor([11, 12]))
    assert not torch.allclose(swapped, a)


def test_decode_over_a_slot_range_leaves_the_slots_between_intact(tiny_hf):
    """Rows in slots 0 and 2 decode as one slot range (slot 1 a padding row at the scratch
    position); slot 1, half prefilled meanwhile, then continues as if nothing ran beside it.
    Rows far apart (slots 0 and 7) take the gathering path; both equal the reference."""
    ours, ref = _runner(tiny_hf, slots=8), HFRunner(tiny_hf, num_slots=8)
    reads = []  # which way each decode read the cache: first_slot (a view) or None (a gather)
    real_decode_step = ours.model.decode_step
    ours.model.decode_step = lambda *a, **kw: reads.append(kw.get("first_slot")) or real_decode_step(*a, **kw)
    a_ids, b_ids, c_ids = list(range(3, 20)), list(range(40, 45)), list(range(60, 70))
    for r in (ours, ref):
        r.prefill(0, a_ids)
        r.prefill(2, b_ids)
        r.prefill(1, c_ids[:6])
        r.prefill(7, b_ids)
    for step in range(3):
        toks = torch.tensor([5 + step, 9 + step])
        torch.testing.assert_close(ours.decode([2, 0], toks), ref.decode([2, 0], toks), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.decode([7, 0], toks), ref.decode([7, 0], toks), atol=1e-4, rtol=1e-4)
    assert ours.length(1) == 6
    torch.testing.assert_close(ours.prefill(1, c_ids[6:], start=6), ref.prefill(1, c_ids[6:], start=6),
                               atol=1e-4, rtol=1e-4)
    toks = torch.tensor([1, 2, 3])
    torch.testing.assert_close(ours.decode([0, 1, 2], toks), ref.decode([0, 1, 2], toks), atol=1e-4, rtol=1e-4)
    assert reads == [0, None] * 3 + [0]  # [2, 0] and [0, 1, 2] through a view, [7, 0] gathered


def test_prefill_many_equals_one_prefill_each(tiny_hf):
    """Several prompts in one forward (padded rows, one continuing at start > 0, chunked
    in column windows) give each row the logits and cache of its own prefill."""
    ours = _runner(tiny_hf, chunk=5, slots=4)
    ref = HFRunner(tiny_hf, num_slots=4)
    a, b, c = list(range(3, 16)), list(range(40, 43)), list(range(60, 70))
    for r in (ours, ref):
        r.prefill(2, c[:4])
    many = ours.prefill_many([0, 1, 2], [a, b, c[4:]], [0, 0, 4])
    each = torch.cat([ref.prefill(0, a), ref.prefill(1, b), ref.prefill(2, c[4:], start=4)])
    torch.testing.assert_close(many, each, atol=1e-4, rtol=1e-4)
    assert [ours.length(s) for s in (0, 1, 2)] == [13, 3, 10]
    toks = torch.tensor([5, 6, 7])
    torch.testing.assert_close(ours.decode([0, 1, 2], toks), ref.decode([0, 1, 2], toks), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="distinct"):
        ours.prefill_many([3, 3], [a, b], [0, 0])


def test_prefill_chunk_size_does_not_change_logits(tiny_hf):
    ids = list(range(5, 50))
    one = _runner(tiny_hf, chunk=256).prefill(0, ids)
    torch.testing.assert_close(_runner(tiny_hf, chunk=7).prefill(0, ids), one, atol=1e-5, rtol=1e-5)


def test_slots_are_reserved_and_released(tiny_hf):
    r = _runner(tiny_hf, slots=3)
    a = r.acquire(2)
    with pytest.raises(SlotsExhausted):
        r.acquire(2)
    r.release(a)
    assert r.acquire(3) == [0, 1, 2]


def test_too_many_beams_for_the_slots_is_a_param_error(tiny_engine):
    with pytest.raises(ParamError) as err:
        list(tiny_engine.stream("Once", SamplingParams(strategy="beam", num_beams=9)))
    assert err.value.field == "num_beams"


def test_streams_release_their_slots(tiny_engine):
    free = tiny_engine.runner.num_slots
    stream = tiny_engine.stream("Once", SamplingParams(max_new_tokens=30, ignore_eos=True))
    next(stream)
    stream.close()  # a client that went away
    assert len(tiny_engine.runner.acquire(free)) == free
    tiny_engine.runner.release(range(free))


def _q4_1_bytes(rng, n, k):
    """Random GGUF Q4_1 blocks: f16 d, f16 m, 16 bytes of nibbles per 32 values."""
    blocks = np.zeros((n, k // 32, 20), dtype=np.uint8)
    blocks[..., 0:2] = rng.uniform(0.001, 0.05, (n, k // 32, 1)).astype(np.float16).view(np.uint8)
    blocks[..., 2:4] = rng.uniform(-0.4, 0.0, (n, k // 32, 1)).astype(np.float16).view(np.uint8)
    blocks[..., 4:] = rng.integers(0, 256, (n, k // 32, 16), dtype=np.uint8)
    return blocks.reshape(n, -1)


def test_int4_from_q4_1_blocks_keeps_the_gguf_weights():
    """The kernel computes with the GGUF's own codes; only d and m + 8d are rounded to bf16."""
    rng = np.random.default_rng(0)
    n, k = 48, 128
    blocks = _q4_1_bytes(rng, n, k)
    ref = dequantize_q4_1(blocks, n, k)
    lin = Int4Linear.from_q4_1(blocks, n, k)
    w = lin.dequantized()
    # bf16 keeps 8 significant bits: error <= 2^-8 relative to (|d| * 8 + |m + 8d|) per element.
    assert (w - ref).abs().max() <= 2 ** -8 * (ref.abs().max() + 0.4) + 1e-6
    x = torch.randn(3, k, dtype=torch.bfloat16)
    y = lin(x).float()
    torch.testing.assert_close(y, x.float() @ w.T, atol=0.05, rtol=0.02)


def test_int8_and_int4_linears_approximate_the_float_weight():
    torch.manual_seed(0)
    w = torch.randn(64, 96)
    for lin, tol in ((Int8Linear(w), 0.01), (Int4Linear.from_float(w), 0.2)):
        err = (lin.dequantized() - w).abs().max() / w.abs().max()
        assert err < tol, (type(lin).__name__, err)


@pytest.mark.parametrize("quant,min_cos", [("int8", 0.95), ("int4", 0.8)])
def test_quantized_formats_run_and_track_float32(tiny_hf, quant, min_cos):
    """Random weights re-quantized from float (no GGUF here): close to float32, not equal."""
    r = _runner(tiny_hf, quant=quant)
    kinds = linear_kinds(r.model)
    assert kinds.get("Int8Linear" if quant == "int8" else "Int4Linear", 0) >= 8
    ids = list(range(3, 20))
    ref = _runner(tiny_hf).prefill(0, ids)
    ours = r.prefill(0, ids)
    cos = torch.nn.functional.cosine_similarity(ours, ref).item()
    assert cos > min_cos, cos


def test_compiled_step_equals_the_eager_step(tiny_hf):
    """The compiled decode step: same logits as eager, for batch 1 and a ragged batch 2."""
    eager, compiled = _runner(tiny_hf), _runner(tiny_hf, compile=True)
    assert compiled.compiled and not eager.compiled
    notes: list[str] = []
    compiled.compile_notice = notes.append
    for r in (eager, compiled):
        r.prefill(0, list(range(3, 16)))
        r.prefill(1, list(range(20, 26)))
    for slots, toks in (([0], [4]), ([0, 1], [5, 6]), ([1, 0], [7, 8])):
        a = compiled.decode(slots, torch.tensor(toks))
        b = eager.decode(slots, torch.tensor(toks))
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # One notice before and one after each new shape (1 row, then 2 rows), none for a seen one.
    assert len(notes) == 4 and "1 row(s)" in notes[0] and "2 row(s)" in notes[2], notes
    assert notes[1].startswith("compiled in") and notes[3].startswith("compiled in")


def test_two_compiled_models_in_one_process_keep_their_own_code(tiny_hf):
    """The compiled step skips dynamo's guards on the model's modules; a second model of
    another layout (here an int8 head, no head weight of the same name) must still get
    its own compiled code, not the first one's."""
    runners = [FastRunner(build_fast_llama(tiny_hf, quant="int8", head=head, num_slots=2, max_len=64),
                          compile=True) for head in ("none", "int8")]
    eager = [FastRunner(build_fast_llama(tiny_hf, quant="int8", head=head, num_slots=2, max_len=64),
                        compile=False) for head in ("none", "int8")]
    for r in runners + eager:
        r.prefill(0, list(range(3, 12)))
    for c, e in zip(runners, eager):
        torch.testing.assert_close(c.decode([0], torch.tensor([5])), e.decode([0], torch.tensor([5])),
                                   atol=0.1, rtol=0)


def test_cli_quant_and_no_compile_flags(tiny_model_dir):
    import subprocess
    import sys

    base = [sys.executable, "-m", "generator.cli", "generate", "Once upon a time", "--model", str(tiny_model_dir),
            "--max-new-tokens", "6", "--ignore-eos", "--no-compile"]
    ok = subprocess.run(base + ["--quant", "int8"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr
    bad = subprocess.run(base + ["--quant", "int3"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "quant" in bad.stderr and "Traceback" not in bad.stderr
    head = subprocess.run(base + ["--quant", "int4", "--head", "int4", "--dense-prefill"], capture_output=True,
                          text=True, timeout=120)
    assert head.returncode == 0 and head.stdout.strip(), head.stderr
    bad_head = subprocess.run(base + ["--head", "int2"], capture_output=True, text=True, timeout=120)
    assert bad_head.returncode == 2 and "--head" in bad_head.stderr and "Traceback" not in bad_head.stderr


@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_dense_prefill_copy_is_used_for_long_chunks_only(tiny_hf, quant):
    """With ``dense_prefill`` a quantized linear multiplies inputs of 32+ rows by a bf16
    copy of exactly its kernel's weight; shorter inputs (decode steps) still take the
    packed kernel, bit for bit."""
    from generator.weights.formats import DENSE_MIN_ROWS

    # bf16 activations: the copy stands for exactly what the bf16 kernel computes with.
    packed = build_fast_llama(tiny_hf, quant=quant, num_slots=1, max_len=64, activations="bf16")
    dense = build_fast_llama(tiny_hf, quant=quant, num_slots=1, max_len=64, dense_prefill=True,
                              activations="bf16")
    lin_p, lin_d = packed.layers[0].gate_up, dense.layers[0].gate_up
    assert getattr(lin_p, "dense", None) is None
    torch.testing.assert_close(lin_d.dense.float(), lin_d.dequantized(), atol=0, rtol=2 ** -8)
    short = torch.randn(DENSE_MIN_ROWS - 1, lin_p.dequantized().shape[1]).bfloat16()
    long = torch.randn(DENSE_MIN_ROWS, short.shape[1]).bfloat16()
    with torch.inference_mode():
        assert torch.equal(lin_d(short), lin_p(short))
        assert torch.equal(lin_d(long), torch.nn.functional.linear(long, lin_d.dense))  # the copy, used
        ref = long.float() @ lin_p.dequantized().T
        for y in (lin_d(long), lin_p(long)):
            torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.05)
    # The whole model: a 40-token prompt's logits stay close; decode bytes are unchanged.
    ids = list(range(3, 43))
    a = FastRunner(packed, compile=False).prefill(0, ids)
    b = FastRunner(dense, compile=False).prefill(0, ids)
    assert torch.nn.functional.cosine_similarity(a, b).item() > 0.999
    assert dense.weight_bytes() == packed.weight_bytes()


@pytest.mark.parametrize("quant,head,kinds", [
    ("int4", "auto", {"Int4Linear": 8, "Int8Linear": 1}),   # the GGUF's layout: 8-bit head
    ("int4", "int4", {"Int4Linear": 9}),
    ("int8", "none", {"Int8Linear": 8, "DenseLinear": 1}),
    ("none", "auto", {"DenseLinear": 9}),
])
def test_head_format_is_chosen_apart_from_the_body(tiny_hf, quant, head, kinds):
    model = build_fast_llama(tiny_hf, quant=quant, head=head, num_slots=1, max_len=32)
    assert linear_kinds(model) == kinds
    runner = FastRunner(model, compile=False)
    logits = runner.prefill(0, list(range(3, 10)))
    assert logits.shape == (1, VOCAB) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="head"):
        build_fast_llama(tiny_hf, quant=quant, head="int3", num_slots=1, max_len=32)
