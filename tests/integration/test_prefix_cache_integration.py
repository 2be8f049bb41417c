"""The exact prefix cache on the real default model (SmolLM2-135M: int4 weights, int8 head,
the best kernel tier this CPU runs): cached blocks + the rest give the logits and KV bits of
a whole prefill (0, some, all tokens shared, a strict prefix, after an eviction), a chat's
second turn gives the same greedy text with and without the cache, and the hit is reported
over HTTP as ``usage.prompt_tokens_details.cached_tokens``. (The tiny model on every tier:
tests/generator/test_prefix_cache.py.)"""

from __future__ import annotations

import httpx
import pytest

from decoding import SamplingParams
from generator.prefix_cache import PrefixCache
from prefix_checks import check_same_bits
from server import Settings, create_app
from server_harness import LiveServer

pytestmark = pytest.mark.integration

SYSTEM = ("You are a careful assistant. Answer in plain words, in at most three sentences, and say so "
          "when you do not know.")


@pytest.fixture(scope="module")
def default_int4():
    from generator import Engine

    engine = Engine.load(num_slots=4, max_len=512, prefix_cache_mb=64)
    assert engine.config.quant == "int4" and engine.prefix_cache.reason is None
    return engine


def test_default_model_cached_prefill_is_the_same_bits(default_int4):
    runner = default_int4.runner
    def ask(question):
        return default_int4.encode([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                                   chat=True)

    # 63 and 60 tokens, the first 34 shared (the system prompt): they part 2 tokens into a's third block
    a = ask("Why is the sky blue during the day, and why does it turn red and orange at sunset and at sunrise?")
    b = ask("Name three rivers in Europe and say which one of them is the longest, and why that matters.")
    whole = len(a) // 16 * 16
    # room for a's whole blocks and its partial last one, no more
    cache = PrefixCache(runner, 0, budget_bytes=default_int4.prefix_cache.block_bytes * (whole // 16 + 1))
    check_same_bits(runner, cache, a, 0)
    check_same_bits(runner, cache, a, len(a) - 1)  # all shared: all but the last token
    check_same_bits(runner, cache, a[:-5], len(a) - 6)  # a strict prefix
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert shared % 16 and shared < whole  # the prompts part inside one of a's whole blocks
    check_same_bits(runner, cache, b, shared)  # a's whole blocks, then a's next block up to where they part
    assert cache.evictions > 0  # b's own block took the place of a's partial last block
    assert len(cache.match(a)) * 16 == whole  # a's whole blocks stay (b read one of them)
    check_same_bits(runner, cache, a, whole)  # after the eviction: a's whole blocks, its partial block gone


def test_default_model_chat_text_unchanged_and_cached_tokens_over_http(default_int4):
    server = LiveServer(create_app(Settings(), engine=default_int4))
    greedy = {"model": "tokenflow", "max_tokens": 24, "temperature": 0}
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a lighthouse?"}]

    def chat(messages):
        res = httpx.post(server.url + "/v1/chat/completions", json={**greedy, "messages": messages}, timeout=60)
        assert res.status_code == 200, res.text
        return res.json()

    try:
        first = chat(turn1)
        turn2 = turn1 + [first["choices"][0]["message"], {"role": "user", "content": "Who keeps it?"}]
        second = chat(turn2)
    finally:
        server.stop()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16
    # the same second turn with the cache off: the same text
    on = default_int4.prefix_cache
    default_int4.prefix_cache = PrefixCache(default_int4.runner, 0, reason="off in this test")
    try:
        ids = default_int4.encode(turn2, chat=True)
        text = default_int4.generate_text(ids, SamplingParams(strategy="greedy", max_new_tokens=24))
    finally:
        default_int4.prefix_cache = on
    assert second["choices"][0]["message"]["content"] == text
