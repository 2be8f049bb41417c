"""Incremental detokenization and stop strings: the text invariants."""

import random

import pytest

from decoding import SamplingParams
from generator.detok import IncrementalDetokenizer, StopStringFilter, TextStream

TEXTS = [
    "Café, naïve, über, jalapeño, señor.",
    "Emoji travel in several bytes: 🙂 🚀 🎉 and 日本語 or Ελληνικά too.",
    "🙂🙂🙂 plain ascii after emoji 🎉",
]


def _stream_text(tokenizer, ids):
    det = IncrementalDetokenizer(tokenizer)
    deltas = [det.push(i) for i in ids]
    return deltas, "".join(deltas) + det.flush()


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_join_to_the_full_decode(tiny_tokenizer, text):
    ids = tiny_tokenizer(text)["input_ids"]
    deltas, joined = _stream_text(tiny_tokenizer, ids)
    assert joined == tiny_tokenizer.decode(ids) == text
    # An emoji spans several tokens: no delta may show half a character.
    assert all("\ufffd" not in d for d in deltas)
    assert any(d == "" for d in deltas), "multi-byte characters should be held back at least once"


def test_random_ids_keep_the_invariant(tiny_tokenizer):
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(3, len(tiny_tokenizer)) for _ in range(rng.randrange(1, 40))]
        _, joined = _stream_text(tiny_tokenizer, ids)
        assert joined == tiny_tokenizer.decode(ids)


def test_stop_filter_holds_back_a_possible_match_and_cuts_at_a_match():
    f = StopStringFilter(["###", "END"])
    assert f.push("Hello #") == "Hello "
    assert f.push("#") == ""  # "##" could still become "###"
    assert f.push(" not yet") == "## not yet"
    assert f.push(" E") == " "
    assert f.push("ND and more") == ""
    assert f.stopped
    assert f.push("ignored") == "" and f.flush() == ""


def test_stop_filter_releases_held_text_at_the_end():
    f = StopStringFilter(["STOP"])
    assert f.push("almost ST") == "almost "
    assert not f.stopped and f.flush() == "ST"


def test_text_stream_cuts_inside_a_token(tiny_tokenizer):
    text = "Café, naïve, über, jalapeño, señor."
    ids = tiny_tokenizer(text)["input_ids"]
    ts = TextStream(tiny_tokenizer, stops=["über"])
    out = ""
    for i in ids:
        out += ts.push(i)
        if ts.stopped:
            break
    assert ts.stopped and out == "Café, naïve, "


def test_engine_stream_text_equals_decode_and_stop_string_is_not_shown(tiny_engine):
    params = SamplingParams(strategy="sample", seed=3, max_new_tokens=40, ignore_eos=True)
    events = list(tiny_engine.stream("Emoji 🙂 and café", params))
    ids = [ev.token_id for ev in events]
    full = tiny_engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(ev.text for ev in events) == full
    # Now stop at a piece of that same text: everything before it, nothing after.
    stop = full[len(full) // 2: len(full) // 2 + 3]
    if not stop.strip():
        stop = full[-3:]
    events = list(tiny_engine.stream("Emoji 🙂 and café", params.replace(stop=[stop])))
    text = "".join(ev.text for ev in events)
    assert text == full[: full.index(stop)]
    assert events[-1].finish_reason == "stop"
