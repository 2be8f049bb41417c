"""One validated settings object for a generation request.

``SamplingParams`` is a frozen dataclass whose fields are the request-wide ones
written below (strategy, limits, seed, beams, stops, logprobs, n) plus the fields
the registered links and selectors declare (``links/``, ``selectors.py``): a link
owns its fields, so a new link brings its CLI flag, server field and
``describe()`` entry with it, and ``SamplingParams`` stays the one list every
boundary reads. Validation resolves the strategy once and keeps it
(``resolved_strategy``).
"""

from __future__ import annotations

from contextlib import contextmanager

from dataclasses import dataclass, fields
from typing import Any

from . import catalogue, registry  # noqa: F401  (catalogue: the built-in links declare their fields)
from .checks import INT_MAX, ParamError, check_int, check_number, int_tuple
from .links.base import NO_OFF, Param
from .registry import Strategy, history, resolve, strategies
from .selectors import ARGMAX
from .speculative import Speculation, speculation


def _f(default: Any, help: str, *, low: float | None = None, high: float | None = None,
       low_open: bool = False, high_open: bool = False, off: Any = NO_OFF) -> Any:
    """A request-wide field (the links' fields are declared on the links)."""
    return Param("", "", default, help, low, high, low_open, high_open, off).dataclass_field()


# The links' and selectors' fields, in catalogue order (the built-in catalogue is loaded).
_LINK_PARAMS = registry.declared_params()


def _with_link_fields(cls: type) -> type:
    """Insert the links' fields after ``max_new_tokens``, before ``@dataclass`` reads the class."""
    clash = {p.name for p in _LINK_PARAMS} & set(cls.__annotations__)
    if clash:
        raise TypeError(f"link fields {sorted(clash)} clash with SamplingParams' own fields")
    annotations = {}
    for name, kind in cls.__annotations__.items():
        annotations[name] = kind
        if name == "max_new_tokens":
            for p in _LINK_PARAMS:
                annotations[p.name] = p.type
                setattr(cls, p.name, p.dataclass_field())
    cls.__annotations__ = annotations
    return cls


@dataclass(frozen=True)
@_with_link_fields
class SamplingParams:
    """Everything that decides how tokens are chosen and when generation stops.

    Validated once in ``__post_init__``; code downstream trusts it. "Off" values
    (``top_k=0``, ``top_p=1.0``, ``min_p=0``, ...) mean the filter is not applied.
    Fields left at ``None`` take the strategy's default (``--strategy top_k`` keeps
    50 tokens) or else their off value.
    """

    strategy: str | None = _f(None, "decoding strategy, by name or alias (see `tokenflow strategies`); "
                              "default greedy, or beam when num_beams > 1")
    max_new_tokens: int = _f(128, "most tokens to generate", low=1)
    # ... the links' and selectors' fields come here (temperature, top_k, top_p, ...,
    # repetition_penalty, ..., dry_*): see decoding/catalogue.py and links/.
    seed: int | None = _f(None, "seed of this request's own random generator", low=0, high=2**63 - 1)
    num_beams: int | None = _f(None, "beams for strategy 'beam' (default 4 there, else 1)", low=1)
    # Bounded: length ** 1e308 is inf and the scores turn NaN inside the worker; transformers'
    # useful range is about -2..2, so [-10, 10] leaves room without letting a score overflow.
    length_penalty: float = _f(1.0, "beam score = logprob sum / length ** length_penalty (-10..10)",
                               low=-10.0, high=10.0)
    early_stopping: bool | str = _f(False, "beam: true, false or 'never' (as transformers)")
    stop: tuple[str, ...] = _f((), "stop when this text appears (repeatable); it is not shown")
    include_stop_str_in_output: bool = _f(False, "show the stop string that ended the text (as vLLM)")
    skip_special_tokens: bool = _f(True, "leave special tokens (<|im_end|>, ...) out of the text")
    stop_token_ids: tuple[int, ...] = _f((), "stop after this token id (repeatable)")
    ignore_eos: bool = _f(False, "keep going past the end-of-sequence token")
    min_tokens_to_keep: int = _f(1, "filters never keep fewer tokens than this", low=1)
    logprobs: int = _f(0, "also report the N most likely tokens of each step, raw distribution (0 = off)",
                       low=0, high=20, off=0)
    logprobs_mode: str = _f("raw", "where the top alternatives come from: 'raw' (the model's distribution) "
                            "or 'processed' (after penalties, temperature and filters)")
    n: int = _f(1, "independent samples of the same prompt", low=1, high=128)
    samplers: tuple[str, ...] = _f((), "the order of the strategy's links, as llama.cpp's server takes it "
                                   "(e.g. top_k;min_p;temperature): listed links run in this order, the others "
                                   "not; history links (penalties, dry) always run first")
    speculative: Speculation | None = _f(None, "prompt-lookup speculation for this request: ngram, "
                                         "ngram:k=4,n=3,min_n=2, {\"method\": \"ngram\", \"k\": 4, \"n\": 3} "
                                         "or off (default: the engine's --speculate); the same tokens either way")
    trace: bool = _f(False, "add a decision trace to every token: entropy, rank, margin, what each link "
                     "kept and removed, the processed logprob", off=False)

    def __post_init__(self) -> None:
        # Normalise list inputs to tuples so the object stays hashable/frozen. A value of the
        # wrong shape is a ParamError naming its field, never a TypeError from inside.
        with _reading("stop", self.stop):
            stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
            if not all(isinstance(s, str) for s in stop):
                raise TypeError("stop strings must be text")
            object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", int_tuple("stop_token_ids", self.stop_token_ids))
        object.__setattr__(self, "speculative", speculation(self.speculative))
        with _reading("samplers", self.samplers):
            names = (self.samplers,) if isinstance(self.samplers, str) else tuple(self.samplers or ())
            if not all(isinstance(n, str) for n in names):
                raise TypeError("sampler names must be text")
            # "top_k;temperature" as llama.cpp's command line writes it, or one name an item
            names = [part.strip() for n in names for part in n.replace(",", ";").split(";")]
            object.__setattr__(self, "samplers", tuple(n for n in names if n))
        for name, convert in _CONVERTERS.items():
            with _reading(name, getattr(self, name)):
                object.__setattr__(self, name, convert(getattr(self, name)))
        if self.strategy is not None and not isinstance(self.strategy, str):
            raise ParamError("strategy", f"must be a strategy name, got {self.strategy!r}")
        self._validate()

    def _validate(self) -> None:
        if self.num_beams is not None:
            _check_field(self, "num_beams")
        name = self.strategy
        if name is None:
            name = "beam" if (self.num_beams or 1) > 1 else "greedy"
        try:
            strategy = resolve(name)
        except KeyError as exc:
            raise ParamError("strategy", str(exc.args[0])) from None
        object.__setattr__(self, "strategy", strategy.name)
        # resolved once: not a field, so outside eq/hash/repr
        object.__setattr__(self, "_strategy", strategy)
        beam = strategy.selector.is_beam
        if self.num_beams is None:
            object.__setattr__(self, "num_beams", 4 if beam else 1)

        # Unset filters: the strategy's default, else off. A filter set to a live value
        # that the strategy's chain does not contain is an error, not silently ignored.
        unset = []
        for fname in _STRATEGY_DEFAULTED:
            value = getattr(self, fname)
            if value is None:
                unset.append(fname)
                object.__setattr__(self, fname, strategy.defaults.get(fname, _META[fname]["off"]))
            elif _META[fname]["strict"] and fname not in _HISTORY_FIELDS:
                _check_field(self, fname)
                if value != _META[fname]["off"] and fname not in strategy.fields:
                    users = ", ".join(s.name for s in strategies() if fname in s.fields)
                    raise ParamError(fname, f"strategy '{strategy.name}' does not use {fname}; "
                                            f"strategies that do: {users}")
        object.__setattr__(self, "_unset", frozenset(unset))  # replace() lets them follow a new strategy

        for f in fields(self):
            if f.metadata.get("low") is not None or f.metadata.get("high") is not None:
                if getattr(self, f.name) is not None:
                    _check_field(self, f.name)
        for f in fields(self):  # a switch is a bool: [] or "yes" must not reach the tokenizer
            if f.type in ("bool", bool) and not isinstance(getattr(self, f.name), bool):
                raise ParamError(f.name, f"must be true or false, got {getattr(self, f.name)!r}")
        object.__setattr__(self, "_links", _ordered_links(strategy, self.samplers))
        if self.logprobs_mode not in ("raw", "processed"):
            raise ParamError("logprobs_mode", f"must be 'raw' or 'processed', got {self.logprobs_mode!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ParamError("early_stopping", "must be true, false or 'never'")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ParamError("stop", "every stop string must be a non-empty string")
        for link in history():
            link.check(self)
        if beam and self.num_beams < 2:
            raise ParamError("num_beams", "beam search needs num_beams >= 2")
        if not beam and self.num_beams != 1:
            raise ParamError("num_beams", f"num_beams > 1 needs strategy 'beam', not '{strategy.name}'")
        if beam:
            for fname in (*_HISTORY_SWITCHES, "logprobs", "trace"):
                if getattr(self, fname) != _META[fname]["off"]:
                    raise ParamError(fname, "is not supported with beam search (strategy 'beam')")
            if self.n > self.num_beams:
                raise ParamError("n", f"beam search returns at most num_beams ({self.num_beams}) "
                                      f"sequences, got n={self.n}")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_strategy", None)  # links are module singletons: resolve again, never copy them
        state.pop("_links", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_strategy", resolve(self.strategy))
        object.__setattr__(self, "_links", _ordered_links(self._strategy, self.samplers))

    # -- what downstream code asks ------------------------------------------
    @property
    def resolved_strategy(self) -> Strategy:
        """The ``Strategy`` object of ``strategy``, resolved once at validation."""
        return self._strategy

    @property
    def links(self) -> tuple:
        """The strategy's links this request runs, in its order (``samplers``, else the strategy's)."""
        return self._links

    @property
    def is_greedy(self) -> bool:
        """True when the chosen token is the argmax (no randomness involved)."""
        selector = self._strategy.selector
        return not selector.is_beam and (not selector.samples or self.temperature == 0.0)

    def processors(self) -> tuple[str, ...]:
        """The history links this request switches on, in application order."""
        return tuple(label for link in history() for label in link.labels(self))

    def active_transforms(self) -> tuple[str, ...]:
        """Every link that runs for this request, in order (history first; a greedy
        request skips the strategy's links that cannot change the argmax)."""
        own = tuple(link.name for link in self._links
                    if link.is_on(self) and (link.changes_argmax or not self.is_greedy))
        return self.processors() + own

    @property
    def chain(self) -> str:
        """The chain this request runs, e.g. ``logits -> repetition_penalty -> temperature
        -> top_k -> sample``."""
        selector = ARGMAX if self.is_greedy else self._strategy.selector
        return " -> ".join(("logits", *self.active_transforms(), selector.name))

    def replace(self, **changes: Any) -> "SamplingParams":
        """A copy with some fields changed, validated again. Fields that were left unset
        stay unset, so they take the (new) strategy's default."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update({name: None for name in getattr(self, "_unset", ())})
        current.update(changes)
        return SamplingParams(**current)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


_META = {f.name: f.metadata for f in fields(SamplingParams)}
_TYPES = {f.name: str(f.type) for f in fields(SamplingParams)}
# Fields whose None means "the strategy's default, else off".
_STRATEGY_DEFAULTED = tuple(f.name for f in fields(SamplingParams) if f.default is None and "off" in f.metadata)
# History links run under every strategy; their switches are refused with beam search,
# but for the links beam search runs too (the grammar mask).
_HISTORY_FIELDS = frozenset(name for link in history() for name in link.fields)
_HISTORY_SWITCHES = tuple(p.name for link in history() if not link.with_beam for p in link.switches)
_CONVERTERS = {p.name: p.convert for p in _LINK_PARAMS if p.convert is not None}


# llama.cpp's sampler names (its server's ``samplers``) -> our link names; its history
# samplers run first here whatever the order, so naming them is allowed and changes nothing.
_SAMPLER_NAMES = {"typ_p": "typical_p", "typical": "typical_p", "temp": "temperature", "top_nsigma": "top_n_sigma",
                  "nucleus": "top_p", "quadratic": "smoothing"}
_HISTORY_SAMPLERS = {"penalties", "dry", "logit_bias", "infill"}


def _ordered_links(strategy: Strategy, samplers: tuple[str, ...]) -> tuple:
    """The strategy's links in ``samplers``' order (all of them, in its own, when empty)."""
    if not samplers:
        return strategy.links
    own = {link.name: link for link in strategy.links}
    out = []
    for name in samplers:
        key = _SAMPLER_NAMES.get(name.lower(), name.lower())
        if key in _HISTORY_SAMPLERS:
            continue
        if key not in own:
            raise ParamError("samplers", f"{name!r} is not a link of strategy '{strategy.name}' "
                                         f"(its links: {', '.join(own) or 'none'})")
        if own[key] in out:
            raise ParamError("samplers", f"{name!r} is listed twice")
        out.append(own[key])
    return tuple(out)


@contextmanager
def _reading(name: str, value):
    """Turn a conversion's TypeError/ValueError/OverflowError into a ParamError naming ``name``."""
    try:
        yield
    except ParamError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise ParamError(name, f"cannot read {str(value)[:60]!r} as this setting") from None


def _check_field(params: SamplingParams, name: str) -> None:
    """Check one field against the bounds in its metadata."""
    meta = _META[name]
    value = getattr(params, name)
    if _TYPES[name].startswith("int"):
        # no int field is unbounded above: each may become a torch.long column (checks.INT_MAX)
        check_int(name, value, meta["low"], INT_MAX if meta["high"] is None else meta["high"])
    else:
        check_number(name, value, meta["low"], meta["high"], meta["low_open"], meta["high_open"])


__all__ = ["SamplingParams", "ParamError"]
