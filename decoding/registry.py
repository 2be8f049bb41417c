"""Strategy registry: a name (and aliases) -> an ordered chain of transforms
ending in exactly one selector. CLI, server and benchmarks read it."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Strategy:
    name: str
    selector: str  # "argmax" | "sample" | "beam" | "mirostat_v2"
    transforms: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # SamplingParams fields this strategy reads besides its transforms'
    aliases: tuple[str, ...] = ()
    description: str = ""
    reference: str = ""
    defaults: dict = field(default_factory=dict, hash=False)  # field -> value when left unset
    extra: dict = field(default_factory=dict, hash=False)

    @property
    def chain(self) -> str:
        """Printable chain, e.g. ``logits -> temperature -> top_k -> sample``."""
        return " -> ".join(("logits", *self.transforms, self.selector))

    @property
    def fields(self) -> tuple[str, ...]:
        """Every ``SamplingParams`` field this strategy's chain reads."""
        from .params import TRANSFORM_FIELDS

        own = [TRANSFORM_FIELDS[t] for t in self.transforms]
        return tuple(dict.fromkeys([*own, *self.params]))


@dataclass(frozen=True)
class Processor:
    """A history-aware transform that any strategy but beam applies when its field is on."""

    name: str
    field: str
    params: tuple[str, ...]
    description: str
    reference: str


_STRATEGIES: dict[str, Strategy] = {}
_ALIASES: dict[str, str] = {}


def register(strategy: Strategy) -> Strategy:
    """Add a strategy; its name and aliases must be new."""
    for key in (strategy.name, *strategy.aliases):
        key = key.lower()
        if key in _STRATEGIES or key in _ALIASES:
            raise ValueError(f"strategy name {key!r} is already registered")
    _STRATEGIES[strategy.name] = strategy
    for alias in strategy.aliases:
        _ALIASES[alias.lower()] = strategy.name
    return strategy


def resolve(name: str) -> Strategy:
    """The strategy for a canonical name or alias (case-insensitive)."""
    key = str(name).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _STRATEGIES:
        known = ", ".join(sorted(_STRATEGIES))
        raise KeyError(f"unknown strategy {name!r}; known: {known}")
    return _STRATEGIES[key]


def strategies() -> list[Strategy]:
    """All registered strategies, in registration order."""
    return list(_STRATEGIES.values())


def processors() -> list[Processor]:
    """The history-aware processors (penalties, bans, bias), in application order."""
    return list(PROCESSORS)


def describe() -> dict[str, Any]:
    """The catalogue as plain JSON-able data, for ``GET /strategies`` and the web page:
    strategies (name, aliases, chain, fields, defaults, reference), processors, and every
    ``SamplingParams`` field with its type, default, bounds, off value and help."""
    from .params import SamplingParams

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
            {"name": s.name, "aliases": list(s.aliases), "selector": s.selector, "chain": s.chain,
             "transforms": list(s.transforms), "params": list(s.fields), "defaults": dict(s.defaults),
             "description": s.description, "reference": s.reference}
            for s in strategies()
        ],
        "processors": [
            {"name": p.name, "field": p.field, "params": list(p.params), "description": p.description,
             "reference": p.reference}
            for p in PROCESSORS
        ],
        "params": params,
    }


def _json_type(annotation: str) -> str:
    table = {"tuple[int, ...]": "list[int]", "tuple[str, ...]": "list[str]",
             "tuple[tuple[int, ...], ...]": "list[list[int]]", "dict[int, float]": "dict[int,float]"}
    return table.get(annotation, annotation.replace(" | None", "").replace(" ", ""))


PROCESSORS = (
    Processor("logit_bias", "logit_bias", ("logit_bias",), "add a bias to chosen token ids",
              "OpenAI logit_bias; transformers SequenceBiasLogitsProcessor (one-token sequences)"),
    Processor("bad_words", "bad_words_ids", ("bad_words_ids",),
              "never generate these id sequences (one id: always banned)",
              "transformers NoBadWordsLogitsProcessor"),
    Processor("min_new_tokens", "min_new_tokens", ("min_new_tokens",),
              "mask end-of-sequence until this many tokens exist",
              "transformers MinNewTokensLengthLogitsProcessor"),
    Processor("repetition_penalty", "repetition_penalty", ("repetition_penalty",),
              "multiplicative penalty on tokens of the prompt and output",
              "transformers RepetitionPenaltyLogitsProcessor (Keskar et al. 2019, CTRL)"),
    Processor("presence_penalty", "presence_penalty", ("presence_penalty",),
              "subtract once from every token generated so far", "OpenAI / vLLM presence_penalty"),
    Processor("frequency_penalty", "frequency_penalty", ("frequency_penalty",),
              "subtract per occurrence of each token generated so far", "OpenAI / vLLM frequency_penalty"),
    Processor("no_repeat_ngram", "no_repeat_ngram_size", ("no_repeat_ngram_size",),
              "ban tokens that would repeat an n-gram", "transformers NoRepeatNGramLogitsProcessor"),
    Processor("dry", "dry_multiplier",
              ("dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers"),
              "penalise extending a sequence that already occurred", "llama.cpp DRY sampler (p-e-w)"),
)


# The built-in catalogue. One line a strategy.
register(Strategy("greedy", "argmax", aliases=("argmax",),
                  description="always the most likely token",
                  reference="transformers generate(do_sample=False)"))
register(Strategy("sample", "sample", ("temperature", "top_k", "top_p"),
                  params=("seed",),
                  aliases=("sampling", "multinomial", "random"),
                  description="seeded sampling after temperature, top-k and top-p",
                  reference="transformers generate(do_sample=True)"))
register(Strategy("beam", "beam", params=("num_beams", "length_penalty", "early_stopping"),
                  aliases=("beam_search", "beams"),
                  description="beam search; streams the settled prefix",
                  reference="transformers generate(num_beams=N, do_sample=False)"))
register(Strategy("top_k", "sample", ("temperature", "top_k"), params=("seed",), aliases=("topk",),
                  defaults={"top_k": 50}, description="sample among the k most likely tokens",
                  reference="transformers TopKLogitsWarper (Fan et al. 2018)"))
register(Strategy("top_p", "sample", ("temperature", "top_p"), params=("seed",),
                  aliases=("nucleus", "topp", "nucleus_sampling"), defaults={"top_p": 0.9},
                  description="sample from the smallest set holding top_p of the mass",
                  reference="transformers TopPLogitsWarper (Holtzman et al. 2020)"))
register(Strategy("min_p", "sample", ("temperature", "min_p"), params=("seed",), aliases=("minp",),
                  defaults={"min_p": 0.1}, description="drop tokens below min_p x the top probability",
                  reference="transformers MinPLogitsWarper (Nguyen et al. 2024)"))
register(Strategy("typical", "sample", ("temperature", "typical_p"), params=("seed",),
                  aliases=("typical_p", "locally_typical"), defaults={"typical_p": 0.95},
                  description="keep the tokens whose surprise is closest to the entropy",
                  reference="transformers TypicalLogitsWarper (Meister et al. 2022)"))
register(Strategy("epsilon", "sample", ("temperature", "epsilon_cutoff"), params=("seed",),
                  aliases=("epsilon_cutoff", "epsilon_sampling"), defaults={"epsilon_cutoff": 3e-4},
                  description="drop tokens with probability below epsilon",
                  reference="transformers EpsilonLogitsWarper (Hewitt et al. 2022)"))
register(Strategy("eta", "sample", ("temperature", "eta_cutoff"), params=("seed",),
                  aliases=("eta_cutoff", "eta_sampling"), defaults={"eta_cutoff": 2e-3},
                  description="entropy-dependent cutoff min(eta, sqrt(eta) exp(-H))",
                  reference="transformers EtaLogitsWarper (Hewitt et al. 2022)"))
register(Strategy("xtc", "sample", ("top_k", "top_p", "min_p", "xtc", "temperature"),
                  params=("xtc_threshold", "seed"), aliases=("exclude_top_choices",),
                  defaults={"xtc_probability": 0.5},
                  description="sometimes exclude every top choice but the least likely",
                  reference="llama.cpp llama_sampler_xtc (chain order of llama.cpp)"))
register(Strategy("dry", "sample", ("temperature", "top_k", "top_p", "min_p"),
                  params=("dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n",
                          "dry_sequence_breakers", "seed"),
                  aliases=("dont_repeat_yourself",), defaults={"dry_multiplier": 0.8},
                  description="sampling with the DRY repeat penalty switched on",
                  reference="llama.cpp llama_sampler_dry (p-e-w, text-generation-webui)"))
register(Strategy("mirostat", "mirostat_v2", ("temperature",), params=("mirostat_tau", "mirostat_eta", "seed"),
                  aliases=("mirostat_v2", "mirostat2"),
                  description="adaptive truncation that steers surprise towards tau",
                  reference="llama.cpp llama_sampler_mirostat_v2 (Basu et al. 2021)"))
register(Strategy("llama_cpp", "sample", ("top_k", "typical_p", "top_p", "min_p", "xtc", "temperature"),
                  params=("xtc_threshold", "seed"), aliases=("llamacpp", "llama"),
                  defaults={"top_k": 40, "top_p": 0.95, "min_p": 0.05},
                  description="llama.cpp's default sampler chain and defaults",
                  reference="llama.cpp common_sampler (top_k 40, top_p 0.95, min_p 0.05)"))
register(Strategy("transformers", "sample",
                  ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"),
                  params=("seed",), aliases=("hf", "huggingface"),
                  description="every transformers warper, in generate()'s order",
                  reference="transformers generate(do_sample=True) warper order"))
