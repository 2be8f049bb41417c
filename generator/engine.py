"""The engine: tokenize, prefill once, then one forward per token, yielding as it goes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from decoding import BatchSampler, BeamSearch, ParamError, SamplingParams, resolve
from decoding.selectors import make_generator

from .detok import TextStream
from .events import TokenEvent, top_logprobs
from .loading import load_model_and_tokenizer, pick_device, pick_dtype, resolve_model
from .runner import HFRunner

Prompt = str | list[int]


class Engine:
    """A model, its tokenizer and the hand-written generation loop around them."""

    def __init__(self, model, tokenizer, gguf_path: Path | None = None, name: str = "tokenflow"):
        self.model = model
        self.tokenizer = tokenizer
        self.gguf_path = gguf_path
        self.name = name
        self.runner = HFRunner(model)
        self.device = self.runner.device
        self.dtype = next(model.parameters()).dtype
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_token_ids = _eos_ids(model, tokenizer)

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: str = "auto",
             dtype: str | torch.dtype = "auto") -> "Engine":
        """Load the default model (``model=None``), a local HF folder, a ``.gguf``
        file or a hub id. ``device="auto"`` picks CUDA when present."""
        dev = pick_device(device)
        source, gguf = resolve_model(model)
        hf_model, tokenizer = load_model_and_tokenizer(source, dev, pick_dtype(dtype, dev))
        name = "tokenflow" if model is None else Path(str(model)).name
        return cls(hf_model, tokenizer, gguf_path=gguf, name=name)

    # -- prompt -------------------------------------------------------------
    def encode(self, prompt: Prompt | list[dict], chat: bool = False) -> list[int]:
        """Token ids of a prompt: raw text, ids as they are, or (``chat=True``) a
        user message / list of messages through the chat template."""
        if chat:
            if isinstance(prompt, str):
                messages = [{"role": "user", "content": prompt}]
            elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
                messages = prompt
            else:
                raise ParamError("prompt", "chat=True needs a string or a list of {role, content} messages")
            enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)
            ids = list(enc["input_ids"])
        elif isinstance(prompt, str):
            ids = self.tokenizer(prompt)["input_ids"]
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool)
                                                       for t in prompt):
            vocab = self.model.config.vocab_size
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise ParamError("prompt", f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
            ids = list(prompt)
        else:
            raise ParamError("prompt", "must be a string or a list of token ids")
        if not ids:
            raise ParamError("prompt", "the prompt is empty")
        return ids

    def check_length(self, ids: list[int], params: SamplingParams) -> None:
        if len(ids) + params.max_new_tokens > self.context_length:
            raise ParamError(
                "max_new_tokens",
                f"prompt ({len(ids)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds "
                f"the model's context of {self.context_length} tokens",
            )

    def stop_ids(self, params: SamplingParams) -> set[int]:
        ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            ids |= set(self.eos_token_ids)
        return ids

    # -- the loop -----------------------------------------------------------
    def stream(self, prompt: Prompt | list[dict], params: SamplingParams | None = None,
               chat: bool = False) -> Iterator[TokenEvent]:
        """Yield a ``TokenEvent`` per generated token, each the moment it exists."""
        params = params or SamplingParams()
        ids = self.encode(prompt, chat)
        self.check_length(ids, params)
        if resolve(params.strategy).selector == "beam":
            yield from self._stream_beam(ids, params)
            return
        if params.n != 1:
            raise ParamError("n", "Engine.stream() yields one sequence; n > 1 is not implemented here yet")
        gen = make_generator(params.seed, self.device)
        sampler = BatchSampler([params], [gen], self.device, prompt_ids=[ids], eos_token_ids=self.eos_token_ids)
        stop_ids = self.stop_ids(params)
        text = TextStream(self.tokenizer, params.stop)
        cache = self.runner.new_cache()
        logits = self.runner.prefill(torch.tensor([ids], device=self.device), cache)
        for index in range(params.max_new_tokens):
            out = sampler(logits)
            # The one device-to-host read of the step: chosen id and its logprob.
            tok, lp = torch.stack((out.token_ids.double(), out.logprobs.double()), 1)[0].tolist()
            tok = int(tok)
            sampler.accept([tok])
            top = top_logprobs(out, params.logprobs, self.tokenizer)
            delta = text.push(tok)
            finish = _finish_reason(tok, stop_ids, text, index + 1 >= params.max_new_tokens)
            if finish:
                delta += text.flush()
            yield TokenEvent(tok, delta, lp, index, finish, top)
            if finish:
                return
            logits = self.runner.decode(out.token_ids, cache)

    def _stream_beam(self, ids: list[int], params: SamplingParams) -> Iterator[TokenEvent]:
        """Beam search that streams honestly: a token is emitted once every live
        beam and every finished hypothesis still in the running agree on it."""
        nb = params.num_beams
        stop_ids = self.stop_ids(params)
        search = BeamSearch(nb, params.max_new_tokens, sorted(stop_ids), params.length_penalty,
                            params.early_stopping, self.device)
        text = TextStream(self.tokenizer, params.stop)
        cache = self.runner.new_cache()
        logits = self.runner.prefill(torch.tensor([ids], device=self.device), cache)
        self.runner.expand(cache, nb)
        logits = logits.expand(nb, -1)
        emitted = 0
        while True:
            parents, tokens = search.step(logits.log_softmax(dim=-1))
            if search.done:
                break
            settled, lps = search.settled()
            for tok, lp in zip(settled[emitted:], lps[emitted:]):
                delta = text.push(tok)
                if text.stopped:
                    yield TokenEvent(tok, delta, lp, emitted, "stop")
                    return
                yield TokenEvent(tok, delta, lp, emitted)
                emitted += 1
            self.runner.reorder(cache, parents)
            logits = self.runner.decode(tokens, cache)
        final, lps, _ = search.best()
        if emitted >= len(final):  # cannot happen: the final hypothesis extends the settled prefix
            raise RuntimeError("beam search emitted more tokens than its best hypothesis")
        for i in range(emitted, len(final)):
            tok, last = final[i], i == len(final) - 1
            delta = text.push(tok)
            finish = _finish_reason(tok, stop_ids, text, last) if (last or text.stopped) else None
            if finish:
                delta += text.flush()
            yield TokenEvent(tok, delta, lps[i], i, finish)
            if finish:
                return

    def generate_text(self, prompt: Prompt | list[dict], params: SamplingParams | None = None,
                      chat: bool = False) -> str:
        """The whole answer as one string (joins the stream)."""
        return "".join(ev.text for ev in self.stream(prompt, params, chat))


def _finish_reason(tok: int, stop_ids: set[int], text: TextStream, at_limit: bool) -> str | None:
    if tok in stop_ids or text.stopped:
        return "stop"
    if at_limit:
        return "length"
    return None


def _eos_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)
