"""The boundary rule, segment layout, framing of the level above, and pooling."""

import pytest
import torch

from hier_ae.configuration_hier_ae import LevelVocab
from hier_ae.pooling import SegmentPooling, gather_segments
from hier_ae.segmentation import (
    boundary_starts,
    budget_fires,
    budget_rule,
    frame_upper_stream,
    hold_short_segments,
    rule_fires,
    segment_closes,
    segment_layout,
    shift_in_begin,
    surprisal_bits,
)


def test_design_worked_example():
    """DESIGN §3's worked example: 'a cat sat.' with theta = 2.5 bits."""
    x = torch.tensor([[ord(c) + 3 for c in "a cat sat."]])
    H = torch.tensor([[1.0, 3.2, 1.4, 0.6, 0.5, 3.0, 1.1, 0.4, 0.3, 1.9]])
    valid = torch.ones_like(x, dtype=torch.bool)
    fires = rule_fires(H, x, eos_id=1, mode="threshold", threshold=2.5, delta=0.0)
    starts = boundary_starts(fires, valid, max_segment_len=16)
    layout = segment_layout(starts, valid)
    assert layout.seg_id.tolist() == [[0, 0, 1, 1, 1, 1, 2, 2, 2, 2]]
    assert layout.pos.tolist() == [[0, 1, 0, 1, 2, 3, 0, 1, 2, 3]]
    assert layout.seg_start.tolist() == [[0, 2, 6]]
    assert layout.seg_len.tolist() == [[2, 4, 4]]


def test_delta_mode_eos_and_length_cap():
    H = torch.tensor([[0.5, 0.6, 2.0, 2.1, 0.2, 0.3, 0.4, 0.5]])
    x = torch.tensor([[10, 11, 12, 1, 13, 14, 15, 16]])  # EOS at t=3
    valid = torch.ones_like(x, dtype=torch.bool)
    fires = rule_fires(H, x, eos_id=1, mode="delta", threshold=0.0, delta=1.0)
    assert fires.tolist() == [[False, False, True, True, False, False, False, False]]  # rise at t=2; EOS t=3
    starts = boundary_starts(fires, valid, max_segment_len=3)
    # rule starts at 0, 3 (after the rise), 4 (after EOS); the cap forces 7 (3 tokens since 4)
    assert starts.int().tolist() == [[1, 0, 0, 1, 1, 0, 0, 1]]


def test_boundaries_are_causal():
    """Changing tokens after t leaves the starts up to t + 1 unchanged (H[t] depends on x[0..t])."""
    g = torch.Generator().manual_seed(0)
    H = torch.rand(3, 40, generator=g) * 4
    x = torch.randint(3, 259, (3, 40), generator=g)
    valid = torch.ones_like(x, dtype=torch.bool)
    base = boundary_starts(rule_fires(H, x, 1, "threshold", 2.0, 1.0), valid, 5)
    for t in range(39):
        H2, x2 = H.clone(), x.clone()
        H2[:, t + 1 :] = torch.rand(3, 39 - t, generator=g) * 4
        x2[:, t + 1 :] = 1  # EOS everywhere after t
        other = boundary_starts(rule_fires(H2, x2, 1, "threshold", 2.0, 1.0), valid, 5)
        assert torch.equal(base[:, : t + 2], other[:, : t + 2])


def test_left_padding_starts_at_first_real_token():
    fires = torch.zeros(1, 6, dtype=torch.bool)
    valid = torch.tensor([[False, False, True, True, True, True]])
    starts = boundary_starts(fires, valid, max_segment_len=3)
    assert starts.int().tolist() == [[0, 0, 1, 0, 0, 1]]
    layout = segment_layout(starts, valid)
    assert layout.seg_id.tolist() == [[-1, -1, 0, 0, 0, 1]]


def test_frame_upper_stream():
    codes = torch.tensor([[7, 3, 9], [4, 5, 0]])
    seg_mask = torch.tensor([[True, True, True], [True, True, False]])
    bos = torch.tensor([True, False])
    eos = torch.tensor([[False, True, False], [False, True, False]])
    up = frame_upper_stream(codes, seg_mask, bos, eos, LevelVocab.of_codes(10))  # pad 10, eos 11, bos 12
    assert up.tokens.tolist() == [[12, 7, 3, 11, 9], [4, 5, 11, 10, 10]]
    assert up.valid.int().tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert up.seg_pos.tolist() == [[1, 2, 4], [0, 1, 0]]
    assert up.vectors is None


def test_frame_upper_stream_with_vectors():
    """frame_upper_stream's docstring: each code's vector at its index, zeros at bos / eos / padding;
    with `closed`, the open segment's vector is dropped with its code."""
    codes = torch.tensor([[7, 3, 9], [4, 5, 0]])
    seg_mask = torch.tensor([[True, True, True], [True, True, False]])
    bos = torch.tensor([True, False])
    eos = torch.tensor([[False, True, False], [False, True, False]])
    vec = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[..., None]  # (2, 3, 1)
    up = frame_upper_stream(codes, seg_mask, bos, eos, LevelVocab.of_codes(10), vectors=vec)
    assert up.vectors[..., 0].tolist() == [[0.0, 1.0, 2.0, 0.0, 3.0], [4.0, 5.0, 0.0, 0.0, 0.0]]
    closed = torch.tensor([[True, True, False], [True, True, False]])
    up = frame_upper_stream(codes, seg_mask, bos, eos, LevelVocab.of_codes(10), closed=closed, vectors=vec)
    assert up.tokens.tolist() == [[12, 7, 3, 11], [4, 5, 11, 10]]
    assert up.vectors[..., 0].tolist() == [[0.0, 1.0, 2.0, 0.0], [4.0, 5.0, 0.0, 0.0]]


def test_shift_in_begin_left_and_right_padding():
    tokens = torch.tensor([[0, 0, 5, 6], [5, 6, 0, 0]])
    valid = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0]]).bool()
    inp, inp_valid = shift_in_begin(tokens, valid, begin_id=99, pad_id=0)
    assert inp.tolist() == [[0, 0, 99, 5, 6], [99, 5, 6, 0, 0]]
    assert inp_valid.int().tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_pooling_sees_only_its_segment_and_drops_none():
    torch.manual_seed(0)
    B, T, D, L = 2, 12, 8, 4
    h = torch.randn(B, T, D)
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[0, [0, 3, 4, 8]] = True
    starts[1, [0, 4, 8]] = True
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 10:] = False
    layout = segment_layout(starts, valid)
    S = layout.seg_mask.shape[1]
    blocks, slots = gather_segments(h, layout.seg_id, layout.pos, S, L)
    assert blocks.shape == (B, S, L, D)
    # every real token lands in exactly one slot; no segment dropped
    assert slots.sum().item() == valid.sum().item()
    assert layout.seg_mask.sum(1).tolist() == [4, 3]
    pool = SegmentPooling(D, 2, slots=L, use_slot_embed=False)
    torch.nn.init.normal_(pool.query)
    out = pool(blocks, slots)  # (B, S, D)
    # perturbing tokens of segment 2 of row 0 (positions 4..7) changes only segment 2's vector
    h2 = h.clone()
    h2[0, 4:8] += 5.0
    out2 = pool(*gather_segments(h2, layout.seg_id, layout.pos, S, L))
    changed = (out2 - out).abs().amax(-1) > 1e-6  # (B, S)
    assert changed.tolist() == [[False, False, True, False], [False, False, False, False]]


def test_pooling_memory_is_linear_in_length():
    """The gather makes (B, S, L, D) blocks, never a (B, S, T) mask: a 64k row is cheap."""
    T, D, L = 65536, 8, 8
    h = torch.randn(1, T, D)
    starts = torch.zeros(1, T, dtype=torch.bool)
    starts[0, ::L] = True
    valid = torch.ones(1, T, dtype=torch.bool)
    layout = segment_layout(starts, valid)
    blocks, slots = gather_segments(h, layout.seg_id, layout.pos, layout.seg_mask.shape[1], L)
    assert blocks.numel() == T * D  # S * L = T exactly here


@pytest.mark.parametrize("min_len", [1, 2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_vectorised_starts_equal_token_by_token_closing(seed, min_len):
    """`boundary_starts` after `hold_short_segments` (a whole row at once, as encode and predict use
    it) equals stepping token by token with `segment_closes` (as streaming and decode do), on random
    entropies, EOS positions, lengths, left or right padding, segment caps and minimum lengths, in
    both rule modes."""
    g = torch.Generator().manual_seed(seed)
    B, T = 8, 40
    L = int(torch.randint(min_len, 9, (1,), generator=g))
    H = torch.rand(B, T, generator=g) * 4
    x = torch.randint(3, 259, (B, T), generator=g)
    x[torch.rand(B, T, generator=g) < 0.05] = 1  # EOS closes its segment too
    n = torch.randint(0, T + 1, (B,), generator=g)  # (B,) real tokens per row
    t = torch.arange(T)[None, :]
    valid = t < n[:, None] if seed % 2 else t >= (T - n)[:, None]  # right / left padding
    mode = "threshold" if seed < 3 else "delta"
    fires = rule_fires(H, x, 1, mode, 2.0, 0.5, valid=valid)
    starts = boundary_starts(hold_short_segments(fires, x == 1, valid, min_len, L), valid, L)
    for b in range(B):
        want, opens, seg_len = [], True, 0
        for i in range(T):
            if not valid[b, i]:
                want.append(False)
                continue
            want.append(opens)
            seg_len = 1 if opens else seg_len + 1
            opens = bool(segment_closes(fires[b, i], torch.tensor(seg_len), L, min_len, x[b, i] == 1))
        assert starts[b].tolist() == want, (b, L, mode)
    lengths = segment_layout(starts, valid).seg_len
    if min_len > 1:  # only EOS, or the row's end, leaves a segment shorter than min_len
        ends = segment_layout(starts, valid)
        last_tok = x.gather(1, (ends.seg_start + lengths - 1).clamp(min=0))
        is_last = torch.arange(lengths.shape[1])[None, :] == (ends.num_segments - 1)[:, None]
        short = ends.seg_mask & (lengths < min_len)
        assert not (short & (last_tok != 1) & ~is_last).any()


def test_minimum_segment_length_worked_examples():
    """segment_closes' and hold_short_segments' docstring examples."""
    fires = torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool)
    closes = segment_closes(fires, torch.tensor([1, 2, 1, 2, 1]), 4, 2, torch.zeros(5, dtype=torch.bool))
    assert closes.long().tolist() == [0, 1, 0, 1, 0]
    fires = torch.tensor([[1, 1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    valid = torch.ones_like(fires)
    held = hold_short_segments(fires, torch.zeros_like(fires), valid, 2, 4)
    assert held.long().tolist() == [[0, 1, 0, 0, 1, 0, 1]]
    assert segment_layout(boundary_starts(held, valid, 4), valid).seg_len.tolist() == [[2, 3, 2]]
    assert torch.equal(hold_short_segments(fires, torch.zeros_like(fires), valid, 1, 4), fires)
    eos = torch.tensor([[1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)  # EOS closes a 1-token segment
    assert hold_short_segments(fires, eos, valid, 2, 4).long().tolist() == [[1, 0, 1, 0, 1, 0, 1]]
    with pytest.raises(ValueError, match="needs is_eos"):
        segment_closes(fires, torch.ones(1, 7, dtype=torch.long), 4, 2)


def test_budget_mode_worked_example():
    """budget_fires' docstring: budget 6 -> segments [0..3] [4..6]; the bounds still apply."""
    s = torch.tensor([[0.0, 3.0, 1.0, 0.5, 5.0, 0.2, 0.1]])
    H = torch.tensor([[2.5, 1.5, 1.0, 4.0, 1.0, 0.5, 0.5]])
    valid, no_eos = torch.ones(1, 7, dtype=torch.bool), torch.zeros(1, 7, dtype=torch.bool)
    fires = budget_fires(s, H, no_eos, valid, 6.0, 1, 8)
    assert fires.long().tolist() == [[0, 0, 0, 1, 0, 0, 0]]
    assert segment_layout(boundary_starts(fires, valid, 8), valid).seg_len.tolist() == [[4, 3]]
    # a cap of 3 tokens: [0..2] full, then 0.5 + 5.0 + H 1.0 > 6 closes [3, 4]; a minimum of 5: the
    # budget's firing at t = 3 is held back and t = 4 closes the first segment
    assert budget_fires(s, H, no_eos, valid, 6.0, 1, 3).long().tolist() == [[0, 0, 1, 0, 1, 0, 0]]
    assert budget_fires(s, H, no_eos, valid, 6.0, 5, 8).long().tolist() == [[0, 0, 0, 0, 1, 0, 0]]
    eos = torch.tensor([[0, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)  # EOS closes at any length
    assert budget_fires(s, H, eos, valid, 6.0, 5, 8).long().tolist() == [[0, 1, 0, 0, 0, 0, 1]]


def test_surprisal_bits_reads_the_previous_prediction():
    """s[t] = -log2 p(x[t]) from logits[t - 1]; 0 at a row's first real token and on padding."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    x = torch.randint(0, 7, (2, 5))
    valid = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)  # row 1 left-padded
    s = surprisal_bits(logits, x, valid)
    want = -torch.log_softmax(logits, -1)[0, 1, x[0, 2]] / torch.log(torch.tensor(2.0))
    torch.testing.assert_close(s[0, 2], want)
    assert s[0, 0] == 0 and s[1, :3].tolist() == [0, 0, 0] and (s[1, 3:] > 0).all()
    assert surprisal_bits(logits[:, :1], x[:, :1], valid[:, :1]).tolist() == [[0.0], [0.0]]  # one token


@pytest.mark.parametrize("min_len", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_budget_scan_equals_token_by_token_closing(seed, min_len):
    """`budget_fires` over whole rows equals stepping token by token with `budget_rule` then
    `segment_closes` (streaming and decode), on random surprisals, EOS, padding and caps."""
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 30
    L = int(torch.randint(min_len, 9, (1,), generator=g))
    s, H = torch.rand(B, T, generator=g) * 6, torch.rand(B, T, generator=g) * 4
    eos = torch.rand(B, T, generator=g) < 0.05
    n = torch.randint(0, T + 1, (B,), generator=g)
    t = torch.arange(T)[None, :]
    valid = t < n[:, None] if seed % 2 else t >= (T - n)[:, None]
    fires = budget_fires(s, H, eos, valid, 7.0, min_len, L)
    for b in range(B):
        want, bits, seg_len = [], 0.0, 0
        for i in range(T):
            if not valid[b, i]:
                want.append(False)
                bits, seg_len = 0.0, 0
                continue
            bits, seg_len = bits + float(s[b, i]), seg_len + 1
            rule = budget_rule(torch.tensor(bits), H[b, i], eos[b, i], 7.0)
            close = bool(segment_closes(rule, torch.tensor(seg_len), L, min_len, eos[b, i]))
            want.append(close)
            if close:
                bits, seg_len = 0.0, 0
        assert fires[b].tolist() == want, (b, L)


def test_decoder_offsets_worked_examples():
    """The docstring's examples: offsets of the tokens each decoder output predicts."""
    from hier_ae.segmentation import decoder_offsets

    valid = torch.ones(2, 5, dtype=torch.bool)
    fires = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 1, 0, 1]], dtype=torch.bool)
    layout = segment_layout(boundary_starts(fires, valid, 4), valid)
    assert layout.pos.tolist() == [[0, 1, 2, 0, 1]] * 2
    assert decoder_offsets(layout, fires, valid, 4).tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 0]]
    full = torch.zeros(1, 4, dtype=torch.bool)
    v4 = torch.ones(1, 4, dtype=torch.bool)
    layout = segment_layout(boundary_starts(full, v4, 4), v4)
    assert decoder_offsets(layout, full, v4, 4).tolist() == [[0, 1, 2, 3, 0]]
    # right padding: the offset after the last real token, padding 0
    vp = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    layout = segment_layout(boundary_starts(full, vp, 4), vp)
    assert decoder_offsets(layout, full, vp, 4).tolist() == [[0, 1, 2, 3, 0]]


def test_slot_offsets_let_pooling_tell_the_order_of_a_segment():
    """Without slot embeddings a segment's pooled vector cannot depend on the order of identical
    slot states; with them it does."""
    torch.manual_seed(0)
    a, b = torch.randn(64), torch.randn(64)
    blocks = torch.stack([torch.stack([a, b]), torch.stack([b, a])])[:, None]  # (2, 1, 2, 64): ab, ba
    slots = torch.ones(2, 1, 2, dtype=torch.bool)
    plain = SegmentPooling(64, 4, slots=8, use_slot_embed=False)
    with_slots = SegmentPooling(64, 4, slots=8, mix_layers=1, intermediate=128)
    torch.nn.init.normal_(plain.query)
    torch.nn.init.normal_(with_slots.query)
    p = plain(blocks, slots)
    torch.testing.assert_close(p[0], p[1])  # attention pooling is order-blind
    q = with_slots(blocks, slots)
    assert (q[0] - q[1]).abs().max() > 1e-3


def test_predict_context_gathers_the_state_that_predicts_each_segment_code():
    """HierLevel.predict_context's worked example, with the context map set to the identity."""
    from hier_ae import HierAEConfig, HierAEModel

    cfg = HierAEConfig(
        levels=[{"hidden_size": 8, "num_heads": 2, "pooling_heads": 2, "intermediate_size": 16}],
        top_lm={"hidden_size": 8, "num_heads": 2, "intermediate_size": 16, "num_layers": 1},
    )
    level = HierAEModel(cfg).levels[0]
    with torch.no_grad():
        level.context_proj.weight.copy_(torch.eye(8))
    valid = torch.ones(1, 5, dtype=torch.bool)
    fires = torch.tensor([[0, 1, 0, 0, 1]], dtype=torch.bool)  # "a " | "cat" | (next)
    layout = segment_layout(boundary_starts(fires, valid, 8), valid)
    assert layout.seg_id.tolist() == [[0, 0, 1, 1, 1]]
    upper_h = torch.arange(3, dtype=torch.float)[None, :, None].expand(1, 3, 8)  # h_j = j everywhere
    ctx = level.predict_context(upper_h, torch.tensor([2]), torch.tensor([[0, 1]]), layout, valid)
    assert ctx.shape == (1, 6, 8)
    assert ctx[0, :, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 2.0]
