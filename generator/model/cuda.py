"""The decode step on CUDA: replayed from CUDA graphs, fed by host copies that never wait.

    step = BucketedDecode(model, graphs=True)   # FastRunner builds it when config.graphs
    step.warm()                                 # capture every batch bucket at the first cache bucket
    logits = step(slots, positions, token_ids)  # [B, V] float32, B <= the largest bucket

A one-token step of the 135M model is about 1,300 small kernels (some 40 a layer); launched one
by one from Python they cost more than they compute (the GPU waits on the CPU). A CUDA graph records
them once and replays them in one launch. A graph has static shapes and static input
addresses, so a step is run at a *bucket*: the batch padded up to the next of ``BATCH_BUCKETS``
(padding rows write the scratch position, as ``FastRunner``'s own padding rows do) and the
cache read up to the next multiple of ``KV_BUCKET`` positions; the inputs are copied into
buffers the graph owns. Buckets that were not warmed at load are captured on first use.

Without ``graphs`` the same bucketed step runs eagerly: how the CPU tests check the padding
and the buffers, since capture itself needs a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def host_ints(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """``values`` as an int64 tensor on ``device``. On CUDA the copy comes from pinned memory
    without waiting (a pageable copy synchronizes the stream: a second host wait a step)."""
    t = torch.tensor(values, dtype=torch.long)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def gpu_name(device: torch.device | str) -> str | None:
    """The GPU's name (``NVIDIA H200``) when ``device`` is a CUDA device, else ``None``."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device)


class BucketedDecode:
    """One-token decode steps at static shapes (a bucket of rows, a bucket of cache
    positions), replayed from a CUDA graph per bucket pair when ``graphs``; ``step``: what a
    graph runs (default: the model's eager ``decode_step``)."""

    def __init__(self, model, kv_bucket: int = 256, graphs: bool = True, step=None):
        self.model = model
        # step(token_ids [B], slots [B], positions [B], kv_positions) -> logits [B, V]: the model's
        # eager one-token step, or the compiled one (compiled per bucket during the warm-up runs,
        # then its kernels captured like any others)
        self.step = step or model.decode_step
        self.device = model.embed.device
        self.kv_bucket = int(kv_bucket)
        self.graphs = bool(graphs)
        if self.graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, not {self.device.type}")
        self.buckets = tuple(b for b in BATCH_BUCKETS if b < model.num_slots) + (model.num_slots,)
        self._entries: dict[tuple[int, int], tuple] = {}  # (rows, kv) -> (inputs, graph, output)
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None
        self.captures = 0  # graphs captured so far (tests, the GPU script)

    def bucket(self, rows: int) -> int:
        """The smallest batch bucket that holds ``rows``."""
        for b in self.buckets:
            if b >= rows:
                return b
        raise ValueError(f"{rows} rows, more than the cache's {self.model.num_slots} slots")

    def kv_len(self, longest: int) -> int:
        """Cache positions a step reads when its longest row will hold ``longest`` tokens."""
        return min(-(-longest // self.kv_bucket) * self.kv_bucket, self.model.max_len)

    @torch.inference_mode()
    def warm(self, kv_lens: Sequence[int] | None = None) -> int:
        """Capture (or, eagerly, run once) every batch bucket at each of ``kv_lens`` (default:
        the first cache bucket); returns the number of bucket pairs ready."""
        for kv in kv_lens or (self.kv_len(1),):
            for b in self.buckets:
                self._entry(b, kv)
        return len(self._entries)

    def __call__(self, slots: Sequence[int], positions: Sequence[int], token_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V]`` of one token a row: ``token_ids [B]`` (on the device) at
        ``positions`` of ``slots`` (host ints)."""
        b = len(slots)
        rows = self.bucket(b)
        inputs, graph, out, fn = self._entry(rows, self.kv_len(max(positions) + 1))
        # Padding rows: slot 0 at the scratch position (written, never read).
        host = host_ints([*slots, *[0] * (rows - b), *positions, *[self.model.max_len] * (rows - b)], self.device)
        inputs[1:].copy_(host.view(2, rows))
        inputs[0, :b].copy_(token_ids.view(-1))
        if graph is None:
            return fn()[:b]
        graph.replay()
        return out[:b].clone()  # the next replay overwrites ``out``

    def _entry(self, rows: int, kv: int) -> tuple:
        key = (rows, kv)
        if key in self._entries:
            return self._entries[key]
        model = self.model
        # tokens, slots, positions; filled with padding rows, so warm-up runs write only scratch
        inputs = torch.zeros(3, rows, dtype=torch.long, device=self.device)
        inputs[2] = model.max_len
        kv_positions = torch.arange(kv, device=self.device)

        def fn() -> torch.Tensor:
            return self.step(inputs[0], inputs[1], inputs[2], kv_positions)

        graph = out = None
        if self.graphs:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graphs asks
                for _ in range(2):
                    fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = fn()
            self.captures += 1
        self._entries[key] = (inputs, graph, out, fn)
        return self._entries[key]
