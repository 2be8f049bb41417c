"""Request bodies (OpenAI's fields plus vLLM-style extras) and their one way
into ``decoding.SamplingParams``: ``to_sampling_params()``."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from decoding import ParamError, SamplingParams, resolve, strategies
from decoding.selectors import SAMPLE

from ..errors import APIError, from_param_error

# OpenAI fields we accept and ignore: they do not change the tokens.
_IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options",
            "prompt_cache_key", "safety_identifier"}
# Fields on the wire that the route interprets itself, never passed on by name
# (``n`` becomes n jobs; ``logprobs``/``top_logprobs`` become SamplingParams.logprobs).
_OWN_FIELDS = {"model", "stream", "stream_options", "n", "messages", "prompt", "logprobs", "top_logprobs",
               "echo", "suffix", "best_of", "max_tokens", "max_completion_tokens", "response_format"}
# vLLM's guided-decoding extras -> the SamplingParams field each sets.
_GUIDED = {"guided_json": "json_schema", "guided_regex": "regex", "guided_grammar": "grammar",
           "guided_choice": "choice"}


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: usage so far on every chunk (needs include_usage)
    resumable: bool = False  # tokenflow's: keep generating for a reconnect with Last-Event-ID (server/resume.py)


class BaseCompletionRequest(BaseModel):
    """Fields shared by chat and text completions.

    OpenAI's sampling fields are ``SamplingParams`` fields of the same name.
    Extra fields (``top_k``, ``min_p``, ``strategy``, ...) are passed on when
    ``SamplingParams`` has a field of that name, and a 400 otherwise.
    """

    model_config = ConfigDict(extra="allow")
    # Fields accepted and ignored, and fields the route reads itself (a kind of request may add its own).
    ignored_fields: ClassVar[frozenset[str]] = frozenset(_IGNORED)
    own_fields: ClassVar[frozenset[str]] = frozenset(_OWN_FIELDS)

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=16)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def resumable(self) -> bool:
        return bool(self.stream_options and self.stream_options.resumable)

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and self.stream_options.continuous_usage_stats

    def _max_tokens(self) -> int | None:
        return self.max_tokens

    def _top_logprobs(self) -> int:
        return 0

    def to_sampling_params(self, choice: int = 0, default_max_tokens: int = 256) -> SamplingParams:
        """The validated settings for choice ``choice`` (its seed is ``seed + choice``).

        Raises ``APIError`` 400 naming the field as the client spelled it.
        """
        if self.stream_options is not None and not self.stream:  # OpenAI refuses it too
            raise APIError(400, "stream_options: only allowed with stream: true", param="stream_options",
                           code="invalid_value")
        known = set(SamplingParams.field_names())
        kwargs: dict[str, Any] = {}
        for name, value in self:  # declared fields: each is a SamplingParams field or our own
            if name not in self.own_fields and name not in self.ignored_fields and value is not None:
                kwargs[name] = value
        for name, value in (self.model_extra or {}).items():
            if name in self.ignored_fields or value is None:
                continue
            if name not in known and name not in _GUIDED:
                raise APIError(400, f"{name}: unknown field (not an OpenAI field nor a decoding setting; "
                                    f"see GET /strategies)", param=name, code="unknown_field")
            kwargs[name] = value
        if isinstance(kwargs.get("stop"), str):
            kwargs["stop"] = [kwargs["stop"]]
        rename = {"max_new_tokens": self.max_tokens_name()}
        for wire, name in _GUIDED.items():
            if wire in kwargs:
                kwargs[name] = kwargs.pop(wire)
                rename[name] = wire
        schema = _response_format(self.response_format)
        if schema is not None:
            kwargs["json_schema"] = schema
            rename["json_schema"] = "response_format"
        max_tokens = self._max_tokens()
        kwargs["max_new_tokens"] = default_max_tokens if max_tokens is None else max_tokens
        top = self._top_logprobs()
        if top:
            kwargs["logprobs"] = top  # the engine's alternatives per token (TokenEvent.top_logprobs)
        if self.seed is not None:
            kwargs["seed"] = self.seed + choice
        try:
            beams = kwargs.get("num_beams")  # any type: SamplingParams names a bad one
            if "strategy" in kwargs or (isinstance(beams, int) and beams > 1):
                return SamplingParams(**kwargs)
            return _openai_default_strategy(kwargs)
        except ParamError as exc:
            raise from_param_error(exc, rename) from None
        except TypeError as exc:  # a value of the wrong shape for a dataclass field
            raise APIError(400, str(exc), code="invalid_value") from None

    def max_tokens_name(self) -> str:
        """The request's output-length field as the client spelled it (errors name it)."""
        return "max_tokens"


def _response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` -> the JSON schema the output must follow (``None``: free text).
    ``json_object`` is any JSON object; ``json_schema`` is ``{"json_schema": {"name", "schema",
    "strict"}}``, as the ``openai`` client sends it (its ``parse()`` helper included)."""
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise APIError(400, "response_format: json_schema must be {\"name\": ..., \"schema\": {...}}",
                           param="response_format", code="invalid_value")
        return spec.get("schema", {"type": "object"})  # OpenAI: a schema left out is any object
    raise APIError(400, f"response_format: type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                   param="response_format", code="invalid_value")


def _openai_default_strategy(kwargs: dict[str, Any]) -> SamplingParams:
    """No strategy named: OpenAI's default, sampling (greedy at temperature 0).

    When the request sets filters plain ``sample`` does not run (``min_p``,
    ``typical_p``, ...), the first sampling strategy of the registry that runs
    every filter the request set is used, never one whose own defaults would
    switch on a filter the request did not ask for; so vLLM-style requests
    work without naming a strategy. If none fits, plain ``sample``'s error
    (naming the field and the strategies that run it) is raised.
    """
    if kwargs.get("temperature") == 0:
        try:
            return SamplingParams(**{**kwargs, "strategy": "greedy"})
        except ParamError:
            pass  # greedy may refuse filters: sampling at temperature 0 is greedy too
    wanted = _filters_set(kwargs)
    for s in strategies():
        if s.selector is not SAMPLE or not wanted <= set(s.fields):
            continue
        if any(field not in kwargs for field in s.defaults):
            continue
        try:
            return SamplingParams(**{**kwargs, "strategy": s.name})
        except ParamError as exc:
            if exc.field not in wanted:
                raise  # a bad value, not a filter this strategy lacks: report it
    SamplingParams(**{**kwargs, "strategy": "sample"})  # raises, naming the field
    missing = sorted(wanted - set(resolve("sample").fields))
    raise ParamError(missing[0], "no sampling strategy runs all of " + ", ".join(sorted(wanted)))


def _filters_set(kwargs: dict[str, Any]) -> set[str]:
    """Settings the request switched on that only some sampling strategies run."""
    sets = [set(s.fields) for s in strategies() if s.selector is SAMPLE]
    distinguishing = set().union(*sets) - set.intersection(*sets) if sets else set()
    meta = {f.name: f.metadata for f in dataclasses.fields(SamplingParams)}
    return {k for k in distinguishing & set(kwargs)
            if "off" not in meta.get(k, {}) or kwargs[k] != meta[k]["off"]}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = None

    @model_validator(mode="after")
    def _needs_content(self) -> "ChatMessage":
        # Only an assistant turn may come without content (OpenAI: it carried tool calls);
        # a user, system or tool turn without it is a client's mistake, not an empty prompt.
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role!r} message needs content")
        return self

    def text(self) -> str:
        """The message text; content parts of type ``text`` are joined."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise APIError(400, f"messages: content part type {part.get('type')!r} is not supported "
                                    "(text only)", param="messages", code="invalid_value")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatCompletionRequest(BaseCompletionRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def _max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def max_tokens_name(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def _top_logprobs(self) -> int:
        return (self.top_logprobs or 0) if self.logprobs else 0

    def chat_messages(self) -> list[dict]:
        # The template knows system/user/assistant; "developer" is OpenAI's new name for system.
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]


class CompletionRequest(BaseCompletionRequest):
    """``POST /v1/completions``: ``prompt`` is text, a list of token ids, or several
    prompts (a list of texts or of id lists: one choice per prompt, or ``n`` each).
    ``echo`` puts the prompt before the completion, with its tokens' logprobs when
    ``logprobs`` is set (scoring: ``max_tokens`` 0 generates nothing)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def _top_logprobs(self) -> int:
        return self.logprobs or 0

    @property
    def scoring(self) -> bool:
        """Whether this request takes the scoring path (``openai/scoring.py``): an echo,
        several prompts, or ``max_tokens`` 0."""
        return self.echo or len(self.prompt_list()) > 1 or self.max_tokens == 0

    def prompt_list(self) -> list[str | list[int]]:
        """The prompts, in order: one for a text or a list of ids, several for a list of
        texts or of id lists."""
        if self.suffix:
            raise APIError(400, "suffix: not supported by this server", param="suffix",
                           code="unsupported_parameter")
        if self.best_of not in (None, 1, self.n):
            raise APIError(400, "best_of: only best_of == n is supported", param="best_of",
                           code="unsupported_parameter")
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            return list(prompt)
        return [prompt]

    def prompt_value(self) -> str | list[int]:
        """The one prompt of a generation (the scoring path takes the others)."""
        return self.prompt_list()[0]
