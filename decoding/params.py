"""One validated settings object for a generation request."""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any


class ParamError(ValueError):
    """A bad sampling setting. ``field`` names the offending parameter."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _f(default: Any, help: str, *, low: float | None = None, high: float | None = None,
       low_open: bool = False, high_open: bool = False, off: Any = MISSING, factory: Any = None) -> Any:
    """A field with its help text and bounds (validation, the CLI, the server and
    ``decoding.describe()`` all read them). ``off`` is the value that disables it."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open}
    if off is not MISSING:
        meta["off"] = off
    if factory is not None:
        return field(default_factory=factory, metadata=meta, hash=False)
    return field(default=default, metadata=meta)


# Transforms a strategy's chain names -> the field that switches them on.
TRANSFORM_FIELDS = {
    "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
    "typical_p": "typical_p", "epsilon_cutoff": "epsilon_cutoff", "eta_cutoff": "eta_cutoff",
    "xtc": "xtc_probability",
}
# History-aware processors: they apply to every strategy but beam, in this order,
# before the strategy's own chain (as transformers and llama.cpp put penalties first).
PROCESSOR_FIELDS = {
    "logit_bias": "logit_bias", "bad_words": "bad_words_ids", "min_new_tokens": "min_new_tokens",
    "repetition_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "no_repeat_ngram": "no_repeat_ngram_size",
    "dry": "dry_multiplier",
}


@dataclass(frozen=True)
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
    temperature: float = _f(1.0, "divide logits by this before sampling; 0 means greedy", low=0.0, off=1.0)
    top_k: int | None = _f(None, "keep only the k most likely tokens (0 = off)", low=0, off=0)
    top_p: float | None = _f(None, "keep the smallest set of tokens with this much probability (1 = off)",
                             low=0.0, high=1.0, low_open=True, off=1.0)
    min_p: float | None = _f(None, "drop tokens below min_p x the top token's probability (0 = off)",
                             low=0.0, high=1.0, off=0.0)
    typical_p: float | None = _f(None, "locally typical sampling: keep this much mass of the tokens closest "
                                 "to the entropy (1 = off)", low=0.0, high=1.0, low_open=True, off=1.0)
    epsilon_cutoff: float | None = _f(None, "drop tokens with probability below this (0 = off)",
                                      low=0.0, high=1.0, high_open=True, off=0.0)
    eta_cutoff: float | None = _f(None, "drop tokens below min(eta, sqrt(eta) * exp(-entropy)) (0 = off)",
                                  low=0.0, high=1.0, high_open=True, off=0.0)
    xtc_probability: float | None = _f(None, "XTC: chance per step of excluding the top choices (0 = off)",
                                       low=0.0, high=1.0, off=0.0)
    xtc_threshold: float = _f(0.1, "XTC: tokens at or above this probability count as top choices",
                              low=0.0, high=1.0)
    mirostat_tau: float = _f(5.0, "mirostat: target surprise in bits", low=0.0, low_open=True)
    mirostat_eta: float = _f(0.1, "mirostat: learning rate of mu", low=0.0, high=1.0, low_open=True)
    repetition_penalty: float = _f(1.0, "divide positive / multiply negative logits of tokens already in the "
                                   "prompt or output (1 = off)", low=0.0, low_open=True, off=1.0)
    presence_penalty: float = _f(0.0, "subtract this from tokens already generated (0 = off)",
                                 low=-2.0, high=2.0, off=0.0)
    frequency_penalty: float = _f(0.0, "subtract this x the count of each token already generated (0 = off)",
                                  low=-2.0, high=2.0, off=0.0)
    no_repeat_ngram_size: int = _f(0, "never repeat an n-gram of this size (0 = off)", low=0, off=0)
    dry_multiplier: float | None = _f(None, "DRY: penalty multiplier for extending a repeat (0 = off)",
                                      low=0.0, off=0.0)
    dry_base: float = _f(1.75, "DRY: penalty grows as base ** (repeat length - allowed length)",
                         low=1.0, low_open=True)
    dry_allowed_length: int = _f(2, "DRY: repeats up to this length are not penalised", low=1)
    dry_penalty_last_n: int = _f(-1, "DRY: look back this many tokens (-1 = all)", low=-1)
    dry_sequence_breakers: tuple[int, ...] = _f((), "DRY: token id that ends a repeat (repeatable)")
    logit_bias: dict[int, float] = _f(None, "add BIAS to token ID's logit, -100..100 (repeatable ID=BIAS)",
                                      factory=dict, off={})
    bad_words_ids: tuple[tuple[int, ...], ...] = _f((), "never generate this id sequence (repeatable, "
                                                    "comma-separated ids)", off=())
    min_new_tokens: int = _f(0, "end-of-sequence is masked until this many tokens exist (0 = off)",
                             low=0, off=0)
    seed: int | None = _f(None, "seed of this request's own random generator", low=0, high=2**63 - 1)
    num_beams: int | None = _f(None, "beams for strategy 'beam' (default 4 there, else 1)", low=1)
    length_penalty: float = _f(1.0, "beam score = logprob sum / length ** length_penalty")
    early_stopping: bool | str = _f(False, "beam: true, false or 'never' (as transformers)")
    stop: tuple[str, ...] = _f((), "stop when this text appears (repeatable); it is not shown")
    stop_token_ids: tuple[int, ...] = _f((), "stop after this token id (repeatable)")
    ignore_eos: bool = _f(False, "keep going past the end-of-sequence token")
    min_tokens_to_keep: int = _f(1, "filters never keep fewer tokens than this", low=1)
    logprobs: int = _f(0, "also report the N most likely tokens of each step, raw distribution (0 = off)",
                       low=0, high=20, off=0)
    n: int = _f(1, "independent samples of the same prompt", low=1, high=128)

    def __post_init__(self) -> None:
        # Normalise list inputs to tuples so the object stays hashable/frozen.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        object.__setattr__(self, "stop_token_ids", _int_tuple("stop_token_ids", self.stop_token_ids))
        object.__setattr__(self, "dry_sequence_breakers",
                           _int_tuple("dry_sequence_breakers", self.dry_sequence_breakers))
        object.__setattr__(self, "logit_bias", _bias_dict(self.logit_bias))
        object.__setattr__(self, "bad_words_ids", _bad_words(self.bad_words_ids))
        self._validate()

    def _validate(self) -> None:
        from .registry import resolve  # the registry imports this module

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
        if self.num_beams is None:
            object.__setattr__(self, "num_beams", 4 if strategy.selector == "beam" else 1)

        # Unset filters: the strategy's default, else off. A filter set to a live value
        # that the strategy's chain does not contain is an error, not silently ignored.
        unset = []
        for fname in _STRATEGY_DEFAULTED:
            value = getattr(self, fname)
            if value is None:
                unset.append(fname)
                object.__setattr__(self, fname, strategy.defaults.get(fname, _META[fname]["off"]))
            elif fname not in ("top_k", "top_p", "dry_multiplier"):
                _check_field(self, fname)
                if value != _META[fname]["off"] and fname not in strategy.fields:
                    users = ", ".join(s.name for s in _strategies() if fname in s.fields)
                    raise ParamError(fname, f"strategy '{strategy.name}' does not use {fname}; "
                                            f"strategies that do: {users}")
        object.__setattr__(self, "_unset", frozenset(unset))  # replace() lets them follow a new strategy

        for f in fields(self):
            if f.metadata.get("low") is not None or f.metadata.get("high") is not None:
                if getattr(self, f.name) is not None:
                    _check_field(self, f.name)
        if self.early_stopping not in (True, False, "never"):
            raise ParamError("early_stopping", "must be true, false or 'never'")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ParamError("stop", "every stop string must be a non-empty string")
        if strategy.selector == "beam" and self.num_beams < 2:
            raise ParamError("num_beams", "beam search needs num_beams >= 2")
        if strategy.selector != "beam" and self.num_beams != 1:
            raise ParamError("num_beams", f"num_beams > 1 needs strategy 'beam', not '{strategy.name}'")
        if strategy.selector == "beam":
            for fname in (*PROCESSOR_FIELDS.values(), "logprobs"):
                if getattr(self, fname) != _META[fname]["off"]:
                    raise ParamError(fname, "is not supported with beam search (strategy 'beam')")
            if self.n > self.num_beams:
                raise ParamError("n", f"beam search returns at most num_beams ({self.num_beams}) "
                                      f"sequences, got n={self.n}")

    # -- what downstream code asks ------------------------------------------
    @property
    def is_greedy(self) -> bool:
        """True when the chosen token is the argmax (no randomness involved)."""
        from .registry import resolve

        sel = resolve(self.strategy).selector
        return sel == "argmax" or (sel in ("sample", "mirostat_v2") and self.temperature == 0.0)

    def processors(self) -> tuple[str, ...]:
        """The history-aware processors this request switches on, in application order."""
        return tuple(name for name, fname in PROCESSOR_FIELDS.items()
                     if getattr(self, fname) != _META[fname]["off"])

    def active_transforms(self) -> tuple[str, ...]:
        """Every transform that runs for this request, in order (processors first;
        a greedy request skips the strategy's argmax-invariant filters)."""
        from .registry import resolve

        strategy = resolve(self.strategy)
        own = () if self.is_greedy else tuple(
            t for t in strategy.transforms if getattr(self, TRANSFORM_FIELDS[t]) != _META[TRANSFORM_FIELDS[t]]["off"])
        return self.processors() + own

    @property
    def chain(self) -> str:
        """The chain this request runs, e.g. ``logits -> repetition_penalty -> temperature
        -> top_k -> sample``."""
        from .registry import resolve

        selector = "argmax" if self.is_greedy else resolve(self.strategy).selector
        return " -> ".join(("logits", *self.active_transforms(), selector))

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
# Fields whose None means "the strategy's default, else off".
_STRATEGY_DEFAULTED = ("top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
                       "xtc_probability", "dry_multiplier")


def _strategies():
    from .registry import strategies

    return strategies()


def _check_field(params: SamplingParams, name: str) -> None:
    """Check one field against the bounds in its metadata."""
    meta = _META[name]
    value = getattr(params, name)
    kind = str(next(f.type for f in fields(SamplingParams) if f.name == name))
    if kind.startswith("int"):
        _check_int(name, value, meta["low"], meta["high"])
    else:
        _check_number(name, value, meta["low"], meta["high"], meta["low_open"], meta["high_open"])


def _int_tuple(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    try:
        out = tuple(values or ())
    except TypeError:
        raise ParamError(name, f"must be a list of token ids, got {values!r}") from None
    for t in out:
        _check_int(name, t, low=0)
    return out


def _bias_dict(bias: Any) -> dict[int, float]:
    """``{token_id: bias}``; string keys are accepted (JSON objects, as OpenAI sends them)."""
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise ParamError("logit_bias", f"must be a mapping of token id to bias, got {bias!r}")
    out = {}
    for key, value in bias.items():
        try:
            tid = int(key) if not isinstance(key, bool) else None
        except (TypeError, ValueError):
            tid = None
        if tid is None or (isinstance(key, float) and not key.is_integer()):
            raise ParamError("logit_bias", f"keys must be token ids, got {key!r}")
        _check_int("logit_bias", tid, low=0)
        _check_number("logit_bias", value, low=-100.0, high=100.0)
        out[tid] = float(value)
    return out


def _bad_words(seqs: Any) -> tuple[tuple[int, ...], ...]:
    out = []
    for seq in seqs or ():
        seq = _int_tuple("bad_words_ids", seq)
        if not seq:
            raise ParamError("bad_words_ids", "every banned sequence needs at least one token id")
        out.append(seq)
    return tuple(out)


def _check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(name, f"must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ParamError(name, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ParamError(name, f"must be <= {high}, got {value}")


def _check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(name, f"must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ParamError(name, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ParamError(name, f"must be {'<' if high_open else '<='} {high}, got {value}")


__all__ = ["SamplingParams", "ParamError"]
