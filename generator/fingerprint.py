"""What produced a result, as one short string: the weights, the kernel tier and the
weight formats an engine runs, and (for one generation) the decoding chain.

    engine_fingerprint(engine)                 -> "tf-3f9c0a1be27d44e1"  (same weights + kernels)
    engine_fingerprint(engine, chain="...")    -> another id: also the strategy's chain
    fingerprint_parts(engine)                  -> the pieces hashed, JSON-able

The weights are hashed once per engine (every parameter and buffer of the loaded HF
model, by name, dtype, shape and bytes: a different checkpoint, file or conversion
gives another id) and kept on the engine. Two engines with the same id produce the
same tokens for the same prompt, settings and seed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_CONFIG_KEYS = ("runner", "device", "dtype", "quant", "head", "activations", "kernels")


def weights_digest(model) -> str:
    """sha256 over every tensor of ``model.state_dict()`` (name, dtype, shape, bytes), hex."""
    import torch

    h = hashlib.sha256()
    with torch.inference_mode():
        for name, t in sorted(model.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
            # bytes as stored, whatever the dtype (bf16 has no numpy twin)
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def fingerprint_parts(engine) -> dict[str, Any]:
    """The pieces ``engine_fingerprint`` hashes: the weights' digest and what runs them."""
    digest = getattr(engine, "_weights_digest", None)
    if digest is None:
        digest = weights_digest(engine.model)
        engine._weights_digest = digest  # hashing 135M parameters takes about a second: once
    config = engine.config.as_dict()
    return {"weights_sha256": digest, **{k: config[k] for k in _CONFIG_KEYS}}


def engine_fingerprint(engine, chain: str | None = None) -> str:
    """``tf-`` and 16 hex digits naming the weights, kernel tier and weight formats of
    ``engine`` (and ``chain``, a strategy's printed chain, when given)."""
    text = json.dumps(fingerprint_parts(engine), sort_keys=True)
    base = "tf-" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return base if chain is None else with_chain(base, chain)


def with_chain(fingerprint: str, chain: str) -> str:
    """An engine's fingerprint and a strategy's chain, hashed together: one generation's id."""
    return "tf-" + hashlib.sha256(f"{fingerprint}|{chain}".encode()).hexdigest()[:16]
