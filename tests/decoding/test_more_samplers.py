"""Dynamic temperature, mirostat 1.0, quadratic smoothing and the per-request ``samplers``
order, each against its reference definition written here as a plain loop over a
candidate list sorted most likely first (the way llama.cpp's samplers walk
``llama_token_data_array``; text-generation-webui's for smoothing)."""

from __future__ import annotations

import math

import pytest
import torch

from decoding import BatchSampler, ParamError, SamplingParams, transforms


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def ref_temp_ext(logits: list[float], t: float, delta: float, exponent: float) -> list[float]:
    """llama.cpp temp-ext over one row's candidates."""
    if delta <= 0:
        return [x / t for x in logits]
    lo, hi = max(0.0, t - delta), t + delta
    if len(logits) <= 1:
        return list(logits)
    max_entropy = -math.log(1.0 / len(logits))
    p = _softmax(logits)
    entropy = -sum(q * math.log(q) for q in p if q > 0)
    dyn = lo + (hi - lo) * (entropy / max_entropy) ** exponent
    return [x / dyn for x in logits]


@pytest.mark.parametrize("t,delta,exponent", [(1.0, 0.5, 1.0), (0.7, 0.7, 2.0), (1.2, 0.3, 0.5), (0.8, 0.0, 1.0)])
def test_dynamic_temperature_matches_llama_cpp(t, delta, exponent):
    g = torch.Generator().manual_seed(int(t * 10 + delta * 100))
    logits = torch.randn(3, 40, generator=g) * 2
    logits[2, 10:] = -math.inf  # a row an earlier filter cut to 10 candidates
    got = transforms.dynamic_temperature(logits, t, delta, exponent)
    for row in range(3):
        live = [float(x) for x in logits[row] if math.isfinite(x)]
        want = ref_temp_ext(live, t, delta, exponent)
        assert got[row][torch.isfinite(got[row])].tolist() == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_dynamic_temperature_in_a_chain_and_per_row():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(1))
    rows = [SamplingParams(strategy="llama_cpp", top_k=0, top_p=1.0, min_p=0.0, temperature=0.9, dynatemp_range=0.4,
                           dynatemp_exponent=1.5, seed=1),
            SamplingParams(strategy="llama_cpp", top_k=0, top_p=1.0, min_p=0.0, temperature=0.9, seed=1)]
    sampler = BatchSampler(rows)
    sampler.prepare(30)
    (link, cols), = sampler.groups[0].chain
    out = link.apply(logits.clone(), cols)
    want0 = ref_temp_ext(logits[0].tolist(), 0.9, 0.4, 1.5)
    assert out[0].tolist() == pytest.approx(want0, rel=1e-4)
    assert torch.allclose(out[1], logits[1] / 0.9)  # the other row: a fixed temperature
    with pytest.raises(ParamError):
        SamplingParams(strategy="sample", dynatemp_range=0.5)  # only temp-ext chains take it
    assert SamplingParams(strategy="dynatemp", seed=1).dynatemp_range == 0.5


def ref_quadratic(logits: list[float], factor: float) -> list[float]:
    top = max(logits)
    return [-(factor * (x - top) ** 2) + top for x in logits]


def test_quadratic_smoothing_matches_its_definition_and_keeps_the_order():
    logits = torch.tensor([[1.0, 2.0, 3.5, -1.0], [0.0, 0.5, 0.2, 0.1]])
    got = transforms.quadratic_smoothing(logits, torch.tensor([0.3, 0.0]))
    assert got[0].tolist() == pytest.approx(ref_quadratic(logits[0].tolist(), 0.3))
    assert torch.equal(got[1], logits[1])  # factor 0: off
    assert torch.equal(got[0].argsort(), logits[0].argsort())
    p = SamplingParams(strategy="smoothing", seed=2)
    assert p.smoothing_factor == 0.3 and p.chain == "logits -> smoothing -> sample"


def ref_mirostat_v1_k(logits: list[float], mu: float, vocab: int, m: int = 100) -> int:
    """llama.cpp's llama_sampler_mirostat: k from the fitted Zipf exponent."""
    p = sorted(_softmax(logits), reverse=True)
    sum_tb = sum_tt = 0.0
    for i in range(min(m - 1, len(p) - 1)):
        t_i = math.log((i + 2) / (i + 1))
        b_i = math.log(p[i] / p[i + 1])
        sum_tb += t_i * b_i
        sum_tt += t_i * t_i
    s_hat = sum_tb / sum_tt
    eps = s_hat - 1
    k = (eps * 2 ** mu / (1 - vocab ** -eps)) ** (1 / s_hat)
    return max(int(k), 1)


def test_mirostat_v1_keeps_llama_cpps_k_and_learns_mu():
    vocab = 500
    # Zipf-like logits with noise: the fit is meaningful, k is neither 1 nor everything
    g = torch.Generator().manual_seed(3)
    ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
    logits = (-1.1 * ranks.log() + 0.05 * torch.randn(vocab, generator=g))[torch.randperm(vocab, generator=g)]
    params = SamplingParams(strategy="mirostat_v1", mirostat_tau=3.0, mirostat_eta=0.1, seed=4)
    sampler = BatchSampler([params])
    mu = 2 * 3.0
    ks = set()
    for _ in range(6):
        k = ref_mirostat_v1_k(logits.tolist(), mu, vocab)
        ks.add(k)
        truncated = transforms.mirostat_v1_truncate(logits[None], torch.tensor([mu]), vocab)
        assert int(torch.isfinite(truncated).sum()) == k
        tok = int(sampler(logits[None].clone()).token_ids[0])
        kept = logits.topk(k).indices.tolist()
        assert tok in kept
        sampler.accept([tok])
        q = _softmax([float(logits[i]) for i in kept])
        surprise = -math.log2(q[kept.index(tok)])
        mu -= 0.1 * (surprise - 3.0)
        state = sampler.rows[0].states[params.resolved_strategy.selector]
        assert float(state.mu) == pytest.approx(mu, rel=1e-4)
    assert len(ks) > 1 or 1 < next(iter(ks)) < vocab


def test_samplers_order_changes_the_chain_and_the_tokens_follow_it():
    reordered = SamplingParams(strategy="llama_cpp", samplers="temperature;min_p;top_k", temperature=3.0,
                               seed=5, top_k=40, min_p=0.2)
    assert reordered.chain == "logits -> temperature -> min_p -> top_k -> sample"
    default = reordered.replace(samplers=())
    assert default.chain == "logits -> top_k -> top_p -> min_p -> temperature -> sample"
    # min-p after a hot temperature keeps more than min-p before it: the kept sets differ
    logits = torch.randn(1, 200, generator=torch.Generator().manual_seed(6)) * 3
    kept = []
    for p in (reordered, default):
        sampler = BatchSampler([p.replace(trace=True)])
        (trace,) = sampler(logits.clone()).trace.to_host([True])
        kept.append({e["name"]: e["kept"] for e in trace["links"]})
    assert kept[0]["min_p"] > kept[1]["min_p"]
    assert "top_p" not in kept[0]  # not listed: not run


def test_samplers_names_are_checked():
    # llama.cpp's names; its history samplers (penalties, dry) run first here whatever the order
    given = SamplingParams(strategy="llama_cpp", samplers=["penalties", "dry", "typ_p", "temp"])
    assert [link.name for link in given.links] == ["typical_p", "temperature"]
    for bad in (["top_q"], ["top_k", "top_k"], [3]):
        with pytest.raises(ParamError) as err:
            SamplingParams(strategy="llama_cpp", samplers=bad)
        assert err.value.field == "samplers"


def test_dry_breakers_as_text_are_the_tokens_that_contain_the_text(tiny_tokenizer):
    from decoding.links.grammar import Grammars
    from decoding.links.penalties import DRY

    grammars = Grammars(tiny_tokenizer, len(tiny_tokenizer), [2])
    texts = [tiny_tokenizer.decode([i]) for i in range(len(tiny_tokenizer))]
    want = {i for i, t in enumerate(texts) if "." in t or "\n" in t} | {5}
    params = SamplingParams(strategy="dry", dry_sequence_breakers=[".", "\n", 5], seed=1)
    assert params.dry_sequence_breakers == (".", "\n", 5)
    state = DRY.new_state(params, [], grammars)
    assert set(state.ids) == want and len(want) > 2
    # the repeat a . b . c | a . b . would be penalised without the breakers, not with them
    dot = next(i for i, t in enumerate(texts) if t == ".")
    history = [40, dot, 41, dot, 42, 40, dot, 41, dot]
    assert transforms.dry_penalties(history, 0.8, 1.75, 1) != {}
    assert transforms.dry_penalties(history, 0.8, 1.75, 1, sequence_breakers=state.ids) == {}
    sampler = BatchSampler([params], prompt_ids=[history], grammars=grammars)
    logits = torch.zeros(1, len(tiny_tokenizer))
    sampler.process(logits)  # no penalty: the run holds a breaker
    assert torch.equal(sampler.process(logits), logits)
    with pytest.raises(ParamError) as err:
        BatchSampler([params])  # texts without a tokenizer
    assert err.value.field == "dry_sequence_breakers"
    for bad in ([""], [-1], [1.5]):
        with pytest.raises(ParamError):
            SamplingParams(strategy="dry", dry_sequence_breakers=bad)
    assert SamplingParams(strategy="dry", dry_sequence_breakers=["7"]).dry_sequence_breakers == (7,)


def test_dry_text_breakers_spread_over_several_tokens(tiny_tokenizer):
    """llama.cpp's reading of a text breaker: a token that ends with the start of the text is
    the head of a breaker whose tail is the rest of the text, tokenized (``z`` + ``e b ra``)."""
    from decoding.links.grammar import Grammars
    from decoding.links.penalties import DRY

    zebra = tiny_tokenizer.encode("zebra", add_special_tokens=False)
    assert len(zebra) == 4  # z e b ra: no single token holds it
    texts = [tiny_tokenizer.decode([i]) for i in range(len(tiny_tokenizer))]
    heads = transforms.dry_breaker_sequences(texts, "zebra", lambda s: tiny_tokenizer.encode(s, add_special_tokens=False))
    assert tuple(zebra[1:]) in heads[zebra[0]]
    assert all(not any(t in texts[h] for t in ("zebra",)) for h in heads)  # none holds the whole text
    grammars = Grammars(tiny_tokenizer, len(tiny_tokenizer), [2])
    params = SamplingParams(strategy="dry", dry_sequence_breakers=["zebra"], dry_multiplier=0.8, dry_allowed_length=2,
                            seed=1)
    state = DRY.new_state(params, [], grammars)
    x, y = 40, 41
    # "zebra x y zebra": without the breaker, x would extend a repeat of 4 tokens
    history = [*zebra, x, y, *zebra]
    assert set(transforms.dry_penalties(history, 0.8, 1.75, 2)) == {x}
    assert transforms.dry_penalties(history, 0.8, 1.75, 2, sequence_breakers=state.ids) == {}
    # the breaker's head alone ends nothing: "a b c d e a b c" still penalises d across "z"
    a, b, c, d = 50, 51, 52, 53
    history = [a, b, c, d, zebra[0], a, b, c]
    assert transforms.dry_penalties(history, 0.8, 1.75, 2, sequence_breakers=state.ids) == \
        transforms.dry_penalties(history, 0.8, 1.75, 2)
    # a breaker inside the repeat cuts it: "a zebra b c" ... "a zebra b" -> the repeat is "b" only
    history = [a, *zebra, b, c, y, a, *zebra, b]
    assert transforms.dry_penalties(history, 0.8, 1.75, 2) != {}
    assert transforms.dry_penalties(history, 0.8, 1.75, 2, sequence_breakers=state.ids) == {}
    # through the sampler: no penalty on the logits
    sampler = BatchSampler([params], prompt_ids=[[*zebra, x, y, *zebra]], grammars=grammars)
    logits = torch.zeros(1, len(tiny_tokenizer))
    assert torch.equal(sampler.process(logits), logits)
