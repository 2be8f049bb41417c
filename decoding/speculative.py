"""Prompt-lookup speculation's settings: ``Speculation`` and the one reader of its forms.

A request (``SamplingParams.speculative``) or the engine (``--speculate``) asks for it as

    "ngram"                                  # the defaults below
    "ngram:k=4,n=3,min_n=2"                  # the CLI's and /api/stream's text
    {"method": "ngram", "k": 4, "n": 3}      # the JSON field of the OpenAI routes
    "off" / {"method": "off"}                # none for this request, whatever the engine's default

``k``: most draft tokens a step verifies; ``n``: the longest suffix n-gram matched
against the row's prompt + output; ``min_n``: the shortest (the match is tried from
``n`` down to ``min_n``, as transformers' prompt lookup and vLLM's n-gram speculator do).
The drafting and the verification live in ``generator/speculate.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .checks import ParamError

METHODS = ("ngram", "off")
K_MAX = 16  # draft tokens a step: a verify forward holds k + 1 rows per speculating row
N_MAX = 16


@dataclass(frozen=True)
class Speculation:
    """What a row drafts with (``method`` ``"ngram"``) or that it does not (``"off"``)."""

    method: str = "ngram"
    k: int = 4
    n: int = 3
    min_n: int = 2

    @property
    def on(self) -> bool:
        return self.method != "off"

    def __str__(self) -> str:
        return "off" if not self.on else f"ngram:k={self.k},n={self.n},min_n={self.min_n}"

    def as_dict(self) -> dict:
        return {"method": self.method} if not self.on else \
            {"method": self.method, "k": self.k, "n": self.n, "min_n": self.min_n}


def _int(field: str, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParamError(field, f"{key} must be an integer in {low}..{high}, got {value!r}")
    return value


def speculation(value: Any, field: str = "speculative") -> Speculation | None:
    """``value`` in any of the forms above -> a ``Speculation`` (``None`` stays ``None``: the
    engine's default). A bad method, key or value is a ``ParamError`` naming ``field`` and the key."""
    if value is None or isinstance(value, Speculation):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ParamError(field, f"not valid JSON: {text[:60]!r}") from None
        else:
            method, _, rest = text.partition(":")
            value = {"method": method.strip().lower()}
            for item in filter(None, (part.strip() for part in rest.split(","))):
                key, sep, v = item.partition("=")
                if not sep:
                    raise ParamError(field, f"expected key=value after '{method}:', got {item!r}")
                value[key.strip()] = v.strip()
    if not isinstance(value, dict):
        raise ParamError(field, f"must be an object like {{\"method\": \"ngram\", \"k\": 4, \"n\": 3}}, "
                                f"got {value!r}")
    unknown = sorted(set(value) - {"method", "k", "n", "min_n", "num_speculative_tokens"})
    if unknown:
        raise ParamError(field, f"unknown key {unknown[0]!r} (method, k, n, min_n)")
    method = value.get("method", "ngram")
    if method not in METHODS:
        raise ParamError(field, f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "off":
        return Speculation("off")
    default = Speculation()
    k = _int(field, "k", value.get("k", value.get("num_speculative_tokens", default.k)), 1, K_MAX)
    n = _int(field, "n", value.get("n", default.n), 1, N_MAX)
    min_n = _int(field, "min_n", value.get("min_n", min(default.min_n, n)), 1, N_MAX)
    if min_n > n:
        raise ParamError(field, f"min_n ({min_n}) must be <= n ({n})")
    return Speculation("ngram", k, n, min_n)
