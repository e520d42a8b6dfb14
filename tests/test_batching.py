"""Rows of byte ids: document crops, and lines framed as documents (`p_line`)."""

from __future__ import annotations

import torch

from hier_ae.configuration_hier_ae import BOS_ID, BYTE_OFFSET, EOS_ID
from hier_ae.data.batching import DocumentCropper, frame_document


def ids_of(text: bytes) -> list[int]:
    return [b + BYTE_OFFSET for b in text]


def test_line_rows_are_lines_framed_as_documents():
    docs = [b"ab\ncd\n\nxyz", b"single"]
    lines = {(BOS_ID, *ids_of(x), EOS_ID) for x in (b"ab", b"cd", b"xyz", b"single")}  # empty lines never
    cropper = DocumentCropper(docs, batch_size=64, seq_len=16, seed=0, p_line=1.0)
    ids, mask = next(cropper)
    rows = {tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask)}
    assert rows <= lines and len(rows) == len(lines)  # every line drawn, nothing else


def test_line_rows_mix_with_crops_and_are_cropped_to_seq_len():
    docs = [b"x" * 200 + b"\n" + b"y" * 50]
    cropper = DocumentCropper(docs, batch_size=200, seq_len=32, seed=1, p_doc_start=0.0, p_line=0.5)
    ids, mask = next(cropper)
    line_rows = (ids[:, 0] == BOS_ID).sum().item()  # p_doc_start=0: only line rows start with <s>
    assert 60 < line_rows < 140
    assert ids.shape[1] == 32 and bool((mask.sum(1) <= 32).all())


def test_no_lines_leaves_the_stream_unchanged():
    """p_line=0 draws exactly the batches it drew before the option existed (resume, determinism)."""
    docs = [b"some text\nmore text here\n" * 5, b"another document"]
    a = DocumentCropper(docs, batch_size=4, seq_len=12, seed=3)
    g = torch.Generator().manual_seed(3)  # the former algorithm, inline
    weights = torch.tensor([len(frame_document(d)) for d in docs], dtype=torch.float)
    for _ in range(3):
        ids, _ = next(a)
        idx = torch.multinomial(weights / weights.sum(), 4, replacement=True, generator=g)
        for row, i in zip(ids, idx.tolist()):
            doc = frame_document(docs[i])
            room = max(len(doc) - 12, 0)
            at_start = torch.rand((), generator=g).item() < 0.5
            start = 0 if at_start or room == 0 else int(torch.randint(0, room + 1, (), generator=g))
            want = doc[start : start + 12]
            assert row[: len(want)].tolist() == want.tolist()
