"""Thin routes: validate, submit to the scheduler, shape the answer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import ServerSentEvent
from prometheus_client import CONTENT_TYPE_LATEST

from decoding import ParamError, SamplingParams, strategies

from . import serving as fmt
from ..errors import APIError, from_param_error
from ..jobs import GenerationError, JobGroup
from ..scheduler import SchedulerFull
from .protocol import ChatCompletionRequest, CompletionRequest, _Request, sampling_fields
from ..sse import error_event, event_stream

router = APIRouter()


# -- dependencies ---------------------------------------------------------------
def require_api_key(request: Request) -> None:
    """With an API key configured, every ``/v1`` route needs ``Authorization: Bearer <key>``
    (``/api/stream`` also takes ``?api_key=``: ``EventSource`` cannot send headers)."""
    key = request.app.state.settings.api_key
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = request.query_params.get("api_key", "") if request.url.path == "/api/stream" else ""
    if not given or not secrets.compare_digest(given.strip().encode(), key.encode()):
        raise APIError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def ready_state(request: Request):
    """The app state once the model is loaded; 503 before (or after a failed load)."""
    state = request.app.state
    if state.load_error is not None:
        raise APIError(503, f"the model failed to load: {state.load_error}", code="model_load_failed")
    if state.scheduler is None:
        raise APIError(503, "the model is still loading; retry shortly", code="model_loading",
                       headers={"Retry-After": "2"})
    return state


v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


# -- shared request handling -------------------------------------------------------
def _check_model(state, req: _Request) -> None:
    if req.model is not None and req.model not in (state.settings.model_name, state.engine.name):
        raise APIError(404, f"model {req.model!r} does not exist; this server serves "
                            f"{state.settings.model_name!r}", param="model", code="model_not_found")


def _context(state) -> int:
    """Tokens a request may hold in all (prompt + output): the model's context, or less
    when the server sets ``max_total_tokens``."""
    limit = state.settings.max_total_tokens
    return min(state.engine.context_length, limit) if limit else state.engine.context_length


def _encode(state, prompt, chat: bool, field: str) -> list[int]:
    try:
        ids = state.engine.encode(prompt, chat=chat)
    except ParamError as exc:
        raise APIError(400, f"{field}: {exc.message}", param=field, code="invalid_value") from None
    limit = state.settings.max_prompt_tokens
    if limit and len(ids) > limit:
        raise APIError(400, f"{field}: the prompt is {len(ids)} tokens; this server takes at most {limit}",
                       param=field, code="prompt_too_long")
    context = _context(state)
    if len(ids) >= context:
        raise APIError(400, f"{field}: the prompt is {len(ids)} tokens; the model's context is {context} tokens",
                       param=field, code="context_length_exceeded")
    return ids


def _params(state, req: _Request, ids: list[int]) -> list[SamplingParams]:
    """One SamplingParams per choice; the default max_tokens fits what the context has left."""
    room = _context(state) - len(ids)
    default = min(state.settings.default_max_tokens, room)
    params = [req.to_sampling_params(choice=i, default_max_tokens=default) for i in range(req.n)]
    if params[0].max_new_tokens > room:
        name = req._max_tokens_name()
        raise APIError(400, f"{name}: prompt ({len(ids)} tokens) + {name} ({params[0].max_new_tokens}) exceeds "
                            f"the context of {_context(state)} tokens",
                       param=name, code="context_length_exceeded")
    return params


def _submit(state, ids: list[int], params: list[SamplingParams]) -> JobGroup:
    try:
        return state.scheduler.submit([(ids, p) for p in params])
    except SchedulerFull as exc:
        retry = str(state.settings.retry_after_s)
        raise APIError(429, f"the server is busy: {exc}; retry after {retry} s", code="queue_full",
                       headers={"Retry-After": retry}) from None


async def _collect(group: JobGroup, n: int, request: Request) -> list[list]:
    """Every choice's events, for the non-streaming answers. A client that hangs
    up while it waits cancels the generation too (nothing else would notice)."""
    events: list[list] = [[] for _ in range(n)]
    watcher = asyncio.create_task(_cancel_on_disconnect(request, group))
    try:
        async for index, ev in group:
            events[index].append(ev)
    except GenerationError as exc:
        raise APIError(500, f"generation failed: {type(exc.cause).__name__}: {exc.cause}", type="server_error",
                       code="generation_failed") from None
    finally:
        watcher.cancel()
        if not group.finished:  # we were cancelled (disconnect, shutdown): stop the work too
            group.cancel()
    return events


async def _cancel_on_disconnect(request: Request, group: JobGroup) -> None:
    # The body is read already, so the next ASGI message is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            group.cancel()
            return


def _start(request: Request, req: _Request, prompt, chat: bool, field: str):
    """The common start of an OpenAI route: check readiness and model, encode the
    prompt (``prompt()`` is called only then), queue the choices.
    Returns ``(state, ids, group, created, model_name, token_text)``."""
    state = ready_state(request)
    _check_model(state, req)
    ids = _encode(state, prompt(), chat=chat, field=field)
    group = _submit(state, ids, _params(state, req, ids))
    return state, ids, group, int(time.time()), state.settings.model_name, fmt.TokenText(state.engine.tokenizer)


# -- OpenAI routes ---------------------------------------------------------------------
@v1.get("/models")
async def list_models(request: Request):
    settings = request.app.state.settings
    return {"object": "list", "data": [{"id": settings.model_name, "object": "model",
                                        "created": request.app.state.started, "owned_by": "tokenflow"}]}


@v1.post("/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request):
    state, ids, group, created, model, token_text = _start(request, req, req.chat_messages, True, "messages")
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    top_n = req.top_logprobs or 0
    if req.stream:
        return _stream_chat(state, group, req, cid, created, model, len(ids), top_n, token_text)
    events = await _collect(group, req.n, request)
    choices = []
    for i, evs in enumerate(events):
        logprobs = {"content": [fmt.chat_logprob(ev, top_n, token_text) for ev in evs]} if req.logprobs else None
        choices.append({"index": i, "message": {"role": "assistant", "content": "".join(e.text for e in evs)},
                        "logprobs": logprobs, "finish_reason": evs[-1].finish_reason if evs else "stop"})
    return {"id": cid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": fmt.usage(len(ids), sum(len(e) for e in events))}


def _stream_chat(state, group, req, cid, created, model, prompt_tokens, top_n, token_text):
    def delta(i, evs):
        logprobs = ({"content": [fmt.chat_logprob(ev, top_n, token_text) for ev in evs]}
                    if req.logprobs else None)
        return {"index": i, "delta": {"content": "".join(ev.text for ev in evs)}, "logprobs": logprobs}

    first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
             for i in range(req.n)]
    return _openai_stream(state, group, req, "chat.completion.chunk", cid, created, model, prompt_tokens,
                          first, delta, {"delta": {}})


def _openai_stream(state, group, req, kind, cid, created, model, prompt_tokens, first, delta, closing):
    """The SSE body both OpenAI routes share: ``first`` chunks, one chunk per batch of
    events (``delta(i, evs)``), a ``closing`` chunk with the finish reason, usage, [DONE]."""
    with_usage = req.include_usage

    async def chunks():
        def make(choices, usage=None):
            return ServerSentEvent(data=fmt.chunk(kind, cid, created, model, choices, with_usage, usage))

        if first:
            yield make(first)
        completion_tokens = 0
        try:
            # A client that reads slower than tokens come gets the backlog as one merged chunk.
            async for i, evs in group.batches():
                completion_tokens += len(evs)
                yield make([{**delta(i, evs), "finish_reason": None}])
                if evs[-1].finish_reason:
                    yield make([{"index": i, **closing, "logprobs": None, "finish_reason": evs[-1].finish_reason}])
        except GenerationError as exc:
            yield error_event(exc)
            return
        if with_usage:
            yield make([], fmt.usage(prompt_tokens, completion_tokens))
        yield ServerSentEvent(raw_data="[DONE]")

    return event_stream(chunks(), state.settings.keepalive_s, on_close=group.cancel, metrics=state.metrics)


@v1.post("/completions")
async def completions(req: CompletionRequest, request: Request):
    state, ids, group, created, model, token_text = _start(request, req, req.prompt_value, False, "prompt")
    cid = f"cmpl-{uuid.uuid4().hex[:24]}"
    top_n = req.logprobs or 0
    want_logprobs = req.logprobs is not None
    if req.stream:
        return _stream_completion(state, group, req, cid, created, model, len(ids), top_n, want_logprobs,
                                  token_text)
    events = await _collect(group, req.n, request)
    choices = []
    for i, evs in enumerate(events):
        logprobs = None
        if want_logprobs:
            lp = fmt.CompletionLogprobs(top_n, token_text)
            logprobs = fmt.CompletionLogprobs.merge([lp.entry(ev) for ev in evs])
        choices.append({"index": i, "text": "".join(e.text for e in evs), "logprobs": logprobs,
                        "finish_reason": evs[-1].finish_reason if evs else "stop"})
    return {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": fmt.usage(len(ids), sum(len(e) for e in events))}


def _stream_completion(state, group, req, cid, created, model, prompt_tokens, top_n, want_logprobs, token_text):
    trackers = [fmt.CompletionLogprobs(top_n, token_text) for _ in range(req.n)]

    def delta(i, evs):
        logprobs = fmt.CompletionLogprobs.merge([trackers[i].entry(ev) for ev in evs]) if want_logprobs else None
        return {"index": i, "text": "".join(ev.text for ev in evs), "logprobs": logprobs}

    return _openai_stream(state, group, req, "text_completion", cid, created, model, prompt_tokens,
                          [], delta, {"text": ""})


# -- the browser's EventSource endpoint ------------------------------------------------------
_FIELD_ALIASES = {"max_tokens": "max_new_tokens"}


def params_from_query(query, default_max_tokens: int = 256) -> SamplingParams:
    """``SamplingParams`` from query-string values, converted by each field's type."""
    types = {f.name: str(f.type) for f in dataclasses.fields(SamplingParams)}
    kwargs = {}
    for key in query.keys():
        if key in ("prompt", "chat", "last_event_id", "api_key"):
            continue
        name = _FIELD_ALIASES.get(key, key)
        if name not in types:
            raise APIError(400, f"{key}: unknown parameter (see GET /strategies)", param=key, code="unknown_field")
        values = query.getlist(key)
        try:
            kwargs[name] = _convert(types[name], values)
        except ValueError:
            raise APIError(400, f"{key}: cannot read {values[-1]!r} as {types[name]} (structured values are JSON)", param=key,
                           code="invalid_value") from None
    kwargs.setdefault("max_new_tokens", default_max_tokens)
    try:
        return SamplingParams(**kwargs)
    except ParamError as exc:
        raise from_param_error(exc) from None


def _convert(kind: str, values: list[str]):
    if kind.startswith(("dict", "tuple[tuple")):
        # Structured settings (logit_bias, bad_words_ids) come as JSON: logit_bias={"50256":-100}
        try:
            return json.loads(values[-1])
        except json.JSONDecodeError as exc:
            raise ValueError(str(exc)) from None
    if kind.startswith("tuple["):
        cast = int if kind.startswith("tuple[int") else str
        return tuple(cast(v) for part in values for v in ([part] if cast is str else part.split(",")) if v != "")
    text = values[-1]
    if text.lower() in ("none", "null") and "None" in kind:
        return None
    if kind.startswith("bool"):
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        if "str" in kind:
            return text
        raise ValueError(text)
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    return text


def _truthy(text: str | None) -> bool:
    return (text or "").lower() in ("1", "true", "yes", "on")


@router.get("/api/stream", dependencies=[Depends(require_api_key)])
async def api_stream(request: Request):
    """Server-sent events for ``EventSource``: ``token``, then ``done`` (or ``error``).

    A reconnect with ``Last-Event-ID`` (header, or ``last_event_id`` in the
    query) resumes after that event from the stored events, without generating
    again, for ``resume_grace_s`` seconds after the last reader left.
    """
    state = ready_state(request)
    store = state.streams
    last_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if last_id:
        stream, after = store.lookup(last_id)
        if stream is None:
            raise APIError(404, "stream not found: it finished or expired (the resume grace period is "
                                f"{store.grace_s:g} s)", param="Last-Event-ID", code="stream_not_found")
        if stream.finished and after >= len(stream.events) - 1:
            return Response(status_code=204)  # tells EventSource there is nothing more: stop reconnecting
    else:
        prompt = request.query_params.get("prompt")
        if not prompt:
            raise APIError(400, "prompt: required", param="prompt", code="missing_field")
        params = params_from_query(request.query_params, state.settings.default_max_tokens)
        ids = _encode(state, prompt, chat=_truthy(request.query_params.get("chat")), field="prompt")
        if len(ids) + params.max_new_tokens > _context(state):
            raise APIError(400, f"max_new_tokens: prompt ({len(ids)} tokens) + max_new_tokens "
                                f"({params.max_new_tokens}) exceeds the context of "
                                f"{_context(state)}", param="max_new_tokens",
                           code="context_length_exceeded")
        stream = store.create(_submit(state, ids, [params]), params.strategy)
        after = -1
    stream.attach()
    return event_stream(stream.follow(after), state.settings.keepalive_s, on_close=stream.detach,
                        metrics=state.metrics)


# -- service routes -----------------------------------------------------------------------------
@router.get("/strategies")
async def list_strategies():
    """The registry as data: ``decoding.describe()`` where the registry has it, else
    every strategy's fields, plus the settings a request may use."""
    import decoding

    describe = getattr(decoding, "describe", None)
    if callable(describe):
        return JSONResponse(_jsonable(describe()))
    out = []
    for s in strategies():
        entry = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)} if dataclasses.is_dataclass(s) else {}
        entry.setdefault("name", getattr(s, "name", str(s)))
        entry.setdefault("chain", getattr(s, "chain", None))
        out.append(entry)
    return JSONResponse({"strategies": _jsonable(out), "params": sampling_fields()})


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    if state.load_error is not None:
        status, code = "error", 503
    elif state.scheduler is None:
        status, code = "loading", 503
    else:
        status, code = "ready", 200
    body = {"status": status, "model": state.settings.model_name}
    if state.load_error is not None:
        body["error"] = state.load_error
    if state.scheduler is not None:
        body.update(device=str(state.engine.device), dtype=str(state.engine.dtype).replace("torch.", ""),
                    quant=getattr(state.engine, "quant", None), activations=getattr(state.engine, "activations", None),
                    context_length=state.engine.context_length, queue_depth=state.scheduler.queue_depth,
                    running=state.scheduler.active_count, worker_thread=state.scheduler.worker_thread)
    return JSONResponse(body, status_code=code)


@router.get("/metrics")
async def metrics(request: Request):
    state = request.app.state
    return Response(state.metrics.render(state.scheduler), media_type=CONTENT_TYPE_LATEST)

