"""One engine's arithmetic as a short string: ``engine_fingerprint(engine)`` -> ``fp_<16 hex>``.

Two engines with the same fingerprint compute every token from the same weight bytes with
the same kernels, so the same request (prompt, settings, seed) gives the same token ids
(docs/kernels.md, "Batch and chunk invariance"). It hashes:

- the weights the forward reads, as packed (names, dtypes, shapes and bytes; not the KV
  cache, not derived copies),
- the kernel tier and the resolved settings that change arithmetic (device, dtype, quant,
  head, activations, dense_prefill, compile, runner),
- tokenflow's and torch's versions.

Settings that change no bits (slots, context length, prefill chunk) are left out. The OpenAI
routes return it as ``system_fingerprint``; recordings store it (``tokenflow replay --verify``);
``tokenflow sweep`` writes it on every row, and ``with_chain(fp, chain)`` beside it: the
engine's and one strategy's chain together, one generation's id.
"""

from __future__ import annotations

import hashlib
import json

# The resolved-config fields that change a token's arithmetic.
ARITHMETIC_FIELDS = ("runner", "device", "dtype", "quant", "head", "activations", "dense_prefill", "compile",
                     "kernels")


def engine_fingerprint(engine, chain: str | None = None) -> str:
    """``fp_`` and 16 hex digits for ``engine`` (computed once per engine: hashing the weights
    reads them all, about 0.2 s for the default model); with ``chain`` (a strategy's printed
    chain), that generation's id (``with_chain``)."""
    cached = getattr(engine, "_fingerprint", None)
    if cached is None:
        cached = "fp_" + fingerprint_parts(engine)["digest"][:16]
        engine._fingerprint = cached
    return cached if chain is None else with_chain(cached, chain)


def with_chain(fingerprint: str, chain: str) -> str:
    """An engine's fingerprint and a strategy's printed chain, hashed together: ``fp_`` and 16
    hex digits naming what produced one generation."""
    return "fp_" + hashlib.blake2b(f"{fingerprint}|{chain}".encode(), digest_size=8).hexdigest()


def fingerprint_parts(engine) -> dict:
    """What the fingerprint is made of: ``{"weights": hex, "config": {...}, "versions": {...},
    "digest": hex}`` (a recording stores the parts, so a mismatch can say which one moved)."""
    import torch

    config = {name: getattr(engine.config, name) for name in ARITHMETIC_FIELDS}
    versions = {"tokenflow": _version(), "torch": torch.__version__}
    weights = weights_digest(_weight_module(engine))
    digest = hashlib.blake2b(json.dumps([weights, config, versions], sort_keys=True).encode(),
                             digest_size=32).hexdigest()
    return {"weights": weights, "config": config, "versions": versions, "digest": digest}


def weights_digest(module) -> str:
    """A hash of every parameter and buffer of ``module`` but the KV caches and the dense
    copies (derived from the packed weights), in name order."""
    import torch

    h = hashlib.blake2b(digest_size=32)
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    for name in sorted(tensors):
        t = tensors[name]
        leaf = name.rsplit(".", 1)[-1]
        if t is None or leaf.endswith("_cache") or leaf == "dense":
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _weight_module(engine):
    runner = engine.runner
    return getattr(runner, "model", None) or engine.model


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokenflow")
    except PackageNotFoundError:
        return "unknown"
