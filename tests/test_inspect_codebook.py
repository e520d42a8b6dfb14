"""examples/inspect_codebook.py (what each code means) and `HierAEModel.decode(..., level=)`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import _save, tiny_config
from helpers.grammar import sentences

from hier_ae import HierAEModel
from hier_ae.segmentation import compact_codes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def test_inspect_codebook_on_trained_model(trained_1level, tmp_path):
    import inspect_codebook

    from hier_ae.evaluation.reports import codebook_usage

    model, folder = trained_1level
    docs = sentences(60, seed=11)
    data = write_jsonl(tmp_path / "d.jsonl", docs)
    out = tmp_path / "cb"
    argv = ["--model", str(folder), "--data", str(data), "--out", str(out), "--max-codes", "40"]
    report = inspect_codebook.main([*argv, "--top-strings", "1000"])
    lv = report["levels"][0]
    assert report["documents"] == 60
    # usage figures agree with the evaluation module's, on the same documents
    usage = codebook_usage(model, [d.encode() for d in docs])[0]
    assert lv["usage_perplexity"] == pytest.approx(usage["usage_perplexity"], rel=1e-9)
    assert (
        lv["distinct_codes"] == usage["distinct_codes"] and lv["unused_codes"] == 256 - lv["distinct_codes"]
    )
    assert lv["dead_codes_training_state"] == usage["dead_codes"]
    rows = lv["codes"]
    assert len(rows) == min(40, lv["distinct_codes"])
    assert [r["count"] for r in rows] == sorted((r["count"] for r in rows), reverse=True)
    # every use of a code is one of its byte strings, and every string is a piece of a framed document
    framed = "".join(f"<s>{d}</s>" for d in docs)
    for r in rows:
        assert sum(k for _, k in r["top_strings"]) == r["count"]
        assert all(s in framed for s, _ in r["top_strings"])
    # the "decodes alone to" column is decode(codes=[[c]], level=0)
    c = rows[0]["code"]
    dec = model.decode(torch.tensor([[c]]), level=0)
    assert rows[0]["decodes_to"]["bytes"] == inspect_codebook.ids_text(dec.sequences[0].tolist())
    # a self-contained page with an embedded PNG and a sortable table; a markdown summary
    page = (out / "level-0.html").read_text()
    assert "data:image/png;base64," in page and "function sortTable" in page and 'onclick="sortTable' in page
    assert page.count("<tr>") == len(rows) + 1 and "http" not in page
    md = (out / "level-0.md").read_text()
    assert (
        f"usage perplexity: {lv['usage_perplexity']:.2f}" in md
        and f"unused in this data: {lv['unused_codes']}" in md
    )
    assert (out / "level-0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="not a hier_ae model folder"):
        inspect_codebook.main(["--model", str(tmp_path), "--data", str(data)])


def test_decode_from_a_lower_level_and_two_level_report(tmp_path):
    """decode(level=1) == decode(); decoding level 0's regenerated codes with level=0 gives the same bytes."""
    import inspect_codebook

    torch.manual_seed(0)
    model = HierAEModel(tiny_config(2)).eval()
    codes = torch.tensor([[3, 5, 9], [7, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    top = model.decode(codes, mask)
    d1 = model.decode(codes, mask, level=1)
    assert torch.equal(top.sequences, d1.sequences) and len(d1.level_tokens) == 2
    stream = d1.level_tokens[1]  # (B, T1): level-0 codes framed, padded with 256 (pad of level 1)
    lv0_codes, lv0_mask = compact_codes(stream, torch.ones_like(stream, dtype=torch.bool), 256)
    d0 = model.decode(lv0_codes, lv0_mask, level=0)
    assert torch.equal(d0.sequences, d1.sequences) and len(d0.level_tokens) == 1
    for bad in (2, -1):
        with pytest.raises(ValueError, match="level="):
            model.decode(codes, mask, level=bad)
    with pytest.raises(ValueError, match=r"codes must be in \[0, 128\)"):
        model.decode(torch.tensor([[200]]), level=1)

    folder = tmp_path / "model2"
    _save(model, folder)
    data = write_jsonl(tmp_path / "d.jsonl", sentences(12, seed=3))
    report = inspect_codebook.main(
        ["--model", str(folder), "--data", str(data), "--out", str(tmp_path / "cb")]
    )
    assert [lv["num_codes"] for lv in report["levels"]] == [256, 128]
    page = (tmp_path / "cb" / "level-1.html").read_text()
    assert "alone: level 0 codes" in page
    row = report["levels"][1]["codes"][0]
    assert set(row["decodes_to"]["levels"]) == {1}
