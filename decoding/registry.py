"""Strategy registry: a name (and aliases) -> an ordered chain of transforms
ending in exactly one selector. CLI, server and benchmarks read it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Strategy:
    name: str
    selector: str  # "argmax" | "sample" | "beam"
    transforms: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # SamplingParams fields this strategy reads
    aliases: tuple[str, ...] = ()
    description: str = ""
    reference: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def chain(self) -> str:
        """Printable chain, e.g. ``logits -> temperature -> top_k -> sample``."""
        return " -> ".join(("logits", *self.transforms, self.selector))


_STRATEGIES: dict[str, Strategy] = {}
_ALIASES: dict[str, str] = {}


def register(strategy: Strategy) -> Strategy:
    """Add a strategy; its name and aliases must be new."""
    for key in (strategy.name, *strategy.aliases):
        key = key.lower()
        if key in _STRATEGIES or key in _ALIASES:
            raise ValueError(f"strategy name {key!r} is already registered")
    _STRATEGIES[strategy.name] = strategy
    for alias in strategy.aliases:
        _ALIASES[alias.lower()] = strategy.name
    return strategy


def resolve(name: str) -> Strategy:
    """The strategy for a canonical name or alias (case-insensitive)."""
    key = str(name).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _STRATEGIES:
        known = ", ".join(sorted(_STRATEGIES))
        raise KeyError(f"unknown strategy {name!r}; known: {known}")
    return _STRATEGIES[key]


def strategies() -> list[Strategy]:
    """All registered strategies, in registration order."""
    return list(_STRATEGIES.values())


# The built-in catalogue. One line a strategy.
register(Strategy("greedy", "argmax", aliases=("argmax",),
                  description="always the most likely token",
                  reference="transformers generate(do_sample=False)"))
register(Strategy("sample", "sample", ("temperature", "top_k", "top_p"),
                  params=("temperature", "top_k", "top_p", "seed"),
                  aliases=("sampling", "multinomial", "random"),
                  description="seeded sampling after temperature, top-k and top-p",
                  reference="transformers generate(do_sample=True)"))
register(Strategy("beam", "beam", params=("num_beams", "length_penalty", "early_stopping"),
                  aliases=("beam_search", "beams"),
                  description="beam search; streams the settled prefix",
                  reference="transformers generate(num_beams=N, do_sample=False)"))
