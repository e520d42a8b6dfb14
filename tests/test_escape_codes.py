"""Escape codes, a variable code rate (`escape_codebook_size`, issue 21): a second codebook quantises
what a segment's code leaves of its pooled vector, and the decoder reads it on escaped segments only.
Training escapes a random share of segments; `encode` escapes the segments the code alone does not give
back; `decode(..., escape_codes=)` reads them. Checked on random weights (the context arithmetic, the
training share, the errors) and on a checkpoint trained on the grammar corpus (what `encode` escapes,
and that decoding with the escapes gives back every line whose segments all come back teacher-forced)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_TOP, _trained_fixture, tiny_level

from hier_ae import HierAEConfig, HierAEModel
from hier_ae.data.batching import frame_document, pad_rows
from hier_ae.evaluation.reports import escape_counts, reconstruction_report
from hier_ae.level import pick_fewest_misses, segment_misses, wrong_in
from hier_ae.training.stages import Stage, prepare_stage

ESCAPE = {"escape_codebook_size": 16, "decoder_code_embedding": True}


def _model(**level) -> HierAEModel:
    torch.manual_seed(0)
    opts = {"threshold": 1e9, "max_segment_len": 5, **ESCAPE, **level}
    return HierAEModel(HierAEConfig(levels=[tiny_level(**opts)], top_lm=TINY_TOP))


def _ids(seed: int, rows: int = 2, length: int = 30) -> torch.Tensor:
    return torch.randint(3, 259, (rows, length), generator=torch.Generator().manual_seed(seed))


# ---- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "level, match",
    [
        (
            {"escape_codebook_size": 1},
            r"escape_codebook_size=1 is invalid: 0 \(no escape codes\) or an integer",
        ),
        ({"escape_codebook_size": 2.5}, r"escape_codebook_size=2.5 is invalid"),
        ({"escape_codebook_size": True}, r"escape_codebook_size=True is invalid"),
        ({"escape_codebook_size": 70000}, r"escape_codebook_size=70000 is invalid"),
        (
            {"escape_codebook_size": 8, "quantizer": "fsq", "fsq_levels": [8, 5]},
            r"escape_codebook_size=8 is invalid: 0 unless quantizer='vq'",
        ),
        ({"escape_train_rate": 0.0}, r"escape_train_rate=0.0 is invalid: > 0 unless escape_train_failed"),
        ({"escape_train_rate": 1.5}, r"escape_train_rate=1.5 is invalid: a fraction in \[0, 1\]"),
        ({"escape_train_rate": True}, r"escape_train_rate=True is invalid"),
        ({"escape_train_failed": 1}, r"escape_train_failed=1 is invalid: a bool"),
        (
            {"escape_codebook_size": 16, "escape_choice_candidates": 1},
            r"escape_choice_candidates=1 is invalid: 0 \(the nearest",
        ),
        (
            {"escape_codebook_size": 16, "escape_choice_candidates": 17},
            r"escape_choice_candidates=17 is invalid: .*escape_codebook_size=16",
        ),
        ({"escape_choice_candidates": 4}, r"escape_choice_candidates=4 is invalid: .*escape_codebook_size=0"),
        (
            {"escape_codebook_size": 16, "escape_choice_candidates": 4, "escape_joint_candidates": 1},
            r"escape_joint_candidates=1 is invalid: 0 \(off\) or an integer in \[2, codebook_size=",
        ),
        (
            {"escape_codebook_size": 16, "escape_joint_candidates": 4},
            r"escape_joint_candidates=4 is invalid: 0 unless escape_choice_candidates > 0",
        ),
        ({"escape_codebook_size": 16, "escape_depth": 3}, r"escape_depth=3 is invalid: 1 or 2"),
        ({"escape_depth": 2}, r"escape_depth=2 is invalid: 1 or 2 \(2 needs escape codes"),
        (
            {"escape_codebook_size": 512, "escape_depth": 2},
            r"escape_depth=2 is invalid: 1 with escape_codebook_size=512 \(two depths need K_e\*\*2 <= 65536",
        ),
        ({"escape_deep_train_rate": 1.5}, r"escape_deep_train_rate=1.5 is invalid: a fraction in \[0, 1\]"),
    ],
)
def test_escape_settings_are_checked(level, match):
    with pytest.raises(ValueError, match=r"levels\[0\]\." + match):
        HierAEConfig(levels=[level])


# ---- random weights: the arithmetic -----------------------------------------------------------
def test_joint_choice_only_on_the_top_level():
    low = tiny_level(escape_codebook_size=16, escape_choice_candidates=4, escape_joint_candidates=4)
    match = r"levels\[0\]\.escape_joint_candidates=4 is invalid: 0 below the top"
    with pytest.raises(ValueError, match=match):
        HierAEConfig(levels=[low, tiny_level()], top_lm=TINY_TOP)
    HierAEConfig(levels=[tiny_level(), low], top_lm=TINY_TOP)  # on the top level it is allowed


def test_escape_vectors_worked_example():
    """escapes [[2, -1]] -> [[codebook[2] + embed[2], 0]]: -1 adds nothing."""
    level = _model().levels[0]
    with torch.no_grad():
        out = level.escape_vectors(torch.tensor([[2, -1]]))  # (1, 2, D)
    want = level.escape_quantizer.codebook[0, 2] + level.decoder.escape_embed.weight[2]
    torch.testing.assert_close(out[0, 0], want)
    assert torch.equal(out[0, 1], torch.zeros_like(out[0, 1]))


def test_two_digit_escape_ids_worked_example():
    """`escape_depth` 2, K_e = 16 (16 + 16**2 ids): ids [[3, 16 + 5 + 16 * 2, -1]] -> digits d0
    [[3, 5, 0]], d1 [[-1, 2, -1]] (`two_digit`: the middle one); the two-digit id's vector is
    codebook[0, 5] + codebook[1, 2] + embed[5] + embed[16 + 2]."""
    level = _model(escape_depth=2).levels[0]
    assert level.cfg.num_escape_ids == 16 + 256 and _model().levels[0].cfg.num_escape_ids == 16
    ids = torch.tensor([[3, 16 + 5 + 16 * 2, -1]])
    d0, d1 = level.escape_digits(ids)
    assert d0.tolist() == [[3, 5, 0]] and d1.tolist() == [[-1, 2, -1]]
    assert level.two_digit(ids).tolist() == [[False, True, False]]
    # escaped and two-digit segments counted over the mask (`escape_counts`)
    assert escape_counts(level, ids, torch.tensor([[1, 1, 1]])) == (2, 1)
    assert escape_counts(level, ids, torch.tensor([[1, 0, 1]])) == (1, 0)
    with torch.no_grad():
        out = level.escape_vectors(ids)  # (1, 3, D)
    cb, emb = level.escape_quantizer.codebook, level.decoder.escape_embed.weight
    torch.testing.assert_close(out[0, 0], cb[0, 3] + emb[3])
    torch.testing.assert_close(out[0, 1], cb[0, 5] + cb[1, 2] + emb[5] + emb[16 + 2])
    assert torch.equal(out[0, 2], torch.zeros_like(out[0, 2]))


def test_training_reads_a_second_escape_digit_on_a_share_of_escaped_segments():
    """`escape_depth` 2: in training `escape_deep_train_rate` (0.5) of the escaped segments read both
    digits (the straight-through vector of the two-digit code), the others the first digit's vector
    alone; the two-digit vector carries the gradient to the pooled vector either way."""
    model = _model(escape_depth=2, escape_train_rate=1.0, threshold=0.0, min_segment_len=1).train()
    level = model.levels[0]
    ids = _ids(3, rows=8)
    p = level.bottom_up(ids, torch.ones_like(ids, dtype=torch.bool))
    seg = p.layout.seg_mask
    assert torch.equal(p.escape_mask, seg)
    share = p.escape_deep[seg].float().mean().item()  # 240 segments, binomial sd 0.032
    assert 0.38 < share < 0.62 and not (p.escape_deep & ~p.escape_mask).any()
    ctx = level.escape_context(p, torch.zeros_like(p.escape_q.z))  # (B, S, D)
    digits, cb = p.escape_q.digits, level.escape_quantizer.codebook
    emb = level.decoder.escape_embed.weight
    b, s = p.escape_deep.nonzero()[0].tolist()
    want = cb[0, digits[b, s, 0]] + cb[1, digits[b, s, 1]] + emb[digits[b, s, 0]] + emb[16 + digits[b, s, 1]]
    torch.testing.assert_close(ctx[b, s], want, atol=1e-5, rtol=1e-5)
    b, s = (seg & ~p.escape_deep).nonzero()[0].tolist()
    torch.testing.assert_close(ctx[b, s], cb[0, digits[b, s, 0]] + emb[digits[b, s, 0]], atol=1e-5, rtol=1e-5)
    ctx.sum().backward()
    assert p.pooled.requires_grad and level.pooling.parameters().__next__().grad is not None


def test_training_escapes_a_share_of_segments_and_trains_the_escape_codebook():
    """In training each segment reads its escape code with `escape_train_rate` (here 0.25 of 240
    segments, binomial sd 0.028); in eval none does. The escape codes quantise pooled - code vector,
    the EMA gathers them, and the autoencoder stage trains the escape embedding."""
    model = _model(escape_train_rate=0.25, threshold=0.0, min_segment_len=1).train()
    level = model.levels[0]
    ids = _ids(3, rows=8)
    p = level.bottom_up(ids, torch.ones_like(ids, dtype=torch.bool))
    seg = p.layout.seg_mask
    assert int(seg.sum()) == 240
    share = p.escape_mask[seg].float().mean().item()
    assert 0.15 < share < 0.35
    assert not p.escape_mask[~seg].any()
    residual = p.pooled.detach().float() - level.quantizer.lookup(p.q.codes)
    eq = level.escape_quantizer
    dist = torch.cdist(residual[seg], eq.codebook[0].float())  # (N, K_e)
    assert torch.equal(p.escape_q.codes[seg], dist.argmin(-1))
    before = eq.ema_count.clone()
    model.apply_quantizer_updates()
    assert not torch.equal(eq.ema_count, before)
    level.eval()
    assert not level.bottom_up(ids, torch.ones_like(ids, dtype=torch.bool)).escape_mask.any()
    model.requires_grad_(False)
    prepare_stage(model, Stage("autoencoder", 0, 1, 1e-3))
    assert level.decoder.escape_embed.weight.requires_grad


@torch.no_grad()
def test_reconstruct_mode_reads_an_escape_from_its_segment_on():
    """Escaping segment j moves reconstruct mode's logits from segment j's first token on, never
    before it (the decoder is causal); with no segment escaped they equal the model's without."""
    model = _model().eval()
    level = model.levels[0]
    ids = _ids(4, rows=1)
    p = level.bottom_up(ids, torch.ones_like(ids, dtype=torch.bool))
    plain = level.reconstruct_logits(p)
    p.escape_mask[0, 2] = True
    start = int((p.layout.seg_id[0] == 2).nonzero()[0])
    moved = level.reconstruct_logits(p)
    torch.testing.assert_close(moved[0, :start], plain[0, :start])
    assert not torch.allclose(moved[0, start], plain[0, start])
    p.escape_q = None
    torch.testing.assert_close(level.reconstruct_logits(p), plain)


def test_decode_checks_its_escape_codes():
    model = _model().eval()
    enc = model.encode(_ids(5))
    codes, mask = enc.codes[0], enc.code_mask[0]
    with pytest.raises(ValueError, match=r"escape_codes must be in \[0, 16\) .* or -1"):
        model.decode(codes, mask, escape_codes=torch.full_like(codes, 16))
    deep = _model(escape_depth=2).eval()
    deep.decode(codes, mask, escape_codes=torch.full_like(codes, 16 + 255))  # the last two-digit id
    with pytest.raises(ValueError, match=r"escape_codes must be in \[0, 272\) \(K_e \+ K_e\*\*2 two-digit"):
        deep.decode(codes, mask, escape_codes=torch.full_like(codes, 272))
    with pytest.raises(ValueError, match=r"escape_codes must be a tensor of the codes' shape"):
        model.decode(codes, mask, escape_codes=torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="escape_codes must hold integer ids"):
        model.decode(codes, mask, escape_codes=torch.zeros_like(codes, dtype=torch.float))
    with pytest.raises(ValueError, match="give either escape_codes or next_code"):
        model.decode(codes[:1], mask[:1], escape_codes=codes[:1] * 0, next_code=lambda j: 0)
    plain = HierAEModel(HierAEConfig(levels=[tiny_level()], top_lm=TINY_TOP)).eval()
    with pytest.raises(ValueError, match="has no escape codebook"):
        plain.decode(codes, mask, escape_codes=torch.full_like(codes, -1))
    assert torch.equal(
        plain.encode(_ids(5)).escape_codes[0], torch.full_like(plain.encode(_ids(5)).codes[0], -1)
    )


def test_segment_misses_and_the_escape_choice_rule_worked_examples():
    """`segment_misses`' and `pick_fewest_misses`' docstrings: misses per segment; the candidate with
    the fewest misses wins over a lower CE, and CE decides among the fewest."""
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 5, 5]]), 8).float()  # argmax a x x, a = 0
    tokens = torch.tensor([[0, 1, 2]])  # a b c
    got = segment_misses(logits, tokens, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[0, 0, 1]]), 2)
    assert got.tolist() == [[1, 1]]
    misses = torch.tensor([[1], [0], [0]])  # (k = 3, 1 segment)
    assert pick_fewest_misses(misses, torch.tensor([[0.2], [0.9], [0.5]])).tolist() == [2]
    assert pick_fewest_misses(torch.zeros(3, 1), torch.tensor([[0.2], [0.9], [0.5]])).tolist() == [0]


# ---- a trained checkpoint -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_escape(request, tmp_path_factory, grammar_data):
    """A 1-level model with 16 codes (too few to name the grammar's segments) and 64 escape codes,
    trained on grammar sentences: entropy 150 + autoencoder 500 steps (about a minute on 2 cores)."""
    stages = [Stage("entropy", 0, 150, 3e-3), Stage("autoencoder", 0, 500, 3e-3)]
    level = tiny_level(codebook_size=16, escape_codebook_size=64, decoder_code_embedding=True)
    config = HierAEConfig(levels=[level], top_lm=TINY_TOP, max_position_embeddings=128)
    model, _ = _trained_fixture(request, tmp_path_factory, "trained_escape", config, grammar_data[0], stages)
    return model


@pytest.mark.parametrize("choice", [0, 8])
@torch.no_grad()
def test_encode_escapes_the_segments_the_code_alone_does_not_give_back(trained_escape, grammar_data, choice):
    """On held-out sentences: with encode's escapes, teacher-forced reconstruction gets every
    non-escaped segment right (the fixed point), and greedy decoding with the escape codes gives back
    every sentence whose segments all come back teacher-forced, more than the codes alone do. With
    `escape_choice_candidates` = 8 the same holds, each escape code is one of its segment's 8 nearest
    and some are not the nearest."""
    model = trained_escape
    level = model.levels[0]
    refs = [frame_document(s.encode()).tolist() for s in grammar_data[1][:64]]
    ids, mask = pad_rows([torch.tensor(r) for r in refs])
    level.cfg.escape_choice_candidates = choice
    try:
        enc = model.encode(ids, mask)
    finally:
        level.cfg.escape_choice_candidates = 0
    if choice:
        p = level.bottom_up(ids, mask.bool())
        near = level.nearest_escape_codes(p, choice)  # (B, S, 8)
        esc = enc.escape_codes[0]
        taken = esc >= 0
        assert ((near == esc[..., None]).any(-1) | ~taken).all()
        assert (esc[taken] != near[..., 0][taken]).any(), "the choice never moved off the nearest code"
    codes, seg_mask, esc = enc.codes[0], enc.code_mask[0], enc.escape_codes[0]
    escaped = (esc >= 0) & seg_mask
    assert 0 < int(escaped.sum()) < int(seg_mask.sum())
    assert not ((esc >= 0) & ~seg_mask).any()
    # teacher forcing with encode's escapes, recomputed here from the public codes
    p = level.bottom_up(ids, mask.bool())
    ctx = level.code_context(level.quantizer.lookup(codes), codes) + level.escape_vectors(esc)
    logits = level._decode(p, level.decoder_context(ctx, p.layout.seg_id))[0][:, : ids.shape[1]]
    wrong_tok = (logits.argmax(-1) != ids) & mask.bool()
    wrong = torch.zeros_like(codes).scatter_add_(1, p.layout.seg_id.clamp(min=0), wrong_tok.long()) > 0
    assert not (wrong & ~escaped).any(), "a segment left unescaped comes back wrong"
    all_right = ~(wrong & seg_mask).any(dim=1)  # (B,)
    assert all_right.any()
    out = model.decode(codes, seg_mask, level=0, escape_codes=esc)
    plain = model.decode(codes, seg_mask, level=0)
    exact, exact_plain = [], []
    for r, ref in enumerate(refs):
        exact.append(out.sequences[r][out.attention_mask[r].bool()].tolist()[: len(ref)] == ref)
        exact_plain.append(plain.sequences[r][plain.attention_mask[r].bool()].tolist()[: len(ref)] == ref)
        if all_right[r]:
            assert exact[r], f"sentence {r} comes back teacher-forced but not from its codes"
    assert sum(exact) > sum(exact_plain)


def _encode_and_score(model, refs: list[list[int]]) -> dict:
    """`encode` the framed rows `refs` with the level's current settings, then: each segment's
    teacher-forced wrongness under encode's codes and escapes (recomputed from the public ids), checking
    the fixed point (no unescaped segment is wrong), and the rows `decode` gives back exactly."""
    level = model.levels[0]
    ids, mask = pad_rows([torch.tensor(r) for r in refs])
    enc = model.encode(ids, mask)
    codes, seg_mask, esc = enc.codes[0], enc.code_mask[0], enc.escape_codes[0]
    p = level.bottom_up(ids, mask.bool())
    ctx = level.code_context(level.quantizer.lookup(codes), codes) + level.escape_vectors(esc)
    logits = level._decode(p, level.decoder_context(ctx, p.layout.seg_id))[0][:, : ids.shape[1]]
    wrong = wrong_in(p, logits)  # (B, S)
    assert not (wrong & (esc < 0)).any(), "a segment left unescaped comes back wrong"
    out = model.decode(codes, seg_mask, level=0, escape_codes=esc)
    got = [s[m.bool()].tolist()[: len(r)] for s, m, r in zip(out.sequences, out.attention_mask, refs)]
    return {"codes": codes, "esc": esc, "wrong": wrong, "exact": sum(g == r for g, r in zip(got, refs))}


@torch.no_grad()
def test_joint_choice_mends_segments_no_escape_code_gives_back(trained_escape, grammar_data):
    """`escape_joint_candidates` on the trained checkpoint (16 codes, 64 escape codes, the escape chosen
    among its 2 nearest, the code among all 16), on held-out sentences and case-swapped ones (so that
    escaped segments stay wrong; the margins here were 528 -> 505 wrong segments, 193 -> 200 exact lines
    of 232): codes change only on escaped segments, the escaped set still reaches its fixed point (every
    segment left unescaped comes back teacher-forced), fewer escaped segments stay wrong than with the
    escape choice alone, and no fewer lines decode exactly from the codes (the same rate: one code and
    one escape code a segment)."""
    model, level = trained_escape, trained_escape.levels[0]
    # every held-out sentence, and 32 with their case swapped (text the codes were not trained on)
    lines = grammar_data[1] + [s.swapcase() for s in grammar_data[1][:32]]
    refs = [frame_document(s.encode()).tolist() for s in lines]
    res = {}
    for joint in (0, 16):
        level.cfg.escape_choice_candidates, level.cfg.escape_joint_candidates = 2, joint
        try:
            r = _encode_and_score(model, refs)
        finally:
            level.cfg.escape_choice_candidates = level.cfg.escape_joint_candidates = 0
        res[joint] = {**r, "escaped": r["esc"] >= 0, "wrong": int(r["wrong"].sum())}
    assert res[0]["wrong"] > 0, "the fixture leaves no escaped segment wrong: nothing for the joint choice"
    moved = res[16]["codes"] != res[0]["codes"]
    assert moved.any(), "the joint choice never moved a code"
    assert not (moved & ~res[16]["escaped"]).any()
    assert res[16]["wrong"] < res[0]["wrong"]
    assert res[16]["exact"] >= res[0]["exact"]


@pytest.fixture(scope="module")
def trained_deep_escape(request, tmp_path_factory, grammar_data):
    """As `trained_escape` with 16 escape codes of two digits (`escape_depth` 2): 16 + 256 escape ids."""
    stages = [Stage("entropy", 0, 150, 3e-3), Stage("autoencoder", 0, 500, 3e-3)]
    level = tiny_level(codebook_size=16, escape_codebook_size=16, escape_depth=2, decoder_code_embedding=True)
    config = HierAEConfig(levels=[level], top_lm=TINY_TOP, max_position_embeddings=128)
    name = "trained_deep_escape"
    model, _ = _trained_fixture(request, tmp_path_factory, name, config, grammar_data[0], stages)
    return model


@torch.no_grad()
def test_second_escape_digits_mend_segments_one_digit_does_not(trained_deep_escape, grammar_data):
    """`escape_depth` 2 on a trained checkpoint, held-out and case-swapped sentences, each digit chosen
    among all 16: `encode` gives a second digit to some escaped segments, each of which then comes back
    teacher-forced (`choose_deep_codes` keeps a second digit only where it gives the segment back), the
    fixed point holds (no unescaped segment is wrong), and fewer segments stay wrong and no fewer lines
    decode exactly than with one digit (the same model encoding with `escape_depth` 1). Margins on two
    trainings of the fixture (float reductions differ between runs): 8 and 10 segments took a second
    digit, of about 1,200 escaped (the case-swapped lines escape nearly every segment)."""
    model, level = trained_deep_escape, trained_deep_escape.levels[0]
    lines = grammar_data[1] + [s.swapcase() for s in grammar_data[1][:64]]
    refs = [frame_document(s.encode()).tolist() for s in lines]
    res = {}
    for depth in (1, 2):
        level.cfg.escape_choice_candidates, level.cfg.escape_depth = 16, depth
        try:
            r = _encode_and_score(model, refs)
        finally:
            level.cfg.escape_choice_candidates, level.cfg.escape_depth = 0, 2
        res[depth] = {**r, "deep": r["esc"] >= 16}
    assert not res[1]["deep"].any()
    deep = res[2]["deep"]
    assert deep.any(), "no segment took a second digit"
    assert not (deep & res[2]["wrong"]).any(), "a segment with a second digit comes back wrong"
    assert int(res[2]["wrong"].sum()) < int(res[1]["wrong"].sum())
    assert res[2]["exact"] >= res[1]["exact"]


def test_training_escapes_the_segments_the_codes_alone_get_wrong(trained_escape, grammar_data):
    """`escape_train_failed` with rate 0: in training the reconstruct term first runs the codes alone
    (its CE counts), then escapes exactly the segments that pass gets wrong (on the trained checkpoint
    some, not all) and adds the escape pass's CE; with rate 1 every segment is escaped."""
    level = trained_escape.levels[0]
    ids, mask = pad_rows([frame_document(s.encode()) for s in grammar_data[1][:32]])
    saved = (level.cfg.escape_train_rate, level.cfg.escape_train_failed)
    level.cfg.escape_train_rate, level.cfg.escape_train_failed = 0.0, True
    level.train()
    level.codebook_frozen = True  # leave the fixture's EMA statistics alone
    try:
        with torch.no_grad():
            p = level.bottom_up(ids, mask.bool())
            assert not p.escape_mask.any()
            want = level.wrong_segments(p)  # no dropout in the tiny config: the same pass
            alone = p.next_token_loss(level.reconstruct_logits(p))
            terms = level.autoencode_terms(p, reconstruct=True)
            assert torch.equal(p.escape_mask, want)
            assert 0 < int(want.sum()) < int(p.layout.seg_mask.sum())
            escaped = p.next_token_loss(level.reconstruct_logits(p))
            torch.testing.assert_close(terms.reconstruct, alone + escaped)
            assert escaped < alone  # the escapes give back what the codes alone lose
            level.cfg.escape_train_rate = 1.0
            q = level.bottom_up(ids, mask.bool())
            assert torch.equal(q.escape_mask, q.layout.seg_mask)
    finally:
        level.cfg.escape_train_rate, level.cfg.escape_train_failed = saved
        level.codebook_frozen = False
        level.eval()


def test_recon_bench_reports_the_escape_codes(trained_escape, grammar_data):
    """bench.recon on the trained checkpoint: the escape figures of a level with escape codes equal the
    escape probe's (the same encode and decode), exact with escapes >= codes alone, and its page has the
    escape table; a model without escape codes gets neither."""
    recon = pytest.importorskip("bench.recon")
    from bench import decode_probes

    texts = [s.encode() for s in grammar_data[1][:48]]
    res = recon.evaluate_sample(trained_escape, texts, batch_size=16)["levels"][0]
    refs = [frame_document(t).tolist() for t in texts]
    probe = decode_probes.escape_report(trained_escape, refs, texts, batch=16)
    esc = res["escape"]
    assert esc["exact_match"] == probe["exact_match"] > res["exact_match"]
    assert esc["escaped_segments"] == probe["escaped_segments"] > 0
    assert esc["code_bits_per_byte_no_escape"] == pytest.approx(res["code_bits_per_byte"])
    texts_res = {"grammar": {"lines": {"levels": [res]}}}
    table = "\n".join(recon.escape_table(texts_res, 1))
    assert f"| grammar | 0 | {100 * esc['exact_match']:.1f}% | - |" in table
    res["escape"] = None
    assert recon.escape_table(texts_res, 1) == []


def test_reconstruction_report_gives_the_variable_rate_figures(trained_escape, grammar_data):
    """The package's report (what `make demo` prints) on the trained checkpoint: with escape codes the
    exact-match rate is the escape probe's and above the codes alone's, and the rate adds each flag at
    its entropy plus log2 K_e an escape (`escape_rates`); a model without escape codes has no such keys."""
    decode_probes = pytest.importorskip("bench.decode_probes")

    texts = [s.encode() for s in grammar_data[1][:48]]
    rep = reconstruction_report(trained_escape, texts, batch_size=16)
    probe = decode_probes.escape_report(
        trained_escape, [frame_document(t).tolist() for t in texts], texts, 16
    )
    assert rep["escape_exact_match"] == probe["exact_match"] > rep["exact_match"]
    assert rep["escaped_segments"] == probe["escaped_segments"] > 0
    assert rep["escape_code_bits_per_byte"] == pytest.approx(probe["code_bits_per_byte_flag_ideal"])
    segs_per_byte = rep["code_bits_per_byte"] / 4  # log2 16 bits a code
    f = rep["escaped_segments"]
    flag = -(f * math.log2(f) + (1 - f) * math.log2(1 - f))
    want = rep["code_bits_per_byte"] + segs_per_byte * (flag + f * 6)  # log2 64 bits an escape
    assert rep["escape_code_bits_per_byte"] == pytest.approx(want)
    assert rep["escape_code_bits_per_byte_flag_1bit"] == pytest.approx(
        rep["code_bits_per_byte"] + segs_per_byte * (1 + f * 6)
    )
    plain = reconstruction_report(_model(escape_codebook_size=0), texts[:4])
    assert not any(k.startswith("escape") for k in plain)


def test_reconstruction_report_with_corrections_agrees_with_the_escape_probe(trained_escape, grammar_data):
    """`reconstruction_report(..., corrections=True)` (what `make demo` prints) on the trained checkpoint:
    every line back, at the rate the escape probe gives (codes + flags at their entropy + escapes +
    corrections at this text's own count shares); without escape codes the escape part is 0."""
    decode_probes = pytest.importorskip("bench.decode_probes")

    texts = [s.encode() for s in grammar_data[1][:48]]
    rep = reconstruction_report(trained_escape, texts, batch_size=16, corrections=True)
    probe = decode_probes.escape_report(
        trained_escape, [frame_document(t).tolist() for t in texts], texts, 16, corrections=True
    )
    assert rep["corrected_exact_match"] == probe["exact_match_corrected"] == 1.0
    assert rep["corrections_per_line"] == pytest.approx(probe["corrections_per_line"])
    assert rep["correction_bits_per_byte"] == pytest.approx(probe["correction_bits_per_byte"])
    assert rep["corrected_code_bits_per_byte"] == pytest.approx(probe["code_bits_per_byte_corrected_ideal"])
    assert rep["corrected_escape_bits_per_byte"] == pytest.approx(
        rep["escape_code_bits_per_byte"] - rep["code_bits_per_byte"]
    )
    plain = reconstruction_report(_model(escape_codebook_size=0), texts[:4], corrections=True)
    assert plain["corrected_exact_match"] == 1.0 and plain["corrected_escape_bits_per_byte"] == 0.0
    assert plain["corrected_code_bits_per_byte"] == pytest.approx(
        plain["code_bits_per_byte"] + plain["correction_bits_per_byte"]
    )
    assert "corrected_exact_match" not in reconstruction_report(_model(escape_codebook_size=0), texts[:2])


@torch.no_grad()
def test_flag_features_are_what_the_decoder_computes(trained_escape, grammar_data):
    """The escape probe's flag features (`--flag-fit`) on the trained checkpoint: for every segment they
    equal the decoder's own, from running it (segments 0..j decoded, j from its code alone, greedy),
    although only escaped segments and lines that do not come back are run (the others are taken
    teacher-forced, where the decoder sees the true bytes)."""
    probes = pytest.importorskip("bench.decode_probes")
    model, level = trained_escape, trained_escape.levels[0]
    refs = [frame_document(s.encode()).tolist() for s in grammar_data[1][:16]]
    x, esc_ids, ran = probes.flag_features(model, refs, batch=16)
    assert 0 < ran < len(esc_ids) and (esc_ids >= 0).any()
    ids, mask = pad_rows([torch.tensor(r) for r in refs])
    enc = model.encode(ids, mask)
    codes, seg_mask, esc = enc.codes[0], enc.code_mask[0].bool(), enc.escape_codes[0]
    got = torch.zeros(*codes.shape, 3)
    got[seg_mask] = x
    for j in range(codes.shape[1]):
        rows = seg_mask[:, j].nonzero()[:, 0]
        run = probes.greedy_segment_features(level, codes, seg_mask, esc, j, rows)
        torch.testing.assert_close(got[rows, j], run, rtol=1e-4, atol=1e-4)


def test_escape_codebook_is_on_the_model_card():
    from hier_ae.publishing.model_card import _architecture

    config = HierAEConfig(levels=[tiny_level(escape_codebook_size=64)], top_lm=TINY_TOP)
    assert ", escape codebook 64 (variable rate" in _architecture(config)
    assert "chosen by the decoder" not in _architecture(config)
    chosen = tiny_level(escape_codebook_size=64, escape_choice_candidates=8)
    config = HierAEConfig(levels=[chosen], top_lm=TINY_TOP)
    assert "escape code, chosen by the decoder among the 8 nearest)" in _architecture(config)
    joint = tiny_level(escape_codebook_size=64, escape_choice_candidates=8, escape_joint_candidates=4)
    config = HierAEConfig(levels=[joint], top_lm=TINY_TOP)
    assert (
        "8 nearest; where none gives the segment back, code and escape code are chosen together, the code "
        "among its 4 nearest)" in _architecture(config)
    )
    deep = tiny_level(escape_codebook_size=64, escape_choice_candidates=8, escape_depth=2)
    config = HierAEConfig(levels=[deep], top_lm=TINY_TOP)
    assert "8 nearest; where still none does, a second escape code (two depths)" in _architecture(config)
    assert "second escape code" not in _architecture(HierAEConfig(levels=[joint], top_lm=TINY_TOP))
    assert "escape" not in _architecture(HierAEConfig(levels=[tiny_level()], top_lm=TINY_TOP))


def test_script_breakdown_splits_the_escape_probe_by_writing_system(trained_escape, grammar_data):
    """`bench.script_breakdown` on the trained checkpoint, grammar lines beside Cyrillic and Japanese ones:
    each line under its script, and the groups' lines, bytes, exact lines and bits add up to the escape
    probe's whole-text figures (each group priced at the whole text's flag entropy and count shares)."""
    decode_probes = pytest.importorskip("bench.decode_probes")
    from bench.script_breakdown import line_script, script_breakdown, script_table

    assert [line_script(t.encode()) for t in ("the cat", "Привет, world", "日本", "1 + 2")] == [
        "LATIN",
        "CYRILLIC",
        "CJK",
        "NONE",
    ]
    texts = [s.encode() for s in grammar_data[1][:24]] + [
        "мама мыла раму".encode(),
        "кот и пёс".encode(),
        "日本語の文".encode(),
    ]
    refs = [frame_document(t).tolist() for t in texts]
    probe = decode_probes.escape_report(trained_escape, refs, texts, 16, corrections=True)
    cfg = trained_escape.levels[0].cfg
    by = script_breakdown(
        texts,
        probe["per_line"],
        probe["correction_stats"],
        cfg.num_codes,
        cfg.escape_codebook_size,
        cfg.max_segment_len,
    )
    assert list(by) == ["LATIN", "CYRILLIC", "CJK"]  # 日本語の文: four CJK letters, one HIRAGANA
    assert [by[k]["lines"] for k in by] == [24, 2, 1]
    n_bytes = sum(len(t) for t in texts)
    assert sum(r["bytes"] for r in by.values()) == n_bytes
    for key, total in (
        ("exact_match", probe["exact_match"]),
        ("exact_match_corrected", probe["exact_match_corrected"]),
    ):
        assert sum(r[key] * r["lines"] for r in by.values()) == pytest.approx(total * len(texts))
    for key in (
        "code_bits_per_byte_no_escape",
        "code_bits_per_byte_flag_ideal",
        "code_bits_per_byte_corrected_ideal",
    ):
        parts = sum(r[key] * r["bytes"] for r in by.values())
        assert parts == pytest.approx(probe[key] * n_bytes)
    assert (
        by["CYRILLIC"]["code_bits_per_byte_corrected_ideal"]
        > by["LATIN"]["code_bits_per_byte_corrected_ideal"]
    )
    assert len(script_table(by)) == 2 + 3


def test_decode_probes_by_script_reads_only_the_escape_probe():
    decode_probes = pytest.importorskip("bench.decode_probes")
    with pytest.raises(SystemExit):
        decode_probes.parse_args(["--model", "m", "--text", "t", "--probe", "list", "--by-script"])
