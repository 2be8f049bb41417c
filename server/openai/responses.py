"""``POST /v1/responses``: OpenAI's Responses API over the same jobs as chat.

``input`` is a string (one user message) or a list of messages (``role`` plus
``content`` as text or ``input_text``/``output_text`` parts); ``instructions`` is a
system message put first. The answer is a ``response`` object whose ``output`` holds
one assistant message; with ``stream: true`` it is the Responses event stream:

    response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta (one per batch of
    tokens), response.output_text.done, response.content_part.done,
    response.output_item.done, then response.completed (or response.incomplete
    when max_output_tokens cut the text), with usage.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar

from fastapi import Request
from fastapi.sse import ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field

from ..errors import APIError
from ..intake import Intake
from ..jobs import GenerationError
from ..sse import error_event, event_stream
from .protocol import BaseCompletionRequest, ChatMessage
from .serving import Started, collect, start_request, timings

# Fields of the Responses API that do not change the tokens of a plain text answer.
_IGNORED = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "truncation",
                      "include", "prompt_cache_key", "safety_identifier", "tool_choice", "reasoning", "text"})


class InputMessage(BaseModel):
    """One item of ``input``: a message (``type`` ``message`` or left out)."""

    model_config = ConfigDict(extra="allow")

    type: str = "message"
    role: str = "user"
    content: str | list[dict] = ""


class ResponsesRequest(BaseCompletionRequest):
    """``POST /v1/responses``. Sampling settings as for chat (``temperature``, ``top_p``,
    and the vLLM-style extras); ``max_output_tokens`` bounds the answer."""

    ignored_fields: ClassVar[frozenset[str]] = frozenset(BaseCompletionRequest.ignored_fields | _IGNORED)
    own_fields: ClassVar[frozenset[str]] = frozenset(BaseCompletionRequest.own_fields |
                                                     {"input", "instructions", "max_output_tokens", "tools",
                                                      "previous_response_id", "background"})

    input: str | list[InputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    tools: list[dict] | None = None
    previous_response_id: str | None = None
    background: bool | None = None

    def _max_tokens(self) -> int | None:
        return self.max_output_tokens if self.max_output_tokens is not None else self.max_tokens

    def max_tokens_name(self) -> str:
        return "max_output_tokens" if self.max_output_tokens is not None else "max_tokens"

    def check_supported(self) -> None:
        """What this server cannot do is a 400 naming the field, never silently dropped."""
        for name, why in (("tools", "tool calls are not supported"),
                          ("previous_response_id", "responses are not stored; send the whole conversation"),
                          ("background", "background responses are not supported")):
            if getattr(self, name):
                raise APIError(400, f"{name}: {why}", param=name, code="unsupported_parameter")
        if self.n != 1:
            raise APIError(400, "n: the Responses API gives one answer", param="n", code="unsupported_parameter")

    def chat_messages(self) -> list[dict]:
        """``instructions`` then ``input``, as the chat template's messages."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return [*messages, {"role": "user", "content": self.input}]
        for i, item in enumerate(self.input):
            if item.type != "message":
                raise APIError(400, f"input[{i}]: item type {item.type!r} is not supported (messages only)",
                               param="input", code="invalid_value")
            parts = item.content if isinstance(item.content, str) else [
                {**part, "type": "text"} if part.get("type") in ("input_text", "output_text") else part
                for part in item.content]
            try:
                message = ChatMessage(role=item.role, content=parts)
            except ValueError:
                raise APIError(400, f"input[{i}]: role {item.role!r} is not one of user, assistant, system, "
                                    "developer", param="input", code="invalid_value") from None
            role = "system" if message.role == "developer" else message.role
            messages.append({"role": role, "content": message.text()})
        if not messages:
            raise APIError(400, "input: no messages", param="input", code="invalid_value")
        return messages


def _usage(prompt_tokens: int, output_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + output_tokens}


class _Answer:
    """One response's ids and the objects every event repeats."""

    def __init__(self, s: Started, req: ResponsesRequest):
        self.s, self.req = s, req
        self.item_id = f"msg_{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def message(self, text: str | None, status: str, trace: list | None = None) -> dict:
        content = [] if text is None else [_part(text, trace)]
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def response(self, status: str, text: str | None = None, tokens: int = 0, finish: str | None = None,
                 trace: list | None = None) -> dict:
        """The ``response`` object: ``in_progress`` (no output yet), ``completed`` or ``incomplete``."""
        done = status != "in_progress"
        req = self.req
        return {"id": self.s.id, "object": "response", "created_at": self.created, "status": status,
                "model": self.s.model, "output": [self.message(text, "completed", trace)] if done else [],
                "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
                "temperature": req.temperature, "top_p": req.top_p, "parallel_tool_calls": False,
                "tool_choice": "none", "tools": [], "text": {"format": {"type": "text"}}, "metadata": {},
                "error": None, "store": False,
                "incomplete_details": {"reason": "max_output_tokens"} if finish == "length" else None,
                "usage": _usage(len(self.s.ids), tokens, self.s.group.jobs[0].cached_tokens) if done else None,
                "timings": timings(self.s.group.jobs[0], len(self.s.ids)) if done else None}


def _part(text: str, trace: list | None) -> dict:
    """An ``output_text`` content part; with ``trace`` (the request asked for ``trace: true``)
    one decision trace per token, as the chat and completion choices carry it."""
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    if trace is not None:
        part["trace"] = trace
    return part


def _traces(evs) -> list | None:
    return [ev.trace for ev in evs] if evs and evs[0].trace is not None else None


def _status(finish: str | None) -> str:
    return "incomplete" if finish == "length" else "completed"


async def create_response(intake: Intake, req: ResponsesRequest, request: Request):
    """``POST /v1/responses``: a ``response``, or its event stream with ``stream: true``."""
    req.check_supported()
    s = await start_request(intake, req, req.chat_messages, True, "input", "resp")
    answer = _Answer(s, req)
    if req.stream:
        return _stream(answer)
    events = (await collect(s.group, 1, request))[0]
    finish = events[-1].finish_reason if events else "stop"
    return answer.response(_status(finish), "".join(ev.text for ev in events), len(events), finish,
                           _traces(events))


def _stream(a: _Answer):
    seq = 0

    def event(kind: str, **fields) -> ServerSentEvent:
        nonlocal seq
        seq += 1
        return ServerSentEvent(event=kind, data={"type": kind, "sequence_number": seq - 1, **fields})

    part = {"item_id": a.item_id, "output_index": 0, "content_index": 0}

    async def events():
        yield event("response.created", response=a.response("in_progress"))
        yield event("response.in_progress", response=a.response("in_progress"))
        yield event("response.output_item.added", output_index=0, item=a.message(None, "in_progress"))
        yield event("response.content_part.added", **part,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        text, tokens, finish, trace = [], 0, None, None
        try:
            async for _, evs in a.s.group.batches():
                tokens += len(evs)
                finish = evs[-1].finish_reason
                delta = "".join(ev.text for ev in evs)
                text.append(delta)
                more = _traces(evs)
                if more is None:
                    yield event("response.output_text.delta", **part, delta=delta, logprobs=[])
                else:
                    trace = (trace or []) + more
                    yield event("response.output_text.delta", **part, delta=delta, logprobs=[], trace=more)
        except GenerationError as exc:
            yield error_event(exc, named=True)
            return
        whole = "".join(text)
        yield event("response.output_text.done", **part, text=whole, logprobs=[])
        yield event("response.content_part.done", **part, part=_part(whole, trace))
        yield event("response.output_item.done", output_index=0, item=a.message(whole, "completed", trace))
        status = _status(finish)
        yield event(f"response.{status}", response=a.response(status, whole, tokens, finish, trace))

    state = a.s.intake.state
    return event_stream(events(), state.settings.keepalive_s, on_close=a.s.group.cancel, metrics=state.metrics)
