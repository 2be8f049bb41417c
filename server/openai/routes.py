"""The OpenAI-compatible routes: each parses its body, passes the intake's checks
and hands over to ``serving`` (``GET /v1/models`` is in server/system.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..intake import Intake
from . import responses, scoring, serving
from .protocol import ChatCompletionRequest, CompletionRequest

v1 = APIRouter(prefix="/v1")  # the API key: server/guards.py


@v1.post("/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request):
    """A chat completion: JSON, or SSE chunks with ``stream: true``; with a
    ``Last-Event-ID`` header, the rest of that resumable stream instead."""
    if request.headers.get("last-event-id"):
        return serving.resume(request)
    return await serving.chat_completion(Intake.ready(request), req, request)


@v1.post("/completions")
async def completions(req: CompletionRequest, request: Request):
    """A text completion: JSON, or SSE chunks with ``stream: true``; with a
    ``Last-Event-ID`` header, the rest of that resumable stream instead."""
    if request.headers.get("last-event-id"):
        return serving.resume(request)
    if req.scoring:  # echo, several prompts, max_tokens 0: scored in one forward, then generated
        return await scoring.text_completions(Intake.ready(request), req, request)
    return await serving.text_completion(Intake.ready(request), req, request)


@v1.get("/streams/{stream_id}")
async def resume_stream(stream_id: str, request: Request):
    """A resumable chat or completion stream (``stream_options.resumable``) again: the
    events after ``Last-Event-ID`` (header or ``last_event_id`` query), else all of them."""
    return serving.resume(request, stream_id)


@v1.post("/responses")
async def create_response(req: responses.ResponsesRequest, request: Request):
    """A Responses API answer: a ``response`` object, or its event stream with ``stream: true``."""
    return await responses.create_response(Intake.ready(request), req, request)
