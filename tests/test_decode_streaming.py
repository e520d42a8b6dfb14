"""`HierAEModel.decode` streams (DESIGN §7): one new position per step through windowed KV caches.

The reference below is the former algorithm, kept here only as the specification: at every step it
runs the decoder over the whole prefix [BEGIN, x_0..x_n] and the entropy model over x_0..x_n to get
one new token and its entropy (O(n^2) per level). The streamed decode must give exactly its tokens,
masks and boundaries.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_level
from helpers.ties import LOGIT_MARGIN, MARGIN, NearTieWarning, compare_boundaries, top2_gap

from hier_ae import HierAEConfig, HierAEModel
from hier_ae.data.batching import frame_document, pad_rows
from hier_ae.level import entropy_bits, fp32_region
from hier_ae.level_modules import entropy_at_inputs
from hier_ae.segmentation import compact_codes, surprisal_bits, utf8_owed
from hier_ae.transformer import positions_from_mask


# ---- the reference: recompute every prefix ------------------------------------------------------
def _recompute_level(level, ctx: torch.Tensor, seg_mask: torch.Tensor):
    """The former `HierLevel.regenerate` (entropy model in fp32, as `level.segment` runs it).

    ctx (B, S, D), seg_mask (B, S) -> tokens (B, n), valid (B, n), seg_id (B, n) (-1 on padding),
    and the margins of its decisions: `token_gap (B, n)`, the two best logits' gap of each greedy
    token, and `rule_gap (B, n)`, how far the boundary rule's quantity after each token was from
    its value (|H - theta| in threshold mode, |H - H_prev - delta| in delta mode).
    """
    B, S, D = ctx.shape
    dev = ctx.device
    L = level.cfg.max_segment_len
    n_seg = seg_mask.sum(dim=1)  # (B,)
    rows = torch.arange(B, device=dev)
    tokens = torch.zeros(B, 0, dtype=torch.long, device=dev)  # (B, n)
    valid = torch.zeros(B, 0, dtype=torch.bool, device=dev)
    seg_hist = torch.zeros(B, 0, dtype=torch.long, device=dev)
    seg = torch.zeros(B, dtype=torch.long, device=dev)
    seg_len = torch.zeros(B, dtype=torch.long, device=dev)
    done = n_seg == 0
    prev_H = None
    bits = torch.zeros(B, device=dev)  # budget mode: the open segment's surprisal in bits
    offsets = torch.zeros(B, 0, dtype=torch.long, device=dev)  # (B, n) offset of each token in its segment
    token_gap, rule_gap = [], []
    value = float(level.boundary_value)
    begin = torch.full((B, 1), level.decoder.begin_id, dtype=torch.long, device=dev)
    for _ in range(S * L):
        n = tokens.shape[1]
        inp = torch.cat([begin, tokens], dim=1)  # (B, n+1)
        inp_valid = torch.cat([torch.ones_like(begin, dtype=torch.bool), valid], dim=1)
        cur = ctx[rows, seg.clamp(max=S - 1)]  # (B, D)
        context = torch.cat([ctx.gather(1, seg_hist[..., None].expand(B, n, D)), cur[:, None]], dim=1)
        offs = torch.cat([offsets, seg_len[:, None]], dim=1)  # (B, n+1): output j predicts token j
        ent = None
        if level.cfg.decoder_reads_entropy:  # the entropy model's state at each input (BEGIN: zeros)
            with fp32_region(dev):
                ent = level.entropy_model(tokens, valid, positions_from_mask(valid))[1]  # (B, n, D)
            ent = entropy_at_inputs(ent, valid)  # (B, n+1, D)
        logits, _ = level.decoder(
            inp, inp_valid, positions_from_mask(inp_valid), context, offsets=offs, entropy_h=ent
        )
        nxt = logits[:, n].argmax(dim=-1)  # (B,)
        token_gap.append(top2_gap(logits[:, n]))
        nxt = torch.where(done, torch.full_like(nxt, level.vocab.pad_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        valid = torch.cat([valid, ~done[:, None]], dim=1)
        seg_hist = torch.cat([seg_hist, seg.clamp(max=S - 1)[:, None]], dim=1)
        offsets = offs
        with fp32_region(dev):
            ent_logits = level.entropy_model(tokens, valid, positions_from_mask(valid))[0]
        H = entropy_bits(ent_logits[:, n : n + 1])  # (B, 1)
        if level.cfg.boundary_mode == "budget":  # the open segment's surprisal + the next token's entropy
            bits = bits + surprisal_bits(ent_logits, tokens, valid)[:, n]  # (B,)
            fires = (bits + H[:, 0] > value) | (nxt == level.vocab.eos_id)
            rule_gap.append((bits + H[:, 0] - value).abs())
        else:
            owed = utf8_owed(tokens)[:, -1:] if level.cfg.utf8_boundaries else None  # from the whole row
            fires = level.rule(H, nxt[:, None], prev_entropy=prev_H, owed=owed)[:, 0]  # (B,)
            rise = H[:, 0] if level.cfg.boundary_mode == "threshold" or prev_H is None else H[:, 0] - prev_H
            rule_gap.append((rise - value).abs())
        seg_len = seg_len + 1
        if level.cfg.min_segment_len > 1:  # a firing counts once the segment is long enough; EOS always
            fires = (fires & (seg_len >= level.cfg.min_segment_len)) | (nxt == level.vocab.eos_id)
        new_seg = fires | (seg_len >= L)
        seg = seg + new_seg.long()
        seg_len = torch.where(new_seg, torch.zeros_like(seg_len), seg_len)
        bits = torch.where(new_seg, torch.zeros_like(bits), bits)
        done = done | (nxt == level.vocab.eos_id) | (seg >= n_seg)
        prev_H = H[:, 0]
        if bool(done.all()):
            break
    seg_id = torch.where(valid, seg_hist, torch.full_like(seg_hist, -1))
    return tokens, valid, seg_id, torch.stack(token_gap, 1), torch.stack(rule_gap, 1)


@torch.no_grad()
def _recompute_decode(model, codes: torch.Tensor, mask: torch.Tensor):
    """The former `decode`, level by level with `_recompute_level`: (sequences, mask, level_tokens,
    per level the margins (token_gap, rule_gap) of its decisions)."""
    streams, margins = [], []
    for li in reversed(range(model.num_levels)):
        lv = model.levels[li]
        tokens, valid, _, token_gap, rule_gap = _recompute_level(
            lv, lv.code_context(lv.quantizer.lookup(codes), codes), mask
        )
        streams.append(tokens)
        margins.append((token_gap, rule_gap))
        if li > 0:
            codes, mask = compact_codes(tokens, valid, model.levels[li - 1].cfg.num_codes)
    return tokens, valid.long(), tuple(reversed(streams)), tuple(reversed(margins))


def _near_ties(got: torch.Tensor, ref: torch.Tensor, token_gap, rule_gap, level: int) -> list[str]:
    """Rows of one level's streams that differ must first differ after a decision at a near-tie.

    The streamed step and the whole-prefix recompute round differently (helpers/ties.py): at the
    first differing position p, the greedy token at p or a boundary decision before p must have been
    within rounding of its tie; a difference with clear margins fails.
    """
    n = max(got.shape[1], ref.shape[1])
    g = torch.nn.functional.pad(got, (0, n - got.shape[1]), value=-1)  # (B, n)
    r = torch.nn.functional.pad(ref, (0, n - ref.shape[1]), value=-1)  # (B, n)
    reports = []
    for row in (g != r).any(dim=1).nonzero()[:, 0].tolist():
        p = int((g[row] != r[row]).nonzero()[0])
        tok = float(token_gap[row, p]) if p < token_gap.shape[1] else float("inf")
        rule = float(rule_gap[row, :p].min()) if p > 0 else float("inf")
        where = f"level {level} row {row} position {p}: token gap {tok:.2e}, closest boundary {rule:.2e}"
        assert tok < LOGIT_MARGIN or rule < MARGIN, where
        reports.append(where)
    return reports


def _mixed_batch(model, lines: list[str]):
    """Top codes of a batch whose rows end differently: whole documents (they end at EOS), documents
    cut to their first k top codes (they end at their segment count), rows of 1 code."""
    ids, mask = pad_rows([frame_document(t.encode()) for t in lines])
    enc = model.encode(ids, mask)
    codes, cmask = enc.top_codes.clone(), enc.top_mask.clone()
    n = cmask.sum(dim=1)  # (B,)
    half = len(lines) // 2
    cuts = torch.tensor([1, 2, 3, 5, 7, 9]).repeat(len(lines))[: len(lines) - half]  # (B - half,)
    keep = torch.cat([n[:half], torch.minimum(cuts, n[half:] - 1)])  # (B,)
    cmask = cmask & (torch.arange(codes.shape[1])[None, :] < keep[:, None])  # (B, S)
    return torch.where(cmask, codes, torch.zeros_like(codes)), cmask


def _assert_same(model, codes, cmask):
    """Streamed decode == the recompute, token for token, except after a near-tie decision (then
    that row may differ from there on, and the levels below; reported as a warning, at most one)."""
    out = model.decode(codes, cmask)
    seq, amask, streams, margins = _recompute_decode(model, codes, cmask)
    assert len(out.level_tokens) == len(streams)
    for li in reversed(range(len(streams))):  # top level first, as decode runs
        reports = _near_ties(out.level_tokens[li], streams[li], *margins[li], level=li)
        if reports:
            for report in reports:
                warnings.warn(NearTieWarning(report), stacklevel=1)
            assert len(reports) <= 1, reports
            return out, margins
    assert torch.equal(out.sequences, seq)
    assert torch.equal(out.attention_mask, amask)
    return out, margins


# ---- (a) streamed == recompute, bit for bit ---------------------------------------------------
@pytest.mark.parametrize("fixture", ["trained_1level", "trained_2level", "trained_inputs"])
def test_streamed_decode_equals_recompute(fixture, request, grammar_data):
    model, _ = request.getfixturevalue(fixture)
    lines = grammar_data[1][:12]
    codes, cmask = _mixed_batch(model, lines)
    out, margins = _assert_same(model, codes, cmask)
    ends_eos = (out.sequences == 1).any(dim=1)  # (B,)
    print(f"\n{fixture}: {int(ends_eos.sum())} rows end at EOS, {int((~ends_eos).sum())} at their count")
    assert bool(ends_eos.any()) and not bool(ends_eos.all())  # rows end at EOS and at their count
    assert len(set(cmask.sum(1).tolist())) > 3  # rows with different numbers of segments
    # batch == one row at a time (other shapes, other rounding: up to a near-tie, as above)
    for row in (0, len(lines) - 1):
        n = int(cmask[row].sum())
        alone = model.decode(codes[row : row + 1, :n], cmask[row : row + 1, :n])
        width = alone.sequences.shape[1]
        reports = []
        for li in reversed(range(model.num_levels)):
            gaps = [m[row : row + 1] for m in margins[li]]
            got, want = alone.level_tokens[li], out.level_tokens[li][row : row + 1]
            reports = _near_ties(got, want[:, : got.shape[1]], *gaps, level=li)
            if reports:
                warnings.warn(NearTieWarning(reports[0]), stacklevel=1)
                break
        if not reports:
            assert torch.equal(alone.sequences[0], out.sequences[row, :width])
            assert not bool(out.attention_mask[row, width:].any())


@pytest.mark.parametrize("mode", ["threshold", "delta"])
def test_streamed_decode_equals_recompute_untrained(mode):
    """Random weights and random codes: rows run to the hard cap or their count; both rule modes."""
    torch.manual_seed(0)
    over = {"boundary_mode": mode, "delta": 0.0} if mode == "delta" else {"threshold": 100.0}
    cfg = HierAEConfig(
        levels=[tiny_level(window=4, max_segment_len=3, **over)],
        top_lm={"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 1},
    )
    model = HierAEModel(cfg).eval()
    codes = torch.randint(0, 256, (5, 9))  # (B, S)
    cmask = torch.arange(9)[None, :] < torch.tensor([9, 1, 4, 0, 6])[:, None]  # a row without codes
    out, _ = _assert_same(model, codes, cmask)
    assert out.sequences.shape[1] > 4  # longer than the window: the KV caches wrap
    assert not bool(out.attention_mask[3].any())


# ---- (b) the round trip: tests/test_model.py (exact-match rate on held-out lines) ---------------


# ---- (c) one position per step ------------------------------------------------------------------
def test_decode_feeds_one_position_per_step(trained_2level, grammar_data):
    """Forward hooks on the first attention projection: every call of the decoder and the entropy
    model of every level reads exactly one position per row; each real token costs one position."""
    model, _ = trained_2level
    codes, cmask = _mixed_batch(model, grammar_data[1][:6])
    calls: dict[str, list[tuple[int, int]]] = {}
    hooks = []
    for li, level in enumerate(model.levels):
        for name, module in (("decoder", level.decoder), ("entropy", level.entropy_model)):
            key = f"{name}{li}"
            calls[key] = []

            def hook(mod, args, out, key=key):
                calls[key].append(tuple(args[0].shape[:2]))  # (rows, positions)

            hooks.append(module.body.blocks[0].attn.qkv.register_forward_hook(hook))
    try:
        out = model.decode(codes, cmask)
    finally:
        for h in hooks:
            h.remove()
    top_codes = model.levels[1].quantizer.lookup(codes)
    _, valid1, _ = model.levels[1].regenerate(top_codes, cmask)
    valid = {0: out.attention_mask.bool(), 1: valid1}
    for li in range(model.num_levels):
        for name in ("decoder", "entropy"):
            seen = calls[f"{name}{li}"]
            assert all(t == 1 for _, t in seen), (name, li, seen[:5])
            assert len(seen) == valid[li].shape[1]  # one call per step
            assert sum(r for r, _ in seen) == int(valid[li].sum())  # one position per real token


# ---- (d) bf16: decode's boundaries are encode's --------------------------------------------------
def test_bf16_decode_boundaries_match_encode(trained_1level, grammar_data):
    """Under CPU bf16 autocast and in a bf16 load, decode's entropy model runs in fp32 as encode's
    does (DESIGN §3, precision): the boundaries decode drew are the ones `level.segment` finds on
    its tokens, and the fp32 decode's wherever the (bf16) decoder regenerated the same tokens."""
    model, folder = trained_1level
    codes, cmask = _mixed_batch(model, grammar_data[1][:8])
    level = model.levels[0]
    ctx = level.quantizer.lookup(codes)
    dtypes = []
    hook = level.entropy_model.head.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    try:
        with torch.no_grad():
            ref = level.regenerate(ctx, cmask)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                auto = level.regenerate(ctx, cmask)
                auto_seq = model.decode(codes, cmask).sequences
    finally:
        hook.remove()
    assert dtypes and set(dtypes) == {torch.float32}  # the segmenting path stays fp32 under autocast
    with torch.no_grad():
        bf16 = HierAEModel.from_pretrained(folder, dtype=torch.bfloat16).eval()
        loaded = bf16.levels[0].regenerate(ctx, cmask)
    assert torch.equal(auto_seq, auto[0])
    for tokens, valid, seg_id in (auto, loaded):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            _, H, layout, _, _ = level.segment(tokens, valid, positions_from_mask(valid))
        # decode's boundaries == encode's (the streamed step and the whole-row forward round
        # differently: up to a near-tie, helpers/ties.py)
        theta = float(level.boundary_value)
        assert len(compare_boundaries(seg_id, layout.seg_id, H, theta)) <= 1
        n = min(tokens.shape[1], ref[0].shape[1])
        same = (tokens[:, :n] == ref[0][:, :n]).all(dim=1) & (valid[:, n:].sum(1) == 0)  # (B,)
        same &= ref[1][:, n:].sum(1) == 0
        print(f"\nbf16: {int(same.sum())} of {len(same)} rows regenerate the fp32 tokens")
        assert int(same.sum()) >= len(same) // 2
        # == the fp32 decode's boundaries, up to a near-tie
        assert len(compare_boundaries(seg_id[same, :n], ref[2][same, :n], H[same, :n], theta)) <= 1


@pytest.mark.parametrize("fixture", ["trained_1level", "trained_2level"])
def test_next_code_reads_each_code_just_before_its_segment(request, grammar_data, fixture):
    """`decode(next_code=...)` (the codec's interleaved codes) regenerates what `decode(codes)` does,
    asking for code j once, in order, when the top level's tokens of segments 0..j-1 are out and
    none of segment j's: the number of top-level tokens picked so far is where segment j starts."""
    model, _ = request.getfixturevalue(fixture)
    top = model.num_levels - 1
    ids = frame_document(grammar_data[1][0].encode())[None]  # (1, N + 2)
    enc = model.encode(ids)
    codes = enc.top_codes[:, enc.top_mask[0]]  # (1, S)
    seg_id = enc.segment_ids[top][0][enc.level_mask[top][0]]  # (n_top,) each top-level token's segment
    starts = [int((seg_id < j).sum()) for j in range(codes.shape[1])]
    picked, asked = [], []

    def pick(level, n, logits, rows):
        token = logits.argmax(dim=-1)
        if level == top:
            picked.append(int(token[0]))
        return token

    def next_code(j):
        asked.append((j, len(picked)))
        return int(codes[0, j])

    ref = model.decode(codes)
    out = model.decode(torch.zeros_like(codes), pick=pick, next_code=next_code)
    assert torch.equal(out.sequences, ref.sequences) and torch.equal(out.attention_mask, ref.attention_mask)
    assert asked == list(zip(range(codes.shape[1]), starts))
    with pytest.raises(ValueError, match="one row"):
        model.decode(codes.expand(2, -1), next_code=next_code)
    with pytest.raises(ValueError, match=r"next_code\(0\) = -1 is invalid"):
        model.decode(codes, next_code=lambda j: -1)
