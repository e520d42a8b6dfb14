"""bench/recon.py: the reconstruction benchmark's pieces on tiny models, and one end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("evaluate")

from conftest import TINY_TOP, _save, tiny_config, tiny_level

from bench import recon
from hier_ae import HierAEConfig, HierAEModel
from hier_ae.data.batching import frame_document, pad_rows

TEXT = (
    b"The quick brown fox jumps over the lazy dog, again and again.\n"
    b"short\n"
    b"def reconstruct(codes):  # a line of code that is long enough\n"
    b"    return decode(codes, mask, level=0)  # and another one here\n"
) * 20


@pytest.fixture(scope="module")
def random_models():
    """Randomly initialised 1-level and 2-level tiny models (eval mode, seeded)."""
    torch.manual_seed(0)
    return {n: HierAEModel(tiny_config(n)).eval() for n in (1, 2)}


def _batch(texts):
    ids, mask = pad_rows([frame_document(t) for t in texts])
    return ids, mask


def test_samples_are_deterministic_and_in_range():
    docs = [TEXT]
    lines = recon.held_out_lines(docs, 10)
    assert lines == recon.held_out_lines(docs, 10)  # seeded
    assert len(lines) == 3  # only 3 distinct lines have 20-120 bytes ("short" is too short)
    assert all(20 <= len(x) <= 120 and b"\n" not in x for x in lines)
    assert recon.held_out_lines(docs, 10, seed=1) != lines or len(lines) < 2
    wins = recon.document_windows(docs, 3, size=256)
    assert len(wins) == 3 and all(len(w) == 256 for w in wins)
    assert all(w in TEXT for w in wins)
    assert recon.document_windows([b"abc"], 5, size=256) == []  # no full window
    with pytest.raises(ValueError, match="lines=-1"):
        recon.held_out_lines(docs, -1)


def test_small_helpers():
    assert recon.cut_at_eos([2, 9, 1, 5]) == [2, 9, 1]
    assert recon.cut_at_eos([2, 9]) == [2, 9]
    seg = torch.tensor([0, 0, 1, 1, 1, 2, -1])
    valid = torch.tensor([1, 1, 1, 1, 1, 1, 0])
    assert recon.segment_starts(seg, valid) == [0, 2, 5]
    # decode first wrong at 2, teacher forcing first misses at 2: follows; at 1: does not
    assert recon.follows_teacher_forcing([[2, 5, 6, 1]], [[2, 5, 7, 1]], [2]) == 1.0
    assert recon.follows_teacher_forcing([[2, 5, 6, 1]], [[2, 5, 7, 1]], [1]) == 0.0
    assert recon.follows_teacher_forcing([[2, 5, 1]], [[2, 5, 1]], [None]) == 1.0


@pytest.mark.parametrize("level", [0, 1])
def test_code_collisions_compares_the_decodes_codes(random_models, level):
    """A wrong decode collides when it re-encodes to the codes it came from, and only then."""
    model = random_models[2]
    a, b = b"hello world, this is a test", b"0123456789" * 4
    ids, mask = _batch([a, b])
    enc = model.encode(ids, mask)
    codes = [enc.codes[level][r][enc.code_mask[level][r].bool()].tolist() for r in range(2)]
    rows = [frame_document(t).tolist() for t in (a, b)]
    # each row "decoded" from its own codes collides; swapped, the codes differ (other lengths here)
    assert len(codes[0]) != len(codes[1])
    redo = recon.row_codes(recon.reencode(model, rows), level)
    assert recon.code_collisions(redo, codes) == {"inexact": 2, "same_codes": 1.0}
    assert recon.code_collisions(redo, codes[::-1]) == {"inexact": 2, "same_codes": 0.0}
    assert recon.code_collisions(redo, [codes[0], codes[0]])["same_codes"] == 0.5
    assert recon.code_collisions([], []) == {"inexact": 0, "same_codes": None}


@pytest.mark.parametrize("levels", [1, 2])
def test_teacher_forced_and_top_lm_match_forward(random_models, levels):
    """The benchmark's per-row sums give back `forward`'s mean losses (same tokens, same masks)."""
    model = random_models[levels]
    ids, mask = _batch([b"hello world, this is a test", b"a shorter one", b"x" * 40])
    with torch.no_grad():
        out = model(ids, mask)
    tf = recon.teacher_forced_batch(model, ids, mask)
    assert len(tf) == levels
    for lv, r in enumerate(tf):
        mean = sum(r["nats_per_row"]) / r["tokens"]
        assert mean == pytest.approx(float(out.reconstruct_loss[lv]), rel=1e-4)
        assert 0 <= r["hits"] <= r["tokens"]
    top = recon.top_lm_batch(model, model.encode(ids, mask))
    assert sum(top["nats_per_row"]) / top["tokens"] == pytest.approx(float(out.top_lm_loss), rel=1e-4)
    assert top["codes"] == int(model.encode(ids, mask).top_mask.sum())


def test_evaluate_sample_on_a_random_two_level_model(random_models):
    model = random_models[2]
    texts = recon.held_out_lines([TEXT], 3) + [b"0123456789" * 3]
    res = recon.evaluate_sample(model, texts, batch_size=2)
    assert res["texts"] == 4 and res["bytes"] == sum(len(t) for t in texts)
    assert [lv["level"] for lv in res["levels"]] == [0, 1]
    lv0, lv1 = res["levels"]
    for lv in (lv0, lv1):
        assert 0.0 <= lv["exact_match"] <= 1.0 and 0.0 <= lv["teacher_forced_accuracy"] <= 1.0
        assert lv["free_decode"]["num_pairs"] == 4
        assert lv["boundaries"]["drift_before_first_error"] == 0
        wrong = round((1 - lv["exact_match"]) * 4)
        assert lv["collisions"]["inexact"] == wrong
        assert lv["collisions"]["same_codes"] is None or 0.0 <= lv["collisions"]["same_codes"] <= 1.0
    # total = this level's fixed-length code bits + the reconstruct CE of every level down to bytes
    assert lv1["total_bits_per_byte"] == pytest.approx(
        lv1["code_bits_per_byte"] + lv1["reconstruct_ce_bits_per_byte"] + lv0["reconstruct_ce_bits_per_byte"]
    )
    assert lv0["code_bits_per_byte"] == pytest.approx(math.log2(256) / lv0["bytes_per_code"])
    # greedy decode fails first exactly where teacher forcing first misses
    assert lv0["decode_follows_teacher_forcing"] == 1.0
    assert set(lv1["upper_streams_exact"]) == {"1"}
    top = res["top_lm"]
    assert 0.0 <= top["top1_accuracy_codes"] <= 1.0 and top["bits_per_code"] > 0
    with pytest.raises(ValueError, match="at least one text"):
        recon.evaluate_sample(model, [])


def test_trained_model_reconstructs_its_grammar(trained_1level, grammar_data):
    """A model trained on the test grammar decodes most held-out sentences exactly, and the figures agree."""
    model, _ = trained_1level
    texts = [s.encode() for s in grammar_data[1][:48]]
    res = recon.evaluate_sample(model, texts, batch_size=16)
    lv = res["levels"][0]
    assert lv["exact_match"] >= 0.5
    assert lv["teacher_forced_accuracy"] >= 0.95
    assert lv["free_decode"]["byte_accuracy"] >= lv["exact_match"]
    assert lv["decode_follows_teacher_forcing"] == 1.0
    assert lv["boundaries"]["boundaries_identical"] >= lv["exact_match"]  # exact rows keep their boundaries
    assert lv["collisions"]["inexact"] == round((1 - lv["exact_match"]) * 48)
    assert lv["reconstruct_ce_bits_per_byte"] < 0.5
    assert res["top_lm"]["top1_accuracy"] > 0.1


@torch.no_grad()
def test_corrections_give_every_line_back_from_each_level_and_are_priced():
    """`corrections=True` on a random 2-level model with escape codes at both levels: from either
    level's codes, with every level's escape codes and corrections, each line comes back; the rate is
    that level's codes + the escape flags and codes + the corrections of the levels it decodes through."""
    torch.manual_seed(0)
    opts = {"threshold": 1e9, "max_segment_len": 5, "escape_codebook_size": 8, "decoder_code_embedding": True}
    model = HierAEModel(HierAEConfig(levels=[tiny_level(**opts)] * 2, top_lm=TINY_TOP)).eval()
    texts = recon.held_out_lines([TEXT], 3)
    res = recon.evaluate_sample(model, texts, batch_size=2, corrections=True)
    (lv0, lv1), n_bytes = res["levels"], res["bytes"]
    for lv in (lv0, lv1):
        c = lv["corrections"]
        assert c["exact_match"] == 1.0 and lv["exact_match"] < 1.0
        side = lv["escape"]["code_bits_per_byte_flag_ideal"] - lv["escape"]["code_bits_per_byte_no_escape"]
        assert c["escape_bits_per_byte"] >= side > 0 and c["correction_bits_per_byte"] > 0
        assert c["code_bits_per_byte"] == pytest.approx(
            lv["code_bits_per_byte"] + c["escape_bits_per_byte"] + c["correction_bits_per_byte"]
        )
    # from level 1: level 1's side inputs and corrections, then level 0's too
    c0, c1 = lv0["corrections"], lv1["corrections"]
    assert c1["escape_bits_per_byte"] == pytest.approx(
        c0["escape_bits_per_byte"]
        + lv1["escape"]["code_bits_per_byte_flag_ideal"]
        - lv1["escape"]["code_bits_per_byte_no_escape"]
    )
    assert (
        c1["corrections_per_text"] > c0["corrections_per_text"]
        and c1["correction_bits_per_byte"] > c0["correction_bits_per_byte"]
    )
    assert len(c1["corrected_segments"]) == 2 and all(0 < x <= 1 for x in c1["corrected_segments"])
    # off by default: no corrections figures, and the table has no corrections rows
    assert recon.evaluate_sample(model, texts[:1])["levels"][0]["corrections"] is None
    table = recon.corrections_table({"t": {"lines": res}}, 2)
    assert table[-3].startswith("| t | 0 | 100.0% |") and table[-2].startswith("| t | 1 | 100.0% |")
    assert recon.corrections_table({"t": {"lines": recon.evaluate_sample(model, texts[:1])}}, 2) == []
    assert n_bytes == sum(len(t) for t in texts)


@torch.no_grad()
def test_corrections_on_a_trained_two_level_model(trained_2level, grammar_data):
    """A trained 2-level checkpoint: every held-out line back from the top codes with the corrections,
    fewer of them than lines (most decode without), and the rate above the codes alone."""
    model, _ = trained_2level
    texts = [s.encode() for s in grammar_data[1][:16]]
    res = recon.evaluate_sample(model, texts, batch_size=8, corrections=True)
    for lv in res["levels"]:
        c = lv["corrections"]
        assert c["exact_match"] == 1.0
        assert c["code_bits_per_byte"] >= lv["code_bits_per_byte"]
        assert c["corrections_per_text"] < len(texts)


def test_main_end_to_end(random_models, tmp_path):
    folder = tmp_path / "model"
    _save(random_models[1], folder)
    text = tmp_path / "tiny" / "val.txt"
    text.parent.mkdir()
    text.write_bytes(TEXT)
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["--model", str(folder), "--text", str(text), "--lines", "2", "--docs", "2", "--out", str(out)]
    recon.main([*argv, "--markdown", str(md)])
    res = json.loads(out.read_text())
    t = res["texts"]["tiny"]
    assert t["lines"]["texts"] == 2 and t["docs"]["texts"] == 2 and t["docs"]["bytes"] == 2048
    assert set(t["compressors"]["docs"]) == {"gzip -9", "bzip2 -9", "xz -9e", "zstd -19"}
    assert t["codebook_usage"][0]["codebook_size"] == 256
    assert t["predict_bits_per_byte"] > 0
    table = md.read_text()
    assert "| tiny | 0 |" in table and "total (top LM)" in table
    assert "Token corrections" not in table and t["lines"]["levels"][0]["corrections"] is None
    short = tmp_path / "short" / "val.txt"  # one 20-byte line: a correction round a wrong token
    short.parent.mkdir()
    short.write_bytes(b"a line of 20 bytes..\n")
    c_out = tmp_path / "c.json"
    recon.main(
        ["--model", str(folder), "--text", str(short), "--docs", "0", "--out", str(c_out), "--corrections"]
    )
    c = json.loads(c_out.read_text())["texts"]["short"]["lines"]["levels"][0]["corrections"]
    assert c["corrections_per_text"] >= 0 and c["code_bits_per_byte"] > 0
    assert recon.compression_table({"short": {"lines": {}}}) == []  # no docs: no compression table
    with pytest.raises(FileNotFoundError, match="no such file"):
        recon.main(["--model", str(folder), "--text", str(tmp_path / "missing.txt"), "--out", str(out)])
    with pytest.raises(ValueError, match="at least one > 0"):
        recon.main(["--model", str(folder), "--text", str(text), "--lines", "0", "--docs", "0"])


def test_load_text_takes_a_half_of_a_file(tmp_path):
    """FILE#1/2 and FILE#2/2: cut after the first newline at or past the middle; the halves join back
    into the file; a half that comes out empty is a clear error."""
    path = tmp_path / "code" / "val.txt"
    path.parent.mkdir()
    path.write_bytes(b"ab\ncd\nef\n")
    assert recon.load_text(str(path)) == ("code", [b"ab\ncd\nef\n"])
    assert recon.load_text(f"{path}#1/2") == ("code (1/2)", [b"ab\ncd\n"])
    assert recon.load_text(f"{path}#2/2") == ("code (2/2)", [b"ef\n"])
    path.write_bytes(b"one line without a newline past the middle")
    assert recon.load_text(f"{path}#1/2")[1] == [path.read_bytes()]
    with pytest.raises(ValueError, match=r"#2/2 is empty"):
        recon.load_text(f"{path}#2/2")
    with pytest.raises(FileNotFoundError, match="#1/2 or #2/2"):
        recon.load_text(str(tmp_path / "nope.txt#2/2"))
