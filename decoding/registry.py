"""Strategy registry: a name (and aliases) -> an ordered chain of links ending in
exactly one selector; and the history links every strategy but beam runs first.
CLI, server and benchmarks read it. The built-in lines are in ``catalogue.py``.

The registry knows nothing of ``SamplingParams``: the links and selectors it holds
declare their fields, and ``params.py`` builds ``SamplingParams`` from them
(``declared_params``), after which a strategy with undeclared fields is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .links.base import Link, Param
from .selectors import Selector


@dataclass(frozen=True)
class Strategy:
    """A named chain: ``links`` in order, then ``selector``. ``params``: the other
    ``SamplingParams`` fields it reads (e.g. ``seed``); ``defaults``: values for
    fields a request leaves unset."""

    name: str
    selector: Selector
    links: tuple[Link, ...] = ()
    params: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    description: str = ""
    reference: str = ""
    defaults: dict = field(default_factory=dict, hash=False)  # field -> value when left unset
    extra: dict = field(default_factory=dict, hash=False)

    @property
    def transforms(self) -> tuple[str, ...]:
        """The links' names, in order."""
        return tuple(link.name for link in self.links)

    @property
    def chain(self) -> str:
        """Printable chain, e.g. ``logits -> temperature -> top_k -> sample``."""
        return " -> ".join(("logits", *self.transforms, self.selector.name))

    @property
    def fields(self) -> tuple[str, ...]:
        """Every ``SamplingParams`` field this strategy's chain reads: the links'
        switches, their other fields, the selector's, then ``params``."""
        switches = [p.name for link in self.links for p in link.switches]
        owned = [p.name for link in self.links for p in link.params]
        return tuple(dict.fromkeys([*switches, *owned, *(p.name for p in self.selector.params), *self.params]))


@dataclass(frozen=True)
class Processor:
    """A catalogue entry of a history link: any strategy but beam applies it when
    ``field`` is on."""

    name: str
    field: str
    params: tuple[str, ...]
    description: str
    reference: str


_STRATEGIES: dict[str, Strategy] = {}
_ALIASES: dict[str, str] = {}
_HISTORY: list[Link] = []
_DECLARED: set[str] | None = None  # fields SamplingParams was built with, once built


def register(strategy: Strategy) -> Strategy:
    """Add a strategy; its name and aliases must be new."""
    for key in (strategy.name, *strategy.aliases):
        key = key.lower()
        if key in _STRATEGIES or key in _ALIASES:
            raise ValueError(f"strategy name {key!r} is already registered")
    _check_declared([*strategy.links, strategy.selector])
    _STRATEGIES[strategy.name] = strategy
    for alias in strategy.aliases:
        _ALIASES[alias.lower()] = strategy.name
    return strategy


def register_history(link: Link) -> Link:
    """Add a history link; they run in registration order, before a strategy's chain."""
    _check_declared([link])
    _HISTORY.append(link)
    return link


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


def history() -> tuple[Link, ...]:
    """The history links (bias, bans, penalties, DRY), in application order."""
    return tuple(_HISTORY)


def processors() -> list[Processor]:
    """The history links' catalogue entries, in application order."""
    return [Processor(**{**entry, "params": tuple(entry["params"])}) for link in _HISTORY for entry in link.describe()]


def declared_params() -> list[Param]:
    """Every field the registered links and selectors own, once each: the strategies'
    in registration order, then the history links'. ``SamplingParams`` is built from
    these, once; later registrations may only use fields it has."""
    global _DECLARED
    owners = [obj for s in _STRATEGIES.values() for obj in (*s.links, s.selector)] + _HISTORY
    out: dict[str, Param] = {}
    for obj in owners:
        for p in obj.params:
            if out.setdefault(p.name, p) != p:
                raise ValueError(f"field {p.name!r} is declared twice, differently ({obj!r})")
    _DECLARED = set(out)
    return list(out.values())


def _check_declared(owners: list) -> None:
    if _DECLARED is None:
        return
    missing = [p.name for obj in owners for p in obj.params if p.name not in _DECLARED]
    if missing:
        raise ValueError(f"fields {missing} are not SamplingParams fields: declare the link in decoding/catalogue.py")
