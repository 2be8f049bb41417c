"""One engine configuration: flags made from its fields, every "auto" settled once by
``resolve()``, printed as one line and as JSON; and what the engine made of it."""

import argparse
import json

import pytest

from generator import EngineConfig, ModelLoadError, kernels
from generator.config import EngineConfigError, add_engine_flags

from conftest import build_tiny_model


@pytest.fixture(scope="module")
def tiny_hf():
    return build_tiny_model(320)


def _actions(parser: argparse.ArgumentParser) -> dict:
    return {a.option_strings[0]: (a.dest, a.default, a.choices and list(a.choices), a.const, type(a).__name__,
                                  a.help)
            for a in parser._actions if a.option_strings and a.dest != "help"}


# The model flags `tokenflow generate/compare/serve` have always had: flag -> (dest, default, choices).
MODEL_FLAGS = {
    "--model": ("model", None, None), "--device": ("device", "auto", None), "--dtype": ("dtype", "auto", None),
    "--quant": ("quant", "auto", ["auto", "none", "int8", "int4"]),
    "--head": ("head", "auto", ["auto", "none", "int8", "int4"]),
    "--activations": ("activations", "auto", ["auto", "bf16", "int8"]),
    "--dense-prefill": ("dense_prefill", False, None), "--compile": ("compile", None, None),
    "--no-compile": ("compile", None, None),
    "--cuda-graphs": ("cuda_graphs", "auto", ["auto", "on", "off"]),
    "--prefix-cache-mb": ("prefix_cache_mb", "auto", None),  # added with the prefix cache
    "--speculate": ("speculate", "off", None),
}


def test_the_cli_model_flags_are_made_from_the_fields():
    """`tokenflow generate` and `serve` take their model flags from ``add_engine_flags``:
    the same names, destinations, defaults and choices as before, with help text."""
    from generator.cli.main import build_parser

    ours = argparse.ArgumentParser()
    add_engine_flags(ours)
    made = {flag: v[:3] for flag, v in _actions(ours).items()}
    assert made == MODEL_FLAGS
    assert all(v[5] for v in _actions(ours).values())  # every flag has help
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("generate", "compare"):
        assert {f: v[:3] for f, v in _actions(sub.choices[command]).items() if f in MODEL_FLAGS} == MODEL_FLAGS


def test_from_args_round_trip():
    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    assert EngineConfig.from_args(parser.parse_args([])) == EngineConfig()
    args = parser.parse_args(["--model", "m.gguf", "--quant", "int8", "--head", "int4", "--activations", "bf16",
                              "--dense-prefill", "--no-compile", "--dtype", "bfloat16", "--device", "cpu"])
    assert EngineConfig.from_args(args) == EngineConfig(model="m.gguf", quant="int8", head="int4",
                                                        activations="bf16", dense_prefill=True, compile=False,
                                                        dtype="bfloat16", device="cpu")


@pytest.mark.parametrize("bad,field", [(dict(quant="int3"), "quant"), (dict(head="int2"), "head"),
                                       (dict(kernels="cuda"), "kernels"), (dict(num_slots=0), "num_slots"),
                                       (dict(prefill_chunk=0), "prefill_chunk")])
def test_bad_values_are_load_errors_and_value_errors(bad, field):
    with pytest.raises(EngineConfigError, match=field) as info:
        EngineConfig(**bad)
    assert isinstance(info.value, ModelLoadError) and isinstance(info.value, ValueError)


def test_resolve_settles_every_auto(tiny_hf, monkeypatch):
    monkeypatch.delenv("TOKENFLOW_ACTIVATIONS", raising=False)
    monkeypatch.setenv("TOKENFLOW_COMPILE", "0")
    plain = EngineConfig().resolve(tiny_hf)
    assert (plain.runner, plain.device, plain.dtype, plain.quant, plain.head, plain.activations) == \
        ("fast", "cpu", "float32", "none", "none", "bf16")
    assert plain.compile is False and plain.max_len == 256  # capped by the model's context
    assert plain.kernels == kernels.status()["tier"] and plain.kernels_reason
    int4 = EngineConfig(quant="int4", num_slots=16).resolve(tiny_hf)
    assert (int4.dtype, int4.head) == ("bfloat16", "int8")
    assert int4.activations == kernels.status()["activations"]  # the tier's faster one
    assert int4.summary() == (f"cpu bfloat16 int4 head=int8 activations={int4.activations} "
                              f"kernels={int4.kernels} compile=off slots=16")
    assert json.loads(json.dumps(int4.as_dict()))["quant"] == "int4"
    monkeypatch.setenv("TOKENFLOW_COMPILE", "1")
    monkeypatch.setenv("TOKENFLOW_ACTIVATIONS", "bf16")
    env = EngineConfig(quant="int4").resolve(tiny_hf)
    assert env.compile is True and env.activations == "bf16"
    assert EngineConfig(quant="int4", compile=False).resolve(tiny_hf).compile is False  # a choice wins


def test_resolve_refuses_what_cannot_run(tiny_hf, monkeypatch):
    monkeypatch.setenv("TOKENFLOW_ACTIVATIONS", "fp8")
    with pytest.raises(EngineConfigError, match="TOKENFLOW_ACTIVATIONS"):
        EngineConfig(quant="int4").resolve(tiny_hf)


def test_engine_config_is_the_resolved_config(tiny_engine):
    config = tiny_engine.config
    assert config.summary().startswith("cpu float32 none head=none activations=bf16 kernels=")
    assert tiny_engine.quant == "none" and tiny_engine.activations == "bf16"
    assert tiny_engine.context_length == config.max_len and tiny_engine.runner.num_slots == config.num_slots


def test_engine_load_keeps_its_keywords(tiny_model_dir):
    from generator import Engine

    engine = Engine.load(model=tiny_model_dir, device="cpu", quant="int8", compile=False, num_slots=3,
                         max_len=64, head="none")
    assert (engine.config.quant, engine.config.head, engine.config.num_slots, engine.context_length) == \
        ("int8", "none", 3, 64)
    assert engine.dtype.__repr__() == "torch.bfloat16" and engine.name == tiny_model_dir.name
    with pytest.raises(TypeError):
        Engine.load(model=tiny_model_dir, num_beams=2)


def test_config_names_the_kernels_choices_the_kernels_take():
    # config.py spells the choices out so that --help imports no torch; they must not drift.
    from generator import config, kernels

    assert config.KERNELS == kernels.KERNEL_CHOICES
