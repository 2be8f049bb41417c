"""The bookkeeping of ``BatchGenerator`` (``batch.py``): a row (one generation over its
slot or its beams' slots), a prompt being written (``Prefill``), and why a row ends."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from decoding import BeamSearch, SamplingParams
from decoding.beam import BeamLinks
from decoding.sampler import RowState

from .detok import TextStream


def finish_reason(tok: int, stop_ids: set[int], text: TextStream, at_limit: bool) -> str | None:
    """Why a row ends after ``tok``: ``"stop"`` (stop id or stop string), ``"length"`` or ``None``."""
    if tok in stop_ids or text.stopped:
        return "stop"
    if at_limit:
        return "length"
    return None


@dataclass(eq=False)
class Row:
    """One generation: a sampled sequence (one slot) or a beam search (``num_beams`` slots)."""

    handle: int
    params: SamplingParams
    slots: list[int]
    text: TextStream
    stop_ids: set[int]
    state: RowState | None = None  # sampled rows
    search: BeamSearch | None = None  # beam rows
    beam_links: BeamLinks | None = None  # beam rows under a grammar: a state per beam
    slot_t: torch.Tensor | None = None  # beam rows: their slots on the device
    next_tokens: torch.Tensor | None = None  # beam rows: what the next decode feeds, on the device
    next_token: int | None = None  # sampled rows: the last chosen id (host int)
    emitted: int = 0  # events yielded so far
    ready: bool = False  # prefilled: takes part in decode steps
    done: bool = False


@dataclass(eq=False)
class Prefill:
    """A prompt being written into its first row's slot, chunk by chunk; the rows
    it serves (``n`` > 1 siblings, the beams) get a copy of that slot when it is done."""

    ids: list[int]
    rows: list[Row]
    written: int = 0
    targets: list[int] = field(default_factory=list)  # every slot that needs the prompt

    @property
    def slot(self) -> int:
        return self.targets[0]
