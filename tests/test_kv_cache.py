"""`KVStore` index arithmetic on toy caches whose keys are their slot numbers.

Worked example (the module docstring's): W = 3, one row of length 5; the step writes slot 5 and the
query reads slots 3, 4, 5. With a left-padded row [pad, x0, x1] (length 3), the newest position goes
to slot 3, its rotary position is 2 (two real inputs before it), and the padding slot stays masked.
"""

from __future__ import annotations

import torch

from hier_ae.kv_cache import KVStore


def toy_store(valid: list[list[int]]) -> KVStore:
    """One layer, one head, head size 1; the key and value of slot t are t (padding: -1)."""
    key_valid = torch.tensor(valid, dtype=torch.bool)  # (B, T)
    B, T = key_valid.shape
    slots = torch.arange(T, dtype=torch.float).expand(B, T)
    k = torch.where(key_valid, slots, torch.full_like(slots, -1.0))[:, None, :, None]  # (B, 1, T, 1)
    return KVStore([(k, k.clone())], key_valid)


def step(store: KVStore, rows: torch.Tensor, value: float, window: int | None):
    """Open a step for `rows` and write `value` as layer 0's key and value of the new slots."""
    store.open_step(rows, window)
    store.write(0, torch.full((len(rows), 1, 1, 1), value), torch.full((len(rows), 1, 1, 1), value))
    return store


def test_windowed_read_after_a_write():
    store = toy_store([[1, 1, 1, 1, 1]])  # length 5
    rows = torch.tensor([0])
    assert store.next_positions(rows).tolist() == [5]
    step(store, rows, 5.0, window=3)
    keys, values, mask = store.read(0)
    assert keys[0, 0, :, 0].tolist() == [3.0, 4.0, 5.0] and mask is None  # one row, no padding: no mask
    store.advance(rows)
    assert store.length.tolist() == [6] and store.n_valid.tolist() == [6]
    assert store.capacity >= 6  # grew when the step opened


def test_left_padding_and_rows_of_different_lengths():
    store = toy_store([[0, 1, 1], [1, 1, 1]])  # row 0: pad x0 x1; row 1: x0 x1 x2
    assert store.length.tolist() == [3, 3] and store.n_valid.tolist() == [2, 3]
    rows = torch.tensor([0, 1])
    assert store.next_positions(rows).tolist() == [2, 3]  # rotary positions count real inputs only
    step(store, rows, 9.0, window=None)  # the top LM reads every slot
    keys, _, mask = store.read(0)
    assert keys[:, 0, :, 0].tolist() == [[-1.0, 1.0, 2.0, 9.0], [0.0, 1.0, 2.0, 9.0]]
    assert mask.tolist() == [[False, True, True, True], [True, True, True, True]]  # padding stays masked
    store.advance(rows)
    # only row 1 steps now (row 0's segment below did not close): lengths diverge
    step(store, torch.tensor([1]), 7.0, window=2)
    keys, _, mask = store.read(0)
    assert keys[0, 0, :, 0].tolist() == [9.0, 7.0] and mask is None
    store.advance(torch.tensor([1]))
    assert store.length.tolist() == [4, 5]


def test_window_before_the_start_is_masked_and_reorder_selects_rows():
    store = toy_store([[1], [1]])
    rows = torch.tensor([0, 1])
    step(store, rows, 1.0, window=4)  # slots -2, -1 do not exist
    _, _, mask = store.read(0)
    assert mask.tolist() == [[False, False, True, True]] * 2
    store.advance(rows)
    store.reorder(torch.tensor([1, 1, 0]))  # beam search: rows selected and repeated
    assert store.length.tolist() == [2, 2, 2] and store.keys[0].shape[0] == 3


def test_one_row_step_reads_what_a_batched_step_reads():
    """A one-row step (views) and the same row stepped beside another (gathers) read the same keys;
    the one-row read leaves out the slots before slot 0 and keeps padding masked."""
    for window in (None, 2, 4):
        alone, batched = toy_store([[0, 1, 1]]), toy_store([[0, 1, 1], [1, 1, 1]])
        step(alone, torch.tensor([0]), 5.0, window)
        step(batched, torch.tensor([0, 1]), 5.0, window)
        keys, values, mask = alone.read(0)
        b_keys, _, b_mask = batched.read(0)
        kept = b_keys[0, 0, b_mask[0], 0].tolist()  # the batched row's valid slots
        shown = keys[0, 0, :, 0] if mask is None else keys[0, 0, mask[0], 0]
        assert shown.tolist() == kept and torch.equal(keys, values)
        if window == 2:  # slots 2, 3: no padding among them
            assert mask is None and keys[0, 0, :, 0].tolist() == [2.0, 5.0]
        else:  # the padding slot 0 is read and masked
            assert mask.tolist() == [[False, True, True, True]]
        alone.advance(torch.tensor([0]))
        assert alone.length.tolist() == [4] and alone.n_valid.tolist() == [3]
