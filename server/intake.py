"""The one door a generation request passes before the scheduler sees it.

    intake = Intake.ready(request)                   # 503 while the model loads
    intake.check_model(req.model)                    # 404: not the model we serve
    ids = await intake.encode(prompt, chat, field="prompt")  # 400: bad, too long, no room (in a thread)
    max_new = intake.default_max_tokens(ids)         # what the context has left
    intake.check_room(ids, params.max_new_tokens, "max_tokens")
    group = intake.submit(ids, [params, ...])        # 400: settings the model cannot run; 429: queue full

Every limit a request meets lives here: the model name, the prompt's encoding
and length (``max_prompt_tokens``), prompt + output against the context (the
model's, or ``max_total_tokens`` when smaller), the default ``max_tokens`` and
the waiting queue; and the settings against the model (token ids inside its
vocabulary, beams and ``n`` within its KV-cache slots), which ``SamplingParams``
cannot check: it does not know the model. A setting the worker cannot run would
otherwise fail at batch setup, inside the worker.
"""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from decoding import ParamError, SamplingParams

from .errors import APIError, from_param_error
from .jobs import JobGroup
from .scheduler import SchedulerFull


class Intake:
    """A request's checks against the server's settings and the loaded engine."""

    def __init__(self, state):
        self.state = state
        self.settings = state.settings
        self.engine = state.engine
        self.scheduler = state.scheduler

    @classmethod
    def ready(cls, request: Request) -> "Intake":
        """The intake of a loaded model; 503 before (or after a failed load)."""
        state = request.app.state
        if state.load_error is not None:
            raise APIError(503, f"the model failed to load: {state.load_error}", code="model_load_failed")
        if state.scheduler is None:
            raise APIError(503, "the model is still loading; retry shortly", code="model_loading",
                           headers={"Retry-After": "2"})
        return cls(state)

    @property
    def context(self) -> int:
        """Tokens a request may hold in all (prompt + output): the model's context, or less
        when the server sets ``max_total_tokens``."""
        limit = self.settings.max_total_tokens
        return min(self.engine.context_length, limit) if limit else self.engine.context_length

    def check_model(self, name: str | None) -> None:
        """404 unless ``name`` (when given) is the served model, by its public or its own name."""
        if name is not None and name not in (self.settings.model_name, self.engine.name):
            raise APIError(404, f"model {name!r} does not exist; this server serves "
                                f"{self.settings.model_name!r}", param="model", code="model_not_found")

    async def encode(self, prompt, chat: bool, field: str) -> list[int]:
        """The prompt's token ids; 400 (naming ``field``) when it cannot be encoded, is
        longer than ``max_prompt_tokens``, or leaves no room in the context. The work runs
        in a thread: a prompt of megabytes takes seconds to tokenize, and the event loop
        keeps serving every other stream meanwhile (the tokenizer is Rust, not torch, so
        no OpenMP team is made: see ``WorkerHost``)."""
        self._check_size(prompt, field)
        try:
            ids = await run_in_threadpool(self._encode, prompt, chat, field)
        except ParamError as exc:
            raise APIError(400, f"{field}: {exc.message}", param=field, code="invalid_value") from None
        limit = self.settings.max_prompt_tokens
        if limit and len(ids) > limit:
            raise APIError(400, f"{field}: the prompt is {len(ids)} tokens; this server takes at most {limit}",
                           param=field, code="prompt_too_long")
        if len(ids) >= self.context:
            raise APIError(400, f"{field}: the prompt is {len(ids)} tokens; the model's context is "
                                f"{self.context} tokens", param=field, code="context_length_exceeded")
        return ids

    def _check_size(self, prompt, field: str) -> None:
        """400 at once, before tokenizing, when the prompt's text is so long that even at
        the most bytes one token can hold (``Engine.fewest_tokens``) it cannot fit: a prompt
        of megabytes would otherwise cost seconds of tokenizing and hundreds of MB."""
        floor = self.engine.fewest_tokens(prompt)
        limit = self.settings.max_prompt_tokens
        if limit and floor > limit:
            raise APIError(400, f"{field}: the prompt is at least {floor} tokens; this server takes at most "
                                f"{limit}", param=field, code="prompt_too_long")
        if floor >= self.context:
            raise APIError(400, f"{field}: the prompt is at least {floor} tokens; the model's context is "
                                f"{self.context} tokens", param=field, code="context_length_exceeded")

    def _encode(self, prompt, chat: bool, field: str) -> list[int]:
        check_text(prompt, field)
        return self.engine.encode(prompt, chat=chat, special_tokens=self.settings.special_tokens_in_messages)

    def default_max_tokens(self, ids: list[int] | None = None) -> int:
        """``max_tokens`` for a request that names none: the server's default, capped by
        what the context has left after ``ids`` (when the prompt is known already)."""
        default = self.settings.default_max_tokens
        return default if ids is None else min(default, self.context - len(ids))

    def check_room(self, ids: list[int], max_new_tokens: int, param: str) -> None:
        """400 (naming ``param``, the field as the client spelled it) when the prompt plus
        ``max_new_tokens`` does not fit the context."""
        if len(ids) + max_new_tokens > self.context:
            raise APIError(400, f"{param}: prompt ({len(ids)} tokens) + {param} ({max_new_tokens}) exceeds "
                                f"the context of {self.context} tokens",
                           param=param, code="context_length_exceeded")

    def submit(self, ids: list[int], params: list[SamplingParams], generated: list[int] = ()) -> JobGroup:
        """Queue one job per entry of ``params`` (all or none); 400 when the model cannot
        run them (``check_params``), 429 when the queue is full. ``generated``: a fork's
        tokens, continued after as if the rows had drawn them."""
        self.check_params(params)
        try:
            return self.scheduler.submit([(ids, p) for p in params], generated=generated)
        except SchedulerFull as exc:
            retry = str(self.settings.retry_after_s)
            raise APIError(429, f"the server is busy: {exc}; retry after {retry} s", code="queue_full",
                           headers={"Retry-After": retry}) from None

    def check_params(self, params: list[SamplingParams]) -> None:
        """400 (naming the field) for settings that passed ``SamplingParams`` but that this
        model cannot run: token ids outside its vocabulary, more beams or rows than it has
        KV-cache slots (such a request would wait in the queue for room that never comes),
        beam search with ``n`` > 1 (one search yields one sequence); it also compiles a
        constraint (a JSON schema, regex, grammar) for the tokenizer, caching it."""
        vocab = self.engine.model.config.vocab_size
        slots = self.engine.runner.num_slots
        for p in params:
            for field, ids in (("logit_bias", p.logit_bias), ("bad_words_ids", [t for seq in p.bad_words_ids
                                                                                for t in seq])):
                bad = [t for t in ids if t >= vocab]
                if bad:
                    raise APIError(400, f"{field}: token id {bad[0]} is outside the vocabulary [0, {vocab})",
                                   param=field, code="invalid_value")
            try:
                self.engine.grammars.prepare(p)  # compiled for this tokenizer now, cached for the worker
            except ParamError as exc:
                raise from_param_error(exc) from None
        beam = params[0].resolved_strategy.selector.is_beam
        if beam and (len(params) > 1 or params[0].n > 1):  # n on /api/stream is the field itself
            raise APIError(400, "n: beam search yields one sequence; use n=1 (num_beams sets the beams)",
                           param="n", code="invalid_value")
        if beam and params[0].num_beams > slots:
            raise APIError(400, f"num_beams: at most {slots} (this server's KV-cache slots), "
                                f"got {params[0].num_beams}", param="num_beams", code="invalid_value")
        if len(params) > slots:
            raise APIError(400, f"n: at most {slots} (this server's KV-cache slots), got {len(params)}",
                           param="n", code="invalid_value")


def check_text(prompt, field: str) -> None:
    """400 naming ``field`` when a text of the prompt is not valid Unicode (a lone surrogate
    such as ``"\\ud800"`` passes JSON but the tokenizer raises a TypeError on it)."""
    texts = [prompt] if isinstance(prompt, str) else []
    if isinstance(prompt, list):
        texts += [v for m in prompt if isinstance(m, dict) for v in m.values() if isinstance(v, str)]
        texts += [t for t in prompt if isinstance(t, str)]
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise APIError(400, f"{field}: not valid Unicode text (a lone surrogate at character {exc.start})",
                           param=field, code="invalid_value") from None
