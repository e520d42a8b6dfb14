"""The boundary rule and the bookkeeping of segments (DESIGN §3.2).

Token `t + 1` opens a new segment when the entropy model's uncertainty about it, `H[t]` (bits),
is above a threshold (or rose by more than `delta` over `H[t - 1]`), when `x[t]` is EOS, or when the
current segment reached `max_segment_len`. Position 0 (the first real token of a row) always opens
one. `H[t]` depends only on `x[0..t]`, so whether `x[t + 1]` starts a segment is known before it is
seen: the hard-to-predict token is the *first* token of its segment.

Worked example (threshold mode, theta = 2.5 bits, max_segment_len large):

    t        0    1    2    3    4    5    6    7    8    9
    x        a   ' '   c    a    t   ' '   s    a    t    .
    H[t]    1.0  3.2  1.4  0.6  0.5  3.0  1.1  0.4  0.3  1.9
    fires    .    *    .    .    .    *    .    .    .    .      fires[t] = H[t] > theta
    starts   1    0    1    0    0    0    1    0    0    0      starts[t+1] = fires[t]
    seg_id   0    0    1    1    1    1    2    2    2    2      cumsum(starts) - 1
    pos      0    1    0    1    2    3    0    1    2    3      t - start of its segment

Segments "a ", "cat ", "sat." (the last still open at t = 9).

Budget mode (`boundary_mode: budget`, theta = the budget in bits) keeps a segment's information
near a fixed amount instead: the segment closes after `x[t]` when the surprisal of its tokens so far,
`c = sum of s[i]` with `s[i] = -log2 p(x[i] | x[<i])` under the entropy model, plus the expected
surprisal of the next token, `H[t]`, would exceed theta (`budget_fires`). Predictable runs make long
segments, surprising bytes short ones, so a code of log2(K) bits is asked to carry about the same
number of bits everywhere. Causal as well: `s[t]` and `H[t]` are known once `x[t]` is read.

Shape letters: B batch, T tokens, S segments, L slots per segment (max_segment_len).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .configuration_hier_ae import BYTE_OFFSET, LevelVocab


def rule_fires(
    entropy: torch.Tensor,
    tokens: torch.Tensor,
    eos_id: int,
    mode: str,
    threshold: float | torch.Tensor,
    delta: float,
    prev_entropy: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whether the token *after* each position opens a segment, ignoring the length cap.

    entropy, tokens: (B, T). `prev_entropy (B,)` is `H[-1]` for streaming use (None: no rise at
    t = 0; +inf: no rise either). With `valid (B, T)`, the first real token of a left-padded row
    has no rise (padding has no entropy). Returns fires (B, T) bool: x[t + 1] starts a segment.
    """
    if mode == "threshold":
        fires = entropy > threshold  # (B, T)
    elif mode == "delta":
        if prev_entropy is None:
            prev = torch.cat([entropy[:, :1], entropy[:, :-1]], dim=1)  # (B, T), no rise at t = 0
        else:
            prev = torch.cat([prev_entropy[:, None], entropy[:, :-1]], dim=1)  # (B, T)
        if valid is not None:
            prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1)
            prev = torch.where(prev_valid, prev, entropy)
        fires = (entropy - prev) > delta
    else:
        raise ValueError(f"boundary_mode={mode!r} is invalid: one of ('threshold', 'delta').")
    return fires | (tokens == eos_id)


def _utf8_classes(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per byte token: how many continuation bytes its UTF-8 lead byte announces (0xC0-0xDF: 1,
    0xE0-0xEF: 2, 0xF0-0xF7: 3, else 0) and whether it is a continuation byte (0x80-0xBF). Tokens
    that are not bytes (the specials, padding) are neither."""
    b = tokens - BYTE_OFFSET
    lead = (b >= 0xC0).long() + (b >= 0xE0).long() + (b >= 0xF0).long()
    lead = torch.where(b < 0xF8, lead, torch.zeros_like(lead))
    return lead, (b >= 0x80) & (b < 0xC0)


def utf8_owed(tokens: torch.Tensor) -> torch.Tensor:
    """How many bytes the UTF-8 character open after each token still owes (0: it is complete).

    tokens (B, T) of a byte level -> (B, T) long. A function of the token and the two before it, so
    that `utf8_owed_step` (streaming, decode) gives the same from a running value. Bytes that do
    not form UTF-8 owe nothing (a lead byte's debt ends at the first byte that is not a continuation).

        bytes   61  C3  A9  E4  B8  AD  0A        "a", "é", "中", newline
        owed     0   1   0   2   1   0   0

    `utf8_boundaries` keeps the rule from opening a segment while something is owed, so a segment
    never starts inside a character (the length cap `max_segment_len` still may).
    """
    lead, cont = _utf8_classes(tokens)  # (B, T) each
    lead1 = torch.nn.functional.pad(lead, (1, 0))[:, :-1]  # (B, T): lead[t - 1]
    lead2 = torch.nn.functional.pad(lead, (2, 0))[:, :-2]
    cont1 = torch.nn.functional.pad(cont, (1, 0))[:, :-1]
    after1 = torch.where(lead1 >= 1, lead1 - 1, torch.zeros_like(lead))
    after2 = torch.where(cont1 & (lead2 >= 2), lead2 - 2, torch.zeros_like(lead))
    owed = torch.where(lead1 >= 1, after1, after2)
    return torch.where(lead > 0, lead, torch.where(cont, owed, torch.zeros_like(lead)))


def utf8_owed_step(owed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`utf8_owed` one token on: owed (B',) after the row's last token (0 before its first),
    tokens (B',) the next ones -> (B',)."""
    lead, cont = _utf8_classes(tokens)
    return torch.where(lead > 0, lead, torch.where(cont & (owed > 0), owed - 1, torch.zeros_like(owed)))


def surprisal_bits(logits: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """s[t] = -log2 p(x[t] | x[<t]) under the entropy model (logits[t - 1] predicts x[t]), in bits.

    A row's first real token, and padding, get 0 (nothing predicted them). logits (B, T, V), tokens,
    valid (B, T) -> (B, T).
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    s = -logp.gather(-1, tokens[:, 1:, None])[..., 0] / math.log(2.0)  # (B, T-1): s[t] for t >= 1
    s = torch.cat([s.new_zeros(s.shape[0], 1), s], dim=1)  # (B, T)
    prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1)  # (B, T)
    return torch.where(valid & prev_valid, s, torch.zeros_like(s))


def budget_rule(seg_bits: torch.Tensor, H: torch.Tensor, is_eos: torch.Tensor, budget: float) -> torch.Tensor:
    """Budget mode's firing, token by token: the open segment's surprisal so far `seg_bits` (this token
    included) plus the next token's expected surprisal `H` exceeds the budget, or the token is EOS.
    Elementwise; `segment_closes` then adds the length bounds."""
    return (seg_bits + H > budget) | is_eos


def budget_fires(
    s: torch.Tensor,
    H: torch.Tensor,
    is_eos: torch.Tensor,
    valid: torch.Tensor,
    budget: float,
    min_segment_len: int,
    max_segment_len: int,
) -> torch.Tensor:
    """Budget mode over whole rows: where the open segment closes (x[t + 1] opens the next one).

    A left-to-right scan (the state, the open segment's bits, is a real number): `budget_rule` then
    `segment_closes`, so the firings already respect the length bounds (`hold_short_segments` has
    nothing to hold back). Padding closes nothing and resets the state. Budget 6, L = 8, min 1:

        s       0   3.0  1.0  0.5  5.0  0.2  0.1
        H      2.5  1.5  1.0  4.0  1.0  0.5  0.5
        bits    0   3.0  4.0  4.5  5.0  5.2  5.3      bits = open segment's sum of s, this token included
        fires   .    .    .    *    .    .    .      t = 3: 4.5 + 4.0 > 6 -> segments [0..3] [4..6]

    s, H, is_eos, valid: (B, T). Returns fires (B, T) bool.
    """
    B, T = s.shape
    bits = torch.zeros(B, dtype=torch.float32, device=s.device)  # (B,) the open segment's surprisal
    n = torch.zeros(B, dtype=torch.long, device=s.device)  # (B,) its tokens
    fires = torch.zeros(B, T, dtype=torch.bool, device=s.device)
    for t in range(T):
        v = valid[:, t]
        bits = torch.where(v, bits + s[:, t].float(), torch.zeros_like(bits))
        n = torch.where(v, n + 1, torch.zeros_like(n))
        rule = budget_rule(bits, H[:, t].float(), is_eos[:, t], budget)
        close = segment_closes(rule, n, max_segment_len, min_segment_len, is_eos[:, t]) & v
        fires[:, t] = close
        bits = torch.where(close, torch.zeros_like(bits), bits)
        n = torch.where(close, torch.zeros_like(n), n)
    return fires


def boundary_starts(fires: torch.Tensor, valid: torch.Tensor, max_segment_len: int) -> torch.Tensor:
    """Segment starts (B, T) bool from `fires (B, T)` and the validity mask `valid (B, T)`.

    A rule start is the first real token of a row or a token after a firing position; between rule
    starts, a forced start falls every `max_segment_len` tokens. With L = 3:

        fires    0 0 0 0 0 1 0 0      rule starts at t = 0 and t = 6
        starts   1 0 0 1 0 0 1 0      t = 3 is forced (3 tokens since t = 0)
    """
    B, T = fires.shape
    prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1)  # (B, T)
    after_fire = torch.cat([torch.zeros_like(fires[:, :1]), fires[:, :-1]], dim=1)  # (B, T)
    rule = valid & (after_fire | ~prev_valid)  # (B, T)
    t = torch.arange(T, device=fires.device).expand(B, T)  # (B, T)
    last_rule = torch.where(rule, t, torch.full_like(t, -1)).cummax(dim=1).values  # (B, T)
    since = t - last_rule  # (B, T), >= 0 once a rule start happened
    return valid & (last_rule >= 0) & (since % max_segment_len == 0)


@dataclass
class SegmentLayout:
    """Where every token and every segment sits. Built by `segment_layout`.

    seg_id (B, T): segment index of each real token, -1 on padding.
    pos (B, T): offset of each real token inside its segment, 0 on padding.
    seg_mask (B, S): real segments; S = the batch maximum number of segments.
    seg_start (B, S), seg_len (B, S): first position and length of each segment (0 when padded).
    """

    seg_id: torch.Tensor
    pos: torch.Tensor
    seg_mask: torch.Tensor
    seg_start: torch.Tensor
    seg_len: torch.Tensor

    @property
    def num_segments(self) -> torch.Tensor:
        return self.seg_mask.sum(dim=1)  # (B,)


def segment_layout(starts: torch.Tensor, valid: torch.Tensor) -> SegmentLayout:
    """Segment ids, offsets and per-segment extents from `starts (B, T)` and `valid (B, T)`.

    starts = [1 0 1 0 0], valid = [1 1 1 1 0] -> seg_id = [0 0 1 1 -1], pos = [0 1 0 1 0],
    seg_start = [0 2], seg_len = [2 2].
    """
    B, T = starts.shape
    dev = starts.device
    seg_id = starts.long().cumsum(dim=1) - 1  # (B, T)
    seg_id = torch.where(valid, seg_id, torch.full_like(seg_id, -1))
    t = torch.arange(T, device=dev).expand(B, T)  # (B, T)
    last_start = torch.where(starts, t, torch.full_like(t, -1)).cummax(dim=1).values  # (B, T)
    pos = torch.where(valid, t - last_start, torch.zeros_like(t))  # (B, T)
    n = starts.sum(dim=1)  # (B,)
    S = max(int(n.max().item()) if B else 0, 1)
    seg_mask = torch.arange(S, device=dev)[None, :] < n[:, None]  # (B, S)
    # scatter each real token into its segment: start = min position, len = count
    idx = seg_id.clamp(min=0)  # (B, T)
    seg_len = torch.zeros(B, S, dtype=torch.long, device=dev).scatter_add_(1, idx, valid.long())  # (B, S)
    big = torch.full((B, S), T, dtype=torch.long, device=dev)
    t_or_big = torch.where(valid, t, torch.full_like(t, T))
    seg_start = big.scatter_reduce(1, idx, t_or_big, reduce="amin")  # (B, S)
    seg_start = torch.where(seg_mask, seg_start, torch.zeros_like(seg_start))
    return SegmentLayout(seg_id=seg_id, pos=pos, seg_mask=seg_mask, seg_start=seg_start, seg_len=seg_len)


def segment_last_tokens(tokens: torch.Tensor, layout: SegmentLayout) -> torch.Tensor:
    """The last token of every segment (B, S); 0 on padded segments."""
    last = (layout.seg_start + layout.seg_len - 1).clamp(min=0)  # (B, S)
    out = tokens.gather(1, last)  # (B, S)
    return torch.where(layout.seg_mask, out, torch.zeros_like(out))


@dataclass
class UpperStream:
    """The token stream of the level above, framed like bytes (DESIGN §2): [bos] codes [eos ...].

    tokens (B, T'): ids of the level above; valid (B, T'); seg_pos (B, S): index in `tokens` of the
    code of each segment below (0 when padded); vectors (B, T', Dv), when framed with them: each
    code's segment vector at its index, zeros at specials and padding.
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    seg_pos: torch.Tensor
    vectors: torch.Tensor | None = None


def frame_upper_stream(
    codes: torch.Tensor,
    seg_mask: torch.Tensor,
    starts_with_bos: torch.Tensor,
    ends_with_eos: torch.Tensor,
    vocab: LevelVocab,
    closed: torch.Tensor | None = None,
    vectors: torch.Tensor | None = None,
) -> UpperStream:
    """Codes of one level -> the framed token stream of the level above.

    A row that began with its level's BOS gets the upper BOS first; a segment that ended with its
    level's EOS is followed by the upper EOS (EOS closes its segment at every level). Example with
    codes [7, 3, 9], a row that starts with BOS and whose 2nd segment ends with EOS:

        tokens  = [bos, 7, 3, eos, 9]        seg_pos = [1, 2, 4]

    codes, seg_mask, ends_with_eos: (B, S); starts_with_bos: (B,); `vocab`: the ids of the level above
    (`LevelVocab.of_codes(K)`: pad K, eos K + 1, bos K + 2). `closed (B, S)` (optional) keeps
    only completed segments in `tokens` (the causal LM's view: an open segment has no code yet);
    `seg_pos` of the open segment is then where its code will go, the end of the stream.
    `vectors (B, S, Dv)` (optional) are laid out the same way (`UpperStream.vectors`): above,
    vectors[:, 0..2] at indices 1, 2, 4 and zeros at 0 (bos) and 3 (eos).
    """
    B, S = codes.shape
    dev = codes.device
    pad_id, eos_id, bos_id = vocab.pad_id, vocab.eos_id, vocab.bos_id
    eos_before = (
        torch.cumsum(ends_with_eos.long(), dim=1) - ends_with_eos.long()
    )  # (B, S) eos strictly before s
    seg_pos = torch.arange(S, device=dev)[None, :] + starts_with_bos.long()[:, None] + eos_before  # (B, S)
    seg_pos = torch.where(seg_mask, seg_pos, torch.zeros_like(seg_pos))
    if closed is not None:
        seg_mask = seg_mask & closed
    n_tokens = seg_mask.sum(1) + starts_with_bos.long() + (ends_with_eos & seg_mask).long().sum(1)  # (B,)
    Tu = max(int(n_tokens.max().item()) if B else 0, 1)
    tokens = torch.full((B, Tu + 1), pad_id, dtype=torch.long, device=dev)  # (B, T'+1); last col = sink
    sink = torch.full_like(seg_pos, Tu)
    tokens.scatter_(1, torch.where(seg_mask, seg_pos, sink), torch.where(seg_mask, codes, pad_id))
    eos_pos = torch.where(seg_mask & ends_with_eos, seg_pos + 1, sink)  # (B, S)
    tokens.scatter_(1, eos_pos, torch.full_like(eos_pos, eos_id))
    tokens[:, 0] = torch.where(starts_with_bos, torch.full_like(tokens[:, 0], bos_id), tokens[:, 0])
    tokens = tokens[:, :Tu]  # (B, T')
    valid = torch.arange(Tu, device=dev)[None, :] < n_tokens[:, None]  # (B, T')
    tokens = torch.where(valid, tokens, torch.full_like(tokens, pad_id))
    vec = None
    if vectors is not None:
        Dv = vectors.shape[-1]
        vec = vectors.new_zeros(B, Tu + 1, Dv)  # (B, T'+1, Dv); last row = sink
        idx = torch.where(seg_mask, seg_pos, sink)[..., None].expand(B, S, Dv)  # (B, S, Dv)
        vec = vec.scatter(1, idx, vectors * seg_mask[..., None])[:, :Tu]  # (B, T', Dv)
    return UpperStream(tokens=tokens, valid=valid, seg_pos=seg_pos, vectors=vec)


def shift_in_begin(tokens: torch.Tensor, valid: torch.Tensor, begin_id: int, pad_id: int):
    """Decoder / LM input: a BEGIN token just before each row's first real token.

    Output index `i` of a model fed this input predicts `tokens[i]` (index T predicts the next one).
    Left padding keeps BEGIN adjacent to the first real token, so padding never changes a result:

        tokens = [pad, pad, a, b]  valid = [0 0 1 1]
        inp    = [pad, pad, BEGIN, a, b]   inp_valid = [0 0 1 1 1]     (B, T + 1)
    """
    B, T = tokens.shape
    first = valid.long().argmax(dim=1)  # (B,) first real position (0 for empty rows)
    inp = torch.cat([torch.full_like(tokens[:, :1], pad_id), tokens], dim=1)  # (B, T+1)
    inp_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid], dim=1)  # (B, T+1)
    rows = torch.arange(B, device=tokens.device)
    inp[rows, first] = begin_id
    inp_valid[rows, first] = True
    return inp, inp_valid


def compact_codes(tokens: torch.Tensor, valid: torch.Tensor, num_codes: int):
    """Drop framing specials and padding from a level's token stream: the codes of the level below.

    The inverse of `frame_upper_stream`. tokens = [bos, 7, 3, eos, 9] (num_codes = 10) -> codes
    [7, 3, 9], mask [1, 1, 1]. (B, T) -> (B, S)
    """
    B, T = tokens.shape
    is_code = valid & (tokens < num_codes)  # (B, T)
    t = torch.arange(T, device=tokens.device).expand(B, T)
    order = torch.where(is_code, t, t + T).argsort(dim=1)  # codes first, in order
    n = is_code.sum(dim=1)  # (B,)
    S = max(int(n.max().item()), 1)
    codes = tokens.gather(1, order)[:, :S]  # (B, S)
    mask = torch.arange(S, device=tokens.device)[None, :] < n[:, None]  # (B, S)
    return torch.where(mask, codes, torch.zeros_like(codes)), mask


def first_real(valid: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token (B,). valid = [0 0 1 1] -> 2."""
    return valid.long().argmax(dim=1)


def last_real(valid: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (B,). valid = [1 1 1 0] -> 2; [0 1 1 1] -> 3."""
    T = valid.shape[1]
    return T - 1 - valid.flip(1).long().argmax(dim=1)


def segment_closes(
    fires: torch.Tensor,
    seg_len: torch.Tensor,
    max_segment_len: int,
    min_segment_len: int = 1,
    is_eos: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one rule for closing a segment, token by token: it closes after a token when the boundary
    rule fired there (`rule_fires`, which also fires on EOS) and the segment holds at least
    `min_segment_len` tokens, or at EOS (`is_eos`; EOS closes its segment at every length), or when it
    now holds `max_segment_len` tokens. `seg_len`: tokens in the segment so far, this one included.
    Elementwise, any shape; `is_eos` is needed only when `min_segment_len > 1`.

    `boundary_starts` (after `hold_short_segments`) is the same rule for a whole row at once (a token
    opens a segment when the one before it closed one); tests/test_segmentation.py checks the two
    agree. With L = 3:

        fires    0 0 0 0 0 1 0 0
        seg_len  1 2 3 1 2 3 1 2      closes  0 0 1 0 0 1 0 0   (t = 2: full; t = 5: fired and full)

    With min_segment_len 2 a firing on a segment's first token is held back:

        fires    1 1 0 1 1        seg_len  1 2 1 2 1      closes  0 1 0 1 0
    """
    if min_segment_len > 1:
        if is_eos is None:
            raise ValueError("segment_closes: min_segment_len > 1 needs is_eos (EOS closes at any length)")
        fires = (fires & (seg_len >= min_segment_len)) | is_eos
    return fires | (seg_len >= max_segment_len)


def hold_short_segments(
    fires: torch.Tensor, is_eos: torch.Tensor, valid: torch.Tensor, min_segment_len: int, max_segment_len: int
) -> torch.Tensor:
    """The rule's firings `fires (B, T)` less those that would close a segment shorter than
    `min_segment_len` (EOS always closes; a close at `max_segment_len` may be marked too, where
    `boundary_starts` forces it anyway): the firings `boundary_starts` reads. Whether a firing counts
    depends on where its segment opened, so this is `segment_closes` run left to right; with min
    segment length 1 the firings come back unchanged. Min 2, L = 4:

        fires    1 1 1 0 1 1 1
        seg_len  1 2 1 2 3 1 2      -> fires 0 1 0 0 1 0 1: segments [0 1] [2 3 4] [5 6]

    The scan runs in log2(T) vectorised steps: the state is s = tokens in the open segment (0..L-1;
    0 = the last one closed); token t maps every state before it to the state after it (a table of
    L entries, `step`), and the tables compose (Hillis-Steele prefix scan: after k rounds, entry t
    maps the state before token t - 2^k + 1 to the state after token t). In the example, token 0
    (fires) maps s = 0 -> 1 (held: a 1-token segment), 1 -> 0, 2 -> 0, 3 -> 0 (closes).
    Padding maps every state to 0 (the next real token opens a segment, as in `boundary_starts`).

    is_eos, valid: (B, T). Returns (B, T) bool.
    """
    if min_segment_len <= 1 or fires.shape[1] == 0:
        return fires
    B, T = fires.shape
    L = max_segment_len
    new_len = torch.arange(1, L + 1, device=fires.device).expand(B, T, L)  # (B, T, L): s + 1 for s = 0..L-1
    closes = segment_closes(fires[..., None], new_len, L, min_segment_len, is_eos[..., None])  # (B, T, L)
    step = torch.where(closes | ~valid[..., None], 0, new_len)  # (B, T, L) the state after token t
    prefix, shift = step, 1
    while shift < T:
        # prefix[t] <- prefix[t] after prefix[t - shift]: composed[s] = prefix[t][prefix[t - shift][s]]
        composed = prefix[:, shift:].gather(2, prefix[:, :-shift])  # (B, T - shift, L)
        prefix = torch.cat([prefix[:, :shift], composed], dim=1)
        shift *= 2
    after = prefix[..., 0]  # (B, T) the state after token t, from a closed start
    before = torch.cat([torch.zeros_like(after[:, :1]), after[:, :-1]], dim=1)  # (B, T)
    return closes.gather(2, before[..., None]).squeeze(-1) & valid


def open_segment(layout: SegmentLayout, fires: torch.Tensor, valid: torch.Tensor, max_segment_len: int):
    """The row's last segment after its last real token: (last, seg_len, closes), each (B,).

    `last`: index of the last real token; `seg_len`: tokens in the last segment (0 for a row
    without tokens); `closes`: it closed after `last` (`segment_closes`), so the next token opens a
    new segment (True for a row without tokens). pos = [0 1 0 1 2], fires[4] = 0, L = 4 ->
    (4, 3, False); with L = 3 -> (4, 3, True).
    """
    rows = torch.arange(valid.shape[0], device=valid.device)
    last = last_real(valid)  # (B,)
    has = valid.any(dim=1)  # (B,)
    seg_len = torch.where(has, layout.pos[rows, last] + 1, torch.zeros_like(last))  # (B,)
    closes = ~has | segment_closes(fires[rows, last], seg_len, max_segment_len)  # (B,)
    return last, seg_len, closes


def closed_segments(layout: SegmentLayout, fires: torch.Tensor, valid: torch.Tensor, max_segment_len: int):
    """Which segments are complete at the end of the row (B, S) bool.

    Every segment but the last is complete. The last one is complete when the rule fired at the
    row's last token (or the segment reached `max_segment_len`): then the next token opens a new
    segment, so the last one can be pooled and quantised now (DESIGN §3, worked example).
    """
    _, _, fired_last = open_segment(layout, fires, valid, max_segment_len)  # (B,)
    S = layout.seg_mask.shape[1]
    is_last = torch.arange(S, device=valid.device)[None, :] == (layout.num_segments - 1)[:, None]  # (B, S)
    return layout.seg_mask & ~(is_last & ~fired_last[:, None])


def decoder_offsets(layout: SegmentLayout, fires: torch.Tensor, valid: torch.Tensor, max_segment_len: int):
    """Offset in its segment of the token each decoder output predicts. (B, T) -> (B, T + 1).

    The decoder reads [BEGIN, x] (T + 1 positions) and output i predicts x[i], so output i < T gets
    `layout.pos[i]`. Output last + 1 predicts the token after the row's last real token: offset 0
    when the segment closes at `last` (the rule fired there, or the segment is full), else
    pos[last] + 1. Padding gets 0. With max_segment_len 4:

        pos     0 1 2 0 1        fires  0 0 1 0 0   ->  offsets 0 1 2 0 1 2
        pos     0 1 2 0 1        fires  0 0 1 0 1   ->  offsets 0 1 2 0 1 0
        pos     0 1 2 3          fires  0 0 0 0     ->  offsets 0 1 2 3 0   (full: a new segment)
    """
    rows = torch.arange(valid.shape[0], device=valid.device)
    last, seg_len, closes = open_segment(layout, fires, valid, max_segment_len)  # (B,) each
    nxt = torch.where(closes, torch.zeros_like(seg_len), seg_len)  # (B,)
    pos = torch.where(valid, layout.pos, torch.zeros_like(layout.pos))  # (B, T)
    out = torch.cat([pos, torch.zeros_like(pos[:, :1])], dim=1)  # (B, T+1)
    out[rows, last + 1] = nxt
    return out
