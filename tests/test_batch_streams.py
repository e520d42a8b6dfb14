"""A stage's own rows (`seq_len`, `batch_size`, `rows: codes`): shapes, seeds, checks, exact resume.

The end-to-end check (a run killed inside a top_lm stage on code rows resumes exactly) is in
test_train.py; here the streams themselves, without a model.
"""

from __future__ import annotations

import pytest
import torch

from hier_ae.data.batching import DocumentCropper
from hier_ae.training.batch_streams import BatchStreams, documents_to_encode
from hier_ae.training.run_config import check_run_config
from hier_ae.training.stages import Stage

DOCS = [f"document {i}: ".encode() + b"some words\nand a line\n" * (i + 2) for i in range(12)]
AE = Stage("autoencoder", 0, 10)


def fake_codes(docs: list[bytes]) -> list[torch.Tensor]:
    """Stand-in for the documents' framed top codes: one row per document, half its length, + 2."""
    g = torch.Generator().manual_seed(len(docs))
    return [torch.randint(3, 40, (len(d) // 2 + 2,), generator=g) for d in docs]


def streams(calls: list | None = None) -> BatchStreams:
    def encode(docs, what):
        if calls is not None:
            calls.append((what, len(docs), sum(map(len, docs))))
        return fake_codes(docs)

    return BatchStreams(DOCS, 4, 32, seed=5, p_doc_start=0.5, p_line=0.25, encode_codes=encode)


def take(it, n=3):
    return [next(it) for _ in range(n)]


def same(a, b) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_stages_without_rows_of_their_own_share_the_data_sections_stream():
    """Without overrides every stage reads one stream, drawn exactly as a lone DocumentCropper draws."""
    s = streams()
    plain = DocumentCropper(DOCS, 4, 32, seed=5, p_doc_start=0.5, p_line=0.25)
    assert s.for_stage(0, Stage("entropy", 0, 10)) is s.for_stage(1, AE) is s.shared
    assert same(take(s.for_stage(1, AE), 5), take(plain, 5))


def test_a_stage_with_its_own_rows_gets_their_shape_and_leaves_the_shared_stream_alone():
    s, ref = streams(), streams()
    own = s.for_stage(1, Stage("autoencoder", 0, 10, seq_len=64, batch_size=2))
    batches = take(own, 5)
    assert all(ids.shape[0] == 2 and ids.shape[1] <= 64 for ids, _ in batches)
    assert max(int(mask.sum(1).max()) for _, mask in batches) == 64  # documents are longer than 64
    # the next stage without overrides reads the shared stream where the stage before left it
    assert same(take(s.for_stage(2, Stage("top_lm", None, 5)), 3), take(ref.shared, 3))


def test_code_rows_are_encoded_once_and_read_in_the_stages_shape():
    calls: list = []
    s = streams(calls)
    stage = Stage("top_lm", None, 10, rows="codes", seq_len=16, batch_size=3, p_line=0.0)
    ids, mask = next(s.for_stage(2, stage))
    assert ids.shape == (3, 16) and mask.all()  # every code row is longer than 16
    assert int(ids.max()) < 40  # code ids, not framed bytes
    s.for_stage(2, stage)
    assert calls == [("documents", len(DOCS), sum(map(len, DOCS)))]  # every document, no lines
    without = BatchStreams(DOCS, 4, 32, seed=5)
    with pytest.raises(ValueError, match="rows='codes' needs the training documents as bytes"):
        without.for_stage(2, stage)


def test_state_dict_puts_back_both_streams_inside_a_stage_with_its_own_rows():
    """Exact resume: a fresh BatchStreams loaded from the state draws what the first one draws next."""
    stages = [Stage("entropy", 0, 4), AE, Stage("top_lm", None, 10, rows="codes", seq_len=16)]
    a = streams()
    take(a.for_stage(0, stages[0]), 3)
    take(a.for_stage(2, stages[2]), 2)
    state = a.state_dict()
    assert state["stage"]["index"] == 2
    calls: list = []
    b = streams(calls)
    b.load_state_dict(state, stages)
    # the code rows (documents and lines) are made again before the stream's position is put back
    assert [c[0] for c in calls] == ["documents", "lines"]
    assert same(take(b.for_stage(2, stages[2])), take(a.for_stage(2, stages[2])))
    assert same(take(b.shared), take(a.shared))
    # a checkpoint of a run without own rows (or of an older version) holds the shared stream only
    c = streams()
    c.load_state_dict({"generator": a.shared.state_dict()["generator"]}, stages)
    assert same(take(c.shared), take(a.shared)) and c.own is None


def test_code_rows_take_their_lines_from_the_data_section_or_the_stage():
    """p_line of the data section (0.25 here) or the stage's: lines of the documents are encoded as
    documents of their own, and about that share of rows is one whole line row."""
    calls: list = []
    s = streams(calls)
    stream = s.for_stage(2, Stage("top_lm", None, 10, rows="codes", seq_len=64, batch_size=8))
    assert [c[0] for c in calls] == ["documents", "lines"]
    line_bytes = calls[1][2]
    assert 0.25 * sum(map(len, DOCS)) <= line_bytes < 0.25 * sum(map(len, DOCS)) + 30  # one line over
    lines = {tuple(r.tolist()) for r in stream.lines}
    drawn = [ids[i, : int(mask[i].sum())] for ids, mask in take(stream, 40) for i in range(8)]
    share = sum(tuple(r.tolist()) in lines for r in drawn) / len(drawn)
    assert 0.15 < share < 0.35  # 320 rows, p_line 0.25 (lines are never as long as a document crop)
    calls.clear()
    s.for_stage(3, Stage("top_lm", None, 10, rows="codes", p_line=1.0))
    assert [c[0] for c in calls] == ["documents", "lines"]
    assert calls[1][2] == sum(len(d) - d.count(b"\n") for d in DOCS)  # every line: all but the newlines


def test_encode_bytes_caps_the_encoding_pass_with_a_seeded_sample_of_documents():
    calls: list = []
    stage = Stage("top_lm", None, 10, rows="codes", encode_bytes=150, p_line=0.0)
    streams(calls).for_stage(2, stage)
    again: list = []
    streams(again).for_stage(2, stage)
    assert calls == again and calls[0][0] == "documents" and calls[0][2] == 150  # cut at 150 bytes
    docs, lines = documents_to_encode(DOCS, 150, 0.0, seed=1)
    assert sum(map(len, docs)) == 150 and lines == [] and docs[0] in DOCS and docs != DOCS[: len(docs)]
    # the docstring's example
    assert documents_to_encode([b"ab\ncd", b"efgh"], 6, 0.5, seed=1) == ([b"efgh", b"ab"], [b"ab", b"efgh"])
    assert documents_to_encode(DOCS, None, 0.0, seed=1) == (DOCS, [])  # every document, in order


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"p_line": 1.5}, r"p_line=1.5 is invalid: must be null \(the data section's\) or a number"),
        ({"encode_bytes": 0, "rows": "codes"}, "encode_bytes=0 is invalid"),
        ({"encode_bytes": 1000}, "encode_bytes caps the encoding pass of rows='codes'"),
        ({"seq_len": 1}, "seq_len=1 is invalid: must be null"),
        ({"batch_size": 0}, "batch_size=0 is invalid"),
        ({"seq_len": 8.5}, "seq_len=8.5 is invalid"),
        ({"rows": "bytes"}, r"rows='bytes' is invalid: one of \('data', 'codes'\)"),
    ],
)
def test_a_stages_rows_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Stage("top_lm", None, 10, **kwargs)


def test_code_rows_are_for_top_lm_stages_only():
    with pytest.raises(ValueError, match="rows='codes' is for top_lm stages only"):
        Stage("autoencoder", 0, 10, rows="codes")
    # and the run config says so before anything runs
    cfg = {"model": {"levels": [{}]}, "training": {"stages": [{"kind": "top_lm", "rows": "code"}]}}
    with pytest.raises(ValueError, match=r"training.stages\[0\].rows='code' is invalid: must be one of"):
        check_run_config(cfg)
    good = {"kind": "top_lm", "rows": "codes", "seq_len": 512, "batch_size": 8, "p_line": 0.25}
    check_run_config({"model": {"levels": [{}]}, "training": {"stages": [good | {"encode_bytes": 10**6}]}})
    with pytest.raises(ValueError, match=r"training.stages\[0\].encode_bytes=1.5 is invalid"):
        check_run_config({"model": {"levels": [{}]}, "training": {"stages": [good | {"encode_bytes": 1.5}]}})
    check_run_config({"model": {"levels": [{}]}, "training": {"stages": [good]}})


def test_describe_names_a_stages_own_rows():
    assert AE.describe() == "autoencoder-0 (10 steps)"
    stage = Stage("top_lm", None, 3000, rows="codes", seq_len=512, batch_size=8)
    assert stage.describe() == "top_lm (3000 steps, codes, rows of 512, 8 a batch)"
    stage = Stage("top_lm", None, 3000, rows="codes", encode_bytes=1_000_000, p_line=0.25, seq_len=512)
    assert stage.describe() == "top_lm (3000 steps, codes of 1,000,000 bytes, 25% lines, rows of 512)"
