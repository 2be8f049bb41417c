"""Scoring on the real default model: batched prompt logprobs against transformers, and
SmolLM2's byte-level tokens that hold part of a character carry their own bytes."""

import pytest
import torch

from generator.eval.likelihood import score_ids
from generator.tokens import token_table

pytestmark = pytest.mark.integration

TEXTS = ["The capital of France is Paris, and the capital of Italy is Rome.",
         "Emoji 😀 and 日本語 and café, naïve, señor.", "def add(a, b):\n    return a + b\n"]


def test_batched_scores_equal_transformers(default_engine):
    ids = [default_engine.tokenizer(t)["input_ids"] for t in TEXTS]
    calls = default_engine.runner.forward_calls
    scores = score_ids(default_engine, ids, top_n=1)
    assert default_engine.runner.forward_calls == calls + 1
    for s, row in zip(scores, ids):
        with torch.inference_mode():
            logits = default_engine.model(input_ids=torch.tensor([row])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1)
        want = logp.gather(1, torch.tensor(row[1:])[:, None])[:, 0]
        got = torch.tensor(s.logprobs[1:])
        assert (got - want).abs().max() < 2e-3, float((got - want).abs().max())
        assert [t[0] for t in s.top_ids[1:]] == logp.argmax(-1).tolist()


@pytest.mark.parametrize("token_id, data", [(228, b"\x8a"), (18645, b"\xe4\xbd"), (250, b"\xa0"),
                                            (48392, b"\xe5\xa5"), (138, b"\xbd")])
def test_partial_character_tokens_have_their_own_bytes(default_engine, token_id, data):
    """Decoded alone each of these is U+FFFD; their bytes are the vocabulary entry's."""
    table = token_table(default_engine.tokenizer)
    assert default_engine.tokenizer.decode([token_id]) == "\ufffd"
    assert table.bytes(token_id) == data
    assert table.piece(token_id) == "".join(f"\\x{b:02x}" for b in data)


@pytest.mark.parametrize("text", TEXTS[1:2] + ["中文字符 Ελληνικά 🚀🎉", "Ünïcödé àccents"])
def test_token_bytes_round_trip(default_engine, text):
    table = token_table(default_engine.tokenizer)
    ids = default_engine.tokenizer(text)["input_ids"]
    assert b"".join(table.bytes(t) for t in ids) == text.encode("utf-8")
    assert all("\ufffd" not in table.piece(t) for t in ids)
