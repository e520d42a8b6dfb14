"""The report's held-out lines (`hier_ae.evaluation.report_lines`) and bench/demo_lines.py on a tiny model."""

from __future__ import annotations

import doctest
import json
import math

import pytest
import torch
import yaml

pytest.importorskip("evaluate")

from conftest import _save, tiny_config

from bench import demo_lines
from hier_ae import HierAEModel
from hier_ae.data.sources import load_documents
from hier_ae.evaluation import report_lines as report_lines_module
from hier_ae.evaluation.report_lines import report_lines

DOCS = [
    b"  def alpha(x):\n        return x + 1  \nx = 1\n\n" + b"# a comment that is long enough\n" * 2,
    b"class Beta:\n    pass\n" + b"z" * 121 + b"\nimport os, sys\n",
]


def test_report_lines_filter_strip_and_keep_the_shuffle_order():
    pool = report_lines(DOCS, None)
    comment = b"# a comment that is long enough"
    want = [b"def alpha(x):", b"return x + 1", comment, comment, b"class Beta:", b"import os, sys"]
    assert sorted(pool) == sorted(want)  # "x = 1" and "pass" are under 8 bytes, the 121-byte line over 120
    assert all(report_lines(DOCS, k) == pool[:k] for k in range(len(pool) + 2))
    assert report_lines(DOCS, None, seed=1) != pool or len(pool) < 2
    assert report_lines(DOCS, None, max_len=121, min_len=4) != pool
    with pytest.raises(ValueError, match="n=-1"):
        report_lines(DOCS, -1)
    with pytest.raises(ValueError, match="min_len"):
        report_lines(DOCS, 3, max_len=4, min_len=5)


def test_docstring_examples():
    assert doctest.testmod(report_lines_module).failed == 0
    assert doctest.testmod(demo_lines).failed == 0


def test_groups_are_the_report_lines_in_order_and_every_line_comes_back(tmp_path):
    """End to end on a random tiny model: group 0 is the demo's draw, the groups follow the pool, the
    summary pools the other groups by bytes, and corrections give every line back."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):  # documents of short code-like lines; val_fraction puts about half in validation
        (corpus / f"f{i}.py").write_text("".join(f"value_{i}_{j} = compute({j}, {i})\n" for j in range(6)))
    cfg = {
        "data": {"source": str(corpus), "val_fraction": 0.5, "cache_dir": None},
        "evaluation": {"lines": 4},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    _save(HierAEModel(tiny_config(1)).eval(), tmp_path / "model")
    out = tmp_path / "lines.json"
    res = demo_lines.main(
        ["--model", str(tmp_path / "model"), "--config", str(tmp_path / "cfg.yaml"), "--groups", "3"]
        + ["--out", str(out)]
    )
    pool = report_lines(list(load_documents(cfg["data"], "validation", show_progress=False)), None)
    assert res["pool_lines"] == len(pool) >= 12
    rows = res["rows"]
    assert [r["lines"] for r in rows] == [4, 4, 4]
    assert [r["bytes"] for r in rows] == [sum(map(len, pool[4 * g : 4 * g + 4])) for g in range(3)]
    assert all(r["corrected_exact_match"] == 1.0 for r in rows)
    assert all(r["corrected_code_bits_per_byte"] >= r["code_bits_per_byte"] > 0 for r in rows)
    s = res["summary"]
    want = sum(r["corrected_code_bits_per_byte"] * r["bytes"] for r in rows[1:]) / sum(
        r["bytes"] for r in rows[1:]
    )
    assert math.isclose(s["others_pooled"]["corrected_code_bits_per_byte"], want)
    assert json.loads(out.read_text())["summary"]["others"] == 2


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        demo_lines.parse_args(["--model", "m", "--groups", "0"])
    with pytest.raises(SystemExit):
        demo_lines.parse_args(["--model", "m", "--group-lines", "0"])
