"""Token corrections: the few tokens a level's decoder does not give back, stored beside its codes.

A level's codes (and escape codes) give most segments back exactly, but a rare string now and then
decodes wrong. A correction names a segment j, an offset o inside it and the token that belongs
there; `decode` emits that token instead of the decoder's greedy choice, and the boundary rule reads
it, so decoding goes on from the true prefix (byte fallback, as a tokenizer's `<0xNN>` tokens, but
only where the decoder is wrong). `encode(..., corrections=True)` chooses them by decoding: the first
position where the decoded stream leaves the input gets a correction, and decoding runs again, until
the row comes back exactly. Every correction is priced in the code rate (`correction_bits`).

corrections (B, S, L): L = `max_segment_len`; corrections[b, j, o] = the token at offset o of
segment j of row b, -1 where the decoder's own choice stands.

Worked example, one row, tokens `<s> a b c </s>` in segments [<s> a] [b c] [</s>] (L = 4): the
decoder gives `<s> a b d </s>`, wrong first at position 3 (`c`), offset 1 of segment 1; so
corrections[0, 1, 1] = id of `c`, every other entry -1. Decoding again emits `c` there, the rule
closes segment 1 after it as encode's did, and `</s>` follows: the row is exact with one correction.
"""

from __future__ import annotations

import math

import torch


def first_mismatch(decoded: torch.Tensor, dec_valid: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor):
    """The first position where a decoded row leaves its reference: decoded, dec_valid (B, n),
    ref, valid (B, T) -> (B,) position, -1 where the row is exact (same tokens, same length).
    Example: decoded `a b d`, ref `a b c e` -> 2; decoded `a b`, ref `a b c` -> 2; equal rows -> -1."""
    B, T = ref.shape
    n = decoded.shape[1]
    width = max(n, T)
    d = torch.full((B, width), -2, dtype=torch.long, device=ref.device)  # (B, width): -2 past the end
    r = torch.full((B, width), -3, dtype=torch.long, device=ref.device)  # never equal to d's padding
    d[:, :n] = torch.where(dec_valid, decoded, torch.full_like(decoded, -2))
    r[:, :T] = torch.where(valid, ref, torch.full_like(ref, -2))
    differ = d != r  # (B, width); equal past both ends (-2 == -2)
    pos = torch.where(differ.any(1), differ.float().argmax(1), torch.full((B,), -1, device=ref.device))
    return pos.long()


def segment_offset(seg_id: torch.Tensor, pos: int) -> tuple[int, int]:
    """The segment and the offset inside it of position `pos` of one row's `seg_id (T,)` (segment of
    each token, -1 on padding): `seg_id = [0, 0, 1, 1, 1]`, pos 3 -> (1, 1)."""
    j = int(seg_id[pos])
    return j, int((seg_id[:pos] == j).sum())


@torch.no_grad()
def choose_corrections(
    level, codes: torch.Tensor, seg_mask: torch.Tensor, escapes, tokens: torch.Tensor, valid, seg_id
) -> torch.Tensor:
    """The corrections under which `level.decode_codes` gives every row's tokens back exactly.

    codes, seg_mask (B, S) and escapes (B, S) or None: what `encode` gives the level; tokens, valid,
    seg_id (B, T): the level's input and encode's segments. Each round decodes the rows not yet exact
    and corrects each at its first wrong position (the segment and offset encode's layout gives it: the
    prefix before it is exact, so decode drew the same boundaries there). A row whose correction is
    already in place and still comes back wrong (its boundaries differ from encode's at the end, e.g.
    at the hard cap) is left as it is. Returns corrections (B, S, max_segment_len), -1 = none."""
    B, S = codes.shape
    L = level.cfg.max_segment_len
    corr = torch.full((B, S, L), -1, dtype=torch.long, device=codes.device)  # (B, S, L)
    todo = torch.arange(B, device=codes.device)  # (B',) rows that may still be wrong
    for _ in range(tokens.shape[1] + 1):  # each round moves a row's first wrong position on
        if not len(todo):
            break
        esc = None if escapes is None else escapes[todo]
        dec, dec_valid, _ = level.decode_codes(
            codes[todo], seg_mask[todo], escapes=esc, corrections=corr[todo]
        )
        pos = first_mismatch(dec, dec_valid, tokens[todo], valid[todo])  # (B',)
        keep = []
        for i, (row, p) in enumerate(zip(todo.tolist(), pos.tolist())):
            if p < 0 or p >= tokens.shape[1] or not bool(valid[row, p]):
                continue  # exact, or longer than the input (nothing to correct it to)
            j, o = segment_offset(seg_id[row], p)
            if j < 0 or o >= L or int(corr[row, j, o]) == int(tokens[row, p]):
                continue  # already corrected there: boundaries differ, a correction cannot mend it
            corr[row, j, o] = tokens[row, p]
            keep.append(i)
        todo = todo[keep]
    return corr


@torch.no_grad()
def correction_token_bits(
    level, codes: torch.Tensor, seg_mask: torch.Tensor, escapes, corrections
) -> torch.Tensor:
    """What each correction's token costs an entropy coder that shares the decoder: at the corrected
    position the decoder knows its own choice is wrong (the correction's offset says so), so the token
    is coded under its distribution without its argmax: -log2(p[token] / (1 - p[argmax])) bits.
    codes, seg_mask (B, S), escapes (B, S) or None, corrections (B, S, L) -> bits (B, S, L), 0 where
    none. Worked example: p = (0.6, 0.3, 0.1) over three tokens, token 1 -> -log2(0.3 / 0.4) = 0.415."""
    B, S, L = corrections.shape
    bits = torch.zeros(B, S, L, dtype=torch.float64, device=corrections.device)
    n_tok = torch.zeros(B, S, dtype=torch.long, device=corrections.device)  # (B, S) tokens emitted

    steps = []  # each step's live rows (B',) and the decoder's probabilities (B', V)

    def record(n: int, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        steps.append((rows.clone(), logits.float().softmax(-1)))
        return logits.argmax(-1)  # the greedy choice, as `decode`

    _, valid, seg_id = level.decode_codes(
        codes, seg_mask, pick=record, escapes=escapes, corrections=corrections
    )  # (B, n) each
    for n, (rows, prob) in enumerate(steps):
        live = valid[rows, n]  # (B',)
        j = seg_id[rows, n].clamp(min=0)  # (B',)
        o = n_tok[rows, j]  # (B',) the offset of step n in its segment
        tok = corrections[rows, j, o.clamp(max=L - 1)]  # (B',)
        hit = live & (tok >= 0)
        if hit.any():
            p_tok = prob[hit].gather(1, tok[hit, None])[:, 0].double()  # (h,)
            p_top = prob[hit].max(-1).values.double()  # (h,)
            bits[rows[hit], j[hit], o[hit]] = -torch.log2(p_tok / (1 - p_top).clamp(min=1e-12))
        n_tok[rows[live], j[live]] += 1
    return bits


def correction_bits(
    counts: torch.Tensor, escaped: torch.Tensor, token_bits: torch.Tensor, max_segment_len: int, shares=None
) -> dict:
    """The bits corrections add to a code. Each segment's number of corrections is entropy-coded given
    whether the segment is escaped (corrections fall on segments whose escape did not give them back, so
    the two kinds get their own count shares: `shares = (not escaped, escaped)` shares of 0, 1, ...
    corrections (`count_shares`), e.g. fitted on other text; default: this text's own, the ideal cost);
    each correction adds log2 L bits for its offset and its token's `correction_token_bits`.
    counts (N,) corrections per valid segment, escaped (N,) bool, token_bits (N,) the segment's summed
    token bits. A count a share gives no mass to costs infinity (`count_shares` smooths).

    Worked example: 8 segments, 4 escaped with counts (0, 0, 1, 2), 4 not escaped with counts 0, L = 16,
    token bits 3 and 5 + 2: not escaped H = 0; escaped shares (2/4, 1/4, 1/4), 1.5 bits each -> 6 bits;
    offsets 3 x 4 = 12 bits; tokens 10 bits; total 28 bits."""
    groups = [~escaped, escaped]
    if shares is None:
        shares = own_count_shares(counts, escaped)
    count_bits = 0.0
    for g, sh in zip(groups, shares):
        c = counts[g]
        sh = torch.as_tensor(sh, dtype=torch.float64)
        p = torch.where(c < len(sh), sh[c.clamp(max=len(sh) - 1)], torch.zeros(len(c), dtype=torch.float64))
        count_bits += float(-torch.log2(p).sum()) if len(c) else 0.0
    n_corr = int(counts.sum())
    offset_bits = n_corr * math.log2(max_segment_len)
    tok_bits = float(token_bits.sum())
    return {
        "corrections": n_corr,
        "corrected_segments": int((counts > 0).sum()),
        "count_bits": count_bits,
        "offset_bits": offset_bits,
        "token_bits": tok_bits,
        "correction_bits": count_bits + offset_bits + tok_bits,
    }


def own_count_shares(counts: torch.Tensor, escaped: torch.Tensor) -> list[torch.Tensor]:
    """A text's own count shares, (not escaped, escaped), without a prior: the ideal pricing of
    `correction_bits`. Example: counts (0, 1, 0), escaped (F, T, T) -> [(1.0,), (0.5, 0.5)]."""
    return [count_shares(counts[g], prior=0.0) if g.any() else torch.ones(1) for g in (~escaped, escaped)]


def count_shares(counts: torch.Tensor, size: int | None = None, prior: float = 0.5) -> torch.Tensor:
    """Shares of 0, 1, ... corrections a segment, with `prior` added to each count (so a count not seen
    in `counts` keeps a small share): counts (N,) -> (size,) summing to 1. `size` defaults to the
    largest count + 2 (+ 1 with no prior). Example: counts (0, 0, 0, 1), size 3, prior 0.5 -> (3.5,
    1.5, 0.5) / 5.5; prior 0 -> (3, 1) / 4."""
    if size is None:
        size = (int(counts.max()) if len(counts) else 0) + (2 if prior else 1)
    hist = torch.bincount(counts.clamp(max=size - 1), minlength=size).double() + prior
    return hist / hist.sum()
