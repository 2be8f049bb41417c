"""OpenAI response objects: chat and text completion chunks, whole responses,
logprobs in both shapes. Plain dicts, built from ``TokenEvent``s."""

from __future__ import annotations

from typing import Any


def alternatives(ev) -> list[tuple[int, float]]:
    """``ev.top_logprobs`` as ``(token_id, logprob)`` pairs, most likely first.

    The engine may not report alternatives at all (``None``); items may be
    pairs, dicts or objects with ``token_id``/``logprob``.
    """
    top = getattr(ev, "top_logprobs", None)
    if not top:
        return []
    if isinstance(top, dict):
        top = list(top.items())
    pairs = []
    for alt in top:
        if isinstance(alt, dict):
            pairs.append((int(alt.get("token_id", alt.get("id"))), float(alt["logprob"])))
        elif isinstance(alt, (tuple, list)):
            pairs.append((int(alt[0]), float(alt[1])))
        else:
            pairs.append((int(alt.token_id), float(alt.logprob)))
    return pairs


class TokenText:
    """Token id -> the string OpenAI shows in logprobs (cached per id)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False)
            self.cache[token_id] = text
        return text


def chat_logprob(ev, top_n: int, token_text: TokenText) -> dict:
    """One entry of ``choices[].logprobs.content`` for a chat completion."""
    tok = token_text(ev.token_id)
    return {
        "token": tok, "logprob": ev.logprob, "bytes": list(tok.encode("utf-8")),
        "top_logprobs": [{"token": token_text(t), "logprob": lp, "bytes": list(token_text(t).encode("utf-8"))}
                         for t, lp in alternatives(ev)[:top_n]],
    }


class CompletionLogprobs:
    """``choices[].logprobs`` of a text completion: parallel lists, grown per token."""

    def __init__(self, top_n: int, token_text: TokenText):
        self.top_n = top_n
        self.token_text = token_text
        self.offset = 0

    def entry(self, ev) -> dict[str, list]:
        tok = self.token_text(ev.token_id)
        top: dict[str, float] = {}
        for t, lp in alternatives(ev)[:self.top_n]:
            top.setdefault(self.token_text(t), lp)  # ids that decode alike: keep the likelier
        out = {"tokens": [tok], "token_logprobs": [ev.logprob], "top_logprobs": [top],
               "text_offset": [self.offset]}
        self.offset += len(ev.text)
        return out

    @staticmethod
    def merge(entries: list[dict[str, list]]) -> dict[str, list]:
        merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            for key in merged:
                merged[key].extend(e[key])
        return merged


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chunk(kind: str, cid: str, created: int, model: str, choices: list[dict], with_usage: bool,
          usage_value: Any = None) -> dict:
    """A streamed chunk; ``kind`` is ``chat.completion.chunk`` or ``text_completion``."""
    out = {"id": cid, "object": kind, "created": created, "model": model, "choices": choices}
    if with_usage:
        out["usage"] = usage_value
    return out
