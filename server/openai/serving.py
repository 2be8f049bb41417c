"""The OpenAI handlers' logic: a checked request becomes queued jobs, and their
``TokenEvent``s become OpenAI objects (plain dicts): whole responses, or SSE
chunks ending in ``data: [DONE]``, with logprobs in both OpenAI shapes.

    intake = Intake.ready(request)
    return await chat_completion(intake, req, request)   # or text_completion
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.sse import ServerSentEvent

from decoding import SamplingParams
from generator.eval.timing import decode_rate
from generator.fingerprint import engine_fingerprint

from ..errors import APIError
from ..intake import Intake
from ..jobs import GenerationError, JobGroup
from ..resume import ResumableStream, new_stream_id, numbered
from ..sse import error_event, event_stream
from .protocol import BaseCompletionRequest, ChatCompletionRequest, CompletionRequest


# -- tokens as OpenAI shows them ------------------------------------------------------
class TokenText:
    """Token id -> the string OpenAI shows in logprobs and its bytes (``generator.tokens``:
    a token's own bytes; a piece of a character printed as ``\\xNN``, never U+FFFD)."""

    def __init__(self, tokenizer):
        from generator.tokens import token_table

        self.tokenizer = tokenizer
        self.table = token_table(tokenizer)

    def __call__(self, token_id: int) -> str:
        return self.table.piece(token_id)

    def bytes(self, token_id: int) -> list[int]:
        return list(self.table.bytes(token_id))


def chat_logprob(ev, top_n: int, token_text: TokenText) -> dict:
    """One entry of ``choices[].logprobs.content`` for a chat completion."""
    tok = token_text(ev.token_id)
    return {
        "token": tok, "logprob": ev.logprob, "bytes": token_text.bytes(ev.token_id),
        "top_logprobs": [{"token": token_text(alt.token_id), "logprob": alt.logprob,
                          "bytes": token_text.bytes(alt.token_id)}
                         for alt in ev.top_logprobs[:top_n]],
    }


class CompletionLogprobs:
    """``choices[].logprobs`` of a text completion: parallel lists, grown per token."""

    def __init__(self, top_n: int, token_text: TokenText, offset: int = 0):
        self.top_n = top_n
        self.token_text = token_text
        self.offset = offset  # characters before the first token (an echoed prompt's)

    def entry(self, ev) -> dict[str, list]:
        """The lists for one token; ``text_offset`` counts the text shown before it."""
        tok = self.token_text(ev.token_id)
        top: dict[str, float] = {}
        for alt in ev.top_logprobs[:self.top_n]:
            top.setdefault(self.token_text(alt.token_id), alt.logprob)  # ids that decode alike: keep the likelier
        out = {"tokens": [tok], "token_logprobs": [ev.logprob], "top_logprobs": [top],
               "text_offset": [self.offset]}
        self.offset += len(ev.text)
        return out

    @staticmethod
    def merge(entries: list[dict[str, list]]) -> dict[str, list]:
        """Several tokens' entries as one (their lists joined in order)."""
        merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            for key in merged:
                merged[key].extend(e[key])
        return merged


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's ``usage`` object; ``cached_tokens``: prompt tokens the prefix cache supplied."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def timings(job, prompt_n: int) -> dict[str, float | int] | None:
    """llama.cpp's ``timings`` of one finished choice: the prompt (its forward, up to the
    first token) and the tokens decoded after it, each with ms and tokens/s."""
    if job.first_token_at is None or job.started_at is None:
        return None
    prompt_ms = (job.first_token_at - job.started_at) * 1000
    predicted_n = max(job.tokens - 1, 0)  # the first token comes out of the prompt's forward
    predicted_ms = (job.last_token_at - job.first_token_at) * 1000
    rate = decode_rate(job.tokens, job.first_token_at, job.last_token_at)
    return {"prompt_n": prompt_n, "prompt_ms": round(prompt_ms, 3),
            "prompt_per_second": round(prompt_n / prompt_ms * 1000, 3) if prompt_ms > 0 else None,
            "predicted_n": predicted_n, "predicted_ms": round(predicted_ms, 3),
            "predicted_per_second": round(rate, 3) if math.isfinite(rate) else None}


def chunk(kind: str, cid: str, created: int, model: str, choices: list[dict], with_usage: bool,
          usage_value: Any = None, fingerprint: str | None = None) -> dict:
    """A streamed chunk; ``kind`` is ``chat.completion.chunk`` or ``text_completion``."""
    out = {"id": cid, "object": kind, "created": created, "model": model, "system_fingerprint": fingerprint,
           "choices": choices}
    if with_usage:
        out["usage"] = usage_value
    return out


# -- the handlers -----------------------------------------------------------------------
@dataclass
class Started:
    """A request whose jobs are queued, and what every answer to it repeats."""

    intake: Intake
    req: BaseCompletionRequest
    ids: list[int]
    group: JobGroup
    id: str
    model: str
    token_text: TokenText
    created: int = field(default_factory=lambda: int(time.time()))
    # generator.fingerprint: the weights, kernel tier, version and settings that made the tokens
    fingerprint: str | None = None


async def start_request(intake: Intake, req: BaseCompletionRequest, prompt, chat: bool, field_name: str,
                        id_prefix: str) -> Started:
    """Check the model, encode the prompt (``prompt()`` is called only then), make one
    ``SamplingParams`` per choice, queue them."""
    intake.check_model(req.model)
    ids = await intake.encode(prompt(), chat=chat, field=field_name)
    group = intake.submit(ids, _choice_params(intake, req, ids))
    return Started(intake, req, ids, group, f"{id_prefix}-{uuid.uuid4().hex[:24]}",
                    intake.settings.model_name, TokenText(intake.engine.tokenizer),
                    fingerprint=engine_fingerprint(intake.engine))


def _choice_params(intake: Intake, req: BaseCompletionRequest, ids: list[int]) -> list[SamplingParams]:
    """One SamplingParams per choice; the default max_tokens fits what the context has left."""
    default = intake.default_max_tokens(ids)
    params = [req.to_sampling_params(choice=i, default_max_tokens=default) for i in range(req.n)]
    intake.check_room(ids, params[0].max_new_tokens, req.max_tokens_name())
    return params


async def chat_completion(intake: Intake, req: ChatCompletionRequest, request: Request):
    """``POST /v1/chat/completions``: a ``chat.completion``, or its chunks as SSE."""
    s = await start_request(intake, req, req.chat_messages, True, "messages", "chatcmpl")
    top_n = req.top_logprobs or 0

    def logprobs(evs):
        return {"content": [chat_logprob(ev, top_n, s.token_text) for ev in evs]} if req.logprobs else None

    if req.stream:
        first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None} for i in range(req.n)]
        return _stream(s, "chat.completion.chunk", first, {"delta": {}}, lambda i, evs: with_trace({
            "index": i, "delta": {"content": "".join(ev.text for ev in evs)}, "logprobs": logprobs(evs)}, evs))
    events = await collect(s.group, req.n, request)
    choices = [with_trace({"index": i, "message": {"role": "assistant", "content": "".join(e.text for e in evs)},
                           "logprobs": logprobs(evs), "finish_reason": evs[-1].finish_reason if evs else "stop"}, evs)
               for i, evs in enumerate(events)]
    return {"id": s.id, "object": "chat.completion", "created": s.created, "model": s.model,
            "system_fingerprint": s.fingerprint, "choices": choices,
            "usage": usage(len(s.ids), sum(len(e) for e in events), s.group.jobs[0].cached_tokens),
            "timings": timings(s.group.jobs[0], len(s.ids))}


async def text_completion(intake: Intake, req: CompletionRequest, request: Request):
    """``POST /v1/completions``: a ``text_completion``, or its chunks as SSE."""
    s = await start_request(intake, req, req.prompt_value, False, "prompt", "cmpl")
    top_n = req.logprobs or 0
    want_logprobs = req.logprobs is not None
    if req.stream:
        trackers = [CompletionLogprobs(top_n, s.token_text) for _ in range(req.n)]

        def delta(i, evs):
            logprobs = CompletionLogprobs.merge([trackers[i].entry(ev) for ev in evs]) if want_logprobs else None
            return with_trace({"index": i, "text": "".join(ev.text for ev in evs), "logprobs": logprobs}, evs)

        return _stream(s, "text_completion", [], {"text": ""}, delta)
    events = await collect(s.group, req.n, request)
    choices = []
    for i, evs in enumerate(events):
        logprobs = None
        if want_logprobs:
            tracker = CompletionLogprobs(top_n, s.token_text)
            logprobs = CompletionLogprobs.merge([tracker.entry(ev) for ev in evs])
        choices.append(with_trace({"index": i, "text": "".join(e.text for e in evs), "logprobs": logprobs,
                                   "finish_reason": evs[-1].finish_reason if evs else "stop"}, evs))
    return {"id": s.id, "object": "text_completion", "created": s.created, "model": s.model,
            "system_fingerprint": s.fingerprint, "choices": choices,
            "usage": usage(len(s.ids), sum(len(e) for e in events), s.group.jobs[0].cached_tokens),
            "timings": timings(s.group.jobs[0], len(s.ids))}


def with_trace(choice: dict, evs) -> dict:
    """A choice with ``trace``: one decision trace per token, when the request asked (``trace: true``)."""
    if evs and evs[0].trace is not None:
        choice["trace"] = [ev.trace for ev in evs]
    return choice


def _stream(s: Started, kind: str, first: list[dict], closing: dict, delta):
    """The SSE body both OpenAI routes share: ``first`` chunks, one chunk per batch of
    events (``delta(i, evs)``), a ``closing`` chunk with the finish reason, usage, [DONE]."""
    with_usage, continuous = s.req.include_usage, s.req.continuous_usage
    completion_tokens = 0

    async def chunks():
        nonlocal completion_tokens

        def make(choices, usage_value=None, **extra):
            if continuous and usage_value is None:  # vLLM's continuous_usage_stats: the counts so far
                usage_value = usage(len(s.ids), completion_tokens, s.group.jobs[0].cached_tokens)
            return ServerSentEvent(data={**chunk(kind, s.id, s.created, s.model, choices, with_usage, usage_value,
                                                         s.fingerprint),
                                         **extra})

        if first:
            yield make(first)
        try:
            # A client that reads slower than tokens come gets the backlog as one merged chunk.
            async for i, evs in s.group.batches():
                completion_tokens += len(evs)
                yield make([{**delta(i, evs), "finish_reason": None}])
                if evs[-1].finish_reason:  # the choice's last chunk: its finish reason and timings
                    yield make([{"index": i, **closing, "logprobs": None, "finish_reason": evs[-1].finish_reason}],
                               timings=timings(s.group.jobs[i], len(s.ids)))
        except GenerationError as exc:
            yield error_event(exc)
            return
        if with_usage:
            yield make([], usage(len(s.ids), completion_tokens, s.group.jobs[0].cached_tokens))
        yield ServerSentEvent(raw_data="[DONE]")

    state = s.intake.state
    if not s.req.resumable:  # the chunks carry ids all the same; a client that leaves ends the generation
        return event_stream(numbered(chunks(), new_stream_id()), state.settings.keepalive_s,
                            on_close=s.group.cancel, metrics=state.metrics)
    return follow(state, state.streams.create(s.group, chunks(), "openai"))


def follow(state, stream: ResumableStream, after: int = -1):
    """The SSE body of a kept stream from event ``after + 1`` on; a reader who leaves
    lets it live ``resume_grace_s`` more seconds for a reconnect."""
    stream.attach()
    return event_stream(stream.follow(after), state.settings.keepalive_s, on_close=stream.detach,
                        metrics=state.metrics)


def resume(request: Request, stream_id: str | None = None):
    """A reconnect to a kept OpenAI stream: the events after ``Last-Event-ID`` (header,
    or ``last_event_id`` in the query), or all of them for ``GET /v1/streams/{id}`` alone."""
    state = request.app.state
    last_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not last_id:
        stream = state.streams.streams.get(stream_id or "")
        if stream is None or stream.kind != "openai":
            raise APIError(404, "stream not found: it finished or expired, or was not resumable "
                                "(stream_options.resumable)", param="stream_id", code="stream_not_found")
        return follow(state, stream)
    if stream_id is not None and not last_id.strip().startswith(stream_id + "."):
        raise APIError(400, f"Last-Event-ID: {last_id[:80]!r} is not an event of stream {stream_id}",
                       param="Last-Event-ID", code="invalid_value")
    resumed = state.streams.reopen(last_id, "openai")
    if resumed is None:
        return Response(status_code=204)  # that was the last event: nothing more
    return follow(state, *resumed)


async def collect(group: JobGroup, n: int, request: Request) -> list[list]:
    """Every choice's events, for the non-streaming answers. A client that hangs
    up while it waits cancels the generation too (nothing else would notice)."""
    return (await collect_groups([group], n, request))[0]


async def collect_groups(groups: list[JobGroup], n: int, request: Request) -> list[list[list]]:
    """``collect`` for several requests' groups at once (several prompts): one watcher
    for the client, every group cancelled when it leaves or one fails."""
    events: list[list[list]] = [[[] for _ in range(n)] for _ in groups]
    watcher = asyncio.create_task(_cancel_on_disconnect(request, groups))
    try:
        for group, out in zip(groups, events):
            async for index, ev in group:
                out[index].append(ev)
    except GenerationError as exc:
        raise APIError(500, f"generation failed: {type(exc.cause).__name__}: {exc.cause}", type="server_error",
                       code="generation_failed") from None
    finally:
        watcher.cancel()
        for group in groups:
            if not group.finished:  # we were cancelled (disconnect, shutdown): stop the work too
                group.cancel()
    return events


async def _cancel_on_disconnect(request: Request, groups: list[JobGroup]) -> None:
    # The body is read already, so the next ASGI message is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for group in groups:
                group.cancel()
            return
