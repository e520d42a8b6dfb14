"""`KVStore`: the key/value cache of one transformer stack, with a length per row.

Rows of a code level close segments at different steps, so each row has its own length. Slots
are in row order (index t holds the key of the row's t-th input, padding included); `key_valid`
masks padding slots. A new position of row b is written at slot `length[b]`. A windowed module
reads only the last W slots of each row (O(W) per step); the top LM reads every slot.

Worked example, W = 3, one row with length 5 before a step: the new key goes to slot 5 and the
query reads slots 3, 4, 5 (the same keys the whole-row sliding window gives position 5).
Shape letters: B rows, H heads, C capacity, hd head size, W window.
"""

from __future__ import annotations

import torch

from .segmentation import last_real


class KVStore:
    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], key_valid: torch.Tensor):
        """From a whole-row forward: `kv` = one (keys, values) (B, H, T, hd) per layer; key_valid (B, T)."""
        self.keys = [k.detach() for k, _ in kv]  # per layer (B, H, C, hd)
        self.values = [v.detach() for _, v in kv]
        self.key_valid = key_valid.clone()  # (B, C)
        self.length = last_real(key_valid) + 1  # (B,) next slot to write
        self.length = torch.where(key_valid.any(1), self.length, torch.zeros_like(self.length))
        self.n_valid = key_valid.long().sum(1)  # (B,) real inputs so far = the next rotary position

    @property
    def capacity(self) -> int:
        return self.key_valid.shape[1]

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        extra = max(needed, 2 * self.capacity) - self.capacity
        self.keys = [torch.cat([k, k.new_zeros(*k.shape[:2], extra, k.shape[-1])], dim=2) for k in self.keys]
        self.values = [
            torch.cat([v, v.new_zeros(*v.shape[:2], extra, v.shape[-1])], dim=2) for v in self.values
        ]
        self.key_valid = torch.cat(
            [self.key_valid, self.key_valid.new_zeros(self.key_valid.shape[0], extra)], 1
        )

    def next_positions(self, rows: torch.Tensor) -> torch.Tensor:
        return self.n_valid[rows]  # (B',)

    def write(self, layer: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the new position's key/value (B', H, 1, hd) of `rows` at their current length."""
        if layer == 0:
            self._grow(int(self.length[rows].max()) + 1)
            self.key_valid[rows, self.length[rows]] = True
        slot = self.length[rows]  # (B',)
        self.keys[layer][rows, :, slot] = k[:, :, 0].to(self.keys[layer].dtype)
        self.values[layer][rows, :, slot] = v[:, :, 0].to(self.values[layer].dtype)

    def read(self, layer: int, rows: torch.Tensor, window: int | None):
        """Keys, values (B', H, W', hd) and a key mask (B', W') for the newest position of `rows`."""
        end = self.length[rows] + 1  # (B',) slots [0, end) exist, the newest is end - 1
        if window is None:
            span = int(end.max())
            idx = torch.arange(span, device=end.device)[None, :].expand(len(rows), span)  # (B', W')
            inside = idx < end[:, None]
        else:
            idx = end[:, None] - window + torch.arange(window, device=end.device)[None, :]  # (B', W)
            inside = idx >= 0
            idx = idx.clamp(min=0)
        r = rows[:, None]  # (B', 1): index only the W' slots read, never a row's whole cache
        mask = inside & self.key_valid[r, idx]  # (B', W')
        keys = self.keys[layer][r, :, idx].transpose(1, 2)  # (B', W', H, hd) -> (B', H, W', hd)
        values = self.values[layer][r, :, idx].transpose(1, 2)
        return keys, values, mask

    def advance(self, rows: torch.Tensor) -> None:
        self.length[rows] += 1
        self.n_valid[rows] += 1

    def reorder(self, index: torch.Tensor) -> None:
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        for name in ("key_valid", "length", "n_valid"):
            setattr(self, name, getattr(self, name).index_select(0, index))
