"""The catalogue as plain JSON-able data (``decoding.describe()``), for
``GET /strategies``, ``tokenflow strategies --json`` and the web page."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from .params import SamplingParams
from .registry import processors, strategies


def describe() -> dict[str, Any]:
    """Strategies (name, aliases, selector, chain, transforms, params, defaults,
    description, reference), processors (the history links, in order), and every
    ``SamplingParams`` field with its type, default, bounds, off value and help."""
    params = {}
    for f in fields(SamplingParams):
        meta = f.metadata
        default = f.default if f.default is not MISSING else f.default_factory()
        params[f.name] = {
            "type": _json_type(str(f.type)),
            "default": list(default) if isinstance(default, tuple) else default,
            "min": meta.get("low"), "max": meta.get("high"),
            "min_exclusive": bool(meta.get("low_open")), "max_exclusive": bool(meta.get("high_open")),
            "off": meta.get("off"), "help": meta.get("help", ""),
        }
    return {
        "strategies": [
            {"name": s.name, "aliases": list(s.aliases), "selector": s.selector.name, "chain": s.chain,
             "transforms": list(s.transforms), "params": list(s.fields), "defaults": dict(s.defaults),
             "description": s.description, "reference": s.reference}
            for s in strategies()
        ],
        "processors": [
            {"name": p.name, "field": p.field, "params": list(p.params), "description": p.description,
             "reference": p.reference}
            for p in processors()
        ],
        "params": params,
    }


def _json_type(annotation: str) -> str:
    table = {"tuple[int, ...]": "list[int]", "tuple[str, ...]": "list[str]",
             "tuple[tuple[int, ...], ...]": "list[list[int]]", "dict[int, float]": "dict[int,float]"}
    base = annotation.replace(" | None", "")
    return table.get(base, base.replace(" ", ""))
