"""Selectors: the last link of a chain, logits -> one token id per row.

The plain functions (``argmax``, ``sample``, ``uniform``) and ``MirostatV2`` do the
work; the selector objects (``ARGMAX``, ``SAMPLE``, ``MIROSTAT_V2``, ``BEAM``) say
what they are (``is_beam``, ``samples``), own their fields and run a group's rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .lazy import torch

from . import transforms
from .links.base import Batch, Param


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Greedy choice, ``[B, V] -> [B]``. Ties go to the lowest id, as ``torch.argmax``."""
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """Sample one id per row from ``softmax(logits)``, ``[B, V] -> [B]``.

    Uses the exponential race ``argmax(p / E)`` with ``E ~ Exp(1)`` drawn from each
    row's own generator, so a row's draw depends on its seed alone, whatever else
    shares the batch, and no multinomial call syncs the device. Every step draws
    exactly ``V`` numbers per row whatever the chain kept, so two chains under one seed
    see the same noise at every step (common random numbers): where their kept sets and
    relative probabilities agree they pick the same token.
    """
    probs = logits.float().softmax(dim=-1)
    noise = torch.empty_like(probs)
    for row, gen in enumerate(generators):
        noise[row].exponential_(generator=gen)
    return (probs / noise).argmax(dim=-1)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A request's own random stream: seeded when asked, otherwise from fresh entropy."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


# Mixes a seed into the seed of its second stream (an odd 64-bit constant, the golden ratio's).
_EXTRA_MIX = 0x9E3779B97F4A7C15


def extra_generator(main: torch.Generator) -> torch.Generator:
    """The second stream of a row whose main stream is ``main``: seeded from ``main``'s seed,
    so the same seed gives the same second stream, and draws from it never move ``main``."""
    gen = torch.Generator(device=main.device)
    gen.manual_seed((main.initial_seed() * _EXTRA_MIX + 1) % 2**63)
    return gen


def uniform(generators: list[torch.Generator | None], device: torch.device | str = "cpu") -> torch.Tensor:
    """One ``U[0, 1)`` draw per row from the row's own generator, ``[B]``."""
    out = torch.empty(len(generators), device=device)
    for row, gen in enumerate(generators):
        out[row : row + 1].uniform_(generator=gen)
    return out


class MirostatV2:
    """Mirostat 2.0 (Basu et al. 2021) for one request, as llama.cpp's
    ``llama_sampler_mirostat_v2``: truncate to tokens with surprise ``-log2 p <= mu``,
    sample from the renormalised rest, then learn ``mu -= eta * (surprise - tau)``
    where ``surprise`` is the chosen token's under the truncated distribution.

    Stateful like a llama.cpp sampler: it learns only through ``accept(token)``, and
    ``reset()`` / ``clone()`` restore or fork the state (what a beam fork needs).
    ``mu`` stays a device scalar so learning never syncs the host.
    """

    def __init__(self, tau: float = 5.0, eta: float = 0.1, device: torch.device | str = "cpu"):
        self.tau = float(tau)
        self.eta = float(eta)
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Back to the initial state, ``mu = 2 * tau``, nothing observed."""
        self.mu = torch.tensor(2.0 * self.tau, device=self.device)
        self.last_log2p: torch.Tensor | None = None  # (V,) truncated distribution of the last step

    def clone(self) -> "MirostatV2":
        """An independent copy with the same state."""
        other = type(self)(self.tau, self.eta, self.device)
        other.mu = self.mu.clone()
        other.last_log2p = self.last_log2p
        return other

    def observe(self, truncated_logits: torch.Tensor) -> None:
        """Remember this step's truncated logits ``[V]`` (``accept`` scores the chosen token)."""
        self.last_log2p = truncated_logits.float().log_softmax(dim=-1) / math.log(2)

    def accept(self, token: int | torch.Tensor) -> None:
        """Learn from the token chosen this step."""
        if self.last_log2p is None:
            raise RuntimeError("MirostatV2.accept() before a step was taken")
        surprise = -self.last_log2p[token]
        self.mu = self.mu - self.eta * (surprise - self.tau)
        self.last_log2p = None

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Choose a token for one row, ``[V]`` or ``[1, V]`` -> ``[1]``."""
        row = logits.reshape(1, -1)
        truncated = transforms.mirostat_v2_truncate(row, self.mu.reshape(1))
        self.observe(truncated[0])
        return sample(truncated, [generator])


class Selector:
    """The last link of a chain. ``samples``: it draws at random from each row's seeded
    generator (temperature 0 makes such a row greedy); ``is_beam``: beam search, which
    ``decoding.beam.BeamSearch`` drives instead of a ``BatchSampler``."""

    name: str = ""
    is_beam: bool = False
    samples: bool = False
    params: tuple[Param, ...] = ()  # fields it owns

    def new_state(self, params: Any, device: torch.device | str) -> Any:
        """A row's own state, for selectors that learn; ``None``: stateless."""
        return None

    def columns(self, rows: Sequence[Any], batch: Batch) -> Any:
        """What ``select`` needs of a group's rows, built once per batch."""
        return None

    def select(self, logits: torch.Tensor, columns: Any) -> torch.Tensor:
        """One id per row, ``[G, V] -> [G]``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<selector {self.name}>"


class Argmax(Selector):
    name = "argmax"

    def select(self, logits, columns):
        return argmax(logits)


class Sample(Selector):
    name = "sample"
    samples = True

    def columns(self, rows, batch):
        return [r.generator for r in rows]

    def select(self, logits, generators):
        return sample(logits, generators)


class _MirostatRow(MirostatV2):
    """A row's mirostat state: a greedy step (temperature 0) observed nothing, so
    there is nothing to learn from its token."""

    def accept(self, token: int | torch.Tensor) -> None:
        if self.last_log2p is not None:
            super().accept(token)


class Mirostat(Selector):
    name = "mirostat_v2"
    samples = True
    params = (Param("mirostat_tau", "float", 5.0, "mirostat: target surprise in bits", low=0.0, low_open=True),
              Param("mirostat_eta", "float", 0.1, "mirostat: learning rate of mu", low=0.0, high=1.0, low_open=True))

    def new_state(self, params, device):
        return _MirostatRow(params.mirostat_tau, params.mirostat_eta, device)

    def columns(self, rows, batch):
        return [r.generator for r in rows], [r.states[self] for r in rows]

    def select(self, logits, columns):
        generators, states = columns
        logits = transforms.mirostat_v2_truncate(logits, torch.stack([s.mu for s in states]))
        for row, state in enumerate(states):
            state.observe(logits[row])
        return sample(logits, generators)


class MirostatV1(Mirostat):
    """Mirostat 1.0 (llama.cpp's ``llama_sampler_mirostat``, m = 100): a top-k whose k comes
    from the Zipf exponent fitted to the most likely tokens and ``mu``; it learns ``mu``
    as mirostat 2.0 does."""

    name = "mirostat_v1"

    def columns(self, rows, batch):
        return [r.generator for r in rows], [r.states[self] for r in rows], batch.vocab

    def select(self, logits, columns):
        generators, states, vocab = columns
        logits = transforms.mirostat_v1_truncate(logits, torch.stack([s.mu for s in states]), vocab)
        for row, state in enumerate(states):
            state.observe(logits[row])
        return sample(logits, generators)


class Beam(Selector):
    name = "beam"
    is_beam = True

    def select(self, logits, columns):
        raise ValueError("beam rows are driven by decoding.beam.BeamSearch, not BatchSampler")


ARGMAX = Argmax()
SAMPLE = Sample()
MIROSTAT_V2 = Mirostat()
MIROSTAT_V1 = MirostatV1()
BEAM = Beam()
