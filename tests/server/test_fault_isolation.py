"""One request's failure inside the worker ends only that request (issue 18, item 1):
a forward or a link that raises for one row, or a row whose sampler columns cannot be
built, ends that stream with an ``error`` event; its batch-mates finish with the tokens
they would have had alone, the worker lives and every slot comes back."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
import torch

import decoding.transforms
from decoding import ParamError, SamplingParams
from server_harness import FaultEngine, StepEngine, data_json, iter_sse, serve, wait_until  # noqa: F401

MARK = 99  # the poisoned request's prompt holds this id; the good prompts do not
GOOD = [5, 6, 7, 8, 9]
BAD = [MARK, 5, 6, 7]


def _run_all(batch, handles):
    """Step until every row is done: handle -> list of events / exceptions."""
    out = {h: [] for h in handles}
    while batch.active:
        for h, ev in batch.step():
            out[h].append(ev)
    return out


def _alone(engine, params):
    return [ev.token_id for ev in engine.stream(GOOD, params)]


@pytest.mark.parametrize("where", ["prefill", "decode"])
def test_a_failing_forward_fails_only_its_row(tiny_engine, where):
    engine = FaultEngine(tiny_engine, MARK, where)
    batch = engine.batch()
    good = [SamplingParams(strategy="sample", seed=s, max_new_tokens=8, ignore_eos=True) for s in (1, 2, 3)]
    first = [batch.add(GOOD, p) for p in good[:2]]
    batch.step()  # the first rows run before the bad one joins
    bad = batch.add(BAD, SamplingParams(max_new_tokens=8, ignore_eos=True))
    handles = first + [bad, batch.add(GOOD, good[2])]
    out = _run_all(batch, handles)
    assert engine.failures >= 1
    # prefill: fails at once; decode: its first token comes from the prefill, then it fails
    assert len(out[bad]) == (1 if where == "prefill" else 2) and isinstance(out[bad][-1], RuntimeError)
    for h, p in zip(first + handles[3:], good):
        tokens = [ev.token_id for ev in out[h]]
        assert len(tokens) == (7 if h in first else 8)  # the first rows' first token came before
    # Every row's tokens are the ones it gets alone (the same seed, whatever failed beside it).
    assert [ev.token_id for ev in out[handles[3]]] == _alone(tiny_engine, good[2])
    assert tiny_engine.free_slots == tiny_engine.runner.num_slots


def test_a_failing_link_fails_only_its_row(tiny_engine, monkeypatch):
    real = decoding.transforms.top_k

    def top_k(logits, k, *args, **kwargs):  # fails for any batch holding a row with top_k=13
        if bool((torch.as_tensor(k) == 13).any()):
            raise RuntimeError("injected link failure")
        return real(logits, k, *args, **kwargs)

    monkeypatch.setattr(decoding.transforms, "top_k", top_k)
    batch = tiny_engine.batch()
    good = [SamplingParams(strategy="sample", seed=s, max_new_tokens=6, ignore_eos=True) for s in (4, 5)]
    greedy = SamplingParams(max_new_tokens=6, ignore_eos=True, repetition_penalty=1.3)
    # Another chain than the good rows' (its own group, run after theirs): the good rows have
    # drawn from their generators when it raises, so the retry must wind them back.
    bad = SamplingParams(strategy="top_k", top_k=13, seed=9, max_new_tokens=6, ignore_eos=True)
    handles = [batch.add(GOOD, good[0]), batch.add(BAD, bad), batch.add(GOOD, greedy), batch.add(GOOD, good[1])]
    out = _run_all(batch, handles)
    assert len(out[handles[1]]) == 1 and "injected link failure" in str(out[handles[1]][0])
    monkeypatch.setattr(decoding.transforms, "top_k", real)
    for h, p in zip([handles[0], handles[2], handles[3]], [good[0], greedy, good[1]]):
        assert [ev.token_id for ev in out[h]] == _alone(tiny_engine, p)
    assert tiny_engine.free_slots == tiny_engine.runner.num_slots


def test_a_failing_beam_search_fails_only_its_row(tiny_engine, monkeypatch):
    from decoding.beam import BeamSearch

    real = BeamSearch.step

    def step(self, log_probs):  # the 3-beam search fails on its third step; the 2-beam one runs
        self.calls = getattr(self, "calls", 0) + 1
        if self.num_beams == 3 and self.calls == 3:
            raise RuntimeError("injected beam failure")
        return real(self, log_probs)

    monkeypatch.setattr(BeamSearch, "step", step)
    batch = tiny_engine.batch()
    ok_beam = SamplingParams(strategy="beam", num_beams=2, max_new_tokens=6, ignore_eos=True)
    sampled = SamplingParams(strategy="sample", seed=7, max_new_tokens=6, ignore_eos=True)
    handles = [batch.add(GOOD, ok_beam), batch.add(GOOD, SamplingParams(strategy="beam", num_beams=3,
                                                                        max_new_tokens=6, ignore_eos=True)),
               batch.add(GOOD, sampled)]
    out = _run_all(batch, handles)
    assert isinstance(out[handles[1]][-1], RuntimeError)
    assert not any(isinstance(ev, Exception) for h in (handles[0], handles[2]) for ev in out[h])
    monkeypatch.setattr(BeamSearch, "step", real)
    for h, p in ((handles[0], ok_beam), (handles[2], sampled)):
        assert [ev.token_id for ev in out[h]] == _alone(tiny_engine, p)
    assert tiny_engine.free_slots == tiny_engine.runner.num_slots


def test_a_row_that_cannot_be_set_up_fails_alone_when_it_joins(tiny_engine):
    """Bypassing the server's intake: the sampler's columns are built for the new row alone
    in ``add``, so it is refused there and never reaches the batch's next setup."""
    batch = tiny_engine.batch()
    ok = batch.add(GOOD, SamplingParams(max_new_tokens=4, ignore_eos=True))
    batch.step()
    free = tiny_engine.free_slots
    vocab = tiny_engine.model.config.vocab_size
    with pytest.raises(ParamError) as info:
        batch.add(GOOD, SamplingParams(logit_bias={vocab + 3: 1.0}, max_new_tokens=4))
    assert info.value.field == "logit_bias" and tiny_engine.free_slots == free
    out = _run_all(batch, [ok])
    assert len(out[ok]) == 3 and out[ok][-1].finish_reason == "length"


def _stream(url, body, into):
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as res:
        into.extend(e for e in iter_sse(res) if "data" in e)


@pytest.mark.parametrize("where", ["prefill", "decode"])
def test_over_http_only_the_culprits_stream_gets_an_error(serve, tiny_engine, where):
    engine = StepEngine(FaultEngine(tiny_engine, MARK, where), delay_s=0.02)
    server = serve(engine)
    bodies = [{"prompt": GOOD, "max_tokens": 24, "ignore_eos": True, "strategy": "sample", "seed": s}
              for s in (1, 2, 3)]
    results = [[] for _ in bodies]
    threads = [threading.Thread(target=_stream, args=(server.url, b, r)) for b, r in zip(bodies, results)]
    for t in threads:
        t.start()
    assert wait_until(lambda: all(len(r) >= 2 for r in results), timeout=30)  # all three are running
    bad: list = []
    _stream(server.url, {"prompt": BAD, "max_tokens": 24, "ignore_eos": True}, bad)
    for t in threads:
        t.join(60)
    err = json.loads(bad[-1]["data"])["error"]
    assert "injected forward failure" in err["message"] and "Traceback" not in err["message"]
    for body, events in zip(bodies, results):
        assert events[-1]["data"] == "[DONE]"
        chunks = [data_json(e) for e in events[:-1]]
        assert not any("error" in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        text = "".join(c["choices"][0]["text"] for c in chunks)
        alone = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
        assert text == alone["choices"][0]["text"]
    scheduler = server.app.state.scheduler
    assert wait_until(lambda: scheduler.active_count == 0 and scheduler.queue_depth == 0)
    assert wait_until(lambda: tiny_engine.free_slots == tiny_engine.runner.num_slots)
    assert httpx.get(server.url + "/health").status_code == 200
