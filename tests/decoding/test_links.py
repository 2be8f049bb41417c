"""The chain as objects: links own their fields, selectors say what they are, the
registry and params do not import each other, the sampler names no link."""

import ast
import pickle
import random
from pathlib import Path

import pytest
import torch

from decoding import BatchSampler, Link, Param, SamplingParams, Strategy, describe, history, register, resolve, \
    strategies, transforms
from decoding.links.bans import NO_REPEAT_NGRAM, NgramIndex
from decoding.selectors import ARGMAX, BEAM, MIROSTAT_V2, SAMPLE

ROOT = Path(__file__).resolve().parents[2]
DECODING = ROOT / "decoding"


def _every_link() -> list[Link]:
    return list(dict.fromkeys([*history(), *(link for s in strategies() for link in s.links)]))


def test_every_link_field_is_a_sampling_param_with_its_declaration():
    fields = SamplingParams.__dataclass_fields__
    catalogue = describe()["params"]
    for owner in [*_every_link(), SAMPLE, MIROSTAT_V2]:
        for p in owner.params:
            assert p.name in fields and p.name in catalogue, p.name
            assert str(fields[p.name].type) == p.type and catalogue[p.name]["help"] == p.help
            if owner in _every_link() and p in owner.switches:
                assert catalogue[p.name]["off"] == p.off  # a switch has an off value


def test_history_links_change_the_argmax_and_filters_do_not():
    assert [link.name for link in history()] == ["logit_bias", "bad_words", "min_new_tokens", "repetition_penalty",
                                                 "presence_frequency_penalty", "no_repeat_ngram", "dry", "grammar"]
    assert all(link.changes_argmax for link in history())
    own = {link for s in strategies() for link in s.links}
    assert own and not any(link.changes_argmax for link in own)


def test_selectors_say_what_they_are():
    assert BEAM.is_beam and not BEAM.samples
    assert SAMPLE.samples and MIROSTAT_V2.samples and not ARGMAX.samples
    assert resolve("beam_search").selector is BEAM and resolve("nucleus").selector is SAMPLE
    assert SamplingParams(strategy="mirostat", temperature=0.0).is_greedy


def test_params_resolve_their_strategy_once_and_keep_it_out_of_eq_hash_repr():
    p = SamplingParams(strategy="nucleus", seed=3)
    assert p.resolved_strategy is resolve("top_p")
    assert "resolved" not in repr(p) and "Strategy" not in repr(p)
    q = pickle.loads(pickle.dumps(p))
    assert q == p and hash(q) == hash(p) and q.resolved_strategy is p.resolved_strategy


def _imports(path: Path) -> set[str]:
    """Modules of ours a file imports, anywhere in it (``.registry``, ``..params``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.module:
                out.add(node.module.split(".")[-1])
            else:
                out.update(alias.name for alias in node.names)
    return out


def test_no_import_circle_between_params_and_registry():
    assert "params" not in _imports(DECODING / "registry.py")
    assert "registry" in _imports(DECODING / "params.py")
    for path in [DECODING / "selectors.py", *(DECODING / "links").glob("*.py")]:
        assert not {"registry", "params", "sampler", "catalogue"} & _imports(path), path.name


def _is_selector(node: ast.AST) -> bool:
    """``x.selector`` or ``x.selector.name``."""
    if isinstance(node, ast.Attribute) and node.attr == "name":
        node = node.value
    return isinstance(node, ast.Attribute) and node.attr == "selector"


def _is_text(node: ast.AST) -> bool:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_text(e) for e in node.elts)
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def test_no_code_compares_selector_names_as_strings():
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                assert not (any(map(_is_selector, operands)) and any(map(_is_text, operands))), \
                    f"{path}: {ast.unparse(node)}"


def test_the_sampler_names_no_link():
    source = (DECODING / "sampler.py").read_text()
    for link in _every_link():
        assert f'"{link.name}"' not in source and f"'{link.name}'" not in source


def test_a_strategy_with_an_undeclared_field_is_refused():
    class Undeclared(Link):
        name = "undeclared"
        params = (Param("undeclared_knob", "float", 0.0, "not a SamplingParams field", off=0.0),)

    before = len(strategies())
    with pytest.raises(ValueError, match="undeclared_knob"):
        register(Strategy("undeclared", SAMPLE, (Undeclared(),)))
    assert len(strategies()) == before


def test_links_off_for_every_row_drop_out_of_the_batch():
    sampler = BatchSampler([SamplingParams(), SamplingParams(strategy="sample", seed=1, temperature=0.5)])
    assert sampler.history == []
    sampler(torch.randn(2, 16))
    assert [link.name for link, _ in sampler.groups[0].chain] == ["temperature"]  # top_k, top_p off
    with_penalty = BatchSampler([SamplingParams(repetition_penalty=1.2), SamplingParams()])
    assert [link.name for link in with_penalty.history] == ["repetition_penalty"]


def test_greedy_pick_is_an_argument_remembered_by_subset():
    calls = []

    def pick(logits):
        calls.append(logits.shape[0])
        return logits.argmax(-1), logits.log_softmax(-1).amax(-1)

    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    sampler = BatchSampler([SamplingParams()] * 3, greedy_pick=pick)
    assert torch.equal(sampler(logits).token_ids, logits.argmax(-1)) and calls == [3]
    sub = sampler.subset([2, 0])
    assert sub.greedy_pick is pick
    sub(logits[[2, 0]])
    assert calls == [3, 2]
    # a penalty or a sampled row: PyTorch's ops, not the pick
    BatchSampler([SamplingParams(repetition_penalty=1.3)], greedy_pick=pick)(logits[:1])
    BatchSampler([SamplingParams(strategy="sample", seed=1)], greedy_pick=pick)(logits[:1])
    assert calls == [3, 2]
    assert BatchSampler([SamplingParams()]).greedy_pick is None


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_index_equals_the_plain_function_and_clones(n):
    rng = random.Random(n)
    prompt = [rng.randrange(5) for _ in range(6)]
    index, history_ = NgramIndex(n, prompt), list(prompt)
    for step in range(40):
        assert sorted(index.bans()) == sorted(set(transforms.ngram_bans(history_, n))), step
        if step == 20:
            fork = index.clone()
        tok = rng.randrange(5)
        index.accept(tok)
        history_.append(tok)
    assert sorted(fork.bans()) == sorted(set(transforms.ngram_bans(history_[:len(prompt) + 20], n)))
    index.reset()
    assert index.bans() == set()


def test_row_states_learn_through_accept():
    rows = BatchSampler([SamplingParams(no_repeat_ngram_size=2, strategy="mirostat", seed=4)],
                        prompt_ids=[[1, 2, 1]]).rows
    states = rows[0].states
    assert set(states) == {NO_REPEAT_NGRAM, MIROSTAT_V2}
    rows[0].accept(7)  # no step taken: mirostat has nothing to learn, the n-gram index learns
    assert float(states[MIROSTAT_V2].mu) == 2 * 5.0
    assert states[NO_REPEAT_NGRAM].tail == [7] and states[NO_REPEAT_NGRAM].bans() == set()
