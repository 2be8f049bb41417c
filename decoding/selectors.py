"""Selectors: the last link of a chain, logits -> one token id per row."""

from __future__ import annotations

import math

import torch


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Greedy choice, ``[B, V] -> [B]``. Ties go to the lowest id, as ``torch.argmax``."""
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """Sample one id per row from ``softmax(logits)``, ``[B, V] -> [B]``.

    Uses the exponential race ``argmax(p / E)`` with ``E ~ Exp(1)`` drawn from each
    row's own generator, so a row's draw depends on its seed alone, whatever else
    shares the batch, and no multinomial call syncs the device.
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
        other = MirostatV2(self.tau, self.eta, self.device)
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
        from .transforms import mirostat_v2_truncate

        row = logits.reshape(1, -1)
        truncated = mirostat_v2_truncate(row, self.mu.reshape(1))
        self.observe(truncated[0])
        return sample(truncated, [generator])
