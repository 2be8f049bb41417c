"""The one error a bad decoding setting raises, and the checks that raise it."""

from __future__ import annotations

import math
from typing import Any


# The most any integer setting may be: every int field may become a torch.long column
# (top_k, n-gram sizes, token ids, ...), so a value that overflows int64 would fail inside
# the worker, at batch setup, and take the batch down with it. 2**31 - 1 is far above any
# vocabulary or length a model has, and is what a C int (most kernels' index) holds.
INT_MAX = 2**31 - 1


class ParamError(ValueError):
    """A bad sampling setting. ``field`` names the offending parameter."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    """``value`` is an int (not a bool) within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(name, f"must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ParamError(name, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ParamError(name, f"must be <= {high}, got {value}")


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """``value`` is a finite number within its bounds (open or closed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(name, f"must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ParamError(name, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ParamError(name, f"must be {'<' if high_open else '<='} {high}, got {value}")


def breakers_tuple(name: str, values: Any) -> tuple[int | str, ...]:
    """Token ids and/or texts (llama.cpp's DRY sequence breakers are texts) -> a tuple;
    a text that reads as an integer (a CLI flag, a query) is a token id."""
    if isinstance(values, (str, int)) and not isinstance(values, bool):
        values = (values,)
    try:
        out = tuple(values or ())
    except TypeError:
        raise ParamError(name, f"must be a list of token ids or texts, got {values!r}") from None
    items = []
    for t in out:
        if isinstance(t, str) and t.strip().lstrip("-").isdigit():
            t = int(t)
        if isinstance(t, str):
            if not t:
                raise ParamError(name, "a text breaker must not be empty")
        else:
            check_int(name, t, low=0, high=INT_MAX)
        items.append(t)
    return tuple(items)


def int_tuple(name: str, values: Any) -> tuple[int, ...]:
    """A token id or a list of them -> a tuple of non-negative ints."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    try:
        out = tuple(values or ())
    except TypeError:
        raise ParamError(name, f"must be a list of token ids, got {values!r}") from None
    for t in out:
        check_int(name, t, low=0, high=INT_MAX)
    return out


def value_from_text(kind: str, text: str) -> Any:
    """One settings value from text, read by its field's annotation ``kind`` (as
    ``dataclasses.fields(SamplingParams)`` spells it; for a list field, the element):
    ``none``/``null`` where the field may be unset; booleans from true/false, 1/0,
    yes/no, on/off (a ``bool | str`` field keeps any other word, e.g. ``never``, for
    ``SamplingParams`` to judge); integers; numbers; else the text itself. Every text
    channel (CLI flags, strategy specs, ``/api/stream``'s query) reads values here.
    ``ValueError`` when the text does not read as the type."""
    low = text.strip().lower()
    if "None" in kind and low in ("none", "null"):
        return None
    if kind.startswith("bool"):
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        if kind.startswith("bool | str"):
            return text.strip()
        raise ValueError(text)
    if kind.startswith("tuple[int | str"):
        return text  # a token id or a text: the field's converter decides
    if kind.startswith(("int", "tuple[int")):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    return text
