"""A client's incremental JSON check, independent of llguidance: is a text the start of
some valid JSON document? Brackets, strings (with their escapes), numbers and literals
are followed character by character, the way a streaming parser reads them."""

from __future__ import annotations

import re

_WS = " \t\r\n"
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUMBER_START = re.compile(r"-?\d*(?:\.\d*)?(?:[eE][+-]?\d*)?")
_ESCAPES = set('"\\/bfnrt')
_HEX = set("0123456789abcdefABCDEF")


def _string_end(text: str, i: int) -> int | None:
    """Index after the string opened at ``text[i]``; ``len(text)`` when the text ends
    inside it (still a prefix); ``None`` when it is not valid JSON string content."""
    i += 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return i + 1
        if ord(c) < 0x20:
            return None
        if c == "\\":
            if i + 1 == len(text):
                return len(text)
            esc = text[i + 1]
            if esc == "u":
                digits = text[i + 2: i + 6]
                if not all(d in _HEX for d in digits):
                    return None
                i += 2 + len(digits)
                continue
            if esc not in _ESCAPES:
                return None
            i += 2
            continue
        i += 1
    return len(text)


def is_json_prefix(text: str) -> bool:
    """Whether ``text`` can be continued into one valid JSON document (a whole one counts)."""
    containers: list[str] = []
    expect = "value"  # value | first_item | first_key | key | colon | next | end
    i, n = 0, len(text)

    def after_value() -> str:
        return "next" if containers else "end"

    while i < n:
        c = text[i]
        if c in _WS:
            i += 1
            continue
        if expect in ("value", "first_item"):
            if expect == "first_item" and c == "]":
                containers.pop()
                expect, i = after_value(), i + 1
            elif c in "{[":
                containers.append("obj" if c == "{" else "arr")
                expect, i = ("first_key" if c == "{" else "first_item"), i + 1
            elif c == '"':
                end = _string_end(text, i)
                if end is None:
                    return False
                expect, i = after_value(), end
            elif c == "-" or c.isdigit():
                piece = _NUMBER_START.match(text, i).group()
                if i + len(piece) == n:  # the text ends in the number: a prefix of one?
                    return bool(_NUMBER.fullmatch(piece) or _NUMBER.fullmatch(piece + "0"))
                if not _NUMBER.fullmatch(piece):
                    return False
                expect, i = after_value(), i + len(piece)
            else:
                for literal in ("true", "false", "null"):
                    if text.startswith(literal, i):
                        expect, i = after_value(), i + len(literal)
                        break
                    if literal.startswith(text[i:]):
                        return True
                else:
                    return False
        elif expect in ("first_key", "key"):
            if expect == "first_key" and c == "}":
                containers.pop()
                expect, i = after_value(), i + 1
            elif c == '"':
                end = _string_end(text, i)
                if end is None:
                    return False
                expect, i = "colon", end
            else:
                return False
        elif expect == "colon":
            if c != ":":
                return False
            expect, i = "value", i + 1
        elif expect == "next":
            obj = containers[-1] == "obj"
            if c == ",":
                expect = "key" if obj else "value"
            elif c == ("}" if obj else "]"):
                containers.pop()
                expect = after_value()
            else:
                return False
            i += 1
        else:  # "end": one document, then only whitespace
            return False
    return True
