"""bench/decode_probes.py: list decoding with re-encode checks, and analysis-by-synthesis code search."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_TOP, _save, tiny_config, tiny_level

from bench import decode_probes as probes
from bench import recon
from hier_ae import HierAEConfig, HierAEModel
from hier_ae.data.batching import frame_document


def _greedy(model, ref: list[int]) -> list[int]:
    ids = torch.tensor([ref])
    enc = model.encode(ids, torch.ones_like(ids))
    return recon.decoded_ids(model.decode(enc.codes[0], enc.code_mask[0], level=0))[0]


def test_checksum_is_a_deterministic_function_of_the_segment():
    assert probes.checksum([5, 9], 3) == probes.checksum([5, 9], 3) < 8
    assert probes.checksum([5, 9], 0) == 0
    # 16 bits tell these apart (a CRC differs on every one-byte change)
    assert probes.checksum([5, 9], 16) != probes.checksum([5, 8], 16)
    assert probes.checksum([5], 16) != probes.checksum([5, 5], 16)


def test_list_decoding_with_one_hypothesis_and_no_check_is_greedy_decoding(trained_1level, grammar_data):
    """Beam 1 without checks recomputes `model.decode`'s greedy choices (whole rows instead of streamed)."""
    model, _ = trained_1level
    for text in grammar_data[1][:6]:
        ref = frame_document(text.encode()).tolist()
        res = probes.list_decode(model, ref, beam=1, code_check=False)
        assert res["decoded"] == _greedy(model, ref)
        assert res["unchecked_segments"] == 0 and res["segments"] >= 1


def test_checked_list_decoding_keeps_what_passes_the_checks(trained_1level, grammar_data):
    model, _ = trained_1level
    ref = frame_document(grammar_data[1][0].encode()).tolist()
    res = probes.list_decode(model, ref, beam=4, check_bits=2)
    assert 0 <= res["unchecked_segments"] <= res["segments"]
    if res["unchecked_segments"] == 0:  # every segment passed: the decode re-encodes to the line's codes
        ids = torch.tensor([ref])
        want = model.encode(ids, torch.ones_like(ids)).codes[0][0].tolist()
        got = torch.tensor([res["decoded"]])
        assert model.encode(got, torch.ones_like(got)).codes[0][0].tolist() == want


def test_code_search_over_the_nearest_code_alone_returns_the_nearest_codes():
    torch.manual_seed(0)
    model = HierAEModel(tiny_config(1)).eval()
    ref = frame_document(b"the quick brown fox jumps over the lazy dog").tolist()
    res = probes.search_codes(model, ref, top=1)
    assert torch.equal(res["codes"], res["nearest"])
    ids = torch.tensor([ref])
    assert res["nearest"].tolist() == model.encode(ids, torch.ones_like(ids)).codes[0][0].tolist()


def test_code_search_makes_each_matched_segment_decode(trained_1level, grammar_data):
    """All codes tried: greedy decoding from the searched codes is exact whenever every segment matched."""
    model, _ = trained_1level
    for text in grammar_data[1][:4]:
        ref = frame_document(text.encode()).tolist()
        res = probes.search_codes(model, ref)
        dec = probes._decode_rows(model, [res["codes"]])[0]
        if res["unmatched_segments"] == 0:
            assert dec == ref


def test_main_runs_both_probes_and_refuses_two_levels(tmp_path, capsys):
    torch.manual_seed(0)
    folder, two = tmp_path / "m1", tmp_path / "m2"
    _save(HierAEModel(tiny_config(1)).eval(), folder)
    _save(HierAEModel(tiny_config(2)).eval(), two)
    text = tmp_path / "val.txt"
    text.write_bytes(b"a held-out line that is long enough to count\nand another line of the text here\n")
    base = ["--model", str(folder), "--text", str(text), "--lines", "2"]
    res = probes.main([*base, "--probe", "list", "--beam", "2", "--check-bits", "1"])
    assert res["lines"] == 2 and 0.0 <= res["exact_match"] <= 1.0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["probe"] == "list"
    res = probes.main([*base, "--probe", "search", "--top", "4"])
    assert 0.0 <= res["exact_match_nearest_codes"] <= 1.0 and 0.0 <= res["codes_changed"] <= 1.0
    with pytest.raises(SystemExit, match="2 levels"):
        probes.main(["--model", str(two), "--text", str(text), "--probe", "list"])
    with pytest.raises(SystemExit):
        probes.main([*base, "--probe", "list", "--beam", "0"])


def test_escape_rates_worked_example():
    r = probes.escape_rates(10, 2, 20, 256, 16)
    assert r["escaped_segments"] == 0.2
    assert r["code_bits_per_byte_no_escape"] == 4.0
    assert r["code_bits_per_byte_flag_1bit"] == pytest.approx(4.9)
    assert r["code_bits_per_byte_flag_ideal"] == pytest.approx(4.0 + (10 * 0.7219281 + 8) / 20)
    assert probes.escape_rates(4, 0, 8, 16, 16)["code_bits_per_byte_flag_ideal"] == 2.0
    # two-digit escapes (`escape_depth` 2): 1 of the 2 escaped has a second digit
    r = probes.escape_rates(10, 2, 20, 256, 16, deep=1, depth=2)
    assert r["deep_escaped_segments"] == 0.1
    assert r["code_bits_per_byte_flag_1bit"] == pytest.approx(4.0 + (10 + 2 + 3 * 4) / 20)  # 5.2
    h3 = -(0.8 * math.log2(0.8) + 2 * 0.1 * math.log2(0.1))  # 0.922
    assert r["code_bits_per_byte_flag_ideal"] == pytest.approx(4.0 + (10 * h3 + 12) / 20)  # 5.061
    none_deep = probes.escape_rates(10, 2, 20, 256, 16, depth=2)  # as depth 1, but a second bit per escape
    assert none_deep["code_bits_per_byte_flag_ideal"] == pytest.approx(4.0 + (10 * 0.7219281 + 8) / 20)
    assert none_deep["code_bits_per_byte_flag_1bit"] == pytest.approx(4.9 + 2 / 20)


def test_flag_model_prices_the_flags_from_the_features():
    """A feature that says nothing leaves the flag at H(f) (f = 0.25: 0.811 bits); one that tells the
    escaped segments apart prices them near 0 bits; the fitted weights reproduce on the same data."""
    y = torch.tensor([True, False, False, False] * 50)
    noise = torch.zeros(200, 1)
    w = probes.fit_flag_model(noise, y)
    assert probes.flag_bits(w, noise, y) == pytest.approx(0.8112781, abs=1e-6)
    jitter = torch.randn(200, 1, generator=torch.Generator().manual_seed(0))
    signal = y[:, None].float() * 4.0 - 2.0 + jitter  # overlapping, mostly apart
    w = probes.fit_flag_model(signal, y)
    assert 0.0 < probes.flag_bits(w, signal, y) < 0.2
    assert torch.equal(probes.fit_flag_model(signal, y), w)


@torch.no_grad()
def test_flag_features_read_each_segment_before_its_flag():
    """One row of features per valid segment, the escape ids encode's, in row order. On random
    weights no line comes back, so every segment's features come from running the decoder: segment 0's
    equal the decoder's predictions over its own greedy tokens reading code 0 alone (recomputed here
    teacher-forced on the bytes `decode` gives for that code)."""
    torch.manual_seed(0)
    level = tiny_level(escape_codebook_size=8, threshold=1e9, max_segment_len=4)
    cfg = HierAEConfig(levels=[level], top_lm=TINY_TOP)
    model = HierAEModel(cfg).eval()
    refs = [frame_document(t).tolist() for t in (b"a line of text to cut", b"another one")]
    x, esc, ran = probes.flag_features(model, refs, batch=2)
    # the batches as the escape probe encoded them give the same features without encoding again
    encoded = [probes.escape_decode(model, refs)["encoded"]]
    again = probes.flag_features(model, refs, batch=2, encoded=encoded)
    assert torch.equal(again[0], x) and torch.equal(again[1], esc) and again[2] == ran
    with pytest.raises(ValueError, match="encoded has 1 batches; 2 rows in batches of 1 need 2"):
        probes.flag_features(model, refs, batch=1, encoded=encoded)
    ids, mask = recon.pad_rows([torch.tensor(r) for r in refs])
    enc = model.encode(ids, mask)
    seg = enc.code_mask[0].bool()
    assert x.shape == (int(seg.sum()), 3) and ran == len(esc)
    assert torch.equal(esc, enc.escape_codes[0][seg])
    level = model.levels[0]
    codes = enc.codes[0][:1, :1]  # row 0, segment 0: (1, 1)
    out = model.decode(codes, torch.ones_like(codes), level=0)
    greedy = out.sequences[:, out.attention_mask[0].bool()]  # (1, n): segment 0's greedy tokens
    p = level.bottom_up(greedy, torch.ones_like(greedy, dtype=torch.bool), encode=False)
    assert (p.layout.seg_id == 0).all()
    ctx = level.decoder_context(level.code_context(level.quantizer.lookup(codes), codes), p.layout.seg_id)
    logp = level._decode(p, ctx)[0][:, : greedy.shape[1]].float().log_softmax(-1)  # (1, n, V)
    assert torch.equal(logp.argmax(-1), greedy)  # greedy: each token is the argmax
    want = probes.segment_features(logp, p.layout.seg_id == 0)[0]
    torch.testing.assert_close(x[0], want, rtol=1e-4, atol=1e-4)
    assert (x[:, 1] <= x[:, 0] + 1e-6).all() and (x[:, 2] <= 0).all()


def test_segment_features_worked_example():
    logp = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]).log()  # (1, 2, 2)
    f = probes.segment_features(logp, torch.tensor([[True, False]]))[0]
    torch.testing.assert_close(f, torch.tensor([1.0, 1.0, math.log(0.5)]))
    f = probes.segment_features(logp, torch.tensor([[True, True]]))[0]
    h = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    torch.testing.assert_close(f, torch.tensor([1.0 + h, 1.0, math.log(0.5)]))


def test_main_runs_the_escape_probe_and_refuses_a_model_without_escape_codes(tmp_path, capsys):
    torch.manual_seed(0)
    plain, esc = tmp_path / "plain", tmp_path / "esc"
    _save(HierAEModel(tiny_config(1)).eval(), plain)
    cfg = HierAEConfig(levels=[tiny_level(escape_codebook_size=8)], top_lm=TINY_TOP)
    _save(HierAEModel(cfg).eval(), esc)
    text = tmp_path / "val.txt"
    text.write_bytes(b"a held-out line that is long enough to count\nand another line of the text here\n")
    text.write_bytes(text.read_bytes() * 40)  # 3 KB: room for a 1 KB window
    args = ["--model", str(esc), "--text", str(text), "--lines", "2", "--probe", "escape", "--docs", "1"]
    res = probes.main(args)
    assert res["lines"] == 2 and 0.0 <= res["exact_match_no_escape"] <= res["exact_match"] <= 1.0
    assert res["windows"]["docs"] == 1 and 0.0 <= res["windows"]["escaped_segments"] <= 1.0
    assert res["code_bits_per_byte_flag_ideal"] >= res["code_bits_per_byte_no_escape"]
    assert "flag_bits_per_segment_context" not in res
    res = probes.main([*args[:6], "--probe", "escape", "--flag-fit", str(text)])
    rates = res
    assert res["flag_bits_per_segment_context"] >= 0.0
    assert res["code_bits_per_byte_flag_context"] >= res["code_bits_per_byte_no_escape"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["probe"] == "escape"
    # token corrections: every line back, each correction priced (ideal and at the fit text's shares)
    res = probes.main([*args[:6], "--probe", "escape", "--corrections", "--flag-fit", str(text)])
    assert res["exact_match_corrected"] == 1.0 and res["corrections_per_line"] > 0
    count, offset, token = res["correction_count_offset_token_bits"]
    L = tiny_level()["max_segment_len"]
    assert offset == pytest.approx(res["corrections_per_line"] * 2 * math.log2(L)) and token > 0
    assert res["code_bits_per_byte_corrected_ideal"] > res["code_bits_per_byte_flag_ideal"]
    assert res["code_bits_per_byte_corrected_context"] > res["code_bits_per_byte_flag_context"]
    assert res["settings"]["corrections"] is True
    # a boundary threshold for encode and decode instead of the saved one: never firing, segments of L
    res = probes.main([*args[:6], "--probe", "escape", "--boundary-value", "1e9"])
    assert res["settings"]["boundary_value"] == 1e9
    assert res["code_bits_per_byte_no_escape"] < rates["code_bits_per_byte_no_escape"]
    with pytest.raises(SystemExit, match="--boundary-value -1.0 is invalid: a number >= 0"):
        probes.main([*args[:6], "--probe", "escape", "--boundary-value", "-1"])
    with pytest.raises(SystemExit, match="escape_codebook_size 0"):
        probes.main(["--model", str(plain), "--text", str(text), "--probe", "escape"])
