"""What the engine yields: one event per generated token."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a step: id, its text alone, raw logprob."""

    token_id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, yielded the moment it exists.

    ``text`` is the delta that is safe to show now (it may be empty while an
    incomplete character or a possible stop string is held back); joining
    every ``text`` of a finished stream gives the whole answer.
    ``logprob`` is the chosen token's log-probability under the model's raw
    distribution (before temperature or filters). ``finish_reason`` is set on
    the last event only: ``"stop"`` (EOS, a stop id or a stop string) or
    ``"length"`` (``max_new_tokens`` reached). ``top_logprobs`` holds the
    ``params.logprobs`` most likely tokens of this step, most likely first, from the
    same raw distribution as ``logprob`` (OpenAI's ``top_logprobs``), or from the processed
    one with ``logprobs_mode="processed"`` (tokens the chain removed left out); empty when
    not asked for. ``trace``: the decision trace of this token when the request asked for
    one (``trace=True``; the dict of ``decoding.trace``), else ``None``.
    """

    token_id: int
    text: str
    logprob: float | None
    index: int
    finish_reason: str | None = None
    top_logprobs: tuple[TopLogprob, ...] = ()
    trace: dict | None = None


def top_logprobs(ids: list[int], lps: list[float], n: int, tokenizer) -> tuple[TopLogprob, ...]:
    """The first ``n`` of a row's most likely tokens, from host lists (the batch reads
    every row's top ids and logprobs in one go, only when some request asked for
    ``logprobs``). Each alternative's text is that token decoded alone (what OpenAI
    reports as ``token``)."""
    return tuple(TopLogprob(t, tokenizer.decode([t]), lp) for t, lp in zip(ids[:n], lps[:n]) if lp != float("-inf"))
