"""examples/evaluate_model.py: the report's fields, its labels, and the segmentation pictures."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_TOP, tiny_config, tiny_level
from helpers.grammar import sentences

from hier_ae import HierAEByteTokenizer, HierAEConfig, HierAEForCausalLM, HierAEModel
from hier_ae.evaluation.reports import bits_per_byte, predict_loglikelihoods, segmentation

REPO = Path(__file__).resolve().parents[1]
PREDICTION = "prediction (causal LM)"
RECONSTRUCTION = "reconstruction (autoencoder; decoder reads the codes)"


def load_evaluate():
    spec = importlib.util.spec_from_file_location("hier_evaluate", REPO / "examples" / "evaluate_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_report(res: dict, out: Path, num_levels: int, n_lines: int) -> None:
    pred, rec = res["prediction"], res["reconstruction"]
    assert pred["label"] == PREDICTION and rec["label"] == RECONSTRUCTION
    for key in ("bits_per_byte", "bits_per_byte_zero_context"):
        assert math.isfinite(pred[key]) and 0 < pred[key] < 20, (key, pred[key])
    assert pred["zero_context_gap_bits_per_byte"] == pytest.approx(
        pred["bits_per_byte_zero_context"] - pred["bits_per_byte"]
    )
    assert rec["lines"] == n_lines and 0.0 <= rec["exact_match"] <= 1.0
    assert len(rec["code_bits_per_byte_per_level"]) == num_levels
    assert rec["code_bits_per_byte"] == pytest.approx(rec["code_bits_per_byte_per_level"][-1])
    seg = res["segmentation"]
    assert len(seg["tokens_per_segment"]) == num_levels and len(seg["bytes_per_code"]) == num_levels
    assert all(t >= 1.0 for t in seg["tokens_per_segment"])
    assert len(res["codebooks"]) == num_levels
    for lv, cb in enumerate(res["codebooks"]):
        assert {"usage_perplexity", "distinct_codes", "unused_codes_per_depth", "dead_codes"} <= set(cb)
        assert 1.0 <= cb["usage_perplexity"] <= cb["distinct_codes"] + 1e-6
        assert cb["unused_codes_per_depth"][0] == cb["codebook_size"] - cb["used_codes_per_depth"][0]
        # bits per code = log2(K^R): bytes per code x code bits per byte
        bits = seg["bytes_per_code"][lv] * rec["code_bits_per_byte_per_level"][lv]
        assert bits == pytest.approx(cb["depth"] * math.log2(cb["codebook_size"]))
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["prediction"] == pred and on_disk["reconstruction"] == rec
    png, page = out / "segmentation.png", out / "segmentation.html"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    html = page.read_text()
    assert len(html) > 5_000 and html.count("<svg") >= 1 and "<polyline" in html
    assert PREDICTION in html and RECONSTRUCTION in html
    assert "threshold" in html and "level 0 segment start" in html
    assert "src=" not in html and "<link" not in html  # self-contained


def test_evaluate_on_trained_fixture(trained_1level, tmp_path):
    model, folder = trained_1level
    lines = sentences(24, seed=7)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(lines[:12]) + "\n\n" + "\n".join(lines[12:]) + "\n")  # a blank line is skipped
    out = tmp_path / "eval"
    res = load_evaluate().main(
        ["--model", str(folder), "--text", str(text), "--out", str(out), "--draw-lines", "3"]
    )
    check_report(res, out, num_levels=1, n_lines=24)
    pred, rec = res["prediction"], res["reconstruction"]
    print(
        f"fixture: predict bpb {pred['bits_per_byte']:.4f}, zeroed {pred['bits_per_byte_zero_context']:.4f}, "
        f"exact match {rec['exact_match']:.3f}, tokens/segment {res['segmentation']['tokens_per_segment']}"
    )
    # the report's prediction figure is the library computation on the same documents and windows
    docs = [ln.encode() for ln in lines]
    assert pred["bits_per_byte"] == pytest.approx(bits_per_byte(predict_loglikelihoods(model, docs), docs))
    assert pred["window"] == model.config.max_position_embeddings
    assert pred["documents"] == "lines" and pred["bytes"] == sum(map(len, docs))
    assert pred["bits_per_byte_zero_context"] > pred["bits_per_byte"]  # the levels above help
    assert rec["exact_match"] >= 0.5  # the trained autoencoder reproduces most lines
    html = (out / "segmentation.html").read_text()
    segs = [segmentation(model, ln.encode()) for ln in lines[:3]]
    assert html.count('class="b b0"') == sum(len(s["levels"][0]["starts"]) for s in segs)


def test_evaluate_two_levels_untrained(tmp_path):
    """Every level is reported and drawn (random weights: the figures are meaningless, the fields not)."""
    torch.manual_seed(0)
    model = HierAEModel(tiny_config(2)).eval()
    folder = tmp_path / "model"
    lm = HierAEForCausalLM(model.config)
    lm.model = model
    lm.save_pretrained(folder)
    HierAEByteTokenizer().save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text("The cat sees the ball.\nA dog.\n")
    out = tmp_path / "eval"
    args = ["--model", str(folder), "--text", str(text), "--out", str(out), "--draw-width", "16"]
    res = load_evaluate().main([*args, "--documents", "file", "--window", "16", "--stride", "8"])
    check_report(res, out, num_levels=2, n_lines=2)
    assert res["prediction"]["bytes"] == len(text.read_bytes()) and res["prediction"]["num_documents"] == 1
    assert "level 1 segment start" in (out / "segmentation.html").read_text()


def test_segmentation_levels_nest():
    """Segment starts in byte coordinates at every level, from the length caps alone (no rule fires).

    48 ids (<s>, 46 bytes, </s>), level 0 cap 8: starts 0, 8, ..., 40 (6 segments). Level 1 reads
    [bos, c0 .. c5, eos] with cap 4: segments [bos c0 c1 c2] [c3 c4 c5 eos] start at bytes 0 and 24.
    """
    torch.manual_seed(1)
    levels = [
        tiny_level(threshold=100.0),
        tiny_level(hidden_size=32, num_heads=2, threshold=100.0, max_segment_len=4),
    ]
    model = HierAEModel(HierAEConfig(levels=levels, top_lm=TINY_TOP, max_position_embeddings=128)).eval()
    s = segmentation(model, b"The old man watches the blue door in the park.")
    assert len(s["entropy"]) == len(s["ids"]) == 48 and s["threshold"] == 100.0
    assert s["levels"][0]["starts"] == list(range(0, 48, 8)) and len(s["levels"][0]["codes"]) == 6
    assert s["levels"][1]["starts"] == [0, 24] and s["levels"][1]["segments"] == 2
