"""Text that is safe to show: incremental detokenization and stop strings."""

from __future__ import annotations

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a short window of ids (from ``prefix`` on), emits only the new
    suffix, and holds back while the text ends in an incomplete UTF-8 character
    (the tokenizer renders those as U+FFFD). Never ``decode([id])`` alone: byte-level
    tokens and leading-space rules only come out right in context.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # ids up to here are already emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip,
                                     clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (may be empty)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if after.endswith(_REPLACEMENT) or len(after) <= len(before) or not after.startswith(before):
            # Incomplete character (or nothing new yet): wait for more ids.
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]

    def flush(self) -> str:
        """Whatever is still held back, as the tokenizer decodes it."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):] if after.startswith(before) else after


class StopStringFilter:
    """Holds back text that might be the start of a stop string; cuts at a match."""

    def __init__(self, stops: tuple[str, ...] | list[str], include_stop: bool = False):
        self.stops = [s for s in stops if s]
        self.include_stop = include_stop  # show the stop string that matched (vLLM's include_stop_str_in_output)
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Feed a delta; return what is safe to show now. Sets ``stopped`` on a match."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops]
        hits = [(i, s) for i, s in hits if i >= 0]
        if hits:
            cut, stop = min(hits)  # the earliest match (the shorter stop, when two start there)
            end = cut + len(stop) if self.include_stop else cut
            out, self.pending, self.stopped = self.pending[:end], "", True
            return out
        hold = self._partial_tail()
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        return out

    def _partial_tail(self) -> int:
        """Length of the longest tail of ``pending`` that starts some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class TextStream:
    """Detokenizer + stop strings: ``push(id)`` returns the delta safe to show."""

    def __init__(self, tokenizer, stops=(), include_stop: bool = False, skip_special_tokens: bool = True):
        self.detok = IncrementalDetokenizer(tokenizer, skip_special_tokens)
        self.stop = StopStringFilter(stops, include_stop)

    @property
    def stopped(self) -> bool:
        return self.stop.stopped

    def push(self, token_id: int) -> str:
        return self.stop.push(self.detok.push(token_id))

    def flush(self) -> str:
        return self.stop.push(self.detok.flush()) + self.stop.flush()
