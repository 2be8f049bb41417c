"""The exact prefix cache: the KV of prompts (and outputs) already computed, kept in
blocks of ``BLOCK`` tokens outside the slot cache and found again by token ids.

    cache = PrefixCache.for_engine(runner, config)   # engine.prefix_cache
    hit, pinned = cache.admit(slot, ids)   # copies the longest cached prefix into slot
    ...prefill ids[hit:] from position hit...
    cache.insert(slot, ids)                # the slot's blocks kept for later requests
    cache.unpin(pinned)

A block is keyed by its parent block and its own token ids (16, or fewer for the
partial last block of a prompt or answer, which is a leaf), so the keys form a radix
tree of blocks: a block's KV depends on every token before it, and a key names exactly
those. A match is token-exact, not block-exact: after the whole blocks that match, the
first j positions of a child block serve any prompt whose next j tokens are that
block's first j (the KV of a position depends only on the tokens up to it), so a
shared system prompt that ends mid-block, or a chat whose last answer did, is reused
to its last token. Blocks live in tensors of their own, ``capacity`` of them
(the byte budget divided by a block's bytes), never in the slots: a finished
request's slot goes back to the pool at once, and the cache keeps only the
blocks it has room for (a slot parked whole would hold ``max_len`` positions).
When full, the least recently used leaf block that no request has pinned is
evicted; a chain is only ever cut from its end.

Exactness: with a bf16 CPU cache and int weights (our kernel tiers and PyTorch's)
every prompt token is a one-token row (``FastRunner._prefill_rows``), so its KV and
the last logits are the same bits whether the prompt is prefilled whole, in chunks,
beside others, or as cached blocks + the rest (docs/kernels.md, "Batch and chunk
invariance"). Where that does not hold (a float32 cache, float weights, dense prefill
copies, the transformers runner) the cache is off and ``status()["reason"]``
says why. Under ``--compile`` only prompts are kept: the compiled step's KV of
generated tokens is not claimed to be the bits a prefill writes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch

from . import kernels

BLOCK = 16  # tokens a block
AUTO_CAP_MB = 1024  # auto: a tenth of the machine's memory, at most this


def auto_mb() -> int:
    """The budget ``auto`` means: a tenth of physical memory, at most ``AUTO_CAP_MB``."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 256
    return int(min(AUTO_CAP_MB, total // 10 // 2**20))


class PrefixCache:
    """Blocks of KV keyed by token ids (module docstring). ``reason``: why it is off (None: on)."""

    def __init__(self, runner, budget_mb: int, reason: str | None = None, keep_generated: bool = True,
                 budget_bytes: int | None = None):
        self.runner = runner
        self.budget_mb = int(budget_mb)
        budget = self.budget_mb * 2**20 if budget_bytes is None else int(budget_bytes)
        self.keep_generated = keep_generated
        self.block_bytes = 0
        self.capacity = 0
        self._reason = reason
        model = None if reason else runner.model
        span = None if model is None else model.cache_span(0, 0, BLOCK)  # [layers, 2, kv_heads, BLOCK, head_dim]
        if model is not None and span is None:
            self._reason = "the model's layers do not share one cache tensor (FastLlama.kv)"
        elif model is not None:
            self.block_bytes = span.numel() * span.element_size()
            self.capacity = budget // self.block_bytes
            if self.capacity == 0:
                self._reason = f"a budget of {budget} bytes holds no block ({self.block_bytes} bytes)"
        self._model = model if self.capacity else None
        # Block b: every layer's keys and values of its 16 tokens, as cache_span lays them out.
        # torch.empty: pages are touched (and counted in RSS) only as blocks fill.
        self._blocks = torch.empty((self.capacity, *span.shape), dtype=span.dtype) if self._model else None
        # the kernel tier the blocks were computed on (asked only when on: it builds the kernels)
        self._tier = self._signature() if self._reason is None else None
        self.clear()
        self.requests = self.hit_requests = self.prompt_tokens = self.cached_tokens = self.evictions = 0

    @classmethod
    def for_engine(cls, runner, config) -> "PrefixCache":
        """The cache an engine of ``config`` (a ``ResolvedConfig``) gets: off, with the reason,
        wherever a prompt's prefill is not the same bits however it is cut."""
        mb = int(config.prefix_cache_mb)
        reason = None
        if mb == 0:
            reason = "turned off (prefix_cache_mb 0)"
        elif config.runner != "fast":
            reason = "the transformers fallback runner: its prefill is not chunk-invariant"
        elif config.quant == "none" or config.head == "none":
            reason = "float weights: PyTorch's GEMM over a prompt's rows is not row-invariant (use int8/int4)"
        elif config.dense_prefill:
            reason = "--dense-prefill: prompt chunks multiply by the dense copies, not row-invariant"
        elif not runner.token_rows:
            reason = "prefill is not chunk-invariant here: it needs a bfloat16 CPU cache"
        return cls(runner, mb, reason, keep_generated=not runner.compiled)

    # -- state --------------------------------------------------------------
    def clear(self) -> None:
        """Forget every block."""
        self._free = list(range(self.capacity))[::-1]  # popped from the end: lowest first
        self._nodes: dict[tuple[int, tuple[int, ...]], int] = {}  # (parent or -1, ids) -> block
        self._key: list[tuple[int, tuple[int, ...]] | None] = [None] * self.capacity
        # parent or -1 -> its child blocks (whole and partial), by their first token
        self._kids: dict[int, dict[int, set[int]]] = {}
        self._pins = [0] * self.capacity
        self._lru: OrderedDict[int, None] = OrderedDict()  # blocks in use, least recently used first

    @staticmethod
    def _signature() -> str:
        return kernels.status()["tier"]

    @property
    def reason(self) -> str | None:
        """Why the cache is off now (None: on)."""
        if self._reason is None and not self.runner.token_rows:
            return "prefill is not chunk-invariant here now (prompts are not one-token rows)"
        return self._reason

    @property
    def enabled(self) -> bool:
        if self.reason is not None:
            return False
        if self._signature() != self._tier:  # another kernel tier rounds its own way: start over
            self.clear()
            self._tier = self._signature()
        return True

    @property
    def used_blocks(self) -> int:
        return len(self._lru)

    @property
    def used_bytes(self) -> int:
        return self.used_blocks * self.block_bytes

    def status(self) -> dict:
        """JSON-able: on/off and why, budget, use, counters (/health, --stats, benchmarks)."""
        return {"enabled": self.reason is None, "reason": self.reason, "budget_mb": self.budget_mb,
                "block_tokens": BLOCK, "block_bytes": self.block_bytes, "capacity_blocks": self.capacity,
                "used_blocks": self.used_blocks, "used_bytes": self.used_bytes, "requests": self.requests,
                "hit_requests": self.hit_requests, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "evictions": self.evictions,
                "keeps_generated": self.keep_generated}

    # -- lookups ------------------------------------------------------------
    def match(self, ids: Sequence[int]) -> list[int]:
        """The blocks of the longest cached prefix of ``ids`` made of whole blocks."""
        blocks, parent = [], -1
        for b0 in range(0, len(ids) - BLOCK + 1, BLOCK):
            block = self._nodes.get((parent, tuple(ids[b0: b0 + BLOCK])))
            if block is None:
                break
            blocks.append(block)
            parent = block
        return blocks

    def _part(self, parent: int, rest: Sequence[int]) -> tuple[int, int] | None:
        """``(block, tokens)``: the child of ``parent`` whose ids begin with the most of
        ``rest`` (at least one), whole or partial: a block's first j positions hold the KV of
        its first j tokens after the same prefix, whatever its other tokens are."""
        best = None
        for block in self._kids.get(parent, {}).get(rest[0], ()) if rest else ():
            ids = self._key[block][1]
            j = 0
            for a, b in zip(ids, rest):
                if a != b:
                    break
                j += 1
            if j and (best is None or j > best[1]):
                best = (block, j)
        return best

    def admit(self, slot: int, ids: Sequence[int], pins: int = 1) -> tuple[int, list[int]]:
        """Copy the longest cached prefix of ``ids`` into ``slot`` (its length set to it) and
        pin its blocks ``pins`` times: ``(tokens reused, blocks pinned)``. The prefix is the
        whole blocks that match, then as many tokens as match of one more block (a block
        kept partial, at the end of an earlier prompt or answer, or one where the prompts
        part). At least the last prompt token is left to prefill (its logits are the first
        token's)."""
        ids = list(ids)
        self.requests += 1
        self.prompt_tokens += len(ids)
        if not self.enabled:
            return 0, []
        blocks = self.match(ids)
        hit = len(blocks) * BLOCK
        part = self._part(blocks[-1] if blocks else -1, ids[hit: hit + BLOCK])
        if part is not None:
            blocks.append(part[0])
            hit += part[1]
        hit = min(hit, len(ids) - 1)
        if hit <= 0:
            return 0, []
        blocks = blocks[: -(-hit // BLOCK)]
        self._load(slot, blocks)  # whole blocks: positions past ``hit`` are written before they are read
        self.runner.lengths[slot] = hit
        self._touch(blocks)
        self.pin(blocks, pins)
        self.hit_requests += 1
        self.cached_tokens += hit
        return hit, blocks

    def note_shared(self, tokens: int) -> None:
        """A request that reused another's prefill of the same prompt (counted as a hit)."""
        self.requests += 1
        self.hit_requests += 1
        self.prompt_tokens += tokens
        self.cached_tokens += tokens

    def pin(self, blocks: Sequence[int], times: int = 1) -> None:
        for b in blocks:
            self._pins[b] += times

    def unpin(self, blocks: Sequence[int], times: int = 1) -> None:
        for b in blocks:
            self._pins[b] = max(0, self._pins[b] - times)

    # -- inserts ------------------------------------------------------------
    def insert(self, slot: int, ids: Sequence[int]) -> int:
        """Keep the blocks of ``ids``, whose KV ``slot`` holds at positions 0.. (a prompt just
        prefilled, or a finished row's prompt + output): its whole blocks, then its last
        partial block (fewer than ``BLOCK`` tokens: a leaf, never a parent) unless a block
        there already begins with those tokens. Blocks already cached are only touched.
        Returns the blocks added (fewer when every block left is pinned)."""
        if not self.enabled:
            return 0
        ids = list(ids)[: self.runner.length(slot)]
        path, parent, new = [], -1, []  # new: (block, first position, tokens)
        try:
            for b0 in range(0, len(ids), BLOCK):
                piece = tuple(ids[b0: b0 + BLOCK])
                block = self._nodes.get((parent, piece))
                if block is None and len(piece) < BLOCK:
                    have = self._part(parent, piece)
                    block = have[0] if have is not None and have[1] == len(piece) else None
                if block is None:
                    block = self._take()
                    if block is None:
                        break
                    self._nodes[(parent, piece)] = block
                    self._key[block] = (parent, piece)
                    self._kids.setdefault(parent, {}).setdefault(piece[0], set()).add(block)
                    new.append((block, b0, len(piece)))
                path.append(block)
                self._touch([block])
                self.pin([block])  # the chain being extended is never evicted under it
                parent = block
            if new:
                self._store(slot, new)
        finally:
            self.unpin(path)
        return len(new)

    def _take(self) -> int | None:
        """A free block, or the least recently used unpinned leaf evicted; None if none."""
        if self._free:
            return self._free.pop()
        for block in self._lru:
            if not self._kids.get(block) and self._pins[block] == 0:
                break
        else:
            return None
        key = self._key[block]
        del self._nodes[key]
        del self._lru[block]
        self._kids.pop(block, None)
        kids = self._kids[key[0]]
        kids[key[1][0]].discard(block)
        if not kids[key[1][0]]:
            del kids[key[1][0]]
            if not kids:
                del self._kids[key[0]]
        self._key[block] = None
        self.evictions += 1
        return block

    def _touch(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            self._lru[b] = None
            self._lru.move_to_end(b)

    # -- copies between the slot cache and the blocks -------------------------
    # A block of all layers is one view of the model's cache tensor (FastLlama.cache_span), so
    # a block is one copy: 45-60 us for 16 tokens of the default model's 30 layers, where two
    # index_copy_ calls a layer took 0.9-1.2 ms (measured: one thread, a busy 2-core host).
    @torch.inference_mode()
    def _store(self, slot: int, pieces: list[tuple[int, int, int]]) -> None:
        """``pieces``: (block, first position, tokens) of the slot, in order."""
        span = self._model.cache_span(slot, pieces[0][1], pieces[-1][1] + pieces[-1][2])
        at = pieces[0][1]
        for b, pos0, n in pieces:
            self._blocks[b, :, :, :, :n].copy_(span[:, :, :, pos0 - at: pos0 - at + n])

    @torch.inference_mode()
    def _load(self, slot: int, blocks: list[int]) -> None:
        span = self._model.cache_span(slot, 0, len(blocks) * BLOCK)
        for j, b in enumerate(blocks):
            span[:, :, :, j * BLOCK: (j + 1) * BLOCK].copy_(self._blocks[b])


class BatchPrefix:
    """A ``BatchGenerator``'s side of the engine's prefix cache: which rows pinned which
    blocks and how many prompt tokens each reused (``cached(handle)``). Every method is a
    no-op when the engine has no cache or it is off."""

    def __init__(self, cache: PrefixCache | None, runner):
        self.cache = cache
        self.runner = runner
        self._pinned: dict[int, list[int]] = {}
        self._cached: dict[int, int] = {}

    @property
    def on(self) -> bool:
        return self.cache is not None and self.cache.enabled

    def cached(self, handle: int) -> int:
        """Prompt tokens the row's request did not prefill (``cached_tokens`` in usage)."""
        return self._cached.get(handle, 0)

    def join_twin(self, prefills: list, ids: list[int], rows: list, slots: list[int]) -> bool:
        """A prompt identical to one still waiting to be written (the page's columns, several
        requests of one prompt at once) rides on it: one prefill, copied to its slots."""
        if not self.on or any(r.search is not None for r in rows):
            return False
        twin = next((pf for pf in prefills if pf.ids == ids), None)
        if twin is None:
            return False
        twin.rows += rows
        twin.targets += slots
        for r in rows:
            self._cached[r.handle] = len(ids)
        self.cache.note_shared(len(ids))
        return True

    def admit(self, pf):
        """Copy the cached prefix of a new prompt into its slot (``pf.written``: the tokens
        already there); returns ``pf``."""
        if self.cache is None:
            return pf
        hit, blocks = self.cache.admit(pf.slot, pf.ids, pins=len(pf.rows))
        for r in pf.rows:
            self._pinned[r.handle] = blocks
            self._cached[r.handle] = hit
        pf.written = hit
        return pf

    def prompt_done(self, pf) -> None:
        """A prompt is written: keep its blocks for the requests that follow."""
        if self.on:
            self.cache.insert(pf.slot, pf.ids)

    def leave(self, row, finished: bool) -> None:
        """A row leaves (before its slots go back): a finished sampled row's prompt + output
        is kept; its pins are dropped."""
        self._cached.pop(row.handle, None)
        blocks = self._pinned.pop(row.handle, None)
        if self.cache is None:
            return
        if finished and row.state is not None and self.cache.keep_generated and self.on:
            self.cache.insert(row.slots[0], row.state.history)
        if blocks:
            self.cache.unpin(blocks)
