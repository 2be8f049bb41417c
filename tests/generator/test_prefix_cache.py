"""The exact prefix cache on the tiny model, on every kernel tier this machine runs: a
prompt written as cached blocks + the rest gives the same logits and KV bits as one
prefilled from scratch (0, some, all tokens shared, a strict prefix, after an eviction);
greedy and seeded output is unchanged; a pinned block is never evicted; the budget holds;
the cache is off (and says why) where prefill is not chunk-invariant. (The default model:
tests/integration/test_prefix_cache_integration.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from decoding import SamplingParams
from generator import Engine
from generator.config import EngineConfig, EngineConfigError
from generator.prefix_cache import PrefixCache

from prefix_checks import check_same_bits as _check_same_bits, prefill as _prefill


@pytest.fixture
def tiny_int4(tiny_model_dir, tier):
    """The tiny model as the default model runs (int4, int8 head, bf16 cache) on ``tier``."""
    engine = Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="int4", num_slots=8,
                         max_len=160, prefix_cache_mb=4)
    assert engine.config.kernels == tier and engine.prefix_cache.reason is None
    return engine


@pytest.fixture(scope="module")
def tiny_best(tiny_model_dir):
    """The same on the best tier this CPU runs (the tests of bookkeeping, not of arithmetic)."""
    engine = Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="int4", num_slots=8,
                         max_len=160, prefix_cache_mb=4)
    assert engine.prefix_cache.reason is None
    return engine


def _ids(n: int, seed: int, vocab: int = 300) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_cached_blocks_plus_the_rest_give_the_bits_of_a_whole_prefill(tiny_int4):
    runner, cache = tiny_int4.runner, tiny_int4.prefix_cache
    a = _ids(40, 1)
    _check_same_bits(runner, cache, a, 0)  # nothing cached yet
    _check_same_bits(runner, cache, a, 39)  # every token shared (2 whole blocks + 8 of a partial one)
    _check_same_bits(runner, cache, a[:33], 32)  # a strict prefix: the last token prefilled
    _check_same_bits(runner, cache, a[:32], 31)  # all shared and block-aligned: the last token prefilled
    _check_same_bits(runner, cache, a + _ids(9, 2), 40)  # a longer prompt: all of a, its partial block too
    _check_same_bits(runner, cache, a[:20] + _ids(30, 3), 20)  # some shared: 4 tokens into a's second block
    _check_same_bits(runner, cache, _ids(40, 4), 0)  # none shared
    _check_same_bits(runner, cache, a[:1], 0)  # one token: always prefilled


def test_a_prompts_last_partial_block_is_kept_once_and_a_longer_one_gets_its_own(tiny_best):
    runner = tiny_best.runner
    cache = PrefixCache(runner, 4)
    a = _ids(40, 12)
    _prefill(runner, a, cache)
    assert cache.used_blocks == 3  # two whole blocks and the last 8 tokens
    _prefill(runner, a[:36], cache)  # its tail (4 tokens) begins a's partial block: nothing new
    assert cache.used_blocks == 3
    _prefill(runner, a + _ids(4, 13), cache)  # 12 tokens past the whole blocks: a block of its own
    assert cache.used_blocks == 4
    slot = runner.acquire(1)[0]
    try:
        hit, blocks = cache.admit(slot, a[:38] + _ids(5, 14))  # 6 tokens into the partial blocks
        assert hit == 38 and len(blocks) == 3
        cache.unpin(blocks)
    finally:
        runner.release([slot])


def test_the_bits_hold_across_an_eviction_and_the_budget_holds(tiny_int4):
    runner = tiny_int4.runner
    block_bytes = tiny_int4.prefix_cache.block_bytes
    cache = PrefixCache(runner, 0, budget_bytes=3 * block_bytes + 7)
    assert cache.capacity == 3
    a, b = _ids(32, 5), _ids(32, 6)  # two whole blocks each
    _check_same_bits(runner, cache, a, 0)
    _check_same_bits(runner, cache, b, 0)  # needs 2 blocks, 1 free: a's leaf block goes
    assert cache.evictions == 1 and cache.used_blocks == 3
    _check_same_bits(runner, cache, a, 16)  # a's first block survived: the chain is cut from its end
    for seed in range(10, 30):  # many distinct prompts
        _prefill(runner, _ids(40, seed), cache)
        assert cache.used_blocks <= 3 and cache.used_bytes <= 3 * block_bytes
    assert cache._blocks.shape[:2] == (3, len(runner.model.layers))
    _check_same_bits(runner, cache, _ids(40, 29), 39)  # 2 whole blocks + its partial third


def test_a_block_a_request_holds_is_never_evicted(tiny_best):
    tiny_int4 = tiny_best
    runner = tiny_int4.runner
    cache = PrefixCache(runner, 0, budget_bytes=2 * tiny_int4.prefix_cache.block_bytes)
    a = _ids(40, 7)
    _prefill(runner, a, cache)
    slot = runner.acquire(1)[0]
    hit, pinned = cache.admit(slot, a)  # a running request read these blocks
    assert hit == 32 and len(pinned) == 2
    for seed in range(20, 30):
        _prefill(runner, _ids(40, seed), cache)  # no room: nothing of a's is taken
    assert cache.match(a) == pinned and cache.evictions == 0
    cache.unpin(pinned)
    runner.release([slot])
    _prefill(runner, _ids(40, 31), cache)
    assert cache.match(a) != pinned and cache.evictions > 0


def _run(engine, requests):
    """Each request (prompt ids, params) run to its end on its own batch, one after another
    (a chat's turns): ``[(token ids, logprobs, cached tokens)]``."""
    out = []
    for ids, params in requests:
        batch = engine.batch()
        handles = batch.add_group(ids, params)
        got = {h: ([], []) for h in handles}
        cached = [batch.prefix.cached(h) for h in handles]
        while batch.active:
            for h, ev in batch.step():
                got[h][0].append(ev.token_id)
                got[h][1].append(ev.logprob)
        out.append(([got[h] for h in handles], cached))
    return out


def test_a_chats_turns_give_the_same_tokens_with_and_without_the_cache(tiny_best):
    tiny_int4 = tiny_best
    greedy = SamplingParams(strategy="greedy", max_new_tokens=12, ignore_eos=True)
    seeded = SamplingParams(strategy="top_p", top_p=0.9, seed=5, max_new_tokens=12, ignore_eos=True)
    on = tiny_int4.prefix_cache
    off = PrefixCache(tiny_int4.runner, 0, reason="off in this test")
    turn1 = _ids(30, 8)
    results = {}
    for name, cache in (("off", off), ("on", on)):
        tiny_int4.prefix_cache = cache
        try:
            first = _run(tiny_int4, [(turn1, [greedy, seeded])])
            answer = first[0][0][0][0]
            # turn 2: the conversation so far (prompt + the greedy answer) and a new message
            turn2 = turn1 + answer + _ids(10, 9)
            second = _run(tiny_int4, [(turn2, [greedy]), (turn2, [seeded.replace(n=1)])])
            results[name] = (first, second)
        finally:
            tiny_int4.prefix_cache = on
    strip = lambda runs: [choices for choices, _ in runs]  # noqa: E731
    assert strip(results["on"][0]) == strip(results["off"][0])
    assert strip(results["on"][1]) == strip(results["off"][1])
    # turn 2 reused turn 1's prompt and answer: all 41 tokens in the slot (2 whole blocks + 9 of a partial one)
    assert results["on"][1][0][1] == [41] and results["off"][1][0][1] == [0]
    assert results["on"][1][1][1] == [51]  # the second: the first's 52-token prompt, all but its last token


def test_identical_prompts_share_one_prefill_and_n_siblings_too(tiny_best):
    tiny_int4 = tiny_best
    params = SamplingParams(strategy="greedy", max_new_tokens=6, ignore_eos=True)
    a = _ids(37, 11)
    alone = _run(tiny_int4, [(a, [params])])[0][0][0]
    batch = tiny_int4.batch()
    h1 = batch.add(a, params)
    h2, h3 = batch.add_group(a, [params, params.replace(seed=1)])  # n = 2
    assert batch.prefix.cached(h2) == batch.prefix.cached(h3) == len(a)
    calls = tiny_int4.runner.forward_calls
    first = batch.step()  # one prefill forward for all three rows (the twin rides on it), no decode yet
    assert tiny_int4.runner.forward_calls == calls + 1
    got = {h: [] for h in (h1, h2, h3)}
    for events in [first] + [batch.step() for _ in range(5)]:
        for h, ev in events:
            got[h].append(ev.token_id)
    assert not batch.active
    assert got[h1] == got[h2] == got[h3] == alone[0]


def test_off_where_prefill_is_not_chunk_invariant(tiny_model_dir, tiny_engine):
    assert "float" in tiny_engine.prefix_cache.reason  # float32 weights and cache
    off = Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="int4", num_slots=2,
                      max_len=64, prefix_cache_mb=0)
    assert not off.prefix_cache.status()["enabled"] and "0" in off.prefix_cache.reason
    slot = off.runner.acquire(1)[0]
    assert off.prefix_cache.admit(slot, _ids(40, 1)) == (0, [])


def test_on_pytorchs_kernels_too_where_prompts_are_one_token_rows(tiny_model_dir, pytorchs_kernels):
    engine = Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="int4", num_slots=8,
                         max_len=160, prefix_cache_mb=4)
    assert engine.config.kernels == "aten" and engine.runner.token_rows and engine.prefix_cache.reason is None
    runner, cache = engine.runner, engine.prefix_cache
    a = _ids(40, 1)
    _check_same_bits(runner, cache, a, 0)
    _check_same_bits(runner, cache, a, 39)
    _check_same_bits(runner, cache, a[:20] + _ids(30, 3), 20)


def test_a_block_is_one_view_of_every_layers_cache_and_the_cache_knows_when_it_is_not(tiny_int4):
    """The layers' caches are views of the model's one tensor, so a block of all layers is one
    copy (``cache_span``); a model whose layer was given a cache of its own gets no prefix
    cache (it would copy stale bits), and says why."""
    model = tiny_int4.runner.model
    layer = model.layers[-1]
    layer.v_cache[2, :, 5].fill_(3.0)  # written through the layer, seen through the span
    span = model.cache_span(2, 0, 16)
    assert span.shape == (len(model.layers), 2, model.n_kv, 16, model.head_dim)
    assert torch.equal(span[-1, 1, :, 5], layer.v_cache[2, :, 5])
    assert tiny_int4.prefix_cache.block_bytes == span.numel() * span.element_size()
    layer.v_cache[2, :, 5].zero_()
    keep = layer.k_cache
    layer.use_cache(keep.clone(), layer.v_cache)
    try:
        assert model.cache_span(0, 0, 16) is None
        off = PrefixCache(tiny_int4.runner, 4)
        assert off.reason is not None and "one cache tensor" in off.reason and off.capacity == 0
    finally:
        layer.use_cache(keep, layer.v_cache)
    assert model.cache_span(0, 0, 16) is not None


def test_a_bad_budget_is_a_clear_error():
    for bad in (-1, "lots", "1.5", True):
        with pytest.raises(EngineConfigError, match="prefix_cache_mb"):
            EngineConfig(prefix_cache_mb=bad)
    assert EngineConfig(prefix_cache_mb="64").prefix_cache_mb == "64"
    res = subprocess.run([sys.executable, "-m", "generator.cli", "serve", "--prefix-cache-mb", "lots"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--prefix-cache-mb must be auto or a whole number" in res.stderr
    assert "Traceback" not in res.stderr



def test_compare_columns_reuse_the_first_columns_prefill(tiny_best):
    """`tokenflow compare` runs each column as its own stream of the engine: the later
    columns find the first one's prompt blocks, and every column's text is unchanged."""
    from generator.cli.compare import run_compare

    specs = [SamplingParams(strategy="greedy", max_new_tokens=5, ignore_eos=True),
             SamplingParams(strategy="top_k", top_k=5, max_new_tokens=5, ignore_eos=True)]
    prompt = "Streaming means every token reaches the user the moment it exists."
    on = tiny_best.prefix_cache
    tiny_best.prefix_cache = PrefixCache(tiny_best.runner, 0, reason="off in this test")
    try:
        off_runs = run_compare(tiny_best, [prompt], specs, ["g", "k"], samples=2)
    finally:
        tiny_best.prefix_cache = on
    on.clear()
    before = (on.requests, on.hit_requests)
    runs = run_compare(tiny_best, [prompt], specs, ["g", "k"], samples=2)
    prompt_tokens = runs[0].prompt_tokens
    assert prompt_tokens > 16  # a whole block to reuse
    assert (on.requests - before[0], on.hit_requests - before[1]) == (len(runs), len(runs) - 1)
    assert [[e["token_id"] for e in r.events] for r in runs] == [[e["token_id"] for e in r.events] for r in off_runs]
