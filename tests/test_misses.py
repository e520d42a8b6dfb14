"""bench/misses.py: where a level's teacher-forced misses fall, on its worked example and tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import _save, tiny_config

from bench import misses, recon
from hier_ae import HierAEModel
from hier_ae.data.batching import frame_document, pad_rows

TEXT = (
    b"The quick brown fox jumps over the lazy dog, again and again.\n"
    b"def reconstruct(codes):  # a line of code that is long enough\n"
) * 10


def _ids(s: str) -> tuple[int, ...]:
    return tuple(b + 3 for b in s.encode())


def test_summarize_worked_example():
    """The module docstring's toy: rows "ab|cd" and "ab|ce", "cd" and "ce" both got code 7, and the
    decoder missed the "e" of "ce"."""
    R = misses.SegmentRecord
    records = [
        R(0, _ids("ab"), 3, (True, True)),
        R(0, _ids("cd"), 7, (True, True)),
        R(1, _ids("ab"), 3, (True, True)),
        R(1, _ids("ce"), 7, (True, False)),
    ]
    s = misses.summarize(records)
    assert (s["segments"], s["tokens"], s["misses"]) == (4, 8, 1)
    assert s["teacher_forced_accuracy"] == 7 / 8
    assert s["by_length"] == {"2": {"segments": 4, "tokens": 8, "misses": 1}}
    assert s["by_offset"] == {"0": {"tokens": 4, "misses": 0}, "1": {"tokens": 4, "misses": 1}}
    assert (s["codes_used"], s["strings"], s["split_strings"]) == (2, 3, 0)
    assert s["shared_code_segments"] == 2  # both segments of code 7
    assert s["minority_segments"] == 1  # "ce": code 7's majority is "cd" (the first seen on a tie)
    assert s["misses_in_shared_code_segments"] == 1 and s["misses_in_minority_segments"] == 1
    assert s["misses_in_unique_code_segments"] == 0
    assert s["most_missed"] == [{"string": "ce", "strings_of_its_code": 2, "segments_missed": 1}]
    # a string with two codes is split; offsets past MAX_OFFSET share one row
    long = R(2, _ids("abcdefgh"), 9, (True,) * 7 + (False,))
    s = misses.summarize([*records, R(2, _ids("ab"), 4, (True, True)), long])
    assert s["split_strings"] == 1 and s["by_offset"][str(misses.MAX_OFFSET)] == {"tokens": 3, "misses": 1}
    with pytest.raises(ValueError, match="at least one"):
        misses.summarize([])


def test_render_tokens():
    assert misses.render_tokens((2, 75, 100, 1), 0) == "<s>Ha</s>"
    assert misses.render_tokens((5, 17), 1) == "5 17"


@pytest.mark.parametrize("levels", [1, 2])
def test_records_agree_with_teacher_forcing(levels):
    """Every valid token of every row is in exactly one record, in order, and the records' hits are
    the benchmark's teacher-forced hits."""
    torch.manual_seed(0)
    model = HierAEModel(tiny_config(levels)).eval()
    texts = [b"one line of text", b"another, longer line of text to rebuild", b"x"]
    for level in range(levels):
        records = misses.segment_records(model, texts, level=level, batch_size=2)
        ids, mask = pad_rows([frame_document(t) for t in texts])
        tf = recon.teacher_forced_batch(model, ids, mask)[level]
        assert sum(sum(r.hits) for r in records) == tf["hits"]
        assert sum(len(r.tokens) for r in records) == tf["tokens"]
        if level == 0:
            for row, text in enumerate(texts):
                got = [t for r in records if r.row == row for t in r.tokens]
                assert got == frame_document(text).tolist()
        assert all(0 <= r.code < model.levels[level].cfg.num_codes for r in records)
    with pytest.raises(ValueError, match="levels 0.."):
        misses.segment_records(model, texts, level=levels)


def test_main_end_to_end(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "model"
    _save(HierAEModel(tiny_config(1)).eval(), folder)
    text = tmp_path / "tiny" / "val.txt"
    text.parent.mkdir()
    text.write_bytes(TEXT)
    out, md = tmp_path / "m.json", tmp_path / "m.md"
    res = misses.main(
        [
            "--model",
            str(folder),
            "--text",
            str(text),
            "--lines",
            "2",
            "--out",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    assert json.loads(out.read_text())["summary"] == res["summary"]
    assert res["sample"] == "2 held-out lines of tiny"
    table = md.read_text()
    assert "| segment length |" in table and "| offset in segment |" in table and "most-missed" in table
    res = misses.main(["--model", str(folder), "--text", str(text), "--docs", "1"])
    assert res["sample"] == "1 windows of 1024 bytes of tiny" and res["summary"]["tokens"] == 1026
    with pytest.raises(SystemExit):
        misses.parse_args(["--model", "m", "--text", "t", "--lines", "0"])
