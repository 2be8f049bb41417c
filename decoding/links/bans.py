"""History links that add to or mask chosen tokens: logit bias, bad words,
min-new-tokens and no-repeat-ngram. Every row of a batch runs them (they can
change the argmax); a row whose field is off gets nothing added or banned."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .. import transforms
from ..checks import INT_MAX, ParamError, check_int, check_number, int_tuple
from .base import Batch, Link, Param


def _check_vocab(field: str, ids: Iterable[int], vocab: int) -> None:
    bad = [t for t in ids if t >= vocab]
    if bad:
        raise ParamError(field, f"token id {bad[0]} is outside the vocabulary [0, {vocab})")


def _bias_dict(bias: Any) -> dict[int, float]:
    """``{token_id: bias}``; string keys are accepted (JSON objects, as OpenAI sends them)."""
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise ParamError("logit_bias", f"must be a mapping of token id to bias, got {bias!r}")
    out = {}
    for key, value in bias.items():
        try:
            tid = int(key) if not isinstance(key, bool) else None
        except (TypeError, ValueError):
            tid = None
        if tid is None or (isinstance(key, float) and not key.is_integer()):
            raise ParamError("logit_bias", f"keys must be token ids, got {key!r}")
        check_int("logit_bias", tid, low=0, high=INT_MAX)
        check_number("logit_bias", value, low=-100.0, high=100.0)
        out[tid] = float(value)
    return out


def _bad_words(seqs: Any) -> tuple[tuple[int, ...], ...]:
    out = []
    for seq in seqs or ():
        seq = int_tuple("bad_words_ids", seq)
        if not seq:
            raise ParamError("bad_words_ids", "every banned sequence needs at least one token id")
        out.append(seq)
    return tuple(out)


class LogitBias(Link):
    name = "logit_bias"
    params = (Param("logit_bias", "dict[int, float]", None,
                    "add BIAS to token ID's logit, -100..100 (repeatable ID=BIAS)", factory=dict, off={},
                    convert=_bias_dict),)
    changes_argmax = True
    description = "add a bias to chosen token ids"
    reference = "OpenAI logit_bias; transformers SequenceBiasLogitsProcessor (one-token sequences)"

    def columns(self, rows, batch: Batch):
        if not any(self.is_on(r.params) for r in rows):
            return None
        for r in rows:
            _check_vocab("logit_bias", r.params.logit_bias, batch.vocab)
        return transforms.bias_index([r.params.logit_bias for r in rows], batch.device)  # fixed: made once

    def apply(self, logits, columns):
        return transforms.add_bias(logits, columns)


class BadWords(Link):
    name = "bad_words"
    params = (Param("bad_words_ids", "tuple[tuple[int, ...], ...]", (),
                    "never generate this id sequence (repeatable, comma-separated ids)", off=(),
                    convert=_bad_words),)
    changes_argmax = True
    description = "never generate these id sequences (one id: always banned)"
    reference = "transformers NoBadWordsLogitsProcessor"

    def columns(self, rows, batch: Batch):
        if not any(self.is_on(r.params) for r in rows):
            return None
        for r in rows:
            _check_vocab("bad_words_ids", [t for seq in r.params.bad_words_ids for t in seq], batch.vocab)
        return rows

    def apply(self, logits, rows):
        return transforms.bad_words(logits, [r.history for r in rows], [r.params.bad_words_ids for r in rows])


class MinNewTokens(Link):
    """As vLLM's ``min_tokens``: a row's stop ids wait too, and EOS unless it is ignored."""

    name = "min_new_tokens"
    params = (Param("min_new_tokens", "int", 0, "end-of-sequence is masked until this many tokens exist (0 = off)",
                    low=0, off=0),)
    changes_argmax = True
    description = "mask end-of-sequence until this many tokens exist"
    reference = "transformers MinNewTokensLengthLogitsProcessor"

    def columns(self, rows, batch: Batch):
        if not any(self.is_on(r.params) for r in rows):
            return None
        stops = [(*(() if r.params.ignore_eos else batch.eos_token_ids), *r.params.stop_token_ids) for r in rows]
        return rows, stops

    def apply(self, logits, columns):
        rows, stops = columns
        return transforms.ban_tokens(logits, [
            transforms.min_new_tokens_bans(r.generated, r.params.min_new_tokens, stop)
            for r, stop in zip(rows, stops)])


class NgramIndex:
    """A row's n-grams so far, ``(n-1)``-gram -> the tokens that followed it, kept up to
    date token by token, so a step looks its bans up instead of scanning the history
    (the same bans as ``transforms.ngram_bans``)."""

    def __init__(self, n: int, tokens: Sequence[int] = ()):
        self.n = n
        self.reset()
        for t in tokens:
            self.accept(t)

    def reset(self) -> None:
        """Forget every token."""
        self.followers: dict[tuple[int, ...], set[int]] = {}
        self.tail: list[int] = []  # the last n-1 tokens

    def accept(self, token: int) -> None:
        """Learn the next token of the row."""
        if len(self.tail) == self.n - 1:
            self.followers.setdefault(tuple(self.tail), set()).add(token)
        self.tail.append(token)
        if len(self.tail) > self.n - 1:
            del self.tail[0]

    def clone(self) -> "NgramIndex":
        """An independent copy with the same state."""
        other = NgramIndex(self.n)
        other.followers = {k: set(v) for k, v in self.followers.items()}
        other.tail = list(self.tail)
        return other

    def bans(self) -> set[int]:
        """Tokens that would repeat an n-gram now."""
        if len(self.tail) < self.n - 1:
            return set()
        return self.followers.get(tuple(self.tail), set())


class NoRepeatNgram(Link):
    name = "no_repeat_ngram"
    params = (Param("no_repeat_ngram_size", "int", 0, "never repeat an n-gram of this size (0 = off)", low=0, off=0),)
    changes_argmax = True
    description = "ban tokens that would repeat an n-gram"
    reference = "transformers NoRepeatNGramLogitsProcessor"

    def new_state(self, params, prompt_ids, grammars=None):
        n = params.no_repeat_ngram_size
        return NgramIndex(n, prompt_ids) if n > 0 else None

    def columns(self, rows, batch: Batch):
        if not any(self.is_on(r.params) for r in rows):
            return None
        return [r.states.get(self) for r in rows]

    def apply(self, logits, indexes):
        return transforms.ban_tokens(logits, [ix.bans() if ix is not None else () for ix in indexes])


LOGIT_BIAS = LogitBias()
BAD_WORDS = BadWords()
MIN_NEW_TOKENS = MinNewTokens()
NO_REPEAT_NGRAM = NoRepeatNgram()
