"""Scoring texts (teacher forcing, no generation) against transformers on the tiny model,
and each token's own bytes."""

from __future__ import annotations

import pytest
import torch

from generator.eval.likelihood import score_ids, text_logprobs
from generator.tokens import token_table

TEXTS = ["Once upon a time there was a small model.", "Café, naïve, über 🙂 🚀 日本語", "Paris",
         "Streaming means every token reaches the user the moment it exists. " * 3]


def _reference(model, ids: list[int], top_n: int = 3):
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1)
    chosen = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return chosen, logp.topk(top_n, -1)


def test_batched_scores_equal_transformers(tiny_engine):
    """Several texts in one forward: every token's logprob and the top-3 alternatives are
    transformers' (float32), and the batch took one forward, not one per text."""
    tok = tiny_engine.tokenizer
    id_lists = [tok(t)["input_ids"] for t in TEXTS]
    runner = tiny_engine.runner
    calls = runner.forward_calls
    scores = score_ids(tiny_engine, id_lists, top_n=3)
    assert runner.forward_calls == calls + 1
    assert [s.ids for s in scores] == id_lists
    for s, ids in zip(scores, id_lists):
        chosen, (top_v, top_i) = _reference(tiny_engine.model, ids)
        assert s.logprobs[0] is None and len(s.logprobs) == len(ids)
        assert torch.allclose(torch.tensor(s.logprobs[1:]), chosen, atol=1e-4)
        assert s.top_ids[1:] == top_i.tolist()
        assert torch.allclose(torch.tensor(s.top_logprobs[1:]), top_v, atol=1e-4)
    # the one-text path (text_logprobs) gives the same numbers
    assert torch.allclose(text_logprobs(tiny_engine, TEXTS[1]), torch.tensor(scores[1].logprobs[1:]), atol=1e-5)


def test_batches_split_by_token_budget(tiny_engine):
    tok = tiny_engine.tokenizer
    id_lists = [tok(t)["input_ids"] for t in TEXTS]
    whole = score_ids(tiny_engine, id_lists)
    calls = tiny_engine.runner.forward_calls
    split = score_ids(tiny_engine, id_lists, batch_tokens=1)
    assert tiny_engine.runner.forward_calls == calls + len(TEXTS)  # one text a forward
    for a, b in zip(whole, split):
        assert a.logprobs[0] is None and b.logprobs[0] is None
        assert torch.allclose(torch.tensor(a.logprobs[1:]), torch.tensor(b.logprobs[1:]), atol=1e-5)
    assert tiny_engine.free_slots == tiny_engine.runner.num_slots  # every slot given back


@pytest.mark.parametrize("text", ["naïve café jalapeño", "🙂🚀🎉", "日本語 Ελληνικά", "a 🙂 b"])
def test_token_bytes_concatenate_to_the_text(tiny_tokenizer, text):
    """Each token's bytes (not its lone decode, U+FFFD for a piece of a character) join
    to the text's UTF-8; a piece that is not whole UTF-8 prints as \\xNN."""
    table = token_table(tiny_tokenizer)
    assert table.kind == "byte_level"
    ids = tiny_tokenizer(text)["input_ids"]
    assert b"".join(table.bytes(t) for t in ids) == text.encode("utf-8")
    for t in ids:
        piece, data = table.piece(t), table.bytes(t)
        assert "\ufffd" not in piece
        try:
            assert piece == data.decode("utf-8")
        except UnicodeDecodeError:
            assert "\\x" in piece and piece.encode("latin-1", "backslashreplace")
    spans = table.spans(ids)
    assert spans[0][0] == 0 and spans[-1][1] == len(text.encode("utf-8"))
    # character offsets: each token's start lies on (or inside) the character it begins
    offsets = table.char_offsets(ids)
    assert offsets[0] == 0 and all(0 <= o < len(text) for o in offsets) and offsets == sorted(offsets)


def test_split_character_pieces(tiny_tokenizer):
    """A character split over tokens: each part's bytes, escaped as \\xNN."""
    table = token_table(tiny_tokenizer)
    alphabet_ids = [tiny_tokenizer.convert_tokens_to_ids(c) for c in "ðŁĺĤ"]  # byte-level 0xF0 0x9F 0x98 0x82
    assert [table.bytes(t) for t in alphabet_ids] == [b"\xf0", b"\x9f", b"\x98", b"\x82"]
    assert [table.piece(t) for t in alphabet_ids] == ["\\xf0", "\\x9f", "\\x98", "\\x82"]
    assert table.char_offsets(alphabet_ids) == [0, 0, 0, 0]
    assert table.bytes(2) == b"</s>" and table.piece(2) == "</s>"  # special tokens are their text
