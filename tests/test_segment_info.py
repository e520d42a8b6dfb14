"""bench/segment_info.py: segments lost by their information, and the budget rule's counterfactual."""

from __future__ import annotations

import math

import pytest
import torch

from bench import segment_info as info
from hier_ae.data.batching import frame_document, pad_rows


def test_bucket_of_docstring_example():
    assert (
        info.bucket_of(7.9) == 3 and info.bucket_of(0.0) == 0 and info.bucket_of(1e6) == len(info.EDGES) - 2
    )


def test_measured_segments_are_the_models_and_the_table_adds_up(trained_1level, grammar_data):
    model, _ = trained_1level
    lines = [t.encode() for t in grammar_data[1][:12]]
    res = info.run(model, lines, budgets=[8.0], min_lens=[1, 2])
    ids, mask = pad_rows([frame_document(t) for t in lines])
    enc = model.encode(ids, mask)
    assert res["segments"] == int(enc.code_mask[0].sum()) == sum(r["segments"] for r in res["table"])
    assert math.isclose(sum(r["share"] for r in res["table"]), 1.0)
    losses = sum(r["share_of_losses"] for r in res["table"])
    assert math.isclose(losses, 1.0) if res["segments_lost"] > 0 else losses == 0
    own = res["predicted"]["own segments"]
    assert math.isclose(own["tokens_per_segment"], int(mask.sum()) / res["segments"])
    for pred in res["predicted"].values():
        assert 0.0 <= pred["exact_lines"] <= 1.0 and pred["tokens_per_segment"] >= 1.0
    assert "budget 8, min 2" in res["predicted"] and "budget 8, min 1" in res["predicted"]


@pytest.mark.parametrize("budget, min_len, max_len", [(0.0, 1, 8), (1e9, 1, 3), (1e9, 2, 5)])
def test_budget_cuts_cover_each_line_and_follow_the_rule(budget, min_len, max_len):
    """Budget 0 cuts every token (each segment's H > 0); an unreachable budget cuts at max_len."""
    g = torch.Generator().manual_seed(0)
    per_line = [
        (torch.rand(n, generator=g).mul(4).tolist(), torch.rand(n, generator=g).add(0.1).tolist())
        for n in (7, 11)
    ]
    cuts = info.budget_cuts(per_line, budget, min_len, max_len)
    for (s, _), segs in zip(per_line, cuts):
        assert sum(t for _, t in segs) == len(s)
        assert math.isclose(sum(b for b, _ in segs), sum(s), rel_tol=1e-6)
        lengths = [t for _, t in segs]
        want = 1 if budget == 0.0 and min_len == 1 else max_len
        assert all(t == want for t in lengths[:-1]) and lengths[-1] <= want
    # 1-token segments count as never lost, whatever their bits
    assert (
        info.predict(info.budget_cuts(per_line, 0.0, 1, 8), {i: 1.0 for i in range(8)})["exact_lines"] == 1.0
    )
