"""The grammar link on its own: settings checked at the boundary, the mask over random
logits with the tiny tokenizer, end-of-sequence, forks, the compiled-grammar cache."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from decoding import BatchSampler, ParamError, SamplingParams
from decoding.beam import BeamLinks
from decoding.links.grammar import GRAMMAR, Grammars, unpack_bitmask
from decoding.sampler import RowState
from json_prefix import is_json_prefix

EOS = 2
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "tag": {"enum": ["red", "blue"]}},
          "required": ["n", "tag"], "additionalProperties": False}


@pytest.fixture(scope="module")
def grammars(tiny_tokenizer):
    return Grammars(tiny_tokenizer, len(tiny_tokenizer), [EOS])


def run(sampler: BatchSampler, vocab: int, steps: int, seed: int = 0, eos_boost: float = 0.0) -> list[list[int]]:
    """Random logits through the sampler until each row is done; the ids per row."""
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = [[] for _ in sampler.rows]
    live = [True] * len(sampler.rows)
    for _ in range(steps):
        logits = torch.randn((len(sampler.rows), vocab), generator=gen) * 3
        logits[:, EOS] += eos_boost
        ids = sampler(logits).token_ids.tolist()
        sampler.accept(ids)
        for i, t in enumerate(ids):
            if live[i]:
                out[i].append(t)
                live[i] = t != EOS and not sampler.rows[i].done
        if not any(live):
            break
    return out


def make_sampler(params, grammars) -> BatchSampler:
    return BatchSampler(params, prompt_ids=[[5, 6]] * len(params), eos_token_ids=[EOS], grammars=grammars)


def text_of(tok, ids: list[int]) -> str:
    return tok.decode([t for t in ids if t != EOS])


# -- settings --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field, words", [
    (dict(json_schema={"type": "object", "dependentSchemas": {}}), "json_schema", "dependentSchemas"),
    (dict(json_schema="{not json"), "json_schema", "not valid JSON"),
    (dict(json_schema=[1, 2]), "json_schema", "must be a JSON schema"),
    (dict(regex="a(b"), "regex", "unclosed group"),
    (dict(regex=""), "regex", "non-empty"),
    (dict(grammar="start: missing_rule"), "grammar", "missing_rule"),
    (dict(choice=[]), "choice", "non-empty list"),
    (dict(choice="yes"), "choice", "list of strings"),
    (dict(choice=7), "choice", "list of strings"),
    (dict(regex="[0-9]+", choice=["a"]), "choice", "only one constraint"),
])
def test_bad_constraints_name_their_field(kwargs, field, words):
    with pytest.raises(ParamError) as err:
        SamplingParams(**kwargs)
    assert err.value.field == field and words in err.value.message


def test_constraints_are_normalised_and_run_under_every_strategy():
    p = SamplingParams(json_schema=json.dumps(SCHEMA, indent=2))
    assert json.loads(p.json_schema) == SCHEMA and "\n" not in p.json_schema  # compact, key order kept
    assert list(json.loads(p.json_schema)["properties"]) == ["n", "tag"]
    assert SamplingParams(choice=["a", "b"]).choice == ("a", "b")
    assert "grammar" in SamplingParams(strategy="beam", regex="[a-z]+").chain  # beam runs it too
    assert SamplingParams(strategy="sample", regex="x").chain == "logits -> grammar -> sample"
    assert hash(SamplingParams(json_schema=SCHEMA)) == hash(SamplingParams(json_schema=SCHEMA))


# -- the mask ----------------------------------------------------------------------

def test_unpack_bitmask_reads_llguidance_bit_order():
    bitmask = torch.tensor([[0b101, 0], [0, -(1 << 31)]], dtype=torch.int32)  # bit 31: the sign bit
    allowed = unpack_bitmask(bitmask, 64)
    assert allowed.shape == (2, 64)
    assert allowed[0].nonzero().flatten().tolist() == [0, 2]
    assert allowed[1].nonzero().flatten().tolist() == [63]


def test_rows_without_a_constraint_pay_nothing(grammars, tiny_tokenizer):
    plain = BatchSampler([SamplingParams(strategy="sample", seed=1)], grammars=grammars)
    assert plain.history == []  # the link is not in the chain
    state = RowState(SamplingParams(), grammars=None)
    assert GRAMMAR not in state.states
    with pytest.raises(ValueError, match="Grammars"):
        RowState(SamplingParams(regex="a"))  # a constraint needs the tokenizer


@pytest.mark.parametrize("strategy", ["greedy", "sample", "top_k", "top_p", "min_p", "typical", "mirostat"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_sampled_token_keeps_the_json_valid(strategy, seed, grammars, tiny_tokenizer):
    params = SamplingParams(strategy=strategy, seed=seed, json_schema=SCHEMA, max_new_tokens=64)
    sampler = make_sampler([params], grammars)
    ids = run(sampler, len(tiny_tokenizer), 64, seed=seed)[0]
    for k in range(1, len(ids) + 1):
        assert is_json_prefix(text_of(tiny_tokenizer, ids[:k])), text_of(tiny_tokenizer, ids[:k])
    assert sampler.rows[0].done
    value = json.loads(text_of(tiny_tokenizer, ids))
    jsonschema.validate(value, SCHEMA)


def test_eos_is_allowed_exactly_when_the_grammar_can_end(grammars, tiny_tokenizer):
    # a huge EOS logit: taken at the first step where the regex may end, never before
    params = SamplingParams(strategy="greedy", regex="[a-z]{2,}[0-9]?")
    sampler = make_sampler([params], grammars)
    ids = run(sampler, len(tiny_tokenizer), 30, eos_boost=1000.0)[0]
    assert ids[-1] == EOS
    text = text_of(tiny_tokenizer, ids)
    assert re.fullmatch(r"[a-z]{2,}[0-9]?", text)
    assert not re.fullmatch(r"[a-z]{2,}[0-9]?", text_of(tiny_tokenizer, ids[:-2]))  # it ended at once


def test_mixed_batch_constrained_row_does_not_change_its_neighbour(grammars, tiny_tokenizer):
    free = SamplingParams(strategy="sample", seed=4, max_new_tokens=20)
    bound = SamplingParams(strategy="sample", seed=5, choice=["alpha", "beta", "gamma"])
    together = run(make_sampler([free, bound], grammars), len(tiny_tokenizer), 20, seed=9)
    alone = run(make_sampler([free, free], grammars), len(tiny_tokenizer), 20, seed=9)
    assert together[0] == alone[0]
    assert text_of(tiny_tokenizer, together[1]) in {"alpha", "beta", "gamma"}


def test_lark_grammar_and_regex_outputs_match(grammars, tiny_tokenizer):
    lark = 'start: "(" item ("," item)* ")"\nitem: /[0-9]/'
    for seed in range(3):
        params = [SamplingParams(strategy="sample", seed=seed, grammar=lark),
                  SamplingParams(strategy="sample", seed=seed, regex=r"[A-Z][a-z]{1,4}!")]
        got = run(make_sampler(params, grammars), len(tiny_tokenizer), 60, seed=seed)
        assert re.fullmatch(r"\([0-9](,[0-9])*\)", text_of(tiny_tokenizer, got[0]))
        assert re.fullmatch(r"[A-Z][a-z]{1,4}!", text_of(tiny_tokenizer, got[1]))


def test_a_clone_follows_its_own_tokens(grammars, tiny_tokenizer):
    state = RowState(SamplingParams(choice=["yes", "no"]), prompt_ids=[1], grammars=grammars)
    fork = state.clone()
    y, n = tiny_tokenizer.encode("y")[0], tiny_tokenizer.encode("n")[0]
    state.accept(y)
    fork.accept(n)
    masks = torch.zeros((2, (len(tiny_tokenizer) + 31) // 32), dtype=torch.int32)
    grammars.fill([state.states[GRAMMAR], fork.states[GRAMMAR]], masks)
    allowed = unpack_bitmask(masks, len(tiny_tokenizer))
    assert tiny_tokenizer.encode("es")[0] in allowed[0].nonzero().flatten().tolist()
    assert not torch.equal(allowed[0], allowed[1])
    assert state.history == [1, y] and fork.history == [1, n]


def test_beam_links_fork_a_state_per_beam(grammars, tiny_tokenizer):
    params = SamplingParams(strategy="beam", num_beams=3, choice=["ab", "cd"])
    links = BeamLinks.start(params, [1], "cpu", grammars)
    assert BeamLinks.start(SamplingParams(strategy="beam", num_beams=3), [1], "cpu", grammars) is None
    a, c = tiny_tokenizer.encode("a")[0], tiny_tokenizer.encode("c")[0]
    links.advance([0, 0, 0], [a, c, a])  # two children of beam 0 take different tokens
    masked = links.apply(torch.zeros((3, len(tiny_tokenizer))))
    allowed = [set((row > float("-inf")).nonzero().flatten().tolist()) for row in masked]
    assert tiny_tokenizer.encode("b")[0] in allowed[0] and tiny_tokenizer.encode("d")[0] in allowed[1]
    assert allowed[0] == allowed[2] != allowed[1]


def test_compiled_grammars_are_cached_by_content(tiny_tokenizer):
    grammars = Grammars(tiny_tokenizer, len(tiny_tokenizer), [EOS], cache_size=2)
    grammars.matcher("regex", "[a-z]+")
    grammars.matcher("regex", "[a-z]+")
    assert (grammars.hits, grammars.misses) == (1, 1)
    grammars.matcher("regex", "[0-9]+")
    grammars.matcher("regex", "x+")  # the least recently used ([a-z]+) goes
    grammars.matcher("regex", "[a-z]+")
    assert grammars.misses == 4


def test_the_json_prefix_check_itself():
    doc = json.dumps({"a": [1, -2.5e3, True, None, "x\"\\u00e9"], "b": {"c": {}}, "d": []})
    assert all(is_json_prefix(doc[:k]) for k in range(len(doc) + 1))
    for bad in ['{"a" 1', "{]", "[1,,", '{"a": tru e', "[01", '{"a": 1}}', '"\\q"', "{1: 2}", "[1] [2]"]:
        assert not is_json_prefix(bad), bad
