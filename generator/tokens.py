"""Each token's own bytes, and a printable name for it.

A byte-level BPE (GPT-2's scheme, SmolLM2's) splits a multi-byte character over
several tokens: ``"😀"`` may be one token of its four bytes or two of two each.
Decoding such a token alone gives ``"\\ufffd"``, the replacement character, which
says nothing about which bytes it holds. Here a token's bytes come from its
vocabulary entry instead:

    table = token_table(tokenizer)     # one per tokenizer, built on first use
    table.bytes(228)                   # b'\\xe2'  (the token's own bytes)
    table.piece(228)                   # '\\\\xe2' (printable: bytes that are not
                                       #            whole UTF-8 shown as \\xNN)
    table.spans(ids)                   # [(start, end), ...] byte offsets of each token

How the bytes are read depends on the tokenizer's decoder: byte-level (each
character of the vocabulary entry stands for one byte), byte fallback
(SentencePiece: ``<0xE2>`` pieces, ``▁`` for a space), or anything else (the
token decoded alone, as UTF-8). Added and special tokens are their text.

``piece`` decodes the bytes as UTF-8 and writes each byte that is not part of a
whole character as ``\\xNN`` (two lowercase hex digits, Python's
``backslashreplace``): never a lone U+FFFD, and the same token always prints the
same way. A token whose text really is a backslash, ``x`` and two hex digits
prints alike; its ``bytes`` tell them apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_tables: dict[int, "TokenTable"] = {}


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet, character -> byte: printable Latin-1 bytes stand for
    themselves, the other 68 (controls, space, soft hyphen, ...) for ``chr(256 + k)``,
    in byte order."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet = {chr(b): b for b in kept}
    moved = [b for b in range(256) if b not in set(kept)]
    alphabet.update((chr(256 + k), b) for k, b in enumerate(moved))
    return alphabet


def _decoder_kind(tokenizer) -> str:
    """``byte_level``, ``byte_fallback`` or ``decode``: how this tokenizer's vocabulary
    entries map to bytes (read from its backend's decoder)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "decode"
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, TypeError):
        return "decode"
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    types = {p.get("type") for p in parts if isinstance(p, dict)}
    if "ByteLevel" in types:
        return "byte_level"
    if "ByteFallback" in types:
        return "byte_fallback"
    return "decode"


class TokenTable:
    """Token id -> its bytes and its printable piece, cached per id."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.kind = _decoder_kind(tokenizer)
        self._alphabet = _byte_level_alphabet() if self.kind == "byte_level" else {}
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self._added = {int(i): str(getattr(t, "content", t)) for i, t in added.items()}
        self._bytes: dict[int, bytes] = {}
        self._pieces: dict[int, str] = {}

    def bytes(self, token_id: int) -> bytes:
        """The bytes this token stands for in a decoded text."""
        out = self._bytes.get(token_id)
        if out is None:
            out = self._bytes[token_id] = self._read(int(token_id))
        return out

    def _read(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        entry = self.tokenizer.convert_ids_to_tokens(token_id)
        if self.kind == "byte_level" and entry is not None and all(c in self._alphabet for c in entry):
            return bytes(self._alphabet[c] for c in entry)
        if self.kind == "byte_fallback" and entry is not None:
            m = _BYTE_FALLBACK.match(entry)
            return bytes([int(m.group(1), 16)]) if m else entry.replace("\u2581", " ").encode("utf-8")
        return self.tokenizer.decode([token_id], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False).encode("utf-8")

    def piece(self, token_id: int) -> str:
        """The token as text: its bytes as UTF-8, each byte outside a whole character as ``\\xNN``."""
        out = self._pieces.get(token_id)
        if out is None:
            out = self._pieces[token_id] = self.bytes(token_id).decode("utf-8", "backslashreplace")
        return out

    def spans(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """Each token's ``[start, end)`` byte offsets in the concatenation of their bytes
        (a text's own UTF-8 when the tokenizer added nothing to it)."""
        out, at = [], 0
        for t in ids:
            n = len(self.bytes(t))
            out.append((at, at + n))
            at += n
        return out

    def char_offsets(self, ids: Sequence[int], start: int = 0) -> list[int]:
        """Each token's offset in characters (``start`` + the characters before it) in the
        text its bytes make; a token that begins inside a character gets that character's."""
        out, chars = [], start  # characters begun so far: UTF-8 lead bytes, not 0x80-0xBF
        for t in ids:
            data = self.bytes(t)
            inside = bool(data) and 0x80 <= data[0] < 0xC0 and chars > start
            out.append(chars - 1 if inside else chars)
            chars += sum(1 for b in data if not 0x80 <= b < 0xC0)
        return out


def token_table(tokenizer) -> TokenTable:
    """The one ``TokenTable`` of ``tokenizer`` (made on first use: reading a byte-level
    decoder means reading the tokenizer's description once)."""
    table = _tables.get(id(tokenizer))
    if table is None or table.tokenizer is not tokenizer:
        table = _tables[id(tokenizer)] = TokenTable(tokenizer)
    return table
