"""``GET /api/stream``'s query string -> ``decoding.SamplingParams``.

``EventSource`` can only send a URL, so every setting arrives as text and is
read by its ``SamplingParams`` field's type: numbers, booleans (``true``/``1``/
``on``...), ``none``, repeated or comma-separated lists (``stop=a&stop=b``,
``stop_token_ids=1,2``) and JSON for structured values (``logit_bias={"50256":-100}``).
"""

from __future__ import annotations

import dataclasses
import json

from decoding import ParamError, SamplingParams
from decoding.checks import value_from_text

from ..errors import APIError, from_param_error

# Query keys that are not settings: the prompt, how to read it, resume and auth.
REQUEST_KEYS = ("prompt", "chat", "last_event_id", "api_key", "prefix_ids")
_FIELD_ALIASES = {"max_tokens": "max_new_tokens"}


def params_from_query(query, default_max_tokens: int) -> SamplingParams:
    """``SamplingParams`` from query-string values, converted by each field's type;
    400 naming the key for an unknown key or a value that does not read."""
    types = {f.name: str(f.type) for f in dataclasses.fields(SamplingParams)}
    kwargs = {}
    for key in query.keys():
        if key in REQUEST_KEYS:
            continue
        name = _FIELD_ALIASES.get(key, key)
        if name not in types:
            raise APIError(400, f"{key}: unknown parameter (see GET /strategies)", param=key, code="unknown_field")
        values = query.getlist(key)
        try:
            kwargs[name] = _convert(types[name], values)
        except ValueError:
            raise APIError(400, f"{key}: cannot read {values[-1]!r} as {types[name]} (structured values are JSON)",
                           param=key, code="invalid_value") from None
    kwargs.setdefault("max_new_tokens", default_max_tokens)
    try:
        return SamplingParams(**kwargs)
    except ParamError as exc:
        raise from_param_error(exc, {"max_new_tokens": length_key(query)}) from None


def prefix_ids(query, vocab: int) -> list[int]:
    """``prefix_ids=1,2,3``: tokens the stream continues after, appended to the prompt's
    (a fork: a column's first tokens and a chosen alternative); 400 naming the key."""
    text = query.get("prefix_ids") or ""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise APIError(400, f"prefix_ids: expected comma-separated token ids, got {text[:40]!r}",
                       param="prefix_ids", code="invalid_value") from None
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"prefix_ids: token id {bad[0]} is outside the vocabulary [0, {vocab})",
                       param="prefix_ids", code="invalid_value")
    return ids


def length_key(query) -> str:
    """The output-length key as the client spelled it (errors name it): ``max_tokens`` or
    ``max_new_tokens``."""
    return "max_tokens" if "max_tokens" in query and "max_new_tokens" not in query else "max_new_tokens"


def flag(query, key: str) -> bool:
    """A query flag such as ``chat=1``: on for ``1``, ``true``, ``yes``, ``on``, off for
    ``0``, ``false``, ``no``, ``off`` or when absent; 400 naming ``key`` for anything else."""
    text = (query.get(key) or "").lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise APIError(400, f"{key}: expected true or false, got {query.get(key)[:40]!r}", param=key,
                   code="invalid_value")


def _convert(kind: str, values: list[str]):
    """The last of ``values`` (or all of them, for a list field) as a field of type ``kind``
    (the annotation's text); ``ValueError`` when it does not read."""
    if kind.startswith(("dict", "tuple[tuple")):
        try:
            return json.loads(values[-1])
        except json.JSONDecodeError as exc:
            raise ValueError(str(exc)) from None
    if kind.startswith("tuple[int | str"):  # ids ("1,2" too) or texts, each value one text
        return tuple(v for part in values
                     for v in (part.split(",") if all(p.strip().isdigit() for p in part.split(",")) else [part]))
    if kind.startswith("tuple["):
        cast = int if kind.startswith("tuple[int") else str
        return tuple(cast(v) for part in values for v in ([part] if cast is str else part.split(",")) if v != "")
    return value_from_text(kind, values[-1])
