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
encoding pass instead of encoding every training row again at every step.

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


class BatchStreams:
    """`for_stage(index, stage)` -> the iterator of (ids, mask) batches that stage trains on.

    `rows`: the training rows (bytes documents, or framed code rows from code shards);
    `encode_codes()`: the training documents' top codes as framed rows, called at most once per
    stage with `rows: codes` (the levels must be the trained, frozen ones by then).
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
        encode_codes: Callable[[], list[torch.Tensor]] | None = None,
    ):
        self.shared = DocumentCropper(
            rows, batch_size, seq_len, seed=seed, p_doc_start=p_doc_start, p_line=p_line
        )
        self.seed, self.p_doc_start, self.encode_codes = seed, p_doc_start, encode_codes
        self.own: tuple[int, DocumentCropper] | None = None  # (stage index, its stream)

    def for_stage(self, index: int, stage: Stage) -> DocumentCropper:
        """The stream of stage `index`: the shared one, or the stage's own (made on first call)."""
        if not stage.own_rows:
            self.own = None  # a finished stage's own stream is not needed again
            return self.shared
        if self.own is not None and self.own[0] == index:
            return self.own[1]
        if stage.rows == "codes":
            if self.encode_codes is None:
                raise ValueError(
                    f"stage {stage.name}: rows='codes' needs the training documents as bytes; this run "
                    "reads code rows already (data.code_shards): leave rows at 'data'."
                )
            rows, p_line = self.encode_codes(), 0.0
        else:
            rows, p_line = self.shared.docs, self.shared.p_line  # framed once, shared
        stream = DocumentCropper(
            rows,
            stage.batch_size or self.shared.batch_size,
            stage.seq_len or self.shared.seq_len,
            seed=self.seed + STAGE_SEED_STRIDE * (index + 1),
            p_doc_start=self.p_doc_start,
            p_line=p_line,
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
