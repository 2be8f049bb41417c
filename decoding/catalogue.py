"""The built-in catalogue: the history links in their order, then one line a strategy.

A new filter is a link (a class in ``links/``) and one ``register`` line here; its
fields become ``SamplingParams`` fields, so CLI flags, server fields,
``GET /strategies``, the page and the benchmarks pick it up by name.
"""

from __future__ import annotations

from .links import bans, filters, grammar, penalties
from .registry import Strategy, register, register_history
from .selectors import ARGMAX, BEAM, MIROSTAT_V1, MIROSTAT_V2, SAMPLE

# History links: any strategy but beam runs those a request switches on, first, in
# this order (as transformers and llama.cpp put bias, bans and penalties first); the grammar
# mask last, so what it removes stays removed (beam search runs it too).
for _link in (bans.LOGIT_BIAS, bans.BAD_WORDS, bans.MIN_NEW_TOKENS, penalties.REPETITION_PENALTY,
              penalties.PRESENCE_FREQUENCY_PENALTY, bans.NO_REPEAT_NGRAM, penalties.DRY, grammar.GRAMMAR):
    register_history(_link)

T, K, P, MIN_P = filters.TEMPERATURE, filters.TOP_K, filters.TOP_P, filters.MIN_P

register(Strategy("greedy", ARGMAX, aliases=("argmax",),
                  description="always the most likely token",
                  reference="transformers generate(do_sample=False)"))
register(Strategy("sample", SAMPLE, (T, K, P), params=("seed",),
                  aliases=("sampling", "multinomial", "random"),
                  description="seeded sampling after temperature, top-k and top-p",
                  reference="transformers generate(do_sample=True)"))
register(Strategy("beam", BEAM, params=("num_beams", "length_penalty", "early_stopping"),
                  aliases=("beam_search", "beams"),
                  description="beam search; streams the settled prefix",
                  reference="transformers generate(num_beams=N, do_sample=False)"))
register(Strategy("top_k", SAMPLE, (T, K), params=("seed",), aliases=("topk",),
                  defaults={"top_k": 50}, description="sample among the k most likely tokens",
                  reference="transformers TopKLogitsWarper (Fan et al. 2018)"))
register(Strategy("top_p", SAMPLE, (T, P), params=("seed",),
                  aliases=("nucleus", "topp", "nucleus_sampling"), defaults={"top_p": 0.9},
                  description="sample from the smallest set holding top_p of the mass",
                  reference="transformers TopPLogitsWarper (Holtzman et al. 2020)"))
register(Strategy("min_p", SAMPLE, (T, MIN_P), params=("seed",), aliases=("minp",),
                  defaults={"min_p": 0.1}, description="drop tokens below min_p x the top probability",
                  reference="transformers MinPLogitsWarper (Nguyen et al. 2024)"))
register(Strategy("typical", SAMPLE, (T, filters.TYPICAL_P), params=("seed",),
                  aliases=("typical_p", "locally_typical"), defaults={"typical_p": 0.95},
                  description="keep the tokens whose surprise is closest to the entropy",
                  reference="transformers TypicalLogitsWarper (Meister et al. 2022)"))
register(Strategy("epsilon", SAMPLE, (T, filters.EPSILON_CUTOFF), params=("seed",),
                  aliases=("epsilon_cutoff", "epsilon_sampling"), defaults={"epsilon_cutoff": 3e-4},
                  description="drop tokens with probability below epsilon",
                  reference="transformers EpsilonLogitsWarper (Hewitt et al. 2022)"))
register(Strategy("eta", SAMPLE, (T, filters.ETA_CUTOFF), params=("seed",),
                  aliases=("eta_cutoff", "eta_sampling"), defaults={"eta_cutoff": 2e-3},
                  description="entropy-dependent cutoff min(eta, sqrt(eta) exp(-H))",
                  reference="transformers EtaLogitsWarper (Hewitt et al. 2022)"))
register(Strategy("xtc", SAMPLE, (K, P, MIN_P, filters.XTC, T), params=("seed",),
                  aliases=("exclude_top_choices",), defaults={"xtc_probability": 0.5},
                  description="sometimes exclude every top choice but the least likely",
                  reference="llama.cpp llama_sampler_xtc (chain order of llama.cpp)"))
register(Strategy("dry", SAMPLE, (T, K, P, MIN_P),
                  params=("dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n",
                          "dry_sequence_breakers", "seed"),
                  aliases=("dont_repeat_yourself",), defaults={"dry_multiplier": 0.8},
                  description="sampling with the DRY repeat penalty switched on",
                  reference="llama.cpp llama_sampler_dry (p-e-w, text-generation-webui)"))
register(Strategy("mirostat", MIROSTAT_V2, (T,), params=("seed",),
                  aliases=("mirostat_v2", "mirostat2"),
                  description="adaptive truncation that steers surprise towards tau",
                  reference="llama.cpp llama_sampler_mirostat_v2 (Basu et al. 2021)"))
register(Strategy("llama_cpp", SAMPLE, (K, filters.TYPICAL_P, P, MIN_P, filters.XTC, filters.DYNAMIC_TEMPERATURE),
                  params=("seed",), aliases=("llamacpp", "llama"),
                  defaults={"top_k": 40, "top_p": 0.95, "min_p": 0.05},
                  description="llama.cpp's default sampler chain and defaults",
                  reference="llama.cpp common_sampler (top_k 40, top_p 0.95, min_p 0.05)"))
register(Strategy("transformers", SAMPLE,
                  (T, K, P, MIN_P, filters.TYPICAL_P, filters.EPSILON_CUTOFF, filters.ETA_CUTOFF),
                  params=("seed",), aliases=("hf", "huggingface"),
                  description="every transformers warper, in generate()'s order",
                  reference="transformers generate(do_sample=True) warper order"))
register(Strategy("top_n_sigma", SAMPLE, (T, filters.TOP_N_SIGMA), params=("seed",), aliases=("top_nsigma",),
                  defaults={"top_nsigma": 1.0}, description="keep tokens within n standard deviations of the top logit",
                  reference="llama.cpp llama_sampler_top_n_sigma (Tang et al. 2024, Top-n-sigma)"))
register(Strategy("mirostat_v1", MIROSTAT_V1, (T,), params=("seed",), aliases=("mirostat1",),
                  description="mirostat 1.0: a top-k sized from the fitted Zipf exponent and mu",
                  reference="llama.cpp llama_sampler_mirostat (Basu et al. 2021, m = 100)"))
register(Strategy("smoothing", SAMPLE, (T, filters.SMOOTHING, K, P, MIN_P), params=("seed",),
                  aliases=("quadratic", "quadratic_sampling", "smoothing_factor"), defaults={"smoothing_factor": 0.3},
                  description="quadratic sampling: bend the logits around the top one, then filter",
                  reference="text-generation-webui QuadraticSamplingLogitsWarper (smoothing_factor)"))
register(Strategy("dynatemp", SAMPLE, (K, P, MIN_P, filters.DYNAMIC_TEMPERATURE), params=("seed",),
                  aliases=("dynamic_temperature", "temp_ext"), defaults={"dynatemp_range": 0.5},
                  description="temperature between t -/+ range, higher where the distribution is flatter",
                  reference="llama.cpp llama_sampler_temp_ext (dynatemp_range, dynatemp_exponent)"))
