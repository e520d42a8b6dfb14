"""Rows of byte ids from documents (DESIGN §8): one crop of one document per row.

A document is framed as `<s>` + bytes + `</s>` (ids 2, b + 3, 1). A row is a window of `seq_len`
ids of one framed document. Windows start at the document's start with probability
`p_doc_start` (so the row begins with `<s>`), otherwise anywhere (rows that start mid-document, as
lm-eval's contexts do). Short documents give short rows, right-padded with 0. With probability
`p_line` a row is instead one line of a document framed as a document of its own (`<s>` + line +
`</s>`, cropped to `seq_len`), as `examples/evaluate_model.py` and `bench/recon.py` frame held-out lines.
Rows already framed (code rows) have no newlines to cut at: their lines come as rows of their own
(`lines=`), and a line row is one of those, drawn uniformly.

Example: doc b"hi", seq_len 8 -> row [2, 107, 108, 1, 0, 0, 0, 0], mask [1, 1, 1, 1, 0, 0, 0, 0].

Not part of the model's remote-code closure (training-side code).
"""

from __future__ import annotations

import torch

from ..configuration_hier_ae import BOS_ID, BYTE_OFFSET, EOS_ID, PAD_ID

NEWLINE = ord("\n") + BYTE_OFFSET


def frame_document(doc: bytes) -> torch.Tensor:
    """`<s>` + bytes + `</s>` as ids (N + 2,)."""
    if doc:
        body = torch.frombuffer(bytearray(doc), dtype=torch.uint8).long() + BYTE_OFFSET  # (N,)
    else:
        body = torch.empty(0).long()
    return torch.cat([torch.tensor([BOS_ID]), body, torch.tensor([EOS_ID])])


def pad_rows(rows: list[torch.Tensor], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors into (B, T) ids and a (B, T) long mask."""
    T = length or max(len(r) for r in rows)
    ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r[:T]
        mask[i, : len(r)] = 1
    return ids, mask


class DocumentCropper:
    """An endless, seeded stream of (ids (B, T), mask (B, T)) batches of document crops.

    Its position is fully described by `state_dict()` (the generator state), so a resumed run
    draws exactly the batches an uninterrupted one would. `docs` are bytes (framed here) or rows
    already framed as 1-D id tensors (code rows of a code-shard folder: bos, codes, eos). `lines`:
    framed line rows to draw the `p_line` rows from instead of cutting lines out of `docs` (None: cut
    them at newlines; an empty list: no line rows at all).
    """

    def __init__(
        self,
        docs: list[bytes] | list[torch.Tensor],
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        p_doc_start: float = 0.5,
        p_line: float = 0.0,
        lines: list[torch.Tensor] | None = None,
    ):
        if not docs:
            raise ValueError("DocumentCropper needs at least one document; got an empty list.")
        if batch_size < 1 or seq_len < 2:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and seq_len={seq_len} >= 2.")
        self.docs = [d if isinstance(d, torch.Tensor) else frame_document(d) for d in docs]
        lengths = torch.tensor([len(d) for d in self.docs], dtype=torch.float)
        self.weights = lengths / lengths.sum()  # sample documents in proportion to their length
        self.batch_size, self.seq_len, self.p_doc_start = batch_size, seq_len, p_doc_start
        self.p_line, self.lines = p_line, lines
        self.generator = torch.Generator().manual_seed(seed)
        self._lines: dict[int, torch.Tensor] = {}  # doc index -> (n, 2) [start, end) of its non-empty lines

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.generator
        idx = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g)
        rows = []
        for i in idx.tolist():
            doc = self.docs[i]
            if self.p_line > 0 and torch.rand((), generator=g).item() < self.p_line:
                line = self._line(i, g) if self.lines is None else self._line_row(g)
                if line is not None:
                    rows.append(line[: self.seq_len])
                    continue
            room = max(len(doc) - self.seq_len, 0)
            at_start = torch.rand((), generator=g).item() < self.p_doc_start
            start = 0 if at_start or room == 0 else int(torch.randint(0, room + 1, (), generator=g))
            rows.append(doc[start : start + self.seq_len])
        return pad_rows(rows)

    def _line(self, i: int, g: torch.Generator) -> torch.Tensor | None:
        """A random non-empty line of document i, framed `<s>` + line + `</s>` (None: no line).

        Framed doc [2, a, b, NL, c, 1] has the lines [a, b] and [c] -> e.g. [2, c + 0, 1].
        """
        if i not in self._lines:
            doc = self.docs[i]
            cuts = torch.cat(
                [torch.tensor([0]), (doc == NEWLINE).nonzero()[:, 0], torch.tensor([len(doc) - 1])]
            )
            spans = torch.stack([cuts[:-1] + 1, cuts[1:]], dim=1)  # (n, 2) between separators
            self._lines[i] = spans[spans[:, 1] > spans[:, 0]]
        spans = self._lines[i]
        if not len(spans):
            return None
        a, b = spans[int(torch.randint(0, len(spans), (), generator=g))].tolist()
        return torch.cat([torch.tensor([BOS_ID]), self.docs[i][a:b], torch.tensor([EOS_ID])])

    def _line_row(self, g: torch.Generator) -> torch.Tensor | None:
        """One of the given line rows, drawn uniformly (None: there are none)."""
        if not self.lines:
            return None
        return self.lines[int(torch.randint(0, len(self.lines), (), generator=g))]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
