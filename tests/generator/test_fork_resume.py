"""A fork continues a stream as if it had drawn the tokens it continues after
(``Engine.stream(..., generated=...)``, ``/api/stream``'s ``prefix_ids``, ``replay --fork``):
forked at token k with the token the stream chose there, under the same settings and seed,
it gives the rest of that stream exactly, because the row skips the noise those steps drew
and its penalties, DRY and XTC see the same history and coins."""

from __future__ import annotations

import pytest

from decoding import SamplingParams

PROMPT = "Once upon a time"
N = 12
CASES = {
    "sample": dict(strategy="sample", temperature=1.3, seed=7),
    "top_k + presence penalty": dict(strategy="top_k", top_k=40, presence_penalty=1.5, frequency_penalty=0.5,
                                     seed=11),
    "llama_cpp + xtc + dry": dict(strategy="llama_cpp", xtc_probability=0.5, xtc_threshold=0.05,
                                  dry_multiplier=0.8, temperature=1.5, seed=3),
}


def ids_of(events) -> list[int]:
    return [ev.token_id for ev in events]


@pytest.mark.parametrize("settings", CASES.values(), ids=CASES.keys())
def test_a_fork_with_the_chosen_token_gives_the_rest_of_the_stream(tiny_engine, settings):
    whole = ids_of(tiny_engine.stream(PROMPT, SamplingParams(max_new_tokens=N, ignore_eos=True, **settings)))
    assert len(whole) == N
    for k in (0, 4, 9):
        params = SamplingParams(max_new_tokens=N - k - 1, ignore_eos=True, **settings)
        rest = ids_of(tiny_engine.stream(PROMPT, params, generated=whole[: k + 1]))
        assert rest == whole[k + 1:], f"fork at {k}"
    # the prefix as plain prompt tokens starts the seed's noise afresh: another stream
    params = SamplingParams(max_new_tokens=N - 5, ignore_eos=True, **settings)
    restarted = ids_of(tiny_engine.stream(tiny_engine.encode(PROMPT) + whole[:5], params))
    assert restarted != whole[5:]


def test_a_fork_the_grammar_refuses_is_an_error_and_frees_its_slot(tiny_engine):
    from decoding import ParamError

    free = tiny_engine.free_slots
    params = SamplingParams(max_new_tokens=3, choice=("yes", "no"))
    bad = tiny_engine.encode(" zebra")[:1]
    with pytest.raises(ParamError, match="refused by the constraint"):
        list(tiny_engine.stream(PROMPT, params, generated=bad))
    assert tiny_engine.free_slots == free
