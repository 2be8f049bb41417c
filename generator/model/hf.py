"""``HFRunner``: the slot interface (``runner.Runner``) over a ``transformers`` causal LM,
one ``DynamicCache`` per slot. Slow, but the reference, and the fallback for architectures
``FastLlama`` does not cover."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from .runner import SlotList, Slots


class HFRunner(Slots):
    """The same slot interface over a ``transformers`` model, one ``DynamicCache``
    per slot (the reference, and the fallback for non-Llama architectures)."""

    def __init__(self, model, num_slots: int = 8, max_len: int | None = None):
        super().__init__(num_slots, max_len or int(getattr(model.config, "max_position_embeddings", 2048)))
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.compiled = False
        self.caches: dict[int, object] = {}

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def prefill(self, slot: int, ids: Sequence[int] | torch.Tensor, start: int = 0) -> torch.Tensor:
        """Run ``ids`` into ``slot`` (``start`` must be 0 or the slot's length)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(1, -1)
        if start == 0:
            self.caches[slot] = self._new_cache()
        elif start != self.lengths[slot]:
            raise ValueError("HFRunner can only append to a slot (start == its length)")
        self.lengths[slot] = start
        self._check_room(slot, ids.shape[1])
        self.forward_calls += 1
        out = self.model(input_ids=ids, cache=self.caches[slot], use_cache=True, logits_to_keep=1)
        self.lengths[slot] += ids.shape[1]
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def all_logits(self, slot: int, ids: Sequence[int]) -> torch.Tensor:
        """Logits of every position ``[T, V]`` of ``ids`` written into ``slot`` (scoring)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(1, -1)
        self.caches[slot] = self._new_cache()
        self.forward_calls += 1
        out = self.model(input_ids=ids, cache=self.caches[slot], use_cache=True)
        self.lengths[slot] = ids.shape[1]
        return out.logits[0].float()

    @torch.inference_mode()
    def decode(self, slots: Sequence[int], token_ids: torch.Tensor) -> torch.Tensor:
        """One token per slot; rows run one after another (each has its own cache)."""
        self.forward_calls += 1
        rows = []
        for i, s in enumerate(slots):
            out = self.model(input_ids=token_ids.view(-1)[i: i + 1].view(1, 1), cache=self.caches[s], use_cache=True)
            rows.append(out.logits[:, -1, :].float())
            self.lengths[s] += 1
        return torch.cat(rows)

    def copy_slots(self, src: SlotList, dst: SlotList, length: int | None = None) -> None:
        src_list = src.tolist() if isinstance(src, torch.Tensor) else list(src)
        dst_list = dst.tolist() if isinstance(dst, torch.Tensor) else list(dst)
        copies = [(copy.deepcopy(self.caches[s]), self.lengths[s]) for s in src_list]
        for d, (cache, n) in zip(dst_list, copies):
            self.caches[d], self.lengths[d] = cache, n
