"""The prefix cache's exactness check, shared by the tiny-model and default-model tests:
a prompt written as cached blocks + the rest against the same prompt prefilled whole."""

from __future__ import annotations

import torch


def prefill(runner, ids: list[int], cache):
    """``(tokens reused, last logits, the slot's KV)`` of ``ids`` written with or without ``cache``
    (then kept in it, as the batch does once a prompt is written)."""
    slot = runner.acquire(1)[0]
    hit, pins = cache.admit(slot, ids) if cache is not None else (0, [])
    try:
        logits = runner.prefill(slot, ids[hit:], start=hit)
        kv = [torch.cat([layer.k_cache[slot, :, : len(ids)], layer.v_cache[slot, :, : len(ids)]])
              for layer in runner.model.layers]
        if cache is not None:
            cache.insert(slot, ids)
            cache.unpin(pins)
    finally:
        runner.release([slot])
    return hit, logits, kv


def check_same_bits(runner, cache, ids, expect_hit):
    hit, logits, kv = prefill(runner, ids, cache)
    _, ref_logits, ref_kv = prefill(runner, ids, None)
    assert hit == expect_hit
    assert torch.equal(logits, ref_logits)
    assert all(torch.equal(a, b) for a, b in zip(kv, ref_kv))
