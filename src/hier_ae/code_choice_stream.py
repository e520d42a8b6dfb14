"""Decoder-chosen codes in streaming generation (`code_choice_candidates` = k), stepped, not rerun.

`HierLevel.choose_codes` gives each segment the one of its k nearest codes under which the
decoder's teacher-forced (reconstruct-mode) CE of the segment's tokens is lowest; pass i of k reads
every segment's i-th nearest code. A stream keeps pass i as a decoder KV cache (rows i*B .. i*B + B - 1
of one `KVStore`) over the decoder inputs that predict the tokens of closed segments, and queues
the inputs that predict the open segment's tokens, with what a decoder step reads besides the
context: the input token, the offset of the token it predicts, its n-gram history
(`decoder_ngrams`) and the entropy model's state (`decoder_reads_entropy`). When the segment
closes its k candidates are known: each pass steps the queued inputs with its candidate as their
context, the segment's summed CE under each candidate picks the code (`HierLevel.
choose_closing_codes`), and the queue empties. A closed segment costs O(its length x k) decoder
steps, where rerunning `choose_codes` over the row's history cost O(T).

Worked example, one row, max_segment_len 4, decoder input [BEGIN, x0, x1, ...] (input i predicts
x[i]). After a prefill of "abc" with the rule fired at b ("ab|c", c's segment open):

    caches (each pass)  BEGIN a         predicting a, b with that pass's candidate for "ab"
    queue               b c             predicting c and the next token

Step "d", the rule fires: the segment's tokens are the queue after its first input, then d: [c d];
each pass steps b, c with its candidate for "cd", the lower CE picks the code, the queue empties;
then d, which predicts the next segment's first token, is queued.

The choice rests on stepped floats where the uncached pass computes whole rows: the two agree to
float rounding, so a code may differ only where a candidate's CE is within rounding of the tie line
(`level.pick_candidate`; DESIGN §6). Shape letters: B rows, k candidates, L slots per segment
(max_segment_len), T tokens, D width, h n-gram history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kv_cache import KVStore
from .level_modules import entropy_at_inputs
from .segmentation import decoder_offsets, first_real, open_segment, shift_in_begin


@dataclass
class CodeChoiceStream:
    cache: KVStore  # k*B rows (pass i of row b at i*B + b): the decoder inputs before the queue
    # (B, L) queued decoder inputs (BEGIN = the decoder's begin_id); those after the first are the
    # open segment's tokens
    inputs: torch.Tensor
    offsets: torch.Tensor  # (B, L) offset in its segment of the token each queued input predicts
    queued: torch.Tensor  # (B,) how many inputs are queued
    candidates: int  # k
    history: torch.Tensor | None = None  # (B, L, h) the inputs before each queued one, -1 = none
    entropy_h: torch.Tensor | None = None  # (B, L, D) the entropy model's state at each queued input

    def cache_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The cache rows of `rows (B',)` in every pass, pass-major: (k*B',). B = 3, rows [2] ->
        [2, 5, 8] for k = 3."""
        B = self.queued.shape[0]
        passes = torch.arange(self.candidates, device=rows.device)[:, None]  # (k, 1)
        return (passes * B + rows[None, :]).reshape(-1)  # (k*B',)

    def enqueue(self, rows, toks, offsets, history=None, entropy_h=None) -> None:
        """Queue the decoder input `toks (B',)` of `rows`, with the offset (B',) of the token it
        predicts, its history (B', h) and the entropy model's state there (B', D)."""
        at = self.queued[rows]  # (B',)
        self.inputs[rows, at] = toks
        self.offsets[rows, at] = offsets
        if self.history is not None:
            self.history[rows, at] = history.to(self.history.dtype)
        if self.entropy_h is not None:
            self.entropy_h[rows, at] = entropy_h.to(self.entropy_h.dtype)
        self.queued[rows] = at + 1

    def reorder(self, index: torch.Tensor) -> None:
        """Select / reorder rows (beam search): `index (B_new,)` into the B rows."""
        self.cache.reorder(self.cache_rows(index))
        for name in ("inputs", "offsets", "queued", "history", "entropy_h"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).index_select(0, index))


def open_code_choice_stream(level, p, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> CodeChoiceStream:
    """The code-choice state after a whole-row prefill: `p` the level's `LevelPass`, `kv` the
    (keys, values) (k*B, H, T+1, hd) per layer of `choose_codes`' k passes over it.

    The decoder input [BEGIN, x] has T + 1 columns; column c predicts token column c (column T the
    token after the row). The queue holds the columns that predict the open segment's tokens and
    the next token: from the open segment's first token column (the column after the last real
    one when the last segment is closed; BEGIN's column in a row without tokens) to the column
    after the row's last token. The caches keep the columns before it. With the example of the
    module docstring (T = 3, no padding): columns BEGIN a | b c, so the caches keep 2 and the queue
    holds 2 (its second input, c, is the open segment's first token)."""
    k, L = level.cfg.code_choice_candidates, level.cfg.max_segment_len
    decoder = level.decoder
    tokens, valid = p.tokens, p.valid
    B, T = valid.shape
    inp, inp_valid = shift_in_begin(tokens, valid, decoder.begin_id, level.vocab.pad_id)  # (B, T+1)
    offsets = decoder_offsets(p.layout, p.fires, valid, L)  # (B, T+1)
    last, seg_len, closed = open_segment(p.layout, p.fires, valid, L)  # (B,) each
    has = valid.any(dim=1)  # (B,)
    first = first_real(valid)  # (B,) BEGIN's column (0 in a row without tokens)
    open_start = torch.where(closed, last + 1, last + 1 - seg_len)  # (B,) first token column of the queue
    start = torch.where(has, open_start, first)  # (B,)
    end = torch.where(has, last + 1, first)  # (B,) the queue's last column (predicts the next token)
    cols = torch.arange(T + 1, device=valid.device)  # (T+1,)
    cache = KVStore(kv, (inp_valid & (cols[None, :] < start[:, None])).repeat(k, 1))  # k*B rows
    span = start[:, None] + torch.arange(L, device=valid.device)[None, :]  # (B, L) queued columns
    at = span.clamp(max=T)  # (B, L); columns past `end` are never read
    stream = CodeChoiceStream(
        cache=cache,
        inputs=inp.gather(1, at),
        offsets=offsets.gather(1, at),
        queued=end - start + 1,
        candidates=k,
    )
    h = decoder.history
    if h:  # the h inputs before each queued column, -1 before column 0 and on padding
        ids = inp.masked_fill(~inp_valid, -1)  # (B, T+1)
        before = at[..., None] - h + torch.arange(h, device=valid.device)  # (B, L, h)
        got = ids.gather(1, before.clamp(min=0).view(B, -1)).view(B, L, h)  # (B, L, h)
        stream.history = torch.where(before >= 0, got, torch.full_like(got, -1))
    if level.cfg.decoder_reads_entropy:
        ent = entropy_at_inputs(p.entropy_h.detach(), valid)  # (B, T+1, D)
        stream.entropy_h = ent.gather(1, at[..., None].expand(B, L, ent.shape[-1])).clone()  # (B, L, D)
    return stream
