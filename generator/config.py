"""One engine configuration: what was asked (``EngineConfig``) and what it settled to
(``ResolvedConfig``, ``engine.config``).

    config = EngineConfig(quant="int4", num_slots=16)      # "auto" wherever not said
    resolved = config.resolve(hf_model, gguf_path)          # every "auto" settled, once
    resolved.summary()  # 'cpu bfloat16 int4 head=int8 activations=int8 kernels=avx512 compile=off slots=16'
    resolved.as_dict()  # JSON-able: --stats, /health and the benchmarks print it

Each field's metadata carries its help text, its choices and its command-line flag;
``add_engine_flags(parser)`` and ``EngineConfig.from_args(args)`` are made from them.
The environment speaks only where a field says ``auto`` (or ``None``):
``TOKENFLOW_ACTIVATIONS``, ``TOKENFLOW_COMPILE`` and ``TOKENFLOW_KERNELS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from decoding.checks import ParamError
from decoding.lazy import torch
from decoding.speculative import speculation

from .loading import ModelLoadError

ACTIVATIONS = ("auto", "bf16", "int8")
QUANTS = ("none", "int8", "int4")
GRAPHS = ("auto", "on", "off")
# What quant="auto" means on CUDA: bf16 weights until benchmarks/gpu_check.py has measured
# int4 (PyTorch's tinygemm kernel) against them on a GPU; set it to what that run found faster.
CUDA_AUTO_QUANT = "none"
# kernels.KERNEL_CHOICES, named here so that --help needs no torch (a test checks they agree)
KERNELS = ("auto", "avx512", "avx2", "portable", "aten")  # the weight formats of weights/formats.py: dense, int8, int4


class EngineConfigError(ModelLoadError, ValueError):
    """An engine setting with a value it cannot take (a load error and a ValueError both)."""


def _opt(help: str, choices: tuple | None = None, flag: str | None = None) -> dict:
    return {"help": help, "choices": choices, "flag": flag}


@dataclass(frozen=True)
class EngineConfig:
    """The engine's settings as asked for: ``auto`` (or ``None``) where the machine,
    the model or the environment should decide. See ``Engine.load``."""

    model: str | None = field(default=None, metadata=_opt(
        "default SmolLM2-135M-Instruct (from PyPI), a local HF folder, a .gguf file, or a hub id", flag="--model"))
    device: str = field(default="auto", metadata=_opt(
        "auto (CUDA when present), cpu, cuda, cuda:N", flag="--device"))
    dtype: str = field(default="auto", metadata=_opt(
        "auto, float32, bfloat16, float16", flag="--dtype"))
    quant: str = field(default="auto", metadata=_opt(
        "weight-only quantization; auto: int4 from the GGUF's Q4_1 blocks on CPU "
        "when --dtype is auto and the source is such a GGUF, else none. int4/int8 run on "
        "tokenflow's own kernels, the tier the CPU runs best (built on first use, 10-20 s); "
        "TOKENFLOW_KERNELS=aten uses PyTorch's. On CUDA: int4 runs PyTorch's CUDA kernel (tinygemm), "
        "int8 is CPU-only, and auto means bf16 weights", ("auto", *QUANTS), "--quant"))
    head: str = field(default="auto", metadata=_opt(
        "the output head's weights (28M of the model's 135M); auto: int8 with --quant int8/int4 "
        "(the GGUF stores it in 8 bits), else dense. int4 reads a third fewer bytes per "
        "token at a small quality cost (see the quality table in docs/performance.md)", ("auto", *QUANTS), "--head"))
    activations: str = field(default="auto", metadata=_opt(
        "what the int4 layers and an int8/int4 head multiply their codes by: int8 (the inputs "
        "rounded per row and group of 32, as llama.cpp does for this GGUF; integer dot products, "
        "faster on the avx512 (with AVX512_VNNI) and avx2 tiers) or bf16 (the inputs as they are). "
        "auto: the kernel tier's faster one (kernels.status()['activations']); "
        "TOKENFLOW_ACTIVATIONS sets what auto means", ACTIVATIONS, "--activations"))
    dense_prefill: bool = field(default=False, metadata=_opt(
        "quantized layers keep a bf16 copy of their weights for prompt chunks of 32+ tokens: "
        "about 2x faster prefill with PyTorch's int kernels, about the same with tokenflow's own "
        "(+214 MB), at the cost of rounding the weights a second time", flag="--dense-prefill"))
    compile: bool | None = field(default=None, metadata=_opt(
        "compile the one-token decode step with torch.compile (also: TOKENFLOW_COMPILE=1); "
        "faster steps after a compile of several seconds per batch shape", flag="--compile"))
    num_slots: int = field(default=8, metadata=_opt(
        "KV-cache slots: rows of one batched step (beams and n > 1 take several)"))
    max_len: int = field(default=2048, metadata=_opt(
        "positions per slot (capped by the model's context)"))
    prefill_chunk: int = field(default=256, metadata=_opt(
        "most prompt tokens one prefill forward takes"))
    cuda_graphs: str = field(default="auto", metadata=_opt(
        "replay the one-token decode step from CUDA graphs, one per batch bucket (1, 2, 4, ... rows) "
        "and cache bucket, captured at load: one launch a step instead of hundreds (with --compile, "
        "the compiled step's fewer kernels, compiled per bucket at load). auto: on for CUDA; on "
        "needs CUDA", GRAPHS, "--cuda-graphs"))
    kernels: str = field(default="auto", metadata=_opt(
        "tokenflow's own CPU kernels, for the whole process: auto (the best tier this CPU runs, "
        "or TOKENFLOW_KERNELS's), avx512, avx2, portable (a tier at or below the CPU's), or "
        "aten: PyTorch's", KERNELS))
    prefix_cache_mb: int | str = field(default="auto", metadata=_opt(
        "memory for the prefix cache (the KV of earlier prompts and outputs, reused by a request that "
        "shares their beginning; exact: the same bits as prefilling): MB, 0 turns it off; auto: a tenth "
        "of the machine's memory, at most 1024 MB. Off wherever prefill is not chunk-invariant "
        "(float weights, a float32 cache, --dense-prefill, the transformers runner)", flag="--prefix-cache-mb"))
    speculate: str = field(default="off", metadata=_opt(
        "prompt-lookup speculative decoding for requests that do not say (their 'speculative' field): "
        "off, ngram, or ngram:k=4,n=3,min_n=2 (draft up to k tokens after the longest suffix n-gram "
        "match in the prompt + output, verified in one forward; the same tokens as without). "
        "Runs with int weights and the eager step (every kernel tier); elsewhere off", flag="--speculate"))

    def __post_init__(self):
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            # activations: resolve_activations checks it (case-blind, and names the variable).
            if choices and f.name != "activations" and getattr(self, f.name) not in choices:
                raise EngineConfigError(f"unknown {f.name} {getattr(self, f.name)!r}; choose from {', '.join(choices)}")
        try:
            prefix_cache_mb(self.prefix_cache_mb)
        except ValueError as exc:
            raise EngineConfigError(str(exc)) from None
        for name in ("num_slots", "max_len", "prefill_chunk"):
            if int(getattr(self, name)) < 1:
                raise EngineConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        try:
            speculation(self.speculate, "speculate")
        except ParamError as exc:
            raise EngineConfigError(f"--{exc}") from None

    def replace(self, **changes) -> "EngineConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EngineConfig":
        """The config of parsed flags (``add_engine_flags``); fields without a flag keep their default."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})

    def resolve(self, model, gguf: Path | None = None) -> "ResolvedConfig":
        """Settle every ``auto`` against this machine and the loaded HF ``model`` (its device
        and dtype are what loading made of ``device`` and ``dtype``; ``gguf``: the GGUF it
        came from, if any). Raises ``EngineConfigError`` for a combination that cannot run."""
        from .model.llama import supports
        from .weights.gguf import has_q4_1

        param = next(model.parameters())
        device, fast = param.device, supports(model)
        cuda = device.type != "cpu"
        quant = self.quant
        if quant == "auto" and cuda:
            from_q4_1 = self.dtype == "auto" and fast and gguf is not None and has_q4_1(gguf)
            quant = CUDA_AUTO_QUANT if from_q4_1 else "none"
        elif quant == "auto":
            # Only the GGUF's own 4-bit codes are lossless w.r.t. the source; re-quantizing
            # float weights is a second rounding, so a plain HF folder stays in its dtype.
            lossless = gguf is not None and fast and has_q4_1(gguf)
            quant = "int4" if (self.dtype == "auto" and lossless) else "none"
        if quant != "none" and not fast:
            raise EngineConfigError(f"quant={quant!r} needs a Llama-architecture model, "
                                    f"not {model.config.model_type!r}")
        head = self.head
        if head == "auto" or not fast:
            # On CUDA the head stays dense: int8 weights have CPU kernels only.
            head = "none" if quant == "none" or not fast or cuda else "int8"
        if cuda and "int8" in (quant, head):
            raise EngineConfigError(f"int8 weights run on CPU only (tokenflow's kernels), not {device.type}; "
                                    "use quant int4 or none there")
        if not cuda and self.cuda_graphs == "on":
            raise EngineConfigError("cuda_graphs='on' needs a CUDA device")
        activations = "bf16"
        if cuda:  # PyTorch's CUDA int4 kernel takes bf16 inputs; our CPU kernels are not asked
            if self.activations.strip().lower() not in ("auto", "bf16"):
                raise EngineConfigError(f"activations {self.activations!r} need tokenflow's CPU kernels; "
                                        f"on {device.type} int4 layers multiply bf16 inputs")
        elif fast:
            try:
                asked = resolve_activations(self.activations)
            except ValueError as exc:
                raise EngineConfigError(str(exc)) from None
            # Only int layers (the body's or the head's) multiply by int8 activations.
            activations = asked if quant != "none" or head != "none" else "bf16"
        # The int kernels are fast only with bf16 activations on the CPU.
        dtype = torch.bfloat16 if quant != "none" else param.dtype
        tier = _kernels().status() if device.type == "cpu" else {
            "tier": "aten", "reason": f"our kernels are CPU-only, not {device.type}"}
        ctx = int(getattr(model.config, "max_position_embeddings", 2048))
        compiled = compile_enabled(self.compile) if fast else False
        graphs = cuda and fast and self.cuda_graphs != "off"
        return ResolvedConfig(
            model=self.model, gguf=None if gguf is None else str(gguf), runner="fast" if fast else "hf",
            device=str(device), dtype=str(dtype).removeprefix("torch."), quant=quant, head=head,
            activations=activations, dense_prefill=bool(self.dense_prefill),
            compile=compiled, graphs=graphs, num_slots=int(self.num_slots),
            max_len=min(int(self.max_len), ctx), prefill_chunk=int(self.prefill_chunk),
            kernels=tier["tier"], kernels_reason=tier["reason"], prefix_cache_mb=resolve_prefix_cache_mb(
                self.prefix_cache_mb), speculate=str(speculation(self.speculate, "speculate")))


@dataclass(frozen=True)
class ResolvedConfig:
    """An ``EngineConfig`` with every choice made (``engine.config``): what runs."""

    model: str | None  # as asked (None: the default model)
    gguf: str | None  # the GGUF the weights came from, if any
    runner: str  # "fast" (our Llama forward) or "hf" (transformers' model, the fallback)
    device: str
    dtype: str  # the activations' dtype
    quant: str
    head: str
    activations: str  # what int layers multiply their codes by: bf16 or int8
    dense_prefill: bool
    compile: bool
    graphs: bool  # the decode step replayed from CUDA graphs (CUDA only; asked as cuda_graphs)
    num_slots: int
    max_len: int
    prefill_chunk: int
    kernels: str  # our tier ("avx512", "avx2", "portable") or "aten" (PyTorch's)
    kernels_reason: str
    prefix_cache_mb: int = 0  # the prefix cache's budget (0: off); the engine's cache says if it runs
    speculate: str = "off"  # the requests' default speculation (decoding.speculative), canonical text

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def as_dict(self) -> dict:
        """Every field, JSON-able."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: ``cpu bfloat16 int4 head=int8 activations=int8 kernels=avx512 compile=off slots=16``."""
        graphs = f" graphs={'on' if self.graphs else 'off'}" if self.device.startswith("cuda") else ""
        return (f"{self.device} {self.dtype} {self.quant} head={self.head} activations={self.activations} "
                f"kernels={self.kernels} compile={'on' if self.compile else 'off'}{graphs} slots={self.num_slots}")


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """The engine's command-line flags (a "model" group), made from ``EngineConfig``'s fields."""
    group = parser.add_argument_group("model")
    for f in dataclasses.fields(EngineConfig):
        meta = f.metadata
        if meta["flag"] is None:
            continue
        if f.name == "compile":  # three states: on, off, or TOKENFLOW_COMPILE decides
            group.add_argument("--compile", dest="compile", action="store_const", const=True, default=None,
                               help=meta["help"])
            group.add_argument("--no-compile", dest="compile", action="store_const", const=False,
                               help="run the decode step eagerly (the default)")
        elif f.name == "prefix_cache_mb":  # checked as it is parsed: a bad value is argparse's error
            group.add_argument(meta["flag"], dest=f.name, default=f.default, type=_prefix_cache_mb_arg,
                               metavar="MB", help=meta["help"])
        elif f.type in (bool, "bool"):
            group.add_argument(meta["flag"], dest=f.name, action="store_true", help=meta["help"])
        else:
            group.add_argument(meta["flag"], dest=f.name, default=f.default, choices=meta["choices"],
                               help=meta["help"])


def prefix_cache_mb(value) -> int | str:
    """``"auto"`` or a whole number of MB >= 0 (``"64"`` and ``64`` alike); ValueError otherwise."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        mb = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        mb = None
    if mb is None or mb < 0:
        raise ValueError(f"prefix_cache_mb must be auto or a whole number of MB >= 0 (0 turns it off), "
                         f"got {value!r}")
    return mb


def _prefix_cache_mb_arg(text: str) -> int | str:
    try:
        return prefix_cache_mb(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("prefix_cache_mb", "--prefix-cache-mb")) from None


def resolve_prefix_cache_mb(value) -> int:
    """The budget in MB: ``auto`` settled against this machine (``prefix_cache.auto_mb``)."""
    value = prefix_cache_mb(value)
    if value == "auto":
        from .prefix_cache import auto_mb

        return auto_mb()
    return value


def resolve_activations(name: str | None = "auto") -> str:
    """``bf16`` or ``int8``: what int4 layers multiply their codes by (``Int4Linear``).

    ``auto``: ``$TOKENFLOW_ACTIVATIONS`` when set, else the faster one on the kernel tier
    that runs (``kernels.status()["activations"]``: int8 on avx512 with AVX512_VNNI and on
    avx2, measured). int8 is the arithmetic llama.cpp uses for this GGUF's Q4_1 layers (its
    Q8_1 activations): integer dot products, 64 an instruction with VNNI where bf16 does 32;
    the quality table in docs/performance.md compares both."""
    name = (name or "auto").strip().lower()
    source = "activations"
    if name == "auto" and os.environ.get("TOKENFLOW_ACTIVATIONS", "").strip():
        name, source = os.environ["TOKENFLOW_ACTIVATIONS"].strip().lower(), "TOKENFLOW_ACTIVATIONS"
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown {source} {name!r}; choose from {', '.join(ACTIVATIONS)}")
    if name == "auto":
        k = _kernels()
        return "int8" if k.int8_activations() and k.status()["activations"] == "int8" else "bf16"
    if name == "int8" and not _kernels().int8_activations():
        raise ValueError(f"int8 activations need tokenflow's kernels (avx512 with AVX512_VNNI, or avx2); "
                         f"kernels here: {_kernels().status()['tier']}; use activations='bf16'")
    return name


def _kernels():
    """``generator.kernels``, imported when first needed: the flags (``tokenflow --help``) need no torch."""
    from . import kernels

    return kernels


def compile_enabled(flag: bool | None) -> bool:
    """``flag`` if given, else the ``TOKENFLOW_COMPILE`` switch (off unless ``1``/``true``/``yes``).

    Off by default: compiling costs seconds for every new batch size and cache bucket,
    more than it saves in a short CLI run or a server whose batch size changes each step.
    """
    if flag is not None:
        return bool(flag)
    return os.environ.get("TOKENFLOW_COMPILE", "0").strip().lower() in ("1", "true", "yes", "on")
