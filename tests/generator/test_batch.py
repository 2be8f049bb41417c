"""The batched generation core: rows join and leave a running batch, and a row's
tokens do not depend on the rows beside it.

Exact row independence is checked on a "fixed logits" runner, whose logits for a
row are a function of that row's own tokens only (no floating-point batch effects);
the tiny random model checks that the real runner does one forward per step."""

from __future__ import annotations

import copy

import torch

from decoding import SamplingParams
from generator.batch import BatchGenerator
from generator.model.runner import Slots

PROMPT = "Once upon a time"


class FixedLogitsRunner(Slots):
    """The slot interface with logits that depend only on the slot's own token
    sequence (its last token and length), seeded: row independence is exact."""

    def __init__(self, vocab: int, num_slots: int = 16, max_len: int = 256):
        super().__init__(num_slots, max_len)
        self.vocab = vocab
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.prefill_chunk = 4
        self.tokens: dict[int, list[int]] = {}

    def _logits(self, seq: list[int]) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seq[-1] * 1000 + len(seq))
        return torch.randn(self.vocab, generator=gen) * 3

    def prefill(self, slot, ids, start=0):
        ids = [int(t) for t in ids]
        self.tokens[slot] = self.tokens.get(slot, [])[:start] + ids
        self.lengths[slot] = len(self.tokens[slot])
        self.forward_calls += 1
        return self._logits(self.tokens[slot])[None]

    def decode(self, slots, token_ids):
        self.forward_calls += 1
        rows = []
        for s, t in zip(slots, token_ids.tolist()):
            self.tokens[s] = self.tokens[s] + [int(t)]
            self.lengths[s] += 1
            rows.append(self._logits(self.tokens[s]))
        return torch.stack(rows)

    def copy_slots(self, src, dst, length=None):
        src = src.tolist() if isinstance(src, torch.Tensor) else list(src)
        dst = dst.tolist() if isinstance(dst, torch.Tensor) else list(dst)
        copies = [list(self.tokens[s][:length] if length else self.tokens[s]) for s in src]
        for d, seq in zip(dst, copies):
            self.tokens[d] = seq
            self.lengths[d] = len(seq)


def fixed_engine(tiny_engine):
    """The tiny engine (tokenizer, limits, stop ids) over a fixed-logits runner."""
    engine = copy.copy(tiny_engine)
    engine.runner = FixedLogitsRunner(tiny_engine.model.config.vocab_size)
    return engine


def alone(engine, params, prompt=PROMPT):
    return [(ev.token_id, ev.text, ev.finish_reason) for ev in engine.stream(prompt, params)]


def run_batch(batch: BatchGenerator, handles: list[int], steps=None) -> dict[int, list]:
    out = {h: [] for h in handles}
    n = 0
    while batch.active and (steps is None or n < steps):
        for h, ev in batch.step():
            out.setdefault(h, []).append((ev.token_id, ev.text, ev.finish_reason))
        n += 1
    return out


MIXED = [
    SamplingParams(strategy="greedy", max_new_tokens=12, ignore_eos=True),
    SamplingParams(strategy="sample", temperature=1.0, seed=1, max_new_tokens=15, ignore_eos=True),
    SamplingParams(strategy="sample", temperature=0.7, top_k=20, top_p=0.9, seed=2, max_new_tokens=9,
                   ignore_eos=True),
    SamplingParams(strategy="min_p", temperature=1.2, min_p=0.05, repetition_penalty=1.3, seed=3,
                   max_new_tokens=14, ignore_eos=True),
    SamplingParams(strategy="beam", num_beams=3, max_new_tokens=10),
]


def test_rows_with_different_seeds_and_strategies_equal_running_alone(tiny_engine):
    engine = fixed_engine(tiny_engine)
    ids = engine.encode(PROMPT)
    batch = engine.batch()
    handles = [batch.add(ids, p) for p in MIXED]
    got = run_batch(batch, handles)
    for h, p in zip(handles, MIXED):
        assert got[h] == alone(engine, p), p
    assert engine.runner.free_count == engine.runner.num_slots  # every row gave its slots back


def test_leaving_mid_batch_leaves_the_others_unchanged(tiny_engine):
    engine = fixed_engine(tiny_engine)
    ids = engine.encode(PROMPT)
    params = [SamplingParams(strategy="sample", temperature=1.0, seed=s, max_new_tokens=20, ignore_eos=True)
              for s in (11, 12, 13)]
    batch = engine.batch()
    handles = [batch.add(ids, p) for p in params]
    got = run_batch(batch, handles, steps=5)
    batch.cancel(handles[1])
    assert engine.runner.free_count == engine.runner.num_slots - 2  # its slot is free at once
    rest = run_batch(batch, [handles[0], handles[2]])
    for h, p in ((handles[0], params[0]), (handles[2], params[2])):
        assert got[h] + rest[h] == alone(engine, p)
    assert handles[1] not in rest or rest[handles[1]] == []


def test_joining_mid_batch_gets_its_first_token_before_the_others_finish(tiny_engine):
    engine = fixed_engine(tiny_engine)
    ids = engine.encode(PROMPT)
    long = [SamplingParams(strategy="sample", seed=s, max_new_tokens=40, ignore_eos=True) for s in (1, 2)]
    late = SamplingParams(strategy="sample", temperature=0.8, seed=5, max_new_tokens=6, ignore_eos=True)
    batch = engine.batch()
    first = [batch.add(ids, p) for p in long]
    got = run_batch(batch, first, steps=10)
    late_ids = engine.encode("The capital of France")
    joiner = batch.add(late_ids, late)
    seen_first_at = None
    step = 10
    while batch.active:
        step += 1
        for h, ev in batch.step():
            got.setdefault(h, []).append((ev.token_id, ev.text, ev.finish_reason))
            if h == joiner and seen_first_at is None:
                seen_first_at = step
    # As soon as its prompt is written (4 tokens a step here), while the long rows run to step 40.
    assert seen_first_at == 10 + -(-len(late_ids) // 4) < 40
    assert got[joiner] == alone(engine, late, "The capital of France")
    for h, p in zip(first, long):
        assert got[h] == alone(engine, p)


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(tiny_engine):
    engine = fixed_engine(tiny_engine)
    batch = engine.batch(prefill_budget=4)
    running = batch.add(engine.encode(PROMPT), SamplingParams(max_new_tokens=30, ignore_eos=True))
    batch.step()
    long_ids = engine.encode("Once upon a time there was a small model that streamed tokens. " * 2)
    assert len(long_ids) > 12
    joiner = batch.add(long_ids, SamplingParams(max_new_tokens=3, ignore_eos=True))
    steps_until_joiner = 0
    while True:
        pairs = batch.step()
        steps_until_joiner += 1
        # The running row gets its token every step while the prompt is written.
        assert any(h == running for h, _ in pairs)
        if any(h == joiner for h, _ in pairs):
            break
    assert steps_until_joiner == -(-len(long_ids) // 4)


def test_n_choices_share_one_prefill_and_match_seed_plus_i(tiny_engine):
    engine = fixed_engine(tiny_engine)
    params = SamplingParams(strategy="sample", temperature=1.0, seed=40, n=3, max_new_tokens=10, ignore_eos=True)
    calls = engine.runner.forward_calls
    choices: dict[int, list] = {0: [], 1: [], 2: []}
    for i, ev in engine.stream_n(PROMPT, params):
        choices[i].append((ev.token_id, ev.text, ev.finish_reason))
    assert engine.runner.forward_calls - calls == 10  # one prefill + 9 decode steps for all three
    for i in range(3):
        assert choices[i] == alone(engine, params.replace(n=1, seed=40 + i))
    assert len({tuple(c) for c in choices.values()}) == 3


def test_one_forward_per_step_on_the_real_runner(tiny_engine):
    ids = tiny_engine.encode(PROMPT)
    batch = tiny_engine.batch()
    params = [SamplingParams(max_new_tokens=8, ignore_eos=True),
              SamplingParams(strategy="sample", seed=3, max_new_tokens=8, ignore_eos=True),
              SamplingParams(strategy="beam", num_beams=2, max_new_tokens=8, ignore_eos=True)]
    handles = [batch.add(ids, p) for p in params]
    calls = tiny_engine.runner.forward_calls
    greedy = [ev.token_id for h, ev in batch.step() if h == handles[0]]  # three prompts, one forward
    assert tiny_engine.runner.forward_calls - calls == 1
    for _ in range(3):
        calls = tiny_engine.runner.forward_calls
        greedy += [ev.token_id for h, ev in batch.step() if h == handles[0]]
        assert tiny_engine.runner.forward_calls - calls == 1 and batch.last_batch_size == 4
    greedy += [t for t, _, _ in run_batch(batch, handles)[handles[0]]]
    assert tiny_engine.runner.free_count == tiny_engine.runner.num_slots
    # Greedy in a batch equals greedy alone here (batch effects on real models can differ in
    # the last bits; this tiny model's peaky logits leave no near-ties).
    assert greedy == [t for t, _, _ in alone(tiny_engine, params[0])]


def test_runners_implement_the_runner_protocol(tiny_engine):
    from generator.model.hf import HFRunner
    from generator.model.runner import Runner

    assert isinstance(tiny_engine.runner, Runner)
    assert isinstance(HFRunner(tiny_engine.model, num_slots=2), Runner)
    assert isinstance(FixedLogitsRunner(vocab=8), Runner)
