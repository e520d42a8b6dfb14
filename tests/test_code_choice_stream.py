"""Decoder-chosen codes in streaming generation (`code_choice_stream.py`): the prefill's queue and
caches on toy rows, and on a trained checkpoint the stepped choice equals the whole-row one
(`choose_codes`) except at near-ties of the candidates' CEs, cached greedy generation equals
uncached, and reordering the rows (beam search) moves every pass's cache with its row."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from helpers.ties import chooser_logits, compare_greedy
from test_causal_lm import as_lm
from test_level_options import _segment_ce

from hier_ae.code_choice_stream import open_code_choice_stream
from hier_ae.level import CHOICE_TOLERANCE, pick_candidate
from hier_ae.segmentation import boundary_starts, segment_layout

L, K, BEGIN = 4, 2, 259
CE_MARGIN = 1e-4  # segment CEs (sums of a few float32 CEs) the cached step and the whole row may round apart


def test_open_code_choice_stream_worked_example():
    """Five toy rows (T = 4, L = 4, ids a b c d = 10 11 12 13, decoder input [BEGIN, x]):

    row 0  a b | c d        open "cd"      queue columns 2 3 4: b c d (targets c d, then the next)
    row 1  _ a b c |        closed "abc"   queue column 4: c; caches keep BEGIN a b
    row 2  (no token)                      queue column 0: BEGIN; caches empty
    row 3  a b c d          full (L): closed, queue column 4: d
    row 4  a b c _          open "abc"     queue columns 0 1 2 3: BEGIN a b c
    """
    tokens = torch.tensor(
        [[10, 11, 12, 13], [0, 10, 11, 12], [0, 0, 0, 0], [10, 11, 12, 13], [10, 11, 12, 0]]
    )
    valid = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]).bool()
    fires = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]).bool()
    layout = segment_layout(boundary_starts(fires, valid, L), valid)
    cfg = SimpleNamespace(code_choice_candidates=K, max_segment_len=L, decoder_reads_entropy=False)
    level = SimpleNamespace(
        cfg=cfg, decoder=SimpleNamespace(begin_id=BEGIN, history=2), vocab=SimpleNamespace(pad_id=0)
    )
    p = SimpleNamespace(tokens=tokens, valid=valid, layout=layout, fires=fires, entropy_h=None)
    B, T = tokens.shape
    keys = torch.arange(K * B * (T + 1), dtype=torch.float).view(K * B, 1, T + 1, 1)  # (k*B, H, T+1, hd)
    ch = open_code_choice_stream(level, p, [(keys, keys)])

    assert ch.queued.tolist() == [3, 1, 1, 1, 4]
    n = ch.queued
    queued = [ch.inputs[b, : n[b]].tolist() for b in range(B)]
    assert queued == [[11, 12, 13], [12], [BEGIN], [13], [BEGIN, 10, 11, 12]]
    offsets = [ch.offsets[b, : n[b]].tolist() for b in range(B)]
    assert offsets == [[0, 1, 2], [0], [0], [0], [0, 1, 2, 3]]  # of the token each input predicts
    # the open segment's tokens so far: the queue after its first input (the targets of a close)
    assert ch.inputs[0, 1:3].tolist() == [12, 13] and ch.inputs[4, 1:4].tolist() == [10, 11, 12]
    # n-gram history: the 2 inputs before each queued one, -1 before the row and on padding
    assert ch.history[0, :3].tolist() == [[BEGIN, 10], [10, 11], [11, 12]]
    assert ch.history[1, 0].tolist() == [10, 11]
    assert ch.history[4, :2].tolist() == [[-1, -1], [-1, BEGIN]]
    # every pass keeps the columns before the queue; a step writes the first queued input next
    assert ch.cache.length.tolist() == [2, 4, 0, 4, 0] * K
    assert ch.cache.n_valid.tolist() == [2, 3, 0, 4, 0] * K  # the next rotary position
    assert ch.cache_rows(torch.tensor([1, 3])).tolist() == [1, 3, 6, 8]  # pass-major


def test_pick_candidate_worked_example():
    """`pick_candidate`'s docstring: the nearest candidate within the tolerance of the lowest CE."""
    ce = torch.tensor([[2.0, 1e-7], [1.0, 3e-8], [1.0005, 5e-7]])  # (k = 3, 2 segments)
    assert pick_candidate(ce).tolist() == [1, 0]
    assert pick_candidate(torch.tensor([[1.0], [1.0 - 2 * CHOICE_TOLERANCE]])).tolist() == [1]


def _with_choice(model, k: int = 4):
    """A copy of a trained model whose levels choose their codes among the k nearest."""
    model = copy.deepcopy(model).eval()
    for i, level in enumerate(model.levels):
        level.cfg.code_choice_candidates = k  # what the level reads
        model.config.levels[i]["code_choice_candidates"] = k
    return model


def _candidate_ces(level, p, pooled):
    """Every segment's CE under each of its k candidates, pass i reading every segment's i-th:
    (B, S, k) and the candidates (B, S, k) (what `choose_codes` compares, recomputed here)."""
    cand = level.candidate_codes(pooled)  # (B, S, k)
    mask = p.layout.seg_mask
    ces = [
        _segment_ce(level, p, level.quantizer(pooled, mask, codes=cand[..., i]))
        for i in range(cand.shape[-1])
    ]
    return torch.stack(ces, -1), cand


@pytest.mark.parametrize("fixture", ["trained_inputs", "trained_2level"])
def test_stepped_codes_equal_the_whole_row_choice(fixture, request, grammar_data):
    """Prefill a left-padded batch, stream the rest of each text and an EOS byte by byte: the codes
    each level passes up are `encode`'s codes of those segments (near-ties of two candidates'
    segment CEs aside), with the decoder inputs the trained fixtures ship (n-grams, entropy states)."""
    model = _with_choice(request.getfixturevalue(fixture)[0])
    rows = [[2] + [b + 3 for b in s.encode()] + [1] for s in grammar_data[1][:2]]  # <s> text </s>
    n = min(len(ids) for ids in rows) - 8  # bytes streamed per row (the rest is the prompt)
    cut = [len(ids) - n for ids in rows]  # prompt lengths
    streamed = [[[] for _ in rows] for _ in model.levels]  # per level, per row: the codes passed up
    originals = [level.choose_closing_codes for level in model.levels]
    for li, level in enumerate(model.levels):

        def spy(ch, closing, *rest, li=li):
            codes = originals[li](ch, closing, *rest)
            for r, c in zip(closing.tolist(), codes.tolist()):
                streamed[li][r].append(c)
            return codes

        level.choose_closing_codes = spy
    P = max(cut)
    prompt, mask = torch.zeros(2, P, dtype=torch.long), torch.zeros(2, P, dtype=torch.long)
    for r, (ids, c) in enumerate(zip(rows, cut)):  # left padded
        prompt[r, P - c :], mask[r, P - c :] = torch.tensor(ids[:c]), 1
    with torch.no_grad():
        state = model.predict(prompt, mask, return_stream=True).stream
        for j in range(n):
            model.stream_step(state, torch.tensor([ids[c + j] for ids, c in zip(rows, cut)]))
    for li, level in enumerate(model.levels):
        level.choose_closing_codes = originals[li]
    checked, ties = 0, []
    for r, ids in enumerate(rows):
        with torch.no_grad():
            enc = model.encode(torch.tensor([ids]))
            for li, level in enumerate(model.levels):
                valid = enc.level_mask[li][:1].bool()
                tokens = enc.level_tokens[li][:1]
                p = level.bottom_up(tokens, valid, encode=False)
                _, pooled = level.pool_segments(p)
                ces, cand = _candidate_ces(level, p, pooled)
                m = enc.code_mask[li][0].bool()
                want = enc.codes[li][0][m]  # (S,)
                got = streamed[li][r]
                # the streamed codes are the last ones (the EOS closes every level's last segment)
                assert 0 < len(got) <= len(want), (li, r, len(got), len(want))
                first = len(want) - len(got)
                for s, c in enumerate(got):
                    seg = first + s
                    checked += 1
                    if c == int(want[seg]):
                        continue
                    # the two paths agree to rounding: they may pick differently only where a
                    # candidate's CE is within rounding of the tie line (the lowest + the tolerance)
                    line = float(ces[0, seg].min()) + CHOICE_TOLERANCE
                    gap = float((ces[0, seg] - line).abs().min())
                    where = f"level {li} row {r} segment {seg}: {c} vs {int(want[seg])}, gap {gap:.2e}"
                    assert gap < CE_MARGIN, where
                    ties.append(where)
    assert checked >= 6, checked
    assert not ties, ties  # none is expected on these texts


@pytest.mark.parametrize("fixture", ["trained_inputs", "trained_2level"])
def test_cached_generation_with_chosen_codes_equals_uncached(fixture, request):
    model = _with_choice(request.getfixturevalue(fixture)[0])
    lm = as_lm(model)
    prompts = [b"the cat", b"a small dog sees"]
    P = max(len(t) for t in prompts) + 1
    ids = torch.zeros(2, P, dtype=torch.long)
    mask = torch.zeros(2, P, dtype=torch.long)
    for r, t in enumerate(prompts):
        ids[r, P - len(t) - 1 :] = torch.tensor([2] + [b + 3 for b in t])
        mask[r, P - len(t) - 1 :] = 1
    a = lm.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, use_cache=True)
    b = lm.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, use_cache=False)
    reports = compare_greedy(a, b, chooser_logits(lm, b, mask), start=P)
    assert not reports, reports


def test_reordered_rows_keep_their_code_choice_caches(trained_inputs):
    """`StreamState.reorder` (beam search) moves each row's k pass caches and queue with it:
    stepping the swapped state gives the swapped logits, through several closed segments."""
    model = _with_choice(trained_inputs[0])
    text = [[2] + [b + 3 for b in s.encode()] for s in ("the dog runs to a red house", "a cat sees the bird")]
    ids = torch.tensor([text[0][:8], text[1][:8]])
    with torch.no_grad():
        plain = model.predict(ids, return_stream=True).stream
        swapped = model.predict(ids, return_stream=True).stream
        swapped.reorder(torch.tensor([1, 0]))
        for j in range(8, 19):
            toks = torch.tensor([text[0][j], text[1][j]])
            want = model.stream_step(plain, toks)  # (2, V)
            got = model.stream_step(swapped, toks.flip(0))
            torch.testing.assert_close(got, want.flip(0), rtol=0, atol=1e-4)
