"""`KVStore`: the key/value cache of one transformer stack, with a length per row.

Rows of a code level close segments at different steps, so each row has its own length. Slots
are in row order (index t holds the key of the row's t-th input, padding included); `key_valid`
masks padding slots. A new position of row b is written at slot `length[b]`. A windowed module
reads only the last W slots of each row (O(W) per step); the top LM reads every slot.

Worked example, W = 3, one row with length 5 before a step: the new key goes to slot 5 and the
query reads slots 3, 4, 5 (the same keys the whole-row sliding window gives position 5). A step is
`open_step` (the slots, once per stack), then `write` and `read` per layer, then `advance`. A step of
several rows gathers W slots per row (those before slot 0 masked); a step of one row (the codec, a
single stream) reads views of the slots that exist (W' = min(W, slot + 1)), unmasked unless padded.
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
        self._step = None  # what `open_step` indexed for the step in progress (several rows)
        self._row_step = None  # ... for a one-row step: (row, slot, first slot read, mask or None)

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

    def open_step(self, rows: torch.Tensor, window: int | None) -> None:
        """Before a step's layers: make room for one new slot per row of `rows`, mark it valid, and
        index the slots the step reads, which are the same for every layer (computed once, not per
        layer): the last `window` slots up to the new one, or every slot (`window` None)."""
        if len(rows) == 1:  # one row (the codec, a single stream): views of the row, no gathers
            row = int(rows[0])
            slot = int(self.length[row])
            self._grow(slot + 1)
            self.key_valid[row, slot] = True
            lo = 0 if window is None else max(0, slot + 1 - window)
            valid = self.key_valid[row : row + 1, lo : slot + 1]  # (1, W')
            self._row_step = (row, slot, lo, None if bool(valid.all()) else valid)
            return
        self._row_step = None
        self._grow(int(self.length[rows].max()) + 1)
        slot = self.length[rows]  # (B',) where the new position goes
        self.key_valid[rows, slot] = True
        end = slot + 1  # (B',) slots [0, end) exist, the newest is end - 1
        if window is None:
            span = int(end.max())
            idx = torch.arange(span, device=end.device)[None, :].expand(len(rows), span)  # (B', W')
            inside = idx < end[:, None]
        else:
            idx = end[:, None] - window + torch.arange(window, device=end.device)[None, :]  # (B', W)
            inside = idx >= 0
            idx = idx.clamp(min=0)
        r = rows[:, None]  # (B', 1): index only the W' slots read, never a row's whole cache
        self._step = (rows, slot, r, idx, inside & self.key_valid[r, idx])  # mask (B', W')

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the new position's key/value (B', H, 1, hd) of the open step's rows in their new slot."""
        if self._row_step is not None:
            row, slot = self._row_step[:2]
            self.keys[layer][row, :, slot] = k[0, :, 0].to(self.keys[layer].dtype)  # (H, hd)
            self.values[layer][row, :, slot] = v[0, :, 0].to(self.values[layer].dtype)
            return
        rows, slot = self._step[:2]
        self.keys[layer][rows, :, slot] = k[:, :, 0].to(self.keys[layer].dtype)
        self.values[layer][rows, :, slot] = v[:, :, 0].to(self.values[layer].dtype)

    def read(self, layer: int):
        """Keys, values (B', H, W', hd) and a key mask (B', W') for the open step's newest positions.
        A one-row step reads only the slots that exist, as views of the cache (W' = min(W, slot + 1)),
        and its mask is None when every slot read is valid (no padding)."""
        if self._row_step is not None:
            row, slot, lo, mask = self._row_step
            keys = self.keys[layer][row : row + 1, :, lo : slot + 1]  # (1, H, W', hd)
            return keys, self.values[layer][row : row + 1, :, lo : slot + 1], mask
        _, _, r, idx, mask = self._step
        keys = self.keys[layer][r, :, idx].transpose(1, 2)  # (B', W', H, hd) -> (B', H, W', hd)
        values = self.values[layer][r, :, idx].transpose(1, 2)
        return keys, values, mask

    def advance(self, rows: torch.Tensor) -> None:
        """After a step's layers: the new slot of each row of `rows` is filled."""
        self.length[rows] += 1
        self.n_valid[rows] += 1
        self._step = self._row_step = None

    def reorder(self, index: torch.Tensor) -> None:
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        for name in ("key_valid", "length", "n_valid"):
            setattr(self, name, getattr(self, name).index_select(0, index))
