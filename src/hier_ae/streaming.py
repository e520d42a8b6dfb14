"""The state of streaming (cached) generation, per level (DESIGN §7).

Per level and row: the KV caches of the entropy model, encoder and decoder; the encoder states of
the open segment (the pooling input once it closes); `H[t-1]` for the delta rule; the open
segment's length; whether the next token opens a segment; and the context the decoder reads for
the next token. The top LM keeps its own KV cache. Rows close segments at different steps, so
every length is per row.

Example (one level, max_segment_len 4): after the prompt "<s>a c", if the rule fired at "c" the
segment "c" is already closed and its code is in the top LM's cache: `pending_new` is True and
`context` is the top LM's g for the next segment. The next byte then starts a new open segment.
Shape letters: B rows, L slots per segment (max_segment_len), D width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .code_choice_stream import CodeChoiceStream
from .kv_cache import KVStore
from .pooling import states_before_segments
from .segmentation import SegmentLayout, open_segment, surprisal_bits, utf8_owed


@dataclass
class LevelStream:
    entropy: KVStore
    encoder: KVStore
    open_states: torch.Tensor  # (B, L, D) encoder states of the open segment, by offset
    seg_len: torch.Tensor  # (B,) tokens in the open segment
    prev_H: torch.Tensor  # (B,) entropy (bits) at the last token; +inf before the first
    pending_new: torch.Tensor  # (B,) bool: the next token opens a segment
    decoder: KVStore | None = None  # set top-down by the prefill
    context: torch.Tensor | None = None  # (B, D) predict-mode context of the next token
    # (B, h) the decoder's last h inputs, -1 = none: what its hashed n-grams read (`decoder_ngrams`;
    # h = 0 without them)
    recent: torch.Tensor | None = None
    # (B, D) the encoder state just before the open segment (zero before a row's first one), read by
    # `predictive_codes`; None without them
    before: torch.Tensor | None = None
    # `code_choice_candidates`: the decoder caches its codes are chosen with (`code_choice_stream`;
    # set by the prefill); None without the option
    choice: CodeChoiceStream | None = None
    # `boundary_mode: budget`: the open segment's surprisal in bits (B,) and the entropy model's
    # log-probabilities for the next token (B, V); None in the other modes
    seg_bits: torch.Tensor | None = None
    prev_logp: torch.Tensor | None = None
    # `utf8_boundaries`: the bytes the UTF-8 character open after the row's last token still owes (B,)
    utf8_owed: torch.Tensor | None = None


@dataclass
class StreamState:
    levels: list[LevelStream] = field(default_factory=list)
    top: KVStore | None = None

    def reorder(self, index: torch.Tensor) -> None:
        """Select / reorder rows (beam search)."""
        for st in self.levels:
            for store in (st.entropy, st.encoder, st.decoder):
                store.reorder(index)
            names = ("open_states", "seg_len", "prev_H", "pending_new", "context", "recent", "before")
            extra = ("seg_bits", "prev_logp", "utf8_owed")
            for name in names + extra:
                if getattr(st, name) is not None:
                    setattr(st, name, getattr(st, name).index_select(0, index))
            if st.choice is not None:
                st.choice.reorder(index)
        self.top.reorder(index)


def open_level_stream(
    level, valid, layout: SegmentLayout, fires, H, h, kv_entropy, kv_encoder, tokens=None, entropy_logits=None
) -> LevelStream:
    """A level's streaming state after a whole-row prefill.

    valid (B, T); fires, H (B, T) from the boundary rule; h (B, T, D) encoder states. The open
    segment is the row's last one (`open_segment`); its encoder states are gathered by offset into
    `open_states (B, L, D)`, and `pending_new` says whether it is already closed.

    Worked example (tests/test_streaming.py), max_segment_len L = 4, T = 5, h[t] = t, H[t] = t + 0.5:

        valid 1 1 1 1 1  fires 0 1 0 0 0  ->  "t0 t1 | t2 t3 t4", the last segment open:
            seg_len 3, pending_new False, open_states h[2 3 4 .], prev_H = H[4] = 4.5
        valid 1 1 1 0 0  fires 0 0 1 0 0  ->  "t0 t1 t2", closed by the rule at t2:
            seg_len 3, pending_new True, open_states h[0 1 2 .], prev_H = H[2] = 2.5
        valid 1 1 1 1 1  fires 1 0 0 0 0  ->  "t0 | t1 t2 t3 t4", the last segment full (L tokens):
            seg_len 4, pending_new True, open_states h[1 2 3 4]
        valid 0 0 0 0 0                   ->  no token: seg_len 0, pending_new True, prev_H = +inf

    With `predictive_codes`, `before (B, D)` is the state before the segment the next code comes
    from: h[1], h[2], h[4] and 0 in the four rows above (`before` of a closed segment is its last
    token's state; a row's first segment and an empty row get zeros).

    With `code_choice_candidates`, the level's `bottom_up` adds `choice` (`open_code_choice_stream`).

    With `utf8_boundaries`, `utf8_owed (B,)` is what the UTF-8 character open after the row's last
    token still owes (`segmentation.utf8_owed`; 0 for an empty row); `step` carries it on.

    With `boundary_mode: budget` (`entropy_logits (B, T, V)` given), `seg_bits (B,)` is the open
    segment's surprisal (the sum of `surprisal_bits` over its tokens; `step` restarts it when
    `pending_new`) and `prev_logp (B, V)` the entropy model's log-probabilities after the last token.

    Slots at or after seg_len (.) hold whatever follows and are never read: the next token (`step`)
    is written at slot seg_len, or at slot 0 when pending_new.
    """
    B, T = valid.shape
    L = level.cfg.max_segment_len
    rows = torch.arange(B, device=valid.device)
    has = valid.any(dim=1)  # (B,) rows with at least one token at this level
    last, seg_len, pending = open_segment(layout, fires, valid, L)  # (B,) each
    start = (last + 1 - seg_len).clamp(min=0)  # (B,) first position of the open segment
    idx = (start[:, None] + torch.arange(L, device=valid.device)[None, :]).clamp(max=T - 1)  # (B, L)
    open_states = h.detach().gather(1, idx[..., None].expand(B, L, h.shape[-1]))  # (B, L, D)
    prev_H = torch.where(has, H[rows, last], torch.full_like(H[:, 0], float("inf")))
    before = None
    if level.cfg.predictive_codes:  # the state before the open segment, or before the next one
        next_start = torch.where(pending, last + 1, start)  # (B,)
        before = states_before_segments(h.detach(), valid, next_start[:, None], has[:, None])[:, 0]  # (B, D)
    owed = None
    if level.cfg.utf8_boundaries:  # what the character open after the row's last token owes
        owed = torch.where(has, utf8_owed(tokens)[rows, last], torch.zeros_like(last))  # (B,)
    seg_bits = prev_logp = None
    if level.cfg.boundary_mode == "budget":
        span = torch.arange(T, device=valid.device)[None, :]  # (1, T)
        in_open = valid & (span >= start[:, None]) & (span <= last[:, None]) & has[:, None]  # (B, T)
        seg_bits = (surprisal_bits(entropy_logits, tokens, valid) * in_open).sum(dim=1)  # (B,)
        prev_logp = torch.log_softmax(entropy_logits.detach()[rows, last].float(), dim=-1)  # (B, V)
    return LevelStream(
        entropy=KVStore(kv_entropy, valid),
        encoder=KVStore(kv_encoder, valid),
        open_states=open_states.clone(),
        seg_len=seg_len.clone(),
        prev_H=prev_H.clone(),
        pending_new=pending.clone(),
        before=before,
        seg_bits=seg_bits,
        prev_logp=prev_logp,
        utf8_owed=owed,
    )
