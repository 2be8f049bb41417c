"""The model side of the loop: slots of a KV cache, chunked prefill, one-token decode.

A runner owns a KV cache of ``num_slots`` rows, each up to ``max_len`` positions,
allocated once. A sequence lives in a slot; the engine, ``BatchGenerator`` and the
server talk to a runner only through ``Runner``:

    slots = runner.acquire(n)                  # reserve n free slots
    logits = runner.prefill(slot, ids)         # [1, V]; chunked, start=0 resets the slot
    logits = runner.decode(slots, token_ids)   # [B, V]; each row at its own position
    runner.copy_slots(src, dst, length)        # beams and n > 1 forks
    runner.release(slots)

``FastRunner`` (here) runs ``llama.FastLlama`` (static cache, compiled decode step,
int4/int8/bf16/fp32 weights); ``hf.HFRunner`` drives any ``transformers`` causal LM
(the reference, and the fallback for other architectures). ``Slots`` is the host-side
bookkeeping both (and the tests' doubles) share.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Sequence
from typing import Callable, Protocol, runtime_checkable

import torch

from .cuda import BucketedDecode, host_ints

SlotList = Sequence[int] | torch.Tensor


class SlotsExhausted(RuntimeError):
    """Every KV-cache slot is in use."""


def _own_code(method):
    """``method`` bound to a fresh copy of its code object. Dynamo keeps compiled code per
    code object, and the compiled step skips its guards on the model's modules, so two
    models in one process (say, two head formats in a benchmark) must not share one."""
    func = method.__func__
    code = func.__code__.replace(co_name=f"{func.__name__}_{id(method.__self__):x}")
    return types.MethodType(types.FunctionType(code, func.__globals__, code.co_name, func.__defaults__,
                                               func.__closure__), method.__self__)


@runtime_checkable
class Runner(Protocol):
    """What the engine, ``BatchGenerator`` and the server use of a runner. (The real
    runners also score a whole text, ``all_logits(slot, ids) -> [T, V]``, for evaluation.)"""

    num_slots: int
    max_len: int  # positions per slot
    prefill_chunk: int  # most prompt tokens one forward takes (the batch's default budget)
    device: torch.device
    dtype: torch.dtype  # the activations'
    compiled: bool  # whether decode runs a compiled step
    forward_calls: int  # forwards run so far (tests check when work happens)

    @property
    def free_count(self) -> int: ...

    def acquire(self, n: int = 1) -> list[int]: ...

    def release(self, slots: Sequence[int]) -> None: ...

    def length(self, slot: int) -> int: ...

    def prefill(self, slot: int, ids: Sequence[int] | torch.Tensor, start: int = 0) -> torch.Tensor: ...

    def prefill_many(self, slots: Sequence[int], id_lists: Sequence[Sequence[int]],
                     starts: Sequence[int]) -> torch.Tensor: ...

    def decode(self, slots: Sequence[int], token_ids: torch.Tensor) -> torch.Tensor: ...

    def copy_slots(self, src: SlotList, dst: SlotList, length: int | None = None) -> None: ...


class Slots:
    """Host-side bookkeeping shared by the runners: free slots and each slot's length.
    A runner subclasses it and adds the model side (``prefill``, ``decode``, ...)."""

    prefill_chunk = 256
    compiled = False

    def __init__(self, num_slots: int, max_len: int):
        self.num_slots, self.max_len = num_slots, max_len
        self.lengths = [0] * num_slots  # host ints: positions never need a device read
        self._free = list(range(num_slots))
        self._lock = threading.Lock()
        self.forward_calls = 0  # tests use it to check when work happens

    def acquire(self, n: int = 1) -> list[int]:
        """Reserve ``n`` free slots (lowest first); raises ``SlotsExhausted``."""
        with self._lock:
            if n > len(self._free):
                raise SlotsExhausted(f"{n} KV-cache slot(s) needed, {len(self._free)} of {self.num_slots} free")
            taken, self._free = self._free[:n], self._free[n:]
        for s in taken:
            self.lengths[s] = 0
        return taken

    def release(self, slots: Sequence[int]) -> None:
        """Give slots back; their cache contents become garbage."""
        with self._lock:
            for s in slots:
                if s not in self._free:
                    self._free.append(s)
            self._free.sort()

    @property
    def free_count(self) -> int:
        """Slots free now (the batch scheduler admits a request only when its rows fit)."""
        return len(self._free)

    def length(self, slot: int) -> int:
        """Tokens held in ``slot`` (the position the next token gets)."""
        return self.lengths[slot]

    def prefill_many(self, slots: Sequence[int], id_lists: Sequence[Sequence[int]],
                     starts: Sequence[int]) -> torch.Tensor:
        """``prefill(slots[i], id_lists[i], starts[i])`` for every i; the last position's
        logits of each, ``[n, V]``. This generic form runs them one after another."""
        return torch.cat([self.prefill(s, ids, start=st) for s, ids, st in zip(slots, id_lists, starts)])

    def all_logits_many(self, slots: Sequence[int], id_lists: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """``all_logits(slots[i], id_lists[i])`` for every i (scoring several texts): the
        logits of every position of each, ``[T_i, V]``. This generic form runs them one
        after another; ``FastRunner`` writes them all in one forward."""
        return [self.all_logits(s, ids) for s, ids in zip(slots, id_lists)]

    def _check_room(self, slot: int, extra: int) -> None:
        if self.lengths[slot] + extra > self.max_len:
            raise ValueError(f"slot {slot} would hold {self.lengths[slot] + extra} tokens, "
                             f"more than the cache's {self.max_len}")


class FastRunner(Slots):
    """Slots over ``FastLlama``'s static cache; the decode step optionally compiled."""

    # The compiled step reads the cache up to the longest row rounded up to this, so its
    # static shapes are rebuilt only when a row crosses a bucket.
    KV_BUCKET = 256

    def __init__(self, model, compile: bool = False, prefill_chunk: int = 256, graphs: bool = False):
        super().__init__(model.num_slots, model.max_len)
        self.model = model
        self.device = model.embed.device
        self.dtype = model.dtype
        self.prefill_chunk = int(prefill_chunk)
        if self.prefill_chunk < 1:
            raise ValueError("prefill_chunk must be >= 1")
        self.compiled = bool(compile)
        # Called as notice(text) before and after each new compiled shape (the CLI prints
        # it on stderr: a first compile takes tens of seconds, a cached one a few).
        self.compile_notice: Callable[[str], None] | None = None
        self._shapes_seen: set[tuple[int, int]] = set()
        self._step = model.decode_step
        if self.compiled:
            # Static shapes (a graph per batch size and cache bucket), and no guards on the
            # weights: they never change after load (1.4 -> 0.3 ms a step).
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self._step = torch.compile(_own_code(model.fused_decode_step), fullgraph=True, dynamic=False, options={
                "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
        # CUDA: the step (compiled or not) replayed from graphs, every batch bucket captured now.
        self.graphs = BucketedDecode(model, self.KV_BUCKET, step=self._step if self.compiled else None) \
            if graphs else None
        if self.graphs is not None:
            self.graphs.warm()

    @torch.inference_mode()
    def prefill(self, slot: int, ids: Sequence[int] | torch.Tensor, start: int = 0) -> torch.Tensor:
        """Write ``ids`` into ``slot`` from position ``start`` (0: a fresh sequence), in
        chunks of at most ``prefill_chunk`` tokens; return the last position's logits ``[1, V]``.
        A scheduler can interleave other work by calling this once per chunk with ``start``."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(-1)
        if start > self.lengths[slot]:
            raise ValueError(f"prefill start {start} is past slot {slot}'s length {self.lengths[slot]}")
        self.lengths[slot] = start
        self._check_room(slot, ids.numel())
        self.forward_calls += 1
        if self.token_rows and ids.numel():
            return self._prefill_rows([slot], [ids.tolist()], [start])
        slot_t = torch.tensor([slot], device=self.device)
        logits = None
        for c0 in range(0, ids.numel(), self.prefill_chunk):
            chunk = ids[c0: c0 + self.prefill_chunk]
            pos0 = start + c0
            end = pos0 + chunk.numel()
            positions = torch.arange(pos0, end, device=self.device)[None]
            kv_positions = torch.arange(end, device=self.device)
            logits = self.model(chunk[None], slot_t, positions, kv_positions, first_slot=slot)
        self.lengths[slot] = start + ids.numel()
        return logits

    @torch.inference_mode()
    def prefill_many(self, slots: Sequence[int], id_lists: Sequence[Sequence[int]],
                     starts: Sequence[int]) -> torch.Tensor:
        """Several prompts (or chunks of them) in ONE forward, a row each: shorter rows
        padded with tokens at the scratch position, each row's logits taken at its own
        last token. A burst of short prompts then costs one forward (and, with
        ``dense_prefill``, one large bf16 GEMM per weight) instead of one each."""
        slots, starts = [int(s) for s in slots], [int(s) for s in starts]
        id_lists = [[int(t) for t in ids] for ids in id_lists]
        if len(slots) == 1:
            return self.prefill(slots[0], id_lists[0], start=starts[0])
        if len(set(slots)) != len(slots):
            raise ValueError("prefill_many needs distinct slots")
        for s, ids, st in zip(slots, id_lists, starts):
            if st > self.lengths[s]:
                raise ValueError(f"prefill start {st} is past slot {s}'s length {self.lengths[s]}")
            self.lengths[s] = st
            self._check_room(s, len(ids))
        self.forward_calls += 1
        if self.token_rows:
            return self._prefill_rows(slots, id_lists, starts)
        out: list[torch.Tensor | None] = [None] * len(slots)
        for rows, parts, logits in self._padded_windows(slots, id_lists, starts, every_position=False):
            for r, i in enumerate(rows):
                out[i] = logits[r: r + 1]
        return torch.cat(out)

    def _padded_windows(self, slots: list[int], id_lists: list[list[int]], starts: list[int],
                        every_position: bool):
        """The padded form of a multi-prompt forward: column windows of at most
        ``prefill_chunk`` tokens, every row still going taking part, shorter rows padded
        with tokens at the scratch position. Yields ``(rows, parts, logits)`` per window:
        the rows' indices, their tokens in it, and each row's logits at its last token
        ``[R, V]`` (or at every position ``[R, W, V]``); the slots' lengths are set at the end."""
        for c0 in range(0, max(len(ids) for ids in id_lists), self.prefill_chunk):
            rows = [i for i, ids in enumerate(id_lists) if len(ids) > c0]
            parts = [id_lists[i][c0: c0 + self.prefill_chunk] for i in rows]
            width = max(len(p) for p in parts)
            tokens = torch.zeros(len(rows), width, dtype=torch.long)
            positions = torch.full((len(rows), width), self.max_len, dtype=torch.long)  # padding: scratch
            for r, (i, part) in enumerate(zip(rows, parts)):
                tokens[r, : len(part)] = torch.tensor(part, dtype=torch.long)
                positions[r, : len(part)] = torch.arange(starts[i] + c0, starts[i] + c0 + len(part))
            end = max(starts[i] + c0 + len(part) for i, part in zip(rows, parts))
            last_at = None if every_position else torch.tensor([len(p) - 1 for p in parts], device=self.device)
            yield rows, parts, self.model(tokens.to(self.device), torch.tensor([slots[i] for i in rows],
                                                                                device=self.device),
                                          positions.to(self.device), torch.arange(end, device=self.device),
                                          last_only=False, last_at=last_at)
        for s, ids, st in zip(slots, id_lists, starts):
            self.lengths[s] = st + len(ids)

    @property
    def token_rows(self) -> bool:
        """Whether prompts are written as one-token rows (``_prefill_rows``): see
        ``FastLlama.token_rows`` (our kernel tiers, and PyTorch's, with a bf16 cache)."""
        return self.model.token_rows

    def _prefill_rows(self, slots: list[int], id_lists: list[list[int]], starts: list[int]) -> torch.Tensor:
        """Prompts (or their next pieces) as one-token rows, no padding: token j of a prompt
        is a row at its slot and position, ``prefill_chunk`` rows a forward (``forward_rows``).
        Every token then goes through the arithmetic of a decode step (each op computes a row
        from that row alone; attention per row over its own prefix), so a prompt's cache and
        last logits are the same bits whether it is written whole, in chunks of any size,
        beside other prompts, or one token at a time by decode steps (docs/kernels.md,
        "Batch and chunk invariance"). A burst of 16 prompts of 6-13 tokens: 136 rows
        instead of 16 x 13 = 208 padded."""
        flat = [(s, st + j, t, i) for i, (s, ids, st) in enumerate(zip(slots, id_lists, starts))
                for j, t in enumerate(ids)]
        last = {i: k for k, (_, _, _, i) in enumerate(flat)}  # each prompt's last row
        out: list[torch.Tensor | None] = [None] * len(slots)
        for c0 in range(0, len(flat), self.prefill_chunk):
            piece = flat[c0: c0 + self.prefill_chunk]
            ends = [(i, k - c0) for i, k in last.items() if c0 <= k < c0 + len(piece)]
            # A piece where no prompt ends still runs the head on one row (its logits unused).
            logits = self.forward_rows([f[0] for f in piece], [f[1] for f in piece], [f[2] for f in piece],
                                        [r for _, r in ends] or [len(piece) - 1])
            for n, (i, _) in enumerate(ends):
                out[i] = logits[n: n + 1]
        for s, ids, st in zip(slots, id_lists, starts):
            self.lengths[s] = st + len(ids)
        return torch.cat(out)

    def forward_rows(self, rows: list[int], positions: list[int], tokens: list[int], keep: list[int]) -> torch.Tensor:
        """ONE forward of one-token rows (``rows``: slots, at ``positions``); the logits of the
        rows ``keep``. Each layer writes every row's key and value before any attends, so a
        row sees its prompt up to itself (and nothing after)."""
        dev = self.device
        return self.model.decode_step(torch.tensor(tokens, device=dev), torch.tensor(rows, device=dev),
                                      torch.tensor(positions, device=dev),
                                      torch.arange(max(positions) + 1, device=dev),
                                      keep=torch.tensor(keep, dtype=torch.long, device=dev))

    @torch.inference_mode()
    def all_logits(self, slot: int, ids: Sequence[int]) -> torch.Tensor:
        """Logits of every position ``[T, V]`` of ``ids`` written into ``slot`` (scoring)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(1, -1)
        self.lengths[slot] = 0
        self._check_room(slot, ids.shape[1])
        self.forward_calls += 1
        n = ids.shape[1]
        out = self.model(ids, torch.tensor([slot], device=self.device), torch.arange(n, device=self.device)[None],
                         torch.arange(n, device=self.device), last_only=False, first_slot=slot)
        self.lengths[slot] = n
        return out[0]

    @torch.inference_mode()
    def all_logits_many(self, slots: Sequence[int], id_lists: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Several texts scored in ONE forward (padded rows, as ``prefill_many``): the
        logits of every position of each, ``[T_i, V]`` float32."""
        slots, id_lists = [int(s) for s in slots], [[int(t) for t in ids] for ids in id_lists]
        if len(slots) == 1:
            return [self.all_logits(slots[0], id_lists[0])]
        if len(set(slots)) != len(slots):
            raise ValueError("all_logits_many needs distinct slots")
        for s, ids in zip(slots, id_lists):
            self.lengths[s] = 0
            self._check_room(s, len(ids))
        self.forward_calls += 1
        out: list[list[torch.Tensor]] = [[] for _ in slots]
        for rows, parts, logits in self._padded_windows(slots, id_lists, [0] * len(slots), every_position=True):
            for r, (i, part) in enumerate(zip(rows, parts)):
                out[i].append(logits[r, : len(part)])
        return [torch.cat(pieces) for pieces in out]

    @torch.inference_mode()
    def decode(self, slots: Sequence[int], token_ids: torch.Tensor) -> torch.Tensor:
        """One token for each of ``slots`` (``token_ids [B]``, on the device); each
        row goes at its own slot's next position. Returns float32 logits ``[B, V]``."""
        slots = [int(s) for s in slots]
        positions = [self.lengths[s] for s in slots]
        if max(positions) >= self.max_len:
            raise ValueError(f"a slot is full: the cache holds {self.max_len} tokens")
        self.forward_calls += 1
        token_ids = token_ids.view(-1)
        if self.graphs is not None:
            logits = self.graphs(slots, positions, token_ids)
        elif self.compiled:
            logits = self._compiled_decode(slots, positions, token_ids)
        else:
            logits = self._eager_decode(slots, positions, token_ids)
        for s in slots:
            self.lengths[s] += 1
        return logits

    def _eager_decode(self, slots: list[int], positions: list[int], token_ids: torch.Tensor) -> torch.Tensor:
        """Attention over exactly the longest row's prefix. When the slots lie close
        together, the batch becomes the whole slot range ``lo..hi`` (free slots inside it
        are padding rows at the scratch position, dropped before the head), so the model
        reads the cache through a view instead of gathering it."""
        dev = self.device
        kv_positions = torch.arange(max(positions) + 1, device=dev)
        lo, hi = min(slots), max(slots)
        span = hi - lo + 1
        if span > 2 * len(slots) or len(set(slots)) != len(slots):
            return self.model.decode_step(token_ids, host_ints(slots, dev), host_ints(positions, dev), kv_positions)
        at = [s - lo for s in slots]
        full_pos = [self.max_len] * span
        for i, p in zip(at, positions):
            full_pos[i] = p
        if at == list(range(span)):  # the slots are the range, in order: no padding rows
            tokens, keep = token_ids, None
        else:
            keep = host_ints(at, dev)
            tokens = torch.zeros(span, dtype=token_ids.dtype, device=dev).index_copy_(0, keep, token_ids)
        return self.model.decode_step(tokens, torch.arange(lo, hi + 1, device=dev),
                                      host_ints(full_pos, dev), kv_positions, first_slot=lo, keep=keep)

    def _compiled_decode(self, slots: list[int], positions: list[int], token_ids: torch.Tensor) -> torch.Tensor:
        """Static shapes for the compiled step: the cache read up to a bucket, gathered by slot."""
        kv_len = min(-(-(max(positions) + 1) // self.KV_BUCKET) * self.KV_BUCKET, self.max_len)
        slot_t = torch.tensor(slots, device=self.device)
        pos_t = torch.tensor(positions, device=self.device)
        kv_positions = torch.arange(kv_len, device=self.device)
        shape = (len(slots), kv_len)
        new_shape = shape not in self._shapes_seen
        self._shapes_seen.add(shape)
        if not new_shape or self.compile_notice is None:
            return self._step(token_ids, slot_t, pos_t, kv_positions)
        self.compile_notice(f"compiling the decode step for {shape[0]} row(s), {kv_len} cache positions "
                            "(tens of seconds the first time, a few once cached on disk)")
        t0 = time.perf_counter()
        logits = self._step(token_ids, slot_t, pos_t, kv_positions)
        self.compile_notice(f"compiled in {time.perf_counter() - t0:.1f} s")
        return logits

    @torch.inference_mode()
    def copy_slots(self, src: SlotList, dst: SlotList, length: int | None = None) -> None:
        """Slot ``dst[i]`` becomes a copy of slot ``src[i]`` (overlap is fine: a beam
        reorder is a permutation). ``src`` may be a device tensor (beam parents, no
        host read); then pass ``length``, the tokens to copy, held by every ``src``."""
        dst_list = dst.tolist() if isinstance(dst, torch.Tensor) else list(dst)
        if length is None:
            if isinstance(src, torch.Tensor):
                raise ValueError("copy_slots with a tensor src needs length")
            length = max(self.lengths[s] for s in src)
        src_t = torch.as_tensor(src, device=self.device)
        dst_t = torch.tensor(dst_list, device=self.device)
        self.model.copy_cache(src_t, dst_t, length)
        for d in dst_list:
            self.lengths[d] = length
