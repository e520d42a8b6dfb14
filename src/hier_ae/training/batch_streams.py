"""The training batches of every stage: one shared stream, and a stream of its own for a stage that asks.

Every stage reads the data section's stream (`data.seq_len`, `data.batch_size`) by default, one
`DocumentCropper` that goes on from stage to stage. A stage that sets `seq_len`, `batch_size` or
`rows: codes` (see `stages.Stage`) gets a stream of its own instead, seeded from the run's seed and
the stage's index, so adding such a stage changes no other stage's batches:

    stages: entropy-0, autoencoder-0, top_lm {rows: codes, seq_len: 512, batch_size: 8}
    entropy-0, autoencoder-0 -> the shared stream (as without the top_lm override)
    top_lm -> rows of 512 codes, 8 a batch, drawn from the training documents' top codes

`rows: codes` encodes the training documents once, when the stage starts, with the frozen levels
(`codes.shards.code_rows_from_documents`: each document in chunks of `max_input_bytes` framed ids,
each chunk's top codes framed bos / eos as the top LM reads them), and the stage's forward starts at
the top (`start_level = num_levels`): a top LM trained on rows as long as the codec's chunks costs one
encoding pass instead of encoding every training row again at every step. With `p_line > 0` (the
stage's, else the data section's) lines of those documents are encoded too, each as a document of
its own, and that share of rows are whole line rows (as a codec codes a line alone); `encode_bytes`
caps the pass (`documents_to_encode`), sampled with the stage's own seed, so each process of a
multi-process run encodes a sample of its own (together they cover more of the documents).

Exact resume: `state_dict()` holds the shared stream's position and, inside a stage with its own
stream, that stream's; `load_state_dict` puts both back (the code rows are encoded again from the
same frozen levels first, so the same rows are drawn).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.batching import DocumentCropper
from .stages import Stage

# a stage's own stream is seeded seed + STAGE_SEED_STRIDE * (stage index + 1): apart from the
# shared stream's seed and the per-process offsets (1000 a rank)
STAGE_SEED_STRIDE = 7919


def documents_to_encode(
    docs: list[bytes], max_bytes: int | None, p_line: float, seed: int
) -> tuple[list[bytes], list[bytes]]:
    """The documents and lines a `rows: codes` stage encodes: (documents, lines).

    Documents: every one (`max_bytes` None, in their order), or documents in a seeded order until
    `max_bytes` bytes, the last one cut there. Lines: the non-empty lines of those documents in a
    seeded order until `p_line` of their bytes (none when `p_line` is 0).

    Example (seed 1): docs [b"ab\ncd", b"efgh"], max_bytes 6 -> the order is (1, 0), so documents
    [b"efgh", b"ab"] (4 + 2 = 6 bytes, the second cut); p_line 0.5 -> lines worth 3 bytes of
    [b"efgh", b"ab"], in a seeded order: [b"ab", b"efgh"] (the line that crosses the mark is kept whole).
    """
    g = torch.Generator().manual_seed(seed)

    def fill(items: list[bytes], room: float, cut: bool) -> list[bytes]:
        """Items in a seeded order until `room` bytes; the one that crosses it cut there or kept whole."""
        out = []
        for i in torch.randperm(len(items), generator=g).tolist():
            if room <= 0:
                break
            out.append(items[i][: int(room)] if cut else items[i])
            room -= len(out[-1])
        return out

    chosen = list(docs) if max_bytes is None else fill(docs, max_bytes, cut=True)
    lines: list[bytes] = []
    if p_line > 0:
        every = [line for d in chosen for line in d.split(b"\n") if line]
        lines = fill(every, p_line * sum(map(len, chosen)), cut=False)
    return chosen, lines


class BatchStreams:
    """`for_stage(index, stage)` -> the iterator of (ids, mask) batches that stage trains on.

    `rows`: the training rows (bytes documents, or framed code rows from code shards);
    `encode_codes(docs, what)`: the top codes of these bytes documents as framed rows (`what` names
    them for the log: 'documents' or 'lines'), called once or twice (documents, then lines) per stage
    with `rows: codes` (the levels must be the trained, frozen ones by then).
    """

    def __init__(
        self,
        rows: list,
        batch_size: int,
        seq_len: int,
        *,
        seed: int,
        p_doc_start: float = 0.5,
        p_line: float = 0.0,
        encode_codes: Callable[[list[bytes], str], list[torch.Tensor]] | None = None,
    ):
        self.shared = DocumentCropper(
            rows, batch_size, seq_len, seed=seed, p_doc_start=p_doc_start, p_line=p_line
        )
        self.seed, self.p_doc_start, self.encode_codes = seed, p_doc_start, encode_codes
        self.documents = rows if encode_codes is not None else None  # the bytes, for rows: codes
        self.own: tuple[int, DocumentCropper] | None = None  # (stage index, its stream)

    def for_stage(self, index: int, stage: Stage) -> DocumentCropper:
        """The stream of stage `index`: the shared one, or the stage's own (made on first call)."""
        if not stage.own_rows:
            self.own = None  # a finished stage's own stream is not needed again
            return self.shared
        if self.own is not None and self.own[0] == index:
            return self.own[1]
        seed = self.seed + STAGE_SEED_STRIDE * (index + 1)
        p_line = self.shared.p_line if stage.p_line is None else stage.p_line
        lines = None  # cut out of the rows at newlines
        if stage.rows == "codes":
            if self.encode_codes is None:
                raise ValueError(
                    f"stage {stage.name}: rows='codes' needs the training documents as bytes; this run "
                    "reads code rows already (data.code_shards): leave rows at 'data'."
                )
            docs, line_docs = documents_to_encode(self.documents, stage.encode_bytes, p_line, seed)
            rows = self.encode_codes(docs, "documents")
            lines = self.encode_codes(line_docs, "lines") if line_docs else []
        else:
            rows = self.shared.docs  # framed once, shared
        stream = DocumentCropper(
            rows,
            stage.batch_size or self.shared.batch_size,
            stage.seq_len or self.shared.seq_len,
            seed=seed,
            p_doc_start=self.p_doc_start,
            p_line=p_line,
            lines=lines,
        )
        self.own = (index, stream)
        return stream

    def state_dict(self) -> dict:
        """The shared stream's position (key 'generator', as a lone `DocumentCropper` saves it) and,
        inside a stage with its own stream, that stream's under 'stage'."""
        state = self.shared.state_dict()
        if self.own is not None:
            state["stage"] = {"index": self.own[0], **self.own[1].state_dict()}
        return state

    def load_state_dict(self, state: dict, stages: list[Stage]) -> None:
        """Put back what `state_dict` saved; the stage's own stream is made first if it is not yet."""
        self.shared.load_state_dict({"generator": state["generator"]})
        if "stage" in state:
            index = state["stage"]["index"]
            self.for_stage(index, stages[index]).load_state_dict(state["stage"])
