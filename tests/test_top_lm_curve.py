"""bench/top_lm_curve.py: the top LM trained alone on encoded code rows, its held-out curve printed."""

from __future__ import annotations

import json
import math
import re

import torch

from bench import top_lm_curve


def test_unigram_bits_leaves_the_framing_out():
    rows = [torch.tensor([9, 0, 1, 8]), torch.tensor([9, 2, 3, 8])]  # bos, two codes, eos
    assert math.isclose(top_lm_curve.unigram_bits(rows), 2.0)  # four codes, once each


def test_a_curve_per_variant_from_a_trained_level(trained_1level, grammar_data, tmp_path, capsys):
    model, folder = trained_1level
    lines = grammar_data[0][:40]
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(json.dumps({"text": "\n".join(lines[i : i + 8])}) + "\n" for i in range(0, 40, 8))
    )
    text = tmp_path / "val.txt"
    text.write_text("\n".join(grammar_data[1]) * 4)
    top_lm_curve.main(
        ["--stage", str(folder), "--docs", str(docs), "--text", str(text), "--windows", "2", "--every", "2"]
        + ["4:0:0:32", "4:0.1:0.1:16"]
    )
    out = capsys.readouterr().out
    head = re.search(r"5 training rows encoded in \d+s; flat ([\d.]+) bits a code", out)
    assert head and math.isclose(float(head[1]), math.log2(model.levels[-1].cfg.num_codes), abs_tol=0.01)
    curves = re.findall(
        r"^(4:\S+) bits a code: 2: ([\d.]+) held-out / [\d.]+ train; 4: ([\d.]+) held-out", out, re.M
    )
    assert [c[0] for c in curves] == ["4:0:0:32", "4:0.1:0.1:16"]
    assert all(0 < float(b) < 3 * float(head[1]) for c in curves for b in c[1:])
