"""Constrained output: the grammar link masks every token a row's grammar cannot take next.

A row asks for one constraint: ``json_schema`` (a JSON schema; ``{"type": "object"}`` is
any JSON object), ``regex``, ``grammar`` (a Lark grammar, llguidance's dialect) or
``choice`` (one of a list of strings). llguidance does the work: its matcher, one per
row, fills a token bitmask for the next step and learns each chosen token through
``accept``; the link turns the bitmask into ``-inf`` outside the allowed tokens.

The matcher needs the tokenizer, which the chain never sees: ``Grammars`` is built once
per tokenizer (by the engine) and handed to ``RowState`` / ``BatchSampler``; it keeps the
compiled grammars in an LRU keyed by their text, so a repeated schema costs a copy.
A grammar is checked when ``SamplingParams`` is built (no tokenizer needed), so a bad one
is a ``ParamError`` at the boundary, never a failure inside a step.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ..checks import ParamError
from ..lazy import LazyModule, torch
from .base import Batch, Link, Param

llguidance: Any = LazyModule("llguidance")  # imported when a constraint is first checked
KINDS = ("json_schema", "regex", "grammar", "choice")  # the fields, in the order they are checked


# JSON as OpenAI writes it, `{"a": 1, "b": [2, 3]}`, and no free whitespace: a small model
# given room for whitespace can spend its whole budget on it. A schema's own
# "x-guidance" options override these.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _source(kind: str, text: str) -> str:
    """llguidance's grammar text for one constraint (``text`` as the field holds it)."""
    if kind == "json_schema":
        return llguidance.LLMatcher.grammar_from_json_schema(text, defaults=JSON_STYLE)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(text)
    if kind == "choice":
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in json.loads(text)))
    return llguidance.LLMatcher.grammar_from_lark(text)


@lru_cache(maxsize=256)
def _problem(kind: str, text: str) -> str:
    """Why llguidance refuses this constraint ('' when it compiles); cached by content."""
    try:
        return llguidance.LLMatcher.validate_grammar(_source(kind, text))
    except ValueError as exc:
        return str(exc)


def _checked(kind: str, text: str) -> str:
    problem = _problem(kind, text)
    if problem:
        raise ParamError(kind, _one_line(problem))
    return text


def _one_line(problem: str) -> str:
    """llguidance's message (a caret diagram for regexes) as one line that names the fault."""
    lines = [line.strip() for line in problem.strip().splitlines()]
    first = lines[0]
    if first.startswith("Unimplemented keys"):  # name the keyword the way a user reads it
        return "unsupported schema keyword(s) " + first.partition(":")[2].strip()
    detail = [line.removeprefix("error:").strip() for line in lines[1:] if line.startswith("error:")]
    return " ".join([first, *detail])


def _json_schema(value: Any) -> str | None:
    """A schema (a mapping, or its JSON text) -> its compact JSON text, checked."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ParamError("json_schema", f"is not valid JSON: {exc}") from None
    if not isinstance(value, (dict, bool)):
        raise ParamError("json_schema", f"must be a JSON schema (an object), got {type(value).__name__}")
    # key order kept: properties are generated in the order the schema lists them
    return _checked("json_schema", json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _text(kind: str):
    def convert(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ParamError(kind, f"must be a non-empty string, got {value!r}")
        return _checked(kind, value)
    return convert


def _choice(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) for c in value):
        raise ParamError("choice", f"must be a non-empty list of strings, got {value!r}")
    choices = tuple(value)
    _checked("choice", json.dumps(list(choices)))
    return choices


class Grammars:
    """llguidance over one tokenizer: its token table (built once) and the compiled
    grammars, an LRU of ``cache_size`` keyed by the constraint's text. ``matcher()``
    hands out a fresh matcher (a copy of the cached one). ``vocab``: the model's
    vocabulary (may exceed the tokenizer's); ``eos_token_ids``: what ends a row."""

    def __init__(self, tokenizer, vocab: int, eos_token_ids: Sequence[int], cache_size: int = 64):
        self.hf_tokenizer = tokenizer
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self._tokenizer: llguidance.LLTokenizer | None = None  # built on the first constraint
        self.vocab = vocab
        self.cache_size = cache_size
        self._compiled: OrderedDict[tuple[str, str], llguidance.LLMatcher] = OrderedDict()
        self._executor: llguidance.LLExecutor | None = None
        self._lock = threading.Lock()  # a server compiles at intake while its worker steps
        self.hits = self.misses = 0

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's token table, built once (a request with no constraint never pays it)."""
        if self._tokenizer is None:
            import llguidance.hf  # transformers' tokenizer adapter

            self._tokenizer = llguidance.hf.from_tokenizer(self.hf_tokenizer, n_vocab=self.vocab,
                                                           eos_token=self.eos_token_ids or None)
        return self._tokenizer

    def token_texts(self) -> list[str]:
        """Each token id's text, decoded alone (built once; DRY's text breakers read it)."""
        with self._lock:
            if getattr(self, "_texts", None) is None:
                size = min(self.vocab, len(self.hf_tokenizer))
                self._texts = self.hf_tokenizer.batch_decode([[i] for i in range(size)])
            return self._texts

    def matcher(self, kind: str, text: str) -> llguidance.LLMatcher:
        """A matcher at the start of constraint ``kind`` (a ``KINDS`` field) with ``text``."""
        key = (kind, text)
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is None:
                self.misses += 1
                compiled = llguidance.LLMatcher(self.tokenizer, _source(kind, text), log_level=0)
                if compiled.is_error():  # SamplingParams checked it; the tokenizer may still refuse it
                    raise ParamError(kind, _one_line(compiled.get_error()))
                self._compiled[key] = compiled
                if len(self._compiled) > self.cache_size:
                    self._compiled.popitem(last=False)
            else:
                self.hits += 1
                self._compiled.move_to_end(key)
            return compiled.deep_copy()

    def prepare(self, params: Any) -> None:
        """Compile ``params``' constraint now, if it has one (a server does it at intake:
        a grammar this tokenizer cannot run is a 400 there, and the worker finds it cached)."""
        spec = GRAMMAR.constraint(params)
        if spec is not None:
            self.matcher(*spec)

    def fill(self, states: list["GrammarState"], bitmask: torch.Tensor) -> None:
        """Each state's allowed next tokens into row ``i`` of ``bitmask`` ``[G, words]``
        (int32, CPU, contiguous); several rows are computed in parallel."""
        width = bitmask.shape[1] * 4
        if len(states) == 1:
            states[0].matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), width)
            return
        if self._executor is None:
            self._executor = llguidance.LLExecutor()
        self._executor.unsafe_compute_mask_ptr([(s.matcher, i) for i, s in enumerate(states)],
                                               bitmask.data_ptr(), width, bitmask.shape[0])


class GrammarState:
    """A row's place in its grammar. A token the grammar refuses (only a caller that
    ignored the mask can give one) leaves the matcher in its error state, whose mask
    allows end-of-sequence alone, so the row ends."""

    def __init__(self, matcher: llguidance.LLMatcher, grammars: Grammars):
        self.matcher = matcher
        self.grammars = grammars

    def accept(self, token: int) -> None:
        self.matcher.consume_token(int(token))

    def reset(self) -> None:
        self.matcher.reset()

    def clone(self) -> "GrammarState":
        return GrammarState(self.matcher.deep_copy(), self.grammars)

    @property
    def error(self) -> str | None:
        """Why the matcher failed (a token it refuses was accepted: a fork's prefix), or ``None``."""
        return _one_line(self.matcher.get_error()) if self.matcher.is_error() else None

    @property
    def done(self) -> bool:
        """The grammar is complete and admits nothing more: the row ends here."""
        return self.matcher.is_stopped()


def unpack_bitmask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """llguidance's bitmask ``[G, words]`` int32 (bit ``j`` of word ``w`` is token
    ``32 w + j``) -> allowed ``[G, vocab]`` bool."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (G, words, 32)
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab].bool()


class Grammar(Link):
    """The grammar mask; a history link that also runs under beam search (each beam
    its own matcher: ``clone`` when a beam forks)."""

    name = "grammar"
    params = (
        Param("json_schema", "str | None", None, "constrain the output to JSON valid under this schema "
              "(a JSON object, or FILE on the command line)", off=None, convert=_json_schema, file=True),
        Param("regex", "str | None", None, "constrain the output to match this regular expression", off=None,
              convert=_text("regex")),
        Param("grammar", "str | None", None, "constrain the output to this Lark grammar (llguidance's dialect; "
              "FILE on the command line)", off=None, convert=_text("grammar"), file=True),
        Param("choice", "tuple[str, ...] | None", None, "the output is exactly one of these strings (repeatable)",
              off=None, convert=_choice),
    )
    changes_argmax = True
    with_beam = True
    description = "mask every token the row's JSON schema, regex, grammar or choice cannot take next"
    reference = "llguidance LLMatcher (vLLM guided decoding, llama.cpp json_schema/GBNF)"

    @property
    def switches(self) -> tuple[Param, ...]:
        return self.params  # any one of them turns it on

    def check(self, params: Any) -> None:
        given = [p.name for p in self.params if getattr(params, p.name) is not None]
        if len(given) > 1:
            raise ParamError(given[1], f"only one constraint per request; {given[0]} is already set")

    def constraint(self, params: Any) -> tuple[str, str] | None:
        """``(kind, text)`` of the row's constraint (the ``Grammars`` cache key), or ``None``."""
        for kind in KINDS:
            value = getattr(params, kind)
            if value is not None:
                return kind, json.dumps(list(value)) if kind == "choice" else value
        return None

    def new_state(self, params, prompt_ids, grammars: Grammars | None = None):
        spec = self.constraint(params)
        if spec is None:
            return None
        if grammars is None:
            raise ValueError("a constrained row needs the tokenizer's Grammars (RowState(..., grammars=))")
        return GrammarState(grammars.matcher(*spec), grammars)

    def columns(self, rows, batch: Batch):
        picked = [(i, r.states[self]) for i, r in enumerate(rows) if r.states.get(self) is not None]
        if not picked:
            return None
        index = torch.tensor([i for i, _ in picked], device=batch.device)
        bitmask = torch.zeros((len(picked), (batch.vocab + 31) // 32), dtype=torch.int32)  # filled each step
        return index, [s for _, s in picked], bitmask, len(picked) == len(rows)

    def apply(self, logits, columns):
        index, states, bitmask, whole = columns
        return mask_rows(logits, states, bitmask, index, whole)


def mask_rows(logits: torch.Tensor, states: list[GrammarState], bitmask: torch.Tensor,
              index: torch.Tensor | None = None, whole: bool = True) -> torch.Tensor:
    """``logits`` ``[B, V]`` with ``-inf`` wherever row ``index[i]``'s grammar (``states[i]``)
    refuses the token; ``whole``: the states are every row, in order."""
    states[0].grammars.fill(states, bitmask)
    allowed = unpack_bitmask(bitmask, logits.shape[-1]).to(logits.device)
    if whole:
        return logits.masked_fill(~allowed, float("-inf"))
    rows = logits.index_select(0, index).masked_fill(~allowed, float("-inf"))
    return logits.index_copy(0, index, rows)


GRAMMAR = Grammar()
