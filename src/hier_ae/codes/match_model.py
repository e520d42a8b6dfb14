"""A match model: the next symbol of a stream predicted from the last time its recent past occurred.

The codec (`hier_ae.codes.codec`) codes a file in chunks (16,382 bytes by default), each encoded and
priced from an empty context, so a block repeated across the file (code repeats whole functions, imports,
signatures) costs as much the second time as the first. A match model remembers the stream so far
across chunks: when the last `min_len` symbols occurred before, it predicts the symbol that followed
them then, and it keeps predicting along that earlier occurrence while it is right. The prediction
is folded into the model's distribution q (the top LM's over codes, or the decoder's over tokens):

    pred gets f = max(q[pred], h),   every other symbol s gets q[s] * (1 - f) / (1 - q[pred]),

where h is how often a prediction made in the same circumstances was right so far in this stream
(counts by the match length so far, log-bucketed, and by q[pred] in four bins: (hits + 0.5) /
(tries + 1)). It only ever raises q[pred], so where the model was sure already nothing changes, and
in a long repeat a symbol costs a small fraction of a bit. Everything is counts and float64 arithmetic
on the same inputs in the same order, so the compressor and the decompressor compute the very same
distributions.

Worked toy example (min_len = 2) on the stream a b c a b ?:
    after "a b" (positions 0-1) the table holds (a, b) -> 2, the position that followed;
    after "c a b" the last two symbols (a, b) are in the table: pred = stream[2] = c, match length 2;
    with q[c] = 0.1 and no history yet (h = 0.5): f = 0.5, and the other symbols share 0.5 as
    q did 0.9. If the next symbol is c, the match goes on (pred = stream[3] = a, length 3).

`checkpoint()` / `restore(mark)` undo everything since the mark (the codec stores a chunk raw when
its decode cannot follow its codes, and the decompressor never sees those symbols).
"""

from __future__ import annotations

import math

import numpy as np

LENGTH_BUCKETS = 32
Q_BINS = 4
MAX_BACK = 400  # how far back a fresh match's length is counted
F_MAX = 1.0 - 1e-6  # the most a prediction is given (the range coder keeps every symbol possible)


def length_bucket(length: int) -> int:
    """0..7 as they are, then four buckets an octave: 8 -> 8, 16 -> 12, 32 -> 16, 400+ -> 22..31."""
    if length < 8:
        return length
    return min(8 + int(4 * math.log2(length / 8)), LENGTH_BUCKETS - 1)


class MatchModel:
    """`mix(q) -> q'` before each symbol, `update(symbol)` after it; `update` alone for symbols coded
    without `mix` (they still extend the stream and its matches)."""

    def __init__(self, min_len: int = 3):
        if min_len < 1:
            raise ValueError(f"min_len={min_len} is invalid: a positive number of symbols")
        self.min_len = min_len
        self.stream: list[int] = []
        self.table: dict[tuple[int, ...], int] = {}  # last min_len symbols -> the position after them
        self.ptr = -1  # position in `stream` of the predicted symbol, -1: no prediction
        self.length = 0  # how many symbols before `ptr` match the stream's last ones
        self.hits = np.zeros((LENGTH_BUCKETS, Q_BINS))
        self.tries = np.zeros((LENGTH_BUCKETS, Q_BINS))
        self.pending: tuple[int, int, int] | None = None  # (bucket, q bin, pred) of the last mix
        self.journal: list[tuple[tuple[int, ...], int | None]] | None = None

    def mix(self, q: np.ndarray) -> np.ndarray:
        """q: (V,) or (1, V) float64 probabilities -> the same shape, the prediction folded in."""
        self.pending = None
        if self.ptr < 0:
            return q
        pred = self.stream[self.ptr]
        row = q.reshape(-1)
        qp = float(row[pred])
        b, qb = length_bucket(self.length), min(int(qp * Q_BINS), Q_BINS - 1)
        self.pending = (b, qb, pred)
        f = min(max((self.hits[b, qb] + 0.5) / (self.tries[b, qb] + 1.0), qp), F_MAX)
        if f <= qp:
            return q
        out = row * ((1.0 - f) / (1.0 - qp))
        out[pred] = f
        return out.reshape(q.shape)

    def update(self, symbol: int) -> None:
        """The symbol that came: counts the last `mix`'s prediction, extends the stream and the match."""
        symbol = int(symbol)
        if self.pending is not None:
            b, qb, pred = self.pending
            self.tries[b, qb] += 1
            self.hits[b, qb] += symbol == pred
            self.pending = None
        right = self.ptr >= 0 and self.stream[self.ptr] == symbol
        self.stream.append(symbol)
        self.ptr, self.length = (self.ptr + 1, self.length + 1) if right else (-1, 0)
        if len(self.stream) < self.min_len:
            return
        key = tuple(self.stream[-self.min_len :])
        if self.ptr < 0 and key in self.table:
            self.ptr, self.length = self.table[key], 0
            n = len(self.stream)
            while (
                self.length < MAX_BACK
                and self.ptr - 1 - self.length >= 0
                and self.stream[self.ptr - 1 - self.length] == self.stream[n - 1 - self.length]
            ):
                self.length += 1
        if self.journal is not None:
            self.journal.append((key, self.table.get(key)))
        self.table[key] = len(self.stream)

    def checkpoint(self) -> tuple:
        """A mark to `restore` to; the table's changes are journaled from here on."""
        self.journal = []
        return (len(self.stream), self.ptr, self.length, self.hits.copy(), self.tries.copy())

    def restore(self, mark: tuple) -> None:
        """Back to the state at `mark` (the last `checkpoint`)."""
        n, self.ptr, self.length, hits, tries = mark
        self.hits, self.tries = hits.copy(), tries.copy()
        for key, old in reversed(self.journal or []):
            if old is None:
                del self.table[key]
            else:
                self.table[key] = old
        del self.stream[n:]
        self.journal, self.pending = [], None
