"""Selectors: the last link of a chain, logits -> one token id per row."""

from __future__ import annotations

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
