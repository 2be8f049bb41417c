"""``POST /v1/completions`` the way evaluation harnesses call it: ``echo``, prompt
logprobs, several prompts in one request, ``max_tokens`` 0.

    return await text_completions(intake, req, request)   # routes.py, when req.scoring

Every prompt is encoded and checked by the intake; with ``echo`` and ``logprobs``,
the prompts are scored on the worker (``Scheduler.call``) by
``generator.eval.likelihood.score_ids``: teacher forcing, the prompts in one
forward, no decode step. When ``max_tokens`` is above 0 each prompt is then
generated as usual (its jobs queued together, so their prefills share forwards).
The answer has one choice per prompt (``n`` per prompt, index ``prompt * n + j``),
in order: the echoed prompt's text and logprobs (OpenAI's legacy shape: ``tokens``,
``token_logprobs`` with ``null`` for the first token, ``top_logprobs`` with ``null``
first, ``text_offset`` in characters) followed by the generated ones.
"""

from __future__ import annotations

import time
import uuid

from fastapi import Request

from ..errors import APIError
from ..intake import Intake
from ..scheduler import SchedulerFull
from .protocol import CompletionRequest
from .serving import CompletionLogprobs, TokenText, collect_groups, usage


async def text_completions(intake: Intake, req: CompletionRequest, request: Request) -> dict:
    """A ``text_completion`` for every prompt of ``req`` (see the module docstring)."""
    if req.stream:
        raise APIError(400, "stream: not supported with echo, several prompts or max_tokens 0; "
                            "send stream: false", param="stream", code="unsupported_parameter")
    intake.check_model(req.model)
    prompts = req.prompt_list()
    ids_list = [await intake.encode(p, chat=False, field="prompt") for p in prompts]
    max_tokens = req.max_tokens
    if max_tokens is not None and max_tokens < 0:
        raise APIError(400, f"max_tokens: must be >= 0, got {max_tokens}", param="max_tokens",
                       code="invalid_value")
    generate = max_tokens != 0
    # The settings are checked even when nothing is generated (a bad field is still a 400).
    checked = req if generate else req.model_copy(update={"max_tokens": 1})
    params = [[checked.to_sampling_params(choice=j, default_max_tokens=intake.default_max_tokens(ids))
               for j in range(req.n)] for ids in ids_list]
    for ids, choice_params in zip(ids_list, params):
        intake.check_room(ids, choice_params[0].max_new_tokens if generate else 0, "max_tokens")
        intake.check_params(choice_params)
    token_text = TokenText(intake.engine.tokenizer)
    top_n = req.logprobs or 0
    scores = None
    if req.echo and req.logprobs is not None:
        from generator.eval.likelihood import score_ids

        try:
            scores = await intake.scheduler.call(lambda engine: score_ids(engine, ids_list, top_n))
        except SchedulerFull as exc:
            retry = str(intake.settings.retry_after_s)
            raise APIError(429, f"the server is busy: {exc}; retry after {retry} s", code="queue_full",
                           headers={"Retry-After": retry}) from None
    events = [[[] for _ in range(req.n)] for _ in ids_list]
    if generate:
        groups = []
        try:
            for ids, p in zip(ids_list, params):
                groups.append(intake.submit(ids, p))
        except APIError:  # a full queue (429): the prompts queued already are not wanted either
            for group in groups:
                group.cancel()
            raise
        events = await collect_groups(groups, req.n, request)
    choices = []
    for k, (prompt, ids) in enumerate(zip(prompts, ids_list)):
        echo = _echo_text(prompt, ids, intake.engine.tokenizer) if req.echo else ""
        for j, evs in enumerate(events[k]):
            logprobs = None
            if req.logprobs is not None:
                parts = [_prompt_logprobs(scores[k], token_text, top_n)] if scores is not None else []
                tracker = CompletionLogprobs(top_n, token_text, offset=len(echo))
                logprobs = CompletionLogprobs.merge(parts + [tracker.entry(ev) for ev in evs])
            choices.append({"index": k * req.n + j, "text": echo + "".join(e.text for e in evs),
                            "logprobs": logprobs, "finish_reason": evs[-1].finish_reason if evs else "length"})
    completion = sum(len(evs) for per_prompt in events for evs in per_prompt)
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": intake.settings.model_name, "choices": choices,
            "usage": usage(sum(len(ids) for ids in ids_list), completion)}


def _echo_text(prompt, ids: list[int], tokenizer) -> str:
    """The prompt as echoed: a text as sent; token ids decoded (special tokens kept)."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _prompt_logprobs(scores, token_text: TokenText, top_n: int) -> dict[str, list]:
    """A scored prompt in the legacy lists: ``null`` logprob and alternatives for its first
    token (nothing came before it), then each token's own after the ones before it."""
    tops: list = [None]
    for pos in range(1, len(scores.ids)):
        top: dict[str, float] = {}
        if top_n:
            for t, lp in zip(scores.top_ids[pos], scores.top_logprobs[pos]):
                top.setdefault(token_text(t), lp)  # ids that print alike: keep the likelier
        tops.append(top)
    return {"tokens": [token_text(t) for t in scores.ids], "token_logprobs": list(scores.logprobs),
            "top_logprobs": tops, "text_offset": token_text.table.char_offsets(scores.ids)}
