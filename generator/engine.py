"""The engine: tokenize, prefill once, then one forward per token, yielding as it goes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from decoding import ParamError, SamplingParams

from .batch import BatchGenerator
from .events import TokenEvent
from .model.llama import FastLlama, supports
from .loading import ModelLoadError, load_model_and_tokenizer, pick_device, pick_dtype, resolve_model
from .weights.formats import QUANTS, has_q4_1, resolve_activations
from .model.runner import FastRunner, HFRunner, compile_enabled

Prompt = str | list[int]


class Engine:
    """A model, its tokenizer and the hand-written generation loop around them."""

    def __init__(self, model, tokenizer, gguf_path: Path | None = None, name: str = "tokenflow",
                 quant: str = "none", dtype: torch.dtype | None = None, compile: bool | None = None,
                 num_slots: int = 8, max_len: int = 2048, prefill_chunk: int = 256, head: str = "auto",
                 dense_prefill: bool = False, activations: str = "auto"):
        """Wrap a loaded HF model. Llama models run on ``FastLlama`` (static slot cache,
        ``quant`` weights, compiled decode step); others on the ``HFRunner`` fallback."""
        if quant not in QUANTS:
            raise ModelLoadError(f"unknown quant {quant!r}; choose from auto, {', '.join(QUANTS)}")
        device = next(model.parameters()).device
        if quant == "int4" and device.type != "cpu":
            # The packed int4 kernel used here is PyTorch's CPU one.
            raise ModelLoadError(f"quant='int4' runs on CPU only, not {device.type}")
        self.model = model
        self.tokenizer = tokenizer
        self.gguf_path = gguf_path
        self.name = name
        model_ctx = int(getattr(model.config, "max_position_embeddings", 2048))
        max_len = min(max_len, model_ctx)
        dtype = dtype or next(model.parameters()).dtype
        if supports(model):
            try:
                activations = resolve_activations(activations)
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from None
            fast = FastLlama.from_hf(model, quant=quant, dtype=dtype, gguf_path=gguf_path,
                                     num_slots=num_slots, max_len=max_len, head=head,
                                     dense_prefill=dense_prefill, activations=activations)
            self.runner = FastRunner(fast, compile=compile, prefill_chunk=prefill_chunk)
        elif quant != "none":
            raise ModelLoadError(f"quant={quant!r} needs a Llama-architecture model, "
                                 f"not {model.config.model_type!r}")
        else:
            self.runner = HFRunner(model, num_slots=num_slots, max_len=max_len)
        self.quant = quant
        # What int4 layers multiply their codes by: "bf16" or "int8" (quant.resolve_activations).
        self.activations = getattr(getattr(self.runner, "model", None), "activations", "bf16")
        self.device = self.runner.device
        self.dtype = self.runner.dtype  # the activations' dtype
        self.context_length = self.runner.max_len
        self.eos_token_ids = _eos_ids(model, tokenizer)

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: str = "auto",
             dtype: str | torch.dtype = "auto", quant: str = "auto", compile: bool | None = None,
             **runner_options) -> "Engine":
        """Load the default model (``model=None``), a local HF folder, a ``.gguf``
        file or a hub id. ``device="auto"`` picks CUDA when present.

        ``quant``: ``none`` (``dtype`` weights), ``int8`` or ``int4`` weight-only
        (bf16 activations; int4 from the GGUF's Q4_1 blocks when the source is a
        GGUF), or ``auto``: int4 on CPU when ``dtype`` is ``auto`` and the source
        is a Llama GGUF with Q4_1 projections (the default model), else none.
        ``compile``: compile the decode step (default: off unless ``TOKENFLOW_COMPILE=1``).
        ``runner_options``: ``num_slots``, ``max_len``, ``prefill_chunk``, ``head`` (the output
        head's format: ``auto`` = int8 with an int format, else dense; ``int8``, ``int4``, ``none``),
        ``dense_prefill`` (off by default: quantized layers keep a bf16 copy of their weights
        for prompt chunks, about 2x faster prefill at the cost of a second rounding),
        ``activations`` (int4 layers: ``auto`` = int8 where the CPU has AVX512_VNNI, else
        bf16; ``$TOKENFLOW_ACTIVATIONS`` overrides auto; see ``quant.resolve_activations``)."""
        dev = pick_device(device)
        source, gguf = resolve_model(model)
        torch_dtype = pick_dtype(dtype, dev)
        # The HF model stays float32 on CPU: it is the reference and the source of the weights.
        hf_model, tokenizer = load_model_and_tokenizer(source, dev, torch_dtype)
        if quant == "auto":
            # Only the GGUF's own 4-bit codes are lossless w.r.t. the source; re-quantizing
            # float weights is a second rounding, so a plain HF folder stays in its dtype.
            lossless = gguf is not None and supports(hf_model) and has_q4_1(gguf)
            quant = "int4" if (dtype == "auto" and dev.type == "cpu" and lossless) else "none"
        name = "tokenflow" if model is None else Path(str(model)).name
        return cls(hf_model, tokenizer, gguf_path=gguf, name=name, quant=quant, dtype=torch_dtype,
                   compile=compile_enabled(compile), **runner_options)

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
        if params.num_beams > self.runner.num_slots:
            raise ParamError("num_beams", f"at most {self.runner.num_slots} (the engine's KV-cache slots), "
                             f"got {params.num_beams}")

    def stop_ids(self, params: SamplingParams) -> set[int]:
        ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            ids |= set(self.eos_token_ids)
        return ids

    # -- the loop -----------------------------------------------------------
    def batch(self, prefill_budget: int | None = None) -> BatchGenerator:
        """A ``BatchGenerator`` over this engine's runner: many generations, one
        forward per step (what the server's scheduler drives)."""
        return BatchGenerator(self, prefill_budget)

    def stream(self, prompt: Prompt | list[dict], params: SamplingParams | None = None,
               chat: bool = False) -> Iterator[TokenEvent]:
        """Yield a ``TokenEvent`` per generated token, each the moment it exists."""
        params = params or SamplingParams()
        ids = self.encode(prompt, chat)
        self.check_length(ids, params)
        if params.n != 1:
            raise ParamError("n", "Engine.stream() yields one sequence; use Engine.stream_n() for n > 1")
        for _, ev in self._run(ids, [params]):
            yield ev

    def stream_n(self, prompt: Prompt | list[dict], params: SamplingParams | None = None,
                 chat: bool = False) -> Iterator[tuple[int, TokenEvent]]:
        """``params.n`` sequences of one prompt as ``(choice index, TokenEvent)``, the
        choices interleaved as they are made (one batched forward per step). The prompt
        is prefilled once; choice ``i`` samples with seed ``seed + i`` (as the server does)."""
        params = params or SamplingParams()
        ids = self.encode(prompt, chat)
        self.check_length(ids, params)
        choices = [params.replace(n=1, seed=None if params.seed is None else params.seed + i)
                   for i in range(params.n)]
        yield from self._run(ids, choices)

    def _run(self, ids: list[int], choices: list[SamplingParams]) -> Iterator[tuple[int, TokenEvent]]:
        # One request on its own batch: the same step the scheduler runs for many.
        batch = self.batch()
        handles = batch.add_group(ids, choices)
        index = {h: i for i, h in enumerate(handles)}
        try:
            while batch.active:
                for handle, ev in batch.step():
                    yield index[handle], ev
        finally:
            for h in handles:
                batch.cancel(h)

    def generate_text(self, prompt: Prompt | list[dict], params: SamplingParams | None = None,
                      chat: bool = False) -> str:
        """The whole answer as one string (joins the stream)."""
        return "".join(ev.text for ev in self.stream(prompt, params, chat))

    @property
    def free_slots(self) -> int:
        """KV-cache slots free now (the server's scheduler admits a request only when its rows fit)."""
        return self.runner.free_count


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
