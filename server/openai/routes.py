"""The OpenAI-compatible routes: each parses its body, passes the intake's checks
and hands over to ``serving`` (``GET /v1/models`` is in server/system.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..intake import Intake
from . import serving
from .protocol import ChatCompletionRequest, CompletionRequest

v1 = APIRouter(prefix="/v1")  # the API key: server/guards.py


@v1.post("/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request):
    """A chat completion: JSON, or SSE chunks with ``stream: true``."""
    return await serving.chat_completion(Intake.ready(request), req, request)


@v1.post("/completions")
async def completions(req: CompletionRequest, request: Request):
    """A text completion: JSON, or SSE chunks with ``stream: true``."""
    return await serving.text_completion(Intake.ready(request), req, request)
