"""The engine: tokenize, prefill once, then one forward per token, yielding as it goes."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from decoding import ParamError, SamplingParams
from decoding.links.grammar import Grammars

from . import kernels, speculate
from .batch import BatchGenerator
from .chat import encode_chat
from .config import EngineConfig, EngineConfigError, ResolvedConfig
from .events import TokenEvent
from .loading import DEFAULT_NAME, Progress, load_model_and_tokenizer, pick_device, pick_dtype, report, resolve_model
from .model.hf import HFRunner
from .model.llama import FastLlama
from .model.runner import FastRunner, Runner
from .prefix_cache import PrefixCache

Prompt = str | list[int]


class Engine:
    """A model, its tokenizer and the hand-written generation loop around them."""

    def __init__(self, model, tokenizer, config: ResolvedConfig, name: str = "tokenflow"):
        """Wrap a loaded HF model as ``config`` (``EngineConfig.resolve``) settled it: Llama
        models run on ``FastLlama`` (static slot cache, ``quant`` weights, compiled decode
        step), others on the ``HFRunner`` fallback."""
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.runner: Runner
        if config.runner == "fast":
            self.runner = FastRunner(FastLlama.from_hf(model, config), compile=config.compile,
                                     prefill_chunk=config.prefill_chunk, graphs=config.graphs)
        else:
            self.runner = HFRunner(model, num_slots=config.num_slots, max_len=config.max_len)
        self.device = self.runner.device
        self.dtype = self.runner.dtype  # the activations' dtype
        self.context_length = self.runner.max_len
        # the exact prefix cache every batch of this engine shares (off, with its reason, where
        # prefill is not chunk-invariant: prefix_cache.py)
        self.prefix_cache = PrefixCache.for_engine(self.runner, config)
        self.eos_token_ids = _eos_ids(model, tokenizer)
        # constrained output's compiler over this tokenizer (its token table built on first use)
        self.grammars = Grammars(tokenizer, model.config.vocab_size, self.eos_token_ids)

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: str = "auto",
             dtype: str | torch.dtype = "auto", quant: str = "auto", compile: bool | None = None,
             **options) -> "Engine":
        """Load the default model (``model=None``), a local HF folder, a ``.gguf`` file or
        a hub id. ``device="auto"`` picks CUDA when present. The other settings are
        ``EngineConfig``'s fields (see there): ``quant`` (``none``, ``int8``, ``int4`` or
        ``auto``: int4 on CPU when ``dtype`` is ``auto`` and the source is a Llama GGUF with
        Q4_1 projections, the default model), ``compile`` (default: ``TOKENFLOW_COMPILE``),
        ``num_slots``, ``max_len``, ``prefill_chunk``, ``head``, ``dense_prefill``,
        ``activations``, ``kernels``."""
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        return cls.from_config(EngineConfig(model=None if model is None else str(model), device=device,
                                            dtype=dtype, quant=quant, compile=compile, **options))

    @classmethod
    def from_config(cls, config: EngineConfig, progress: Progress | None = None) -> "Engine":
        """Load the model ``config`` names and build the engine it asks for. ``progress(stage,
        message)`` hears each of ``loading.LOAD_STAGES`` as it begins (default: the
        once-only download and conversion are said on stderr)."""
        if config.kernels != "auto":  # a tier, or PyTorch's (aten), for the whole process
            try:
                kernels.use(config.kernels)
            except ValueError as exc:
                raise EngineConfigError(str(exc)) from None
        dev = pick_device(config.device)
        source, gguf = resolve_model(config.model, progress)
        report(progress, "loading", f"loading {Path(str(source)).name} on {dev}")
        # The HF model stays float32 on CPU: it is the reference and the source of the weights.
        hf_model, tokenizer = load_model_and_tokenizer(source, dev, pick_dtype(config.dtype, dev))
        name = DEFAULT_NAME if config.model is None else Path(config.model).name
        report(progress, "preparing", "preparing the weights and kernels (tokenflow's kernels are compiled "
                                      "once per CPU, on first use)")
        return cls(hf_model, tokenizer, config.resolve(hf_model, gguf), name=name)

    def describe(self) -> str:
        """What runs, in one line: the model, ``config.summary()`` (device, weight format,
        activations, kernel tier, ...) and what the kernels say of themselves (why ours
        are off, when they are). The CLI prints it with ``--stats``/``-v``; the server logs it."""
        return (f"{self.name}: {self.config.summary()}{speculate.describe(self)} "
                f"(kernels: {self.config.kernels_reason})")

    @property
    def quant(self) -> str:
        """The body's weight format: ``none``, ``int8`` or ``int4``."""
        return self.config.quant

    @property
    def activations(self) -> str:
        """What int layers multiply their codes by: ``bf16`` or ``int8``."""
        return self.config.activations

    @property
    def gguf_path(self) -> Path | None:
        """The GGUF the weights came from, if any."""
        return None if self.config.gguf is None else Path(self.config.gguf)

    # -- prompt -------------------------------------------------------------
    def encode(self, prompt: Prompt | list[dict], chat: bool = False, special_tokens: bool = False) -> list[int]:
        """Token ids of a prompt: raw text, ids as they are, or (``chat=True``) a
        user message / list of messages through the chat template, whose contents are
        read as text unless ``special_tokens`` (``generator/chat.py``)."""
        if chat:
            if isinstance(prompt, str):
                messages = [{"role": "user", "content": prompt}]
            elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
                messages = prompt
            else:
                raise ParamError("prompt", "chat=True needs a string or a list of {role, content} messages")
            ids = encode_chat(self.tokenizer, messages, special_tokens=special_tokens)
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

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The most bytes of text one token can stand for, read off the vocabulary once. A
        byte-level vocabulary (GPT-2's, SmolLM2's) spells each byte as one character, so a
        piece's length in characters is its bytes; any other piece spells its bytes with at
        least as many (a ``<0xE2>`` fallback is six), so its UTF-8 length is never below the
        truth. Added tokens count as their text. A tokenizer that normalizes text first
        (NFKC turns a three-byte full-width letter into one ASCII byte) gets a factor of 4."""
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
        pieces = tok.get_vocab()
        longest = max((len(p) if byte_level else len(p.encode("utf-8", "replace")) for p in pieces), default=1)
        added = [str(getattr(a, "content", a)) for a in getattr(tok, "added_tokens_decoder", {}).values()]
        longest = max([longest, *(len(a.encode("utf-8", "replace")) for a in added)])
        normalizes = backend is None or backend.normalizer is not None
        return max(1, longest) * (4 if normalizes else 1)

    def fewest_tokens(self, prompt: Prompt | list[dict]) -> int:
        """A floor on the number of tokens ``prompt`` (text, ids, or chat messages) encodes
        to, found without tokenizing it: its text's UTF-8 bytes over ``max_token_bytes``.
        A server refuses a prompt of megabytes with it at once, before the seconds and the
        hundreds of MB that tokenizing it would cost only to find it too long."""
        if isinstance(prompt, str):
            texts = [prompt]
        elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
            texts = [c for m in prompt if isinstance(c := m.get("content"), str)]
        else:
            return 0  # token ids: no floor needed, they are counted exactly at no cost
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        return size // self.max_token_bytes

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
               chat: bool = False, generated: Sequence[int] = ()) -> Iterator[TokenEvent]:
        """Yield a ``TokenEvent`` per generated token, each the moment it exists. A fork
        passes ``generated``, the tokens it continues after as if it had drawn them: the
        same seed then gives the noise, penalties and grammar state the forked stream had."""
        params = params or SamplingParams()
        ids = self.encode(prompt, chat)
        self.check_length([*ids, *generated], params)
        if params.n != 1:
            raise ParamError("n", "Engine.stream() yields one sequence; use Engine.stream_n() for n > 1")
        for _, ev in self._run(ids, [params], generated):
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

    def _run(self, ids: list[int], choices: list[SamplingParams],
             generated: Sequence[int] = ()) -> Iterator[tuple[int, TokenEvent]]:
        # One request on its own batch: the same step the scheduler runs for many.
        batch = self.batch()
        handles = batch.add_group(ids, choices, generated)
        index = {h: i for i, h in enumerate(handles)}
        try:
            while batch.active:
                for handle, ev in batch.step():
                    if isinstance(ev, Exception):  # this request's own failure (see BatchGenerator.step)
                        raise ev
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
