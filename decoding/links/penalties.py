"""History links that lower the logits of tokens already seen: the repetition
penalty, the presence/frequency penalties and DRY. Every row of a batch runs them;
a row whose field is off is left alone (its column holds the off value)."""

from __future__ import annotations

from functools import lru_cache, partial

from ..lazy import torch

from .. import transforms
from ..checks import ParamError, breakers_tuple
from .base import Batch, Link, Param


class RepetitionPenalty(Link):
    name = "repetition_penalty"
    params = (Param("repetition_penalty", "float", 1.0, "divide positive / multiply negative logits of tokens "
                    "already in the prompt or output (1 = off)", low=0.0, low_open=True, off=1.0),)
    changes_argmax = True
    tracks_output = True
    description = "multiplicative penalty on tokens of the prompt and output"
    reference = "transformers RepetitionPenaltyLogitsProcessor (Keskar et al. 2019, CTRL)"

    def columns(self, rows, batch: Batch):
        if not any(self.is_on(r.params) for r in rows):
            return None
        seen = torch.zeros((len(rows), batch.vocab), dtype=torch.bool, device=batch.device)  # (B, V)
        for i, r in enumerate(rows):
            seen[i, torch.tensor(r.history, dtype=torch.long, device=batch.device)] = True
        penalty = torch.tensor([r.params.repetition_penalty for r in rows], device=batch.device)
        return seen, penalty, torch.arange(len(rows), device=batch.device)

    def apply(self, logits, columns):
        seen, penalty, _ = columns
        return transforms.repetition_penalty(logits, seen, penalty)

    def advance(self, columns, token_ids):
        seen, _, rows = columns
        seen[rows, token_ids] = True


class PresenceFrequencyPenalty(Link):
    """OpenAI's two additive penalties: one link, as they share the generated-token
    counts and one pass; each shows under its own name in a chain and the catalogue."""

    name = "presence_frequency_penalty"
    params = (Param("presence_penalty", "float", 0.0, "subtract this from tokens already generated (0 = off)",
                    low=-2.0, high=2.0, off=0.0),
              Param("frequency_penalty", "float", 0.0,
                    "subtract this x the count of each token already generated (0 = off)",
                    low=-2.0, high=2.0, off=0.0))
    changes_argmax = True
    tracks_output = True
    reference = "OpenAI / vLLM presence_penalty"

    @property
    def switches(self):
        return self.params

    def labels(self, params):
        return tuple(p.name for p in self.params if getattr(params, p.name) != p.off)

    def describe(self):
        return [
            {"name": "presence_penalty", "field": "presence_penalty", "params": ["presence_penalty"],
             "description": "subtract once from every token generated so far",
             "reference": "OpenAI / vLLM presence_penalty"},
            {"name": "frequency_penalty", "field": "frequency_penalty", "params": ["frequency_penalty"],
             "description": "subtract per occurrence of each token generated so far",
             "reference": "OpenAI / vLLM frequency_penalty"},
        ]

    def columns(self, rows, batch: Batch):
        if not any(self.is_on(r.params) for r in rows):
            return None
        counts = torch.zeros((len(rows), batch.vocab), device=batch.device)  # (B, V) generated-token counts
        for i, r in enumerate(rows):
            out = torch.tensor(r.history[r.prompt_len:], dtype=torch.long, device=batch.device)
            counts[i].index_add_(0, out, torch.ones(len(out), device=batch.device))
        presence = torch.tensor([r.params.presence_penalty for r in rows], device=batch.device)
        frequency = torch.tensor([r.params.frequency_penalty for r in rows], device=batch.device)
        return counts, presence, frequency, torch.arange(len(rows), device=batch.device)

    def apply(self, logits, columns):
        counts, presence, frequency, _ = columns
        return transforms.presence_frequency_penalty(logits, counts, presence, frequency)

    def advance(self, columns, token_ids):
        counts, _, _, rows = columns
        counts[rows, token_ids] += 1


class DontRepeatYourself(Link):
    name = "dry"
    params = (Param("dry_multiplier", "float | None", None, "DRY: penalty multiplier for extending a repeat (0 = off)",
                    low=0.0, off=0.0),
              Param("dry_base", "float", 1.75, "DRY: penalty grows as base ** (repeat length - allowed length)",
                    low=1.0, low_open=True),
              Param("dry_allowed_length", "int", 2, "DRY: repeats up to this length are not penalised", low=1),
              Param("dry_penalty_last_n", "int", -1, "DRY: look back this many tokens (-1 = all)", low=-1),
              Param("dry_sequence_breakers", "tuple[int | str, ...]", (), "DRY: a token id, or a text (as "
                    "llama.cpp's), that ends a repeat: every token containing the text (repeatable)",
                    convert=partial(breakers_tuple, "dry_sequence_breakers")))
    changes_argmax = True
    description = "penalise extending a sequence that already occurred"
    reference = "llama.cpp DRY sampler (p-e-w)"

    def new_state(self, params, prompt_ids, grammars=None):
        """A row's breakers as head tokens and the tails that complete them: an id alone as
        given; a text as llama.cpp reads it (``transforms.dry_breaker_sequences``: every
        token that contains it, and every token that starts it followed by the tokens of
        the rest). Texts need the tokenizer (``grammars``)."""
        texts = tuple(b for b in params.dry_sequence_breakers if isinstance(b, str))
        if not self.is_on(params) or not texts:
            return None
        if grammars is None:
            raise ParamError("dry_sequence_breakers", "text breakers need the engine's tokenizer; give token ids")
        heads = {head: set(tails) for head, tails in _text_breakers(grammars, texts).items()}
        for b in params.dry_sequence_breakers:
            if not isinstance(b, str):
                heads.setdefault(b, set()).add(())
        return _Breakers(heads)

    def columns(self, rows, batch: Batch):
        if not any(self.is_on(r.params) for r in rows):
            return None
        return [(r, self.is_on(r.params)) for r in rows]

    def apply(self, logits, rows):
        penalties = []
        for r, on in rows:
            p = r.params
            state = r.states.get(self)
            breakers = state.ids if state is not None else p.dry_sequence_breakers
            penalties.append(transforms.dry_penalties(r.history, p.dry_multiplier, p.dry_base, p.dry_allowed_length,
                                                      p.dry_penalty_last_n, breakers) if on else {})
        return transforms.dry(logits, penalties)


@lru_cache(maxsize=16)
def _text_breakers(grammars, texts: tuple[str, ...]) -> dict[int, frozenset[tuple[int, ...]]]:
    """Text breakers read against one tokenizer (a scan of the vocabulary: done once per set)."""
    encode = partial(grammars.hf_tokenizer.encode, add_special_tokens=False)
    heads: dict[int, set[tuple[int, ...]]] = {}
    for text in texts:
        for head, tails in transforms.dry_breaker_sequences(grammars.token_texts(), text, encode).items():
            heads.setdefault(head, set()).update(tails)
    return {head: frozenset(tails) for head, tails in heads.items()}


class _Breakers:
    """A row's DRY breakers: head token -> the tails that complete a breaker (a state that
    learns nothing)."""

    def __init__(self, ids: dict[int, set[tuple[int, ...]]]):
        self.ids = ids

    def accept(self, token: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def clone(self) -> "_Breakers":
        return self


REPETITION_PENALTY = RepetitionPenalty()
PRESENCE_FREQUENCY_PENALTY = PresenceFrequencyPenalty()
DRY = DontRepeatYourself()
