"""One validated settings object for a generation request."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any


class ParamError(ValueError):
    """A bad sampling setting. ``field`` names the offending parameter."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _f(default: Any, help: str) -> Any:
    """A field with its help text (the CLI and server read it)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SamplingParams:
    """Everything that decides how tokens are chosen and when generation stops.

    Validated once in ``__post_init__``; code downstream trusts it. "Off" values
    (``top_k=0``, ``top_p=1.0``) mean the filter is not applied.
    """

    strategy: str | None = _f(None, "decoding strategy, by name or alias (see `tokenflow strategies`); "
                              "default greedy, or beam when num_beams > 1")
    max_new_tokens: int = _f(128, "most tokens to generate")
    temperature: float = _f(1.0, "divide logits by this before sampling; 0 means greedy")
    top_k: int = _f(0, "keep only the k most likely tokens (0 = off)")
    top_p: float = _f(1.0, "keep the smallest set of tokens with this much probability (1 = off)")
    seed: int | None = _f(None, "seed of this request's own random generator")
    num_beams: int | None = _f(None, "beams for strategy 'beam' (default 4 there, else 1)")
    length_penalty: float = _f(1.0, "beam score = logprob sum / length ** length_penalty")
    early_stopping: bool | str = _f(False, "beam: true, false or 'never' (as transformers)")
    stop: tuple[str, ...] = _f((), "stop when this text appears (repeatable); it is not shown")
    stop_token_ids: tuple[int, ...] = _f((), "stop after this token id (repeatable)")
    ignore_eos: bool = _f(False, "keep going past the end-of-sequence token")
    min_tokens_to_keep: int = _f(1, "filters never keep fewer tokens than this")

    def __post_init__(self) -> None:
        # Normalise list inputs to tuples so the object stays hashable/frozen.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        self._validate()

    def _validate(self) -> None:
        from .registry import resolve  # the registry imports this module

        if self.num_beams is not None:
            _check_int("num_beams", self.num_beams, low=1)
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

        _check_int("max_new_tokens", self.max_new_tokens, low=1)
        _check_number("temperature", self.temperature, low=0.0)
        _check_int("top_k", self.top_k, low=0)
        _check_number("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=2**63 - 1)
        _check_number("length_penalty", self.length_penalty)
        if self.early_stopping not in (True, False, "never"):
            raise ParamError("early_stopping", "must be true, false or 'never'")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ParamError("stop", "every stop string must be a non-empty string")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids", t, low=0)
        _check_int("min_tokens_to_keep", self.min_tokens_to_keep, low=1)
        if strategy.selector == "beam" and self.num_beams < 2:
            raise ParamError("num_beams", "beam search needs num_beams >= 2")
        if strategy.selector != "beam" and self.num_beams != 1:
            raise ParamError("num_beams", f"num_beams > 1 needs strategy 'beam', not '{strategy.name}'")

    @property
    def is_greedy(self) -> bool:
        """True when the chosen token is the argmax (no randomness involved)."""
        from .registry import resolve

        sel = resolve(self.strategy).selector
        return sel == "argmax" or (sel == "sample" and self.temperature == 0.0)

    def replace(self, **changes: Any) -> "SamplingParams":
        """A copy with some fields changed, validated again."""
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


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
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(name, f"must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ParamError(name, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ParamError(name, f"must be <= {high}, got {value}")


__all__ = ["SamplingParams", "ParamError"]
