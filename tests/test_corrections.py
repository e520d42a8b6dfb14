"""Token corrections (`hier_ae.corrections`, issue 21): `encode(..., corrections=True)` stores the tokens
a level's decode gets wrong at their segment and offset; `decode(..., corrections=)` emits them there.
Checked on worked examples (the index arithmetic and the prices), on random weights (where every token
needs one: decode gives every row of every level back), on a trained checkpoint (lines that decode
exactly get none) and for the errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_TOP, tiny_level

from hier_ae import HierAEConfig, HierAEModel
from hier_ae.corrections import (
    correction_bits,
    correction_token_bits,
    count_shares,
    first_mismatch,
    segment_offset,
)
from hier_ae.data.batching import frame_document, pad_rows


def _model(num_levels: int = 1, **level) -> HierAEModel:
    torch.manual_seed(0)
    opts = {"threshold": 1e9, "max_segment_len": 5, **level}
    cfg = HierAEConfig(levels=[tiny_level(**opts) for _ in range(num_levels)], top_lm=TINY_TOP)
    return HierAEModel(cfg).eval()


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    """Three framed rows (`<s>` bytes `</s>`) of random bytes, one shorter: (3, 30) ids and mask."""
    g = torch.Generator().manual_seed(1)
    rows = [frame_document(bytes(torch.randint(0, 256, (n,), generator=g).tolist())) for n in (28, 18, 28)]
    return pad_rows(rows)


def _rows(seq: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [s[m.bool()].tolist() for s, m in zip(seq, mask)]


# ---- worked examples --------------------------------------------------------------------------
def test_first_mismatch_and_segment_offset_worked_examples():
    dec = torch.tensor([[1, 2, 4, 0], [1, 2, 0, 0], [1, 2, 3, 0]])  # (3, 4)
    dec_valid = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]]).bool()
    ref = torch.tensor([[1, 2, 3, 5], [1, 2, 3, 0], [1, 2, 3, 0]])  # (3, 4)
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0]]).bool()
    # wrong token; stops short; exact
    assert first_mismatch(dec, dec_valid, ref, valid).tolist() == [2, 2, -1]
    # a decode that runs past its reference is wrong where the reference ends
    longer = torch.tensor([[1, 2, 3, 9]])
    assert first_mismatch(longer, torch.ones(1, 4, dtype=torch.bool), ref[2:], valid[2:]).tolist() == [3]
    assert segment_offset(torch.tensor([0, 0, 1, 1, 1]), 3) == (1, 1)
    assert segment_offset(torch.tensor([0, 0, 1, 1, -1]), 0) == (0, 0)


def test_correction_prices_worked_examples():
    counts = torch.tensor([0, 0, 1, 2, 0, 0, 0, 0])
    escaped = torch.tensor([True, True, True, True, False, False, False, False])
    token_bits = torch.tensor([0.0, 0.0, 3.0, 7.0, 0.0, 0.0, 0.0, 0.0])
    c = correction_bits(counts, escaped, token_bits, 16)
    # not escaped: one count, 0 bits; escaped: shares (1/2, 1/4, 1/4) -> 1.5 bits a segment
    assert c["count_bits"] == pytest.approx(6.0)
    assert c["offset_bits"] == pytest.approx(12.0) and c["token_bits"] == pytest.approx(10.0)
    assert c["correction_bits"] == pytest.approx(28.0)
    assert (c["corrections"], c["corrected_segments"]) == (3, 2)
    # shares fitted elsewhere: a count they give no mass to costs infinity, smoothing keeps it finite
    torch.testing.assert_close(
        count_shares(torch.tensor([0, 0, 0, 1]), 3), torch.tensor([3.5, 1.5, 0.5], dtype=torch.float64) / 5.5
    )
    torch.testing.assert_close(
        count_shares(torch.tensor([0, 0, 0, 1]), prior=0.0).float(), torch.tensor([0.75, 0.25])
    )
    tight = [torch.tensor([1.0]), torch.tensor([1.0])]  # only count 0 seen
    assert math.isinf(correction_bits(counts, escaped, token_bits, 16, tight)["count_bits"])
    smooth = [count_shares(torch.zeros(4, dtype=torch.long), 4)] * 2
    assert math.isfinite(correction_bits(counts, escaped, token_bits, 16, smooth)["correction_bits"])


# ---- random weights ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_levels", [1, 2])
@torch.no_grad()
def test_decode_with_the_corrections_gives_every_level_back(num_levels):
    """A random decoder gets nearly every token wrong: each gets a correction, and decode of every
    level from its own codes (and escape codes) with its corrections gives that level's tokens back."""
    escape = {"escape_codebook_size": 8, "decoder_code_embedding": True} if num_levels == 1 else {}
    model = _model(num_levels, **escape)
    ids, mask = _ids()
    enc = model.encode(ids, mask, corrections=True)
    assert len(enc.corrections) == num_levels
    for li in range(num_levels):
        codes, seg_mask, fix = enc.codes[li], enc.code_mask[li], enc.corrections[li]
        L = model.levels[li].cfg.max_segment_len
        assert fix.shape == (*codes.shape, L) and bool((fix[~seg_mask.bool()] == -1).all())
        esc = enc.escape_codes[li] if escape else None
        out = model.decode(codes, seg_mask, level=li, escape_codes=esc, corrections=fix)
        plain = model.decode(codes, seg_mask, level=li, escape_codes=esc)
        want = _rows(enc.level_tokens[li], enc.level_mask[li])
        pad = model.levels[li].vocab.pad_id
        got = out.level_tokens[li].tolist()  # (B, n), padded with pad
        assert [r[: len(w)] for r, w in zip(got, want)] == want
        assert all(set(r[len(w) :]) <= {pad} for r, w in zip(got, want))
        assert [r[: len(w)] for r, w in zip(plain.level_tokens[li].tolist(), want)] != want
        assert int((fix >= 0).sum()) > 0
    # no correction (all -1) decodes as without
    top = num_levels - 1
    none = torch.full_like(enc.corrections[top], -1)
    a = model.decode(enc.codes[top], enc.code_mask[top], level=top, corrections=none)
    b = model.decode(enc.codes[top], enc.code_mask[top], level=top)
    assert torch.equal(a.sequences, b.sequences)


@pytest.mark.parametrize("escape", [False, True])
@torch.no_grad()
def test_two_levels_decode_from_the_top_with_every_levels_corrections(escape):
    """encode's tuples of escape codes and corrections, one per level, given to decode from the top
    codes: level 1 gives back level 0's codes, level 0 reads its own escapes and corrections on them,
    and every byte comes back; the top level's corrections alone do not."""
    model = _model(2, **({"escape_codebook_size": 8, "decoder_code_embedding": True} if escape else {}))
    ids, mask = _ids()
    enc = model.encode(ids, mask, corrections=True)
    out = model.decode(
        enc.top_codes, enc.top_mask, escape_codes=enc.escape_codes, corrections=enc.corrections
    )
    assert _rows(out.sequences, out.attention_mask) == _rows(ids, mask)
    assert _rows(out.level_tokens[1], out.level_tokens[1] != model.levels[1].vocab.pad_id) == _rows(
        enc.level_tokens[1], enc.level_mask[1]
    )
    top_only = model.decode(enc.top_codes, enc.top_mask, corrections=enc.corrections[1])
    assert _rows(top_only.sequences, top_only.attention_mask) != _rows(ids, mask)
    # a list works as the tuple; level 1's entry alone as a tuple (None below) is the top-only decode
    listed = model.decode(
        enc.top_codes, enc.top_mask, escape_codes=list(enc.escape_codes), corrections=list(enc.corrections)
    )
    assert torch.equal(listed.sequences, out.sequences)
    upper = model.decode(enc.top_codes, enc.top_mask, corrections=(None, enc.corrections[1]))
    assert torch.equal(upper.sequences, top_only.sequences)


@torch.no_grad()
def test_bytes_come_back_exactly_and_each_correction_is_priced():
    model = _model(escape_codebook_size=8, decoder_code_embedding=True)
    ids, mask = _ids()
    enc = model.encode(ids, mask, corrections=True)
    codes, seg_mask, esc, fix = enc.codes[0], enc.code_mask[0], enc.escape_codes[0], enc.corrections[0]
    out = model.decode(codes, seg_mask, level=0, escape_codes=esc, corrections=fix)
    assert _rows(out.sequences, out.attention_mask) == _rows(ids, mask)
    bits = correction_token_bits(model.levels[0], codes, seg_mask, esc, fix)  # (B, S, L)
    assert bits.shape == fix.shape
    assert bool((bits[fix < 0] == 0).all()) and bool((bits[fix >= 0] > 0).all())


# ---- a trained checkpoint ---------------------------------------------------------------------
@torch.no_grad()
def test_lines_that_decode_exactly_get_no_corrections(trained_1level, grammar_data):
    model, _ = trained_1level
    refs = [frame_document(s.encode()).tolist() for s in grammar_data[1][:32]]
    ids, mask = pad_rows([torch.tensor(r) for r in refs])
    enc = model.encode(ids, mask, corrections=True)
    fix = enc.corrections[0]
    plain = model.decode(enc.codes[0], enc.code_mask[0], level=0)
    fixed = model.decode(enc.codes[0], enc.code_mask[0], level=0, corrections=fix)
    exact = [r == d for r, d in zip(refs, _rows(plain.sequences, plain.attention_mask))]
    assert _rows(fixed.sequences, fixed.attention_mask) == refs
    per_row = (fix >= 0).flatten(1).sum(1)  # (B,)
    assert all((n == 0) == e for n, e in zip(per_row.tolist(), exact))
    assert any(exact)


@torch.no_grad()
def test_a_trained_two_level_model_gives_every_line_back_from_the_top(trained_2level, grammar_data):
    """On a trained 2-level checkpoint, the top codes with every level's corrections decode to each
    held-out line; where the top codes alone give a line back, it needs no correction at level 1."""
    model, _ = trained_2level
    refs = [frame_document(s.encode()).tolist() for s in grammar_data[1][:16]]
    ids, mask = pad_rows([torch.tensor(r) for r in refs])
    enc = model.encode(ids, mask, corrections=True)
    out = model.decode(
        enc.top_codes, enc.top_mask, escape_codes=enc.escape_codes, corrections=enc.corrections
    )
    assert _rows(out.sequences, out.attention_mask) == refs
    plain = model.decode(enc.top_codes, enc.top_mask)
    upper_exact = [  # level 1 gives back level 0's codes exactly
        a == b
        for a, b in zip(
            _rows(plain.level_tokens[1], plain.level_tokens[1] != model.levels[1].vocab.pad_id),
            _rows(enc.level_tokens[1], enc.level_mask[1]),
        )
    ]
    per_row = (enc.corrections[1] >= 0).flatten(1).sum(1)  # (B,)
    assert all((n == 0) == e for n, e in zip(per_row.tolist(), upper_exact))


# ---- errors -------------------------------------------------------------------------------------
def test_corrections_are_checked():
    model = _model()
    ids, mask = _ids()
    enc = model.encode(ids, mask)
    codes, seg_mask = enc.codes[0], enc.code_mask[0]
    L = model.levels[0].cfg.max_segment_len
    good = torch.full((*codes.shape, L), -1)
    with pytest.raises(ValueError, match=r"corrections must be a tensor of shape \(B, S, max_segment_len\)"):
        model.decode(codes, seg_mask, level=0, corrections=good[..., :2])
    with pytest.raises(ValueError, match="must hold integer token ids, got dtype torch.float32"):
        model.decode(codes, seg_mask, level=0, corrections=good.float())
    with pytest.raises(ValueError, match=r"token ids in \[0, 259\) .* got \[-1, 300\]"):
        bad = good.clone()
        bad[0, 0, 0] = 300
        model.decode(codes, seg_mask, level=0, corrections=bad)
    with pytest.raises(ValueError, match="give either corrections or next_code / pick"):
        model.decode(codes[:1], seg_mask[:1], level=0, corrections=good[:1], next_code=lambda j: 0)
    with pytest.raises(ValueError, match=r"corrections as a tuple needs one entry per level \(1, as encode"):
        model.decode(codes, seg_mask, level=0, corrections=(good, good))
    with pytest.raises(
        ValueError, match="corrections must be a tensor .* or a tuple with one per level, got str"
    ):
        model.decode(codes, seg_mask, level=0, corrections="all")
    with pytest.raises(ValueError, match="corrections='yes' is invalid: a bool"):
        model.encode(ids, mask, corrections="yes")
    assert model.encode(ids, mask).corrections is None


@torch.no_grad()
def test_lower_levels_corrections_are_checked_against_the_codes_decoded_above():
    """Level 0's corrections must fit the codes level 1 decodes: without level 1's own corrections (a
    random level 1 gets them wrong) their shape differs, and the error names the level and the cause."""
    model = _model(2)
    ids, mask = _ids()
    enc = model.encode(ids, mask, corrections=True)
    wrong = enc.corrections[0][:, :1]  # (B, 1, L): not the shape of the codes level 1 gives
    with pytest.raises(ValueError, match=r"level 0 \(decoded from level 1's tokens\): corrections must be"):
        model.decode(enc.top_codes, enc.top_mask, corrections=(wrong, enc.corrections[1]))
    with pytest.raises(ValueError, match="level 0 .* give either corrections or next_code / pick"):
        model.decode(
            enc.top_codes,
            enc.top_mask,
            corrections=(enc.corrections[0], None),
            pick=lambda li, n, x, r: x.argmax(-1),
        )
    bad = torch.zeros_like(enc.escape_codes[0])  # escape ids at a level without an escape codebook
    with pytest.raises(ValueError, match="level 0 .* has no escape codebook"):
        model.decode(
            enc.top_codes, enc.top_mask, escape_codes=(bad, enc.escape_codes[1]), corrections=enc.corrections
        )
