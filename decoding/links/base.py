"""The link protocol: one step of a decoding chain, ``logits[B, V] -> logits[B, V]``.

A link (as llama.cpp's ``llama_sampler_i`` and vLLM v1's logits processors):

- ``name``, and ``params``: the ``SamplingParams`` fields it owns, declared here
  (``Param``) and added to ``SamplingParams`` from here; the first one switches
  it on, its ``off`` value leaves the row alone;
- ``changes_argmax``: whether it can change a greedy row's choice (greedy rows
  skip links that cannot);
- ``columns(rows, batch)``: a batch's rows -> per-row columns, once per batch
  (``None``: off for every row, the link is skipped);
- ``apply(logits, columns) -> logits``, the step itself, masking with ``-inf``;
- for history: ``new_state(params, prompt_ids, grammars)`` -> a per-row ``LinkState``
  that learns each chosen token through ``accept`` and can ``reset``/``clone``;
  columns over the whole batch that track output (penalty counts) learn a step's
  ids at once through ``advance``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..lazy import torch


class _NoOff:
    """``Param.off`` when a field has no value that disables something."""

    def __repr__(self) -> str:
        return "NO_OFF"


NO_OFF = _NoOff()


@dataclass(frozen=True)
class Param:
    """One ``SamplingParams`` field a link (or selector) owns: its type as the
    dataclass shows it, default, help and bounds (validation, the CLI, the server and
    ``decoding.describe()`` read them) and ``off``, the value that disables it.

    A ``None`` default with an ``off`` value means "the strategy's default, else off".
    ``convert`` normalises a value before validation (lists to tuples, JSON keys).
    ``strict``: a live value on a strategy whose chain lacks the link is an error;
    ``top_k``/``top_p`` are lenient because OpenAI-style clients send them anyway.
    """

    name: str
    type: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    off: Any = NO_OFF
    factory: Callable[[], Any] | None = None
    strict: bool = True
    convert: Callable[[Any], Any] | None = None  # JSON-style input -> the field's value; raises ParamError
    file: bool = False  # on the command line the value may be a file to read (a schema, a grammar)

    def dataclass_field(self) -> dataclasses.Field:
        """The ``dataclasses.field`` SamplingParams is built with."""
        meta = {"help": self.help, "low": self.low, "high": self.high, "low_open": self.low_open,
                "high_open": self.high_open, "strict": self.strict, "file": self.file}
        if self.off is not NO_OFF:
            meta["off"] = self.off
        if self.factory is not None:
            return dataclasses.field(default_factory=self.factory, metadata=meta, hash=False)
        return dataclasses.field(default=self.default, metadata=meta)


@dataclass(frozen=True)
class Batch:
    """What a link may need besides its rows to build its columns."""

    device: torch.device | str
    vocab: int
    eos_token_ids: tuple[int, ...] = ()


class Row(Protocol):
    """What a link reads of a batch row (``decoding.sampler.RowState``)."""

    params: Any  # the row's SamplingParams
    generator: torch.Generator
    extra_generator: torch.Generator  # a second stream of the same seed (XTC's coin)
    history: list[int]  # prompt + output
    prompt_len: int
    states: dict[Any, "LinkState"]  # link or selector -> its state for this row

    @property
    def generated(self) -> int: ...


class LinkState(Protocol):
    """A row's state of a stateful link; it learns only through ``accept``. A state
    may also have ``done``: true once its row must end (a grammar that is complete)."""

    def accept(self, token: int) -> None: ...

    def reset(self) -> None: ...

    def clone(self) -> "LinkState": ...


class Link:
    """Base of every link; subclasses set the class attributes and ``apply``."""

    name: str = ""
    params: tuple[Param, ...] = ()
    changes_argmax: bool = False
    tracks_output: bool = False  # its columns learn each step's ids through advance()
    with_beam: bool = False  # a history link that beam search runs too (the grammar mask)
    description: str = ""
    reference: str = ""

    @property
    def fields(self) -> tuple[str, ...]:
        """Names of the fields it owns, the switch first."""
        return tuple(p.name for p in self.params)

    @property
    def switches(self) -> tuple[Param, ...]:
        """The fields whose live value turns it on."""
        return self.params[:1]

    def is_on(self, params: Any) -> bool:
        """Whether this request switches it on."""
        return any(getattr(params, p.name) != p.off for p in self.switches)

    def labels(self, params: Any) -> tuple[str, ...]:
        """Its names in a request's printed chain (none when off)."""
        return (self.name,) if self.is_on(params) else ()

    def describe(self) -> list[dict[str, Any]]:
        """Catalogue entries (``decoding.processors()``, ``GET /strategies``)."""
        return [{"name": self.name, "field": self.params[0].name, "params": list(self.fields),
                 "description": self.description, "reference": self.reference}]

    def check(self, params: Any) -> None:
        """Checks across its fields, once ``SamplingParams`` has them all (raise ``ParamError``)."""

    def new_state(self, params: Any, prompt_ids: Sequence[int], grammars: Any = None) -> LinkState | None:
        """A row's own state, for links that learn from history; ``None``: stateless.
        ``grammars``: the tokenizer's ``links.grammar.Grammars`` when the engine gives one."""
        return None

    def columns(self, rows: Sequence[Row], batch: Batch) -> Any:
        """Per-row columns for this batch, built once; ``None`` when off for every row."""
        raise NotImplementedError

    def apply(self, logits: torch.Tensor, columns: Any) -> torch.Tensor:
        """The link over ``[B, V]`` logits (rows in ``columns``' order)."""
        raise NotImplementedError

    def advance(self, columns: Any, token_ids: torch.Tensor) -> None:
        """Learn this step's ids ``[B]`` (device) into batch columns (``tracks_output``)."""

    def __repr__(self) -> str:
        return f"<link {self.name}>"


class ColumnLink(Link):
    """A link driven by one number per row: its switch field as a ``[B]`` column, with
    the rows' ``min_tokens_to_keep`` (a group shares it)."""

    dtype = "float32"  # the column's torch dtype, by name (naming it here imports no torch)

    def columns(self, rows: Sequence[Row], batch: Batch) -> tuple[torch.Tensor, int] | None:
        switch = self.params[0]
        values = [getattr(r.params, switch.name) for r in rows]
        if all(v == switch.off for v in values):
            return None
        return torch.tensor(values, dtype=getattr(torch, self.dtype), device=batch.device), rows[0].params.min_tokens_to_keep
