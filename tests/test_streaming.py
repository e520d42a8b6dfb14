"""`open_level_stream`: a level's streaming state after a prefill, on the toy rows of its docstring.

Worked example (max_segment_len L = 4, T = 5, encoder state h[t] = t, entropy H[t] = t + 0.5): a row
whose last segment is open keeps its states by offset and H of its last token; a row whose last
segment the rule closed, or that filled it to L tokens, sets `pending_new` (the next token opens a
segment); a row without tokens starts empty with prev_H = +inf (the delta rule's "no previous token").
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from hier_ae.segmentation import boundary_starts, segment_layout
from hier_ae.streaming import open_level_stream

L = 4


def prefill(valid: list[list[int]], fires: list[list[int]], predictive: bool = False):
    """The state `open_level_stream` opens for toy rows: h[b, t] = t (D = 1), H[b, t] = t + 0.5."""
    valid_t = torch.tensor(valid, dtype=torch.bool)  # (B, T)
    fires_t = torch.tensor(fires, dtype=torch.bool) & valid_t  # (B, T)
    B, T = valid_t.shape
    layout = segment_layout(boundary_starts(fires_t, valid_t, L), valid_t)
    h = torch.arange(T, dtype=torch.float).expand(B, T)[..., None]  # (B, T, 1)
    H = torch.arange(T, dtype=torch.float).expand(B, T) + 0.5  # (B, T)
    cfg = SimpleNamespace(
        max_segment_len=L,
        predictive_codes=predictive,
        code_choice_candidates=0,
        boundary_mode="threshold",
        utf8_boundaries=False,
    )
    level = SimpleNamespace(cfg=cfg)
    return layout, open_level_stream(level, valid_t, layout, fires_t, H, h, [], [])


def test_open_level_stream_worked_example():
    layout, st = prefill(
        valid=[[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]],
        fires=[[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
    )
    assert layout.seg_id.tolist()[:3] == [[0, 0, 1, 1, 1], [0, 0, 0, -1, -1], [0, 1, 1, 1, 1]]
    assert st.seg_len.tolist() == [3, 3, 4, 0]
    assert st.pending_new.tolist() == [False, True, True, True]  # open; rule fired; full; empty row
    # the open (or just closed) segment's encoder states, by offset; slots >= seg_len are never read
    states = st.open_states[..., 0]  # (B, L)
    assert states[0, :3].tolist() == [2.0, 3.0, 4.0]
    assert states[1, :3].tolist() == [0.0, 1.0, 2.0]
    assert states[2].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert st.prev_H.tolist()[:3] == [4.5, 2.5, 4.5] and math.isinf(st.prev_H[3].item())
    # the KV stores continue after each row's last real token
    assert st.entropy.length.tolist() == st.encoder.length.tolist() == [5, 3, 5, 0]
    assert st.decoder is None and st.context is None  # filled top-down by predict_logits
    assert st.before is None  # kept only with predictive_codes


def test_open_level_stream_state_before_the_next_segment():
    """`predictive_codes`: the encoder state before the segment the next code will come from: before
    the open segment (row 0: "t0 t1 | t2 t3 t4" -> h[1]), or, when the last one is closed, its last
    token (rows 1 and 2 -> h[2], h[4]); zero for an empty row and before a left-padded row's first
    segment (row 4: ". . t2 t3 t4", one open segment)."""
    _, st = prefill(
        valid=[[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1]],
        fires=[[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
        predictive=True,
    )
    assert st.before[:, 0].tolist() == [1.0, 2.0, 4.0, 0.0, 0.0]


def test_open_level_stream_left_padding():
    """A left-padded row: the open segment starts at its own first real token, offsets from there."""
    _, st = prefill(valid=[[0, 0, 1, 1, 1]], fires=[[0, 0, 0, 1, 0]])  # "t2 t3 | t4"
    assert st.seg_len.tolist() == [1] and st.pending_new.tolist() == [False]
    assert st.open_states[0, :1, 0].tolist() == [4.0] and st.prev_H.tolist() == [4.5]
    assert st.entropy.length.tolist() == [5] and st.entropy.n_valid.tolist() == [3]
