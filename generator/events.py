"""What the engine yields: one event per generated token."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, yielded the moment it exists.

    ``text`` is the delta that is safe to show now (it may be empty while an
    incomplete character or a possible stop string is held back); joining
    every ``text`` of a finished stream gives the whole answer.
    ``logprob`` is the chosen token's log-probability under the model's raw
    distribution (before temperature or filters). ``finish_reason`` is set on
    the last event only: ``"stop"`` (EOS, a stop id or a stop string) or
    ``"length"`` (``max_new_tokens`` reached).
    """

    token_id: int
    text: str
    logprob: float | None
    index: int
    finish_reason: str | None = None
