"""A Llama forward written for generation: static slot KV cache, fused projections,
weights in any format of ``weights/`` (built from one ``ResolvedConfig``).

One function, ``forward``, serves both prefill (one slot, T tokens) and decode
(B slots, one token each, every row at its own position). Each layer owns its
cache ``[slots, kv_heads, >= max_len + 1, head_dim]``, allocated once (one buffer per
layer, so the compiled step updates it in place instead of copying a shared
buffer; position ``max_len`` is scratch for padding rows). Attention reads only the
first ``kv_len`` positions, so a step costs what the longest live row needs, not
``max_len``. When the rows are consecutive cache slots (``first_slot``), attention
reads the cache through a view, in the layout the matmul wants, with no copy: at 16
rows, gathering and transposing the cache cost 17 ms of a 75 ms step.

The float32 format reproduces ``transformers``' ``LlamaForCausalLM`` (eager
attention) closely enough that greedy and beam ids match ``generate()``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import nn

from .. import kernels
from ..weights.formats import HEAD_DENSE_MIN_ROWS, DenseLinear, Int4Linear, Int8Linear, make_linear
from ..weights.gguf import GGUFQ4Source
from .attention import cached_attention

SUPPORTED_MODEL_TYPES = ("llama",)
# A one-token step on PyTorch's attention reads the cache up to a multiple of STEP_KV_ROUND
# positions, at least MIN_STEP_KV (see ``forward``); the cache is allocated to fit.
MIN_STEP_KV, STEP_KV_ROUND = 64, 8


def step_kv_len(kv_len: int) -> int:
    """Cache positions a one-token step on PyTorch's attention reads for ``kv_len`` visible ones."""
    return max(MIN_STEP_KV, -(-kv_len // STEP_KV_ROUND) * STEP_KV_ROUND)


def supports(model) -> bool:
    """Whether ``FastLlama`` can run this HF model (plain Llama, no biases, default RoPE)."""
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    return (getattr(cfg, "model_type", None) in SUPPORTED_MODEL_TYPES
            and not getattr(cfg, "attention_bias", False) and not getattr(cfg, "mlp_bias", False)
            and rope.get("rope_type", "default") == "default" and getattr(cfg, "hidden_act", "silu") == "silu")


class _Fused(NamedTuple):
    """``kernels.decode_layers``' per-layer arguments, and what they were gathered from."""

    weights: list | None  # None: the op does not cover this model
    modes: list | None
    caches: list | None
    k_cache: torch.Tensor | None  # the first layer's cache and qkv codes when gathered
    codes: torch.Tensor | None
    max_rows: float  # steps of this many rows or more run the loop (a dense copy takes over)
    dense_changes: int


class Layer(nn.Module):
    def __init__(self, qkv, o, gate_up, down, attn_norm, mlp_norm):
        super().__init__()
        self.qkv, self.o, self.gate_up, self.down = qkv, o, gate_up, down
        self.register_buffer("attn_norm", attn_norm)
        self.register_buffer("mlp_norm", mlp_norm)

    def use_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """This layer's keys and values ``[slots, kv_heads, positions, head_dim]``: views of the
        model's one cache tensor (``FastLlama.kv``)."""
        self.register_buffer("k_cache", k_cache, persistent=False)
        self.register_buffer("v_cache", v_cache, persistent=False)


class FastLlama(nn.Module):
    """Llama weights in one format plus a static KV cache of ``num_slots x max_len``."""

    def __init__(self, config, embed: torch.Tensor, layers: list[Layer], final_norm: torch.Tensor,
                 lm_head: nn.Module, dtype: torch.dtype, num_slots: int, max_len: int):
        super().__init__()
        self.dtype = dtype
        self.activations = "bf16"  # what the int4 layers multiply by (from_hf sets it)
        self.n_head = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_head
        self.eps = float(config.rms_norm_eps)
        self.vocab_size = config.vocab_size
        self.num_slots, self.max_len = num_slots, max_len
        self.register_buffer("embed", embed.to(dtype).contiguous())
        self.layers = nn.ModuleList(layers)
        self.register_buffer("final_norm", final_norm.float())
        self.lm_head = lm_head
        # RoPE as transformers computes it: float32 angles, cos/sin cast to the activations' dtype.
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))
        angles = torch.arange(max_len + 1).float()[:, None] * inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        device = self.embed.device  # the tables are computed on the CPU: the same bits on every device
        self.register_buffer("rope_cos", angles.cos().to(device=device, dtype=dtype))
        # rotate_half(x) * sin == roll(x, D/2) * sin_signed, with the first half's sign
        # moved into the table (the same products, bit for bit): one op instead of four.
        half = self.head_dim // 2
        sin = angles.sin()
        self.register_buffer("rope_sin", torch.cat((-sin[:, :half], sin[:, half:]), dim=-1).to(device=device,
                                                                                               dtype=dtype))
        # Every layer's keys and values are views of ONE tensor [layers, 2, slots, kv_heads,
        # positions, head_dim] (each view contiguous, as the kernels want), so a slot's span
        # of every layer is one view too (``cache_span``): the prefix cache copies a block of
        # all layers in one op instead of two per layer. + 1 position: the scratch cell of
        # padding rows; rounded up for the step's masked tail (``step_kv_len``).
        self.kv = torch.zeros((len(layers), 2, num_slots, self.n_kv, step_kv_len(max_len + 1), self.head_dim),
                              dtype=dtype, device=device)
        for i, layer in enumerate(layers):
            layer.use_cache(self.kv[i, 0], self.kv[i, 1])
        # Our RoPE + cache-write and attention ops take a bf16 CPU cache with head_dim % 16.
        self._cache_fits_kernels = (dtype == torch.bfloat16 and self.embed.device.type == "cpu"
                                    and self.head_dim % 16 == 0)
        # Eager one-token steps run every layer in one op of ours (kernels.decode_layers) where
        # it covers the weights; False (or TOKENFLOW_FUSED_STEP=0) keeps the per-op loop below,
        # which gives the same bits (tests compare them; benchmarks A/B them).
        self.fuse_layers = os.environ.get("TOKENFLOW_FUSED_STEP", "1").strip() != "0"
        self._fused: _Fused | None = None  # decode_layers' arguments, gathered on first use

    # -- building -----------------------------------------------------------
    @classmethod
    def from_hf(cls, model, config) -> "FastLlama":
        """Take the weights of an HF ``LlamaForCausalLM`` in the formats ``config`` (a
        ``generator.config.ResolvedConfig``, which imports this module) settled: ``quant`` for the body (with ``int4`` and a GGUF whose
        projections are Q4_1, the int4 codes come from the GGUF's blocks), ``head`` for the
        output head (int8 under ``auto``: the GGUF keeps it in 8 bits, Q8_0), ``activations``
        for what int layers multiply by, and ``dense_prefill``: quantized layers also keep a
        bf16 copy of the weights their kernel computes with, used for prompt chunks of
        ``formats.DENSE_MIN_ROWS`` tokens or more (prefill about 2x faster; +214 MB for the
        default model; a second rounding, so greedy agreement with float32 drops: docs/performance.md)."""
        cfg = model.config
        quant, head, acts, dtype = config.quant, config.head, config.activations, config.torch_dtype
        sd = {k: v.detach() for k, v in model.state_dict().items()}
        gguf = None
        if quant == "int4" and config.gguf is not None:
            gguf = GGUFQ4Source(config.gguf, cfg.num_attention_heads, cfg.num_key_value_heads)
        layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."

            def linear(names: list[str]) -> nn.Module:
                if gguf is not None and all(gguf.has_q4_1(i, n) for n in names):
                    return Int4Linear.from_q4_1_codes(*gguf.stacked_codes(i, names), acts, device=config.device)
                w = torch.cat([sd[p + n + ".weight"] for n in names])
                # int8 activations for int4 layers only: with int8 weights quantized here from
                # float, greedy agreement with float32 halved (docs/performance.md, quality table).
                return make_linear(w, quant, dtype, acts if quant == "int4" else "bf16")

            layers.append(Layer(
                qkv=linear(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
                o=linear(["self_attn.o_proj"]),
                gate_up=linear(["mlp.gate_proj", "mlp.up_proj"]),
                down=linear(["mlp.down_proj"]),
                attn_norm=sd[p + "input_layernorm.weight"].float(),
                mlp_norm=sd[p + "post_attention_layernorm.weight"].float()))
        embed = sd["model.embed_tokens.weight"]
        head_w = sd.get("lm_head.weight", embed)
        # The output head (tied to the embedding; 8 bits, Q8_0, in the GGUF) is 28M of the
        # model's 135M weights: a quarter of the bytes a step reads at int8, a sixth at int4.
        lm_head = make_linear(head_w, head, dtype, acts)
        if isinstance(lm_head, Int8Linear) and lm_head.codes is None:
            # Without our int8 kernel, every batch multiplies by a bf16 copy of the same weights
            # (one kernel for every batch size: see HEAD_DENSE_MIN_ROWS).
            lm_head.keep_dense(min_rows=HEAD_DENSE_MIN_ROWS)
        if config.dense_prefill:
            for layer in layers:
                for lin in (layer.qkv, layer.o, layer.gate_up, layer.down):
                    if isinstance(lin, (Int4Linear, Int8Linear)):
                        lin.keep_dense()
        fast = cls(cfg, embed, layers, sd["model.norm.weight"], lm_head, dtype, config.num_slots, config.max_len)
        fast.activations = acts
        return fast

    # -- the forward --------------------------------------------------------
    @property
    def kernel_attention(self) -> bool:
        """Whether eager one-token steps attend with our kernels (``kernels.rope_write`` and
        ``decode_attention``, a path of their own) rather than PyTorch's attention below.
        Asked per forward, not fixed at load: a model packed with PyTorch's matmuls still
        attends with ours while they run (the kernel tests compare exactly that)."""
        return self._cache_fits_kernels and kernels.ours()

    @property
    def token_rows(self) -> bool:
        """Whether prompts are written as one-token rows (``FastRunner._prefill_rows``), the
        decode step's arithmetic, so prefill is chunk-invariant: wherever our attention kernel
        runs, and on PyTorch's kernels with a bf16 cache (there the step's float32 attention
        is one ``[group x D]`` block per row and KV head, the same bits at every row count,
        where a chunk's ``[group * T x D]`` block rounds by its shape: docs/kernels.md)."""
        return self.kernel_attention or (self.dtype == torch.bfloat16 and self.embed.device.type == "cpu"
                                         and not kernels.ours())

    def fused_layers(self, rows: int) -> tuple | None:
        """``(weights, modes, caches)`` for ``kernels.decode_layers`` when a one-token step of
        ``rows`` rows can run its layers in that one op: every projection an ``Int4Linear`` in
        our layout, fewer rows than any dense copy's ``dense_min_rows``, widths our kernels
        take. None otherwise (the eager loop runs). Gathered once (again if the cache or the
        weights were replaced, or a linear kept a dense copy, since)."""
        if not (self.fuse_layers and self.kernel_attention):
            return None
        first = self.layers[0] if len(self.layers) else None
        f = self._fused
        if (f is None or first is None or f.k_cache is not first.k_cache
                or f.codes is not getattr(first.qkv, "codes", None) or f.dense_changes != Int4Linear.dense_changes):
            f = self._fused = self._gather_fused()
        return (f.weights, f.modes, f.caches) if f.weights is not None and rows < f.max_rows else None

    def _gather_fused(self) -> _Fused:
        none = _Fused(None, None, None, None, None, 0, Int4Linear.dense_changes)
        if not len(self.layers) or self.embed.shape[1] % 16:
            return none
        weights, modes, caches, max_rows = [], [], [], float("inf")
        for layer in self.layers:
            projections = (layer.qkv, layer.o, layer.gate_up, layer.down)
            for lin in projections:
                if not isinstance(lin, Int4Linear) or lin.codes is None:
                    return none
                if getattr(lin, "dense", None) is not None:
                    max_rows = min(max_rows, lin.dense_min_rows)
            if layer.gate_up.out_features % 32:
                return none
            weights += [layer.attn_norm, layer.qkv.codes, layer.qkv.sz, layer.o.codes, layer.o.sz, layer.mlp_norm,
                        layer.gate_up.codes, layer.gate_up.sz, layer.down.codes, layer.down.sz]
            modes += [int(lin.activations == "int8") for lin in projections]
            caches += [layer.k_cache, layer.v_cache]
        first = self.layers[0]
        return _Fused(weights, modes, caches, first.k_cache, first.qkv.codes, max_rows, Int4Linear.dense_changes)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, weight, self.eps)  # as transformers' LlamaRMSNorm

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
        return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin_signed

    def forward(self, token_ids: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                kv_positions: torch.Tensor, last_only: bool = True, first_slot: int | None = None,
                keep: torch.Tensor | None = None, reduce_attention: bool = False,
                last_at: torch.Tensor | None = None) -> torch.Tensor:
        """Run ``token_ids [B, T]`` of cache rows ``slots [B]`` at ``positions [B, T]``;
        write their keys/values into the cache and attend over cache positions
        ``kv_positions`` (``arange(kv_len)``, every row's visible prefix). Returns
        float32 logits ``[B, V]`` of the last position (or ``[B, T, V]``).

        ``first_slot``: the rows are slots ``first_slot .. first_slot + B - 1`` in that
        order (attention reads a view of the cache instead of gathering it). A padding
        row (a free slot inside that range) sits at position ``max_len``, the scratch
        cell, and ``keep`` (row indices) drops it before the output head. ``last_at``
        ``[B]``: logits of each row's own position ``last_at[r]`` only (rows of a
        multi-prompt prefill end at different places; padding sits at the scratch cell).

        ``reduce_attention``: attention as products and sums instead of two matmuls, for
        the compiled one-token step only (the compiler fuses them into its own loops,
        where each tiny bmm is an external call of about 30 us, 60 a step; eagerly, it
        would materialize ``T x kv x head_dim`` products)."""
        b, t = token_ids.shape
        nh, nkv, hd = self.n_head, self.n_kv, self.head_dim
        group = nh // nkv
        x = self.embed[token_ids]  # (B, T, H)
        rows = slots[:, None].expand(b, t)
        read = slots if first_slot is None else slice(first_slot, first_slot + b)
        scaling = hd ** -0.5
        # Eager one-token steps attend with our kernel where it was chosen at load; the compiled
        # step keeps its fused loop (an A/B in one process: 168-172 tok/s either way).
        our_attention = t == 1 and not reduce_attention and self.kernel_attention
        if t == 1 and not reduce_attention and not our_attention:
            # PyTorch's float32 scores ([group x D] @ [D x kv]) round a cache position one way
            # inside a full 8-column block of MKL's and another in the remainder, and a bmm of
            # under ~400 products an entry runs a loop of PyTorch's own: so a step reads the
            # cache up to a multiple of 8 positions, at least 64 (the tail masked: exact
            # zeros), and a row's scores are the same bits whatever the longest row in its
            # batch (measured: docs/kernels.md, "Batch and chunk invariance").
            kv_positions = torch.arange(step_kv_len(kv_positions.shape[0]), device=kv_positions.device)
        kv_len = kv_positions.shape[0]
        layers = self.layers
        if our_attention:
            lengths = (positions[:, 0] + 1).clamp(max=kv_len)  # padding rows: any length works
            step_pos = positions[:, 0]
            fused = self.fused_layers(b)
            if fused is not None:  # every layer in one op: the loop's kernels, in its order
                x = kernels.decode_layers(x.view(b, -1), *fused, self.rope_cos, self.rope_sin, slots, step_pos,
                                          lengths, nh, self.eps, scaling).view(b, 1, -1)
                layers = ()
        else:
            cos = self.rope_cos[positions][:, :, None, :]  # (B, T, 1, D)
            sin = self.rope_sin[positions][:, :, None, :]
            # Row r, query t sees cache positions <= positions[r, t]: causal within a
            # chunk, the whole prefix before it, and nothing of a longer row's tail.
            visible = kv_positions[None, None, :] <= positions[:, :, None]  # (B, T, kv)
            mask = visible[:, None, None].expand(b, 1, group, t, kv_len).reshape(b, 1, group * t, kv_len)
        for layer in layers:
            h = self._norm(x, layer.attn_norm)
            qkv = layer.qkv(h)
            if our_attention:
                # RoPE and both cache writes in one op of ours (the same bits as the ops below),
                # then every row's attention straight from its cache slot, float32 inside: 9-45 us
                # a layer where SDPA took 53-635 and the float32 matmuls 45-130 (1-16 rows).
                q1 = kernels.rope_write(qkv.view(b, -1), self.rope_cos, self.rope_sin, layer.k_cache,
                                          layer.v_cache, slots, step_pos, nh)
                attn = kernels.decode_attention(q1, layer.k_cache, layer.v_cache, slots, lengths,
                                                  scaling).view(b, 1, nh * hd)
            else:
                # q and k heads side by side: one RoPE over both.
                qk = self._rope(qkv[..., : (nh + nkv) * hd].view(b, t, nh + nkv, hd), cos, sin)
                q, k = qk[:, :, :nh], qk[:, :, nh:]
                v = qkv[..., (nh + nkv) * hd:].view(b, t, nkv, hd)
                layer.k_cache[rows, :, positions] = k  # (B, T) cells <- (B, T, kv_heads, D)
                layer.v_cache[rows, :, positions] = v
                attn = cached_attention(layer.k_cache, layer.v_cache, q, read, kv_len, visible, mask,
                                        reduce_attention)
            x = x + layer.o(attn)
            h = self._norm(x, layer.mlp_norm)
            x = x + layer.down(kernels.silu_mul(layer.gate_up(h)))
        if last_at is not None:
            x = x[torch.arange(b, device=x.device), last_at]
        elif last_only:
            x = x[:, -1]
        if keep is not None:
            x = x[keep]
        x = self._norm(x, self.final_norm)
        return self.lm_head(x).float()

    def decode_step(self, token_ids: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                    kv_positions: torch.Tensor, first_slot: int | None = None,
                    keep: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row: ``token_ids [B]`` at ``positions [B]`` -> logits ``[B, V]``
        (``[len(keep), V]`` with ``keep``; see ``forward``)."""
        return self.forward(token_ids[:, None], slots, positions[:, None], kv_positions,
                            first_slot=first_slot, keep=keep)

    def fused_decode_step(self, token_ids: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                          kv_positions: torch.Tensor) -> torch.Tensor:
        """``decode_step`` written for ``torch.compile`` (attention as products and sums)."""
        return self.forward(token_ids[:, None], slots, positions[:, None], kv_positions, reduce_attention=True)

    def cache_span(self, slot: int, start: int, end: int) -> torch.Tensor | None:
        """Positions ``start:end`` of ``slot`` in every layer: a view ``[layers, 2 (k, v),
        kv_heads, end - start, head_dim]`` of ``kv``; None where the layers' caches are no
        longer views of it (a model moved or given other caches since)."""
        layers = self.layers
        if not len(layers) or any(t.data_ptr() != self.kv[i, j].data_ptr() for i in (0, len(layers) - 1)
                                  for j, t in enumerate((layers[i].k_cache, layers[i].v_cache))):
            return None
        return self.kv[:, :, slot, :, start:end]

    def copy_cache(self, src: torch.Tensor, dst: torch.Tensor, length: int) -> None:
        """Cache rows ``dst`` become copies of rows ``src`` (first ``length`` positions)."""
        # Indexing on the right makes a copy first, so src and dst may overlap (a permutation).
        for layer in self.layers:
            layer.k_cache[dst, :, :length] = layer.k_cache[src, :, :length]
            layer.v_cache[dst, :, :length] = layer.v_cache[src, :, :length]

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (all but the embedding table and the cache)."""
        total = 0
        for mod in list(self.layers) + [self.lm_head]:
            for name, buf in mod.named_buffers():
                # Skip the cache and the dense copies (prompt chunks read those, not a step).
                if not name.endswith("_cache") and name.split(".")[-1] != "dense":
                    total += buf.numel() * buf.element_size()
        return total


def linear_kinds(model: FastLlama) -> dict[str, int]:
    """How many linears of each kind the model holds (for tests and logs)."""
    kinds: dict[str, int] = {}
    for mod in model.modules():
        if isinstance(mod, (DenseLinear, Int8Linear, Int4Linear)):
            kinds[type(mod).__name__] = kinds.get(type(mod).__name__, 0) + 1
    return kinds
